// normkit-mpi-check: the self-test of NormKitDistributed's MPICommunicator, run under mpirun with any number of
// ranks (scripts/mpi_check.sh runs it with 2 and 3).
//
//     mpirun -np 3 --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader \
//         .build/release/normkit-mpi-check [--large 3000000]
//     mpirun -np 3 ... .build/release/normkit-mpi-check --fail-rank 1 [--fail-mode exit|kill|abort]
//
// Checks mode: every collective against a closed form that depends on the ranks (sums, gather order, broadcasts
// from the first and the last rank, the barrier's wait, counts in the millions, empty buffers, refused arguments,
// calls after finalize). The ranks agree on each check's outcome (a sum of failure flags) and rank 0 prints one
// line per check; a failing rank prints its details to stderr. Exit status: 0 when every check passed on every
// rank, 1 when one failed, 2 for a usage error, 77 when NormKit was built without Open MPI.
//
// Failure mode (`--fail-rank k`): after a barrier, rank k dies before a collective (`exit`: exit(3) without
// finalizing; `kill`: SIGKILL; `abort`: MPI_Abort with 3) while the others wait in an MPI_Allreduce. It shows how
// the survivors end: with Open MPI 4.1 mpirun terminates them (SIGTERM, reported by the communicator's notice) and
// exits non-zero. A survivor that gets an error instead prints it and exits 4; one whose collective completes
// exits 5 (neither has been seen).
//
// `--mpirun-arguments` prints `MPICommunicator.mpirunArguments()` one a line, for scripts (no MPI call).
import Foundation
import NormKitDistributed

/// Exit statuses (77 is the automake convention for "skipped").
enum Status {
    static let passed: Int32 = 0
    static let failed: Int32 = 1
    static let usage: Int32 = 2
    static let failingRank: Int32 = 3
    static let survivorGotError: Int32 = 4
    static let survivorCompleted: Int32 = 5
    static let unavailable: Int32 = 77
}

/// Unbuffered output (mpirun forwards every rank's stdout and stderr through pipes).
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
func warn(_ line: String) { FileHandle.standardError.write(Data((line + "\n").utf8)) }

/// "12.3 ms" or "1.25 s".
func describe(_ duration: Duration) -> String {
    let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    return seconds < 1 ? String(format: "%.1f ms", seconds * 1000) : String(format: "%.2f s", seconds)
}

// MARK: Arguments

enum FailMode: String { case exit, kill, abort }

struct Options {
    var failRank: Int?
    var failMode = FailMode.exit
    var largeCount = 3_000_000
    var printMPIRunArguments = false

    init(_ arguments: [String]) throws {
        var rest = arguments[...]
        func value(_ flag: String) throws -> String {
            guard let next = rest.popFirst() else { throw UsageError("\(flag) needs a value") }
            return next
        }
        while let flag = rest.popFirst() {
            switch flag {
            case "--fail-rank":
                guard let rank = Int(try value(flag)), rank >= 0 else { throw UsageError("--fail-rank takes a rank") }
                failRank = rank
            case "--fail-mode":
                let text = try value(flag)
                guard let mode = FailMode(rawValue: text) else { throw UsageError("--fail-mode: exit, kill or abort") }
                failMode = mode
            case "--large":
                guard let count = Int(try value(flag)), count > 0 else { throw UsageError("--large takes a count") }
                largeCount = count
            case "--mpirun-arguments":
                printMPIRunArguments = true
            case "-h", "--help":
                throw UsageError(nil)
            default:
                throw UsageError("unknown argument \(flag)")
            }
        }
    }
}

struct UsageError: Error {
    let message: String?
    init(_ message: String?) { self.message = message }
    static let usage = """
        usage: mpirun -np <ranks> <flags> normkit-mpi-check [--large <floats>] [--fail-rank <rank> \
        [--fail-mode exit|kill|abort]]
               normkit-mpi-check --mpirun-arguments   (prints mpirun's flags for this machine, one a line)
        mpirun flags here: \(MPICommunicator.mpirunArguments().joined(separator: " "))
        """
}

