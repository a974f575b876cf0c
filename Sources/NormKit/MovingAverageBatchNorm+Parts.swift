extension MovingAverageBatchNorm {
    /// Which of MABN's parts a layer uses — switches for an ablation (issue 12). ``paper`` (every part on, the
    /// default) is MABN exactly as the paper and spec section 4; ``batchNorm`` (every part off) is BN with batch
    /// statistics in training. CenConv, MABN's fifth part, lives in the convolution (``WeightCentering``), not here.
    ///
    /// With every part off but ``secondMomentForm`` on, the layer computes `y = γ·x/sqrt(mean(x²)+ε) + β` with the
    /// batch's second moment and its exact gradient.
    ///
    /// **The BN form** (``secondMomentForm`` off) subtracts a mean: per chunk `μ_t = mean(x)` and
    /// `σ²_t = mean((x − μ_t)²)` (the biased variance) replace `χ²_t`; the forward SMA averages both over the ring
    /// buffers (`μ̄ = mean(bufμ)`, `v = mean(bufσ²)`), `x̂ = (x − μ̄)/sqrt(v+ε)`, `y = γ·r·x̂ + β`, and
    /// `r = clip(sqrt(v+ε)/sqrt(running_var+ε), 1/5, 5)` (no `d`). The backward has two statistics (spec section 11),
    /// `g_B = mean(g)` and `Ψ_B = mean(g·x̂)` with `g = γ·r·dy`, each with its own ring buffer:
    /// `dx = (g − ḡ − x̂·Ψ̄)/sqrt(v+ε)`. The EMAs `running_mean` and `running_var` (of `μ̄` and `v`, every
    /// iteration) give the evaluation `y = γ·(x − running_mean)/sqrt(running_var+ε) + β`. Its state dict adds
    /// `running_mean` `(C,)`, `buffer_mean` and `buffer_g` `(S_buf, C)` to the default keys (`running_var` and
    /// `buffer_x2` then hold variances, `buffer_gz` the `Ψ_B`). The reference PyTorch model
    /// (`MovingAverageBatchNorm2d`) loads only the default, the paper's MABN.
    public struct Parts: Sendable, Codable, Equatable, Hashable, CustomStringConvertible {
        /// Divide by the root of the second moment `mean(x²)`, no mean subtracted (the paper); off: the BN form,
        /// mean and variance.
        public var secondMomentForm: Bool
        /// After warm-up, normalize with the SMA of the forward statistic(s) over the last `S_buf` iterations
        /// (the paper); off: the current chunk's, as during warm-up.
        public var forwardSMA: Bool
        /// After warm-up, use the SMA of the backward statistic(s) (the paper); off: the current chunk's.
        public var backwardSMA: Bool
        /// The renormalization factor `r` after `max(1000, warmup)` iterations (the paper); off: `r = 1`.
        public var renormalization: Bool

        /// Creates a set of switches (every part on by default).
        public init(
            secondMomentForm: Bool = true, forwardSMA: Bool = true, backwardSMA: Bool = true,
            renormalization: Bool = true
        ) {
            self.secondMomentForm = secondMomentForm
            self.forwardSMA = forwardSMA
            self.backwardSMA = backwardSMA
            self.renormalization = renormalization
        }

        /// The paper's MABN: every part on (the default).
        public static let paper = Parts()
        /// Every part off: BN with batch statistics in training (and EMAs of them for evaluation).
        public static let batchNorm = Parts(
            secondMomentForm: false, forwardSMA: false, backwardSMA: false, renormalization: false)

        /// One part, as the CLI names it.
        public enum Part: String, CaseIterable, Sendable {
            case form, forwardSMA = "fwd-sma", backwardSMA = "bwd-sma", renormalization = "renorm"
        }

        /// The paper's MABN without `parts`.
        public init(without parts: Set<Part>) {
            self.init(
                secondMomentForm: !parts.contains(.form), forwardSMA: !parts.contains(.forwardSMA),
                backwardSMA: !parts.contains(.backwardSMA), renormalization: !parts.contains(.renormalization))
        }

        /// The parts switched off, in ``Part`` order.
        public var missing: [Part] {
            Part.allCases.filter { part in
                switch part {
                case .form: return !secondMomentForm
                case .forwardSMA: return !forwardSMA
                case .backwardSMA: return !backwardSMA
                case .renormalization: return !renormalization
                }
            }
        }

        /// `"paper"`, or `"without form, fwd-sma"`.
        public var description: String {
            self == .paper ? "paper" : "without " + missing.map(\.rawValue).joined(separator: ", ")
        }
    }
}

