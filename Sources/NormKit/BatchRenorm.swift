/// Batch Renormalization (Ioffe, 2017), the small-batch baseline of the MABN paper (spec section 3), with ghost
/// batches.
///
/// Training, per (ghost batch, channel), with the running mean `μ` and running **standard deviation** `σ`:
/// ```
/// σ_B = sqrt(var_B + ε)                         // var_B biased, ε inside the square root
/// r   = clip(σ_B / σ, 1/r_max, r_max)           // a constant in the backward
/// d   = clip((μ_B − μ) / σ, −d_max, d_max)      // a constant in the backward
/// y   = γ · ((x − μ_B) / σ_B · r + d) + β
/// ```
/// then `μ ← μ + α·(μ_B − μ)`, `σ ← σ + α·(σ_B − σ)`. Evaluation uses `y = γ·(x − μ)/σ + β` (no `ε`: `σ`
/// already contains it), as the reference `BatchRenorm2d`.
///
/// Conventions:
/// - `momentum` `α` (default `0.01`) weights the **new** value (PyTorch's direction, as the reference).
/// - The running statistic is a standard deviation `σ` (`running_std`), not a variance; it includes `ε`.
/// - `r_max`, `d_max` follow ``Schedule``, evaluated at ``batchesTracked`` **after** the increment of the current
///   training forward (the reference's `limits()`). Scale the schedule to short runs with
///   ``Schedule/scaled(totalSteps:rMax:dMax:)``, or BRN never leaves plain BN.
/// - A training batch with a single value per channel (per ghost batch) is an error, as for ``BatchNorm``.
///
/// **Ghost batches.** With `normBatch = k` (which must divide the batch size), `μ_B`, `σ_B`, `r`, `d` are
/// computed per run of `k` consecutive samples, all against the same running statistics (those before this
/// forward). The running statistics are updated **once per forward with the average** over the ghost batches of
/// `μ_B` and of `σ_B` (the same rule as ``BatchNorm``), and ``batchesTracked`` counts forwards, not ghost batches.
///
/// **Non-finite batches.** If any `μ_B` or `σ_B` is NaN or infinite the running statistics are left unchanged and
/// ``skippedUpdates`` is incremented (the step counter still advances); the output is still computed.
///
/// An evaluation forward touches no state: a pending training forward can still be backpropagated after it.
public final class BatchRenorm: NormalizationLayer {

    /// The relaxation schedule of `r_max` and `d_max` (the reference's `limits()`).
    ///
    /// For `step ≤ warmupSteps`: `r_max = 1`, `d_max = 0` (plain BN). Afterwards both relax linearly, `r_max`
    /// from 1 to ``rMax`` reached at step ``rSteps``, `d_max` from 0 to ``dMax`` reached at step ``dSteps``:
    /// `r_max = 1 + (rMax − 1)·min(1, (step − warmup)/max(1, rSteps − warmup))`, and likewise for `d_max`.
    public struct Schedule: Equatable, Sendable, Codable {
        /// Steps of plain BN (`r_max = 1`, `d_max = 0`).
        public var warmupSteps: Int
        /// The final `r_max` (at least 1).
        public var rMax: Double
        /// The final `d_max` (at least 0).
        public var dMax: Double
        /// The step at which `r_max` reaches ``rMax``.
        public var rSteps: Int
        /// The step at which `d_max` reaches ``dMax``.
        public var dSteps: Int

        /// A schedule from its five numbers (checked when a ``BatchRenorm`` is built with it).
        public init(warmupSteps: Int, rMax: Double, dMax: Double, rSteps: Int, dSteps: Int) {
            self.warmupSteps = warmupSteps
            self.rMax = rMax
            self.dMax = dMax
            self.rSteps = rSteps
            self.dSteps = dSteps
        }

        /// The paper's ImageNet schedule (runs of ~500k steps): warm-up 5k steps, `r_max = 3` by 40k steps,
        /// `d_max = 5` by 25k steps.
        public static let paper = Schedule(warmupSteps: 5000, rMax: 3, dMax: 5, rSteps: 40000, dSteps: 25000)

