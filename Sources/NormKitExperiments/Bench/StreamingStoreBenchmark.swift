import Dispatch
import Foundation
import NormKit
import NormKitTraining

/// `normkit bench --streaming-check`: whether a normalization should write its output with non-temporal
/// (streaming) stores once the layer that reads that output is counted.
///
/// A streamed output skips the cache on its way to memory, so the normalization itself runs faster (no read for
/// ownership of the output's lines), but the layer after it then reads the output from memory. The kernel table
/// (`normkit bench --streaming-threshold`) shows only the first half of that trade; this benchmark times the
/// chain a network runs, `conv(C → C) → GroupNorm(C, 32) → conv(C → C/4)` (the reducing convolution of a bottleneck
/// block), forward and forward + backward, with the normalization's outputs (`y`, and `dx` in the backward) stored
/// through the cache and streamed, alternated pair by pair in one loop. The convolutions are the same in both (they
/// do not use the threshold), so the difference is the normalization's saving minus what its readers lose.
public enum StreamingStoreBenchmark {
    /// One shape's chain in one direction.
    public struct Row: Codable, Sendable, Equatable {
        /// The normalization's input `(N, C, H, W)`.
        public var shape: [Int]
        /// The convolutions' kernel size (1 or 3).
        public var kernelSize: Int
        /// `"forward"` or `"forward+backward"`.
        public var pass: String
        /// Median milliseconds of the chain with every normalization output stored through the cache.
        public var cachedMilliseconds: Double
        /// Median milliseconds with every normalization output streamed.
        public var streamingMilliseconds: Double
        /// Median over the pairs of cached / streaming time: above 1, streaming made the chain faster.
        public var medianPairRatio: Double
    }

    /// Shapes of the check by default: a batch-2 ResNet-50 stage-1 activation (the kernel table's L3-resident GN
    /// cell) and a wider batch of fewer channels of the same size, both between the combined L2 of two cores and
    /// the default threshold.
    public static let defaultShapes: [[Int]] = [[2, 256, 56, 56], [8, 64, 56, 56]]

    /// Bytes the chain allocates for `shape` `(N, C, H, W)` with 3×3 convolutions (the larger kernel size), nil when
    /// that overflows `Int` or the shape is not 4-D of positive sizes: six Float tensors of the shape (`x`, `a`,
    /// `y`, `dy`, `da`, `dx`), two of a quarter of its channels (`z`, `dz`), the two convolutions' weights and
    /// their gradients, and an im2col buffer of nine times the shape.
    public static func bytesNeeded(for shape: [Int]) -> Int? {
        guard shape.count == 4, let elements = KernelBenchmark.elementCount(shape) else { return nil }
        let c = shape[1], quarter = max(1, c / 4)
        let (outputs, wide) = c.addingReportingOverflow(quarter)
        guard !wide, let quarterElements = KernelBenchmark.elementCount([shape[0], quarter, shape[2], shape[3]]),
            let weights = KernelBenchmark.elementCount([2 * 9, c, outputs])
        else { return nil }
        var total = 0
        for (count, times) in [(elements, 6 + 9), (quarterElements, 2), (weights, 1)] {
            let (part, overflow) = count.multipliedReportingOverflow(by: times * MemoryLayout<Float>.size)
            let (sum, overflowSum) = total.addingReportingOverflow(part)
            if overflow || overflowSum { return nil }
            total = sum
        }
        return total
    }

    /// Times the chain on each of `shapes` for each of `kernelSizes`, `pairs` alternated pairs per direction after
    /// one warm-up pair, in the layout of `ConvolutionEngine.preferred` (NHWC with oneDNN). Restores
    /// `KernelDispatch.streamingStoreThreshold` afterwards.
    ///
    /// - Throws: `NormalizationError.invalidArgument` for `pairs` below 1, a shape that is not `(N, C, H, W)` of
    ///   positive sizes or a kernel size below 1; a layer's error (channels that GN's groups do not divide).
    public static func run(
        shapes: [[Int]] = defaultShapes, kernelSizes: [Int] = [1, 3], pairs: Int = 100, seed: UInt64 = 0
    ) throws -> [Row] {
        guard pairs >= 1 else {
            throw NormalizationError.invalidArgument(
                layer: "StreamingStoreBenchmark", name: "pairs", value: "\(pairs)", expected: "at least 1")
        }
        let saved = KernelDispatch.streamingStoreThreshold
        defer { KernelDispatch.streamingStoreThreshold = saved }
        let thresholds = [Int.max, 0]  // cached, streaming
        var generator = SeededGenerator(seed: seed)
        var rows: [Row] = []
        for shape in shapes {
            for kernelSize in kernelSizes {
                var chain = try Chain(shape: shape, kernelSize: kernelSize, generator: &generator)
                for backward in [false, true] {
                    var times = [[Double]](repeating: [], count: thresholds.count)
                    for round in -1..<pairs {
                        for (i, threshold) in thresholds.enumerated() {
                            KernelDispatch.streamingStoreThreshold = threshold
                            let start = DispatchTime.now().uptimeNanoseconds
                            try chain.step(backward: backward)
                            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                            if round >= 0 { times[i].append(seconds) }
                        }
                    }
                    let ratios = zip(times[0], times[1]).map { $0 / $1 }
                    rows.append(
                        Row(
                            shape: shape, kernelSize: kernelSize, pass: backward ? "forward+backward" : "forward",
                            cachedMilliseconds: median(times[0]) * 1e3, streamingMilliseconds: median(times[1]) * 1e3,
                            medianPairRatio: median(ratios)))
                }
            }
        }
        return rows
    }

