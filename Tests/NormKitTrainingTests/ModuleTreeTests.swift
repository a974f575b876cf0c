import NormKitTraining
import XCTest

/// The module tree: names, live parameters, buffers, modules, the optimizer's order, train/eval and
/// `callAsFunction`.
final class ModuleTreeTests: XCTestCase {
    static let allKinds: [NormKind] = [.bn, .gn, .ln, .in, .brn, .mabn, .frozenBN, .none]

    func resnet8(_ kind: NormKind, seed: UInt64 = 7, width: Int = 16, zeroInit: Bool = true) throws -> ResNet {
        var generator = SeededGenerator(seed: seed)
        return try ResNet(
            depth: 8,
            normalization: NormalizationSettings(
                kind: kind, groups: width == 16 ? 16 : 2,
                mabnBufferSize: 4),
            width: width, zeroInitResidualScale: zeroInit, generator: &generator)
    }

    // MARK: - names

    func testNamedParametersAreTheStateDictParametersAndTheOptimizerList() throws {
        for kind in Self.allKinds {
            let model = try resnet8(kind)
            let named = model.namedParameters()
            let buffers = model.namedBuffers()
            let state = model.stateDict()
            let names = named.map(\.name), bufferNames = buffers.map(\.name)
            XCTAssertEqual(Set(names).count, names.count, "\(kind): duplicate parameter names")
            XCTAssertTrue(Set(names).isDisjoint(with: bufferNames), "\(kind)")
            XCTAssertEqual(Set(names).union(bufferNames), Set(state.keys), "\(kind): names are the state-dict keys")
            XCTAssertEqual(names.count + bufferNames.count, state.count, "\(kind)")
            // Parameters are exactly the state dict's `weight`/`bias` entries (BN*'s frozen γ/β included).
            XCTAssertEqual(
                Set(names), Set(state.keys.filter { $0.hasSuffix(".weight") || $0.hasSuffix(".bias") }),
                "\(kind)")
            for (name, parameter) in named {
                XCTAssertEqual(
                    state[name], .float32(shape: parameter.shape, values: parameter.value), "\(kind) \(name)")
                XCTAssertTrue(name.hasSuffix("." + parameter.name), "\(kind) \(name)")
            }
            for (name, value) in buffers { XCTAssertEqual(state[name], value, "\(kind) \(name)") }
            // The optimizer's list is the same objects in the same order.
            XCTAssertEqual(model.parameters.count, named.count, "\(kind)")
            for (p, (name, q)) in zip(model.parameters, named) { XCTAssertTrue(p === q, "\(kind) \(name)") }
        }
    }

