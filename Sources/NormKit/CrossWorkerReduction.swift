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
