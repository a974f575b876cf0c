import Foundation
import NormKit
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Data-parallel training inside one process (``InProcessWorkerGroup``, `normkit train --threading`): the
/// collectives add in worker order and never hang on a failed worker, and replicas train what one model trains
/// (GN up to float rounding, SyncBN as BN), deterministically, and resume exactly.
final class InProcessReplicaTests: XCTestCase {
    private struct Refused: Error, Equatable {}

    // MARK: - Collectives

    func testCollectivesAddInWorkerOrderAndGatherAndBroadcast() throws {
        let workers = 3, count = 1_001  // slices of 333 and 334 values
        // Per element: 1e8, 1 and −1e8 in some worker order. ((x₀ + x₁) + x₂) is what the group must give.
        @Sendable func value(_ w: Int, _ i: Int) -> Float { [Float(1e8), 1, -1e8][(w + i) % 3] }
        @Sendable func expected(_ i: Int) -> Float { (value(0, i) + value(1, i)) + value(2, i) }
        XCTAssertNotEqual(Set((0..<3).map(expected)).count, 1, "the values must make the order visible")
        let group = try InProcessWorkerGroup(workers: workers)
        let results = try group.run { worker -> ([Float], [Double], [Double], [Float]) in
            let w = worker.workerIndex
            var floats = (0..<count).map { value(w, $0) }
            try floats.withUnsafeMutableBufferPointer { try worker.allReduceSum($0) }
            var doubles = [Double(w) + 0.25, 1e16 * Double(w == 1 ? 1 : w == 2 ? -1 : 0)]
            try doubles.withUnsafeMutableBufferPointer { try worker.allReduceSum($0) }
            let local = [Double(w), Double(w) + 0.5]
            var all = [Double](repeating: -1, count: 2 * workers)
            try local.withUnsafeBufferPointer { l in
                try all.withUnsafeMutableBufferPointer { try worker.allGather(l, into: $0) }
            }
            var broadcast: [Float] = [Float(w), Float(10 * w)]
            try broadcast.withUnsafeMutableBufferPointer { try worker.broadcast($0, from: 2) }
            try worker.barrier()
            return (floats, doubles, all, broadcast)
        }
        for (w, (floats, doubles, all, broadcast)) in results.enumerated() {
            XCTAssertEqual(floats, (0..<count).map(expected), "worker \(w): sums in worker order")
            XCTAssertEqual(doubles, [0.25 + 1.25 + 2.25, 0], "worker \(w)")
            XCTAssertEqual(all, [0, 0.5, 1, 1.5, 2, 2.5], "worker \(w)")
            XCTAssertEqual(broadcast, [2, 20], "worker \(w)")
        }
    }

    func testMismatchedCollectivesThrowInsteadOfHanging() throws {
        let group = try InProcessWorkerGroup(workers: 2)
        XCTAssertThrowsError(
            try group.run { worker in
                var values = [Float](repeating: 1, count: 3 + worker.workerIndex)
                try values.withUnsafeMutableBufferPointer { try worker.allReduceSum($0) }
            }
        ) { error in
            guard case TrainingError.workerFailed(_, let reason) = error else {
                return XCTFail("expected workerFailed, got \(error)")
            }
            XCTAssertTrue(reason.contains("all-reduce"), reason)
        }
    }

