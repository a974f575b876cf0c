import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Degenerate shapes, arguments and extreme values through the training layers' public API (what the normalization
/// layers' `DegenerateInputTests` does for NormKit). Degenerate convolution geometries on both engines are in
/// `ConvolutionEngineTests.testDegenerateGeometriesAgreeOnBothEnginesAndFloat64`.
///
/// - **Sizes that overflow** are refused, not trapped on: a `Conv2d` or `Linear` weight with too many values to count,
///   a convolution argument beyond oneDNN's 32-bit sizes, an output that a huge padding makes too large to count, a
///   padded input beyond oneDNN's sizes (im2col computes it); sizes beyond OpenBLAS's 32-bit integers and the max
///   pool's indices.
/// - **Sizes larger than memory** are refused before anything is allocated: weights, outputs, the im2col patch
///   matrix, whole models (whose weight budgets count exactly what they build).
/// - **Pools** on 1×1 maps are exact identities; a stride larger than the window and a NaN in a window are handled.
/// - **The loss** stays finite for finite logits whose loss fits in a float (±1e30), is NaN for a non-finite logit of
///   the label's row (so the trainer's divergence check sees it), and is 0 with a zero gradient for a single class.
/// - **SGD** refuses a learning rate, momentum or weight decay out of range (NaN included) before changing anything; a
///   NaN gradient reaches its weight, for the trainer's divergence check.
/// - **The schedule** at its boundaries: 0 warm-up steps, 1 total step, warm-up as long as the run, past the end.
/// - **Models** on 1×1 and 2×2 images: both engines agree; ResNet and VGG arguments out of range are errors.
final class DegenerateTrainingInputTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.setThreads(1)
    }

    // MARK: - Sizes

    /// A weight whose value count overflows `Int` trapped in the constructor (`Conv2d(2^31−1, 2^31−1, k: 2^31−1)`,
    /// `Linear(2^40, 2^40)`); a stride of 2^32 trapped in the oneDNN forward (its sizes are `Int32`) and a padding of
    /// 2^62 in every forward (`2·padding`). The constructors now refuse them.
    func testConstructorSizesThatOverflowAreRefusedNotATrap() {
        var rng = SeededGenerator(seed: 1)
        let big = Int(Int32.max)
        XCTAssertThrowsError(try Conv2d(inChannels: big, outChannels: big, kernelSize: big, generator: &rng)) {
            XCTAssertEqual($0 as? NormalizationError, .invalidShape(layer: "Conv2d", shape: [big, big, big, big]))
        }
        // (argument, value, outChannels, kernelSize, stride, padding)
        for (name, value, filters, kernel, stride, padding) in [
            ("stride", 1 << 32, 1, 1, 1 << 32, 0), ("padding", 1 << 62, 1, 1, 1, 1 << 62),
            ("kernelSize", big + 1, 1, big + 1, 1, 0), ("outChannels", 1 << 40, 1 << 40, 1, 1, 0),
        ] {
            XCTAssertThrowsError(
                try Conv2d(
                    inChannels: 1, outChannels: filters, kernelSize: kernel, stride: stride, padding: padding,
                    generator: &rng), name
            ) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .invalidArgument(layer: "Conv2d", name: name, value: "\(value)", expected: "at most \(big)"))
            }
        }
        XCTAssertThrowsError(try Linear(inFeatures: big, outFeatures: big, generator: &rng)) {
            XCTAssertEqual($0 as? NormalizationError, .invalidShape(layer: "Linear", shape: [big, big]))
        }
        // (2^40 features trapped in the same way; OpenBLAS's 32-bit sizes now refuse them first, as below.)
        XCTAssertThrowsError(try Linear(inFeatures: 1 << 40, outFeatures: 1 << 40, generator: &rng)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .invalidArgument(layer: "Linear", name: "inFeatures", value: "\(1 << 40)", expected: "at most \(big)"))
        }
    }

    /// A size that fits in `Int` but not in memory crashed in the allocator (or got the process killed when its pages
    /// were touched): a `Conv2d` or `Linear` weight of 2^39 or 2^40 floats, a `Linear` output of 2^20 × 2^20 floats,
    /// a convolution output of 2^50 floats (a padding of 2^14 around 1×1 images, 2^10 filters), the im2col engine's
    /// patch matrix of 2^18 channels × 4097² positions (whose output is only 64 MB), a ResNet, folded ResNet or VGG of
    /// width 2^16 (a 3×3 convolution of 2^16 → 2^16 channels is 155 GB). Each is now `tooLargeForMemory` naming the
    /// block, its bytes and this machine's memory, before anything is allocated: no tensor of the test is above 4 MB.
    func testWeightsOutputsWorkspacesAndModelsLargerThanMemoryAreRefusedBeforeAllocating() throws {
        let limit = MemoryLimit.bytes
        func assertTooLarge(
            _ call: @autoclosure () throws -> Any, layer: String, what: String, bytes: Int, line: UInt = #line
        ) {
            XCTAssertThrowsError(try call(), line: line) {
                XCTAssertEqual(
                    $0 as? NormalizationError, .tooLargeForMemory(layer: layer, what: what, bytes: bytes, limit: limit),
                    line: line)
            }
        }
        var rng = SeededGenerator(seed: 11)
        assertTooLarge(
            try Conv2d(inChannels: 1 << 15, outChannels: 1 << 20, kernelSize: 4, generator: &rng), layer: "Conv2d",
            what: "the weight \([1 << 20, 1 << 15, 4, 4])", bytes: 1 << 41)
        assertTooLarge(
            try Linear(inFeatures: 1 << 20, outFeatures: 1 << 20, generator: &rng), layer: "Linear",
            what: "the weight \([1 << 20, 1 << 20])", bytes: 1 << 42)

        var y = Tensor(zeros: [1, 1])
        let linear = try Linear(inFeatures: 1, outFeatures: 1 << 20, generator: &rng)
        assertTooLarge(
            try linear.forward(Tensor(zeros: [1 << 20, 1]), into: &y, training: true), layer: linear.name,
            what: "the output \([1 << 20, 1 << 20])", bytes: 1 << 42)

        let wide = try Conv2d(inChannels: 1, outChannels: 1 << 10, kernelSize: 1, padding: 1 << 14, generator: &rng)
        let images = Tensor(zeros: [1 << 10, 1, 1, 1])
        for engine in ConvolutionEngine.allCases where engine.isAvailable {
            wide.engine = engine
            for call in [
                { _ = try wide.outputShape(for: images) }, { try wide.forward(images, into: &y, training: true) },
            ] as [() throws -> Void] {
                assertTooLarge(
                    try call(), layer: wide.name, what: "the output \([1 << 10, 1 << 10, 32769, 32769])",
                    bytes: 4 << 20 * 32769 * 32769)
            }
        }
        let deep = try Conv2d(inChannels: 1 << 18, outChannels: 1, kernelSize: 1, padding: 1 << 11, generator: &rng)
        deep.engine = .im2col
        assertTooLarge(
            try deep.forward(Tensor(zeros: [1, 1 << 18, 1, 1]), into: &y, training: true), layer: deep.name,
            what: "the im2col patch matrix (\(1 << 18) × \(4097 * 4097) floats)", bytes: 4 << 18 * 4097 * 4097)
        XCTAssertEqual(y.shape, [1, 1], "nothing was allocated for the refused outputs")

        let settings = NormalizationSettings(kind: .gn)
        let width = 1 << 16
        // The weights with their gradients: the stem, 9w² + 9w² (stage 1), 18w² + 36w² + 2w² (stage 2, with its 1×1
        // shortcut), 72w² + 144w² + 8w² (stage 3), the classifier's 10·4w.
        let resNetBytes = 2 * 4 * (9 * width + 298 * width * width + 40 * width)
        assertTooLarge(
            try ResNet(depth: 8, normalization: settings, width: width, generator: &rng),
            layer: "ResNet(depth: 8, inChannels: 1, classes: 10, width: \(width))",
            what: "its \(resNetBytes / 8) convolution and linear weights with their gradients", bytes: resNetBytes)
        assertTooLarge(
            try FoldedResNet(depth: 8, width: width, generator: &rng),
            layer: "FoldedResNet(depth: 8, inChannels: 1, classes: 10, width: \(width))",
            what: "its \(resNetBytes / 8) convolution and linear weights with their gradients", bytes: resNetBytes)
        let vggBytes = 2 * 4 * (9 * width + 9 * width * width + 10 * width)
        assertTooLarge(
            try VGG(normalization: settings, widths: [width], generator: &rng),
            layer: "VGG(inChannels: 1, classes: 10, widths: [\(width)])",
            what: "its \(vggBytes / 8) convolution and linear weights with their gradients", bytes: vggBytes)
        // 2^40 blocks per stage of width 16: built one by one until memory ran out, hours later.
        let depth = 6 * (1 << 40) + 2
        XCTAssertThrowsError(try ResNet(depth: depth, normalization: settings, generator: &rng)) {
            guard case .tooLargeForMemory(let layer, _, _, limit)? = $0 as? NormalizationError else {
                return XCTFail("\($0)")
            }
            XCTAssertEqual(layer, "ResNet(depth: \(depth), inChannels: 1, classes: 10, width: 16)")
        }
    }

    /// The sizes OpenBLAS and `MaxPool2d` take as 32-bit integers. A filter of `in·k·k` = 2^32 values was a 16 GB weight
    /// whose forward trapped converting `k` to `Int32` (if the weight could be allocated); a `Linear` of 2^31 features
    /// the same; a padding of 2^15 around a 1×1 image on the im2col engine, 65537² output positions, allocated a 17 GB
    /// output and trapped converting the GEMM's `n`. They are refused before anything is allocated. A `Linear` batch or
    /// a pooled plane beyond 2^31 − 1 (which trapped in `Int32(m)` and `Int32(best)`) needs an 8 GB input, so their
    /// checks, the ones the forwards call first, are tested directly.
    func testSizesBeyond32BitsAreRefusedBeforeOpenBLASAndThePoolsIndices() throws {
        var rng = SeededGenerator(seed: 12)
        let big = Int(Int32.max)
        XCTAssertThrowsError(try Conv2d(inChannels: 1 << 16, outChannels: 1, kernelSize: 1 << 8, generator: &rng)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .invalidArgument(
                    layer: "Conv2d", name: "inChannels·kernelSize²", value: "65536·256² = \(1 << 32)",
                    expected: "at most \(big) (one filter's values, a 32-bit size of OpenBLAS)"))
        }
        for (inFeatures, outFeatures, name) in [(big + 1, 1, "inFeatures"), (1, big + 1, "outFeatures")] {
            XCTAssertThrowsError(try Linear(inFeatures: inFeatures, outFeatures: outFeatures, generator: &rng)) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .invalidArgument(layer: "Linear", name: name, value: "\(big + 1)", expected: "at most \(big)"))
            }
        }

        let padded = try Conv2d(inChannels: 1, outChannels: 1, kernelSize: 1, padding: 1 << 15, generator: &rng)
        padded.engine = .im2col
        var y = Tensor(zeros: [1, 1])
        let pixel = Tensor(zeros: [1, 1, 1, 1])
        for call in [
            { _ = try padded.outputShape(for: pixel) }, { try padded.forward(pixel, into: &y, training: true) },
        ] as [() throws -> Void] {
            XCTAssertThrowsError(try call()) {
                XCTAssertEqual(
                    $0 as? LayerError,
                    .sizeBeyond32Bits(
                        layer: padded.name, size: "output positions per image (H'·W')", value: 65537 * 65537,
                        limit: "OpenBLAS's 32-bit sizes"))
                XCTAssertEqual(
                    "\($0)",
                    "\(padded.name): output positions per image (H'·W') \(65537 * 65537) exceeds OpenBLAS's 32-bit sizes "
                        + "(at most \(big))")
            }
        }
        XCTAssertEqual(y.shape, [1, 1], "nothing was allocated for the refused output")

        XCTAssertNoThrow(try Linear.checkOutput(batch: 1 << 20, features: 1, layer: "Linear(1→1)"))
        XCTAssertThrowsError(try Linear.checkOutput(batch: big + 1, features: 1, layer: "Linear(1→1)")) {
            XCTAssertEqual(
                $0 as? LayerError,
                .sizeBeyond32Bits(
                    layer: "Linear(1→1)", size: "batch", value: big + 1, limit: "OpenBLAS's 32-bit sizes"))
        }
        XCTAssertNoThrow(try MaxPool2d.checkPlane(positions: big, layer: "MaxPool2d"))
        XCTAssertThrowsError(try MaxPool2d.checkPlane(positions: big + 1, layer: "MaxPool2d")) {
            XCTAssertEqual(
                $0 as? LayerError,
                .sizeBeyond32Bits(
                    layer: "MaxPool2d", size: "positions per plane (H·W)", value: big + 1,
                    limit: "the 32-bit indices of the windows' maxima"))
        }
    }

    /// The models' weight budgets (what they check against memory before building a layer) count exactly the
    /// convolution and linear weights the constructors build, for ResNets with and without shortcuts, folded ones and
    /// VGG of odd sizes.
    func testTheModelsWeightBudgetsCountTheWeightsTheyBuild() throws {
        var rng = SeededGenerator(seed: 13)
        func weightBytes(_ model: any Module) -> Int {
            4 * model.parameters.filter { $0.role == .weight }.reduce(0) { $0 + $1.value.count }
        }
        for (depth, inChannels, classes, width) in [(8, 1, 10, 16), (14, 3, 5, 3), (20, 2, 1, 1)] {
            let budget = WeightBudget.resNet(depth: depth, inChannels: inChannels, classes: classes, width: width)
            let model = try ResNet(
                depth: depth, normalization: NormalizationSettings(kind: .bn), inChannels: inChannels,
                classes: classes, width: width, generator: &rng)
            XCTAssertEqual(budget.bytes, weightBytes(model), "ResNet \(depth) \(width)")
            let folded = try FoldedResNet(
                depth: depth, inChannels: inChannels, classes: classes, width: width, generator: &rng)
            XCTAssertEqual(budget.bytes, weightBytes(folded), "FoldedResNet \(depth) \(width)")
        }
        for (inChannels, classes, widths) in [(1, 10, [16, 32, 64]), (3, 2, [5]), (2, 7, [4, 1, 9, 2])] {
            let model = try VGG(
                normalization: NormalizationSettings(kind: .none), inChannels: inChannels, classes: classes,
                widths: widths, generator: &rng)
            XCTAssertEqual(
                WeightBudget.vgg(inChannels: inChannels, classes: classes, widths: widths).bytes, weightBytes(model),
                "VGG \(widths)")
        }
        XCTAssertNil(WeightBudget.resNet(depth: 8, inChannels: 1, classes: 1, width: Int.max / 3).bytes, "overflow")
    }

    /// A padding of 2^30 around a 3×3 input asks for a (2^31 + 3)² output, more floats than bytes can count: it trapped
    /// in `Tensor.prepare`; it is `invalidShape` naming the output, from the forward and `outputShape(for:)`, on both
    /// engines. A padding of `Int32.max` with an equal stride gives a 3×3 output (only its centre sees the input): im2col
    /// computes it, oneDNN (whose padded rows are `Int32`) refuses it with an engine failure.
    func testPaddingFarLargerThanTheInput() throws {
        var rng = SeededGenerator(seed: 2)
        let huge = try Conv2d(inChannels: 1, outChannels: 1, kernelSize: 1, padding: 1 << 30, generator: &rng)
        let side = (1 << 31) + 3
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        for engine in ConvolutionEngine.allCases where engine.isAvailable {
            huge.engine = engine
            let calls: [() throws -> Void] = [
                { _ = try huge.outputShape(for: Tensor(zeros: [1, 1, 3, 3])) },
                { try huge.forward(Tensor(zeros: [1, 1, 3, 3]), into: &y, training: true) },
            ]
            for call in calls {
                XCTAssertThrowsError(try call(), "\(engine)") {
                    XCTAssertEqual(
                        $0 as? NormalizationError, .invalidShape(layer: huge.name, shape: [1, 1, side, side]))
                }
            }
        }

        let far = Int(Int32.max)
        let conv = try Conv2d(
            inChannels: 1, outChannels: 2, kernelSize: 1, stride: far, padding: far, bias: true, generator: &rng)
        conv.bias!.value = [0.5, -1]
        let x = try Tensor(shape: [1, 1, 1, 1], values: [3])
        conv.engine = .im2col
        try conv.forward(x, into: &y, training: true)
        XCTAssertEqual(y.shape, [1, 2, 3, 3])
        let w = conv.weight.value
        XCTAssertEqual(
            y.values,
            [0.5, 0.5, 0.5, 0.5, 0.5 + 3 * w[0], 0.5, 0.5, 0.5, 0.5, -1, -1, -1, -1, -1 + 3 * w[1], -1, -1, -1, -1])
        try conv.backward(try Tensor(shape: [1, 2, 3, 3], values: (0..<18).map(Float.init)), into: &dx)
        XCTAssertEqual(dx.values[0], 4 * w[0] + 13 * w[1], accuracy: 1e-6)
        XCTAssertEqual(conv.weight.gradient, [12, 39])
        XCTAssertEqual(conv.bias!.gradient, [36, 117])
        if ConvolutionEngine.oneDNN.isAvailable {
            conv.engine = .oneDNN
            XCTAssertThrowsError(try conv.forward(x, into: &y, training: true)) {
                guard case .engineFailure(let layer, "oneDNN", let message)? = $0 as? LayerError else {
                    return XCTFail("\($0)")
                }
                XCTAssertEqual(layer, conv.name)
                XCTAssertTrue(message.contains("32-bit") && message.contains("im2col"), message)
            }
        }
    }

    // MARK: - Pools

    /// 1×1 maps: the global average is the value itself and its gradient `dy`, exactly; a 1×1 max pool is the
    /// identity. A stride larger than the window skips positions (they get no gradient); a NaN wins its window (as in
    /// PyTorch) and takes its gradient.
    func testPoolsOnOneByOneMapsSkippingStridesAndNaN() throws {
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        let x = try Tensor(shape: [2, 3, 1, 1], values: [1, -2, 3e38, 0, 5, .nan])
        let dy = try Tensor(shape: [2, 3], values: [6, 5, 4, 3, 2, 1])
        let gap = GlobalAveragePool()
        try gap.forward(x, into: &y, training: true)
        XCTAssertEqual(y.shape, [2, 3])
        XCTAssertEqual(y.values.map(\.bitPattern), x.values.map(\.bitPattern))
        try gap.backward(dy, into: &dx)
        XCTAssertEqual(dx.values, dy.values)
        let identity = try MaxPool2d(kernelSize: 1)
        try identity.forward(x, into: &y, training: false)
        XCTAssertEqual(y.values.map(\.bitPattern), x.values.map(\.bitPattern))

        let skipping = try MaxPool2d(kernelSize: 1, stride: 3)
        let plane = try Tensor(shape: [1, 1, 4, 4], values: (0..<16).map(Float.init))
        try skipping.forward(plane, into: &y, training: true)
        XCTAssertEqual(y.values, [0, 3, 12, 15])
        try skipping.backward(try Tensor(shape: [1, 1, 2, 2], values: [1, 2, 3, 4]), into: &dx)
        XCTAssertEqual(dx.values, [1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 4])

        let pool = try MaxPool2d(kernelSize: 2)
        try pool.forward(try Tensor(shape: [1, 1, 2, 2], values: [1, .nan, 7, 2]), into: &y, training: true)
        XCTAssertTrue(y.values[0].isNaN)
        try pool.backward(try Tensor(shape: [1, 1, 1, 1], values: [5]), into: &dx)
        XCTAssertEqual(dx.values, [0, 5, 0, 0])
    }

    // MARK: - Loss

    /// Log-sum-exp around the row maximum keeps the loss finite (and exact) for logits of ±1e30; a +∞ logit, a NaN, or
    /// a row of −∞ gives a NaN loss (non-finite: the trainer stops, docs/RELIABILITY.md §3), a −∞ logit of another
    /// class costs nothing. One class: loss 0, gradient 0. No rows, no classes: errors.
    func testLossOnExtremeLogitsOneClassAndNoRows() throws {
        let loss = SoftmaxCrossEntropy()
        var gradient = Tensor(zeros: [1, 1])
        for (logits, expected, expectedGradient) in [
            ([1e30, -1e30], 2e30, [1, -1]), ([-1e30, 1e30], 0, [0, 0]), ([-Float.infinity, 0], 0, [0, 0]),
        ] as [([Float], Float, [Float])] {
            XCTAssertEqual(try loss.forward(logits: Tensor(shape: [1, 2], values: logits), labels: [1]), expected)
            try loss.backward(into: &gradient)
            XCTAssertEqual(gradient.values, expectedGradient, "\(logits)")
        }
        for logits: [Float] in [[.infinity, 0], [.nan, 0], [0, .nan], [-.infinity, -.infinity]] {
            let value = try loss.forward(logits: Tensor(shape: [1, 2], values: logits), labels: [1])
            XCTAssertTrue(value.isNaN, "\(logits): \(value)")
        }
        XCTAssertEqual(try loss.forward(logits: Tensor(shape: [2, 1], values: [5, -1e30]), labels: [0, 0]), 0)
        try loss.backward(into: &gradient)
        XCTAssertEqual(gradient.values, [0, 0])
        XCTAssertThrowsError(try loss.forward(logits: Tensor(zeros: [0, 3]), labels: [])) {
            XCTAssertEqual($0 as? NormalizationError, .emptyBatch(layer: "SoftmaxCrossEntropy"))
        }
        XCTAssertThrowsError(try loss.forward(logits: Tensor(zeros: [2, 0]), labels: [0, 0])) {
            XCTAssertEqual($0 as? LayerError, .labelOutOfRange(index: 0, label: 0, classes: 0))
        }
    }

    // MARK: - Learning-rate schedule

    /// Spec §8's schedule at its boundaries, against the formula written here (linear warm-up from `lr/25` over `W`
    /// steps, then `lr·cos²(π/2·(s − W)/(T − W))`, 0 from step `T` on): no warm-up, a run of one step, a warm-up as long
    /// as the run (with `W = T`, step `T` was `lr` instead of 0: the cosine had no span and restarted at its peak), and
    /// steps past the end. A warm-up longer than the run is clamped to it as documented (`W ≤ T`); arguments out of
    /// range are refused (``testScheduleRefusesArgumentsOutOfRange()``).
    func testScheduleBoundaries() throws {
        let peak = 0.4
        for (warmup, total) in [(0, 1), (1, 1), (0, 5), (5, 5), (4, 5), (3, 10), (10, 10)] {
            let schedule = try LearningRateSchedule(peak: peak, warmupSteps: warmup, totalSteps: total, decay: .cosine)
            func expected(_ step: Int) -> Double {
                if step < warmup { return peak / 25 + (peak - peak / 25) * Double(step) / Double(warmup) }
                if step >= total { return 0 }
                let angle = Double.pi / 2 * Double(step - warmup) / Double(total - warmup)
                return peak * cos(angle) * cos(angle)
            }
            for step in [0, warmup, total - 1, total, total + 1, total + 100] {
                XCTAssertEqual(
                    schedule.rate(at: step), expected(step), accuracy: 1e-15, "W \(warmup) T \(total) step \(step)")
            }
        }
        XCTAssertEqual(try LearningRateSchedule(peak: 1, warmupSteps: 7, totalSteps: 5, decay: .cosine).warmupSteps, 5)
        // Step decay: a milestone at step 0 divides from the start; past the last step the rate stays.
        let steps = try LearningRateSchedule(peak: 1, warmupSteps: 0, totalSteps: 4, decay: .step(milestones: [0, 2]))
        XCTAssertEqual((0...6).map { steps.rate(at: $0) }, [1, 1, 2, 2, 2, 2, 2].map { pow(0.1, Double($0)) })
    }

    /// A negative step is treated as step 0, for every kind of schedule: it fell into the warm-up branch (a negative
    /// step is below any warm-up length, 0 included), whose line from `lr/25` goes on below 0 (step −1 of a run
    /// without warm-up gave `−0.92·lr`). `Int.min` is a step like any other.
    func testANegativeStepGetsStepZerosRate() throws {
        let schedules: [(String, LearningRateSchedule)] = [
            ("cosine with warm-up", try .init(peak: 0.4, warmupSteps: 10, totalSteps: 100, decay: .cosine)),
            ("cosine without warm-up", try .init(peak: 0.4, warmupSteps: 0, totalSteps: 100, decay: .cosine)),
            ("warm-up filling the run", try .init(peak: 0.4, warmupSteps: 5, totalSteps: 5, decay: .cosine)),
            (
                "step with warm-up",
                try .init(peak: 0.4, warmupSteps: 10, totalSteps: 100, decay: .step(milestones: [50]))
            ),
            (
                "step without warm-up",
                try .init(peak: 0.4, warmupSteps: 0, totalSteps: 100, decay: .step(milestones: [50]))
            ),
            (
                "step, milestone at 0",
                try .init(peak: 0.4, warmupSteps: 0, totalSteps: 100, decay: .step(milestones: [0]))
            ),
        ]
        for (name, schedule) in schedules {
            let first = schedule.rate(at: 0)
            XCTAssertGreaterThan(first, 0, name)
            for step in [-1, -7, -100, -1_000_000, Int.min + 1, Int.min] {
                let rate = schedule.rate(at: step)
                XCTAssertFalse(rate.isNaN, "\(name) step \(step)")
                XCTAssertGreaterThanOrEqual(rate, 0, "\(name) step \(step)")
                XCTAssertEqual(rate, first, "\(name) step \(step): step 0's rate")
            }
        }
    }

    /// A schedule made directly (not by the trainer, whose configuration is validated first) refuses each argument
    /// out of range with the argument's name, value and range: a peak that is 0, negative, infinite or NaN was
    /// taken (a NaN peak made every rate NaN, a negative one every rate negative), a negative warm-up and a run of
    /// no steps were silently clamped, a negative milestone acted as milestone 0. From a configuration, steps per
    /// epoch below 1, a warm-up fraction outside `[0, 1]` (NaN trapped converting the warm-up steps to `Int`) and
    /// epochs or milestones whose steps overflow `Int` (trapped multiplying) are refused the same way.
    func testScheduleRefusesArgumentsOutOfRange() throws {
        func refusal(_ body: @autoclosure () throws -> LearningRateSchedule) -> (name: String, value: String)? {
            do {
                _ = try body()
                return nil
            } catch {
                guard case .invalidArgument(let layer, let name, let value, _)? = error as? NormalizationError,
                    layer == "LearningRateSchedule"
                else { return ("unexpected error", "\(error)") }
                return (name, value)
            }
        }
        func schedule(
            peak: Double = 0.1, warmupSteps: Int = 2, totalSteps: Int = 10, decay: LearningRateSchedule.Decay = .cosine
        ) throws -> LearningRateSchedule {
            try LearningRateSchedule(peak: peak, warmupSteps: warmupSteps, totalSteps: totalSteps, decay: decay)
        }
        for peak in [0, -0.1, .infinity, -.infinity, .nan, -.nan] {
            let got = refusal(try schedule(peak: peak))
            XCTAssertEqual(got?.name, "peak", "peak \(peak)")
            XCTAssertEqual(got?.value, "\(peak)", "peak \(peak)")
        }
        for warmup in [-1, -3, Int.min] {
            XCTAssertEqual(refusal(try schedule(warmupSteps: warmup))?.name, "warmupSteps", "\(warmup)")
        }
        for total in [0, -1, Int.min] {
            XCTAssertEqual(refusal(try schedule(totalSteps: total))?.name, "totalSteps", "\(total)")
        }
        let negativeMilestone = refusal(try schedule(decay: .step(milestones: [4, -1])))
        XCTAssertEqual(negativeMilestone?.name, "milestones")
        XCTAssertEqual(negativeMilestone?.value, "-1")
        // The message names the argument, its value and what is allowed.
        XCTAssertThrowsError(try schedule(peak: .nan)) { error in
            XCTAssertEqual(
                "\(error)",
                "LearningRateSchedule: invalid peak = nan: expected a positive finite number (the learning rate after "
                    + "warm-up)")
        }
        // In range: the smallest values are taken, a milestone past the run too.
        XCTAssertEqual(try schedule(peak: .leastNonzeroMagnitude, warmupSteps: 0, totalSteps: 1).totalSteps, 1)
        XCTAssertEqual(try schedule(decay: .step(milestones: [0, 10, 1_000])).rate(at: 5), 0.01, accuracy: 1e-15)

        var configuration = TrainingConfiguration()
        XCTAssertEqual(refusal(try LearningRateSchedule(configuration, stepsPerEpoch: 0))?.name, "stepsPerEpoch")
        XCTAssertEqual(refusal(try LearningRateSchedule(configuration, stepsPerEpoch: -5))?.name, "stepsPerEpoch")
        for fraction in [-0.1, 1.5, .nan, .infinity] {
            configuration.warmupFraction = fraction
            XCTAssertEqual(
                refusal(try LearningRateSchedule(configuration, stepsPerEpoch: 10))?.name, "warmupFraction",
                "\(fraction)")
        }
        configuration.warmupFraction = 1
        XCTAssertEqual(try LearningRateSchedule(configuration, stepsPerEpoch: 10).warmupSteps, 20, "the whole run")
        XCTAssertEqual(refusal(try LearningRateSchedule(configuration, stepsPerEpoch: Int.max))?.name, "epochs")
        configuration.epochs = 1
        configuration.schedule = "step"
        configuration.milestones = [1, Int.max / 2]
        XCTAssertEqual(refusal(try LearningRateSchedule(configuration, stepsPerEpoch: 4))?.name, "milestones")
        configuration.milestones = [1]
        configuration.learningRate = -1
        XCTAssertEqual(refusal(try LearningRateSchedule(configuration, stepsPerEpoch: 4))?.name, "peak")
        // An unknown decay is refused, not run as cosine.
        configuration.learningRate = nil
        configuration.schedule = "Step"
        let unknown = refusal(try LearningRateSchedule(configuration, stepsPerEpoch: 4))
        XCTAssertEqual(unknown?.name, "schedule")
        XCTAssertEqual(unknown?.value, "Step")
        configuration.schedule = "cosine"
        XCTAssertEqual(try LearningRateSchedule(configuration, stepsPerEpoch: 4).decay, .cosine)
    }

    // MARK: - SGD

    /// A learning rate or weight decay that is negative, infinite or NaN, and a momentum outside `[0, 1)` or NaN, were
    /// applied (a NaN learning rate made every weight NaN, a negative one climbed the loss); `step` now refuses them
    /// before changing any weight or velocity. A learning rate of 0 is valid: the weights stay, the velocity moves.
    /// A NaN gradient is not refused: it reaches its own weight and velocity only, for the trainer's divergence check.
    func testSGDRefusesSettingsOutOfRangeAndLeavesEverythingUnchanged() throws {
        let parameter = Parameter(name: "weight", shape: [2], role: .weight, value: [1, -2])
        let sgd = SGD(parameters: [parameter], momentum: 0.9, weightDecay: 0.1)
        parameter.gradient = [0.5, 0.25]
        try sgd.step(learningRate: 0.1)
        let weights = parameter.value, velocities = sgd.velocities
        for rate: Float in [.nan, -0.1, .infinity, -.infinity] {
            XCTAssertThrowsError(try sgd.step(learningRate: rate)) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .invalidArgument(
                        layer: "SGD", name: "learningRate", value: "\(rate)", expected: "a finite number ≥ 0"))
            }
        }
        for momentum: Float in [.nan, -0.1, 1, 1.5] {
            sgd.momentum = momentum
            XCTAssertThrowsError(try sgd.step(learningRate: 0.1)) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .invalidArgument(layer: "SGD", name: "momentum", value: "\(momentum)", expected: "in [0, 1)"))
            }
        }
        sgd.momentum = 0.9
        for decay: Float in [.nan, -1e-4, .infinity] {
            sgd.weightDecay = decay
            XCTAssertThrowsError(try sgd.step(learningRate: 0.1)) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .invalidArgument(
                        layer: "SGD", name: "weightDecay", value: "\(decay)", expected: "a finite number ≥ 0"))
            }
        }
        XCTAssertEqual(parameter.value, weights, "a refused step changes no weight")
        XCTAssertEqual(sgd.velocities, velocities, "a refused step changes no velocity")

        sgd.weightDecay = 0.1
        try sgd.step(learningRate: 0)
        XCTAssertEqual(parameter.value, weights, "learning rate 0")
        XCTAssertNotEqual(sgd.velocities, velocities, "learning rate 0 still accumulates the velocity")

        parameter.gradient = [.nan, 0.25]
        try sgd.step(learningRate: 0.1)
        XCTAssertTrue(parameter.value[0].isNaN && sgd.velocities[0][0].isNaN)
        XCTAssertTrue(parameter.value[1].isFinite && sgd.velocities[0][1].isFinite)
    }

    // MARK: - Models

    /// ResNet-8 (GN, one class) on 1×1, 2×2 and 3×5 images (its stem does not downsample; the stride-2 stages take a
    /// 1×1 map to 1×1): finite logits, and the same logits and parameter gradients on both engines. VGG's pools refuse
    /// images smaller than 4×4 (`inputTooSmall`). Arguments out of range are errors: depths not `6n+2` (9, 2, −4),
    /// width 0, classes 0.
    func testModelsOnTinyImagesAndArgumentsOutOfRange() throws {
        var settings = NormalizationSettings(kind: .gn)
        settings.groups = 4
        func build(_ engine: ConvolutionEngine) throws -> ResNet {
            var generator = SeededGenerator(seed: 5)
            let model = try ResNet(depth: 8, normalization: settings, classes: 1, width: 8, generator: &generator)
            model.engine = engine
            return model
        }
        var rng = SeededGenerator(seed: 6)
        let engines = ConvolutionEngine.allCases.filter(\.isAvailable)
        let models = try engines.map(build)
        for (height, width) in [(1, 1), (2, 2), (3, 5)] {
            let x = Tensor.randomNormal(shape: [3, 1, height, width], using: &rng)
            var outcomes: [(logits: [Float], gradients: [Float])] = []
            for model in models {
                let logits = try model.forward(x, training: true)
                XCTAssertEqual(logits.shape, [3, 1])
                XCTAssertTrue(logits.values.allSatisfy(\.isFinite), "\(height)×\(width) \(model.engine)")
                let loss = SoftmaxCrossEntropy()
                XCTAssertEqual(try loss.forward(logits: logits, labels: [0, 0, 0]), 0, "one class")
                var dlogits = Tensor(zeros: [0, 0])
                try loss.backward(into: &dlogits)
                XCTAssertEqual(dlogits.values, [0, 0, 0], "one class: no gradient")
                try model.backward(logits)  // a non-zero logits gradient, so the parameter gradients are compared
                outcomes.append((logits.values, model.parameters.flatMap(\.gradient)))
            }
            for other in outcomes.dropFirst() {
                assertNear(other.logits, outcomes[0].logits, 1e-5, "\(height)×\(width) logits")
                assertNear(other.gradients, outcomes[0].gradients, 1e-4, "\(height)×\(width) gradients")
            }
        }
        var generator = SeededGenerator(seed: 7)
        let vgg = try VGG(normalization: settings, generator: &generator)
        XCTAssertThrowsError(try vgg.forward(Tensor(zeros: [1, 1, 3, 3]), training: true)) {
            guard case .inputTooSmall? = $0 as? LayerError else { return XCTFail("\($0)") }
        }
        for depth in [9, 2, -4] {
            XCTAssertThrowsError(try ResNet(depth: depth, normalization: settings, generator: &generator)) {
                XCTAssertEqual($0 as? ModelError, .invalidDepth(depth))
            }
        }
        XCTAssertThrowsError(try ResNet(depth: 8, normalization: settings, width: 0, generator: &generator)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .invalidArgument(layer: "Conv2d", name: "outChannels", value: "0", expected: "at least 1"))
        }
        XCTAssertThrowsError(try ResNet(depth: 8, normalization: settings, classes: 0, generator: &generator)) {
            XCTAssertEqual(
                $0 as? NormalizationError,
                .invalidArgument(layer: "Linear", name: "outFeatures", value: "0", expected: "at least 1"))
        }
    }
}
