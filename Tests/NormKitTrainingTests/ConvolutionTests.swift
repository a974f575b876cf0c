import Dispatch
import Foundation
import NormKitTraining
import XCTest

/// `Conv2d` against a direct convolution in Double, finite differences, and a release-mode timing table.
final class ConvolutionTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.setThreads(1)  // the library's recommended configuration (layers then split the batch themselves)
    }

    // MARK: - Forward

    /// Every combination of stride 1/2, padding 0/1, kernel 1/3, bias or not, centred or not, on odd,
    /// non-square inputs, with both threading strategies.
    func testForwardMatchesDirectConvolution() throws {
        var rng = SeededGenerator(seed: 11)
        for blasThreads in [1, 2] {
            BLAS.setThreads(blasThreads)
            for stride in [1, 2] {
                for padding in [0, 1] {
                    for kernel in [1, 3] {
                        for hasBias in [false, true] {
                            for centred in [false, true] {
                                let spec = ConvSpec(
                                    batch: 3, channels: 3, height: 7, width: 6, filters: 4,
                                    kernel: kernel, stride: stride, padding: padding)
                                let (conv, x) = try makeTestConvolution(
                                    spec, bias: hasBias, centred: centred, rng: &rng)
                                var y = Tensor(zeros: [1, 1])
                                try conv.forward(x, into: &y, training: false)
                                let expected = direct(
                                    spec, x: doubles(x.values), w: doubles(conv.weight.value),
                                    b: conv.bias.map { doubles($0.value) }, centred: centred)
                                XCTAssertEqual(y.shape, spec.outputShape)
                                assertClose(
                                    y.values, expected, relative: 1e-5, "\(spec) bias \(hasBias) centred \(centred)")
                            }
                        }
                    }
                }
            }
        }
        BLAS.setThreads(1)
    }

    /// Small planes (several images per GEMM), a batch that does not split evenly, and a window larger than the
    /// unpadded input.
    func testForwardGroupedImagesAndEdgeShapes() throws {
        var rng = SeededGenerator(seed: 12)
        // (batch, channels, height, width, filters, kernel, stride, padding)
        let specs = ConvSpec.table([
            (7, 5, 3, 4, 6, 3, 1, 1), (5, 2, 2, 2, 3, 3, 1, 1), (9, 4, 7, 7, 8, 3, 2, 1), (1, 2, 5, 5, 2, 5, 1, 0),
            (4, 8, 9, 9, 4, 1, 2, 0),
        ])
        for spec in specs {
            for centred in [false, true] {
                let (conv, x) = try makeTestConvolution(spec, bias: true, centred: centred, rng: &rng)
                var y = Tensor(zeros: [1, 1])
                try conv.forward(x, into: &y, training: true)
                let expected = direct(
                    spec, x: doubles(x.values), w: doubles(conv.weight.value),
                    b: doubles(conv.bias!.value), centred: centred)
                assertClose(y.values, expected, relative: 1e-5, "\(spec) centred \(centred)")
            }
        }
    }

    // MARK: - Backward

    func testBackwardMatchesFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 13)
        // (batch, channels, height, width, filters, kernel, stride, padding)
        let specs = ConvSpec.table([
            (2, 3, 6, 5, 4, 3, 1, 1), (3, 2, 7, 7, 3, 3, 2, 1), (2, 3, 5, 6, 2, 3, 2, 0), (2, 4, 5, 5, 3, 1, 2, 0),
            (5, 3, 3, 3, 4, 3, 1, 1),
        ])
        for blasThreads in [1, 2] {
            BLAS.setThreads(blasThreads)
            for spec in specs {
                for centred in [false, true] {
                    try checkBackward(spec, centred: centred, bias: true, rng: &rng)
                }
            }
        }
        BLAS.setThreads(1)
        // Without bias.
        try checkBackward(specs[0], centred: true, bias: false, rng: &rng)
    }

    private func checkBackward(_ spec: ConvSpec, centred: Bool, bias: Bool, rng: inout SeededGenerator) throws {
        let (conv, x) = try makeTestConvolution(spec, bias: bias, centred: centred, rng: &rng)
        let dyTensor = Tensor.randomNormal(shape: spec.outputShape, using: &rng)
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        try conv.forward(x, into: &y, training: true)
        try conv.backward(dyTensor, into: &dx)
        XCTAssertEqual(dx.shape, x.shape)

        let dy = doubles(dyTensor.values)
        var xs = doubles(x.values), ws = doubles(conv.weight.value)
        var bs = conv.bias.map { doubles($0.value) }
        func loss() -> Double {
            zip(direct(spec, x: xs, w: ws, b: bs, centred: centred), dy).reduce(0) { $0 + $1.0 * $1.1 }
        }
        let h = 1e-3
        /// Central difference of `loss` in one coordinate, set through `write`.
        func fd(_ value: Double, _ write: (Double) -> Void) -> Double {
            centralDifference(value, h: h, loss: loss, write)
        }
        let fdX = xs.indices.map { i in fd(xs[i]) { xs[i] = $0 } }
        let fdW = ws.indices.map { i in fd(ws[i]) { ws[i] = $0 } }
        let fdB = (bs ?? []).indices.map { i in fd(bs![i]) { bs![i] = $0 } }
        let label = "\(spec) centred \(centred) bias \(bias)"
        assertClose(dx.values, fdX, relative: 1e-5, "dx " + label)
        assertClose(conv.weight.gradient, fdW, relative: 1e-5, "dW " + label)
        if let b = conv.bias { assertClose(b.gradient, fdB, relative: 1e-5, "db " + label) }
        if centred {
            // The gradient of a centred conv has zero mean per filter.
            let fanIn = spec.channels * spec.kernel * spec.kernel
            for o in 0..<spec.filters {
                let mean = conv.weight.gradient[o * fanIn..<(o + 1) * fanIn].reduce(0, +) / Float(fanIn)
                XCTAssertEqual(mean, 0, accuracy: 1e-5)
            }
        }
    }

    func testSkippingInputGradientLeavesDxAndKeepsWeightGradient() throws {
        var rng = SeededGenerator(seed: 14)
        let spec = ConvSpec(batch: 4, channels: 1, height: 8, width: 8, filters: 3, kernel: 3, stride: 1, padding: 1)
        let (conv, x) = try makeTestConvolution(spec, bias: true, centred: false, rng: &rng)
        let dy = Tensor.randomNormal(shape: spec.outputShape, using: &rng)
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        try conv.forward(x, into: &y, training: true)
        try conv.backward(dy, into: &dx)
        let fullWeightGradient = conv.weight.gradient, fullBiasGradient = conv.bias!.gradient

        conv.computesInputGradient = false
        var untouched = try Tensor(shape: [1, 2], values: [7, 8])
        try conv.forward(x, into: &y, training: true)
        try conv.backward(dy, into: &untouched)
        XCTAssertEqual(untouched.shape, [1, 2])
        XCTAssertEqual(untouched.values, [7, 8])
        XCTAssertEqual(conv.weight.gradient, fullWeightGradient)
        XCTAssertEqual(conv.bias!.gradient, fullBiasGradient)
    }

    /// The two threading strategies give the same numbers (up to summation order).
    func testThreadingStrategiesAgree() throws {
        var rng = SeededGenerator(seed: 15)
        let spec = ConvSpec(batch: 6, channels: 8, height: 10, width: 10, filters: 8, kernel: 3, stride: 1, padding: 1)
        let (conv, x) = try makeTestConvolution(spec, bias: true, centred: true, rng: &rng)
        let dy = Tensor.randomNormal(shape: spec.outputShape, using: &rng)
        var results: [([Float], [Float], [Float])] = []
        for threads in [1, 2] {
            BLAS.setThreads(threads)
            var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
            try conv.forward(x, into: &y, training: true)
            try conv.backward(dy, into: &dx)
            results.append((y.values, dx.values, conv.weight.gradient))
        }
        BLAS.setThreads(1)
        assertClose(results[0].0, doubles(results[1].0), relative: 1e-6, "y")
        assertClose(results[0].1, doubles(results[1].1), relative: 1e-6, "dx")
        assertClose(results[0].2, doubles(results[1].2), relative: 1e-5, "dW")
    }

    // MARK: - Initialisation and state

    func testHeInitialisationAndStateDict() throws {
        var rng = SeededGenerator(seed: 16)
        let conv = try Conv2d(inChannels: 64, outChannels: 64, kernelSize: 3, stride: 1, padding: 1, generator: &rng)
        XCTAssertEqual(conv.weight.shape, [64, 64, 3, 3])
        XCTAssertEqual(conv.weight.role, .weight)
        XCTAssertNil(conv.bias)
        let w = doubles(conv.weight.value)
        let mean = w.reduce(0, +) / Double(w.count)
        let std = (w.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(w.count)).squareRoot()
        XCTAssertEqual(mean, 0, accuracy: 0.003)
        XCTAssertEqual(std, (2.0 / 576).squareRoot(), accuracy: 0.02 * (2.0 / 576).squareRoot())

        var same = SeededGenerator(seed: 16)
        let twin = try Conv2d(inChannels: 64, outChannels: 64, kernelSize: 3, padding: 1, generator: &same)
        XCTAssertEqual(twin.weight.value, conv.weight.value, "seeded init is reproducible")

        let withBias = try Conv2d(inChannels: 2, outChannels: 3, kernelSize: 1, bias: true, generator: &rng)
        XCTAssertEqual(withBias.bias?.value, [0, 0, 0])
        XCTAssertEqual(withBias.bias?.role, .bias)
        let state = withBias.stateDict()
        XCTAssertEqual(Set(state.keys), ["weight", "bias"])
        XCTAssertEqual(state["weight"]?.shape, [3, 2, 1, 1])
        XCTAssertEqual(conv.stateDict().keys.sorted(), ["weight"])

        let other = try Conv2d(inChannels: 2, outChannels: 3, kernelSize: 1, bias: true, generator: &rng)
        try other.loadStateDict(state)
        XCTAssertEqual(other.weight.value, withBias.weight.value)
        XCTAssertThrowsError(try other.loadStateDict(["weight": state["weight"]!])) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .incompatibleStateDict(layer: other.name, missingKeys: ["bias"], unexpectedKeys: []))
        }
        XCTAssertThrowsError(
            try other.loadStateDict([
                "weight": .float32(shape: [3, 2], values: Array(repeating: 0, count: 6)),
                "bias": state["bias"]!,
            ]))
        XCTAssertEqual(other.weight.value, withBias.weight.value, "a failed load changes nothing")
    }

    // MARK: - Bad input

    func testBadInputThrowsSpecificErrors() throws {
        var rng = SeededGenerator(seed: 17)
        let conv = try Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, stride: 1, padding: 0, generator: &rng)
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])

        XCTAssertThrowsError(try conv.backward(Tensor(zeros: [1, 4, 1, 1]), into: &dx)) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: conv.name))
        }
        XCTAssertThrowsError(try conv.forward(Tensor(zeros: [2, 5, 8, 8]), into: &y, training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .channelMismatch(layer: conv.name, expected: 3, got: 5))
            XCTAssertTrue("\($0)".contains("5 channels"), "\($0)")
        }
        XCTAssertThrowsError(try conv.forward(Tensor(zeros: [2, 3, 8]), into: &y, training: true)) {
            XCTAssertEqual($0 as? LayerError, .wrongRank(layer: conv.name, expected: 4, shape: [2, 3, 8]))
        }
        // The im2col engine is channels-first only (oneDNN, the default where built in, takes both layouts).
        conv.engine = .im2col
        assertRejectsChannelsLast(conv, into: &y)
        conv.engine = .preferred
        XCTAssertThrowsError(try conv.forward(Tensor(zeros: [0, 3, 8, 8]), into: &y, training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .emptyBatch(layer: conv.name))
        }
        XCTAssertThrowsError(try conv.forward(Tensor(zeros: [1, 3, 2, 8]), into: &y, training: true)) {
            XCTAssertEqual(
                $0 as? LayerError,
                .inputTooSmall(layer: conv.name, height: 2, width: 8, kernelSize: 3, padding: 0))
        }
        try conv.forward(Tensor(zeros: [2, 3, 8, 8]), into: &y, training: true)
        XCTAssertThrowsError(try conv.backward(Tensor(zeros: [2, 4, 5, 6]), into: &dx)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .shapeMismatch(
                    layer: conv.name, expected: [2, 4, 6, 6],
                    expectedLayout: .channelsFirst, got: [2, 4, 5, 6],
                    gotLayout: .channelsFirst))
        }
        XCTAssertThrowsError(try Conv2d(inChannels: 0, outChannels: 4, kernelSize: 3, generator: &rng)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .invalidArgument(layer: "Conv2d", name: "inChannels", value: "0", expected: "at least 1"))
        }
        XCTAssertThrowsError(try Conv2d(inChannels: 1, outChannels: 4, kernelSize: 3, stride: 0, generator: &rng))
        XCTAssertThrowsError(try Conv2d(inChannels: 1, outChannels: 4, kernelSize: 3, padding: -1, generator: &rng))
    }

    // MARK: - Timing (release builds; prints, asserts nothing about speed)

    /// Milliseconds per forward + backward for ResNet-8's convolution shapes under both threading strategies.
    func testConvolutionTimings() throws {
        #if DEBUG
            print("ConvolutionTests.testConvolutionTimings: skipped in debug builds (run swift test -c release)")
        #else
            var rng = SeededGenerator(seed: 18)
            // (in, out, kernel, stride, padding, H, uses per ResNet-8 step, dx needed)
            let layers: [(Int, Int, Int, Int, Int, Int, Int, Bool)] = [
                (1, 16, 3, 1, 1, 28, 1, false),  // stem
                (16, 16, 3, 1, 1, 28, 2, true),  // layer1 (two convs)
                (16, 32, 3, 2, 1, 28, 1, true),  // layer2 conv1
                (16, 32, 1, 2, 0, 28, 1, true),  // layer2 downsample
                (32, 32, 3, 1, 1, 14, 1, true),  // layer2 conv2
                (32, 64, 3, 2, 1, 14, 1, true),  // layer3 conv1
                (32, 64, 1, 2, 0, 14, 1, true),  // layer3 downsample
                (64, 64, 3, 1, 1, 7, 1, true),  // layer3 conv2
            ]
            print("BLAS core: \(BLAS.coreName), Parallelism.threadCount = \(Parallelism.threadCount)")
            for batch in [32, 2] {
                for (strategy, blasThreads) in [
                    ("own threads over images, OpenBLAS 1 thread", 1),
                    ("serial loops, OpenBLAS 2 threads", 2),
                ] {
                    BLAS.setThreads(blasThreads)
                    var total = 0.0
                    print("batch \(batch), \(strategy):")
                    for (cin, cout, k, s, p, h, uses, needsDx) in layers {
                        let conv = try Conv2d(
                            inChannels: cin, outChannels: cout, kernelSize: k, stride: s, padding: p,
                            centred: true, generator: &rng)
                        conv.computesInputGradient = needsDx
                        let x = Tensor.randomNormal(shape: [batch, cin, h, h], using: &rng)
                        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
                        try conv.forward(x, into: &y, training: true)
                        let dy = Tensor.randomNormal(shape: y.shape, using: &rng)
                        try conv.backward(dy, into: &dx)
                        // Best of 5 rounds (the machine may be shared): the mean of each round, the fastest round kept.
                        let iterations = batch == 32 ? 10 : 100
                        var f = Double.infinity, b = Double.infinity
                        for _ in 0..<5 {
                            var forwardTime = 0.0, backwardTime = 0.0
                            for _ in 0..<iterations {
                                let t0 = DispatchTime.now().uptimeNanoseconds
                                try conv.forward(x, into: &y, training: true)
                                let t1 = DispatchTime.now().uptimeNanoseconds
                                try conv.backward(dy, into: &dx)
                                let t2 = DispatchTime.now().uptimeNanoseconds
                                forwardTime += Double(t1 - t0) / 1e6
                                backwardTime += Double(t2 - t1) / 1e6
                            }
                            if forwardTime + backwardTime < (f + b) * Double(iterations) {
                                f = forwardTime / Double(iterations)
                                b = backwardTime / Double(iterations)
                            }
                        }
                        let flops =
                            2.0 * Double(batch * cout * y.shape[2] * y.shape[3] * cin * k * k) * (needsDx ? 3 : 2)
                        total += (f + b) * Double(uses)
                        print(
                            String(
                                format:
                                    "  (%d,%2d,%2d,%2d)→%2d %d×%d s%d: fwd %.3f ms + bwd %.3f ms = %.3f ms  (%.1f GFLOP/s)",
                                batch, cin, h, h, cout, k, k, s, f, b, f + b, flops / ((f + b) * 1e6)))
                    }
                    print(
                        String(
                            format: "  ResNet-8 convolutions per step: %.2f ms → %.0f images/s (convs only)",
                            total, Double(batch) / total * 1000))
                }
            }
            BLAS.setThreads(1)
        #endif
    }
}

