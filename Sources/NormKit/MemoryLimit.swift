import CNormKitKernels
import Foundation

/// The most memory NormKit takes in one block — a tensor, a parameter, a layer's buffer or scratch, a file read or
/// inflated into memory — and the check of a size against it before anything is allocated.
///
/// The limit is this machine's physical memory, read once. A larger block cannot be held: the allocator fails (a
/// crash) or, with the kernel's overcommit, the process is killed when the block's pages are touched. So a size that
/// comes from input (a shape, a constructor argument, a layer's output or workspace, a file) is compared with it
/// first and refused with ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)``.
package enum MemoryLimit {
    /// This machine's physical memory in bytes: the largest block NormKit allocates.
    package static let bytes = Int(clamping: ProcessInfo.processInfo.physicalMemory)

    /// The bytes of `a·b·c·d` floats: 0 when a factor is 0, nil when the count overflows `Int`. The factors are
    /// non-negative. Arithmetic only: layers call it on every forward.
    package static func floatBytes(_ a: Int, _ b: Int = 1, _ c: Int = 1, _ d: Int = 1) -> Int? {
        if a == 0 || b == 0 || c == 0 || d == 0 { return 0 }
        var bytes = MemoryLayout<Float>.stride, overflow = false
        func multiply(by factor: Int) {
            guard !overflow else { return }
            (bytes, overflow) = bytes.multipliedReportingOverflow(by: factor)
        }
        multiply(by: a)
        multiply(by: b)
        multiply(by: c)
        multiply(by: d)
        return overflow ? nil : bytes
    }

    /// The memory the kernel says can still be given to processes without swapping (`MemAvailable` in
    /// `/proc/meminfo`), read now; ``bytes`` where that cannot be read.
    package static func availableBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return bytes }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kilobytes = Int(fields[1]) {
                return kilobytes.multipliedReportingOverflow(by: 1024).overflow ? bytes : kilobytes * 1024
            }
        }
        return bytes
    }

    /// The bytes the process's heap holds now (every block `malloc` handed out and did not get back, large mapped
    /// ones included); nil where the C library cannot say (not glibc ≥ 2.33).
    package static func heapBytesInUse() -> Int? {
        let bytes = nk_heap_bytes_in_use()
        return bytes < 0 ? nil : Int(bytes)
    }

    /// Throws unless `bytes` (nil: more than `Int` counts) fit in ``bytes``. `layer` and `what` (what needs the
    /// memory, for the message) are evaluated only to build the error.
    ///
    /// - Throws: ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)``.
    package static func check(
        _ bytes: Int?, layer: @autoclosure () -> String, what: @autoclosure () -> String
    ) throws {
        if let bytes, bytes <= Self.bytes { return }
        throw NormalizationError.tooLargeForMemory(
            layer: layer(), what: what(), bytes: bytes ?? Int.max, limit: Self.bytes)
    }
}
