// The sweep report's figures: the scenes of error_vs_batch, error_vs_groups and training_curves (SVG and PNG).
import Foundation
import NormKitTraining

extension SweepReport {
    /// Colours and markers by normalization, so a normalization looks the same in every sweep.
    static func style(of key: SeriesKey, index: Int) -> (PlotColor, MarkerShape) {
        if key.groupSpec != nil || key.variant != nil {
            return (
                PlotColor.palette[index % PlotColor.palette.count],
                MarkerShape.allCases[index % MarkerShape.allCases.count]
            )
        }
        switch key.norm {
        case .bn: return (PlotColor(hex: "#1f77b4"), .circle)
        case .gn: return (PlotColor(hex: "#d62728"), .square)
        case .mabn: return (PlotColor(hex: "#2ca02c"), .triangle)
        case .brn: return (PlotColor(hex: "#ff7f0e"), .diamond)
        case .ln: return (PlotColor(hex: "#9467bd"), .triangleDown)
        case .in: return (PlotColor(hex: "#8c564b"), .hexagon)
        case .frozenBN: return (PlotColor(hex: "#7f7f7f"), .circle)
        case .none: return (PlotColor(hex: "#17becf"), .square)
        case .syncbn: return (PlotColor(hex: "#e377c2"), .circle)
        }
    }

    /// The values an error in percent can take: points outside it (a damaged record) are left out of the plots.
    static let errorPercentDomain = 0.0...100.0

    /// Colours of normalization batch columns (largest first) in the training curves.
    static let batchColors = ["#08519c", "#4292c6", "#41ab5d", "#fd8d3c", "#d7301f", "#7a0177", "#525252"]
        .map(PlotColor.init(hex:))

    /// `error_vs_batch`: mean test error vs normalization batch (log2 axis, 32 on the left), ± std error bars.
    func errorVersusBatchCanvas() -> PlotCanvas {
        var canvas = PlotCanvas(width: 900, height: 560)
        let series = table.mainRows.enumerated().map { index, row -> PlotSeries in
            let (color, marker) = Self.style(of: row.key, index: index)
            let points = table.columns.compactMap { column -> (x: Double, y: Double, error: Double?)? in
                guard let entry = row.entries[column], let mean = entry.mean else { return nil }
                return (log2(Double(column)), mean, entry.std)
            }
            let notes =
                (row.reused ? ["batch-independent: one run"] : [])
                + (row.entries.values.contains(where: \.partial) ? ["partial"] : [])
            let name = row.key.label + (notes.isEmpty ? "" : " (\(notes.joined(separator: ", ")))")
            return PlotSeries(name: name, color: color, marker: marker, dashed: row.reused, points: points)
        }
        let model = plan?.plan.base.model ?? runs.first?.configuration.model ?? "model"
        let perGPU = plan?.plan.setting == .perGPU
        let xLabel =
            perGPU
            ? "images per GPU = normalization batch (SGD batch = \(plan?.plan.gpus ?? 8) × this; log scale)"
            : "normalization batch size (images per statistics batch, log scale)"
        var plot = LinePlot(
            title: "\(model): test error vs normalization batch size",
            xLabel: xLabel, yLabel: "test error (%), mean ± std over seeds",
            xTicks: table.columns.map { (log2(Double($0)), "\($0)") }, xReversed: true,
            series: series, dodge: 5,
            emptyMessage: table.groupRows.isEmpty ? "no results yet" : "GN groups axis only: see error_vs_groups.svg")
        plot.yDomain = Self.errorPercentDomain
        plot.draw(x: 0, y: 0, width: canvas.width, height: canvas.height, on: &canvas)
        return canvas
    }

    /// `error_vs_groups` (GN paper, Table 3 as a figure): GN's test error vs the number of groups (left) and vs
    /// channels per group (right), log2 axes with the largest value on the left; one line per normalization
    /// batch column when runs differ by column.
    func errorVersusGroupsCanvas() -> PlotCanvas {
        var canvas = PlotCanvas(width: 1000, height: 480)
        let rows = table.groupRows
        let reused = rows.allSatisfy(\.reused)
        let shown =
            reused
            ? Array(table.columns.prefix(1))
            : table.columns.filter { c in rows.contains { $0.entries[c]?.mean != nil } }
        let panels: [(String, String, (GroupSpec) -> Int?, String)] = [
            (
                "number of groups", "groups G (log scale)",
                { if case .groups(let g) = $0 { return g } else { return nil } },
                "LN"
            ),
            (
                "channels per group", "channels per group (log scale)",
                { if case .groupSize(let c) = $0 { return c } else { return nil } }, "IN"
            ),
        ]
        for (index, panel) in panels.enumerated() {
            let values = rows.compactMap { row in row.key.groupSpec.flatMap(panel.2).map { (row, $0) } }
            let series = shown.enumerated().map { k, column -> PlotSeries in
                let points = values.compactMap { row, value -> (x: Double, y: Double, error: Double?)? in
                    guard let entry = row.entries[column], let mean = entry.mean else { return nil }
                    return (log2(Double(value)), mean, entry.std)
                }.sorted { $0.x > $1.x }
                let name = shown.count == 1 ? "GN" : "normalization batch \(column)"
                return PlotSeries(
                    name: name, color: Self.batchColors[k % Self.batchColors.count], marker: .square,
                    points: points)
            }
            let ticks = values.map(\.1).sorted(by: >).map { v in (log2(Double(v)), v == 1 ? "1 (\(panel.3))" : "\(v)") }
            var plot = LinePlot(
                title: "GN: test error vs \(panel.0)", xLabel: panel.1,
                yLabel: "test error (%), mean ± std over seeds", xTicks: ticks, xReversed: true,
                series: series, showLegend: shown.count > 1, dodge: 4,
                emptyMessage: "no \(panel.0) values in this sweep")
            plot.titleSize = 15
            plot.yDomain = Self.errorPercentDomain
            plot.draw(x: Double(index) * 500, y: 0, width: 500, height: canvas.height, on: &canvas)
        }
        return canvas
    }

