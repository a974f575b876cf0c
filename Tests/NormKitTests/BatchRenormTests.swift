import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

// Batch Renormalization (spec section 3) against a float64 reference written here, finite differences, the
// committed numpy trace (scripts/make_trace_fixtures.py), state round trips and error handling.
// `VariantTestKit` at the bottom of this file holds the helpers the BRN, MABN and frozen-BN tests share.

final class BatchRenormTests: XCTestCase {
    typealias Kit = VariantTestKit

    // MARK: float64 reference

    /// The reference `BatchRenorm2d` in float64 over logical `(n, c, p)` arrays, with ghost batches.
    final class Reference {
        let channels: Int, epsilon: Double, momentum: Double, schedule: BatchRenorm.Schedule, normBatch: Int?
        var gamma: [Double], beta: [Double]
        var runningMean: [Double], runningStd: [Double], step = 0
        // Saved by forward.
        var x: [Double] = [], batch = 0, positions = 0, k = 0
        var mean: [Double] = [], std: [Double] = [], r: [Double] = [], d: [Double] = []
        var rFree: [Double] = [], dFree: [Double] = []

        init(
            channels: Int, epsilon: Double = 1e-5, momentum: Double, schedule: BatchRenorm.Schedule,
            normBatch: Int?, gamma: [Double], beta: [Double]
        ) {
            self.channels = channels
            self.epsilon = epsilon
            self.momentum = momentum
            self.schedule = schedule
            self.normBatch = normBatch
            self.gamma = gamma
            self.beta = beta
            runningMean = [Double](repeating: 0, count: channels)
            runningStd = [Double](repeating: 1, count: channels)
        }

        /// The reference's `limits()`, written out again.
        static func limits(_ s: BatchRenorm.Schedule, step t: Int) -> (Double, Double) {
            if t <= s.warmupSteps { return (1, 0) }
            let fr = min(1.0, Double(t - s.warmupSteps) / Double(max(1, s.rSteps - s.warmupSteps)))
            let fd = min(1.0, Double(t - s.warmupSteps) / Double(max(1, s.dSteps - s.warmupSteps)))
            return (1 + (s.rMax - 1) * fr, s.dMax * fd)
        }

