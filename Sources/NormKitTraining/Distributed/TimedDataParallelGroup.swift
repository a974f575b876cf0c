import Dispatch
import NormKit

/// A ``DataParallelGroup`` that forwards every collective to `base` and adds up how long they took and how many
/// values they carried: the communication a data-parallel step pays (``Trainer/communication``). The clock is a
/// monotonic one read around each call; a collective's time includes waiting for the slowest worker.
public final class TimedDataParallelGroup: DataParallelGroup {
    /// The transport.
    public let base: DataParallelGroup
    /// Seconds spent in collectives so far.
    public private(set) var seconds = 0.0
    /// Collectives made so far.
    public private(set) var calls = 0
    /// Values (floats or doubles) contributed by this worker so far.
    public private(set) var values = 0

    /// Times the collectives of `base`.
    public init(_ base: DataParallelGroup) { self.base = base }

    public var workerIndex: Int { base.workerIndex }
    public var workerCount: Int { base.workerCount }

    private func timed<R>(_ count: Int, _ body: () throws -> R) rethrows -> R {
        let start = DispatchTime.now().uptimeNanoseconds
        defer {
            seconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            calls += 1
            values += count
        }
        return try body()
    }

    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws {
        try timed(values.count) { try base.allReduceSum(values) }
    }

    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {
        try timed(values.count) { try base.allReduceSum(values) }
    }

    public func allGather(_ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>) throws {
        try timed(local.count) { try base.allGather(local, into: all) }
    }

    public func broadcast(_ values: UnsafeMutableBufferPointer<Float>, from root: Int) throws {
        try timed(values.count) { try base.broadcast(values, from: root) }
    }

    public func barrier() throws { try timed(0) { try base.barrier() } }
}
