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
/// **Non-finite batches.** If any `μ_B` or `σ_B`, or a new running value, is NaN or infinite the running statistics
/// are left unchanged and ``skippedUpdates`` is incremented (the step counter still advances); the output is still
/// computed. BatchNorm follows the same rule (one fold for both).
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
        /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` if `totalSteps < 1`.
        public static func scaled(totalSteps: Int, rMax: Double = 3, dMax: Double = 5) throws -> Schedule {
            guard totalSteps >= 1, totalSteps <= Int.max / 100 - 1 else {
                throw NormalizationError.invalidArgument(
                    layer: "BatchRenorm.Schedule", name: "totalSteps",
                    value: "\(totalSteps)", expected: "1...\(Int.max / 100 - 1)")
            }
            func percent(_ p: Int) -> Int { (totalSteps * p + 50) / 100 }
            return Schedule(warmupSteps: percent(5), rMax: rMax, dMax: dMax, rSteps: percent(40), dSteps: percent(25))
        }

        /// `(r_max, d_max)` at `step` (1-based: the value of the step counter after the current forward's
        /// increment), exactly as the reference's `limits()`.
        ///
        /// The differences of steps are taken in `Double`, so any numbers (a schedule is checked only when a layer is
        /// built with it) give limits in `[1, rMax]` and `[0, dMax]` rather than an overflow.
        public func limits(step: Int) -> (rMax: Double, dMax: Double) {
            if step <= warmupSteps { return (1, 0) }
            let warmup = Double(warmupSteps), elapsed = Double(step) - warmup
            let fr = min(1, elapsed / max(1, Double(rSteps) - warmup))
            let fd = min(1, elapsed / max(1, Double(dSteps) - warmup))
            return (1 + (rMax - 1) * fr, dMax * fd)
        }

        /// Throws ``NormalizationError/invalidArgument(layer:name:value:expected:)`` naming `layer` for a number
        /// out of range.
        func validate(layer: String) throws {
            guard warmupSteps >= 0 else {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: "schedule.warmupSteps", value: "\(warmupSteps)", expected: "at least 0")
            }
            guard rSteps >= 0, dSteps >= 0 else {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: "schedule.rSteps/dSteps", value: "\(rSteps)/\(dSteps)", expected: "at least 0")
            }
            guard rMax >= 1, rMax.isFinite else {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: "schedule.rMax", value: "\(rMax)", expected: "a finite value ≥ 1")
            }
            guard dMax >= 0, dMax.isFinite else {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: "schedule.dMax", value: "\(dMax)", expected: "a finite value ≥ 0")
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
    /// The activation fused into the apply stage (``FusedActivation``): the output is `act(norm(x))` and the
    /// backward takes its gradient. Set it between steps, not between a forward and its backward.
    public var activation: FusedActivation = .identity
    /// Running mean `μ` (`running_mean`).
    public private(set) var runningMean: [Float]
    /// Running standard deviation `σ` (`running_std`, includes `ε`).
    public private(set) var runningStd: [Float]
    /// Number of training forwards (`num_batches_tracked`), the step of the schedule.
    public private(set) var batchesTracked: Int64 = 0
    /// Training forwards whose statistics were not finite and so were not folded into the running statistics.
    public private(set) var skippedUpdates: Int = 0
    /// Per-worker BRN in data-parallel training: replaces the running mean and standard deviation by their averages
    /// over the workers of `reduction`, so that every worker keeps the same ones. After a training step this is the
    /// update ghost batches make in one process (once per forward, by the average of the batches' `μ_B` and `σ_B`),
    /// to float rounding. Nothing changes if the reduction throws.
    public func averageRunningStatistics(over reduction: CrossWorkerReduction) throws {
        try reduction.average(&runningMean, &runningStd, scratch: &synchronizationBuffer, layer: name)
    }

    private var synchronizationBuffer: [Double] = []
    private var runningFold = RunningStatisticsFold()

    /// `r` of the last training forward, indexed `ghostBatch·C + c` (diagnostics).
    public private(set) var lastR: [Float] = []
    /// `d` of the last training forward, indexed `ghostBatch·C + c` (diagnostics).
    public private(set) var lastD: [Float] = []

    /// `"BatchRenorm(channels: 64)"`, with `normBatch` and `affine: false` when set.
    public var name: String { BatchRenorm.describe(channels: channels, normBatch: normBatch, affine: weight != nil) }

    /// The ``name`` of a BatchRenorm built with these arguments.
    static func describe(channels: Int, normBatch: Int?, affine: Bool) -> String {
        layerName("BatchRenorm", channels: channels, [normBatch.map { "normBatch: \($0)" }], affine: affine)
    }

    private var pending = PendingForward()
    /// The fused training pipeline (statistics → ``Renormalization`` → coefficients → apply, and its backward).
    private var workspace = StatisticsWorkspace()
    private var evaluation = EvaluationAffine()

    /// A Batch Renormalization layer over `channels` channels.
    ///
    /// - Parameters:
    ///   - channels: `C`, the size of dimension 1 of every input (`≥ 1`).
    ///   - epsilon: `ε > 0` inside `σ_B = sqrt(var_B + ε)`.
    ///   - momentum: `α` in `0...1`, the weight of the **new** value (the reference's convention).
    ///   - schedule: the `r_max`/`d_max` relaxation; ``Schedule/paper`` is for ~500k-step runs.
    ///   - normBatch: samples per ghost batch (must divide every training batch); nil for the whole batch.
    ///   - affine: whether the layer has a learnable per-channel `γ` (``weight``) and `β` (``bias``); `false`
    ///     leaves both nil (`y = x̂`).
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for out-of-range arguments;
    ///   ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when a per-channel vector needs more bytes than this
    ///   machine's physical memory.
    public init(
        channels: Int, epsilon: Float = 1e-5, momentum: Float = 0.01, schedule: Schedule = .paper,
        normBatch: Int? = nil, affine: Bool = true
    ) throws {
        let layer = BatchRenorm.describe(channels: channels, normBatch: normBatch, affine: affine)
        try LayerArgument.validate(
            layer: layer, .channels(channels), .epsilon(epsilon),
            .fraction("momentum", momentum, meaning: "weight of the new value"), .normBatch(normBatch),
            .perChannel(channels))
        try schedule.validate(layer: layer)
        self.channels = channels
        self.epsilon = epsilon
        self.momentum = momentum
        self.schedule = schedule
        self.normBatch = normBatch
        (weight, bias) = makeAffine(channels: channels, affine: affine)
        runningMean = [Float](repeating: 0, count: channels)
        runningStd = [Float](repeating: 1, count: channels)
    }

    /// Training: batch renormalization with (ghost-)batch statistics, step counter increment, running-statistics
    /// update, saves for backward. Evaluation: `y = γ·(x − μ)/σ + β`, touching no state.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try InputCheck.validate(x, channels: channels, layer: name)
        guard training else {
            evaluate(x, into: &y)
            return
        }
        let g = try NormalizationGeometry.varianceGhostBatches(x, channels: channels, normBatch: normBatch, layer: name)
        batchesTracked += 1
        let (rMax, dMax) = schedule.limits(step: Int(batchesTracked))
        let rule = Renormalization(
            runningMean: runningMean, runningStd: runningStd, rMax: rMax, dMax: dMax, epsilon: Double(epsilon))
        workspace.normalize(
            x, into: &y, gamma: weight?.value, beta: bias?.value, epsilon: epsilon, rule: rule,
            activation: activation, geometry: g)
        if lastR.count != g.setCount {
            lastR = [Float](repeating: 1, count: g.setCount)
            lastD = [Float](repeating: 0, count: g.setCount)
        }
        for s in 0..<g.setCount {
            lastR[s] = Float(workspace.gain[s])
            lastD[s] = Float(workspace.offset[s])
        }
        updateRunningStatistics(geometry: g)
        pending.save(x, g)
    }

    /// BRN's ``NormalizationRule``: per (ghost batch, channel), `gain = r = clip(σ_B/σ, 1/r_max, r_max)` and
    /// `offset = d = clip((μ_B − μ)/σ, −d_max, d_max)` with `σ_B = sqrt(var_B + ε)` and the running `μ`, `σ` from
    /// before this forward; the fused kernels then compute `y = γ·(r·x̂ + d) + β` and, holding `r` and `d`
    /// constant, BN's backward with `γ·r` (in Double) and `dγ = Σ dy·(r·x̂ + d)`.
    struct Renormalization: NormalizationRule {
        let runningMean: [Float], runningStd: [Float], rMax: Double, dMax: Double, epsilon: Double

        @inline(__always)
        func setAffine(
            set: Int, channel c: Int, mean: Double, variance: Double, rstd: Double
        )
            -> (gain: Double, offset: Double)
        {
            let sigma = Double(runningStd[c])
            return (
                clip((variance + epsilon).squareRoot() / sigma, 1 / rMax, rMax),
                clip((mean - Double(runningMean[c])) / sigma, -dMax, dMax)
            )
        }

        /// `min(max(v, lo), hi)`, propagating NaN.
        @inline(__always) private func clip(_ v: Double, _ lo: Double, _ hi: Double) -> Double {
            v.isNaN ? v : min(max(v, lo), hi)
        }
    }

    /// Folds the average `μ_B` and `σ_B` into the running mean and standard deviation, or counts a skipped update
    /// when a value is not finite.
    private func updateRunningStatistics(geometry g: NormalizationGeometry) {
        let eps = Double(epsilon), variance = workspace.variance
        if !runningFold.fold(
            mean: &runningMean, spread: &runningStd, batchMean: workspace.mean,
            batchSpread: { (variance[$0] + eps).squareRoot() }, sampleBlocks: g.sampleBlocks, momentum: momentum)
        {
            skippedUpdates += 1
        }
    }

    /// `y = γ·(x − μ)/σ + β` with the running `μ` and `σ`.
    private func evaluate(_ x: Tensor, into y: inout Tensor) {
        evaluation.apply(
            x, into: &y, gamma: weight?.value, beta: bias?.value, center: runningMean, spread: runningStd,
            form: .standardDeviation, activation: activation)
    }

    /// The backward of the last training forward with `r`, `d` held constant: BN's backward per (ghost batch,
    /// channel) with `g = γ_c·r·dy`, i.e. `dx = (1/σ_B)·(g − mean(g) − x̂_B·mean(g·x̂_B))` where
    /// `x̂_B = (x − μ_B)/σ_B`; `dγ_c = Σ dy·x̂` with `x̂ = x̂_B·r + d`, `dβ_c = Σ dy`. The fused backward of the
    /// pipeline, `γ·r` kept in Double; accurate even when `|μ_B| ≫ σ_B` (rows centred on the float `μ_B`).
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        let (x, g) = try pending.forBackward(of: dy, layer: name)
        workspace.backward(dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g)
        pending.clear()
    }

    /// `weight`, `bias` (when affine), `running_mean`, `running_std`, `num_batches_tracked` (int64 scalar,
    /// shape `[]`), as the reference `BatchRenorm2d`.
    public func stateDict() -> [String: StateTensor] {
        checkpoint.entries(
            weight: weight, bias: bias, runningMean: runningMean, runningSpread: runningStd,
            batchesTracked: batchesTracked)
    }

    /// Restores what ``stateDict()`` writes (strict: exactly those keys; see
    /// ``NormalizationLayer/loadStateDict(_:strict:)``); nothing changes if it throws (also for a wrong shape or
    /// dtype, a `running_std` that is not positive and finite, or a negative `num_batches_tracked`).
    @discardableResult
    public func loadStateDict(_ state: [String: StateTensor], strict: Bool) throws -> StateDictLoadResult {
        try checkpoint.load(
            state, strict: strict, runningMean: &runningMean, runningSpread: &runningStd,
            batchesTracked: &batchesTracked, weight: weight, bias: bias)
    }

    /// The state-dict layout: the standard deviation under `running_std` (positive and finite), a step counter (≥ 0).
    private var checkpoint: RunningStatisticsCheckpoint {
        RunningStatisticsCheckpoint(
            layer: name, channels: channels, spreadName: "running_std",
            spreadRequirement: .positiveFinite, stepCounter: .nonNegative)
    }
}
