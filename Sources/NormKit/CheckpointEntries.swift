// The state-dict entries the layers share, written and checked in one place so that every layer keeps PyTorch's
// keys, shapes and dtypes and the rule of loadStateDict: every entry is read and checked before anything is
// assigned, so nothing changes if any entry is invalid.

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

/// `γ` and `β` read from a checkpoint, kept aside until every other entry has been checked too.
struct AffineValues {
    /// The `weight` values.
    let weight: [Float]
    /// The `bias` values.
    let bias: [Float]

    /// Copies the values into the layer's parameters.
    func restore(weight: Parameter?, bias: Parameter?) {
        weight?.value = self.weight
        bias?.value = self.bias
    }
}

extension Dictionary where Key == String, Value == StateTensor {
    /// The float32 values of `name`, checked against `shape` and, when given, `requirement`.
    func floats(_ name: String, shape: [Int], layer: String, meeting requirement: ValueRequirement?) throws -> [Float] {
        let values = try floats(name, shape: shape, layer: layer)
        if let requirement, !values.allSatisfy(requirement.isMet) {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: requirement.reason)
        }
        return values
    }

    /// The int64 scalar step counter `name`; with `nonNegative`, a negative value is an error.
    func stepCounter(_ name: String, layer: String, nonNegative: Bool) throws -> Int64 {
        let value = try scalarInt(name, layer: layer)
        guard !nonNegative || value >= 0 else {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: "must be ≥ 0")
        }
        return value
    }

    /// `weight` then `bias`, float32 `(C,)`, when the layer has affine parameters; nil (nothing read) otherwise.
    func affineValues(channels: Int, layer: String, affine: Bool) throws -> AffineValues? {
        guard affine else { return nil }
        let weight = try floats("weight", shape: [channels], layer: layer)
        let bias = try floats("bias", shape: [channels], layer: layer)
        return AffineValues(weight: weight, bias: bias)
    }

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
    func entries(weight: Parameter?, bias: Parameter?, runningMean: [Float], runningSpread: [Float],
                 batchesTracked: Int64 = 0) -> [String: StateTensor] {
        var state: [String: StateTensor] = [
            "running_mean": .float32(shape: [channels], values: runningMean),
            spreadName: .float32(shape: [channels], values: runningSpread),
        ]
        if stepCounter != .none { state["num_batches_tracked"] = .int64(shape: [], values: [batchesTracked]) }
        state.addAffine(weight: weight, bias: bias, channels: channels)
        return state
    }

    /// Reads and checks every entry (`running_mean`, the spread, `num_batches_tracked`, then `weight` and `bias`
    /// when the layer has them), then assigns them all: nothing changes if any entry is invalid.
    ///
    /// - Throws: ``NormalizationError/invalidState(layer:name:reason:)`` for the first entry that is missing, has
    ///   the wrong shape or dtype, or breaks the layer's rule.
    func load(_ state: [String: StateTensor], runningMean: inout [Float], runningSpread: inout [Float],
              batchesTracked: inout Int64, weight: Parameter?, bias: Parameter?) throws {
        let mean = try state.floats("running_mean", shape: [channels], layer: layer)
        let spread = try state.floats(spreadName, shape: [channels], layer: layer, meeting: spreadRequirement)
        var tracked: Int64 = 0
        if stepCounter != .none {
            tracked = try state.stepCounter("num_batches_tracked", layer: layer,
                                            nonNegative: stepCounter == .nonNegative)
        }
        let affine = try state.affineValues(channels: channels, layer: layer, affine: weight != nil)
        runningMean = mean
        runningSpread = spread
        batchesTracked = tracked
        affine?.restore(weight: weight, bias: bias)
    }

    /// ``load(_:runningMean:runningSpread:batchesTracked:weight:bias:)`` for a layer without a step counter.
    func load(_ state: [String: StateTensor], runningMean: inout [Float], runningSpread: inout [Float],
              weight: Parameter?, bias: Parameter?) throws {
        var untracked: Int64 = 0
        try load(state, runningMean: &runningMean, runningSpread: &runningSpread, batchesTracked: &untracked,
                 weight: weight, bias: bias)
    }
}
