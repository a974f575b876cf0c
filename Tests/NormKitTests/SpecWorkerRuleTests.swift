import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// Spec rules about BatchNorm across the workers of a data-parallel job, each checked on in-process workers against
/// values computed here in float64: per-worker BN's running statistics averaged over the workers (spec §9), SyncBN's
/// per-worker `dγ`, `dβ` (spec §9, documented in BatchNorm.swift), and a non-finite batch under SyncBN (spec §2).
final class SpecWorkerRuleTests: XCTestCase {
    /// Runs `body(w)` for every worker `w` on a thread of its own (each waits for the others in its collectives) and
    /// rethrows the first worker's error.
    private func onWorkers(_ count: Int, _ body: @escaping (Int) throws -> Void) throws {
        let lock = NSLock()
        var failures = [Error?](repeating: nil, count: count)
        runConcurrently(count) { w in
            do { try body(w) } catch {
                lock.lock(); failures[w] = error; lock.unlock()
            }
        }
        if let failure = failures.compactMap({ $0 }).first { throw failure }
    }

    /// The tensors' samples one after the other (same channels, spatial shape and layout).
    private func concatenated(_ parts: [Tensor]) -> Tensor {
        var shape = parts[0].shape
        shape[0] = parts.reduce(0) { $0 + $1.batch }
        let logical = parts.flatMap { $0.converted(to: .channelsFirst).values }
        return try! Tensor(shape: shape, values: logical).converted(to: parts[0].layout)
    }

    /// Samples `range` of `x` as a tensor of their own, in `x`'s layout.
    private func samples(_ x: Tensor, _ range: Range<Int>) -> Tensor {
        let first = x.converted(to: .channelsFirst), perSample = x.count / x.batch
        var shape = x.shape
        shape[0] = range.count
        let values = Array(first.values[(range.lowerBound * perSample)..<(range.upperBound * perSample)])
        return try! Tensor(shape: shape, values: values).converted(to: x.layout)
    }

    // MARK: Spec §9: per-worker BN, running statistics averaged over the workers

    /// Three workers, each with its own BatchNorm (no SyncBN) and its own batch, drawn from different
    /// distributions so their batch statistics differ. After every step's forward and
    /// ``BatchNorm/averageRunningStatistics(over:)``, every worker holds exactly the same running mean and variance,
    /// equal to the mean over workers of the per-worker PyTorch-convention updates computed here in float64
    /// (`r_w = (1−m)·r + m·stat_w`, the variance unbiased), and to one process's ghost batches of the per-worker
    /// size over the concatenated batch. Before the averaging each worker holds its own update (they differ).
    func testPerWorkerRunningStatisticsAreTheMeanOverWorkersAndAgree() throws {
        let workers = 3, perWorker = 4, channels = 3, steps = 3, momentum = 0.1
        let shape = [perWorker, channels, 5]
        var rng = SeededGenerator(seed: 0x5E09)
        let batches: [[Tensor]] = (0..<steps).map { s in
            (0..<workers).map { w in
                randomTensor(shape, scale: 1 + Float(w), offset: Float(w) - 1 + 0.5 * Float(s), using: &rng)
            }
        }
        typealias State = (mean: [Float], variance: [Float])
        let lock = NSLock()
        var local = [[State?]](repeating: [State?](repeating: nil, count: workers), count: steps)
        var averaged = local
        let group = InProcessWorkers(count: workers)
        try onWorkers(workers) { w in
            let bn = try BatchNorm(channels: channels, momentum: Float(momentum))
            let handle = InProcessWorkers.Handle(group, worker: w)
            for s in 0..<steps {
                _ = try bn.forward(batches[s][w], training: true)
                let mine: State = (bn.runningMean, bn.runningVariance)
                try bn.averageRunningStatistics(over: handle)
                let shared: State = (bn.runningMean, bn.runningVariance)
                lock.lock()
                local[s][w] = mine
                averaged[s][w] = shared
                lock.unlock()
            }
        }
        let ghost = try BatchNorm(channels: channels, momentum: Float(momentum), normBatch: perWorker)
        var mean = [Double](repeating: 0, count: channels), variance = [Double](repeating: 1, count: channels)
        for s in 0..<steps {
            // Float64: each worker's own update from the shared state, then their mean.
            var expectedMean = [Double](repeating: 0, count: channels), expectedVariance = expectedMean
            var perWorkerMeans: [[Double]] = []
            for w in 0..<workers {
                let ref = Float64Reference.forward(
                    RefTensor(batches[s][w]), sets: .batchNorm(normBatch: perWorker), gamma: nil, beta: nil)
                var m = mean, v = variance
                Float64Reference.updateRunning(mean: &m, variance: &v, with: ref, momentum: momentum)
                perWorkerMeans.append(m)
                let own = local[s][w]!
                XCTAssertLessThanOrEqual(relativeError(own.mean, m), referenceTolerance, "step \(s) worker \(w) mean")
                XCTAssertLessThanOrEqual(
                    relativeError(own.variance, v), referenceTolerance, "step \(s) worker \(w) variance")
                for c in 0..<channels {
                    expectedMean[c] += m[c] / Double(workers)
                    expectedVariance[c] += v[c] / Double(workers)
                }
            }
            XCTAssertGreaterThan(
                relativeError(perWorkerMeans[0], perWorkerMeans[1]), 1e-2,
                "step \(s): the workers' own updates must differ, or the averaging is not observable")
            for w in 0..<workers {
                let state = averaged[s][w]!
                XCTAssertEqual(state.mean, averaged[s][0]!.mean, "step \(s): worker \(w)'s running mean")
                XCTAssertEqual(state.variance, averaged[s][0]!.variance, "step \(s): worker \(w)'s running variance")
                assertNear(state.mean, expectedMean, 1e-6, "step \(s) worker \(w): mean of the workers' running means")
                assertNear(
                    state.variance, expectedVariance, 1e-6,
                    "step \(s) worker \(w): mean of the workers' running variances")
            }
            // One process with ghost batches of the per-worker size over the union makes the same update.
            _ = try ghost.forward(concatenated(batches[s]), training: true)
            assertNear(averaged[s][0]!.mean, ghost.runningMean, 1e-6, "step \(s): vs ghost batches, mean")
            assertNear(averaged[s][0]!.variance, ghost.runningVariance, 1e-6, "step \(s): vs ghost batches, variance")
            (mean, variance) = (expectedMean, expectedVariance)
        }
    }

