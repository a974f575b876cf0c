import Foundation
import NormKit
import NormKitExperiments
import NormKitTraining
import XCTest

/// `normkit bench --streaming-check`: the chain it times computes the same values with the normalization's outputs
/// cached and streamed (so the two timings compare the same work), and the benchmark reports every shape, kernel
/// size and direction and leaves the process's threshold as it found it.
final class StreamingStoreBenchmarkTests: XCTestCase {
    func testTheChainComputesTheSameValuesCachedAndStreamed() throws {
        let saved = KernelDispatch.streamingStoreThreshold
        defer { KernelDispatch.streamingStoreThreshold = saved }
        for kernelSize in [1, 3] {
            var generator = SeededGenerator(seed: 5)
            var chain = try StreamingStoreBenchmark.Chain(
                shape: [2, 64, 6, 6], kernelSize: kernelSize, generator: &generator)
            var results: [([Float], [Float], [Float])] = []
            for threshold in [Int.max, 0] {
                KernelDispatch.streamingStoreThreshold = threshold
                try chain.step(backward: true)
                results.append((chain.y.values, chain.z.values, chain.dx.values))
            }
            XCTAssertGreaterThan(results[0].0.map { abs($0) }.max() ?? 0, 0, "the chain computed something")
            XCTAssertEqual(results[0].0, results[1].0, "GN's output, kernel \(kernelSize)")
            XCTAssertEqual(results[0].1, results[1].1, "the reducing convolution's output, kernel \(kernelSize)")
            XCTAssertEqual(results[0].2, results[1].2, "the input gradient, kernel \(kernelSize)")
        }
    }

    func testEveryShapeKernelAndDirectionIsReportedAndTheThresholdRestored() throws {
        let saved = KernelDispatch.streamingStoreThreshold
        defer { KernelDispatch.streamingStoreThreshold = saved }
        KernelDispatch.streamingStoreThreshold = 12_345
        let rows = try StreamingStoreBenchmark.run(shapes: [[2, 32, 5, 5], [1, 64, 4, 4]], pairs: 3)
        XCTAssertEqual(KernelDispatch.streamingStoreThreshold, 12_345)
        XCTAssertEqual(rows.count, 2 * 2 * 2)
        XCTAssertEqual(
            rows.map { "\($0.shape) \($0.kernelSize) \($0.pass)" },
            [
                "[2, 32, 5, 5] 1 forward", "[2, 32, 5, 5] 1 forward+backward", "[2, 32, 5, 5] 3 forward",
                "[2, 32, 5, 5] 3 forward+backward", "[1, 64, 4, 4] 1 forward", "[1, 64, 4, 4] 1 forward+backward",
                "[1, 64, 4, 4] 3 forward", "[1, 64, 4, 4] 3 forward+backward",
            ])
        for row in rows {
            XCTAssertTrue(row.cachedMilliseconds > 0 && row.streamingMilliseconds > 0, "\(row)")
            XCTAssertTrue(row.medianPairRatio.isFinite && row.medianPairRatio > 0, "\(row)")
        }
        let table = StreamingStoreBenchmark.markdown(rows)
        XCTAssertEqual(table.split(separator: "\n").count, 2 + rows.count)
        XCTAssertTrue(table.contains("conv3×3 64→64, GN, conv 64→16 on (1,64,4,4)"), table)
    }

    func testAShapeTheChainCannotTakeIsAnError() {
        // 40 channels do not split into GN's min(32, 40) = 32 groups: the layer's error, thrown, not a trap; and so
        // for a shape of the wrong rank or an empty dimension, no pairs, a kernel of size 0.
        XCTAssertThrowsError(try StreamingStoreBenchmark.run(shapes: [[2, 40, 4, 4]], kernelSizes: [1], pairs: 1))
        for (shapes, kernelSizes, pairs, word) in [
            ([[2, 8, 4]], [1], 1, "shape"), ([[2, 0, 4, 4]], [1], 1, "shape"), ([[2, 8, 4, 4]], [1], 0, "pairs"),
            ([[2, 8, 4, 4]], [0], 1, "kernelSize"),
        ] {
            XCTAssertThrowsError(
                try StreamingStoreBenchmark.run(shapes: shapes, kernelSizes: kernelSizes, pairs: pairs)
            ) { error in
                XCTAssertTrue("\(error)".contains(word), "\(shapes) \(kernelSizes) \(pairs): \(error)")
            }
        }
    }
}
