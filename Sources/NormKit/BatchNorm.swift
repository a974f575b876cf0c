/// Batch Normalization (Ioffe & Szegedy, 2015) with ghost batches.
///
/// Training normalizes each channel by the mean and biased variance over the batch and all spatial positions;
/// evaluation uses the running statistics.
///
/// Conventions (spec section 2), PyTorch's:
/// - `momentum` (default `0.1`) weights the **new** value:
///   `running ← (1 − momentum)·running + momentum·batch`. Keras and Flax write `0.99` for the same thing
///   (the weight on the old value): pass `1 − theirs`.
/// - The running variance is **unbiased** (`var_B · m/(m−1)`); normalization uses the biased variance.
/// - `ε` (default `1e-5`) inside the square root.
/// - A training batch with a single value per channel (per ghost batch) is an error, as in PyTorch.
///
/// **Ghost batches.** With `normBatch = k`, statistics are computed separately over each run of `k`
/// consecutive samples, as `N/k` devices with `k` samples each would compute them (the papers' "batch size
/// per GPU"). `k` must divide the batch size (an error otherwise). The running statistics are updated
/// **once per forward with the average** over the ghost batches of their means and unbiased variances, so
/// `momentum` means the same per step whatever `k` is. `normBatch == N` (or nil) is ordinary BN.
///
/// **SyncBN.** With ``crossWorkerReduction`` set (a data-parallel job's communicator), training statistics are
/// those of the global batch over every worker (spec section 9): each worker's per-channel (count, mean, M2) are
/// gathered and merged between the statistics and coefficients stages, and the backward sums `Σdy`, `Σdy·x̂` over
/// workers for `dx`; exact for unequal per-worker batches. `dγ` and `dβ` stay **this worker's sums**, as in
/// PyTorch's `SyncBatchNorm`: the spec's global `dγ = Σdy·x̂`, `dβ = Σdy` are their sum over the workers, which the
/// data-parallel step's reduction of parameter gradients forms (NormKitTraining's trainer sums every parameter's
/// gradient over the workers). Without it, BN on a worker is per-worker BN.
///
/// **Non-finite batches.** If any batch statistic, or a new running value (a variance finite in Double can
/// overflow Float), is NaN or infinite the running statistics are left unchanged and ``skippedUpdates`` is
/// incremented; the output is still computed (and non-finite).
public final class BatchNorm: NormalizationLayer {
    /// `C`.
    public let channels: Int
    /// `ε`.
    public let epsilon: Float
    /// PyTorch-convention momentum: the weight of the new batch statistic.
    public let momentum: Float
    /// Samples per ghost batch; nil uses the whole batch.
    public let normBatch: Int?
    /// `γ` (nil with `affine: false`).
    public let weight: Parameter?
    /// `β` (nil with `affine: false`).
    public let bias: Parameter?
    /// The activation fused into the apply stage (``FusedActivation``): the output is `act(norm(x))` and the
    /// backward takes its gradient. Set it between steps, not between a forward and its backward.
    public var activation: FusedActivation = .identity
    /// SyncBN's reduction across workers (nil: statistics of this process's batch). Not with ``normBatch``.
    public var crossWorkerReduction: CrossWorkerReduction?
    /// Running mean (`running_mean`).
    public private(set) var runningMean: [Float]
    /// Running unbiased variance (`running_var`).
    public private(set) var runningVariance: [Float]
    /// Number of training forwards (`num_batches_tracked`).
    public private(set) var batchesTracked: Int64 = 0
    /// Training forwards whose statistics were not finite and so were not folded into the running statistics.
    public private(set) var skippedUpdates: Int = 0

    /// `"BatchNorm(channels: 64)"`, with `normBatch` and `affine: false` when set.
    public var name: String { BatchNorm.describe(channels: channels, normBatch: normBatch, affine: weight != nil) }

    /// The ``name`` of a BatchNorm built with these arguments.
    static func describe(channels: Int, normBatch: Int?, affine: Bool) -> String {
        layerName("BatchNorm", channels: channels, [normBatch.map { "normBatch: \($0)" }], affine: affine)
    }

    private var pending = PendingForward()
    /// The reduction of the pending training forward (its backward must use the same one).
    private var savedReduction: CrossWorkerReduction?
    private var workspace = StatisticsWorkspace()
    /// SyncBN's reductions and their buffer.
    private var synchronization = SynchronizedStatistics()
    private var evaluation = EvaluationAffine()
    // The next running statistics, built here and swapped in when finite (no allocation per step).
    private var runningFold = RunningStatisticsFold()

