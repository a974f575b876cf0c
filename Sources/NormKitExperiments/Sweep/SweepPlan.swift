import Foundation
import NormKitTraining

/// One value of GroupNorm's groups axis: a number of groups `G` or a number of channels per group.
///
/// Encoded (and named in run directories) as `g<G>` or `gs<size>`, e.g. `g8`, `gs4`.
public enum GroupSpec: Codable, Hashable, Sendable, CustomStringConvertible {
    /// `G` groups in every GN layer.
    case groups(Int)
    /// This many channels per group in every GN layer.
    case groupSize(Int)

    /// The tag used in run names and in `plan.json`: `g8`, `gs4`.
    public var tag: String {
        switch self {
        case .groups(let g): return "g\(g)"
        case .groupSize(let s): return "gs\(s)"
        }
    }

    /// The number (groups or channels per group).
    public var value: Int {
        switch self {
        case .groups(let g): return g
        case .groupSize(let s): return s
        }
    }

    /// A human-readable form: `G=8` or `4 ch/group`.
    public var description: String {
        switch self {
        case .groups(let g): return "G=\(g)"
        case .groupSize(let s): return "\(s) ch/group"
        }
    }

    /// Parses a ``tag`` (`g8`, `gs4`); nil if malformed.
    public init?(tag: String) {
        if tag.hasPrefix("gs"), let s = Int(tag.dropFirst(2)), s > 0 {
            self = .groupSize(s)
        } else if tag.hasPrefix("g"), let g = Int(tag.dropFirst(1)), g > 0 {
            self = .groups(g)
        } else {
            return nil
        }
    }

    /// The spec a configuration's `groups` / `groupSize` fields describe, if any.
    public init?(configuration: TrainingConfiguration) {
        if let g = configuration.groups {
            self = .groups(g)
        } else if let s = configuration.groupSize {
            self = .groupSize(s)
        } else {
            return nil
        }
    }

    /// Decodes a ``tag`` string.
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let tag = try container.decode(String.self)
        guard let spec = GroupSpec(tag: tag) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "group spec '\(tag)' is neither g<groups> nor gs<groupSize>")
        }
        self = spec
    }

    /// Encodes the ``tag`` string.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(tag)
    }

    /// Writes this spec into a configuration (clearing the other field).
    func apply(to configuration: inout TrainingConfiguration) {
        switch self {
        case .groups(let g): configuration.groups = g; configuration.groupSize = nil
        case .groupSize(let s): configuration.groups = nil; configuration.groupSize = s
        }
    }
}

/// A named edit of the configuration of a sweep's MABN cells: one row of an ablation (issue 12, MABN's parts).
///
/// The name goes into run names (`mabn-<name>-nb2-s0`); the report tells the rows apart by the configuration's
/// ``/NormKitTraining/TrainingConfiguration/mabnWithout``.
public struct SweepVariant: Codable, Hashable, Sendable {
    /// A short name for run directories: lower-case letters, digits and `-`.
    public var name: String
    /// MABN's parts switched off (``/NormKitTraining/MABNPart`` raw values); empty: the paper's MABN.
    public var mabnWithout: [String]

    /// Creates a variant.
    public init(name: String, mabnWithout: [String]) {
        self.name = name; self.mabnWithout = mabnWithout
    }

    /// Writes this variant into a configuration.
    func apply(to configuration: inout TrainingConfiguration) {
        configuration.mabnWithout = mabnWithout.isEmpty ? nil : mabnWithout
    }
}

/// How a sweep turns a normalization batch size into an SGD batch.
public enum BatchSetting: String, Codable, Sendable {
    /// A fixed SGD batch (``SweepPlan/batch``); BN/BRN statistics come from ghost batches of `normBatch`
    /// samples and MABN counts one iteration per ghost batch. The learning rate stays the base one.
    case normalizationBatch = "normalization-batch"
    /// The papers' "images per GPU": SGD batch = ``SweepPlan/gpus`` × normBatch, statistics per `normBatch`,
    /// learning rate scaled linearly with the SGD batch (`learningRate = nil`, so
    /// ``/NormKitTraining/TrainingConfiguration/peakLearningRate`` gives `0.1 × batch / 32`).
    case perGPU = "per-gpu"
}

