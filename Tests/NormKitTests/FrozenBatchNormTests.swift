import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

// Frozen BN (BN*, spec section 2) against a float64 reference written here, finite differences, its
// construction from a BatchNorm, its state dict and error handling. Helpers: `VariantTestKit`
// (BatchRenormTests.swift).

final class FrozenBatchNormTests: XCTestCase {
    typealias Kit = VariantTestKit

    /// `y = γ·(x − rm)/sqrt(rv + ε) + β` and its gradients, in float64.
    struct Reference {
        var gamma: [Double], beta: [Double], mean: [Double], variance: [Double], epsilon: Double

        func forward(_ x: [Double], channels: Int, positions: Int) -> [Double] {
            x.indices.map { i in
                let c = (i / positions) % channels
                return gamma[c] * (x[i] - mean[c]) / (variance[c] + epsilon).squareRoot() + beta[c]
            }
        }

        func backward(
            _ x: [Double], _ dy: [Double], channels: Int, positions: Int
        )
            -> (dx: [Double], dgamma: [Double], dbeta: [Double], dgammaScale: Double, dbetaScale: Double)
        {
            var dgamma = [Double](repeating: 0, count: channels), dbeta = dgamma, dgAbs = dgamma, dbAbs = dgamma
            let dx = dy.indices.map { i -> Double in
                let c = (i / positions) % channels, inv = 1 / (variance[c] + epsilon).squareRoot()
                dgamma[c] += dy[i] * (x[i] - mean[c]) * inv
                dbeta[c] += dy[i]
                dgAbs[c] += abs(dy[i] * (x[i] - mean[c]) * inv)
                dbAbs[c] += abs(dy[i])
                return gamma[c] * inv * dy[i]
            }
            return (dx, dgamma, dbeta, dgAbs.max()!, dbAbs.max()!)
        }
    }

    /// A frozen BN with random statistics and affine (through loadStateDict) and its reference.
    func makePair(channels: Int, rng: inout SeededGenerator) throws -> (FrozenBatchNorm, Reference) {
        let layer = try FrozenBatchNorm(channels: channels, trainableAffine: true)
        let gamma = Kit.randomFloats(channels, in: -1.5...1.5, &rng),
            beta = Kit.randomFloats(channels, in: -1...1, &rng)
        let mean = Kit.randomFloats(channels, in: -2...2, &rng),
            variance = Kit.randomFloats(channels, in: 0.01...4, &rng)
        try layer.loadStateDict([
            "weight": .float32(shape: [channels], values: gamma), "bias": .float32(shape: [channels], values: beta),
            "running_mean": .float32(shape: [channels], values: mean),
            "running_var": .float32(shape: [channels], values: variance),
        ])
        let d = { (v: [Float]) in v.map(Double.init) }
        return (
            layer,
            Reference(
                gamma: d(gamma), beta: d(beta), mean: d(mean), variance: d(variance),
                epsilon: Double(layer.epsilon))
        )
    }

    /// Forward (identical in training and evaluation), dx, dγ and dβ agree with the float64 reference to 1e-5
    /// on random shapes of spatial rank 0–3 in both layouts, including a batch of one sample; forwards change no
    /// statistics.
    func testMatchesFloat64Reference() throws {
        var rng = SeededGenerator(seed: 501)
        var worst: [String: Double] = [:]
        for rank in 0...3 {
            for layout in TensorLayout.allCases {
                for batch in [1, Int.random(in: 2...5, using: &rng)] {
                    let channels = Int.random(in: 1...5, using: &rng)
                    let shape = [batch, channels] + Kit.randomSpatial(rank: rank, &rng)
                    let positions = shape.dropFirst(2).reduce(1, *)
                    let (layer, ref) = try makePair(channels: channels, rng: &rng)
                    let state = layer.stateDict()
                    let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0.5, std: 2, &rng)
                    let dyl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
                    let x = Kit.tensor(shape, layout, xl)
                    let y = try layer.forward(x, training: true)
                    let ye = try layer.forward(x, training: false)
                    XCTAssertEqual(y.values, ye.values, "training and evaluation differ")
                    let grads = try layer.backward(Kit.tensor(shape, layout, dyl))
                    let gr = ref.backward(xl, dyl, channels: channels, positions: positions)
                    let context = "\(shape) \(layout)"
                    Kit.recordStep(
                        &worst, y: y, grads, reference: ref.forward(xl, channels: channels, positions: positions), gr,
                        context)
                    XCTAssertEqual(layer.stateDict(), state, "a forward changed the frozen statistics")
                }
            }
        }
        print("FrozenBatchNorm vs float64 reference, max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-5, key) }
    }

