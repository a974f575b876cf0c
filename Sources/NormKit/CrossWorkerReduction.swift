/// The reductions across the workers of a data-parallel job that SyncBN (``BatchNorm/crossWorkerReduction``) needs
/// between its statistics and coefficients stages. NormKit's core knows no transport: `NormKitDistributed`'s MPI
/// communicator implements this protocol, and tests implement it in one process.
///
/// Every worker calls the same methods, with the same counts, in the same order (the collective-call rules of MPI).
/// A failure (a worker that died, a transport error) is thrown, never trapped.
public protocol CrossWorkerReduction: AnyObject {
    /// This worker's index, `0 ..< workerCount`.
    var workerIndex: Int { get }
    /// The number of workers.
    var workerCount: Int { get }
    /// Replaces each element of `values` by its sum over all workers.
    func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws
    /// Writes every worker's `local` into `all`, worker `w`'s at `w·local.count` (`all.count == local.count ×
    /// workerCount`).
    func allGather(_ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>) throws
}

extension CrossWorkerReduction {
    /// Replaces each element of `first` and `second` by its average over the workers (one all-reduce of both, in
    /// double), using `scratch`; a failure is thrown as ``NormalizationError/crossWorkerReductionFailed(layer:reason:)``
    /// for `layer` and changes nothing. Per-worker BN's and BRN's running statistics stay in step this way.
    func average(_ first: inout [Float], _ second: inout [Float], scratch: inout [Double], layer: String) throws {
        let a = first.count, total = a + second.count, workers = Double(workerCount)
        if scratch.count != total { scratch = [Double](repeating: 0, count: total) }
        for i in 0..<a { scratch[i] = Double(first[i]) }
        for i in 0..<second.count { scratch[a + i] = Double(second[i]) }
        do {
            try scratch.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        } catch {
            throw NormalizationError.crossWorkerReductionFailed(layer: layer, reason: "\(error)")
        }
        for i in 0..<a { first[i] = Float(scratch[i] / workers) }
        for i in 0..<second.count { second[i] = Float(scratch[a + i] / workers) }
    }
}

/// SyncBN's reductions (spec section 9), the cross-worker step of BatchNorm's rules on the engine's staged passes,
/// with their buffer (sized once, so a step allocates nothing). Package-visible for the tests of the merge.
package struct SynchronizedStatistics {
    /// Values per channel over all workers in the last forward.
    package private(set) var count = 0.0
    /// The last backward's `Σ dz` per channel at `[c]` and `Σ dz·(x − μ)` at `[C + c]`, over all workers.
    private(set) var totals: [Double] = []
    private var buffer: [Double] = []

    /// Empty statistics, before the first merge.
    package init() {}

    /// Replaces this worker's per-channel `mean` and biased `variance` (over `localCount` values each) by those of
    /// every worker's batch: each worker's (count, mean, M2) gathered and merged in worker order with Chan's formula
    /// (exact for unequal batches, as stable as the single-process kernels: no raw `Σx²`). A NaN stays NaN: a worker
    /// whose batch held one makes the merged variance NaN (not `max(0, NaN)`, 0), so the layer sees non-finite
    /// statistics and skips its running-statistics update. Nothing changes if the reduction throws.
    package mutating func merge(
        mean: inout [Double], variance: inout [Double], localCount: Double, over reduction: CrossWorkerReduction,
        layer: @autoclosure () -> String
    ) throws {
        let c = mean.count, workers = reduction.workerCount
        if buffer.count < 3 * c * (workers + 1) { buffer = [Double](repeating: 0, count: 3 * c * (workers + 1)) }
        let merged: Double = try buffer.withUnsafeMutableBufferPointer { buffer in
            let local = UnsafeMutableBufferPointer(rebasing: buffer[0..<(3 * c)])
            let all = UnsafeMutableBufferPointer(rebasing: buffer[(3 * c)..<(3 * c * (workers + 1))])
            for ch in 0..<c {
                (local[3 * ch], local[3 * ch + 1], local[3 * ch + 2]) = (
                    localCount, mean[ch], variance[ch] * localCount
                )
            }
            do { try reduction.allGather(UnsafeBufferPointer(local), into: all) } catch {
                throw NormalizationError.crossWorkerReductionFailed(layer: layer(), reason: "\(error)")
            }
            var total = 0.0
            for ch in 0..<c {
                var n = 0.0, mu = 0.0, m2 = 0.0
                for w in 0..<workers {
                    let e = (w * c + ch) * 3, k = all[e], delta = all[e + 1] - mu
                    guard k > 0 else { continue }
                    let merged = n + k
                    mu += delta * (k / merged)
                    m2 += all[e + 2] + delta * delta * n * (k / merged)
                    n = merged
                }
                let variance = m2 / n
                (local[3 * ch + 1], local[3 * ch + 2]) = (mu, variance.isNaN ? variance : max(0, variance))
                total = n
            }
            return total
        }
        guard merged > 1 else {
            throw NormalizationError.tooFewValuesPerChannel(layer: layer(), valuesPerSet: Int(merged))
        }
        for ch in 0..<c { (mean[ch], variance[ch]) = (buffer[3 * ch + 1], buffer[3 * ch + 2]) }
        count = merged
    }

    /// `Σ_n sumDy[n, c]` and `Σ_n sumDyCentered[n, c]` over this worker's `batch` samples and then over every
    /// worker, into ``totals``.
    mutating func sumGradients(
        _ sumDy: [Double], _ sumDyCentered: [Double], batch: Int, channels c: Int,
        over reduction: CrossWorkerReduction, layer: @autoclosure () -> String
    ) throws {
        if totals.count != 2 * c { totals = [Double](repeating: 0, count: 2 * c) }
        try totals.withUnsafeMutableBufferPointer { totals in
            for ch in 0..<c {
                var t1 = 0.0, t2 = 0.0
                for n in 0..<batch { (t1, t2) = (t1 + sumDy[n * c + ch], t2 + sumDyCentered[n * c + ch]) }
                (totals[ch], totals[c + ch]) = (t1, t2)
            }
            do { try reduction.allReduceSum(totals) } catch {
                throw NormalizationError.crossWorkerReductionFailed(layer: layer(), reason: "\(error)")
            }
        }
    }
}