/// One run of a sweep: its configuration and the run directory it writes to.
public struct SweepCell: Codable, Equatable, Sendable {
    /// The run directory's name inside the sweep directory (`bn-nb2-s0`, `gn-g8-nb32-s1`): stable for a given plan,
    /// so a restarted sweep finds the runs it already finished.
    public var runName: String
    /// The configuration the run function receives.
    public var configuration: TrainingConfiguration
    /// The normalization batch columns of the results table this run fills: one for BN-like normalizations,
    /// all of the plan's columns for a batch-independent normalization run once and reused.
    public var columns: [Int]
    /// The groups-axis value this GN run stands for (nil when the plan has no groups axis or the run is not GN).
    public var groupSpec: GroupSpec?
    /// The name of the plan's variant this run stands for (nil without a variants axis or for a norm but MABN).
    public var variant: String?
    /// Data-parallel workers (`mpirun` ranks) that train this cell, each on `batch / ranks` images normalized in
    /// ghost batches of `normBatch` (see ``SweepPlan/ranks``); nil: one process.
    public var ranks: Int?

    /// Creates a cell.
    public init(
        runName: String, configuration: TrainingConfiguration, columns: [Int], groupSpec: GroupSpec? = nil,
        variant: String? = nil, ranks: Int? = nil
    ) {
        self.runName = runName; self.configuration = configuration; self.columns = columns
        self.groupSpec = groupSpec; self.variant = variant; self.ranks = ranks
    }

    /// True when this run's result is reused across several normalization batch columns.
    public var isReused: Bool { columns.count > 1 }
}

/// A grid of training runs: normalizations × normalization batch sizes × (GN groups) × seeds.
///
/// Every cell's configuration is ``base`` with the norm, batch, normBatch, seed (and, per-GPU, learning rate;
/// for GN on a groups axis, groups/groupSize) replaced. Groups fields are cleared for every normalization but GN.
///
/// **Batch-independent normalizations.** GN, LN, IN, frozen BN and `none` compute nothing across samples, so the
/// normalization batch does not change their math: in the ``BatchSetting/normalizationBatch`` setting a GN cell at
/// normBatch 8 would be a rerun of the same computation with different ghost-batch bookkeeping. By default
/// (``reuseBatchIndependentRuns``) such a normalization runs once per seed at the SGD batch (normBatch nil) and its
/// result fills every column; the results table marks those cells with a footnote. In the ``BatchSetting/perGPU``
/// setting the SGD batch and learning rate change with the column, so every column is a distinct run.
public struct SweepPlan: Codable, Equatable, Sendable {
    /// A short name for the sweep (printed in the report title).
    public var name: String
    /// The configuration every cell starts from (model, epochs, schedule, data slice, …).
    public var base: TrainingConfiguration
    /// The normalizations (table rows), in display order.
    public var norms: [NormKind]
    /// The normalization batch sizes (table columns); the report shows them in descending order.
    public var normBatches: [Int]
    /// The SGD batch in the ``BatchSetting/normalizationBatch`` setting.
    public var batch: Int
    /// How normalization batch sizes become SGD batches.
    public var setting: BatchSetting
    /// Simulated GPUs in the ``BatchSetting/perGPU`` setting (SGD batch = gpus × normBatch).
    public var gpus: Int
    /// GN groups axis (GN paper, Table 3); empty: GN uses ``base``'s groups fields (or the model default).
    public var groupAxis: [GroupSpec]
    /// Seeds; every cell runs once per seed.
    public var seeds: [UInt64]
    /// MABN variants axis (an ablation): every MABN cell runs once per variant; nil or empty: MABN as ``base``.
    /// Other norms are unaffected.
    public var variants: [SweepVariant]?
    /// Run batch-independent normalizations once per seed and reuse the result across columns (see the type's
    /// documentation). Only affects the ``BatchSetting/normalizationBatch`` setting.
    public var reuseBatchIndependentRuns: Bool
    /// Real workers instead of ghost batches (issue 11's ranks axis): a cell of a per-worker normalization (BN,
    /// BRN, MABN) whose normalization batch `k` is smaller than the SGD batch `B` runs on
    /// `gcd(ranks, B / k)` `mpirun` ranks, each normalizing its own `B / R` images (in ghost batches of `k` when
    /// `R < B / k`). Nil (the default): every cell in one process. Only in the
    /// ``BatchSetting/normalizationBatch`` setting.
    public var ranks: Int?

