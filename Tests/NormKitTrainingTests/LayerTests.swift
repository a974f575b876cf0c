import Foundation
import NormKitTraining
import XCTest

/// `Linear`, `ReLU`, `MaxPool2d`, `GlobalAveragePool` and `SoftmaxCrossEntropy` against Double references and
/// finite differences, and their errors.
final class LayerTests: XCTestCase {
    // MARK: - Linear

    func testLinearForwardAndBackward() throws {
        var rng = SeededGenerator(seed: 21)
        let n = 5, i = 7, o = 3
        let linear = try Linear(inFeatures: i, outFeatures: o, generator: &rng)
        let x = Tensor.randomNormal(shape: [n, i], using: &rng)
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        try linear.forward(x, into: &y, training: true)
        var xs = doubles(x.values), ws = doubles(linear.weight.value), bs = doubles(linear.bias.value)
        func reference() -> [Double] {
            var out = [Double](repeating: 0, count: n * o)
            for r in 0..<n {
                for c in 0..<o {
                    out[r * o + c] = bs[c] + (0..<i).reduce(0.0) { $0 + xs[r * i + $1] * ws[c * i + $1] }
                }
            }
            return out
        }
        XCTAssertEqual(y.shape, [n, o])
        assertClose(y.values, reference(), relative: 1e-6, "y")

        let dyTensor = Tensor.randomNormal(shape: [n, o], using: &rng)
        let dy = doubles(dyTensor.values)
        try linear.backward(dyTensor, into: &dx)
        XCTAssertEqual(dx.shape, [n, i])
        func loss() -> Double { zip(reference(), dy).reduce(0) { $0 + $1.0 * $1.1 } }
        let h = 1e-3
        func fd(_ value: Double, _ write: (Double) -> Void) -> Double {
            centralDifference(value, h: h, loss: loss, write)
        }
        assertClose(dx.values, xs.indices.map { k in fd(xs[k]) { xs[k] = $0 } }, relative: 1e-5, "dx")
        assertClose(linear.weight.gradient, ws.indices.map { k in fd(ws[k]) { ws[k] = $0 } }, relative: 1e-5, "dW")
        assertClose(linear.bias.gradient, bs.indices.map { k in fd(bs[k]) { bs[k] = $0 } }, relative: 1e-5, "db")
    }

    func testLinearInitialisationAndState() throws {
        var rng = SeededGenerator(seed: 22)
        let linear = try Linear(inFeatures: 64, outFeatures: 10, generator: &rng)
        let bound: Float = 1 / 8
        XCTAssertEqual(linear.weight.shape, [10, 64])
        XCTAssertEqual(linear.bias.shape, [10])
        XCTAssertEqual(linear.weight.role, .weight)
        XCTAssertEqual(linear.bias.role, .bias)
        XCTAssertTrue(linear.weight.value.allSatisfy { abs($0) <= bound })
        XCTAssertTrue(linear.bias.value.allSatisfy { abs($0) <= bound })
        XCTAssertGreaterThan(linear.weight.value.map(abs).max()!, 0.9 * bound, "uses the whole range")
        XCTAssertEqual(linear.parameters.count, 2)

        let state = linear.stateDict()
        XCTAssertEqual(Set(state.keys), ["weight", "bias"])
        let other = try Linear(inFeatures: 64, outFeatures: 10, generator: &rng)
        XCTAssertNotEqual(other.weight.value, linear.weight.value)
        try other.loadStateDict(state)
        XCTAssertEqual(other.weight.value, linear.weight.value)
        XCTAssertEqual(other.bias.value, linear.bias.value)
        XCTAssertThrowsError(
            try other.loadStateDict([
                "weight": state["weight"]!,
                "bias": .int64(shape: [10], values: Array(repeating: 0, count: 10)),
            ]))
    }

    // MARK: - ReLU

