import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// The library-facing contract of issue 13: checked element access, errors that are `LocalizedError` and name
/// their layer, one grouping argument for GroupNorm, MABN's `oldValueWeight` label (and its deprecated spelling).
final class LibraryAPITests: XCTestCase {

    // MARK: Bounds checks

    /// `isValidIndex` is the check the subscript's precondition uses: every dimension, both ends, both layouts.
    func testIsValidIndexChecksEveryDimension() {
        // The example: one sample, two channels, no spatial positions.
        let small = Tensor(zeros: [1, 2])
        XCTAssertFalse(small.isValidIndex(n: 0, c: 5, position: 0), "c = 5 of 2 channels")
        XCTAssertTrue(small.isValidIndex(n: 0, c: 1, position: 0))
        XCTAssertFalse(small.isValidIndex(n: 0, c: 0, position: 1), "a rank-0 spatial tensor has one position")
        for layout in TensorLayout.allCases {
            let t = Tensor(zeros: [2, 3, 4, 5], layout: layout)
            XCTAssertTrue(t.isValidIndex(n: 0, c: 0, position: 0))
            XCTAssertTrue(t.isValidIndex(n: 1, c: 2, position: 19))
            XCTAssertFalse(t.isValidIndex(n: 2, c: 0, position: 0), "n past the batch")
            XCTAssertFalse(t.isValidIndex(n: -1, c: 0, position: 0), "negative n")
            XCTAssertFalse(t.isValidIndex(n: 0, c: 3, position: 0), "c past the channels")
            XCTAssertFalse(t.isValidIndex(n: 0, c: -1, position: 0), "negative c")
            XCTAssertFalse(t.isValidIndex(n: 0, c: 0, position: 20), "position past H·W")
            XCTAssertFalse(t.isValidIndex(n: 0, c: 0, position: -1), "negative position")
            // An index whose flat offset is still inside the buffer is refused too (c = 3 of 3 wraps to n = 1).
            XCTAssertLessThan(t.offset(n: 0, c: 3, position: 0), t.count)
            XCTAssertFalse(t.isValidIndex(n: 0, c: 3, position: 0))
        }
        XCTAssertFalse(Tensor(zeros: [0, 3]).isValidIndex(n: 0, c: 0, position: 0), "an empty batch has no element")
    }

    /// In-range subscripts read and write the logical element in both layouts.
    func testSubscriptReadsAndWritesTheLogicalElement() {
        for layout in TensorLayout.allCases {
            var t = Tensor(zeros: [2, 3, 4], layout: layout)
            t[1, 2, 3] = 7
            XCTAssertEqual(t[1, 2, 3], 7)
            XCTAssertEqual(t.values.filter { $0 != 0 }, [7])
            XCTAssertEqual(t.converted(to: layout == .channelsFirst ? .channelsLast : .channelsFirst)[1, 2, 3], 7)
        }
    }

    /// The precondition itself, observed honestly: a child process runs ``testOutOfBoundsSubscriptTrapProbe``,
    /// which reads `Tensor(zeros: [1, 2])[0, 5, 0]`; it must die (in debug and release) instead of returning.
    func testOutOfBoundsSubscriptStopsTheProcess() throws {
        // The message names the index and the shape, in debug and release builds.
        try assertTrapProbeTraps(
            "NormKitTests.LibraryAPITests/testOutOfBoundsSubscriptTrapProbe", variable: Self.probeVariable,
            survivedMarker: Self.survivedMarker, survived: "the out-of-bounds read returned a value",
            message: "Tensor index (n: 0, c: 5, position: 0) is out of bounds for shape [1, 2]")
    }

    private static let probeVariable = "NORMKIT_SUBSCRIPT_TRAP_PROBE"
    private static let survivedMarker = "PROBE-SURVIVED"