        /// The paper's schedule scaled to a run of `totalSteps` training forwards: warm-up ends at 5 % of the
        /// steps, `r_max` is fully relaxed at 40 % and `d_max` at 25 % (each rounded half up to a whole step,
        /// `(totalSteps·percent + 50) / 100`).
        ///
        /// - Throws: ``NormalizationError/invalidArgument(name:value:expected:)`` if `totalSteps < 1`.
        public static func scaled(totalSteps: Int, rMax: Double = 3, dMax: Double = 5) throws -> Schedule {
            guard totalSteps >= 1, totalSteps <= Int.max / 100 - 1 else {
                throw NormalizationError.invalidArgument(
                    name: "totalSteps", value: "\(totalSteps)", expected: "1...\(Int.max / 100 - 1)")
            }
            func percent(_ p: Int) -> Int { (totalSteps * p + 50) / 100 }
            return Schedule(warmupSteps: percent(5), rMax: rMax, dMax: dMax, rSteps: percent(40), dSteps: percent(25))
        }

        /// `(r_max, d_max)` at `step` (1-based: the value of the step counter after the current forward's
        /// increment), exactly as the reference's `limits()`.
        public func limits(step: Int) -> (rMax: Double, dMax: Double) {
            if step <= warmupSteps { return (1, 0) }
            let elapsed = Double(step - warmupSteps)
            let fr = min(1, elapsed / Double(max(1, rSteps - warmupSteps)))
            let fd = min(1, elapsed / Double(max(1, dSteps - warmupSteps)))
            return (1 + (rMax - 1) * fr, dMax * fd)
        }

        func validate() throws {
            guard warmupSteps >= 0 else {
                throw NormalizationError.invalidArgument(
                    name: "schedule.warmupSteps", value: "\(warmupSteps)", expected: "at least 0")
            }
            guard rSteps >= 0, dSteps >= 0 else {
                throw NormalizationError.invalidArgument(
                    name: "schedule.rSteps/dSteps", value: "\(rSteps)/\(dSteps)", expected: "at least 0")
            }
            guard rMax >= 1, rMax.isFinite else {
                throw NormalizationError.invalidArgument(name: "schedule.rMax", value: "\(rMax)", expected: "a finite value ≥ 1")
            }
            guard dMax >= 0, dMax.isFinite else {
                throw NormalizationError.invalidArgument(name: "schedule.dMax", value: "\(dMax)", expected: "a finite value ≥ 0")
            }
        }
    }

    /// `C`.
    public let channels: Int
    /// `ε`, added to the biased batch variance inside the square root (`σ_B = sqrt(var_B + ε)`).
    public let epsilon: Float
    /// `α`, the weight of the **new** batch statistic in the running-statistics update.
    public let momentum: Float
    /// The `r_max`/`d_max` schedule.
    public let schedule: Schedule
    /// Samples per ghost batch; nil uses the whole batch.
    public let normBatch: Int?
    /// `γ` (nil with `affine: false`).
    public let weight: Parameter?
    /// `β` (nil with `affine: false`).
    public let bias: Parameter?
    /// Running mean `μ` (`running_mean`).
    public private(set) var runningMean: [Float]
    /// Running standard deviation `σ` (`running_std`, includes `ε`).
    public private(set) var runningStd: [Float]
    /// Number of training forwards (`num_batches_tracked`), the step of the schedule.
    public private(set) var batchesTracked: Int64 = 0
    /// Training forwards whose statistics were not finite and so were not folded into the running statistics.
    public private(set) var skippedUpdates: Int = 0
    /// `r` of the last training forward, indexed `ghostBatch·C + c` (diagnostics).
    public private(set) var lastR: [Float] = []
    /// `d` of the last training forward, indexed `ghostBatch·C + c` (diagnostics).
    public private(set) var lastD: [Float] = []

    /// `"BatchRenorm(C=…)"`.
    public var name: String { "BatchRenorm(C=\(channels)\(normBatch.map { ", normBatch=\($0)" } ?? ""))" }

    private var savedInput: Tensor?
    private var savedGeometry: NormalizationGeometry?
    private var mean: [Double] = []
    private var variance: [Double] = []
    private var rstd: [Double] = []
    private var rFactor: [Double] = []
    private var dShift: [Double] = []
    private var sumDy: [Double] = []
    private var sumDyCentered: [Double] = []
    private var scratch: [Float] = []
    private var centers: [Float] = []
    private var centerRounded: [Double] = []
    private var evalScale: [Float]
    private var evalShift: [Float]

