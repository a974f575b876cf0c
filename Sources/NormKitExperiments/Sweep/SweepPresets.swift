import Foundation
import NormKitTraining

/// A named, ready-to-run sweep plan with a description and a duration estimate.
public struct SweepPreset: Sendable {
    /// The name the CLI takes (`quick`, `demo`, `paper-table2`, …).
    public let name: String
    /// One paragraph: what the preset runs and what it should show.
    public let description: String
    /// The plan it runs.
    public let plan: SweepPlan

    /// Creates a preset.
    public init(name: String, description: String, plan: SweepPlan) {
        self.name = name; self.description = description; self.plan = plan
    }

    /// Expected wall seconds at a training throughput, summed over the plan's cells
    /// (see ``SweepPlan/estimatedSeconds(imagesPerSecond:including:)``).
    public func estimatedSeconds(imagesPerSecond: Double) -> Double {
        plan.estimatedSeconds(imagesPerSecond: imagesPerSecond)
    }
}

/// The sweeps NormKit ships, all on Fashion-MNIST with the recipe of `docs/NORMALIZATION.md` §8: ResNet-8, SGD momentum
/// 0.9, learning rate `0.1 × batch / 32` with warm-up and cosine decay, weight decay 5e-4, GN with
/// ``/NormKitTraining/NormalizationSettings/defaultGroups`` (16) groups, statistics over ghost batches of `normBatch`
/// samples inside an SGD batch of 32.
public enum SweepPresets {
    /// The recipe every preset starts from: ResNet-8, GN with 16 groups, 2 epochs, full data.
    public static var recipe: TrainingConfiguration {
        var config = TrainingConfiguration()
        config.model = "resnet8"
        config.groups = NormalizationSettings.defaultGroups
        config.epochs = 2
        return config
    }

    /// ResNet-8's stage widths, which every groups-axis value must divide.
    public static let resnetWidths = [16, 32, 64]

    /// A smoke test of the whole pipeline (a few minutes at most on 2 cores, well under one at ~1,000 images/s):
    /// BN, GN and MABN at normalization batch 32 and 2, one seed, 1 epoch on 4,000 training and 1,000 test images.
    public static var quick: SweepPreset {
        var base = recipe
        base.epochs = 1
        base.trainLimit = 4_000
        base.testLimit = 1_000
        let plan = SweepPlan(name: "quick", base: base, norms: [.bn, .gn, .mabn], normBatches: [32, 2], seeds: [0])
        return SweepPreset(
            name: "quick",
            description: "Smoke test: BN, GN, MABN at normalization batch 32 and 2; 1 epoch on 4,000 training "
                + "and 1,000 test images, one seed. Checks the files a sweep writes, not the science.",
            plan: plan)
    }

    /// The README's main experiment, the recipe of `docs/NORMALIZATION.md` §8 as is: BN, GN and MABN at normalization
    /// batch 32, 16, 8, 4, 2 (11 runs: GN runs once and fills every column), one seed, 2 epochs on the full data. 5–20
    /// minutes on this project's 2-core machine kind (its AMD EPYC machines: 4 min 56 s in session 13, 11 min 33 s in
    /// session 10; its Intel Xeon ones: 14 min 23 s and 20 min 6 s measured with session 8–9's slower code, at ~1,500
    /// and ~1,100 images/s: the VM's speed drifts); enough to show
    /// BN's error climbing as its batch shrinks while GN and MABN stay flat.
    public static var demo: SweepPreset {
        let plan = SweepPlan(
            name: "demo", base: recipe, norms: [.bn, .gn, .mabn], normBatches: [32, 16, 8, 4, 2],
            seeds: [0])
        return SweepPreset(
            name: "demo",
            description: "BN vs GN vs MABN at normalization batch 32, 16, 8, 4, 2 (SGD batch 32, ghost batches); "
                + "2 epochs on the full Fashion-MNIST, one seed. BN's error rises as its batch shrinks, GN and MABN "
                + "stay flat.",
            plan: plan)
    }

    /// The GN paper's Table 2 on Fashion-MNIST: BN vs GN at normalization batch 32, 16, 8, 4, 2 inside an SGD
    /// batch of 32, three seeds, 2 epochs, full data.
    public static var paperTable2: SweepPreset {
        let plan = SweepPlan(
            name: "paper-table2", base: recipe, norms: [.bn, .gn], normBatches: [32, 16, 8, 4, 2],
            seeds: [0, 1, 2])
        return SweepPreset(
            name: "paper-table2",
            description: "GN paper, Table 2: BN vs GN at normalization batch 32, 16, 8, 4, 2 (SGD batch 32), "
                + "3 seeds, 2 epochs, full Fashion-MNIST. Reports BN − GN per column.",
            plan: plan)
    }