// MARK: - Deprecated spelling

extension MovingAverageBatchNorm {
    /// The old spelling of ``init(channels:bufferSize:epsilon:oldValueWeight:warmup:normBatch:affine:parts:)``:
    /// `momentum` here is the weight of the **old** value (the same number as `oldValueWeight`).
    @available(
        *, deprecated, renamed: "init(channels:bufferSize:epsilon:oldValueWeight:warmup:normBatch:affine:parts:)"
    )
    public convenience init(
        channels: Int, bufferSize: Int, epsilon: Float = 1e-5, momentum: Float,
        warmup: Int = 100, normBatch: Int? = nil, affine: Bool = true
    ) throws {
        try self.init(
            channels: channels, bufferSize: bufferSize, epsilon: epsilon, oldValueWeight: momentum,
            warmup: warmup, normBatch: normBatch, affine: affine)
    }
}

// MARK: - State dict

extension MovingAverageBatchNorm {
    /// Exactly the reference's `state_dict`: `weight`, `bias` (when affine), `running_var` `(C,)` (the EMA of the
    /// second moment), `iters` (int64 scalar, shape `[]`), `buffer_x2` and `buffer_gz` `(S_buf, C)`. The BN form
    /// (``Parts/secondMomentForm`` off) adds `running_mean` `(C,)`, `buffer_mean` and `buffer_g` `(S_buf, C)`.
    public func stateDict() -> [String: StateTensor] {
        var state: [String: StateTensor] = [
            "running_var": .float32(shape: [channels], values: runningSecondMoment),
            "iters": .int64(shape: [], values: [iterations]),
            "buffer_x2": .float32(shape: [bufferSize, channels], values: secondMomentBuffer),
            "buffer_gz": .float32(shape: [bufferSize, channels], values: backwardStatisticBuffer),
        ]
        if !parts.secondMomentForm {
            state["running_mean"] = .float32(shape: [channels], values: runningMean)
            state["buffer_mean"] = .float32(shape: [bufferSize, channels], values: meanBuffer)
            state["buffer_g"] = .float32(shape: [bufferSize, channels], values: gradientMeanBuffer)
        }
        state.addAffine(weight: weight, bias: bias, channels: channels)
        return state
    }

    /// Restores what ``stateDict()`` writes, so the layer continues exactly as the one that wrote it (strict:
    /// exactly those keys; see ``NormalizationLayer/loadStateDict(_:strict:)``), and drops any pending
    /// (un-backpropagated) training forward. Nothing changes if it throws (also for a wrong shape or dtype, a
    /// negative or non-finite `running_var`, a non-finite `running_mean`, or a negative `iters`).
    @discardableResult
    public func loadStateDict(_ state: [String: StateTensor], strict: Bool) throws -> StateDictLoadResult {
        var reader = StateDictReader(state, layer: name, strict: strict)
        let running = try reader.floats("running_var", shape: [channels], meeting: .finiteNonNegative)
        let iters = try reader.stepCounter("iters", nonNegative: true)
        let x2 = try reader.floats("buffer_x2", shape: [bufferSize, channels])
        let gz = try reader.floats("buffer_gz", shape: [bufferSize, channels])
        var meanState: (running: [Float]?, buffer: [Float]?, gradient: [Float]?) = (nil, nil, nil)
        if !parts.secondMomentForm {
            let finite = ValueRequirement(reason: "must be finite") { $0.isFinite }
            meanState = (
                try reader.floats("running_mean", shape: [channels], meeting: finite),
                try reader.floats("buffer_mean", shape: [bufferSize, channels]),
                try reader.floats("buffer_g", shape: [bufferSize, channels])
            )
        }
        let affine = try reader.affine(weight: weight, bias: bias, channels: channels)
        let result = try reader.finish()
        if let running { runningSecondMoment = running }
        if let iters { iterations = iters }
        if let x2 { secondMomentBuffer = x2 }
        if let gz { backwardStatisticBuffer = gz }
        if let running = meanState.running { runningMean = running }
        if let buffer = meanState.buffer { meanBuffer = buffer }
        if let gradient = meanState.gradient { gradientMeanBuffer = gradient }
        affine.restore(weight: weight, bias: bias)
        dropPendingForward()
        return result
    }
}
