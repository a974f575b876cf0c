import Foundation
import NormKit
import NormKitTraining

/// The four batch statistics of one BN layer over one batch, per channel (spec §11): the forward ones `μ_B` and
/// `σ²_B`, and the backward ones `g_B = mean(g)` and `Ψ_B = mean(g·x̂)` with `g = dy·γ` and `x̂ = (x − μ_B)/σ_B`.
public struct ChannelStatistics: Equatable, Sendable {
    public var mean: [Double]
    public var variance: [Double]
    public var gradientMean: [Double]
    public var gradientProjection: [Double]

    /// Statistics given explicitly.
    public init(mean: [Double], variance: [Double], gradientMean: [Double], gradientProjection: [Double]) {
        self.mean = mean; self.variance = variance; self.gradientMean = gradientMean
        self.gradientProjection = gradientProjection
    }

    /// The four arrays in the order μ, σ², g, Ψ.
    var all: [[Double]] { [mean, variance, gradientMean, gradientProjection] }

    /// The statistics of input `x` and output gradient `dy` (same shape and layout), computed in Double.
    ///
    /// - Parameters:
    ///   - x: the layer's input `(N, C, *spatial)`.
    ///   - dy: the gradient of the layer's output, same shape and layout.
    ///   - gamma: the layer's `γ` (nil: 1).
    ///   - epsilon: `ε` inside the square root of `x̂`.
    ///   - gradientScale: multiplies `dy` first (the batch size, to undo a mean loss's `1/N`, so that gradients
    ///     of batches of different sizes are on one scale).
    ///   - perSample: when given, receives each sample's four per-channel means (the per-sample statistics
    ///     whose spread scales the deviations), as `[sample][statistic][channel]`.
    public static func of(
        x: Tensor, dy: Tensor, gamma: [Float]?, epsilon: Double = 1e-5, gradientScale: Double = 1,
        perSample: ((Int, [[Double]]) -> Void)? = nil
    ) -> ChannelStatistics {
        let n = x.shape[0], c = x.shape[1], positions = x.shape.dropFirst(2).reduce(1, *)
        let count = Double(n * positions)
        let layout = x.layout
        func offset(_ i: Int, _ k: Int, _ p: Int) -> Int {
            layout == .channelsFirst ? (i * c + k) * positions + p : (i * positions + p) * c + k
        }
        var mean = [Double](repeating: 0, count: c), variance = mean, g = mean, psi = mean
        x.withUnsafeBufferPointer { xs in
            dy.withUnsafeBufferPointer { ds in
                for k in 0..<c {
                    var s = 0.0
                    for i in 0..<n { for p in 0..<positions { s += Double(xs[offset(i, k, p)]) } }
                    let mu = s / count
                    var q = 0.0
                    for i in 0..<n { for p in 0..<positions { let d = Double(xs[offset(i, k, p)]) - mu; q += d * d } }
                    let v = q / count
                    let inverse = 1 / (v + epsilon).squareRoot()
                    let scale = Double(gamma?[k] ?? 1) * gradientScale
                    var sg = 0.0, sgx = 0.0
                    for i in 0..<n {
                        for p in 0..<positions {
                            let gv = Double(ds[offset(i, k, p)]) * scale
                            sg += gv
                            sgx += gv * (Double(xs[offset(i, k, p)]) - mu) * inverse
                        }
                    }
                    (mean[k], variance[k], g[k], psi[k]) = (mu, v, sg / count, sgx / count)
                }
                guard let perSample else { return }
                for i in 0..<n {
                    var sample = [[Double]](repeating: [Double](repeating: 0, count: c), count: 4)
                    for k in 0..<c {
                        let inverse = 1 / (variance[k] + epsilon).squareRoot()
                        let scale = Double(gamma?[k] ?? 1) * gradientScale
                        var sx = 0.0, sxx = 0.0, sg = 0.0, sgx = 0.0
                        for p in 0..<positions {
                            let xv = Double(xs[offset(i, k, p)]), gv = Double(ds[offset(i, k, p)]) * scale
                            sx += xv; sxx += xv * xv; sg += gv; sgx += gv * (xv - mean[k]) * inverse
                        }
                        let m = Double(positions)
                        sample[0][k] = sx / m; sample[1][k] = sxx / m; sample[2][k] = sg / m; sample[3][k] = sgx / m
                    }
                    perSample(i, sample)
                }
            }
        }
        return ChannelStatistics(mean: mean, variance: variance, gradientMean: g, gradientProjection: psi)
    }
}

