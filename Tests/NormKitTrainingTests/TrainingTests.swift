import Foundation
import NormKitTraining
import Synchronization
import XCTest
import _NormKitTestSupport

/// The training loop end to end: loss falls on real data, runs are deterministic, an interrupted run resumes
/// exactly, and the run directory holds the records it documents.
final class TrainingTests: XCTestCase {
    /// The first 3,200 training and 500 test images of Fashion-MNIST, loaded once.
    static let cachedFashionMNIST = Mutex<(train: Dataset, test: Dataset)?>(nil)

    static func fashionMNIST() throws -> (train: Dataset, test: Dataset) {
        if let cached = cachedFashionMNIST.withLock({ $0 }) { return cached }
        // CI installs the Debian package dataset-fashion-mnist; elsewhere the test is skipped (as DatasetTests).
        let loaded: (train: Dataset, test: Dataset)
        do {
            loaded = try FashionMNIST.load(trainLimit: 3200, testLimit: 500)
        } catch let error as DataError {
            if case .datasetNotFound = error { throw XCTSkip("\(error)") }
            throw error
        }
        cachedFashionMNIST.withLock { $0 = loaded }
        return loaded
    }

    /// Small synthetic 16×16 images (learnable labels): the point of these tests is the loop, not the data.
    static let cachedSynthetic = Mutex<(Dataset, Dataset)?>(nil)

    static func synthetic() throws -> (train: Dataset, test: Dataset) {
        if let cached = cachedSynthetic.withLock({ $0 }) { return cached }
        let data = try TorchModelParityTests.syntheticData(count: 128, testCount: 32, size: 16, seed: 21)
        cachedSynthetic.withLock { $0 = data }
        return data
    }

    /// Batch 16 over 128 images: 8 steps per epoch; 2 epochs.
    static func smallConfiguration(_ norm: NormKind, normBatch: Int? = nil) -> TrainingConfiguration {
        var c = TrainingConfiguration()
        c.model = "resnet8"
        c.norm = norm
        c.batch = 16
        c.normBatch = normBatch
        c.epochs = 2
        c.seed = 7
        c.threads = 2
        c.augment = true
        return c
    }

    func makeTrainer(
        _ c: TrainingConfiguration, _ data: (train: Dataset, test: Dataset), output: URL?
    ) throws -> Trainer {
        try Trainer(
            configuration: c, train: data.train, test: data.test, output: output,
            progress: ProgressReporter(style: .silent))
    }

    /// Epoch metrics without the wall-clock fields.
    static func deterministicPart(_ m: EpochMetrics) -> [Double] {
        [Double(m.epoch), Double(m.step), m.trainLoss, m.trainError, m.testLoss, m.testError, m.learningRate]
    }

    // MARK: - (a) the loss falls on real data

    func testLossFallsOnFashionMNIST() throws {
        let data = try Self.fashionMNIST()
        var c = TrainingConfiguration()
        c.model = "resnet8"
        c.norm = .gn
        c.batch = 16
        c.epochs = 1
        c.seed = 1
        c.threads = 2
        c.augment = false
        let trainer = try makeTrainer(c, data, output: nil)
        let start = Date()
        let summary = try trainer.run()
        let seconds = Date().timeIntervalSince(start)
        let losses = trainer.stepLosses.map(Double.init)
        XCTAssertEqual(losses.count, 200)
        let first = losses.prefix(20).reduce(0, +) / 20, last = losses.suffix(20).reduce(0, +) / 20
        print(
            String(
                format:
                    "Fashion-MNIST ResNet-8 GN, 200 steps of 16: loss first 20 %.3f, last 20 %.3f; test error %.1f%% on 500; %.1f s",
                first, last, 100 * summary.finalTestError, seconds))
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
        XCTAssertLessThan(last, 0.7 * first, "the loss does not fall")
        XCTAssertLessThan(last, log(10.0) - 0.8, "no better than chance")
        XCTAssertLessThan(summary.finalTestError, 0.7, "test error after 200 steps")
        XCTAssertEqual(summary.epochs.count, 1)
        XCTAssertTrue(summary.finished)
    }

    // MARK: - (b) determinism