    /// A Batch Renormalization layer over `channels` channels.
    ///
    /// - Parameters:
    ///   - epsilon: `ε` inside `σ_B = sqrt(var_B + ε)`.
    ///   - momentum: `α` in `0...1`, the weight of the **new** value (the reference's convention).
    ///   - schedule: the `r_max`/`d_max` relaxation; ``Schedule/paper`` is for ~500k-step runs.
    ///   - normBatch: samples per ghost batch (must divide every training batch); nil for the whole batch.
    /// - Throws: ``NormalizationError/invalidArgument(name:value:expected:)`` for out-of-range arguments.
    public init(channels: Int, epsilon: Float = 1e-5, momentum: Float = 0.01, schedule: Schedule = .paper,
                normBatch: Int? = nil, affine: Bool = true) throws {
        guard channels >= 1 else {
            throw NormalizationError.invalidArgument(name: "channels", value: "\(channels)", expected: "at least 1")
        }
        guard epsilon >= 0, epsilon.isFinite else {
            throw NormalizationError.invalidArgument(name: "epsilon", value: "\(epsilon)", expected: "a finite value ≥ 0")
        }
        guard (0...1).contains(momentum) else {
            throw NormalizationError.invalidArgument(
                name: "momentum", value: "\(momentum)", expected: "0...1 (weight of the new value)")
        }
        if let normBatch, normBatch < 1 {
            throw NormalizationError.invalidArgument(name: "normBatch", value: "\(normBatch)", expected: "at least 1")
        }
        try schedule.validate()
        self.channels = channels
        self.epsilon = epsilon
        self.momentum = momentum
        self.schedule = schedule
        self.normBatch = normBatch
        (weight, bias) = makeAffine(channels: channels, affine: affine)
        runningMean = [Float](repeating: 0, count: channels)
        runningStd = [Float](repeating: 1, count: channels)
        evalScale = [Float](repeating: 0, count: channels)
        evalShift = evalScale
    }

    /// The geometry of a training forward over `x`, after checking the ghost-batch rule and set size.
    private func trainingGeometry(_ x: Tensor) throws -> NormalizationGeometry {
        let k = normBatch ?? x.batch
        guard x.batch % k == 0 else { throw NormalizationError.normBatchDoesNotDivide(batch: x.batch, normBatch: k) }
        guard k * x.spatialCount > 1 else {
            throw NormalizationError.tooFewValuesPerChannel(layer: name, valuesPerSet: k * x.spatialCount)
        }
        return NormalizationGeometry(layout: x.layout, batch: x.batch, channels: channels,
                                     positions: x.spatialCount, samplesPerSet: k, channelsPerSet: 1)
    }

