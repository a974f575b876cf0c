import Foundation
import NormKitExperiments
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Regressions found by the `fuzz-run-records` target (docs/FUZZING.md, "Findings"): a sweep's run records as the
/// trainer writes them must read back in `normkit report` and in the sweep runner.
final class RunRecordFuzzRegressionTests: XCTestCase {
    /// The trainer's encoding of its records (`summary.json`, `metrics.jsonl`): sorted keys and non-finite numbers
    /// as `"inf"`, `"-inf"` and `"nan"`.
    private func trainerJSON<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try encoder.encode(value)
    }

    private func configuration() -> TrainingConfiguration {
        var c = TrainingConfiguration()
        c.norm = .bn
        c.batch = 8
        c.normBatch = 2
        c.epochs = 2
        c.trainLimit = 64
        return c.resolved
    }

    /// Records holding non-finite numbers (a NaN test loss, an infinite training loss), which the trainer's encoder
    /// writes as strings: e.g. a run resumed from a training state whose loss sum was NaN, or an edited record.
    private func nonFiniteEpochs() -> [EpochMetrics] {
        [
            EpochMetrics(
                epoch: 0, step: 8, trainLoss: 2.5, trainError: 0.8, testLoss: .nan, testError: 0.9,
                learningRate: 0.05, seconds: 1.5, imagesPerSecond: 800, skippedUpdates: 3),
            EpochMetrics(
                epoch: 1, step: 16, trainLoss: .infinity, trainError: 0.9, testLoss: .nan, testError: 0.9,
                learningRate: 0.01, seconds: 3, imagesPerSecond: 800, skippedUpdates: 4),
        ]
    }

    private func writeRun(_ runDir: URL, summary: RunSummary, metrics: [EpochMetrics]) throws {
        try FileManager.default.createDirectory(at: runDir, withIntermediateDirectories: true)
        try trainerJSON(summary).write(to: runDir.appendingPathComponent("summary.json"))
        let lines = try metrics.map { String(decoding: try trainerJSON($0), as: UTF8.self).split(separator: "\n") }
            .map { $0.joined() + "\n" }.joined()
        try Data(lines.utf8).write(to: runDir.appendingPathComponent("metrics.jsonl"))
    }

    /// `normkit report` read `summary.json` and `metrics.jsonl` with a decoder that refuses `"nan"` and `"inf"`:
    /// such a finished summary was "unreadable" and, without a plan, the run vanished from the report; such metrics
    /// lines were dropped as if truncated.
    func testRunRecordsWithNonFiniteNumbersAreReadBack() throws {
        let sweep = try makeTemporaryDirectory("nonfinite-sweep")
        let epochs = nonFiniteEpochs()
        let summary = RunSummary(
            configuration: configuration(), finalTestError: 0.9, bestTestError: 0.9, epochs: epochs, wallSeconds: 3,
            imagesPerSecond: 800, perClassAccuracy: Array(repeating: 0.1, count: 10), finished: true,
            skippedUpdates: 7)
        try writeRun(sweep.appendingPathComponent("finished"), summary: summary, metrics: epochs)
        // Stopped after its first epoch's summary, its second epoch's metrics line written.
        var unfinished = summary
        unfinished.finished = false
        unfinished.epochs = [epochs[0]]
        unfinished.skippedUpdates = nil
        try writeRun(sweep.appendingPathComponent("partial"), summary: unfinished, metrics: epochs)

        let report = try SweepReport.build(from: sweep)
        XCTAssertEqual(report.runs.map(\.runName), ["finished", "partial"])
        let finished = try XCTUnwrap(report.runs.first { $0.runName == "finished" })
        XCTAssertEqual(finished.status, .finished, finished.error ?? "")
        XCTAssertNil(finished.error)
        XCTAssertEqual(finished.epochsCompleted, 2)
        XCTAssertEqual(finished.skippedUpdates, 7)
        XCTAssertTrue(finished.epochs.allSatisfy { $0.testLoss.isNaN })
        let partial = try XCTUnwrap(report.runs.first { $0.runName == "partial" })
        XCTAssertEqual(partial.status, .partial)
        XCTAssertEqual(partial.epochsCompleted, 2, "metrics lines with \"nan\" were dropped")
        XCTAssertEqual(partial.epochs.last?.trainLoss, .infinity)
        XCTAssertEqual(partial.skippedUpdates, 7, "the metrics lines' 3 + 4")
        XCTAssertNoThrow(try report.write(to: sweep))
    }

    /// The sweep runner read a finished summary with the same decoder: a finished run whose records hold a NaN
    /// counted as unfinished and was trained again at every restart of the sweep.
    func testFinishedRunWithANaNInItsRecordsIsNotRunAgain() throws {
        let sweep = try makeTemporaryDirectory("nonfinite-runner")
        let plan = SweepPlan(name: "t", base: configuration(), norms: [.bn], normBatches: [2], batch: 8, seeds: [0])
        let cell = try XCTUnwrap(try plan.cells().first)
        let epochs = nonFiniteEpochs()
        let summary = RunSummary(
            configuration: cell.configuration, finalTestError: 0.9, bestTestError: 0.9, epochs: epochs,
            wallSeconds: 3, imagesPerSecond: 800, perClassAccuracy: Array(repeating: 0.1, count: 10), finished: true)
        var calls: [String] = []
        let runner = SweepRunner(plan: plan, directory: sweep) { (_: TrainingConfiguration, runDir: URL) in
            calls.append(runDir.lastPathComponent)
            return summary
        }
        try writeRun(runner.runDirectory(for: cell), summary: summary, metrics: epochs)
        let outcome = try runner.run()
        XCTAssertEqual(calls, [], "a finished run with a NaN loss was trained again")
        XCTAssertEqual(outcome.cells.map(\.status), [.skipped])
    }
}
