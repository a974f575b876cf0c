import CZlib
import Foundation
import NormKitTraining

/// Rasterizes a ``PlotCanvas`` (the same scene the SVG is written from) and encodes it as an RGB PNG through zlib.
///
/// Shapes are filled at pixel centres on a 2× supersampled buffer that is box-filtered down (cheap anti-aliasing);
/// text uses the public-domain X11 `misc-fixed` bitmap fonts (6×13 and 9×15 bold), so the PNG needs no font files.
enum PNGPlot {
    /// Supersampling factor per axis.
    static let supersample = 2

    /// Largest side of a rendered PNG in pixels.
    static let maxSide = 16_384

    /// The PNG bytes of the canvas at its own size in pixels (at most ``maxSide`` a side).
    static func render(_ canvas: PlotCanvas) -> Data {
        var raster = Raster(
            width: clampedInt(canvas.width.rounded(.up), 1, maxSide) * supersample,
            height: clampedInt(canvas.height.rounded(.up), 1, maxSide) * supersample)
        let s = Double(supersample)
        for shape in canvas.shapes { raster.draw(shape, scale: s) }
        return encode(raster.downsampled(by: supersample))
    }

    /// PNG (colour type 2, 8 bits, no interlace) of an RGB raster.
    static func encode(_ raster: Raster) -> Data {
        var scanlines = [UInt8]()
        scanlines.reserveCapacity((raster.width * 3 + 1) * raster.height)
        for y in 0..<raster.height {
            scanlines.append(0)  // filter: none
            scanlines.append(contentsOf: raster.pixels[(y * raster.width * 3)..<((y + 1) * raster.width * 3)])
        }
        var png = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var header = [UInt8]()
        header += bigEndian(UInt32(raster.width)) + bigEndian(UInt32(raster.height))
        header += [8, 2, 0, 0, 0]
        png += chunk("IHDR", header)
        png += chunk("IDAT", deflate(scanlines))
        png += chunk("IEND", [])
        return png
    }

    private static func deflate(_ bytes: [UInt8]) -> [UInt8] {
        var length = compressBound(uLong(bytes.count))
        var out = [UInt8](repeating: 0, count: Int(length))
        let status = bytes.withUnsafeBufferPointer { src in
            compress2(&out, &length, src.baseAddress, uLong(bytes.count), 9)
        }
        // compress2 only fails for lack of memory or buffer space, which compressBound rules out.
        precondition(status == Z_OK, "zlib compress2 failed with status \(status)")
        return Array(out.prefix(Int(length)))
    }

    private static func chunk(_ type: String, _ data: [UInt8]) -> Data {
        let body = Array(type.utf8) + data
        let crc = body.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, uInt($0.count))) }
        return Data(bigEndian(UInt32(data.count)) + body + bigEndian(crc))
    }

    private static func bigEndian(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)]
    }
}

/// `Int(v)` clamped to `lo...hi` (NaN: `lo`), for pixel coordinates: never traps on a value that is not finite
/// or too large for `Int`.
func clampedInt(_ v: Double, _ lo: Int, _ hi: Int) -> Int {
    guard !v.isNaN else { return lo }
    if v <= Double(lo) { return lo }
    if v >= Double(hi) { return hi }
    return Int(v)
}

/// An RGB pixel buffer (white at creation) with the few fill operations the plots need. Shapes with coordinates
/// that are not finite are skipped, and every coordinate is clamped before it becomes a pixel index, so no scene
/// can make the rasterizer trap.
struct Raster {
    let width: Int
    let height: Int
    var pixels: [UInt8]

    init(width: Int, height: Int) {
        self.width = width; self.height = height
        pixels = [UInt8](repeating: 255, count: width * height * 3)
    }