/// One row of ``BatchStatisticsReport``: a layer at a batch size, the mean relative deviation of each statistic
/// from its population value (spec §11: `E_B |stat_B − stat| / (|stat| + scale)`, averaged over channels), for
/// single batches and for a simple moving average over `window` consecutive batches.
public struct StatisticsDeviation: Codable, Equatable, Sendable {
    public var layer: String
    public var batch: Int
    public var batches: Int
    /// Batches in the moving average (`max(1, 32 / batch)`, MABN's default buffer).
    public var window: Int
    /// μ_B, σ²_B, g_B, Ψ_B.
    public var single: [Double]
    /// The same after the moving average over ``window`` batches; nil when fewer than ``window`` batches were
    /// drawn (``batches`` below ``window``), so that no moving average was computed.
    public var movingAverage: [Double]?
}

/// `normkit stats`: how far BN's batch statistics stray from their population values at each batch size.
public struct BatchStatisticsReport: Codable, Sendable {
    public static let statisticNames = ["mu", "sigma2", "g", "psi"]
    public var checkpoint: String
    public var populationImages: Int
    public var rows: [StatisticsDeviation]

    /// Markdown: per batch size, the deviations' median over layers (single batch and moving average), then every
    /// layer's single-batch deviations.
    public func markdown() -> String {
        var lines = [
            "Median over BN layers of the mean relative deviation from the population value:", "",
            "| batch | μ_B | σ²_B | g_B | Ψ_B | backward / forward | SMA window | SMA μ | SMA σ² | SMA g | SMA Ψ |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        var notComputed: [(batch: Int, window: Int)] = []
        for (batch, single, sma, window) in averagedOverLayers() {
            let ratio = (single[2] + single[3]) / max(single[0] + single[1], 1e-300)
            if sma == nil { notComputed.append((batch, window)) }
            let cells =
                single.map { String(format: "%.4f", $0) } + [String(format: "%.2f×", ratio), "\(window)"]
                + (sma?.map { String(format: "%.4f", $0) } ?? Array(repeating: "–", count: 4))
            lines.append("| \(batch) | " + cells.joined(separator: " | ") + " |")
        }
        if !notComputed.isEmpty {
            let drawn = rows.first.map { "\($0.batches)" } ?? "too few"
            let sizes = notComputed.map { "B = \($0.batch) (window \($0.window))" }.joined(separator: ", ")
            lines += [
                "",
                "–: not computed. A moving average over the window needs at least that many batches, and \(drawn) "
                    + "were drawn per size: \(sizes). Draw at least \(notComputed.map(\.window).max()!) "
                    + "(normkit stats --batches) for every column.",
            ]
        }
        lines += [
            "", "Per layer, single batches (μ_B / σ²_B / g_B / Ψ_B):", "",
            "| layer | " + Set(rows.map(\.batch)).sorted().map { "B = \($0)" }.joined(separator: " | ") + " |",
            "|---|" + String(repeating: "---|", count: Set(rows.map(\.batch)).count),
        ]
        var layerOrder: [String] = []
        for row in rows where !layerOrder.contains(row.layer) { layerOrder.append(row.layer) }
        for layer in layerOrder {
            let cells = rows.filter { $0.layer == layer }.sorted { $0.batch < $1.batch }
                .map { $0.single.map { String(format: "%.3g", $0) }.joined(separator: " / ") }
            lines.append("| \(layer) | " + cells.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n")
    }

    /// Per batch size: the four deviations' median over layers (single batch, moving average) and the window. The
    /// median, because one layer can dominate a mean (the stem's backward statistics stray far more than any other).
    /// `movingAverage` is nil for a batch size whose rows have none (fewer batches than the window).
    public func averagedOverLayers() -> [(batch: Int, single: [Double], movingAverage: [Double]?, window: Int)] {
        Dictionary(grouping: rows, by: \.batch).keys.sorted().map { batch in
            let group = rows.filter { $0.batch == batch }
            func average(_ pick: (StatisticsDeviation) -> [Double]) -> [Double] {
                (0..<4).map { s in
                    let values = group.map { pick($0)[s] }.sorted()
                    let n = values.count
                    return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2
                }
            }
            let movingAverage =
                group.allSatisfy { $0.movingAverage != nil } ? average { $0.movingAverage ?? [] } : nil
            return (batch, average(\.single), movingAverage, group[0].window)
        }
    }
}

/// Runs the measurement on a trained BN model (spec §11).
public enum BatchStatisticsAnalysis {
    /// Measures, for every BN layer of `model`, the relative deviation of `μ_B`, `σ²_B`, `g_B`, `Ψ_B` from their
    /// values over the first `populationImages` images of `data` (computed in chunks of 250 in training mode), over
    /// `batches` random batches of each size (seeded), and after a moving average over `max(1, 32 / B)` batches
    /// (none when `batches` is below that window: ``StatisticsDeviation/movingAverage`` is then nil).
    /// The weights never change; `dy` comes from the mean cross-entropy and is scaled by the batch size.
    public static func run(
        model: Model & Module, data: Dataset, batchSizes: [Int], batches: Int,
        populationImages: Int, seed: UInt64, checkpoint: String = ""
    ) throws -> BatchStatisticsReport {
        let layers = model.namedModules().compactMap { entry -> (String, NormalizationModule)? in
            guard let module = entry.module as? NormalizationModule, module.layer is BatchNorm else { return nil }
            return (entry.name, module)
        }
        guard !layers.isEmpty else {
            throw TrainingError.invalidConfiguration(
                "the model has no BatchNorm layer: the statistics are BN's (train with --norm bn)")
        }
        let recorder = Recorder()
        for (_, module) in layers { module.observer = recorder }
        defer { for (_, module) in layers { module.observer = nil } }
        let loss = SoftmaxCrossEntropy()
        var dlogits = Tensor(zeros: [0, 0])
        let pool = min(populationImages, data.count)

        func step(_ indices: [Int]) throws {
            let size = data.sampleSize
            var pixels = [Float](repeating: 0, count: indices.count * size)
            for (j, i) in indices.enumerated() {
                pixels.replaceSubrange(j * size..<(j + 1) * size, with: data.images[i * size..<(i + 1) * size])
            }
            let x = try Tensor(shape: [indices.count, data.channels, data.height, data.width], values: pixels)
            _ = try loss.forward(
                logits: try model.forward(x, training: true), labels: indices.map { Int(data.labels[$0]) })
            try loss.backward(into: &dlogits)
            try model.backward(dlogits)
        }
        func statistics(
            _ module: NormalizationModule, scale: Double,
            perSample: ((Int, [[Double]]) -> Void)? = nil
        ) -> ChannelStatistics {
            let id = ObjectIdentifier(module)
            return ChannelStatistics.of(
                x: recorder.inputs[id]!, dy: recorder.gradients[id]!,
                gamma: module.layer?.weight?.value, epsilon: Double(module.layer!.epsilon),
                gradientScale: scale, perSample: perSample)
        }

        // Population values and the spread of the per-sample statistics.
        var sums = layers.map { _ in [[Double]](repeating: [], count: 4) }
        var samples = layers.map { _ in [[[Double]]]() }
        var start = 0
        while start < pool {
            let chunk = Array(start..<min(start + 250, pool))
            try step(chunk)
            for (l, (_, module)) in layers.enumerated() {
                let s = statistics(module, scale: Double(chunk.count)) { _, sample in samples[l].append(sample) }
                // E[x], E[x²] (for σ²), E[g], E[g·x̂], weighted by the chunk's size.
                let parts = [
                    s.mean, zip(s.variance, s.mean).map { $0 + $1 * $1 }, s.gradientMean, s.gradientProjection,
                ]
                for j in 0..<4 {
                    let weighted = parts[j].map { $0 * Double(chunk.count) }
                    sums[l][j] = sums[l][j].isEmpty ? weighted : zip(sums[l][j], weighted).map(+)
                }
            }
            start += chunk.count
        }
        var population: [[[Double]]] = [], spread: [[[Double]]] = []
        for l in layers.indices {
            let mu = sums[l][0].map { $0 / Double(pool) }
            let second = sums[l][1].map { $0 / Double(pool) }
            let values = [
                mu, zip(second, mu).map { $0 - $1 * $1 }, sums[l][2].map { $0 / Double(pool) },
                sums[l][3].map { $0 / Double(pool) },
            ]
            population.append(values)
            // Per-sample statistics: mean of x, mean of (x − μ)² = E_i[x²] − 2μE_i[x] + μ², mean of g, of g·x̂.
            let perSample: [[[Double]]] = samples[l].map { (s: [[Double]]) -> [[Double]] in
                var centred = [Double](repeating: 0, count: mu.count)
                for k in 0..<mu.count {
                    let m: Double = mu[k]
                    centred[k] = s[1][k] - 2 * m * s[0][k] + m * m
                }
                return [s[0], centred, s[2], s[3]]
            }
            spread.append(
                (0..<4).map { j in
                    (0..<mu.count).map { k in
                        let v = perSample.map { $0[j][k] }
                        let m = v.reduce(0, +) / Double(v.count)
                        return (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
                    }
                })
        }
        func deviation(_ stat: [Double], _ l: Int, _ j: Int) -> Double {
            let p: [Double] = population[l][j], s: [Double] = spread[l][j]
            var total = 0.0
            for k in 0..<stat.count {
                let difference: Double = abs(stat[k] - p[k])
                total += difference / (abs(p[k]) + s[k] + 1e-12)
            }
            return total / Double(stat.count)
        }

        var generator = SeededGenerator(seed: seed)
        var rows: [StatisticsDeviation] = []
        for batch in batchSizes {
            let window = max(1, 32 / batch)
            var single = layers.map { _ in [Double](repeating: 0, count: 4) }
            var moving = single
            var history = layers.map { _ in [ChannelStatistics]() }
            var averaged = 0
            for _ in 0..<batches {
                try step((0..<batch).map { _ in Int(generator.next() % UInt64(pool)) })
                for (l, (_, module)) in layers.enumerated() {
                    let s = statistics(module, scale: Double(batch))
                    for j in 0..<4 { single[l][j] += deviation(s.all[j], l, j) / Double(batches) }
                    history[l].append(s)
                    if history[l].count > window { history[l].removeFirst() }
                    if history[l].count == window {
                        for j in 0..<4 {
                            let sma = (0..<s.all[j].count).map { k in
                                history[l].map { $0.all[j][k] }.reduce(0, +) / Double(window)
                            }
                            moving[l][j] += deviation(sma, l, j)
                        }
                        if l == 0 { averaged += 1 }
                    }
                }
            }
            for (l, (name, _)) in layers.enumerated() {
                rows.append(
                    StatisticsDeviation(
                        layer: name, batch: batch, batches: batches, window: window,
                        single: single[l],
                        movingAverage: averaged > 0 ? moving[l].map { $0 / Double(averaged) } : nil))
            }
        }
        return BatchStatisticsReport(checkpoint: checkpoint, populationImages: pool, rows: rows)
    }

    /// Keeps the last input and output gradient each observed normalization saw.
    private final class Recorder: NormalizationObserver {
        var inputs: [ObjectIdentifier: Tensor] = [:]
        var gradients: [ObjectIdentifier: Tensor] = [:]
        func normalization(_ module: NormalizationModule, sawInput x: Tensor, training: Bool) {
            inputs[ObjectIdentifier(module)] = x
        }
        func normalization(_ module: NormalizationModule, sawOutputGradient dy: Tensor) {
            gradients[ObjectIdentifier(module)] = dy
        }
    }
}

extension BatchStatisticsReport {
    /// Deviation vs batch size, log-log, averaged over layers: the forward statistics solid, the backward ones
    /// dashed; one panel for single batches and one after the moving average.
    public func svg() -> String {
        var canvas = PlotCanvas(width: 1100, height: 460)
        let averaged = averagedOverLayers()
        let names = ["μ_B (forward)", "σ²_B (forward)", "g_B (backward)", "Ψ_B (backward)"]
        let panels: [(title: String, values: [[Double]?])] = [
            ("BN batch statistics (median over layers): single batches", averaged.map(\.single)),
            ("after a moving average over 32 / B batches", averaged.map(\.movingAverage)),
        ]
        for (index, panel) in panels.enumerated() {
            var series: [PlotSeries] = []
            for j in 0..<4 {
                var points: [(x: Double, y: Double, error: Double?)] = []
                for (row, values) in zip(averaged, panel.values) {
                    guard let values else { continue }  // no moving average at this size
                    points.append((x: log2(Double(row.batch)), y: log10(max(values[j], 1e-6)), error: nil))
                }
                series.append(
                    PlotSeries(
                        name: names[j], color: PlotColor.palette[j], marker: MarkerShape.allCases[j],
                        dashed: j >= 2, points: points))
            }
            let plot = LinePlot(
                title: panel.title, xLabel: "batch size B (log scale)", yLabel: "log10 relative deviation",
                xTicks: averaged.map { (log2(Double($0.batch)), "\($0.batch)") }, series: series,
                showLegend: index == 1)
            plot.draw(x: Double(index) * 520, y: 0, width: index == 0 ? 520 : 580, height: canvas.height, on: &canvas)
        }
        return SVGPlot.render(canvas)
    }
}
