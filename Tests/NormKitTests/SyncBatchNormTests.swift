import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// A reduction that always fails, as a transport whose peer died would.
private final class FailingReduction: CrossWorkerReduction {
    struct PeerGone: Error, CustomStringConvertible { var description: String { "worker 1 is gone" } }
    var workerIndex: Int { 0 }
    var workerCount: Int { 2 }
    func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws { throw PeerGone() }
    func allGather(_ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>) throws {
        throw PeerGone()
    }
}

/// SyncBN (spec section 9): BatchNorm with a ``CrossWorkerReduction`` normalizes every worker's samples with the
/// statistics of the global batch; the equivalence to one BatchNorm over the concatenated batch is the contract.
final class SyncBatchNormTests: XCTestCase {
    /// Samples `range` of `x` (N first) as a tensor of their own, in `x`'s layout.
    private func samples(_ x: Tensor, _ range: Range<Int>) -> Tensor {
        let perSample = x.count / x.batch
        var shape = x.shape
        shape[0] = range.count
        let values = Array(x.values[(range.lowerBound * perSample)..<(range.upperBound * perSample)])
        return try! Tensor(shape: shape, layout: x.layout, values: values)
    }

    private struct WorkerResult {
        var y: Tensor
        var dx: Tensor
        var dGamma: [Float]
        var dBeta: [Float]
        var runningMean: [Float]
        var runningVariance: [Float]
    }

    /// Runs `steps` SyncBN training steps on `sizes.count` in-process workers, worker `w` taking the next
    /// `sizes[w]` samples of `x` and `dy`; returns each worker's last outputs and state.
    private func runWorkers(
        _ sizes: [Int], x: Tensor, dy: Tensor, gamma: [Float], beta: [Float],
        activation: FusedActivation = .identity, steps: Int = 2
    ) throws -> [WorkerResult] {
        let group = InProcessWorkers(count: sizes.count)
        let starts = sizes.indices.map { sizes[..<$0].reduce(0, +) }
        var results = [WorkerResult?](repeating: nil, count: sizes.count)
        var failures = [Error?](repeating: nil, count: sizes.count)
        let lock = NSLock()
        // One thread per worker (not concurrentPerform, which may run the workers one after the other on fewer
        // threads: the first would wait forever in its first collective).
        runConcurrently(sizes.count) { w in
            do {
                let bn = try BatchNorm(channels: x.channels)
                bn.weight!.value = gamma
                bn.bias!.value = beta
                bn.activation = activation
                bn.crossWorkerReduction = InProcessWorkers.Handle(group, worker: w)
                let range = starts[w]..<(starts[w] + sizes[w])
                let xs = self.samples(x, range), dys = self.samples(dy, range)
                var y = Tensor(zeros: [0, 0]), dx = Tensor(zeros: [0, 0])
                for _ in 0..<steps {
                    try bn.forward(xs, into: &y, training: true)
                    try bn.backward(dys, into: &dx)
                }
                let result = WorkerResult(
                    y: y, dx: dx, dGamma: bn.weight!.gradient, dBeta: bn.bias!.gradient,
                    runningMean: bn.runningMean, runningVariance: bn.runningVariance)
                lock.lock(); results[w] = result; lock.unlock()
            } catch {
                lock.lock(); failures[w] = error; lock.unlock()
            }
        }
        if let failure = failures.compactMap({ $0 }).first { throw failure }
        return results.map { $0! }
    }

    /// One BatchNorm over the whole batch, the same number of steps.
    private func runSingle(
        x: Tensor, dy: Tensor, gamma: [Float], beta: [Float],
        activation: FusedActivation = .identity, steps: Int = 2
    ) throws -> (BatchNorm, Tensor, Tensor) {
        let bn = try BatchNorm(channels: x.channels)
        bn.weight!.value = gamma
        bn.bias!.value = beta
        bn.activation = activation
        var y = Tensor(zeros: [0, 0]), dx = Tensor(zeros: [0, 0])
        for _ in 0..<steps {
            try bn.forward(x, into: &y, training: true)
            try bn.backward(dy, into: &dx)
        }
        return (bn, y, dx)
    }

