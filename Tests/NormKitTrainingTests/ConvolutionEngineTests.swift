import CNormKitDNNL
import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// The oneDNN engine of `Conv2d` (both layouts) against the im2col engine (the reference) and a direct convolution
/// in Double: forward, input gradient and parameter gradients on random shapes; thread-count independence and
/// run-to-run reproducibility; the backward when something changed between a training forward and its backward;
/// errors; and a whole ResNet-8 on each engine.
final class ConvolutionEngineTests: XCTestCase {
    static let defaultThreads = Parallelism.threadCount

    override func setUp() {
        super.setUp()
        BLAS.setThreads(1)  // the library's recommended configuration (layers split the batch themselves)
    }

    override func tearDown() {
        Parallelism.threadCount = Self.defaultThreads
        BLAS.setThreads(1)
        super.tearDown()
    }

    func skipUnlessOneDNN() throws {
        try XCTSkipUnless(
            ConvolutionEngine.oneDNN.isAvailable,
            ConvolutionEngine.oneDNN.unavailableReason ?? "oneDNN unavailable")
    }

    // MARK: - Engine properties

    /// A build without oneDNN says what fixes it: install the package; or, when it is installed (the build was
    /// configured before it was, and SwiftPM kept that reading), reconfigure with the setup script, which must
    /// offer the option. A build with oneDNN warns of nothing.
    func testABuildWithoutOneDNNSaysWhatFixesIt() throws {
        let missing = ConvolutionEngine.oneDNNMissingReason(headerInstalled: false)
        XCTAssertTrue(missing.contains("install Debian's libdnnl-dev"), missing)
        XCTAssertFalse(missing.contains("--reconfigure"), missing)
        let stale = ConvolutionEngine.oneDNNMissingReason(headerInstalled: true)
        XCTAssertTrue(stale.contains("bash scripts/setup.sh --reconfigure"), stale)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let setup = try String(contentsOf: root.appendingPathComponent("scripts/setup.sh"), encoding: .utf8)
        XCTAssertTrue(setup.contains("--reconfigure) reconfigure=1"), "setup.sh offers --reconfigure")
        if ConvolutionEngine.oneDNN.isAvailable {
            XCTAssertNil(ConvolutionEngine.staleConfigurationWarning)
        } else if ConvolutionEngine.oneDNNHeaderInstalled,
            ProcessInfo.processInfo.environment["NORMKIT_WITHOUT_ONEDNN"] == nil
        {
            XCTAssertEqual(ConvolutionEngine.staleConfigurationWarning, "warning: " + stale)
        }
    }

