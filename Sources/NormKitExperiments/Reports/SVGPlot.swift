import Foundation
import NormKitTraining

// A small vector scene (lines, shapes, text) that the report's plots are laid out into, and its SVG writer.
// `PNGPlot` rasterizes the same scene, so the SVG and the PNG of a plot are drawn by one layout.

/// An sRGB colour.
struct PlotColor: Equatable {
    var r: UInt8, g: UInt8, b: UInt8

    /// `#rrggbb`.
    init(hex: String) {
        let v = UInt32(hex.dropFirst(), radix: 16) ?? 0
        r = UInt8(v >> 16 & 0xFF); g = UInt8(v >> 8 & 0xFF); b = UInt8(v & 0xFF)
    }

    var hex: String { String(format: "#%02x%02x%02x", r, g, b) }

    static let black = PlotColor(hex: "#000000"), white = PlotColor(hex: "#ffffff")
    static let axis = PlotColor(hex: "#333333"), grid = PlotColor(hex: "#e3e3e3"), muted = PlotColor(hex: "#666666")
    /// Tableau 10.
    static let palette = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
        "#7f7f7f", "#bcbd22", "#17becf",
    ].map(PlotColor.init(hex:))
}

/// A point in canvas pixels (y down).
struct PlotPoint: Equatable {
    var x: Double, y: Double
}

/// How a line is stroked.
struct PlotStroke: Equatable {
    var color: PlotColor
    var width: Double = 1
    /// Dash and gap lengths; empty = solid.
    var dash: [Double] = []
}

/// Horizontal text alignment at the anchor point.
enum TextAnchor: String {
    case start, middle, end
}

/// One drawing operation.
enum PlotShape {
    case line(PlotPoint, PlotPoint, PlotStroke)
    case polyline([PlotPoint], PlotStroke)
    case rect(x: Double, y: Double, width: Double, height: Double, fill: PlotColor?, stroke: PlotStroke?)
    case circle(center: PlotPoint, radius: Double, fill: PlotColor?, stroke: PlotStroke?)
    case polygon([PlotPoint], fill: PlotColor?, stroke: PlotStroke?)
    /// Text with its baseline at `at.y`; `vertical` rotates it −90° (reading bottom to top) around `at`.
    case text(String, at: PlotPoint, size: Double, color: PlotColor, anchor: TextAnchor, bold: Bool, vertical: Bool)
}

/// A drawing: a white page and shapes in painting order.
struct PlotCanvas {
    var width: Double
    var height: Double
    var shapes: [PlotShape] = []

    mutating func add(_ shape: PlotShape) { shapes.append(shape) }

    /// Approximate advance of a text run (both renderers use about 0.6 em per character).
    static func textWidth(_ text: String, size: Double) -> Double { Double(text.count) * size * 0.6 }
}

/// Marker shapes, one per series.
enum MarkerShape: CaseIterable {
    case circle, square, triangle, diamond, triangleDown, hexagon

    /// Draws the marker centred at `p` with half-size `r`.
    func shape(at p: PlotPoint, radius r: Double, fill: PlotColor, stroke: PlotStroke?) -> PlotShape {
        func poly(_ pts: [(Double, Double)]) -> PlotShape {
            .polygon(pts.map { PlotPoint(x: p.x + $0.0 * r, y: p.y + $0.1 * r) }, fill: fill, stroke: stroke)
        }
        switch self {
        case .circle: return .circle(center: p, radius: r, fill: fill, stroke: stroke)
        case .square: return poly([(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)])
        case .triangle: return poly([(0, -1.2), (1.1, 0.9), (-1.1, 0.9)])
        case .diamond: return poly([(0, -1.3), (1.1, 0), (0, 1.3), (-1.1, 0)])
        case .triangleDown: return poly([(0, 1.2), (1.1, -0.9), (-1.1, -0.9)])
        case .hexagon:
            return poly(
                (0..<6).map { k in
                    let a = Double(k) * .pi / 3; return (cos(a) * 1.1, sin(a) * 1.1)
                })
        }
    }
}

