import Foundation
import NormKit
import NormKitExperiments
import NormKitTraining
import XCTest

/// `normkit stats` (issue 12, item 3): the four batch statistics against a direct float64 computation, and the
/// measurement's shape on a small BN network.
final class BatchStatisticsTests: XCTestCase {
    func testChannelStatisticsMatchADirectFloat64Computation() throws {
        var generator = SeededGenerator(seed: 11)
        let (n, c, h, w) = (3, 4, 2, 5)
        let x = Tensor.randomNormal(shape: [n, c, h, w], mean: 2, standardDeviation: 3, using: &generator)
        let dy = Tensor.randomNormal(shape: [n, c, h, w], using: &generator)
        let gamma: [Float] = [0.5, -1, 2, 1.5]
        let scale = 3.0
        let xs = x.withUnsafeBufferPointer { $0.map(Double.init) },
            ds = dy.withUnsafeBufferPointer { $0.map(Double.init) }
        var expected = ChannelStatistics(mean: [], variance: [], gradientMean: [], gradientProjection: [])
        for k in 0..<c {
            var values: [(Double, Double)] = []
            for i in 0..<n {
                for p in 0..<(h * w) { values.append((xs[(i * c + k) * h * w + p], ds[(i * c + k) * h * w + p])) }
            }
            let m = Double(values.count)
            let mu = values.map(\.0).reduce(0, +) / m
            let v = values.map { ($0.0 - mu) * ($0.0 - mu) }.reduce(0, +) / m
            let g = values.map { $0.1 * Double(gamma[k]) * scale }
            let xhat = values.map { ($0.0 - mu) / (v + 1e-5).squareRoot() }
            expected.mean.append(mu)
            expected.variance.append(v)
            expected.gradientMean.append(g.reduce(0, +) / m)
            expected.gradientProjection.append(zip(g, xhat).map(*).reduce(0, +) / m)
        }
        for layout in [TensorLayout.channelsFirst, .channelsLast] {
            let got = ChannelStatistics.of(
                x: x.converted(to: layout), dy: dy.converted(to: layout), gamma: gamma,
                gradientScale: scale)
            for (a, b) in zip(
                [got.mean, got.variance, got.gradientMean, got.gradientProjection],
                [expected.mean, expected.variance, expected.gradientMean, expected.gradientProjection])
            {
                for (u, v) in zip(a, b) { XCTAssertEqual(u, v, accuracy: 1e-10 * max(1, abs(v)), "\(layout)") }
            }
        }
    }

    func testDeviationsShrinkWithTheBatchAndWithTheMovingAverage() throws {
        var generator = SeededGenerator(seed: 12)
        let model = Sequential(
            try Conv2d(inChannels: 1, outChannels: 8, kernelSize: 3, padding: 1, generator: &generator),
            NormalizationModule(try BatchNorm(channels: 8)),
            ReLU(),
            try Conv2d(inChannels: 8, outChannels: 8, kernelSize: 3, stride: 2, padding: 1, generator: &generator),
            NormalizationModule(try BatchNorm(channels: 8)),
            ReLU(),
            GlobalAveragePool(),
            try Linear(inFeatures: 8, outFeatures: 10, generator: &generator))
        let (data, _) = try TorchModelParityTestsData.synthetic(count: 600)
        let report = try BatchStatisticsAnalysis.run(
            model: model, data: data, batchSizes: [1, 4, 32], batches: 40,
            populationImages: 600, seed: 3)
        XCTAssertEqual(report.rows.count, 2 * 3)
        XCTAssertEqual(Set(report.rows.map(\.layer)).count, 2)
        let averaged = report.averagedOverLayers()
        XCTAssertEqual(averaged.map(\.batch), [1, 4, 32])
        XCTAssertEqual(averaged.map(\.window), [32, 8, 1])
        for j in 0..<4 {
            XCTAssertGreaterThan(averaged[0].single[j], averaged[2].single[j], "statistic \(j): batch 1 vs 32")
            XCTAssertLessThan(
                try XCTUnwrap(averaged[0].movingAverage)[j], averaged[0].single[j], "statistic \(j): SMA at batch 1")
        }
        XCTAssertTrue(report.markdown().contains("| 32 |"))
        XCTAssertTrue(report.svg().hasPrefix("<svg") || report.svg().hasPrefix("<?xml"))
        // A model without BN is refused.
        let gn = Sequential(
            NormalizationModule(try GroupNorm(channels: 1, groups: 1)), GlobalAveragePool(),
            try Linear(inFeatures: 1, outFeatures: 10, generator: &generator))
        XCTAssertThrowsError(
            try BatchStatisticsAnalysis.run(
                model: gn, data: data, batchSizes: [2], batches: 1,
                populationImages: 10, seed: 0))
    }
}

extension BatchStatisticsTests {
    /// With fewer batches than a size's moving-average window, no moving average is computed: the report says "–"
    /// and why (it printed 0.0000), and the row has no moving average (JSON: no `movingAverage`).
    func testAMovingAverageThatWasNotComputedIsNotShownAsZero() throws {
        var generator = SeededGenerator(seed: 13)
        let model = Sequential(
            try Conv2d(inChannels: 1, outChannels: 4, kernelSize: 3, padding: 1, generator: &generator),
            NormalizationModule(try BatchNorm(channels: 4)),
            ReLU(),
            GlobalAveragePool(),
            try Linear(inFeatures: 4, outFeatures: 10, generator: &generator))
        let (data, _) = try TorchModelParityTestsData.synthetic(count: 300)
        let report = try BatchStatisticsAnalysis.run(
            model: model, data: data, batchSizes: [1, 16], batches: 3, populationImages: 300, seed: 1)
        let lines = report.markdown().split(separator: "\n")
        let b1 = try XCTUnwrap(lines.first { $0.hasPrefix("| 1 |") })
        XCTAssertTrue(b1.hasSuffix("| 32 | – | – | – | – |"), String(b1))
        let b16 = try XCTUnwrap(lines.first { $0.hasPrefix("| 16 |") })
        XCTAssertFalse(b16.contains("–"), "window 2 ≤ 3 batches: computed\n\(b16)")
        XCTAssertTrue(report.markdown().contains("–: not computed"), report.markdown())
        XCTAssertTrue(report.markdown().contains("3 were drawn per size: B = 1 (window 32)"), report.markdown())
        let json = try XCTUnwrap(
            JSONSerialization.jsonObject(with: JSONEncoder().encode(report)) as? [String: Any])
        for row in try XCTUnwrap(json["rows"] as? [[String: Any]]) {
            XCTAssertEqual(row["movingAverage"] == nil, (row["batch"] as? Int) == 1, "\(row)")
        }
        XCTAssertTrue(report.svg().contains("<svg"))
    }
}

/// Small learnable 12×12 images (a bright row per class).
enum TorchModelParityTestsData {
    static func synthetic(count: Int) throws -> (Dataset, Int) {
        var generator = SeededGenerator(seed: 5)
        let size = 12
        var pixels = [UInt8](repeating: 0, count: count * size * size)
        var labels = [Int32](repeating: 0, count: count)
        for i in 0..<count {
            let label = Int(generator.next() % 10)
            labels[i] = Int32(label)
            for p in 0..<(size * size) {
                pixels[i * size * size + p] = UInt8(
                    min(255, (p / size == label ? 200 : 30) + Int(generator.next() % 40)))
            }
        }
        return (
            try Dataset(
                pixels: pixels, labels: labels, height: size, width: size, classCount: 10,
                statistics: PixelStatistics(mean: 0.25, std: 0.3)), count
        )
    }
}
