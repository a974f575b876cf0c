import Foundation
import NormKitTraining
import XCTest

/// Folding for inference (spec §10, `normkit export --fold`): the folded model against the unfolded one in eval
/// mode, in NormKit and through the reference `torch_models.fold`.
///
/// `scripts/make_fold_fixtures.py` saved, for bn, brn, mabn, frozen-bn and none, a perturbed width-4 ResNet-8's
/// `state_dict` (`unfolded.*`), the reference's `fold(model).state_dict()` (`folded.*`), an input and both
/// models' logits. Tolerances (relative: max |diff| / max |reference|): 1e-5 between a NormKit model and its
/// NormKit fold, and for folded tensors against the reference's (float rounding of one product); 1e-4 for
/// logits across frameworks (the parity tests' bound: different convolution summation orders).
final class FoldingTests: XCTestCase {
    static let foldable: [NormKind] = [.bn, .brn, .mabn, .frozenBN, .none]
    typealias Parity = TorchModelParityTests

    // MARK: - Against the reference's fold()

    func testFoldMatchesTheReferenceFoldTensorsNamesAndLogits() throws {
        var report: [String] = []
        for kind in Self.foldable {
            let (fixture, metadata) = try SafeTensors.read(from: try Parity.fixture("fold_resnet8_\(kind.rawValue)"))
            XCTAssertEqual(metadata["norm"], kind.rawValue)
            let unfolded = Self.entries(fixture, prefix: "unfolded.")
            let expected = Self.entries(fixture, prefix: "folded.")
            let model = try Parity.fixtureModel(kind)
            try model.loadStateDict(unfolded)
            let before = model.stateDict()
            let folded = try fold(model)
            XCTAssertEqual(model.stateDict(), before, "\(kind): folding changed the source model")

            // Names: the reference folded model's state_dict, in PyTorch's order (parameters only: no buffers).
            let names = try JSONDecoder().decode([String].self, from: Data(metadata["folded_names"]!.utf8))
            XCTAssertEqual(folded.namedParameters().map(\.name), names, "\(kind): folded names or order")
            XCTAssertEqual(Set(folded.stateDict().keys), Set(names), "\(kind): folded state_dict keys")
            XCTAssertTrue(names.contains("layer2.0.downsample.0.bias") && names.contains("conv1.bias"))
            XCTAssertFalse(
                folded.namedModules().contains { ($0.module as? NormalizationModule)?.layer != nil },
                "\(kind): a normalization layer is left")

            // Tensors: W' = s·W (centred for MABN), b' = s·b + t, as the reference computes them.
            var tensorDifference = 0.0
            for (name, value) in folded.stateDict() {
                guard let theirs = expected[name] else { XCTFail("\(kind): reference has no \(name)"); continue }
                XCTAssertEqual(value.shape, theirs.shape, "\(kind) \(name) shape")
                let d = Parity.relativeDifference(Parity.floats(value), Parity.floats(theirs))
                tensorDifference = max(tensorDifference, d)
                XCTAssertLessThan(d, 1e-5, "\(kind) folded \(name)")
            }

            let x = try Tensor(shape: fixture["input"]!.shape, values: Parity.floats(fixture["input"]))
            let eval = try model.forward(x, training: false).values
            let foldedLogits = try folded.forward(x, training: false).values
            let inNormKit = Parity.relativeDifference(foldedLogits, eval)
            let againstTorch = Parity.relativeDifference(foldedLogits, Parity.floats(fixture["logits_folded"]))
            XCTAssertLessThan(inNormKit, 1e-5, "\(kind): folded vs unfolded eval logits in NormKit")
            XCTAssertLessThan(againstTorch, 1e-4, "\(kind): NormKit's folded logits vs the reference's fold")
            XCTAssertLessThan(
                Parity.relativeDifference(eval, Parity.floats(fixture["logits_eval"])), 1e-4,
                "\(kind): unfolded eval logits vs PyTorch")

            // The reference's folded tensors load strictly into NormKit's folded model and give its logits.
            var generator = SeededGenerator(seed: 3)
            let fromTorch = try FoldedResNet(depth: 8, width: 4, generator: &generator)
            try fromTorch.loadStateDict(expected)
            let throughTorch = Parity.relativeDifference(
                try fromTorch.forward(x, training: false).values,
                Parity.floats(fixture["logits_folded"]))
            XCTAssertLessThan(throughTorch, 1e-4, "\(kind): the reference's folded model in NormKit")
            report.append(
                String(
                    format:
                        "%@ tensors %.1e, folded vs unfolded %.1e, vs torch fold %.1e, torch-folded weights in NormKit %.1e",
                    kind.rawValue, tensorDifference, inNormKit, againstTorch, throughTorch))
        }
        print("Folding vs reference (max |diff| / max |reference|):\n  " + report.joined(separator: "\n  "))
    }

