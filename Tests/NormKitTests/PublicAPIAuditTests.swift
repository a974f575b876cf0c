import Foundation
import NormKit
import XCTest

/// A user's audit of `NormKit`'s public API (imported without `@testable`, as a consumer package sees it): traps
/// reachable from public calls with values a user or a file can supply, and conformances a Swift user expects.
final class PublicAPIAuditTests: XCTestCase {

    // MARK: State dicts built by hand

    /// A step counter whose shape is not a tensor shape (its product overflows `Int`) is an `invalidState`, not an
    /// overflow trap: the reader multiplied the dimensions before it looked at them.
    func testStepCounterOfAnOverflowingShapeIsRefused() throws {
        let huge: StateTensor = .int64(shape: [1 << 40, 1 << 40], values: [0])
        let layers: [(NormalizationLayer, String)] = [
            (try BatchNorm(channels: 4), "num_batches_tracked"),
            (try BatchRenorm(channels: 4), "num_batches_tracked"),
            (try MovingAverageBatchNorm(channels: 4, bufferSize: 2), "iters"),
        ]
        for (layer, key) in layers {
            var state = layer.stateDict()
            XCTAssertNotNil(state[key], "\(layer.name) has no \(key)")
            state[key] = huge
            let before = layer.stateDict()
            for strict in [true, false] {
                XCTAssertThrowsError(try layer.loadStateDict(state, strict: strict), "\(layer.name)") { error in
                    guard case .invalidState(_, let name, _) = error as? NormalizationError else {
                        return XCTFail("\(layer.name): expected invalidState, got \(error)")
                    }
                    XCTAssertEqual(name, key)
                }
            }
            XCTAssertEqual(layer.stateDict(), before, "\(layer.name) changed on a refused load")
        }
    }

    // MARK: Batch Renormalization's schedule

    /// `Schedule.limits(step:)` is public and `Schedule`'s numbers are only checked when a layer is built with it:
    /// any numbers and any step give finite limits within `[1, rMax]` and `[0, dMax]` instead of an overflow trap
    /// in `step − warmupSteps` or `rSteps − warmupSteps`.
    func testScheduleLimitsOfExtremeNumbersDoNotTrap() {
        let schedules = [
            BatchRenorm.Schedule(warmupSteps: Int.min, rMax: 3, dMax: 5, rSteps: 10, dSteps: Int.max),
            BatchRenorm.Schedule(warmupSteps: -1, rMax: 3, dMax: 5, rSteps: Int.max, dSteps: 0),
            BatchRenorm.Schedule(warmupSteps: 0, rMax: 3, dMax: 5, rSteps: Int.min, dSteps: Int.min),
        ]
        for schedule in schedules {
            for step in [Int.min, -1, 0, 1, 5, Int.max] {
                let (r, d) = schedule.limits(step: step)
                XCTAssertTrue((1...3).contains(r), "\(schedule) step \(step): rMax \(r)")
                XCTAssertTrue((0...5).contains(d), "\(schedule) step \(step): dMax \(d)")
            }
        }
        // Ordinary numbers keep the reference's values.
        let paper = BatchRenorm.Schedule.paper
        XCTAssertEqual(paper.limits(step: 5000).rMax, 1)
        XCTAssertEqual(paper.limits(step: 40000).rMax, 3)
        XCTAssertEqual(paper.limits(step: 25000).dMax, 5)
        XCTAssertEqual(paper.limits(step: 22500).rMax, 1 + 2 * 17500 / 35000.0, accuracy: 1e-12)
    }

}

