import Dispatch
import Foundation
import NormKitTraining

/// Times NormKit's GroupNorm and BatchNorm kernels and relates them to the machine's memory-copy bandwidth
/// measured in the same run (`normkit bench`).
public enum KernelBenchmark {
    /// One benchmarked shape and layer.
    public struct Row: Codable, Sendable {
        public var layer: String
        public var shape: [Int]
        /// The memory order of `x`, `y`, `dy` and `dx`.
        public var layout: TensorLayout
        public var groups: Int?
        /// Milliseconds of one training forward (the run's ``Statistic``: median unless asked otherwise).
        public var forwardMilliseconds: Double
        /// Milliseconds of one training forward plus its backward (the same statistic).
        public var forwardBackwardMilliseconds: Double
        /// Milliseconds of one evaluation forward (the running statistics' affine: BN; nil for GN, whose evaluation
        /// is its training forward).
        public var evaluationMilliseconds: Double?
        /// Forward bytes (x read once, y written once) per second over ``copyBytesPerSecond``.
        public var forwardFractionOfCopy: Double
        /// Forward+backward bytes (x → y; x, dy → dx) per second over ``copyBytesPerSecond``.
        public var forwardBackwardFractionOfCopy: Double
        /// The machine's copy bandwidth beside this row (bytes read + written per second, the run's statistic): the
        /// mean of the measurements just before and just after the row's timings, so that the fractions compare the
        /// row with the machine as it was while the row ran (a shared machine's speed drifts over a run).
        public var copyBytesPerSecond: Double
        /// Milliseconds of a `memcpy` of `x` on the kernels' threads, measured beside the row's shape (the same
        /// statistic): the floor of any forward that reads `x` and writes `y` through the caches, at this size and in
        /// the cache level it fits. Nil from `KernelDispatch.streamingStoreThreshold` elements on, where the
        /// kernels stream their outputs past the caches and ``forwardFractionOfCopy`` (a copy far beyond the caches)
        /// is the measure.
        public var sameSizeCopyMilliseconds: Double?
    }

    /// The shapes of the issue: ResNet-50 stages at small and large batch plus a few small tensors.
    public static let defaultShapes: [[Int]] = [
        [2, 256, 56, 56], [2, 512, 28, 28], [2, 2048, 7, 7], [32, 256, 56, 56], [32, 32, 28, 28], [8, 64, 14, 14],
    ]

    /// The GroupNorm rows' groups unless asked otherwise (`G = min(32, C)`, the GN paper's default).
    public static let defaultGroups = 32

    /// A layer the kernel table times. The default rows are GN, GN + SiLU and BN; the others are there to time the
    /// layers whose training runs the staged passes (MABN, frozen BN) or a renormalization rule (BRN).
    public enum Layer: String, CaseIterable, Codable, Sendable {
        case gn
        case gnSiLU = "gn-silu"
        case bn, brn, mabn
        case frozenBN = "frozen-bn"

        public static let defaults: [Layer] = [.gn, .gnSiLU, .bn]

        /// The row's name (with `suffix`, the affine note) and the layer on `channels` (GN: `groups` groups; MABN
        /// with the training stack's default buffer; frozen BN keeps its frozen `γ`, `β` whatever `affine` says).
        func make(channels c: Int, groups: Int, affine: Bool) throws -> (String, NormalizationLayer) {
            let suffix = affine ? "" : " (no affine)"
            switch self {
            case .gn: return ("GroupNorm" + suffix, try GroupNorm(channels: c, groups: groups, affine: affine))
            case .gnSiLU:
                let layer = try GroupNorm(channels: c, groups: groups, affine: affine)
                layer.activation = .silu
                return ("GroupNorm+SiLU" + suffix, layer)
            case .bn: return ("BatchNorm" + suffix, try BatchNorm(channels: c, affine: affine))
            case .brn: return ("BatchRenorm" + suffix, try BatchRenorm(channels: c, affine: affine))
            case .mabn:
                let buffer = TrainingConfiguration().mabnBufferSize
                return (
                    "MovingAverageBatchNorm" + suffix,
                    try MovingAverageBatchNorm(channels: c, bufferSize: buffer, affine: affine)
                )
            case .frozenBN: return ("FrozenBatchNorm", try FrozenBatchNorm(channels: c))
            }
        }
    }

    /// Tensors of one shape the kernel table holds at once: `x`, `dy` and the same-size copy's target, then per
    /// layout `x` and `dy` in that layout, `y` and `dx`.
    public static let tensorsPerShape = 7

    /// The elements of `shape` (its product), nil when a dimension is below 1 or the product overflows `Int`.
    public static func elementCount(_ shape: [Int]) -> Int? {
        var count = 1
        for dimension in shape {
            guard dimension >= 1 else { return nil }
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            if overflow { return nil }
            count = product
        }
        return count
    }

