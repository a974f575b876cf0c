import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// GN, LN and IN on an `N × C` matrix (one position per sample: `(N, C)` inputs and 1 × 1 maps), which the native
/// kernels normalize a sample at a time (`nk_matrix_row_forward`, `nk_matrix_row_backward`, session 38):
///
/// - against float64, with and without an affine, with each fused activation (the backward of `act(norm(x))`
///   is the reference backward of `dy ⊙ act'(z)`), on sets of 1 float (IN), of 3, 70 and 700 floats, and of 2,100
///   (more than one 2,048-float block); 130 samples, four whole blocks of 32 and a short one for dγ, dβ; rows of
///   33,000 floats that the threads take in two pieces; on the native AVX-512 and the AVX2 bodies;
/// - the same bits on 1, 2 and 3 threads and for `(N, C)` channels-last, `(N, C, 1, 1)` channels-first and
///   channels-last;
/// - the hard input `x = 1e4 + 0.01·randn` as accurate as any other;
/// - a backward after the native kernels were switched off since the forward (the general backward, with the
///   fused activation's record rebuilt) agrees with the native one.
final class MatrixRowKernelTests: KernelPathTestCase {
    /// `(N, C, groups)`: sets of 70 (LN), 7 and 1 (IN) floats; of 2,100 and 700; of 3; of 4,125 in rows that go to
    /// the threads in two pieces (`matrixPieceFloats`). Blocks of dγ, dβ terms of 32, 1, 16 and 1 samples.
    static let cases: [(Int, Int, [Int])] = [
        (130, 70, [1, 10, 70]), (3, 2100, [1, 3]), (65, 48, [16]), (5, 33000, [8]),
    ]

    /// What a layer gave: `y`, `dx`, `dγ`, `dβ` (empty without an affine), in memory order.
    struct Result: Equatable {
        var y: [UInt32], dx: [UInt32], dgamma: [UInt32], dbeta: [UInt32]
    }

    static func run(
        _ layer: GroupNorm, _ shape: [Int], _ layout: TensorLayout, _ x: [Float], _ dy: [Float]
    ) throws -> (y: Tensor, dx: Tensor, dgamma: [Float], dbeta: [Float]) {
        let y = try layer.forward(Tensor(shape: shape, layout: layout, values: x), training: true)
        let grads = try layer.backward(Tensor(shape: shape, layout: layout, values: dy))
        return (y, grads.input, grads.weight ?? [], grads.bias ?? [])
    }

    static func bits(_ r: (y: Tensor, dx: Tensor, dgamma: [Float], dbeta: [Float])) -> Result {
        Result(
            y: r.y.values.map(\.bitPattern), dx: r.dx.values.map(\.bitPattern),
            dgamma: r.dgamma.map(\.bitPattern), dbeta: r.dbeta.map(\.bitPattern))
    }

    static func layer(
        _ c: Int, groups: Int, affine: Bool, _ activation: FusedActivation, gamma: [Float], beta: [Float]
    ) throws -> GroupNorm {
        let layer = try GroupNorm(channels: c, groups: groups, affine: affine)
        layer.activation = activation
        layer.weight?.value = gamma
        layer.bias?.value = beta
        return layer
    }

    /// The float64 reference of `act(GN(x))` and its backward for `dy`, and the scale of `dx`'s terms: the largest
    /// `|rstd·γ·dz|` (`dx` of a one-float set is 0, the difference of two such terms).
    static func reference(
        n: Int, c: Int, groups: Int, x: [Float], dy: [Float], gamma: [Float]?, beta: [Float]?,
        _ activation: FusedActivation
    ) -> (
        y: [Double], dx: [Double], dxScale: Double, dgamma: [Double], dbeta: [Double], dgammaTerms: [Double],
        dbetaTerms: [Double]
    ) {
        let rx = RefTensor(batch: n, channels: c, positions: 1, data: x.map(Double.init))
        let g = gamma?.map(Double.init), b = beta?.map(Double.init), sets = RefSets.groupNorm(groups: groups)
        let forward = Float64Reference.forward(rx, sets: sets, gamma: g, beta: b), z = forward.y.data
        let dz = zip(dy, z).map { Double($0) * activation.derivative($1) }
        let backward = Float64Reference.backward(
            rx, dy: RefTensor(batch: n, channels: c, positions: 1, data: dz), sets: sets, gamma: g)
        var dxScale = backward.dx.data.map(abs).max() ?? 0
        for i in 0..<(n * c) {
            let set = (i / c) * groups + (i % c) / (c / groups)
            dxScale = max(dxScale, abs(forward.rstd[set] * (g?[i % c] ?? 1) * dz[i]))
        }
        return (
            z.map { activation($0) }, backward.dx.data, dxScale, backward.dgamma, backward.dbeta,
            backward.dgammaTerms, backward.dbetaTerms
        )
    }

