import Dispatch

/// A 2-D convolution over `(N, C, H, W)` tensors, PyTorch's `nn.Conv2d` (square kernel, equal stride and padding in
/// both directions, zero padding, no dilation or groups), optionally weight-centred. Computed by oneDNN (either
/// layout; the answer comes in the input's) or by im2col + OpenBLAS (channels-first only): see ``engine`` and
/// ``ConvolutionEngine``; the description of the lowering below is the im2col engine's.
///
/// - Weight: ``weight`` of shape `(out, in, k, k)` (PyTorch's layout and `state_dict` name `weight`),
///   He (Kaiming) normal initialisation with mode `fan_out`: `std = √(2 / (out·k·k))`, as the reference models
///   do. Optional ``bias`` `(out,)`, initialised to zero.
/// - `centred: true` is MABN's CenConv (spec section 5): every forward centres each output filter,
///   `W_c[o] = W[o] − mean(W[o])`, and convolves with `W_c`; the backward maps `∂L/∂W_c` back through
///   ``/NormKit/WeightCentering/centerGradient(_:_:filters:fanIn:)``. The stored weight stays uncentred, as in the
///   reference `CenConv2d`.
/// - Lowering: for a group of images, im2col writes the `(C·k·k) × (positions)` patch matrix into per-thread
///   scratch and one `sgemm` computes the outputs. The backward recomputes the patches while they are in
///   cache instead of keeping a full-batch patch matrix per layer, so a training forward saves only the input
///   (a reference, no copy) and the weights it used.
/// - Threads: see ``BLAS``. With OpenBLAS single-threaded (the default the first `Conv2d` sets up unless
///   ``BLAS/setThreads(_:)`` was called) the batch is split over ``/NormKit/Parallelism/threadCount`` threads, each
///   with its own scratch and weight-gradient partial sums (added in a fixed order, so results do not depend on
///   scheduling); otherwise everything runs on the calling thread and OpenBLAS threads each GEMM.
/// - Memory: the per-thread scratch (the patches of up to `max(1, 512 / positions)` images, which share one
///   GEMM, and partial gradients) only grows, so steady-state steps allocate no buffers.
public final class Conv2d: Layer {
    /// `C`, the input channels.
    public let inChannels: Int
    /// The output channels (filters).
    public let outChannels: Int
    /// `k`, the side of the square kernel.
    public let kernelSize: Int
    /// The step between windows, in both directions.
    public let stride: Int
    /// Zeros added on every side of the input.
    public let padding: Int
    /// Whether each filter is centred before use (MABN's CenConv).
    public let centred: Bool
    /// The filters, shape `(out, in, k, k)`, role ``/NormKit/ParameterRole/weight``.
    public let weight: Parameter
    /// The per-filter bias `(out,)`, nil when built with `bias: false`.
    public let bias: Parameter?
    /// When `false` the backward computes only the parameter gradients and leaves `dx` untouched (for the
    /// first convolution of a network, whose input gradient nobody needs).
    public var computesInputGradient = true
    /// How the convolution is computed (default ``ConvolutionEngine/preferred``: oneDNN when this build has it).
    /// oneDNN takes channels-first and channels-last inputs and answers in the input's layout; im2col takes
    /// channels-first only. Change it between a training forward and its backward and the backward still uses
    /// the forward's engine.
    public var engine: ConvolutionEngine = .preferred

    /// `"Conv2d(16→32, 3×3, stride 2, padding 1)"` (with `", centred"` / `", bias"` when set).
    public var name: String {
        "Conv2d(\(inChannels)→\(outChannels), \(kernelSize)×\(kernelSize), stride \(stride), padding \(padding)"
            + (centred ? ", centred" : "") + (bias != nil ? ", bias" : "") + ")"
    }

