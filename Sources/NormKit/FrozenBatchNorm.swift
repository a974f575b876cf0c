/// Frozen Batch Normalization (BN*, spec section 2), the GN paper's detection baseline and torchvision's
/// `FrozenBatchNorm2d`: a fixed per-channel affine map from stored statistics, **identical in training and
/// evaluation** (no batch statistics at all, nothing is ever updated by a forward):
/// ```
/// scale = γ / sqrt(running_var + ε)
/// y     = x·scale + (β − running_mean·scale)     // computed as scale·(x − running_mean) + β
/// ```
/// (The centred form keeps float32 accuracy when |running_mean| dwarfs the spread of `x`.) Conventions: `running_var`
/// is used as stored (PyTorch stores BN's unbiased running variance); `ε` (default `1e-5`) inside the square root.
///
/// `γ` and `β` always exist; they are frozen (``Parameter/isTrainable`` `false`) unless built with
/// `trainableAffine: true`. Their gradients are computed either way: `dγ_c = Σ dy·(x − running_mean)/sqrt(running_var
/// + ε)`, `dβ_c = Σ dy`, and `dx = scale·dy`.
///
/// A training forward saves `x` for ``backward(_:into:)``; an evaluation forward touches no state.
public final class FrozenBatchNorm: NormalizationLayer {
    /// `C`.
    public let channels: Int
    /// `ε`, added to `running_var` inside the square root.
    public let epsilon: Float
    /// `γ` (`weight`), trainable only with `trainableAffine: true`.
    public let weight: Parameter?
    /// `β` (`bias`), trainable only with `trainableAffine: true`.
    public let bias: Parameter?
    /// The activation fused into the apply stage (``FusedActivation``): the output is `act(norm(x))` and the
    /// backward takes its gradient. Set it between steps, not between a forward and its backward.
    public var activation: FusedActivation = .identity
    /// The frozen mean (`running_mean`).
    public private(set) var runningMean: [Float]
    /// The frozen variance (`running_var`), used as stored.
    public private(set) var runningVariance: [Float]

    /// `"FrozenBatchNorm(channels: 64)"`.
    public var name: String { layerName("FrozenBatchNorm", channels: channels) }

    private var pending = PendingForward()
    /// The engine's apply stage and staged backward (no statistics stage: the affine is fixed).
    private var workspace = StatisticsWorkspace()

    /// A frozen BN with `running_mean = 0`, `running_var = 1`, `γ = 1`, `β = 0`.
    ///
    /// - Parameters:
    ///   - channels: `C`, the size of dimension 1 of every input (`≥ 1`).
    ///   - epsilon: `ε > 0` inside the square root, `1 / sqrt(running_var + ε)`.
    ///   - trainableAffine: whether an optimizer may update `γ`, `β` (their ``Parameter/isTrainable``).
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for `channels < 1` or a
    ///   negative or non-finite `epsilon`; ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when a
    ///   per-channel vector needs more bytes than this machine's physical memory.
    public init(channels: Int, epsilon: Float = 1e-5, trainableAffine: Bool = false) throws {
        try LayerArgument.validate(
            layer: layerName("FrozenBatchNorm", channels: channels), .channels(channels), .epsilon(epsilon),
            .perChannel(channels))
        self.channels = channels
        self.epsilon = epsilon
        let (w, b) = makeAffine(channels: channels, affine: true)
        w?.isTrainable = trainableAffine
        b?.isTrainable = trainableAffine
        weight = w
        bias = b
        runningMean = [Float](repeating: 0, count: channels)
        runningVariance = [Float](repeating: 1, count: channels)
    }

    /// Freezes a trained ``BatchNorm``: copies its `ε`, running mean and (unbiased) running variance, and its
    /// `γ`, `β` (1 and 0 if it has no affine parameters).
    ///
    /// - Throws: nothing for a `bn` that was built (its arguments were checked then); the signature is
    ///   ``init(channels:epsilon:trainableAffine:)``'s.
    public convenience init(_ bn: BatchNorm, trainableAffine: Bool = false) throws {
        try self.init(channels: bn.channels, epsilon: bn.epsilon, trainableAffine: trainableAffine)
        runningMean = bn.runningMean
        runningVariance = bn.runningVariance
        if let w = bn.weight?.value, let b = bn.bias?.value {
            weight?.value = w
            bias?.value = b
        }
    }

    /// `y = scale·(x − running_mean) + β` in both modes, `scale_c = γ_c/sqrt(running_var_c + ε)`; a training
    /// forward also saves `x`.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try InputCheck.validate(x, channels: channels, layer: name)
        let gamma = weight?.value, beta = bias?.value, runningMean = runningMean
        // The kernels' form (an `(N, C)` input: one matrix in either layout).
        let runningVariance = runningVariance, eps = Double(epsilon),
            g = NormalizationGeometry.perChannel(x, channels: channels).kernelForm
        workspace.normalizeFixed(x, into: &y, activation: activation, training: training, geometry: g) { affines in
            for c in 0..<runningMean.count {
                affines.scale[c] = Double(gamma?[c] ?? 1) / (Double(runningVariance[c]) + eps).squareRoot()
                (affines.center[c], affines.shift[c]) = (Double(runningMean[c]), Double(beta?[c] ?? 0))
            }
        }
        if training { pending.save(x, g) }
    }

    /// `dx = scale·dz`; `dγ_c = Σ dz·(x − running_mean_c)/sqrt(running_var_c + ε)`, `dβ_c = Σ dz` (computed even
    /// when the affine is frozen), with `dz = dy`, or `dy·act'(z)` after a forward with a fused activation.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        let (x, g) = try pending.forBackward(of: dy, layer: name)
        let gamma = weight?.value, runningVariance = runningVariance, eps = Double(epsilon)
        workspace.backwardStaged(
            dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g, readsInput: false
        ) {
            _, _, gradients in
            for c in 0..<runningVariance.count {
                let inverseStd = 1 / (Double(runningVariance[c]) + eps).squareRoot()
                (gradients.scale[c], gradients.gammaScale[c]) = (Double(gamma?[c] ?? 1) * inverseStd, inverseStd)
                (gradients.slope[c], gradients.offset[c]) = (0, 0)
            }
        }
        pending.clear()
    }

    /// `weight`, `bias`, `running_mean`, `running_var` (no step counter), as the reference `FrozenBatchNorm2d`.
    public func stateDict() -> [String: StateTensor] {
        checkpoint.entries(weight: weight, bias: bias, runningMean: runningMean, runningSpread: runningVariance)
    }

    /// Restores what ``stateDict()`` writes (strict: exactly those keys; see
    /// ``NormalizationLayer/loadStateDict(_:strict:)``); nothing changes if it throws (also for a wrong shape or
    /// dtype, or a negative or non-finite `running_var`).
    @discardableResult
    public func loadStateDict(_ state: [String: StateTensor], strict: Bool) throws -> StateDictLoadResult {
        try checkpoint.load(
            state, strict: strict, runningMean: &runningMean, runningSpread: &runningVariance,
            weight: weight, bias: bias)
    }

    /// The state-dict layout: the variance under `running_var` (finite and ≥ 0), always `weight` and `bias`, no
    /// step counter.
    private var checkpoint: RunningStatisticsCheckpoint {
        RunningStatisticsCheckpoint(
            layer: name, channels: channels, spreadName: "running_var",
            spreadRequirement: .finiteNonNegative, stepCounter: .none)
    }
}