    func testSameConfigurationAndSeedGiveIdenticalLosses() throws {
        let data = try Self.synthetic()
        for norm in [NormKind.gn, .bn] {
            var c = Self.smallConfiguration(norm, normBatch: norm == .bn ? 4 : nil)
            c.epochs = 1
            let a = try makeTrainer(c, data, output: nil)
            let sa = try a.run()
            let b = try makeTrainer(c, data, output: nil)
            let sb = try b.run()
            XCTAssertEqual(a.stepLosses.count, 8)
            XCTAssertEqual(a.stepLosses, b.stepLosses, "\(norm): two runs of the same configuration differ")
            XCTAssertEqual(a.model.stateDict(), b.model.stateDict(), "\(norm): final weights differ")
            XCTAssertEqual(sa.epochs.map(Self.deterministicPart), sb.epochs.map(Self.deterministicPart))
            // A different seed gives a different run (the seed is used).
            c.seed += 1
            let other = try makeTrainer(c, data, output: nil)
            try other.run()
            XCTAssertNotEqual(other.stepLosses, a.stepLosses, "\(norm): the seed changes nothing")
        }
    }

    // MARK: - (c) resume

    /// Runs `c` uninterrupted, then stopped after `stop` steps and continued by a new trainer, and compares.
    func checkResume(
        _ c: TrainingConfiguration, stopAfter stops: [Int], file: StaticString = #filePath,
        line: UInt = #line
    ) throws {
        let data = try Self.synthetic()
        let fullDirectory = try makeTemporaryDirectory().appendingPathComponent("full-\(c.norm.rawValue)")
        let full = try makeTrainer(c, data, output: fullDirectory)
        let fullSummary = try full.run()
        let total = full.stepLosses.count
        XCTAssertEqual(total, 16, file: file, line: line)

        for stop in stops {
            let directory = try makeTemporaryDirectory().appendingPathComponent("resume-\(c.norm.rawValue)-\(stop)")
            let first = try makeTrainer(c, data, output: directory)
            first.stopAfterStep = stop
            XCTAssertThrowsError(try first.run(), file: file, line: line) { error in
                XCTAssertEqual(
                    error as? TrainingError, .interrupted(step: stop, directory: directory.path),
                    file: file, line: line)
            }
            XCTAssertEqual(first.step, stop, file: file, line: line)
            XCTAssertEqual(first.stepLosses, Array(full.stepLosses.prefix(stop)), file: file, line: line)
            XCTAssertTrue(
                FileManager.default.fileExists(
                    atPath: directory.appendingPathComponent("training-state-\(stop).safetensors").path), file: file,
                line: line)

            let second = try makeTrainer(c, data, output: directory)
            try second.resume(from: directory)
            XCTAssertEqual(second.step, stop, file: file, line: line)
            // The restored model is the one that stopped, buffers and counters included.
            XCTAssertEqual(
                second.model.stateDict(), first.model.stateDict(), "\(c.norm) stop \(stop): restored state",
                file: file, line: line)
            let summary = try second.run()
            XCTAssertEqual(
                second.stepLosses, Array(full.stepLosses.suffix(from: stop)),
                "\(c.norm) stopped at \(stop): the resumed losses differ from the uninterrupted run",
                file: file, line: line)
            XCTAssertEqual(
                second.model.stateDict(), full.model.stateDict(),
                "\(c.norm) stopped at \(stop): final state differs", file: file, line: line)
            XCTAssertEqual(
                summary.epochs.map(Self.deterministicPart), fullSummary.epochs.map(Self.deterministicPart),
                "\(c.norm) stopped at \(stop): epoch metrics differ", file: file, line: line)
            XCTAssertEqual(summary.finalTestError, fullSummary.finalTestError, file: file, line: line)
            XCTAssertEqual(summary.perClassAccuracy, fullSummary.perClassAccuracy, file: file, line: line)
            XCTAssertTrue(summary.finished, file: file, line: line)
            // One metrics line per epoch, none duplicated by the resume; one training state left.
            let lines = try String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
                .split(separator: "\n")
            XCTAssertEqual(lines.count, c.epochs, file: file, line: line)
            let states = try FileManager.default.contentsOfDirectory(atPath: directory.path)
                .filter { $0.hasPrefix("training-state-") }
            XCTAssertEqual(states, ["training-state-\(total).safetensors"], file: file, line: line)
        }
    }

    /// Stops mid-epoch (step 5 of 8), at the end of epoch 0 before its evaluation (step 8), and one step into
    /// epoch 1 (step 9).
    func testResumeGroupNorm() throws {
        try checkResume(Self.smallConfiguration(.gn), stopAfter: [5, 8, 9])
    }

    /// MABN with normalization batches of 2: 8 iterations per step, 128 in all, past the 100-iteration warm-up
    /// so the SMA of the ring buffers is used; the buffers, `iters` and the EMA must round-trip.
    func testResumeMovingAverageBatchNorm() throws {
        try checkResume(Self.smallConfiguration(.mabn, normBatch: 2), stopAfter: [5, 8])
    }

