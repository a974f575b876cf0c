import Foundation
import NormKitExperiments
import NormKitTraining
import XCTest
import _NormKitTestSupport

final class SweepPlanTests: XCTestCase {
    private func base(groups: Int? = 8) -> TrainingConfiguration {
        var config = TrainingConfiguration()
        config.groups = groups
        config.epochs = 1
        config.trainLimit = 1_000
        return config
    }

    func testExpansionCountsNamesAndOrder() throws {
        let plan = SweepPlan(base: base(), norms: [.bn, .gn, .mabn], seeds: [0, 1])
        let cells = try plan.cells()
        // Per seed: BN 5 columns + GN once (reused) + MABN 5 columns.
        XCTAssertEqual(cells.count, 22)
        let names = cells.map(\.runName)
        XCTAssertEqual(Set(names).count, names.count, "run names must be unique")
        XCTAssertEqual(
            Array(names.prefix(6)),
            ["bn-nb32-s0", "bn-nb16-s0", "bn-nb8-s0", "bn-nb4-s0", "bn-nb2-s0", "gn-g8-nb32-s0"])
        XCTAssertTrue(names.contains("mabn-nb2-s1"))
        XCTAssertTrue(names.contains("gn-g8-nb32-s1"))
        // Stable: the same plan expands to the same cells.
        XCTAssertEqual(try plan.cells(), cells)
        let bn2 = try XCTUnwrap(cells.first { $0.runName == "bn-nb2-s0" })
        XCTAssertEqual(bn2.configuration.batch, 32)
        XCTAssertEqual(bn2.configuration.normBatch, 2)
        XCTAssertNil(bn2.configuration.groups, "groups fields are cleared for non-GN norms")
        XCTAssertEqual(bn2.columns, [2])
        XCTAssertEqual(cells.first { $0.runName == "mabn-nb4-s1" }?.configuration.seed, 1)
    }

    func testBatchIndependentNormsRunOnceAndFillEveryColumn() throws {
        let plan = SweepPlan(base: base(groups: nil), norms: [.gn, .ln, .in], normBatches: [2, 32, 8], seeds: [3])
        let cells = try plan.cells()
        XCTAssertEqual(cells.map(\.runName), ["gn-nb32-s3", "ln-nb32-s3", "in-nb32-s3"])
        for cell in cells {
            XCTAssertNil(cell.configuration.normBatch)
            XCTAssertEqual(cell.configuration.effectiveNormBatch, 32)
            XCTAssertEqual(cell.columns, [32, 8, 2])
            XCTAssertTrue(cell.isReused)
        }
        var rerun = plan
        rerun.reuseBatchIndependentRuns = false
        let all = try rerun.cells()
        XCTAssertEqual(all.count, 9)
        XCTAssertEqual(all.first { $0.runName == "gn-nb8-s3" }?.configuration.normBatch, 8)
        XCTAssertTrue(all.allSatisfy { !$0.isReused })
    }

    func testPerGPUSettingScalesBatchAndLearningRate() throws {
        var config = base()
        config.learningRate = 0.05  // the per-GPU setting must drop it for linear scaling
        let plan = SweepPlan(base: config, norms: [.bn, .gn], setting: .perGPU)
        let cells = try plan.cells()
        XCTAssertEqual(cells.count, 10, "GN's SGD batch changes per column, so no reuse")
        let bn2 = try XCTUnwrap(cells.first { $0.runName == "bn-nb2-s0" })
        XCTAssertEqual(bn2.configuration.batch, 16)
        XCTAssertEqual(bn2.configuration.normBatch, 2)
        XCTAssertNil(bn2.configuration.learningRate)
        XCTAssertEqual(bn2.configuration.peakLearningRate, 0.05, accuracy: 1e-12)
        let gn32 = try XCTUnwrap(cells.first { $0.runName == "gn-g8-nb32-s0" })
        XCTAssertEqual(gn32.configuration.batch, 256)
        XCTAssertEqual(gn32.configuration.peakLearningRate, 0.8, accuracy: 1e-12)
        // The normalization-batch setting keeps the base learning rate.
        let fixed = try SweepPlan(base: config, norms: [.bn]).cells()
        XCTAssertTrue(fixed.allSatisfy { $0.configuration.learningRate == 0.05 && $0.configuration.batch == 32 })
    }