    func testEngineProperties() throws {
        try skipUnlessOneDNN()
        XCTAssertEqual(ConvolutionEngine.preferred, .oneDNN)
        XCTAssertEqual(ConvolutionEngine.oneDNN.activationLayout, .channelsLast)
        XCTAssertEqual(ConvolutionEngine.im2col.activationLayout, .channelsFirst)
        XCTAssertEqual(ConvolutionEngine.oneDNNDirect.activationLayout, .channelsLast)
        XCTAssertEqual(ConvolutionEngine.allCases.map(\.usesOneDNN), [true, true, false])
        XCTAssertEqual(ConvolutionEngine(rawValue: "onednn-direct"), .oneDNNDirect)
        XCTAssertNil(ConvolutionEngine.oneDNN.unavailableReason)
        XCTAssertNil(ConvolutionEngine.oneDNNDirect.unavailableReason)
        XCTAssertNil(ConvolutionEngine.im2col.unavailableReason)
        XCTAssertTrue(
            ConvolutionEngine.oneDNN.versionDescription.hasPrefix("oneDNN 2.")
                && ConvolutionEngine.oneDNN.versionDescription.hasSuffix(", Winograd where it pays"),
            ConvolutionEngine.oneDNN.versionDescription)
        XCTAssertTrue(
            ConvolutionEngine.oneDNNDirect.versionDescription.hasSuffix(", direct only"),
            ConvolutionEngine.oneDNNDirect.versionDescription)
        var rng = SeededGenerator(seed: 900)
        let conv = try Conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, generator: &rng)
        XCTAssertEqual(conv.engine, .oneDNN, "the default engine is the preferred one")
        let model = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &rng)
        XCTAssertEqual(model.engine, .oneDNN)
        model.engine = .im2col
        let convs = model.namedModules().compactMap { $0.module as? Conv2d }
        XCTAssertEqual(convs.count, 9, "ResNet-8: stem, 3 blocks × 2, 2 downsample convolutions")
        for conv in convs { XCTAssertEqual(conv.engine, .im2col) }
        model.engine = .oneDNN
        for conv in convs { XCTAssertEqual(conv.engine, .oneDNN) }
        model.useConvolutionEngine(.oneDNNDirect)
        for conv in convs { XCTAssertEqual(conv.engine, .oneDNNDirect) }
        XCTAssertEqual(model.engine, .oneDNNDirect)
    }

    // MARK: - oneDNN against im2col and float64

    /// Random shapes (batch 1…5, 1…20 channels in and out, planes 1…13, kernel 1 and 3 and once 5, stride 1 and 2,
    /// padding 0…2, every bias/centred combination): the oneDNN engine on NCHW and on NHWC input, and the im2col
    /// engine, each against a direct convolution in Double and oneDNN against im2col: outputs, `dx`, `dW`, `db`.
    func testOneDNNMatchesIm2colAndFloat64OnRandomShapes() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 901)
        var worst: [String: Double] = [:]
        var kernels: Set<Int> = [], strides: Set<Int> = [], paddings: Set<Int> = []
        for index in 0..<60 {
            let spec = ConvSpec.random(&rng, kernel: index == 0 ? 5 : nil)
            kernels.insert(spec.kernel)
            strides.insert(spec.stride)
            paddings.insert(spec.padding)
            let bias = index % 2 == 1, centred = (index / 2) % 2 == 1
            Parallelism.threadCount = index % 3 == 0 ? 1 : 2
            let (conv, x, dy) = try makeConvolution(spec, bias: bias, centred: centred, rng: &rng)
            let label = "\(spec) bias \(bias) centred \(centred) threads \(Parallelism.threadCount)"
            let want = DoubleConvolution.expected(spec, conv, centred: centred, x: x, dy: dy)
            let im2col = try run(conv, .im2col, .channelsFirst, x: x, dy: dy)
            let nchw = try run(conv, .oneDNN, .channelsFirst, x: x, dy: dy)
            let nhwc = try run(conv, .oneDNN, .channelsLast, x: x, dy: dy)
            for (name, result) in [("im2col", im2col), ("oneDNN NCHW", nchw), ("oneDNN NHWC", nhwc)] {
                worst[name] = max(
                    worst[name] ?? 0, result.assertClose(to: want, tolerance: 1e-4, "\(name) vs float64 \(label)"))
            }
            let wantIm2col = ExpectedConvolution(im2col)
            for (name, result) in [("oneDNN NCHW vs im2col", nchw), ("oneDNN NHWC vs im2col", nhwc)] {
                worst[name] = max(
                    worst[name] ?? 0, result.assertClose(to: wantIm2col, tolerance: 1e-4, "\(name) \(label)"))
            }
            assertNear(nhwc.y, nchw.y, 1e-5, "oneDNN NHWC vs NCHW y \(label)")
        }
        XCTAssertEqual(kernels, [1, 3, 5])
        XCTAssertEqual(strides, [1, 2])
        XCTAssertEqual(paddings, [0, 1, 2])
        print(
            "ConvolutionEngineTests random shapes, worst relative errors:",
            worst.keys.sorted().map { "\($0) \(String(format: "%.2e", worst[$0]!))" }.joined(separator: ", "))
    }

    /// Shapes where the default oneDNN engine runs Winograd F(4×4, 3×3) (3 × 3, stride 1, channels in blocks of 16,
    /// enough tiles per thread), in both layouts, on 1 and 2 threads, with and without bias and centring: against a
    /// convolution in Double and against the direct kernels (``ConvolutionEngine/oneDNNDirect``), outputs, `dx`, `dW`,
    /// `db`; where oneDNN's direct kernels are AVX-512 ones every pass names Winograd, and the direct engine never.
    func testWinogradMatchesDirectAndFloat64() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 915)
        // (batch, channels, height, width, filters, kernel, stride, padding)
        let specs = ConvSpec.table([
            (8, 32, 14, 14, 32, 3, 1, 1),  // ResNet-20's second stage
            (4, 16, 28, 28, 16, 3, 1, 1),  // 16 channels: NHWC is Winograd's blocked layout, read in place
            (8, 32, 13, 11, 48, 3, 1, 1),  // planes not in whole tiles, more filters than channels
            (6, 32, 20, 18, 16, 3, 1, 0),  // no padding, fewer filters
        ])
        var worst: [String: Double] = [:]
        var winogradPasses = 0, avx512 = false
        for (index, spec) in specs.enumerated() {
            for threads in [1, 2] {
                Parallelism.threadCount = threads
                let bias = (index + threads) % 2 == 1, centred = index % 2 == 1
                let (conv, x, dy) = try makeConvolution(spec, bias: bias, centred: centred, rng: &rng)
                let want = DoubleConvolution.expected(spec, conv, centred: centred, x: x, dy: dy)
                for layout in [TensorLayout.channelsLast, .channelsFirst] {
                    let label = "\(spec) \(layout) threads \(threads) bias \(bias) centred \(centred)"
                    let direct = try run(conv, .oneDNNDirect, layout, x: x, dy: dy)
                    let directNames = (0..<3).flatMap { conv.oneDNNImplementations(pass: $0, threads: threads) }
                    let winograd = try run(conv, .oneDNN, layout, x: x, dy: dy)
                    let names = (0..<3).flatMap { conv.oneDNNImplementations(pass: $0, threads: threads) }
                    XCTAssertFalse(directNames.contains { $0.contains("wino") }, "direct engine: \(directNames)")
                    // oneDNN has Winograd where its direct NHWC kernels are AVX-512 ones (NCHW's may be "gemm:jit").
                    if layout == .channelsLast { avx512 = directNames.allSatisfy { $0.contains("avx512") } }
                    if avx512 {
                        XCTAssertTrue(names.allSatisfy { $0.hasPrefix("jit_wino_4x3:") }, "\(label): \(names)")
                        winogradPasses += names.count
                    }
                    for (name, result) in [("Winograd", winograd), ("direct", direct)] {
                        worst[name] = max(
                            worst[name] ?? 0,
                            result.assertClose(to: want, tolerance: 1e-4, "\(name) vs float64 \(label)"))
                    }
                    worst["Winograd vs direct"] = max(
                        worst["Winograd vs direct"] ?? 0,
                        winograd.assertClose(
                            to: ExpectedConvolution(direct), tolerance: 1e-4, "Winograd vs direct \(label)"))
                }
            }
        }
        print(
            "ConvolutionEngineTests Winograd (\(winogradPasses) passes), worst relative errors:",
            worst.keys.sorted().map { "\($0) \(String(format: "%.2e", worst[$0]!))" }.joined(separator: ", "))
    }

    /// Hand-picked edge shapes: 1×1 planes, a window covering the whole padded input, one channel in or out,
    /// batch 1, a 5×5 kernel with stride 2, and channel counts around oneDNN's 8/16-channel blocks.
    func testOneDNNEdgeShapesMatchFloat64() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 902)
        // (batch, channels, height, width, filters, kernel, stride, padding)
        let specs = ConvSpec.table([
            (1, 1, 1, 1, 1, 1, 1, 0), (2, 3, 1, 1, 4, 3, 1, 1), (3, 5, 1, 2, 2, 5, 2, 2), (1, 16, 13, 13, 16, 3, 2, 0),
            (4, 17, 6, 11, 9, 5, 2, 1), (5, 8, 12, 3, 20, 1, 2, 2), (2, 20, 2, 13, 1, 3, 1, 2),
            // one input channel into 16 and 32 filters: the 3×3 stem weight gradient's register path (NHWC)
            (3, 1, 9, 7, 16, 3, 1, 1), (2, 1, 10, 10, 32, 3, 2, 1),
        ])
        for spec in specs {
            for (bias, centred) in [(false, false), (true, true)] {
                let (conv, x, dy) = try makeConvolution(spec, bias: bias, centred: centred, rng: &rng)
                let want = DoubleConvolution.expected(spec, conv, centred: centred, x: x, dy: dy)
                for layout in TensorLayout.allCases {
                    let result = try run(conv, .oneDNN, layout, x: x, dy: dy)
                    result.assertClose(
                        to: want, tolerance: 1e-5, "oneDNN \(layout) \(spec) bias \(bias) centred \(centred)")
                }
            }
        }
    }

    /// Degenerate geometries on both engines (oneDNN in both layouts, im2col), each against the direct convolution in
    /// Double and oneDNN against im2col: a stride larger than the kernel and than the input, a padding larger than the
    /// kernel (outputs that see only padding: the bias), 1×n and n×1 planes, batch 1, a plane of height 0 that the
    /// padding makes convolvable (every output is the bias; `dW = 0`), and CenConv of one input channel with a 1×1
    /// kernel, whose centred filters are exactly 0 (spec §5: `W − mean(W)` of one value), so `y = b`, `dx = 0` and
    /// `dW = 0` exactly.
    func testDegenerateGeometriesAgreeOnBothEnginesAndFloat64() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 910)
        // (batch, channels, height, width, filters, kernel, stride, padding)
        let specs = ConvSpec.table([
            (2, 3, 7, 7, 4, 1, 3, 0), (1, 2, 9, 6, 3, 2, 5, 0), (2, 3, 8, 8, 2, 3, 4, 1), (1, 2, 3, 3, 3, 3, 10, 1),
            (2, 2, 5, 4, 3, 1, 1, 3), (1, 3, 4, 5, 2, 3, 1, 4), (2, 2, 3, 3, 2, 2, 3, 3), (1, 4, 1, 7, 5, 3, 1, 1),
            (3, 4, 7, 1, 5, 3, 2, 1), (1, 1, 1, 1, 1, 1, 1, 0), (2, 2, 0, 5, 3, 3, 1, 2),
        ])
        for spec in specs {
            for (bias, centred) in [(false, false), (true, false), (true, true)] {
                let (conv, x, dy) = try makeConvolution(spec, bias: bias, centred: centred, rng: &rng)
                let label = "\(spec) bias \(bias) centred \(centred)"
                let want = DoubleConvolution.expected(spec, conv, centred: centred, x: x, dy: dy)
                let im2col = try run(conv, .im2col, .channelsFirst, x: x, dy: dy)
                im2col.assertClose(to: want, tolerance: 1e-5, "im2col \(label)")
                for layout in TensorLayout.allCases {
                    let result = try run(conv, .oneDNN, layout, x: x, dy: dy)
                    result.assertClose(to: want, tolerance: 1e-5, "oneDNN \(layout) \(label)")
                    result.assertClose(to: ExpectedConvolution(im2col), tolerance: 1e-5, "oneDNN \(layout) vs im2col")
                }
            }
        }
        // CenConv of a single value: exactly zero filters, whatever the weight.
        let single = ConvSpec.table([(3, 1, 4, 5, 2, 1, 1, 0)])[0]
        let (conv, x, dy) = try makeConvolution(single, bias: true, centred: true, rng: &rng)
        for (engine, layout) in [(ConvolutionEngine.im2col, TensorLayout.channelsFirst), (.oneDNN, .channelsLast)] {
            let result = try run(conv, engine, layout, x: x, dy: dy)
            let bias = conv.bias!.value, positions = single.outHeight * single.outWidth
            XCTAssertEqual(result.y, result.y.indices.map { bias[($0 / positions) % 2] }, "\(engine): y = b")
            XCTAssertTrue(result.dx.allSatisfy { $0 == 0 }, "\(engine): dx = 0")
            XCTAssertEqual(result.dw, [0, 0], "\(engine): dW = 0")
        }
    }

    /// The forward of a convolution with at most 16 input channels runs oneDNN's direct `jit` kernel, never
    /// `brgconv` (1.4–2.5× slower there in ResNet training, docs/PERFORMANCE.md session 13); the backward passes and
    /// wider inputs keep oneDNN's own choice. Every pass names an implementation.
    func testNarrowInputsRunTheDirectForward() throws {
        try skipUnlessOneDNN()
        for (channels, kernel, stride) in [(1, 3, 1), (16, 3, 1), (16, 3, 2), (8, 5, 1), (32, 3, 1), (64, 3, 1)] {
            guard
                let convolution = nk_dnnl_convolution_create(
                    4, Int32(channels), 14, 14, 16, Int32(kernel),
                    Int32(stride), 1, 0, 1, 0)
            else { return XCTFail(String(cString: nk_dnnl_last_error())) }
            defer { nk_dnnl_convolution_destroy(convolution) }
            let names = (0..<3).map { String(cString: nk_dnnl_convolution_implementation(convolution, Int32($0))) }
            XCTAssertTrue(names.allSatisfy { !$0.isEmpty }, "\(channels) channels: \(names)")
            if channels <= 16 {
                XCTAssertFalse(names[0].hasPrefix("brgconv:"), "\(channels) channels, \(kernel)×\(kernel): \(names[0])")
            }
            XCTAssertEqual(String(cString: nk_dnnl_convolution_implementation(convolution, 3)), "")
            XCTAssertEqual(String(cString: nk_dnnl_convolution_implementation(nil, 0)), "")
        }
    }

    /// `nk_single_channel_weight_gradient` (the oneDNN engine's one-input-channel weight gradient) against the
    /// scalar sum over positions in order, bit for bit (the AVX-512 and AVX2 register paths for 3×3 kernels with
    /// 16·k filters, where the CPU has them, and the scalar path), and against a float64 sum; `db` with and without.
    func testSingleChannelWeightGradientIsThePositionOrderSumBitForBit() {
        var rng = SeededGenerator(seed: 911)
        // (images, height, width, filters, kernel, stride, padding)
        let cases = [
            (3, 9, 7, 16, 3, 1, 1), (2, 10, 10, 32, 3, 2, 1), (1, 4, 5, 48, 3, 1, 2), (2, 6, 5, 20, 3, 1, 0),
            (2, 7, 7, 16, 5, 2, 2), (1, 1, 1, 16, 3, 1, 1),
        ]
        for (images, height, width, filters, kernel, stride, padding) in cases {
            let outHeight = (height + 2 * padding - kernel) / stride + 1
            let outWidth = (width + 2 * padding - kernel) / stride + 1
            let x = (0..<images * height * width).map { _ in Float.random(in: -1...1, using: &rng) }
            let dy = (0..<images * outHeight * outWidth * filters).map { _ in Float.random(in: -1...1, using: &rng) }
            let taps = kernel * kernel
            // The reference: per position in order, db += dy and dW[tap] += x[tap]·dy, Float products and sums.
            var wantW = [Float](repeating: 0, count: taps * filters), wantB = [Float](repeating: 0, count: filters)
            var doubleW = [Double](repeating: 0, count: taps * filters)
            for n in 0..<images {
                for oh in 0..<outHeight {
                    for ow in 0..<outWidth {
                        let row = ((n * outHeight + oh) * outWidth + ow) * filters
                        for f in 0..<filters { wantB[f] += dy[row + f] }
                        for ki in 0..<kernel {
                            let ih = oh * stride - padding + ki
                            guard ih >= 0 && ih < height else { continue }
                            for kj in 0..<kernel {
                                let iw = ow * stride - padding + kj
                                guard iw >= 0 && iw < width else { continue }
                                let value = x[(n * height + ih) * width + iw]
                                for f in 0..<filters {
                                    let product = value * dy[row + f]
                                    wantW[f * taps + ki * kernel + kj] += product
                                    doubleW[f * taps + ki * kernel + kj] += Double(value) * Double(dy[row + f])
                                }
                            }
                        }
                    }
                }
            }
            let label =
                "images \(images) \(height)×\(width) filters \(filters) kernel \(kernel) stride \(stride) pad \(padding)"
            for (level, withBias) in [(2, true), (2, false), (1, true), (0, true)] {
                var dw = [Float](repeating: .nan, count: taps * filters), db = [Float](repeating: .nan, count: filters)
                var scratch = [Float](repeating: .nan, count: taps * filters)
                dw.withUnsafeMutableBufferPointer { dwp in
                    db.withUnsafeMutableBufferPointer { dbp in
                        nk_single_channel_weight_gradient(
                            dwp.baseAddress!, withBias ? dbp.baseAddress! : nil, x, dy, Int32(images), Int32(height),
                            Int32(width), Int32(filters), Int32(kernel), Int32(stride), Int32(padding),
                            Int32(outHeight), Int32(outWidth), &scratch, Int32(level))
                    }
                }
                XCTAssertEqual(dw, wantW, "dW \(label) bias \(withBias) level \(level)")
                if withBias {
                    XCTAssertEqual(db, wantB, "db \(label) level \(level)")
                } else {
                    XCTAssertTrue(db.allSatisfy(\.isNaN))
                }
                for i in dw.indices {
                    XCTAssertEqual(Double(dw[i]), doubleW[i], accuracy: 1e-5 * max(1, abs(doubleW[i])), "\(label) \(i)")
                }
            }
        }
    }

    // MARK: - Threads and reproducibility

    /// One and two threads (a batch of 5 splits unevenly) give the same numbers up to rounding, and the same
    /// thread count gives bit-identical numbers run after run, for both engines and both oneDNN layouts.
    func testResultsDoNotDependOnThreadsAndRepeatExactly() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 903)
        let spec = ConvSpec(
            batch: 5, channels: 13, height: 9, width: 10, filters: 11, kernel: 3, stride: 1,
            padding: 1)
        let (conv, x, dy) = try makeConvolution(spec, bias: true, centred: true, rng: &rng)
        for (engine, layout) in [
            (ConvolutionEngine.oneDNN, TensorLayout.channelsFirst), (.oneDNN, .channelsLast),
            (.im2col, .channelsFirst),
        ] {
            var byThreads: [Int: EngineResult] = [:]
            for threads in [1, 2, 1, 2] {
                Parallelism.threadCount = threads
                let result = try run(conv, engine, layout, x: x, dy: dy)
                if let first = byThreads[threads] {
                    XCTAssertTrue(first == result, "\(engine) \(layout) \(threads) threads: a second run differs")
                } else {
                    byThreads[threads] = result
                }
            }
            byThreads[2]!.assertClose(
                to: ExpectedConvolution(byThreads[1]!), tolerance: 1e-5, "\(engine) \(layout): 2 vs 1 threads")
        }
    }

    // MARK: - What may happen between a training forward and its backward

    /// The backward after `Parallelism.threadCount` changed since the training forward (allowed: the setting
    /// applies from the next call on) must still be the gradient of that forward.
    func testBackwardAfterThreadCountChangedSinceTheForward() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 904)
        let spec = ConvSpec(batch: 4, channels: 6, height: 7, width: 7, filters: 5, kernel: 3, stride: 1, padding: 1)
        let (conv, x, dy) = try makeConvolution(spec, bias: true, centred: false, rng: &rng)
        let want = DoubleConvolution.expected(spec, conv, centred: false, x: x, dy: dy)
        for layout in TensorLayout.allCases {
            for (forwardThreads, backwardThreads) in [(2, 1), (1, 2)] {
                // A fresh layer each time, so no primitive of an earlier call can be reused.
                let fresh = try spec.layer(bias: true, rng: &rng)
                fresh.weight.value = conv.weight.value
                fresh.bias!.value = conv.bias!.value
                fresh.engine = .oneDNN
                var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
                Parallelism.threadCount = forwardThreads
                try fresh.forward(x.converted(to: layout), into: &y, training: true)
                Parallelism.threadCount = backwardThreads
                try fresh.backward(dy.converted(to: layout), into: &dx)
                let result = EngineResult(fresh, y: y, dx: dx)
                result.assertClose(
                    to: want, tolerance: 1e-4,
                    "oneDNN \(layout): forward on \(forwardThreads) threads, backward on \(backwardThreads)")
            }
        }
        // The same after a whole step on one thread with other weights (as after an optimizer step): the backward
        // must use the weights of its own forward, not those of an earlier step.
        for layout in TensorLayout.allCases {
            let layer = try spec.layer(bias: true, rng: &rng)
            layer.engine = .oneDNN
            layer.bias!.value = conv.bias!.value
            layer.weight.value = conv.weight.value.map { -2 * $0 }
            var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
            Parallelism.threadCount = 1
            try layer.forward(x.converted(to: layout), into: &y, training: true)
            try layer.backward(dy.converted(to: layout), into: &dx)
            layer.weight.value = conv.weight.value
            Parallelism.threadCount = 2
            try layer.forward(x.converted(to: layout), into: &y, training: true)
            Parallelism.threadCount = 1
            try layer.backward(dy.converted(to: layout), into: &dx)
            let result = EngineResult(layer, y: y, dx: dx)
            result.assertClose(
                to: want, tolerance: 1e-4,
                "oneDNN \(layout): a step on 1 thread, new weights, forward on 2 threads, backward on 1")
        }
    }

    /// Evaluation forwards of many other shapes between a training forward and its backward (a validation pass
    /// in the middle of a step, or probing shapes) must not change that backward. (Which cached primitive the
    /// layer drops first depends on hashing, so the scenario runs for three training batch sizes and both layouts,
    /// each on a fresh layer.)
    func testBackwardAfterEvaluationForwardsOfOtherShapes() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 905)
        Parallelism.threadCount = 1
        for trainingBatch in [3, 4, 5] {
            let spec = ConvSpec(
                batch: trainingBatch, channels: 4, height: 8, width: 8, filters: 6, kernel: 3,
                stride: 2, padding: 1)
            for layout in TensorLayout.allCases {
                let (conv, x, dy) = try makeConvolution(spec, bias: true, centred: true, rng: &rng)
                let want = DoubleConvolution.expected(spec, conv, centred: true, x: x, dy: dy)
                conv.engine = .oneDNN
                var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1]), other = Tensor(zeros: [1, 1])
                try conv.forward(x.converted(to: layout), into: &y, training: true)
                let forwardOutput = y.converted(to: .channelsFirst).values
                // 30 other shapes (batch 1…2, planes 3…9 × 3…7).
                for batch in 1...2 {
                    for side in 3...7 {
                        for height in [side, side + 1, side + 2] {
                            let probe = Tensor.randomNormal(shape: [batch, spec.channels, height, side], using: &rng)
                            try conv.forward(probe.converted(to: layout), into: &other, training: false)
                        }
                    }
                }
                try conv.backward(dy.converted(to: layout), into: &dx)
                let result = EngineResult(
                    y: forwardOutput, dx: dx.converted(to: .channelsFirst).values,
                    dw: conv.weight.gradient, db: conv.bias?.gradient)
                result.assertClose(
                    to: want, tolerance: 1e-4,
                    "oneDNN \(layout) batch \(trainingBatch): backward after 30 evaluation forwards")
            }
        }
    }

    /// Changing `engine` between a training forward and its backward: the backward uses the forward's engine.
    func testEngineChangedBetweenForwardAndBackward() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 906)
        let spec = ConvSpec(batch: 3, channels: 5, height: 6, width: 7, filters: 4, kernel: 3, stride: 1, padding: 1)
        let (conv, x, dy) = try makeConvolution(spec, bias: true, centred: true, rng: &rng)
        let want = DoubleConvolution.expected(spec, conv, centred: true, x: x, dy: dy)
        for (first, then, layout) in [
            (ConvolutionEngine.oneDNN, ConvolutionEngine.im2col, TensorLayout.channelsLast),
            (.oneDNN, .im2col, .channelsFirst), (.im2col, .oneDNN, .channelsFirst),
        ] {
            conv.engine = first
            var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
            try conv.forward(x.converted(to: layout), into: &y, training: true)
            conv.engine = then
            try conv.backward(dy.converted(to: layout), into: &dx)
            XCTAssertEqual(dx.layout, layout)
            let result = EngineResult(conv, y: y, dx: dx)
            result.assertClose(to: want, tolerance: 1e-4, "forward \(first) \(layout), engine then set to \(then)")
        }
    }

    /// `computesInputGradient = false` on oneDNN: `dx` untouched, the parameter gradients the same.
    func testOneDNNWithoutInputGradient() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 907)
        let spec = ConvSpec(batch: 3, channels: 3, height: 8, width: 8, filters: 4, kernel: 3, stride: 1, padding: 1)
        let (conv, x, dy) = try makeConvolution(spec, bias: true, centred: false, rng: &rng)
        for layout in TensorLayout.allCases {
            let full = try run(conv, .oneDNN, layout, x: x, dy: dy)
            conv.computesInputGradient = false
            var y = Tensor(zeros: [1, 1]), untouched = try Tensor(shape: [1, 2], values: [7, 8])
            try conv.forward(x.converted(to: layout), into: &y, training: true)
            try conv.backward(dy.converted(to: layout), into: &untouched)
            XCTAssertEqual(untouched.values, [7, 8])
            XCTAssertEqual(untouched.shape, [1, 2])
            XCTAssertEqual(conv.weight.gradient, full.dw)
            XCTAssertEqual(conv.bias!.gradient, full.db!)
            conv.computesInputGradient = true
        }
    }

    // MARK: - Errors

    func testBadInputThrowsLayerErrors() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 908)
        let conv = try Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, stride: 1, padding: 0, generator: &rng)
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])

        conv.engine = .oneDNN
        for layout in TensorLayout.allCases {
            XCTAssertThrowsError(
                try conv.forward(Tensor(zeros: [2, 5, 8, 8], layout: layout), into: &y, training: true)
            ) {
                XCTAssertEqual(
                    $0 as? NormalizationError, .channelMismatch(layer: conv.name, expected: 3, got: 5), "\(layout)")
            }
            XCTAssertThrowsError(
                try conv.forward(Tensor(zeros: [2, 1, 8, 8], layout: layout), into: &y, training: false)
            ) {
                XCTAssertEqual(
                    $0 as? NormalizationError, .channelMismatch(layer: conv.name, expected: 3, got: 1), "\(layout)")
            }
            XCTAssertThrowsError(try conv.forward(Tensor(zeros: [2, 3, 8], layout: layout), into: &y, training: true)) {
                XCTAssertEqual(
                    $0 as? LayerError, .wrongRank(layer: conv.name, expected: 4, shape: [2, 3, 8]), "\(layout)")
            }
            XCTAssertThrowsError(
                try conv.forward(Tensor(zeros: [0, 3, 8, 8], layout: layout), into: &y, training: true)
            ) {
                XCTAssertEqual($0 as? NormalizationError, .emptyBatch(layer: conv.name), "\(layout)")
            }
            XCTAssertThrowsError(
                try conv.forward(Tensor(zeros: [1, 3, 2, 8], layout: layout), into: &y, training: true)
            ) {
                XCTAssertEqual(
                    $0 as? LayerError,
                    .inputTooSmall(layer: conv.name, height: 2, width: 8, kernelSize: 3, padding: 0), "\(layout)")
            }
            // A gradient in the other layout than the forward's input.
            try conv.forward(Tensor(zeros: [2, 3, 8, 8], layout: layout), into: &y, training: true)
            XCTAssertEqual(y.layout, layout)
            let other: TensorLayout = layout == .channelsFirst ? .channelsLast : .channelsFirst
            XCTAssertThrowsError(try conv.backward(Tensor(zeros: [2, 4, 6, 6], layout: other), into: &dx)) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .shapeMismatch(
                        layer: conv.name, expected: [2, 4, 6, 6],
                        expectedLayout: layout, got: [2, 4, 6, 6],
                        gotLayout: other), "\(layout)")
            }
            XCTAssertThrowsError(try conv.backward(Tensor(zeros: [2, 4, 5, 6], layout: layout), into: &dx)) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .shapeMismatch(
                        layer: conv.name, expected: [2, 4, 6, 6],
                        expectedLayout: layout, got: [2, 4, 5, 6],
                        gotLayout: layout), "\(layout)")
            }
            // The layer still works after the errors.
            try conv.forward(Tensor(zeros: [2, 3, 8, 8], layout: layout), into: &y, training: true)
            try conv.backward(Tensor(zeros: [2, 4, 6, 6], layout: layout), into: &dx)
            XCTAssertEqual(dx.shape, [2, 3, 8, 8])
            XCTAssertEqual(dx.layout, layout)
        }

        conv.engine = .im2col
        assertRejectsChannelsLast(conv, into: &y)
        XCTAssertThrowsError(try conv.outputShape(for: Tensor(zeros: [2, 3, 8, 8], layout: .channelsLast))) {
            XCTAssertEqual($0 as? LayerError, .unsupportedLayout(layer: conv.name, layout: .channelsLast))
        }
        conv.engine = .oneDNN
        XCTAssertEqual(try conv.outputShape(for: Tensor(zeros: [2, 3, 8, 8], layout: .channelsLast)), [2, 4, 6, 6])
    }

    // MARK: - ResNet-8 on each engine

    /// ResNet-8 with oneDNN (channels-last activations) and with im2col (channels-first), built from the same
    /// seed: the same logits, loss, parameter gradients and running statistics after a training forward and
    /// backward, then the same evaluation logits, then the same again for a second batch of another size; for
    /// GN, BN and MABN (and the other normalizations, which cost little more).
    func testResNet8OneDNNMatchesIm2col() throws {
        try skipUnlessOneDNN()
        let kinds: [NormKind] = [.gn, .bn, .mabn, .brn, .ln, .in, .frozenBN, .none]
        var worst: [String: Double] = [:]
        for kind in kinds {
            var settings = NormalizationSettings(kind: kind)
            if kind == .gn { settings.groups = 4 }
            func build() throws -> ResNet {
                var generator = SeededGenerator(seed: 910)
                return try ResNet(
                    depth: 8, normalization: settings, inChannels: 3, classes: 10, width: 8,
                    zeroInitResidualScale: false, generator: &generator)
            }
            let onednn = try build(), im2col = try build()
            onednn.engine = .oneDNN
            im2col.engine = .im2col
            // The same non-trivial γ and β in both.
            var rng = SeededGenerator(seed: 911)
            for ((_, p), (_, q)) in zip(onednn.namedParameters(), im2col.namedParameters())
            where p.role == .normalizationScale || p.role == .normalizationShift {
                p.value = p.value.map { _ in
                    Float.random(in: 0.5...1.5, using: &rng) * (p.role == .normalizationShift ? 0.3 : 1)
                }
                q.value = p.value
            }
            for (step, batch) in [(0, 8), (1, 4)] {
                let x = Tensor.randomNormal(shape: [batch, 3, 12, 12], using: &rng)
                let labels = (0..<batch).map { _ in Int.random(in: 0..<10, using: &rng) }
                let label = "\(kind) step \(step)"
                var results:
                    [(logits: [Float], grads: [String: [Float]], eval: [Float], state: [String: StateTensor])] = []
                for model in [onednn, im2col] {
                    let ce = SoftmaxCrossEntropy()
                    let logits = try model.forward(x, training: true)
                    XCTAssertEqual(logits.shape, [batch, 10])
                    let logitValues = logits.values
                    _ = try ce.forward(logits: logits, labels: labels)
                    var dlogits = Tensor(zeros: [0, 0])
                    try ce.backward(into: &dlogits)
                    try model.backward(dlogits)
                    var grads: [String: [Float]] = [:]
                    for (name, p) in model.namedParameters() { grads[name] = p.gradient }
                    let eval = try model.forward(x, training: false).values
                    results.append((logitValues, grads, eval, model.stateDict()))
                }
                let (a, b) = (results[0], results[1])
                worst["logits"] = max(worst["logits"] ?? 0, assertNear(a.logits, b.logits, 1e-4, "logits \(label)"))
                worst["eval logits"] = max(
                    worst["eval logits"] ?? 0, assertNear(a.eval, b.eval, 1e-4, "eval logits \(label)"))
                XCTAssertEqual(Set(a.grads.keys), Set(b.grads.keys))
                for (name, g) in a.grads.sorted(by: { $0.key < $1.key }) {
                    guard let h = b.grads[name] else { continue }
                    worst["gradients"] = max(worst["gradients"] ?? 0, assertNear(g, h, 1e-4, "∂\(name) \(label)"))
                }
                XCTAssertEqual(Set(a.state.keys), Set(b.state.keys))
                for (name, value) in a.state {
                    guard case .float32(_, let u) = value, case .float32(_, let v)? = b.state[name] else {
                        XCTAssertEqual(value, b.state[name], "\(name) \(label)")
                        continue
                    }
                    worst["state"] = max(worst["state"] ?? 0, assertNear(u, v, 1e-4, "state \(name) \(label)"))
                }
            }
        }
        print(
            "ConvolutionEngineTests ResNet-8 oneDNN vs im2col, worst relative differences:",
            worst.keys.sorted().map { "\($0) \(String(format: "%.2e", worst[$0]!))" }.joined(separator: ", "))
    }

    /// The oneDNN ResNet given its input channels-last (no conversion) or channels-first (converted once): the
    /// same logits and gradients; and the im2col ResNet given a channels-last input converts it too.
    func testResNetTakesEitherInputLayout() throws {
        try skipUnlessOneDNN()
        var rng = SeededGenerator(seed: 912)
        let x = Tensor.randomNormal(shape: [4, 3, 10, 10], using: &rng)
        let labels = [1, 7, 3, 0]
        for engine in ConvolutionEngine.allCases {
            var outcomes: [([Float], [Float])] = []
            for layout in TensorLayout.allCases {
                var generator = SeededGenerator(seed: 913)
                let model = try ResNet(
                    depth: 8, normalization: NormalizationSettings(kind: .bn), inChannels: 3,
                    width: 8, zeroInitResidualScale: false, generator: &generator)
                model.engine = engine
                let logits = try model.forward(x.converted(to: layout), training: true)
                let ce = SoftmaxCrossEntropy()
                _ = try ce.forward(logits: logits, labels: labels)
                var dlogits = Tensor(zeros: [0, 0])
                try ce.backward(into: &dlogits)
                try model.backward(dlogits)
                outcomes.append((logits.values, model.parameters.flatMap(\.gradient)))
            }
            assertNear(outcomes[1].0, outcomes[0].0, 1e-6, "\(engine): logits of a channels-last input")
            assertNear(outcomes[1].1, outcomes[0].1, 1e-5, "\(engine): gradients of a channels-last input")
        }
    }

    // MARK: - Helpers

    /// A convolution with non-zero filter means (so centring matters) and a random bias, an input and an output
    /// gradient, both channels-first.
    func makeConvolution(
        _ spec: ConvSpec, bias: Bool, centred: Bool, rng: inout SeededGenerator
    ) throws
        -> (Conv2d, Tensor, Tensor)
    {
        let (conv, x) = try makeTestConvolution(spec, bias: bias, centred: centred, rng: &rng)
        let dy = Tensor.randomNormal(shape: spec.outputShape, using: &rng)
        return (conv, x, dy)
    }

    /// One training forward and backward of `conv` on `engine` with `x`, `dy` (channels-first) given in `layout`;
    /// everything returned channels-first.
    func run(
        _ conv: Conv2d, _ engine: ConvolutionEngine, _ layout: TensorLayout, x: Tensor, dy: Tensor,
        file: StaticString = #filePath, line: UInt = #line
    ) throws -> EngineResult {
        conv.engine = engine
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        try conv.forward(x.converted(to: layout), into: &y, training: true)
        XCTAssertEqual(y.layout, layout, "the output is in the input's layout", file: file, line: line)
        XCTAssertEqual(y.shape, dy.shape, file: file, line: line)
        try conv.backward(dy.converted(to: layout), into: &dx)
        XCTAssertEqual(dx.layout, layout, "dx is in the input's layout", file: file, line: line)
        XCTAssertEqual(dx.shape, x.shape, file: file, line: line)
        return EngineResult(conv, y: y, dx: dx)
    }
}

