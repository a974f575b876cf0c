import NormKitTraining
import XCTest

/// `scoped(to:)` and `prefixed(with:)`: one layer's state dict out of a model's, and back.
final class StateDictScopeTests: XCTestCase {
    func tensor(_ values: [Float]) -> StateTensor { .float32(shape: [values.count], values: values) }

    func testALayerScopedOutOfAResNetStateDictLoadsStrictlyIntoAFreshLayer() throws {
        for kind in [NormKind.bn, .gn, .mabn] {
            var generator = SeededGenerator(seed: 7)
            let settings = NormalizationSettings(kind: kind)
            let model = try ResNet(depth: 8, normalization: settings, generator: &generator)
            let block = model.layer1.blocks[0]
            // Values of this layer's own: γ and β, and the running statistics a training forward moves.
            block.norm1.layer?.weight?.value = (0..<16).map { 0.5 + Float($0) / 8 }
            block.norm1.layer?.bias?.value = (0..<16).map { Float($0) / 4 - 2 }
            _ = try model(Tensor.randomNormal(shape: [4, 1, 8, 8], using: &generator))
            let state = model.stateDict()
            let want = block.norm1.stateDict()
            XCTAssertNotEqual(want, block.norm2.stateDict(), "\(kind)")

            let scoped = state.scoped(to: "layer1.0.norm1")
            XCTAssertEqual(scoped, want, "\(kind)")
            XCTAssertEqual(state.scoped(to: "layer1.0.norm1."), want, "\(kind): the trailing dot is optional")
            let fresh = try XCTUnwrap(try settings.makeLayer(channels: 16))
            XCTAssertNotEqual(fresh.stateDict(), want, "\(kind)")
            XCTAssertTrue(try fresh.loadStateDict(scoped, strict: true).isEmpty, "\(kind)")
            XCTAssertEqual(fresh.stateDict(), want, "\(kind)")

            // Back: the layer's state written under its name into another model's.
            let other = try ResNet(depth: 8, normalization: settings, generator: &generator)
            var otherState = other.stateDict()
            otherState.merge(fresh.stateDict().prefixed(with: "layer1.0.norm1")) { _, new in new }
            try other.loadStateDict(otherState)
            XCTAssertEqual(other.layer1.blocks[0].norm1.stateDict(), want, "\(kind)")
        }
    }

    func testAPrefixMatchesWholeDottedComponentsOnly() {
        let state: [String: StateTensor] = [
            "layer1.0.norm1.weight": tensor([1]),
            "layer1.0.norm1.running_mean": tensor([2]),
            "layer1.0.norm10.weight": tensor([3]),
            "layer1.0.norm1x.weight": tensor([4]),
            "layer1.0.norm1": tensor([5]),
            "layer1.10.norm1.weight": tensor([6]),
            "xlayer1.0.norm1.weight": tensor([7]),
        ]
        let expected = ["weight": tensor([1]), "running_mean": tensor([2])]
        XCTAssertEqual(state.scoped(to: "layer1.0.norm1"), expected)
        XCTAssertEqual(state.scoped(to: "layer1.0.norm1."), expected)
        XCTAssertEqual(
            state.scoped(to: "layer1.1").keys.sorted(), [], "layer1.1 is not a prefix of layer1.10's keys")
        XCTAssertEqual(
            state.scoped(to: "layer1.0").keys.sorted(),
            ["norm1.running_mean", "norm1.weight", "norm10.weight", "norm1x.weight", "norm1"].sorted())
        XCTAssertEqual(state.scoped(to: ""), state, "an empty prefix takes everything")
        XCTAssertEqual(state.prefixed(with: ""), state, "an empty prefix changes nothing")
    }

    func testAnUnknownPrefixGivesAnEmptyStateDict() throws {
        var generator = SeededGenerator(seed: 8)
        let state = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &generator)
            .stateDict()
        for prefix in ["layer4", "layer1.1.norm1", "layer1.0.norm3", "norm", "layer1.0.norm1.weight"] {
            XCTAssertEqual(state.scoped(to: prefix), [:], prefix)
        }
        XCTAssertEqual([String: StateTensor]().scoped(to: "layer1"), [:])
    }

    func testScopedAndPrefixedAreInverses() throws {
        var generator = SeededGenerator(seed: 9)
        let model = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .brn), generator: &generator)
        let state = model.stateDict()
        let norm = model.layer2.blocks[0].norm2.stateDict()
        for prefix in ["layer2.0.norm2", "layer2.0.norm2."] {
            XCTAssertEqual(norm.prefixed(with: prefix).scoped(to: prefix), norm, prefix)
            XCTAssertEqual(
                state.scoped(to: prefix).prefixed(with: prefix), state.filter { $0.key.hasPrefix("layer2.0.norm2.") })
        }
        XCTAssertEqual(
            norm.prefixed(with: "layer2.0.norm2").keys.sorted(),
            norm.keys.map { "layer2.0.norm2." + $0 }.sorted())
        // A model's state dict is its children's, each prefixed with the child's name.
        var rebuilt: [String: StateTensor] = [:]
        for (name, child) in model.children {
            rebuilt.merge(child.stateDict().prefixed(with: name)) { old, _ in
                XCTFail(name); return old
            }
        }
        XCTAssertEqual(rebuilt, state)
        XCTAssertEqual(
            state.scoped(to: "layer1").prefixed(with: "layer1"), model.layer1.stateDict().prefixed(with: "layer1"))
    }
}
