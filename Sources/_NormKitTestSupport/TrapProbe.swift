import Foundation
import XCTest

/// How a child run of one test ended and what it printed (standard output and error together).
public struct TrapProbeRun {
    /// `.uncaughtSignal` when the child trapped.
    public let reason: Process.TerminationReason
    /// Everything the child printed.
    public let output: String
}

/// Runs `test` (`"Module.Class/testName"`) of the running `.xctest` bundle in a child process with `variable=1` in its
/// environment, so that a test which must stop the process (a precondition) is observed from outside; nil when the
/// tests do not run from an `.xctest` bundle (the caller skips).
public func runTrapProbe(_ test: String, variable: String) throws -> TrapProbeRun? {
    let executable = URL(fileURLWithPath: CommandLine.arguments[0])
    guard executable.path.hasSuffix(".xctest") else { return nil }
    let child = Process()
    child.executableURL = executable
    child.arguments = [test]
    child.environment = ProcessInfo.processInfo.environment.merging([variable: "1"]) { $1 }
    let output = Pipe()
    child.standardOutput = output
    child.standardError = output
    try child.run()
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    child.waitUntilExit()
    return TrapProbeRun(reason: child.terminationReason, output: text)
}

/// Runs `test` in a child process (``runTrapProbe(_:variable:)``) and asserts that it stopped on a trap before it
/// printed `survivedMarker`, with `message` (the precondition's text) in its output. `survived` says in a failure
/// what the child did wrong when it printed the marker.
///
/// - Throws: `XCTSkip` when the tests do not run from an `.xctest` bundle; the child's launch error.
public func assertTrapProbeTraps(
    _ test: String, variable: String, survivedMarker: String, survived: String, message: String,
    file: StaticString = #filePath, line: UInt = #line
) throws {
    guard let run = try runTrapProbe(test, variable: variable) else {
        throw XCTSkip("not running from an .xctest bundle; cannot start a child test")
    }
    let text = run.output
    XCTAssertFalse(text.contains(survivedMarker), "\(survived):\n\(text)", file: file, line: line)
    XCTAssertEqual(run.reason, .uncaughtSignal, "expected a trap, got:\n\(text)", file: file, line: line)
    XCTAssertTrue(text.contains(message), text, file: file, line: line)
}
