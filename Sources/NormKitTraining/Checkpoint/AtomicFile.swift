import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why an atomic write failed. The target file, if it existed, is unchanged in every case.
public enum AtomicFileError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The destination exists and is not a regular file (`kind`: "a named pipe (FIFO)", "a device (…)", "a
    /// directory", …), itself or as the file its symbolic link resolves to (`resolvedPath`): it is never replaced.
    case notARegularFile(path: String, resolvedPath: String?, kind: String)
    /// The destination is a symbolic link that does not resolve to a file path (a loop, an unreadable link).
    case unresolvableLink(path: String, reason: String)
    /// The temporary file next to the target could not be created (missing directory, no permission, …).
    case createFailed(path: String, temporaryPath: String, reason: String)
    /// Writing the temporary file failed (disk full, I/O error, …).
    case writeFailed(path: String, temporaryPath: String, bytesWritten: Int, reason: String)
    /// `fsync` or `close` of the temporary file failed: its content may not be on disk.
    case syncFailed(path: String, temporaryPath: String, reason: String)
    /// Renaming the temporary file over the target failed.
    case renameFailed(path: String, temporaryPath: String, reason: String)
    /// A write that must not replace a file (`replacing: false`) found one at `path`: there before the write, or
    /// created by someone else while it wrote. That file is unchanged and nothing was written.
    case destinationExists(path: String)

    /// The message: the target, the temporary file, the system's reason and a hint.
    public var description: String {
        switch self {
        case .notARegularFile(let path, let resolved, let kind):
            let what = resolved.map { "is a symbolic link to \($0), which is \(kind)" } ?? "is \(kind)"
            return
                "\(path) \(what), not a regular file: refusing to replace it; nothing was written. Hint: give the path of a regular file (new or existing) to write to."
        case .unresolvableLink(let path, let reason):
            return
                "\(path): cannot resolve the symbolic link to the file it names (\(reason)); nothing was written. Hint: fix or remove the link, or write to another path."
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
        case .destinationExists(let path):
            return
                "\(path) already exists (it may have been created while this file was being written): refusing to replace it; nothing was written. Hint: choose another file, or remove that one first."
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
///
/// Only regular files are replaced. A destination that is a symbolic link is followed: the file it resolves to
/// is replaced (atomically, through a temporary file beside it) and the link stays a link. A destination that
/// exists as anything but a regular file — a named pipe, a device, a directory, or a link to one — is refused
/// with ``AtomicFileError/notARegularFile(path:resolvedPath:kind:)`` before anything is written
/// (``resolvedDestination(of:)`` checks a destination up front, before the work that produces its content).
public enum AtomicFile {
    /// Appends bytes to the temporary file of an ``AtomicFile/write(to:replacing:_:)`` in progress.
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

    /// Replaces the file at `url` with `bytes`, atomically; with `replacing: false`, creates it and refuses an
    /// existing file (see ``write(to:replacing:_:)``).
    ///
    /// - Throws: ``AtomicFileError``; the previous file is then unchanged.
    public static func write(_ bytes: [UInt8], to url: URL, replacing: Bool = true) throws {
        try write(to: url, replacing: replacing) { writer in try writer.write(bytes) }
    }

    /// Replaces the file at `url` with what `body` writes, atomically.
    ///
    /// If `body` throws, the temporary file is removed, the error is rethrown unchanged and the previous file
    /// is untouched.
    ///
    /// With `replacing: false` the write only creates: an existing file at `url` (or at the path its link resolves
    /// to) is refused before `body` runs, and the complete file is put in place with `link(2)`, which fails rather
    /// than replace a file that another process created in the meantime — a check followed by a `rename` would
    /// silently replace it. (On a file system without hard links the check is made again just before a `rename`:
    /// the window shrinks to that instant.)
    ///
    /// - Throws: ``AtomicFileError`` (``AtomicFileError/destinationExists(path:)`` for an existing file when not
    ///   `replacing`) or whatever `body` throws.
    public static func write(to url: URL, replacing: Bool = true, _ body: (inout Writer) throws -> Void) throws {
        // A link's target is written beside the target. Split as a string: `..` in a link's target must stay
        // for the kernel to resolve (a lexical clean-up would be wrong after a directory that is a link).
        let path = try resolvedDestinationPath(url.path)
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? ""
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let prefix = directory.isEmpty ? "" : directory.hasSuffix("/") ? directory : directory + "/"
        let temporaryPath = prefix + ".\(name).\(getpid()).\(suffix).tmp"
        if !replacing, exists(path) { throw AtomicFileError.destinationExists(path: path) }

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
        if replacing {
            guard rename(temporaryPath, path) == 0 else {
                throw AtomicFileError.renameFailed(
                    path: path, temporaryPath: temporaryPath, reason: String(cString: strerror(errno)))
            }
            renamed = true
        } else {
            try placeWithoutReplacing(temporaryPath, at: path)
            renamed = true
        }

        // Make the rename itself durable. Some file systems refuse fsync on a directory; the data is safe
        // either way, so that is not an error.
        let directoryDescriptor = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryDescriptor >= 0 {
            _ = fsync(directoryDescriptor)
            close(directoryDescriptor)
        }
    }
}

extension AtomicFile {
    /// Whether anything (a file, a directory, a dangling link, …) is at `path`.
    private static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// Puts the complete temporary file at `path` unless something is there: a hard link, which fails with
    /// `EEXIST` instead of replacing, then the temporary name removed. A file system without hard links gets a
    /// last check and a `rename`.
    private static func placeWithoutReplacing(_ temporaryPath: String, at path: String) throws {
        if link(temporaryPath, path) == 0 {
            unlink(temporaryPath)
            return
        }
        let error = errno
        if error == EEXIST { throw AtomicFileError.destinationExists(path: path) }
        guard error == EPERM || error == EOPNOTSUPP || error == ENOSYS || error == EMLINK else {
            throw AtomicFileError.renameFailed(
                path: path, temporaryPath: temporaryPath, reason: "link: \(String(cString: strerror(error)))")
        }
        if exists(path) { throw AtomicFileError.destinationExists(path: path) }
        guard rename(temporaryPath, path) == 0 else {
            throw AtomicFileError.renameFailed(
                path: path, temporaryPath: temporaryPath, reason: String(cString: strerror(errno)))
        }
    }

    /// The most symbolic links followed from one destination (as the kernel's `MAXSYMLINKS`).
    static let maximumLinks = 40

    /// The file a write to `url` replaces or creates: `url` itself, or, when it is a symbolic link (or a chain of
    /// them), the path the link resolves to (a relative link is taken from the link's directory; the target
    /// need not exist yet). Checks what a write would check before it writes, so a command can refuse a bad
    /// destination before it does the work that produces the file.
    ///
    /// - Throws: ``AtomicFileError/notARegularFile(path:resolvedPath:kind:)`` when the destination exists and is
    ///   not a regular file; ``AtomicFileError/unresolvableLink(path:reason:)`` for a link loop or an unreadable
    ///   link.
    public static func resolvedDestination(of url: URL) throws -> URL {
        URL(fileURLWithPath: try resolvedDestinationPath(url.path))
    }

    /// ``resolvedDestination(of:)`` of a path, as a path (kept as the kernel will read it).
    static func resolvedDestinationPath(_ original: String) throws -> String {
        var path = original
        for _ in 0...maximumLinks {
            var info = stat()
            // Missing (or not reachable): a new file; creating it reports any problem with the directory.
            guard lstat(path, &info) == 0 else { return path }
            if (info.st_mode & S_IFMT) == S_IFLNK {
                path = try linkTarget(path, original: original)
                continue
            }
            if let kind = nonRegularFileKind(info.st_mode) {
                throw AtomicFileError.notARegularFile(
                    path: original, resolvedPath: path == original ? nil : path, kind: kind)
            }
            return path
        }
        throw AtomicFileError.unresolvableLink(
            path: original, reason: "more than \(maximumLinks) symbolic links in a row: a loop?")
    }

    /// Where the symbolic link at `path` points, relative targets taken from the link's directory (not
    /// simplified: `..` after a directory that is itself a link must stay for the kernel to resolve).
    private static func linkTarget(_ path: String, original: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count >= 0 else {
            throw AtomicFileError.unresolvableLink(
                path: original, reason: "readlink \(path): \(String(cString: strerror(errno)))")
        }
        let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if target.hasPrefix("/") { return target }
        guard let slash = path.lastIndex(of: "/") else { return target }
        return String(path[...slash]) + target
    }
}

/// `write(2)`, under a name the ``AtomicFile/Writer`` methods do not shadow.
private func posixWrite(_ descriptor: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(descriptor, buffer, count)
}
