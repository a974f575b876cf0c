import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Checkpoints refuse what they cannot use, say why, change nothing when they refuse, and survive failed saves.
final class CheckpointTests: XCTestCase {
    func configuration(_ norm: NormKind) -> TrainingConfiguration {
        var c = TrainingConfiguration()
        c.model = "resnet8"
        c.norm = norm
        c.batch = 16
        c.normBatch = norm == .bn ? 8 : nil
        c.epochs = 1
        c.seed = 5
        c.threads = 2
        return c
    }

    func trainer(_ c: TrainingConfiguration, output: URL?) throws -> Trainer {
        let data = try TorchModelParityTests.syntheticData(count: 64, testCount: 16, size: 16, seed: 9)
        return try Trainer(
            configuration: c, train: data.0, test: data.1, output: output,
            progress: ProgressReporter(style: .silent))
    }

    /// A run directory holding the checkpoint of step `steps`.
    func runDirectory(_ name: String, norm: NormKind = .bn, steps: Int = 2) throws -> (URL, Trainer) {
        let directory = try makeTemporaryDirectory().appendingPathComponent(name)
        let t = try trainer(configuration(norm), output: directory)
        t.stopAfterStep = steps
        XCTAssertThrowsError(try t.run())
        return (directory, t)
    }

    func message(_ body: () throws -> Void) -> String? {
        do { try body() } catch { return "\(error)" }
        return nil
    }

    // MARK: - damaged files

    func testCorruptOrTruncatedModelFileIsRefusedNamingTheFile() throws {
        let (directory, _) = try runDirectory("corrupt")
        let file = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let good = try Data(contentsOf: file)
        XCTAssertNoThrow(try TrainingCheckpoint.readModel(at: file))

        var damaged: [(String, Data)] = [
            ("truncated in the data", good.prefix(good.count - 100)),
            ("truncated in the header", good.prefix(200)),
            ("shorter than the header length", good.prefix(5)),
            ("empty", Data()),
        ]
        var garbage = good
        for i in 8..<40 { garbage[i] = 0x7E }  // the header JSON overwritten
        damaged.append(("corrupt header", garbage))
        var longer = good
        longer.append(contentsOf: [1, 2, 3, 4])
        damaged.append(("trailing bytes", longer))

        for (what, bytes) in damaged {
            try bytes.write(to: file)
            let read = message { _ = try TrainingCheckpoint.readModel(at: file) }
            XCTAssertNotNil(read, "\(what): readModel accepted a damaged file")
            XCTAssertTrue(read?.contains(file.path) ?? false, "\(what): message does not name the file: \(read ?? "")")

            let fresh = try trainer(configuration(.bn), output: directory)
            let before = fresh.model.stateDict()
            let resumed = message { try fresh.resume(from: directory) }
            XCTAssertNotNil(resumed, "\(what): resume accepted a damaged file")
            XCTAssertTrue(
                resumed?.contains(file.path) ?? false,
                "\(what): resume message does not name the file: \(resumed ?? "")")
            XCTAssertEqual(fresh.model.stateDict(), before, "\(what): a refused resume changed the model")
            XCTAssertEqual(fresh.step, 0)
        }
        print("e.g. truncated: \(message { _ = try TrainingCheckpoint.readModel(at: file) } ?? "")")

        // A safetensors file without NormKit's metadata is not a checkpoint.
        try good.write(to: file)
        let plain = directory.appendingPathComponent("plain.safetensors")
        try SafeTensors.write(try TrainingCheckpoint.readModel(at: file).tensors, to: plain)
        let noMetadata = message { _ = try TrainingCheckpoint.readModel(at: plain) }
        XCTAssertTrue(noMetadata?.contains(plain.path) ?? false, noMetadata ?? "accepted")

        // The training state the model file points to is missing: refused, naming that file.
        let state = directory.appendingPathComponent("training-state-2.safetensors")
        try FileManager.default.removeItem(at: state)
        let fresh = try trainer(configuration(.bn), output: directory)
        let missing = message { try fresh.resume(from: directory) }
        XCTAssertTrue(missing?.contains(state.path) ?? false, missing ?? "accepted")

        // Nothing to resume in an empty directory.
        let empty = try makeTemporaryDirectory("empty")
        XCTAssertThrowsError(try fresh.resume(from: empty)) { error in
            XCTAssertEqual(error as? TrainingError, .nothingToResume(empty.path))
        }
    }

    // MARK: - wrong tensors