// MARK: Checks

/// Runs the checks, one line each (rank 0), counting the checks that failed on any rank.
final class Checker {
    let group: MPICommunicator
    var checks = 0
    var failures = 0
    var rank: Int { group.workerIndex }
    var ranks: Int { group.workerCount }

    init(group: MPICommunicator) { self.group = group }

    /// Runs `body` (nil: passed, else what went wrong on this rank), agrees with the other ranks on the outcome,
    /// and prints the line. An MPI error ends the whole job: the ranks may no longer make the same calls.
    func check(_ name: String, _ body: () throws -> String?) {
        checks += 1
        let start = ContinuousClock.now
        let problem: String?
        do {
            problem = try body()
        } catch {
            warn("rank \(rank): \(name): \(error)")
            group.abort(exitCode: Status.failed)
        }
        let elapsed = ContinuousClock.now - start
        if let problem { warn("rank \(rank): FAIL \(name): \(problem)") }
        var failing = [problem == nil ? 0.0 : 1.0]
        do {
            try failing.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        } catch {
            warn("rank \(rank): agreeing on \(name): \(error)")
            group.abort(exitCode: Status.failed)
        }
        if failing[0] != 0 { failures += 1 }
        if rank == 0 {
            say(
                failing[0] == 0
                    ? "PASS  \(name)  (\(describe(elapsed)) on rank 0)"
                    : "FAIL  \(name)  (on \(Int(failing[0])) of \(ranks) ranks, details on stderr)")
        }
    }

    /// The first index where `actual` differs from `expected(i)`, described; nil when none does.
    func firstMismatch<T: Equatable>(_ actual: [T], _ expected: (Int) -> T) -> String? {
        for i in actual.indices where actual[i] != expected(i) {
            return "element \(i) is \(actual[i]), expected \(expected(i))"
        }
        return nil
    }

    func runAll(largeCount: Int) {
        let r = rank, n = ranks
        let rankSum = n * (n + 1) / 2  // Σ (r + 1)
        let rankSumFrom0 = n * (n - 1) / 2  // Σ r

        check("allReduceSum Float ×1000: Σ_r (r+1)·(i mod 7 + 1)") {
            var values = (0..<1000).map { Float(r + 1) * Float($0 % 7 + 1) }
            try values.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
            return firstMismatch(values) { Float(rankSum) * Float($0 % 7 + 1) }
        }
        check("allReduceSum Double ×1000: Σ_r (r + i/2)") {
            var values = (0..<1000).map { Double(r) + 0.5 * Double($0) }
            try values.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
            return firstMismatch(values) { Double(rankSumFrom0) + 0.5 * Double($0) * Double(n) }
        }
        check("allGather Double ×3 per rank: rank w's block at 3w") {
            let local = (0..<3).map { Double(r * 10 + $0) }
            var all = [Double](repeating: -1, count: 3 * n)
            try local.withUnsafeBufferPointer { local in
                try all.withUnsafeMutableBufferPointer { try group.allGather(local, into: $0) }
            }
            return firstMismatch(all) { Double(($0 / 3) * 10 + $0 % 3) }
        }
        for root in Set([0, n - 1]).sorted() {
            check("broadcast Float ×1000 from rank \(root)") {
                var values = (0..<1000).map { Float(r * 100_000 + $0) }
                try values.withUnsafeMutableBufferPointer { try group.broadcast($0, from: root) }
                return firstMismatch(values) { Float(root * 100_000 + $0) }
            }
        }
        check("broadcast bytes ×64 from rank \(n - 1)") {
            func message(_ rank: Int) -> [UInt8] {
                let text = Array("rank \(rank) says hello".utf8)
                return text + [UInt8](repeating: 0, count: 64 - text.count)
            }
            var bytes = message(r)
            try bytes.withUnsafeMutableBytes { try group.broadcast($0, from: n - 1) }
            return bytes == message(n - 1) ? nil : "got \(String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self))"
        }
        check("barrier: the others wait for rank 0, 0.5 s late") {
            let start = ContinuousClock.now
            if r == 0 { Thread.sleep(forTimeInterval: 0.5) }
            try group.barrier()
            let waited = ContinuousClock.now - start
            return r != 0 && waited < .milliseconds(300) ? "left the barrier after \(describe(waited))" : nil
        }

        let count = largeCount
        check("large allReduceSum Float ×\(count): Σ_r (r+1 + i mod 1024)") {
            var values = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                for i in 0..<count { buffer[i] = Float(r + 1) + Float(i % 1024) }
                initialized = count
            }
            try values.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
            return firstMismatch(values) { Float(rankSum) + Float(n) * Float($0 % 1024) }
        }
        check("large broadcast Float ×\(count) from rank \(n - 1)") {
            var values = [Float](repeating: r == n - 1 ? 0 : -1, count: count)
            if r == n - 1 { for i in 0..<count { values[i] = Float(i % 4096) } }
            try values.withUnsafeMutableBufferPointer { try group.broadcast($0, from: n - 1) }
            return firstMismatch(values) { Float($0 % 4096) }
        }
        let gatherCount = count / 2 + 1
        check("large allGather Double ×\(gatherCount) per rank") {
            let local = (0..<gatherCount).map { Double(r) * 1e7 + Double($0) }
            var all = [Double](repeating: -1, count: gatherCount * n)
            try local.withUnsafeBufferPointer { local in
                try all.withUnsafeMutableBufferPointer { try group.allGather(local, into: $0) }
            }
            return firstMismatch(all) { Double($0 / gatherCount) * 1e7 + Double($0 % gatherCount) }
        }

