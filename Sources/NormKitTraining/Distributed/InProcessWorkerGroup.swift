import Foundation
import NormKit
import Synchronization

/// The workers of a data-parallel job as threads of one process: ``DataParallelGroup`` (and SyncBN's
/// `CrossWorkerReduction`) over shared memory, for training one model replica per core.
///
/// Why: a network whose normalizations need no other sample (GN, LN, IN, frozen BN) trains faster as two replicas
/// on half a batch each than as one model whose every layer splits its work over two threads: the replicas meet
/// twice per step (the step's totals and the gradients' sum) instead of at every layer, so one thread's jitter no
/// longer stalls the other hundreds of times a step (docs/PERFORMANCE.md, session 19). The numbers are those of
/// one process up to float rounding, as with MPI ranks (``Trainer/distribute(over:)``).
///
/// ```swift
/// let group = try InProcessWorkerGroup(workers: 2)
/// let trainers = try (0..<2).map { w in
///     let t = try Trainer(configuration: c, train: train, test: test, output: w == 0 ? out : nil)
///     try t.distribute(over: group.worker(w))
///     return t
/// }
/// let summaries = try group.run { w in try trainers[w].run() }   // worker w on a thread of its own
/// ```
///
/// Collectives add in worker order (`((x₀ + x₁) + x₂) …`), so a job's sums do not depend on which thread arrives
/// first. Each worker calls the same collectives with the same counts in the same order, as with MPI; a worker whose
/// body throws abandons the group (``run(_:)``): every other worker's next (or current) collective throws
/// ``TrainingError/workerFailed(worker:reason:)`` instead of waiting for ever.
public final class InProcessWorkerGroup: Sendable {
    /// The number of workers.
    public let workerCount: Int
    /// Workers that have reached the current barrier.
    private let arrived = Atomic<Int>(0)
    /// Barriers completed; a waiter leaves when it changes.
    private let generation = Atomic<Int>(0)
    /// Why the group was abandoned (nil: it was not).
    private let failure = Mutex<(worker: Int, reason: String)?>(nil)
    private let abandoned = Atomic<Bool>(false)
    /// Where a waiter that spun too long sleeps.
    private let sleepers = NSCondition()
    /// Each worker's buffer in the current collective (address and count), written by that worker before a barrier
    /// and read by the others after it (unchecked: the barriers order every access).
    nonisolated(unsafe) private let buffers: UnsafeMutablePointer<(address: UnsafeMutableRawPointer?, count: Int)>

    /// Nanoseconds a waiting worker spins before it sleeps: a step's two collectives meet within a few hundred
    /// microseconds, and sleeping costs a wake-up (tens of microseconds); a worker left waiting longer (a slower
    /// worker checkpointing, an oversubscribed machine) sleeps.
    private static let spinNanoseconds: UInt64 = 200_000

    /// A group of `workers` workers, each a thread of its own in ``run(_:)``.
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` when `workers` is not in
    ///   `1 ... ConfigurationLimits.maxThreads` (a count from input must not become thousands of threads, or a
    ///   buffer too large to allocate).
    public init(workers: Int) throws {
        guard (1...ConfigurationLimits.maxThreads).contains(workers) else {
            throw TrainingError.invalidConfiguration(
                "a group of \(workers) in-process workers: must be in 1...\(ConfigurationLimits.maxThreads)")
        }
        workerCount = workers
        buffers = .allocate(capacity: workerCount)
        buffers.initialize(repeating: (nil, 0), count: workerCount)
    }

    deinit { buffers.deallocate() }

    /// Worker `index`'s view of the group, for ``Trainer/distribute(over:)``; one thread uses it.
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` when `index` is not in `0 ..< workerCount`.
    public func worker(_ index: Int) throws -> Worker {
        guard (0..<workerCount).contains(index) else {
            throw TrainingError.invalidConfiguration("worker \(index) of a group of \(workerCount) workers")
        }
        return Worker(self, index)
    }

