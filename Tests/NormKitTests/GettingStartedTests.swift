import NormKit
import XCTest

/// The code of `Sources/NormKit/NormKit.docc/GettingStarted.md`, kept compiling and checked. Keep the two in
/// step: a change to the article's code belongs here too.
final class GettingStartedTests: XCTestCase {
    /// GroupNorm followed by ReLU: one block of your own model (as in the article).
    final class NormReLU {
        let norm: GroupNorm
        private var normalized = Tensor(zeros: [0, 0])
        private var inputGradient = Tensor(zeros: [0, 0])

        init(channels: Int, groups: Int) throws {
            norm = try GroupNorm(channels: channels, groups: groups)
        }

        var parameters: [Parameter] { norm.parameters }

        func forward(_ x: Tensor, training: Bool) throws -> Tensor {
            try norm.forward(x, into: &normalized, training: training)
            var y = normalized
            y.withUnsafeMutableBufferPointer { v in
                for i in v.indices { v[i] = max(v[i], 0) }
            }
            return y
        }

        func backward(_ dy: Tensor) throws -> Tensor {
            var dz = dy
            normalized.withUnsafeBufferPointer { z in
                dz.withUnsafeMutableBufferPointer { g in
                    for i in g.indices where z[i] <= 0 { g[i] = 0 }
                }
            }
            try norm.backward(dz, into: &inputGradient)
            return inputGradient
        }
    }

    func testArticleCode() throws {
        var rng = SeededGenerator(seed: 0)
        let x = Tensor.randomNormal(shape: [4, 32, 8, 8], using: &rng)
        let gn = try GroupNorm(channels: 32, groups: 8)
        let y = try gn.forward(x, training: true)
        XCTAssertEqual(y.shape, x.shape)

        let block = try NormReLU(channels: 32, groups: 8)
        let output = try block.forward(x, training: true)
        XCTAssertEqual(output.values.min(), 0, "ReLU output is non-negative and hits 0")
        XCTAssertEqual(
            output.values.filter { $0 > 0 }, y.values.filter { $0 > 0 },
            "the block is ReLU of the same GroupNorm (γ = 1, β = 0 at initialisation)")
        let outputGradient = try Tensor(
            shape: output.shape,
            values: [Float](repeating: 1 / Float(output.count), count: output.count))
        let inputGradient = try block.backward(outputGradient)
        XCTAssertEqual(inputGradient.shape, x.shape)

        let biasBefore = block.norm.bias!.value
        for parameter in block.parameters where parameter.isTrainable {
            for i in parameter.value.indices {
                parameter.value[i] -= 0.1 * parameter.gradient[i]
            }
        }
        // ∂(mean of ReLU outputs)/∂β_c is the fraction of channel c's positive outputs over the count: positive,
        // so descent lowers every β.
        for (after, before) in zip(block.norm.bias!.value, biasBefore) { XCTAssertLessThan(after, before) }
        XCTAssertThrowsError(try block.backward(outputGradient)) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .backwardBeforeForward(layer: "GroupNorm(channels: 32, groups: 8)"))
        }

        var residual = try block.forward(x, training: false)  // relu(gn(x)), (4, 32, 8, 8)
        try residual += x  // + x: one shape and layout, or it throws
        let features = try residual.reshaped(to: [4, 32 * 8 * 8])  // (4, 2048), the NCHW order
        XCTAssertEqual(features.shape, [4, 2048])
        let relu = try block.forward(x, training: false)
        XCTAssertEqual(features.values, zip(relu.values, x.values).map { $0 + $1 })
        XCTAssertThrowsError(try residual += x.converted(to: .channelsLast)) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .operandMismatch(
                    layer: "Tensor", operation: "add", left: x.shape, leftLayout: .channelsFirst, right: x.shape,
                    rightLayout: .channelsLast))
        }

        let state = block.norm.stateDict()
        let copy = try NormReLU(channels: 32, groups: 8)
        try copy.norm.loadStateDict(state)
        XCTAssertEqual(copy.norm.stateDict(), state)
        XCTAssertEqual(try copy.forward(x, training: false).values, try block.forward(x, training: false).values)
        var extra = state
        extra["running_mean"] = .float32(shape: [32], values: [Float](repeating: 0, count: 32))
        XCTAssertThrowsError(try copy.norm.loadStateDict(extra), "a strict load refuses an extra entry")
        XCTAssertEqual(copy.norm.stateDict(), state, "a refused load changes nothing")

        let bn = try BatchNorm(channels: 32)
        let result = try bn.loadStateDict(state, strict: false)
        XCTAssertEqual(
            "\(result)",
            "missing keys: [num_batches_tracked, running_mean, running_var]; unexpected keys: []")
        XCTAssertEqual(bn.weight!.value, block.norm.weight!.value)
        XCTAssertEqual(bn.bias!.value, block.norm.bias!.value)

        XCTAssertThrowsError(try GroupNorm(channels: 30, groups: 8)) { error in
            XCTAssertEqual(
                error.localizedDescription,
                "GroupNorm(channels: 30, groups: 8): 30 channels cannot be split into 8 groups "
                    + "(groups must be in 1...30 and divide 30)")
        }
    }
}
