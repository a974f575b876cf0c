import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What a file that is not a regular file is, for messages ("a named pipe (FIFO)", "a directory", …), from its
/// `stat` mode; nil for a regular file.
package func nonRegularFileKind(_ mode: mode_t) -> String? {
    switch mode & S_IFMT {
    case S_IFREG: return nil
    case S_IFIFO: return "a named pipe (FIFO)"
    case S_IFCHR: return "a device (character special file)"
    case S_IFBLK: return "a device (block special file)"
    case S_IFDIR: return "a directory"
    case S_IFSOCK: return "a socket"
    case S_IFLNK: return "a symbolic link"
    default: return "a special file (type 0o\(String(mode & S_IFMT, radix: 8)))"
    }
}

/// Why `openRegularFile(_:flags:)` refused a path.
package enum RegularFileRefusal: Error {
    /// The path (after following symbolic links) is not a regular file: `kind` says what it is ("a named pipe
    /// (FIFO)", "a directory", …, from ``nonRegularFileKind(_:)``).
    case notRegular(kind: String)
    /// `stat`, `open` or `fstat` failed: the system's reason (`strerror`).
    case system(String)

    /// The reason, for a message: "it is a named pipe (FIFO), not a regular file", or the system's.
    package var reason: String {
        switch self {
        case .notRegular(let kind): return "it is \(kind), not a regular file"
        case .system(let reason): return reason
        }
    }
}

/// Opens the regular file at `path` (symbolic links followed) with `flags` (`O_RDONLY`, `O_RDWR | O_CREAT`, …),
/// never anything else, and never blocking: the path is `stat`ed first (so a device is refused without being
/// opened at all; with `O_CREAT` a missing path is created), opened with `O_NONBLOCK` and `O_NOCTTY` (so a path
/// swapped for a named pipe after that check still cannot block the `open`) and the descriptor `fstat`ed before it
/// is returned. The descriptor is returned in blocking mode (`O_NONBLOCK` only guarded the `open`), close-on-exec;
/// the caller closes it.
///
/// - Returns: the descriptor and its `fstat`.
/// - Throws: ``RegularFileRefusal/notRegular(kind:)`` for a named pipe, a device, a directory, a socket;
///   ``RegularFileRefusal/system(_:)`` when `stat` (without `O_CREAT`), `open` or `fstat` fails.
package func openRegularFile(
    _ path: String, flags: Int32, mode: mode_t = 0o644
) throws(RegularFileRefusal) -> (descriptor: Int32, info: stat) {
    func systemFailure() -> RegularFileRefusal { .system(String(cString: strerror(errno))) }
    var info = stat()
    if stat(path, &info) == 0 {
        if let kind = nonRegularFileKind(info.st_mode) { throw .notRegular(kind: kind) }
    } else if flags & O_CREAT == 0 || errno != ENOENT {
        throw systemFailure()
    }
    let descriptor = open(path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, mode)
    guard descriptor >= 0 else { throw systemFailure() }
    guard fstat(descriptor, &info) == 0 else {
        let failure = systemFailure()
        close(descriptor)
        throw failure
    }
    if let kind = nonRegularFileKind(info.st_mode) {
        close(descriptor)
        throw .notRegular(kind: kind)
    }
    let fileFlags = fcntl(descriptor, F_GETFL)
    if fileFlags >= 0 { _ = fcntl(descriptor, F_SETFL, fileFlags & ~O_NONBLOCK) }
    return (descriptor, info)
}

/// The whole content of the regular file at `path`: the one reader of every checkpoint, training state, dataset
/// and run record NormKit reads from a path it was given.
///
/// Anything but a regular file (after following symbolic links) is refused with a reason naming what it is,
/// never opened for reading (`openRegularFile(_:flags:)`): a named pipe would block the reader until some writer
/// appears, and a device may never end. A file larger than `MemoryLimit.bytes` (a sparse 1 TB file costs no
/// disk) is refused before its bytes are allocated. Read with POSIX calls so the error names the real cause.
///
/// - Throws: ``DataError/readFailed(path:reason:)``: missing, not readable, "it is a named pipe (FIFO), not a
///   regular file", "it is a device (…), not a regular file", "it is a directory, not a regular file", an I/O
///   error; ``DataError/fileTooLarge(path:size:limit:)`` for a file larger than this machine's memory.
package func readFileBytes(path: String) throws -> [UInt8] {
    func systemFailure() -> DataError { DataError.readFailed(path: path, reason: String(cString: strerror(errno))) }
    let limit = MemoryLimit.bytes
    let (fd, info): (Int32, stat)
    do throws(RegularFileRefusal) {
        (fd, info) = try openRegularFile(path, flags: O_RDONLY)
    } catch {
        throw DataError.readFailed(path: path, reason: error.reason)
    }
    defer { close(fd) }
    guard info.st_size <= limit else { throw DataError.fileTooLarge(path: path, size: Int(info.st_size), limit: limit) }

    var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
    var filled = 0
    try bytes.withUnsafeMutableBytes { buffer in
        while filled < buffer.count {
            let n = read(fd, buffer.baseAddress! + filled, buffer.count - filled)
            if n < 0 {
                if errno == EINTR { continue }
                throw systemFailure()
            }
            if n == 0 { break }  // the file shrank while we read it
            filled += n
        }
    }
    if filled < bytes.count { bytes.removeSubrange(filled...) }
    // A file that grew while we read it: read the rest too.
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw systemFailure()
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
        guard bytes.count <= limit else { throw DataError.fileTooLarge(path: path, size: bytes.count, limit: limit) }
    }
    return bytes
}