    /// The GN paper's Table 3 on ResNet-8 (widths 16/32/64): GN with 16, 8, 4, 2, 1 groups and 16, 8, 4, 2, 1
    /// channels per group (values that divide every width), at batch 32, three seeds, 2 epochs, full data.
    public static var paperTable3: SweepPreset {
        let candidates = [16, 8, 4, 2, 1]
        let axis = groupAxis(widths: resnetWidths, groups: candidates, groupSizes: candidates)
        var base = recipe
        base.groups = nil
        let plan = SweepPlan(
            name: "paper-table3", base: base, norms: [.gn], normBatches: [32], groupAxis: axis,
            seeds: [0, 1, 2])
        return SweepPreset(
            name: "paper-table3",
            description: "GN paper, Table 3: GN with G = 16, 8, 4, 2, 1 (=LN) groups and 16, 8, 4, 2, 1 (=IN) "
                + "channels per group on ResNet-8 (widths 16/32/64), batch 32, 3 seeds, 2 epochs, full data.",
            plan: plan)
    }

    /// The MABN paper's comparison: BN, BRN, MABN and GN at normalization batch 32, 16, 8, 4, 2 inside an SGD
    /// batch of 32, three seeds, 2 epochs, full data.
    public static var mabn: SweepPreset {
        let plan = SweepPlan(
            name: "mabn", base: recipe, norms: [.bn, .brn, .mabn, .gn],
            normBatches: [32, 16, 8, 4, 2], seeds: [0, 1, 2])
        return SweepPreset(
            name: "mabn",
            description: "MABN paper: BN, BRN, MABN, GN at normalization batch 32, 16, 8, 4, 2 (SGD batch 32), "
                + "3 seeds, 2 epochs, full data. MABN should stay near BN-at-32 down to 2; BRN in between.",
            plan: plan)
    }

    /// True small batches (issue 12): the SGD batch *is* the normalization batch, 32, 16, 8, 4, 2, with the
    /// learning rate scaled linearly (`0.1 × batch / 32`), MABN's buffer `32 / batch` (its default), BRN's schedule
    /// scaled to each run's steps; BN, BRN, GN, MABN, 3 seeds, 2 epochs each on the full data. The gradient noise of
    /// a small batch comes with its statistics, as for a detector with 2 images per GPU.
    public static var smallBatch: SweepPreset {
        let plan = SweepPlan(
            name: "small-batch", base: recipe, norms: [.bn, .brn, .gn, .mabn],
            normBatches: [32, 16, 8, 4, 2], setting: .perGPU, gpus: 1, seeds: [0, 1, 2])
        return SweepPreset(
            name: "small-batch",
            description: "True small batches: SGD batch = normalization batch = 32, 16, 8, 4, 2, learning rate "
                + "0.1 × batch / 32, MABN buffer 32 / batch; BN, BRN, GN, MABN, 3 seeds, 2 epochs, full data. "
                + "Expected at batch 2 (MABN paper): MABN best, BN worst, BRN between.",
            plan: plan)
    }

    /// The ablation ladder and the leave-one-out rows of ``mabnAblation``, in table order. The ladder's fifth step
    /// (everything but CenConv) is also the full MABN minus CenConv, so it is named `no-cenconv` and not repeated.
    public static var mabnAblationVariants: [SweepVariant] {
        let parts = MABNPart.allCases.map(\.rawValue)  // form, fwd-sma, bwd-sma, renorm, cenconv
        // The ladder: BN (every part off), then the parts switched on one by one up to the full MABN.
        let ladder = [
            SweepVariant(name: "bn-form", mabnWithout: parts),
            SweepVariant(name: "second-moment", mabnWithout: Array(parts.dropFirst(1))),
            SweepVariant(name: "sm-fwd-sma", mabnWithout: Array(parts.dropFirst(2))),
            SweepVariant(name: "sm-fwd-bwd-sma", mabnWithout: Array(parts.dropFirst(3))),
            SweepVariant(name: "no-cenconv", mabnWithout: Array(parts.dropFirst(4))),
            SweepVariant(name: "full", mabnWithout: []),
        ]
        return ladder + parts.dropLast().map { SweepVariant(name: "no-\($0)", mabnWithout: [$0]) }
    }

