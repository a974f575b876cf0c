import NormKit
import XCTest

/// Tensors and gradients compare with `==`, so `XCTAssertEqual` takes them (with only `NormKit` imported).
final class EqualityTests: XCTestCase {
    /// Tensors are equal when shape, layout and elements (in memory order) are; a NaN is unequal to everything, as
    /// in `[Float]`.
    func testTensorEquality() throws {
        var rng = SeededGenerator(seed: 7)
        let x = Tensor.randomNormal(shape: [2, 3, 4], using: &rng)
        var copy = x
        XCTAssertEqual(x, copy)
        copy[1, 2, 3] += 1
        XCTAssertNotEqual(x, copy, "one element differs")
        XCTAssertEqual(x, try Tensor(shape: [2, 3, 4], values: x.values), "same elements in fresh storage")
        XCTAssertNotEqual(x, try Tensor(shape: [2, 4, 3], values: x.values), "same elements, another shape")
        let last = x.converted(to: .channelsLast)
        XCTAssertNotEqual(x, last, "another layout is another tensor")
        XCTAssertEqual(x, last.converted(to: .channelsFirst))
        let nan = try Tensor(shape: [1, 1], values: [.nan])
        XCTAssertNotEqual(nan, try Tensor(shape: [1, 1], values: [.nan]))
        XCTAssertEqual(try Tensor(shape: [1, 1], values: [0]), try Tensor(shape: [1, 1], values: [-0.0]))
        XCTAssertEqual(Tensor(zeros: [0, 3]), Tensor(zeros: [0, 3]))
        XCTAssertNotEqual(Tensor(zeros: [0, 3]), Tensor(zeros: [3, 0]))
    }

    /// Two backwards of the same layer on the same input give equal ``NormalizationGradients``.
    func testGradientsAreEquatable() throws {
        var rng = SeededGenerator(seed: 8)
        let x = Tensor.randomNormal(shape: [4, 6, 5], using: &rng)
        let dy = Tensor.randomNormal(shape: x.shape, using: &rng)
        let norm = try GroupNorm(channels: 6, groups: 3)
        _ = try norm.forward(x, training: true)
        let first = try norm.backward(dy)
        _ = try norm.forward(x, training: true)
        XCTAssertEqual(try norm.backward(dy), first)
        _ = try norm.forward(x, training: true)
        XCTAssertNotEqual(try norm.backward(Tensor(zeros: x.shape)), first)
    }
}