    /// BN with ghost batches of 4: running statistics and `num_batches_tracked` must round-trip.
    func testResumeBatchNorm() throws {
        try checkResume(Self.smallConfiguration(.bn, normBatch: 4), stopAfter: [5, 8])
    }

    // MARK: - (d) run records

    func testRunDirectoryRecords() throws {
        let data = try Self.synthetic()
        let directory = try makeTemporaryDirectory().appendingPathComponent("records")
        var c = Self.smallConfiguration(.gn)
        c.epochs = 3
        let trainer = try makeTrainer(c, data, output: directory)
        let summary = try trainer.run()

        let text = try String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        XCTAssertTrue(text.hasSuffix("\n"))
        let lines = text.split(separator: "\n")
        XCTAssertEqual(lines.count, 3, "metrics.jsonl must have one line per epoch")
        let metrics = try lines.map { try JSONDecoder().decode(EpochMetrics.self, from: Data($0.utf8)) }
        XCTAssertEqual(metrics.map(\.epoch), [0, 1, 2])
        XCTAssertEqual(metrics.map(\.step), [8, 16, 24])
        XCTAssertEqual(metrics, trainer.history)
        for m in metrics {
            XCTAssertTrue(m.trainLoss.isFinite && m.testLoss.isFinite)
            XCTAssertTrue((0...1).contains(m.trainError) && (0...1).contains(m.testError))
            XCTAssertGreaterThan(m.imagesPerSecond, 0)
        }

        let decoded = try JSONDecoder().decode(
            RunSummary.self, from: Data(contentsOf: directory.appendingPathComponent("summary.json")))
        XCTAssertEqual(decoded, summary)
        XCTAssertNil(c.groups)
        XCTAssertEqual(decoded.configuration, c.resolved, "recorded with GN's default groups made explicit")
        XCTAssertEqual(decoded.configuration.groups, NormalizationSettings.defaultGroups)
        XCTAssertTrue(decoded.finished)
        XCTAssertEqual(decoded.epochs, metrics)
        XCTAssertEqual(decoded.finalTestError, metrics.last!.testError)
        XCTAssertEqual(decoded.bestTestError, metrics.map(\.testError).min()!)
        XCTAssertEqual(decoded.perClassAccuracy.count, 10)

        // The model file is the final model, with the metadata to rebuild it.
        let (tensors, configuration, step) = try TrainingCheckpoint.readModel(
            at: directory.appendingPathComponent(TrainingCheckpoint.modelFileName))
        XCTAssertEqual(configuration, c.resolved)
        XCTAssertEqual(step, 24)
        XCTAssertEqual(tensors, trainer.model.stateDict())
        let (_, metadata) = try SafeTensors.read(
            from: directory.appendingPathComponent(TrainingCheckpoint.modelFileName))
        let torch = try JSONDecoder().decode([String: String].self, from: Data(metadata["torch_model_arguments"]!.utf8))
        XCTAssertEqual(torch["norm"], "gn")
        XCTAssertEqual(torch["depth"], "8")
        XCTAssertEqual(torch["groups"], "\(NormalizationSettings.defaultGroups)", "the default is recorded")
    }

    /// A model file from before the trainer recorded GN's default (configuration without groups) is read with the
    /// groups its PyTorch arguments name, not with today's default.
    func testLegacyCheckpointKeepsTheGroupsItWasTrainedWith() throws {
        let directory = try makeTemporaryDirectory("legacy")
        let legacy = Self.smallConfiguration(.gn)
        XCTAssertNil(legacy.groups)
        var metadata = try TrainingCheckpoint.metadata(
            configuration: legacy,
            normalization: NormalizationSettings(kind: .gn, groups: 8),
            step: 3)
        metadata["torch_model_arguments"] = #"{"depth":"8","groups":"8","mabn_buffer":"1","norm":"gn"}"#
        let url = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        // A real ResNet-8's tensors: a checkpoint's tensor names must agree with its configuration's depth.
        let model = try makeModel(named: "resnet8", normalization: NormalizationSettings(kind: .gn, groups: 8), seed: 0)
        try SafeTensors.write(model.stateDict(), metadata: metadata, to: url)
        let (_, configuration, step) = try TrainingCheckpoint.readModel(at: url)
        XCTAssertEqual(configuration.groups, 8)
        XCTAssertEqual(step, 3)
    }
}