    func testGroupAxisCells() throws {
        let plan = SweepPlan(
            base: base(), norms: [.bn, .gn], normBatches: [32],
            groupAxis: [.groups(1), .groups(8), .groupSize(4)])
        let cells = try plan.cells()
        XCTAssertEqual(cells.map(\.runName), ["bn-nb32-s0", "gn-g1-nb32-s0", "gn-g8-nb32-s0", "gn-gs4-nb32-s0"])
        let gs4 = cells[3]
        XCTAssertNil(gs4.configuration.groups)
        XCTAssertEqual(gs4.configuration.groupSize, 4)
        XCTAssertEqual(gs4.groupSpec, .groupSize(4))
        XCTAssertEqual(cells[1].configuration.groups, 1)
        XCTAssertNil(cells[0].groupSpec)
    }

    func testPredicateDropsCells() throws {
        let plan = SweepPlan(base: base(), norms: [.bn, .none, .gn], normBatches: [32, 4])
        XCTAssertEqual(try plan.cells().count, 4)
        let kept = try plan.cells { $0.configuration.norm != .none }
        XCTAssertEqual(kept.map(\.runName), ["bn-nb32-s0", "bn-nb4-s0", "gn-g8-nb32-s0"])
        XCTAssertLessThan(
            plan.estimatedSeconds(imagesPerSecond: 1_000) { $0.configuration.norm != .none },
            plan.estimatedSeconds(imagesPerSecond: 1_000))
    }

    func testInvalidPlansThrowWithReason() {
        func reason(_ plan: SweepPlan) -> String? {
            do { _ = try plan.cells(); return nil } catch let error as SweepError {
                if case .invalidPlan(let reason) = error { return reason }
                return "\(error)"
            } catch { return "\(error)" }
        }
        XCTAssertEqual(
            reason(SweepPlan(normBatches: [32, 3])), "normalization batch 3 does not divide the SGD batch 32")
        XCTAssertEqual(reason(SweepPlan(normBatches: [64])), "normalization batch 64 does not divide the SGD batch 32")
        XCTAssertEqual(reason(SweepPlan(seeds: [])), "no seeds")
        XCTAssertNotNil(reason(SweepPlan(norms: [.bn], groupAxis: [.groups(2)])))
        XCTAssertNotNil(reason(SweepPlan(norms: [.bn, .bn])))
        XCTAssertNil(reason(SweepPlan(normBatches: [64], setting: .perGPU)), "per-GPU has no fixed SGD batch")
        XCTAssertTrue("\(SweepError.invalidPlan("no seeds"))".contains("no seeds"))
    }

    /// The ranks axis (issue 11): per-worker normalizations below the SGD batch run on gcd(R, B/k) ranks, named
    /// `-rR`; batch-independent norms and full-batch cells stay in one process; plans without the field decode.
    func testRanksAxis() throws {
        var plan = SweepPlan(base: base(), norms: [.bn, .gn, .mabn, .brn], normBatches: [32, 16, 8, 2], seeds: [0])
        plan.ranks = 4
        let cells = try plan.cells()
        let ranks = Dictionary(uniqueKeysWithValues: cells.map { ($0.runName, $0.ranks) })
        XCTAssertEqual(ranks["bn-nb32-s0"], .some(nil), "the whole batch in one process")
        XCTAssertEqual(ranks["bn-nb16-r2-s0"], 2, "gcd(4, 32/16)")
        XCTAssertEqual(ranks["bn-nb8-r4-s0"], 4)
        XCTAssertEqual(ranks["mabn-nb2-r4-s0"], 4, "4 ranks of 8 images in ghost batches of 2")
        XCTAssertEqual(ranks["brn-nb16-r2-s0"], 2)
        XCTAssertEqual(ranks["gn-g8-nb32-s0"], .some(nil), "GN needs nothing across workers")
        let bn8 = try XCTUnwrap(cells.first { $0.runName == "bn-nb8-r4-s0" })
        XCTAssertEqual(bn8.configuration.normBatch, 8, "the configuration is the ghost-batch cell's")
        XCTAssertEqual(bn8.configuration.batch, 32)
        plan.ranks = 3
        XCTAssertNil(try plan.cells().first { $0.runName.hasPrefix("bn-nb16") }?.ranks, "gcd(3, 2) = 1: one process")

        var invalid = plan
        invalid.ranks = 0
        XCTAssertThrowsError(try invalid.cells())
        invalid = SweepPresets.smallBatch.plan
        invalid.ranks = 2
        XCTAssertThrowsError(try invalid.cells()) { XCTAssertTrue("\($0)".contains("normalization-batch setting")) }

        // A plan.json written before the field existed decodes with no ranks.
        let json = try JSONEncoder().encode(SweepPresets.demo.plan)
        var object = try XCTUnwrap(JSONSerialization.jsonObject(with: json) as? [String: Any])
        object.removeValue(forKey: "ranks")
        let old = try JSONDecoder().decode(SweepPlan.self, from: JSONSerialization.data(withJSONObject: object))
        XCTAssertNil(old.ranks)
        XCTAssertEqual(old, SweepPresets.demo.plan)
    }

