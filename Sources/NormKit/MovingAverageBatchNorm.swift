/// Moving Average Batch Normalization (Yan et al., 2020), exactly as spec section 4 (the authors' `MABN.py`
/// and the reference `MovingAverageBatchNorm2d`).
///
/// **No mean is subtracted**: each channel is divided by the root of its **second moment** `χ² = mean(x²)` over
/// `(N, *S)` (not a variance), so MABN should follow a weight-centred convolution (``WeightCentering``).
///
/// Training forward, per MABN iteration (one per ghost batch, see below):
/// ```
/// t ← t + 1;  χ²_t = mean(x²);  bufχ²[t mod S_buf] = χ²_t
/// useBatch = t ≤ S_buf or t < warmup
/// v = useBatch ? χ²_t : mean(bufχ²)                   // simple moving average over the ring buffer
/// r = t ≤ max(1000, warmup) ? 1 : clip(sqrt(v+ε)/sqrt(runningχ²+ε), 1/5, 5)   // the OLD runningχ²
/// runningχ² ← momentum·runningχ² + (1 − momentum)·v   // every iteration
/// y = γ·r·x/sqrt(v+ε) + β
/// ```
/// Training backward (`r` a constant, `z = x/sqrt(v+ε)`, `g = γ·r·dy`):
/// ```
/// Ψ_t = mean(g·z);  bufΨ[t mod S_buf] = Ψ_t;  Ψ̄ = useBatch ? Ψ_t : mean(bufΨ)
/// dx = (g − z·Ψ̄)/sqrt(v+ε);  dγ = Σ dy·r·z;  dβ = Σ dy
/// ```
/// During warm-up this is the exact gradient of `y = γ·x/sqrt(mean(x²)+ε) + β`; afterwards it is the paper's
/// deliberate approximation. Evaluation: `y = γ·x/sqrt(runningχ² + ε) + β`, touching **no** state (not even a
/// pending backward).
///
/// Conventions:
/// - `momentum` (default `0.98`) weights the **old** value — the opposite of ``BatchNorm``'s and
///   ``BatchRenorm``'s `momentum` (Keras/Flax direction, as the paper).
/// - `ε` (default `1e-5`) inside the square roots. The statistic is a second moment, never a variance.
/// - Unlike ``BatchNorm``, a chunk with a single value per channel is allowed (a second moment needs no spread).
/// - `S_buf` (``bufferSize``) is `realBatch / normBatch` in the paper (simulating a batch of 32 with batches of
///   2: 16). Ring slots are `t mod S_buf` with `t` after its increment, as the reference.
///
/// **Ghost batches.** With `normBatch = k` (must divide the batch), each chunk of `k` consecutive samples is one
/// MABN iteration: the forward walks the chunks in order, advancing `t`, the ring buffer and the EMA once per
/// chunk (a later chunk's SMA and `r` see the earlier chunks of the same forward); the backward walks them in
/// the same order, pushing each chunk's `Ψ` before it uses the SMA. Warm-up and the `r` threshold count chunks.
///
/// **Non-finite statistics.** A chunk whose `χ²_t` is NaN or infinite writes neither its ring slot nor the
/// EMA (its `t` still advances); a chunk whose `Ψ_t` is not finite does not write its `bufΨ` slot. Each such
/// event increments ``skippedUpdates``. (The reference has no such guard; for finite inputs the two agree.)
///
/// Like the reference, a forward without its backward leaves a stale `bufΨ` slot, and two forwards for one
/// step advance the state twice.
public final class MovingAverageBatchNorm: NormalizationLayer {
    /// `C`.
    public let channels: Int
    /// `ε`, added to the second moment inside the square root.
    public let epsilon: Float
    /// EMA momentum: the weight of the **old** running second moment (default `0.98`).
    public let momentum: Float
    /// `S_buf`, the length of the SMA ring buffers.
    public let bufferSize: Int
    /// Iterations (chunks) that use the current batch's statistics instead of the SMA (`t < warmup`); the `r`
    /// factor starts after `max(1000, warmup)` iterations.
    public let warmup: Int
    /// Samples per MABN iteration (ghost batch); nil uses the whole batch.
    public let normBatch: Int?
    /// `γ` (nil with `affine: false`).
    public let weight: Parameter?
    /// `β` (nil with `affine: false`).
    public let bias: Parameter?
    /// EMA of the second moment `χ²` per channel (`running_var` in the reference's naming), used in evaluation.
    public private(set) var runningSecondMoment: [Float]
    /// The iteration counter `t` (`iters`): MABN iterations (chunks) so far.
    public private(set) var iterations: Int64 = 0
    /// The forward ring buffer `bufχ²` (`buffer_x2`), `S_buf × C` row-major.
    public private(set) var secondMomentBuffer: [Float]
    /// The backward ring buffer `bufΨ` (`buffer_gz`), `S_buf × C` row-major.
    public private(set) var backwardStatisticBuffer: [Float]
    /// Chunks whose `χ²` or `Ψ` was not finite and so was not written to the buffers and EMA.
    public private(set) var skippedUpdates: Int = 0
    /// `r` of the last training forward, indexed `chunk·C + c` (diagnostics).
    public private(set) var lastR: [Float] = []

