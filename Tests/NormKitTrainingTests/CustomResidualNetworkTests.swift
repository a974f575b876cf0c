import NormKitTraining
import XCTest

/// A residual network composed by hand from the public API (`BasicBlock`, `ResNetShortcut`, `ResNetStage` in a
/// `Sequential`; this file imports `NormKitTraining` only, without `@testable`), checked against the same blocks
/// inside `ResNet` given the same weights; and the arguments those initializers refuse.
final class CustomResidualNetworkTests: XCTestCase {
    /// The hand-built twin of a `ResNet(depth: 14, width: 4)` and the state-dict prefix of each of its layers in
    /// the ResNet.
    private struct HandBuilt {
        let network: Sequential
        let prefixes: [String]  // "conv1", "norm1", "", "layer1", …: the ResNet name of each layer, "" for ReLU/pool
    }

    private func handBuiltResNet14(
        _ settings: NormalizationSettings, width: Int, generator: inout SeededGenerator
    ) throws -> HandBuilt {
        let stem = try Conv2d(
            inChannels: 1, outChannels: width, kernelSize: 3, padding: 1, centred: settings.centresConvolutions,
            generator: &generator)
        stem.computesInputGradient = false
        // layer1: two blocks built one by one (identity shortcuts).
        let layer1 = try ResNetStage(blocks: [
            try BasicBlock(inChannels: width, outChannels: width, normalization: settings, generator: &generator),
            try BasicBlock(inChannels: width, outChannels: width, normalization: settings, generator: &generator),
        ])
        // layer2: the stage builder (the first block makes its own projection shortcut).
        let layer2 = try ResNetStage(
            inChannels: width, outChannels: 2 * width, count: 2, stride: 2, normalization: settings,
            generator: &generator)
        // layer3: the shortcut given explicitly, as torchvision's BasicBlock(…, downsample=…).
        let shortcut = try ResNetShortcut(
            inChannels: 2 * width, outChannels: 4 * width, stride: 2, normalization: settings, generator: &generator)
        let layer3 = try ResNetStage(blocks: [
            try BasicBlock(
                inChannels: 2 * width, outChannels: 4 * width, stride: 2, normalization: settings,
                downsample: shortcut, generator: &generator),
            try BasicBlock(
                inChannels: 4 * width, outChannels: 4 * width, normalization: settings, downsample: nil,
                generator: &generator),
        ])
        let network = Sequential(
            stem, NormalizationModule(try settings.makeLayer(channels: width)), ReLU(), layer1, layer2, layer3,
            GlobalAveragePool(), try Linear(inFeatures: 4 * width, outFeatures: 10, generator: &generator))
        return HandBuilt(network: network, prefixes: ["conv1", "norm1", "", "layer1", "layer2", "layer3", "", "fc"])
    }

    /// The ResNet name of a hand-built network's tensor (`"3.0.conv1.weight"` → `"layer1.0.conv1.weight"`).
    private func resNetName(_ name: String, _ prefixes: [String]) -> String {
        let index = Int(name.prefix { $0 != "." })!
        return prefixes[index] + name.dropFirst(String(index).count)
    }