    // MARK: Spec §9: SyncBN's dγ, dβ are each worker's own sums

    /// SyncBN on workers of unequal batches whose samples come from different distributions (so each worker's own
    /// `x̂` is far from the global one): each worker's `dγ_c` is `Σ dy·x̂` and its `dβ_c` is `Σ dy` over **its own**
    /// samples, with `x̂` normalized by the **global** batch's statistics (float64 reference over the union); their
    /// sum over workers is the single-process BatchNorm's over the union (and the reference's). Two steps with a new
    /// `dy` in the second: the gradients are the last backward's (overwritten, not accumulated).
    func testSyncBatchNormAffineGradientsAreEachWorkersOwnSumsWithTheGlobalNormalization() throws {
        for layout in TensorLayout.allCases {
            try checkSyncAffineGradients(sizes: [3, 5, 2], spatial: [3, 2], channels: 4, layout: layout)
        }
    }

    private func checkSyncAffineGradients(
        sizes: [Int], spatial: [Int], channels c: Int, layout: TensorLayout,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        var rng = SeededGenerator(seed: 0x5E19 + UInt64(sizes.count))
        let parts = sizes.enumerated().map { w, n in
            randomTensor([n, c] + spatial, layout: layout, scale: 1 + Float(w), offset: 3 * Float(w) - 2, using: &rng)
        }
        let x = concatenated(parts), total = x.batch
        let firstDy = randomTensor(x.shape, layout: layout, using: &rng)
        let dy = randomTensor(x.shape, layout: layout, scale: 2, offset: 0.5, using: &rng)
        let gamma = rng.doubles(c, in: 0.5...1.5).map { Float($0) }, beta = rng.doubles(c, in: -1...1).map { Float($0) }
        let starts = sizes.indices.map { sizes[..<$0].reduce(0, +) }

        let lock = NSLock()
        var gradients = [(dGamma: [Float], dBeta: [Float])?](repeating: nil, count: sizes.count)
        let group = InProcessWorkers(count: sizes.count)
        try onWorkers(sizes.count) { w in
            let bn = try BatchNorm(channels: c)
            (bn.weight!.value, bn.bias!.value) = (gamma, beta)
            bn.crossWorkerReduction = InProcessWorkers.Handle(group, worker: w)
            let range = starts[w]..<(starts[w] + sizes[w])
            for upstream in [firstDy, dy] {
                _ = try bn.forward(self.samples(x, range), training: true)
                _ = try bn.backward(self.samples(upstream, range))
            }
            lock.lock(); gradients[w] = (bn.weight!.gradient, bn.bias!.gradient); lock.unlock()
        }

        // Float64: x̂ from the union's statistics; per worker, the sums over its own samples.
        let refX = RefTensor(x), refDy = RefTensor(dy)
        let global = Float64Reference.forward(
            refX, sets: .batchNorm(normBatch: total), gamma: gamma.map(Double.init), beta: beta.map(Double.init))
        let label = "workers \(sizes), \(layout)"
        for w in sizes.indices {
            var dGamma = [Double](repeating: 0, count: c), dBeta = dGamma, terms = dGamma, betaTerms = dGamma
            for n in starts[w]..<(starts[w] + sizes[w]) {
                for ch in 0..<c {
                    for p in 0..<refX.positions {
                        dGamma[ch] += refDy[n, ch, p] * global.xhat[n, ch, p]
                        dBeta[ch] += refDy[n, ch, p]
                        terms[ch] += abs(refDy[n, ch, p] * global.xhat[n, ch, p])
                        betaTerms[ch] += abs(refDy[n, ch, p])
                    }
                }
            }
            let got = gradients[w]!
            XCTAssertLessThanOrEqual(
                sumError(got.dGamma, dGamma, terms: terms), referenceTolerance,
                "\(label): worker \(w)'s dγ = Σ dy·x̂ over its samples, x̂ global: \(got.dGamma) vs \(dGamma)",
                file: file, line: line)
            XCTAssertLessThanOrEqual(
                sumError(got.dBeta, dBeta, terms: betaTerms), referenceTolerance,
                "\(label): worker \(w)'s dβ = Σ dy over its samples: \(got.dBeta) vs \(dBeta)", file: file, line: line)
            // The same sums with this worker's own statistics (per-worker BN) are far off: the check discriminates.
            let own = Float64Reference.forward(
                RefTensor(parts[w]), sets: .batchNorm(normBatch: sizes[w]), gamma: nil, beta: nil)
            var localGamma = [Double](repeating: 0, count: c)
            for n in 0..<sizes[w] {
                for ch in 0..<c {
                    for p in 0..<refX.positions { localGamma[ch] += refDy[starts[w] + n, ch, p] * own.xhat[n, ch, p] }
                }
            }
            XCTAssertGreaterThan(
                sumError(got.dGamma, localGamma, terms: terms), 1e-2,
                "\(label): worker \(w)'s dγ should not be the local-x̂ sum", file: file, line: line)
        }

        // Their sum over workers: the single-process BatchNorm over the union, and the reference.
        let single = try BatchNorm(channels: c)
        (single.weight!.value, single.bias!.value) = (gamma, beta)
        for upstream in [firstDy, dy] {
            _ = try single.forward(x, training: true)
            _ = try single.backward(upstream)
        }
        let reference = Float64Reference.backward(refX, dy: refDy, sets: .batchNorm(normBatch: total), gamma: nil)
        let summedGamma = (0..<c).map { ch in gradients.reduce(0.0) { $0 + Double($1!.dGamma[ch]) } }
        let summedBeta = (0..<c).map { ch in gradients.reduce(0.0) { $0 + Double($1!.dBeta[ch]) } }
        XCTAssertLessThanOrEqual(
            sumError(summedGamma.map { Float($0) }, reference.dgamma, terms: reference.dgammaTerms), referenceTolerance,
            "\(label): Σ_workers dγ vs the float64 BN over the union", file: file, line: line)
        XCTAssertLessThanOrEqual(
            sumError(summedBeta.map { Float($0) }, reference.dbeta, terms: reference.dbetaTerms), referenceTolerance,
            "\(label): Σ_workers dβ vs the float64 BN over the union", file: file, line: line)
        XCTAssertLessThanOrEqual(
            sumError(
                summedGamma.map { Float($0) }, single.weight!.gradient.map(Double.init), terms: reference.dgammaTerms),
            referenceTolerance, "\(label): Σ_workers dγ vs one BatchNorm over the union", file: file, line: line)
        XCTAssertLessThanOrEqual(
            sumError(summedBeta.map { Float($0) }, single.bias!.gradient.map(Double.init), terms: reference.dbetaTerms),
            referenceTolerance, "\(label): Σ_workers dβ vs one BatchNorm over the union", file: file, line: line)
    }