    func testReLUForwardAndBackward() throws {
        var rng = SeededGenerator(seed: 23)
        for layout in TensorLayout.allCases {
            var x = Tensor.randomNormal(shape: [3, 5, 7, 3], layout: layout, using: &rng)  // 315 values: SIMD + tail
            x[0, 0, 0] = 0
            x[0, 1, 0] = .nan
            let relu = ReLU()
            var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
            try relu.forward(x, into: &y, training: true)
            XCTAssertEqual(y.shape, x.shape)
            XCTAssertEqual(y.layout, layout)
            let xv = x.values, yv = y.values
            for k in xv.indices {
                if xv[k].isNaN { XCTAssertTrue(yv[k].isNaN) } else { XCTAssertEqual(yv[k], max(xv[k], 0)) }
            }
            let dy = Tensor.randomNormal(shape: x.shape, layout: layout, using: &rng)
            try relu.backward(dy, into: &dx)
            let dyv = dy.values, dxv = dx.values
            // dy passes except where y ≤ 0: at the NaN too, as PyTorch's threshold_backward.
            for k in xv.indices { XCTAssertEqual(dxv[k], xv[k] <= 0 ? 0 : dyv[k]) }
            XCTAssertTrue(relu.parameters.isEmpty)
            XCTAssertTrue(relu.stateDict().isEmpty)
        }
    }

    func testReLUOnALargeTensorUsesThreadsCorrectly() throws {
        var rng = SeededGenerator(seed: 24)
        let x = Tensor.randomNormal(shape: [8, 16, 40, 40], using: &rng)
        let relu = ReLU()
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        try relu.forward(x, into: &y, training: true)
        XCTAssertEqual(y.values, x.values.map { max($0, 0) })
        try relu.backward(x, into: &dx)
        XCTAssertEqual(dx.values, x.values.map { $0 > 0 ? $0 : 0 })
    }

    // MARK: - Pooling

    func testMaxPoolForwardAndBackward() throws {
        var rng = SeededGenerator(seed: 25)
        // (kernel, stride, H, W): disjoint windows with a floor remainder, and overlapping windows.
        for (k, s, h, w) in [(2, 2, 6, 7), (3, 2, 7, 7), (2, 1, 4, 5)] {
            let pool = try MaxPool2d(kernelSize: k, stride: s)
            let x = Tensor.randomNormal(shape: [2, 3, h, w], using: &rng)
            var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
            try pool.forward(x, into: &y, training: true)
            let ho = (h - k) / s + 1, wo = (w - k) / s + 1
            XCTAssertEqual(y.shape, [2, 3, ho, wo])
            let dy = Tensor.randomNormal(shape: y.shape, using: &rng)
            try pool.backward(dy, into: &dx)
            let xv = x.values, yv = y.values, dyv = dy.values
            var expectedDx = [Float](repeating: 0, count: xv.count)
            for plane in 0..<6 {
                for oh in 0..<ho {
                    for ow in 0..<wo {
                        var best = -1, value = -Float.infinity
                        for ki in 0..<k {
                            for kj in 0..<k {
                                let index = plane * h * w + (oh * s + ki) * w + ow * s + kj
                                if xv[index] > value { value = xv[index]; best = index }
                            }
                        }
                        let out = plane * ho * wo + oh * wo + ow
                        XCTAssertEqual(yv[out], value)
                        expectedDx[best] += dyv[out]
                    }
                }
            }
            XCTAssertEqual(dx.values, expectedDx, "k\(k) s\(s)")
        }
        // Stride defaults to the kernel size; ties go to the first position.
        let pool = try MaxPool2d(kernelSize: 2)
        XCTAssertEqual(pool.stride, 2)
        let x = try Tensor(shape: [1, 1, 2, 2], values: [1, 3, 3, 2])
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        try pool.forward(x, into: &y, training: true)
        XCTAssertEqual(y.values, [3])
        try pool.backward(try Tensor(shape: [1, 1, 1, 1], values: [5]), into: &dx)
        XCTAssertEqual(dx.values, [0, 5, 0, 0])
    }

