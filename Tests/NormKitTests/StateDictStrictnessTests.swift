import NormKit
import XCTest
import _NormKitTestSupport

/// `loadStateDict` is strict by default for every layer kind (as PyTorch): a missing, unexpected or mis-shaped key
/// throws, naming the layer and the keys, and changes nothing. `strict: false` loads what matches and reports the
/// rest in a ``StateDictLoadResult``; a mis-shaped entry still throws.
final class StateDictStrictnessTests: XCTestCase {
    typealias Kit = VariantTestKit

    /// Every layer kind and configuration whose state-dict keys differ.
    private func layers() throws -> [(String, () throws -> NormalizationLayer)] {
        [
            ("BN", { try BatchNorm(channels: 3) }),
            ("BN affine:false", { try BatchNorm(channels: 3, affine: false) }),
            ("GN", { try GroupNorm(channels: 4, groups: 2) }),
            ("GN affine:false", { try GroupNorm(channels: 4, groups: 2, affine: false) }),
            ("LN", { try GroupNorm.layerNorm(channels: 3) }),
            ("IN", { try GroupNorm.instanceNorm(channels: 3) }),
            ("BRN", { try BatchRenorm(channels: 3) }),
            ("BRN affine:false", { try BatchRenorm(channels: 3, affine: false) }),
            ("MABN", { try MovingAverageBatchNorm(channels: 3, bufferSize: 2) }),
            ("MABN affine:false", { try MovingAverageBatchNorm(channels: 3, bufferSize: 2, affine: false) }),
            ("FrozenBN", { try FrozenBatchNorm(channels: 3) }),
        ]
    }

    /// A valid state for `layer` that differs from its current one in every entry (float values + 0.5, counters
    /// + 3: variances and standard deviations stay positive).
    private func perturbed(_ state: [String: StateTensor]) -> [String: StateTensor] {
        state.mapValues { entry in
            switch entry {
            case .float32(let shape, let values): return .float32(shape: shape, values: values.map { $0 + 0.5 })
            case .int64(let shape, let values): return .int64(shape: shape, values: values.map { $0 + 3 })
            }
        }
    }

    /// The same entry with one more element (and a shape to match).
    private func misShaped(_ entry: StateTensor) -> StateTensor {
        switch entry {
        case .float32(let shape, let values):
            return .float32(shape: [shape.reduce(1, *) + 1], values: values + [0.5])
        case .int64(_, let values): return .int64(shape: [values.count + 1], values: values + [1])
        }
    }

    func testOwnStateRoundTripsStrictly() throws {
        for (label, make) in try layers() {
            let source = try make(), target = try make()
            let state = perturbed(source.stateDict())
            let result = try target.loadStateDict(state)
            XCTAssertTrue(result.isEmpty, "\(label): \(result)")
            XCTAssertEqual(result, StateDictLoadResult())
            XCTAssertEqual(target.stateDict(), state, label)
            XCTAssertEqual(try target.loadStateDict(state, strict: false), StateDictLoadResult(), label)
        }
    }

    func testMissingKeys() throws {
        for (label, make) in try layers() {
            let layer = try make()
            let full = perturbed(layer.stateDict())
            guard !full.isEmpty else {
                // GroupNorm without affine has no state: nothing can be missing, the empty dict loads.
                XCTAssertEqual(try layer.loadStateDict([:]), StateDictLoadResult(), label)
                continue
            }
            for key in full.keys.sorted() {
                var state = full
                state[key] = nil
                let before = layer.stateDict()
                XCTAssertThrowsError(try layer.loadStateDict(state), "\(label) without \(key)") { error in
                    Kit.assertIncompatibleKeys(error, missing: [key])
                    XCTAssertTrue(error.localizedDescription.hasPrefix(layer.name + ": "), "\(error)")
                    XCTAssertTrue(error.localizedDescription.contains("missing key(s) \(key)"), "\(error)")
                }
                XCTAssertEqual(layer.stateDict(), before, "\(label): a refused load changed the layer")

                let result = try layer.loadStateDict(state, strict: false)
                XCTAssertEqual(result, StateDictLoadResult(missingKeys: [key]), label)
                XCTAssertFalse(result.isEmpty)
                var expected = full
                expected[key] = before[key]  // the missing entry keeps its value
                XCTAssertEqual(layer.stateDict(), expected, "\(label) without \(key)")
                try layer.loadStateDict(before)
            }
            // Everything missing: strict names every key; non-strict loads nothing and reports them all.
            XCTAssertThrowsError(try layer.loadStateDict([:])) {
                Kit.assertIncompatibleKeys($0, missing: full.keys.sorted())
            }
            let before = layer.stateDict()
            XCTAssertEqual(try layer.loadStateDict([:], strict: false).missingKeys, full.keys.sorted(), label)
            XCTAssertEqual(layer.stateDict(), before, label)
        }
    }

