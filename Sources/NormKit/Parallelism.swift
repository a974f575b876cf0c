import CNormKitKernels
import Foundation
import Synchronization

/// How many threads NormKit's kernels use.
///
/// The settings here are **process-wide**: one value for every layer and every task. They are atomic, so any task
/// or thread may read or set them at any time without a data race; a kernel call reads ``threadCount`` once when
/// it starts, so a change applies from the next call on (a call already running keeps its split).
///
/// The kernels run on **one worker pool per process** (`Sources/CNormKitKernels/ThreadPool.c`), shared by every
/// layer, task and thread: one threaded call runs on it at a time, and a call made while another runs (or from
/// inside a `body`) runs inline on its calling thread. The workers start on first use, as many as
/// ``threadCount`` − 1 asks for (at most 63), and live until the process exits.
public enum Parallelism {
    /// The number of threads kernels split their work across (default: the active processor count; values below 1
    /// are stored as 1). Process-wide and atomic: safe to set from any task.
    public static var threadCount: Int {
        get { threadCountStorage.load(ordering: .relaxed) }
        set { threadCountStorage.store(max(1, newValue), ordering: .relaxed) }
    }

    /// Microseconds an idle worker thread spins, waiting for the next kernel call, before it sleeps (default 50;
    /// values below 0 are stored as 0). Spinning keeps back-to-back kernel calls fast; 0 makes workers sleep at
    /// once, for a machine whose cores are needed by other busy processes. Process-wide; safe to set from any task
    /// (the value and the worker pool's copy are updated together).
    public static var workerSpinMicroseconds: Int {
        get { workerSpinStorage.withLock { $0 } }
        set {
            workerSpinStorage.withLock { value in
                value = max(newValue, 0)
                nk_set_worker_spin_microseconds(value)
            }
        }
    }

    /// The value behind ``threadCount`` (an atomic: kernels read it on every call).
    private static let threadCountStorage = Atomic<Int>(max(1, ProcessInfo.processInfo.activeProcessorCount))
    /// The value behind ``workerSpinMicroseconds`` (a mutex, so that the worker pool's copy is set in the same
    /// order as this one).
    private static let workerSpinStorage = Mutex<Int>(50)

    /// Contiguous pieces per thread that ``forEachRange(count:work:minimumWork:granule:_:)`` hands out. More pieces than
    /// threads let the calling thread, which starts at once, take more of the work while a worker catches up:
    /// 8 measured about 20 % faster than 1 on the smallest `normkit bench` shapes (GN and BN on (2, 2048, 7, 7))
    /// and the same on the large ones.
    @usableFromInline static let piecesPerThread = 8

    /// Runs `body` over `0..<count` split into contiguous ranges, one more thread for every `minimumWork` units of
    /// work (a second thread from `minimumWork`, a third from twice that, …); below `minimumWork` it runs inline.
    /// The ranges (up to 8 per thread) go to the calling thread and NormKit's worker threads in contiguous blocks, one
    /// per thread and in order within it (the same split every call, so each thread meets the data it touched last
    /// time in its cache); a thread that finishes its block takes what is left of the others'. They start at
    /// multiples of `granule` (the last may end short of one). The default threshold (65,536
    /// elements) is where a second thread starts to pay on this project's 2-core machines (`normkit bench`: GN on
    /// ResNet-20's last stage, (32, 64, 7, 7) channels-last, 100,352 elements, forward 0.62× the one-thread time).
    ///
    /// The workers are a small persistent pool (`Sources/CNormKitKernels/ThreadPool.c`) that spins for about
    /// 50 µs after each call before it sleeps: a training step's kernel calls come microseconds apart, and
    /// waking a parked thread for each (as `DispatchQueue.concurrentPerform` does) cost as much as normalizing a
    /// small tensor. A call made from inside `body`, or while another thread's call runs, runs inline.
    public static func forEachRange(
        count: Int, work: Int, minimumWork: Int = 1 << 16, granule: Int = 1, _ body: (Range<Int>) -> Void
    ) {
        // Counts up to Int.max: no `count + granule - 1`.
        let granule = max(granule, 1), granules = count / granule + (count % granule > 0 ? 1 : 0)
        let extraThreads = work / max(minimumWork, 1)
        let threads = min(threadCount, granules, extraThreads < threadCount ? extraThreads + 1 : threadCount)
        if threads <= 1 {
            if count > 0 { body(0..<count) }
            return
        }
        let pieces = min(granules, threads * piecesPerThread)
        // `body` runs only until nk_parallel_for returns. (The wrapper closure of `withoutActuallyEscaping` is
        // the one heap allocation of a threaded call.)
        withoutActuallyEscaping(body) { body in
            var job = PieceJob(count: count, granule: granule, granules: granules, pieces: pieces, body: body)
            withUnsafeMutablePointer(to: &job) { pointer in
                nk_parallel_for(
                    pieces, Int32(threads),
                    { context, piece in
                        let job = context!.assumingMemoryBound(to: PieceJob.self)
                        let count = job.pointee.count, granule = job.pointee.granule
                        let granules = job.pointee.granules, pieces = job.pointee.pieces
                        let lower = PieceJob.start(ofPiece: piece, count, granule, granules, pieces)
                        let upper = PieceJob.start(ofPiece: piece + 1, count, granule, granules, pieces)
                        if lower < upper { job.pointee.body(lower..<upper) }
                    }, pointer)
            }
        }
    }
}

extension Parallelism {
    /// Runs `body(part)` once for every part in `0..<parts` on the calling thread and NormKit's worker threads (at
    /// most ``threadCount`` at once), for work that is already split, for example one slice per thread with a
    /// scratch buffer per slice. Parts go to threads in contiguous blocks, as in
    /// ``forEachRange(count:work:minimumWork:granule:_:)``; each runs exactly once.
    public static func forEachPart(_ parts: Int, _ body: (Int) -> Void) {
        let threads = threadCount
        guard parts > 1, threads > 1 else {
            for part in 0..<max(parts, 0) { body(part) }
            return
        }
        withoutActuallyEscaping(body) { body in
            var job = PartJob(body: body)
            withUnsafeMutablePointer(to: &job) { pointer in
                nk_parallel_for(
                    parts, Int32(min(parts, threads)),
                    { context, part in
                        context!.assumingMemoryBound(to: PartJob.self).pointee.body(part)
                    }, pointer)
            }
        }
    }
}

/// One ``Parallelism/forEachPart(_:_:)`` call as the pool sees it (on the caller's stack during the call).
private struct PartJob {
    typealias Body = (Int) -> Void
    let body: Body
}

/// One ``Parallelism/forEachRange(count:work:minimumWork:granule:_:)`` call as the pool's pieces see it (on the caller's
/// stack for the duration of the call).
private struct PieceJob {
    typealias Body = (Range<Int>) -> Void
    let count: Int
    let granule: Int
    let granules: Int
    let pieces: Int
    let body: Body

    /// Where piece `piece` (at most `pieces`) of `pieces` starts: `granule · ⌊granules · piece / pieces⌋`, capped at
    /// `count`; in double width where the product would overflow, so that counts up to `Int.max` split too.
    @inline(__always)
    static func start(ofPiece piece: Int, _ count: Int, _ granule: Int, _ granules: Int, _ pieces: Int) -> Int {
        let granuleIndex =
            granules <= Int.max / pieces
            ? granules * piece / pieces  // every count a kernel meets
            : pieces.dividingFullWidth(granules.multipliedFullWidth(by: piece)).quotient
        let (start, overflow) = granule.multipliedReportingOverflow(by: granuleIndex)
        return overflow ? count : min(count, start)
    }
}