    /// `training_curves`: per normalization, test error and training error vs epoch (the GN paper's Figure 4; the
    /// losses are in each run's `metrics.jsonl`), one line per run coloured by
    /// normalization batch (dashed: unfinished).
    func trainingCurvesCanvas() -> PlotCanvas {
        let withEpochs = runs.filter { !$0.epochs.isEmpty }
        let keys = table.rows.map(\.key).filter { key in withEpochs.contains { $0.seriesKey == key } }
        let perRow = max(1, min(3, keys.count))
        let panelWidth = 320.0, panelHeight = 210.0, headerHeight = 78.0
        let blockRows = max(1, (keys.count + perRow - 1) / perRow)
        var canvas = PlotCanvas(
            width: 16 + Double(perRow) * panelWidth,
            height: headerHeight + Double(blockRows) * (2 * panelHeight + 16))
        canvas.add(
            .text(
                "Training curves: test error and training error per epoch", at: PlotPoint(x: 16, y: 26),
                size: 16, color: .black, anchor: .start, bold: true, vertical: false))
        // Colour key: one swatch per normalization batch column, plus reused runs.
        let columns = table.columns
        var keyItems = columns.enumerated().map { ("\($1)", Self.batchColors[$0 % Self.batchColors.count]) }
        if withEpochs.contains(where: { $0.columns.count > 1 }) { keyItems.append(("one run, all columns", .axis)) }
        var x = 16.0
        let keyY = 54.0
        canvas.add(
            .text(
                "normalization batch:", at: PlotPoint(x: x, y: keyY + 4), size: 12, color: .black,
                anchor: .start, bold: false, vertical: false))
        x += PlotCanvas.textWidth("normalization batch:", size: 12) + 12
        for (label, color) in keyItems {
            canvas.add(
                .line(PlotPoint(x: x, y: keyY), PlotPoint(x: x + 22, y: keyY), PlotStroke(color: color, width: 2.5)))
            canvas.add(
                .text(
                    label, at: PlotPoint(x: x + 28, y: keyY + 4), size: 12, color: .black, anchor: .start,
                    bold: false, vertical: false))
            x += 28 + PlotCanvas.textWidth(label, size: 12) + 18
        }
        canvas.add(
            .text(
                "dashed: unfinished run", at: PlotPoint(x: x + 10, y: keyY + 4), size: 12, color: .muted,
                anchor: .start, bold: false, vertical: false))
        if keys.isEmpty {
            canvas.add(
                .text(
                    "no epochs recorded yet", at: PlotPoint(x: canvas.width / 2, y: headerHeight + panelHeight),
                    size: 12, color: .muted, anchor: .middle, bold: false, vertical: false))
        }
        for (index, key) in keys.enumerated() {
            let bx = 8 + Double(index % perRow) * panelWidth
            let by = headerHeight + Double(index / perRow) * (2 * panelHeight + 16)
            let keyRuns = withEpochs.filter { $0.seriesKey == key }
            // Epochs counted from 1, as the progress lines and tables do (`EpochMetrics.epoch` counts from 0); a
            // damaged record's epoch of Int.max does not overflow.
            let maxEpoch = min(keyRuns.flatMap { $0.epochs.map(\.epoch) }.max() ?? 0, Int.max - 1) + 1
            let step = max(1, Int((Double(maxEpoch) / 6).rounded(.up)))
            let ticks = stride(from: step == 1 ? 1 : step, through: maxEpoch, by: step).map { (Double($0), "\($0)") }
            func series(_ value: (EpochMetrics) -> Double) -> [PlotSeries] {
                keyRuns.map { run in
                    let color =
                        run.columns.count > 1
                        ? PlotColor.axis
                        : Self.batchColors[(columns.firstIndex(of: run.columns[0]) ?? 0) % Self.batchColors.count]
                    return PlotSeries(
                        name: run.runName, color: color, marker: .circle, dashed: run.status != .finished,
                        points: run.epochs.map { (Double($0.epoch) + 1, value($0), nil) })
                }
            }
            var errorPlot = LinePlot(
                title: "\(key.label): test error", xLabel: "epoch", yLabel: "test error (%)",
                xTicks: ticks, series: series { $0.testError * 100 }, showLegend: false)
            errorPlot.yDomain = Self.errorPercentDomain
            errorPlot.fontSize = 11; errorPlot.titleSize = 13; errorPlot.markerRadius = 3; errorPlot.lineWidth = 1.5
            errorPlot.draw(x: bx, y: by, width: panelWidth, height: panelHeight, on: &canvas)
            var trainPlot = LinePlot(
                title: "\(key.label): training error", xLabel: "epoch", yLabel: "training error (%)",
                xTicks: ticks, series: series { $0.trainError * 100 }, showLegend: false)
            trainPlot.yDomain = Self.errorPercentDomain
            trainPlot.fontSize = 11; trainPlot.titleSize = 13; trainPlot.markerRadius = 3; trainPlot.lineWidth = 1.5
            trainPlot.draw(x: bx, y: by + panelHeight, width: panelWidth, height: panelHeight, on: &canvas)
        }
        return canvas
    }
}