    /// `"MovingAverageBatchNorm(C=…, S_buf=…)"`.
    public var name: String {
        "MovingAverageBatchNorm(C=\(channels), S_buf=\(bufferSize)\(normBatch.map { ", normBatch=\($0)" } ?? ""))"
    }

    // Saved by the training forward for the backward, per chunk b and set s = b·C + c.
    private var savedInput: Tensor?
    private var savedGeometry: NormalizationGeometry?
    private var chunkV: [Double] = []
    private var chunkRstd: [Double] = []
    private var chunkR: [Double] = []
    private var chunkT: [Int64] = []
    private var chunkUseBatch: [Bool] = []
    // Scratch reused across steps.
    private var mean: [Double] = []
    private var variance: [Double] = []
    private var zeroCenter: [Double] = []
    private var scale: [Float] = []
    private var shift: [Float] = []
    private var slope: [Float] = []
    private var sumDy: [Double] = []
    private var sumDyX: [Double] = []
    private var chunkStatistic: [Double]
    private var evalScale: [Float]
    private var evalShift: [Float]

    /// An MABN layer over `channels` channels with ring buffers of `bufferSize` iterations.
    ///
    /// - Parameters:
    ///   - bufferSize: `S_buf ≥ 1` (`realBatch / normBatch` in the paper).
    ///   - momentum: in `0...1`, the weight of the **old** value in the EMA (opposite of ``BatchNorm``).
    ///   - warmup: iterations using batch statistics (`≥ 0`, default 100).
    ///   - normBatch: samples per MABN iteration (must divide every training batch); nil for the whole batch.
    /// - Throws: ``NormalizationError/invalidArgument(name:value:expected:)`` for out-of-range arguments.
    public init(channels: Int, bufferSize: Int, epsilon: Float = 1e-5, momentum: Float = 0.98, warmup: Int = 100,
                normBatch: Int? = nil, affine: Bool = true) throws {
        guard channels >= 1 else {
            throw NormalizationError.invalidArgument(name: "channels", value: "\(channels)", expected: "at least 1")
        }
        guard bufferSize >= 1 else {
            throw NormalizationError.invalidArgument(name: "bufferSize", value: "\(bufferSize)", expected: "at least 1")
        }
        guard epsilon >= 0, epsilon.isFinite else {
            throw NormalizationError.invalidArgument(name: "epsilon", value: "\(epsilon)", expected: "a finite value ≥ 0")
        }
        guard (0...1).contains(momentum) else {
            throw NormalizationError.invalidArgument(
                name: "momentum", value: "\(momentum)", expected: "0...1 (weight of the OLD value, e.g. 0.98)")
        }
        guard warmup >= 0 else {
            throw NormalizationError.invalidArgument(name: "warmup", value: "\(warmup)", expected: "at least 0")
        }
        if let normBatch, normBatch < 1 {
            throw NormalizationError.invalidArgument(name: "normBatch", value: "\(normBatch)", expected: "at least 1")
        }
        self.channels = channels
        self.bufferSize = bufferSize
        self.epsilon = epsilon
        self.momentum = momentum
        self.warmup = warmup
        self.normBatch = normBatch
        (weight, bias) = makeAffine(channels: channels, affine: affine)
        runningSecondMoment = [Float](repeating: 1, count: channels)
        secondMomentBuffer = [Float](repeating: 0, count: bufferSize * channels)
        backwardStatisticBuffer = secondMomentBuffer
        chunkStatistic = [Double](repeating: 0, count: channels)
        evalScale = [Float](repeating: 0, count: channels)
        evalShift = evalScale
    }

