import Foundation
import NormKitExperiments
import NormKitTraining
import XCTest
import _NormKitTestSupport

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// Runner and report tests with fake runs: no training, only the records a trainer writes.
final class ReportTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory("sweep")
    }

    // MARK: - Fakes

    private struct FakeFailure: Error, CustomStringConvertible {
        var description: String { "fake divergence: loss is NaN at step 17" }
    }

    private func smallPlan(seeds: [UInt64] = [0]) -> SweepPlan {
        var base = TrainingConfiguration()
        base.groups = 8
        base.epochs = 2
        base.trainLimit = 100
        return SweepPlan(name: "test", base: base, norms: [.bn, .gn], normBatches: [32, 2], seeds: seeds)
    }

    private func epochs(_ config: TrainingConfiguration, finalError: Double) -> [EpochMetrics] {
        (1...config.epochs).map { e in
            let error = finalError + 0.05 * Double(config.epochs - e)
            return EpochMetrics(
                epoch: e, step: e * 10, trainLoss: 1.0 / Double(e), trainError: error + 0.01,
                testLoss: 0.5, testError: error, learningRate: 0.1, seconds: Double(e) * 3,
                imagesPerSecond: 900)
        }
    }

    private func summary(_ config: TrainingConfiguration, error: Double, finished: Bool = true) -> RunSummary {
        let metrics = epochs(config, finalError: error)
        return RunSummary(
            configuration: config, finalTestError: error, bestTestError: metrics.map(\.testError).min()!,
            epochs: metrics, wallSeconds: 6, imagesPerSecond: 900,
            perClassAccuracy: Array(repeating: 1 - error, count: 10), finished: finished)
    }

    /// Writes `summary.json` and `metrics.jsonl` as a trainer would.
    private func writeRecords(_ summary: RunSummary, to runDir: URL, summaryFile: Bool = true) throws {
        try FileManager.default.createDirectory(at: runDir, withIntermediateDirectories: true)
        let lines = try summary.epochs.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        try (lines.joined(separator: "\n") + "\n").write(
            to: runDir.appendingPathComponent("metrics.jsonl"),
            atomically: true, encoding: .utf8)
        if summaryFile {
            try JSONEncoder().encode(summary).write(to: runDir.appendingPathComponent("summary.json"))
        }
    }

    /// A deterministic fake error: BN degrades as its batch shrinks, GN is flat.
    private func fakeError(_ config: TrainingConfiguration) -> Double {
        let seedNoise = Double(config.seed) * 0.002
        if config.norm == .bn { return 0.10 + 0.1 / Double(config.effectiveNormBatch) + seedNoise }
        return 0.12 + seedNoise
    }

    private func readSummary(_ name: String) throws -> RunSummary {
        let url = directory.appendingPathComponent(name).appendingPathComponent("summary.json")
        return try JSONDecoder().decode(RunSummary.self, from: Data(contentsOf: url))
    }

    // MARK: - Runner

    func testRunnerSkipsFinishedRunsAndRedoesUnfinishedOnes() throws {
        let plan = smallPlan()
        let cells = try plan.cells()
        XCTAssertEqual(cells.map(\.runName), ["bn-nb32-s0", "bn-nb2-s0", "gn-g8-nb32-s0"])
        // A finished run, and an unfinished one with a stale error from an earlier attempt.
        try writeRecords(
            summary(cells[0].configuration, error: 0.111), to: directory.appendingPathComponent("bn-nb32-s0"))
        let unfinished = directory.appendingPathComponent("bn-nb2-s0")
        try writeRecords(summary(cells[1].configuration, error: 0.3, finished: false), to: unfinished)
        try "old failure\n".write(to: unfinished.appendingPathComponent("error.txt"), atomically: true, encoding: .utf8)

        var calls: [String] = []
        var reportExistedAtSecondCall = false
        let runner = SweepRunner(plan: plan, directory: directory) { config, runDir in
            calls.append(runDir.lastPathComponent)
            if calls.count == 2 {
                reportExistedAtSecondCall = FileManager.default.fileExists(
                    atPath: runDir.deletingLastPathComponent().appendingPathComponent("results.md").path)
            }
            XCTAssertFalse(
                FileManager.default.fileExists(atPath: runDir.appendingPathComponent("summary.json").path),
                "an unfinished summary is removed before the rerun")
            let result = self.summary(config, error: self.fakeError(config))
            try self.writeRecords(result, to: runDir)
            return result
        }
        let outcome = try runner.run()
        XCTAssertEqual(calls, ["bn-nb2-s0", "gn-g8-nb32-s0"])
        XCTAssertEqual(outcome.cells.map(\.status), [.skipped, .finished, .finished])
        XCTAssertTrue(reportExistedAtSecondCall, "the report is rebuilt after every cell")
        XCTAssertFalse(FileManager.default.fileExists(atPath: unfinished.appendingPathComponent("error.txt").path))
        XCTAssertEqual(try readSummary("bn-nb32-s0").finalTestError, 0.111, "the finished run was left alone")
        XCTAssertTrue(try readSummary("bn-nb2-s0").finished)
        for file in [
            "plan.json", "results.md", "runs.csv", "runs.json", "error_vs_batch.svg", "training_curves.svg",
            "error_vs_batch.png", "training_curves.png",
        ] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: directory.appendingPathComponent(file).path), file)
        }
        XCTAssertEqual(try SweepPlanRecord.read(from: directory)?.cells, cells)

        // A restart with the same plan runs nothing.
        calls = []
        let again = try runner.run()
        XCTAssertEqual(calls, [])
        XCTAssertEqual(again.count(.skipped), 3)
    }

    func testFailingCellIsRecordedAndTheSweepContinues() throws {
        let plan = smallPlan()
        var calls: [String] = []
        var failing = true
        let runner = SweepRunner(plan: plan, directory: directory) { config, runDir in
            calls.append(runDir.lastPathComponent)
            if failing && config.norm == .bn && config.effectiveNormBatch == 2 { throw FakeFailure() }
            return self.summary(config, error: self.fakeError(config))  // the runner writes summary.json
        }
        let outcome = try runner.run()
        XCTAssertEqual(calls, ["bn-nb32-s0", "bn-nb2-s0", "gn-g8-nb32-s0"])
        XCTAssertEqual(outcome.failedRuns, ["bn-nb2-s0"])
        XCTAssertEqual(outcome.count(.finished), 2)
        let errorText = try String(contentsOf: directory.appendingPathComponent("bn-nb2-s0/error.txt"), encoding: .utf8)
        XCTAssertTrue(errorText.contains("loss is NaN at step 17"))
        XCTAssertTrue(try readSummary("gn-g8-nb32-s0").finished, "summary.json written from the returned summary")

        let report = try SweepReport.build(from: directory)
        XCTAssertEqual(report.runs.first { $0.runName == "bn-nb2-s0" }?.status, .failed)
        let markdown = try String(contentsOf: directory.appendingPathComponent("results.md"), encoding: .utf8)
        XCTAssertTrue(markdown.contains("## Failed runs"))
        XCTAssertTrue(markdown.contains("`bn-nb2-s0`: fake divergence"))

        // The restart retries only the failed cell, and clears its error.
        calls = []
        failing = false
        let retry = try runner.run()
        XCTAssertEqual(calls, ["bn-nb2-s0"])
        XCTAssertEqual(retry.failedRuns, [])
        XCTAssertFalse(
            FileManager.default.fileExists(atPath: directory.appendingPathComponent("bn-nb2-s0/error.txt").path))
    }

    func testFinishedRunWithAnotherConfigurationStopsTheSweep() throws {
        let plan = smallPlan()
        var other = try plan.cells()[0].configuration
        other.epochs = 7
        try writeRecords(summary(other, error: 0.1), to: directory.appendingPathComponent("bn-nb32-s0"))
        var called = false
        let runner = SweepRunner(plan: plan, directory: directory) { config, _ in
            called = true
            return self.summary(config, error: 0.1)
        }
        XCTAssertThrowsError(try runner.run()) { error in
            guard case SweepError.configurationMismatch(let name, let differences)? = error as? SweepError else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertEqual(name, "bn-nb32-s0")
            XCTAssertEqual(differences, ["epochs: 7 → 2"])
        }
        XCTAssertFalse(called)
    }

    func testGroupingIsIgnoredForRunsThatAreNotGroupNorm() throws {
        let plan = smallPlan()
        var old = try plan.cells()[0].configuration
        XCTAssertEqual(old.norm, .bn)
        old.groups = 3  // a BN run made under another GN default
        try writeRecords(summary(old, error: 0.1), to: directory.appendingPathComponent("bn-nb32-s0"))
        var calls: [String] = []
        let runner = SweepRunner(plan: plan, directory: directory) { config, url in
            calls.append(url.lastPathComponent)
            return self.summary(config, error: 0.1)
        }
        _ = try runner.run()
        XCTAssertFalse(calls.contains("bn-nb32-s0"), "the finished BN run is reused")
        XCTAssertTrue(calls.contains("bn-nb2-s0"))

        // For GN the grouping is part of the configuration.
        var gn = try plan.cells().first { $0.configuration.norm == .gn }!
        let expected = gn.configuration.groups!
        gn.configuration.groups = 3
        try FileManager.default.removeItem(at: directory.appendingPathComponent(gn.runName))
        try writeRecords(summary(gn.configuration, error: 0.1), to: directory.appendingPathComponent(gn.runName))
        XCTAssertThrowsError(try runner.run()) { error in
            guard case SweepError.configurationMismatch(let name, let differences)? = error as? SweepError else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertEqual(name, gn.runName)
            XCTAssertEqual(differences, ["groups: 3 → \(expected)"])
        }
    }

    // MARK: - Table

    /// Three seeds of BN and GN at 32 and 2 with known errors; BN at 2 lacks seed 2.
    private func writeKnownSweep() throws -> SweepPlanRecord {
        let plan = smallPlan(seeds: [0, 1, 2])
        let cells = try plan.cells()
        let record = SweepPlanRecord(plan: plan, cells: cells)
        try record.write(to: directory)
        let errors: [String: Double] = [
            "bn-nb32-s0": 0.10, "bn-nb32-s1": 0.12, "bn-nb32-s2": 0.14,
            "bn-nb2-s0": 0.20, "bn-nb2-s1": 0.22,
            "gn-g8-nb32-s0": 0.13, "gn-g8-nb32-s1": 0.13, "gn-g8-nb32-s2": 0.16,
        ]
        for cell in cells {
            guard let error = errors[cell.runName] else { continue }
            try writeRecords(
                summary(cell.configuration, error: error), to: directory.appendingPathComponent(cell.runName))
        }
        return record
    }

    func testTableMeansStdsAndBNMinusGN() throws {
        _ = try writeKnownSweep()
        let report = try SweepReport.build(from: directory)
        let table = report.table
        XCTAssertEqual(table.columns, [32, 2])
        XCTAssertEqual(table.rows.map(\.key.label), ["BN", "GN"])
        let bn32 = try XCTUnwrap(table.entry(SeriesKey(norm: .bn), column: 32))
        XCTAssertEqual(try XCTUnwrap(bn32.mean), 12, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(bn32.std), 2, accuracy: 1e-9)
        XCTAssertEqual(bn32.n, 3)
        let bn2 = try XCTUnwrap(table.entry(SeriesKey(norm: .bn), column: 2))
        XCTAssertEqual(try XCTUnwrap(bn2.mean), 21, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(bn2.std), 2.squareRoot(), accuracy: 1e-9)
        XCTAssertEqual(bn2.n, 2)
        XCTAssertEqual(bn2.requested, 3)
        // GN ran once per seed and fills both columns.
        for column in [32, 2] {
            let gn = try XCTUnwrap(table.entry(SeriesKey(norm: .gn), column: column))
            XCTAssertEqual(try XCTUnwrap(gn.mean), 14, accuracy: 1e-9)
            XCTAssertEqual(try XCTUnwrap(gn.std), 3.squareRoot(), accuracy: 1e-9)
            XCTAssertTrue(gn.reused)
        }
        XCTAssertEqual(try XCTUnwrap(table.difference(column: 32)), -2, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(table.difference(column: 2)), 7, accuracy: 1e-9)

        try report.write(to: directory)
        let markdown = try String(contentsOf: directory.appendingPathComponent("results.md"), encoding: .utf8)
        XCTAssertTrue(markdown.contains("| normalization batch | 32 | 2 |"))
        XCTAssertTrue(markdown.contains("| BN | 12.00 ± 2.00 | 21.00 ± 1.41 (n=2) |"))
        XCTAssertTrue(markdown.contains("| GN † | 14.00 ± 1.73 | 14.00 ± 1.73 |"))
        XCTAssertTrue(markdown.contains("| **BN − GN** | −2.00 | +7.00 |"))
        XCTAssertTrue(markdown.contains("† GN does not depend on the normalization batch"))
        XCTAssertTrue(markdown.contains("Runs: 9 planned; 8 finished, 0 partial, 0 failed, 1 not started."))
    }

    func testUnfinishedRunsContributeTheirLastEpochMarkedPartial() throws {
        let plan = smallPlan()
        let cells = try plan.cells()
        try SweepPlanRecord(plan: plan, cells: cells).write(to: directory)
        try writeRecords(
            summary(cells[0].configuration, error: 0.10), to: directory.appendingPathComponent(cells[0].runName))
        // Only metrics.jsonl, one complete epoch and a truncated line being written when the sweep stopped.
        let runDir = directory.appendingPathComponent("bn-nb2-s0")
        try FileManager.default.createDirectory(at: runDir, withIntermediateDirectories: true)
        let first = epochs(cells[1].configuration, finalError: 0.25)[0]
        let line = String(decoding: try JSONEncoder().encode(first), as: UTF8.self)
        try (line + "\n{\"epoch\": 2, \"ste").write(
            to: runDir.appendingPathComponent("metrics.jsonl"),
            atomically: true, encoding: .utf8)
        let report = try SweepReport.build(from: directory)
        let partial = try XCTUnwrap(report.runs.first { $0.runName == "bn-nb2-s0" })
        XCTAssertEqual(partial.status, .partial)
        XCTAssertEqual(partial.epochsCompleted, 1)
        XCTAssertEqual(try XCTUnwrap(partial.finalTestError), first.testError, accuracy: 1e-12)
        let entry = try XCTUnwrap(report.table.entry(SeriesKey(norm: .bn), column: 2))
        XCTAssertTrue(entry.partial)
        XCTAssertEqual(report.pendingRuns, ["gn-g8-nb32-s0"])
        let markdown = report.markdown()
        XCTAssertTrue(markdown.contains(String(format: "%.2f*", first.testError * 100)))
        XCTAssertTrue(markdown.contains("*: includes unfinished runs"))
    }

    /// A run whose BN layers skipped running-statistic updates is named in results.md with its count, in runs.json,
    /// and in the runner's progress line (a non-interactive sweep shows no trainer warning); the count comes from
    /// the summary of a finished run and from the epoch records of an unfinished one.
    func testRunsThatSkippedRunningStatisticUpdatesAreNamed() throws {
        let plan = smallPlan()
        let cells = try plan.cells()
        var lines: [String] = []
        let runner = SweepRunner(plan: plan, directory: directory) { config, runDir in
            var result = self.summary(config, error: self.fakeError(config))
            if runDir.lastPathComponent == "bn-nb2-s0" {
                result.skippedUpdates = 3
                result.epochs[0].skippedUpdates = 1
                result.epochs[1].skippedUpdates = 2
            }
            try self.writeRecords(result, to: runDir)
            return result
        }
        runner.log = { lines.append($0) }
        _ = try runner.run()
        let progress = try XCTUnwrap(lines.first { $0.contains("finished") && $0.contains("nb2") })
        XCTAssertTrue(progress.hasSuffix("3 running-statistic updates skipped (non-finite batch statistics)"), progress)
        XCTAssertFalse(lines.contains { $0.contains("nb32") && $0.contains("skipped (") }, "\(lines)")

        var report = try SweepReport.build(from: directory)
        XCTAssertEqual(report.runs.map(\.skippedUpdates), [nil, 3, nil])
        var markdown = report.markdown()
        XCTAssertTrue(markdown.contains("## Runs whose running statistics skipped batches"), markdown)
        XCTAssertTrue(markdown.contains("- `bn-nb2-s0`: 3 skipped updates"), markdown)
        XCTAssertFalse(markdown.contains("`bn-nb32-s0`: "), markdown)
        let json = try XCTUnwrap(String(data: try ResultsCSV.json(report.runs), encoding: .utf8))
        XCTAssertTrue(json.contains("\"skippedUpdates\" : 3"), json)

        // Unfinished: no summary, only metrics.jsonl; the epochs' counts add up.
        let runDir = directory.appendingPathComponent(cells[1].runName)
        try FileManager.default.removeItem(at: runDir.appendingPathComponent("summary.json"))
        report = try SweepReport.build(from: directory)
        XCTAssertEqual(report.runs.first { $0.runName == "bn-nb2-s0" }?.status, .partial)
        XCTAssertEqual(report.runs.first { $0.runName == "bn-nb2-s0" }?.skippedUpdates, 3)
        markdown = report.markdown()
        XCTAssertTrue(markdown.contains("- `bn-nb2-s0`: 3 skipped updates"), markdown)

        // No run skipped anything: no section.
        try FileManager.default.removeItem(at: runDir)
        XCTAssertFalse(try SweepReport.build(from: directory).markdown().contains("running statistics skipped"))
    }

    func testReportWithoutPlanInfersReusedColumns() throws {
        var config = TrainingConfiguration()
        config.epochs = 1
        for nb in [32, 4] {
            config.norm = .bn
            config.normBatch = nb
            try writeRecords(
                summary(config, error: 0.1 + 0.01 * Double(32 / nb)),
                to: directory.appendingPathComponent("bn-nb\(nb)-s0"))
        }
        config.norm = .gn
        config.normBatch = nil
        try writeRecords(summary(config, error: 0.13), to: directory.appendingPathComponent("gn-nb32-s0"))
        let report = try SweepReport.build(from: directory)
        XCTAssertNil(report.plan)
        XCTAssertEqual(report.table.columns, [32, 4])
        XCTAssertEqual(try XCTUnwrap(report.table.difference(column: 4)), 0.18 * 100 - 13, accuracy: 1e-9)
        XCTAssertEqual(report.table.entry(SeriesKey(norm: .gn), column: 4)?.requested, 1)
    }

    func testGroupsAxisTable() throws {
        var base = TrainingConfiguration()
        base.epochs = 1
        let plan = SweepPlan(
            name: "groups", base: base, norms: [.gn], normBatches: [32],
            groupAxis: [.groups(4), .groups(1), .groupSize(2), .groupSize(1)])
        let cells = try plan.cells()
        try SweepPlanRecord(plan: plan, cells: cells).write(to: directory)
        let errors = [0.120, 0.150, 0.125, 0.180]
        for (cell, error) in zip(cells, errors) {
            try writeRecords(
                summary(cell.configuration, error: error), to: directory.appendingPathComponent(cell.runName))
        }
        let report = try SweepReport.build(from: directory)
        let groups = try XCTUnwrap(report.table.groupsMarkdown())
        XCTAssertTrue(groups.contains("| groups (G) | 4 | 1 (=LN) |"))
        XCTAssertTrue(groups.contains("| error % | 12.00 | 15.00 |"))
        XCTAssertTrue(groups.contains("| Δ vs best | +0.00 | +3.00 |"))
        XCTAssertTrue(groups.contains("| channels per group | 2 | 1 (=IN) |"))
        XCTAssertTrue(groups.contains("| Δ vs best | +0.00 | +5.50 |"))
        XCTAssertTrue(report.markdown().contains("## GroupNorm: number of groups and channels per group"))
        XCTAssertTrue(report.markdown().hasPrefix("# Sweep `groups`: test error vs GN groups\n"))
        XCTAssertFalse(report.markdown().contains("by normalization batch size"), "no empty batch table")
        XCTAssertNil(report.table.difference(column: 32), "no BN row")
        try report.write(to: directory)
        let texts = try svgTexts("error_vs_groups.svg")
        for label in ["4", "1 (LN)", "2", "1 (IN)", "groups G (log scale)", "channels per group (log scale)"] {
            XCTAssertTrue(texts.contains(label), label)
        }
    }

    func testRunsOutsideThePlanAreListedButNotTabulated() throws {
        _ = try writeKnownSweep()
        var stray = TrainingConfiguration()
        stray.norm = .ln
        try writeRecords(summary(stray, error: 0.3), to: directory.appendingPathComponent("ln-nb32-s0"))
        let report = try SweepReport.build(from: directory)
        XCTAssertEqual(report.otherRuns.map(\.runName), ["ln-nb32-s0"])
        XCTAssertFalse(report.runs.contains { $0.runName == "ln-nb32-s0" })
        XCTAssertFalse(report.table.rows.contains { $0.key.norm == .ln })
        XCTAssertTrue(report.markdown().contains("## Runs not in plan.json (ignored above)"))
    }

    // MARK: - Files

    func testCSVAndJSONHaveOneRowPerRun() throws {
        let record = try writeKnownSweep()
        let report = try SweepReport.rebuild(in: directory)
        XCTAssertEqual(report.runs.count, 8)
        let csv = try String(contentsOf: directory.appendingPathComponent("runs.csv"), encoding: .utf8)
        let lines = csv.split(separator: "\n")
        XCTAssertEqual(lines.count, 1 + 8)
        XCTAssertEqual(String(lines[0]), ResultsCSV.header.joined(separator: ","))
        for line in lines {
            XCTAssertEqual(
                line.split(separator: ",", omittingEmptySubsequences: false).count,
                ResultsCSV.header.count)
        }
        XCTAssertTrue(lines.contains { $0.hasPrefix("bn-nb2-s1,finished,resnet8,bn,,,32,2,2,0.1,") })
        XCTAssertTrue(csv.contains(",22.000,"), "final test error in percent")
        let json = try JSONDecoder().decode(
            [SweepRunRecord].self,
            from: Data(contentsOf: directory.appendingPathComponent("runs.json")))
        XCTAssertEqual(json.map(\.runName), record.cells.map(\.runName).filter { $0 != "bn-nb2-s2" })
        XCTAssertEqual(json.first?.configuration, record.cells.first?.configuration)
    }

    func testSVGIsWellFormedWithLegendAndAxisLabels() throws {
        let plan = SweepPlan(
            name: "svg", base: smallPlan().base, norms: [.bn, .gn, .mabn, .brn],
            seeds: [0, 1])
        let runner = SweepRunner(plan: plan, directory: directory) { config, runDir in
            var result = self.summary(config, error: self.fakeError(config))
            if config.norm == .mabn { result.finalTestError = 0.125 + Double(config.seed) * 0.003 }
            try self.writeRecords(result, to: runDir)
            return result
        }
        runner.rebuildsReport = false  // only the final report; rebuilding after each cell is tested above
        try runner.run()
        let texts = try svgTexts("error_vs_batch.svg")
        for label in ["BN", "GN (batch-independent: one run)", "MABN", "BRN"] {
            XCTAssertTrue(texts.contains(label), "legend entry \(label)")
        }
        XCTAssertTrue(texts.contains { $0.hasPrefix("normalization batch size") }, "x-axis label")
        XCTAssertTrue(texts.contains { $0.hasPrefix("test error (%)") }, "y-axis label")
        XCTAssertTrue(texts.contains { $0.contains("test error vs normalization batch size") }, "title")
        for tick in ["32", "16", "8", "4", "2"] { XCTAssertTrue(texts.contains(tick), "x tick \(tick)") }

        let curves = try svgTexts("training_curves.svg")
        XCTAssertTrue(curves.contains("BN: test error"))
        XCTAssertTrue(curves.contains("MABN: training error"))
        XCTAssertTrue(
            curves.contains { $0.hasPrefix("training error (%)") }, "y-axis label of the training-error panels")
        XCTAssertTrue(curves.contains("epoch"))

        let png = try Data(contentsOf: directory.appendingPathComponent("error_vs_batch.png"))
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        XCTAssertEqual(Array(png[16..<24]), [0, 0, 3, 0x84, 0, 0, 2, 0x30], "900 × 560 pixels")
        XCTAssertEqual(Array(png.suffix(8).prefix(4)), Array("IEND".utf8))
    }

    func testEmptySweepDirectoryStillGivesAReport() throws {
        try SweepPlanRecord(plan: smallPlan(), cells: try smallPlan().cells()).write(to: directory)
        let report = try SweepReport.rebuild(in: directory)
        XCTAssertEqual(report.runs.count, 0)
        XCTAssertEqual(report.pendingRuns.count, 3)
        XCTAssertTrue(try svgTexts("error_vs_batch.svg").contains("no results yet"))
        XCTAssertThrowsError(try SweepReport.build(from: directory.appendingPathComponent("missing"))) { error in
            XCTAssertTrue("\(error)".contains("does not exist"))
        }
    }

    // MARK: - Damaged records

    /// Records no run can produce (a test error of ±1e308, in a summary and in an epoch; an epoch of Int.max) made
    /// the PNG rasterizer trap ("Double value cannot be converted to Int"), which ended `normkit report`, and a
    /// sweep, which rebuilds the report after every cell. The report is written; the impossible points are left out
    /// of the plots and a note in the axes counts them; every coordinate in the SVGs is a finite number.
    func testExtremeValuesInRunRecordsAreLeftOutOfThePlots() throws {
        let plan = smallPlan(seeds: [0, 1])
        let cells = try plan.cells()
        try SweepPlanRecord(plan: plan, cells: cells).write(to: directory)
        for (index, cell) in cells.enumerated() {
            var result = summary(cell.configuration, error: 0.2)
            switch index % 4 {
            case 0: result.finalTestError = 1e308
            case 1:
                result.finalTestError = -1e308
                result.epochs[0].testError = 1e308
                result.epochs[1].trainError = -1e308
            case 2:
                result.epochs[1].epoch = Int.max
                result.epochs[0].testError = .greatestFiniteMagnitude
            default: result.bestTestError = -1e308
            }
            try writeRecords(result, to: directory.appendingPathComponent(cell.runName))
        }
        let report = try SweepReport.rebuild(in: directory)
        XCTAssertEqual(report.runs.count, cells.count)
        for name in SweepReport.reportFileNames {
            XCTAssertTrue(FileManager.default.fileExists(atPath: directory.appendingPathComponent(name).path), name)
        }
        XCTAssertTrue(try svgTexts("error_vs_batch.svg").contains { $0.contains("outside 0–100: not drawn") })
        XCTAssertTrue(try svgTexts("training_curves.svg").contains { $0.contains("outside 0–100: not drawn") })
        for name in ["error_vs_batch.svg", "training_curves.svg"] {
            let svg = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
            for bad in ["=\"nan", "=\"inf", "=\"-inf", "nan,", "inf,", ",nan", ",inf", "e+"] {
                XCTAssertFalse(svg.contains(bad), "\(name) has a coordinate '\(bad)'")
            }
        }
    }

    /// A report file that cannot be written (results.md is a directory) is named with the reason in words, not
    /// Foundation's `Error Domain=NSCocoaErrorDomain Code=512 "(null)" UserInfo=…`.
    func testAReportFileThatCannotBeWrittenIsNamedWithTheReason() throws {
        try SweepPlanRecord(plan: smallPlan(), cells: try smallPlan().cells()).write(to: directory)
        let results = directory.appendingPathComponent("results.md")
        try FileManager.default.createDirectory(at: results, withIntermediateDirectories: true)
        XCTAssertThrowsError(try SweepReport.rebuild(in: directory)) { error in
            XCTAssertEqual("\(error)", "cannot write \(results.path): Is a directory")
            XCTAssertEqual(error.localizedDescription, "cannot write \(results.path): Is a directory")
        }
    }

    /// A summary.json whose number does not fit its field names the field (Foundation says "not valid JSON").
    func testAnUnreadableSummaryNamesTheField() throws {
        let plan = smallPlan()
        let cells = try plan.cells()
        try SweepPlanRecord(plan: plan, cells: cells).write(to: directory)
        let run = directory.appendingPathComponent(cells[0].runName)
        try writeRecords(summary(cells[0].configuration, error: 0.2), to: run)
        let url = run.appendingPathComponent("summary.json")
        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        var configuration = try XCTUnwrap(json["configuration"] as? [String: Any])
        configuration["epochs"] = 2.5
        json["configuration"] = configuration
        try JSONSerialization.data(withJSONObject: json).write(to: url)
        let report = try SweepReport.build(from: directory)
        let error = try XCTUnwrap(report.runs.first { $0.runName == cells[0].runName }?.error)
        XCTAssertTrue(error.contains("field configuration.epochs: 2.5 is not an integer"), error)
    }

    /// Without `plan.json`, a run directory whose summary cannot be read, or that holds only the run's error, has no
    /// configuration to tabulate: it was dropped from the report without a word. It is now listed with the reason.
    func testRunDirectoriesThatCannotBeReadAreListedWithTheReasonWithoutAPlan() throws {
        var config = TrainingConfiguration()
        config.epochs = 1
        try writeRecords(summary(config, error: 0.1), to: directory.appendingPathComponent("good"))
        let damaged = directory.appendingPathComponent("damaged")
        try FileManager.default.createDirectory(at: damaged, withIntermediateDirectories: true)
        try Data("{\"configuration\": {\"epochs\": ".utf8).write(to: damaged.appendingPathComponent("summary.json"))
        let failed = directory.appendingPathComponent("failed")
        try FileManager.default.createDirectory(at: failed, withIntermediateDirectories: true)
        try Data("out of memory at step 3\nmore detail".utf8).write(to: failed.appendingPathComponent("error.txt"))
        try FileManager.default.createDirectory(
            at: directory.appendingPathComponent("empty"), withIntermediateDirectories: true)

        let report = try SweepReport.build(from: directory)
        XCTAssertEqual(report.runs.map(\.runName), ["good"])
        XCTAssertEqual(report.unreadableRuns.map(\.runName), ["damaged", "failed"], "an empty directory is no run")
        let reason = try XCTUnwrap(report.unreadableRuns.first?.reason)
        XCTAssertTrue(reason.hasPrefix("unreadable summary.json"), reason)
        XCTAssertEqual(report.unreadableRuns.last?.reason, "out of memory at step 3\nmore detail")
        let markdown = report.markdown()
        XCTAssertTrue(markdown.contains("## Run directories that could not be read (ignored above)"), markdown)
        XCTAssertTrue(markdown.contains("- `failed`: out of memory at step 3\n"), markdown)
        XCTAssertTrue(markdown.contains("- `damaged`: unreadable summary.json"), markdown)
    }

    // MARK: - Helpers

    /// The text content of every `<text>` element; fails if the file is not well-formed XML.
    private func svgTexts(_ name: String) throws -> [String] {
        let parser = XMLParser(data: try Data(contentsOf: directory.appendingPathComponent(name)))
        let collector = TextCollector()
        parser.delegate = collector
        XCTAssertTrue(parser.parse(), "\(name): \(String(describing: parser.parserError))")
        XCTAssertEqual(collector.root, "svg")
        return collector.texts
    }
}

/// Collects `<text>` contents and the root element's name.
private final class TextCollector: NSObject, XMLParserDelegate {
    var texts: [String] = []
    var root: String?
    private var current: String?

    func parser(
        _ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
        attributes: [String: String] = [:]
    ) {
        if root == nil { root = name }
        if name == "text" { current = "" }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) { current? += string }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text", let text = current { texts.append(text); current = nil }
    }
}
