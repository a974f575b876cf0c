import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// Spec rules that no other test pinned on their own, each checked against values computed here in float64 from the
/// spec's formulas (docs/NORMALIZATION.md), with a check that the rule's plausible misreadings give outputs far enough
/// from the expected ones that the comparison can fail.
final class SpecConformanceTests: XCTestCase {
    typealias Kit = VariantTestKit

    // MARK: Spec §4: MABN's thresholds when warm-up is longer than 1,000 iterations

    /// MABN with `warmup = 1003 > 1000` and `S_buf = 4`, stepped through iterations 999…1006 from a loaded state
    /// (random ring buffers, running second moments that put `r` away from 1 and clip it in one channel). Two of the
    /// spec's boundaries move with `warmup` here, which the other MABN tests (warm-up 100 or 4) never reach:
    /// - `useBatch = (t ≤ S_buf) or (t < warmup)`: iterations up to 1002 normalize with the batch's `χ²_t`, 1003 on
    ///   with the SMA (strict `<`), in the forward and the backward (`Ψ̄`);
    /// - `r = 1` while `t ≤ max(1000, warmup) = 1003` (not 1000), then `clip(sqrt(v+ε)/sqrt(runningχ²+ε), 1/5, 5)`.
    /// `y`, `dx`, `r` and the state follow a float64 model written here; `r` is exactly 1 up to 1003 although the
    /// free ratio is far from 1 there, and the output at 1003 is far from the batch-statistics alternative.
    func testMABNWarmupLongerThanOneThousandMovesTheSMAStartAndTheRThreshold() throws {
        let channels = 3, bufferSize = 4, warmup = 1003, eps = 1e-5, keep = 0.98
        let shape = [3, channels, 5], positions = 5, batch = 3, count = Double(batch * positions)
        var rng = SeededGenerator(seed: 0x5EC4)
        let layer = try MovingAverageBatchNorm(channels: channels, bufferSize: bufferSize, warmup: warmup)
        var gamma = Kit.randomFloats(channels, in: 0.5...1.5, &rng).map(Double.init)
        gamma[1] = -gamma[1]
        let beta = Kit.randomFloats(channels, in: -0.5...0.5, &rng).map(Double.init)
        var running: [Double] = [0.3, 6, 200]  // r ≈ 1.9–2.6, ≈ 0.5, clipped at 1/5 (χ² of the inputs ≈ 2.3)
        var ringX2 = Kit.randomFloats(bufferSize * channels, in: 0.5...4, &rng).map(Double.init)
        var ringPsi = Kit.randomFloats(bufferSize * channels, in: -0.3...0.3, &rng).map(Double.init)
        try layer.loadStateDict([
            "weight": .float32(shape: [channels], values: gamma.map(Float.init)),
            "bias": .float32(shape: [channels], values: beta.map(Float.init)),
            "running_var": .float32(shape: [channels], values: running.map(Float.init)),
            "iters": .int64(shape: [], values: [998]),
            "buffer_x2": .float32(shape: [bufferSize, channels], values: ringX2.map(Float.init)),
            "buffer_gz": .float32(shape: [bufferSize, channels], values: ringPsi.map(Float.init)),
        ])
        func ringMean(_ ring: [Double], _ c: Int) -> Double {
            (0..<bufferSize).reduce(0) { $0 + ring[$1 * channels + c] } / Double(bufferSize)
        }
        func at(_ n: Int, _ c: Int, _ p: Int) -> Int { (n * channels + c) * positions + p }
        var t = 998
        for _ in 0..<8 {
            let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0.2, std: 1.5, &rng)
            let dyl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
            t += 1
            let slot = t % bufferSize, useBatch = t <= bufferSize || t < warmup
            var y = xl, dx = xl, alternative = xl, r = [Double](repeating: 1, count: channels), freeR = r
            var v = [Double](repeating: 0, count: channels)
            for c in 0..<channels {
                var x2 = 0.0
                for n in 0..<batch { for p in 0..<positions { x2 += xl[at(n, c, p)] * xl[at(n, c, p)] } }
                x2 /= count
                ringX2[slot * channels + c] = x2
                v[c] = useBatch ? x2 : ringMean(ringX2, c)
                freeR[c] = min(max((v[c] + eps).squareRoot() / (running[c] + eps).squareRoot(), 0.2), 5)
                if t > max(1000, warmup) { r[c] = freeR[c] }
                running[c] = keep * running[c] + (1 - keep) * v[c]
                let otherV = useBatch ? ringMean(ringX2, c) : x2  // the other side of the useBatch boundary
                for n in 0..<batch {
                    for p in 0..<positions {
                        let i = at(n, c, p)
                        y[i] = gamma[c] * r[c] * xl[i] / (v[c] + eps).squareRoot() + beta[c]
                        alternative[i] = gamma[c] * r[c] * xl[i] / (otherV + eps).squareRoot() + beta[c]
                    }
                }
                // Backward: Ψ_t = mean(g·z) into its slot, then Ψ̄ (the batch's, or the SMA of bufΨ).
                let root = (v[c] + eps).squareRoot()
                var psi = 0.0
                for n in 0..<batch {
                    for p in 0..<positions { psi += dyl[at(n, c, p)] * gamma[c] * r[c] * xl[at(n, c, p)] / root }
                }
                psi /= count
                ringPsi[slot * channels + c] = psi
                let psiBar = useBatch ? psi : ringMean(ringPsi, c)
                for n in 0..<batch {
                    for p in 0..<positions {
                        let i = at(n, c, p)
                        dx[i] = (dyl[i] * gamma[c] * r[c] - xl[i] / root * psiBar) / root
                    }
                }
            }
            let x = Kit.tensor(shape, .channelsFirst, xl)
            let out = try layer.forward(x, training: true)
            let grads = try layer.backward(Kit.tensor(shape, .channelsFirst, dyl))
            let context = "t = \(t)"
            XCTAssertEqual(layer.iterations, Int64(t), context)
            XCTAssertLessThanOrEqual(Kit.relErr(Kit.logical(out), y), 1e-5, "y, \(context)")
            XCTAssertLessThanOrEqual(Kit.relErr(Kit.logical(grads.input), dx), 1e-5, "dx, \(context)")
            XCTAssertLessThanOrEqual(
                Kit.relErr(layer.runningSecondMoment.map(Double.init), running), 1e-6, "runningχ², \(context)")
            XCTAssertLessThanOrEqual(
                Kit.relErr(layer.backwardStatisticBuffer.map(Double.init), ringPsi), 1e-5, "bufΨ, \(context)")
            if t <= warmup {
                XCTAssertEqual(layer.lastR, [Float](repeating: 1, count: channels), "r before max(1000, warmup)")
                XCTAssertGreaterThan(freeR.map { abs($0 - 1) }.max()!, 0.4, "the free r is far from 1, \(context)")
            } else {
                XCTAssertLessThanOrEqual(Kit.relErr(layer.lastR.map(Double.init), r), 1e-6, "r, \(context)")
                XCTAssertTrue(r.contains(0.2), "one channel's r is clipped at 1/5, \(context)")
            }
            if t == warmup - 1 || t == warmup {
                // Which side of the boundary matters: the alternative statistic is far from the expected one.
                XCTAssertGreaterThan(Kit.relErr(Kit.logical(out), alternative), 1e-2, "useBatch boundary, \(context)")
            }
        }
    }

    // MARK: Spec §4: MABN's parameters, initial state and first iteration

    /// A default MABN layer holds the spec's parameters and state (`ε = 1e-5`, EMA weight 0.98 on the old value,
    /// `warmup = 100`, `γ = 1`, `β = 0`, `runningχ² = 1`, zero ring buffers, `t = 0`), and its first iteration
    /// (a warm-up one) does exactly what the spec lists: `t = 1`, `bufχ²[1 mod S_buf] = χ²_1` (the other slots stay
    /// 0), `y = x/sqrt(χ²_1 + ε)`, the EMA already updated, `runningχ² = 0.98 + 0.02·χ²_1`; then the backward writes
    /// `bufΨ[1 mod S_buf] = Ψ_1 = mean(dy·z)` and `dx = (dy − z·Ψ_1)/sqrt(χ²_1 + ε)`, `dγ = Σ dy·z`, `dβ = Σ dy`.
    /// With `S_buf = 1` the slot is 0.
    func testMABNDefaultsAndFirstIteration() throws {
        for bufferSize in [4, 1] {
            let channels = 2, batch = 2, positions = 3, shape = [batch, channels, positions]
            let layer = try MovingAverageBatchNorm(channels: channels, bufferSize: bufferSize)
            XCTAssertEqual(layer.epsilon, 1e-5)
            XCTAssertEqual(layer.oldValueWeight, 0.98)
            XCTAssertEqual(layer.warmup, 100)
            XCTAssertEqual(layer.weight?.value, [1, 1])
            XCTAssertEqual(layer.bias?.value, [0, 0])
            XCTAssertEqual(layer.runningSecondMoment, [1, 1])
            XCTAssertEqual(layer.iterations, 0)
            XCTAssertEqual(layer.secondMomentBuffer, [Float](repeating: 0, count: bufferSize * channels))
            XCTAssertEqual(layer.backwardStatisticBuffer, [Float](repeating: 0, count: bufferSize * channels))

            var rng = SeededGenerator(seed: 0x5EC5 + UInt64(bufferSize))
            let xl = Kit.randomLogical(batch * channels * positions, mean: 0.5, std: 2, &rng)
            let dyl = Kit.randomLogical(batch * channels * positions, mean: 0, std: 1, &rng)
            func at(_ n: Int, _ c: Int, _ p: Int) -> Int { (n * channels + c) * positions + p }
            var y = xl, dx = xl, chi2 = [0.0, 0.0], psi = [0.0, 0.0], dgamma = [0.0, 0.0], dbeta = [0.0, 0.0]
            let m = Double(batch * positions)
            for c in 0..<channels {
                for n in 0..<batch { for p in 0..<positions { chi2[c] += xl[at(n, c, p)] * xl[at(n, c, p)] / m } }
                let root = (chi2[c] + 1e-5).squareRoot()
                for n in 0..<batch {
                    for p in 0..<positions {
                        let i = at(n, c, p)
                        y[i] = xl[i] / root
                        psi[c] += dyl[i] * y[i] / m
                        dgamma[c] += dyl[i] * y[i]
                        dbeta[c] += dyl[i]
                    }
                }
                for n in 0..<batch {
                    for p in 0..<positions { let i = at(n, c, p); dx[i] = (dyl[i] - y[i] * psi[c]) / root }
                }
            }
            let out = try layer.forward(Kit.tensor(shape, .channelsFirst, xl), training: true)
            XCTAssertEqual(layer.iterations, 1)
            XCTAssertLessThanOrEqual(Kit.relErr(Kit.logical(out), y), 1e-6, "y, S_buf \(bufferSize)")
            XCTAssertLessThanOrEqual(
                Kit.relErr(layer.runningSecondMoment.map(Double.init), chi2.map { 0.98 + 0.02 * $0 }), 1e-6,
                "runningχ² after the first iteration, S_buf \(bufferSize)")
            let slot = 1 % bufferSize
            var expectedRing = [Double](repeating: 0, count: bufferSize * channels)
            for c in 0..<channels { expectedRing[slot * channels + c] = chi2[c] }
            XCTAssertLessThanOrEqual(
                Kit.relErr(layer.secondMomentBuffer.map(Double.init), expectedRing), 1e-6, "bufχ², S_buf \(bufferSize)")
            XCTAssertEqual(layer.lastR, [1, 1])

            let grads = try layer.backward(Kit.tensor(shape, .channelsFirst, dyl))
            XCTAssertLessThanOrEqual(Kit.relErr(Kit.logical(grads.input), dx), 1e-5, "dx, S_buf \(bufferSize)")
            XCTAssertLessThanOrEqual(Kit.relErr(grads.weight!.map(Double.init), dgamma), 1e-5, "dγ")
            XCTAssertLessThanOrEqual(Kit.relErr(grads.bias!.map(Double.init), dbeta), 1e-5, "dβ")
            for c in 0..<channels { expectedRing[slot * channels + c] = psi[c] }
            XCTAssertLessThanOrEqual(
                Kit.relErr(layer.backwardStatisticBuffer.map(Double.init), expectedRing), 1e-5,
                "bufΨ, S_buf \(bufferSize)")
        }
    }

    // MARK: Spec §3: BRN in warm-up is BN; its running σ includes ε and its evaluation adds none

    /// During the schedule's warm-up (`r_max = 1`, `d_max = 0`) BRN is plain BN: `y`, `dx`, `dγ`, `dβ` agree with the
    /// shared float64 BN reference (a different reference from the BRN tests'), whole batch and ghost batches of 2,
    /// both layouts. With `α = 1` the running statistics become the (average) batch ones, `μ ← μ_B` and
    /// `σ ← sqrt(var_B + ε)` (ε inside the running standard deviation), and evaluation on the same whole batch gives
    /// back the training output, `(x − μ)/σ` with no second `ε`. The inputs' spread (0.01, `var ≈ 1e-4`) makes `ε`
    /// a 5 % effect: `ε` added again in evaluation, or left out of `σ`, would be far outside the tolerance.
    func testBatchRenormInWarmupIsBatchNormAndEvaluatesWithoutASecondEpsilon() throws {
        let log = ErrorLog()
        var rng = SeededGenerator(seed: 0x5EC3)
        for layout in TensorLayout.allCases {
            for normBatch in [nil, 2] as [Int?] {
                let channels = 3, shape = [4, channels, 5]
                let layer = try BatchRenorm(channels: channels, momentum: 1, schedule: .paper, normBatch: normBatch)
                let (gamma, beta) = randomizeAffine(layer, using: &rng)
                let x = randomTensor(shape, layout: layout, scale: 0.01, offset: 0.3, using: &rng)
                let dy = randomTensor(shape, layout: layout, using: &rng)
                let label = "\(layout) normBatch \(normBatch.map(String.init) ?? "nil")"
                let ref = try checkTrainingStep(
                    layer, sets: .batchNorm(normBatch: normBatch ?? 4), x: x, dy: dy, gamma: gamma, beta: beta,
                    label: label, log: log)
                XCTAssertEqual(layer.lastR, [Float](repeating: 1, count: layer.lastR.count), label)
                XCTAssertEqual(layer.lastD, [Float](repeating: 0, count: layer.lastD.count), label)
                // α = 1: the average over ghost batches of μ_B and of σ_B = sqrt(var_B + ε).
                let blocks = 4 / (normBatch ?? 4)
                let sigma = (0..<channels).map { c in
                    (0..<blocks).reduce(0.0) { $0 + (ref.variance[$1 * channels + c] + 1e-5).squareRoot() }
                        / Double(blocks)
                }
                let mu = (0..<channels).map { c in
                    (0..<blocks).reduce(0.0) { $0 + ref.mean[$1 * channels + c] } / Double(blocks)
                }
                XCTAssertLessThanOrEqual(relativeError(layer.runningStd, sigma), 1e-6, "running σ, \(label)")
                XCTAssertLessThanOrEqual(relativeError(layer.runningMean, mu), 1e-6, "running μ, \(label)")
                guard normBatch == nil else { continue }
                let eval = try layer.forward(x, training: false)
                XCTAssertLessThanOrEqual(relativeError(eval, ref.y), 1e-5, "eval = training output, \(label)")
                // The misreadings are far away: ε twice, or no ε at all.
                let rx = RefTensor(x)
                for (name, divisor) in [("ε twice", 2e-5), ("no ε", 0.0)] {
                    var other = ref.y
                    for n in 0..<4 {
                        for c in 0..<channels {
                            for p in 0..<5 {
                                other[n, c, p] =
                                    gamma![c] * (rx[n, c, p] - ref.mean[c])
                                    / (ref.variance[c] + divisor).squareRoot() + beta![c]
                            }
                        }
                    }
                    XCTAssertGreaterThan(relativeError(eval, other), 1e-2, "\(name) would be visible, \(label)")
                }
            }
        }
        log.report("BatchRenorm in warm-up vs the float64 BN reference")
    }

    // MARK: Spec §2 and §9: SyncBN with one worker is BN, including the one-value error

    /// SyncBN over a single worker (`R = 1`) refuses a training batch with one value per channel, as BN does
    /// (`tooFewValuesPerChannel`, `valuesPerSet: 1`), and changes no state; with two values it trains like BN.
    func testSyncBatchNormWithOneWorkerRefusesOneValuePerChannel() throws {
        let bn = try BatchNorm(channels: 3)
        bn.crossWorkerReduction = InProcessWorkers.Handle(InProcessWorkers(count: 1), worker: 0)
        var rng = SeededGenerator(seed: 0x5EC9)
        for shape in [[1, 3], [1, 3, 1, 1]] {
            XCTAssertThrowsError(try bn.forward(randomTensor(shape, using: &rng), training: true)) {
                XCTAssertEqual($0 as? NormalizationError, .tooFewValuesPerChannel(layer: bn.name, valuesPerSet: 1))
            }
        }
        XCTAssertEqual(bn.batchesTracked, 0)
        XCTAssertEqual(bn.runningMean, [0, 0, 0])
        XCTAssertEqual(bn.runningVariance, [1, 1, 1])
        XCTAssertEqual(bn.skippedUpdates, 0)
        let plain = try BatchNorm(channels: 3)
        let x = randomTensor([2, 3], using: &rng)
        let synchronized = try bn.forward(x, training: true), single = try plain.forward(x, training: true)
        XCTAssertLessThanOrEqual(relativeError(synchronized.values, single.values), 1e-6)
        XCTAssertLessThanOrEqual(relativeError(bn.runningVariance, plain.runningVariance), 1e-6)
    }
}
