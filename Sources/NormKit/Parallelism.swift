import Dispatch
import Foundation

/// How many threads NormKit's kernels use.
public enum Parallelism {
    /// The number of threads kernels split their work across (default: the active processor count).
    /// Set it once at start-up; kernels read it on each call.
    nonisolated(unsafe) public static var threadCount: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Contiguous pieces per thread that ``forEachRange(count:work:minimumWork:_:)`` hands out. More pieces than
    /// threads let the calling thread, which starts at once, take more of the work while a worker wakes up:
    /// 8 measured about 20 % faster than 1 on the smallest `normkit bench` shapes (GN and BN on (2, 2048, 7, 7))
    /// and the same on the large ones.
    @usableFromInline static let piecesPerThread = 8

    /// Runs `body` over `0..<count` split into contiguous ranges when there is at least `minimumWork` units of work
    /// per extra thread; otherwise runs it inline. The ranges (up to ``piecesPerThread`` per thread) go to the
    /// threads as they become free, in order. The default threshold (65,536 elements) is where waking a second
    /// thread starts to pay on this project's 2-core machines (`normkit bench`).
    @inlinable
    public static func forEachRange(count: Int, work: Int, minimumWork: Int = 1 << 16,
                                    _ body: (Range<Int>) -> Void) {
        let threads = min(threadCount, count, max(1, work / max(minimumWork, 1)))
        if threads <= 1 {
            if count > 0 { body(0..<count) }
            return
        }
        let pieces = min(count, threads * piecesPerThread)
        DispatchQueue.concurrentPerform(iterations: pieces) { t in
            let lower = count * t / pieces, upper = count * (t + 1) / pieces
            if lower < upper { body(lower..<upper) }
        }
    }
}
