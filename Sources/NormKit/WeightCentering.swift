/// The weight-centring transform of MABN's convolutions (CenConv, spec section 5).
///
/// Before each use every output filter is centred, `W_c[o] = W[o] − mean(W[o])`, the mean over the filter's
/// input channels and kernel taps (`fanIn` values). The gradient w.r.t. `W` is the gradient w.r.t. `W_c` with
/// its per-filter mean removed. There is no division by the standard deviation (that would be Weight
/// Standardization, a different method).
public enum WeightCentering {
    /// Writes the centred filters of `weights` (`filters × fanIn`, row-major) into `centred`.
    /// `centred` may alias `weights`.
    public static func center(
        _ centred: UnsafeMutablePointer<Float>, _ weights: UnsafePointer<Float>, filters: Int, fanIn: Int
    ) {
        for o in 0..<filters {
            let w = weights + o * fanIn, out = centred + o * fanIn
            // Two-pass mean: the float estimate m0 corrected by the mean deviation from it.
            let n = Double(max(fanIn, 1))
            let m0 = Float(rowSum(w, fanIn) / n)
            let (d1, _) = rowCenteredSums(w, fanIn, center: m0)
            rowAffineCentered(out, w, fanIn, center: m0, scale: 1, shift: Float(-d1 / n))
        }
    }

    /// The backward of ``center(_:_:filters:fanIn:)``: `dW[o] = dW_c[o] − mean(dW_c[o])`, which is the same
    /// centring applied to the gradient (`gradient` may alias `centredGradient`).
    public static func centerGradient(
        _ gradient: UnsafeMutablePointer<Float>, _ centredGradient: UnsafePointer<Float>, filters: Int, fanIn: Int
    ) {
        center(gradient, centredGradient, filters: filters, fanIn: fanIn)
    }

    /// Centred copy of `weights` viewed as `filters` rows.
    ///
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` unless `filters` divides the count.
    public static func centered(_ weights: [Float], filters: Int) throws -> [Float] {
        guard filters >= 1, weights.count % filters == 0 else {
            throw NormalizationError.invalidArgument(
                layer: "WeightCentering", name: "filters", value: "\(filters)",
                expected: "a divisor of the weight count \(weights.count)")
        }
        var out = weights
        let fanIn = weights.count / filters
        weights.withUnsafeBufferPointer { w in
            out.withUnsafeMutableBufferPointer { o in
                center(o.baseAddress!, w.baseAddress!, filters: filters, fanIn: fanIn)
            }
        }
        return out
    }
}