    func testGlobalAveragePool() throws {
        var rng = SeededGenerator(seed: 26)
        let x = Tensor.randomNormal(shape: [3, 4, 5, 6], using: &rng)
        let pool = GlobalAveragePool()
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        try pool.forward(x, into: &y, training: true)
        XCTAssertEqual(y.shape, [3, 4])
        let xv = doubles(x.values)
        let expected = (0..<12).map { p in xv[p * 30..<(p + 1) * 30].reduce(0, +) / 30 }
        assertClose(y.values, expected, relative: 1e-6, "mean")
        let dy = Tensor.randomNormal(shape: [3, 4], using: &rng)
        try pool.backward(dy, into: &dx)
        XCTAssertEqual(dx.shape, x.shape)
        let dyv = dy.values
        assertClose(dx.values, (0..<360).map { Double(dyv[$0 / 30]) / 30 }, relative: 1e-6, "dx")
    }

    // MARK: - Softmax cross-entropy

    func testSoftmaxCrossEntropyMatchesReferenceAndFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 27)
        let n = 6, k = 5
        let logits = Tensor.randomNormal(shape: [n, k], standardDeviation: 3, using: &rng)
        let labels = [0, 4, 2, 2, 1, 3]
        let loss = SoftmaxCrossEntropy()
        let value = try loss.forward(logits: logits, labels: labels)

        var zs = doubles(logits.values)
        func reference() -> Double {
            var total = 0.0
            for r in 0..<n {
                let row = zs[r * k..<(r + 1) * k]
                total += Foundation.log(row.map { Foundation.exp($0) }.reduce(0, +)) - zs[r * k + labels[r]]
            }
            return total / Double(n)
        }
        XCTAssertEqual(Double(value), reference(), accuracy: 1e-6 * max(1, reference()))

        var grad = Tensor(zeros: [1, 1])
        try loss.backward(into: &grad)
        XCTAssertEqual(grad.shape, [n, k])
        // Analytic reference: (softmax − onehot) / N.
        var analytic = [Double]()
        for r in 0..<n {
            let row = zs[r * k..<(r + 1) * k]
            let sum = row.map { Foundation.exp($0) }.reduce(0, +)
            for j in 0..<k {
                analytic.append((Foundation.exp(zs[r * k + j]) / sum - (j == labels[r] ? 1 : 0)) / Double(n))
            }
        }
        assertClose(grad.values, analytic, relative: 1e-6, "analytic")
        let h = 1e-5
        let fdGrad = zs.indices.map { i in centralDifference(zs[i], h: h, loss: reference) { zs[i] = $0 } }
        assertClose(grad.values, fdGrad, relative: 1e-5, "finite differences")

        // Predictions are the row argmax.
        let zv = logits.values
        let argmax = (0..<n).map { r in (0..<k).max { zv[r * k + $0] < zv[r * k + $1] }! }
        XCTAssertEqual(loss.predictions, argmax)
        XCTAssertEqual(loss.correctCount, zip(argmax, labels).filter { $0 == $1 }.count)
    }

    /// The labels of a ``BatchIterator`` (`Int32`, an array or a slice) go to the loss as they are: the same loss,
    /// predictions, gradient and errors as the same labels as `Int`.
    func testSoftmaxCrossEntropyTakesInt32Labels() throws {
        var rng = SeededGenerator(seed: 28)
        let logits = Tensor.randomNormal(shape: [6, 5], standardDeviation: 3, using: &rng)
        let labels: [Int32] = [0, 4, 2, 2, 1, 3]
        let wide = SoftmaxCrossEntropy(), narrow = SoftmaxCrossEntropy()
        XCTAssertEqual(
            try narrow.forward(logits: logits, labels: labels),
            try wide.forward(logits: logits, labels: labels.map(Int.init)))
        XCTAssertEqual(narrow.predictions, wide.predictions)
        XCTAssertEqual(narrow.correctCount, wide.correctCount)
        var narrowGradient = Tensor(zeros: [0, 0]), wideGradient = Tensor(zeros: [0, 0])
        try narrow.backward(into: &narrowGradient)
        try wide.backward(into: &wideGradient)
        XCTAssertEqual(narrowGradient.values, wideGradient.values)
        XCTAssertThrowsError(try narrow.forward(logits: logits, labels: [0, 1, 2, 3, 4, -1] as [Int32])) {
            XCTAssertEqual($0 as? LayerError, .labelOutOfRange(index: 5, label: -1, classes: 5))
        }
        XCTAssertThrowsError(try narrow.forward(logits: logits, labels: [0, 5] as [Int32])) {
            XCTAssertEqual($0 as? LayerError, .labelCountMismatch(batch: 6, labels: 2))
        }
        try narrow.backward(into: &narrowGradient)
        XCTAssertEqual(narrowGradient.values, wideGradient.values, "a refused forward changes nothing")
        // A slice (a worker's share of a batch) indexes from its own start.
        let batch: [Int32] = [9, 9] + labels
        XCTAssertEqual(
            try narrow.forward(logits: logits, labels: batch[2...]),
            try wide.forward(logits: logits, labels: labels.map(Int.init)))
        XCTAssertEqual(narrow.correctCount, wide.correctCount)
    }

    func testSoftmaxCrossEntropyIsStableForLargeLogits() throws {
        let logits = try Tensor(shape: [2, 3], values: [1000, 0, -1000, 5000, 5000, -5000])
        let loss = SoftmaxCrossEntropy()
        let value = try loss.forward(logits: logits, labels: [0, 1])
        XCTAssertEqual(value, Float(Foundation.log(2.0) / 2), accuracy: 1e-6)
        var grad = Tensor(zeros: [1, 1])
        try loss.backward(into: &grad)
        XCTAssertTrue(grad.values.allSatisfy { $0.isFinite })
        assertClose(grad.values, [0, 0, 0, 0.25, -0.25, 0], relative: 1e-6, "gradient")
        XCTAssertEqual(loss.predictions, [0, 0])
        XCTAssertEqual(loss.correctCount, 1)
    }

    // MARK: - Bad input

    func testBadInputThrowsSpecificErrors() throws {
        var rng = SeededGenerator(seed: 28)
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])

        let loss = SoftmaxCrossEntropy()
        let logits = Tensor(zeros: [3, 4])
        XCTAssertThrowsError(try loss.backward(into: &dx)) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: "SoftmaxCrossEntropy"))
        }
        XCTAssertThrowsError(try loss.forward(logits: logits, labels: [0, 4, 1])) {
            XCTAssertEqual($0 as? LayerError, .labelOutOfRange(index: 1, label: 4, classes: 4))
            XCTAssertTrue("\($0)".contains("label 4 at sample 1"), "\($0)")
        }
        XCTAssertThrowsError(try loss.forward(logits: logits, labels: [0, -1, 1])) {
            XCTAssertEqual($0 as? LayerError, .labelOutOfRange(index: 1, label: -1, classes: 4))
        }
        XCTAssertThrowsError(try loss.forward(logits: logits, labels: [0, 1])) {
            XCTAssertEqual($0 as? LayerError, .labelCountMismatch(batch: 3, labels: 2))
            XCTAssertTrue("\($0)".contains("2 labels for a batch of 3"), "\($0)")
        }
        XCTAssertThrowsError(try loss.forward(logits: Tensor(zeros: [3, 4, 1]), labels: [0, 1, 2])) {
            XCTAssertEqual($0 as? LayerError, .wrongRank(layer: "SoftmaxCrossEntropy", expected: 2, shape: [3, 4, 1]))
        }

        let linear = try Linear(inFeatures: 4, outFeatures: 2, generator: &rng)
        XCTAssertThrowsError(try linear.forward(Tensor(zeros: [3, 4, 1, 1]), into: &y, training: true)) {
            XCTAssertEqual($0 as? LayerError, .wrongRank(layer: linear.name, expected: 2, shape: [3, 4, 1, 1]))
        }
        XCTAssertThrowsError(try linear.forward(Tensor(zeros: [3, 5]), into: &y, training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .channelMismatch(layer: linear.name, expected: 4, got: 5))
        }
        XCTAssertThrowsError(try linear.backward(Tensor(zeros: [3, 2]), into: &dx)) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: linear.name))
        }
        try linear.forward(Tensor(zeros: [3, 4]), into: &y, training: true)
        XCTAssertThrowsError(try linear.backward(Tensor(zeros: [3, 3]), into: &dx)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .shapeMismatch(
                    layer: linear.name, expected: [3, 2],
                    expectedLayout: .channelsFirst, got: [3, 3],
                    gotLayout: .channelsFirst))
        }
        XCTAssertThrowsError(try Linear(inFeatures: 4, outFeatures: 0, generator: &rng)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .invalidArgument(layer: "Linear", name: "outFeatures", value: "0", expected: "at least 1"))
        }

        let pool = try MaxPool2d(kernelSize: 2)
        XCTAssertThrowsError(
            try pool.forward(
                Tensor(zeros: [1, 2, 4, 4], layout: .channelsLast), into: &y,
                training: true)
        ) {
            XCTAssertEqual($0 as? LayerError, .unsupportedLayout(layer: pool.name, layout: .channelsLast))
        }
        XCTAssertThrowsError(try pool.forward(Tensor(zeros: [1, 2, 4]), into: &y, training: true)) {
            XCTAssertEqual($0 as? LayerError, .wrongRank(layer: pool.name, expected: 4, shape: [1, 2, 4]))
        }
        XCTAssertThrowsError(try pool.forward(Tensor(zeros: [1, 2, 1, 4]), into: &y, training: true)) {
            XCTAssertEqual(
                $0 as? LayerError,
                .inputTooSmall(
                    layer: pool.name, height: 1, width: 4, kernelSize: 2,
                    padding: 0))
        }
        XCTAssertThrowsError(try pool.backward(Tensor(zeros: [1, 2, 2, 2]), into: &dx)) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: pool.name))
        }
        XCTAssertThrowsError(try MaxPool2d(kernelSize: 0))

        // GlobalAveragePool takes both layouts (PoolingLayoutTests); MaxPool2d is channels-first only.
        XCTAssertThrowsError(
            try pool.forward(
                Tensor(zeros: [2, 3, 4, 4], layout: .channelsLast), into: &y,
                training: true)
        ) {
            XCTAssertEqual($0 as? LayerError, .unsupportedLayout(layer: pool.name, layout: .channelsLast))
        }
        let gap = GlobalAveragePool()
        XCTAssertThrowsError(try gap.forward(Tensor(zeros: [2, 3]), into: &y, training: true)) {
            XCTAssertEqual($0 as? LayerError, .wrongRank(layer: gap.name, expected: 4, shape: [2, 3]))
        }
        try gap.forward(Tensor(zeros: [2, 3, 4, 4]), into: &y, training: true)
        XCTAssertThrowsError(try gap.backward(Tensor(zeros: [2, 4]), into: &dx))

        let relu = ReLU()
        XCTAssertThrowsError(try relu.backward(Tensor(zeros: [2, 3]), into: &dx)) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: "ReLU"))
        }
        try relu.forward(Tensor(zeros: [2, 3]), into: &y, training: true)
        XCTAssertThrowsError(try relu.backward(Tensor(zeros: [2, 3], layout: .channelsLast), into: &dx))
        // A backward consumes its forward.
        try relu.backward(Tensor(zeros: [2, 3]), into: &dx)
        XCTAssertThrowsError(try relu.backward(Tensor(zeros: [2, 3]), into: &dx))
    }
}