    /// Runs only in the child process of ``testOutOfBoundsSubscriptStopsTheProcess`` (skipped otherwise).
    func testOutOfBoundsSubscriptTrapProbe() throws {
        guard ProcessInfo.processInfo.environment[Self.probeVariable] == "1" else {
            throw XCTSkip("runs only as the child process of testOutOfBoundsSubscriptStopsTheProcess")
        }
        let value = Tensor(zeros: [1, 2])[0, 5, 0]
        print("\(Self.survivedMarker) \(value)")
    }

    /// Input-derived shapes go through the throwing initializer; literal ones through `init(zeros:)`.
    func testThrowingShapeInitializer() throws {
        let t = try Tensor(shape: [2, 3, 4], layout: .channelsLast)
        XCTAssertEqual(t.shape, [2, 3, 4])
        XCTAssertEqual(t.layout, .channelsLast)
        XCTAssertEqual(t.values, [Float](repeating: 0, count: 24))
        XCTAssertThrowsError(try Tensor(shape: [3])) {
            XCTAssertEqual($0 as? NormalizationError, .invalidShape(layer: "Tensor", shape: [3]))
        }
        XCTAssertThrowsError(try Tensor(shape: [2, -3])) {
            XCTAssertEqual($0 as? NormalizationError, .invalidShape(layer: "Tensor", shape: [2, -3]))
        }
        XCTAssertTrue(Tensor.isValid(shape: [1, 1, 1, 1, 1]))
        XCTAssertFalse(Tensor.isValid(shape: [1, 1, 1, 1, 1, 1]))
        XCTAssertThrowsError(try Tensor.validate(shape: [1], for: "MyLayer")) {
            XCTAssertEqual(($0 as? NormalizationError)?.layer, "MyLayer")
        }
    }

    // MARK: Errors

    /// One real instance of every case, thrown by the API that throws it.
    private func everyError() throws -> [NormalizationError] {
        var errors: [NormalizationError] = []
        func record(_ body: () throws -> Void) {
            do {
                try body()
                XCTFail("expected an error")
            } catch let error as NormalizationError {
                errors.append(error)
            } catch {
                XCTFail("not a NormalizationError: \(error)")
            }
        }
        var rng = SeededGenerator(seed: 1301)
        let bn = try BatchNorm(channels: 3, normBatch: 2)
        record { _ = try Tensor(shape: [5], values: [0]) }  // invalidShape
        record { _ = try Tensor(shape: [1, 2], values: [0]) }  // elementCountMismatch
        record { _ = try GroupNorm(channels: 6, groups: 4) }  // invalidGroups
        record { _ = try GroupNorm(channels: 6, groupSize: 4) }  // invalidGroupSize
        record { _ = try BatchNorm(channels: 3, momentum: 2) }  // invalidArgument
        record { _ = try bn.forward(Tensor(zeros: [2, 4]), training: true) }  // channelMismatch
        record { _ = try bn.forward(Tensor(zeros: [0, 3]), training: true) }  // emptyBatch
        record { _ = try BatchNorm(channels: 3).forward(Tensor(zeros: [1, 3]), training: true) }  // tooFewValues…
        record { _ = try bn.forward(Tensor(zeros: [3, 3, 2]), training: true) }  // normBatchDoes…
        record { _ = try bn.backward(Tensor(zeros: [2, 3, 2])) }  // backwardBefore…
        _ = try bn.forward(randomTensor([2, 3, 2], using: &rng), training: true)
        record { _ = try bn.backward(Tensor(zeros: [2, 3, 2], layout: .channelsLast)) }  // shapeMismatch
        var bad = bn.stateDict()
        bad["running_mean"] = .float32(shape: [4], values: [0, 0, 0, 0])
        record { try bn.loadStateDict(bad) }  // invalidState
        record { try bn.loadStateDict([:]) }  // incompatible…
        return errors
    }

