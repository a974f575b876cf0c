import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// `AtomicFile.write(to:replacing: false)`: a write that must not replace a file (an export or a bench result
/// without `--overwrite`) refuses an existing file before it writes, and one that appears while it writes: the
/// complete file is put in place with `link(2)`, which fails on an existing name, where a check followed by
/// `rename(2)` replaced the newcomer silently.
final class AtomicFileNoReplaceTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("noreplace")
    }

    private func leftovers() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".tmp") }
    }

    func testANewFileIsCreatedWhole() throws {
        let target = directory.appendingPathComponent("new.json")
        try AtomicFile.write(Array("hello".utf8), to: target, replacing: false)
        XCTAssertEqual(try String(contentsOf: target, encoding: .utf8), "hello")
        XCTAssertEqual(try leftovers(), [])
        let links = try FileManager.default.attributesOfItem(atPath: target.path)[.referenceCount] as? Int
        XCTAssertEqual(links, 1, "the temporary name is removed: one link left")
    }

    func testAnExistingFileIsRefusedBeforeTheBodyRuns() throws {
        let target = directory.appendingPathComponent("kept.json")
        try Data("theirs".utf8).write(to: target)
        var ran = false
        XCTAssertThrowsError(
            try AtomicFile.write(to: target, replacing: false) { writer in
                ran = true
                try writer.write(Array("mine".utf8))
            }
        ) { error in
            XCTAssertEqual(error as? AtomicFileError, .destinationExists(path: target.path))
            XCTAssertTrue("\(error)".contains("already exists") && "\(error)".contains("nothing was written"))
        }
        XCTAssertFalse(ran)
        XCTAssertEqual(try String(contentsOf: target, encoding: .utf8), "theirs")
        // A link to a missing file: the file is created where the link points; once there, it is refused.
        let dangling = directory.appendingPathComponent("dangling.json")
        try FileManager.default.createSymbolicLink(atPath: dangling.path, withDestinationPath: "nowhere.json")
        XCTAssertNoThrow(try AtomicFile.write(Array("x".utf8), to: dangling, replacing: false))
        XCTAssertEqual(
            try String(contentsOf: directory.appendingPathComponent("nowhere.json"), encoding: .utf8), "x",
            "a link to a missing file: the file is created where it points, as a replacing write does")
        XCTAssertThrowsError(try AtomicFile.write(Array("y".utf8), to: dangling, replacing: false)) { error in
            XCTAssertEqual(
                error as? AtomicFileError,
                .destinationExists(path: directory.appendingPathComponent("nowhere.json").path))
        }
        XCTAssertEqual(try leftovers(), [])
    }

    /// The race the check alone loses: another process creates the file after the check, while this write is
    /// producing its content. The newcomer stays; the write throws and leaves no temporary file.
    func testAFileCreatedWhileWritingIsNotReplaced() throws {
        let target = directory.appendingPathComponent("race.safetensors")
        XCTAssertThrowsError(
            try AtomicFile.write(to: target, replacing: false) { writer in
                try writer.write(Array("mine".utf8))
                try Data("theirs".utf8).write(to: target)
            }
        ) { error in
            XCTAssertEqual(error as? AtomicFileError, .destinationExists(path: target.path))
        }
        XCTAssertEqual(try String(contentsOf: target, encoding: .utf8), "theirs")
        XCTAssertEqual(try leftovers(), [])

        // The replacing write (the default) does replace it, as before.
        try AtomicFile.write(Array("mine".utf8), to: target)
        XCTAssertEqual(try String(contentsOf: target, encoding: .utf8), "mine")
    }

    func testSafeTensorsWriteWithoutReplacing() throws {
        let target = directory.appendingPathComponent("model.safetensors")
        let tensors: [String: StateTensor] = ["w": .float32(shape: [2], values: [1, 2])]
        try SafeTensors.write(tensors, to: target, replacing: false)
        XCTAssertEqual(try SafeTensors.read(from: target).tensors, tensors)
        XCTAssertThrowsError(
            try SafeTensors.write(["w": .float32(shape: [1], values: [3])], to: target, replacing: false)
        ) { error in
            XCTAssertEqual(error as? AtomicFileError, .destinationExists(path: target.path))
        }
        XCTAssertEqual(try SafeTensors.read(from: target).tensors, tensors)
    }
}