    func testNamedParametersAreTheLiveObjects() throws {
        let model = try resnet8(.gn, zeroInit: false)  // with γ = 0 a block's conv1 would not reach the output
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.name, $0.parameter) })
        // The same objects as the typed path through the public tree.
        XCTAssertTrue(named["conv1.weight"] === model.conv1.weight)
        XCTAssertTrue(named["norm1.bias"] === model.norm1.layer?.bias)
        XCTAssertTrue(named["layer2.0.conv1.weight"] === model.stages[1].blocks[0].conv1.weight)
        XCTAssertTrue(named["layer3.0.downsample.0.weight"] === model.stages[2].blocks[0].downsample?.conv.weight)
        XCTAssertTrue(named["layer3.0.downsample.1.weight"] === model.blocks[2].downsample?.norm.layer?.weight)
        XCTAssertTrue(named["fc.weight"] === model.fc.weight)
        XCTAssertTrue(model.parameter("layer1.0.norm2.bias") === model.layer1.blocks[0].norm2.layer?.bias)
        XCTAssertNil(model.parameter("layer1.0.norm2.running_mean"))
        XCTAssertTrue(model.submodule("layer3.0.downsample.0") === model.layer3.blocks[0].downsample?.conv)
        XCTAssertTrue(model.submodule("") === model)
        XCTAssertNil(model.submodule("layer4"))

        var rng = SeededGenerator(seed: 1)
        let x = Tensor.randomNormal(shape: [4, 1, 12, 12], using: &rng)
        let before = try model.forward(x, training: false).values
        // Changing a value through the tree changes the output ...
        let weight = try XCTUnwrap(named["layer1.0.conv1.weight"])
        weight.value = weight.value.map { $0 * 2 + 0.1 }
        let after = try model.forward(x, training: false).values
        XCTAssertNotEqual(before, after, "a parameter reached by name is not the one the model computes with")
        // ... and a backward writes the gradient into the object the tree gives: ∂loss/∂fc.bias = Σ_n dlogits.
        let labels = [1, 2, 3, 4]
        let ce = SoftmaxCrossEntropy()
        _ = try ce.forward(logits: try model.forward(x, training: true), labels: labels)
        var dlogits = Tensor(zeros: [0, 0])
        try ce.backward(into: &dlogits)
        try model.backward(dlogits)
        let d = dlogits.values
        let expected = (0..<10).map { c in (0..<4).map { d[$0 * 10 + c] }.reduce(0, +) }
        let bias = try XCTUnwrap(named["fc.bias"])
        for c in 0..<10 { XCTAssertEqual(bias.gradient[c], expected[c], accuracy: 1e-6) }
        XCTAssertTrue(weight.gradient.contains { $0 != 0 }, "layer1.0.conv1.weight got no gradient")
    }

    func testNamedModulesWalkTheTreeInPreOrder() throws {
        let model = try resnet8(.bn)
        let modules = model.namedModules()
        var expected = ["", "conv1", "norm1"]
        for stage in 1...3 {
            let block = "layer\(stage).0"
            expected += [
                "layer\(stage)", block, "\(block).conv1", "\(block).norm1", "\(block).conv2", "\(block).norm2",
            ]
            if stage > 1 { expected += ["\(block).downsample", "\(block).downsample.0", "\(block).downsample.1"] }
        }
        expected.append("fc")
        XCTAssertEqual(modules.map(\.name), expected)
        XCTAssertTrue(modules[0].module === model)
        XCTAssertTrue(modules.first { $0.name == "layer2.0" }?.module === model.stages[1].blocks[0])
        XCTAssertTrue(modules.first { $0.name == "layer2" }?.module is ResNetStage)
        XCTAssertTrue(modules.first { $0.name == "layer2.0.downsample" }?.module is ResNetShortcut)
        XCTAssertTrue(modules.first { $0.name == "layer1.0.norm2" }?.module is NormalizationModule)
        XCTAssertEqual(model.children.map(\.name), ["conv1", "norm1", "layer1", "layer2", "layer3", "fc"])
        // ResNet-20: three blocks per stage.
        var generator = SeededGenerator(seed: 1)
        let deeper = try ResNet(depth: 20, normalization: NormalizationSettings(kind: .gn), generator: &generator)
        XCTAssertEqual(deeper.stages.map(\.blocks.count), [3, 3, 3])
        XCTAssertEqual(deeper.stages[2].children.map(\.name), ["0", "1", "2"])
        XCTAssertTrue(deeper.namedModules().contains { $0.name == "layer3.2.norm2" })
        // VGG: `features` is a Sequential with PyTorch's indices.
        let vgg = try VGG(normalization: NormalizationSettings(kind: .gn), generator: &generator)
        XCTAssertEqual(
            vgg.namedModules().map(\.name),
            ["", "features"] + (0..<20).map { "features.\($0)" } + ["fc"])
    }

    func testNamedBuffersAreTheRunningStatistics() throws {
        let bn = try resnet8(.bn)
        let norms =
            ["norm1"]
            + (1...3).flatMap { s in
                ["layer\(s).0.norm1", "layer\(s).0.norm2"] + (s > 1 ? ["layer\(s).0.downsample.1"] : [])
            }
        XCTAssertEqual(
            bn.namedBuffers().map(\.name),
            norms.flatMap { ["\($0).running_mean", "\($0).running_var", "\($0).num_batches_tracked"] })
        XCTAssertEqual(
            try resnet8(.mabn).namedBuffers().prefix(4).map(\.name),
            ["norm1.running_var", "norm1.iters", "norm1.buffer_x2", "norm1.buffer_gz"])
        XCTAssertEqual(
            try resnet8(.brn).namedBuffers().prefix(3).map(\.name),
            ["norm1.running_mean", "norm1.running_std", "norm1.num_batches_tracked"])
        XCTAssertTrue(try resnet8(.gn).namedBuffers().isEmpty)
        XCTAssertTrue(try resnet8(.none).namedBuffers().isEmpty)
        // They are read afresh: a training forward moves them.
        var rng = SeededGenerator(seed: 2)
        let x = Tensor.randomNormal(shape: [4, 1, 8, 8], using: &rng)
        let before = bn.namedBuffers()
        _ = try bn.forward(x, training: true)
        let after = bn.namedBuffers()
        XCTAssertEqual(after.first { $0.name == "norm1.num_batches_tracked" }?.value, .int64(shape: [], values: [1]))
        XCTAssertNotEqual(
            before.first { $0.name == "norm1.running_mean" }?.value,
            after.first { $0.name == "norm1.running_mean" }?.value)
    }

    // MARK: - the optimizer's order

    /// The order `model.parameters` had before the module tree (captured from that code, seed 7): optimizer
    /// velocities in training checkpoints are stored by this index, so it must never change.
    func testOptimizerOrderIsPinned() throws {
        let model = try resnet8(.bn)
        var expected: [(String, [Int], Float)] = [
            ("conv1.weight", [16, 1, 3, 3], 0.65803677),
            ("norm1.weight", [16], 16), ("norm1.bias", [16], 0),
        ]
        let convSums: [[Float]] = [
            [-4.576711, -8.870851], [-8.819723, 12.759287, -4.9966354],
            [1.2241137, -8.2014265, 2.2643573],
        ]
        for (s, (cin, cout)) in [(16, 16), (16, 32), (32, 64)].enumerated() {
            let block = "layer\(s + 1).0"
            expected += [
                ("\(block).conv1.weight", [cout, cin, 3, 3], convSums[s][0]),
                ("\(block).norm1.weight", [cout], Float(cout)), ("\(block).norm1.bias", [cout], 0),
                ("\(block).conv2.weight", [cout, cout, 3, 3], convSums[s][1]),
                ("\(block).norm2.weight", [cout], 0), ("\(block).norm2.bias", [cout], 0),
            ]
            if s > 0 {
                expected += [
                    ("\(block).downsample.0.weight", [cout, cin, 1, 1], convSums[s][2]),
                    ("\(block).downsample.1.weight", [cout], Float(cout)),
                    ("\(block).downsample.1.bias", [cout], 0),
                ]
            }
        }
        expected += [("fc.weight", [10, 64], -3.4142973), ("fc.bias", [10], 0.19395705)]
        let named = model.namedParameters()
        XCTAssertEqual(named.map(\.name), expected.map(\.0))
        for ((name, parameter), (_, shape, sum)) in zip(named, expected) {
            XCTAssertEqual(parameter.shape, shape, name)
            XCTAssertEqual(parameter.value.reduce(0, +), sum, accuracy: 1e-4, name)
        }
        XCTAssertTrue(zip(model.parameters, named).allSatisfy { $0 === $1.parameter })

        var generator = SeededGenerator(seed: 7)
        let vgg = try VGG(normalization: NormalizationSettings(kind: .gn), generator: &generator)
        let vggNames =
            [0, 3, 7, 10, 14, 17].flatMap {
                [
                    "features.\($0).weight", "features.\($0 + 1).weight",
                    "features.\($0 + 1).bias",
                ]
            } + ["fc.weight", "fc.bias"]
        XCTAssertEqual(vgg.namedParameters().map(\.name), vggNames)
        let vggSums: [Float] = [0.65803677, -4.576711, -6.9795194, -2.3065507, 5.048238, -7.5384045, 1.8068857]
        let weights = vgg.parameters.filter { $0.role == .weight }
        XCTAssertEqual(weights.count, vggSums.count)
        for (p, sum) in zip(weights, vggSums) { XCTAssertEqual(p.value.reduce(0, +), sum, accuracy: 1e-4) }
        XCTAssertTrue(zip(vgg.parameters, vgg.namedParameters()).allSatisfy { $0 === $1.parameter })
    }

    // MARK: - train / eval and callAsFunction

    func testTrainAndEvalSwitchTheWholeTreeAndBatchNormFollows() throws {
        let model = try resnet8(.bn, width: 4), twin = try resnet8(.bn, width: 4)
        var rng = SeededGenerator(seed: 3)
        let x = Tensor.randomNormal(shape: [4, 1, 8, 8], using: &rng)
        XCTAssertTrue(model.namedModules().allSatisfy { $0.module.training }, "modules start in training mode")

        model.eval()
        XCTAssertTrue(model.namedModules().allSatisfy { !$0.module.training })
        XCTAssertFalse(model.stages[0].blocks[0].norm1.training)
        let state = model.stateDict()
        let evalOutput = try model(x).values
        XCTAssertEqual(model.stateDict(), state, "an eval-mode call changed the running statistics")
        XCTAssertEqual(evalOutput, try twin.forward(x, training: false).values)

        model.train()
        XCTAssertTrue(model.namedModules().allSatisfy { $0.module.training })
        let trainOutput = try model(x).values
        XCTAssertEqual(trainOutput, try twin.forward(x, training: true).values)
        XCTAssertNotEqual(trainOutput, evalOutput, "batch statistics and running statistics give the same output")
        XCTAssertNotEqual(model.stateDict(), state, "a training-mode call did not update the running statistics")
        XCTAssertEqual(model.stateDict(), twin.stateDict())
        // The explicit argument ignores the mode; train(false) is eval().
        model.train(false)
        XCTAssertFalse(model.fc.training)
        XCTAssertEqual(try model.forward(x, training: true).values, try twin.forward(x, training: true).values)
    }

    func testCallAsFunctionIsForwardInTheCurrentMode() throws {
        var rng = SeededGenerator(seed: 4)
        let x = Tensor.randomNormal(shape: [2, 3, 6, 6], using: &rng)
        let conv = try Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, padding: 1, generator: &rng)
        var y = Tensor(zeros: [0, 0])
        try conv.forward(x, into: &y, training: false)
        XCTAssertEqual(try conv(x).values, y.values)
        let relu = ReLU()
        try relu.forward(x, into: &y, training: true)
        XCTAssertEqual(try relu(x).values, y.values)

        // A BatchNorm module follows its mode: training uses batch statistics, eval running statistics.
        let bn = NormalizationModule(try BatchNorm(channels: 3))
        let reference = try BatchNorm(channels: 3)
        XCTAssertEqual(try bn(x).values, try reference.forward(x, training: true).values)
        bn.eval()
        XCTAssertEqual(try bn(x).values, try reference.forward(x, training: false).values)

        let net = Sequential(
            conv, NormalizationModule(try GroupNorm(channels: 4, groups: 2)), ReLU(),
            GlobalAveragePool(), try Linear(inFeatures: 4, outFeatures: 5, generator: &rng))
        XCTAssertEqual(try net(x).values, try net.forward(x, training: true).values)
        XCTAssertEqual(try net(x).shape, [2, 5])
        let identity = NormalizationModule(nil)
        XCTAssertEqual(try identity(x).values, x.values)
    }

    // MARK: - zero-init option

    func testZeroInitResidualScaleIsAnOption() throws {
        for kind in [NormKind.bn, .gn, .mabn, .brn] {
            let zeroed = try resnet8(kind), kept = try resnet8(kind, zeroInit: false)
            XCTAssertTrue(zeroed.zeroInitResidualScale)
            XCTAssertFalse(kept.zeroInitResidualScale)
            for (a, b) in zip(zeroed.blocks, kept.blocks) {
                XCTAssertEqual(a.norm2.layer?.weight?.value.allSatisfy { $0 == 0 }, true, "\(kind): default γ = 0")
                XCTAssertEqual(b.norm2.layer?.weight?.value.allSatisfy { $0 == 1 }, true, "\(kind): option off γ = 1")
                XCTAssertEqual(b.norm1.layer?.weight?.value, a.norm1.layer?.weight?.value)
            }
            // Only those γ differ: the same random draws everywhere else.
            let differing = zeroed.stateDict().filter { kept.stateDict()[$0.key] != $0.value }.keys.sorted()
            XCTAssertEqual(
                differing, ["layer1.0.norm2.weight", "layer2.0.norm2.weight", "layer3.0.norm2.weight"],
                "\(kind)")
        }
    }
}