    // MARK: Spec §2 under SyncBN: a non-finite batch on one worker

    /// SyncBN on two workers with non-trivial running statistics; one worker's batch gets one NaN / +∞ / −∞ element.
    /// The global statistics are then non-finite on every worker, so on **every** worker the running mean and
    /// variance stay exactly as they were, ``BatchNorm/skippedUpdates`` goes up by one, and the output of the bad
    /// channel is still computed (non-finite). A later good batch updates every worker's running statistics again,
    /// as the float64 reference over the union does, and counts no skip (mirrors InputErrorTests'
    /// `testNonFiniteBatchDoesNotOverwriteRunningStatistics`).
    func testSyncBatchNormNonFiniteBatchOnOneWorkerSkipsTheUpdateOnEveryWorker() throws {
        let workers = 2, perWorker = 3, channels = 3, shape = [perWorker, channels, 5], momentum = 0.1
        for bad in [Float.nan, .infinity, -.infinity] {
            for layout in TensorLayout.allCases {
                for badWorker in 0..<workers {
                    var rng = SeededGenerator(seed: 0x5E29)
                    let warm = (0..<2).map { _ in
                        (0..<workers).map { _ in randomTensor(shape, layout: layout, scale: 2, offset: 1, using: &rng) }
                    }
                    var clean = (0..<workers).map { _ in randomTensor(shape, layout: .channelsFirst, using: &rng) }
                    clean[badWorker][2, 1, 3] = bad  // one element of channel 1
                    let poisoned = clean.map { $0.converted(to: layout) }
                    let good = (0..<workers).map { _ in randomTensor(shape, layout: layout, using: &rng) }
                    let dy = randomTensor(shape, layout: layout, using: &rng)

                    struct Observed {
                        var before: (mean: [Float], variance: [Float], skipped: Int)
                        var afterBad: (mean: [Float], variance: [Float], skipped: Int)
                        var badOutput: Tensor
                        var afterGood: (mean: [Float], variance: [Float], skipped: Int)
                    }
                    let lock = NSLock()
                    var observed = [Observed?](repeating: nil, count: workers)
                    let group = InProcessWorkers(count: workers)
                    try onWorkers(workers) { w in
                        let bn = try BatchNorm(channels: channels, momentum: Float(momentum))
                        bn.crossWorkerReduction = InProcessWorkers.Handle(group, worker: w)
                        for step in warm {
                            _ = try bn.forward(step[w], training: true)
                            _ = try bn.backward(dy)
                        }
                        let before = (bn.runningMean, bn.runningVariance, bn.skippedUpdates)
                        let y = try bn.forward(poisoned[w], training: true)
                        _ = try bn.backward(dy)
                        let afterBad = (bn.runningMean, bn.runningVariance, bn.skippedUpdates)
                        _ = try bn.forward(good[w], training: true)
                        let afterGood = (bn.runningMean, bn.runningVariance, bn.skippedUpdates)
                        lock.lock()
                        observed[w] = Observed(before: before, afterBad: afterBad, badOutput: y, afterGood: afterGood)
                        lock.unlock()
                    }

                    let label = "\(bad) on worker \(badWorker), \(layout)"
                    let union = Float64Reference.forward(
                        RefTensor(concatenated(good)), sets: .batchNorm(normBatch: workers * perWorker),
                        gamma: nil, beta: nil)
                    for w in 0..<workers {
                        let o = observed[w]!
                        XCTAssertTrue(
                            o.before.mean.allSatisfy(\.isFinite) && o.before.mean != [0, 0, 0],
                            "\(label): worker \(w) starts from non-trivial running statistics")
                        XCTAssertEqual(o.afterBad.mean, o.before.mean, "\(label): worker \(w)'s running mean")
                        XCTAssertEqual(o.afterBad.variance, o.before.variance, "\(label): worker \(w)'s running var")
                        XCTAssertEqual(
                            o.afterBad.skipped, o.before.skipped + 1, "\(label): worker \(w) counts the skip")
                        let badChannel = (0..<perWorker).flatMap { n in (0..<5).map { p in o.badOutput[n, 1, p] } }
                        XCTAssertFalse(
                            badChannel.allSatisfy(\.isFinite),
                            "\(label): worker \(w)'s output of the bad channel is still computed (non-finite)")
                        // The next good batch updates normally again, from the kept statistics.
                        var mean = o.before.mean.map(Double.init), variance = o.before.variance.map(Double.init)
                        Float64Reference.updateRunning(
                            mean: &mean, variance: &variance, with: union, momentum: momentum)
                        XCTAssertLessThanOrEqual(
                            relativeError(o.afterGood.mean, mean), referenceTolerance,
                            "\(label): worker \(w), good mean")
                        XCTAssertLessThanOrEqual(
                            relativeError(o.afterGood.variance, variance), referenceTolerance,
                            "\(label): worker \(w), good variance")
                        XCTAssertEqual(o.afterGood.skipped, o.before.skipped + 1, "\(label): worker \(w)")
                        XCTAssertEqual(o.afterGood.mean, observed[0]!.afterGood.mean, "\(label): workers agree")
                    }
                }
            }
        }
    }
}