    /// Creates a plan; defaults: normalization batches 32, 16, 8, 4, 2 at a fixed SGD batch of 32, seed 0.
    public init(
        name: String = "sweep", base: TrainingConfiguration = TrainingConfiguration(),
        norms: [NormKind] = [.bn, .gn], normBatches: [Int] = [32, 16, 8, 4, 2], batch: Int = 32,
        setting: BatchSetting = .normalizationBatch, gpus: Int = 8, groupAxis: [GroupSpec] = [],
        seeds: [UInt64] = [0], reuseBatchIndependentRuns: Bool = true, variants: [SweepVariant]? = nil
    ) {
        self.name = name; self.base = base; self.norms = norms; self.normBatches = normBatches
        self.batch = batch; self.setting = setting; self.gpus = gpus; self.groupAxis = groupAxis
        self.seeds = seeds; self.reuseBatchIndependentRuns = reuseBatchIndependentRuns
        self.variants = variants
    }

    /// Whether a normalization's statistics span samples, so that the normalization batch changes its math
    /// (BN, BRN, MABN). GN, LN, IN, frozen BN and `none` do not depend on it.
    public static func dependsOnNormalizationBatch(_ norm: NormKind) -> Bool {
        switch norm {
        case .bn, .syncbn, .brn, .mabn: return true
        case .gn, .ln, .in, .frozenBN, .none: return false
        }
    }

    /// The table's columns: the normalization batch sizes, largest first.
    public var columns: [Int] { normBatches.sorted(by: >) }

    /// Throws ``SweepError/invalidPlan(_:)`` naming the first problem: an empty or duplicated axis, a
    /// non-positive size, a normalization batch that does not divide the SGD batch, a per-GPU SGD batch
    /// (gpus × normalization batch) that overflows `Int`, a groups axis without GN, a variants axis without
    /// MABN, with a malformed or repeated name, or naming an unknown MABN part.
    public func validate() throws {
        func fail(_ reason: String) -> SweepError { .invalidPlan(reason) }
        if norms.isEmpty { throw fail("no normalizations") }
        if Set(norms).count != norms.count { throw fail("normalizations listed twice: \(norms.map(\.rawValue))") }
        if normBatches.isEmpty { throw fail("no normalization batch sizes") }
        if Set(normBatches).count != normBatches.count {
            throw fail("normalization batch sizes listed twice: \(normBatches)")
        }
        if let bad = normBatches.first(where: { $0 < 1 }) { throw fail("normalization batch \(bad) is not positive") }
        if seeds.isEmpty { throw fail("no seeds") }
        if Set(seeds).count != seeds.count { throw fail("seeds listed twice: \(seeds)") }
        switch setting {
        case .normalizationBatch:
            if batch < 1 { throw fail("SGD batch \(batch) is not positive") }
            if let bad = normBatches.first(where: { $0 > batch || batch % $0 != 0 }) {
                throw fail("normalization batch \(bad) does not divide the SGD batch \(batch)")
            }
        case .perGPU:
            if gpus < 1 { throw fail("gpus \(gpus) is not positive") }
            if let bad = normBatches.first(where: { gpus.multipliedReportingOverflow(by: $0).overflow }) {
                throw fail("gpus \(gpus) × normalization batch \(bad) overflows the SGD batch (at most \(Int.max))")
            }
        }
        if !groupAxis.isEmpty {
            if !norms.contains(.gn) { throw fail("a groups axis \(groupAxis.map(\.tag)) needs gn among the norms") }
            if Set(groupAxis).count != groupAxis.count { throw fail("groups axis lists a value twice") }
            if let bad = groupAxis.first(where: { $0.value < 1 }) { throw fail("groups axis value \(bad.tag) < 1") }
        }
        if let variants, !variants.isEmpty {
            if !norms.contains(.mabn) {
                throw fail("a variants axis \(variants.map(\.name)) needs mabn among the norms")
            }
            if Set(variants.map(\.name)).count != variants.count { throw fail("variants axis lists a name twice") }
            let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-")
            for variant in variants {
                if variant.name.isEmpty || !variant.name.allSatisfy(allowed.contains) {
                    throw fail("variant name '\(variant.name)' must be lower-case letters, digits and -")
                }
                var config = base
                variant.apply(to: &config)
                do {
                    _ = try config.mabnPartsSwitchedOff()
                } catch {
                    throw fail("variant \(variant.name): \(error)")
                }
            }
            if Set(variants.map { Set($0.mabnWithout) }).count != variants.count {
                throw fail("two variants switch off the same MABN parts")
            }
        }
        if base.epochs < 1 { throw fail("epochs \(base.epochs) is not positive") }
        if let ranks {
            if ranks < 1 { throw fail("ranks \(ranks) is not positive") }
            if setting != .normalizationBatch {
                throw fail("a ranks axis needs the normalization-batch setting (true small batches run in one process)")
            }
        }
    }

