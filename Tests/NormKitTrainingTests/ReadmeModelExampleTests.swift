import NormKitTraining
import XCTest
import _NormKitTestSupport

/// The README's "building a model in code" examples, verbatim between the markers, so it is known to compile and
/// run; then checks on what it did.
final class ReadmeModelExampleTests: XCTestCase {
    func testBuildTrainSaveAndInspectANetworkInCode() throws {
        let directory = try makeTemporaryDirectory("normkit-readme-model")
        var printed: [String] = []
        func print(_ items: Any...) { printed.append(items.map { "\($0)" }.joined(separator: " ")) }

        // README begin
        var generator = SeededGenerator(seed: 0)
        let model = Sequential(
            try Conv2d(inChannels: 1, outChannels: 16, kernelSize: 3, padding: 1, generator: &generator),
            NormalizationModule(try GroupNorm(channels: 16, groups: 4)),
            ReLU(),
            try MaxPool2d(kernelSize: 2),
            GlobalAveragePool(),
            try Linear(inFeatures: 16, outFeatures: 10, generator: &generator))
        print(model)  // Sequential( (0): Conv2d(1, 16, kernel_size=3, …) …

        // A toy batch: 8 images of 28×28 and their labels.
        let images = Tensor.randomNormal(shape: [8, 1, 28, 28], using: &generator)
        let labels = [0, 1, 2, 3, 4, 5, 6, 7]

        let optimizer = SGD(parameters: model.parameters, momentum: 0.9, weightDecay: 5e-4)
        let loss = SoftmaxCrossEntropy()
        var dlogits = Tensor(zeros: [0, 0])
        model.train()
        for step in 1...5 {
            let value = try loss.forward(logits: try model(images), labels: labels)
            try loss.backward(into: &dlogits)
            try model.backward(dlogits)  // fills every parameter's gradient
            try optimizer.step(learningRate: 0.1)
            print("step \(step): loss \(value)")
        }

        model.eval()  // callAsFunction now runs in evaluation mode
        let logits = try model(images)  // (8, 10)
        let evalLoss = try loss.forward(logits: logits, labels: labels)
        print("eval loss \(evalLoss), \(loss.correctCount) of \(labels.count) correct")

        let file = directory.appendingPathComponent("model.safetensors")  // directory: a folder URL of yours
        try SafeTensors.write(model.stateDict(), to: file)  // loads into the PyTorch twin with strict=True
        for (name, parameter) in model.namedParameters() {
            print(name, parameter)  // 0.weight Parameter(weight, shape=[16, 1, 3, 3], …)
        }
        try model.loadStateDict(try SafeTensors.read(from: file).tensors)
        // README end

        // README ResNet begin
        let gn = NormalizationSettings(kind: .gn, groups: 16)
        let resnet = try ResNet(depth: 20, normalization: gn, zeroInitResidualScale: true, generator: &generator)
        let resnet8 = try ResNet(depth: 8, normalization: gn, generator: &generator)
        let result = try resnet.loadStateDict(resnet8.stateDict(), strict: false)
        print(result)  // missing keys: [layer1.1.conv1.weight, …]; unexpected keys: []
        // README ResNet end

        // README residual begin
        let residual = Sequential(
            try Conv2d(inChannels: 1, outChannels: 16, kernelSize: 3, padding: 1, generator: &generator),
            NormalizationModule(try gn.makeLayer(channels: 16)),
            ReLU(),
            try BasicBlock(inChannels: 16, outChannels: 16, normalization: gn, generator: &generator),
            try BasicBlock(inChannels: 16, outChannels: 32, stride: 2, normalization: gn, generator: &generator),
            GlobalAveragePool(),
            try Linear(inFeatures: 32, outFeatures: 10, generator: &generator))
        try residual.layers[3].loadStateDict(resnet8.stateDict().scoped(to: "layer1.0"))  // ResNet-8's first block
        let residualLogits = try residual(images)  // (8, 10); trains as `model` above
        // README residual end

        // README fold begin
        let bnResNet = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &generator)
        // … train it as above …
        let foldedFile = directory.appendingPathComponent("resnet8-folded.safetensors")
        try FoldedExport.write(bnResNet, to: foldedFile)  // BN, BRN, MABN, frozen BN or none; overwrite: true replaces
        let (folded, metadata) = try FoldedExport.read(at: foldedFile)  // loads into torch_models.ResNet(8, "folded")
        // README fold end