    func testUnexpectedKeys() throws {
        for (label, make) in try layers() {
            let layer = try make()
            var state = perturbed(layer.stateDict())
            let loaded = state
            state["running_mean_typo"] = .float32(shape: [3], values: [1, 2, 3])
            state["extra.num_batches_tracked"] = .int64(shape: [], values: [1])
            let before = layer.stateDict()
            XCTAssertThrowsError(try layer.loadStateDict(state), label) { error in
                Kit.assertIncompatibleKeys(
                    error, missing: [],
                    unexpected: ["extra.num_batches_tracked", "running_mean_typo"])
                XCTAssertTrue(error.localizedDescription.hasPrefix(layer.name + ": "), "\(error)")
                XCTAssertTrue(
                    error.localizedDescription.contains(
                        "unexpected key(s) extra.num_batches_tracked, running_mean_typo"), "\(error)")
            }
            XCTAssertEqual(layer.stateDict(), before, "\(label): a refused load changed the layer")
            let result = try layer.loadStateDict(state, strict: false)
            XCTAssertEqual(result.unexpectedKeys, ["extra.num_batches_tracked", "running_mean_typo"], label)
            XCTAssertEqual(result.missingKeys, [], label)
            XCTAssertEqual(layer.stateDict(), loaded, "\(label): non-strict loads every matching entry")
        }
    }

    func testMisShapedKeysThrowEvenWhenNotStrict() throws {
        for (label, make) in try layers() {
            let layer = try make()
            let full = perturbed(layer.stateDict())
            for key in full.keys.sorted() {
                var state = full
                state[key] = misShaped(full[key]!)
                let before = layer.stateDict()
                for strict in [true, false] {
                    XCTAssertThrowsError(try layer.loadStateDict(state, strict: strict), "\(label) \(key)") { error in
                        Kit.assertInvalidState(error, key)
                        XCTAssertTrue(
                            error.localizedDescription.hasPrefix(layer.name + ": state '\(key)'"),
                            "\(error)")
                    }
                    XCTAssertEqual(layer.stateDict(), before, "\(label) \(key) strict: \(strict)")
                }
            }
        }
    }

    /// A layer built with `affine: false` has no `weight`/`bias`: given ones are unexpected (PyTorch refuses them
    /// too), never silently skipped.
    func testAffineFalseGivenWeightAndBias() throws {
        let pairs: [(NormalizationLayer, NormalizationLayer)] = [
            (try BatchNorm(channels: 3), try BatchNorm(channels: 3, affine: false)),
            (try GroupNorm(channels: 4, groups: 2), try GroupNorm(channels: 4, groups: 2, affine: false)),
            (try BatchRenorm(channels: 3), try BatchRenorm(channels: 3, affine: false)),
            (
                try MovingAverageBatchNorm(channels: 3, bufferSize: 2),
                try MovingAverageBatchNorm(channels: 3, bufferSize: 2, affine: false)
            ),
        ]
        for (affine, plain) in pairs {
            let state = perturbed(affine.stateDict())
            XCTAssertTrue(plain.name.hasSuffix("affine: false)"), plain.name)
            let before = plain.stateDict()
            XCTAssertThrowsError(try plain.loadStateDict(state)) { error in
                Kit.assertIncompatibleKeys(error, missing: [], unexpected: ["bias", "weight"])
                XCTAssertTrue(error.localizedDescription.hasPrefix(plain.name), "\(error)")
            }
            XCTAssertEqual(plain.stateDict(), before)
            let result = try plain.loadStateDict(state, strict: false)
            XCTAssertEqual(result, StateDictLoadResult(unexpectedKeys: ["weight", "bias"]))
            var expected = state
            expected["weight"] = nil
            expected["bias"] = nil
            XCTAssertEqual(plain.stateDict(), expected, plain.name)
            // The other way: an affine layer given a state without γ, β misses them.
            XCTAssertThrowsError(try affine.loadStateDict(plain.stateDict())) {
                Kit.assertIncompatibleKeys($0, missing: ["bias", "weight"])
            }
        }
    }

