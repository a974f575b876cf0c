import Foundation
import NormKit
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// The three programs of issue 13's "done when", written only against public API (no `@testable`): a network of
/// one's own with GN and MABN, BN with ghost batches in channels-last saved and reloaded, and a ResNet built in
/// code with its named parameters printed.
final class LibraryProgramsTests: XCTestCase {
    /// Program 1: an own network (CenConv → MABN → ReLU → conv → GN → ReLU → pool → linear) trained a few steps.
    func testOwnNetworkWithGroupNormAndMABNTrains() throws {
        var generator = SeededGenerator(seed: 3)
        let model = Sequential(
            try Conv2d(inChannels: 1, outChannels: 8, kernelSize: 3, padding: 1, centred: true, generator: &generator),
            NormalizationModule(try MovingAverageBatchNorm(channels: 8, bufferSize: 4, warmup: 2)),
            ReLU(),
            try Conv2d(inChannels: 8, outChannels: 16, kernelSize: 3, stride: 2, padding: 1, generator: &generator),
            NormalizationModule(try GroupNorm(channels: 16, groups: 4)),
            ReLU(),
            GlobalAveragePool(),
            try Linear(inFeatures: 16, outFeatures: 4, generator: &generator))
        let images = Tensor.randomNormal(shape: [8, 1, 12, 12], using: &generator)
        let labels = [0, 1, 2, 3, 0, 1, 2, 3]
        let optimizer = SGD(parameters: model.parameters, momentum: 0.9, weightDecay: 0)
        let loss = SoftmaxCrossEntropy()
        var dlogits = Tensor(zeros: [0, 0])
        model.train()
        var losses: [Float] = []
        for _ in 0..<30 {
            losses.append(try loss.forward(logits: try model(images), labels: labels))
            try loss.backward(into: &dlogits)
            try model.backward(dlogits)
            try optimizer.step(learningRate: 0.05)
        }
        XCTAssertLessThan(losses.last!, losses.first! * 0.85, "\(losses)")
        let printed = "\(model)"
        XCTAssertTrue(printed.contains("GroupNorm(") && printed.contains("CenConv2d("), printed)
        model.eval()
        let logits = try model(images)
        XCTAssertEqual(logits.shape, [8, 4])
        XCTAssertTrue(logits.withUnsafeBufferPointer { $0.allSatisfy(\.isFinite) })
    }

    /// Program 2: BN with ghost batches of 2 on channels-last input, its state saved to safetensors and reloaded
    /// into a fresh layer that then evaluates identically.
    func testGhostBatchNormInChannelsLastSavedAndReloaded() throws {
        var generator = SeededGenerator(seed: 4)
        let bn = try BatchNorm(channels: 6, normBatch: 2)
        var y = Tensor(zeros: [0, 0])
        for _ in 0..<5 {
            let x = Tensor.randomNormal(shape: [8, 6, 5, 5], using: &generator).converted(to: .channelsLast)
            try bn.forward(x, into: &y, training: true)
            XCTAssertEqual(y.layout, .channelsLast)
        }
        let file = try makeTemporaryDirectory("normkit-ghost-bn").appendingPathComponent("bn.safetensors")
        try SafeTensors.write(bn.stateDict(), to: file)
        let reloaded = try BatchNorm(channels: 6, normBatch: 2)
        let result = try reloaded.loadStateDict(try SafeTensors.read(from: file).tensors)
        XCTAssertTrue(result.isEmpty)
        XCTAssertEqual(reloaded.runningMean, bn.runningMean)
        XCTAssertEqual(reloaded.runningVariance, bn.runningVariance)
        let x = Tensor.randomNormal(shape: [3, 6, 5, 5], using: &generator).converted(to: .channelsLast)
        var a = Tensor(zeros: [0, 0]), b = Tensor(zeros: [0, 0])
        try bn.forward(x, into: &a, training: false)
        try reloaded.forward(x, into: &b, training: false)
        XCTAssertEqual(a.withUnsafeBufferPointer(Array.init), b.withUnsafeBufferPointer(Array.init))
    }

    /// Program 3: a ResNet built in code; its named parameters printed and reachable through the tree.
    func testResNetBuiltInCodeListsItsNamedParameters() throws {
        var generator = SeededGenerator(seed: 5)
        let resnet = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .gn), generator: &generator)
        let named = resnet.namedParameters()
        let lines = named.map { "\($0.0) \($0.1)" }
        XCTAssertEqual(named.first?.0, "conv1.weight")
        XCTAssertTrue(
            lines.contains { $0.hasPrefix("layer2.0.conv1.weight Parameter(") && $0.contains("[32, 16, 3, 3]") },
            lines.joined(separator: "\n"))
        XCTAssertTrue(named.first { $0.0 == "layer2.0.conv1.weight" }!.1 === resnet.stages[1].blocks[0].conv1.weight)
        XCTAssertEqual(Set(named.map(\.0)).isSubset(of: Set(resnet.stateDict().keys)), true)
        XCTAssertEqual(named.count, resnet.parameters.count)
    }

    /// A library user's own code that takes an ``Evaluation`` (here: a one-line report) is testable without
    /// evaluating a model: `Evaluation` has a public initializer, and equals what `Trainer.evaluate` returns for the
    /// same numbers.
    func testAnEvaluationCanBeMadeForTestsOfOwnCode() throws {
        func report(_ e: Evaluation) -> String {
            let worst = e.perClassAccuracy.enumerated().min { $0.element < $1.element }!
            return "error \(e.error * 100)% on \(e.count) images, worst class \(worst.offset)"
        }
        let made = Evaluation(loss: 0.5, error: 0.25, perClassAccuracy: [1, 0.5, 0.75], count: 8)
        XCTAssertEqual(report(made), "error 25.0% on 8 images, worst class 1")
        XCTAssertEqual(made.loss, 0.5)

        var generator = SeededGenerator(seed: 5)
        let model = Sequential(GlobalAveragePool(), try Linear(inFeatures: 1, outFeatures: 2, generator: &generator))
        let images = [Float](repeating: 0, count: 4 * 4 * 4)
        let dataset = try Dataset(
            images: images, labels: [0, 1, 0, 1], height: 4, width: 4, classCount: 2,
            statistics: PixelStatistics(mean: 0, std: 1))
        let computed = try Trainer.evaluate(model: model, on: dataset, batchSize: 2)
        let same = Evaluation(
            loss: computed.loss, error: computed.error, perClassAccuracy: computed.perClassAccuracy,
            count: computed.count)
        XCTAssertEqual(same, computed)
        XCTAssertEqual(computed.count, 4)
        XCTAssertEqual(computed.error, 0.5, "a constant prediction gets one of the two balanced classes wrong")
    }
}