    /// |running_mean| ≫ the spread of x (x = 1e4 + 0.01·randn): the output keeps 1e-5 relative accuracy.
    func testLargeMeanStaysAccurate() throws {
        var rng = SeededGenerator(seed: 505)
        let layer = try FrozenBatchNorm(channels: 2)
        let rm: [Float] = [1e4, -3e3], rv: [Float] = [1e-4, 4e-4]
        try layer.loadStateDict([
            "weight": .float32(shape: [2], values: [2, 1]), "bias": .float32(shape: [2], values: [0.5, 0]),
            "running_mean": .float32(shape: [2], values: rm), "running_var": .float32(shape: [2], values: rv),
        ])
        let ref = Reference(
            gamma: [2, 1], beta: [0.5, 0], mean: rm.map(Double.init), variance: rv.map(Double.init),
            epsilon: Double(layer.epsilon))
        var worst = 0.0
        for layout in TensorLayout.allCases {
            var xl = Kit.randomLogical(3 * 2 * 8, mean: 0, std: 0.01, &rng)
            for i in xl.indices { xl[i] = Double(Float(Double(rm[(i / 8) % 2]) + xl[i])) }
            let y = try layer.forward(Kit.tensor([3, 2, 8], layout, xl), training: true)
            worst = max(worst, Kit.relErr(Kit.logical(y), ref.forward(xl, channels: 2, positions: 8)))
        }
        print("FrozenBatchNorm with |running_mean| ≫ σ: max relative error \(worst)")
        XCTAssertLessThanOrEqual(worst, 1e-5)
    }