    /// `useBatch(t)`: the current chunk's statistic instead of the SMA.
    @inline(__always) private func usesBatch(_ t: Int64) -> Bool { t <= Int64(bufferSize) || t < Int64(warmup) }

    /// The ring slot of iteration `t`.
    @inline(__always) private func slot(_ t: Int64) -> Int { Int(t % Int64(bufferSize)) }

    /// The mean over the ring buffer `buffer` (`S_buf × C`) of channel `c`.
    @inline(__always) private func ringMean(_ buffer: [Float], _ c: Int) -> Double {
        var total = 0.0
        for i in 0..<bufferSize { total += Double(buffer[i * channels + c]) }
        return total / Double(bufferSize)
    }

    /// Training: one MABN iteration per chunk (see the type's documentation), saves for backward.
    /// Evaluation: `y = γ·x/sqrt(runningχ² + ε) + β`, touching no state.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try InputCheck.validate(x, channels: channels, layer: name)
        guard training else {
            evaluate(x, into: &y)
            return
        }
        let k = normBatch ?? x.batch
        guard x.batch % k == 0 else { throw NormalizationError.normBatchDoesNotDivide(batch: x.batch, normBatch: k) }
        let g = NormalizationGeometry(layout: x.layout, batch: x.batch, channels: channels,
                                      positions: x.spatialCount, samplesPerSet: k, channelsPerSet: 1)
        prepareScratch(g)
        x.withUnsafeBufferPointer { xp in
            mean.withUnsafeMutableBufferPointer { mp in
                variance.withUnsafeMutableBufferPointer { vp in
                    NormalizationKernels.statistics(mean: mp.baseAddress!, variance: vp.baseAddress!,
                                                    x: xp.baseAddress!, geometry: g)
                }
            }
        }
        let c = channels, eps = Double(epsilon), keep = Double(momentum)
        let rThreshold = Int64(max(1000, warmup))
        for b in 0..<g.sampleBlocks {
            iterations += 1
            let t = iterations, row = slot(t) * c
            var finite = true
            for ch in 0..<c {
                let s = b * c + ch
                chunkStatistic[ch] = variance[s] + mean[s] * mean[s]
                finite = finite && chunkStatistic[ch].isFinite
            }
            if finite {
                for ch in 0..<c { secondMomentBuffer[row + ch] = Float(chunkStatistic[ch]) }
            } else {
                skippedUpdates += 1
            }
            let useBatch = usesBatch(t)
            for ch in 0..<c {
                let s = b * c + ch
                let v = useBatch ? chunkStatistic[ch] : ringMean(secondMomentBuffer, ch)
                let root = (v + eps).squareRoot()
                var r = 1.0
                if t > rThreshold {
                    let ratio = root / (Double(runningSecondMoment[ch]) + eps).squareRoot()
                    r = ratio.isNaN ? ratio : min(max(ratio, 0.2), 5)
                }
                if finite {
                    runningSecondMoment[ch] = Float(keep * Double(runningSecondMoment[ch]) + (1 - keep) * v)
                }
                chunkV[s] = v
                chunkRstd[s] = 1 / root
                chunkR[s] = r
                lastR[s] = Float(r)
                let gamma = Double(weight?.value[ch] ?? 1)
                scale[s] = Float(gamma * r / root)
                shift[s] = bias?.value[ch] ?? 0
            }
            chunkT[b] = t
            chunkUseBatch[b] = useBatch
        }
        y.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                NormalizationKernels.apply(y: yp.baseAddress!, x: xp.baseAddress!, scale: scale, shift: shift,
                                           geometry: g)
            }
        }
        savedInput = x
        savedGeometry = g
    }

    private func prepareScratch(_ g: NormalizationGeometry) {
        if mean.count != g.setCount {
            mean = [Double](repeating: 0, count: g.setCount)
            variance = mean
            zeroCenter = mean
            chunkV = mean
            chunkRstd = mean
            chunkR = mean
            scale = [Float](repeating: 0, count: g.setCount)
            shift = scale
            slope = scale
            lastR = [Float](repeating: 1, count: g.setCount)
        }
        if chunkT.count != g.sampleBlocks {
            chunkT = [Int64](repeating: 0, count: g.sampleBlocks)
            chunkUseBatch = [Bool](repeating: true, count: g.sampleBlocks)
        }
    }

    private func evaluate(_ x: Tensor, into y: inout Tensor) {
        let g = NormalizationGeometry(layout: x.layout, batch: x.batch, channels: channels,
                                      positions: x.spatialCount, samplesPerSet: x.batch, channelsPerSet: 1)
        for c in 0..<channels {
            let a = Double(weight?.value[c] ?? 1) / (Double(runningSecondMoment[c]) + Double(epsilon)).squareRoot()
            evalScale[c] = Float(a)
            evalShift[c] = bias?.value[c] ?? 0
        }
        y.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                NormalizationKernels.apply(y: yp.baseAddress!, x: xp.baseAddress!, scale: evalScale,
                                           shift: evalShift, geometry: g)
            }
        }
    }

    /// The MABN backward of the last training forward, chunk by chunk in forward order: pushes `Ψ_t` into
    /// `bufΨ[t mod S_buf]`, then `dx = (g − z·Ψ̄)/sqrt(v+ε)` with `g = γ·r·dy`, `Ψ̄` the chunk's `Ψ_t` while
    /// `useBatch(t)` and the SMA of `bufΨ` afterwards; `dγ_c = Σ dy·r·z`, `dβ_c = Σ dy`.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        guard let x = savedInput, let g = savedGeometry else {
            throw NormalizationError.backwardBeforeForward(layer: name)
        }
        try InputCheck.validateGradient(dy, like: x)
        if sumDy.count != g.batch * channels {
            sumDy = [Double](repeating: 0, count: g.batch * channels)
            sumDyX = sumDy
        }
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                sumDy.withUnsafeMutableBufferPointer { s1 in
                    sumDyX.withUnsafeMutableBufferPointer { s2 in
                        NormalizationKernels.gradientSums(sumDy: s1.baseAddress!, sumDyCentered: s2.baseAddress!,
                                                          dy: dyp.baseAddress!, x: xp.baseAddress!,
                                                          center: zeroCenter, geometry: g)
                    }
                }
            }
        }
        let c = channels, k = g.samplesPerSet, count = Double(g.elementsPerSet)
        for b in 0..<g.sampleBlocks {
            let t = chunkT[b], row = slot(t) * c
            var finite = true
            for ch in 0..<c {
                let s = b * c + ch
                var total = 0.0
                for n in (b * k)..<((b + 1) * k) { total += sumDyX[n * c + ch] }
                // Ψ = mean(g·z) = γ·r·rstd·mean(dy·x).
                chunkStatistic[ch] = Double(weight?.value[ch] ?? 1) * chunkR[s] * chunkRstd[s] * total / count
                finite = finite && chunkStatistic[ch].isFinite
            }
            if finite {
                for ch in 0..<c { backwardStatisticBuffer[row + ch] = Float(chunkStatistic[ch]) }
            } else {
                skippedUpdates += 1
            }
            let useBatch = chunkUseBatch[b]
            for ch in 0..<c {
                let s = b * c + ch
                let psi = useBatch ? chunkStatistic[ch] : ringMean(backwardStatisticBuffer, ch)
                let rs = chunkRstd[s]
                scale[s] = Float(Double(weight?.value[ch] ?? 1) * chunkR[s] * rs)
                slope[s] = Float(-psi * rs * rs)
                shift[s] = 0
            }
        }
        dx.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    NormalizationKernels.gradientApply(dx: dxp.baseAddress!, dy: dyp.baseAddress!,
                                                       x: xp.baseAddress!, center: zeroCenter, scale: scale,
                                                       slope: slope, offset: shift, geometry: g)
                }
            }
        }
        setAffineGradients(weight: weight, bias: bias, batch: g.batch, channels: channels,
                           sumDy: sumDy, sumDyCentered: sumDyX,
                           scale: { [chunkR, chunkRstd] n, ch in chunkR[(n / k) * c + ch] * chunkRstd[(n / k) * c + ch] })
        savedInput = nil
        savedGeometry = nil
    }

    /// Exactly the reference's `state_dict`: `weight`, `bias` (when affine), `running_var` `(C,)` (the EMA of the
    /// second moment), `iters` (int64 scalar, shape `[]`), `buffer_x2` and `buffer_gz` `(S_buf, C)`.
    public func stateDict() -> [String: StateTensor] {
        var state: [String: StateTensor] = [
            "running_var": .float32(shape: [channels], values: runningSecondMoment),
            "iters": .int64(shape: [], values: [iterations]),
            "buffer_x2": .float32(shape: [bufferSize, channels], values: secondMomentBuffer),
            "buffer_gz": .float32(shape: [bufferSize, channels], values: backwardStatisticBuffer),
        ]
        if let weight { state["weight"] = .float32(shape: [channels], values: weight.value) }
        if let bias { state["bias"] = .float32(shape: [channels], values: bias.value) }
        return state
    }

    /// Restores everything ``stateDict()`` writes, so the layer continues exactly as the one that wrote it, and
    /// drops any pending (un-backpropagated) training forward. Nothing changes if an entry is missing, has the
    /// wrong shape or dtype, `running_var` is negative or not finite, or `iters` is negative.
    public func loadStateDict(_ state: [String: StateTensor]) throws {
        let running = try state.floats("running_var", shape: [channels], layer: name)
        guard running.allSatisfy({ $0 >= 0 && $0.isFinite }) else {
            throw NormalizationError.invalidState(layer: name, name: "running_var", reason: "must be finite and ≥ 0")
        }
        let iters = try state.scalarInt("iters", layer: name)
        guard iters >= 0 else {
            throw NormalizationError.invalidState(layer: name, name: "iters", reason: "must be ≥ 0")
        }
        let x2 = try state.floats("buffer_x2", shape: [bufferSize, channels], layer: name)
        let gz = try state.floats("buffer_gz", shape: [bufferSize, channels], layer: name)
        var w: [Float]?, b: [Float]?
        if weight != nil {
            w = try state.floats("weight", shape: [channels], layer: name)
            b = try state.floats("bias", shape: [channels], layer: name)
        }
        runningSecondMoment = running
        iterations = iters
        secondMomentBuffer = x2
        backwardStatisticBuffer = gz
        if let w, let b { weight?.value = w; bias?.value = b }
        savedInput = nil
        savedGeometry = nil
    }
}
