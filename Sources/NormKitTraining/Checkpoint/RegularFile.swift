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

/// The whole content of the regular file at `path`: the one reader of every checkpoint, training state, dataset
/// and run record NormKit reads from a path it was given.
///
/// Anything but a regular file (after following symbolic links) is refused with a reason naming what it is,
/// never opened for reading: a named pipe would block the reader until some writer appears, and a device may
/// never end. The path is `stat`ed first (so a device is refused without being opened at all), opened with
/// `O_NONBLOCK` (so a path swapped for a FIFO after that check still cannot block the `open`) and `fstat`ed
/// again on the descriptor before anything is read. Read with POSIX calls so the error names the real cause.
///
/// - Throws: ``DataError/readFailed(path:reason:)``: missing, not readable, "it is a named pipe (FIFO), not a
///   regular file", "it is a device (…), not a regular file", "it is a directory, not a regular file", an I/O
///   error.
package func readFileBytes(path: String) throws -> [UInt8] {
    func failure(_ reason: String) -> DataError { DataError.readFailed(path: path, reason: reason) }
    func systemFailure() -> DataError { failure(String(cString: strerror(errno))) }
    func notRegular(_ kind: String) -> DataError { failure("it is \(kind), not a regular file") }

    var info = stat()
    guard stat(path, &info) == 0 else { throw systemFailure() }
    if let kind = nonRegularFileKind(info.st_mode) { throw notRegular(kind) }

    let fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
    guard fd >= 0 else { throw systemFailure() }
    defer { close(fd) }
    guard fstat(fd, &info) == 0 else { throw systemFailure() }
    if let kind = nonRegularFileKind(info.st_mode) { throw notRegular(kind) }
    // A regular file: plain blocking reads from here on (O_NONBLOCK only guarded the open).
    let flags = fcntl(fd, F_GETFL)
    if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }

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
    }
    return bytes
}