    /// Abandons the group (see ``abandon(by:because:)``) and throws why: a collective called wrongly on `worker`
    /// would leave the others waiting for it.
    private func refuse(_ worker: Int, _ reason: String) throws -> Never {
        let error = TrainingError.workerFailed(worker: worker, reason: reason)
        abandon(by: worker, because: error)
        throw error
    }

    /// Runs `body(w)` for every worker `w`, worker 0 on the calling thread and each other on a thread of its own,
    /// and returns their results in worker order once all have finished. `body(w)` must touch only worker `w`'s
    /// objects (its trainer and model) and the group.
    ///
    /// A body that throws abandons the group, so the others stop at their next collective; the error thrown is the
    /// lowest-numbered worker's own failure (``TrainingError/workerFailed(worker:reason:)`` of the workers that
    /// were stopped that way comes only when no worker failed by itself).
    public func run<T>(_ body: @escaping (Int) throws -> T) throws -> [T] {
        let results = Results<T>(workerCount)
        // Unchecked: every call of `body` ends before `run` returns (the threads are joined below), and each
        // touches its own worker's objects.
        nonisolated(unsafe) let body = body
        let done = DispatchGroup()
        for w in 1..<workerCount {
            done.enter()
            let thread = Thread {
                self.work(w, body, into: results)
                done.leave()
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
        work(0, body, into: results)
        done.wait()
        return try results.collect()
    }

    /// Worker `w`'s body, its result kept; a failure abandons the group.
    private func work<T>(_ w: Int, _ body: (Int) throws -> T, into results: Results<T>) {
        let result = Result { try body(w) }
        if case .failure(let error) = result { abandon(by: w, because: error) }
        results.set(w, result)
    }

    /// The workers' results (each written once by its own thread; read after they were joined).
    private final class Results<T>: @unchecked Sendable {
        private var values: [Result<T, any Error>?]
        private let lock = NSLock()
        init(_ count: Int) { values = Array(repeating: nil, count: count) }
        func set(_ w: Int, _ result: Result<T, any Error>) { lock.withLock { values[w] = result } }

        /// The results in worker order, or the error ``InProcessWorkerGroup/run(_:)`` throws.
        func collect() throws -> [T] {
            let all = lock.withLock { values.map { $0! } }
            let failures = all.enumerated().compactMap { w, result -> (Int, any Error)? in
                guard case .failure(let error) = result else { return nil }
                return (w, error)
            }
            let own = failures.first { failure in
                if case TrainingError.workerFailed = failure.1 { return false }
                return true
            }
            if let (_, error) = own ?? failures.first { throw error }
            return try all.map { try $0.get() }
        }
    }

    /// Marks the group abandoned by `worker` and wakes every waiter: their collectives throw from now on.
    public func abandon(by worker: Int, because error: any Error) {
        let reason: String
        if case TrainingError.workerFailed = error { reason = "\(error)" } else { reason = ErrorText.describe(error) }
        failure.withLock { if $0 == nil { $0 = (worker, reason) } }
        abandoned.store(true, ordering: .releasing)
        sleepers.lock()
        sleepers.broadcast()
        sleepers.unlock()
    }

    /// Throws when the group was abandoned.
    private func checkAbandoned() throws {
        guard abandoned.load(ordering: .acquiring) else { return }
        let (worker, reason) = failure.withLock { $0 } ?? (0, "unknown")
        throw TrainingError.workerFailed(worker: worker, reason: reason)
    }

    /// Returns once every worker has called it (or throws when the group is abandoned).
    fileprivate func barrier() throws {
        try checkAbandoned()
        let mine = generation.load(ordering: .acquiring)
        if arrived.add(1, ordering: .acquiringAndReleasing).newValue == workerCount {
            arrived.store(0, ordering: .relaxed)
            generation.add(1, ordering: .releasing)
            sleepers.lock()
            sleepers.broadcast()
            sleepers.unlock()
            return
        }
        let start = DispatchTime.now().uptimeNanoseconds
        var spins = 0
        while generation.load(ordering: .acquiring) == mine {
            try checkAbandoned()
            spins += 1
            guard spins & 255 == 0, DispatchTime.now().uptimeNanoseconds - start > Self.spinNanoseconds else {
                continue
            }
            sleepers.lock()
            while generation.load(ordering: .acquiring) == mine && !abandoned.load(ordering: .acquiring) {
                sleepers.wait()
            }
            sleepers.unlock()
        }
        try checkAbandoned()
    }

    /// Publishes `worker`'s buffer and waits for every worker's; throws (abandoning the group) when their counts
    /// differ, which is a caller's bug, as a mismatched MPI collective is.
    fileprivate func exchange(_ worker: Int, _ address: UnsafeMutableRawPointer?, count: Int, _ name: String) throws {
        buffers[worker] = (address, count)
        try barrier()
        for w in 0..<workerCount where buffers[w].count != count {
            try refuse(w, "\(name) with \(buffers[w].count) values on worker \(w), \(count) on worker \(worker)")
        }
    }

    /// The sum over workers of every element, in worker order, into every worker's buffer: worker `w` adds up the
    /// `w`-th slice of the elements (no other worker reads or writes it) and writes it back to all.
    fileprivate func allReduceSum<Element: FloatingPoint>(
        _ worker: Int, _ values: UnsafeMutableBufferPointer<Element>
    )
        throws
    {
        try exchange(
            worker, values.count == 0 ? nil : UnsafeMutableRawPointer(values.baseAddress), count: values.count,
            "an all-reduce")
        let count = values.count, lower = count * worker / workerCount, upper = count * (worker + 1) / workerCount
        if lower < upper {
            // ((x₀ + x₁) + x₂) … into worker 0's slice, then copied to the others'.
            let sum = buffers[0].address!.assumingMemoryBound(to: Element.self) + lower
            for w in 1..<workerCount {
                let other = buffers[w].address!.assumingMemoryBound(to: Element.self) + lower
                for i in 0..<(upper - lower) { sum[i] += other[i] }
            }
            for w in 1..<workerCount {
                (buffers[w].address!.assumingMemoryBound(to: Element.self) + lower).update(
                    from: sum, count: upper - lower)
            }
        }
        try barrier()
    }

    fileprivate func allGather(
        _ worker: Int, _ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>
    ) throws {
        if all.count != local.count * workerCount {
            try refuse(
                worker, "an all-gather into \(all.count) values of \(local.count) from each of \(workerCount) workers")
        }
        try exchange(
            worker, local.count == 0 ? nil : UnsafeMutableRawPointer(mutating: local.baseAddress),
            count: local.count, "an all-gather")
        for w in 0..<workerCount where local.count > 0 {
            let source = buffers[w].address!.assumingMemoryBound(to: Double.self)
            (all.baseAddress! + w * local.count).update(from: source, count: local.count)
        }
        try barrier()
    }

    fileprivate func broadcast(_ worker: Int, _ values: UnsafeMutableBufferPointer<Float>, from root: Int) throws {
        if !(0..<workerCount).contains(root) {
            try refuse(worker, "a broadcast from worker \(root) of \(workerCount)")
        }
        try exchange(
            worker, values.count == 0 ? nil : UnsafeMutableRawPointer(values.baseAddress), count: values.count,
            "a broadcast")
        if worker != root && values.count > 0 {
            values.baseAddress!.update(
                from: buffers[root].address!.assumingMemoryBound(to: Float.self), count: values.count)
        }
        try barrier()
    }

    /// One worker's view of an ``InProcessWorkerGroup``.
    public final class Worker: DataParallelGroup {
        public let group: InProcessWorkerGroup
        public let workerIndex: Int
        public var workerCount: Int { group.workerCount }

        fileprivate init(_ group: InProcessWorkerGroup, _ index: Int) {
            self.group = group
            workerIndex = index
        }

        public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws {
            try group.allReduceSum(workerIndex, values)
        }

        public func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws {
            try group.allReduceSum(workerIndex, values)
        }

        public func allGather(
            _ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>
        )
            throws
        { try group.allGather(workerIndex, local, into: all) }

        public func broadcast(_ values: UnsafeMutableBufferPointer<Float>, from root: Int) throws {
            try group.broadcast(workerIndex, values, from: root)
        }

        public func barrier() throws { try group.barrier() }
    }
}
