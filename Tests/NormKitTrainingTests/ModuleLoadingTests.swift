import NormKitTraining
import XCTest

/// Strict (PyTorch's default) and non-strict state-dict loads, at the model and at the layer level; and the
/// `localizedDescription` of every model and layer error.
final class ModuleLoadingTests: XCTestCase {
    func resnet8(_ kind: NormKind, seed: UInt64) throws -> ResNet {
        var generator = SeededGenerator(seed: seed)
        return try ResNet(depth: 8, normalization: NormalizationSettings(kind: kind), generator: &generator)
    }

    func zeros(_ shape: [Int]) -> StateTensor {
        .float32(shape: shape, values: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    // MARK: - models

    func testStrictModelLoadRefusesMissingAndUnexpectedKeysAndChangesNothing() throws {
        let model = try resnet8(.bn, seed: 1), good = try resnet8(.bn, seed: 2).stateDict()
        let before = model.stateDict()
        XCTAssertNotEqual(before, good)
        var missing = good
        missing.removeValue(forKey: "layer2.0.norm1.running_var")
        missing.removeValue(forKey: "fc.bias")
        var unexpected = good
        unexpected["layer4.0.conv1.weight"] = zeros([1])
        unexpected["head.bias"] = zeros([10])
        var both = missing
        both["head.bias"] = zeros([10])
        for load in [{ try model.loadStateDict($0) }, { try model.loadStateDict($0, strict: true) }]
            as [([String: StateTensor]) throws -> Void]
        {
            // Every missing and every unexpected key, sorted, in one error (as a layer's incompatibleStateDict).
            XCTAssertThrowsError(try load(missing)) {
                XCTAssertEqual(
                    $0 as? ModelError,
                    .incompatibleStateDict(
                        missingKeys: ["fc.bias", "layer2.0.norm1.running_var"], unexpectedKeys: []))
            }
            XCTAssertThrowsError(try load(unexpected)) {
                XCTAssertEqual(
                    $0 as? ModelError,
                    .incompatibleStateDict(missingKeys: [], unexpectedKeys: ["head.bias", "layer4.0.conv1.weight"]))
            }
            XCTAssertThrowsError(try load(both)) {
                XCTAssertEqual(
                    $0 as? ModelError,
                    .incompatibleStateDict(
                        missingKeys: ["fc.bias", "layer2.0.norm1.running_var"], unexpectedKeys: ["head.bias"]))
                let message = $0.localizedDescription
                for key in ["fc.bias", "layer2.0.norm1.running_var", "head.bias"] {
                    XCTAssertTrue(message.contains(key), message)
                }
            }
            XCTAssertEqual(model.stateDict(), before, "a refused load changed the model")
        }
        XCTAssertTrue(try model.loadStateDict(good, strict: true).isEmpty)
        XCTAssertEqual(model.stateDict(), good)
    }

    func testNonStrictModelLoadLoadsWhatMatchesAndReportsTheRest() throws {
        let model = try resnet8(.mabn, seed: 1), good = try resnet8(.mabn, seed: 2).stateDict()
        let before = model.stateDict()
        var state = good
        let absent = ["fc.bias", "layer2.0.norm1.buffer_x2", "layer3.0.conv2.weight"]
        for key in absent { state.removeValue(forKey: key) }
        state["layer4.0.conv1.weight"] = zeros([1])
        state["aux.running_mean"] = zeros([3])
        let result = try model.loadStateDict(state, strict: false)
        XCTAssertEqual(
            result,
            StateDictLoadResult(
                missingKeys: absent,
                unexpectedKeys: ["aux.running_mean", "layer4.0.conv1.weight"]))
        XCTAssertFalse(result.isEmpty)
        XCTAssertTrue(result.description.contains("layer2.0.norm1.buffer_x2"), result.description)
        let after = model.stateDict()
        XCTAssertEqual(Set(after.keys), Set(good.keys))
        for (key, value) in after {
            XCTAssertEqual(value, absent.contains(key) ? before[key] : good[key], key)
        }
        // The live parameter objects were updated in place (an optimizer holding them sees the new values).
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.name, $0.parameter) })
        XCTAssertEqual(
            named["fc.weight"].map { StateTensor.float32(shape: $0.shape, values: $0.value) },
            good["fc.weight"])
        let full = try model.loadStateDict(good, strict: false)
        XCTAssertTrue(full.isEmpty)
        XCTAssertEqual(full, StateDictLoadResult())
        XCTAssertEqual(model.stateDict(), good)
    }

    func testMisShapedOrRefusedTensorsThrowInBothModesAndChangeNothing() throws {
        let model = try resnet8(.brn, seed: 1), good = try resnet8(.brn, seed: 2).stateDict()
        let before = model.stateDict()
        for strict in [true, false] {
            var state = good
            state["layer1.0.conv2.weight"] = zeros([16, 16, 1, 1])
            XCTAssertThrowsError(try model.loadStateDict(state, strict: strict)) {
                XCTAssertEqual(
                    $0 as? ModelError,
                    .mismatchedTensor(
                        name: "layer1.0.conv2.weight",
                        expected: "float32 [16, 16, 3, 3]",
                        found: "float32 [16, 16, 1, 1]"))
            }
            state = good
            state["norm1.num_batches_tracked"] = zeros([])
            XCTAssertThrowsError(try model.loadStateDict(state, strict: strict)) {
                XCTAssertEqual(
                    $0 as? ModelError,
                    .mismatchedTensor(
                        name: "norm1.num_batches_tracked",
                        expected: "int64 []", found: "float32 []"))
            }
            // A value the layer refuses (BRN's running σ must be positive), in a module loaded after most others:
            // everything loaded before it is rolled back.
            state = good
            state["layer3.0.norm2.running_std"] = zeros([64])
            if !strict { state.removeValue(forKey: "fc.bias") }
            XCTAssertThrowsError(try model.loadStateDict(state, strict: strict)) {
                XCTAssertTrue("\($0)".contains("running_std"), "\($0)")
            }
            XCTAssertEqual(model.stateDict(), before, "strict \(strict): a refused load changed the model")
        }
    }

    // MARK: - layers

    func testLayerLoadsAreStrictByDefaultWithANonStrictOption() throws {
        var rng = SeededGenerator(seed: 3)
        let conv = try Conv2d(inChannels: 2, outChannels: 3, kernelSize: 1, bias: true, generator: &rng)
        let donor = try Conv2d(inChannels: 2, outChannels: 3, kernelSize: 1, bias: true, generator: &rng)
        let good = donor.stateDict(), before = conv.stateDict()
        var extra = good
        extra["running_mean"] = zeros([3])
        XCTAssertThrowsError(try conv.loadStateDict(extra)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .incompatibleStateDict(layer: conv.name, missingKeys: [], unexpectedKeys: ["running_mean"]))
        }
        XCTAssertThrowsError(try conv.loadStateDict(["weight": good["weight"]!], strict: true)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .incompatibleStateDict(layer: conv.name, missingKeys: ["bias"], unexpectedKeys: []))
        }
        XCTAssertThrowsError(try conv.loadStateDict(["running_mean": zeros([3])])) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .incompatibleStateDict(
                    layer: conv.name, missingKeys: ["bias", "weight"], unexpectedKeys: ["running_mean"]))
        }
        XCTAssertEqual(conv.stateDict(), before)
        let result = try conv.loadStateDict(["weight": good["weight"]!, "running_mean": zeros([3])], strict: false)
        XCTAssertEqual(result, StateDictLoadResult(missingKeys: ["bias"], unexpectedKeys: ["running_mean"]))
        XCTAssertEqual(conv.weight.value, donor.weight.value)
        XCTAssertEqual(conv.bias?.value, [0, 0, 0], "a missing tensor keeps its value")
        XCTAssertThrowsError(try conv.loadStateDict(["weight": zeros([3, 2])], strict: false)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .invalidState(
                    layer: conv.name, name: "weight",
                    reason: "expected float32 [3, 2, 1, 1], got float32 [3, 2]"))
        }
        XCTAssertEqual(conv.weight.value, donor.weight.value)

        // Stateless layers accept exactly nothing.
        let relu = ReLU()
        XCTAssertNoThrow(try relu.loadStateDict([:]))
        XCTAssertThrowsError(try relu.loadStateDict(["weight": zeros([1])])) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .incompatibleStateDict(layer: "ReLU", missingKeys: [], unexpectedKeys: ["weight"]))
        }
        XCTAssertEqual(try relu.loadStateDict(["weight": zeros([1])], strict: false).unexpectedKeys, ["weight"])

        // A normalization leaf: its buffers are part of the check; its own rules still apply.
        let bn = NormalizationModule(try BatchNorm(channels: 4))
        XCTAssertEqual(
            Set(bn.stateDict().keys),
            [
                "weight", "bias", "running_mean", "running_var",
                "num_batches_tracked",
            ])
        var state = bn.stateDict()
        state.removeValue(forKey: "running_var")
        XCTAssertThrowsError(try bn.loadStateDict(state)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .incompatibleStateDict(
                    layer: "BatchNorm(channels: 4)", missingKeys: ["running_var"], unexpectedKeys: []))
        }
        state["weight"] = .float32(shape: [4], values: [1, 2, 3, 4])
        XCTAssertEqual(try bn.loadStateDict(state, strict: false).missingKeys, ["running_var"])
        XCTAssertEqual(bn.layer?.weight?.value, [1, 2, 3, 4])
    }

    func testSequentialIsAModelAndNamesItsLayersByPosition() throws {
        var rng = SeededGenerator(seed: 4)
        let net = Sequential(
            try Conv2d(inChannels: 1, outChannels: 2, kernelSize: 3, generator: &rng),
            NormalizationModule(try BatchNorm(channels: 2)), ReLU())
        XCTAssertEqual(
            net.stateDict().keys.sorted(),
            [
                "0.weight", "1.bias", "1.num_batches_tracked",
                "1.running_mean", "1.running_var", "1.weight",
            ])
        var state = net.stateDict()
        state.removeValue(forKey: "1.running_mean")
        XCTAssertThrowsError(try net.loadStateDict(state)) {
            XCTAssertEqual(
                $0 as? ModelError, .incompatibleStateDict(missingKeys: ["1.running_mean"], unexpectedKeys: []))
        }
        XCTAssertEqual(try net.loadStateDict(state, strict: false).missingKeys, ["1.running_mean"])
    }

    // MARK: - messages

    func testEveryErrorHasItsMessageAsLocalizedDescription() throws {
        // The training layers' own errors and the ones they share with NormKit's layers.
        let layerErrors: [any LocalizedError & CustomStringConvertible] = [
            NormalizationError.invalidArgument(layer: "Conv2d", name: "stride", value: "0", expected: "at least 1"),
            LayerError.wrongRank(layer: "Linear(64→10)", expected: 2, shape: [3, 4, 1]),
            LayerError.unsupportedLayout(layer: "MaxPool2d(2×2, stride 2)", layout: .channelsLast),
            NormalizationError.channelMismatch(layer: "Conv2d(16→32, 3×3, stride 2, padding 1)", expected: 16, got: 3),
            NormalizationError.emptyBatch(layer: "GlobalAveragePool"),
            LayerError.inputTooSmall(
                layer: "MaxPool2d(2×2, stride 2)", height: 1, width: 4, kernelSize: 2, padding: 0),
            NormalizationError.shapeMismatch(
                layer: "ReLU", expected: [2, 3], expectedLayout: .channelsFirst, got: [3, 2],
                gotLayout: .channelsFirst),
            NormalizationError.backwardBeforeForward(layer: "Linear(64→10)"),
            LayerError.labelCountMismatch(batch: 3, labels: 2),
            LayerError.labelOutOfRange(index: 1, label: 4, classes: 4),
            NormalizationError.invalidState(
                layer: "Conv2d(2→3, 1×1, stride 1, padding 0, bias)", name: "bias", reason: "missing"),
        ]
        for error in layerErrors {
            XCTAssertEqual((error as Error).localizedDescription, error.description)
            let layer = error.description.prefix { $0 != ":" }
            XCTAssertTrue(
                ["Conv2d", "Linear", "MaxPool2d", "GlobalAveragePool", "ReLU", "SoftmaxCrossEntropy"]
                    .contains { layer.hasPrefix($0) }, "does not start with the layer: \(error.description)")
        }
        let modelErrors: [(ModelError, String)] = [
            (.unknownModel("resnet9"), "resnet9"), (.invalidDepth(9), "9"),
            (.unsupported("optimizer state does not match the model"), "optimizer state"),
            (.missingTensor("layer1.0.norm1.running_var"), "layer1.0.norm1.running_var"),
            (.unexpectedTensors(["head.bias"]), "head.bias"),
            (.incompatibleStateDict(missingKeys: ["fc.bias"], unexpectedKeys: []), "fc.bias"),
            (.incompatibleStateDict(missingKeys: [], unexpectedKeys: ["head.bias"]), "head.bias"),
            (
                .mismatchedTensor(name: "fc.weight", expected: "float32 [10, 64]", found: "float32 [10, 32]"),
                "fc.weight"
            ),
        ]
        for (error, named) in modelErrors {
            XCTAssertEqual((error as Error).localizedDescription, error.description)
            XCTAssertTrue(error.localizedDescription.contains(named), error.localizedDescription)
        }
        // Thrown errors name the layer they come from.
        var rng = SeededGenerator(seed: 5)
        let conv = try Conv2d(inChannels: 16, outChannels: 32, kernelSize: 3, stride: 2, padding: 1, generator: &rng)
        do {
            _ = try conv(Tensor(zeros: [1, 3, 8, 8]))
            XCTFail("a 3-channel input was accepted")
        } catch {
            XCTAssertEqual(
                error.localizedDescription,
                "Conv2d(16→32, 3×3, stride 2, padding 1): input has 3 channels, the layer was built for 16")
        }
        let data = DataError.invalidArgument(name: "batch", value: "0", expected: "at least 1")
        XCTAssertEqual((data as Error).localizedDescription, data.description)
    }
}