        check("empty buffers: allReduceSum, allGather, broadcast") {
            var floats: [Float] = []
            var doubles: [Double] = []
            try floats.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
            try doubles.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
            try floats.withUnsafeMutableBufferPointer { try group.broadcast($0, from: n - 1) }
            try doubles.withUnsafeBufferPointer { local in
                try doubles.withUnsafeMutableBufferPointer { try group.allGather(local, into: $0) }
            }
            return nil
        }
        check("refused before any MPI call: root \(n), gather into the wrong size") {
            var values: [Float] = [1]
            var problems: [String] = []
            do {
                try values.withUnsafeMutableBufferPointer { try group.broadcast($0, from: n) }
                problems.append("broadcast from rank \(n) did not throw")
            } catch DistributedError.invalidRoot(n, n) {
            } catch { problems.append("broadcast from rank \(n) threw \(error)") }
            let local: [Double] = [1, 2]
            var all = [Double](repeating: 0, count: 2 * n + 1)
            do {
                try local.withUnsafeBufferPointer { local in
                    try all.withUnsafeMutableBufferPointer { try group.allGather(local, into: $0) }
                }
                problems.append("allGather into \(all.count) values did not throw")
            } catch DistributedError.countMismatch(_, 2 * n, 2 * n + 1) {
            } catch { problems.append("allGather into the wrong size threw \(error)") }
            return problems.isEmpty ? nil : problems.joined(separator: "; ")
        }
        check("a second communicator shares the process's MPI") {
            let second = try MPICommunicator()
            guard second.workerIndex == r, second.workerCount == n else {
                return "rank \(second.workerIndex) of \(second.workerCount)"
            }
            var value = [Double(r)]
            try value.withUnsafeMutableBufferPointer { try second.allReduceSum($0) }
            return value[0] == Double(rankSumFrom0) ? nil : "its sum is \(value[0])"
        }
    }

    /// After `finalize`: collectives and new communicators throw `finalized`. Local checks (no MPI to agree with):
    /// every rank prints its own failure.
    func checkAfterFinalize() -> Bool {
        var problems: [String] = []
        do {
            try group.barrier()
            problems.append("barrier after finalize did not throw")
        } catch DistributedError.finalized {
        } catch { problems.append("barrier after finalize threw \(error)") }
        do {
            _ = try MPICommunicator()
            problems.append("a communicator after finalize did not throw")
        } catch DistributedError.finalized {
        } catch { problems.append("a communicator after finalize threw \(error)") }
        do { try group.finalize() } catch { problems.append("a second finalize threw \(error)") }
        if problems.isEmpty {
            if rank == 0 { say("PASS  after finalize: collectives and new communicators throw `finalized` (rank 0)") }
            return true
        }
        warn("rank \(rank): FAIL after finalize: \(problems.joined(separator: "; "))")
        return false
    }
}