    /// A BatchNorm over `channels` channels.
    ///
    /// - Parameters:
    ///   - channels: `C`, the size of dimension 1 of every input (`≥ 1`).
    ///   - epsilon: `ε > 0` inside the square root, `1 / sqrt(var + ε)`.
    ///   - momentum: PyTorch convention, in `0...1`, the weight of the new statistic.
    ///   - normBatch: samples per ghost batch (must divide every training batch); nil for the whole batch.
    ///   - affine: whether the layer has a learnable per-channel `γ` (``weight``) and `β` (``bias``); `false`
    ///     leaves both nil (`y = x̂`).
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for out-of-range arguments;
    ///   ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when a per-channel vector needs more bytes than this
    ///   machine's physical memory.
    public init(
        channels: Int, epsilon: Float = 1e-5, momentum: Float = 0.1, normBatch: Int? = nil, affine: Bool = true
    ) throws {
        try LayerArgument.validate(
            layer: BatchNorm.describe(channels: channels, normBatch: normBatch, affine: affine),
            .channels(channels), .epsilon(epsilon),
            .fraction("momentum", momentum, meaning: "PyTorch convention: weight of the new value"),
            .normBatch(normBatch), .perChannel(channels))
        self.channels = channels
        self.epsilon = epsilon
        self.momentum = momentum
        self.normBatch = normBatch
        (weight, bias) = makeAffine(channels: channels, affine: affine)
        runningMean = [Float](repeating: 0, count: channels)
        runningVariance = [Float](repeating: 1, count: channels)
    }

