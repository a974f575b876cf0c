import Foundation

/// The normalization a model uses, as the CLI spells it.
public enum NormKind: String, Codable, CaseIterable, Sendable {
    case bn, gn, ln, `in`, brn, mabn
    case frozenBN = "frozen-bn"
    /// BatchNorm whose statistics are the global batch's over all workers of a data-parallel run (SyncBN, spec §9);
    /// in a single process, BatchNorm. Its tensors and checkpoints are BatchNorm's.
    case syncbn
    case none
}

/// Everything that determines a training run. Saved in `summary.json`, in checkpoints' metadata and used as
/// a sweep cell's identity.
public struct TrainingConfiguration: Codable, Equatable, Sendable {
    /// `resnet8`, `resnet14`, `resnet20`, … (depth 6n+2) or `vgg`.
    public var model: String = "resnet8"
    public var norm: NormKind = .gn
    /// GN groups (exclusive with ``groupSize``); nil with both uses the model default.
    public var groups: Int? = nil
    /// GN channels per group.
    public var groupSize: Int? = nil
    /// SGD batch.
    public var batch: Int = 32
    /// Samples per normalization batch (ghost batch for BN/BRN, one MABN iteration); nil = ``batch``.
    public var normBatch: Int? = nil
    public var epochs: Int = 2
    /// Peak learning rate; nil = `0.1 × batch / 32` (linear scaling rule).
    public var learningRate: Double? = nil
    public var momentum: Double = 0.9
    public var weightDecay: Double = 5e-4
    /// Apply weight decay to γ, β and biases too (default: conv and linear weights only).
    public var decayAllParameters: Bool = false
    /// `cosine` (linear warm-up then cosine to 0) or `step` (÷10 at ``milestones``).
    public var schedule: String = "cosine"
    /// Fraction of all steps spent in linear warm-up from lr/25.
    public var warmupFraction: Double = 0.15
    /// Epochs at which the step schedule divides the learning rate by 10.
    public var milestones: [Int] = []
    public var seed: UInt64 = 0
    /// Use only the first `trainLimit` training images (nil: all).
    public var trainLimit: Int? = nil
    /// Use only the first `testLimit` test images (nil: all).
    public var testLimit: Int? = nil
    public var augment: Bool = true
    public var threads: Int = 2

    // The layers' hyper-parameters (nil: the layer's default; the trainer records MABN's buffer resolved).
    /// MABN's buffer `S_buf` in iterations; nil: ``defaultMABNBuffer`` (the statistics of about 32 images).
    public var mabnBuffer: Int? = nil
    /// MABN iterations that use batch statistics (nil: 100).
    public var mabnWarmup: Int? = nil
    /// MABN's EMA factor, the weight of the **old** value (nil: 0.98, the authors' value).
    public var mabnOldValueWeight: Double? = nil
    /// MABN's parts switched off for an ablation (issue 12), in ``MABNPart`` order: `form`, `fwd-sma`,
    /// `bwd-sma`, `renorm` (``/NormKit/MovingAverageBatchNorm/Parts``) and `cenconv` (the weight-centred
    /// convolutions before MABN). nil or empty: the paper's MABN (every part on).
    public var mabnWithout: [String]? = nil
    /// BN's running-statistics momentum, PyTorch's convention: the weight of the **new** value (nil: 0.1).
    public var bnMomentum: Double? = nil
    /// BRN's running-statistics momentum, the weight of the new value (nil: 0.01).
    public var brnMomentum: Double? = nil
    /// BRN's fully relaxed `r_max` and `d_max` (nil: 3 and 5).
    public var brnRMax: Double? = nil
    public var brnDMax: Double? = nil
    /// BRN's relaxation schedule: `scaled` (warm-up 5 %, `r_max` relaxed by 40 %, `d_max` by 25 % of the run's
    /// steps; the default) or `paper` (5k, 40k and 25k steps).
    public var brnSchedule: String? = nil

    public init() {}

    /// The learning rate actually used at the peak.
    public var peakLearningRate: Double { learningRate ?? 0.1 * Double(batch) / 32 }
    /// The statistics batch actually used.
    public var effectiveNormBatch: Int { normBatch ?? batch }

    /// This configuration with the defaults that could change between NormKit versions made explicit: GN's
    /// groups (``NormalizationSettings/defaultGroups`` when neither ``groups`` nor ``groupSize`` is set), and
    /// ``mabnWithout`` in ``MABNPart`` order (nil when empty). The
    /// trainer records the resolved form, so a checkpoint or summary says what it was trained with.
    public var resolved: TrainingConfiguration {
        var c = self
        if c.norm == .gn && c.groups == nil && c.groupSize == nil { c.groups = NormalizationSettings.defaultGroups }
        if c.norm == .mabn && c.mabnBuffer == nil { c.mabnBuffer = c.defaultMABNBuffer }
        if let without = c.mabnWithout {
            // Canonical: nil for none, else in MABNPart order (unknown names, refused by validation, last).
            let order = MABNPart.allCases.map(\.rawValue)
            func rank(_ name: String) -> Int { order.firstIndex(of: name) ?? order.count }
            c.mabnWithout = without.isEmpty ? nil : without.sorted { (rank($0), $0) < (rank($1), $1) }
        }
        return c
    }