    /// Training: batch renormalization with (ghost-)batch statistics, step counter increment, running-statistics
    /// update, saves for backward. Evaluation: `y = γ·(x − μ)/σ + β`, touching no state.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try InputCheck.validate(x, channels: channels, layer: name)
        guard training else {
            evaluate(x, into: &y)
            return
        }
        let g = try trainingGeometry(x)
        if mean.count != g.setCount {
            mean = [Double](repeating: 0, count: g.setCount)
            variance = mean
            rstd = mean
            rFactor = mean
            dShift = mean
            lastR = [Float](repeating: 1, count: g.setCount)
            lastD = [Float](repeating: 0, count: g.setCount)
            centers = [Float](repeating: 0, count: g.setCount)
        }
        if scratch.count < 2 * g.coefficientCount + 2 * g.setCount {
            scratch = [Float](repeating: 0, count: 2 * g.coefficientCount + 2 * g.setCount)
        }
        x.withUnsafeBufferPointer { xp in
            mean.withUnsafeMutableBufferPointer { mp in
                variance.withUnsafeMutableBufferPointer { vp in
                    NormalizationKernels.statistics(mean: mp.baseAddress!, variance: vp.baseAddress!,
                                                    x: xp.baseAddress!, geometry: g)
                }
            }
        }
        batchesTracked += 1
        let (rMax, dMax) = schedule.limits(step: Int(batchesTracked))
        let eps = Double(epsilon), c = channels
        // Coefficients per (ghost batch, channel): y = a·(x − k) + b with a = γ·r/σ_B, k = μ_B rounded to float,
        // b = β + γ·d − a·(μ_B − k). Not folded into a·x + b', which loses accuracy when |μ_B| ≫ σ_B.
        for b in 0..<g.sampleBlocks {
            for ch in 0..<c {
                let s = b * c + ch
                let sigmaB = (variance[s] + eps).squareRoot()
                let sigma = Double(runningStd[ch]), mu = Double(runningMean[ch])
                let r = clip(sigmaB / sigma, 1 / rMax, rMax)
                let d = clip((mean[s] - mu) / sigma, -dMax, dMax)
                rstd[s] = 1 / sigmaB
                rFactor[s] = r
                dShift[s] = d
                lastR[s] = Float(r)
                lastD[s] = Float(d)
                let gamma = Double(weight?.value[ch] ?? 1), beta = Double(bias?.value[ch] ?? 0)
                let a = gamma * r / sigmaB, k = Float(mean[s])
                centers[s] = k
                scratch[s] = Float(a)
                scratch[g.coefficientCount + s] = Float(beta + gamma * d - a * (mean[s] - Double(k)))
            }
        }
        y.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                scratch.withUnsafeBufferPointer { sp in
                    NormalizationKernels.applyCentered(y: yp.baseAddress!, x: xp.baseAddress!, center: centers,
                                                       scale: sp.baseAddress!,
                                                       shift: sp.baseAddress! + g.coefficientCount, geometry: g)
                }
            }
        }
        updateRunningStatistics(geometry: g)
        savedInput = x
        savedGeometry = g
    }

    /// `min(max(v, lo), hi)`, propagating NaN.
    @inline(__always) private func clip(_ v: Double, _ lo: Double, _ hi: Double) -> Double {
        v.isNaN ? v : min(max(v, lo), hi)
    }

    private func updateRunningStatistics(geometry g: NormalizationGeometry) {
        let eps = Double(epsilon)
        guard mean.allSatisfy(\.isFinite), variance.allSatisfy({ ($0 + eps).squareRoot().isFinite }) else {
            skippedUpdates += 1
            return
        }
        let alpha = Double(momentum), blocks = Double(g.sampleBlocks)
        for c in 0..<channels {
            var mu = 0.0, sigma = 0.0
            for b in 0..<g.sampleBlocks {
                mu += mean[b * channels + c]
                sigma += (variance[b * channels + c] + eps).squareRoot()
            }
            let rm = Double(runningMean[c]), rs = Double(runningStd[c])
            runningMean[c] = Float(rm + alpha * (mu / blocks - rm))
            runningStd[c] = Float(rs + alpha * (sigma / blocks - rs))
        }
    }

    private func evaluate(_ x: Tensor, into y: inout Tensor) {
        let g = NormalizationGeometry(layout: x.layout, batch: x.batch, channels: channels,
                                      positions: x.spatialCount, samplesPerSet: x.batch, channelsPerSet: 1)
        for c in 0..<channels {
            evalScale[c] = Float(Double(weight?.value[c] ?? 1) / Double(runningStd[c]))
            evalShift[c] = bias?.value[c] ?? 0
        }
        y.prepare(shape: x.shape, layout: x.layout)
        // y = a·(x − μ) + β, not folded into a·x + b (accurate when |μ| ≫ σ).
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                NormalizationKernels.applyCentered(y: yp.baseAddress!, x: xp.baseAddress!, center: runningMean,
                                                   scale: evalScale, shift: evalShift, geometry: g)
            }
        }
    }

    /// The backward of the last training forward with `r`, `d` held constant: BN's backward per (ghost batch,
    /// channel) with `g = γ_c·r·dy`, i.e. `dx = (1/σ_B)·(g − mean(g) − x̂_B·mean(g·x̂_B))` where
    /// `x̂_B = (x − μ_B)/σ_B`; `dγ_c = Σ dy·x̂` with `x̂ = x̂_B·r + d`, `dβ_c = Σ dy`.
    ///
    /// Computed from the per-(n, c) sums `Σdy`, `Σdy·(x − μ̃)` around `μ̃ = float(μ_B)` (exact differences),
    /// corrected to `μ_B` in Double, then one `dx = p·dy + q·(x − μ̃) + o` pass: accurate even when
    /// `|μ_B| ≫ σ_B`. (`NormalizationKernels.normalizeBackward` would be the fused equivalent, but its
    /// channels-first path drops `μ_B − μ̃`, which costs accuracy in that regime.)
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        guard let x = savedInput, let g = savedGeometry else {
            throw NormalizationError.backwardBeforeForward(layer: name)
        }
        try InputCheck.validateGradient(dy, like: x)
        if sumDy.count != g.batch * channels {
            sumDy = [Double](repeating: 0, count: g.batch * channels)
            sumDyCentered = sumDy
        }
        // `scratch` holds p (coefficients), q and o (sets); `centerRounded` the float-exact centres.
        if scratch.count < 2 * g.coefficientCount + 2 * g.setCount {
            scratch = [Float](repeating: 0, count: 2 * g.coefficientCount + 2 * g.setCount)
        }
        if centerRounded.count != g.setCount { centerRounded = [Double](repeating: 0, count: g.setCount) }
        for s in 0..<g.setCount { centerRounded[s] = Double(Float(mean[s])) }
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                sumDy.withUnsafeMutableBufferPointer { s1 in
                    sumDyCentered.withUnsafeMutableBufferPointer { s2 in
                        NormalizationKernels.gradientSums(sumDy: s1.baseAddress!, sumDyCentered: s2.baseAddress!,
                                                          dy: dyp.baseAddress!, x: xp.baseAddress!,
                                                          center: centerRounded, geometry: g)
                    }
                }
            }
        }
        let k = g.samplesPerSet, c = channels, count = Double(g.elementsPerSet)
        let slopeBase = g.coefficientCount, offsetBase = g.coefficientCount + g.setCount
        for b in 0..<g.sampleBlocks {
            for ch in 0..<c {
                let s = b * c + ch, delta = mean[s] - centerRounded[s]
                var s1 = 0.0, s2 = 0.0
                for n in (b * k)..<((b + 1) * k) {
                    let i = n * c + ch
                    sumDyCentered[i] -= delta * sumDy[i]          // Σdy·(x − μ_B)
                    s1 += sumDy[i]
                    s2 += sumDyCentered[i]
                }
                let rs = rstd[s], ge = Double(weight?.value[ch] ?? 1) * rFactor[s]
                let meanG = ge * s1 / count, meanGX = ge * s2 * rs / count
                let q = -rs * rs * meanGX
                scratch[s] = Float(rs * ge)
                scratch[slopeBase + s] = Float(q)
                scratch[offsetBase + s] = Float(-rs * meanG - q * delta)
            }
        }
        dx.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    scratch.withUnsafeBufferPointer { sp in
                        NormalizationKernels.gradientApply(dx: dxp.baseAddress!, dy: dyp.baseAddress!,
                                                           x: xp.baseAddress!, center: centerRounded,
                                                           scale: sp.baseAddress!, slope: sp.baseAddress! + slopeBase,
                                                           offset: sp.baseAddress! + offsetBase, geometry: g)
                    }
                }
            }
        }
        setAffineGradients(weight: weight, bias: bias, batch: g.batch, channels: channels,
                           sumDy: sumDy, sumDyCentered: sumDyCentered,
                           scale: { [rstd, rFactor] n, ch in rstd[(n / k) * c + ch] * rFactor[(n / k) * c + ch] },
                           offset: { [dShift] n, ch in dShift[(n / k) * c + ch] })
        savedInput = nil
        savedGeometry = nil
    }

    /// `weight`, `bias` (when affine), `running_mean`, `running_std`, `num_batches_tracked` (int64 scalar,
    /// shape `[]`), as the reference `BatchRenorm2d`.
    public func stateDict() -> [String: StateTensor] {
        var state: [String: StateTensor] = [
            "running_mean": .float32(shape: [channels], values: runningMean),
            "running_std": .float32(shape: [channels], values: runningStd),
            "num_batches_tracked": .int64(shape: [], values: [batchesTracked]),
        ]
        if let weight { state["weight"] = .float32(shape: [channels], values: weight.value) }
        if let bias { state["bias"] = .float32(shape: [channels], values: bias.value) }
        return state
    }

    /// Restores everything ``stateDict()`` writes; nothing changes if any entry is missing, has the wrong shape
    /// or dtype, `running_std` is not positive and finite, or `num_batches_tracked` is negative.
    public func loadStateDict(_ state: [String: StateTensor]) throws {
        let rm = try state.floats("running_mean", shape: [channels], layer: name)
        let rs = try state.floats("running_std", shape: [channels], layer: name)
        guard rs.allSatisfy({ $0 > 0 && $0.isFinite }) else {
            throw NormalizationError.invalidState(layer: name, name: "running_std", reason: "must be positive and finite")
        }
        let tracked = try state.scalarInt("num_batches_tracked", layer: name)
        guard tracked >= 0 else {
            throw NormalizationError.invalidState(layer: name, name: "num_batches_tracked", reason: "must be ≥ 0")
        }
        var w: [Float]?, b: [Float]?
        if weight != nil {
            w = try state.floats("weight", shape: [channels], layer: name)
            b = try state.floats("bias", shape: [channels], layer: name)
        }
        runningMean = rm
        runningStd = rs
        batchesTracked = tracked
        if let w, let b { weight?.value = w; bias?.value = b }
    }
}
