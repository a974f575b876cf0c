import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// ``ErrorText``: file-system errors as "path: reason" in the C library's words, and a checkpoint's valid JSON with
/// a number its field cannot hold named by field (Foundation says "The given data was not valid JSON").
final class ErrorTextTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("error-text")
    }

    /// A plain Swift error of the caller's (an enum with no message) is described by its case, not by Foundation's
    /// "The operation could not be completed" (a worker group reported a user's failing body that way).
    func testAPlainSwiftErrorIsDescribedByItsCase() {
        enum Boom: Error { case failedAt(step: Int) }
        XCTAssertEqual(ErrorText.describe(Boom.failedAt(step: 3)), "failedAt(step: 3)")
        // Foundation's own errors keep their words.
        XCTAssertEqual(ErrorText.describe(CocoaError(.fileNoSuchFile)), "No such file or directory")
    }

    func testFileErrorsArePathAndReasonInWords() throws {
        let file = directory.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: file)
        let sub = file.appendingPathComponent("sub")
        XCTAssertThrowsError(try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)) {
            error in
            XCTAssertEqual(ErrorText.describe(error), "\(sub.path): Not a directory (\(file.path) is a file)")
            XCTAssertEqual(ErrorText.describe(error, about: sub.path), "Not a directory (\(file.path) is a file)")
            XCTAssertEqual(ErrorText.fileError(error), ErrorText.describe(error))
        }
        let target = directory.appendingPathComponent("results.md")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        XCTAssertThrowsError(try Data("x".utf8).write(to: target, options: .atomic)) { error in
            XCTAssertEqual(ErrorText.describe(error), "\(target.path): Is a directory")
            XCTAssertEqual(ErrorText.describe(error, about: target.path), "Is a directory")
            XCTAssertEqual(
                ErrorText.describe(error, about: directory.path), "\(target.path): Is a directory",
                "another file than the one the message names keeps its path")
        }
        let missing = directory.appendingPathComponent("missing")
        XCTAssertThrowsError(try Data(contentsOf: missing)) { error in
            XCTAssertEqual(ErrorText.describe(error), "\(missing.path): No such file or directory")
        }
        XCTAssertEqual(ErrorText.describe(POSIXError(.EACCES)), "Permission denied")
        XCTAssertEqual(
            ErrorText.describe(
                CocoaError(
                    .fileWriteUnknown, userInfo: [NSFilePathErrorKey: "/x", NSUnderlyingErrorKey: POSIXError(.ENOSPC)])
            ), "/x: No space left on device")
        XCTAssertEqual(
            ErrorText.describe(CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: "/x"])),
            "/x: the file could not be written")
        XCTAssertNil(ErrorText.fileError(TrainingError.nothingToResume("/r")))
        XCTAssertEqual(
            ErrorText.describe(TrainingError.nothingToResume("/r")), "\(TrainingError.nothingToResume("/r"))")
    }

    /// The errors that used to reach the user raw: creating a run directory under a file, removing a run's files.
    func testTrainingErrorsOfTheFileSystemHaveNoFoundationCodes() throws {
        let file = directory.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: file)
        XCTAssertThrowsError(try RunDirectoryLock.acquire(file.appendingPathComponent("run"))) { error in
            XCTAssertEqual(
                "\(error)", "cannot write \(file.path)/run: Not a directory (\(file.path) is a file)")
        }
    }

    /// `TrainingConfiguration.decode`: numbers a field cannot hold are named with the field and the problem.
    func testANumberAFieldCannotHoldIsNamed() throws {
        let valid = String(decoding: try JSONEncoder().encode(TrainingConfiguration()), as: UTF8.self)
        func edited(_ field: String, _ literal: String) throws -> String {
            var object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(valid.utf8)) as? [String: Any])
            object[field] = "PLACEHOLDER"
            let text = String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
            return text.replacingOccurrences(of: "\"PLACEHOLDER\"", with: literal)
        }
        let cases: [(String, String, String)] = [
            ("seed", "-1", "field seed: -1 is not a valid UInt64 (a whole number in 0...18446744073709551615)"),
            (
                "seed", "18446744073709551621",
                "field seed: 18446744073709551621 is not a valid UInt64 (a whole number in 0...18446744073709551615)"
            ),
            ("batch", "8.5", "field batch: 8.5 is not an integer"),
            ("epochs", "1e300", "field epochs: 1e+300 is not a valid Int"),
            ("milestones", "[1, 2.5]", "field milestones.[1]: 2.5 is not an integer"),
            ("testLimit", "-0.5", "field testLimit: -0.5 is not an integer"),
        ]
        for (field, literal, expected) in cases {
            let json = try edited(field, literal)
            XCTAssertThrowsError(try TrainingConfiguration.decode(json: json, source: "/m")) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(field) = \(literal): \(error)")
                XCTAssertTrue("\(error)".hasPrefix("/m: metadata field 'configuration'"), "\(error)")
                XCTAssertFalse("\(error)".contains("not valid JSON"), "\(error)")
            }
        }
        // JSON that is not valid says so, with the parser's reason; a value of the wrong type keeps its words.
        XCTAssertThrowsError(try TrainingConfiguration.decode(json: "{\"seed\": 1", source: "/m")) { error in
            XCTAssertTrue("\(error)".contains("not valid JSON"), "\(error)")
        }
        XCTAssertThrowsError(try TrainingConfiguration.decode(json: try edited("batch", "\"8\""), source: "/m")) {
            error in
            XCTAssertTrue("\(error)".contains("field batch: expected Int"), "\(error)")
        }
        // A negative number where a signed one is allowed is no problem of decoding (validation refuses it).
        XCTAssertThrowsError(try TrainingConfiguration.decode(json: try edited("batch", "-1"), source: "/m")) {
            error in
            XCTAssertEqual(
                error as? ConfigurationError,
                ConfigurationError(
                    flag: "--batch", value: "-1", expected: "must be in 1...65536", source: "/m"))
        }
    }

    /// A run directory whose model.safetensors cannot be read is not "a run interrupted at step 0".
    func testADamagedCheckpointIsNotAnUnfinishedRunAtStepZero() throws {
        try Data(repeating: 7, count: 100).write(to: directory.appendingPathComponent(TrainingCheckpoint.modelFileName))
        guard case .unreadableCheckpoint(let reason) = RunDirectory.contents(of: directory) else {
            return XCTFail("\(RunDirectory.contents(of: directory))")
        }
        XCTAssertTrue(reason.contains(TrainingCheckpoint.modelFileName), reason)
        let error = TrainingError.unreadableRun(path: directory.path, reason: reason)
        XCTAssertEqual(error.localizedDescription, error.description)
        XCTAssertTrue(error.description.contains("cannot be resumed"), error.description)
        XCTAssertFalse(error.description.contains("--resume"), error.description)
    }
}
