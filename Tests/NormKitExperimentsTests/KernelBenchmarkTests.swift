import Foundation
import NormKit
import NormKitExperiments
import NormKitTraining
import XCTest

/// `normkit bench`'s same-size copy: it copies every element on any thread count, and the table reports it for the
/// tensors the kernels write through the caches, not for those they stream past them. Its copy bandwidth: measured
/// around every row, each row's fractions over the mean of the two measurements beside it.
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
            shapes: [[2, 8, 5, 5], [1, 16, 9, 9]], layouts: [.channelsFirst], groups: 4, repetitions: 1
        ) { 1e10 }
        XCTAssertEqual(rows.count, 6)
        for row in rows {
            if row.shape == [2, 8, 5, 5] {
                XCTAssertGreaterThan(row.sameSizeCopyMilliseconds ?? 0, 0, "\(row.layer) \(row.shape)")
            } else {
                XCTAssertNil(row.sameSizeCopyMilliseconds, "\(row.layer) \(row.shape)")
            }
        }
        let table = KernelBenchmark.markdown(rows).split(separator: "\n")
        XCTAssertTrue(table.contains { $0.hasSuffix("| same-size copy ms | copy / fwd |") })
        XCTAssertEqual(table.filter { $0.contains("(1,16,9,9)") && $0.hasSuffix("| – | – |") }.count, 3)
        XCTAssertEqual(table.filter { $0.contains("(2,8,5,5)") && !$0.hasSuffix("| – | – |") }.count, 3)
    }

    func testLayersWithoutAffineParametersAreTimedAndLabelled() throws {
        let rows = try KernelBenchmark.run(
            shapes: [[2, 8, 5, 5]], layouts: [.channelsLast], groups: 4, repetitions: 1, affine: false
        ) { 1e10 }
        XCTAssertEqual(
            rows.map(\.layer), ["GroupNorm (no affine)", "GroupNorm+SiLU (no affine)", "BatchNorm (no affine)"])
        XCTAssertNotNil(rows.last?.evaluationMilliseconds)
        XCTAssertTrue(KernelBenchmark.markdown(rows).contains("| BatchNorm (no affine) | (2,8,5,5) | NHWC |"))
    }

    /// `layers` chooses the rows, in its order: the staged layers (MABN, frozen BN) and BRN time their training and
    /// evaluation forwards too; GroupNorm rows alone carry `groups`.
    func testTheLayersChosenAreTimedInTheirOrder() throws {
        let rows = try KernelBenchmark.run(
            shapes: [[4, 8]], layouts: TensorLayout.allCases, groups: 4, layers: [.mabn, .frozenBN, .brn, .gn],
            repetitions: 1
        ) { 1e10 }
        XCTAssertEqual(
            rows.map(\.layer),
            [
                "MovingAverageBatchNorm", "MovingAverageBatchNorm", "FrozenBatchNorm", "FrozenBatchNorm", "BatchRenorm",
                "BatchRenorm", "GroupNorm", "GroupNorm",
            ])
        for row in rows {
            XCTAssertGreaterThan(row.forwardBackwardMilliseconds, 0, row.layer)
            XCTAssertEqual(row.evaluationMilliseconds == nil, row.layer == "GroupNorm", row.layer)
            XCTAssertEqual(row.groups, row.layer == "GroupNorm" ? 4 : nil, row.layer)
        }
    }

    /// `activation` is fused into every layer but GN + SiLU's, whose SiLU stays, and the rows' names say which; with
    /// `affine` false the affine note stays last.
    func testTheActivationIsFusedIntoEveryLayerButGroupNormSiLU() throws {
        let rows = try KernelBenchmark.run(
            shapes: [[4, 8]], layouts: [.channelsLast], groups: 4, layers: [.bn, .gnSiLU, .mabn, .frozenBN],
            repetitions: 1, activation: .relu
        ) { 1e10 }
        XCTAssertEqual(
            rows.map(\.layer),
            ["BatchNorm+ReLU", "GroupNorm+SiLU", "MovingAverageBatchNorm+ReLU", "FrozenBatchNorm+ReLU"])
        let plain = try KernelBenchmark.run(
            shapes: [[4, 8]], layouts: [.channelsLast], groups: 4, layers: [.bn], repetitions: 1, affine: false,
            activation: .silu
        ) { 1e10 }
        XCTAssertEqual(plain.map(\.layer), ["BatchNorm+SiLU (no affine)"])
    }

    func testEachRowsFractionsUseTheCopyBandwidthMeasuredAroundIt() throws {
        // The meter reports 1, 2, 3, … × 10 GB/s, so row i (0-based) lies between (i + 1) and (i + 2) × 10 GB/s.
        var measurements = 0
        let rows = try KernelBenchmark.run(
            shapes: [[2, 8, 5, 5]], layouts: TensorLayout.allCases, groups: 4, repetitions: 1
        ) {
            measurements += 1
            return Double(measurements) * 1e10
        }
        XCTAssertEqual(rows.count, 6)
        XCTAssertEqual(measurements, rows.count + 1, "one measurement before the first row and one after each")
        let bytes = Double(2 * 8 * 5 * 5 * 4)
        for (i, row) in rows.enumerated() {
            let expected = (Double(i + 1) + Double(i + 2)) / 2 * 1e10
            XCTAssertEqual(row.copyBytesPerSecond, expected, "row \(i)")
            XCTAssertEqual(
                row.forwardFractionOfCopy, 2 * bytes / (row.forwardMilliseconds / 1e3) / expected, accuracy: 1e-9,
                "row \(i)")
            XCTAssertEqual(
                row.forwardBackwardFractionOfCopy, 5 * bytes / (row.forwardBackwardMilliseconds / 1e3) / expected,
                accuracy: 1e-9, "row \(i)")
        }
        let table = KernelBenchmark.markdown(rows)
        XCTAssertTrue(table.hasPrefix("Copy bandwidth (same run, measured before and after every row"))
        XCTAssertTrue(table.contains("15.0–65.0 GB/s"), table)
        XCTAssertTrue(table.contains("| copy GB/s |"))
    }

    func testTheCopyBandwidthMeterMeasuresAPositiveBandwidth() {
        let meter = KernelBenchmark.CopyBandwidthMeter(megabytes: 4, threads: 2)
        for statistic in KernelBenchmark.Statistic.allCases {
            let bandwidth = meter.measure(repetitions: 3, statistic)
            XCTAssertGreaterThan(bandwidth, 1e8, "\(statistic)")
            XCTAssertTrue(bandwidth.isFinite)
        }
    }
}
