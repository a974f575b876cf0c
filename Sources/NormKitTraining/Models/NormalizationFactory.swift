/// How to build the normalization layers of a model: which kind and its hyper-parameters.
public struct NormalizationSettings: Codable, Equatable, Sendable {
    /// The kind of normalization (`.none` builds no layer).
    public var kind: NormKind
    /// GN groups; nil with ``groupSize`` nil means ``defaultGroups``.
    public var groups: Int?
    /// GN channels per group (exclusive with ``groups``).
    public var groupSize: Int?
    /// Samples per normalization batch for BN, BRN and MABN (nil: the whole batch).
    public var normBatch: Int?
    /// MABN's `S_buf` (spec §4: SGD batch / normalization batch).
    public var mabnBufferSize: Int
    /// BRN's `r_max`/`d_max` schedule.
    public var renormSchedule: BatchRenorm.Schedule
    /// BN's momentum (PyTorch's convention, weight of the new value).
    public var batchNormMomentum: Float = 0.1
    /// BRN's momentum (weight of the new value).
    public var renormMomentum: Float = 0.01
    /// MABN's warm-up iterations and EMA weight of the old value.
    public var mabnWarmup: Int = 100
    public var mabnOldValueWeight: Float = 0.98
    /// MABN's layer parts (an ablation; default the paper's, all on).
    public var mabnParts: MovingAverageBatchNorm.Parts = .paper
    /// Whether MABN's convolutions are weight-centred (CenConv; default on, the paper's). Off only for an ablation.
    public var mabnCentresConvolutions: Bool = true

    /// GN's default for NormKit's small-image ResNets (widths 16/32/64): 16 groups, i.e. 1, 2 and 4 channels per
    /// group in the three stages. The paper's 32 groups cannot split the first stage's 16 channels. Spec §8 started
    /// from 8 groups and left the choice to its Table 3 sweep; `normkit sweep --preset paper-table3` (3 seeds,
    /// docs/RESULTS.md) measured 12.50 ± 0.56 % test error with 16 groups against 15.15 ± 0.33 % with 8, the best
    /// of the groups axis. A checkpoint records its groups in its metadata, so older 8-group checkpoints load as
    /// what they are.
    public static let defaultGroups = 16

    /// Settings for `kind` with the defaults of spec §8.
    public init(
        kind: NormKind, groups: Int? = nil, groupSize: Int? = nil, normBatch: Int? = nil,
        mabnBufferSize: Int = 1, renormSchedule: BatchRenorm.Schedule = .paper
    ) {
        self.kind = kind
        self.groups = groups
        self.groupSize = groupSize
        self.normBatch = normBatch
        self.mabnBufferSize = mabnBufferSize
        self.renormSchedule = renormSchedule
    }

    /// The settings of a training configuration (spec §8): MABN's buffer (``TrainingConfiguration/mabnBufferSize``),
    /// BRN's schedule scaled to `totalSteps` SGD steps (or the paper's), and the layers' momenta and warm-up.
    public init(_ c: TrainingConfiguration, totalSteps: Int) throws {
        let rMax = c.brnRMax ?? 3, dMax = c.brnDMax ?? 5
        let schedule: BatchRenorm.Schedule
        if c.brnSchedule == "paper" {
            let paper = BatchRenorm.Schedule.paper
            schedule = BatchRenorm.Schedule(
                warmupSteps: paper.warmupSteps, rMax: rMax, dMax: dMax,
                rSteps: paper.rSteps, dSteps: paper.dSteps)
        } else {
            schedule = try BatchRenorm.Schedule.scaled(totalSteps: max(totalSteps, 1), rMax: rMax, dMax: dMax)
        }
        self.init(
            kind: c.norm, groups: c.groups, groupSize: c.groupSize, normBatch: c.normBatch,
            mabnBufferSize: c.mabnBufferSize, renormSchedule: schedule)
        batchNormMomentum = Float(c.bnMomentum ?? 0.1)
        renormMomentum = Float(c.brnMomentum ?? 0.01)
        mabnWarmup = c.mabnWarmup ?? 100
        mabnOldValueWeight = Float(c.mabnOldValueWeight ?? 0.98)
        let without = try c.mabnPartsSwitchedOff()
        mabnParts = MovingAverageBatchNorm.Parts(
            secondMomentForm: !without.contains(.form), forwardSMA: !without.contains(.forwardSMA),
            backwardSMA: !without.contains(.backwardSMA), renormalization: !without.contains(.renormalization))
        mabnCentresConvolutions = !without.contains(.cenConv)
    }

    /// Whether convolutions feeding this normalization are weight-centred (MABN's CenConv, unless an ablation
    /// switched it off with ``mabnCentresConvolutions``).
    public var centresConvolutions: Bool { kind == .mabn && mabnCentresConvolutions }

    /// A new normalization layer over `channels` channels, or nil for `.none`.
    ///
    /// - Throws: the layer's constructor error (``/NormKit/NormalizationError``): groups that do not divide
    ///   `channels`, both ``groups`` and ``groupSize``, an out-of-range momentum, buffer size or `normBatch`.
    public func makeLayer(channels: Int) throws -> NormalizationLayer? {
        switch kind {
        case .bn: return try BatchNorm(channels: channels, momentum: batchNormMomentum, normBatch: normBatch)
        case .syncbn:
            // The workers' reduction is attached by Trainer.distribute(over:); until then it is BatchNorm.
            return try BatchNorm(channels: channels, momentum: batchNormMomentum)
        case .gn:
            // Both given is refused by GroupNorm; neither means the default groups.
            return try GroupNorm(
                channels: channels, groups: groupSize == nil ? groups ?? Self.defaultGroups : groups,
                groupSize: groupSize)
        case .ln: return try GroupNorm.layerNorm(channels: channels)
        case .in: return try GroupNorm.instanceNorm(channels: channels)
        case .brn:
            return try BatchRenorm(
                channels: channels, momentum: renormMomentum, schedule: renormSchedule,
                normBatch: normBatch)
        case .mabn:
            return try MovingAverageBatchNorm(
                channels: channels, bufferSize: mabnBufferSize,
                oldValueWeight: mabnOldValueWeight, warmup: mabnWarmup,
                normBatch: normBatch, parts: mabnParts)
        case .frozenBN: return try FrozenBatchNorm(channels: channels)
        case .none: return nil
        }
    }
}