    func testMatrixRowsMatchFloat64AndAgreeAcrossThreadsAndLayouts() throws {
        var rng = SeededGenerator(seed: 0x38_01)
        let log = ErrorLog()
        var checked = 0
        for path in [Path.native, .avx2] where select(path) {
            for (n, c, groupCounts) in Self.cases {
                let x = (0..<(n * c)).map { _ in Float.random(in: -2...4, using: &rng) }
                let dy = (0..<(n * c)).map { _ in Float.random(in: -1...1, using: &rng) }
                let gamma = (0..<c).map { _ in Float.random(in: 0.5...1.5, using: &rng) * (Bool.random() ? 1 : -1) }
                let beta = (0..<c).map { _ in Float.random(in: -1...1, using: &rng) }
                for groups in groupCounts {
                    for affine in [true, false] {
                        for activation in FusedActivation.allCases {
                            let place = "\(path) (\(n), \(c)) G=\(groups) affine \(affine) \(activation)"
                            func make() throws -> GroupNorm {
                                try Self.layer(c, groups: groups, affine: affine, activation, gamma: gamma, beta: beta)
                            }
                            Parallelism.threadCount = 1
                            let one = try Self.run(make(), [n, c], .channelsLast, x, dy)
                            let want = Self.bits(one)
                            Parallelism.threadCount = 2
                            for (shape, layout) in [
                                ([n, c], TensorLayout.channelsLast), ([n, c, 1, 1], .channelsFirst),
                                ([n, c, 1, 1], .channelsLast),
                            ] {
                                let got = Self.bits(try Self.run(make(), shape, layout, x, dy))
                                XCTAssertEqual(got, want, "\(place): 2 threads, \(shape) \(layout)")
                            }
                            Parallelism.threadCount = 3
                            XCTAssertEqual(
                                Self.bits(try Self.run(make(), [n, c], .channelsLast, x, dy)), want,
                                "\(place): 3 threads")
                            Parallelism.threadCount = 2
                            let r = Self.reference(
                                n: n, c: c, groups: groups, x: x, dy: dy, gamma: affine ? gamma : nil,
                                beta: affine ? beta : nil, activation)
                            let key = "\(activation)"
                            log.record("y \(key)", relativeError(one.y.values, r.y))
                            log.record(
                                "dx \(key)",
                                VariantTestKit.relErr(one.dx.values.map(Double.init), r.dx, scale: r.dxScale))
                            if affine {
                                log.record("dγ \(key)", sumError(one.dgamma, r.dgamma, terms: r.dgammaTerms))
                                log.record("dβ \(key)", sumError(one.dbeta, r.dbeta, terms: r.dbetaTerms))
                            } else {
                                XCTAssertTrue(one.dgamma.isEmpty && one.dbeta.isEmpty, place)
                            }
                            checked += 1
                        }
                    }
                }
            }
        }
        log.report("MatrixRowKernelTests, worst relative errors")
        XCTAssertGreaterThan(checked, 0)
        for (label, error) in log.worst { XCTAssertLessThan(error, 2e-6, label) }
    }

    /// `x = 1e4 + 0.01·randn`: the rows are centred on the float mean and moved to the exact one in double.
    func testLargeMeanSmallSpread() throws {
        guard select(.native) else { throw XCTSkip("no native kernels on this CPU") }
        var rng = SeededGenerator(seed: 0x38_02)
        let (n, c) = (64, 256)
        let x = (0..<(n * c)).map { _ in Float(1e4 + 0.01 * Double.random(in: -1.7...1.7, using: &rng)) }
        let dy = (0..<(n * c)).map { _ in Float.random(in: -1...1, using: &rng) }
        let gamma = (0..<c).map { _ in Float.random(in: 0.5...1.5, using: &rng) }
        let beta = (0..<c).map { _ in Float.random(in: -1...1, using: &rng) }
        for (groups, activation) in [(1, FusedActivation.identity), (8, .silu)] {
            let got = try Self.run(
                Self.layer(c, groups: groups, affine: true, activation, gamma: gamma, beta: beta), [n, c],
                .channelsLast, x, dy)
            let r = Self.reference(
                n: n, c: c, groups: groups, x: x, dy: dy, gamma: gamma, beta: beta, activation)
            XCTAssertLessThan(relativeError(got.y.values, r.y), 1e-5, "y G=\(groups)")
            let dxError = VariantTestKit.relErr(got.dx.values.map(Double.init), r.dx, scale: r.dxScale)
            XCTAssertLessThan(dxError, 1e-4, "dx G=\(groups)")
            XCTAssertLessThan(sumError(got.dgamma, r.dgamma, terms: r.dgammaTerms), 1e-5, "dγ G=\(groups)")
        }
    }

    /// The native kernels switched off between a forward and its backward: the general backward runs, with the
    /// fused activation's record rebuilt from the statistics, and agrees with the native backward.
    func testBackwardAfterTheNativeKernelsWereSwitchedOff() throws {
        guard select(.native) else { throw XCTSkip("no native kernels on this CPU") }
        var rng = SeededGenerator(seed: 0x38_03)
        let (n, c) = (96, 64)
        let x = (0..<(n * c)).map { _ in Float.random(in: -2...4, using: &rng) }
        let dy = (0..<(n * c)).map { _ in Float.random(in: -1...1, using: &rng) }
        let gamma = (0..<c).map { _ in Float.random(in: 0.5...1.5, using: &rng) }
        let beta = (0..<c).map { _ in Float.random(in: -1...1, using: &rng) }
        for activation in FusedActivation.allCases {
            let native = try Self.run(
                Self.layer(c, groups: 4, affine: true, activation, gamma: gamma, beta: beta), [n, c], .channelsLast,
                x, dy)
            let layer = try Self.layer(c, groups: 4, affine: true, activation, gamma: gamma, beta: beta)
            _ = try layer.forward(Tensor(shape: [n, c], layout: .channelsLast, values: x), training: true)
            select(.portable)
            let grads = try layer.backward(Tensor(shape: [n, c], layout: .channelsLast, values: dy))
            select(.native)
            XCTAssertLessThan(relativeError(grads.input.values, native.dx.values), 1e-5, "dx \(activation)")
            XCTAssertLessThan(relativeError(grads.weight!, native.dgamma), 1e-5, "dγ \(activation)")
            XCTAssertLessThan(relativeError(grads.bias!, native.dbeta), 1e-5, "dβ \(activation)")
        }
    }
}