// MARK: - Shapes, results and the float64 reference

/// What one forward and backward produced, channels-first.
struct EngineResult: Equatable {
    var y: [Float], dx: [Float], dw: [Float], db: [Float]?

    init(y: [Float], dx: [Float], dw: [Float], db: [Float]?) {
        self.y = y
        self.dx = dx
        self.dw = dw
        self.db = db
    }

    /// `y` and `dx` channels-first and the parameter gradients of `conv`, after its forward and backward.
    init(_ conv: Conv2d, y: Tensor, dx: Tensor) {
        self.init(
            y: y.converted(to: .channelsFirst).values, dx: dx.converted(to: .channelsFirst).values,
            dw: conv.weight.gradient, db: conv.bias?.gradient)
    }

    /// Checks every part against `want` (max-abs error over max-abs value); returns the worst relative error.
    @discardableResult
    func assertClose(
        to want: ExpectedConvolution, tolerance: Double, _ message: String,
        file: StaticString = #filePath, line: UInt = #line
    ) -> Double {
        var worst = assertNear(y, want.y, tolerance, "y " + message, file: file, line: line)
        worst = max(worst, assertNear(dx, want.dx, tolerance, "dx " + message, file: file, line: line))
        worst = max(worst, assertNear(dw, want.dw, tolerance, "dW " + message, file: file, line: line))
        XCTAssertEqual(db == nil, want.db == nil, "bias gradient presence " + message, file: file, line: line)
        if let db, let wdb = want.db {
            worst = max(worst, assertNear(db, wdb, tolerance, "db " + message, file: file, line: line))
        }
        return worst
    }
}

