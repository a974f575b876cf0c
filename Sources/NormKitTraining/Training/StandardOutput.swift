// Deliberately no Foundation import: it re-exports the C library without `@preconcurrency`, and `stdout` would
// then resolve through that import.
#if canImport(Glibc)
    // `@preconcurrency` because the C library declares `stdout` as a plain mutable global, which Swift 6 cannot prove
    // safe; it is: the C library sets it before `main`, nothing in NormKit assigns it, and stdio locks each stream.
    @preconcurrency import Glibc
#elseif canImport(Darwin)
    @preconcurrency import Darwin
#endif

/// C's standard output stream (where `print` writes), for the trainer's progress lines and the `normkit` CLI.
package enum StandardOutput {
    /// Writes out what `print` has buffered (standard output is fully buffered when it is not a terminal).
    package static func flush() {
        fflush(stdout)
    }

    /// Line-buffers standard output, so that every printed line reaches a pipe or a log file at once. Call it
    /// before anything is printed.
    package static func useLineBuffering() {
        setvbuf(stdout, nil, _IOLBF, 0)
    }
}