    /// Bytes of the Float tensors the kernel table holds for `shape` (``tensorsPerShape`` of its size), nil when
    /// that overflows `Int`.
    public static func bytesNeeded(for shape: [Int]) -> Int? {
        guard let elements = elementCount(shape) else { return nil }
        let (bytes, overflow) = elements.multipliedReportingOverflow(by: tensorsPerShape * MemoryLayout<Float>.size)
        return overflow ? nil : bytes
    }

    /// A multi-threaded `memcpy` of a buffer far beyond the caches, timed on demand: the machine's copy bandwidth
    /// at that moment. The buffers are allocated and touched once, so a measurement costs its copies only
    /// (`normkit bench` measures beside every row).
    public final class CopyBandwidthMeter {
        private let source: UnsafeMutableRawPointer
        private let target: UnsafeMutableRawPointer
        private let count: Int
        private let threads: Int

        public init(megabytes: Int = 256, threads: Int) {
            count = max(megabytes, 1) << 20
            self.threads = max(threads, 1)
            source = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 64)
            target = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 64)
            memset(source, 1, count)
            memset(target, 0, count)
        }

        deinit {
            source.deallocate()
            target.deallocate()
        }

        /// Bytes read + written per second over `repetitions` copies (after one warm-up), their median or their
        /// best.
        public func measure(repetitions: Int = 7, _ statistic: Statistic) -> Double {
            // Unchecked: raw pointers are not Sendable; the threads copy disjoint ranges within concurrentPerform.
            nonisolated(unsafe) let source = source, target = target
            let count = count, threads = threads
            let seconds = KernelBenchmark.time(repetitions: max(repetitions, 1), statistic) {
                DispatchQueue.concurrentPerform(iterations: threads) { t in
                    let lo = count * t / threads, hi = count * (t + 1) / threads
                    memcpy(target + lo, source + lo, hi - lo)
                }
            }
            return 2 * Double(count) / seconds
        }
    }

    /// Copies `source` into `target` (the same element count, else `NormalizationError.elementCountMismatch`) split
    /// over NormKit's kernel threads (`Parallelism`) in whole cache lines, as a forward of the same size would share
    /// them: the same-size copy.
    public static func copy(_ target: inout Tensor, _ source: Tensor) throws {
        guard target.count == source.count else {
            throw NormalizationError.elementCountMismatch(
                layer: "KernelBenchmark.copy", expected: source.count, got: target.count)
        }
        source.withUnsafeBufferPointer { from in
            target.withUnsafeMutableBufferPointer { to in
                let lines = (from.count + 15) / 16
                Parallelism.forEachRange(count: lines, work: from.count) { range in
                    let lower = range.lowerBound * 16, upper = min(from.count, range.upperBound * 16)
                    memcpy(to.baseAddress! + lower, from.baseAddress! + lower, (upper - lower) * 4)
                }
            }
        }
    }

    /// What a row reports of its repetitions' times.
    public enum Statistic: String, CaseIterable, Sendable {
        /// The middle time: what a run typically takes (the tables in docs/PERFORMANCE.md).
        case median
        /// The shortest time: the least disturbed run. On a shared machine whose speed drifts, the steadier way to
        /// compare two builds of the same code, alternated.
        case best
    }

    /// Seconds of `body` over `repetitions` runs after one warm-up run, their median or their minimum.
    static func time(repetitions: Int, _ statistic: Statistic, _ body: () throws -> Void) rethrows -> Double {
        try body()
        var times: [Double] = []
        for _ in 0..<repetitions {
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        times.sort()
        return statistic == .best ? times[0] : times[times.count / 2]
    }

    /// Benchmarks `layers` (by default GN (`G = min(groups, C)`: 1 is LayerNorm, C InstanceNorm), GN with SiLU fused
    /// into its apply stage (the normalization block of diffusion U-Nets; same bytes as GN, so its copy fractions
    /// compare directly) and BN) on each shape in training mode (and the evaluation forward of every layer but GN's,
    /// which is its training forward), in each of `layouts` (side by side: for every shape and layer, one row per
    /// layout, measured one after the other). `copyBandwidth` measures the machine's copy bandwidth: once before the
    /// first row and again after every row (``Row/copyBytesPerSecond``). With `affine` false the layers have no `γ`,
    /// `β` (`affine: false`) and their rows' names say so. `activation` is fused into every layer but GN + SiLU's
    /// (which keeps its SiLU), and the rows' names say which (`BatchNorm+ReLU`).
    public static func run(
        shapes: [[Int]] = defaultShapes, layouts: [TensorLayout] = TensorLayout.allCases, groups: Int = defaultGroups,
        layers: [Layer] = Layer.defaults, repetitions: Int = 9, statistic: Statistic = .median, affine: Bool = true,
        activation: FusedActivation = .identity, copyBandwidth: () -> Double
    ) throws -> [Row] {
        var rows: [Row] = []
        var copyBefore = copyBandwidth()
        var generator = SeededGenerator(seed: 42)
        for shape in shapes {
            let first = Tensor.randomNormal(shape: shape, using: &generator)
            let firstDy = Tensor.randomNormal(shape: shape, using: &generator)
            let c = shape[1], bytes = Double(first.count * MemoryLayout<Float>.size)
            let g = min(groups, c)
            var target = Tensor(zeros: shape)
            let copy =
                first.count < KernelDispatch.streamingStoreThreshold
                ? try time(repetitions: repetitions, statistic) { try Self.copy(&target, first) } : nil
            for kind in layers {
                var (name, layer) = try kind.make(channels: c, groups: g, affine: affine)
                if activation != .identity, kind != .gnSiLU {
                    layer.activation = activation
                    name =
                        name.replacingOccurrences(of: " (no affine)", with: "") + activation.rowSuffix
                        + (affine ? "" : " (no affine)")
                }
                let groups = layer is GroupNorm ? Optional(g) : nil
                for layout in layouts {
                    let x = first.converted(to: layout), dy = firstDy.converted(to: layout)
                    var y = Tensor(zeros: shape, layout: layout), dx = Tensor(zeros: shape, layout: layout)
                    let forward = try time(repetitions: repetitions, statistic) {
                        try layer.forward(x, into: &y, training: true)
                    }
                    let both = try time(repetitions: repetitions, statistic) {
                        try layer.forward(x, into: &y, training: true)
                        try layer.backward(dy, into: &dx)
                    }
                    let evaluation =
                        layer is GroupNorm
                        ? nil
                        : try time(repetitions: repetitions, statistic) {
                            try layer.forward(x, into: &y, training: false)
                        }
                    let copyAfter = copyBandwidth(), copyBytesPerSecond = (copyBefore + copyAfter) / 2
                    copyBefore = copyAfter
                    rows.append(
                        Row(
                            layer: name, shape: shape, layout: layout, groups: groups,
                            forwardMilliseconds: forward * 1e3, forwardBackwardMilliseconds: both * 1e3,
                            evaluationMilliseconds: evaluation.map { $0 * 1e3 },
                            forwardFractionOfCopy: 2 * bytes / forward / copyBytesPerSecond,
                            forwardBackwardFractionOfCopy: 5 * bytes / both / copyBytesPerSecond,
                            copyBytesPerSecond: copyBytesPerSecond, sameSizeCopyMilliseconds: copy.map { $0 * 1e3 }))
                }
            }
        }
        return rows
    }

    /// A Markdown table of `rows`.
    public static func markdown(_ rows: [Row]) -> String {
        let bandwidths = rows.map { $0.copyBytesPerSecond / 1e9 }
        var out =
            "Copy bandwidth (same run, measured before and after every row; each row's fractions use the mean of "
            + "its two): \(String(format: "%.1f", bandwidths.min() ?? 0))–\(String(format: "%.1f", bandwidths.max() ?? 0)) GB/s\n\n"
        out +=
            "| layer | shape | layout | fwd ms | fwd+bwd ms | eval fwd ms | copy GB/s | fwd / copy BW | fwd+bwd / copy BW "
            + "| same-size copy ms | copy / fwd |\n" + "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        for r in rows {
            let name = r.groups.map { "\(r.layer) G=\($0)" } ?? r.layer
            let layout = r.layout == .channelsFirst ? "NCHW" : "NHWC"
            out +=
                "| \(name) | (\(r.shape.map(String.init).joined(separator: ","))) | \(layout) | "
                + String(format: "%.3f | %.3f | ", r.forwardMilliseconds, r.forwardBackwardMilliseconds)
                + (r.evaluationMilliseconds.map { String(format: "%.3f", $0) } ?? "–")
                + String(
                    format: " | %.1f | %.2f | %.2f", r.copyBytesPerSecond / 1e9, r.forwardFractionOfCopy,
                    r.forwardBackwardFractionOfCopy)
                + (r.sameSizeCopyMilliseconds.map {
                    String(format: " | %.3f | %.2f |\n", $0, $0 / r.forwardMilliseconds)
                } ?? " | – | – |\n")
        }
        return out
    }
}

extension FusedActivation {
    /// What a bench row's layer name gains with this activation fused (`+ReLU`, `+SiLU`).
    var rowSuffix: String {
        switch self {
        case .identity: return ""
        case .relu: return "+ReLU"
        case .silu: return "+SiLU"
        }
    }
}
