import NormKit
import XCTest

/// What a Swift user expects of NormKit's types when printing them, with only `NormKit` imported: a layer prints as
/// its ``NormalizationLayer/name`` (not `NormKit.GroupNorm`), a ``Parameter`` as PyTorch prints one.
final class PrintingTests: XCTestCase {
    /// Every layer's `description` is its `name`, so `print(layer)` and `"\(layer)"` show its arguments.
    func testLayersPrintTheirName() throws {
        let gn = try GroupNorm(channels: 8, groups: 2)
        let bn = try BatchNorm(channels: 4, normBatch: 2, affine: false)
        let brn = try BatchRenorm(channels: 4)
        let mabn = try MovingAverageBatchNorm(channels: 4, bufferSize: 3)
        let frozen = try FrozenBatchNorm(channels: 4)
        XCTAssertEqual(gn.description, "GroupNorm(channels: 8, groups: 2)")
        XCTAssertEqual(bn.description, "BatchNorm(channels: 4, normBatch: 2, affine: false)")
        XCTAssertEqual(brn.description, "BatchRenorm(channels: 4)")
        XCTAssertEqual(mabn.description, "MovingAverageBatchNorm(channels: 4, bufferSize: 3)")
        XCTAssertEqual(frozen.description, "FrozenBatchNorm(channels: 4)")
        // Through an existential, as a model's code holds them.
        let layers: [any NormalizationLayer] = [gn, bn, brn, mabn, frozen]
        for layer in layers { XCTAssertEqual("\(layer)", layer.name) }
    }

    /// A parameter prints its name, shape and whether an optimizer trains it (PyTorch's `requires_grad`).
    func testParameterPrintsNameShapeAndTrainability() throws {
        let gn = try GroupNorm(channels: 8, groups: 2)
        XCTAssertEqual(gn.weight!.description, "Parameter(weight, shape=[8], requires_grad=True)")
        let frozen = Parameter(
            name: "bias", shape: [2, 3], role: .bias, value: [0, 0, 0, 0, 0, 0], isTrainable: false)
        XCTAssertEqual("\(frozen)", "Parameter(bias, shape=[2, 3], requires_grad=False)")
    }
}
