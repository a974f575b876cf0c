import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// Degenerate shapes and extreme values through the public API, on every kernel path this CPU has and in both
/// layouts:
///
/// - **ε must be positive**: `ε = 0` made a constant set `0/0` (NaN through the whole network); every layer refuses it
///   at construction, and the smallest positive float is enough to keep a constant set finite.
/// - **No values**: a spatial dimension of 0 is refused by every forward that takes statistics from its input (GN in
///   both modes, MABN's training forward), as BN's and BRN's training forwards already did; evaluation with running
///   statistics returns an empty tensor.
/// - **A shape whose size overflows** `Int` is refused by `Tensor(shape:)` instead of trapping.
final class DegenerateInputTests: KernelPathTestCase {
    typealias Kit = VariantTestKit

    // MARK: - ε

    /// `ε = 0` let a constant set (an all-zero channel after a dead ReLU, zero padding) compute `0·(1/0)`: NaN
    /// outputs and gradients in BN, GN and BRN training and GN evaluation, and in MABN and frozen BN on an all-zero
    /// statistic. PyTorch's BN refuses `eps = 0` in training ("eps must be positive"); every NormKit layer now refuses
    /// it at construction, with NaN, infinite and negative values. The smallest positive float keeps a constant set
    /// finite: `y = β`.
    func testEpsilonMustBePositiveAndTheSmallestPositiveOneKeepsConstantSetsFinite() throws {
        var rng = SeededGenerator(seed: 0xDE63)
        let makers: [(String, (Float) throws -> NormalizationLayer)] = [
            ("BatchNorm", { try BatchNorm(channels: 2, epsilon: $0) }),
            ("GroupNorm", { try GroupNorm(channels: 2, groups: 1, epsilon: $0) }),
            ("BatchRenorm", { try BatchRenorm(channels: 2, epsilon: $0) }),
            ("MovingAverageBatchNorm", { try MovingAverageBatchNorm(channels: 2, bufferSize: 2, epsilon: $0) }),
            ("FrozenBatchNorm", { try FrozenBatchNorm(channels: 2, epsilon: $0) }),
        ]
        for (kind, make) in makers {
            for epsilon in [0, -0.0, -1e-5, .nan, .infinity, -.infinity] as [Float] {
                XCTAssertThrowsError(try make(epsilon), "\(kind) epsilon \(epsilon)") { error in
                    guard case .invalidArgument(let layer, let name, _, let expected)? = error as? NormalizationError
                    else { return XCTFail("\(kind) epsilon \(epsilon): \(error)") }
                    XCTAssertTrue(layer.hasPrefix(kind), "\(error)")
                    XCTAssertEqual(name, "epsilon")
                    XCTAssertEqual(expected, "a finite value > 0")
                }
            }
            let layer = try make(.leastNonzeroMagnitude)
            let zeros = Tensor(zeros: [3, 2, 4])
            let y = try layer.forward(zeros, training: true)
            let grads = try layer.backward(Tensor.randomNormal(shape: [3, 2, 4], using: &rng))
            XCTAssertTrue(y.values.allSatisfy { $0 == 0 }, "\(kind): y = β = 0, got \(y.values)")
            XCTAssertTrue(grads.input.values.allSatisfy(\.isFinite), "\(kind): dx \(grads.input.values)")
            XCTAssertTrue(try layer.forward(zeros, training: false).values.allSatisfy(\.isFinite), kind)
        }
    }

    // MARK: - No values

