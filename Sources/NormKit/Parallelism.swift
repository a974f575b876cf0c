import Dispatch
import Foundation

/// How many threads NormKit's kernels use.
public enum Parallelism {
    /// The number of threads kernels split their work across (default: the active processor count).
    /// Set it once at start-up; kernels read it on each call.
    nonisolated(unsafe) public static var threadCount: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Runs `body` over `0..<count` split into contiguous ranges, one per thread, when there is at least
    /// `minimumWork` units of work per extra thread; otherwise runs it inline. The default (65,536 elements) is
    /// where waking a second thread starts to pay on this project's 2-core machines (`normkit bench`).
    @inlinable
    public static func forEachRange(count: Int, work: Int, minimumWork: Int = 1 << 16,
                                    _ body: (Range<Int>) -> Void) {
        let threads = min(threadCount, count, max(1, work / max(minimumWork, 1)))
        if threads <= 1 {
            if count > 0 { body(0..<count) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let lower = count * t / threads, upper = count * (t + 1) / threads
            if lower < upper { body(lower..<upper) }
        }
    }
}