/// One line of a ``LinePlot``.
struct PlotSeries {
    var name: String
    var color: PlotColor
    var marker: MarkerShape
    var dashed = false
    /// (x in axis units, y, ± error bar half-length or nil), in drawing order.
    var points: [(x: Double, y: Double, error: Double?)]
}

/// A line plot with markers, error bars, gridlines, axis labels, a title and a legend to the right of the axes.
struct LinePlot {
    var title: String
    var xLabel: String
    var yLabel: String
    /// Tick positions (axis units) and labels; they also set the x range.
    var xTicks: [(value: Double, label: String)]
    /// Draw larger x values on the left (the papers' batch-size axis).
    var xReversed = false
    var series: [PlotSeries]
    var showLegend = true
    /// Spread series that share x values apart by this many pixels so error bars do not overlap.
    var dodge: Double = 0
    /// Message drawn in the axes when no series has a point.
    var emptyMessage = "no results yet"
    /// The y values that can be real (test error in %: 0...100); points outside it, like points that are not
    /// finite, are left out of the plot and counted in a note drawn in the axes. Nil: any finite value.
    var yDomain: ClosedRange<Double>?
    var fontSize: Double = 12
    var titleSize: Double = 16
    var markerRadius: Double = 4.5
    var lineWidth: Double = 2

    /// The series with only the points that can be drawn (finite x and y, y in ``yDomain``; an error bar only
    /// when finite, positive and in range at both ends), and how many points were left out.
    func drawableSeries() -> (series: [PlotSeries], omitted: Int) {
        var omitted = 0
        func inDomain(_ y: Double) -> Bool { y.isFinite && (yDomain?.contains(y) ?? (abs(y) <= Self.largestValue)) }
        let kept = series.map { s -> PlotSeries in
            var s = s
            s.points = s.points.compactMap { p in
                guard p.x.isFinite, abs(p.x) <= Self.largestValue, inDomain(p.y) else {
                    omitted += 1
                    return nil
                }
                let error = p.error.flatMap { e in e > 0 && inDomain(p.y - e) && inDomain(p.y + e) ? e : nil }
                return (p.x, p.y, error)
            }
            return s
        }
        return (kept, omitted)
    }

    /// Largest magnitude of a coordinate the plot lays out (far beyond any real value: the axis arithmetic stays
    /// finite).
    static let largestValue = 1e300