    private func maxRelative(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        let scale = max(b.map { Double(abs($0)) }.max() ?? 0, 1e-30)
        return zip(a, b).map { Double(abs($0 - $1)) }.max()! / scale
    }

    private func check(
        sizes: [Int], shape: [Int], layout: TensorLayout, activation: FusedActivation = .identity,
        offset: Float = 0, spread: Float = 1, tolerance: Double = 2e-5,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        var generator = SeededGenerator(seed: UInt64(sizes.reduce(7, &*) + shape.reduce(0, +)))
        let c = shape[1]
        let raw = Tensor.randomNormal(shape: shape, using: &generator)
        let x = try Tensor(shape: shape, values: raw.values.map { offset + spread * $0 }).converted(to: layout)
        let dy = Tensor.randomNormal(shape: shape, using: &generator).converted(to: layout)
        let gamma = (0..<c).map { _ in Float.random(in: 0.5...1.5, using: &generator) }
        let beta = (0..<c).map { _ in Float.random(in: -0.5...0.5, using: &generator) }
        let workers = try runWorkers(sizes, x: x, dy: dy, gamma: gamma, beta: beta, activation: activation)
        let (single, y, dx) = try runSingle(x: x, dy: dy, gamma: gamma, beta: beta, activation: activation)
        let joinedY = workers.flatMap(\.y.values), joinedDx = workers.flatMap(\.dx.values)
        let label = "workers \(sizes), \(shape) \(layout) \(activation)"
        XCTAssertLessThan(maxRelative(joinedY, y.values), tolerance, "y, \(label)", file: file, line: line)
        XCTAssertLessThan(maxRelative(joinedDx, dx.values), tolerance, "dx, \(label)", file: file, line: line)
        // dγ, dβ: each worker has its own samples' sums; their total is the single layer's.
        let dGamma = (0..<c).map { ch in workers.reduce(Float(0)) { $0 + $1.dGamma[ch] } }
        let dBeta = (0..<c).map { ch in workers.reduce(Float(0)) { $0 + $1.dBeta[ch] } }
        XCTAssertLessThan(
            maxRelative(dGamma, single.weight!.gradient), tolerance, "dγ, \(label)", file: file, line: line)
        XCTAssertLessThan(maxRelative(dBeta, single.bias!.gradient), tolerance, "dβ, \(label)", file: file, line: line)
        // Running statistics: the global batch's on every worker (identical across workers).
        for w in workers {
            XCTAssertLessThan(
                maxRelative(w.runningMean, single.runningMean), 1e-5, "running mean, \(label)",
                file: file, line: line)
            XCTAssertLessThan(
                maxRelative(w.runningVariance, single.runningVariance), 1e-5,
                "running var, \(label)", file: file, line: line)
            XCTAssertEqual(w.runningMean, workers[0].runningMean, "workers disagree, \(label)", file: file, line: line)
        }
    }

    /// 2 workers × 16 samples with SyncBN == one BatchNorm over 32 (outputs, input gradients, summed parameter
    /// gradients, running statistics), both layouts, with and without a fused activation.
    func testTwoWorkersEqualOneBatchNormOverTheirUnion() throws {
        for layout in TensorLayout.allCases {
            try check(sizes: [16, 16], shape: [32, 8, 5, 5], layout: layout)
            try check(sizes: [16, 16], shape: [32, 8, 5, 5], layout: layout, activation: .relu)
            try check(sizes: [16, 16], shape: [32, 8, 5, 5], layout: layout, activation: .silu)
        }
    }

    /// Unequal per-worker batches and three workers (SyncBN's counts), down to one sample on a worker.
    func testUnequalBatchesAndThreeWorkers() throws {
        for layout in TensorLayout.allCases {
            try check(sizes: [5, 7, 4], shape: [16, 6, 3, 4], layout: layout)
            try check(sizes: [1, 9], shape: [10, 4, 2, 3], layout: layout)
            try check(sizes: [3, 1], shape: [4, 3, 1, 1], layout: layout)  // 1 value per channel on worker 1
        }
    }

    /// As stable as the single-process kernels: x = 1e4 + 0.01·randn (spec section 1).
    func testLargeMeanSmallSpread() throws {
        try check(
            sizes: [8, 8], shape: [16, 4, 6, 6], layout: .channelsFirst, offset: 1e4, spread: 0.01,
            tolerance: 1e-4)
        try check(
            sizes: [5, 11], shape: [16, 4, 6, 6], layout: .channelsLast, offset: 1e4, spread: 0.01,
            tolerance: 1e-4)
    }