    func testEveryErrorIsLocalizedAndNamesItsSource() throws {
        let errors = try everyError()
        XCTAssertEqual(errors.count, 13)
        for error in errors {
            let message = error.description
            XCTAssertEqual(error.localizedDescription, message)
            XCTAssertEqual(error.errorDescription, message)
            XCTAssertEqual((error as Error).localizedDescription, message, "through the Error existential")
            XCTAssertFalse(message.contains("The operation could not be completed"), message)
            XCTAssertTrue(message.hasPrefix(error.layer + ": "), "\(message) should start with \(error.layer)")
            XCTAssertFalse(error.layer.isEmpty)
        }
        let layers = errors.map(\.layer)
        XCTAssertEqual(layers[0], "Tensor")
        XCTAssertEqual(layers[1], "Tensor")
        XCTAssertEqual(layers[2], "GroupNorm(channels: 6, groups: 4)")
        XCTAssertEqual(layers[3], "GroupNorm(channels: 6, groupSize: 4)")
        XCTAssertEqual(layers[4], "BatchNorm(channels: 3)")
        XCTAssertEqual(layers[7], "BatchNorm(channels: 3)")
        for i in [5, 6, 8, 9, 10, 11, 12] { XCTAssertEqual(layers[i], "BatchNorm(channels: 3, normBatch: 2)", "\(i)") }
    }

    /// Each layer kind puts its own name in front of its input errors.
    func testEveryLayerNamesItselfInItsErrors() throws {
        let layers: [(NormalizationLayer, String)] = [
            (try BatchNorm(channels: 4), "BatchNorm(channels: 4)"),
            (
                try BatchNorm(channels: 4, normBatch: 2, affine: false),
                "BatchNorm(channels: 4, normBatch: 2, affine: false)"
            ),
            (try GroupNorm(channels: 4, groups: 2), "GroupNorm(channels: 4, groups: 2)"),
            (try GroupNorm.layerNorm(channels: 4), "GroupNorm(channels: 4, groups: 1)"),
            (try BatchRenorm(channels: 4), "BatchRenorm(channels: 4)"),
            (
                try MovingAverageBatchNorm(channels: 4, bufferSize: 3),
                "MovingAverageBatchNorm(channels: 4, bufferSize: 3)"
            ),
            (try FrozenBatchNorm(channels: 4), "FrozenBatchNorm(channels: 4)"),
        ]
        var rng = SeededGenerator(seed: 1302)
        for (layer, name) in layers {
            XCTAssertEqual(layer.name, name)
            XCTAssertThrowsError(try layer.forward(Tensor(zeros: [2, 5, 3]), training: true)) {
                XCTAssertTrue($0.localizedDescription.hasPrefix("\(name): input has 5 channels"), "\($0)")
            }
            XCTAssertThrowsError(try layer.backward(Tensor(zeros: [2, 4, 3]))) {
                XCTAssertTrue($0.localizedDescription.hasPrefix("\(name): backward called"), "\($0)")
            }
            let x = randomTensor([2, 4, 3], layout: .channelsLast, using: &rng)
            _ = try layer.forward(x, training: true)
            XCTAssertThrowsError(try layer.backward(x.converted(to: .channelsFirst))) {
                XCTAssertEqual(
                    $0.localizedDescription,
                    "\(name): gradient does not match the forward's output: "
                        + "expected [2, 4, 3] channelsLast, got [2, 4, 3] channelsFirst")
            }
            XCTAssertThrowsError(try layer.loadStateDict(["nonsense": .float32(shape: [1], values: [0])])) {
                XCTAssertTrue($0.localizedDescription.hasPrefix("\(name): state dict does not match"), "\($0)")
                XCTAssertTrue($0.localizedDescription.contains("nonsense"), "\($0)")
            }
        }
    }