    /// A value the layer cannot use (here a zero standard deviation) throws in non-strict mode too, even next to an
    /// unexpected key that non-strict would only report, and nothing changes.
    func testInvalidValuesThrowWhenNotStrict() throws {
        let brn = try BatchRenorm(channels: 2)
        var state = brn.stateDict()
        state["running_std"] = .float32(shape: [2], values: [1, 0])
        state["unexpected"] = .float32(shape: [1], values: [0])
        let before = brn.stateDict()
        XCTAssertThrowsError(try brn.loadStateDict(state, strict: false)) { Kit.assertInvalidState($0, "running_std") }
        XCTAssertEqual(brn.stateDict(), before)
    }

    /// Step counters from a file: BRN's and MABN's (which their schedules compute with) load up to 2^53 and are
    /// refused above, so counting on never overflows; BN's, which it never reads, loads any int64 as PyTorch's and
    /// counts on past the largest one by wrapping (as PyTorch's int64 addition), instead of trapping.
    func testStepCountersFromAFileNeverOverflow() throws {
        var rng = SeededGenerator(seed: 0x5EC)
        let x = Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng)
        let largest = Int64(1) << 53
        for (label, key, make) in [
            ("BRN", "num_batches_tracked", { try BatchRenorm(channels: 3) as NormalizationLayer }),
            ("MABN", "iters", { try MovingAverageBatchNorm(channels: 3, bufferSize: 2) as NormalizationLayer }),
        ] {
            let layer = try make()
            let before = layer.stateDict()
            for value in [largest + 1, .max] {
                var state = before
                state[key] = .int64(shape: [], values: [value])
                XCTAssertThrowsError(try layer.loadStateDict(state), "\(label) \(value)") {
                    Kit.assertInvalidState($0, key)
                }
                XCTAssertEqual(layer.stateDict(), before, label)
            }
            var state = before
            state[key] = .int64(shape: [], values: [largest])
            try layer.loadStateDict(state)
            _ = try layer.forward(x, training: true)
            guard case .int64(_, let counted)? = layer.stateDict()[key] else { return XCTFail(label) }
            XCTAssertGreaterThan(counted[0], largest, label)
        }
        let bn = try BatchNorm(channels: 3)
        var state = bn.stateDict()
        state["num_batches_tracked"] = .int64(shape: [], values: [.max])
        try bn.loadStateDict(state)
        _ = try bn.forward(x, training: true)
        XCTAssertEqual(bn.stateDict()["num_batches_tracked"], .int64(shape: [], values: [.min]))
    }

    func testLoadResultValue() {
        let result = StateDictLoadResult(missingKeys: ["b", "a"], unexpectedKeys: ["z", "c"])
        XCTAssertEqual(result.missingKeys, ["a", "b"])
        XCTAssertEqual(result.unexpectedKeys, ["c", "z"])
        XCTAssertFalse(result.isEmpty)
        XCTAssertEqual(result.description, "missing keys: [a, b]; unexpected keys: [c, z]")
        XCTAssertTrue(StateDictLoadResult().isEmpty)
        XCTAssertEqual(StateDictLoadResult().description, "all keys matched")
        XCTAssertTrue(StateDictLoadResult(unexpectedKeys: ["x"]).missingKeys.isEmpty)
        XCTAssertFalse(StateDictLoadResult(unexpectedKeys: ["x"]).isEmpty)
    }
}