/// The expected values of an ``EngineResult`` (Double).
struct ExpectedConvolution {
    var y: [Double], dx: [Double], dw: [Double], db: [Double]?

    init(y: [Double], dx: [Double], dw: [Double], db: [Double]?) {
        self.y = y
        self.dx = dx
        self.dw = dw
        self.db = db
    }

    init(_ r: EngineResult) {
        self.init(
            y: r.y.map(Double.init), dx: r.dx.map(Double.init), dw: r.dw.map(Double.init),
            db: r.db.map { $0.map(Double.init) })
    }
}

/// A direct convolution in Double and its gradients, the filters centred first when `centred` (and the weight
/// gradient mapped back through the centring).
struct DoubleConvolution {
    let s: ConvSpec
    let w: [Double]
    let b: [Double]?
    let centred: Bool

    init(_ spec: ConvSpec, weights: [Float], bias: [Float]?, centred: Bool) {
        s = spec
        self.centred = centred
        var w = weights.map(Double.init)
        let fanIn = spec.channels * spec.kernel * spec.kernel
        if centred {
            for o in 0..<spec.filters {
                let mean = w[o * fanIn..<(o + 1) * fanIn].reduce(0, +) / Double(fanIn)
                for i in o * fanIn..<(o + 1) * fanIn { w[i] -= mean }
            }
        }
        self.w = w
        b = bias?.map(Double.init)
    }

