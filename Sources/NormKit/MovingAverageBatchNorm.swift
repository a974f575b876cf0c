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
/// runningχ² ← oldValueWeight·runningχ² + (1 − oldValueWeight)·v   // every iteration
/// y = γ·r·x/sqrt(v+ε) + β
/// ```
/// Training backward (`r` a constant, `z = x/sqrt(v+ε)`, `g = γ·r·dy`):
/// ```
/// Ψ_t = mean(g·z);  bufΨ[t mod S_buf] = Ψ_t;  Ψ̄ = useBatch ? Ψ_t : mean(bufΨ)
/// dx = (g − z·Ψ̄)/sqrt(v+ε);  dγ = Σ dy·r·z;  dβ = Σ dy
/// ```
/// During warm-up this is the exact gradient of `y = γ·x/sqrt(mean(x²)+ε) + β`; afterwards it is the paper's deliberate
/// approximation. Evaluation: `y = γ·x/sqrt(runningχ² + ε) + β`, touching **no** state (not even a pending backward).
///
/// Conventions:
/// - The EMA factor is labelled ``oldValueWeight`` (default `0.98`, the paper's and the reference's `momentum`):
///   the weight of the **old** value — the opposite of ``BatchNorm``'s and ``BatchRenorm``'s `momentum` (the
///   weight of the new value), hence its own label. The deprecated `momentum:` label takes the same number.
///   State dicts are unchanged (the factor is not in them).
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
/// **Across workers** (``crossWorkerReduction``, data-parallel training): every worker's batch is one more
/// chunk of the same sequence, worker `w`'s after worker `w − 1`'s, as ghost chunks are in one process: each
/// forward gathers every worker's per-chunk statistics (2 values per channel and chunk) and walks all of them in
/// order, each backward gathers every worker's `Ψ` (and `g_B`) likewise. Every worker so keeps the same state,
/// and `R` workers with batches of `k` compute what one process computes with ghost batches of `k`.
///
/// **Non-finite statistics.** A chunk whose `χ²_t` is NaN or infinite writes neither its ring slot nor the
/// EMA (its `t` still advances); a chunk whose `Ψ_t` is not finite does not write its `bufΨ` slot. Each such
/// event increments ``skippedUpdates``. (The reference has no such guard; for finite inputs the two agree.)
///
/// Like the reference, a forward without its backward leaves a stale `bufΨ` slot, and two forwards for one
/// step advance the state twice.
///
/// **Ablation.** ``Parts`` switches MABN's parts off one by one (the BN form instead of the second moment, the
/// forward SMA, the backward SMA, `r`); the default ``Parts/paper`` is the layer described above, bit for bit.
public final class MovingAverageBatchNorm: NormalizationLayer {
    /// `C`.
    public let channels: Int
    /// `ε`, added to the second moment inside the square root.
    public let epsilon: Float
    /// The EMA factor: the weight of the **old** running second moment (default `0.98`; the paper's `momentum`).
    public let oldValueWeight: Float

