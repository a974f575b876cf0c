import CNormKitKernels

/// How a layer's running spread gives each channel's scale `γ/σ` in evaluation.
enum RunningSpread: Equatable {
    /// `σ = sqrt(spread + ε)`: a running variance (BN) or second moment (MABN).
    case variance(epsilon: Float)
    /// `σ = spread`: a running standard deviation (BRN).
    case standardDeviation
}

/// The evaluation stage of every layer with running statistics (BN, BRN, MABN): one per-channel affine
/// `y = act(a_c·(x − center_c) + β_c)` with the layer's scale `a_c = γ_c/σ_c` (its running spread, ``RunningSpread``),
/// applied centred on the running mean rather than folded into `a·x + b` (accurate when |mean| ≫ the spread of `x`):
/// the engine's apply stage with coefficients of its own, so that evaluation leaves a pending training forward alone
/// and allocates nothing after the first call.
struct EvaluationAffine {
    /// The Float coefficients of the apply: `scale`, `shift` and `center`, one row of `channels` each.
    private var coefficients: [Float] = []

    /// `y = act(γ[c]/σ[c]·(x − center[c]) + beta[c])` over `x`'s `spread.count` channels (`gamma`, `beta` nil: 1, 0,
    /// both or neither; `center` nil: 0).
    mutating func apply(
        _ x: Tensor, into y: inout Tensor, gamma: [Float]?, beta: [Float]?, center: [Float]?, spread: [Float],
        form: RunningSpread, activation: FusedActivation
    ) {
        let n = spread.count
        if coefficients.count != 3 * n { coefficients = [Float](repeating: 0, count: 3 * n) }
        y.prepare(shape: x.shape, layout: x.layout)
        coefficients.withUnsafeMutableBufferPointer { cp in
            let scale = cp.baseAddress!, shift = scale + n, centers = shift + n
            spread.withUnsafeBufferPointer { sp in
                withOptionalPointers(gamma, beta) { gp, bp in
                    func fill(center: UnsafePointer<Float>?) {
                        Self.coefficients(
                            scale: scale, shift: shift, centers: centers, gamma: gp, beta: bp, center: center,
                            spread: sp.baseAddress!, count: n, form: form, native: nativeKernels)
                    }
                    guard let center else { return fill(center: nil) }
                    center.withUnsafeBufferPointer { fill(center: $0.baseAddress) }
                }
            }
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    NormalizationKernels.apply(
                        y: yp.baseAddress!, x: xp.baseAddress!, center: centers, scale: scale, shift: shift,
                        activation: activation, geometry: NormalizationGeometry.perChannel(x, channels: n).kernelForm)
                }
            }
        }
    }

    /// The coefficient stage: per channel `a = γ/σ` in Double, `centers = Float(center)`, `scale = Float(a)` and
    /// `shift = Float(β − a·(center − centers))` (``Centering``); the vectorized kernel when `native`, else this loop,
    /// with the same operations in the same order (the same bits:
    /// `KernelPathTests.testEvaluationCoefficientsKernelIsTheSwiftLoopBitForBit`). Before session 37 this stage went
    /// through `Array` subscripts of `Double` rows and a closure per channel, about 10 ns a channel: BN's evaluation
    /// forward on (2, 2048, 7, 7) took 0.036 ms channels-last, now 0.016 (PERFORMANCE.md, session 37).
    static func coefficients(
        scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>, centers: UnsafeMutablePointer<Float>,
        gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, center: UnsafePointer<Float>?,
        spread: UnsafePointer<Float>, count n: Int, form: RunningSpread, native: Bool
    ) {
        let epsilon: Double? =
            switch form {
            case .variance(let epsilon): Double(epsilon)
            case .standardDeviation: nil
            }
        if native {
            return nk_evaluation_coefficients(
                scale, shift, centers, center, spread, gamma, beta, n, epsilon ?? 0, epsilon == nil ? 0 : 1)
        }
        for c in 0..<n {
            let s = Double(spread[c]), sigma = epsilon.map { (s + $0).squareRoot() } ?? s
            let a = Double(gamma?[c] ?? 1) / sigma, centering = Centering(Double(center?[c] ?? 0))
            (scale[c], centers[c]) = (Float(a), centering.center)
            shift[c] = centering.shift(Double(beta?[c] ?? 0), scale: a)
        }
    }
}
