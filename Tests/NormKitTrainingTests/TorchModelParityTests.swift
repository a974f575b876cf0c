import Foundation
import NormKitTraining
import XCTest

/// Interoperability with the reference PyTorch models (`../shared/reference/torch_models.py`), both ways.
///
/// PyTorch → NormKit: `scripts/make_torch_model_fixtures.py` saved, for every normalization, the `state_dict` of
/// a ResNet-8 of width 4 with every parameter, running statistic, ring buffer and int64 counter perturbed, and
/// what PyTorch computes from it: eval logits, one training forward's logits, the gradients of its mean
/// cross-entropy, the buffers after that forward and backward, and the eval logits from those buffers. The tests
/// load the file into NormKit's model and reproduce all of it.
///
/// NormKit → PyTorch: ``testExportForTorchInterop()`` (only with `NORMKIT_INTEROP_DIR` set) trains tiny runs
/// with ``Trainer`` and writes their run directories plus NormKit's logits; `scripts/check_torch_interop.py`
/// loads them with `load_state_dict(strict=True)` and compares.
final class TorchModelParityTests: XCTestCase {
    static let norms: [NormKind] = [.bn, .gn, .ln, .in, .brn, .mabn, .frozenBN, .none]

    static func fixture(_ name: String) throws -> URL {
        guard let url = Bundle.module.url(forResource: name, withExtension: "safetensors", subdirectory: "Fixtures")
        else {
            throw ModelError.unsupported(
                "fixture \(name).safetensors missing: run scripts/make_torch_model_fixtures.py")
        }
        return url
    }

    static func floats(_ t: StateTensor?) -> [Float] {
        switch t {
        case .float32(_, let v)?: return v
        case .int64(_, let v)?: return v.map(Float.init)
        case nil: return []
        }
    }

