/// Max pooling over square windows of channels-first `(N, C, H, W)` tensors, PyTorch's `nn.MaxPool2d` without
/// padding (floor mode): the output is `(N, C, (H − k)/s + 1, (W − k)/s + 1)`.
///
/// Each output takes the first maximum of its window in row-major order (the last NaN wins, as in PyTorch). A training
/// forward records the winner's position per output (in scratch reused across steps); the backward sends each
/// `dy` there (adding where windows overlap). No parameters.
public final class MaxPool2d: Layer {
    /// `k`, the side of the window.
    public let kernelSize: Int
    /// The step between windows.
    public let stride: Int

    /// `"MaxPool2d(2×2, stride 2)"`.
    public var name: String { "MaxPool2d(\(kernelSize)×\(kernelSize), stride \(stride))" }
    /// PyTorch's `repr` without its defaults: `"MaxPool2d(kernel_size=2, stride=2)"`.
    public var summary: String { "MaxPool2d(kernel_size=\(kernelSize), stride=\(stride))" }
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    private var savedInputShape: [Int]?
    // The last forward's output shape, and the last training forward's (see Shape+InPlace.swift).
    private var outputShape: [Int] = []
    private var savedOutputShape: [Int] = []
    /// Per output, the flat index within its input plane of the window's maximum.
    private var winners: [Int32] = []

