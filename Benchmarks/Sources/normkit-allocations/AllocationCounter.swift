import MallocInterposerSwift

/// Counts the heap allocations a piece of code makes, through malloc-interposer.
///
/// The interposer's `malloc`, `calloc`, `realloc`, `posix_memalign`, `aligned_alloc`, … replace libc's only when
/// its library comes before libc in the process's symbol lookup order. `LD_PRELOAD=…/libMallocInterposerSwift.so`
/// guarantees that on Linux; otherwise every count may stay 0. ``interposerIsLoaded()`` tells the two apart, so a
/// zero is never reported by mistake.
///
/// Allocations on every thread are counted (the interposer keeps a counter block per thread and sums them).
enum AllocationCounter {
    /// Keeps the probe allocation of ``interposerIsLoaded()`` reachable, so the optimizer cannot remove it.
    /// (`nonisolated(unsafe)`: only this single-threaded tool's main thread touches it, and a lock would allocate.)
    nonisolated(unsafe) private static var probeSink: [UInt8] = []

    /// The number of allocation calls (`mallocCount`: small and large) made while `body` runs.
    static func mallocs(in body: () throws -> Void) rethrows -> Int {
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        do {
            try body()
        } catch {
            MallocInterposerSwift.unhook()
            throw error
        }
        MallocInterposerSwift.unhook()
        return MallocInterposerSwift.getStatistics().mallocCount
    }

    /// Whether allocations are really being counted: makes one deliberate 4 KiB allocation and checks that the
    /// count moved.
    static func interposerIsLoaded() -> Bool {
        let count = mallocs { probeSink = [UInt8](repeating: 1, count: 4096) }
        probeSink = []
        return count > 0
    }
}
