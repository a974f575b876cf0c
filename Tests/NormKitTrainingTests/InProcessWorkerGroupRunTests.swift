import Foundation
import NormKit
import NormKitTraining
import XCTest

/// ``InProcessWorkerGroup/run(_:)`` takes a `@Sendable` body that gets its worker and returns `Sendable` results,
/// so a body that captures another worker's non-Sendable objects (a shared array of trainers) does not compile;
/// that is the compiler's to check, not a test's. These tests check what the body's contract promises at run time:
/// results in worker order, a worker that fails while it builds its trainer (or while the others wait in a
/// collective) ending the run with its own error and no hang, and one run of a group at a time.
final class InProcessWorkerGroupRunTests: XCTestCase {
    private struct Failed: Error, Equatable { let worker: Int }

    /// Results come back in worker order, whichever worker finishes first (worker 0, on the calling thread, last).
    func testResultsComeInWorkerOrder() throws {
        let group = try InProcessWorkerGroup(workers: 4)
        let results = try group.run { worker -> String in
            // Worker 3 finishes first, worker 0 last.
            Thread.sleep(forTimeInterval: 0.02 * Double(group.workerCount - worker.workerIndex))
            return "worker \(worker.workerIndex) of \(worker.workerCount)"
        }
        XCTAssertEqual(results, (0..<4).map { "worker \($0) of 4" })
        let (first, others) = try group.run(first: { $0.workerIndex * 10 }, others: { $0.workerIndex * 10 })
        XCTAssertEqual(first, 0)
        XCTAssertEqual(others, [10, 20, 30])
        XCTAssertEqual(try InProcessWorkerGroup(workers: 1).run { $0.workerIndex }, [0])
    }

    /// Workers 1 and 2 fail to build their trainers (a configuration their trainer refuses) while worker 0, built,
    /// waits for them in its first collective: the run ends, with no hang, with worker 1's own error, the
    /// lowest-numbered worker's, not with the `workerFailed` that stopped worker 0, nor worker 2's.
    func testAWorkerThatFailsWhileBuildingAbandonsTheGroup() throws {
        let data = try TrainingTests.synthetic()
        var c = TrainingTests.smallConfiguration(.gn)
        c.epochs = 1
        c.batch = 24  // 8 images per worker
        let good = c.perWorker(workers: 3)
        var bad = good
        bad.model = "no-such-model"
        let group = try InProcessWorkerGroup(workers: 3)
        let start = Date()
        XCTAssertThrowsError(
            try group.run { [bad] worker -> RunSummary in
                if worker.workerIndex == 2 { throw Failed(worker: 2) }
                let trainer = try Trainer(
                    configuration: worker.workerIndex == 0 ? good : bad, train: data.train, test: data.test,
                    output: nil, progress: ProgressReporter(style: .silent))
                try trainer.distribute(over: worker)
                return try trainer.run()
            }
        ) { error in
            if case TrainingError.workerFailed = error { return XCTFail("worker 1's own error expected, got \(error)") }
            XCTAssertNil(error as? Failed, "worker 1's error, not worker 2's")
            XCTAssertTrue("\(error)".contains("no-such-model"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
    }

    /// Worker 2 fails after 3 all-reduces while workers 0 and 1 wait in their fourth: all end, with worker 2's
    /// error, and the group stays abandoned.
    func testABodyFailingWhileOthersWaitInACollectiveEndsTheRun() throws {
        let group = try InProcessWorkerGroup(workers: 3)
        let start = Date()
        XCTAssertThrowsError(
            try group.run { worker in
                var values: [Float] = [1, 2, 3]
                for round in 0..<1_000 {
                    if worker.workerIndex == 2 && round == 3 { throw Failed(worker: 2) }
                    try values.withUnsafeMutableBufferPointer { try worker.allReduceSum($0) }
                }
            }
        ) { error in XCTAssertEqual(error as? Failed, Failed(worker: 2), "\(error)") }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        // A later run is refused up front with the earlier failure and what to do (it used to start and fail in its
        // first collective with that old error, as if this run had failed).
        XCTAssertThrowsError(try group.run { try $0.barrier() }) { error in
            guard case TrainingError.invalidConfiguration(let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(
                message.contains("abandoned by an earlier run (worker 2: \(ErrorText.describe(Failed(worker: 2))))"),
                message)
            XCTAssertTrue(message.contains("make a new InProcessWorkerGroup"), message)
        }
    }

    /// Worker 0's body runs on the calling thread: it may use what the caller built and keeps (a non-Sendable
    /// object), and the caller reads it afterwards.
    func testWorkerZerosBodyRunsOnTheCallingThread() throws {
        final class Log { var lines: [String] = [] }
        let log = Log()
        let caller = Thread.current
        let group = try InProcessWorkerGroup(workers: 2)
        let (first, others) = try group.run(
            first: { worker -> Bool in
                log.lines.append("worker \(worker.workerIndex)")
                try worker.barrier()
                return Thread.current == caller
            },
            others: { worker -> Bool in
                try worker.barrier()
                return Thread.isMainThread
            })
        XCTAssertTrue(first)
        XCTAssertEqual(others, [false])
        XCTAssertEqual(log.lines, ["worker 0"])
    }

    /// A second run of a group while it runs (here from inside a body) would give two threads the same worker's
    /// buffers: it is refused, and the run that asked for it ends with that refusal.
    func testAGroupRunsOneSetOfWorkersAtATime() throws {
        let group = try InProcessWorkerGroup(workers: 2)
        XCTAssertThrowsError(
            try group.run { worker in
                if worker.workerIndex == 1 { _ = try worker.group.run { $0.workerIndex } }
                try worker.barrier()
            }
        ) { error in
            guard case TrainingError.invalidConfiguration(let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("running already"), message)
        }
        // Once a run has ended the group runs again (a failed run leaves it abandoned; a new one runs after a
        // successful run).
        let fresh = try InProcessWorkerGroup(workers: 2)
        XCTAssertEqual(try fresh.run { $0.workerIndex }, [0, 1])
        XCTAssertEqual(try fresh.run { $0.workerIndex + 1 }, [1, 2])
    }
}
