import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// The code of `Sources/NormKitTraining/NormKitTraining.docc/GettingStarted.md`, kept compiling and checked.
/// The article loads Fashion-MNIST; this test uses a small synthetic dataset of the same shape instead (the
/// tests never need the real one). Everything else is the article's code: keep the two in step.
final class GettingStartedTests: XCTestCase {
    /// 28×28 single-channel images whose class is written in their brightness pattern (class `k` lights
    /// row band `k`), so a few SGD steps visibly lower the loss.
    private func syntheticFashionMNIST(count: Int, seed: UInt64) throws -> Dataset {
        var rng = SeededGenerator(seed: seed)
        var pixels = [UInt8](repeating: 0, count: count * 28 * 28)
        var labels = [Int32](repeating: 0, count: count)
        for i in 0..<count {
            let label = Int(rng.next() % 10)
            labels[i] = Int32(label)
            for y in (2 * label + 4)..<(2 * label + 6) {
                for x in 4..<24 { pixels[i * 784 + y * 28 + x] = UInt8(200 + rng.next() % 56) }
            }
        }
        return try Dataset(
            pixels: pixels, labels: labels, height: 28, width: 28, classCount: 10,
            statistics: PixelStatistics(pixels: pixels))
    }

    func testArticleCode() throws {
        let (train, test) = (
            try syntheticFashionMNIST(count: 1_024, seed: 1),
            try syntheticFashionMNIST(count: 256, seed: 2)
        )

        var rng = SeededGenerator(seed: 0)
        let settings = NormalizationSettings(kind: .gn, groups: 16)
        let model = try ResNet(depth: 8, normalization: settings, generator: &rng)
        XCTAssertEqual(
            "\(model)".split(separator: "\n").prefix(3),
            [
                "ResNet(", "  (conv1): Conv2d(1, 16, kernel_size=3, stride=1, padding=1, bias=False)",
                "  (norm1): GroupNorm(16, 16)",
            ])
        let firstParameters = model.namedParameters().prefix(3)
        XCTAssertEqual(firstParameters.map(\.name), ["conv1.weight", "norm1.weight", "norm1.bias"])
        XCTAssertEqual(firstParameters.map(\.parameter.shape), [[16, 1, 3, 3], [16], [16]])
        XCTAssertTrue(model.parameter("layer2.0.conv1.weight") === model.stages[1].blocks[0].conv1.weight)

        let stage = try ResNetStage(blocks: [
            try BasicBlock(inChannels: 16, outChannels: 16, normalization: settings, generator: &rng),
            try BasicBlock(inChannels: 16, outChannels: 32, stride: 2, normalization: settings, generator: &rng),
        ])  // the second has a projection shortcut
        try stage.blocks[0].loadStateDict(model.stateDict().scoped(to: "layer1.0"))
        let custom = Sequential(
            try Conv2d(inChannels: 1, outChannels: 16, kernelSize: 3, padding: 1, generator: &rng),
            NormalizationModule(try settings.makeLayer(channels: 16)), ReLU(), stage,
            GlobalAveragePool(), try Linear(inFeatures: 32, outFeatures: 10, generator: &rng))
        XCTAssertEqual(stage.blocks[0].stateDict(), model.stateDict().scoped(to: "layer1.0"))
        XCTAssertNotNil(stage.blocks[1].downsample)
        XCTAssertEqual(try custom(Tensor(zeros: [2, 1, 28, 28])).shape, [2, 10])
        XCTAssertTrue(custom.parameter("3.1.downsample.0.weight") === stage.blocks[1].downsample!.conv.weight)

        let optimizer = SGD(parameters: model.parameters, momentum: 0.9, weightDecay: 5e-4)
        let loss = SoftmaxCrossEntropy()
        let batches = try BatchIterator(dataset: train, batchSize: 32, shuffle: true, dropLast: true, seed: 0)
        var images = Tensor(zeros: [0, 0])
        var labels: [Int32] = []
        var logitsGradient = Tensor(zeros: [0, 0])
        let before = try Trainer.evaluate(model: model, on: test)
        var losses: [Float] = []
        model.train()
        XCTAssertTrue(model.namedModules().allSatisfy { $0.module.training })
        for _ in 0..<30 {
            guard batches.next(into: &images, labels: &labels) != nil else { break }
            let logits = try model(images)
            XCTAssertEqual(logits.shape, [32, 10])
            let value = try loss.forward(logits: logits, labels: labels)
            try loss.backward(into: &logitsGradient)
            try model.backward(logitsGradient)
            try optimizer.step(learningRate: 0.05)
            losses.append(value)
        }
        XCTAssertEqual(losses.count, 30)
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
        model.eval()
        XCTAssertTrue(model.namedModules().allSatisfy { !$0.module.training })
        let evaluation = try Trainer.evaluate(model: model, on: test)
        XCTAssertLessThan(evaluation.loss, before.loss, "30 steps on an easy task lower the test loss")

        let directory = try makeTemporaryDirectory("getting-started")
        let url = directory.appendingPathComponent("resnet8-gn.safetensors")
        try SafeTensors.write(model.stateDict(), metadata: ["norm": "gn", "groups": "16"], to: url)

        let (tensors, metadata) = try SafeTensors.read(from: url)
        XCTAssertEqual(metadata, ["norm": "gn", "groups": "16"])
        for name in ["conv1.weight", "norm1.weight", "layer1.0.conv1.weight", "fc.bias"] {
            XCTAssertNotNil(tensors[name], "the article names \(name)")
        }
        let restored = try ResNet(depth: 8, normalization: settings, generator: &rng)
        XCTAssertNotEqual(restored.stateDict(), model.stateDict())
        try restored.loadStateDict(tensors)
        XCTAssertEqual(restored.stateDict(), model.stateDict())
        XCTAssertEqual(try Trainer.evaluate(model: restored, on: test), evaluation)
        var extra = tensors
        extra["fc.extra"] = tensors["fc.bias"]
        XCTAssertThrowsError(try restored.loadStateDict(extra), "a strict load refuses an extra tensor")

        let resnet14 = try ResNet(depth: 14, normalization: settings, generator: &rng)
        let result = try resnet14.loadStateDict(tensors, strict: false)
        XCTAssertEqual(result.missingKeys.first, "layer1.1.conv1.weight")
        XCTAssertEqual(result.unexpectedKeys, [])
        let loaded = resnet14.parameter("layer3.0.conv2.weight")!
        XCTAssertEqual(StateTensor.float32(shape: loaded.shape, values: loaded.value), tensors["layer3.0.conv2.weight"])
    }
}
