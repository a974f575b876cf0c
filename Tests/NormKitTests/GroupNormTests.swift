import NormKit
import XCTest
import _NormKitTestSupport

/// GroupNorm (several G), LayerNorm (`GroupNorm.layerNorm`, G = 1) and InstanceNorm (`GroupNorm.instanceNorm`,
/// G = C), with and without affine, forward and backward, against the float64 reference (spec §1) on random
/// shapes of every spatial rank 0–3 in both layouts, plus finite differences.
final class GroupNormTests: XCTestCase {
    private let log = ErrorLog()

    override func tearDown() {
        log.report("\(name) worst relative errors")
        super.tearDown()
    }

    private enum Kind: CaseIterable { case groupNorm, layerNorm, instanceNorm }

    private func makeLayer(_ kind: Kind, channels: Int, groups: Int, affine: Bool) throws -> (GroupNorm, RefSets) {
        switch kind {
        case .groupNorm:
            return (try GroupNorm(channels: channels, groups: groups, affine: affine), .groupNorm(groups: groups))
        case .layerNorm:
            return (try GroupNorm.layerNorm(channels: channels, affine: affine), .groupNorm(groups: 1))
        case .instanceNorm:
            return (try GroupNorm.instanceNorm(channels: channels, affine: affine), .groupNorm(groups: channels))
        }
    }

