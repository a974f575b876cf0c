/// The evaluation stage of every layer with running statistics (BN, BRN, MABN): one per-channel affine
/// `y = act(a_c·(x − center_c) + β_c)` with the layer's scale `a_c` (its `γ_c` over its running spread), applied
/// centred on the running mean rather than folded into `a·x + b` (accurate when |mean| ≫ the spread of `x`): the
/// engine's apply stage (``SetAffines``) with buffers of its own, so that evaluation leaves a pending training
/// forward alone and allocates nothing after the first call.
struct EvaluationAffine {
    private var affines = SetAffines()
    private var scratch: [Float] = []

    /// `y = act(scale(c)·(x − center[c]) + beta[c])` over `x`'s channels (`center` nil: 0, `beta` nil: 0).
    @inline(__always)
    mutating func apply(
        _ x: Tensor, into y: inout Tensor, channels: Int, beta: [Float]?, center: [Float]?,
        activation: FusedActivation, scale: (Int) -> Double
    ) {
        affines.resize(channels)
        for c in 0..<channels {
            affines.scale[c] = scale(c)
            (affines.center[c], affines.shift[c]) = (Double(center?[c] ?? 0), Double(beta?[c] ?? 0))
        }
        affines.apply(
            x, into: &y, scratch: &scratch, activation: activation, geometry: .perChannel(x, channels: channels))
    }
}
