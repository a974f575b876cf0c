/// The layer-specific step of the fused training pipeline (statistics → **rule** → coefficients → apply): from one
/// set's batch statistics, the `gain` and `offset` of
/// ```
/// y = γ·(gain·x̂ + offset) + β,   x̂ = (x − μ)·rstd,   rstd = 1/sqrt(σ² + ε)
/// ```
/// Both are constants in the backward, which is then BN's with `γ·gain` in place of `γ`, and
/// `dγ_c = Σ dy·(gain·x̂ + offset)`: the fused kernels compute every layer of this form, forward and backward.
/// BN and GN (LN, IN) are ``Standardization`` (gain 1, offset 0); BatchRenorm's rule gives `r` and `d`.
///
/// The kernels call the rule once per set, from several threads at once (each set once): it reads the layer's
/// state and writes nothing.
protocol NormalizationRule {
    /// `set` is the set's index, `channel` its first channel (the set's only one for BN-like sets); `variance` is
    /// the biased batch variance.
    func setAffine(
        set: Int, channel: Int, mean: Double, variance: Double, rstd: Double
    )
        -> (gain: Double, offset: Double)
}

/// `x̂` itself: BatchNorm, GroupNorm, LayerNorm, InstanceNorm.
struct Standardization: NormalizationRule {
    @inline(__always)
    func setAffine(
        set: Int, channel: Int, mean: Double, variance: Double, rstd: Double
    )
        -> (gain: Double, offset: Double)
    {
        (1, 0)
    }
}
