import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// `normkit export --fold` (``FoldedExport``): a training checkpoint in, a folded safetensors file out that
/// reads back into ``FoldedResNet`` with the unfolded model's eval logits; refusals leave nothing behind.
final class FoldedExportTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("normkit-fold")
    }

    /// A `model.safetensors` as the trainer writes it (tensors plus ``TrainingCheckpoint/metadata``) for a
    /// ResNet-8 with `norm`, after three training forwards; returns the file, the model and its configuration.
    func writeCheckpoint(
        _ norm: NormKind, name: String = "model.safetensors"
    ) throws
        -> (url: URL, model: ResNet, configuration: TrainingConfiguration)
    {
        var configuration = TrainingConfiguration()
        configuration.model = "resnet8"
        configuration.norm = norm
        configuration.batch = 8
        configuration.normBatch =
            norm == .gn || norm == .ln || norm == .in || norm == .none || norm == .frozenBN ? nil : 2
        configuration.seed = 4
        configuration = configuration.resolved
        let settings = try NormalizationSettings(configuration, totalSteps: 1)
        var generator = SeededGenerator(seed: 4)
        let model = try ResNet(depth: 8, normalization: settings, zeroInitResidualScale: false, generator: &generator)
        if norm != .gn && norm != .ln && norm != .in { try FoldingTests.perturb(model, generator: &generator) }
        for _ in 0..<3 {
            _ = try model.forward(
                Tensor.randomNormal(
                    shape: [8, 1, 16, 16], mean: 0.5, standardDeviation: 2,
                    using: &generator), training: true)
        }
        let url = directory.appendingPathComponent(name)
        try SafeTensors.write(
            model.stateDict(),
            metadata: try TrainingCheckpoint.metadata(
                configuration: configuration,
                normalization: settings, step: 3),
            to: url)
        return (url, model, configuration)
    }

    func testExportWritesAFoldedModelWithItsMetadataThatReadsBack() throws {
        for norm in [NormKind.mabn, .bn, .brn, .frozenBN, .none] {
            let (checkpoint, model, configuration) = try writeCheckpoint(norm)
            let out = directory.appendingPathComponent("folded-\(norm.rawValue).safetensors")
            let result = try FoldedExport.export(checkpoint: checkpoint, to: out, overwrite: false)
            XCTAssertLessThan(result.probeRelativeDifference, 1e-5, "\(norm)")

            let (folded, metadata) = try FoldedExport.read(at: out)
            XCTAssertEqual(metadata["norm"], "folded")
            XCTAssertEqual(metadata["depth"], "8")
            XCTAssertEqual(metadata["format"], FoldedExport.format)
            XCTAssertEqual(metadata["source_norm"], norm.rawValue)
            XCTAssertEqual(metadata["source_step"], "3")
            XCTAssertEqual(metadata["source_checkpoint"], checkpoint.path)
            XCTAssertNil(metadata["configuration"], "a folded file must not pass for a training checkpoint")
            let source = try JSONDecoder().decode(
                TrainingConfiguration.self,
                from: Data(metadata["source_configuration"]!.utf8))
            XCTAssertEqual(source, configuration)
            let torch = try JSONDecoder().decode(
                [String: String].self, from: Data(metadata["torch_model_arguments"]!.utf8))
            XCTAssertEqual(
                torch, ["depth": "8", "norm": "folded", "in_channels": "1", "num_classes": "10", "width": "16"])

            // Every conv has a bias, there is no normalization tensor, and the file is the fold of the checkpoint.
            let (tensors, _) = try SafeTensors.read(from: out)
            let convWeights = tensors.keys.filter { $0.hasSuffix(".weight") && tensors[$0]!.shape.count == 4 }
            XCTAssertEqual(convWeights.count, 9, "\(norm): conv1 + 3 blocks × 2 + 2 downsamples")
            for name in convWeights {
                XCTAssertNotNil(tensors[String(name.dropLast("weight".count)) + "bias"], "\(norm): \(name) has no bias")
            }
            XCTAssertFalse(tensors.keys.contains { $0.contains("norm") || $0.contains("running") }, "\(norm)")
            XCTAssertEqual(tensors, try fold(model).stateDict(), "\(norm)")

            var generator = SeededGenerator(seed: 8)
            let x = Tensor.randomNormal(shape: [3, 1, 20, 20], using: &generator)
            let d = TorchModelParityTests.relativeDifference(
                try folded.forward(x, training: false).values,
                try model.forward(x, training: false).values)
            XCTAssertLessThan(d, 1e-5, "\(norm): the exported model vs the checkpoint's in eval mode")
        }
    }

    func testAnExistingOutputIsKeptUnlessOverwrite() throws {
        let (checkpoint, _, _) = try writeCheckpoint(.mabn)
        let out = directory.appendingPathComponent("folded.safetensors")
        try Data("keep me".utf8).write(to: out)
        XCTAssertThrowsError(try FoldedExport.export(checkpoint: checkpoint, to: out, overwrite: false)) { error in
            XCTAssertEqual(error as? FoldingError, .outputExists(path: out.path))
            XCTAssertTrue("\(error)".contains("--overwrite"), "\(error)")
        }
        XCTAssertEqual(try Data(contentsOf: out), Data("keep me".utf8))
        try FoldedExport.export(checkpoint: checkpoint, to: out, overwrite: true)
        XCTAssertEqual(try FoldedExport.read(at: out).metadata["norm"], "folded")
        // Never the checkpoint itself, even with --overwrite.
        XCTAssertThrowsError(try FoldedExport.export(checkpoint: checkpoint, to: checkpoint, overwrite: true)) {
            error in
            XCTAssertTrue("\(error)".contains("checkpoint itself"), "\(error)")
        }
        XCTAssertNoThrow(try TrainingCheckpoint.read(at: checkpoint))
    }

    func testPerSampleNormalizationCheckpointsAreRefusedAndNothingIsWritten() throws {
        for norm in [NormKind.gn, .ln, .in] {
            let (checkpoint, _, _) = try writeCheckpoint(norm, name: "\(norm.rawValue).safetensors")
            let out = directory.appendingPathComponent("folded-\(norm.rawValue).safetensors")
            XCTAssertThrowsError(try FoldedExport.export(checkpoint: checkpoint, to: out, overwrite: false)) { error in
                guard case FoldingError.notFoldable(_, _, let reason) = error else {
                    return XCTFail("\(norm): \(error)")
                }
                XCTAssertTrue(reason.contains("own statistics"), reason)
                XCTAssertTrue("\(error)".contains(checkpoint.path), "\(error)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "\(norm)")
        }
    }

    func testInputsThatAreNotWhatTheyClaimAreRefused() throws {
        // A training checkpoint is not a folded export.
        let (checkpoint, _, _) = try writeCheckpoint(.bn)
        XCTAssertThrowsError(try FoldedExport.read(at: checkpoint)) { error in
            XCTAssertTrue("\(error)".contains("not a folded export"), "\(error)")
        }
        // A file without a configuration is not a checkpoint.
        let bare = directory.appendingPathComponent("bare.safetensors")
        try SafeTensors.write(["x": .float32(shape: [1], values: [1])], to: bare)
        XCTAssertThrowsError(
            try FoldedExport.export(
                checkpoint: bare,
                to: directory.appendingPathComponent("o.safetensors"),
                overwrite: false)
        ) { error in
            XCTAssertTrue(error is CheckpointError, "\(error)")
        }
        // A folded export whose depth disagrees with its blocks.
        let out = directory.appendingPathComponent("folded.safetensors")
        try FoldedExport.export(checkpoint: checkpoint, to: out, overwrite: false)
        var (tensors, metadata) = try SafeTensors.read(from: out)
        metadata["depth"] = "14"
        try SafeTensors.write(tensors, metadata: metadata, to: out)
        XCTAssertThrowsError(try FoldedExport.read(at: out)) { error in
            XCTAssertTrue("\(error)".contains("depth 14"), "\(error)")
        }
        metadata["depth"] = "8"
        tensors["conv1.bias"] = nil
        try SafeTensors.write(tensors, metadata: metadata, to: out)
        XCTAssertThrowsError(try FoldedExport.read(at: out)) { error in
            XCTAssertTrue("\(error)".contains("conv1.bias"), "\(error)")
        }
    }

    /// A file whose `conv1` claims more filters than its values can hold (a hostile width) is refused before the
    /// model it describes is built (which would ask for 150 GB), for a training checkpoint and a folded export.
    func testAWidthTheFileCannotHoldIsRefusedBeforeTheModelIsBuilt() throws {
        let (checkpoint, _, _) = try writeCheckpoint(.bn)
        var (tensors, metadata) = try SafeTensors.read(from: checkpoint)
        tensors["conv1.weight"] = .float32(shape: [65_536, 1, 1, 1], values: [Float](repeating: 0, count: 65_536))
        let hostile = directory.appendingPathComponent("wide.safetensors")
        try SafeTensors.write(tensors, metadata: metadata, to: hostile)
        let out = directory.appendingPathComponent("wide-folded.safetensors")
        XCTAssertThrowsError(try FoldedExport.export(checkpoint: hostile, to: out, overwrite: false)) { error in
            guard case .tensorsDoNotMatch(_, let reason)? = error as? CheckpointError else {
                return XCTFail("\(error)")
            }
            XCTAssertTrue(reason.contains("65536 filters"), reason)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        try FoldedExport.export(checkpoint: checkpoint, to: out, overwrite: false)
        (tensors, metadata) = try SafeTensors.read(from: out)
        tensors["conv1.weight"] = .float32(shape: [65_536, 1, 1, 1], values: [Float](repeating: 0, count: 65_536))
        try SafeTensors.write(tensors, metadata: metadata, to: out)
        XCTAssertThrowsError(try FoldedExport.read(at: out)) { error in
            XCTAssertTrue("\(error)".contains("65536 filters"), "\(error)")
        }
    }

    // MARK: - A model trained in code

    /// A ResNet-8 with `norm` after `steps` SGD steps (forward, backward, update) on random images, and its
    /// configuration (for a checkpoint of it).
    func trainedInCode(_ norm: NormKind, steps: Int = 3) throws -> (model: ResNet, configuration: TrainingConfiguration)
    {
        var configuration = TrainingConfiguration()
        configuration.model = "resnet8"
        configuration.norm = norm
        configuration.batch = 4
        configuration.normBatch = norm == .bn || norm == .brn || norm == .mabn ? 2 : nil
        configuration.seed = 11
        configuration = configuration.resolved
        var generator = SeededGenerator(seed: 11)
        let model = try ResNet(
            depth: 8, normalization: try NormalizationSettings(configuration, totalSteps: steps),
            generator: &generator)
        let optimizer = SGD(parameters: model.parameters, momentum: 0.9, weightDecay: 5e-4)
        let loss = SoftmaxCrossEntropy()
        var dlogits = Tensor(zeros: [0, 0])
        model.train()
        for _ in 0..<steps {
            let images = Tensor.randomNormal(
                shape: [4, 1, 12, 12], mean: 0.3, standardDeviation: 1.5, using: &generator)
            _ = try loss.forward(logits: try model(images), labels: [1, 4, 7, 2])
            try loss.backward(into: &dlogits)
            try model.backward(dlogits)
            try optimizer.step(learningRate: 0.05)
        }
        return (model, configuration)
    }

    /// ``FoldedExport/write(_:data:to:overwrite:)`` of a model trained in code writes the tensors the export of that
    /// model's checkpoint writes (value for value), with the same model metadata, and leaves the model as it was.
    func testAModelTrainedInCodeWritesWhatItsCheckpointExports() throws {
        for norm in [NormKind.bn, .brn, .mabn, .frozenBN, .none] {
            let (model, configuration) = try trainedInCode(norm)
            let checkpoint = directory.appendingPathComponent("\(norm.rawValue)-model.safetensors")
            try SafeTensors.write(
                model.stateDict(),
                metadata: try TrainingCheckpoint.metadata(
                    configuration: configuration, normalization: model.normalization, step: 3),
                to: checkpoint)
            let before = model.stateDict()

            let direct = directory.appendingPathComponent("\(norm.rawValue)-direct.safetensors")
            let folded = try FoldedExport.write(model, to: direct)
            XCTAssertEqual(model.stateDict(), before, "\(norm): the model is not changed")
            XCTAssertTrue(model.training, "\(norm): the model keeps its mode")
            let viaCheckpoint = directory.appendingPathComponent("\(norm.rawValue)-checkpoint.safetensors")
            try FoldedExport.export(checkpoint: checkpoint, to: viaCheckpoint, overwrite: false)

            let (directTensors, directMetadata) = try SafeTensors.read(from: direct)
            let (checkpointTensors, checkpointMetadata) = try SafeTensors.read(from: viaCheckpoint)
            XCTAssertEqual(directTensors, checkpointTensors, "\(norm): the same folded tensors both ways")
            XCTAssertEqual(directTensors, folded.stateDict(), "\(norm): the returned model is the one written")
            XCTAssertEqual(directTensors, try fold(model).stateDict(), "\(norm)")
            for key in ["format", "norm", "depth", "torch_model_arguments", "source_norm"] {
                XCTAssertEqual(directMetadata[key], checkpointMetadata[key], "\(norm): metadata \(key)")
            }
            XCTAssertEqual(directMetadata["source_norm"], norm.rawValue)
            XCTAssertEqual(
                Set(directMetadata.keys), ["format", "norm", "depth", "torch_model_arguments", "source_norm"],
                "\(norm): no checkpoint, step, configuration or data record for a model from code")

            // It reads back as a folded export with the model's eval logits.
            let (readBack, _) = try FoldedExport.read(at: direct)
            var generator = SeededGenerator(seed: 12)
            let x = Tensor.randomNormal(shape: [3, 1, 12, 12], using: &generator)
            let d = TorchModelParityTests.relativeDifference(
                try readBack.forward(x, training: false).values, try model.forward(x, training: false).values)
            XCTAssertLessThan(d, 1e-5, "\(norm): the written model vs the trained one in eval mode")
        }
    }

    /// The direct write keeps the export's promises: no silent overwrite, a directory or a per-sample
    /// normalization refused with nothing written.
    func testWritingAModelFromCodeNeverOverwritesSilently() throws {
        let (model, _) = try trainedInCode(.bn, steps: 1)
        let out = directory.appendingPathComponent("folded.safetensors")
        try Data("keep me".utf8).write(to: out)
        XCTAssertThrowsError(try FoldedExport.write(model, to: out)) { error in
            XCTAssertEqual(error as? FoldingError, .outputExists(path: out.path))
            // Called from code, the message names the parameter as well as the CLI flag.
            XCTAssertTrue("\(error)".contains("`overwrite: true` from code"), "\(error)")
        }
        XCTAssertEqual(try Data(contentsOf: out), Data("keep me".utf8))
        try FoldedExport.write(model, to: out, overwrite: true)
        XCTAssertEqual(try FoldedExport.read(at: out).metadata["source_norm"], "bn")

        XCTAssertThrowsError(try FoldedExport.write(model, to: directory, overwrite: true)) { error in
            XCTAssertEqual(error as? FoldingError, .outputIsDirectory(path: directory.path))
            XCTAssertTrue("\(error)".contains("`to:` from code"), "\(error)")
        }

        let (gn, _) = try trainedInCode(.gn, steps: 1)
        let refused = directory.appendingPathComponent("gn.safetensors")
        XCTAssertThrowsError(try FoldedExport.write(gn, to: refused)) { error in
            guard case FoldingError.notFoldable(_, _, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("own statistics"), reason)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: refused.path))
    }
    /// A model written from code with its data record carries it as the `data` metadata, the same JSON the export
    /// of a checkpoint holding that record writes, so a reader gets the pixel statistics to standardise inputs with.
    func testAModelFromCodeCarriesTheDataRecordItIsGiven() throws {
        let (model, configuration) = try trainedInCode(.bn, steps: 1)
        let statistics = PixelStatistics(mean: 0.286, std: 0.353)
        let train = try Dataset(
            pixels: [UInt8](repeating: 7, count: 3 * 144), labels: [0, 1, 2], height: 12, width: 12, classCount: 10,
            statistics: statistics)
        let test = try train.samples(0..<2)
        let record = DataRecord(train: train, test: test)

        let direct = directory.appendingPathComponent("with-data.safetensors")
        try FoldedExport.write(model, data: record, to: direct)
        let checkpoint = directory.appendingPathComponent("with-data-model.safetensors")
        try SafeTensors.write(
            model.stateDict(),
            metadata: try TrainingCheckpoint.metadata(
                configuration: configuration, normalization: model.normalization, step: 1, data: record),
            to: checkpoint)
        let viaCheckpoint = directory.appendingPathComponent("with-data-export.safetensors")
        try FoldedExport.export(checkpoint: checkpoint, to: viaCheckpoint, overwrite: false)

        let written = try FoldedExport.read(at: direct).metadata
        let exported = try FoldedExport.read(at: viaCheckpoint).metadata
        XCTAssertEqual(written["data"], exported["data"], "the same record both ways")
        let decoded = try JSONDecoder().decode(DataRecord.self, from: Data(try XCTUnwrap(written["data"]).utf8))
        XCTAssertEqual(decoded, record)
        XCTAssertEqual(decoded.statistics, statistics)
        XCTAssertEqual(decoded.trainCount, 3)
        XCTAssertEqual(decoded.testCount, 2)
    }
}
