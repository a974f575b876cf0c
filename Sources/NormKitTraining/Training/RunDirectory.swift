import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A run directory's files and the rules that keep a user's run from being lost: what counts as a run, the
/// lock that stops a second writer, and the clean-up of temporary files left by writers that died.
public enum RunDirectory {
    /// The lock file held (with `flock`) for the life of a run; it holds the PID of its holder.
    public static let lockFileName = ".normkit.lock"

    /// What a directory holds.
    public enum Contents: Equatable, Sendable {
        /// Nothing of a run (missing, empty, or only unrelated files).
        case empty
        /// A run that finished (`summary.json` with `finished: true`).
        case finished
        /// A run with a checkpoint (`model.safetensors`) at `step` that did not finish.
        case unfinished(step: Int)
        /// A run whose `model.safetensors` cannot be read (damaged, truncated, not written by normkit): it cannot
        /// be resumed; `reason` says why.
        case unreadableCheckpoint(reason: String)
        /// Records of a run (metrics, training states, an error) but no usable checkpoint.
        case records([String])
    }

    /// The files a run writes (the ones ``removeRun(in:)`` removes).
    static func isRunFile(_ name: String) -> Bool {
        [TrainingCheckpoint.modelFileName, "summary.json", "metrics.jsonl", "error.txt"].contains(name)
            || (name.hasPrefix("training-state-") && name.hasSuffix(".safetensors"))
    }

    /// What `directory` holds. A `model.safetensors` that cannot be read makes it
    /// ``Contents/unreadableCheckpoint(reason:)``, finished or not: the run cannot be resumed.
    public static func contents(of directory: URL) -> Contents {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        let runFiles = files.filter(isRunFile).sorted()
        if runFiles.isEmpty { return .empty }
        var step: Int?
        if runFiles.contains(TrainingCheckpoint.modelFileName) {
            do {
                step = try TrainingCheckpoint.readModel(
                    at: directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
                ).step
            } catch {
                return .unreadableCheckpoint(reason: ErrorText.describe(error))
            }
        }
        if let data = try? Data(readFileBytes(path: directory.appendingPathComponent("summary.json").path)),
            let summary = try? JSONDecoder.normKit.decode(RunSummary.self, from: data), summary.finished
        {
            return .finished
        }
        return step.map { .unfinished(step: $0) } ?? .records(runFiles)
    }

    /// Removes the run files of `directory` (checkpoint, training states, records), nothing else.
    public static func removeRun(in directory: URL) throws {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for name in files where isRunFile(name) {
            let url = directory.appendingPathComponent(name)
            do { try FileManager.default.removeItem(at: url) } catch {
                throw TrainingError.cannotWrite(path: url.path, reason: ErrorText.describe(error, about: url.path))
            }
        }
    }

    /// The folder of a run directory where a replacing run keeps the run it replaces until it has a checkpoint of
    /// its own (``setRunAside(in:)``).
    public static let replacedRunFolderName = ".normkit-replaced-run"

    /// Moves the run files of `directory` into ``replacedRunFolderName`` (renames: nothing is copied or lost),
    /// replacing what an earlier replacement left there. A run that replaces another calls this first, then
    /// ``discardRunSetAside(in:)`` once it has written its first checkpoint, or ``restoreRunSetAside(in:)`` if it
    /// stops before: a replacing run that fails or diverges early leaves the old run as it was.
    public static func setRunAside(in directory: URL) throws {
        let aside = directory.appendingPathComponent(replacedRunFolderName)
        do {
            if FileManager.default.fileExists(atPath: aside.path) { try FileManager.default.removeItem(at: aside) }
            try FileManager.default.createDirectory(at: aside, withIntermediateDirectories: false)
        } catch {
            throw TrainingError.cannotWrite(path: aside.path, reason: describe(error))
        }
        try move(runFilesOf: directory, to: aside)
    }

    /// Puts the run set aside by ``setRunAside(in:)`` back, after removing the run files written since.
    public static func restoreRunSetAside(in directory: URL) throws {
        let aside = directory.appendingPathComponent(replacedRunFolderName)
        guard FileManager.default.fileExists(atPath: aside.path) else { return }
        try removeRun(in: directory)
        try move(runFilesOf: aside, to: directory)
        try? FileManager.default.removeItem(at: aside)
    }

    /// Deletes the run set aside by ``setRunAside(in:)`` (its replacement has a checkpoint now).
    public static func discardRunSetAside(in directory: URL) {
        try? FileManager.default.removeItem(at: directory.appendingPathComponent(replacedRunFolderName))
    }