    /// One worker is BatchNorm.
    func testOneWorkerIsBatchNorm() throws {
        try check(sizes: [12], shape: [12, 5, 4, 4], layout: .channelsFirst, tolerance: 1e-6)
    }

    /// Chan's merge keeps a NaN (spec section 2): a worker whose batch holds a NaN has a NaN mean and variance for that
    /// channel, and every worker's merged variance is then NaN, not `max(0, NaN)` = 0 (the merge used to turn it
    /// into 0, which is finite); a NaN variance with a finite mean stays NaN too. The other channel merges as usual.
    /// The layer then skips its running-statistics update on every worker
    /// (`SpecWorkerRuleTests.testSyncBatchNormNonFiniteBatchOnOneWorkerSkipsTheUpdateOnEveryWorker`).
    func testANaNInOneWorkersStatisticsMakesTheMergedVarianceNaN() throws {
        for badMean in [Double.nan, 2] {
            for badWorker in 0..<2 {
                let group = InProcessWorkers(count: 2)
                let lock = NSLock()
                var merged = [(mean: [Double], variance: [Double])?](repeating: nil, count: 2)
                var failures = [Error?](repeating: nil, count: 2)
                runConcurrently(2) { w in
                    var statistics = SynchronizedStatistics()
                    var mean = [1.0, 2.0], variance = [0.5, 0.25]
                    if w == badWorker { (mean[1], variance[1]) = (badMean, .nan) }
                    do {
                        try statistics.merge(
                            mean: &mean, variance: &variance, localCount: 4,
                            over: InProcessWorkers.Handle(group, worker: w), layer: "BatchNorm(channels: 2)")
                        lock.lock(); merged[w] = (mean, variance); lock.unlock()
                    } catch {
                        lock.lock(); failures[w] = error; lock.unlock()
                    }
                }
                if let failure = failures.compactMap({ $0 }).first { throw failure }
                let label = "mean \(badMean) and variance nan on worker \(badWorker)"
                for w in 0..<2 {
                    let (mean, variance) = try XCTUnwrap(merged[w])
                    XCTAssertEqual(mean[0], 1, "\(label): worker \(w), the good channel's mean")
                    XCTAssertEqual(variance[0], 0.5, "\(label): worker \(w), the good channel's variance")
                    XCTAssertTrue(variance[1].isNaN, "\(label): worker \(w)'s merged variance is \(variance[1])")
                    XCTAssertEqual(mean[1].isNaN, badMean.isNaN, "\(label): worker \(w)'s merged mean is \(mean[1])")
                }
            }
        }
    }

    /// A failed reduction throws a specific error and changes no state; ghost batches are refused.
    func testFailuresAreErrors() throws {
        let bn = try BatchNorm(channels: 3)
        bn.crossWorkerReduction = FailingReduction()
        let x = try Tensor(shape: [4, 3, 2, 2], values: (0..<48).map { Float($0) })
        let before = (bn.runningMean, bn.runningVariance, bn.batchesTracked)
        XCTAssertThrowsError(try bn.forward(x, training: true)) { error in
            guard case NormalizationError.crossWorkerReductionFailed(_, let reason)? = error as? NormalizationError
            else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("worker 1 is gone"), reason)
        }
        XCTAssertEqual(before.0, bn.runningMean)
        XCTAssertEqual(before.1, bn.runningVariance)
        XCTAssertEqual(before.2, bn.batchesTracked)
        XCTAssertThrowsError(try bn.backward(x)) { error in
            guard case NormalizationError.backwardBeforeForward? = error as? NormalizationError else {
                return XCTFail("\(error)")
            }
        }
        let ghost = try BatchNorm(channels: 3, normBatch: 2)
        ghost.crossWorkerReduction = FailingReduction()
        XCTAssertThrowsError(try ghost.forward(x, training: true)) { error in
            guard case NormalizationError.invalidArgument(_, let name, _, _)? = error as? NormalizationError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(name, "normBatch")
        }
    }
}
