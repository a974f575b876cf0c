import Foundation
import XCTest
import _NormKitTestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// What one run of the `normkit` binary did.
struct CLIResult {
    /// The exit code (or the signal number when `signaled`).
    var status: Int32
    /// The process ended by a signal it did not handle (a trap, a kill), not by `exit`.
    var signaled: Bool
    var stdout: String
    var stderr: String
    /// Wall seconds from launch to exit.
    var seconds: Double
    /// The process was still running at its deadline and was killed.
    var timedOut: Bool

    /// Exit code, signal and both outputs, for failure messages.
    var summary: String {
        "exit \(signaled ? "by signal " : "")\(status)\(timedOut ? " (timed out)" : "") after "
            + String(format: "%.1f s", seconds) + "\n--- stdout ---\n\(stdout)\n--- stderr ---\n\(stderr)"
    }
}

/// Runs the `normkit` executable that `swift test` builds next to the test bundle (or the one named by the
/// environment variable `NORMKIT_BINARY`, to run these tests against another build).
enum CLI {
    /// The binary under test.
    static let binary: URL = {
        if let path = ProcessInfo.processInfo.environment["NORMKIT_BINARY"], !path.isEmpty {
            return URL(fileURLWithPath: path)
        }
        // On Linux the test bundle is an executable in the products directory (.build/debug), as is normkit.
        let candidates =
            [
                Bundle.main.bundleURL,
                URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
            ] + Bundle.allBundles.map { $0.bundleURL.deletingLastPathComponent() }
        for directory in candidates {
            let url = directory.appendingPathComponent("normkit")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return candidates[0].appendingPathComponent("normkit")
    }()

    /// Seconds a process may run before it is killed and its test fails (`NORMKIT_CLI_TIMEOUT`, default 120: a
    /// debug build on a busy machine needs several seconds for a tiny training run).
    static let timeout: Double = ProcessInfo.processInfo.environment["NORMKIT_CLI_TIMEOUT"].flatMap(Double.init) ?? 120

    /// A started `normkit` process whose output goes to files (never a pipe that could fill and block it).
    final class Running {
        let process = Process()
        let stdoutURL: URL
        let stderrURL: URL
        let started = Date()
        /// The directory of the two output files, removed by ``wait(timeout:)``.
        private let logs: TemporaryDirectory

        init(_ arguments: [String], in directory: URL) throws {
            logs = try TemporaryDirectory(prefix: "normkit-cli-logs")
            stdoutURL = logs.url.appendingPathComponent("stdout")
            stderrURL = logs.url.appendingPathComponent("stderr")
            _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
            _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
            process.executableURL = CLI.binary
            process.arguments = arguments
            process.currentDirectoryURL = directory
            process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
            process.standardError = try FileHandle(forWritingTo: stderrURL)
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }

        var pid: Int32 { process.processIdentifier }

        /// What the process has written to standard output so far.
        var stdoutSoFar: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }

        /// Sends `signal` to the process.
        func send(_ signal: Int32) { kill(pid, signal) }

        /// Waits for the exit (killing the process at `timeout` seconds) and collects the result.
        func wait(timeout: Double = CLI.timeout) -> CLIResult {
            let deadline = started.addingTimeInterval(timeout)
            var timedOut = false
            while process.isRunning {
                if Date() > deadline {
                    timedOut = true
                    kill(pid, SIGKILL)
                    process.waitUntilExit()
                    break
                }
                usleep(10_000)
            }
            process.waitUntilExit()
            let seconds = Date().timeIntervalSince(started)
            let out = (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? ""
            let err = (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
            logs.remove()
            return CLIResult(
                status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
                stdout: out, stderr: err, seconds: seconds, timedOut: timedOut)
        }
    }

    /// Runs `normkit arguments…` in `directory` and waits for it (killed after `timeout` seconds).
    static func run(_ arguments: [String], in directory: URL, timeout: Double = CLI.timeout) throws -> CLIResult {
        try Running(arguments, in: directory).wait(timeout: timeout)
    }

    /// Polls `condition` every 10 ms until it holds (true) or `timeout` seconds pass (false).
    static func waitUntil(timeout: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(2_000)
        }
        return condition()
    }
}

/// Assertions shared by the CLI tests.
extension XCTestCase {
    /// The process exited by itself (no signal, no timeout) with `code`.
    func assertExit(
        _ result: CLIResult, _ code: Int32, _ what: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertFalse(result.timedOut, "\(what): timed out\n\(result.summary)", file: file, line: line)
        XCTAssertFalse(result.signaled, "\(what): killed by a signal\n\(result.summary)", file: file, line: line)
        XCTAssertEqual(result.status, code, "\(what): exit code\n\(result.summary)", file: file, line: line)
    }

    /// A clear refusal: a non-zero exit code of its own (not a trap), each of `phrases` on standard error, and
    /// no crash report.
    func assertRefused(
        _ result: CLIResult, code: Int32? = nil, mentioning phrases: [String], _ what: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertFalse(result.timedOut, "\(what): timed out\n\(result.summary)", file: file, line: line)
        XCTAssertFalse(result.signaled, "\(what): killed by a signal\n\(result.summary)", file: file, line: line)
        if let code {
            XCTAssertEqual(result.status, code, "\(what): exit code\n\(result.summary)", file: file, line: line)
        } else {
            XCTAssertNotEqual(result.status, 0, "\(what): should fail\n\(result.summary)", file: file, line: line)
        }
        for phrase in phrases {
            XCTAssertTrue(
                result.stderr.contains(phrase), "\(what): stderr should mention '\(phrase)'\n\(result.summary)",
                file: file, line: line)
        }
        for crash in ["Fatal error", "Stack dump", "backtrace", "Illegal instruction", "Segmentation fault"] {
            XCTAssertFalse(
                result.stderr.contains(crash), "\(what): crash report on stderr\n\(result.summary)",
                file: file, line: line)
        }
    }
}

/// Every file of a directory (hidden ones too) with its bytes, to show that a refused command changed nothing.
func snapshot(of directory: URL) -> [String: Data] {
    var files: [String: Data] = [:]
    for name in (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [] {
        files[name] = (try? Data(contentsOf: directory.appendingPathComponent(name))) ?? Data()
    }
    return files
}

/// Copies `source` to a new directory `name` under `parent` and returns it.
func copyDirectory(_ source: URL, to parent: URL, name: String) throws -> URL {
    let target = parent.appendingPathComponent(name)
    try FileManager.default.copyItem(at: source, to: target)
    return target
}

/// The names of the temporary files of atomic writes (`.NAME.PID.HEX.tmp`) left in `directory`.
func temporaryFiles(in directory: URL) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".tmp") }
}