    /// A max pool with a `kernelSize × kernelSize` window moved `stride` (default `kernelSize`) at a time.
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` for a size or stride below 1.
    public init(kernelSize: Int, stride: Int? = nil) throws {
        let stride = stride ?? kernelSize
        try LayerCheck.atLeastOne(["kernelSize": kernelSize, "stride": stride], layer: "MaxPool2d")
        self.kernelSize = kernelSize
        self.stride = stride
    }

    /// Pools `x` into `y`.
    ///
    /// - Throws: ``LayerError/unsupportedLayout(layer:layout:)``, ``LayerError/wrongRank(layer:expected:shape:)``,
    ///   ``/NormKit/NormalizationError/emptyBatch(layer:)``, ``LayerError/inputTooSmall(layer:height:width:kernelSize:padding:)``
    ///   or, in training, ``LayerError/sizeBeyond32Bits(layer:size:value:limit:)`` for planes of more positions than
    ///   the 32-bit indices of the windows' maxima reach.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try LayerCheck.spatial(x, channels: nil, layer: name)
        let h = x.shape[2], w = x.shape[3], k = kernelSize, s = stride
        guard h >= k, w >= k else {
            throw LayerError.inputTooSmall(layer: name, height: h, width: w, kernelSize: k, padding: 0)
        }
        if training { try Self.checkPlane(positions: h * w, layer: name) }
        let ho = (h - k) / s + 1, wo = (w - k) / s + 1, planes = x.batch * x.channels
        outputShape.setDimensions(x.batch, x.channels, ho, wo)
        y.prepare(shape: outputShape, layout: .channelsFirst)
        if training && winners.count != planes * ho * wo {
            winners = [Int32](repeating: 0, count: planes * ho * wo)
        }
        func pool(_ index: UnsafeMutablePointer<Int32>?) {
            x.withUnsafeBufferPointer { xb in
                y.withUnsafeMutableBufferPointer { yb in
                    let xp = xb.baseAddress!, yp = yb.baseAddress!
                    Parallelism.forEachRange(count: planes, work: planes * h * w) { range in
                        for plane in range {
                            let src = xp + plane * h * w, dst = yp + plane * ho * wo
                            let idx = index.map { $0 + plane * ho * wo }
                            for oh in 0..<ho {
                                for ow in 0..<wo {
                                    var best = oh * s * w + ow * s
                                    var value = src[best]
                                    for ki in 0..<k {
                                        let row = (oh * s + ki) * w + ow * s
                                        for kj in 0..<k {
                                            let v = src[row + kj]
                                            if v > value || v.isNaN { value = v; best = row + kj }
                                        }
                                    }
                                    dst[oh * wo + ow] = value
                                    idx?[oh * wo + ow] = Int32(best)
                                }
                            }
                        }
                    }
                }
            }
        }
        if training {
            winners.withUnsafeMutableBufferPointer { pool($0.baseAddress!) }
            savedInputShape = x.shape
            savedOutputShape = outputShape
        } else {
            pool(nil)
        }
    }

    /// Throws unless a plane of `positions` (`H·W`) can be indexed by `winners`' `Int32`s (a training forward
    /// records the position of each window's maximum within its plane).
    package static func checkPlane(positions: Int, layer: @autoclosure () -> String) throws {
        guard positions > Int32.max else { return }
        throw LayerError.sizeBeyond32Bits(
            layer: layer(), size: "positions per plane (H·W)", value: positions,
            limit: "the 32-bit indices of the windows' maxima")
    }

    /// Routes each `dy` to its window's maximum; every other `dx` is zero.
    ///
    /// - Throws: ``/NormKit/NormalizationError/backwardBeforeForward(layer:)`` or
    ///   ``/NormKit/NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        guard let shape = savedInputShape else { throw NormalizationError.backwardBeforeForward(layer: name) }
        let h = shape[2], w = shape[3], k = kernelSize, s = stride
        let ho = (h - k) / s + 1, wo = (w - k) / s + 1, planes = shape[0] * shape[1]
        try LayerCheck.gradient(dy, shape: savedOutputShape, layout: .channelsFirst, layer: name)
        dx.prepare(shape: shape, layout: .channelsFirst)
        winners.withUnsafeBufferPointer { wb in
            dy.withUnsafeBufferPointer { db in
                dx.withUnsafeMutableBufferPointer { dxb in
                    let idx = wb.baseAddress!, dyp = db.baseAddress!, dxp = dxb.baseAddress!
                    Parallelism.forEachRange(count: planes, work: planes * h * w) { range in
                        for plane in range {
                            let dst = dxp + plane * h * w, out = plane * ho * wo
                            dst.update(repeating: 0, count: h * w)
                            for i in 0..<(ho * wo) { dst[Int(idx[out + i])] += dyp[out + i] }
                        }
                    }
                }
            }
        }
        savedInputShape = nil
    }
}

/// The mean over all spatial positions, `(N, C, H, W) → (N, C)`: PyTorch's
/// `torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)`. Takes either layout; the output is a rank-2 channels-first
/// tensor. No parameters.
public final class GlobalAveragePool: Layer {
    /// `"GlobalAveragePool"`.
    public let name = "GlobalAveragePool"
    /// `"GlobalAveragePool()"` (PyTorch: `AdaptiveAvgPool2d(1)` then `flatten(1)`).
    public var summary: String { "GlobalAveragePool()" }
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    private var savedInputShape: [Int]?
    private var savedInputLayout = TensorLayout.channelsFirst
    // The last forward's output shape, and the last training forward's (see Shape+InPlace.swift).
    private var outputShape: [Int] = []
    private var savedOutputShape: [Int] = []

    /// A global average pool.
    public init() {}

    /// `y[n, c] = mean over (h, w) of x[n, c, h, w]` (summed in Double).
    ///
    /// - Throws: ``LayerError/unsupportedLayout(layer:layout:)``, ``LayerError/wrongRank(layer:expected:shape:)``,
    ///   ``/NormKit/NormalizationError/emptyBatch(layer:)`` or, for an empty plane, ``LayerError/inputTooSmall(layer:height:width:kernelSize:padding:)``.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try LayerCheck.spatial(x, channels: nil, layer: name, channelsLastToo: true)
        let m = x.spatialCount, n = x.batch, c = x.channels
        guard m > 0 else {
            throw LayerError.inputTooSmall(
                layer: name, height: x.shape[2], width: x.shape[3], kernelSize: 1, padding: 0)
        }
        outputShape.setDimensions(n, c)
        y.prepare(shape: outputShape, layout: .channelsFirst)
        let channelsLast = x.layout == .channelsLast
        x.withUnsafeBufferPointer { xb in
            y.withUnsafeMutableBufferPointer { yb in
                let scale = 1 / Double(m)
                for i in 0..<n {
                    for k in 0..<c {
                        // NCHW: a contiguous plane; NHWC: every c-th element of the image.
                        let start = channelsLast ? i * m * c + k : (i * c + k) * m, step = channelsLast ? c : 1
                        var total = 0.0
                        for p in 0..<m { total += Double(xb[start + p * step]) }
                        yb[i * c + k] = Float(total * scale)
                    }
                }
            }
        }
        if training {
            savedInputShape = x.shape
            savedInputLayout = x.layout
            savedOutputShape = outputShape
        }
    }

    /// `dx[n, c, h, w] = dy[n, c] / (H·W)`, in the forward input's layout.
    ///
    /// - Throws: ``/NormKit/NormalizationError/backwardBeforeForward(layer:)`` or
    ///   ``/NormKit/NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        guard let shape = savedInputShape else { throw NormalizationError.backwardBeforeForward(layer: name) }
        let n = shape[0], c = shape[1], m = shape[2] * shape[3]
        try LayerCheck.gradient(dy, shape: savedOutputShape, layout: .channelsFirst, layer: name)
        dx.prepare(shape: shape, layout: savedInputLayout)
        let channelsLast = savedInputLayout == .channelsLast
        dy.withUnsafeBufferPointer { db in
            dx.withUnsafeMutableBufferPointer { dxb in
                let scale = 1 / Float(m)
                let base = dxb.baseAddress!
                for i in 0..<n {
                    if channelsLast {
                        let row = db.baseAddress! + i * c, image = base + i * m * c
                        for p in 0..<m { for k in 0..<c { image[p * c + k] = row[k] * scale } }
                    } else {
                        for k in 0..<c { (base + (i * c + k) * m).update(repeating: db[i * c + k] * scale, count: m) }
                    }
                }
            }
        }
        savedInputShape = nil
    }
}