    /// Wrong calls throw (and stop the other workers) instead of trapping: an all-gather into a buffer of the wrong
    /// size, a broadcast from a worker that does not exist. (A worker index outside the group can no longer be
    /// asked for: ``InProcessWorkerGroup/run(_:)`` hands each worker its own view.)
    func testWrongCallsThrowInsteadOfTrapping() throws {
        // A worker count outside 1...maxThreads: 0 used to become 1 silently, 2^62 a buffer too large to allocate.
        for workers in [0, -3, ConfigurationLimits.maxThreads + 1, 1 << 62] {
            XCTAssertThrowsError(try InProcessWorkerGroup(workers: workers)) { error in
                XCTAssertTrue("\(error)".contains("a group of \(workers) in-process workers"), "\(error)")
            }
        }
        XCTAssertEqual(try InProcessWorkerGroup(workers: 1).workerCount, 1)
        let gather = try InProcessWorkerGroup(workers: 2)
        XCTAssertThrowsError(
            try gather.run { worker in
                let local = [1.0, 2.0]
                var all = [Double](repeating: 0, count: worker.workerIndex == 0 ? 4 : 3)
                try local.withUnsafeBufferPointer { l in
                    try all.withUnsafeMutableBufferPointer { try worker.allGather(l, into: $0) }
                }
            }
        ) { error in XCTAssertTrue("\(error)".contains("all-gather into 3 values"), "\(error)") }
        let broadcast = try InProcessWorkerGroup(workers: 2)
        XCTAssertThrowsError(
            try broadcast.run { worker in
                var values: [Float] = [1, 2]
                try values.withUnsafeMutableBufferPointer { try worker.broadcast($0, from: 2) }
            }
        ) { error in XCTAssertTrue("\(error)".contains("broadcast from worker 2"), "\(error)") }
    }

    /// A worker that fails stops the others at their next collective; the error thrown is its own.
    func testAFailingWorkerStopsTheOthers() throws {
        let group = try InProcessWorkerGroup(workers: 3)
        let start = Date()
        XCTAssertThrowsError(
            try group.run { worker in
                if worker.workerIndex == 1 { throw Refused() }
                // Far more barriers than worker 1 will ever reach; each waits (and sleeps) until it is abandoned.
                for _ in 0..<1_000_000 { try worker.barrier() }
            }
        ) { error in XCTAssertEqual(error as? Refused, Refused(), "\(error)") }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        // The group stays abandoned: a later run is refused at once, naming the worker that failed.
        XCTAssertThrowsError(try group.run { try $0.barrier() }) { error in
            guard case TrainingError.invalidConfiguration(let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("abandoned by an earlier run (worker 1: "), message)
        }
    }

    // MARK: - Threading choice

    func testAutoThreadingUsesReplicasOnlyWhereTheyTrainTheSameModel() throws {
        var c = TrainingConfiguration()
        c.batch = 32
        for norm in NormKind.allCases {
            c.norm = norm
            let replicas = try TrainingThreading.auto.replicas(for: c, threads: 2)
            XCTAssertEqual(replicas, TrainingThreading.replicaInvariantNorms.contains(norm) ? 2 : 1, "\(norm)")
            XCTAssertEqual(try TrainingThreading.layers.replicas(for: c, threads: 2), 1)
            XCTAssertEqual(try TrainingThreading.replicas.replicas(for: c, threads: 2), 2)
        }
        XCTAssertEqual(Set([.bn, .brn, .mabn]).intersection(TrainingThreading.replicaInvariantNorms), [])
        c.norm = .gn
        XCTAssertEqual(try TrainingThreading.auto.replicas(for: c, threads: 1), 1)
        c.batch = 33
        XCTAssertEqual(try TrainingThreading.auto.replicas(for: c, threads: 2), 1, "a batch that does not split")
        XCTAssertThrowsError(try TrainingThreading.replicas.replicas(for: c, threads: 2)) { error in
            XCTAssertTrue("\(error)".contains("multiple of --threads"), "\(error)")
        }
    }

    // MARK: - Training

    /// What a replica's body returns: its trainer's state after `prepare` (before training) and after the run, and
    /// the run's summary or error.
    struct ReplicaOutcome: Sendable {
        let prepared: [String: StateTensor]
        let stateDict: [String: StateTensor]
        let stepLosses: [Float]
        let step: Int
        let history: [EpochMetrics]
        let summary: RunSummary?
        let error: TrainingError?
    }