    /// Estimated wall seconds for the whole plan at a training throughput (images per second): for every cell,
    /// training images × epochs / throughput plus one evaluation of the test images per epoch (counted at
    /// ``evaluationSpeedup`` times the training throughput). Full data is Fashion-MNIST's 60,000 / 10,000 images.
    public func estimatedSeconds(
        imagesPerSecond: Double,
        including include: (SweepCell) -> Bool = { _ in true }
    ) -> Double {
        guard imagesPerSecond > 0, let cells = try? cells(including: include) else { return 0 }
        return cells.reduce(0) { $0 + Self.estimatedSeconds(of: $1.configuration, imagesPerSecond: imagesPerSecond) }
    }

    /// Estimated wall seconds of one run (see ``estimatedSeconds(imagesPerSecond:including:)``).
    public static func estimatedSeconds(of configuration: TrainingConfiguration, imagesPerSecond: Double) -> Double {
        guard imagesPerSecond > 0 else { return 0 }
        let train = Double(min(configuration.trainLimit ?? fullTrainImages, fullTrainImages))
        let test = Double(min(configuration.testLimit ?? fullTestImages, fullTestImages))
        let epochs = Double(configuration.epochs)
        return epochs * (train / imagesPerSecond + test / (imagesPerSecond * evaluationSpeedup))
    }

    /// Training images in the full data set (Fashion-MNIST), used when ``/NormKitTraining/TrainingConfiguration/trainLimit`` is nil.
    public static let fullTrainImages = 60_000
    /// Test images in the full data set (Fashion-MNIST), used when ``/NormKitTraining/TrainingConfiguration/testLimit`` is nil.
    public static let fullTestImages = 10_000
    /// How much faster evaluation (forward only) runs than training, for estimates.
    public static let evaluationSpeedup = 3.0
}

/// The content of `<sweepDir>/plan.json`: the plan and the cells it expanded to (after the caller's filter).
public struct SweepPlanRecord: Codable, Equatable, Sendable {
    /// The plan as given.
    public var plan: SweepPlan
    /// The cells the runner runs, in order.
    public var cells: [SweepCell]

    /// Creates a record.
    public init(plan: SweepPlan, cells: [SweepCell]) {
        self.plan = plan; self.cells = cells
    }

    /// The file name inside a sweep directory.
    public static let fileName = "plan.json"

    /// Reads `<directory>/plan.json`; nil when absent.
    ///
    /// The file is read with NormKit's POSIX reader rather than `Data(contentsOf:)`, which on Linux leaks a
    /// 4 KiB buffer for every empty file (found by the `fuzz-sweep-plan` target, docs/FUZZING.md).
    /// - Throws: ``SweepError/unreadableRecord(_:reason:)`` when present but not readable or not decodable.
    public static func read(from directory: URL) throws -> SweepPlanRecord? {
        let url = directory.appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        do {
            let data = Data(try readFileBytes(path: url.path))
            do {
                return try JSONDecoder().decode(SweepPlanRecord.self, from: data)
            } catch {
                throw SweepError.unreadableRecord(
                    url, reason: ErrorText.describeDecoding(error, of: SweepPlanRecord.self, from: data))
            }
        } catch let error as SweepError {
            throw error
        } catch {
            throw SweepError.unreadableRecord(url, reason: ErrorText.describe(error, about: url.path))
        }
    }

    /// Writes `<directory>/plan.json` (pretty-printed, sorted keys).
    /// - Throws: ``SweepError/cannotWrite(_:reason:)``.
    public func write(to directory: URL) throws {
        let url = directory.appendingPathComponent(Self.fileName)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            try encoder.encode(self).write(to: url, options: .atomic)
        } catch {
            throw SweepError.cannotWrite(url, reason: ErrorText.describe(error, about: url.path))
        }
    }
}
