import Foundation
import NormKit

/// Workers of a data-parallel job inside one process: each runs on its own thread and calls the collectives in the
/// same order; a call returns once every worker has made it (an NSCondition barrier per exchange). Sums are added
/// in worker order, as a deterministic MPI reduction would.
/// (`@unchecked`: every stored `var` is read and written only with `condition` locked.)
public final class InProcessWorkers: @unchecked Sendable {
    public let count: Int
    private let condition = NSCondition()
    private var deposits: [[Double]]
    private var snapshot: [[Double]] = []
    private var arrived = 0
    private var generation = 0

    public init(count: Int) {
        self.count = count
        deposits = Array(repeating: [], count: count)
    }

    /// Deposits `values` for `worker` and returns every worker's deposit once all have arrived.
    public func exchange(worker: Int, _ values: [Double]) -> [[Double]] {
        condition.lock()
        defer { condition.unlock() }
        deposits[worker] = values
        arrived += 1
        let mine = generation
        if arrived == count {
            snapshot = deposits
            arrived = 0
            generation += 1
            condition.broadcast()
        } else {
            while generation == mine { condition.wait() }
        }
        return snapshot
    }

    /// One worker's view, for ``BatchNorm/crossWorkerReduction``.
    public final class Handle: CrossWorkerReduction {
        public let group: InProcessWorkers
        public let workerIndex: Int
        public var workerCount: Int { group.count }
        /// Collective calls made (forward gathers and backward sums).
        public private(set) var calls = 0

        public init(_ group: InProcessWorkers, worker: Int) {
            self.group = group
            workerIndex = worker
        }

        public func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {
            calls += 1
            let all = group.exchange(worker: workerIndex, Array(values))
            for i in values.indices { values[i] = all.reduce(0) { $0 + $1[i] } }
        }

        public func allGather(_ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>) throws
        {
            calls += 1
            let parts = group.exchange(worker: workerIndex, Array(local))
            for (w, part) in parts.enumerated() { for (i, v) in part.enumerated() { all[w * local.count + i] = v } }
        }
    }
}

/// Runs `body(i)` for every `i` in `0..<count`, each on its own thread, and returns when all have finished.
public func runConcurrently(_ count: Int, _ body: @escaping (Int) -> Void) {
    // Unchecked: every call of `body` ends before this returns (fork-join), and callers lock what they share.
    nonisolated(unsafe) let body = body
    let done = DispatchGroup()
    for i in 0..<count {
        done.enter()
        let thread = Thread {
            body(i)
            done.leave()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
    done.wait()
}
