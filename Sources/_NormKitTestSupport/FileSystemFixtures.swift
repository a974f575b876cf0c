import Dispatch
import Foundation
import NormKit

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Makes a named pipe (FIFO) at `url`.
public func makeNamedPipe(at url: URL) throws {
    guard mkfifo(url.path, 0o644) == 0 else {
        throw NSError(
            domain: "makeNamedPipe", code: Int(errno),
            userInfo: [NSLocalizedDescriptionKey: "mkfifo \(url.path): \(String(cString: strerror(errno)))"])
    }
}

/// Makes (or replaces) a regular file at `url` whose length is `size` bytes but which holds no data (`ftruncate`: a
/// sparse file), so even a terabyte costs no disk.
public func makeSparseFile(at url: URL, size: Int) throws {
    let descriptor = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard descriptor >= 0, ftruncate(descriptor, off_t(size)) == 0 else {
        let reason = String(cString: strerror(errno))
        if descriptor >= 0 { close(descriptor) }
        throw NSError(
            domain: "makeSparseFile", code: Int(errno),
            userInfo: [NSLocalizedDescriptionKey: "sparse file \(url.path) of \(size) bytes: \(reason)"])
    }
    close(descriptor)
}

/// The size of a sparse file no reader can hold: 1 TB, or this machine's memory and one byte when that is more.
public var sparseFileSizeBeyondMemory: Int { max(1 << 40, MemoryLimit.bytes + 1) }

/// What `lstat` says `url` is: "fifo", "link", "file", "directory", "other", or nil when nothing is there.
public func fileType(at url: URL) -> String? {
    var info = stat()
    guard lstat(url.path, &info) == 0 else { return nil }
    switch info.st_mode & S_IFMT {
    case S_IFIFO: return "fifo"
    case S_IFLNK: return "link"
    case S_IFREG: return "file"
    case S_IFDIR: return "directory"
    default: return "other"
    }
}

private final class ResultBox<T>: @unchecked Sendable {
    var value: Result<T, Error>?
    let done = DispatchSemaphore(value: 0)
}

/// Runs `body` on a thread of its own and returns its result, or nil when it has not returned after `seconds`:
/// then each of `pipes` is opened for writing once (without blocking) and closed again, which releases a reader
/// blocked opening or reading it, so a regression that waits on a named pipe fails its test instead of hanging
/// the test process.
public func resultWithin<T>(
    seconds: Double, unblocking pipes: [URL], _ body: @escaping @Sendable () throws -> T
) -> Result<T, Error>? {
    let box = ResultBox<T>()
    Thread {
        box.value = Result { try body() }
        box.done.signal()
    }.start()
    if box.done.wait(timeout: .now() + seconds) == .success { return box.value }
    for pipe in pipes {
        let descriptor = open(pipe.path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        if descriptor >= 0 { close(descriptor) }
    }
    _ = box.done.wait(timeout: .now() + 10)
    return nil
}

/// The peak resident memory of this process (`VmHWM` of `/proc/self/status`) in bytes; nil where there is none.
public func peakResidentBytes() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
        let kilobytes = Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "")
    else { return nil }
    return kilobytes * 1024
}

/// Resets this process's peak resident memory to its current resident memory (`5` into
/// `/proc/self/clear_refs`, Linux 4.0 and later); false where the kernel does not allow it.
public func resetPeakResidentBytes() -> Bool {
    let descriptor = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    return write(descriptor, "5", 1) == 1
}
