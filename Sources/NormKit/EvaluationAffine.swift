/// The evaluation stage of every layer with running statistics (BN, BRN, MABN): one per-channel affine
/// `y = act(a_c·(x − center_c) + β_c)` with the layer's scale `a_c` (its `γ_c` over its running spread), applied
/// centred on the running mean rather than folded into `a·x + b` (accurate when |mean| ≫ the spread of `x`).
/// The coefficients' buffer is kept between calls, so evaluation allocates nothing after the first.
struct EvaluationAffine {
    /// Scales at `[c]`, shifts at `[C + c]`.
    private var coefficients: [Float] = []

    /// `y = act(scale(c)·(x − center[c]) + beta[c])` over `x`'s channels (`center` nil: 0, `beta` nil: 0).
    @inline(__always)
    mutating func apply(
        _ x: Tensor, into y: inout Tensor, channels: Int, beta: [Float]?, center: [Float]?,
        activation: FusedActivation, scale: (Int) -> Double
    ) {
        if coefficients.count < 2 * channels { coefficients = [Float](repeating: 0, count: 2 * channels) }
        // One exclusive access for the loop (not one per element).
        coefficients.withUnsafeMutableBufferPointer { coefficients in
            for c in 0..<channels {
                coefficients[c] = Float(scale(c))
                coefficients[channels + c] = beta?[c] ?? 0
            }
        }
        applyAffine(
            x, into: &y, coefficients: coefficients, shiftBase: channels, center: center,
            activation: activation, geometry: .perChannel(x, channels: channels))
    }
}