        /// Per (ghost batch b, channel c) mean and biased variance.
        static func statistics(
            _ x: [Double], batch: Int, channels: Int, positions: Int, k: Int
        )
            -> (mean: [Double], variance: [Double])
        {
            let blocks = batch / k
            var mean = [Double](repeating: 0, count: blocks * channels), variance = mean
            for b in 0..<blocks {
                for c in 0..<channels {
                    var s = 0.0
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions { s += x[(n * channels + c) * positions + p] }
                    }
                    let mu = s / Double(k * positions)
                    var q = 0.0
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions { let e = x[(n * channels + c) * positions + p] - mu; q += e * e }
                    }
                    mean[b * channels + c] = mu
                    variance[b * channels + c] = q / Double(k * positions)
                }
            }
            return (mean, variance)
        }

        /// `y = γ((x − μ_B)/σ_B·r + d) + β` with `r`, `d` given (the function finite differences differentiate).
        static func normalize(
            _ x: [Double], batch: Int, channels: Int, positions: Int, k: Int, epsilon: Double,
            r: [Double], d: [Double], gamma: [Double], beta: [Double]
        ) -> [Double] {
            let (mean, variance) = statistics(x, batch: batch, channels: channels, positions: positions, k: k)
            var y = x
            for n in 0..<batch {
                for c in 0..<channels {
                    let s = (n / k) * channels + c, sigma = (variance[s] + epsilon).squareRoot()
                    for p in 0..<positions {
                        let i = (n * channels + c) * positions + p
                        y[i] = gamma[c] * ((x[i] - mean[s]) / sigma * r[s] + d[s]) + beta[c]
                    }
                }
            }
            return y
        }

        func forward(_ x: [Double], batch: Int, positions: Int) -> [Double] {
            k = normBatch ?? batch
            self.x = x
            self.batch = batch
            self.positions = positions
            step += 1
            let (rMax, dMax) = Reference.limits(schedule, step: step)
            let stats = Reference.statistics(x, batch: batch, channels: channels, positions: positions, k: k)
            mean = stats.mean
            std = stats.variance.map { ($0 + epsilon).squareRoot() }
            r = mean
            d = mean
            rFree = mean
            dFree = mean
            for s in 0..<mean.count {
                let c = s % channels
                rFree[s] = std[s] / runningStd[c]
                dFree[s] = (mean[s] - runningMean[c]) / runningStd[c]
                r[s] = min(max(rFree[s], 1 / rMax), rMax)
                d[s] = min(max(dFree[s], -dMax), dMax)
            }
            let y = Reference.normalize(
                x, batch: batch, channels: channels, positions: positions, k: k,
                epsilon: epsilon, r: r, d: d, gamma: gamma, beta: beta)
            let blocks = Double(batch / k)
            for c in 0..<channels {
                var mu = 0.0, sigma = 0.0
                for b in 0..<(batch / k) { mu += mean[b * channels + c]; sigma += std[b * channels + c] }
                runningMean[c] += momentum * (mu / blocks - runningMean[c])
                runningStd[c] += momentum * (sigma / blocks - runningStd[c])
            }
            return y
        }

        /// BN's backward with `g = γ·r·dy` per (ghost batch, channel); `dγ = Σ dy·x̂`, `dβ = Σ dy`.
        /// Also returns the magnitudes `Σ|dy·x̂|`, `Σ|dy|` of the parameter-gradient sums (their condition).
        func backward(
            _ dy: [Double]
        )
            -> (dx: [Double], dgamma: [Double], dbeta: [Double], dgammaScale: Double, dbetaScale: Double)
        {
            let m = Double(k * positions)
            var dx = dy, dgamma = [Double](repeating: 0, count: channels), dbeta = dgamma
            var dgammaAbs = dgamma, dbetaAbs = dgamma
            for b in 0..<(batch / k) {
                for c in 0..<channels {
                    let s = b * channels + c
                    var mg = 0.0, mgx = 0.0
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = (n * channels + c) * positions + p
                            let g = gamma[c] * r[s] * dy[i], xh = (x[i] - mean[s]) / std[s]
                            mg += g
                            mgx += g * xh
                            dgamma[c] += dy[i] * (xh * r[s] + d[s])
                            dbeta[c] += dy[i]
                            dgammaAbs[c] += abs(dy[i] * (xh * r[s] + d[s]))
                            dbetaAbs[c] += abs(dy[i])
                        }
                    }
                    mg /= m
                    mgx /= m
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = (n * channels + c) * positions + p
                            let g = gamma[c] * r[s] * dy[i], xh = (x[i] - mean[s]) / std[s]
                            dx[i] = (g - mg - xh * mgx) / std[s]
                        }
                    }
                }
            }
            return (dx, dgamma, dbeta, dgammaAbs.max()!, dbetaAbs.max()!)
        }

        func evaluate(_ x: [Double], batch: Int, positions: Int) -> [Double] {
            var y = x
            for n in 0..<batch {
                for c in 0..<channels {
                    for p in 0..<positions {
                        let i = (n * channels + c) * positions + p
                        y[i] = gamma[c] * (x[i] - runningMean[c]) / runningStd[c] + beta[c]
                    }
                }
            }
            return y
        }
    }

    /// A short schedule so a few steps are mid-relaxation.
    let shortSchedule = BatchRenorm.Schedule(warmupSteps: 2, rMax: 2.5, dMax: 1.5, rSteps: 12, dSteps: 8)

    /// A BRN layer and its reference with the same random γ, β, running statistics and step counter.
    func makePair(
        channels: Int, normBatch: Int?, affine: Bool, step: Int64, momentum: Float = 0.3,
        rng: inout SeededGenerator
    ) throws -> (BatchRenorm, Reference) {
        let layer = try BatchRenorm(
            channels: channels, momentum: momentum, schedule: shortSchedule,
            normBatch: normBatch, affine: affine)
        let gamma = affine ? Kit.randomFloats(channels, in: 0.5...1.5, &rng) : [Float](repeating: 1, count: channels)
        let beta = affine ? Kit.randomFloats(channels, in: -0.5...0.5, &rng) : [Float](repeating: 0, count: channels)
        let rm = Kit.randomFloats(channels, in: -1...1, &rng), rs = Kit.randomFloats(channels, in: 0.4...2.5, &rng)
        var state: [String: StateTensor] = [
            "running_mean": .float32(shape: [channels], values: rm),
            "running_std": .float32(shape: [channels], values: rs),
            "num_batches_tracked": .int64(shape: [], values: [step]),
        ]
        if affine {
            state["weight"] = .float32(shape: [channels], values: gamma)
            state["bias"] = .float32(shape: [channels], values: beta)
        }
        try layer.loadStateDict(state)
        let ref = Reference(
            channels: channels, epsilon: Double(layer.epsilon), momentum: Double(momentum),
            schedule: shortSchedule, normBatch: normBatch,
            gamma: gamma.map(Double.init), beta: beta.map(Double.init))
        ref.runningMean = rm.map(Double.init)
        ref.runningStd = rs.map(Double.init)
        ref.step = Int(step)
        return (layer, ref)
    }

    // MARK: Tests

    /// Forward, backward, running statistics and evaluation agree with the float64 reference to 1e-5 on random
    /// shapes of spatial rank 0–3, both layouts, whole and ghost batches, with and without affine, over three
    /// consecutive steps that cross the end of warm-up (so r and d go from fixed to clipped/free).
    func testMatchesFloat64Reference() throws {
        var rng = SeededGenerator(seed: 301)
        var worst: [String: Double] = [:]
        var clippedR = 0, freeR = 0, clippedD = 0, freeD = 0
        for rank in 0...3 {
            for layout in TensorLayout.allCases {
                for ghost in [false, true] {
                    let channels = Int.random(in: 1...4, using: &rng)
                    let spatial = Kit.randomSpatial(rank: rank, &rng)
                    let positions = spatial.reduce(1, *)
                    // Keep ≥ 4 values per set: with 2 values BN's dx is ~0 and relative errors are meaningless.
                    let k = max(Int.random(in: 2...3, using: &rng), (4 + positions - 1) / positions)
                    let batch = ghost ? k * Int.random(in: 2...3, using: &rng) : max(2, (4 + positions - 1) / positions)
                    let affine = !(rank == 2 && ghost)
                    let (layer, ref) = try makePair(
                        channels: channels, normBatch: ghost ? k : nil, affine: affine,
                        step: 1, rng: &rng)
                    let shape = [batch, channels] + spatial
                    for step in 0..<3 {
                        let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0.3, std: 1.7, &rng)
                        let dyl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
                        let x = Kit.tensor(shape, layout, xl), dy = Kit.tensor(shape, layout, dyl)
                        let y = try layer.forward(x, training: true)
                        let yr = ref.forward(xl, batch: batch, positions: positions)
                        let grads = try layer.backward(dy)
                        let gr = ref.backward(dyl)
                        let context = "rank \(rank) \(layout) ghost \(ghost) step \(step) shape \(shape)"
                        Kit.record(&worst, "y", Kit.relErr(Kit.logical(y), yr), context)
                        Kit.record(&worst, "dx", Kit.relErr(Kit.logical(grads.input), gr.dx), context)
                        if affine {
                            // dγ, dβ are sums that can cancel: errors are relative to max(max|ref|, Σ|terms|).
                            Kit.recordAffineGradients(&worst, grads, gr, context)
                        } else {
                            XCTAssertNil(grads.weight)
                            XCTAssertNil(grads.bias)
                        }
                        Kit.record(
                            &worst, "r,d",
                            max(
                                Kit.relErr(layer.lastR.map(Double.init), ref.r),
                                Kit.relErr(layer.lastD.map(Double.init), ref.d)), context)
                        Kit.record(
                            &worst, "running",
                            max(
                                Kit.relErr(layer.runningMean.map(Double.init), ref.runningMean),
                                Kit.relErr(layer.runningStd.map(Double.init), ref.runningStd)),
                            context)
                        for s in 0..<ref.r.count {
                            if ref.r[s] != ref.rFree[s] { clippedR += 1 } else { freeR += 1 }
                            if ref.d[s] != ref.dFree[s] { clippedD += 1 } else { freeD += 1 }
                        }
                        let ye = try layer.forward(x, training: false)
                        Kit.record(
                            &worst, "eval",
                            Kit.relErr(Kit.logical(ye), ref.evaluate(xl, batch: batch, positions: positions)),
                            context)
                    }
                    XCTAssertEqual(layer.batchesTracked, 4)
                }
            }
        }
        print(
            "BatchRenorm vs float64 reference, max relative errors:", Kit.describe(worst),
            "r clipped/free \(clippedR)/\(freeR), d clipped/free \(clippedD)/\(freeD)")
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-5, key) }
        XCTAssertGreaterThan(clippedR, 0)
        XCTAssertGreaterThan(freeR, 0)
        XCTAssertGreaterThan(clippedD, 0)
        XCTAssertGreaterThan(freeD, 0)
    }

    /// A shape large enough for the kernels' multi-threaded paths (73,728 elements) agrees with float64 too.
    func testLargeShapeMatchesFloat64Reference() throws {
        var rng = SeededGenerator(seed: 308)
        var worst: [String: Double] = [:]
        let shape = [4, 8, 48, 48], positions = 48 * 48
        for layout in TensorLayout.allCases {
            let (layer, ref) = try makePair(channels: 8, normBatch: 2, affine: true, step: 5, rng: &rng)
            let xl = Kit.randomLogical(shape.reduce(1, *), mean: -0.5, std: 2, &rng)
            let dyl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
            let y = try layer.forward(Kit.tensor(shape, layout, xl), training: true)
            let grads = try layer.backward(Kit.tensor(shape, layout, dyl))
            let yr = ref.forward(xl, batch: 4, positions: positions), gr = ref.backward(dyl)
            Kit.recordStep(&worst, y: y, grads, reference: yr, gr, "\(layout)")
        }
        print("BatchRenorm on [4, 8, 48, 48], max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-5, key) }
    }

    /// |μ| ≫ σ (the spec's numerics example, x = 1e4 + 0.01·randn, running mean near 1e4): training output,
    /// backward and evaluation still agree with float64 to 1e-5 (the affine is applied centred, not folded).
    func testLargeMeanStaysAccurate() throws {
        var rng = SeededGenerator(seed: 307)
        var worst: [String: Double] = [:]
        let shape = [4, 2, 3, 5], positions = 15
        for layout in TensorLayout.allCases {
            let layer = try BatchRenorm(channels: 2, momentum: 0.1, schedule: shortSchedule, normBatch: 2)
            let rm: [Float] = [1e4 + 0.004, -5e3 - 0.003], rs: [Float] = [0.012, 0.008]
            try layer.loadStateDict([
                "weight": .float32(shape: [2], values: [1.5, 0.5]), "bias": .float32(shape: [2], values: [0.25, -1]),
                "running_mean": .float32(shape: [2], values: rm), "running_std": .float32(shape: [2], values: rs),
                "num_batches_tracked": .int64(shape: [], values: [5]),
            ])
            let ref = Reference(
                channels: 2, epsilon: Double(layer.epsilon), momentum: 0.1, schedule: shortSchedule,
                normBatch: 2, gamma: [1.5, 0.5], beta: [0.25, -1])
            ref.runningMean = rm.map(Double.init)
            ref.runningStd = rs.map(Double.init)
            ref.step = 5
            for _ in 0..<3 {
                // The running mean is stored in float32 (as in PyTorch): near 1e4 its grid is ~1e-3, a tenth of
                // σ, so the reference restarts each step from the layer's stored state and the update itself is
                // checked to float32 rounding.
                ref.runningMean = layer.runningMean.map(Double.init)
                ref.runningStd = layer.runningStd.map(Double.init)
                var xl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 0.01, &rng)
                for i in xl.indices { xl[i] = Double(Float((i / positions) % 2 == 0 ? 1e4 + xl[i] : -5e3 + xl[i])) }
                let dyl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
                let x = Kit.tensor(shape, layout, xl)
                let y = try layer.forward(x, training: true)
                let grads = try layer.backward(Kit.tensor(shape, layout, dyl))
                let yr = ref.forward(xl, batch: 4, positions: positions), gr = ref.backward(dyl)
                Kit.record(&worst, "y", Kit.relErr(Kit.logical(y), yr), "\(layout)")
                Kit.record(&worst, "dx", Kit.relErr(Kit.logical(grads.input), gr.dx), "\(layout)")
                Kit.record(
                    &worst, "dgamma",
                    Kit.relErr(
                        grads.weight!.map(Double.init), gr.dgamma,
                        scale: gr.dgammaScale), "\(layout)")
                for c in 0..<2 {
                    XCTAssertEqual(
                        Double(layer.runningMean[c]), ref.runningMean[c],
                        accuracy: Double(layer.runningMean[c].ulp))
                    XCTAssertEqual(Double(layer.runningStd[c]), ref.runningStd[c], accuracy: 1e-6 * ref.runningStd[c])
                }
                ref.runningMean = layer.runningMean.map(Double.init)
                ref.runningStd = layer.runningStd.map(Double.init)
                Kit.record(
                    &worst, "eval",
                    Kit.relErr(
                        Kit.logical(try layer.forward(x, training: false)),
                        ref.evaluate(xl, batch: 4, positions: positions)), "\(layout)")
            }
        }
        print("BatchRenorm with |μ| ≫ σ, max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-5, key) }
    }

    /// The backward equals central finite differences of `L = Σ w·y` of the float64 forward with `r` and `d` held
    /// at the batch's values (dx, dγ, dβ), for whole and ghost batches.
    func testBackwardMatchesFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 302)
        var worst: [String: Double] = [:]
        let cases: [([Int], Int?, TensorLayout)] = [
            ([4, 3, 5], nil, .channelsFirst), ([6, 2, 2, 3], 3, .channelsLast),
            ([8, 3], 4, .channelsFirst), ([4, 2, 2, 2, 2], 2, .channelsLast),
        ]
        for (shape, normBatch, layout) in cases {
            let channels = shape[1], batch = shape[0], positions = shape.dropFirst(2).reduce(1, *)
            let k = normBatch ?? batch
            let (layer, ref) = try makePair(channels: channels, normBatch: normBatch, affine: true, step: 6, rng: &rng)
            let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0.5, std: 1.3, &rng)
            let wl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
            _ = try layer.forward(Kit.tensor(shape, layout, xl), training: true)
            _ = ref.forward(xl, batch: batch, positions: positions)
            let grads = try layer.backward(Kit.tensor(shape, layout, wl))
            let r = ref.r, d = ref.d, eps = ref.epsilon
            func loss(_ x: [Double], _ gamma: [Double], _ beta: [Double]) -> Double {
                let y = Reference.normalize(
                    x, batch: batch, channels: channels, positions: positions, k: k,
                    epsilon: eps, r: r, d: d, gamma: gamma, beta: beta)
                return zip(y, wl).reduce(0) { $0 + $1.0 * $1.1 }
            }
            let h = 1e-5
            let fdx = centralDifferences(at: xl, h: h) { loss($0, ref.gamma, ref.beta) }
            let fdg = centralDifferences(at: ref.gamma, h: h) { loss(xl, $0, ref.beta) }
            let fdb = centralDifferences(at: ref.beta, h: h) { loss(xl, ref.gamma, $0) }
            let context = "\(shape) normBatch \(String(describing: normBatch))"
            Kit.record(&worst, "dx", Kit.relErr(Kit.logical(grads.input), fdx), context)
            Kit.record(&worst, "dgamma", Kit.relErr(grads.weight!.map(Double.init), fdg), context)
            Kit.record(&worst, "dbeta", Kit.relErr(grads.bias!.map(Double.init), fdb), context)
            // The state was chosen so that r, d are not trivially 1, 0.
            XCTAssertTrue(r.contains { abs($0 - 1) > 1e-3 } && d.contains { abs($0) > 1e-3 }, context)
        }
        print("BatchRenorm backward vs finite differences, max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-4, key) }
    }

    /// 1,200 steps on the closed-form inputs with `Schedule.scaled(totalSteps: 1200)` match the committed numpy
    /// trace (per-step summaries of y, dx, dγ, dβ, r, d; full y, dx, eval output and state every 100 steps).
    func testMatchesCommittedTrace() throws {
        let file = try Kit.loadTrace("brn_trace")
        XCTAssertEqual(file.runs.count, 2)
        for run in file.runs {
            let stats = try XCTUnwrap(run.stats)
            // The fixture itself shows that r and d were clipped in some steps and free in others.
            for key in [
                "rClippedAfterWarmup", "rFreeAfterWarmup", "dClippedAfterWarmup", "dFreeAfterWarmup",
                "rClippedAfterRelaxed", "dClippedAfterRelaxed",
            ] {
                XCTAssertGreaterThan(stats[key] ?? 0, 0, "\(run.name): \(key)")
            }
            let schedule = try BatchRenorm.Schedule.scaled(totalSteps: run.steps)
            let sch = try XCTUnwrap(run.schedule)
            XCTAssertEqual(
                [schedule.warmupSteps, schedule.rSteps, schedule.dSteps],
                [sch.warmupSteps, sch.rSteps, sch.dSteps])
            let layer = try BatchRenorm(
                channels: run.shape[1], momentum: Float(run.momentum), schedule: schedule,
                normBatch: run.normBatch)
            let worst = try Kit.replayTrace(
                run, kind: .brn, layer: layer,
                r: { layer.lastR }, d: { layer.lastD },
                state: {
                    [
                        "running_mean": layer.runningMean.map(Double.init),
                        "running_std": layer.runningStd.map(Double.init),
                        "num_batches_tracked": [Double(layer.batchesTracked)],
                    ]
                })
            print("BatchRenorm trace '\(run.name)', max relative errors:", Kit.describe(worst))
            for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-4, "\(run.name): \(key)") }
            XCTAssertEqual(layer.batchesTracked, Int64(run.steps))
            XCTAssertEqual(layer.skippedUpdates, 0)
        }
    }

    /// The schedule's numbers: the paper's, the scaled ones, and `limits` at the phase boundaries.
    func testSchedule() throws {
        let paper = BatchRenorm.Schedule.paper
        XCTAssertEqual([paper.warmupSteps, paper.rSteps, paper.dSteps], [5000, 40000, 25000])
        XCTAssertEqual(paper.rMax, 3)
        XCTAssertEqual(paper.dMax, 5)
        let s = try BatchRenorm.Schedule.scaled(totalSteps: 1200)
        XCTAssertEqual([s.warmupSteps, s.rSteps, s.dSteps], [60, 480, 300])
        XCTAssertTrue(s.limits(step: 1) == (1, 0))
        XCTAssertTrue(s.limits(step: 60) == (1, 0))
        let mid = s.limits(step: 270)  // 210 of 420 steps for r, 210 of 240 for d
        XCTAssertEqual(mid.rMax, 2, accuracy: 1e-12)
        XCTAssertEqual(mid.dMax, 4.375, accuracy: 1e-12)
        XCTAssertTrue(s.limits(step: 300) == (1 + 2 * 240 / 420, 5))
        XCTAssertTrue(s.limits(step: 480) == (3, 5))
        XCTAssertTrue(s.limits(step: 100_000) == (3, 5))
        let odd = try BatchRenorm.Schedule.scaled(totalSteps: 10)  // 0.5 → 1, 4, 2.5 → 3
        XCTAssertEqual([odd.warmupSteps, odd.rSteps, odd.dSteps], [1, 4, 3])
        XCTAssertThrowsError(try BatchRenorm.Schedule.scaled(totalSteps: 0)) { error in
            guard case NormalizationError.invalidArgument(let layer, let name, _, _) = error else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(name, "totalSteps")
            XCTAssertEqual(layer, "BatchRenorm.Schedule")
        }
        // The step used is num_batches_tracked after the increment: the first forward after warm-up relaxes r.
        let layer = try BatchRenorm(
            channels: 1, momentum: 0,
            schedule: .init(warmupSteps: 1, rMax: 2, dMax: 1, rSteps: 2, dSteps: 2))
        let x = try Tensor(shape: [4, 1], values: [0, 1, 2, 3])  // σ_B ≈ 1.118 > σ = 1
        _ = try layer.forward(x, training: true)  // step 1: warm-up, r = 1
        XCTAssertEqual(layer.lastR, [1])
        _ = try layer.forward(x, training: true)  // step 2: r_max = 2, r free
        XCTAssertEqual(Double(layer.lastR[0]), (1.25 + 1e-5).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(layer.lastD, [1])  // d = μ_B/σ = 1.5 clipped to d_max = 1
    }

    /// stateDict → new layer → loadStateDict gives identical next outputs and gradients; a wrong shape, dtype or
    /// value throws and changes nothing.
    func testStateRoundTrip() throws {
        var rng = SeededGenerator(seed: 303)
        let schedule = try BatchRenorm.Schedule.scaled(totalSteps: 40)
        let a = try BatchRenorm(channels: 3, momentum: 0.2, schedule: schedule, normBatch: 2)
        a.weight!.value = [0.5, 1.5, -1]
        a.bias!.value = [0.1, 0, -0.3]
        for _ in 0..<10 {
            _ = try a.forward(Kit.randomTensor([4, 3, 3], .channelsLast, mean: 1, std: 2, &rng), training: true)
        }
        let state = a.stateDict()
        XCTAssertEqual(Set(state.keys), ["weight", "bias", "running_mean", "running_std", "num_batches_tracked"])
        XCTAssertEqual(state["num_batches_tracked"], .int64(shape: [], values: [10]))
        XCTAssertEqual(state["running_std"]?.shape, [3])
        let b = try BatchRenorm(channels: 3, momentum: 0.2, schedule: schedule, normBatch: 2)
        try b.loadStateDict(state)
        XCTAssertEqual(b.stateDict(), state)
        for _ in 0..<3 {
            let x = Kit.randomTensor([4, 3, 3], .channelsLast, mean: 1, std: 2, &rng)
            let dy = Kit.randomTensor([4, 3, 3], .channelsLast, mean: 0, std: 1, &rng)
            XCTAssertEqual(try a.forward(x, training: true).values, try b.forward(x, training: true).values)
            let ga = try a.backward(dy), gb = try b.backward(dy)
            XCTAssertEqual(ga.input.values, gb.input.values)
            XCTAssertEqual(ga.weight, gb.weight)
            XCTAssertEqual(try a.forward(x, training: false).values, try b.forward(x, training: false).values)
        }
        XCTAssertEqual(a.stateDict(), b.stateDict())

        // Invalid entries: nothing changes.
        let before = b.stateDict()
        Kit.assertLoadThrowsInvalidState(
            b, before, ["running_std": .float32(shape: [4], values: [1, 1, 1, 1])], "running_std")
        Kit.assertLoadThrowsInvalidState(
            b, before,
            [
                "running_mean": .float32(shape: [3, 1], values: [0, 0, 0]),
                "running_std": .float32(shape: [3], values: [9, 9, 9]),
            ], "running_mean")
        Kit.assertLoadThrowsInvalidState(
            b, before, ["running_std": .float32(shape: [3], values: [1, 0, 1])], "running_std")
        Kit.assertLoadThrowsInvalidState(
            b, before, ["num_batches_tracked": .float32(shape: [], values: [3])], "num_batches_tracked")
        var bad = before
        bad["weight"] = nil
        XCTAssertThrowsError(try b.loadStateDict(bad)) { Kit.assertIncompatibleKeys($0, missing: ["weight"]) }
        XCTAssertEqual(b.stateDict(), before)
    }

    /// Bad input throws the specific error and changes no state.
    func testBadInputThrows() throws {
        let layer = try BatchRenorm(channels: 3, normBatch: 2)
        var rng = SeededGenerator(seed: 304)
        let before = layer.stateDict()
        XCTAssertThrowsError(try layer.backward(Kit.randomTensor([4, 3], .channelsFirst, mean: 0, std: 1, &rng))) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: layer.name))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [4, 2, 5]), training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .channelMismatch(layer: layer.name, expected: 3, got: 2))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [3, 3, 5]), training: true)) {
            XCTAssertEqual(
                $0 as? NormalizationError, .normBatchDoesNotDivide(layer: layer.name, batch: 3, normBatch: 2))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [0, 3, 5]), training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .emptyBatch(layer: layer.name))
        }
        let single = try BatchRenorm(channels: 3, normBatch: 1)
        XCTAssertThrowsError(try single.forward(Tensor(zeros: [2, 3]), training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .tooFewValuesPerChannel(layer: single.name, valuesPerSet: 1))
        }
        XCTAssertEqual(single.batchesTracked, 0)
        XCTAssertEqual(layer.stateDict(), before)
        XCTAssertEqual(layer.batchesTracked, 0)

        // dy of the wrong shape, then a second backward for one forward.
        let x = Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng)
        _ = try layer.forward(x, training: true)
        XCTAssertThrowsError(try layer.backward(Tensor(zeros: [4, 3, 3]))) {
            guard case NormalizationError.shapeMismatch = $0 else { return XCTFail("\($0)") }
        }
        _ = try layer.backward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng))
        XCTAssertThrowsError(try layer.backward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng))) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: layer.name))
        }

        // Constructor arguments.
        func assertArgument(_ name: String, _ body: () throws -> BatchRenorm) {
            XCTAssertThrowsError(try body()) { error in
                guard case NormalizationError.invalidArgument(_, let n, _, _) = error else {
                    return XCTFail("\(error)")
                }
                XCTAssertEqual(n, name)
            }
        }
        assertArgument("channels") { try BatchRenorm(channels: 0) }
        assertArgument("momentum") { try BatchRenorm(channels: 2, momentum: 1.5) }
        assertArgument("epsilon") { try BatchRenorm(channels: 2, epsilon: -1) }
        assertArgument("normBatch") { try BatchRenorm(channels: 2, normBatch: 0) }
        assertArgument("schedule.rMax") {
            try BatchRenorm(channels: 2, schedule: .init(warmupSteps: 0, rMax: 0.5, dMax: 1, rSteps: 1, dSteps: 1))
        }
        assertArgument("schedule.dMax") {
            try BatchRenorm(channels: 2, schedule: .init(warmupSteps: 0, rMax: 2, dMax: -1, rSteps: 1, dSteps: 1))
        }
        assertArgument("schedule.warmupSteps") {
            try BatchRenorm(channels: 2, schedule: .init(warmupSteps: -1, rMax: 2, dMax: 1, rSteps: 1, dSteps: 1))
        }
    }

    /// A batch with NaN or infinite values leaves the running statistics alone and is counted; the next good batch
    /// updates them as usual.
    func testNonFiniteBatchDoesNotOverwriteRunningStatistics() throws {
        let layer = try BatchRenorm(channels: 2, momentum: 0.5)
        var rng = SeededGenerator(seed: 305)
        _ = try layer.forward(Kit.randomTensor([4, 2, 3], .channelsFirst, mean: 2, std: 1, &rng), training: true)
        let mean = layer.runningMean, std = layer.runningStd
        for bad in [Float.nan, .infinity] {
            var x = Kit.randomTensor([4, 2, 3], .channelsFirst, mean: 0, std: 1, &rng)
            x[1, 1, 2] = bad
            let y = try layer.forward(x, training: true)
            XCTAssertTrue(y.values.contains { !$0.isFinite })
            XCTAssertEqual(layer.runningMean, mean)
            XCTAssertEqual(layer.runningStd, std)
        }
        XCTAssertEqual(layer.skippedUpdates, 2)
        XCTAssertEqual(layer.batchesTracked, 3)
        _ = try layer.forward(Kit.randomTensor([4, 2, 3], .channelsFirst, mean: -2, std: 1, &rng), training: true)
        XCTAssertNotEqual(layer.runningMean, mean)
        XCTAssertTrue(layer.runningMean.allSatisfy(\.isFinite) && layer.runningStd.allSatisfy(\.isFinite))
        XCTAssertEqual(layer.skippedUpdates, 2)
    }

    /// An evaluation forward changes no state and keeps the pending training forward for the backward.
    func testEvaluationTouchesNoState() throws {
        var rng = SeededGenerator(seed: 306)
        let a = try BatchRenorm(channels: 3, momentum: 0.3, schedule: shortSchedule)
        let b = try BatchRenorm(channels: 3, momentum: 0.3, schedule: shortSchedule)
        for _ in 0..<4 {
            let x = Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 1, std: 2, &rng)
            _ = try a.forward(x, training: true)
            _ = try b.forward(x, training: true)
        }
        let dy = Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng)
        let state = a.stateDict()
        _ = try a.forward(Kit.randomTensor([5, 3, 7], .channelsLast, mean: 0, std: 3, &rng), training: false)
        XCTAssertEqual(a.stateDict(), state)
        XCTAssertEqual(try a.backward(dy).input.values, try b.backward(dy).input.values)
    }
}
