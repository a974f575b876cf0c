import NormKitTraining
import XCTest

/// Whole-model backward against central finite differences: every layer and the residual wiring together.
final class ModelGradientTests: XCTestCase {
    func loss(_ model: Model, _ x: Tensor, _ labels: [Int]) throws -> Double {
        let ce = SoftmaxCrossEntropy()
        return Double(try ce.forward(logits: try model.forward(x, training: true), labels: labels))
    }

    func checkGradients(
        kind: NormKind, model name: String = "resnet", depth: Int = 8, file: StaticString = #filePath,
        line: UInt = #line
    ) throws {
        var generator = SeededGenerator(seed: 3)
        let settings = NormalizationSettings(kind: kind, groups: 2)
        let model: Model =
            name == "vgg"
            ? try VGG(normalization: settings, widths: [4, 8], generator: &generator)
            : try ResNet(depth: depth, normalization: settings, width: 4, generator: &generator)
        // Give the zero-initialised γ some value so every path carries gradient.
        for p in model.parameters where p.role == .normalizationScale {
            p.value = p.value.map { _ in Float.random(in: 0.5...1.5, using: &generator) }
        }
        let x = Tensor.randomNormal(shape: [4, 1, 8, 8], using: &generator)
        let labels = [1, 3, 0, 2]
        let ce = SoftmaxCrossEntropy()
        _ = try ce.forward(logits: try model.forward(x, training: true), labels: labels)
        var dlogits = Tensor(zeros: [0, 0])
        try ce.backward(into: &dlogits)
        try model.backward(dlogits)
        var checked = 0, worst = 0.0
        for p in model.parameters {
            let analytic = p.gradient
            for _ in 0..<3 {
                let i = Int.random(in: 0..<p.value.count, using: &generator)
                // The float32 forward is only good to ~1e-6 in the loss and ReLU kinks make large steps inexact,
                // so a gradient passes when central differences at one of three step sizes agree with it; a wrong
                // backward disagrees at all of them.
                let original = p.value[i]
                var best = Double.infinity, bestNumeric = 0.0
                for h: Float in [1e-2, 3e-3, 1e-3] {
                    p.value[i] = original + h
                    let plus = try loss(model, x, labels)
                    p.value[i] = original - h
                    let minus = try loss(model, x, labels)
                    p.value[i] = original
                    let numeric = (plus - minus) / Double(2 * h)
                    let error = abs(numeric - Double(analytic[i])) - 0.05 * (abs(numeric) + abs(Double(analytic[i])))
                    if error < best { best = error; bestNumeric = numeric }
                }
                worst = max(worst, best)
                XCTAssertLessThan(
                    best, 5e-4, "\(kind) \(p.name)[\(i)] numeric \(bestNumeric) analytic \(analytic[i])",
                    file: file, line: line)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 20, file: file, line: line)
    }

    func testResNetGradients() throws {
        for kind in [NormKind.bn, .gn, .ln, .in, .brn, .mabn, .frozenBN, .none] { try checkGradients(kind: kind) }
    }

    /// Two blocks per stage: identity-shortcut blocks back to back, whose input gradients reach the block before
    /// as two terms, added inside its residual ReLU's backward pass. (GN only: with BN, 4 images of 2×2 pixels
    /// in the last stage make the loss kink too often for these step sizes.)
    func testResNet14Gradients() throws {
        try checkGradients(kind: .gn, depth: 14)
    }

    func testVGGGradients() throws {
        for kind in [NormKind.none, .gn, .bn] { try checkGradients(kind: kind, model: "vgg") }
    }
}
