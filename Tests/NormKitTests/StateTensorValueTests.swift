import NormKit
import XCTest

/// A state dict's values read without a `switch` over ``StateTensor``.
final class StateTensorValueTests: XCTestCase {
    func testValuesByDtype() throws {
        var rng = SeededGenerator(seed: 9)
        let bn = try BatchNorm(channels: 3)
        _ = try bn.forward(Tensor.randomNormal(shape: [4, 3, 2], using: &rng), training: true)
        let state = bn.stateDict()
        XCTAssertEqual(state["running_mean"]?.float32Values, bn.runningMean)
        XCTAssertEqual(state["running_var"]?.float32Values, bn.runningVariance)
        XCTAssertNil(state["running_var"]?.int64Values)
        XCTAssertEqual(state["num_batches_tracked"]?.int64Values, [1])
        XCTAssertNil(state["num_batches_tracked"]?.float32Values)
        XCTAssertEqual(state["num_batches_tracked"]?.shape, [])
    }
}