    /// The chain the benchmark times, `conv(C → C) → GroupNorm(C, min(32, C)) → conv(C → C/4)` (same padding,
    /// stride 1) in the convolutions' layout, with its buffers allocated once; its values are the same whatever
    /// the threshold.
    public struct Chain {
        let expand: Conv2d, norm: GroupNorm, reduce: Conv2d
        let x: Tensor, dz: Tensor
        var a: Tensor, dy: Tensor, da: Tensor
        /// The normalization's output, the chain's output and the gradient with respect to the chain's input, as
        /// the last ``step(backward:)`` left them.
        public private(set) var y: Tensor, z: Tensor, dx: Tensor

        /// - Throws: `NormalizationError.invalidArgument` for a shape that is not `(N, C, H, W)` of positive sizes;
        ///   a layer's error (a kernel size below 1, channels that GN's groups do not divide).
        public init(shape: [Int], kernelSize: Int, generator: inout SeededGenerator) throws {
            guard shape.count == 4, shape.allSatisfy({ $0 >= 1 }) else {
                throw NormalizationError.invalidArgument(
                    layer: "StreamingStoreBenchmark", name: "shape", value: "\(shape)",
                    expected: "(N, C, H, W) of positive sizes")
            }
            let c = shape[1], layout = ConvolutionEngine.preferred.activationLayout
            let reduced = [shape[0], max(1, c / 4)] + shape.dropFirst(2)
            expand = try Conv2d(
                inChannels: c, outChannels: c, kernelSize: kernelSize, padding: kernelSize / 2, generator: &generator)
            norm = try GroupNorm(channels: c, groups: min(32, c))
            reduce = try Conv2d(
                inChannels: c, outChannels: reduced[1], kernelSize: kernelSize, padding: kernelSize / 2,
                generator: &generator)
            x = Tensor.randomNormal(shape: shape, using: &generator).converted(to: layout)
            dz = Tensor.randomNormal(shape: reduced, using: &generator).converted(to: layout)
            (a, y, dy, da, dx) = (
                Tensor(zeros: shape, layout: layout), Tensor(zeros: shape, layout: layout),
                Tensor(zeros: shape, layout: layout), Tensor(zeros: shape, layout: layout),
                Tensor(zeros: shape, layout: layout)
            )
            z = Tensor(zeros: reduced, layout: layout)
        }

        /// One training forward of the chain, and its backward from a fixed random gradient when `backward`.
        public mutating func step(backward: Bool) throws {
            try expand.forward(x, into: &a, training: true)
            try norm.forward(a, into: &y, training: true)
            try reduce.forward(y, into: &z, training: true)
            guard backward else { return }
            try reduce.backward(dz, into: &dy)
            try norm.backward(dy, into: &da)
            try expand.backward(da, into: &dx)
        }
    }

    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// The rows as a Markdown table.
    public static func markdown(_ rows: [Row]) -> String {
        var lines = [
            "| chain | pass | cached ms | streaming ms | cached / streaming (median pair) |",
            "|---|---|---:|---:|---:|",
        ]
        for r in rows {
            let c = r.shape[1], dims = r.shape.map(String.init).joined(separator: ",")
            lines.append(
                String(
                    format: "| conv%d×%d %d→%d, GN, conv %d→%d on (%@) | %@ | %.3f | %.3f | %.3f |", r.kernelSize,
                    r.kernelSize, c, c, c, max(1, c / 4), dims, r.pass, r.cachedMilliseconds,
                    r.streamingMilliseconds, r.medianPairRatio))
        }
        return lines.joined(separator: "\n")
    }
}