    /// Constructor errors name the layer being built, with its arguments.
    func testConstructorErrorsNameTheLayer() {
        let cases: [(String, () throws -> NormalizationLayer)] = [
            ("BatchNorm(channels: 0)", { try BatchNorm(channels: 0) }),
            ("BatchRenorm(channels: 2, normBatch: 0)", { try BatchRenorm(channels: 2, normBatch: 0) }),
            (
                "MovingAverageBatchNorm(channels: 2, bufferSize: 0)",
                { try MovingAverageBatchNorm(channels: 2, bufferSize: 0) }
            ),
            ("FrozenBatchNorm(channels: 2)", { try FrozenBatchNorm(channels: 2, epsilon: -1) }),
            ("GroupNorm(channels: 0, groups: 1)", { try GroupNorm(channels: 0, groups: 1) }),
            (
                "GroupNorm(channels: 4, groups: 2, affine: false)",
                { try GroupNorm(channels: 4, groups: 2, epsilon: .nan, affine: false) }
            ),
            (
                "BatchRenorm(channels: 2)",
                {
                    try BatchRenorm(
                        channels: 2, schedule: .init(warmupSteps: 0, rMax: 0.5, dMax: 0, rSteps: 1, dSteps: 1))
                }
            ),
        ]
        for (name, build) in cases {
            XCTAssertThrowsError(try build()) {
                XCTAssertEqual(($0 as? NormalizationError)?.layer, name)
                XCTAssertTrue($0.localizedDescription.hasPrefix(name + ": invalid "), $0.localizedDescription)
            }
        }
    }

    // MARK: GroupNorm's grouping