    /// Every rank 0–3 × layout × affine × (GN with each divisor G of C, LN, IN), random shapes with odd sizes.
    func testMatchesFloat64ReferenceOnRandomShapes() throws {
        var rng = SeededGenerator(seed: 0x6E01)
        var cases = 0, shapes: [[Int]] = []
        for rank in 0...3 {
            for trial in 0..<3 {
                let channels = [4, 6, 12][trial]
                let batch = Int.random(in: 1...3, using: &rng)
                let spatial = randomSpatial(rank: rank, using: &rng)
                let shape = [batch, channels] + spatial
                let positions = spatial.reduce(1, *)
                shapes.append(shape)
                let x = randomTensor(shape, scale: 2, offset: 0.5, using: &rng)
                let dy = randomTensor(shape, using: &rng)
                let divisors = (1...channels).filter { channels % $0 == 0 }
                for layout in TensorLayout.allCases {
                    let xl = x.converted(to: layout), dyl = dy.converted(to: layout)
                    for affine in [true, false] {
                        var configs: [(Kind, Int)] = divisors.map { (.groupNorm, $0) }
                        configs += [(.layerNorm, 1), (.instanceNorm, channels)]
                        for (kind, groups) in configs {
                            // Degenerate sets are left out of this relative comparison: a set of one element
                            // has zero variance (y = β, and the float32 fold y = a·x + b with a = γ/sqrt(ε)
                            // loses the digits a 1e-5 check needs); a set of two has x̂ = ±sqrt(var/(var+ε)),
                            // so dx ∝ ε/var is pure cancellation (BatchNormTests.testTwoValueSets checks it
                            // with an absolute bound).
                            if channels / groups * positions < 3 { continue }
                            let (layer, sets) = try makeLayer(kind, channels: channels, groups: groups, affine: affine)
                            let (gamma, beta) = randomizeAffine(layer, using: &rng)
                            let label = "\(kind) G=\(groups) shape=\(shape) \(layout) affine=\(affine)"
                            let ref = try checkTrainingStep(
                                layer, sets: sets, x: xl, dy: dyl, gamma: gamma,
                                beta: beta, label: label, log: log)
                            // GroupNorm has no running statistics: evaluation computes the same thing.
                            let yEval = try layer.forward(xl, training: false)
                            XCTAssertLessThanOrEqual(relativeError(yEval, ref.y), referenceTolerance, "eval \(label)")
                            cases += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(cases, 200)
        print("GroupNormTests: \(cases) random cases on shapes \(shapes)")
    }

    /// Shapes large enough that the kernels split work across threads (≥ 2·2¹⁵ elements per forward), with
    /// positions not a multiple of 16; run with 2 and 3 threads (uneven splits).
    func testLargeShapesUseMultipleThreads() throws {
        var rng = SeededGenerator(seed: 0x6E02)
        try withTwoOrThreeThreads(over: [[2, 64, 28, 28], [3, 48, 23, 21], [2, 32, 9, 11, 13]]) { shape in
            let x = randomTensor(shape, scale: 3, offset: -1, using: &rng)
            let dy = randomTensor(shape, using: &rng)
            for layout in TensorLayout.allCases {
                let xl = x.converted(to: layout), dyl = dy.converted(to: layout)
                let c = shape[1]
                for (kind, groups) in [(Kind.groupNorm, 16), (.groupNorm, c / 2), (.layerNorm, 1), (.instanceNorm, c)] {
                    let (layer, sets) = try makeLayer(kind, channels: c, groups: groups, affine: true)
                    let (gamma, beta) = randomizeAffine(layer, using: &rng)
                    try checkTrainingStep(
                        layer, sets: sets, x: xl, dy: dyl, gamma: gamma, beta: beta,
                        label: "\(kind) G=\(groups) \(shape) \(layout)", log: log)
                }
            }
        }
    }

    /// The Swift backward against central finite differences of `L = Σ w·y` on the float64 forward.
    func testBackwardMatchesFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 0x6E03)
        for shape in [[2, 6], [2, 4, 5], [2, 6, 3, 3], [1, 4, 2, 1, 3]] {
            let c = shape[1]
            let x = randomTensor(shape, scale: 1.5, offset: 0.3, using: &rng)
            let w = randomTensor(shape, using: &rng)
            for layout in TensorLayout.allCases {
                for affine in [true, false] {
                    var configs: [(Kind, Int)] = [(.groupNorm, 2), (.layerNorm, 1)]
                    if shape.count > 2 { configs.append((.instanceNorm, c)) }
                    for (kind, groups) in configs {
                        let (layer, sets) = try makeLayer(kind, channels: c, groups: groups, affine: affine)
                        let (gamma, beta) = randomizeAffine(layer, using: &rng)
                        try checkFiniteDifferences(
                            layer, sets: sets, x: x.converted(to: layout),
                            w: w.converted(to: layout), gamma: gamma, beta: beta,
                            label: "\(kind) G=\(groups) \(shape) \(layout) affine=\(affine)",
                            log: log)
                    }
                }
            }
        }
    }

    /// Contiguous grouping (spec §1): channel c is in group c / (C/G). A constant offset added to the channels
    /// of one contiguous group leaves the output unchanged; the same offset on an interleaved set does not.
    func testGroupingIsContiguous() throws {
        var rng = SeededGenerator(seed: 0x6E04)
        let x = randomTensor([2, 8, 5], using: &rng)
        let gn = try GroupNorm(channels: 8, groups: 2, affine: false)
        let y0 = try gn.forward(x, training: false)
        var shifted = x, interleaved = x
        for n in 0..<2 {
            for p in 0..<5 {
                for c in 0..<4 { shifted[n, c, p] += 3 }  // channels 0–3 = group 0
                for c in stride(from: 0, to: 8, by: 2) { interleaved[n, c, p] += 3 }  // c mod 2 == 0
            }
        }
        XCTAssertLessThanOrEqual(relativeError(try gn.forward(shifted, training: false).values, y0.values), 1e-5)
        XCTAssertGreaterThan(relativeError(try gn.forward(interleaved, training: false).values, y0.values), 0.1)
        XCTAssertEqual(gn.groupSize, 4)
        XCTAssertEqual(try GroupNorm(channels: 12, groupSize: 4).groups, 3)
        XCTAssertEqual(try GroupNorm.layerNorm(channels: 12).groups, 1)
        XCTAssertEqual(try GroupNorm.instanceNorm(channels: 12).groups, 12)
    }

    /// GroupNorm's affine defaults (γ = 1, β = 0) and the backward overwriting (not accumulating) gradients.
    func testDefaultsAndGradientOverwrite() throws {
        var rng = SeededGenerator(seed: 0x6E05)
        let gn = try GroupNorm(channels: 6, groups: 3)
        XCTAssertEqual(gn.weight?.value, [Float](repeating: 1, count: 6))
        XCTAssertEqual(gn.bias?.value, [Float](repeating: 0, count: 6))
        XCTAssertEqual(gn.epsilon, 1e-5)
        let x = randomTensor([2, 6, 7], using: &rng), dy = randomTensor([2, 6, 7], using: &rng)
        _ = try gn.forward(x, training: true)
        let first = try gn.backward(dy)
        _ = try gn.forward(x, training: true)
        let second = try gn.backward(dy)
        XCTAssertEqual(first.weight, second.weight)
        XCTAssertEqual(first.bias, second.bias)
        XCTAssertEqual(first.input.values, second.input.values)
        XCTAssertEqual(gn.parameters.count, 2)
        XCTAssertEqual(try GroupNorm(channels: 6, groups: 3, affine: false).parameters.count, 0)
    }
}