    /// Largest `|a − b|` divided by the largest `|b|` (1 if that is 0).
    static func relativeDifference(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "\(a.count) vs \(b.count) values")
        var diff = 0.0, scale = 0.0
        for (x, y) in zip(a, b) {
            diff = max(diff, abs(Double(x) - Double(y)))
            scale = max(scale, abs(Double(y)))
        }
        return diff / (scale > 0 ? scale : 1)
    }

    /// The width-4 ResNet-8 of the fixtures, in NormKit.
    static func fixtureModel(_ kind: NormKind) throws -> ResNet {
        var generator = SeededGenerator(seed: 99)
        return try ResNet(
            depth: 8, normalization: NormalizationSettings(kind: kind, groups: 2, mabnBufferSize: 3),
            width: 4, generator: &generator)
    }

    struct Parity {
        var eval = 0.0, train = 0.0, gradient = 0.0, buffers = 0.0, evalAfter = 0.0
    }

    /// Loads the PyTorch fixture of `kind` and compares everything; returns the worst relative differences.
    func checkTorchFixture(_ kind: NormKind) throws -> Parity {
        let name = "torch_resnet8_\(kind.rawValue)"
        let (state, metadata) = try SafeTensors.read(from: try Self.fixture(name))
        let (expected, expectedMetadata) = try SafeTensors.read(from: try Self.fixture(name + "_expected"))
        XCTAssertEqual(metadata["norm"], kind.rawValue)
        let model = try Self.fixtureModel(kind)

        // Same names, shapes and dtypes (int64 counters) as PyTorch's state_dict; the load is exact.
        XCTAssertEqual(Set(model.stateDict().keys), Set(state.keys), "\(kind): state_dict names")
        for (key, value) in model.stateDict() {
            guard let theirs = state[key] else { continue }
            XCTAssertEqual(value.shape, theirs.shape, "\(kind) \(key) shape")
            switch (value, theirs) {
            case (.float32, .float32), (.int64, .int64): break
            default: XCTFail("\(kind) \(key): dtype differs from PyTorch's")
            }
        }
        try model.loadStateDict(state)
        XCTAssertEqual(model.stateDict(), state, "\(kind): stateDict() after loadStateDict differs from the file")

        let x = try Tensor(shape: expected["input"]!.shape, values: Self.floats(expected["input"]))
        let labels = Self.floats(expected["labels"]).map { Int($0) }
        var parity = Parity()

        let evalLogits = try model.forward(x, training: false).values
        parity.eval = Self.relativeDifference(evalLogits, Self.floats(expected["logits_eval"]))
        XCTAssertEqual(model.stateDict(), state, "\(kind): an eval forward changed the state")

        let trainLogits = try model.forward(x, training: true).values
        parity.train = Self.relativeDifference(trainLogits, Self.floats(expected["logits_train"]))
        let ce = SoftmaxCrossEntropy()
        _ = try ce.forward(logits: try Tensor(shape: [labels.count, 10], values: trainLogits), labels: labels)
        var dlogits = Tensor(zeros: [0, 0])
        try ce.backward(into: &dlogits)
        try model.backward(dlogits)

        // Gradients, matched in `named_parameters()` order (NormKit's `parameters` order; BN*'s frozen γ/β are
        // buffers in PyTorch).
        let names = try JSONDecoder().decode([String].self, from: Data(expectedMetadata["parameter_names"]!.utf8))
        let trainable = model.parameters.filter(\.isTrainable)
        XCTAssertEqual(trainable.count, names.count, "\(kind): parameter count")
        for (parameter, name) in zip(trainable, names) {
            let theirs = expected["grad.\(name)"]
            XCTAssertEqual(parameter.shape, theirs?.shape, "\(kind) \(name): parameter order or shape")
            guard parameter.shape == theirs?.shape else { continue }
            let d = Self.relativeDifference(parameter.gradient, Self.floats(theirs))
            parity.gradient = max(parity.gradient, d)
            XCTAssertLessThan(d, 1e-4, "\(kind) gradient of \(name)")
        }

        // Running statistics, counters and ring buffers after the training forward and backward.
        let after = model.stateDict()
        var buffers = 0
        for (key, value) in expected where key.hasPrefix("post.") {
            let name = String(key.dropFirst("post.".count))
            guard let mine = after[name] else { XCTFail("\(kind): NormKit has no \(name)"); continue }
            switch (mine, value) {
            case (.int64(_, let a), .int64(_, let b)):
                XCTAssertEqual(a, b, "\(kind) \(name) after a training step")
            case (.float32(_, let a), .float32(_, let b)):
                let d = Self.relativeDifference(a, b)
                parity.buffers = max(parity.buffers, d)
                XCTAssertLessThan(d, 1e-4, "\(kind) \(name) after a training step")
            default:
                XCTFail("\(kind) \(name): dtype differs")
            }
            buffers += 1
        }
        let expectedBuffers = Set(state.keys).subtracting(names).count
        XCTAssertEqual(buffers, expectedBuffers, "\(kind): every buffer checked")

        let evalAfter = try model.forward(x, training: false).values
        parity.evalAfter = Self.relativeDifference(evalAfter, Self.floats(expected["logits_eval_after"]))

        XCTAssertLessThan(parity.eval, 1e-4, "\(kind) eval logits")
        XCTAssertLessThan(parity.train, 1e-4, "\(kind) training-mode logits")
        XCTAssertLessThan(parity.evalAfter, 1e-4, "\(kind) eval logits after the training step")

        // The fixture is sensitive: reversing any buffer's values (a wrong mapping or layout) changes the eval
        // logits, the training logits or the gradients. (MABN's buffer_x2 shows in the forward only in channels
        // where r is clipped, buffer_gz only in the gradients.)
        let expectedGradients = names.map { Self.floats(expected["grad.\($0)"]) }
        for (key, value) in state {
            guard case .float32(let shape, let values) = value, !names.contains(key),
                Set(values).count > 1
            else { continue }
            var wrong = state
            wrong[key] = .float32(shape: shape, values: values.reversed())
            let probe = try Self.fixtureModel(kind)
            try probe.loadStateDict(wrong)
            var change = Self.relativeDifference(
                try probe.forward(x, training: false).values,
                Self.floats(expected["logits_eval"]))
            let logits = try probe.forward(x, training: true).values
            change = max(change, Self.relativeDifference(logits, Self.floats(expected["logits_train"])))
            _ = try ce.forward(logits: try Tensor(shape: [labels.count, 10], values: logits), labels: labels)
            try ce.backward(into: &dlogits)
            try probe.backward(dlogits)
            for (parameter, gradient) in zip(probe.parameters.filter(\.isTrainable), expectedGradients) {
                change = max(change, Self.relativeDifference(parameter.gradient, gradient))
            }
            XCTAssertGreaterThan(change, 1e-3, "\(kind): the fixture does not see a wrong \(key)")
        }
        return parity
    }

    func testTorchCheckpointsReproduceLogitsGradientsAndBuffers() throws {
        var report: [String] = []
        for kind in Self.norms {
            let p = try checkTorchFixture(kind)
            report.append(
                String(
                    format: "%@ eval %.1e train %.1e grad %.1e buffers %.1e eval-after %.1e",
                    kind.rawValue, p.eval, p.train, p.gradient, p.buffers, p.evalAfter))
        }
        print("Torch → NormKit parity (max |diff| / max |torch|):\n  " + report.joined(separator: "\n  "))
    }

    /// MABN's int64 `iters` and BN's `num_batches_tracked` come back as int64 scalars (shape `[]`).
    func testCountersAreInt64Scalars() throws {
        for kind in [NormKind.bn, .brn, .mabn] {
            let (state, _) = try SafeTensors.read(from: try Self.fixture("torch_resnet8_\(kind.rawValue)"))
            let counter = kind == .mabn ? "norm1.iters" : "norm1.num_batches_tracked"
            guard case .int64(let shape, let values)? = state[counter] else {
                return XCTFail("\(kind): \(counter) is not int64")
            }
            XCTAssertEqual(shape, [])
            XCTAssertEqual(values, [kind == .mabn ? 1500 : (kind == .brn ? 10000 : 37)])
            let model = try Self.fixtureModel(kind)
            try model.loadStateDict(state)
            XCTAssertEqual(model.stateDict()[counter], state[counter])
        }
    }

    // MARK: - NormKit → PyTorch

    /// Writes, for every normalization, a real run directory (``Trainer`` with an output directory, 4 SGD steps on
    /// synthetic 16×16 images, so weights, running statistics, MABN buffers and counters have moved) plus
    /// `logits.json`: inputs, NormKit's eval logits from the saved `model.safetensors`, and the training-mode
    /// logits of a model loaded from it. `scripts/check_torch_interop.py DIR` compares them with PyTorch.
    func testExportForTorchInterop() throws {
        guard let path = ProcessInfo.processInfo.environment["NORMKIT_INTEROP_DIR"], !path.isEmpty else {
            throw XCTSkip("set NORMKIT_INTEROP_DIR to write NormKit checkpoints for scripts/check_torch_interop.py")
        }
        let root = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let (train, test) = try Self.syntheticData(count: 48, testCount: 8, size: 16, seed: 5)
        var generator = SeededGenerator(seed: 11)
        let x = Tensor.randomNormal(shape: [4, 1, 16, 16], using: &generator)

        for kind in Self.norms {
            var c = TrainingConfiguration()
            c.model = "resnet8"
            c.norm = kind
            c.batch = 8
            c.normBatch = [.bn, .brn, .mabn].contains(kind) ? 2 : nil
            c.epochs = 1
            c.trainLimit = nil
            c.seed = 3
            c.threads = 2
            c.warmupFraction = 0
            c.learningRate = 0.05
            let directory = root.appendingPathComponent(kind.rawValue)
            try? FileManager.default.removeItem(at: directory)
            let trainer = try Trainer(
                configuration: c, train: train, test: test, output: directory,
                progress: ProgressReporter(style: .silent))
            trainer.stopAfterStep = 4
            XCTAssertThrowsError(try trainer.run()) { error in
                XCTAssertEqual(error as? TrainingError, .interrupted(step: 4, directory: directory.path))
            }
            let file = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
            let (tensors, configuration, step) = try TrainingCheckpoint.readModel(at: file)
            XCTAssertEqual(configuration, c.resolved)
            XCTAssertEqual(step, 4)

            // Eval logits of the model as saved.
            let evalModel = try makeModel(named: "resnet8", normalization: trainer.normalization, seed: 0)
            try evalModel.loadStateDict(tensors)
            let evalLogits = try evalModel.forward(x, training: false).values
            XCTAssertEqual(evalLogits, try trainer.model.forward(x, training: false).values)

            // Training-mode logits of the saved state in the model PyTorch builds from the metadata (whole-batch
            // statistics, the paper's BRN schedule).
            let torchLike = try makeModel(
                named: "resnet8",
                normalization: NormalizationSettings(
                    kind: kind, groups: c.groups ?? NormalizationSettings.defaultGroups,
                    mabnBufferSize: trainer.normalization.mabnBufferSize),
                seed: 0)
            try torchLike.loadStateDict(tensors)
            let trainLogits = try torchLike.forward(x, training: true).values

            let record: [String: Any] = [
                "norm": kind.rawValue,
                "run": kind.rawValue,
                "input_shape": x.shape,
                "input": x.values.map(Double.init),
                "logits_eval": evalLogits.map(Double.init),
                "logits_train": trainLogits.map(Double.init),
            ]
            let json = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys])
            try json.write(to: directory.appendingPathComponent("logits.json"))
        }
        print("wrote NormKit run directories for \(Self.norms.map(\.rawValue)) to \(root.path)")
    }

    /// `count` random 16×16 images whose label is a simple function of the pixels (learnable).
    static func syntheticData(count: Int, testCount: Int, size: Int, seed: UInt64) throws -> (Dataset, Dataset) {
        var generator = SeededGenerator(seed: seed)
        func make(_ n: Int) throws -> Dataset {
            var pixels = [UInt8](repeating: 0, count: n * size * size)
            var labels = [Int32](repeating: 0, count: n)
            for i in 0..<n {
                let label = Int(generator.next() % 10)
                labels[i] = Int32(label)
                for p in 0..<(size * size) {
                    let row = p / size
                    let bright = row % 10 == label ? 200 : 30
                    pixels[i * size * size + p] = UInt8(min(255, bright + Int(generator.next() % 40)))
                }
            }
            return try Dataset(
                pixels: pixels, labels: labels, height: size, width: size, classCount: 10,
                statistics: PixelStatistics(mean: 0.25, std: 0.3))
        }
        return (try make(count), try make(testCount))
    }
}
