import Foundation
import NormKit
import XCTest

/// The README's usage example, kept compiling and running.
final class ReadmeExampleTests: XCTestCase {
    func testReadmeExample() throws {
        var rng = SeededGenerator(seed: 0)
        let x = Tensor.randomNormal(shape: [2, 64, 28, 28], using: &rng)  // (N, C, H, W), channels-first

        let gn = try GroupNorm(channels: 64, groups: 32)  // or GroupNorm(channels: 64, groupSize: 2)
        let y = try gn.forward(x, training: true)
        let grads = try gn.backward(Tensor.randomNormal(shape: x.shape, using: &rng))
        XCTAssertEqual(y.shape, x.shape)
        XCTAssertEqual(grads.input.shape, x.shape)
        XCTAssertEqual(grads.weight?.count, 64)
        XCTAssertEqual(grads.weight, gn.weight!.gradient)

        let bn = try BatchNorm(channels: 64, momentum: 0.1, normBatch: 2)  // ghost batches of 2 samples
        var out = Tensor(zeros: x.shape)
        try bn.forward(x, into: &out, training: true)  // reuses `out`'s memory
        try bn.forward(x, into: &out, training: false)  // running statistics

        let mabn = try MovingAverageBatchNorm(channels: 64, bufferSize: 16)  // S_buf = 32 / 2
        let state = mabn.stateDict()
        XCTAssertEqual(Set(state.keys), ["weight", "bias", "running_var", "iters", "buffer_x2", "buffer_gz"])

        gn.activation = .silu  // silu(gn(x)) in one pass, the U-Net block
        let z = try gn.forward(x, training: true)  // backward takes ∂loss/∂z
        XCTAssertEqual(z.shape, x.shape)
        for (zi, yi) in zip(z.values, y.values) { XCTAssertEqual(zi, yi / (1 + exp(-yi)), accuracy: 1e-5) }
        let dz = Tensor.randomNormal(shape: x.shape, using: &rng)
        XCTAssertEqual(try gn.backward(dz).input.shape, x.shape)

        var h = try gn.forward(x, training: false)  // a residual connection around the norm:
        try h += x  // h = silu(gn(x)) + x, in place
        let flat = try h.reshaped(to: [2, 64 * 28 * 28])  // flattened for a linear layer (NCHW order)
        XCTAssertEqual(flat.shape, [2, 64 * 28 * 28])
        for ((hi, zi), xi) in zip(zip(flat.values, z.values), x.values) { XCTAssertEqual(hi, zi + xi, accuracy: 1e-5) }
    }
}