    /// The EMA factor under its old, ambiguous name (the weight of the **old** value, unlike ``BatchNorm``'s).
    @available(*, deprecated, renamed: "oldValueWeight")
    public var momentum: Float { oldValueWeight }
    /// `S_buf`, the length of the SMA ring buffers.
    public let bufferSize: Int
    /// Iterations (chunks) that use the current batch's statistics instead of the SMA (`t < warmup`); the `r`
    /// factor starts after `max(1000, warmup)` iterations.
    public let warmup: Int
    /// Samples per MABN iteration (ghost batch); nil uses the whole batch.
    public let normBatch: Int?
    /// Which of MABN's parts this layer uses (``Parts/paper``, all of them, by default).
    public let parts: Parts
    /// `γ` (nil with `affine: false`).
    public let weight: Parameter?
    /// `β` (nil with `affine: false`).
    public let bias: Parameter?
    /// The activation fused into the apply stage (``FusedActivation``): the output is `act(norm(x))` and the
    /// backward takes its gradient. Set it between steps, not between a forward and its backward.
    public var activation: FusedActivation = .identity
    /// EMA of the second moment `χ²` per channel (`running_var` in the reference's naming), used in evaluation.
    /// In the BN form (``Parts/secondMomentForm`` off): the EMA of the variance.
    public internal(set) var runningSecondMoment: [Float]
    /// The BN form's EMA of the mean (`running_mean`); empty in the second-moment form.
    public internal(set) var runningMean: [Float]
    /// The iteration counter `t` (`iters`): MABN iterations (chunks) so far.
    public internal(set) var iterations: Int64 = 0
    /// The forward ring buffer `bufχ²` (`buffer_x2`), `S_buf × C` row-major (the BN form: of the variance).
    public internal(set) var secondMomentBuffer: [Float]
    /// The backward ring buffer `bufΨ` (`buffer_gz`), `S_buf × C` row-major.
    public internal(set) var backwardStatisticBuffer: [Float]
    /// The BN form's forward ring buffer of the mean `bufμ` (`buffer_mean`); empty in the second-moment form.
    public internal(set) var meanBuffer: [Float]
    /// The BN form's backward ring buffer of `g_B = mean(g)` (`buffer_g`); empty in the second-moment form.
    public internal(set) var gradientMeanBuffer: [Float]
    /// Chunks whose `χ²` or `Ψ` was not finite and so was not written to the buffers and EMA.
    public private(set) var skippedUpdates: Int = 0
    /// `r` of the last training forward, indexed `chunk·C + c` (diagnostics).
    public private(set) var lastR: [Float] = []
    /// The workers whose batches continue this layer's sequence of iterations (see "Across workers" above); nil
    /// in one process. Set it between steps.
    public var crossWorkerReduction: CrossWorkerReduction?

    /// `"MovingAverageBatchNorm(channels: 64, bufferSize: 16)"`, with `normBatch` and `affine: false` when set.
    /// Parts other than the paper's are listed too (`parts: without renorm`).
    public var name: String {
        MovingAverageBatchNorm.describe(
            channels: channels, bufferSize: bufferSize, normBatch: normBatch, affine: weight != nil, parts: parts)
    }

    /// The ``name`` of an MABN layer built with these arguments.
    static func describe(channels: Int, bufferSize: Int, normBatch: Int?, affine: Bool, parts: Parts) -> String {
        layerName(
            "MovingAverageBatchNorm", channels: channels,
            [
                "bufferSize: \(bufferSize)", normBatch.map { "normBatch: \($0)" },
                parts == .paper ? nil : "parts: \(parts)",
            ], affine: affine)
    }

    /// What a training forward saves per (chunk, channel) for its backward.
    struct ChunkFactors {
        /// `sqrt(v + ε)`, the divisor of the forward.
        var divisor: Double
        /// `r`, a constant in the backward.
        var r: Double
        /// The mean subtracted (`μ̄`; 0 in the second-moment form).
        var center: Double = 0
        /// `1/sqrt(v + ε)`.
        var rstd: Double { 1 / divisor }
    }

    // Saved by the training forward for the backward, per chunk b and set s = b·C + c.
    private var pending = PendingForward()
    /// `t` of the forward's first chunk: chunk `b` was iteration `savedFirstIteration + b`.
    private var savedFirstIteration: Int64 = 0
    private var chunkFactors: [ChunkFactors] = []
    /// Every worker's chunks across workers (see ``WorkerChunks``).
    var workerChunks = WorkerChunks()
    /// The engine's staged passes (statistics of every chunk before the iterations run through them in order).
    private var workspace = StatisticsWorkspace()
    // `Ψ_t` per chunk b and channel at [b·2C + c] (backward); the BN form's `g_B` after it at [b·2C + C + c].
    private var chunkStatistic: [Double] = []
    private var evaluation = EvaluationAffine()