// MARK: Failure mode

/// Rank `failRank` dies while the others wait in a collective; see the comment at the top.
func runFailure(group: MPICommunicator, failRank: Int, mode: FailMode) -> Never {
    let r = group.workerIndex
    do { try group.barrier() } catch {
        warn("rank \(r): barrier: \(error)")
        group.abort(exitCode: Status.failed)
    }
    if r == 0 { say("rank \(failRank) will die (\(mode.rawValue)) while the others wait in MPI_Allreduce") }
    if r == failRank {
        Thread.sleep(forTimeInterval: 0.5)  // the others are in the collective by now
        warn("rank \(r): dying now (\(mode.rawValue)), without finalize")
        switch mode {
        case .exit: exit(Status.failingRank)
        case .kill: _ = raise(SIGKILL)
        case .abort: group.abort(exitCode: Status.failingRank)
        }
    }
    let start = ContinuousClock.now
    var values = [Double](repeating: 1, count: 1000)
    do {
        try values.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
    } catch {
        warn("rank \(r): MPI_Allreduce threw after \(describe(ContinuousClock.now - start)): \(error)")
        exit(Status.survivorGotError)
    }
    warn("rank \(r): MPI_Allreduce completed although rank \(failRank) died (sum \(values[0]))")
    exit(Status.survivorCompleted)
}

// MARK: Main

let options: Options
do {
    options = try Options(Array(CommandLine.arguments.dropFirst()))
} catch let error as UsageError {
    if let message = error.message { warn("normkit-mpi-check: \(message)") }
    warn(UsageError.usage)
    exit(error.message == nil ? Status.passed : Status.usage)
} catch {
    exit(Status.usage)
}

if options.printMPIRunArguments {
    MPICommunicator.mpirunArguments().forEach { say($0) }
    exit(Status.passed)
}
guard MPICommunicator.isAvailable else {
    warn("normkit-mpi-check: \(DistributedError.mpiUnavailable)")
    exit(Status.unavailable)
}
let group: MPICommunicator
do {
    group = try MPICommunicator()
} catch {
    warn("normkit-mpi-check: \(error)")
    exit(Status.failed)
}

if let failRank = options.failRank {
    guard failRank < group.workerCount, group.workerCount > 1 else {
        warn("normkit-mpi-check: --fail-rank \(failRank) needs at least \(max(failRank + 1, 2)) ranks")
        try? group.finalize()
        exit(Status.usage)
    }
    runFailure(group: group, failRank: failRank, mode: options.failMode)
}

let start = ContinuousClock.now
if group.workerIndex == 0 {
    say(
        "normkit-mpi-check: \(group.workerCount) ranks, launched by mpirun: "
            + "\(MPICommunicator.launchedUnderMPI() ? "yes" : "no (singleton)"), "
            + "elements per MPI call: \(group.elementsPerMPICall)")
}
let checker = Checker(group: group)
checker.runAll(largeCount: options.largeCount)
do { try group.finalize() } catch {
    warn("rank \(group.workerIndex): finalize: \(error)")
    exit(Status.failed)
}
let finalizedCleanly = checker.checkAfterFinalize()
if group.workerIndex == 0 {
    let elapsed = describe(ContinuousClock.now - start)
    say(
        checker.failures == 0
            ? "normkit-mpi-check: all \(checker.checks) checks passed on \(group.workerCount) ranks in \(elapsed)"
            : "normkit-mpi-check: \(checker.failures) of \(checker.checks) checks FAILED")
}
exit(checker.failures == 0 && finalizedCleanly ? Status.passed : Status.failed)