        XCTAssertEqual(printed.first?.split(separator: "\n").first, "Sequential(")
        XCTAssertTrue(printed[0].contains("  (1): GroupNorm(4, 16)"), printed[0])
        let losses = printed.filter { $0.hasPrefix("step ") }.compactMap { Float($0.split(separator: " ").last!) }
        XCTAssertEqual(losses.count, 5)
        XCTAssertLessThan(losses.last!, losses.first!, "five SGD steps on one batch did not lower its loss")
        XCTAssertEqual(logits.shape, [8, 10])
        XCTAssertTrue(printed.contains { $0.hasPrefix("eval loss ") && $0.hasSuffix(" of 8 correct") })
        XCTAssertTrue(printed.contains("0.weight Parameter(weight, shape=[16, 1, 3, 3], requires_grad=True)"))
        XCTAssertTrue(printed.contains("1.bias Parameter(bias, shape=[16], requires_grad=True)"))
        XCTAssertTrue(printed.contains("5.bias Parameter(bias, shape=[10], requires_grad=True)"))
        XCTAssertEqual(printed.filter { $0.contains("Parameter(") }.count, 5)  // conv: no bias
        XCTAssertEqual(try SafeTensors.read(from: file).tensors, model.stateDict())

        // The ResNet variant: PyTorch's names for the tree's parts, and what a non-strict load reports.
        XCTAssertTrue(resnet.parameter("layer2.0.conv1.weight") === resnet.stages[1].blocks[0].conv1.weight)
        XCTAssertEqual(result.unexpectedKeys, [])
        XCTAssertEqual(result.missingKeys.first, "layer1.1.conv1.weight")
        XCTAssertEqual(Set(result.missingKeys), Set(resnet.stateDict().keys).subtracting(resnet8.stateDict().keys))
        XCTAssertEqual(
            resnet.parameter("layer3.0.conv1.weight")!.value,
            resnet8.parameter("layer3.0.conv1.weight")!.value)
        XCTAssertTrue(printed.last!.hasPrefix("missing keys: [layer1.1.conv1.weight, "), printed.last!)
        XCTAssertTrue(printed.last!.hasSuffix("; unexpected keys: []"), printed.last!)

        // The hand-built residual network: ResNet-8's block loaded by name, a projection shortcut where the
        // shape changes, and a training step through it.
        XCTAssertEqual(residualLogits.shape, [8, 10])
        let block = try XCTUnwrap(residual.layers[3] as? BasicBlock)
        XCTAssertEqual(block.conv1.weight.value, resnet8.layer1.blocks[0].conv1.weight.value)
        XCTAssertEqual(block.norm2.layer!.weight!.value, resnet8.layer1.blocks[0].norm2.layer!.weight!.value)
        XCTAssertNil(block.downsample)
        XCTAssertNotNil((residual.layers[4] as? BasicBlock)?.downsample)
        XCTAssertTrue(residual.parameter("4.downsample.0.weight") != nil)
        let residualLoss = SoftmaxCrossEntropy()
        let before = try residualLoss.forward(logits: try residual.forward(images, training: true), labels: labels)
        try residualLoss.backward(into: &dlogits)
        try residual.backward(dlogits)
        try SGD(parameters: residual.parameters, momentum: 0, weightDecay: 0).step(learningRate: 0.1)
        let after = try residualLoss.forward(logits: try residual.forward(images, training: true), labels: labels)
        XCTAssertLessThan(after, before, "an SGD step on the batch lowers its loss")

        // The fold snippet: the written model computes the BN ResNet's eval logits.
        XCTAssertEqual(metadata["source_norm"], "bn")
        XCTAssertEqual(
            metadata["torch_model_arguments"],
            #"{"depth":"8","in_channels":"1","norm":"folded","num_classes":"10","width":"16"}"#)
        let probe = Tensor.randomNormal(shape: [2, 1, 16, 16], using: &generator)
        let d = TorchModelParityTests.relativeDifference(
            try folded.forward(probe, training: false).values, try bnResNet.forward(probe, training: false).values)
        XCTAssertLessThan(d, 1e-5)
    }
}
