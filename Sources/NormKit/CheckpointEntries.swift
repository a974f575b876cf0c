// The state-dict entries the layers share, written and checked in one place so that every layer keeps PyTorch's
// keys, shapes and dtypes and the rules of loadStateDict: strict by default (exactly the layer's keys), every entry
// read and checked before anything is assigned, so nothing changes if the load throws.

/// A condition every value of a checkpoint statistic must meet, and the reason an error gives when one does not.
struct ValueRequirement: Sendable {
    /// The reason in ``NormalizationError/invalidState(layer:name:reason:)`` (`"must be finite and ≥ 0"`).
    let reason: String
    /// Whether one value meets the requirement.
    let isMet: @Sendable (Float) -> Bool

    /// Finite and ≥ 0 (variances, second moments).
    static let finiteNonNegative = ValueRequirement(reason: "must be finite and ≥ 0") { $0 >= 0 && $0.isFinite }
    /// Positive and finite (standard deviations).
    static let positiveFinite = ValueRequirement(reason: "must be positive and finite") { $0 > 0 && $0.isFinite }
}

/// Reads one layer's entries from a state dict, PyTorch's `load_state_dict` way.
///
/// Each read declares a key the layer has; a present entry is checked (dtype, shape, values) at once and an
/// invalid one throws whatever `strict` is. An absent one reads as nil. ``finish()`` then compares the declared
/// keys with the state dict's: in strict mode any missing or unexpected key throws, otherwise they are reported.
/// Callers assign nothing until ``finish()`` has returned.
struct StateDictReader {
    /// The state dict being loaded.
    let state: [String: StateTensor]
    /// The layer's name, for errors.
    let layer: String
    /// Whether missing and unexpected keys throw.
    let strict: Bool
    /// The keys the layer has (declared by the reads).
    private var expected: Set<String> = []

    init(_ state: [String: StateTensor], layer: String, strict: Bool) {
        self.state = state
        self.layer = layer
        self.strict = strict
    }

    /// The float32 values of `name`, checked against `shape` and, when given, `requirement`; nil if absent.
    mutating func floats(
        _ name: String, shape: [Int], meeting requirement: ValueRequirement? = nil
    ) throws
        -> [Float]?
    {
        expected.insert(name)
        guard let entry = state[name] else { return nil }
        guard case .float32(let s, let values) = entry else {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: "expected float32")
        }
        guard s == shape, values.count == shape.reduce(1, *) else {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: "expected shape \(shape), got \(s)")
        }
        if let requirement, !values.allSatisfy(requirement.isMet) {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: requirement.reason)
        }
        return values
    }

    /// The int64 scalar step counter `name` (with `nonNegative`, a negative value is an error); nil if absent.
    mutating func stepCounter(_ name: String, nonNegative: Bool) throws -> Int64? {
        expected.insert(name)
        guard let entry = state[name] else { return nil }
        guard case .int64(let s, let values) = entry, s.allSatisfy({ $0 == 1 }), values.count == 1 else {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: "expected an int64 scalar")
        }
        guard !nonNegative || (0...Self.largestStepCount).contains(values[0]) else {
            throw NormalizationError.invalidState(
                layer: layer, name: name,
                reason: "must be in 0...\(Self.largestStepCount) (2^53: more steps than any run takes; the layer "
                    + "counts on from it)")
        }
        return values[0]
    }

    /// The largest step counter a layer that computes with it (BRN's schedule, MABN's iterations) loads: 2^53, exact
    /// in Double and far from overflowing as the layer adds its steps.
    static let largestStepCount: Int64 = 1 << 53

    /// `weight` and `bias`, float32 `(C,)`, of the parameters that exist (a layer without them does not declare
    /// the keys, so given ones are unexpected).
    mutating func affine(weight: Parameter?, bias: Parameter?, channels: Int) throws -> AffineValues {
        AffineValues(
            weight: weight == nil ? nil : try floats("weight", shape: [channels]),
            bias: bias == nil ? nil : try floats("bias", shape: [channels]))
    }

    /// The missing and unexpected keys.
    ///
    /// - Throws: in strict mode, ``NormalizationError/incompatibleStateDict(layer:missingKeys:unexpectedKeys:)``
    ///   if either list is not empty.
    func finish() throws -> StateDictLoadResult {
        let result = StateDictLoadResult(
            missingKeys: expected.filter { state[$0] == nil },
            unexpectedKeys: state.keys.filter { !expected.contains($0) })
        if strict, !result.isEmpty {
            throw NormalizationError.incompatibleStateDict(
                layer: layer, missingKeys: result.missingKeys, unexpectedKeys: result.unexpectedKeys)
        }
        return result
    }
}

