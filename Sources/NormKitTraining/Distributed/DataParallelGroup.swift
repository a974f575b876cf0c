import NormKit

/// The workers of a data-parallel training job, as the training stack uses them: one model replica per worker,
/// parameters broadcast from worker 0 at the start, gradients of the whole batch summed after every backward, and the
/// reductions SyncBN needs (``/NormKit/CrossWorkerReduction``). `NormKitDistributed`'s `MPICommunicator` is the
/// implementation over Open MPI; the training stack itself knows no transport.
///
/// Every worker calls the same methods, with the same counts, in the same order. Failures (a worker that died, a
/// transport error) are thrown.
public protocol DataParallelGroup: CrossWorkerReduction {
    /// Replaces each element of `values` by its sum over all workers (in float, as the gradients are).
    func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws
    /// Overwrites `values` on every worker with worker `root`'s.
    func broadcast(_ values: UnsafeMutableBufferPointer<Float>, from root: Int) throws
    /// Returns once every worker has called it.
    func barrier() throws
}