    /// PyTorch's `repr`: `"Conv2d(16, 32, kernel_size=3, stride=2, padding=1, bias=False)"` (`CenConv2d` when
    /// ``centred``, as the reference class; padding only when non-zero).
    public var summary: String {
        (centred ? "CenConv2d" : "Conv2d")
            + "(\(inChannels), \(outChannels), kernel_size=\(kernelSize), stride=\(stride)"
            + (padding != 0 ? ", padding=\(padding)" : "") + (bias == nil ? ", bias=False" : "") + ")"
    }

    /// ``weight`` and, when present, ``bias`` (state-dict names `weight`, `bias`; stored uncentred).
    public var ownParameters: [Parameter] { bias.map { [weight, $0] } ?? [weight] }

    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    /// `C·k·k`, the length of one filter.
    private var fanIn: Int { inChannels * kernelSize * kernelSize }

    private var savedInput: Tensor?
    private var savedGeometry: ConvolutionGeometry?
    private var savedEngine: ConvolutionEngine = .im2col
    private var savedThreads = 1
    let oneDNN = OneDNNConvolutions()
    // The last forward's output shape, and the last training forward's (see Shape+InPlace.swift).
    private var outputShape: [Int] = []
    private var savedOutputShape: [Int] = []
    /// The weights the last forward used (centred when ``centred``), `out × fanIn`.
    let usedWeight: LayerScratch
    private(set) var workspaces: [ConvolutionWorkspace] = []