    /// MABN's default buffer: `max(1, 32 / normalization batch)` iterations, so that its statistics cover about
    /// 32 images whatever the batch (a true batch of 2 gets 16, as the paper's per-GPU batch of 2 in 32).
    public var defaultMABNBuffer: Int { max(1, 32 / max(effectiveNormBatch, 1)) }
}

/// One of MABN's parts, as ``TrainingConfiguration/mabnWithout`` and `normkit train --mabn-without` name it.
public enum MABNPart: String, CaseIterable, Codable, Sendable {
    /// The second-moment form (off: the BN form, mean and variance).
    case form
    /// The simple moving average of the forward statistic(s).
    case forwardSMA = "fwd-sma"
    /// The simple moving average of the backward statistic(s).
    case backwardSMA = "bwd-sma"
    /// The renormalization factor `r`.
    case renormalization = "renorm"
    /// Weight-centred convolutions (CenConv) before the MABN layers.
    case cenConv = "cenconv"
}

/// One line of `metrics.jsonl`: the state after an epoch.
public struct EpochMetrics: Codable, Equatable, Sendable {
    /// The epoch just finished, counted from 0 (the console's `epoch 1/E` line is epoch 0 here).
    public var epoch: Int
    /// Optimizer steps taken since the run started, this epoch's included.
    public var step: Int
    public var trainLoss: Double
    public var trainError: Double
    public var testLoss: Double
    public var testError: Double
    public var learningRate: Double
    /// Wall seconds since the run started (training and evaluation).
    public var seconds: Double
    /// Training throughput over this epoch.
    public var imagesPerSecond: Double
    /// Running-statistic updates the BN, BRN and MABN layers skipped in this epoch because a batch's statistics
    /// were not finite (their `skippedUpdates`), summed over the layers and the workers, a layer whose statistics
    /// the workers share (SyncBN, MABN) counted once (worker 0's count: docs/DISTRIBUTED.md); nil in records
    /// written before NormKit counted them.
    public var skippedUpdates: Int?

    public init(
        epoch: Int, step: Int, trainLoss: Double, trainError: Double, testLoss: Double, testError: Double,
        learningRate: Double, seconds: Double, imagesPerSecond: Double, skippedUpdates: Int? = nil
    ) {
        self.epoch = epoch; self.step = step; self.trainLoss = trainLoss; self.trainError = trainError
        self.testLoss = testLoss; self.testError = testError; self.learningRate = learningRate
        self.seconds = seconds; self.imagesPerSecond = imagesPerSecond; self.skippedUpdates = skippedUpdates
    }
}

/// `summary.json`: written when a run finishes.
public struct RunSummary: Codable, Equatable, Sendable {
    public var configuration: TrainingConfiguration
    /// Test error (fraction, 0…1) after the last epoch.
    public var finalTestError: Double
    public var bestTestError: Double
    public var epochs: [EpochMetrics]
    public var wallSeconds: Double
    public var imagesPerSecond: Double
    /// Accuracy per class on the test set after the last epoch.
    public var perClassAccuracy: [Double]
    /// True once every epoch ran; a sweep redoes runs without a finished summary.
    public var finished: Bool
    /// What the run was trained on (nil in summaries written before NormKit recorded it).
    public var data: DataRecord?
    /// The convolution engine that computed it (`"oneDNN 2.6.3"`, `"im2col + OpenBLAS (SkylakeX)"`; nil in older
    /// summaries).
    public var convolutionEngine: String?
    /// The data-parallel workers (ranks) that trained it; nil for one process (and in older summaries).
    public var workers: Int?
    /// Running-statistic updates the normalization layers skipped over the whole run (the sum of the epochs'
    /// ``EpochMetrics/skippedUpdates``); nil in older summaries.
    public var skippedUpdates: Int?

    public init(
        configuration: TrainingConfiguration, finalTestError: Double, bestTestError: Double,
        epochs: [EpochMetrics], wallSeconds: Double, imagesPerSecond: Double,
        perClassAccuracy: [Double], finished: Bool, data: DataRecord? = nil,
        convolutionEngine: String? = nil, workers: Int? = nil, skippedUpdates: Int? = nil
    ) {
        self.data = data
        self.workers = workers
        self.skippedUpdates = skippedUpdates
        self.convolutionEngine = convolutionEngine
        self.configuration = configuration; self.finalTestError = finalTestError
        self.bestTestError = bestTestError; self.epochs = epochs; self.wallSeconds = wallSeconds
        self.imagesPerSecond = imagesPerSecond; self.perClassAccuracy = perClassAccuracy; self.finished = finished
    }
}

extension EpochMetrics {
    /// The skipped running-statistic updates of `epochs` summed (saturating, `saturatingSum`); nil when no record has
    /// the count (records older than it). The run's total in `summary.json`, and a sweep's for an unfinished run.
    package static func totalSkippedUpdates(_ epochs: [EpochMetrics]) -> Int? {
        let counts = epochs.compactMap(\.skippedUpdates)
        return counts.isEmpty ? nil : counts.reduce(0) { $0.saturatingSum($1) }
    }
}

extension Int {
    /// `self + other` for counts of 0 or more, `Int.max` where it would overflow (a negative `other`, which no run
    /// records, counts as 0): a count read from a file cannot make a sum trap.
    package func saturatingSum(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(Swift.max(0, other))
        return overflow ? .max : sum
    }
}
