import Foundation
import NormKit
import XCTest

/// Helpers for the BatchRenorm, MovingAverageBatchNorm, FrozenBatchNorm and WeightCentering tests: logical
/// `(n, c, p)` float64 arrays, tensors from them, errors, and the closed-form trace inputs of
/// `scripts/make_trace_fixtures.py`.
public enum VariantTestKit {
    /// The memory offset of logical `(n, c, p)`.
    public static func offset(
        _ layout: TensorLayout, channels: Int, positions: Int, _ n: Int, _ c: Int, _ p: Int
    ) -> Int {
        layout == .channelsFirst ? (n * channels + c) * positions + p : (n * positions + p) * channels + c
    }

    /// A tensor holding `logical` (in `(n, c, p)` order, rounded to float) in `layout`.
    public static func tensor(_ shape: [Int], _ layout: TensorLayout, _ logical: [Double]) -> Tensor {
        let channels = shape[1], positions = shape.dropFirst(2).reduce(1, *)
        var memory = [Float](repeating: 0, count: logical.count)
        for n in 0..<shape[0] {
            for c in 0..<channels {
                for p in 0..<positions {
                    memory[offset(layout, channels: channels, positions: positions, n, c, p)] =
                        Float(logical[(n * channels + c) * positions + p])
                }
            }
        }
        return try! Tensor(shape: shape, layout: layout, values: memory)
    }

    /// The elements of `t` in logical `(n, c, p)` order.
    public static func logical(_ t: Tensor) -> [Double] {
        let channels = t.channels, positions = t.spatialCount
        let memory = t.values
        var out = [Double](repeating: 0, count: memory.count)
        for n in 0..<t.batch {
            for c in 0..<channels {
                for p in 0..<positions {
                    out[(n * channels + c) * positions + p] =
                        Double(memory[offset(t.layout, channels: channels, positions: positions, n, c, p)])
                }
            }
        }
        return out
    }

    /// Normal values rounded to float (so a float tensor holds them exactly).
    public static func randomLogical(_ count: Int, mean: Double, std: Double, _ rng: inout SeededGenerator) -> [Double]
    {
        (0..<count).map { _ in
            let u1 = Double.random(in: Double.ulpOfOne..<1, using: &rng), u2 = Double.random(in: 0..<1, using: &rng)
            return Double(Float(mean + std * (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * .pi * u2)))
        }
    }

    public static func randomTensor(
        _ shape: [Int], _ layout: TensorLayout, mean: Double, std: Double,
        _ rng: inout SeededGenerator
    ) -> Tensor {
        tensor(shape, layout, randomLogical(shape.reduce(1, *), mean: mean, std: std, &rng))
    }

    public static func randomFloats(_ count: Int, in range: ClosedRange<Float>, _ rng: inout SeededGenerator) -> [Float]
    {
        (0..<count).map { _ in Float.random(in: range, using: &rng) }
    }

    /// Random spatial dimensions of `rank` (each 1...4).
    public static func randomSpatial(rank: Int, _ rng: inout SeededGenerator) -> [Int] {
        (0..<rank).map { _ in Int.random(in: 1...4, using: &rng) }
    }

    /// Max-abs error over max-abs of the reference (or over `scale` when that is larger: the magnitude of the
    /// terms of a sum that cancels).
    public static func relErr(_ a: [Double], _ reference: [Double], scale minimumScale: Double = 0) -> Double {
        precondition(a.count == reference.count, "\(a.count) vs \(reference.count) values")
        var err = 0.0, scale = minimumScale
        for (x, r) in zip(a, reference) {
            err = max(err, abs(x - r).isNaN ? .infinity : abs(x - r))
            scale = max(scale, abs(r))
        }
        return scale == 0 ? err : err / scale
    }

    /// Keeps the worst error per key (and fails loudly on NaN).
    public static func record(_ worst: inout [String: Double], _ key: String, _ value: Double, _ context: String) {
        // Fail loudly (with the place) the first time a quantity is far off; callers assert the tolerance after.
        if !(value <= 1e-3), (worst[key] ?? 0) <= 1e-3 { XCTFail("\(key): relative error \(value) at \(context)") }
        worst[key] = max(worst[key] ?? 0, value.isNaN ? .infinity : value)
    }

    /// A float64 reference backward: dx, dγ, dβ and the magnitudes of the dγ and dβ sums.
    public typealias ReferenceGradients = (
        dx: [Double], dgamma: [Double], dbeta: [Double], dgammaScale: Double, dbetaScale: Double
    )

    /// Records dγ and dβ against the reference's (relative to the magnitudes of their sums, which can cancel).
    public static func recordAffineGradients(
        _ worst: inout [String: Double], _ grads: NormalizationGradients, _ reference: ReferenceGradients,
        _ context: String
    ) {
        record(
            &worst, "dgamma",
            relErr(grads.weight!.map(Double.init), reference.dgamma, scale: reference.dgammaScale), context)
        record(
            &worst, "dbeta", relErr(grads.bias!.map(Double.init), reference.dbeta, scale: reference.dbetaScale),
            context)
    }

    /// Records y, dx, dγ and dβ of one training step against the reference's output and backward.
    public static func recordStep(
        _ worst: inout [String: Double], y: Tensor, _ grads: NormalizationGradients, reference yr: [Double],
        _ gr: ReferenceGradients, _ context: String
    ) {
        record(&worst, "y", relErr(logical(y), yr), context)
        record(&worst, "dx", relErr(logical(grads.input), gr.dx), context)
        recordAffineGradients(&worst, grads, gr, context)
    }

    public static func describe(_ worst: [String: Double]) -> String {
        worst.keys.sorted().map { "\($0) \(String(format: "%.2e", worst[$0]!))" }.joined(separator: ", ")
    }

    public static func assertInvalidState(
        _ error: Error, _ name: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        guard case NormalizationError.invalidState(_, let n, _) = error else {
            return XCTFail("expected invalidState, got \(error)", file: file, line: line)
        }
        XCTAssertEqual(n, name, file: file, line: line)
    }

    /// Asserts a strict load of `state` with `changes` applied (nil removes a key) throws invalidState naming `name`.
    public static func assertLoadThrowsInvalidState(
        _ layer: some NormalizationLayer, _ state: [String: StateTensor], _ changes: [String: StateTensor?],
        _ name: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        var bad = state
        for (key, value) in changes { bad[key] = value }
        XCTAssertThrowsError(try layer.loadStateDict(bad), file: file, line: line) {
            assertInvalidState($0, name, file: file, line: line)
        }
    }

    /// Asserts `error` is a strict load's key mismatch listing exactly `missing` and `unexpected`.
    public static func assertIncompatibleKeys(
        _ error: Error, missing: [String], unexpected: [String] = [],
        file: StaticString = #filePath, line: UInt = #line
    ) {
        guard case NormalizationError.incompatibleStateDict(_, let m, let u) = error else {
            return XCTFail("expected incompatibleStateDict, got \(error)", file: file, line: line)
        }
        XCTAssertEqual(m, missing, file: file, line: line)
        XCTAssertEqual(u, unexpected, file: file, line: line)
    }

}