    /// `count` replicas of `c` on the synthetic data, each built by its own worker's thread, set up by `prepare`
    /// and trained. With `keepingErrors` a replica's `TrainingError` is its outcome's `error`; otherwise it is
    /// thrown (the group's error).
    static func runReplicas(
        _ c: TrainingConfiguration, count: Int = 2, output: URL? = nil, data: (train: Dataset, test: Dataset)? = nil,
        keepingErrors: Bool = false, prepare: @escaping @Sendable (Trainer) throws -> Void = { _ in }
    ) throws -> [ReplicaOutcome] {
        let data = try data ?? TrainingTests.synthetic()
        let group = try InProcessWorkerGroup(workers: count)
        let c = c.perWorker(workers: count)
        return try group.run { worker in
            let t = try Trainer(
                configuration: c, train: data.train, test: data.test, output: output,
                progress: ProgressReporter(style: .silent))
            try t.distribute(over: worker)
            try prepare(t)
            let prepared = t.model.stateDict()
            var summary: RunSummary?, error: TrainingError?
            do {
                summary = try t.run()
            } catch let e as TrainingError where keepingErrors {
                error = e
            }
            return ReplicaOutcome(
                prepared: prepared, stateDict: t.model.stateDict(), stepLosses: t.stepLosses, step: t.step,
                history: t.history, summary: summary, error: error)
        }
    }

    private func single(_ c: TrainingConfiguration) throws -> Trainer {
        let data = try TrainingTests.synthetic()
        return try Trainer(
            configuration: c, train: data.train, test: data.test, output: nil,
            progress: ProgressReporter(style: .silent))
    }

    private static func largestDifference(_ a: [String: StateTensor], _ b: [String: StateTensor]) -> Float {
        var largest: Float = 0
        for (name, tensor) in a {
            guard case .float32(_, let x) = tensor, case .float32(_, let y)? = b[name] else { continue }
            for i in x.indices { largest = max(largest, abs(x[i] - y[i])) }
        }
        return largest
    }

    /// GN: two replicas on 8 images each train the 16-image model one process trains, up to float rounding
    /// (the gradient sums are split differently), and every replica holds the same weights; SyncBN replicas train
    /// BatchNorm's model. Scaling the loss gradient wrongly (a replica's mean, not its share of the batch's) moves
    /// the losses by far more than the tolerance.
    func testReplicasTrainTheModelOneProcessTrains() throws {
        for (norm, reference) in [(NormKind.gn, NormKind.gn), (.syncbn, .bn), (.ln, .ln)] {
            var c = TrainingTests.smallConfiguration(norm)
            c.epochs = 1
            let replicas = try Self.runReplicas(c)
            var r = c
            r.norm = reference
            let one = try single(r)
            let summary = try one.run()
            let losses = replicas[0].stepLosses
            XCTAssertEqual(losses.count, 8)
            XCTAssertEqual(replicas[1].stepLosses, losses, "\(norm): the replicas agree on every step's loss")
            XCTAssertEqual(replicas[0].stateDict, replicas[1].stateDict, "\(norm): replicas' weights differ")
            for (a, b) in zip(losses, one.stepLosses) {
                XCTAssertEqual(
                    a, b, accuracy: 2e-4 * max(1, abs(b)), "\(norm): replica losses \(losses) vs \(one.stepLosses)")
            }
            let difference = Self.largestDifference(replicas[0].stateDict, one.model.stateDict())
            XCTAssertLessThan(difference, 1e-3, "\(norm): weights after 8 steps")
            XCTAssertEqual(
                replicas[0].summary?.finalTestError ?? -1, summary.finalTestError, accuracy: 1.0 / 32, "\(norm)")
            XCTAssertEqual(replicas[0].summary?.workers, 2)
        }
    }

    func testReplicaRunsAreDeterministic() throws {
        var c = TrainingTests.smallConfiguration(.gn)
        c.epochs = 1
        let a = try Self.runReplicas(c)
        let b = try Self.runReplicas(c)
        XCTAssertEqual(a[0].stepLosses, b[0].stepLosses)
        XCTAssertEqual(a[0].stateDict, b[0].stateDict)
    }