    func testWrongShapeOrMissingTensorIsRefusedAndTheModelIsUnchanged() throws {
        var generator = SeededGenerator(seed: 1)
        let model = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &generator)
        var donorGenerator = SeededGenerator(seed: 2)
        let donor = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &donorGenerator)
        let good = donor.stateDict()
        let before = model.stateDict()
        XCTAssertNotEqual(before, good)

        func refuses(
            _ state: [String: StateTensor], naming words: [String], _ what: String,
            line: UInt = #line
        ) {
            let text = message { try model.loadStateDict(state) }
            XCTAssertNotNil(text, "\(what) accepted", line: line)
            for word in words {
                XCTAssertTrue(
                    text?.contains(word) ?? false, "\(what): message does not name \(word): \(text ?? "")",
                    line: line)
            }
            XCTAssertEqual(model.stateDict(), before, "\(what): a refused load changed the model", line: line)
        }

        // `fc` is loaded last: every other layer would already hold the donor's values without the rollback.
        var s = good
        s["fc.weight"] = .float32(shape: [10, 32], values: [Float](repeating: 0.5, count: 320))
        refuses(s, naming: ["weight", "[10, 64]", "[10, 32]"], "fc.weight of the wrong shape")
        s = good
        s["layer3.0.norm2.running_var"] = .float32(shape: [32], values: [Float](repeating: 1, count: 32))
        refuses(s, naming: ["running_var", "[64]", "[32]"], "a running_var of the wrong shape")
        s = good
        s["layer2.0.norm1.num_batches_tracked"] = .float32(shape: [], values: [3])
        refuses(s, naming: ["num_batches_tracked", "int64"], "a float counter")
        s = good
        s["layer2.0.norm1.running_mean"] = .int64(shape: [32], values: [Int64](repeating: 0, count: 32))
        refuses(s, naming: ["running_mean", "float32"], "an int64 running mean")
        s = good
        s.removeValue(forKey: "layer3.0.downsample.1.running_mean")
        refuses(s, naming: ["layer3.0.downsample.1.running_mean"], "a missing tensor")
        s = good
        s["layer4.0.conv1.weight"] = .float32(shape: [1], values: [0])
        refuses(s, naming: ["layer4.0.conv1.weight"], "an unexpected tensor")
        refuses([:], naming: ["missing key(s) conv1.weight, fc.bias", "and 46 more"], "an empty state dict")

        // The good one loads completely.
        try model.loadStateDict(good)
        XCTAssertEqual(model.stateDict(), good)
    }

    /// A checkpoint of another normalization or another model is refused, naming a tensor.
    func testCheckpointOfAnotherModelIsRefusedNamingTheTensor() throws {
        var generator = SeededGenerator(seed: 4)
        let bn = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &generator)
        let gn = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .gn), generator: &generator)
        let mabn = try ResNet(
            depth: 8, normalization: NormalizationSettings(kind: .mabn, mabnBufferSize: 4),
            generator: &generator)
        let mabn8 = try ResNet(
            depth: 8, normalization: NormalizationSettings(kind: .mabn, mabnBufferSize: 8),
            generator: &generator)
        let deeper = try ResNet(depth: 14, normalization: NormalizationSettings(kind: .gn), generator: &generator)
        let narrow = try ResNet(
            depth: 8, normalization: NormalizationSettings(kind: .gn, groups: 2), width: 4,
            generator: &generator)
        let vgg = try VGG(normalization: NormalizationSettings(kind: .gn), generator: &generator)

        func check(
            _ target: Model, _ source: Model, naming name: String, or alternatives: [String] = [],
            _ what: String, line: UInt = #line
        ) {
            let before = target.stateDict()
            let text = message { try target.loadStateDict(source.stateDict()) } ?? ""
            XCTAssertFalse(text.isEmpty, "\(what) accepted", line: line)
            let named = text.contains(name) || (!alternatives.isEmpty && alternatives.allSatisfy(text.contains))
            XCTAssertTrue(named, "\(what): message does not name \(name): \(text)", line: line)
            XCTAssertEqual(target.stateDict(), before, "\(what): a refused load changed the model", line: line)
        }
        // GN has no running statistics: the first missing one (names sorted) is reported.
        check(bn, gn, naming: "layer1.0.norm1.num_batches_tracked", "GN checkpoint into a BN model")
        check(gn, bn, naming: "layer1.0.norm1.num_batches_tracked", "BN checkpoint into a GN model")
        check(mabn, bn, naming: "buffer_gz", "BN checkpoint into a MABN model")
        check(gn, deeper, naming: "layer1.1", "ResNet-14 checkpoint into a ResNet-8")
        check(deeper, gn, naming: "layer1.1", "ResNet-8 checkpoint into a ResNet-14")
        check(gn, vgg, naming: "conv1.weight", "VGG checkpoint into a ResNet")
        // Same names, other shapes: the message names the full state-dict key and both shapes.
        check(mabn, mabn8, naming: "buffer_gz", "MABN checkpoint with another S_buf")
        check(
            gn, narrow, naming: "'conv1.weight' is float32 [4, 1, 3, 3], the model expects float32 [16, 1, 3, 3]",
            "a width-4 checkpoint into a width-16 ResNet")

        // The same through Trainer.resume: a run directory of another configuration is refused before any tensor
        // is read, and the trainer's model is unchanged.
        let data = try TorchModelParityTests.syntheticData(count: 32, testCount: 8, size: 16, seed: 9)
        let directory = try makeTemporaryDirectory().appendingPathComponent("other-norm")
        let gnRun = try Trainer(
            configuration: configuration(.gn), train: data.0, test: data.1, output: directory,
            progress: ProgressReporter(style: .silent))
        gnRun.stopAfterStep = 1
        XCTAssertThrowsError(try gnRun.run())
        let bnTrainer = try Trainer(
            configuration: configuration(.bn), train: data.0, test: data.1, output: nil,
            progress: ProgressReporter(style: .silent))
        let before = bnTrainer.model.stateDict()
        let text = message { try bnTrainer.resume(from: directory) } ?? ""
        XCTAssertTrue(text.contains("another configuration"), text)
        XCTAssertEqual(bnTrainer.model.stateDict(), before)
        XCTAssertEqual(bnTrainer.step, 0)
    }

    // MARK: - failed saves

    /// A save that fails before the model file is replaced (its training-state file cannot be created) leaves
    /// the previous checkpoint loadable and unchanged.
    func testFailedSaveBeforeTheModelFileKeepsThePreviousCheckpoint() throws {
        let (directory, t) = try runDirectory("failed-save", steps: 2)
        let modelURL = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let oldModel = try Data(contentsOf: modelURL)
        let oldState = try Data(contentsOf: directory.appendingPathComponent("training-state-2.safetensors"))

        // Continue to step 4, where the save must fail: its training-state path is a non-empty directory
        // (permissions cannot stop root, which CI may be).
        let blocker = directory.appendingPathComponent("training-state-4.safetensors")
        try FileManager.default.createDirectory(
            at: blocker.appendingPathComponent("x"), withIntermediateDirectories: true)
        let second = try trainer(configuration(.bn), output: directory)
        try second.resume(from: directory)
        second.stopAfterStep = 4
        var failure: Error?
        do { try second.run() } catch { failure = error }
        XCTAssertNotNil(failure)
        XCTAssertNil(
            failure as? TrainingError, "the run reported success or an interruption: \(String(describing: failure))")
        XCTAssertTrue("\(failure!)".contains(blocker.path), "\(failure!)")

        XCTAssertEqual(try Data(contentsOf: modelURL), oldModel, "the failed save touched model.safetensors")
        XCTAssertEqual(try Data(contentsOf: directory.appendingPathComponent("training-state-2.safetensors")), oldState)
        try FileManager.default.removeItem(at: blocker)
        try assertResumable(directory, step: 2, state: t.model.stateDict())
    }

    /// A save that fails while writing the model file (after the new training state was written) leaves the
    /// previous model file and its training state in place, and no temporary file behind.
    func testFailedModelWriteKeepsThePreviousCheckpoint() throws {
        let (directory, t) = try runDirectory("failed-model-write", steps: 2)
        let modelURL = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let oldModel = try Data(contentsOf: modelURL)
        let stateSize = try Data(contentsOf: directory.appendingPathComponent("training-state-2.safetensors")).count
        XCTAssertGreaterThan(oldModel.count, stateSize + 1000, "BN's buffers make the model file the larger one")

        // Continue for one step; its checkpoint save runs under a file-size limit between the two files' sizes:
        // the new training state fits, the model file does not.
        let next = try trainer(configuration(.bn), output: directory)
        try next.resume(from: directory)
        next.stopAfterStep = 3
        var failure: Error?
        withFileSizeLimit(stateSize + 500) {
            do { try next.run() } catch { failure = error }
        }
        XCTAssertNil(
            failure as? TrainingError, "the run reported success or an interruption: \(String(describing: failure))")
        XCTAssertNotNil(failure, "the save succeeded despite the limit")
        if let failure { XCTAssertTrue("\(failure)".contains(modelURL.path), "\(failure)") }
        XCTAssertEqual(try Data(contentsOf: modelURL), oldModel, "the failed save touched model.safetensors")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        XCTAssertFalse(files.contains { $0.hasSuffix(".tmp") }, "temporary files left: \(files)")
        XCTAssertTrue(files.contains("training-state-2.safetensors"), "\(files)")
        try assertResumable(directory, step: 2, state: t.model.stateDict())
    }

    func assertResumable(_ directory: URL, step: Int, state: [String: StateTensor], line: UInt = #line) throws {
        let (tensors, _, savedStep) = try TrainingCheckpoint.readModel(
            at: directory.appendingPathComponent(TrainingCheckpoint.modelFileName))
        XCTAssertEqual(savedStep, step, line: line)
        XCTAssertEqual(tensors, state, line: line)
        let resumed = try trainer(configuration(.bn), output: directory)
        try resumed.resume(from: directory)
        XCTAssertEqual(resumed.step, step, line: line)
        XCTAssertEqual(resumed.model.stateDict(), state, line: line)
    }

    /// Runs `body` with `RLIMIT_FSIZE` at `bytes` (writes past it fail with EFBIG; SIGXFSZ ignored).
    func withFileSizeLimit(_ bytes: Int, _ body: () -> Void) {
        var old = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        let oldHandler = signal(SIGXFSZ, SIG_IGN)
        var limited = old
        limited.rlim_cur = rlim_t(bytes)
        setrlimit(Int32(RLIMIT_FSIZE.rawValue), &limited)
        body()
        setrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        signal(SIGXFSZ, oldHandler)
    }
}