    /// Sets one pixel (ignored outside the buffer).
    mutating func set(_ x: Int, _ y: Int, _ c: PlotColor) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = (y * width + x) * 3
        pixels[i] = c.r; pixels[i + 1] = c.g; pixels[i + 2] = c.b
    }

    /// Draws one shape, its coordinates multiplied by `scale`.
    mutating func draw(_ shape: PlotShape, scale s: Double) {
        func p(_ q: PlotPoint) -> PlotPoint { PlotPoint(x: q.x * s, y: q.y * s) }
        switch shape {
        case .line(let a, let b, let stroke):
            strokePath([p(a), p(b)], stroke, scale: s)
        case .polyline(let points, let stroke):
            strokePath(points.map(p), stroke, scale: s)
        case .rect(let x, let y, let w, let h, let fill, let stroke):
            let corners = [
                PlotPoint(x: x, y: y), PlotPoint(x: x + w, y: y), PlotPoint(x: x + w, y: y + h),
                PlotPoint(x: x, y: y + h),
            ].map(p)
            if let fill { fillPolygon(corners, fill) }
            if let stroke { strokePath(corners + [corners[0]], stroke, scale: s) }
        case .circle(let center, let radius, let fill, let stroke):
            let c = p(center), r = radius * s
            if let fill { fillRing(c, inner: -1, outer: r, fill) }
            if let stroke {
                let half = stroke.width * s / 2
                fillRing(c, inner: r - half, outer: r + half, stroke.color)
            }
        case .polygon(let points, let fill, let stroke):
            let q = points.map(p)
            if let fill { fillPolygon(q, fill) }
            if let stroke, let first = q.first { strokePath(q + [first], stroke, scale: s) }
        case .text(let text, let at, let size, let color, let anchor, let bold, let vertical):
            drawText(text, at: at, size: size, color: color, anchor: anchor, bold: bold, vertical: vertical, scale: s)
        }
    }

    /// Fills a polygon (even-odd rule) sampling pixel centres.
    mutating func fillPolygon(_ points: [PlotPoint], _ color: PlotColor) {
        guard points.count >= 3, points.allSatisfy({ $0.x.isFinite && $0.y.isFinite }) else { return }
        let minY = clampedInt(floor(points.map(\.y).min()!), 0, height)
        let maxY = clampedInt(ceil(points.map(\.y).max()!), -1, height - 1)
        guard minY <= maxY else { return }
        for y in minY...maxY {
            let yc = Double(y) + 0.5
            var xs: [Double] = []
            for i in points.indices {
                let a = points[i], b = points[(i + 1) % points.count]
                if (a.y <= yc) != (b.y <= yc) { xs.append(a.x + (yc - a.y) / (b.y - a.y) * (b.x - a.x)) }
            }
            xs.sort()
            var k = 0
            while k + 1 < xs.count {
                let x0 = clampedInt(ceil(xs[k] - 0.5), 0, width), x1 = clampedInt(floor(xs[k + 1] - 0.5), -1, width - 1)
                if x0 <= x1 { for x in x0...x1 { set(x, y, color) } }
                k += 2
            }
        }
    }

    /// Fills the pixels whose centres lie between two radii (inner < 0: a disc).
    mutating func fillRing(_ c: PlotPoint, inner: Double, outer: Double, _ color: PlotColor) {
        guard c.x.isFinite, c.y.isFinite, outer.isFinite, !inner.isNaN else { return }
        let x0 = clampedInt(floor(c.x - outer), 0, width), x1 = clampedInt(ceil(c.x + outer), -1, width - 1)
        let y0 = clampedInt(floor(c.y - outer), 0, height), y1 = clampedInt(ceil(c.y + outer), -1, height - 1)
        guard x0 <= x1, y0 <= y1 else { return }
        let inner2 = inner < 0 ? -1 : inner * inner, outer2 = outer * outer
        for y in y0...y1 {
            for x in x0...x1 {
                let dx = Double(x) + 0.5 - c.x, dy = Double(y) + 0.5 - c.y, d2 = dx * dx + dy * dy
                if d2 <= outer2 && d2 >= inner2 { set(x, y, color) }
            }
        }
    }

    /// Strokes a path as quads per (dash) segment with round joins.
    mutating func strokePath(_ points: [PlotPoint], _ stroke: PlotStroke, scale s: Double) {
        let half = max(stroke.width * s, 1) / 2
        let dash = stroke.dash.map { $0 * s }
        var phase = 0.0  // distance along the dash pattern
        for i in 0..<max(points.count - 1, 0) {
            let a = points[i], b = points[i + 1]
            let length = hypot(b.x - a.x, b.y - a.y)
            guard length > 0, length.isFinite else { continue }
            // A dash pattern over a segment far longer than the raster: drawn solid (bounded work).
            if dash.isEmpty || length > Double(4 * (width + height)) {
                segment(a, b, half: half, stroke.color)
                if i > 0 { fillRing(a, inner: -1, outer: half, stroke.color) }
                continue
            }
            var t = 0.0
            while t < length {
                let period = dash.reduce(0, +)
                var offset = phase.truncatingRemainder(dividingBy: period), index = 0
                while offset >= dash[index] { offset -= dash[index]; index = (index + 1) % dash.count }
                let run = min(dash[index] - offset, length - t)
                if index % 2 == 0 {
                    let u0 = t / length, u1 = (t + run) / length
                    segment(
                        PlotPoint(x: a.x + (b.x - a.x) * u0, y: a.y + (b.y - a.y) * u0),
                        PlotPoint(x: a.x + (b.x - a.x) * u1, y: a.y + (b.y - a.y) * u1), half: half, stroke.color)
                }
                t += run; phase += run
            }
        }
    }

    private mutating func segment(_ a: PlotPoint, _ b: PlotPoint, half: Double, _ color: PlotColor) {
        let length = hypot(b.x - a.x, b.y - a.y)
        guard length > 0 else { return }
        let nx = -(b.y - a.y) / length * half, ny = (b.x - a.x) / length * half
        fillPolygon(
            [
                PlotPoint(x: a.x + nx, y: a.y + ny), PlotPoint(x: b.x + nx, y: b.y + ny),
                PlotPoint(x: b.x - nx, y: b.y - ny), PlotPoint(x: a.x - nx, y: a.y - ny),
            ], color)
    }

    /// Draws text with a bitmap font: 6×13 below 14 px (bold by double striking), 9×15 bold from 14 px.
    mutating func drawText(
        _ text: String, at: PlotPoint, size: Double, color: PlotColor, anchor: TextAnchor,
        bold: Bool, vertical: Bool, scale s: Double
    ) {
        let font = size >= 14 ? BitmapFont.bold : BitmapFont.regular
        let strikes = bold && size < 14 ? 2 : 1
        let scalars = Array(text.unicodeScalars)
        let width = scalars.count * font.width + strikes - 1
        let start: Int
        switch anchor {
        case .start: start = 0
        case .middle: start = -width / 2
        case .end: start = -width
        }
        let limit = 4 * (width + height)
        let ax = clampedInt(at.x.rounded(), -limit, limit), ay = clampedInt(at.y.rounded(), -limit, limit)
        let k = clampedInt(s, 1, 16)
        for (index, scalar) in scalars.enumerated() {
            let rows = font.rows(scalar)
            for row in 0..<(font.ascent + font.descent) {
                for col in 0..<font.width where rows[row] & (1 << (font.rowBits - 1 - col)) != 0 {
                    for strike in 0..<strikes {
                        let u = start + index * font.width + col + strike, v = row - font.ascent
                        let (x, y) = vertical ? (ax + v, ay - u) : (ax + u, ay + v)
                        for dy in 0..<k { for dx in 0..<k { set(x * k + dx, y * k + dy, color) } }
                    }
                }
            }
        }
    }

    /// Box-filters the buffer down by `factor` per axis.
    func downsampled(by factor: Int) -> Raster {
        guard factor > 1 else { return self }
        var out = Raster(width: width / factor, height: height / factor)
        let n = factor * factor
        for y in 0..<out.height {
            for x in 0..<out.width {
                for c in 0..<3 {
                    var sum = 0
                    for dy in 0..<factor {
                        for dx in 0..<factor {
                            sum += Int(pixels[((y * factor + dy) * width + x * factor + dx) * 3 + c])
                        }
                    }
                    out.pixels[(y * out.width + x) * 3 + c] = UInt8((sum + n / 2) / n)
                }
            }
        }
        return out
    }
}

/// A fixed-width bitmap font: per glyph, one hex word per pixel row, top to bottom, leftmost pixel in the top bit.
struct BitmapFont {
    let width: Int
    let ascent: Int
    let descent: Int
    let glyphs: [UInt32: String]

    /// Bits per row in the hex encoding (whole bytes).
    var rowBits: Int { (width + 7) / 8 * 8 }

    /// The rows of a character's glyph (`?` for characters the font lacks).
    func rows(_ scalar: Unicode.Scalar) -> [Int] {
        let hex = glyphs[scalar.value] ?? glyphs[0x3F]!
        let digits = rowBits / 4
        var rows: [Int] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: digits)
            rows.append(Int(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return rows
    }
}