    /// Stopped after 5 of 16 steps, the replicas save one checkpoint (worker 0's) and stop together; new replicas
    /// resumed from it finish with the bits of an uninterrupted replica run.
    func testAnInterruptedReplicaRunResumesExactly() throws {
        let c = TrainingTests.smallConfiguration(.gn)
        let fullDirectory = try makeTemporaryDirectory().appendingPathComponent("replicas-full")
        let directory = try makeTemporaryDirectory().appendingPathComponent("replicas-stopped")
        let full = try Self.runReplicas(c, output: fullDirectory)
        XCTAssertEqual(full[0].stepLosses.count, 16)

        let first = try Self.runReplicas(c, output: directory, keepingErrors: true) { $0.stopAfterStep = 5 }
        for replica in first {
            XCTAssertEqual(replica.error, .interrupted(step: 5, directory: directory.path))
        }
        XCTAssertEqual(first.map(\.step), [5, 5])
        let second = try Self.runReplicas(c, output: directory) { try $0.resume(from: directory) }
        XCTAssertEqual(second[1].prepared, first[0].stateDict)
        XCTAssertEqual(second[0].stepLosses, Array(full[0].stepLosses.suffix(from: 5)))
        XCTAssertEqual(second[0].stateDict, full[0].stateDict)
        let lines = try String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
            .split(separator: "\n")
        XCTAssertEqual(lines.count, c.epochs, "worker 0 alone writes the records")
    }

    /// SyncBN's and MABN's statistics are shared by the workers: a global batch whose statistics are not finite
    /// (one training image scaled by 10²¹) skips the running-statistic update on every worker alike. The run counts
    /// it once, as one process does, not once per worker (the count was the sum over workers: twice one process's).
    func testSkippedUpdatesOfSharedStatisticsCountOncePerStep() throws {
        let (train, test) = try TrainingTests.synthetic()
        let hostile = try ReliabilityTests.withFirstImageBeyondFloat(train)
        for (norm, reference) in [(NormKind.syncbn, NormKind.bn), (.mabn, .mabn)] {
            var c = TrainingTests.smallConfiguration(norm)
            c.epochs = 2
            let replicas = try Self.runReplicas(c, data: (hostile, test))
            var r = c.perWorker(workers: 2)
            r.norm = reference
            let one = try Trainer(
                configuration: r, train: hostile, test: test, output: nil, progress: ProgressReporter(style: .silent))
            let summary = try one.run()
            let expected = one.history.map(\.skippedUpdates)
            XCTAssertGreaterThan(summary.skippedUpdates ?? 0, 0, "\(norm): the hostile image must make a skip")
            for (w, replica) in replicas.enumerated() {
                XCTAssertEqual(replica.history.map(\.skippedUpdates), expected, "\(norm), worker \(w)")
                XCTAssertEqual(replica.summary?.skippedUpdates, summary.skippedUpdates, "\(norm), worker \(w)")
            }
        }
    }

    /// Worker 0 cannot create its run directory (a file is in the way): it fails, worker 1, waiting for it in the
    /// first collective, is stopped instead of hanging, and the error thrown is worker 0's.
    func testAFailureOfWorkerZeroDoesNotHangTheOthers() throws {
        let scratch = try makeTemporaryDirectory("replicas-blocked")
        let blocker = scratch.appendingPathComponent("file")
        try Data("x".utf8).write(to: blocker)
        var c = TrainingTests.smallConfiguration(.gn)
        c.epochs = 1
        let start = Date()
        XCTAssertThrowsError(try Self.runReplicas(c, output: blocker.appendingPathComponent("run"))) { error in
            if case TrainingError.workerFailed = error { XCTFail("worker 0's own error expected, got \(error)") }
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
    }
}
