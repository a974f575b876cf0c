import Foundation
import NormKitTraining
import XCTest

/// `GlobalAveragePool` on channels-last input: the same output as on the channels-first tensor, a float64 mean,
/// and a backward in the forward input's layout equal to the channels-first one.
final class PoolingLayoutTests: XCTestCase {
    /// The float64 per-(n, c) mean of a channels-first tensor's values.
    func reference(_ x: Tensor) -> [Double] {
        let values = x.converted(to: .channelsFirst).values, m = x.spatialCount
        return (0..<(x.batch * x.channels)).map { plane in
            values[(plane * m)..<((plane + 1) * m)].reduce(0.0) { $0 + Double($1) } / Double(m)
        }
    }

    func testChannelsLastForwardAndBackwardEqualChannelsFirst() throws {
        var rng = SeededGenerator(seed: 920)
        // Odd channel counts, 1×1 planes, one channel, one image, non-square planes, a large plane.
        let shapes = [
            [1, 1, 1, 1], [2, 3, 1, 1], [3, 1, 5, 4], [2, 17, 7, 7], [4, 64, 3, 5], [1, 130, 9, 2],
            [2, 5, 28, 28], [5, 16, 1, 7],
        ]
        for shape in shapes {
            let x = Tensor.randomNormal(shape: shape, mean: 0.5, standardDeviation: 2, using: &rng)
            let dy = Tensor.randomNormal(shape: [shape[0], shape[1]], using: &rng)
            let want = reference(x)
            var outputs: [TensorLayout: (y: Tensor, dx: Tensor)] = [:]
            for layout in TensorLayout.allCases {
                let pool = GlobalAveragePool()
                var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
                try pool.forward(x.converted(to: layout), into: &y, training: true)
                XCTAssertEqual(y.shape, [shape[0], shape[1]], "\(shape) \(layout)")
                XCTAssertEqual(y.layout, .channelsFirst, "the pooled output is a rank-2 channels-first tensor")
                let yValues = y.values.map(Double.init)
                let wrong = want.indices.filter { abs(yValues[$0] - want[$0]) > 1e-6 * max(1, abs(want[$0])) }
                XCTAssertTrue(wrong.isEmpty, "y \(shape) \(layout): wrong at \(wrong.prefix(5))")
                try pool.backward(dy, into: &dx)
                XCTAssertEqual(dx.shape, shape, "\(shape) \(layout)")
                XCTAssertEqual(dx.layout, layout, "dx is in the forward input's layout")
                // dx[n, c, p] = dy[n, c]·(1/M), checked element by element through the logical subscript.
                let m = shape[2] * shape[3], scale = 1 / Float(m)
                var mismatches: [String] = []
                for n in 0..<shape[0] {
                    for c in 0..<shape[1] {
                        for p in 0..<m where abs(dx[n, c, p] - dy[n, c, 0] * scale) > 1e-6 * abs(dy[n, c, 0] * scale) {
                            mismatches.append("(\(n), \(c), \(p)): \(dx[n, c, p]) vs \(dy[n, c, 0] * scale)")
                        }
                    }
                }
                XCTAssertTrue(
                    mismatches.isEmpty,
                    "dx \(shape) \(layout): \(mismatches.count) wrong, first \(mismatches.prefix(3))")
                outputs[layout] = (y, dx)
            }
            let first = outputs[.channelsFirst]!, last = outputs[.channelsLast]!
            XCTAssertEqual(last.y.values, first.y.values, "y, channels-last vs channels-first \(shape)")
            XCTAssertEqual(
                last.dx.converted(to: .channelsFirst).values, first.dx.values,
                "dx, channels-last vs channels-first \(shape)")
        }
    }

    /// The backward follows the last *training* forward's layout: an evaluation forward in the other layout in
    /// between changes nothing, and a later training forward in the other layout switches it.
    func testBackwardUsesTheLastTrainingForwardsLayout() throws {
        var rng = SeededGenerator(seed: 921)
        let x = Tensor.randomNormal(shape: [2, 6, 4, 3], using: &rng)
        let dy = Tensor.randomNormal(shape: [2, 6], using: &rng)
        let pool = GlobalAveragePool()
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1]), other = Tensor(zeros: [1, 1])
        try pool.forward(x.converted(to: .channelsLast), into: &y, training: true)
        try pool.forward(x, into: &other, training: false)
        try pool.forward(Tensor.randomNormal(shape: [3, 6, 2, 2], using: &rng), into: &other, training: false)
        try pool.backward(dy, into: &dx)
        XCTAssertEqual(dx.layout, .channelsLast)
        XCTAssertEqual(dx.shape, [2, 6, 4, 3])
        let channelsLastGradient = dx.converted(to: .channelsFirst).values

        try pool.forward(x.converted(to: .channelsLast), into: &y, training: true)
        try pool.forward(x, into: &y, training: true)
        try pool.backward(dy, into: &dx)
        XCTAssertEqual(dx.layout, .channelsFirst)
        XCTAssertEqual(dx.values, channelsLastGradient)
    }

    /// The same checks on bad input in either layout: wrong rank, empty plane, wrong gradient shape.
    func testBadInputThrowsInEitherLayout() throws {
        let pool = GlobalAveragePool()
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1])
        for layout in TensorLayout.allCases {
            XCTAssertThrowsError(try pool.forward(Tensor(zeros: [2, 3, 4], layout: layout), into: &y, training: true)) {
                XCTAssertEqual(
                    $0 as? LayerError, .wrongRank(layer: pool.name, expected: 4, shape: [2, 3, 4]), "\(layout)")
            }
            XCTAssertThrowsError(
                try pool.forward(Tensor(zeros: [2, 3, 0, 4], layout: layout), into: &y, training: true)
            ) {
                XCTAssertEqual(
                    $0 as? LayerError,
                    .inputTooSmall(layer: pool.name, height: 0, width: 4, kernelSize: 1, padding: 0), "\(layout)")
            }
            try pool.forward(Tensor(zeros: [2, 3, 4, 4], layout: layout), into: &y, training: true)
            XCTAssertThrowsError(try pool.backward(Tensor(zeros: [2, 4]), into: &dx)) {
                XCTAssertEqual(
                    $0 as? NormalizationError,
                    .shapeMismatch(
                        layer: pool.name, expected: [2, 3],
                        expectedLayout: .channelsFirst, got: [2, 4],
                        gotLayout: .channelsFirst), "\(layout)")
            }
        }
    }
}