    /// Lays the plot out inside a frame of the canvas. Points that are not finite or outside ``yDomain`` are left
    /// out (``drawableSeries()``), with a note in the axes saying how many.
    func draw(x frameX: Double, y frameY: Double, width: Double, height: Double, on canvas: inout PlotCanvas) {
        let (series, omitted) = drawableSeries()
        let legendEntries = showLegend ? series.filter { !$0.points.isEmpty } : []
        let legendWidth =
            legendEntries.isEmpty
            ? 0
            : 44 + (legendEntries.map { PlotCanvas.textWidth($0.name, size: fontSize) }.max() ?? 0) + 14
        let left = frameX + fontSize * 5.2, right = frameX + width - 12 - (legendWidth > 0 ? legendWidth + 14 : 0)
        let top = frameY + (title.isEmpty ? 10 : titleSize * 2.2)
        let bottom = frameY + height - fontSize * 3.9
        let plotWidth = max(right - left, 10), plotHeight = max(bottom - top, 10)

        // Ranges.
        let xs = (xTicks.map(\.value) + series.flatMap { $0.points.map(\.x) }).filter {
            $0.isFinite && abs($0) <= Self.largestValue
        }
        var xMin = xs.min() ?? 0, xMax = xs.max() ?? 1
        if xMax - xMin < 1e-9 { xMin -= 1; xMax += 1 }
        let xPad = (xMax - xMin) * 0.07
        xMin -= xPad; xMax += xPad
        let ys = series.flatMap { $0.points.flatMap { [$0.y - ($0.error ?? 0), $0.y + ($0.error ?? 0)] } }
        let yTicks = ys.isEmpty ? [0, 0.25, 0.5, 0.75, 1] : Self.niceTicks(min: ys.min()!, max: ys.max()!)
        let yMin = yTicks.first!, yMax = yTicks.last!
        // Positions are clamped to the axes box: every drawn value is inside the ranges, so this only guards the
        // arithmetic (a coordinate far outside the canvas would cost the rasterizer time, or an Int conversion).
        func clamp(_ v: Double, _ lo: Double, _ hi: Double) -> Double { v.isNaN ? lo : Swift.min(Swift.max(v, lo), hi) }
        func px(_ x: Double) -> Double {
            let t = (x - xMin) / (xMax - xMin)
            return clamp(left + (xReversed ? 1 - t : t) * plotWidth, left, left + plotWidth)
        }
        func py(_ y: Double) -> Double { clamp(bottom - (y - yMin) / (yMax - yMin) * plotHeight, top, bottom) }

        // Grid, axes box, ticks and labels.
        canvas.add(.rect(x: left, y: top, width: plotWidth, height: plotHeight, fill: .white, stroke: nil))
        let decimals = Self.decimals(step: yTicks.count > 1 ? yTicks[1] - yTicks[0] : 1)
        for tick in yTicks {
            let y = py(tick)
            canvas.add(.line(PlotPoint(x: left, y: y), PlotPoint(x: right, y: y), PlotStroke(color: .grid)))
            canvas.add(.line(PlotPoint(x: left - 5, y: y), PlotPoint(x: left, y: y), PlotStroke(color: .axis)))
            canvas.add(
                .text(
                    String(format: "%.\(decimals)f", tick), at: PlotPoint(x: left - 8, y: y + fontSize * 0.35),
                    size: fontSize, color: .axis, anchor: .end, bold: false, vertical: false))
        }
        for tick in xTicks {
            let x = px(tick.value)
            canvas.add(.line(PlotPoint(x: x, y: top), PlotPoint(x: x, y: bottom), PlotStroke(color: .grid)))
            canvas.add(.line(PlotPoint(x: x, y: bottom), PlotPoint(x: x, y: bottom + 5), PlotStroke(color: .axis)))
            canvas.add(
                .text(
                    tick.label, at: PlotPoint(x: x, y: bottom + 7 + fontSize), size: fontSize, color: .axis,
                    anchor: .middle, bold: false, vertical: false))
        }
        canvas.add(
            .rect(
                x: left, y: top, width: plotWidth, height: plotHeight, fill: nil,
                stroke: PlotStroke(color: .axis)))
        canvas.add(
            .text(
                xLabel, at: PlotPoint(x: left + plotWidth / 2, y: bottom + 12 + fontSize * 2.2),
                size: fontSize, color: .black, anchor: .middle, bold: false, vertical: false))
        canvas.add(
            .text(
                yLabel, at: PlotPoint(x: frameX + fontSize * 1.1, y: top + plotHeight / 2), size: fontSize,
                color: .black, anchor: .middle, bold: false, vertical: true))
        if !title.isEmpty {
            canvas.add(
                .text(
                    title, at: PlotPoint(x: left + plotWidth / 2, y: frameY + titleSize * 1.3),
                    size: titleSize, color: .black, anchor: .middle, bold: true, vertical: false))
        }

        // Series: error bars, lines, markers.
        let drawn = series.filter { !$0.points.isEmpty }
        if drawn.isEmpty {
            canvas.add(
                .text(
                    emptyMessage, at: PlotPoint(x: left + plotWidth / 2, y: top + plotHeight / 2),
                    size: fontSize, color: .muted, anchor: .middle, bold: false, vertical: false))
        }
        if omitted > 0 {
            let range = yDomain.map { "outside \(Self.numberText($0.lowerBound))–\(Self.numberText($0.upperBound))" }
            canvas.add(
                .text(
                    "\(omitted) point\(omitted == 1 ? "" : "s") not finite or \(range ?? "too large"): not drawn",
                    at: PlotPoint(x: left + 6, y: top + fontSize * 1.3), size: fontSize * 0.9, color: .muted,
                    anchor: .start, bold: false, vertical: false))
        }
        for (index, s) in drawn.enumerated() {
            let offset = (Double(index) - Double(drawn.count - 1) / 2) * dodge
            let points = s.points.map { PlotPoint(x: px($0.x) + offset, y: py($0.y)) }
            for (p, source) in zip(points, s.points) {
                guard let e = source.error, e > 0 else { continue }
                let stroke = PlotStroke(color: s.color, width: 1.3)
                let y0 = py(source.y - e), y1 = py(source.y + e)
                canvas.add(.line(PlotPoint(x: p.x, y: y0), PlotPoint(x: p.x, y: y1), stroke))
                canvas.add(.line(PlotPoint(x: p.x - 4, y: y0), PlotPoint(x: p.x + 4, y: y0), stroke))
                canvas.add(.line(PlotPoint(x: p.x - 4, y: y1), PlotPoint(x: p.x + 4, y: y1), stroke))
            }
            if points.count > 1 {
                canvas.add(
                    .polyline(points, PlotStroke(color: s.color, width: lineWidth, dash: s.dashed ? [7, 4] : [])))
            }
            for p in points {
                canvas.add(
                    s.marker.shape(at: p, radius: markerRadius, fill: s.color, stroke: PlotStroke(color: .white)))
            }
        }

        // Legend, right of the axes.
        guard !legendEntries.isEmpty else { return }
        let rowHeight = fontSize * 1.7
        let legendX = right + 14, legendY = top
        canvas.add(
            .rect(
                x: legendX, y: legendY, width: legendWidth, height: rowHeight * Double(legendEntries.count) + 10,
                fill: .white, stroke: PlotStroke(color: PlotColor(hex: "#bbbbbb"))))
        for (row, s) in legendEntries.enumerated() {
            let y = legendY + 5 + rowHeight * (Double(row) + 0.5)
            canvas.add(
                .line(
                    PlotPoint(x: legendX + 8, y: y), PlotPoint(x: legendX + 34, y: y),
                    PlotStroke(color: s.color, width: 2, dash: s.dashed ? [5, 3] : [])))
            canvas.add(
                s.marker.shape(
                    at: PlotPoint(x: legendX + 21, y: y), radius: 4.5, fill: s.color,
                    stroke: PlotStroke(color: .white)))
            canvas.add(
                .text(
                    s.name, at: PlotPoint(x: legendX + 42, y: y + fontSize * 0.35), size: fontSize,
                    color: .black, anchor: .start, bold: false, vertical: false))
        }
    }

