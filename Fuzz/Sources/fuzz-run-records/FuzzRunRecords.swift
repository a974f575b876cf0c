import Foundation
import FuzzSupport
import NormKitExperiments
import NormKitTraining

/// Fuzzes a sweep run's records as `normkit report` reads them: `SweepReport.build(from:)` on a sweep directory
/// (no `plan.json`) holding one run directory with the input's `summary.json` and `metrics.jsonl`, then every
/// report file `write(to:)` makes from them (Markdown, CSV, JSON, the SVG and PNG plots).
///
/// Input: `summary.json`, then optionally a NUL byte and `metrics.jsonl`. An input starting with NUL has no
/// `summary.json` (a run stopped before it finished: only its metrics lines); one without NUL no `metrics.jsonl`.
///
/// Properties: reading a sweep never throws for a run's own records (a malformed run is reported as failed);
/// a readable summary with epochs lists the run; a `summary.json` that NormKit's decoder
/// reads makes the run's configuration and (when finished) its epochs and status; a failed run carries its error
/// text and no other run does; `runs.json` is written; every report file, plots included, is written (for one
/// input in 256, picked by its hash, or every input with `NORMKIT_FUZZ_ALL_PLOTS=1`: the PNGs are slow).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRunRecords(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let sweep = RunRecordsScratch.sweep, run = RunRecordsScratch.run
    let summaryURL = run.appendingPathComponent(SweepReport.summaryFileName)
    let metricsURL = run.appendingPathComponent(SweepReport.metricsFileName)
    let nul = input.firstIndex(of: 0)
    let summaryBytes = Array(input[..<(nul ?? input.endIndex)])
    let metricsBytes = nul.map { Array(input[($0 + 1)...]) }
    if nul == 0 {
        try? FileManager.default.removeItem(at: summaryURL)
    } else {
        Fuzz.writeFile(summaryBytes, to: summaryURL)
    }
    if let metricsBytes {
        Fuzz.writeFile(metricsBytes, to: metricsURL)
    } else {
        try? FileManager.default.removeItem(at: metricsURL)
    }

    let report: SweepReport
    do {
        report = try SweepReport.build(from: sweep)
    } catch {
        Fuzz.check(false, "build(from:) threw for a run's own records: \(error)")
        return 0
    }
    Fuzz.check(report.plan == nil && report.otherRuns.isEmpty && report.pendingRuns.isEmpty, "no plan, yet plan parts")
    Fuzz.check(report.runs.count <= 1, "\(report.runs.count) runs from one run directory")
    let summary = nul == 0 ? nil : try? RunRecordsScratch.decoder.decode(RunSummary.self, from: Data(summaryBytes))
    if let summary, summary.finished || !summary.epochs.isEmpty {
        Fuzz.check(report.runs.count == 1, "a readable summary.json with epochs, but no run")
    }
    if let record = report.runs.first {
        Fuzz.check(record.runName == run.lastPathComponent, "run name \(record.runName)")
        Fuzz.check(record.epochsCompleted == record.epochs.count, "epochsCompleted ≠ epochs.count")
        Fuzz.check(
            (record.status == .failed) == (record.error != nil),
            "status \(record.status), error \(record.error ?? "nil")")
        if let summary {
            Fuzz.check(record.configuration == summary.configuration, "the configuration is not the summary's")
            if summary.finished {
                Fuzz.check(record.status == .finished, "a finished summary.json, status \(record.status)")
                Fuzz.check(record.epochs.count == summary.epochs.count, "a finished summary's epochs replaced")
            }
        } else if nul != 0 {
            Fuzz.check(record.status == .failed, "an unreadable summary.json, status \(record.status)")
        }
    }
    _ = report.markdown()
    _ = report.table.groupsMarkdown()
    _ = ResultsCSV.csv(report.runs)
    do { _ = try ResultsCSV.json(report.runs) } catch { Fuzz.check(false, "runs.json cannot be written: \(error)") }
    // Every report file, the plots included. Rasterizing and compressing the PNGs takes about 0.25 s of CPU per
    // input (sanitized), 50 times the reading, so by default one input in 256 (by its hash) draws them.
    guard RunRecordsScratch.allPlots || fnv1a(input) % 256 == 0 else { return 0 }
    do {
        try report.write(to: RunRecordsScratch.output)
    } catch {
        Fuzz.check(false, "write(to:) failed: \(error)")
    }
    return 0
}

/// FNV-1a of the input: picks the inputs that draw the plots, the same ones on every run.
private func fnv1a(_ bytes: [UInt8]) -> UInt64 {
    bytes.reduce(0xcbf2_9ce4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
}

/// The sweep directory (one run directory, `run`) and the report output directory, made once per process.
enum RunRecordsScratch {
    static let sweep = Fuzz.scratchDirectory.appendingPathComponent("sweep", isDirectory: true)
    static let run: URL = {
        let run = sweep.appendingPathComponent("run", isDirectory: true)
        try! FileManager.default.createDirectory(at: run, withIntermediateDirectories: true)
        return run
    }()
    static let output: URL = {
        let output = Fuzz.scratchDirectory.appendingPathComponent("report", isDirectory: true)
        try! FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        return output
    }()
    /// `NORMKIT_FUZZ_ALL_PLOTS=1`: every input draws the report's plots (slow; see the harness).
    static let allPlots = ProcessInfo.processInfo.environment["NORMKIT_FUZZ_ALL_PLOTS"] == "1"
    /// NormKit's decoder for its records (`"inf"`, `"-inf"`, `"nan"` for non-finite numbers).
    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }()
}
