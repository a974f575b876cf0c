import Foundation
import NormKit
import NormKitExperiments
import NormKitTraining
import XCTest

/// `normkit bench`'s same-size copy: it copies every element on any thread count, and the table reports it for the
/// tensors the kernels write through the caches, not for those they stream past them.
final class KernelBenchmarkTests: XCTestCase {
    func testTheSameSizeCopyCopiesEveryElementOnAnyThreadCount() throws {
        let defaultThreads = Parallelism.threadCount
        defer { Parallelism.threadCount = defaultThreads }
        var generator = SeededGenerator(seed: 9)
        // 2^17 + 5 elements: past the one-thread threshold, not a whole number of cache lines.
        let source = Tensor.randomNormal(shape: [1, 1, 131_077], using: &generator)
        for threads in [1, 2, 3] {
            Parallelism.threadCount = threads
            var target = Tensor(zeros: [1, 1, 131_077])
            try KernelBenchmark.copy(&target, source)
            XCTAssertEqual(target.values, source.values, "\(threads) threads")
        }
        // A target of another size is a specific error, not a trap.
        var short = Tensor(zeros: [1, 1, 100])
        XCTAssertThrowsError(try KernelBenchmark.copy(&short, source)) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .elementCountMismatch(layer: "KernelBenchmark.copy", expected: 131_077, got: 100))
        }
    }

    func testTheSameSizeCopyIsReportedBelowTheStreamingThresholdOnly() throws {
        let saved = KernelDispatch.streamingStoreThreshold
        defer { KernelDispatch.streamingStoreThreshold = saved }
        KernelDispatch.streamingStoreThreshold = 1_000  // (2, 8, 5, 5) below it, (1, 16, 9, 9) at 1,296 beyond it
        let rows = try KernelBenchmark.run(
            shapes: [[2, 8, 5, 5], [1, 16, 9, 9]], layouts: [.channelsFirst], groups: 4, repetitions: 1,
            copyBytesPerSecond: 1e10)
        XCTAssertEqual(rows.count, 6)
        for row in rows {
            if row.shape == [2, 8, 5, 5] {
                XCTAssertGreaterThan(row.sameSizeCopyMilliseconds ?? 0, 0, "\(row.layer) \(row.shape)")
            } else {
                XCTAssertNil(row.sameSizeCopyMilliseconds, "\(row.layer) \(row.shape)")
            }
        }
        let table = KernelBenchmark.markdown(rows, copyBytesPerSecond: 1e10).split(separator: "\n")
        XCTAssertTrue(table.contains { $0.hasSuffix("| same-size copy ms | copy / fwd |") })
        XCTAssertEqual(table.filter { $0.contains("(1,16,9,9)") && $0.hasSuffix("| – | – |") }.count, 3)
        XCTAssertEqual(table.filter { $0.contains("(2,8,5,5)") && !$0.hasSuffix("| – | – |") }.count, 3)
    }
}