    private func assertClose(
        _ a: [Float], _ b: [Float], tolerance: Float, _ what: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let scale = max(b.map { abs($0) }.max() ?? 0, 1e-3)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst / scale, tolerance, "\(what): max difference \(worst)", file: file, line: line)
    }

    func testHandBuiltNetworkEqualsResNetForwardBackwardAndTraining() throws {
        let settings: [NormalizationSettings] = [
            NormalizationSettings(kind: .gn, groups: 2), NormalizationSettings(kind: .bn),
            NormalizationSettings(kind: .mabn, mabnBufferSize: 2),
        ]
        for setting in settings {
            var generator = SeededGenerator(seed: 7)
            let resnet = try ResNet(
                depth: 14, normalization: setting, inChannels: 1, classes: 10, width: 4, generator: &generator)
            var other = SeededGenerator(seed: 99)  // other weights, replaced by the ResNet's below
            let hand = try handBuiltResNet14(setting, width: 4, generator: &other)
            let net = hand.network

            // Every layer's entries of the ResNet's state dict, scoped, load strictly into the hand-built layer.
            let state = resnet.stateDict()
            for (layer, prefix) in zip(net.layers, hand.prefixes) where !prefix.isEmpty {
                try layer.loadStateDict(state.scoped(to: prefix))
            }
            // …and the whole state dict is the ResNet's under the positional names.
            let renamed = Dictionary(
                uniqueKeysWithValues: net.stateDict().map { (resNetName($0.key, hand.prefixes), $0.value) })
            XCTAssertEqual(renamed, state, "\(setting.kind)")

            var images = SeededGenerator(seed: 3)
            let x = Tensor.randomNormal(shape: [4, 1, 8, 8], using: &images)
            // ResNet runs its activations in its engine's layout; give the hand-built network the same input.
            let xHand = x.converted(to: resnet.engine.activationLayout)
            let labels = [1, 4, 7, 9]
            let resnetSGD = SGD(parameters: resnet.parameters, momentum: 0.9, weightDecay: 5e-4)
            let handSGD = SGD(parameters: net.parameters, momentum: 0.9, weightDecay: 5e-4)
            let resnetLoss = SoftmaxCrossEntropy(), handLoss = SoftmaxCrossEntropy()
            var resnetGradient = Tensor(zeros: [0, 0]), handGradient = Tensor(zeros: [0, 0])
            var losses: [Float] = []
            for step in 1...3 {
                let resnetLogits = try resnet.forward(x, training: true)
                let handLogits = try net.forward(xHand, training: true)
                assertClose(handLogits.values, resnetLogits.values, tolerance: 1e-5, "\(setting.kind) step \(step)")
                losses.append(try resnetLoss.forward(logits: resnetLogits, labels: labels))
                _ = try handLoss.forward(logits: handLogits, labels: labels)
                try resnetLoss.backward(into: &resnetGradient)
                try handLoss.backward(into: &handGradient)
                try resnet.backward(resnetGradient)
                try net.backward(handGradient)
                let resnetParameters = Dictionary(uniqueKeysWithValues: resnet.namedParameters().map { ($0.name, $0) })
                for (name, parameter) in net.namedParameters() {
                    let twin = try XCTUnwrap(resnetParameters[resNetName(name, hand.prefixes)]?.parameter, name)
                    assertClose(
                        parameter.gradient, twin.gradient, tolerance: 1e-4,
                        "\(setting.kind) step \(step) ∂\(name)")
                }
                try resnetSGD.step(learningRate: 0.05)
                try handSGD.step(learningRate: 0.05)
            }
            // After three SGD steps the weights (and running statistics) are still the ResNet's.
            let trained = resnet.stateDict()
            for (name, value) in net.stateDict() {
                let twin = try XCTUnwrap(trained[resNetName(name, hand.prefixes)], name)
                if case .float32(let shape, let values) = value, case .float32(let twinShape, let twinValues) = twin {
                    XCTAssertEqual(shape, twinShape, name)
                    assertClose(values, twinValues, tolerance: 1e-4, "\(setting.kind) trained \(name)")
                } else {
                    XCTAssertEqual(value, twin, name)
                }
            }
            // Evaluation mode too.
            assertClose(
                try net.forward(xHand, training: false).values, try resnet.forward(x, training: false).values,
                tolerance: 1e-4, "\(setting.kind) eval")
            XCTAssertTrue(losses.allSatisfy(\.isFinite))
        }
    }

    /// Two blocks as a whole network (`Sequential(block, block)`), their state dicts loaded from a ResNet's
    /// `layer1.0` and `layer2.0`: the same forward and input gradient as those blocks run directly.
    func testTwoBlocksLoadedFromScopedStateDict() throws {
        let gn = NormalizationSettings(kind: .gn, groups: 2)
        var generator = SeededGenerator(seed: 11)
        let resnet = try ResNet(
            depth: 8, normalization: gn, width: 4, zeroInitResidualScale: false, generator: &generator)
        let first = try BasicBlock(inChannels: 4, outChannels: 4, normalization: gn, generator: &generator)
        let second = try BasicBlock(inChannels: 4, outChannels: 8, stride: 2, normalization: gn, generator: &generator)
        let state = resnet.stateDict()
        try first.loadStateDict(state.scoped(to: "layer1.0"))
        try second.loadStateDict(state.scoped(to: "layer2.0"))
        XCTAssertEqual(first.stateDict(), state.scoped(to: "layer1.0"))
        let pair = Sequential(first, second)

        var rng = SeededGenerator(seed: 12)
        let x = Tensor.randomNormal(shape: [2, 4, 6, 6], using: &rng)
        let y = try pair.forward(x, training: true)
        var expected = try resnet.layer1.blocks[0].forward(x, training: true)
        expected = try resnet.layer2.blocks[0].forward(expected, training: true)
        XCTAssertEqual(y.shape, [2, 8, 3, 3])
        assertClose(y.values, expected.values, tolerance: 1e-6, "forward")

        let dy = Tensor.randomNormal(shape: y.shape, using: &rng)
        var dx = Tensor(zeros: [0, 0])
        try pair.backward(dy, into: &dx)
        let expectedDx = try resnet.layer1.blocks[0].backward(try resnet.layer2.blocks[0].backward(dy))
        assertClose(dx.values, expectedDx.values, tolerance: 1e-6, "input gradient")
        assertClose(
            second.downsample!.conv.weight.gradient, resnet.layer2.blocks[0].downsample!.conv.weight.gradient,
            tolerance: 1e-6, "downsample.0.weight gradient")
    }

    /// The keys of a hand-built block are those of `torch_models.BasicBlock`.
    func testStateDictKeysAreThoseOfTheReference() throws {
        var generator = SeededGenerator(seed: 1)
        let block = try BasicBlock(
            inChannels: 4, outChannels: 8, stride: 2, normalization: NormalizationSettings(kind: .bn),
            generator: &generator)
        let expected: Set<String> = [
            "conv1.weight", "norm1.weight", "norm1.bias", "norm1.running_mean", "norm1.running_var",
            "norm1.num_batches_tracked", "conv2.weight", "norm2.weight", "norm2.bias", "norm2.running_mean",
            "norm2.running_var", "norm2.num_batches_tracked", "downsample.0.weight", "downsample.1.weight",
            "downsample.1.bias", "downsample.1.running_mean", "downsample.1.running_var",
            "downsample.1.num_batches_tracked",
        ]
        XCTAssertEqual(Set(block.stateDict().keys), expected)
        XCTAssertEqual(block.norm2.layer!.weight!.value, [Float](repeating: 0, count: 8), "γ of norm2 starts at 0")
        XCTAssertEqual([block.inChannels, block.outChannels, block.stride], [4, 8, 2])
        let identity = try BasicBlock(
            inChannels: 8, outChannels: 8, normalization: NormalizationSettings(kind: .gn, groups: 4),
            zeroInitLastScale: false, generator: &generator)
        XCTAssertNil(identity.downsample)
        XCTAssertEqual(
            Set(identity.stateDict().keys),
            ["conv1.weight", "norm1.weight", "norm1.bias", "conv2.weight", "norm2.weight", "norm2.bias"])
        XCTAssertEqual(identity.norm2.layer!.weight!.value, [Float](repeating: 1, count: 8))
    }

    func testCenConvFlagAndEngineReachEveryConvolution() throws {
        var generator = SeededGenerator(seed: 2)
        let mabn = NormalizationSettings(kind: .mabn)
        let centred = try BasicBlock(inChannels: 2, outChannels: 4, normalization: mabn, generator: &generator)
        XCTAssertTrue(centred.conv1.centred && centred.conv2.centred && centred.downsample!.conv.centred)
        let plain = try BasicBlock(
            inChannels: 2, outChannels: 4, normalization: mabn, centresConvolutions: false, engine: .im2col,
            generator: &generator)
        XCTAssertFalse(plain.conv1.centred || plain.conv2.centred || plain.downsample!.conv.centred)
        XCTAssertEqual(
            [plain.conv1.engine, plain.conv2.engine, plain.downsample!.conv.engine], [.im2col, .im2col, .im2col])
        XCTAssertEqual(plain.engine, .im2col)
        let gn = NormalizationSettings(kind: .gn, groups: 2)
        XCTAssertTrue(
            try BasicBlock(
                inChannels: 2, outChannels: 2, normalization: gn, centresConvolutions: true, generator: &generator
            )
            .conv1.centred)
        // A given shortcut takes the block's engine.
        let shortcut = try ResNetShortcut(
            inChannels: 2, outChannels: 4, stride: 2, normalization: gn, generator: &generator)
        let block = try BasicBlock(
            inChannels: 2, outChannels: 4, stride: 2, normalization: gn, downsample: shortcut, engine: .im2col,
            generator: &generator)
        XCTAssertTrue(block.downsample === shortcut)
        XCTAssertEqual(shortcut.conv.engine, .im2col)
        // im2col takes channels-first only: the block's first convolution says so for a channels-last input.
        var rng = SeededGenerator(seed: 3)
        let x = Tensor.randomNormal(shape: [2, 2, 4, 4], layout: .channelsLast, using: &rng)
        XCTAssertThrowsError(try block.forward(x, training: true)) { error in
            XCTAssertEqual(error as? LayerError, .unsupportedLayout(layer: block.conv1.name, layout: .channelsLast))
        }
    }

    /// Stride 1 is the default of all three initializers, as in torchvision (`BasicBlock(inplanes, planes, stride=1)`,
    /// `conv1x1(in_planes, out_planes, stride=1)`) and NormKit's `Conv2d`: a shortcut made without a stride (the
    /// one a block that changes only the channels needs) is the shortcut of stride 1, and fits a block made without
    /// one. `ResNetShortcut` used to require the stride.
    func testStrideIsOneByDefaultAsInTorchvision() throws {
        let gn = NormalizationSettings(kind: .gn, groups: 2)
        var implicitGenerator = SeededGenerator(seed: 6), explicitGenerator = SeededGenerator(seed: 6)
        let implicit = try ResNetShortcut(
            inChannels: 4, outChannels: 8, normalization: gn, generator: &implicitGenerator)
        let explicit = try ResNetShortcut(
            inChannels: 4, outChannels: 8, stride: 1, normalization: gn, generator: &explicitGenerator)
        XCTAssertEqual(implicit.stride, 1)
        var rng = SeededGenerator(seed: 7)
        let x = Tensor.randomNormal(shape: [2, 4, 5, 5], using: &rng)
        let y = try implicit.forward(x, training: true)
        XCTAssertEqual(y.shape, [2, 8, 5, 5], "stride 1 keeps the spatial size")
        XCTAssertEqual(y.values, try explicit.forward(x, training: true).values)

        let block = try BasicBlock(
            inChannels: 4, outChannels: 8, normalization: gn, downsample: implicit, generator: &implicitGenerator)
        XCTAssertEqual(block.stride, 1)
        XCTAssertTrue(block.downsample === implicit)
        XCTAssertEqual(try block.forward(x, training: true).shape, [2, 8, 5, 5])
        let stage = try ResNetStage(
            inChannels: 4, outChannels: 8, count: 2, normalization: gn, generator: &implicitGenerator)
        XCTAssertEqual(stage.blocks.map(\.stride), [1, 1])
        XCTAssertEqual(stage.blocks[0].downsample?.stride, 1)
    }

    private func assertRefused<T>(
        _ expression: @autoclosure () throws -> T, _ expected: NormalizationError,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try expression(), file: file, line: line) { error in
            XCTAssertEqual(error as? NormalizationError, expected, file: file, line: line)
        }
    }

    func testInitializersRefuseBadArguments() throws {
        var g = SeededGenerator(seed: 4)
        let gn = NormalizationSettings(kind: .gn, groups: 2)
        func invalid(_ layer: String, _ name: String, _ value: String, _ expected: String) -> NormalizationError {
            .invalidArgument(layer: layer, name: name, value: value, expected: expected)
        }
        assertRefused(
            try BasicBlock(inChannels: 0, outChannels: 4, normalization: gn, generator: &g),
            invalid("BasicBlock", "inChannels", "0", "at least 1"))
        assertRefused(
            try BasicBlock(inChannels: 4, outChannels: -2, normalization: gn, generator: &g),
            invalid("BasicBlock", "outChannels", "-2", "at least 1"))
        assertRefused(
            try BasicBlock(inChannels: 4, outChannels: 4, stride: 0, normalization: gn, generator: &g),
            invalid("BasicBlock", "stride", "0", "at least 1"))
        assertRefused(
            try BasicBlock(
                inChannels: 4, outChannels: 4, stride: -1, normalization: gn, downsample: nil, generator: &g),
            invalid("BasicBlock", "stride", "-1", "at least 1"))
        // The shape changes but no shortcut is given: the identity cannot be added.
        for (cin, cout, stride) in [(4, 8, 1), (4, 4, 2), (4, 8, 2)] {
            XCTAssertThrowsError(
                try BasicBlock(
                    inChannels: cin, outChannels: cout, stride: stride, normalization: gn, downsample: nil,
                    generator: &g)
            ) { error in
                guard
                    case .invalidArgument("BasicBlock", "downsample", "nil", let expected)? = error
                        as? NormalizationError
                else { return XCTFail("\(error)") }
                XCTAssertTrue(
                    expected.hasPrefix("a ResNetShortcut(inChannels: \(cin), outChannels: \(cout), stride: \(stride)"))
            }
        }
        // A shortcut of other channels or stride.
        let shortcut = try ResNetShortcut(inChannels: 4, outChannels: 8, stride: 2, normalization: gn, generator: &g)
        for (cin, stride) in [(4, 1), (2, 2)] {
            assertRefused(
                try BasicBlock(
                    inChannels: cin, outChannels: 8, stride: stride, normalization: gn, downsample: shortcut,
                    generator: &g),
                invalid(
                    "BasicBlock", "downsample", "a shortcut 4→8 with stride 2",
                    "a shortcut \(cin)→8 with stride \(stride), the block's"))
        }
        // A normalization that cannot split the channels: the layer's own error.
        assertRefused(
            try BasicBlock(inChannels: 3, outChannels: 3, normalization: gn, generator: &g),
            .invalidGroups(channels: 3, groups: 2))

        assertRefused(
            try ResNetShortcut(inChannels: 4, outChannels: 0, stride: 2, normalization: gn, generator: &g),
            invalid("ResNetShortcut", "outChannels", "0", "at least 1"))
        assertRefused(
            try ResNetShortcut(inChannels: 4, outChannels: 8, stride: 0, normalization: gn, generator: &g),
            invalid("ResNetShortcut", "stride", "0", "at least 1"))

        assertRefused(try ResNetStage(blocks: []), invalid("ResNetStage", "blocks", "[]", "at least one block"))
        let a = try BasicBlock(inChannels: 4, outChannels: 8, stride: 2, normalization: gn, generator: &g)
        let b = try BasicBlock(inChannels: 4, outChannels: 4, normalization: gn, generator: &g)
        assertRefused(
            try ResNetStage(blocks: [a, b]),
            invalid("ResNetStage", "blocks[1].inChannels", "4", "8, the output channels of blocks[0]"))
        assertRefused(
            try ResNetStage(inChannels: 4, outChannels: 8, count: 0, normalization: gn, generator: &g),
            invalid("ResNetStage", "count", "0", "at least 1"))
        assertRefused(
            try ResNetStage(inChannels: 4, outChannels: 8, count: 2, stride: 0, normalization: gn, generator: &g),
            invalid("BasicBlock", "stride", "0", "at least 1"))
    }

    func testBlockBackwardRefusesWithoutForwardOrWithAnotherShape() throws {
        var g = SeededGenerator(seed: 5)
        let block = try BasicBlock(
            inChannels: 2, outChannels: 4, stride: 2, normalization: NormalizationSettings(kind: .gn, groups: 2),
            generator: &g)
        let x = Tensor.randomNormal(shape: [2, 2, 6, 6], using: &g)
        assertRefused(try block.backward(Tensor(zeros: [2, 4, 3, 3])), .backwardBeforeForward(layer: "BasicBlock"))
        let y = try block.forward(x, training: true)
        XCTAssertEqual(y.shape, [2, 4, 3, 3])
        assertRefused(
            try block.backward(Tensor(zeros: [2, 4, 3, 2])),
            .shapeMismatch(
                layer: "BasicBlock", expected: [2, 4, 3, 3], expectedLayout: .channelsFirst, got: [2, 4, 3, 2],
                gotLayout: .channelsFirst))
        XCTAssertEqual(try block.backward(Tensor(zeros: [2, 4, 3, 3])).shape, x.shape)  // still pending
    }
}