    /// An input with a spatial dimension of 0 has no values to take statistics from. BN and BRN refused it in
    /// training (as one value per channel); GN trained on it and returned `dγ = NaN` (0·(1/sqrt(NaN))), and MABN
    /// advanced its iteration counter and counted a skipped update for an empty chunk, then returned `dγ = NaN`. Now
    /// every forward that takes statistics from its input refuses it — BN, BRN and MABN training, GN/LN/IN in both
    /// modes (as PyTorch's GroupNorm: "Expected HxW to be greater than 0") — with a message that says why, and nothing
    /// changes; evaluation with running statistics, and frozen BN, return an empty tensor (zero gradients).
    func testAZeroSpatialDimensionIsRefusedWhereStatisticsComeFromTheInput() throws {
        for shape in [[2, 4, 0], [2, 4, 3, 0], [1, 4, 0, 0], [2, 4, 0, 2, 2]] {
            for layout in TensorLayout.allCases {
                let x = try Tensor(shape: shape, layout: layout)
                let statistics: [(NormalizationLayer, evaluationToo: Bool)] = [
                    (try BatchNorm(channels: 4), false), (try BatchNorm(channels: 4, normBatch: 1), false),
                    (try BatchRenorm(channels: 4), false),
                    (try MovingAverageBatchNorm(channels: 4, bufferSize: 2), false),
                    (try GroupNorm(channels: 4, groups: 2), true), (try GroupNorm.layerNorm(channels: 4), true),
                    (try GroupNorm.instanceNorm(channels: 4), true),
                ]
                for (layer, evaluationToo) in statistics {
                    let at = "\(layer.name) \(shape) \(layout)"
                    let before = layer.stateDict()
                    for training in evaluationToo ? [true, false] : [true] {
                        XCTAssertThrowsError(try layer.forward(x, training: training), at) { error in
                            XCTAssertEqual(
                                error as? NormalizationError,
                                .tooFewValuesPerChannel(layer: layer.name, valuesPerSet: 0),
                                at)
                            XCTAssertTrue("\(error)".contains("a spatial dimension is 0"), "\(error)")
                        }
                    }
                    XCTAssertEqual(layer.stateDict(), before, at)
                    XCTAssertThrowsError(try layer.backward(x), "no forward to pair with: \(at)")
                    if let mabn = layer as? MovingAverageBatchNorm {
                        XCTAssertEqual(mabn.iterations, 0, at)
                        XCTAssertEqual(mabn.skippedUpdates, 0, at)
                    }
                    if !evaluationToo {
                        let y = try layer.forward(x, training: false)
                        XCTAssertEqual(y.shape, shape, at)
                        XCTAssertEqual(y.layout, layout, at)
                    }
                }
                let frozen = try FrozenBatchNorm(channels: 4, trainableAffine: true)
                let y = try frozen.forward(x, training: true)
                XCTAssertEqual(y.shape, shape)
                let grads = try frozen.backward(x)
                XCTAssertEqual(grads.input.shape, shape)
                XCTAssertEqual(grads.weight, [0, 0, 0, 0])
                XCTAssertEqual(grads.bias, [0, 0, 0, 0])
            }
        }
    }

    // MARK: - Shapes

    /// `Tensor(shape:)` is the initializer for shapes from data; one whose element count overflows `Int` (2^40 × 2^40,
    /// also followed by a 0, which leaves the partial product `N·C` to overflow) trapped on that arithmetic overflow.
    /// It is refused with `invalidShape`, as is a count whose bytes overflow (2 × 2^61 floats).
    func testAShapeWhoseSizeOverflowsIsRefusedNotATrap() {
        for shape in [[1 << 40, 1 << 40], [1 << 40, 1 << 40, 0], [1 << 31, 1 << 31, 1 << 2], [2, 1 << 61]] {
            XCTAssertFalse(Tensor.isValid(shape: shape), "\(shape)")
            XCTAssertThrowsError(try Tensor(shape: shape)) { error in
                XCTAssertEqual(error as? NormalizationError, .invalidShape(layer: "Tensor", shape: shape))
            }
            XCTAssertThrowsError(try Tensor(shape: shape, values: []))
            XCTAssertThrowsError(try Tensor.validate(shape: shape, for: "GroupNorm(channels: 4, groups: 2)")) { error in
                XCTAssertTrue("\(error)".contains("\(shape)"), "\(error)")
            }
        }
        // Large but representable empty shapes stay valid.
        XCTAssertTrue(Tensor.isValid(shape: [1 << 20, 1 << 20, 0]))
        XCTAssertTrue(Tensor.isValid(shape: [0, 1 << 60]))
    }
}
