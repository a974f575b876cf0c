import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Helpers shared by the libFuzzer harnesses.
public enum Fuzz {
    /// The input libFuzzer passes to `LLVMFuzzerTestOneInput`, copied into an array.
    public static func bytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
        guard let data, size > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// True when `NORMKIT_FUZZ_VERBOSE=1`: harnesses print why an input was rejected (to check seed corpora:
    /// run a target on single files, `NORMKIT_FUZZ_VERBOSE=1 .build/debug/fuzz-idx Corpus/fuzz-idx/*`).
    public static let verbose = ProcessInfo.processInfo.environment["NORMKIT_FUZZ_VERBOSE"] == "1"

    /// Prints `message` when ``verbose``.
    public static func log(_ message: @autoclosure () -> String) {
        if verbose { FileHandle.standardError.write(Data(("[fuzz] " + message() + "\n").utf8)) }
    }

    /// A property every accepted input must have. A violation prints `message` and aborts, which libFuzzer
    /// reports as a crash and saves the input.
    public static func check(
        _ condition: Bool, _ message: @autoclosure () -> String,
        file: StaticString = #fileID, line: UInt = #line
    ) {
        if condition { return }
        FileHandle.standardError.write(Data("fuzz property violated at \(file):\(line): \(message())\n".utf8))
        abort()
    }

    /// A per-process scratch directory, removed at exit, for harnesses whose parser reads a file or a
    /// directory: under `$NORMKIT_FUZZ_SCRATCH`, else `/dev/shm` (memory: writes and `fsync` cost nothing),
    /// else `/tmp`.
    public static let scratchDirectory: URL = {
        let environment = ProcessInfo.processInfo.environment
        let base =
            environment["NORMKIT_FUZZ_SCRATCH"]
            ?? (FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : "/tmp")
        var template = Array((base + "/normkit-fuzz-XXXXXX").utf8CString)
        let path = template.withUnsafeMutableBufferPointer { buffer -> String in
            guard let result = mkdtemp(buffer.baseAddress!) else { fatalError("mkdtemp failed: errno \(errno)") }
            return String(cString: result)
        }
        scratchToRemove = path
        atexit { if let path = scratchToRemove { try? FileManager.default.removeItem(atPath: path) } }
        return URL(fileURLWithPath: path, isDirectory: true)
    }()
}

extension Fuzz {
    /// Writes `bytes` to `url` with plain POSIX calls (no `fsync`, unlike `Data.write(to:)`), replacing it.
    public static func writeFile(_ bytes: [UInt8], to url: URL) {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        check(fd >= 0, "cannot open \(url.path): errno \(errno)")
        defer { close(fd) }
        var written = 0
        bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let n = write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 && errno == EINTR { continue }
                check(n > 0, "cannot write \(url.path): errno \(errno)")
                written += n
            }
        }
    }
}

/// Written once, by ``Fuzz/scratchDirectory``'s once-only initializer, before the exit handler that reads it is
/// registered. (`nonisolated(unsafe)`: the handler is a C function pointer, which cannot capture the path.)
nonisolated(unsafe) private var scratchToRemove: String?