    /// The MABN fixture sees the centring: its CenConv filters have clearly non-zero means, the folded ones none.
    func testMABNFixtureNeedsTheCentring() throws {
        let (fixture, _) = try SafeTensors.read(from: try Parity.fixture("fold_resnet8_mabn"))
        let model = try Parity.fixtureModel(.mabn)
        try model.loadStateDict(Self.entries(fixture, prefix: "unfolded."))
        let folded = try fold(model)
        for (source, target) in [(model.conv1, folded.conv1), (model.blocks[1].conv2, folded.blocks[1].conv2)] {
            let filters = source.outChannels, fanIn = source.weight.value.count / filters
            func largestMean(_ w: [Float]) -> Double {
                (0..<filters).map { o in
                    abs(w[o * fanIn..<(o + 1) * fanIn].reduce(0.0) { $0 + Double($1) } / Double(fanIn))
                }.max()!
            }
            let scale = target.weight.value.map { abs(Double($0)) }.max()!
            XCTAssertGreaterThan(largestMean(source.weight.value), 1e-3, "uncentred source filters")
            XCTAssertLessThan(largestMean(target.weight.value) / scale, 1e-6, "folded MABN filters are centred")
        }
    }

    // MARK: - In NormKit

    /// A width-16 ResNet-8 with perturbed γ, β and running statistics and three training forwards on random
    /// images (moving BN/BRN/MABN statistics further): the fold's eval logits equal the model's.
    func testFoldedModelEqualsUnfoldedInEvalModeAfterTraining() throws {
        var report: [String] = []
        for kind in Self.foldable {
            var generator = SeededGenerator(seed: 21)
            let model = try ResNet(
                depth: 8, normalization: NormalizationSettings(kind: kind, mabnBufferSize: 2),
                zeroInitResidualScale: false, generator: &generator)
            try Self.perturb(model, generator: &generator)
            for _ in 0..<3 {
                let x = Tensor.randomNormal(shape: [4, 1, 16, 16], mean: 1, standardDeviation: 3, using: &generator)
                _ = try model.forward(x, training: true)
            }
            let x = Tensor.randomNormal(shape: [5, 1, 16, 16], using: &generator)
            let eval = try model.forward(x, training: false).values
            let folded = try fold(model)
            let d = Parity.relativeDifference(try folded.forward(x, training: false).values, eval)
            XCTAssertLessThan(d, 1e-5, "\(kind): folded vs unfolded eval logits")
            XCTAssertEqual(
                try folded.forward(x, training: true).values, try folded.forward(x, training: false).values,
                "\(kind): the folded model depends on the mode")
            // The comparison is sensitive to the fold: moving one channel's folded bias changes the logits.
            folded.blocks[0].conv1.bias!.value[0] += 1
            XCTAssertGreaterThan(
                Parity.relativeDifference(try folded.forward(x, training: false).values, eval), 1e-4,
                "\(kind): the logits do not see a folded bias")
            report.append(String(format: "%@ %.1e", kind.rawValue, d))
        }
        print(
            "Folded vs unfolded eval logits, NormKit ResNet-8 (max |diff| / max |logit|): "
                + report.joined(separator: ", "))
    }