/// `γ` and `β` read from a checkpoint (nil: absent or the layer has none), kept aside until every other entry has
/// been checked too.
struct AffineValues {
    /// The `weight` values.
    let weight: [Float]?
    /// The `bias` values.
    let bias: [Float]?

    /// Copies the values that were read into the layer's parameters.
    func restore(weight: Parameter?, bias: Parameter?) {
        if let w = self.weight { weight?.value = w }
        if let b = self.bias { bias?.value = b }
    }
}

extension Dictionary where Key == String, Value == StateTensor {
    /// Adds the `weight` and `bias` entries, float32 `(C,)`, of the parameters that exist.
    mutating func addAffine(weight: Parameter?, bias: Parameter?, channels: Int) {
        if let weight { self["weight"] = .float32(shape: [channels], values: weight.value) }
        if let bias { self["bias"] = .float32(shape: [channels], values: bias.value) }
    }
}

/// The state dict of the BatchNorm family (``BatchNorm``, ``BatchRenorm``, ``FrozenBatchNorm``) in PyTorch's
/// naming: `weight` and `bias` (when the layer has them), `running_mean` and a spread statistic (`running_var` or
/// `running_std`), all float32 `(C,)`, and the step counter `num_batches_tracked` (int64 scalar, shape `[]`)
/// when the layer keeps one.
struct RunningStatisticsCheckpoint {
    /// Whether a layer keeps `num_batches_tracked`, and which values it accepts when loading.
    enum StepCounter {
        /// No step counter (``FrozenBatchNorm``).
        case none
        /// Any value (``BatchNorm``, as PyTorch).
        case anyValue
        /// A value ≥ 0 (``BatchRenorm``, whose schedule runs on it).
        case nonNegative
    }

    /// The layer's ``NormalizationLayer/name``, for error messages.
    let layer: String
    /// `C`.
    let channels: Int
    /// The key of the spread statistic: `running_var` or `running_std`.
    let spreadName: String
    /// What every spread value must meet when loading (nil: any value).
    let spreadRequirement: ValueRequirement?
    /// Whether the layer keeps `num_batches_tracked`, and its rule.
    let stepCounter: StepCounter

    /// The entries of a layer's state (`batchesTracked` is written only when the layer keeps a step counter).
    func entries(
        weight: Parameter?, bias: Parameter?, runningMean: [Float], runningSpread: [Float], batchesTracked: Int64 = 0
    ) -> [String: StateTensor] {
        var state: [String: StateTensor] = [
            "running_mean": .float32(shape: [channels], values: runningMean),
            spreadName: .float32(shape: [channels], values: runningSpread),
        ]
        if stepCounter != .none { state["num_batches_tracked"] = .int64(shape: [], values: [batchesTracked]) }
        state.addAffine(weight: weight, bias: bias, channels: channels)
        return state
    }

    /// Reads and checks every entry (`running_mean`, the spread, `num_batches_tracked`, then `weight` and `bias`
    /// when the layer has them) and the key sets, then assigns what was read: nothing changes if it throws.
    ///
    /// - Throws: ``NormalizationError/invalidState(layer:name:reason:)`` for the first entry that has the wrong
    ///   shape or dtype or breaks the layer's rule; in strict mode
    ///   ``NormalizationError/incompatibleStateDict(layer:missingKeys:unexpectedKeys:)``.
    func load(
        _ state: [String: StateTensor], strict: Bool, runningMean: inout [Float], runningSpread: inout [Float],
        batchesTracked: inout Int64, weight: Parameter?, bias: Parameter?
    ) throws -> StateDictLoadResult {
        var reader = StateDictReader(state, layer: layer, strict: strict)
        let mean = try reader.floats("running_mean", shape: [channels])
        let spread = try reader.floats(spreadName, shape: [channels], meeting: spreadRequirement)
        let tracked =
            stepCounter == .none
            ? nil : try reader.stepCounter("num_batches_tracked", nonNegative: stepCounter == .nonNegative)
        let affine = try reader.affine(weight: weight, bias: bias, channels: channels)
        let result = try reader.finish()
        if let mean { runningMean = mean }
        if let spread { runningSpread = spread }
        if let tracked { batchesTracked = tracked }
        affine.restore(weight: weight, bias: bias)
        return result
    }

    /// ``load(_:strict:runningMean:runningSpread:batchesTracked:weight:bias:)`` for a layer without a step counter.
    func load(
        _ state: [String: StateTensor], strict: Bool, runningMean: inout [Float], runningSpread: inout [Float],
        weight: Parameter?, bias: Parameter?
    ) throws -> StateDictLoadResult {
        var untracked: Int64 = 0
        return try load(
            state, strict: strict, runningMean: &runningMean, runningSpread: &runningSpread,
            batchesTracked: &untracked, weight: weight, bias: bias)
    }
}
