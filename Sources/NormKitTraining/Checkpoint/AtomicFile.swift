import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why an atomic write failed. The target file, if it existed, is unchanged in every case.
public enum AtomicFileError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The temporary file next to the target could not be created (missing directory, no permission, …).
    case createFailed(path: String, temporaryPath: String, reason: String)
    /// Writing the temporary file failed (disk full, I/O error, …).
    case writeFailed(path: String, temporaryPath: String, bytesWritten: Int, reason: String)
    /// `fsync` or `close` of the temporary file failed: its content may not be on disk.
    case syncFailed(path: String, temporaryPath: String, reason: String)
    /// Renaming the temporary file over the target failed.
    case renameFailed(path: String, temporaryPath: String, reason: String)

    /// The message: the target, the temporary file, the system's reason and a hint.
    public var description: String {
        switch self {
        case .createFailed(let path, let temporary, let reason):
            return
                "\(path): cannot create the temporary file \(temporary) (\(reason)). Hint: the directory must exist and be writable; the previous file, if any, is unchanged."
        case .writeFailed(let path, let temporary, let written, let reason):
            return
                "\(path): writing the temporary file \(temporary) failed after \(written) bytes (\(reason)). Hint: check free disk space; the previous file, if any, is unchanged."
        case .syncFailed(let path, let temporary, let reason):
            return
                "\(path): flushing the temporary file \(temporary) to disk failed (\(reason)). Hint: check the disk; the previous file, if any, is unchanged."
        case .renameFailed(let path, let temporary, let reason):
            return
                "\(path): renaming \(temporary) over the target failed (\(reason)). Hint: the target must not be a directory and must be on the same file system; the previous file, if any, is unchanged."
        }
    }

    /// The same text as ``description``.
    public var errorDescription: String? { description }
}

/// Crash-safe file replacement: write a temporary file in the target's directory, `fsync` it, and `rename`
/// it over the target (then `fsync` the directory).
///
/// `rename` within one file system is atomic, so a reader — or a run resumed after a crash or a power cut —
/// sees either the complete previous file or the complete new one, never a mix, and a write that fails or
/// throws half-way leaves the previous file untouched (the temporary file is removed). The new file keeps the
/// previous file's permission bits; a new file gets `0666` minus the umask.
public enum AtomicFile {
    /// Appends bytes to the temporary file of an ``AtomicFile/write(to:_:)`` in progress.
    public struct Writer {
        fileprivate let descriptor: Int32
        fileprivate let path: String
        fileprivate let temporaryPath: String
        /// How many bytes have been written so far.
        public private(set) var bytesWritten = 0

        /// Appends `bytes`.
        ///
        /// - Throws: ``AtomicFileError/writeFailed(path:temporaryPath:bytesWritten:reason:)``.
        public mutating func write(_ bytes: UnsafeRawBufferPointer) throws {
            var offset = 0
            while offset < bytes.count {
                let n = posixWrite(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw AtomicFileError.writeFailed(
                        path: path, temporaryPath: temporaryPath, bytesWritten: bytesWritten,
                        reason: String(cString: strerror(errno)))
                }
                offset += n
                bytesWritten += n
            }
        }

        /// Appends `bytes`.
        ///
        /// - Throws: ``AtomicFileError/writeFailed(path:temporaryPath:bytesWritten:reason:)``.
        public mutating func write(_ bytes: [UInt8]) throws {
            try bytes.withUnsafeBytes { try write($0) }
        }
    }

    /// Replaces the file at `url` with `bytes`, atomically.
    ///
    /// - Throws: ``AtomicFileError``; the previous file is then unchanged.
    public static func write(_ bytes: [UInt8], to url: URL) throws {
        try write(to: url) { writer in try writer.write(bytes) }
    }

    /// Replaces the file at `url` with what `body` writes, atomically.
    ///
    /// If `body` throws, the temporary file is removed, the error is rethrown unchanged and the previous file
    /// is untouched.
    ///
    /// - Throws: ``AtomicFileError`` or whatever `body` throws.
    public static func write(to url: URL, _ body: (inout Writer) throws -> Void) throws {
        let path = url.path
        let directory = url.deletingLastPathComponent().path
        let name = url.lastPathComponent
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let temporaryPath = (directory as NSString).appendingPathComponent(".\(name).\(getpid()).\(suffix).tmp")

        let descriptor = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        guard descriptor >= 0 else {
            throw AtomicFileError.createFailed(
                path: path, temporaryPath: temporaryPath, reason: String(cString: strerror(errno)))
        }
        var closed = false
        var renamed = false
        defer {
            if !closed { close(descriptor) }
            if !renamed { unlink(temporaryPath) }
        }

        var existing = stat()
        if stat(path, &existing) == 0, (existing.st_mode & S_IFMT) == S_IFREG {
            _ = fchmod(descriptor, existing.st_mode & 0o7777)
        }

        var writer = Writer(descriptor: descriptor, path: path, temporaryPath: temporaryPath)
        try body(&writer)

        while fsync(descriptor) != 0 {
            if errno == EINTR { continue }
            throw AtomicFileError.syncFailed(
                path: path, temporaryPath: temporaryPath, reason: "fsync: \(String(cString: strerror(errno)))")
        }
        closed = true
        if close(descriptor) != 0 {
            throw AtomicFileError.syncFailed(
                path: path, temporaryPath: temporaryPath, reason: "close: \(String(cString: strerror(errno)))")
        }
        guard rename(temporaryPath, path) == 0 else {
            throw AtomicFileError.renameFailed(
                path: path, temporaryPath: temporaryPath, reason: String(cString: strerror(errno)))
        }
        renamed = true

        // Make the rename itself durable. Some file systems refuse fsync on a directory; the data is safe
        // either way, so that is not an error.
        let directoryDescriptor = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryDescriptor >= 0 {
            _ = fsync(directoryDescriptor)
            close(directoryDescriptor)
        }
    }
}

/// `write(2)`, under a name the ``AtomicFile/Writer`` methods do not shadow.
private func posixWrite(_ descriptor: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(descriptor, buffer, count)
}