    /// Issue 12's MABN ablation: which of MABN's parts buys the small-batch accuracy. MABN at true SGD batches of 2
    /// and 32 (learning rate `0.1 × batch / 32`, buffer `32 / batch`: 16 at batch 2, 1 at batch 32, where both
    /// moving averages are the current batch's statistics) in ten variants: BN (every part off: mean and
    /// variance, batch statistics, `r = 1`, plain convolutions), then the second-moment form, the forward SMA, the
    /// backward SMA, `r` and CenConv switched on one by one (the last is the full MABN), and the full MABN minus
    /// each part (minus CenConv is the ladder's step before it); 3 seeds, 2 epochs, full data (60 runs).
    public static var mabnAblation: SweepPreset {
        let plan = SweepPlan(
            name: "mabn-ablation", base: recipe, norms: [.mabn], normBatches: [32, 2],
            setting: .perGPU, gpus: 1, seeds: [0, 1, 2], variants: mabnAblationVariants)
        return SweepPreset(
            name: "mabn-ablation",
            description: "MABN's parts one by one at true SGD batches 2 and 32 (lr 0.1 × batch / 32, buffer "
                + "32 / batch): BN (all off), + second-moment form, + forward SMA, + backward SMA, + r, + CenConv "
                + "(= MABN), and MABN minus each part; 3 seeds, 2 epochs, full data. Rows are the variants.",
            plan: plan)
    }

    /// The GN paper's Table 1 and Figure 4: BN, LN, IN and GN at batch 32, 3 seeds, 10 epochs, with per-epoch
    /// training and test error curves (the paper: GN trains to a lower training error than BN but a higher
    /// validation error).
    public static var paperTable1: SweepPreset {
        var base = recipe
        base.epochs = 10
        let plan = SweepPlan(
            name: "paper-table1", base: base, norms: [.bn, .ln, .in, .gn], normBatches: [32],
            seeds: [0, 1, 2])
        return SweepPreset(
            name: "paper-table1",
            description: "GN paper, Table 1 and Figure 4: BN, LN, IN, GN at batch 32, 3 seeds, 10 epochs, full "
                + "data; training and test error curves per epoch in training_curves.svg.",
            plan: plan)
    }

    /// VGG without normalization, with BN and with GN at batch 32 (the GN paper trains VGG-16 without
    /// normalization and finds GN helps), 3 seeds, 2 epochs, full data.
    public static var vgg: SweepPreset {
        var base = recipe
        base.model = "vgg"
        let plan = SweepPlan(name: "vgg", base: base, norms: [.none, .bn, .gn], normBatches: [32], seeds: [0, 1, 2])
        return SweepPreset(
            name: "vgg",
            description: "VGG with no normalization, BN and GN at batch 32, 3 seeds, 2 epochs, full data.",
            plan: plan)
    }

    /// Every preset, in the order the CLI lists them.
    public static var all: [SweepPreset] {
        [quick, demo, paperTable2, paperTable3, mabn, smallBatch, mabnAblation, paperTable1, vgg]
    }

    /// The preset with this name (`quick`, `demo`, `paper-table2`, `paper-table3`, `mabn`, `small-batch`,
    /// `mabn-ablation`, `paper-table1`, `vgg`; `paperTable2`, `smallBatch`, … are accepted too).
    /// - Throws: ``SweepError/unknownPreset(name:available:)``.
    public static func named(_ name: String) throws -> SweepPreset {
        let key = name.lowercased().replacingOccurrences(of: "-", with: "").replacingOccurrences(of: "_", with: "")
        if let preset = all.first(where: { $0.name.replacingOccurrences(of: "-", with: "") == key }) {
            return preset
        }
        throw SweepError.unknownPreset(name: name, available: all.map(\.name))
    }

    /// The groups axis restricted to values valid in every stage: `G` must divide every width, and so must the
    /// channels per group. Groups come first, then group sizes, each in the order given.
    public static func groupAxis(widths: [Int], groups: [Int], groupSizes: [Int]) -> [GroupSpec] {
        let divides = { (d: Int) in d > 0 && widths.allSatisfy { $0 % d == 0 } }
        return groups.filter(divides).map { GroupSpec.groups($0) } + groupSizes.filter(divides).map { .groupSize($0) }
    }
}