    func testGroupSpecCodingAndPlanRecordRoundTrip() throws {
        XCTAssertEqual(GroupSpec(tag: "gs16"), .groupSize(16))
        XCTAssertEqual(GroupSpec(tag: "g2"), .groups(2))
        XCTAssertNil(GroupSpec(tag: "x2"))
        let plan = SweepPresets.paperTable3.plan
        let record = SweepPlanRecord(plan: plan, cells: try plan.cells())
        let dir = try makeTemporaryDirectory("plan")
        try record.write(to: dir)
        XCTAssertEqual(try SweepPlanRecord.read(from: dir), record)
        let text = try String(contentsOf: dir.appendingPathComponent("plan.json"), encoding: .utf8)
        XCTAssertTrue(text.contains("\"gs4\""))
    }

    func testPresetsExpandWithPositiveEstimates() throws {
        XCTAssertEqual(
            SweepPresets.all.map(\.name),
            [
                "quick", "demo", "paper-table2", "paper-table3", "mabn", "small-batch",
                "mabn-ablation", "paper-table1", "vgg",
            ])
        for preset in SweepPresets.all {
            let cells = try preset.plan.cells()
            XCTAssertFalse(cells.isEmpty, preset.name)
            XCTAssertEqual(Set(cells.map(\.runName)).count, cells.count, preset.name)
            XCTAssertGreaterThan(preset.estimatedSeconds(imagesPerSecond: 1_000), 0, preset.name)
            XCTAssertFalse(preset.description.isEmpty)
            XCTAssertEqual(try SweepPresets.named(preset.name).name, preset.name)
        }
        XCTAssertEqual(try SweepPresets.named("paperTable2").name, "paper-table2")
        XCTAssertThrowsError(try SweepPresets.named("nope")) { error in
            XCTAssertTrue("\(error)".contains("quick"), "the message lists the presets")
        }
    }

    func testQuickAndDemoFitTheirBudgets() throws {
        let quick = SweepPresets.quick
        let quickCells = try quick.plan.cells()
        XCTAssertEqual(
            quickCells.map(\.runName),
            [
                "bn-nb32-s0", "bn-nb2-s0", "gn-g16-nb32-s0", "mabn-nb32-s0",
                "mabn-nb2-s0",
            ])
        XCTAssertTrue(quickCells.allSatisfy { $0.configuration.epochs == 1 && $0.configuration.trainLimit == 4_000 })
        XCTAssertLessThan(quick.estimatedSeconds(imagesPerSecond: 1_000), 60)
        // Training images × epochs / throughput + evaluation at 3× throughput, per cell.
        XCTAssertEqual(quick.estimatedSeconds(imagesPerSecond: 1_000), 5 * (4.0 + 1.0 / 3), accuracy: 1e-9)

        let demo = SweepPresets.demo
        let seconds = demo.estimatedSeconds(imagesPerSecond: 2_300)  // NormKit's measured ResNet-8 throughput
        XCTAssertGreaterThan(seconds, 8 * 60)
        XCTAssertLessThan(seconds, 12 * 60)
        let demoCells = try demo.plan.cells()
        XCTAssertTrue(demoCells.contains { $0.runName == "bn-nb2-s0" })
        XCTAssertTrue(demoCells.contains { $0.runName == "mabn-nb2-s0" })
        XCTAssertTrue(demoCells.contains { $0.configuration.norm == .gn })
    }

    func testPaperPresets() throws {
        let table2 = try SweepPresets.paperTable2.plan.cells()
        XCTAssertEqual(table2.count, 3 * (5 + 1))
        XCTAssertTrue(table2.allSatisfy { $0.configuration.trainLimit == nil && $0.configuration.epochs == 2 })
        let table3 = SweepPresets.paperTable3.plan
        XCTAssertEqual(
            table3.groupAxis.map(\.tag), ["g16", "g8", "g4", "g2", "g1", "gs16", "gs8", "gs4", "gs2", "gs1"])
        XCTAssertEqual(try table3.cells().count, 30)
        XCTAssertEqual(
            SweepPresets.groupAxis(widths: [16, 32, 64], groups: [32, 16, 3], groupSizes: [32, 8]),
            [.groups(16), .groupSize(8)])
        let mabn = try SweepPresets.mabn.plan.cells()
        XCTAssertEqual(mabn.count, 3 * (5 + 5 + 5 + 1))
    }
}
