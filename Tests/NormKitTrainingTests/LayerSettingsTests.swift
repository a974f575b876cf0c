import Foundation
import NormKit
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Issue 12, item 1: the layers' hyper-parameters are settings of a run (flags, sweep plans), reach the layers,
/// are validated, and are recorded in checkpoints; MABN's default buffer covers about 32 images.
final class LayerSettingsTests: XCTestCase {
    func testMABNDefaultBufferCoversAbout32Images() {
        for (batch, normBatch, expected) in [
            (2, nil, 16), (32, 2, 16), (32, nil, 1), (8, 4, 8), (64, 64, 1), (4, 1, 32),
        ]
            as [(Int, Int?, Int)]
        {
            var c = TrainingConfiguration()
            c.norm = .mabn
            c.batch = batch
            c.normBatch = normBatch
            XCTAssertEqual(c.mabnBufferSize, expected, "batch \(batch) normBatch \(String(describing: normBatch))")
            XCTAssertEqual(c.resolved.mabnBuffer, expected, "the resolved configuration records the buffer")
            c.mabnBuffer = 3
            XCTAssertEqual(c.mabnBufferSize, 3)
        }
    }

    func testSettingsReachTheLayers() throws {
        var c = TrainingConfiguration()
        c.norm = .mabn
        c.batch = 2
        c.mabnBuffer = 5
        c.mabnWarmup = 7
        c.mabnOldValueWeight = 0.9
        let mabn = try XCTUnwrap(
            try NormalizationSettings(c, totalSteps: 100).makeLayer(channels: 4) as? MovingAverageBatchNorm)
        XCTAssertEqual(mabn.bufferSize, 5)
        XCTAssertEqual(mabn.warmup, 7)
        XCTAssertEqual(mabn.oldValueWeight, 0.9)

        var b = TrainingConfiguration()
        b.norm = .bn
        b.bnMomentum = 0.3
        let bn = try XCTUnwrap(try NormalizationSettings(b, totalSteps: 100).makeLayer(channels: 4) as? BatchNorm)
        XCTAssertEqual(bn.momentum, 0.3)

        var r = TrainingConfiguration()
        r.norm = .brn
        r.brnMomentum = 0.05
        r.brnRMax = 2
        r.brnDMax = 1
        let scaled = try XCTUnwrap(
            try NormalizationSettings(r, totalSteps: 1000).makeLayer(channels: 4) as? BatchRenorm)
        XCTAssertEqual(scaled.momentum, 0.05)
        XCTAssertEqual(scaled.schedule, try BatchRenorm.Schedule.scaled(totalSteps: 1000, rMax: 2, dMax: 1))
        r.brnSchedule = "paper"
        let paper = try XCTUnwrap(try NormalizationSettings(r, totalSteps: 1000).makeLayer(channels: 4) as? BatchRenorm)
        XCTAssertEqual(paper.schedule.warmupSteps, BatchRenorm.Schedule.paper.warmupSteps)
        XCTAssertEqual(paper.schedule.rMax, 2)
        XCTAssertEqual(paper.schedule.dMax, 1)

        // Defaults are the layers' own.
        var d = TrainingConfiguration()
        d.norm = .bn
        XCTAssertEqual(
            (try NormalizationSettings(d, totalSteps: 10).makeLayer(channels: 4) as? BatchNorm)?.momentum, 0.1)
    }

    func testOutOfRangeOrInapplicableSettingsAreRefused() {
        let ranges: [(String, NormKind, (inout TrainingConfiguration) -> Void)] = [
            ("--mabn-buffer", .mabn, { $0.mabnBuffer = 0 }),
            ("--mabn-buffer", .mabn, { $0.mabnBuffer = 1 << 40 }),
            ("--mabn-warmup", .mabn, { $0.mabnWarmup = -1 }),
            ("--mabn-old-weight", .mabn, { $0.mabnOldValueWeight = 1.5 }),
            ("--bn-momentum", .bn, { $0.bnMomentum = .nan }),
            ("--brn-momentum", .brn, { $0.brnMomentum = -0.1 }),
            ("--brn-r-max", .brn, { $0.brnRMax = 0.5 }),
            ("--brn-d-max", .brn, { $0.brnDMax = .infinity }),
            ("--brn-schedule", .brn, { $0.brnSchedule = "fast" }),
        ]
        for (flag, norm, mutate) in ranges {
            var c = TrainingConfiguration()
            c.norm = norm
            mutate(&c)
            XCTAssertThrowsError(try c.validate()) { XCTAssertEqual(($0 as? ConfigurationError)?.flag, flag) }
        }
        let inapplicable: [(String, NormKind, (inout TrainingConfiguration) -> Void)] = [
            ("--mabn-buffer", .bn, { $0.mabnBuffer = 4 }),
            ("--bn-momentum", .gn, { $0.bnMomentum = 0.2 }),
            ("--brn-r-max", .mabn, { $0.brnRMax = 2 }),
            ("--mabn-old-weight", .brn, { $0.mabnOldValueWeight = 0.9 }),
        ]
        for (flag, norm, mutate) in inapplicable {
            var c = TrainingConfiguration()
            c.norm = norm
            mutate(&c)
            XCTAssertNoThrow(try c.validate())
            XCTAssertThrowsError(try c.validateApplicability()) {
                XCTAssertEqual(($0 as? ConfigurationError)?.flag, flag)
            }
        }
    }

    /// The trainer records MABN's buffer in the checkpoint; files written before (buffer = batch / normBatch,
    /// recorded only in the PyTorch arguments) load with the buffer they were trained with.
    func testCheckpointsRecordTheBufferAndLegacyFilesKeepTheirs() throws {
        let directory = try makeTemporaryDirectory().appendingPathComponent("mabn-buffer")
        var c = TrainingTests.smallConfiguration(.mabn)
        c.epochs = 1
        c.threads = 1
        let data = try TrainingTests.synthetic()
        let trainer = try Trainer(
            configuration: c, train: data.train, test: data.test, output: directory,
            progress: ProgressReporter(style: .silent))
        trainer.stopAfterStep = 2
        XCTAssertThrowsError(try trainer.run())
        let url = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        XCTAssertEqual(try TrainingCheckpoint.read(at: url).configuration.mabnBuffer, c.defaultMABNBuffer)

        // A legacy file: no mabnBuffer in the configuration, batch 16 → its buffer was 16 / 16 = 1; today's
        // default would be 2. The PyTorch arguments say 1.
        var legacy = c
        legacy.mabnBuffer = nil
        let model = try makeModel(
            named: "resnet8", normalization: NormalizationSettings(kind: .mabn, mabnBufferSize: 1), seed: 0)
        var metadata = try TrainingCheckpoint.metadata(
            configuration: legacy,
            normalization: NormalizationSettings(kind: .mabn, mabnBufferSize: 1),
            step: 0)
        XCTAssertFalse(metadata["configuration"]!.contains("mabnBuffer"))
        metadata["torch_model_arguments"] = #"{"depth":"8","mabn_buffer":"1","norm":"mabn"}"#
        let legacyURL = directory.appendingPathComponent("legacy.safetensors")
        try SafeTensors.write(model.stateDict(), metadata: metadata, to: legacyURL)
        XCTAssertEqual(try TrainingCheckpoint.read(at: legacyURL).configuration.mabnBufferSize, 1)
    }
}
