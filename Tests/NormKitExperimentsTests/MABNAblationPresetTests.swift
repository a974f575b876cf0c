import Foundation
import NormKit
import NormKitExperiments
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Issue 12's MABN ablation: the `mabn-ablation` preset's cells, the plan's variants axis, the configuration's
/// `mabnWithout` (validation and what it builds) and the report's rows per variant.
final class MABNAblationPresetTests: XCTestCase {
    typealias Parts = MovingAverageBatchNorm.Parts

    func testPresetCellsAreTenVariantsAtTrueBatches2And32WithThreeSeeds() throws {
        let preset = try SweepPresets.named("mabn-ablation")
        let cells = try preset.plan.cells()
        XCTAssertEqual(cells.count, 10 * 2 * 3, "10 variants × batches 32 and 2 × 3 seeds")
        XCTAssertEqual(Set(cells.map(\.runName)).count, cells.count, "run names are unique")
        for cell in cells {
            let c = cell.configuration
            XCTAssertEqual(c.norm, .mabn, cell.runName)
            XCTAssertEqual(c.batch, c.effectiveNormBatch, cell.runName)
            XCTAssertEqual(c.peakLearningRate, 0.1 * Double(c.batch) / 32, accuracy: 1e-12, cell.runName)
            XCTAssertEqual(c.mabnBufferSize, 32 / c.batch, cell.runName)
            XCTAssertNoThrow(try c.validate(), cell.runName)
            XCTAssertNoThrow(try c.validateApplicability(), cell.runName)
            let variant = try XCTUnwrap(cell.variant, cell.runName)
            XCTAssertEqual(cell.runName, "mabn-\(variant)-nb\(c.batch)-s\(c.seed)")
        }
        XCTAssertEqual(Set(cells.map(\.configuration.batch)), [32, 2])
        XCTAssertEqual(Set(cells.map(\.configuration.seed)), [0, 1, 2])
        XCTAssertEqual(Set(cells.map { $0.configuration.mabnWithout ?? [] }).count, 10, "ten distinct part sets")
    }

    /// What each variant builds: the layer's parts and whether the convolutions are centred.
    func testVariantsBuildTheLadderAndTheLeaveOneOutRows() throws {
        let cells = try SweepPresets.mabnAblation.plan.cells().filter {
            $0.configuration.seed == 0 && $0.configuration.batch == 2
        }
        var built: [String: (Parts, Bool)] = [:]
        for cell in cells {
            let settings = try NormalizationSettings(cell.configuration, totalSteps: 100)
            built[cell.variant!] = (settings.mabnParts, settings.centresConvolutions)
            let layer = try XCTUnwrap(try settings.makeLayer(channels: 4) as? MovingAverageBatchNorm)
            XCTAssertEqual(layer.parts, settings.mabnParts)
        }
        let expected: [(String, Parts, Bool)] = [
            ("bn-form", .batchNorm, false),
            ("second-moment", Parts(forwardSMA: false, backwardSMA: false, renormalization: false), false),
            ("sm-fwd-sma", Parts(backwardSMA: false, renormalization: false), false),
            ("sm-fwd-bwd-sma", Parts(renormalization: false), false),
            ("no-cenconv", .paper, false),
            ("full", .paper, true),
            ("no-form", Parts(secondMomentForm: false), true),
            ("no-fwd-sma", Parts(forwardSMA: false), true),
            ("no-bwd-sma", Parts(backwardSMA: false), true),
            ("no-renorm", Parts(renormalization: false), true),
        ]
        XCTAssertEqual(cells.map(\.variant!), expected.map(\.0), "table order")
        for (name, parts, centred) in expected {
            let got = try XCTUnwrap(built[name], name)
            XCTAssertEqual(got.0, parts, name)
            XCTAssertEqual(got.1, centred, name)
        }
        // The default configuration is the paper's MABN with CenConv.
        var plain = TrainingConfiguration()
        plain.norm = .mabn
        let settings = try NormalizationSettings(plain, totalSteps: 100)
        XCTAssertEqual(settings.mabnParts, .paper)
        XCTAssertTrue(settings.centresConvolutions)
    }

    func testMABNWithoutIsValidated() throws {
        var c = TrainingConfiguration()
        c.norm = .mabn
        c.mabnWithout = ["renorm", "cenconv"]
        XCTAssertNoThrow(try c.validate())
        XCTAssertEqual(try c.mabnPartsSwitchedOff(), [.renormalization, .cenConv])
        c.mabnWithout = ["renorm", "bogus"]
        XCTAssertThrowsError(try c.validate()) { error in
            let e = error as? ConfigurationError
            XCTAssertEqual(e?.flag, "--mabn-without")
            XCTAssertEqual(e?.value, "bogus")
            XCTAssertTrue(e?.expected.contains("form, fwd-sma, bwd-sma, renorm, cenconv") == true, "\(error)")
        }
        c.mabnWithout = ["renorm", "renorm"]
        XCTAssertThrowsError(try c.validate()) {
            XCTAssertEqual(($0 as? ConfigurationError)?.expected, "lists a part twice")
        }
        c.mabnWithout = ["form"]
        c.norm = .bn
        XCTAssertThrowsError(try c.validateApplicability()) { error in
            XCTAssertEqual((error as? ConfigurationError)?.flag, "--mabn-without")
        }
        // Empty means the paper's MABN and is recorded as nil; nil is not encoded, so older identities hold.
        c.norm = .mabn
        c.mabnWithout = []
        XCTAssertNil(c.resolved.mabnWithout)
        c.mabnWithout = ["cenconv", "form"]
        XCTAssertEqual(c.resolved.mabnWithout, ["form", "cenconv"])
        var reordered = c
        reordered.mabnWithout = ["form", "cenconv"]
        XCTAssertEqual(c.identityHash(), reordered.identityHash())
        var old = TrainingConfiguration()
        old.norm = .mabn
        XCTAssertFalse(String(decoding: try JSONEncoder().encode(old), as: UTF8.self).contains("mabnWithout"))
    }

