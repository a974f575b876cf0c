import NormKit
import XCTest
import _NormKitTestSupport

/// Bad input: each case throws a specific ``NormalizationError`` whose description names the offending numbers,
/// and changes no state (running statistics, counters, parameters, the pending backward).
/// Non-finite batches do not overwrite good running statistics.
final class InputErrorTests: XCTestCase {

    /// Asserts `body` throws exactly `expected` and that its description contains every string in `mentions`.
    private func assertThrows<T>(
        _ expected: NormalizationError, mentioning mentions: [String],
        file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> T
    ) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard let e = error as? NormalizationError else {
                return XCTFail("expected NormalizationError, got \(error)", file: file, line: line)
            }
            XCTAssertEqual(e, expected, file: file, line: line)
            for m in mentions {
                XCTAssertTrue(
                    e.description.contains(m), "\"\(e.description)\" should mention \(m)", file: file, line: line)
            }
        }
    }

    /// Everything observable about a BatchNorm's state.
    private struct BNState: Equatable {
        var mean, variance, weight, bias, dWeight, dBias: [Float]
        var tracked: Int64
        var skipped: Int
        init(_ bn: BatchNorm) {
            mean = bn.runningMean
            variance = bn.runningVariance
            weight = bn.weight?.value ?? []
            bias = bn.bias?.value ?? []
            dWeight = bn.weight?.gradient ?? []
            dBias = bn.bias?.gradient ?? []
            tracked = bn.batchesTracked
            skipped = bn.skippedUpdates
        }
    }

    /// A BatchNorm with non-trivial running statistics and parameters, and a pending backward for (x, dy).
    private func trainedBatchNorm(channels: Int = 3, normBatch: Int? = nil) throws -> (BatchNorm, Tensor, Tensor) {
        var rng = SeededGenerator(seed: 0xE401)
        let bn = try BatchNorm(channels: channels, normBatch: normBatch)
        randomizeAffine(bn, using: &rng)
        for _ in 0..<2 {
            let x = randomTensor([4, channels, 5], scale: 2, offset: 1, using: &rng)
            _ = try bn.forward(x, training: true)
            _ = try bn.backward(randomTensor([4, channels, 5], using: &rng))
        }
        let x = randomTensor([4, channels, 5], scale: 2, offset: 1, using: &rng)
        _ = try bn.forward(x, training: true)
        return (bn, x, randomTensor([4, channels, 5], using: &rng))
    }

    /// The pending backward still gives the reference gradient after the failed calls.
    private func assertPendingBackwardIntact(
        _ layer: NormalizationLayer, sets: RefSets, x: Tensor, dy: Tensor,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let gamma = layer.weight.map { $0.value.map(Double.init) }
        let ref = Float64Reference.backward(RefTensor(x), dy: RefTensor(dy), sets: sets, gamma: gamma)
        let grads = try layer.backward(dy)
        XCTAssertLessThanOrEqual(relativeError(grads.input, ref.dx), referenceTolerance, file: file, line: line)
    }

    // MARK: Construction

    /// One layer instance used twice in a network (two forwards, then two backwards) keeps only one forward: the
    /// second backward is refused, and the message says why a user who did call forward gets it.
    func testALayerUsedTwiceInOneNetworkIsExplainedOnItsSecondBackward() throws {
        let gn = try GroupNorm(channels: 4, groups: 2)
        var rng = SeededGenerator(seed: 4)
        let x = Tensor.randomNormal(shape: [2, 4, 3, 3], using: &rng)
        _ = try gn.forward(x, training: true)
        _ = try gn.forward(x, training: true)
        _ = try gn.backward(x)
        assertThrows(
            .backwardBeforeForward(layer: gn.name),
            mentioning: ["used twice in one network keeps only one forward", "its own instance"]
        ) { try gn.backward(x) }
    }

    func testGroupNormConstructionErrors() {
        assertThrows(.invalidGroups(channels: 6, groups: 4), mentioning: ["6", "4"]) {
            try GroupNorm(channels: 6, groups: 4)
        }
        assertThrows(.invalidGroups(channels: 6, groups: 0), mentioning: ["6", "0"]) {
            try GroupNorm(channels: 6, groups: 0)
        }
        assertThrows(.invalidGroups(channels: 6, groups: -2), mentioning: ["6", "-2"]) {
            try GroupNorm(channels: 6, groups: -2)
        }
        assertThrows(.invalidGroups(channels: 6, groups: 12), mentioning: ["6", "12"]) {
            try GroupNorm(channels: 6, groups: 12)
        }
        assertThrows(.invalidGroupSize(channels: 6, groupSize: 4), mentioning: ["6", "4"]) {
            try GroupNorm(channels: 6, groupSize: 4)
        }
        assertThrows(.invalidGroupSize(channels: 6, groupSize: 0), mentioning: ["6", "0"]) {
            try GroupNorm(channels: 6, groupSize: 0)
        }
        assertThrows(.invalidGroupSize(channels: 6, groupSize: 7), mentioning: ["6", "7"]) {
            try GroupNorm(channels: 6, groupSize: 7)
        }
        // The paper's default G = 32 on a 16-channel layer is refused, not silently clamped.
        assertThrows(.invalidGroups(channels: 16, groups: 32), mentioning: ["16", "32"]) {
            try GroupNorm(channels: 16, groups: 32)
        }
        XCTAssertThrowsError(try GroupNorm(channels: 0, groups: 1))
        XCTAssertThrowsError(try GroupNorm(channels: 4, groups: 2, epsilon: -1))
        XCTAssertNoThrow(try GroupNorm(channels: 6, groups: 3))
    }

    func testBatchNormConstructionErrors() {
        assertThrows(
            .invalidArgument(
                layer: "BatchNorm(channels: 3)", name: "momentum", value: "1.5",
                expected: "0...1 (PyTorch convention: weight of the new value)"),
            mentioning: ["BatchNorm(channels: 3)", "momentum", "1.5"]
        ) {
            try BatchNorm(channels: 3, momentum: 1.5)
        }
        XCTAssertThrowsError(try BatchNorm(channels: 3, normBatch: 0)) { error in
            XCTAssertTrue("\(error)".contains("normBatch") && "\(error)".contains("0"), "\(error)")
        }
        XCTAssertThrowsError(try BatchNorm(channels: 0))
        XCTAssertThrowsError(try BatchNorm(channels: 3, epsilon: -1e-5))
    }

    // MARK: Tensors

    func testTensorRankAndCountErrors() {
        assertThrows(.invalidShape(layer: "Tensor", shape: [5]), mentioning: ["[5]"]) {
            try Tensor(shape: [5], values: [0, 0, 0, 0, 0])
        }
        assertThrows(.invalidShape(layer: "Tensor", shape: [1, 1, 1, 1, 1, 1]), mentioning: ["[1, 1, 1, 1, 1, 1]"]) {
            try Tensor(shape: [1, 1, 1, 1, 1, 1], values: [0])
        }
        assertThrows(.invalidShape(layer: "Tensor", shape: []), mentioning: ["[]"]) {
            try Tensor(shape: [], values: [])
        }
        assertThrows(.invalidShape(layer: "Tensor", shape: [2, -1]), mentioning: ["-1"]) {
            try Tensor(shape: [2, -1], values: [])
        }
        assertThrows(.elementCountMismatch(layer: "Tensor", expected: 6, got: 5), mentioning: ["6", "5"]) {
            try Tensor(shape: [2, 3], values: [0, 0, 0, 0, 0])
        }
        XCTAssertThrowsError(try Tensor.validate(shape: [1, 2, 3, 4, 5, 6]))
        XCTAssertNoThrow(try Tensor.validate(shape: [1, 2, 3, 4, 5]))
        XCTAssertNoThrow(try Tensor(shape: [2, 3], values: [Float](repeating: 1, count: 6)))
    }

    // MARK: Forward

    func testWrongChannelCount() throws {
        let (bn, x, dy) = try trainedBatchNorm()
        let before = BNState(bn)
        var rng = SeededGenerator(seed: 0xE402)
        let bad = randomTensor([4, 5, 5], using: &rng)
        for training in [true, false] {
            assertThrows(.channelMismatch(layer: bn.name, expected: 3, got: 5), mentioning: ["3", "5"]) {
                try bn.forward(bad, training: training)
            }
        }
        XCTAssertEqual(BNState(bn), before)
        try assertPendingBackwardIntact(bn, sets: .batchNorm(normBatch: 4), x: x, dy: dy)

        let gn = try GroupNorm(channels: 6, groups: 3)
        let gx = randomTensor([2, 6, 7], using: &rng), gdy = randomTensor([2, 6, 7], using: &rng)
        _ = try gn.forward(gx, training: true)
        for training in [true, false] {
            assertThrows(.channelMismatch(layer: gn.name, expected: 6, got: 5), mentioning: ["6", "5", "groups: 3"]) {
                try gn.forward(bad, training: training)
            }
        }
        try assertPendingBackwardIntact(gn, sets: .groupNorm(groups: 3), x: gx, dy: gdy)
    }

    func testOneValuePerChannelInTraining() throws {
        let (bn, x, dy) = try trainedBatchNorm()
        let before = BNState(bn)
        var rng = SeededGenerator(seed: 0xE403)
        assertThrows(.tooFewValuesPerChannel(layer: bn.name, valuesPerSet: 1), mentioning: ["1 value", "got 1"]) {
            try bn.forward(randomTensor([1, 3], using: &rng), training: true)
        }
        // (1, C, 1, 1): spatial positions of size 1 are still one value.
        assertThrows(.tooFewValuesPerChannel(layer: bn.name, valuesPerSet: 1), mentioning: ["got 1"]) {
            try bn.forward(randomTensor([1, 3, 1, 1], using: &rng), training: true)
        }
        XCTAssertEqual(BNState(bn), before)
        try assertPendingBackwardIntact(bn, sets: .batchNorm(normBatch: 4), x: x, dy: dy)
        // Evaluation of a single sample is fine (running statistics).
        XCTAssertNoThrow(try bn.forward(randomTensor([1, 3], using: &rng), training: false))
        // Ghost batches of one sample without spatial positions: one value per set.
        let ghost = try BatchNorm(channels: 3, normBatch: 1)
        assertThrows(.tooFewValuesPerChannel(layer: ghost.name, valuesPerSet: 1), mentioning: ["got 1"]) {
            try ghost.forward(randomTensor([4, 3], using: &rng), training: true)
        }
        XCTAssertEqual(ghost.batchesTracked, 0)
    }

    func testEmptyBatch() throws {
        let (bn, x, dy) = try trainedBatchNorm()
        let before = BNState(bn)
        let empty = Tensor(zeros: [0, 3, 4])
        for training in [true, false] {
            assertThrows(.emptyBatch(layer: bn.name), mentioning: ["N = 0"]) {
                try bn.forward(empty, training: training)
            }
        }
        XCTAssertEqual(BNState(bn), before)
        try assertPendingBackwardIntact(bn, sets: .batchNorm(normBatch: 4), x: x, dy: dy)
        let gn = try GroupNorm(channels: 3, groups: 1)
        assertThrows(.emptyBatch(layer: gn.name), mentioning: ["N = 0"]) { try gn.forward(empty, training: true) }
        let ghost = try BatchNorm(channels: 3, normBatch: 2)
        assertThrows(.emptyBatch(layer: ghost.name), mentioning: ["N = 0"]) { try ghost.forward(empty, training: true) }
    }

    func testNormBatchThatDoesNotDivideTheBatch() throws {
        let (bn, x, dy) = try trainedBatchNorm(normBatch: 2)
        let before = BNState(bn)
        var rng = SeededGenerator(seed: 0xE404)
        assertThrows(.normBatchDoesNotDivide(layer: bn.name, batch: 5, normBatch: 2), mentioning: ["2", "5", bn.name]) {
            try bn.forward(randomTensor([5, 3, 5], using: &rng), training: true)
        }
        XCTAssertEqual(BNState(bn), before)
        try assertPendingBackwardIntact(bn, sets: .batchNorm(normBatch: 2), x: x, dy: dy)
        // normBatch larger than the batch does not divide it either.
        let big = try BatchNorm(channels: 3, normBatch: 8)
        assertThrows(.normBatchDoesNotDivide(layer: big.name, batch: 4, normBatch: 8), mentioning: ["8", "4"]) {
            try big.forward(randomTensor([4, 3, 5], using: &rng), training: true)
        }
        // Evaluation ignores normBatch.
        XCTAssertNoThrow(try bn.forward(randomTensor([5, 3, 5], using: &rng), training: false))
    }

    // MARK: Backward

    func testBackwardBeforeForwardAndTwice() throws {
        var rng = SeededGenerator(seed: 0xE405)
        let x = randomTensor([4, 6, 5], using: &rng), dy = randomTensor([4, 6, 5], using: &rng)
        let layers: [NormalizationLayer] = [
            try BatchNorm(channels: 6), try BatchNorm(channels: 6, normBatch: 2),
            try GroupNorm(channels: 6, groups: 2), try GroupNorm.layerNorm(channels: 6),
            try GroupNorm.instanceNorm(channels: 6),
        ]
        for layer in layers {
            assertThrows(.backwardBeforeForward(layer: layer.name), mentioning: [layer.name]) { try layer.backward(dy) }
            _ = try layer.forward(x, training: true)
            let first = try layer.backward(dy)
            let gradients = layer.parameters.map(\.gradient)
            assertThrows(.backwardBeforeForward(layer: layer.name), mentioning: [layer.name]) { try layer.backward(dy) }
            XCTAssertEqual(layer.parameters.map(\.gradient), gradients, "a refused backward must not touch gradients")
            XCTAssertEqual(first.weight, gradients.first)
            // An eval forward does not arm a backward.
            _ = try layer.forward(x, training: false)
            assertThrows(.backwardBeforeForward(layer: layer.name), mentioning: [layer.name]) { try layer.backward(dy) }
            // Nor does it end a pending one: an eval forward of another batch (another shape) between a training
            // forward and its backward leaves the backward's result bit for bit as it was.
            let other = randomTensor([3, 6, 7], using: &rng)
            _ = try layer.forward(x, training: true)
            _ = try layer.forward(other, training: false)
            let afterEvaluation = try layer.backward(dy)
            XCTAssertEqual(afterEvaluation.input.values, first.input.values, layer.name)
            XCTAssertEqual(afterEvaluation.weight, first.weight, layer.name)
            XCTAssertEqual(afterEvaluation.bias, first.bias, layer.name)
        }
    }

    func testGradientOfTheWrongShape() throws {
        let (bn, x, dy) = try trainedBatchNorm()
        var rng = SeededGenerator(seed: 0xE406)
        let before = BNState(bn)
        assertThrows(
            .shapeMismatch(
                layer: bn.name, expected: [4, 3, 5], expectedLayout: .channelsFirst,
                got: [4, 3, 6], gotLayout: .channelsFirst),
            mentioning: ["[4, 3, 5]", "[4, 3, 6]", bn.name]
        ) {
            try bn.backward(randomTensor([4, 3, 6], using: &rng))
        }
        // A layout mismatch names both layouts.
        assertThrows(
            .shapeMismatch(
                layer: bn.name, expected: [4, 3, 5], expectedLayout: .channelsFirst,
                got: [4, 3, 5], gotLayout: .channelsLast),
            mentioning: ["expected [4, 3, 5] channelsFirst, got [4, 3, 5] channelsLast"]
        ) {
            try bn.backward(dy.converted(to: .channelsLast))
        }
        XCTAssertEqual(BNState(bn), before)
        // The refused gradient did not consume the pending backward.
        try assertPendingBackwardIntact(bn, sets: .batchNorm(normBatch: 4), x: x, dy: dy)

        let gn = try GroupNorm(channels: 4, groups: 2)
        let gx = randomTensor([2, 4, 3, 3], using: &rng), gdy = randomTensor([2, 4, 3, 3], using: &rng)
        _ = try gn.forward(gx, training: true)
        assertThrows(
            .shapeMismatch(
                layer: gn.name, expected: [2, 4, 3, 3], expectedLayout: .channelsFirst,
                got: [2, 4, 9], gotLayout: .channelsFirst),
            mentioning: ["[2, 4, 3, 3]", "[2, 4, 9]"]
        ) { try gn.backward(randomTensor([2, 4, 9], using: &rng)) }
        try assertPendingBackwardIntact(gn, sets: .groupNorm(groups: 2), x: gx, dy: gdy)
    }

    // MARK: Non-finite batches

    func testNonFiniteBatchDoesNotOverwriteRunningStatistics() throws {
        for bad in [Float.nan, .infinity, -.infinity] {
            for layout in TensorLayout.allCases {
                for k in [nil, 2] as [Int?] {
                    let (bn, _, _) = try trainedBatchNorm(normBatch: k)
                    _ = try bn.backward(Tensor(zeros: [4, 3, 5]))
                    let before = BNState(bn)
                    var rng = SeededGenerator(seed: 0xE407)
                    var x = randomTensor([4, 3, 5], using: &rng)
                    x[3, 1, 2] = bad  // one element of one channel
                    let y = try bn.forward(x.converted(to: layout), training: true)
                    XCTAssertEqual(bn.runningMean, before.mean, "\(bad) \(layout)")
                    XCTAssertEqual(bn.runningVariance, before.variance, "\(bad) \(layout)")
                    XCTAssertEqual(bn.skippedUpdates, before.skipped + 1)
                    XCTAssertEqual(bn.weight?.value, before.weight)
                    XCTAssertFalse(y.values.allSatisfy(\.isFinite), "the output is still computed (non-finite)")
                    // A later good batch updates normally again.
                    let good = randomTensor([4, 3, 5], using: &rng)
                    let ref = Float64Reference.forward(
                        RefTensor(good), sets: .batchNorm(normBatch: k ?? 4),
                        gamma: nil, beta: nil)
                    var mean = before.mean.map(Double.init), variance = before.variance.map(Double.init)
                    Float64Reference.updateRunning(mean: &mean, variance: &variance, with: ref, momentum: 0.1)
                    _ = try bn.forward(good.converted(to: layout), training: true)
                    XCTAssertLessThanOrEqual(relativeError(bn.runningMean, mean), referenceTolerance)
                    XCTAssertLessThanOrEqual(relativeError(bn.runningVariance, variance), referenceTolerance)
                    XCTAssertEqual(bn.skippedUpdates, before.skipped + 1)
                }
            }
        }
    }

    /// Values whose squares overflow float32 (finite mean, variance beyond Float.greatestFiniteMagnitude) must
    /// not put an infinite variance into the running statistics either.
    func testOverflowingVarianceIsSkipped() throws {
        for layout in TensorLayout.allCases {
            let (bn, _, _) = try trainedBatchNorm()
            _ = try bn.backward(Tensor(zeros: [4, 3, 5]))
            let before = BNState(bn)
            var rng = SeededGenerator(seed: 0xE408)
            var x = randomTensor([4, 3, 5], using: &rng)
            x[0, 0, 0] = 3e38
            x[1, 0, 0] = -3e38
            _ = try bn.forward(x.converted(to: layout), training: true)
            XCTAssertTrue(
                bn.runningMean.allSatisfy(\.isFinite) && bn.runningVariance.allSatisfy(\.isFinite),
                "running statistics must stay finite (\(layout)): \(bn.runningMean) \(bn.runningVariance)")
            XCTAssertEqual(bn.runningVariance, before.variance, "\(layout)")
            XCTAssertEqual(bn.skippedUpdates, before.skipped + 1, "\(layout)")
        }
    }
}