    /// `100`, `0.5`: a range bound for a note.
    static func numberText(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : "\(v)"
    }

    /// Round tick values (steps of 1, 2 or 5 × 10^k) covering `min…max` with about five intervals (bounds that are
    /// not finite give 0…1; magnitudes are capped at ``largestValue``, so the ticks are always a few finite values).
    static func niceTicks(min lo: Double, max hi: Double, target: Int = 5) -> [Double] {
        var lo = lo, hi = hi
        if !lo.isFinite || !hi.isFinite || lo > hi { lo = 0; hi = 1 }
        lo = Swift.max(lo, -largestValue); hi = Swift.min(hi, largestValue)
        if hi - lo < 1e-9 { let pad = Swift.max(abs(lo) * 0.05, 0.5); lo -= pad; hi += pad }
        let pad = (hi - lo) * 0.06
        lo -= pad; hi += pad
        let raw = (hi - lo) / Double(target)
        let magnitude = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
        let first = floor(lo / step) * step, last = ceil(hi / step) * step
        return stride(from: first, through: last + step * 0.5, by: step).prefix(64).map {
            abs($0) < step * 1e-9 ? 0 : $0
        }
    }

    /// Decimals needed to print ticks spaced `step` apart.
    static func decimals(step: Double) -> Int {
        var digits = 0, s = step
        while digits < 4 && abs(s - s.rounded()) > 1e-6 * max(1, abs(s)) { s *= 10; digits += 1 }
        return digits
    }
}