/// Direct convolution in Double (with the filters centred first when `centred`).
private func direct(_ s: ConvSpec, x: [Double], w: [Double], b: [Double]?, centred: Bool) -> [Double] {
    let fanIn = s.channels * s.kernel * s.kernel
    var w = w
    if centred {
        for o in 0..<s.filters {
            let mean = w[o * fanIn..<(o + 1) * fanIn].reduce(0, +) / Double(fanIn)
            for i in o * fanIn..<(o + 1) * fanIn { w[i] -= mean }
        }
    }
    var y = [Double](repeating: 0, count: s.batch * s.filters * s.outHeight * s.outWidth)
    for n in 0..<s.batch {
        for o in 0..<s.filters {
            for oh in 0..<s.outHeight {
                for ow in 0..<s.outWidth {
                    var total = b?[o] ?? 0
                    for c in 0..<s.channels {
                        for ki in 0..<s.kernel {
                            for kj in 0..<s.kernel {
                                let ih = oh * s.stride - s.padding + ki, iw = ow * s.stride - s.padding + kj
                                guard ih >= 0, ih < s.height, iw >= 0, iw < s.width else { continue }
                                total +=
                                    w[((o * s.channels + c) * s.kernel + ki) * s.kernel + kj]
                                    * x[((n * s.channels + c) * s.height + ih) * s.width + iw]
                            }
                        }
                    }
                    y[((n * s.filters + o) * s.outHeight + oh) * s.outWidth + ow] = total
                }
            }
        }
    }
    return y
}
