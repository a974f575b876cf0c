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

    /// The PNG bytes of the canvas at its own size in pixels.
    static func render(_ canvas: PlotCanvas) -> Data {
        var raster = Raster(
            width: Int(canvas.width.rounded(.up)) * supersample,
            height: Int(canvas.height.rounded(.up)) * supersample)
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

/// An RGB pixel buffer (white at creation) with the few fill operations the plots need.
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
        guard points.count >= 3 else { return }
        let minY = max(0, Int(floor(points.map(\.y).min()!))), maxY = min(height - 1, Int(ceil(points.map(\.y).max()!)))
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
                let x0 = max(0, Int(ceil(xs[k] - 0.5))), x1 = min(width - 1, Int(floor(xs[k + 1] - 0.5)))
                if x0 <= x1 { for x in x0...x1 { set(x, y, color) } }
                k += 2
            }
        }
    }

    /// Fills the pixels whose centres lie between two radii (inner < 0: a disc).
    mutating func fillRing(_ c: PlotPoint, inner: Double, outer: Double, _ color: PlotColor) {
        let x0 = max(0, Int(floor(c.x - outer))), x1 = min(width - 1, Int(ceil(c.x + outer)))
        let y0 = max(0, Int(floor(c.y - outer))), y1 = min(height - 1, Int(ceil(c.y + outer)))
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
            guard length > 0 else { continue }
            if dash.isEmpty {
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
        let ax = Int(at.x.rounded()), ay = Int(at.y.rounded()), k = Int(s)
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

    // Glyphs of the X11 misc-fixed fonts 6x13 and 9x15B (public domain: "Public domain font. Share and enjoy."):
    // ASCII 32…126 and ± − × † Δ … · — –.
    static let regular = BitmapFont(
        width: 6, ascent: 11, descent: 2,
        glyphs: [
            0x20: "00000000000000000000000000", 0x21: "00002020202020202000200000", 0x22: "00005050500000000000000000",
            0x23: "0000005050F850F85050000000", 0x24: "00002078A0A0702828F0200000", 0x25: "000048A85010204050A8900000",
            0x26: "00000040A0A040A09890680000", 0x27: "00002020200000000000000000", 0x28: "00102020404040404020201000",
            0x29: "00402020101010101020204000", 0x2A: "000020A870A820000000000000", 0x2B: "000000002020F8202000000000",
            0x2C: "00000000000000000030204000", 0x2D: "000000000000F8000000000000", 0x2E: "00000000000000000020702000",
            0x2F: "00000808101020404080800000", 0x30: "00002050888888888850200000", 0x31: "00002060A02020202020F80000",
            0x32: "00007088880810204080F80000", 0x33: "0000F808102070080888700000", 0x34: "0000101030505090F810100000",
            0x35: "0000F88080B0C8080888700000", 0x36: "000070888080F0888888700000", 0x37: "0000F808101020204040400000",
            0x38: "00007088888870888888700000", 0x39: "00007088888878080888700000", 0x3A: "00000000207020000020702000",
            0x3B: "00000000207020000030204000", 0x3C: "00000810204080402010080000", 0x3D: "0000000000F80000F800000000",
            0x3E: "00008040201008102040800000", 0x3F: "00007088880810202000200000", 0x40: "000070888898A8A8B080780000",
            0x41: "00002050888888F88888880000", 0x42: "0000F048484870484848F00000", 0x43: "00007088808080808088700000",
            0x44: "0000F048484848484848F00000", 0x45: "0000F8808080F0808080F80000", 0x46: "0000F8808080F0808080800000",
            0x47: "00007088808080988888700000", 0x48: "000088888888F8888888880000", 0x49: "00007020202020202020700000",
            0x4A: "00003810101010101090600000", 0x4B: "0000888890A0C0A09088880000", 0x4C: "00008080808080808080F80000",
            0x4D: "00008888D8A8A8888888880000", 0x4E: "000088C8C8A8A8989888880000", 0x4F: "00007088888888888888700000",
            0x50: "0000F0888888F0808080800000", 0x51: "000070888888888888A8700800", 0x52: "0000F0888888F0A09088880000",
            0x53: "00007088808070080888700000", 0x54: "0000F820202020202020200000", 0x55: "00008888888888888888700000",
            0x56: "00008888888850505020200000", 0x57: "000088888888A8A8A8A8500000", 0x58: "00008888505020505088880000",
            0x59: "00008888505020202020200000", 0x5A: "0000F808101020404080F80000", 0x5B: "00704040404040404040407000",
            0x5C: "00008080404020101008080000", 0x5D: "00701010101010101010107000", 0x5E: "00002050880000000000000000",
            0x5F: "0000000000000000000000F800", 0x60: "00201000000000000000000000", 0x61: "00000000007008788898680000",
            0x62: "0000808080F088888888F00000", 0x63: "00000000007088808088700000", 0x64: "00000808087888888888780000",
            0x65: "00000000007088F88088700000", 0x66: "000030484040F0404040400000", 0x67: "00000000007088888878088870",
            0x68: "0000808080B0C8888888880000", 0x69: "00000020006020202020700000", 0x6A: "00000010003010101010909060",
            0x6B: "000080808090A0C0A090880000", 0x6C: "00006020202020202020700000", 0x6D: "0000000000D0A8A8A8A8880000",
            0x6E: "0000000000B0C8888888880000", 0x6F: "00000000007088888888700000", 0x70: "0000000000F0888888F0808080",
            0x71: "00000000007888888878080808", 0x72: "0000000000B0C8808080800000", 0x73: "00000000007088601088700000",
            0x74: "0000004040F040404048300000", 0x75: "00000000008888888898680000", 0x76: "00000000008888885050200000",
            0x77: "00000000008888A8A8A8500000", 0x78: "00000000008850202050880000", 0x79: "00000000008888889868088870",
            0x7A: "0000000000F810204080F80000", 0x7B: "001820202020C0202020201800", 0x7C: "00002020202020202020200000",
            0x7D: "00C0202020201820202020C000", 0x7E: "000048A8900000000000000000", 0xB1: "0000002020F8202000F8000000",
            0x2212: "000000000000F8000000000000", 0xD7: "00000000008850205088000000",
            0x2020: "00002020F82020202020200000",
            0x394: "00002020505050888888F80000", 0x2026: "00000000000000000000A80000",
            0xB7: "00000000000030000000000000",
            0x2014: "000000000000FC000000000000", 0x2013: "000000000000F8000000000000",
        ])
    static let bold = BitmapFont(
        width: 9, ascent: 12, descent: 3,
        glyphs: [
            0x20: "000000000000000000000000000000000000000000000000000000000000",
            0x21: "000000001800180018001800180018001800180000001800000000000000",
            0x22: "000000003600360036000000000000000000000000000000000000000000",
            0x23: "000000000000360036007F00360036007F00360036000000000000000000",
            0x24: "0000000008003E006B00680078003E000F000B006B003E00080000000000",
            0x25: "000000004300E600E6004C0018001800320067006700C200000000000000",
            0x26: "0000000038006C006C00780030007900CF00C600CE007B00000000000000",
            0x27: "000000001800180018001800000000000000000000000000000000000000",
            0x28: "000006000C00180018003000300030003000180018000C00060000000000",
            0x29: "0000300018000C000C0006000600060006000C000C001800300000000000",
            0x2A: "0000000000000000000036001C007F001C00360000000000000000000000",
            0x2B: "0000000000000000180018001800FF001800180018000000000000000000",
            0x2C: "00000000000000000000000000000000000000001C001C000C000C001800",
            0x2D: "0000000000000000000000000000FF000000000000000000000000000000",
            0x2E: "000000000000000000000000000000000000000018003C00180000000000",
            0x2F: "000000000300060006000C0018001800300060006000C000000000000000",
            0x30: "0000000018003C006600C300C300C300C30066003C001800000000000000",
            0x31: "000000001800380078001800180018001800180018007E00000000000000",
            0x32: "000000003C006600C300030006000C00180030006000FF00000000000000",
            0x33: "000000007C00C600030006001C00060003000300C6007C00000000000000",
            0x34: "0000000006000E001E0036006600C600FF00060006000600000000000000",
            0x35: "00000000FE00C000C000DC00E60003000300C30066003C00000000000000",
            0x36: "000000003C006600C200C000DC00E600C300C30066003C00000000000000",
            0x37: "00000000FF000300030006000C000C001800180018001800000000000000",
            0x38: "000000003C006600C30066003C006600C300C30066003C00000000000000",
            0x39: "000000003C006600C300C30067003B000300430066003C00000000000000",
            0x3A: "0000000000000000000018003C0018000000000018003C00180000000000",
            0x3B: "0000000000000000000018003C001800000000001C001C000C000C001800",
            0x3C: "0000000006000C001800300060006000300018000C000600000000000000",
            0x3D: "000000000000000000000000FF0000000000FF0000000000000000000000",
            0x3E: "000000006000300018000C00060006000C00180030006000000000000000",
            0x3F: "000000003E0063006300030006000C001800000018001800000000000000",
            0x40: "000000003C006600C300CF00DB00DB00CE00C00063003E00000000000000",
            0x41: "0000000018003C006600C300C300C300FF00C300C300C300000000000000",
            0x42: "00000000FC00C600C300C600FC00C600C300C300C600FC00000000000000",
            0x43: "000000003E006300C100C000C000C000C000C10063003E00000000000000",
            0x44: "00000000FC00C600C300C300C300C300C300C300C600FC00000000000000",
            0x45: "000000007F006000600060007E0060006000600060007F00000000000000",
            0x46: "00000000FF00C000C000C000FC00C000C000C000C000C000000000000000",
            0x47: "000000003E006300C000C000C000C700C300C30063003E00000000000000",
            0x48: "00000000C300C300C300C300FF00C300C300C300C300C300000000000000",
            0x49: "000000007E00180018001800180018001800180018007E00000000000000",
            0x4A: "000000001E0006000600060006000600060046006C003800000000000000",
            0x4B: "00000000C300C600CC00D800F000F000D800CC00C600C300000000000000",
            0x4C: "000000006000600060006000600060006000600060007F00000000000000",
            0x4D: "00000000C300E700FF00DB00DB00DB00C300C300C300C300000000000000",
            0x4E: "00000000C300E300F300F300DB00DB00CF00C700C700C300000000000000",
            0x4F: "000000003C006600C300C300C300C300C300C30066003C00000000000000",
            0x50: "00000000FE00C300C300C300FE00C000C000C000C000C000000000000000",
            0x51: "000000003C006600C300C300C300C300DB00CF0066003D00000000000000",
            0x52: "00000000FE00C300C300C300FE00F800CC00C600C300C300000000000000",
            0x53: "000000007E00C300C000C0007E00030003000300C3007E00000000000000",
            0x54: "00000000FF00180018001800180018001800180018001800000000000000",
            0x55: "00000000C300C300C300C300C300C300C300C30066003C00000000000000",
            0x56: "00000000C300C300C3006600660066003C003C0018001800000000000000",
            0x57: "00000000C300C300C300C300DB00DB00DB00FF00E700C300000000000000",
            0x58: "00000000C300C30066003C00180018003C006600C300C300000000000000",
            0x59: "00000000C300C30066003C00180018001800180018001800000000000000",
            0x5A: "000000007F000300030006000C0018003000600060007F00000000000000",
            0x5B: "00003E0030003000300030003000300030003000300030003E0000000000",
            0x5C: "00000000C000600060003000180018000C00060006000300000000000000",
            0x5D: "00003E0006000600060006000600060006000600060006003E0000000000",
            0x5E: "0000000018003C0066004200000000000000000000000000000000000000",
            0x5F: "000000000000000000000000000000000000000000000000FF0000000000",
            0x60: "0000300018000C0000000000000000000000000000000000000000000000",
            0x61: "000000000000000000003E00630003007F00C300C7007B00000000000000",
            0x62: "00000000C000C000C000DC00E600C300C300C300E600DC00000000000000",
            0x63: "000000000000000000003E006300C000C000C00063003E00000000000000",
            0x64: "000000000300030003003B006700C300C300C30067003B00000000000000",
            0x65: "000000000000000000003C006600C300FF00C00063003E00000000000000",
            0x66: "000000001E003300330030003000FC003000300030003000000000000000",
            0x67: "000000000000000000007D00C700C600C6007C00C0007E00C300C3007E00",
            0x68: "00000000C000C000C000DC00E600C300C300C300C300C300000000000000",
            0x69: "000000001800180000003800180018001800180018007E00000000000000",
            0x6A: "000000000300030000000F00030003000300030003006300630063003E00",
            0x6B: "0000000060006000600066006C00780078006C0066006300000000000000",
            0x6C: "000000003800180018001800180018001800180018007E00000000000000",
            0x6D: "00000000000000000000B600DB00DB00DB00DB00DB00DB00000000000000",
            0x6E: "00000000000000000000DC00E600C300C300C300C300C300000000000000",
            0x6F: "000000000000000000003C006600C300C300C30066003C00000000000000",
            0x70: "00000000000000000000DC00E600C300C300C300E600DC00C000C000C000",
            0x71: "000000000000000000003B006700C300C300C30067003B00030003000300",
            0x72: "00000000000000000000DE00730060006000600060006000000000000000",
            0x73: "000000000000000000007E00C300C0007E000300C3007E00000000000000",
            0x74: "00000000000030003000FC00300030003000300033001E00000000000000",
            0x75: "00000000000000000000C300C300C300C300C30067003B00000000000000",
            0x76: "00000000000000000000C300C300660066003C003C001800000000000000",
            0x77: "00000000000000000000C300C300DB00DB00DB00FF006600000000000000",
            0x78: "00000000000000000000C30066003C0018003C006600C300000000000000",
            0x79: "00000000000000000000C300C300C300C300C30067003B000300C6007C00",
            0x7A: "000000000000000000007E0006000C001800300060007E00000000000000",
            0x7B: "00000E0018001800180018003000300018001800180018000E0000000000",
            0x7C: "000000001800180018001800180018001800180018001800000000000000",
            0x7D: "000038000C000C000C000C00060006000C000C000C000C00380000000000",
            0x7E: "000000007300DB00CE000000000000000000000000000000000000000000",
            0xB1: "00000000180018001800FF00FF00180018001800FF00FF00000000000000",
            0x2212: "0000000000000000000000000000FF000000000000000000000000000000",
            0xD7: "00000000000000004100630036001C001C00360063004100000000000000",
            0x2020: "000018003C0018005A00FF005A0018003C00180018001800180018000000",
            0x394: "00000000180018003C003C00660066006600C300C300FF00000000000000",
            0x2026: "0000000000000000000000000000000000000000DB00DB00000000000000",
            0xB7: "00000000000000000000000008001C000800000000000000000000000000",
            0x2014: "0000000000000000000000000000FF800000000000000000000000000000",
            0x2013: "0000000000000000000000000000FF000000000000000000000000000000",
        ])
}