    private static func move(runFilesOf source: URL, to destination: URL) throws {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: source.path)) ?? []
        for name in files where isRunFile(name) {
            let from = source.appendingPathComponent(name), to = destination.appendingPathComponent(name)
            guard rename(from.path, to.path) == 0 else {
                throw TrainingError.cannotWrite(
                    path: to.path, reason: "moving \(from.path): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Removes temporary files of ``AtomicFile`` writes (`.NAME.PID.HEX.tmp`) whose writer process is gone.
    ///
    /// - Returns: the names removed.
    @discardableResult
    public static func removeStaleTemporaryFiles(in directory: URL) -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        var removed: [String] = []
        for name in files where name.hasPrefix(".") && name.hasSuffix(".tmp") {
            let parts = name.dropLast(4).split(separator: ".")
            guard parts.count >= 3, let pid = Int32(parts[parts.count - 2]), pid != getpid() else { continue }
            if kill(pid, 0) == -1 && errno == ESRCH {
                if (try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))) != nil {
                    removed.append(name)
                }
            }
        }
        return removed
    }
}

/// An exclusive, process-lifetime lock on a run (or sweep) directory: `flock` on ``RunDirectory/lockFileName``.
///
/// The kernel drops a `flock` when its process dies, so a lock is never stale; the file keeps the PID of the
/// last holder for messages. Within one process the lock is counted: a second ``acquire(_:)`` of the same
/// directory (a trainer that resumes and then runs) shares the first.
public final class RunDirectoryLock: Sendable {
    /// The locked directory (standardised path).
    public let directory: String
    /// The PID left in the lock file by a previous holder that died without releasing it (the kernel dropped its
    /// lock), nil after a clean release.
    public let previousHolder: Int32?
    private let released = Atomic<Bool>(false)

    /// The directories this process holds: each one's lock file descriptor and number of holds.
    private static let held = Mutex<[String: (descriptor: Int32, count: Int)]>([:])

    private init(directory: String, previousHolder: Int32?) {
        self.directory = directory; self.previousHolder = previousHolder
    }

    /// Locks `directory` (created if needed) for this process.
    ///
    /// The lock file is opened as `openRegularFile(_:flags:)` opens a file: one that is a named pipe, a device or
    /// a directory is refused (never opened for writing, never waited on), naming the path and what it is.
    ///
    /// - Throws: ``TrainingError/runDirectoryLocked(path:pid:)`` when another process holds it;
    ///   ``TrainingError/cannotWrite(path:reason:)`` when the directory or the lock file cannot be created, or the
    ///   lock file is not a regular file.
    public static func acquire(_ directory: URL) throws -> RunDirectoryLock {
        let path = directory.standardizedFileURL.path
        return try held.withLock { held in
            if let entry = held[path] {
                held[path] = (entry.descriptor, entry.count + 1)
                return RunDirectoryLock(directory: path, previousHolder: nil)
            }
            do {
                try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            } catch {
                throw TrainingError.cannotWrite(path: path, reason: ErrorText.describe(error, about: path))
            }
            let lockPath = (path as NSString).appendingPathComponent(RunDirectory.lockFileName)
            let descriptor: Int32
            do throws(RegularFileRefusal) {
                descriptor = try openRegularFile(lockPath, flags: O_RDWR | O_CREAT).descriptor
            } catch {
                let remedy =
                    if case .notRegular = error { "; remove it, and normkit creates its lock file anew" } else { "" }
                throw TrainingError.cannotWrite(path: lockPath, reason: error.reason + remedy)
            }
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(descriptor, &buffer, buffer.count, 0)
            let recorded =
                n > 0
                ? Int32(String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
                : nil
            while flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
                if errno == EINTR { continue }
                close(descriptor)
                throw TrainingError.runDirectoryLocked(path: path, pid: recorded)
            }
            let pid = Array("\(getpid())\n".utf8)
            _ = ftruncate(descriptor, 0)
            _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
            held[path] = (descriptor, 1)
            return RunDirectoryLock(directory: path, previousHolder: recorded.flatMap { $0 == getpid() ? nil : $0 })
        }
    }

    /// Releases this hold (the lock itself when it was the last one in the process). Idempotent.
    public func release() {
        Self.held.withLock { held in
            guard !released.exchange(true, ordering: .relaxed) else { return }
            guard let entry = held[directory] else { return }
            if entry.count > 1 {
                held[directory] = (entry.descriptor, entry.count - 1)
            } else {
                held[directory] = nil
                // An empty file: released cleanly (a PID left behind: its holder died).
                _ = ftruncate(entry.descriptor, 0)
                flock(entry.descriptor, LOCK_UN)
                close(entry.descriptor)
            }
        }
    }

    deinit { release() }
}

extension JSONDecoder {
    /// A decoder that reads the `"inf"`, `"-inf"` and `"nan"` strings NormKit writes for non-finite numbers.
    package static var normKit: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }
}

extension JSONEncoder {
    /// Sorted keys, optionally pretty, and non-finite numbers as `"inf"`, `"-inf"`, `"nan"` (never an error).
    static func normKit(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }
}