    func testVariantsAxisValidationAndOtherNormsUnaffected() throws {
        let two = [
            SweepVariant(name: "full", mabnWithout: []), SweepVariant(name: "no-renorm", mabnWithout: ["renorm"]),
        ]
        let plan = SweepPlan(name: "t", norms: [.bn, .mabn], normBatches: [32, 2], seeds: [0], variants: two)
        let cells = try plan.cells()
        XCTAssertEqual(
            cells.map(\.runName),
            [
                "bn-nb32-s0", "bn-nb2-s0", "mabn-full-nb32-s0", "mabn-full-nb2-s0",
                "mabn-no-renorm-nb32-s0", "mabn-no-renorm-nb2-s0",
            ])
        XCTAssertTrue(cells.filter { $0.configuration.norm == .bn }.allSatisfy { $0.configuration.mabnWithout == nil })
        func refused(_ plan: SweepPlan, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try plan.validate(), line: line) { error in
                XCTAssertTrue("\(error)".contains(fragment), "\(error)", line: line)
            }
        }
        refused(SweepPlan(norms: [.bn], variants: two), "needs mabn")
        refused(SweepPlan(norms: [.mabn], variants: two + [two[1]]), "twice")
        refused(SweepPlan(norms: [.mabn], variants: [SweepVariant(name: "x", mabnWithout: ["nope"])]), "nope")
        refused(SweepPlan(norms: [.mabn], variants: [SweepVariant(name: "A b", mabnWithout: [])]), "A b")
        refused(
            SweepPlan(norms: [.mabn], variants: [two[1], SweepVariant(name: "y", mabnWithout: ["renorm"])]),
            "same MABN parts")
        // A plan without variants encodes as before (no key), so older plan.json files still decode.
        let json = String(decoding: try JSONEncoder().encode(SweepPlan()), as: UTF8.self)
        XCTAssertFalse(json.contains("variants"))
    }

    /// The report gives each variant its own row, labelled by the parts switched off.
    func testReportHasOneRowPerVariant() throws {
        let directory = try makeTemporaryDirectory("ablation")
        var base = TrainingConfiguration()
        base.epochs = 1
        let variants = [
            SweepVariant(name: "full", mabnWithout: []),
            SweepVariant(name: "no-renorm", mabnWithout: ["renorm"]),
            SweepVariant(name: "bn-form", mabnWithout: MABNPart.allCases.map(\.rawValue)),
        ]
        let plan = SweepPlan(
            name: "t", base: base, norms: [.mabn], normBatches: [32, 2], setting: .perGPU, gpus: 1,
            seeds: [0, 1], variants: variants)
        let cells = try plan.cells()
        try SweepPlanRecord(plan: plan, cells: cells).write(to: directory)
        for cell in cells {
            let error =
                0.1 + 0.01 * Double(variants.firstIndex { $0.name == cell.variant }!) + 0.002
                * Double(cell.configuration.seed)
            let metrics = EpochMetrics(
                epoch: 1, step: 10, trainLoss: 1, trainError: error, testLoss: 1,
                testError: error, learningRate: 0.1, seconds: 1, imagesPerSecond: 100)
            let summary = RunSummary(
                configuration: cell.configuration, finalTestError: error, bestTestError: error,
                epochs: [metrics], wallSeconds: 1, imagesPerSecond: 100,
                perClassAccuracy: Array(repeating: 1 - error, count: 10), finished: true)
            let runDirectory = directory.appendingPathComponent(cell.runName)
            try FileManager.default.createDirectory(at: runDirectory, withIntermediateDirectories: true)
            try JSONEncoder().encode(summary).write(to: runDirectory.appendingPathComponent("summary.json"))
            try (String(decoding: try JSONEncoder().encode(metrics), as: UTF8.self) + "\n")
                .write(to: runDirectory.appendingPathComponent("metrics.jsonl"), atomically: true, encoding: .utf8)
        }
        let report = try SweepReport.build(from: directory)
        XCTAssertEqual(
            report.table.rows.map(\.key.label),
            ["MABN", "MABN without renorm", "MABN without form, fwd-sma, bwd-sma, renorm, cenconv"])
        let noRenorm = SeriesKey(norm: .mabn, variant: "renorm")
        XCTAssertEqual(try XCTUnwrap(report.table.entry(noRenorm, column: 2)?.mean), 11.1, accuracy: 1e-9)
        XCTAssertEqual(report.table.entry(noRenorm, column: 2)?.n, 2)
        try report.write(to: directory)
        let markdown = try String(contentsOf: directory.appendingPathComponent("results.md"), encoding: .utf8)
        XCTAssertTrue(markdown.contains("| MABN without renorm | 11.10 ± 0.14 | 11.10 ± 0.14 |"), markdown)
        // The verdict table: each variant against the full MABN (10.10 %).
        XCTAssertTrue(markdown.contains("## MABN ablation: change in test error against the full MABN"), markdown)
        XCTAssertTrue(markdown.contains("| renorm | +1.00 | +1.00 |"), markdown)
        XCTAssertTrue(markdown.contains("| form, fwd-sma, bwd-sma, renorm, cenconv | +2.00 | +2.00 |"), markdown)
        XCTAssertNil(ResultsTable(runs: [], plan: nil).ablationMarkdown())
    }
}