    /// dx, dγ, dβ equal central finite differences of `L = Σ w·y` of the float64 forward.
    func testBackwardMatchesFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 502)
        var worst: [String: Double] = [:]
        for (shape, layout) in [
            ([3, 4, 5], TensorLayout.channelsFirst), ([2, 3, 2, 2], .channelsLast), ([4, 2], .channelsFirst),
        ] {
            let channels = shape[1], positions = shape.dropFirst(2).reduce(1, *)
            let (layer, ref) = try makePair(channels: channels, rng: &rng)
            let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1.5, &rng)
            let wl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
            _ = try layer.forward(Kit.tensor(shape, layout, xl), training: true)
            let grads = try layer.backward(Kit.tensor(shape, layout, wl))
            func loss(_ x: [Double], _ r: Reference) -> Double {
                zip(r.forward(x, channels: channels, positions: positions), wl).reduce(0) { $0 + $1.0 * $1.1 }
            }
            let h = 1e-5
            let fdx = centralDifferences(at: xl, h: h) { loss($0, ref) }
            let fdg = centralDifferences(at: ref.gamma, h: h) { gamma in
                var moved = ref
                moved.gamma = gamma
                return loss(xl, moved)
            }
            let fdb = centralDifferences(at: ref.beta, h: h) { beta in
                var moved = ref
                moved.beta = beta
                return loss(xl, moved)
            }
            Kit.record(&worst, "dx", Kit.relErr(Kit.logical(grads.input), fdx), "\(shape)")
            Kit.record(&worst, "dgamma", Kit.relErr(grads.weight!.map(Double.init), fdg), "\(shape)")
            Kit.record(&worst, "dbeta", Kit.relErr(grads.bias!.map(Double.init), fdb), "\(shape)")
        }
        print("FrozenBatchNorm backward vs finite differences, max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-4, key) }
    }

    /// Freezing a trained BatchNorm copies ε, its running statistics and affine: the frozen layer's output (in
    /// training mode too) equals the BatchNorm's evaluation output; γ, β are frozen unless asked otherwise.
    func testFromBatchNorm() throws {
        var rng = SeededGenerator(seed: 503)
        for affine in [true, false] {
            let bn = try BatchNorm(channels: 3, epsilon: 1e-3, momentum: 0.3, affine: affine)
            if affine {
                bn.weight!.value = [0.5, -1, 2]
                bn.bias!.value = [0.1, 0.2, -0.3]
            }
            for _ in 0..<5 {
                _ = try bn.forward(
                    Kit.randomTensor([4, 3, 2, 3], .channelsFirst, mean: 1, std: 3, &rng), training: true)
            }
            let frozen = try FrozenBatchNorm(bn)
            XCTAssertEqual(frozen.epsilon, 1e-3)
            XCTAssertEqual(frozen.runningMean, bn.runningMean)
            XCTAssertEqual(frozen.runningVariance, bn.runningVariance)
            XCTAssertEqual(frozen.weight!.value, affine ? [0.5, -1, 2] : [1, 1, 1])
            XCTAssertEqual(frozen.bias!.value, affine ? [0.1, 0.2, -0.3] : [0, 0, 0])
            XCTAssertFalse(frozen.weight!.isTrainable || frozen.bias!.isTrainable)
            XCTAssertTrue(try FrozenBatchNorm(bn, trainableAffine: true).weight!.isTrainable)
            for layout in TensorLayout.allCases {
                let x = Kit.randomTensor([2, 3, 4, 2], layout, mean: 0, std: 2, &rng)
                let expected = Kit.logical(try bn.forward(x, training: false))
                XCTAssertLessThanOrEqual(Kit.relErr(Kit.logical(try frozen.forward(x, training: true)), expected), 1e-6)
            }
            let state = frozen.stateDict()
            XCTAssertEqual(state["running_var"], .float32(shape: [3], values: bn.runningVariance))
        }
    }

    /// The `trainableAffine` flag sets `isTrainable`; gradients are computed either way.
    func testTrainableAffineFlag() throws {
        let frozen = try FrozenBatchNorm(channels: 2)
        XCTAssertFalse(frozen.weight!.isTrainable)
        XCTAssertFalse(frozen.bias!.isTrainable)
        let trainable = try FrozenBatchNorm(channels: 2, trainableAffine: true)
        XCTAssertTrue(trainable.weight!.isTrainable && trainable.bias!.isTrainable)
        XCTAssertEqual(frozen.parameters.count, 2)
        let x = try Tensor(shape: [2, 2], values: [1, 2, 3, 4])
        _ = try frozen.forward(x, training: true)
        let grads = try frozen.backward(try Tensor(shape: [2, 2], values: [1, 1, 1, 1]))
        // dγ_c = Σ dy·x/sqrt(1 + ε) with rm = 0, rv = 1; dβ_c = Σ dy.
        XCTAssertEqual(Double(grads.weight![0]), 4 / (1 + 1e-5).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(Double(grads.weight![1]), 6 / (1 + 1e-5).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(grads.bias!, [2, 2])
    }

    /// The state dict is exactly weight, bias, running_mean, running_var; it round-trips; invalid entries throw
    /// and change nothing.
    func testStateDict() throws {
        var rng = SeededGenerator(seed: 504)
        let (a, _) = try makePair(channels: 3, rng: &rng)
        let state = a.stateDict()
        XCTAssertEqual(Set(state.keys), ["weight", "bias", "running_mean", "running_var"])
        for (_, entry) in state { XCTAssertEqual(entry.shape, [3]) }
        let b = try FrozenBatchNorm(channels: 3)
        try b.loadStateDict(state)
        XCTAssertEqual(b.stateDict(), state)
        let x = Kit.randomTensor([2, 3, 4], .channelsLast, mean: 0, std: 1, &rng)
        XCTAssertEqual(try a.forward(x, training: false).values, try b.forward(x, training: false).values)

        Kit.assertLoadThrowsInvalidState(
            b, state, ["running_var": .float32(shape: [4], values: [1, 1, 1, 1])], "running_var")
        Kit.assertLoadThrowsInvalidState(
            b, state, ["running_var": .float32(shape: [3], values: [1, -1, 1])], "running_var")
        Kit.assertLoadThrowsInvalidState(
            b, state, ["running_mean": .int64(shape: [3], values: [0, 0, 0])], "running_mean")
        var bad = state
        bad["weight"] = nil
        XCTAssertThrowsError(try b.loadStateDict(bad)) { Kit.assertIncompatibleKeys($0, missing: ["weight"]) }
        XCTAssertEqual(b.stateDict(), state)
    }

    /// Bad input throws the specific error.
    func testBadInputThrows() throws {
        XCTAssertThrowsError(try FrozenBatchNorm(channels: 0)) {
            guard case NormalizationError.invalidArgument(_, "channels", _, _) = $0 else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try FrozenBatchNorm(channels: 2, epsilon: -1)) {
            guard case NormalizationError.invalidArgument(_, "epsilon", _, _) = $0 else { return XCTFail("\($0)") }
        }
        let layer = try FrozenBatchNorm(channels: 3)
        XCTAssertThrowsError(try layer.backward(Tensor(zeros: [2, 3]))) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: layer.name))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [2, 4, 2]), training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .channelMismatch(layer: layer.name, expected: 3, got: 4))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [0, 3, 2]), training: false)) {
            XCTAssertEqual($0 as? NormalizationError, .emptyBatch(layer: layer.name))
        }
        // An evaluation forward saves nothing for the backward.
        _ = try layer.forward(Tensor(zeros: [2, 3, 2]), training: false)
        XCTAssertThrowsError(try layer.backward(Tensor(zeros: [2, 3, 2]))) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: layer.name))
        }
        // One value per channel is fine (no batch statistics); a wrong-shaped dy is not; one backward per forward.
        _ = try layer.forward(Tensor(zeros: [1, 3]), training: true)
        XCTAssertThrowsError(try layer.backward(Tensor(zeros: [1, 3, 1]))) {
            guard case NormalizationError.shapeMismatch = $0 else { return XCTFail("\($0)") }
        }
        XCTAssertNoThrow(try layer.backward(Tensor(zeros: [1, 3])))
        XCTAssertThrowsError(try layer.backward(Tensor(zeros: [1, 3]))) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: layer.name))
        }
    }
}