    func testGroupNormRefusesGroupsAndGroupSizeTogether() throws {
        XCTAssertThrowsError(try GroupNorm(channels: 8, groups: 4, groupSize: 2)) {
            guard case NormalizationError.invalidArgument(let layer, "groups/groupSize", let value, _) = $0 else {
                return XCTFail("\($0)")
            }
            XCTAssertEqual(value, "groups: 4, groupSize: 2")
            XCTAssertEqual(layer, "GroupNorm(channels: 8, groups: 4, groupSize: 2)")
            XCTAssertTrue($0.localizedDescription.contains("exactly one of groups and groupSize"))
        }
        // Even when they agree: two sources for one number is a configuration error.
        XCTAssertThrowsError(try GroupNorm(channels: 8, groups: 4, groupSize: 2, affine: false))
        XCTAssertThrowsError(try GroupNorm(channels: 8, groups: nil, groupSize: nil)) {
            guard case NormalizationError.invalidArgument(_, "groups/groupSize", "groups: nil, groupSize: nil", _) = $0
            else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(try GroupNorm(channels: 8, groups: 4, groupSize: nil).groups, 4)
        XCTAssertEqual(try GroupNorm(channels: 8, groups: nil, groupSize: 2).groups, 4)
        XCTAssertEqual(try GroupNorm(channels: 8, groups: nil, groupSize: 8).groups, 1)
        // Each path keeps its own validation.
        XCTAssertThrowsError(try GroupNorm(channels: 8, groups: 3, groupSize: nil)) {
            XCTAssertEqual($0 as? NormalizationError, .invalidGroups(channels: 8, groups: 3))
        }
        XCTAssertThrowsError(try GroupNorm(channels: 8, groups: nil, groupSize: 3)) {
            XCTAssertEqual($0 as? NormalizationError, .invalidGroupSize(channels: 8, groupSize: 3))
        }
    }

    // MARK: MABN's EMA label

    /// `oldValueWeight` weights the old running value: after one iteration from the initial `runningχ² = 1`,
    /// `runningχ² = w·1 + (1 − w)·χ²_batch`.
    func testOldValueWeightWeightsTheOldValue() throws {
        var rng = SeededGenerator(seed: 1303)
        let x = randomTensor([4, 2, 3], scale: 3, using: &rng)
        for w: Float in [0.98, 0.5, 0.0, 1.0] {
            let layer = try MovingAverageBatchNorm(channels: 2, bufferSize: 2, oldValueWeight: w, warmup: 0)
            XCTAssertEqual(layer.oldValueWeight, w)
            _ = try layer.forward(x, training: true)
            for c in 0..<2 {
                var sum = 0.0, count = 0.0
                for n in 0..<4 { for p in 0..<3 { sum += Double(x[n, c, p]) * Double(x[n, c, p]); count += 1 } }
                let expected = Double(w) * 1 + (1 - Double(w)) * sum / count
                XCTAssertEqual(Double(layer.runningSecondMoment[c]), expected, accuracy: 1e-5 * max(1, expected))
            }
        }
        XCTAssertThrowsError(try MovingAverageBatchNorm(channels: 2, bufferSize: 2, oldValueWeight: 1.5)) {
            guard case NormalizationError.invalidArgument(_, "oldValueWeight", "1.5", let expected) = $0 else {
                return XCTFail("\($0)")
            }
            XCTAssertTrue(expected.contains("OLD"), expected)
        }
    }

    /// The deprecated `momentum:` spelling builds the same layer: same factor, same states step by step.
    func testDeprecatedMomentumLabelIsTheSameFactor() throws {
        var rng = SeededGenerator(seed: 1304)
        let current = try MovingAverageBatchNorm(
            channels: 3, bufferSize: 2, oldValueWeight: 0.9, warmup: 1,
            normBatch: 2)
        let legacy = try LegacyMABN.make(channels: 3, bufferSize: 2, momentum: 0.9, warmup: 1, normBatch: 2)
        XCTAssertEqual(legacy.oldValueWeight, 0.9)
        XCTAssertEqual(LegacyMABN.momentum(of: legacy), 0.9)
        XCTAssertEqual(legacy.name, current.name)
        for _ in 0..<5 {
            let x = randomTensor([4, 3, 2], scale: 2, offset: 0.5, using: &rng)
            let dy = randomTensor([4, 3, 2], using: &rng)
            XCTAssertEqual(try current.forward(x, training: true).values, try legacy.forward(x, training: true).values)
            XCTAssertEqual(try current.backward(dy).input.values, try legacy.backward(dy).input.values)
            XCTAssertEqual(current.stateDict(), legacy.stateDict())
        }
        // The state-dict keys stay the reference's: an old layer's state loads into a new one, and back.
        let fresh = try MovingAverageBatchNorm(channels: 3, bufferSize: 2, oldValueWeight: 0.9, warmup: 1, normBatch: 2)
        try fresh.loadStateDict(legacy.stateDict())
        XCTAssertEqual(fresh.stateDict(), legacy.stateDict())
        XCTAssertEqual(
            Set(fresh.stateDict().keys), ["weight", "bias", "running_var", "iters", "buffer_x2", "buffer_gz"])
    }
}

/// Reaches MABN's deprecated spellings through a protocol, so the test exercises them without a deprecation
/// warning at the call site.
private protocol LegacyMABNSpelling {
    init(
        channels: Int, bufferSize: Int, epsilon: Float, momentum: Float, warmup: Int, normBatch: Int?,
        affine: Bool) throws
    var momentum: Float { get }
}

extension MovingAverageBatchNorm: LegacyMABNSpelling {}

private enum LegacyMABN {
    static func make(
        channels: Int, bufferSize: Int, momentum: Float, warmup: Int,
        normBatch: Int?
    ) throws -> MovingAverageBatchNorm {
        try build(
            MovingAverageBatchNorm.self, channels: channels, bufferSize: bufferSize, momentum: momentum,
            warmup: warmup, normBatch: normBatch)
    }

    private static func build<T: LegacyMABNSpelling>(
        _ type: T.Type, channels: Int, bufferSize: Int, momentum: Float,
        warmup: Int, normBatch: Int?
    ) throws -> T {
        try T(
            channels: channels, bufferSize: bufferSize, epsilon: 1e-5, momentum: momentum, warmup: warmup,
            normBatch: normBatch, affine: true)
    }

    static func momentum<T: LegacyMABNSpelling>(of layer: T) -> Float { layer.momentum }
}
