import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// Degenerate shapes and extreme values through the public API, on every kernel path this CPU has and in both
/// layouts:
///
/// - **A shape whose size overflows** `Int` is refused by `Tensor(shape:)` instead of trapping.
final class DegenerateInputTests: KernelPathTestCase {
    typealias Kit = VariantTestKit

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
