/// The centring of every kernel, in one place: rows are centred on the float `k = Float(μ)` (so `x − k` is exact
/// near `μ`, even when `|μ| ≫ σ`) and the residual `δ = μ − k`, in Double, moves sums, shifts and offsets to the
/// exact centre `μ`. An affine folded into `a·x + b` instead would lose all accuracy at `x = 1e4 + 0.01·randn`.
struct Centering {
    /// `k`, the float the rows are centred on.
    let center: Float
    /// `δ = μ − k`.
    let residual: Double

    @inline(__always) init(_ exact: Double) {
        center = Float(exact)
        residual = exact - Double(center)
    }

    /// The shift `b` of `y = a·(x − k) + b` equal to `a·(x − μ) + β`.
    @inline(__always) func shift(_ beta: Double, scale a: Double) -> Float { Float(beta - a * residual) }

    /// `Σ dy·(x − μ)` from the row's `Σ dy·(x − k)` and `Σ dy`.
    @inline(__always) func exactSum(centered: Double, sumDy: Double) -> Double { centered - residual * sumDy }

    /// The offset `o` of `dx = p·dy + q·(x − k) + o` equal to `p·dy + q·(x − μ) + offset`.
    @inline(__always) func offset(_ offset: Double, slope q: Double) -> Float { Float(offset - q * residual) }

    /// The per-channel `a`, `b` of `y = a·(x − k) + b` equal to `γ·(factor·(x − μ) + offset) + β` (a set normalized
    /// by `factor = gain·rstd` and `offset`, ``NormalizationRule``): `a = γ·factor`, `b = β + γ·offset − a·δ`.
    @inline(__always)
    func coefficients(gamma: Double, beta: Double, factor: Double, offset: Double) -> (scale: Float, shift: Float) {
        let a = gamma * factor
        return (Float(a), shift(offset == 0 ? beta : beta + gamma * offset, scale: a))
    }
}