    func testPerSampleNormalizationsAreRefused() throws {
        for kind in [NormKind.gn, .ln, .in] {
            var generator = SeededGenerator(seed: 1)
            let model = try ResNet(depth: 8, normalization: NormalizationSettings(kind: kind), generator: &generator)
            XCTAssertThrowsError(try fold(model), "\(kind)") { error in
                guard case FoldingError.notFoldable(let path, _, let reason) = error else {
                    return XCTFail("\(kind): \(error)")
                }
                XCTAssertEqual(path, "norm1")
                XCTAssertTrue(reason.contains("per-sample") && reason.contains(kind.rawValue), reason)
                XCTAssertTrue("\(error)".contains("cannot fold"), "\(error)")
            }
            XCTAssertNotNil(kind.foldingRefusal)
        }
        XCTAssertThrowsError(try inferenceAffine(of: try GroupNorm(channels: 8, groups: 1), path: "x.norm")) { error in
            XCTAssertTrue("\(error)".contains("LayerNorm") && "\(error)".contains("x.norm"), "\(error)")
        }
        for kind in Self.foldable { XCTAssertNil(kind.foldingRefusal, "\(kind)") }
    }

    func testNonFiniteStatisticsAreRefusedWithTheChannel() throws {
        var generator = SeededGenerator(seed: 2)
        let model = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &generator)
        model.blocks[1].norm2.layer!.weight!.value[3] = .infinity
        XCTAssertThrowsError(try fold(model)) { error in
            guard case FoldingError.nonFiniteResult(let path, let channel, _) = error else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(path, "layer2.0.norm2")
            XCTAssertEqual(channel, 3)
        }
    }

    /// A weight or bias of the model itself that is not finite is named by its state-dict key and channel, not
    /// reported as a fold of the normalization after it (nor as non-finite logits).
    func testNonFiniteWeightsAreNamedWhereTheyAre() throws {
        let cases: [(key: String, index: Int, channel: Int, value: Float)] = [
            ("conv1.weight", 0, 0, .nan),
            ("layer2.0.conv1.weight", 5 * 16 * 9 + 4, 5, .nan),
            ("layer2.0.conv2.weight", 31 * 32 * 9, 31, .infinity),
            ("layer2.0.downsample.0.weight", 7 * 16 + 3, 7, -.infinity),
            ("fc.weight", 2 * 64 + 1, 2, .nan),
            ("fc.bias", 9, 9, .infinity),
        ]
        for kind in [NormKind.bn, .mabn, .none] {
            for item in cases {
                var generator = SeededGenerator(seed: 3)
                let model = try ResNet(
                    depth: 8, normalization: NormalizationSettings(kind: kind), generator: &generator)
                var state = model.stateDict()
                guard case .float32(let shape, var values) = state[item.key] else {
                    return XCTFail("\(kind): no \(item.key) in \(state.keys.sorted())")
                }
                values[item.index] = item.value
                state[item.key] = .float32(shape: shape, values: values)
                try model.loadStateDict(state)
                XCTAssertThrowsError(try fold(model), "\(kind) \(item.key)") { error in
                    XCTAssertEqual(
                        error as? FoldingError, .nonFiniteWeight(path: item.key, channel: item.channel),
                        "\(kind): \(error)")
                    XCTAssertTrue("\(error)".contains("'\(item.key)'"), "\(error)")
                }
            }
        }
    }

    // MARK: - Helpers

    /// The entries of `state` whose names start with `prefix`, without it.
    static func entries(_ state: [String: StateTensor], prefix: String) -> [String: StateTensor] {
        var out: [String: StateTensor] = [:]
        for (key, value) in state where key.hasPrefix(prefix) { out[String(key.dropFirst(prefix.count))] = value }
        return out
    }

    /// Every normalization's γ in [0.5, 1.5), β, running mean ~ 0.3·N(0, 1), running variance, std and MABN's EMA
    /// of χ² in [0.5, 2).
    static func perturb(_ model: ResNet, generator: inout SeededGenerator) throws {
        var state = model.stateDict()
        for (key, value) in state {
            guard case .float32(let shape, let values) = value, shape.count == 1, !key.hasPrefix("fc.") else {
                continue
            }
            let leaf = key.split(separator: ".").last!
            let uniform = { (g: inout SeededGenerator) in Float.random(in: 0.5..<1.5, using: &g) }
            let normals = Tensor.randomNormal(shape: [1, values.count], using: &generator).values
            var new = values
            for i in new.indices {
                switch leaf {
                case "weight": new[i] = uniform(&generator)
                case "running_var", "running_std": new[i] = uniform(&generator) + 0.5 * uniform(&generator)
                default: new[i] = 0.3 * normals[i]
                }
            }
            state[key] = .float32(shape: shape, values: new)
        }
        try model.loadStateDict(state)
    }
}
