import XCTest
import NormKit

final class SmokeTests: XCTestCase {
    func testGroupNormRuns() throws {
        var rng = SeededGenerator(seed: 1)
        let x = Tensor.randomNormal(shape: [2, 4, 3, 3], using: &rng)
        let gn = try GroupNorm(channels: 4, groups: 2)
        let y = try gn.forward(x, training: true)
        XCTAssertEqual(y.shape, x.shape)
    }
}