/// Writes a ``PlotCanvas`` as a self-contained SVG 1.1 document (no scripts, fonts or external references).
enum SVGPlot {
    /// The SVG text.
    static func render(_ canvas: PlotCanvas) -> String {
        let w = num(canvas.width), h = num(canvas.height)
        var out = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="\(w)" height="\(h)" viewBox="0 0 \(w) \(h)" \
            font-family="DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif">
            <rect x="0" y="0" width="\(w)" height="\(h)" fill="#ffffff"/>

            """
        for shape in canvas.shapes { out += element(shape) + "\n" }
        return out + "</svg>\n"
    }

    private static func element(_ shape: PlotShape) -> String {
        switch shape {
        case .line(let a, let b, let stroke):
            return "<line x1=\"\(num(a.x))\" y1=\"\(num(a.y))\" x2=\"\(num(b.x))\" y2=\"\(num(b.y))\"\(attrs(stroke))/>"
        case .polyline(let points, let stroke):
            return "<polyline points=\"\(pointList(points))\" fill=\"none\"\(attrs(stroke)) "
                + "stroke-linejoin=\"round\"/>"
        case .rect(let x, let y, let width, let height, let fill, let stroke):
            return "<rect x=\"\(num(x))\" y=\"\(num(y))\" width=\"\(num(width))\" height=\"\(num(height))\""
                + "\(fillAttr(fill))\(stroke.map(attrs) ?? "")/>"
        case .circle(let center, let radius, let fill, let stroke):
            return "<circle cx=\"\(num(center.x))\" cy=\"\(num(center.y))\" r=\"\(num(radius))\""
                + "\(fillAttr(fill))\(stroke.map(attrs) ?? "")/>"
        case .polygon(let points, let fill, let stroke):
            return "<polygon points=\"\(pointList(points))\"\(fillAttr(fill))\(stroke.map(attrs) ?? "")/>"
        case .text(let text, let at, let size, let color, let anchor, let bold, let vertical):
            var a = "<text x=\"\(num(at.x))\" y=\"\(num(at.y))\" font-size=\"\(num(size))\" fill=\"\(color.hex)\""
            if anchor != .start { a += " text-anchor=\"\(anchor.rawValue)\"" }
            if bold { a += " font-weight=\"bold\"" }
            if vertical { a += " transform=\"rotate(-90 \(num(at.x)) \(num(at.y)))\"" }
            return a + ">\(escape(text))</text>"
        }
    }

    private static func attrs(_ stroke: PlotStroke) -> String {
        var a = " stroke=\"\(stroke.color.hex)\" stroke-width=\"\(num(stroke.width))\""
        if !stroke.dash.isEmpty { a += " stroke-dasharray=\"\(stroke.dash.map(num).joined(separator: " "))\"" }
        return a
    }

    private static func fillAttr(_ fill: PlotColor?) -> String { " fill=\"\(fill?.hex ?? "none")\"" }

    private static func pointList(_ points: [PlotPoint]) -> String {
        points.map { "\(num($0.x)),\(num($0.y))" }.joined(separator: " ")
    }

    /// Two decimals at most, no trailing zeros.
    static func num(_ v: Double) -> String {
        var s = String(format: "%.2f", v)
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s == "-0" ? "0" : s
    }

    /// XML-escapes text content.
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