    /// An MABN layer over `channels` channels with ring buffers of `bufferSize` iterations.
    ///
    /// - Parameters:
    ///   - channels: `C`, the size of dimension 1 of every input (`≥ 1`).
    ///   - bufferSize: `S_buf ≥ 1` (`realBatch / normBatch` in the paper).
    ///   - epsilon: `ε > 0`, added to the statistic inside the square root (default `1e-5`).
    ///   - oldValueWeight: in `0...1`, the weight of the **old** running value in the EMA,
    ///     `runningχ² ← oldValueWeight·runningχ² + (1 − oldValueWeight)·v` (the paper's `momentum = 0.98`).
    ///     PyTorch-convention `momentum` `m` (weight of the new value, as ``BatchNorm``) is `1 − m` here.
    ///   - warmup: iterations using batch statistics (`≥ 0`, default 100).
    ///   - normBatch: samples per MABN iteration (must divide every training batch); nil for the whole batch.
    ///   - affine: whether the layer has a learnable per-channel `γ` (``weight``) and `β` (``bias``); `false`
    ///     leaves both nil (`y = x̂`).
    ///   - parts: which of MABN's parts to use (an ablation; default ``Parts/paper``, all of them).
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for out-of-range arguments;
    ///   ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when a per-channel vector or a ring buffer (`bufferSize × channels`) needs more bytes than this
    ///   machine's physical memory.
    public init(
        channels: Int, bufferSize: Int, epsilon: Float = 1e-5, oldValueWeight: Float = 0.98,
        warmup: Int = 100, normBatch: Int? = nil, affine: Bool = true, parts: Parts = .paper
    ) throws {
        try LayerArgument.validate(
            layer: MovingAverageBatchNorm.describe(
                channels: channels, bufferSize: bufferSize, normBatch: normBatch, affine: affine, parts: parts),
            .channels(channels), .count("bufferSize", bufferSize, atLeast: 1), .epsilon(epsilon),
            .fraction("oldValueWeight", oldValueWeight, meaning: "weight of the OLD value, e.g. 0.98"),
            .count("warmup", warmup, atLeast: 0), .normBatch(normBatch), .perChannel(channels),
            .floats("a ring buffer (bufferSize × channels)", rows: bufferSize, columns: channels))
        self.channels = channels
        self.bufferSize = bufferSize
        self.epsilon = epsilon
        self.oldValueWeight = oldValueWeight
        self.warmup = warmup
        self.normBatch = normBatch
        self.parts = parts
        (weight, bias) = makeAffine(channels: channels, affine: affine)
        runningSecondMoment = [Float](repeating: 1, count: channels)
        secondMomentBuffer = [Float](repeating: 0, count: bufferSize * channels)
        backwardStatisticBuffer = secondMomentBuffer
        let meanForm = !parts.secondMomentForm
        runningMean = [Float](repeating: 0, count: meanForm ? channels : 0)
        meanBuffer = [Float](repeating: 0, count: meanForm ? bufferSize * channels : 0)
        gradientMeanBuffer = meanBuffer
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
        // The kernels' form: an `(N, C)` input is one matrix in either layout (``NormalizationGeometry/kernelForm``).
        let g = try NormalizationGeometry.ghostBatches(x, channels: channels, normBatch: normBatch, layer: name)
            .kernelForm
        if chunkFactors.count != g.setCount {
            chunkFactors = [ChunkFactors](repeating: ChunkFactors(divisor: 1, r: 1), count: g.setCount)
            lastR = [Float](repeating: 1, count: g.setCount)
        }
        let first = iterations + 1, c = channels, gamma = weight?.value, beta = bias?.value
        // Statistics of every chunk → the MABN iterations in order → per set y = γ·r·(x − μ̄)/sqrt(v+ε) + β (no
        // centre in the second-moment form) → apply.
        try workspace.normalizeStaged(x, into: &y, activation: activation, geometry: g) { mean, variance, affines in
            if let workers = crossWorkerReduction, workers.workerCount > 1 {
                let all = try workerChunks.gatherForward(
                    mean: mean, variance: variance, blocks: g.sampleBlocks, over: workers, layer: self.name)
                runIterations(blocks: all.blocks, mean: all.mean, variance: all.variance, into: &workerChunks.factors)
                workerChunks.keepOwn(of: workers, into: &chunkFactors)
            } else {
                runIterations(blocks: g.sampleBlocks, mean: mean, variance: variance, into: &chunkFactors)
            }
            // Through buffer pointers: a subscript write through `affines` checked the array's uniqueness per element.
            chunkFactors.withUnsafeBufferPointer { factors in
                affines.scale.withUnsafeMutableBufferPointer { scale in
                    affines.center.withUnsafeMutableBufferPointer { center in
                        affines.shift.withUnsafeMutableBufferPointer { shift in
                            precondition(
                                scale.count == factors.count && center.count == factors.count
                                    && shift.count == factors.count,
                                "\(self.name): \(factors.count) chunk factors for \(scale.count) sets")
                            for s in factors.indices {
                                let f = factors[s], ch = s % c
                                scale[s] = Double(gamma?[ch] ?? 1) * f.r / f.divisor
                                (center[s], shift[s]) = (f.center, Double(beta?[ch] ?? 0))
                            }
                        }
                    }
                }
            }
        }
        let factors = chunkFactors
        updating(&lastR) { lastR in for (s, f) in factors.enumerated() { lastR[s] = Float(f.r) } }
        savedFirstIteration = first
        pending.save(x, g)
    }

