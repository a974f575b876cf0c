import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

// Weight-centred convolution filters (CenConv, spec section 5): the centring against float64, zero filter means,
// no division by the standard deviation, and the gradient against finite differences. Helpers: `VariantTestKit`
// (BatchRenormTests.swift).

final class WeightCenteringTests: XCTestCase {
    typealias Kit = VariantTestKit

    /// Conv weight shapes `(out, in, kh, kw)`: filters = out, fanIn = in·kh·kw.
    let shapes: [[Int]] = [[4, 3, 3, 3], [16, 8, 1, 1], [2, 5, 1, 7], [3, 1, 1, 1], [1, 64, 3, 3]]

    static func center64(_ w: [Double], filters: Int) -> [Double] {
        let fanIn = w.count / filters
        var out = w
        for o in 0..<filters {
            let mean = w[(o * fanIn)..<((o + 1) * fanIn)].reduce(0, +) / Double(fanIn)
            for i in 0..<fanIn { out[o * fanIn + i] = w[o * fanIn + i] - mean }
        }
        return out
    }

    /// Each centred filter has zero mean (to float32 rounding, even with a large common offset), equals the
    /// float64 `W − mean(W[o])` (no division by the standard deviation), and the in-place pointer API agrees.
    func testCentredFiltersHaveZeroMeanAndMatchFloat64() throws {
        var rng = SeededGenerator(seed: 601)
        var worstError = 0.0, worstMean = 0.0
        for shape in shapes {
            for offset in [0.0, 50.0] {
                let filters = shape[0], count = shape.reduce(1, *), fanIn = count / filters
                let w = Kit.randomLogical(count, mean: offset, std: 0.5, &rng).map { Float($0) }
                let centred = try WeightCentering.centered(w, filters: filters)
                let reference = Self.center64(w.map(Double.init), filters: filters)
                // Errors relative to max|W|: float32 weights of magnitude |W| carry absolute errors of ~|W|·6e-8,
                // so that is the scale a float32 centring can be held to when the offset dwarfs the spread.
                let magnitude = w.map { abs(Double($0)) }.max()!
                worstError = max(worstError, Kit.relErr(centred.map(Double.init), reference, scale: magnitude))
                for o in 0..<filters {
                    let row = centred[(o * fanIn)..<((o + 1) * fanIn)].map(Double.init)
                    // |mean of W_c[o]| relative to max|W[o]| (float32 rounding of W bounds it).
                    let magnitude = w[(o * fanIn)..<((o + 1) * fanIn)].map { abs(Double($0)) }.max()!
                    worstMean = max(worstMean, abs(row.reduce(0, +) / Double(fanIn)) / magnitude)
                }
                if fanIn == 1 { XCTAssertTrue(centred.allSatisfy { $0 == 0 }) }
                // In place (centred aliases weights).
                var inPlace = w
                inPlace.withUnsafeMutableBufferPointer { p in
                    WeightCentering.center(p.baseAddress!, p.baseAddress!, filters: filters, fanIn: fanIn)
                }
                XCTAssertEqual(inPlace, centred)
            }
        }
        // Not Weight Standardization: scaling W scales W_c by the same factor.
        let w: [Float] = [1, 2, 3, 6, 0, 0, 0, 4]
        XCTAssertEqual(try WeightCentering.centered(w, filters: 2), [-2, -1, 0, 3, -1, -1, -1, 3])
        XCTAssertEqual(try WeightCentering.centered(w.map { $0 * 4 }, filters: 2), [-8, -4, 0, 12, -4, -4, -4, 12])
        print(
            "WeightCentering: max error vs float64 (relative to max|W|) \(worstError), max |filter mean| (relative) \(worstMean)"
        )
        XCTAssertLessThanOrEqual(worstError, 1e-6)
        XCTAssertLessThanOrEqual(worstMean, 1e-6)
    }

    /// `centerGradient` equals central finite differences of `L(W) = Σ w·center(W)` in float64 (random `w`), and
    /// every filter's gradient sums to zero.
    func testGradientMatchesFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 602)
        var worst = 0.0
        for shape in shapes {
            let filters = shape[0], count = shape.reduce(1, *), fanIn = count / filters
            let weights = Kit.randomLogical(count, mean: 0.2, std: 1, &rng)
            let upstream = Kit.randomLogical(count, mean: 0.5, std: 1, &rng)  // w = ∂L/∂W_c
            func loss(_ v: [Double]) -> Double {
                zip(Self.center64(v, filters: filters), upstream).reduce(0) { $0 + $1.0 * $1.1 }
            }
            let h = 1e-4
            var fd = weights
            for i in 0..<count {
                var p = weights, m = weights
                p[i] += h
                m[i] -= h
                fd[i] = (loss(p) - loss(m)) / (2 * h)
            }
            let dwc = upstream.map { Float($0) }
            var gradient = [Float](repeating: .nan, count: count)
            dwc.withUnsafeBufferPointer { src in
                gradient.withUnsafeMutableBufferPointer { dst in
                    WeightCentering.centerGradient(dst.baseAddress!, src.baseAddress!, filters: filters, fanIn: fanIn)
                }
            }
            worst = max(worst, Kit.relErr(gradient.map(Double.init), fd, scale: 1))
            for o in 0..<filters {
                let sum = gradient[(o * fanIn)..<((o + 1) * fanIn)].reduce(0) { $0 + Double($1) }
                XCTAssertEqual(sum, 0, accuracy: 1e-5 * Double(fanIn), "filter \(o) of \(shape)")
            }
        }
        print("WeightCentering.centerGradient vs finite differences: max relative error \(worst)")
        XCTAssertLessThanOrEqual(worst, 1e-5)
    }

    /// A filter count that does not divide the weights throws.
    func testInvalidFilterCountThrows() {
        for filters in [0, -1, 3] {
            XCTAssertThrowsError(try WeightCentering.centered([1, 2, 3, 4], filters: filters)) {
                guard case NormalizationError.invalidArgument("WeightCentering", "filters", _, _) = $0 else {
                    return XCTFail("\($0)")
                }
            }
        }
    }
}
