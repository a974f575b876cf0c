import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

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

    // MARK: SeededGenerator

    /// `SeededGenerator` is `Codable` so that its state can be saved and restored; a decoded state that is not
    /// xoshiro256**'s four words (or is all zero, the one state it never leaves) throws instead of trapping with
    /// an index out of range at the first `next()`.
    func testSeededGeneratorDecodingChecksTheState() throws {
        var original = SeededGenerator(seed: 42)
        _ = original.next()
        let data = try JSONEncoder().encode(original)
        XCTAssertEqual(String(decoding: data, as: UTF8.self), "{\"state\":\(original.stateDescriptionForTest)}")
        var restored = try JSONDecoder().decode(SeededGenerator.self, from: data)
        XCTAssertEqual(restored, original)
        XCTAssertEqual(restored.next(), original.next(), "the sequence resumes exactly")
        for json in ["{\"state\":[1,2]}", "{\"state\":[]}", "{\"state\":[1,2,3,4,5]}", "{\"state\":[0,0,0,0]}"] {
            XCTAssertThrowsError(try JSONDecoder().decode(SeededGenerator.self, from: Data(json.utf8)), json) {
                guard case .dataCorrupted(let context) = $0 as? DecodingError else {
                    return XCTFail("\(json): expected dataCorrupted, got \($0)")
                }
                XCTAssertTrue(context.debugDescription.contains("four"), context.debugDescription)
            }
        }
    }

    /// Setting `state` to four words resumes from them (the documented way to restore a saved generator).
    func testSeededGeneratorStateCanBeRestored() {
        var a = SeededGenerator(seed: 7)
        let saved = a.state
        let first = a.next()
        var b = SeededGenerator(seed: 0)
        b.state = saved
        XCTAssertEqual(b.next(), first)
        XCTAssertEqual(b, a)
    }

    // MARK: Parameter

    /// A parameter's values and gradient keep the shape's element count: the layers and optimizers read them
    /// with unchecked pointers (`C` values of `γ`, a convolution's whole filter bank), so a resized array would
    /// be read or written past its end. Assigning one is a programmer error that stops the process with a message
    /// naming the parameter; this child process must die instead of running a forward on a 1-value `γ`.
    func testResizingAParameterStopsTheProcess() throws {
        try assertTrapProbeTraps(
            "NormKitTests.PublicAPIAuditTests/testResizingAParameterTrapProbe", variable: Self.probeVariable,
            survivedMarker: Self.survivedMarker, survived: "the resized γ was used",
            message: "Parameter weight: 1 values assigned to shape [64] (64 values)")
    }

    private static let probeVariable = "NORMKIT_PARAMETER_RESIZE_PROBE"
    private static let survivedMarker = "PROBE-SURVIVED"

    /// Runs only in the child process of ``testResizingAParameterStopsTheProcess`` (skipped otherwise).
    func testResizingAParameterTrapProbe() throws {
        guard ProcessInfo.processInfo.environment[Self.probeVariable] == "1" else {
            throw XCTSkip("runs only as the child process of testResizingAParameterStopsTheProcess")
        }
        var generator = SeededGenerator(seed: 0)
        let norm = try GroupNorm(channels: 64, groups: 4)
        norm.weight!.value = [1]
        let y = try norm.forward(Tensor.randomNormal(shape: [2, 64, 4, 4], using: &generator), training: true)
        print("\(Self.survivedMarker) \(y.values.suffix(2))")
    }

    /// Element-wise updates (the getting-started article's optimizer loop) and same-size assignments still work.
    func testParameterElementUpdatesAndSameSizeAssignments() throws {
        let norm = try GroupNorm(channels: 4, groups: 2)
        let weight = try XCTUnwrap(norm.weight)
        for i in weight.value.indices { weight.value[i] -= 0.5 }
        XCTAssertEqual(weight.value, [0.5, 0.5, 0.5, 0.5])
        weight.gradient = [1, 2, 3, 4]
        weight.value = [4, 3, 2, 1]
        XCTAssertEqual(norm.stateDict()["weight"], .float32(shape: [4], values: [4, 3, 2, 1]))
        XCTAssertEqual(weight.gradient, [1, 2, 3, 4])
    }

    // MARK: Conformances

    /// `FusedActivation` is `Codable`, as the other setting enums (`TensorLayout`, `MovingAverageBatchNorm.Parts`):
    /// a user's configuration struct that holds one can synthesize its own `Codable`.
    func testFusedActivationIsCodable() throws {
        struct Settings: Codable, Equatable {
            var activation: FusedActivation
            var layout: TensorLayout
        }
        for activation in FusedActivation.allCases {
            let settings = Settings(activation: activation, layout: .channelsLast)
            let data = try JSONEncoder().encode(settings)
            XCTAssertTrue(String(decoding: data, as: UTF8.self).contains("\"\(activation.rawValue)\""))
            XCTAssertEqual(try JSONDecoder().decode(Settings.self, from: data), settings)
        }
    }
}

extension SeededGenerator {
    /// `state` as JSON writes it (`[1,2,3,4]`).
    fileprivate var stateDescriptionForTest: String { "[" + state.map(String.init).joined(separator: ",") + "]" }
}