    /// The forward's MABN iterations, one per chunk (`blocks` of them, statistics at `b·C + c`) in order: advances
    /// `t`, writes the chunk's `χ²_t` (the BN form: `σ²_t` and `μ_t`) to its ring slot, takes `v` (`χ²_t` while
    /// `useBatch(t)` or without the forward SMA, the SMA afterwards) and `r` against the old EMA, updates the EMA,
    /// and saves `sqrt(v+ε)`, `r` and `μ̄` per set in `factors`.
    private func runIterations(blocks: Int, mean: [Double], variance: [Double], into factors: inout [ChunkFactors]) {
        let c = channels, eps = Double(epsilon), keep = Double(oldValueWeight)
        let rThreshold = parts.renormalization ? Int64(max(1000, warmup)) : Int64.max
        let meanForm = !parts.secondMomentForm, forwardSMA = parts.forwardSMA
        /// The forward statistic of set `s`: `χ² = mean(x²) = var + mean²`, or the BN form's variance.
        func statistic(_ s: Int) -> Double { meanForm ? variance[s] : variance[s] + mean[s] * mean[s] }
        func isFinite(_ s: Int) -> Bool { statistic(s).isFinite && (!meanForm || mean[s].isFinite) }
        // inout parameters: one exclusive access per written array for the whole walk, none per element.
        func iterate(
            _ ring: inout [Float], _ meanRing: inout [Float], _ running: inout [Float], _ runningMean: inout [Float],
            _ factors: inout [ChunkFactors]
        ) {
            for b in 0..<blocks {
                iterations += 1
                let t = iterations, row = slot(t) * c
                let finite = (0..<c).allSatisfy { isFinite(b * c + $0) }
                if finite {
                    for ch in 0..<c { ring[row + ch] = Float(statistic(b * c + ch)) }
                    if meanForm { for ch in 0..<c { meanRing[row + ch] = Float(mean[b * c + ch]) } }
                } else {
                    skippedUpdates += 1
                }
                let useBatch = !forwardSMA || usesBatch(t)
                for ch in 0..<c {
                    let s = b * c + ch
                    let v = useBatch ? statistic(s) : ringMean(ring, ch)
                    let root = (v + eps).squareRoot()
                    var r = 1.0
                    if t > rThreshold {
                        let ratio = root / (Double(running[ch]) + eps).squareRoot()
                        r = ratio.isNaN ? ratio : min(max(ratio, 0.2), 5)
                    }
                    var center = 0.0
                    if meanForm {
                        center = useBatch ? mean[s] : ringMean(meanRing, ch)
                        if finite {
                            runningMean[ch] = Float(keep * Double(runningMean[ch]) + (1 - keep) * center)
                        }
                    }
                    if finite {
                        running[ch] = Float(keep * Double(running[ch]) + (1 - keep) * v)
                    }
                    factors[s] = ChunkFactors(divisor: root, r: r, center: center)
                }
            }
        }
        iterate(&secondMomentBuffer, &meanBuffer, &runningSecondMoment, &runningMean, &factors)
    }

    private func evaluate(_ x: Tensor, into y: inout Tensor) {
        // The BN form: y = γ·(x − running_mean)/sqrt(running_var + ε) + β.
        evaluation.apply(
            x, into: &y, gamma: weight?.value, beta: bias?.value, center: parts.secondMomentForm ? nil : runningMean,
            spread: runningSecondMoment, form: .variance(epsilon: epsilon), activation: activation)
    }

