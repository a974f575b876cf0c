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
/// let summaries = try group.run { worker in   // each worker on a thread of its own, worker 0 on this one
///     let first = worker.workerIndex == 0  // worker 0 reports and writes the run; the others are silent
///     let t = try Trainer(
///         configuration: c, train: train, test: test, output: first ? out : nil,
///         progress: first ? ProgressReporter() : ProgressReporter(style: .silent))
///     try t.distribute(over: worker)
///     return try t.run()
/// }
/// ```
///
/// The body is `@Sendable`: each worker builds its own trainer and model, and the compiler refuses a body that
/// captures another worker's (non-Sendable) objects.
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
    /// Whether ``run(_:)`` runs: a second run at the same time (from another thread, or from inside a body) would
    /// give two threads the same worker's buffer.
    private let running = Atomic<Bool>(false)
    /// Where a waiter that spun too long sleeps.
    private let sleepers = NSCondition()
    /// Each worker's buffer in the current collective (address and count), written by that worker before a barrier
    /// and read by the others after it (unchecked: the barriers order every access, and only ``run(_:)`` makes
    /// workers, one per thread and index, one run at a time).
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

    /// Abandons the group (see ``abandon(by:because:)``) and throws why: a collective called wrongly on `worker`
    /// would leave the others waiting for it.
    private func refuse(_ worker: Int, _ reason: String) throws -> Never {
        let error = TrainingError.workerFailed(worker: worker, reason: reason)
        abandon(by: worker, because: error)
        throw error
    }

    /// Runs `body` once for every worker, each with its own ``Worker`` (its index and its collectives), worker 0 on
    /// the calling thread and each other on a thread of its own, and returns their results in worker order once all
    /// have finished.
    ///
    /// `body` is `@Sendable` and its results are `Sendable`, so the compiler checks that the workers share nothing
    /// but what is safe to share (the datasets, the configuration, an output URL): each worker builds its own
    /// non-Sendable objects (its ``Trainer`` and model) inside `body`, and the ``Worker`` it is given cannot leave
    /// its thread.
    ///
    /// ```swift
    /// let summaries = try group.run { worker in
    ///     let first = worker.workerIndex == 0  // worker 0 reports and writes the run; the others are silent
    ///     let t = try Trainer(
    ///         configuration: c, train: train, test: test, output: first ? out : nil,
    ///         progress: first ? ProgressReporter() : ProgressReporter(style: .silent))
    ///     try t.distribute(over: worker)
    ///     return try t.run()
    /// }
    /// ```
    ///
    /// A body that throws (while it builds its trainer, or in a collective) abandons the group, so the others stop
    /// at their next collective; the error thrown is the lowest-numbered worker's own failure
    /// (``TrainingError/workerFailed(worker:reason:)`` of the workers that were stopped that way comes only when no
    /// worker failed by itself).
    ///
    /// - Throws: The lowest-numbered worker's own error, as above; ``TrainingError/invalidConfiguration(_:)``,
    ///   running no body, when the group is running already (called from a body, or from another thread while it
    ///   runs) or an earlier run of it failed (a failed run abandons the group for good: make a new one).
    public func run<Value: Sendable>(_ body: @escaping @Sendable (Worker) throws -> Value) throws -> [Value] {
        let (first, others) = try run(first: body, others: body)
        return [first] + others
    }

    /// ``run(_:)`` with worker 0's body apart: `first` runs on the calling thread, so it need not be `@Sendable` and
    /// may use objects the caller built and keeps (worker 0's trainer, whose progress and records the caller
    /// reads afterwards); `others` runs for workers 1, 2, … on threads of their own and builds their objects itself.
    /// Returns worker 0's result and the others' in worker order.
    ///
    /// - Throws: What ``run(_:)`` throws.
    public func run<First, Other: Sendable>(
        first: (Worker) throws -> First, others: @escaping @Sendable (Worker) throws -> Other
    ) throws -> (first: First, others: [Other]) {
        guard running.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else {
            throw TrainingError.invalidConfiguration(
                "an in-process worker group runs one set of \(workerCount) workers at a time; it is running already")
        }
        defer { running.store(false, ordering: .releasing) }
        if abandoned.load(ordering: .acquiring) {
            let (worker, reason) = failure.withLock { $0 } ?? (0, "unknown")
            throw TrainingError.invalidConfiguration(
                "this in-process worker group was abandoned by an earlier run (worker \(worker): \(reason)); a group "
                    + "runs again only if its runs succeed: make a new InProcessWorkerGroup")
        }
        let results = Results<Other>(workerCount)
        let done = DispatchGroup()
        for w in 1..<workerCount {
            done.enter()
            let thread = Thread { [self] in
                results.set(w, work(w, others))
                done.leave()
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
        let firstResult = work(0, first)
        done.wait()
        return try results.collect(first: firstResult)
    }

    /// Worker `w`'s body on its own ``Worker`` (made on the thread that uses it); a failure abandons the group.
    private func work<Value>(_ w: Int, _ body: (Worker) throws -> Value) -> Result<Value, any Error> {
        let result = Result { try body(Worker(self, w)) }
        if case .failure(let error) = result { abandon(by: w, because: error) }
        return result
    }

    /// The results of workers 1, 2, … (each written once by its own thread; read after they were joined).
    private final class Results<Value: Sendable>: Sendable {
        private let values: Mutex<[Result<Value, any Error>?]>
        init(_ count: Int) { values = Mutex(Array(repeating: nil, count: count)) }
        func set(_ w: Int, _ result: Result<Value, any Error>) { values.withLock { $0[w] = result } }

        /// Worker 0's result and the others' in worker order, or the error ``InProcessWorkerGroup/run(_:)`` throws.
        func collect<First>(first: Result<First, any Error>) throws -> (first: First, others: [Value]) {
            let others = values.withLock { $0.dropFirst().map { $0! } }
            var failures: [any Error] = []
            if case .failure(let error) = first { failures.append(error) }
            for case .failure(let error) in others { failures.append(error) }
            let own = failures.first { error in
                if case TrainingError.workerFailed = error { return false }
                return true
            }
            if let error = own ?? failures.first { throw error }
            return (try first.get(), try others.map { try $0.get() })
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

    /// One worker's view of an ``InProcessWorkerGroup``, given to that worker's body by ``run(_:)``: its index
    /// and its collectives. It is not `Sendable`: it stays on the thread of its worker, the only one allowed to call
    /// its collectives.
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
