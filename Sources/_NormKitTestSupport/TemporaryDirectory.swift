import Foundation
import XCTest

/// A new, empty directory of a test's own under the system's temporary directory (`TMPDIR`, else `/tmp`), named
/// `prefix-` and a UUID, which ``remove()`` deletes with everything in it.
///
/// In a test, ``XCTest/XCTestCase/makeTemporaryDirectory(_:)`` makes one and removes it when the test ends; make a
/// `TemporaryDirectory` directly for a directory that outlives one test (a fixture shared by a test bundle, a
/// process's log files), and call ``remove()`` when done with it.
public struct TemporaryDirectory: Sendable {
    /// The directory (it exists until ``remove()``).
    public let url: URL

    /// Makes the directory.
    ///
    /// - Parameter prefix: the start of its name, saying which tests made it (for a directory left by a killed run).
    /// - Throws: Foundation's error when the directory cannot be made.
    public init(prefix: String = "normkit-tests") throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(prefix)-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: false)
    }

    /// Deletes the directory and everything in it, first giving its owner back the permissions a test took away
    /// from it or from a directory in it (a read-only directory's entries cannot be deleted). Does nothing when
    /// the directory is gone already.
    public func remove() {
        let files = FileManager.default
        let writable: [FileAttributeKey: Any] = [.posixPermissions: 0o700]
        _ = try? files.setAttributes(writable, ofItemAtPath: url.path)
        let entries = files.enumerator(
            at: url, includingPropertiesForKeys: [.isDirectoryKey, .isSymbolicLinkKey], options: [])
        while let entry = entries?.nextObject() as? URL {
            let kind = try? entry.resourceValues(forKeys: [.isDirectoryKey, .isSymbolicLinkKey])
            if kind?.isDirectory == true, kind?.isSymbolicLink != true {
                _ = try? files.setAttributes(writable, ofItemAtPath: entry.path)
            }
        }
        try? files.removeItem(at: url)
    }
}

extension XCTestCase {
    /// A new, empty ``TemporaryDirectory`` for this test, removed with everything in it when the test ends (a
    /// teardown block, which runs whether the test passed, failed or threw).
    ///
    /// A test that needs a path where nothing is yet (a run directory the trainer makes, a file it writes) takes
    /// one inside: `try makeTemporaryDirectory().appendingPathComponent("run")`.
    ///
    /// - Parameter prefix: the start of the directory's name, saying which tests made it.
    /// - Throws: Foundation's error when the directory cannot be made.
    public func makeTemporaryDirectory(_ prefix: String = "normkit-tests") throws -> URL {
        let directory = try TemporaryDirectory(prefix: prefix)
        addTeardownBlock { directory.remove() }
        return directory.url
    }
}