    /// A convolution with He-normal (`fan_out`) weights drawn from `generator`.
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` for a channel count, kernel size or
    ///   stride below 1, a negative padding, or any of them above `Int32.max` (oneDNN's sizes are 32-bit);
    ///   ``/NormKit/NormalizationError/invalidShape(layer:shape:)`` when the weight `(out, in, k, k)` has too many values
    ///   to count (``/NormKit/Tensor/isValid(shape:)``); `invalidArgument` when one filter, `in·k·k` values, is longer
    ///   than `Int32.max` (a size of the im2col engine's OpenBLAS calls);
    ///   ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when the weight needs more bytes than
    ///   this machine's physical memory. All before anything is allocated.
    public init(
        inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
        bias: Bool = false, centred: Bool = false, generator: inout SeededGenerator
    ) throws {
        for (argument, value, least) in [
            ("inChannels", inChannels, 1), ("outChannels", outChannels, 1),
            ("kernelSize", kernelSize, 1), ("stride", stride, 1), ("padding", padding, 0),
        ] where !(least...Int(Int32.max)).contains(value) {
            throw NormalizationError.invalidArgument(
                layer: "Conv2d", name: argument, value: "\(value)",
                expected: value < least ? "at least \(least)" : "at most \(Int32.max)")
        }
        let shape = [outChannels, inChannels, kernelSize, kernelSize]
        guard Tensor.isValid(shape: shape) else { throw NormalizationError.invalidShape(layer: "Conv2d", shape: shape) }
        // One filter is the K (and a leading dimension) of the im2col engine's GEMMs. (Its count fits `Int`: the
        // weight's does.)
        let filterLength = inChannels * kernelSize * kernelSize
        guard filterLength <= Int32.max else {
            throw NormalizationError.invalidArgument(
                layer: "Conv2d", name: "inChannels·kernelSize²",
                value: "\(inChannels)·\(kernelSize)² = \(filterLength)",
                expected: "at most \(Int32.max) (one filter's values, a 32-bit size of OpenBLAS)")
        }
        try MemoryLimit.check(
            MemoryLimit.floatBytes(outChannels, inChannels, kernelSize, kernelSize), layer: "Conv2d",
            what: "the weight \(shape)")
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        self.centred = centred
        let std = (2 / Float(outChannels * kernelSize * kernelSize)).squareRoot()
        let initial = Tensor.randomNormal(shape: shape, standardDeviation: std, using: &generator).values
        weight = Parameter(name: "weight", shape: shape, role: .weight, value: initial)
        self.bias =
            bias
            ? Parameter(
                name: "bias", shape: [outChannels], role: .bias,
                value: [Float](repeating: 0, count: outChannels))
            : nil
        usedWeight = LayerScratch(capacity: outChannels * inChannels * kernelSize * kernelSize)
        BLAS.configureDefaultIfNeeded()
    }

    /// The output shape for an input `(N, C, H, W)`: `(N, out, (H + 2p − k)/s + 1, (W + 2p − k)/s + 1)`.
    ///
    /// - Throws: the same errors as ``forward(_:into:training:)`` for a bad input shape or layout.
    public func outputShape(for x: Tensor) throws -> [Int] {
        let g = try geometry(of: x)
        return [g.batch, outChannels, g.outHeight, g.outWidth]
    }

    /// Convolves `x` `(N, in, H, W)` into `y` `(N, out, H', W')` in `x`'s layout, reusing `y`'s memory when it
    /// can. A training forward keeps a reference to `x` and the weights it used for the backward.
    ///
    /// - Throws: ``LayerError/unsupportedLayout(layer:layout:)`` (channels-last with the im2col engine),
    ///   ``LayerError/wrongRank(layer:expected:shape:)``, ``/NormKit/NormalizationError/channelMismatch(layer:expected:got:)``,
    ///   ``/NormKit/NormalizationError/emptyBatch(layer:)``, ``LayerError/inputTooSmall(layer:height:width:kernelSize:padding:)``,
    ///   ``/NormKit/NormalizationError/invalidShape(layer:shape:)`` for an output too large to count,
    ///   ``LayerError/sizeBeyond32Bits(layer:size:value:limit:)`` for more output positions per image than the im2col
    ///   engine's OpenBLAS calls take, ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` for
    ///   an output (or the im2col engine's patch matrix) larger than this machine's memory — all before anything is
    ///   allocated — or ``LayerError/engineFailure(layer:engine:message:)`` when oneDNN is not built in or refuses the
    ///   shape (one whose batch or padded planes exceed its 32-bit sizes included).
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        let g = try geometry(of: x)
        if let reason = engine.unavailableReason {
            throw LayerError.engineFailure(layer: name, engine: "oneDNN", message: reason)
        }
        let plan = engine == .im2col ? try prepareWorkspaces(for: g) : nil
        prepareWeights()
        outputShape.setDimensions(g.batch, outChannels, g.outHeight, g.outWidth)
        y.prepare(shape: outputShape, layout: x.layout)
        var threads = 1
        if let plan {
            forwardIm2col(x, into: &y, g, plan)
        } else {
            threads = try forwardOneDNN(x, into: &y, g, winograd: engine.allowsWinograd)
        }
        if training {
            savedThreads = threads
            savedInput = x
            savedGeometry = g
            savedOutputShape = outputShape
            savedEngine = engine
        }
    }

    private func forwardIm2col(_ x: Tensor, into y: inout Tensor, _ g: ConvolutionGeometry, _ plan: Plan) {
        let w = UnsafePointer(usedWeight.pointer)
        let workspaces = self.workspaces
        let biasValues = bias?.value
        x.withUnsafeBufferPointer { xb in
            y.withUnsafeMutableBufferPointer { yb in
                let xp = xb.baseAddress!, yp = yb.baseAddress!
                Conv2d.run(threads: plan.threads, count: g.batch) { t, range in
                    Conv2d.forwardImages(
                        range, group: plan.group, g, x: xp, weights: w, bias: biasValues,
                        y: yp, workspace: workspaces[t])
                }
            }
        }
    }

    /// Backpropagates `dy` through the last training forward: sets ``weight``'s (and ``bias``'s) gradient and,
    /// when ``computesInputGradient``, writes `dx` (shape of the forward's input).
    ///
    /// - Throws: ``/NormKit/NormalizationError/backwardBeforeForward(layer:)`` or
    ///   ``/NormKit/NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        guard let x = savedInput, let g = savedGeometry else {
            throw NormalizationError.backwardBeforeForward(layer: name)
        }
        try LayerCheck.gradient(dy, shape: savedOutputShape, layout: x.layout, layer: name)
        let threads: Int
        if savedEngine.usesOneDNN {
            threads = try backwardOneDNN(
                x, dy, into: &dx, g, threads: savedThreads, winograd: savedEngine.allowsWinograd)
        } else {
            threads = try backwardIm2col(x, dy, into: &dx, g)
        }
        sumGradients(threads: threads)
        savedInput = nil
        savedGeometry = nil
    }

    /// The im2col backward into each thread's partial gradients (and `dx`); returns the thread count.
    private func backwardIm2col(
        _ x: Tensor, _ dy: Tensor, into dx: inout Tensor, _ g: ConvolutionGeometry
    ) throws -> Int {
        let plan = try prepareWorkspaces(for: g)
        let w = UnsafePointer(usedWeight.pointer)
        let workspaces = self.workspaces
        let wantsInput = computesInputGradient
        func run(_ dxp: UnsafeMutablePointer<Float>?) {
            x.withUnsafeBufferPointer { xb in
                dy.withUnsafeBufferPointer { dyb in
                    let xp = xb.baseAddress!, dyp = dyb.baseAddress!
                    Conv2d.run(threads: plan.threads, count: g.batch) { t, range in
                        Conv2d.backwardImages(
                            range, group: plan.group, g, x: xp, weights: w, dy: dyp, dx: dxp,
                            workspace: workspaces[t])
                    }
                }
            }
        }
        if wantsInput {
            dx.prepare(shape: x.shape, layout: .channelsFirst)
            dx.withUnsafeMutableBufferPointer { run($0.baseAddress!) }
        } else {
            run(nil)
        }
        return plan.threads
    }

    /// Adds the per-thread partial gradients in thread order into ``weight`` (mapped through the centring) and
    /// ``bias``.
    private func sumGradients(threads: Int) {
        let workspaces = self.workspaces
        let count = outChannels * fanIn, filters = outChannels, fanIn = self.fanIn
        weight.gradient.withUnsafeMutableBufferPointer { gw in
            let out = gw.baseAddress!
            out.update(from: workspaces[0].weightGradient.pointer, count: count)
            for t in 1..<threads {
                let part = workspaces[t].weightGradient.pointer
                for i in 0..<count { out[i] += part[i] }
            }
            if centred { WeightCentering.centerGradient(out, out, filters: filters, fanIn: fanIn) }
        }
        if let bias {
            bias.gradient.withUnsafeMutableBufferPointer { gb in
                for o in 0..<filters {
                    var total: Float = 0
                    for t in 0..<threads { total += workspaces[t].biasGradient.pointer[o] }
                    gb[o] = total
                }
            }
        }
    }

    // MARK: - Planning

    /// Checks `x` and returns the convolution's geometry for it.
    private func geometry(of x: Tensor) throws -> ConvolutionGeometry {
        try LayerCheck.spatial(x, channels: inChannels, layer: name, channelsLastToo: engine.usesOneDNN)
        let h = x.shape[2], w = x.shape[3]
        guard h + 2 * padding >= kernelSize, w + 2 * padding >= kernelSize else {
            throw LayerError.inputTooSmall(layer: name, height: h, width: w, kernelSize: kernelSize, padding: padding)
        }
        let g = ConvolutionGeometry(
            batch: x.batch, channels: inChannels, height: h, width: w, filters: outChannels,
            kernel: kernelSize, stride: stride, padding: padding)
        // A padding far larger than the input can ask for more outputs than can be counted, or held. (Checked
        // without an array: this runs on every forward and backward, which allocate nothing.)
        guard let outputBytes = MemoryLimit.floatBytes(g.batch, outChannels, g.outHeight, g.outWidth) else {
            throw NormalizationError.invalidShape(layer: name, shape: [g.batch, outChannels, g.outHeight, g.outWidth])
        }
        // The positions of one image are the N (and a leading dimension) of the im2col engine's GEMMs.
        if engine == .im2col { try BLAS.check(g.positions, "output positions per image (H'·W')", layer: name) }
        try MemoryLimit.check(
            outputBytes, layer: name, what: "the output [\(g.batch), \(outChannels), \(g.outHeight), \(g.outWidth)]")
        return g
    }

    /// Copies (or centres) the weights into ``usedWeight``.
    private func prepareWeights() {
        let dst = usedWeight.pointer, filters = outChannels, fanIn = self.fanIn
        weight.value.withUnsafeBufferPointer { src in
            if centred {
                WeightCentering.center(dst, src.baseAddress!, filters: filters, fanIn: fanIn)
            } else {
                dst.update(from: src.baseAddress!, count: filters * fanIn)
            }
        }
    }

    /// How many threads split the batch and how many images share one GEMM.
    private struct Plan { var threads: Int; var group: Int }

    /// Aim for GEMMs with at least this many output columns (positions × images) when images are small.
    static let targetColumns = 512

    /// Chooses the plan for `g` and sizes the per-thread scratch (growing only).
    ///
    /// - Throws: ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)``, before anything is
    ///   allocated, when a thread's patch matrix (`C·k·k` rows, as many columns as its group's output positions) is
    ///   larger than this machine's memory. (The other scratch is no larger than the weight or the output.)
    private func prepareWorkspaces(for g: ConvolutionGeometry) throws -> Plan {
        let threads = BLAS.threads == 1 ? max(1, min(Parallelism.threadCount, g.batch)) : 1
        let perThread = (g.batch + threads - 1) / threads
        let group = max(1, min(perThread, Conv2d.targetColumns / g.positions))
        let columns = group * g.positions
        try MemoryLimit.check(
            MemoryLimit.floatBytes(g.fanIn, columns), layer: name,
            what: "the im2col patch matrix (\(g.fanIn) × \(columns) floats)")
        while workspaces.count < threads { workspaces.append(ConvolutionWorkspace()) }
        for t in 0..<threads {
            let ws = workspaces[t]
            ws.patches.reserve(g.fanIn * columns)
            ws.staging.reserve(g.filters * columns)
            ws.weightGradient.reserve(g.filters * g.fanIn)
            ws.biasGradient.reserve(g.filters)
        }
        return Plan(threads: threads, group: group)
    }

    /// Sizes the first `threads` workspaces' partial gradients (growing only).
    func reserveGradientWorkspaces(threads: Int, _ g: ConvolutionGeometry) {
        while workspaces.count < threads { workspaces.append(ConvolutionWorkspace()) }
        for t in 0..<threads {
            workspaces[t].weightGradient.reserve(g.filters * g.fanIn)
            workspaces[t].biasGradient.reserve(g.filters)
        }
    }

    /// Runs `body(thread, images)` over `0..<count` split into `threads` contiguous ranges.
    static func run(threads: Int, count: Int, _ body: (Int, Range<Int>) -> Void) {
        if threads <= 1 {
            body(0, 0..<count)
            return
        }
        Parallelism.forEachPart(threads) { t in
            body(t, (count * t / threads)..<(count * (t + 1) / threads))
        }
    }
}

/// The sizes of one convolution call.
struct ConvolutionGeometry: Equatable {
    var batch: Int, channels: Int, height: Int, width: Int, filters: Int, kernel: Int, stride: Int, padding: Int
    var outHeight: Int { (height + 2 * padding - kernel) / stride + 1 }
    var outWidth: Int { (width + 2 * padding - kernel) / stride + 1 }
    var positions: Int { outHeight * outWidth }
    var fanIn: Int { channels * kernel * kernel }
}

/// One thread's scratch for ``Conv2d``.
final class ConvolutionWorkspace {
    /// The patch matrix of a group of images (reused for its gradient in the backward).
    let patches = LayerScratch()
    /// Outputs (forward) or output gradients (backward) of a group, `out × columns`.
    let staging = LayerScratch()
    /// This thread's partial `∂L/∂W_used`.
    let weightGradient = LayerScratch()
    /// This thread's partial `∂L/∂b`.
    let biasGradient = LayerScratch()
}
