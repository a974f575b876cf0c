import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

// What the convolution and layer tests share: the sizes of a test convolution, a convolution with non-trivial
// filters and bias, finite differences and the tolerance assertion of ConvolutionTests and LayerTests.

/// The sizes of one test convolution.
struct ConvSpec: CustomStringConvertible {
    var batch, channels, height, width, filters, kernel, stride, padding: Int
    var outHeight: Int { (height + 2 * padding - kernel) / stride + 1 }
    var outWidth: Int { (width + 2 * padding - kernel) / stride + 1 }
    var outputShape: [Int] { [batch, filters, outHeight, outWidth] }
    var description: String {
        "(\(batch),\(channels),\(height),\(width))→\(filters) k\(kernel) s\(stride) p\(padding)"
    }

    /// Specs from rows of `(batch, channels, height, width, filters, kernel, stride, padding)`.
    static func table(_ rows: [(Int, Int, Int, Int, Int, Int, Int, Int)]) -> [ConvSpec] {
        rows.map {
            ConvSpec(
                batch: $0.0, channels: $0.1, height: $0.2, width: $0.3, filters: $0.4, kernel: $0.5, stride: $0.6,
                padding: $0.7)
        }
    }

    /// A freshly initialised `Conv2d` of these sizes.
    func layer(bias: Bool, centred: Bool = false, rng: inout SeededGenerator) throws -> Conv2d {
        try Conv2d(
            inChannels: channels, outChannels: filters, kernelSize: kernel, stride: stride, padding: padding,
            bias: bias, centred: centred, generator: &rng)
    }

    /// Batch 1…5, channels 1…20 in and out, planes 1…13 with `H + 2p ≥ k`, kernel 1 or 3 (or `kernel`),
    /// stride 1 or 2, padding 0…2.
    static func random(_ rng: inout SeededGenerator, kernel: Int? = nil) -> ConvSpec {
        let k = kernel ?? [1, 3].randomElement(using: &rng)!
        let padding = Int.random(in: 0...2, using: &rng)
        let smallest = max(1, k - 2 * padding)
        return ConvSpec(
            batch: Int.random(in: 1...5, using: &rng), channels: Int.random(in: 1...20, using: &rng),
            height: Int.random(in: smallest...13, using: &rng),
            width: Int.random(in: smallest...13, using: &rng),
            filters: Int.random(in: 1...20, using: &rng), kernel: k,
            stride: Int.random(in: 1...2, using: &rng), padding: padding)
    }
}

/// A convolution of `spec` with non-zero filter means (so centring matters) and a random bias, and a channels-first
/// input.
func makeTestConvolution(
    _ spec: ConvSpec, bias: Bool, centred: Bool, rng: inout SeededGenerator
) throws -> (Conv2d, Tensor) {
    let conv = try spec.layer(bias: bias, centred: centred, rng: &rng)
    conv.weight.value = conv.weight.value.map { $0 + 0.3 }
    if let b = conv.bias { b.value = (0..<b.value.count).map { _ in Float.random(in: -1...1, using: &rng) } }
    let x = Tensor.randomNormal(shape: [spec.batch, spec.channels, spec.height, spec.width], using: &rng)
    return (conv, x)
}

/// Asserts a channels-last training forward of `conv` throws unsupportedLayout (im2col is channels-first only).
func assertRejectsChannelsLast(
    _ conv: Conv2d, into y: inout Tensor, file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertThrowsError(
        try conv.forward(Tensor(zeros: [2, 3, 8, 8], layout: .channelsLast), into: &y, training: true),
        file: file, line: line
    ) {
        XCTAssertEqual(
            $0 as? LayerError, .unsupportedLayout(layer: conv.name, layout: .channelsLast), file: file, line: line)
    }
}

/// The central difference of `loss` in one coordinate, which `write` sets (and finally resets to `value`).
func centralDifference(_ value: Double, h: Double, loss: () -> Double, _ write: (Double) -> Void) -> Double {
    defer { write(value) }
    return centralDifference(h: h) { delta in
        write(value + delta)
        return loss()
    }
}

func doubles(_ values: [Float]) -> [Double] { values.map(Double.init) }

/// `max |a − b| ≤ relative · max(max |b|, 1e-3)`.
func assertClose(
    _ actual: [Float], _ expected: [Double], relative: Double, _ message: String,
    file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertEqual(actual.count, expected.count, message, file: file, line: line)
    guard actual.count == expected.count else { return }
    let scale = max(expected.map(abs).max() ?? 0, 1e-3)
    var worst = 0.0, at = 0
    for i in actual.indices where abs(Double(actual[i]) - expected[i]) > worst {
        worst = abs(Double(actual[i]) - expected[i])
        at = i
    }
    XCTAssertLessThanOrEqual(
        worst / scale, relative,
        "\(message): worst at \(at): \(actual[at]) vs \(expected[at]) (scale \(scale))",
        file: file, line: line)
}
