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