    /// The MABN backward of the last training forward, chunk by chunk in forward order: pushes `Ψ_t` into
    /// `bufΨ[t mod S_buf]`, then `dx = (g − z·Ψ̄)/sqrt(v+ε)` with `g = γ·r·dy`, `Ψ̄` the chunk's `Ψ_t` while
    /// `useBatch(t)` (or without the backward SMA) and the SMA of `bufΨ` afterwards; `dγ_c = Σ dy·r·z`,
    /// `dβ_c = Σ dy`. The BN form (``Parts``) adds `g_B = mean(g)`: `dx = (g − ḡ − x̂·Ψ̄)/sqrt(v+ε)`.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        let (x, g) = try pending.forBackward(of: dy, layer: name)
        let meanForm = !parts.secondMomentForm, backwardSMA = parts.backwardSMA, factors = chunkFactors
        let c = channels, k = g.samplesPerSet, count = Double(g.elementsPerSet), blocks = g.sampleBlocks, width = 2 * c
        let gamma = weight?.value, firstIteration = savedFirstIteration
        try workspace.backwardStaged(dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g) {
            sumDy, sumDyX, gradients in
            // This worker's chunks: `Ψ_t = mean(g·z) = γ·r·rstd·mean(dy·x)` at [b·2C + c], the BN form's
            // `g_B = mean(g) = γ·r·mean(dy)` at [b·2C + C + c].
            if chunkStatistic.count != blocks * width {
                chunkStatistic = [Double](repeating: 0, count: blocks * width)
            }
            updating(&chunkStatistic) { psi in
                for b in 0..<blocks {
                    for ch in 0..<c {
                        let s = b * c + ch, gammaR = Double(gamma?[ch] ?? 1) * factors[s].r
                        var total = 0.0, dyTotal = 0.0
                        for n in (b * k)..<((b + 1) * k) {
                            total += sumDyX[n * c + ch]
                            dyTotal += sumDy[n * c + ch]
                        }
                        psi[b * width + ch] = gammaR * factors[s].rstd * total / count
                        psi[b * width + c + ch] = meanForm ? gammaR * dyTotal / count : 0
                    }
                }
            }
            // Every worker's chunks in order (this worker's alone in one process), this worker's at `own`.
            var all = chunkStatistic, own = 0..<blocks
            if let workers = crossWorkerReduction, workers.workerCount > 1 {
                all = try workerChunks.gatherBackward(chunkStatistic, over: workers, layer: self.name)
                own = (workers.workerIndex * blocks)..<((workers.workerIndex + 1) * blocks)
            }
            updating(&gradientMeanBuffer) { gRing in
                updating(&backwardStatisticBuffer) { ring in
                    for chunk in 0..<(all.count / width) {
                        let t = firstIteration + Int64(chunk), row = slot(t) * c, psi = chunk * width
                        if (0..<c).allSatisfy({ all[psi + $0].isFinite && all[psi + c + $0].isFinite }) {
                            for ch in 0..<c { ring[row + ch] = Float(all[psi + ch]) }
                            if meanForm { for ch in 0..<c { gRing[row + ch] = Float(all[psi + c + ch]) } }
                        } else {
                            skippedUpdates += 1
                        }
                        guard own.contains(chunk) else { continue }
                        let b = chunk - own.lowerBound, useBatch = !backwardSMA || usesBatch(t)
                        for ch in 0..<c {
                            let s = b * c + ch, rs = factors[s].rstd
                            let psiBar = useBatch ? all[psi + ch] : ringMean(ring, ch)
                            gradients.scale[s] = Double(gamma?[ch] ?? 1) * factors[s].r * rs
                            gradients.slope[s] = -psiBar * rs * rs
                            var offset = 0.0
                            if meanForm {
                                offset = -(useBatch ? all[psi + c + ch] : ringMean(gRing, ch)) * rs
                            }
                            (gradients.offset[s], gradients.gammaScale[s]) = (offset, factors[s].r * rs)
                        }
                    }
                }
            }
        }
        pending.clear()
    }

    /// Forgets the pending (un-backpropagated) training forward.
    func dropPendingForward() {
        pending.clear()
    }
}