    /// Calls `body(xIndex, wIndex, yIndex)` for every product of the convolution.
    private func forEachTap(_ body: (Int, Int, Int) -> Void) {
        for n in 0..<s.batch {
            for o in 0..<s.filters {
                for oh in 0..<s.outHeight {
                    for ow in 0..<s.outWidth {
                        let yi = ((n * s.filters + o) * s.outHeight + oh) * s.outWidth + ow
                        for c in 0..<s.channels {
                            for ki in 0..<s.kernel {
                                let ih = oh * s.stride - s.padding + ki
                                guard ih >= 0, ih < s.height else { continue }
                                for kj in 0..<s.kernel {
                                    let iw = ow * s.stride - s.padding + kj
                                    guard iw >= 0, iw < s.width else { continue }
                                    body(
                                        ((n * s.channels + c) * s.height + ih) * s.width + iw,
                                        ((o * s.channels + c) * s.kernel + ki) * s.kernel + kj, yi)
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// What `conv` (of `spec`) should compute on the channels-first `x` and `dy`.
    static func expected(
        _ spec: ConvSpec, _ conv: Conv2d, centred: Bool, x: Tensor, dy: Tensor
    ) -> ExpectedConvolution {
        DoubleConvolution(spec, weights: conv.weight.value, bias: conv.bias?.value, centred: centred)
            .run(x: x.values, dy: dy.values)
    }

    func run(x xf: [Float], dy dyf: [Float]) -> ExpectedConvolution {
        let x = xf.map(Double.init), dy = dyf.map(Double.init)
        let positions = s.outHeight * s.outWidth
        var y = [Double](repeating: 0, count: s.batch * s.filters * positions)
        if let b { for i in y.indices { y[i] = b[(i / positions) % s.filters] } }
        var dx = [Double](repeating: 0, count: x.count), dw = [Double](repeating: 0, count: w.count)
        forEachTap { xi, wi, yi in
            y[yi] += w[wi] * x[xi]
            dx[xi] += w[wi] * dy[yi]
            dw[wi] += x[xi] * dy[yi]
        }
        if centred {
            let fanIn = s.channels * s.kernel * s.kernel
            for o in 0..<s.filters {
                let mean = dw[o * fanIn..<(o + 1) * fanIn].reduce(0, +) / Double(fanIn)
                for i in o * fanIn..<(o + 1) * fanIn { dw[i] -= mean }
            }
        }
        var db: [Double]?
        if b != nil {
            var sums = [Double](repeating: 0, count: s.filters)
            for i in dy.indices { sums[(i / positions) % s.filters] += dy[i] }
            db = sums
        }
        return ExpectedConvolution(y: y, dx: dx, dw: dw, db: db)
    }
}