    /// Training: batch (or ghost-batch) statistics, running-statistics update, saves for backward.
    /// Evaluation: `y = γ·(x − running_mean)/sqrt(running_var + ε) + β`, touching no state (a pending training
    /// forward can still be backpropagated after it).
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try InputCheck.validate(x, channels: channels, layer: name)
        guard training else {
            try evaluate(x, into: &y)
            return
        }
        if let reduction = crossWorkerReduction {
            guard normBatch == nil else {
                throw NormalizationError.invalidArgument(
                    layer: name, name: "normBatch", value: "\(normBatch!)",
                    expected: "nil with crossWorkerReduction (SyncBN normalizes over the global batch)")
            }
            // The kernels' form (an `(N, C)` input: one matrix in either layout).
            let g = NormalizationGeometry.perChannel(x, channels: channels).kernelForm
            try synchronizedForward(x, into: &y, over: reduction, geometry: g)
            updateRunningStatistics(geometry: g, count: synchronization.count)
            pending.save(x, g)
            savedReduction = reduction
            return
        }
        let g = try NormalizationGeometry.varianceGhostBatches(x, channels: channels, normBatch: normBatch, layer: name)
        workspace.normalize(
            x, into: &y, gamma: weight?.value, beta: bias?.value, epsilon: epsilon, activation: activation, geometry: g)
        updateRunningStatistics(geometry: g, count: Double(g.elementsPerSet))
        pending.save(x, g)
        savedReduction = nil
    }

    /// Folds the last forward's statistics (`count` values per set) into the running statistics (the variance
    /// unbiased by `m/(m − 1)`), or counts a skipped update when a value is not finite.
    private func updateRunningStatistics(geometry g: NormalizationGeometry, count m: Double) {
        batchesTracked &+= 1  // any loaded value (PyTorch's int64 counter, which BN never reads): wraps as PyTorch's
        let variance = workspace.variance, unbias = m / (m - 1)
        if !runningFold.fold(
            mean: &runningMean, spread: &runningVariance, batchMean: workspace.mean,
            batchSpread: { unbias * variance[$0] }, sampleBlocks: g.sampleBlocks, momentum: momentum)
        {
            skippedUpdates += 1
        }
    }

    /// Per-worker BN in a data-parallel run: replaces the running mean and variance by their average over the
    /// workers of `reduction`, so that every worker keeps the same running statistics. After a training step this
    /// is the update ghost batches make in one process (the running statistics move by the average of the
    /// workers' batch statistics), to float rounding. Nothing changes if the reduction throws.
    public func averageRunningStatistics(over reduction: CrossWorkerReduction) throws {
        try reduction.average(&runningMean, &runningVariance, scratch: &synchronizationBuffer, layer: name)
    }

    private var synchronizationBuffer: [Double] = []

    private func evaluate(_ x: Tensor, into y: inout Tensor) throws {
        evaluation.apply(
            x, into: &y, gamma: weight?.value, beta: bias?.value, center: runningMean, spread: runningVariance,
            form: .variance(epsilon: epsilon), activation: activation)
    }

    /// The backward of the training forward: per (ghost batch, channel)
    /// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` with `g = γ_c·dy`; `dγ_c = Σ dy·x̂`, `dβ_c = Σ dy`.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        let (x, g) = try pending.forBackward(of: dy, layer: name)
        if let reduction = savedReduction {
            try synchronizedBackward(dy, input: x, into: &dx, over: reduction, geometry: g)
        } else {
            workspace.backward(dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g)
        }
        savedReduction = nil
        pending.clear()
    }

    /// SyncBN's training forward (spec section 9), on the engine's staged pass: this worker's per-channel statistics
    /// → those of every worker's batch (``SynchronizedStatistics``) → `a = γ·rstd`, `k = μ`, `b = β` → apply.
    private func synchronizedForward(
        _ x: Tensor, into y: inout Tensor, over reduction: CrossWorkerReduction, geometry g: NormalizationGeometry
    ) throws {
        let gamma = weight?.value, beta = bias?.value, eps = Double(epsilon), localCount = Double(g.elementsPerSet)
        try workspace.normalizeStaged(x, into: &y, activation: activation, geometry: g) { mean, variance, affines in
            try synchronization.merge(
                mean: &mean, variance: &variance, localCount: localCount, over: reduction, layer: self.name)
            for c in 0..<g.channels {
                affines.scale[c] = Double(gamma?[c] ?? 1) / (variance[c] + eps).squareRoot()
                (affines.center[c], affines.shift[c]) = (mean[c], Double(beta?[c] ?? 0))
            }
        }
    }

    /// SyncBN's backward: `Σ dz` and `Σ dz·(x − μ)` summed over every worker give
    /// `dx = γ·rstd·(dz − Σdz/n − x̂·Σdz·x̂/n)` with `n` the global count; `dγ`, `dβ` are this worker's sums (the
    /// data-parallel step sums parameter gradients over workers like every other gradient, which makes them the
    /// spec's global sums).
    private func synchronizedBackward(
        _ dy: Tensor, input x: Tensor, into dx: inout Tensor, over reduction: CrossWorkerReduction,
        geometry g: NormalizationGeometry
    ) throws {
        let gamma = weight?.value, variance = workspace.variance, eps = Double(epsilon)
        let count = synchronization.count, c = g.channels
        try workspace.backwardStaged(dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g) {
            sumDy, sumDyCentered, gradients in
            try synchronization.sumGradients(
                sumDy, sumDyCentered, batch: g.batch, channels: c, over: reduction, layer: self.name)
            let totals = synchronization.totals
            for ch in 0..<c {
                let r = 1 / (variance[ch] + eps).squareRoot(), ge = Double(gamma?[ch] ?? 1)
                let meanG = ge * totals[ch] / count, meanGX = ge * totals[c + ch] * r / count
                (gradients.scale[ch], gradients.slope[ch]) = (r * ge, -r * r * meanGX)
                (gradients.offset[ch], gradients.gammaScale[ch]) = (-r * meanG, r)
            }
        }
    }

    /// `weight`, `bias` (when affine), `running_mean`, `running_var`, `num_batches_tracked` (int64 scalar),
    /// as PyTorch's `nn.BatchNorm2d`.
    public func stateDict() -> [String: StateTensor] {
        checkpoint.entries(
            weight: weight, bias: bias, runningMean: runningMean, runningSpread: runningVariance,
            batchesTracked: batchesTracked)
    }

    /// Restores what ``stateDict()`` writes (strict: exactly those keys; see
    /// ``NormalizationLayer/loadStateDict(_:strict:)``); nothing changes if it throws (a wrong shape or dtype;
    /// any value is accepted, as PyTorch).
    @discardableResult
    public func loadStateDict(_ state: [String: StateTensor], strict: Bool) throws -> StateDictLoadResult {
        try checkpoint.load(
            state, strict: strict, runningMean: &runningMean, runningSpread: &runningVariance,
            batchesTracked: &batchesTracked, weight: weight, bias: bias)
    }

    /// The state-dict layout: the variance under `running_var`, any values, a step counter.
    private var checkpoint: RunningStatisticsCheckpoint {
        RunningStatisticsCheckpoint(
            layer: name, channels: channels, spreadName: "running_var", spreadRequirement: nil, stepCounter: .anyValue)
    }
}
