import Foundation
import NormKitTraining

/// The state of one run directory as the report sees it.
public enum RunStatus: String, Codable, Sendable {
    /// `summary.json` with `finished == true`.
    case finished
    /// Not finished yet: an unfinished `summary.json` or only `metrics.jsonl` lines; its last epoch counts.
    case partial
    /// `error.txt` is present (the run threw), or its records cannot be read.
    case failed
}

/// One run of a sweep, read back from its directory: a row of `runs.csv` / `runs.json`.
public struct SweepRunRecord: Codable, Equatable, Sendable {
    /// The run directory's name.
    public var runName: String
    /// Finished, partial or failed.
    public var status: RunStatus
    /// The run's configuration (from `summary.json`, else from the plan's cell).
    public var configuration: TrainingConfiguration
    /// The results-table columns the run fills (see ``SweepCell/columns``).
    public var columns: [Int]
    /// The GN groups-axis value, if any.
    public var groupSpec: GroupSpec?
    /// Epochs with metrics.
    public var epochsCompleted: Int
    /// Test error after the last (completed) epoch, as a fraction (0…1), like `summary.json`.
    public var finalTestError: Double?
    /// Lowest test error over the epochs, as a fraction.
    public var bestTestError: Double?
    /// Wall seconds (the summary's, else the last epoch's).
    public var wallSeconds: Double?
    /// Training throughput (the summary's, else the mean over epochs).
    public var imagesPerSecond: Double?
    /// The error text of a failed run.
    public var error: String?
    /// Running-statistic updates the run's BN, BRN or MABN layers skipped because a batch's statistics were not
    /// finite (the summary's count, else the sum over the epochs' records); nil when the records predate the count.
    /// A non-zero count means the layers' running statistics, used at test time, missed those batches.
    public var skippedUpdates: Int?
    /// Per-epoch metrics (for the training curves).
    public var epochs: [EpochMetrics]

    /// The run's line in the table and plot.
    public var seriesKey: SeriesKey { SeriesKey(configuration: configuration, groupSpec: groupSpec) }
}

/// A run directory whose records the report could not use, and why.
public struct UnreadableRun: Codable, Equatable, Sendable {
    /// The run directory's name.
    public var runName: String
    /// What was wrong: the unreadable file and the decoder's or reader's explanation, or the run's own error.
    public var reason: String
}

/// Everything a sweep directory says, and the report files made from it.
///
/// ``build(from:)`` reads only the directory: `plan.json` if present (columns, row order, requested seed counts,
/// configurations of runs that have not written a summary) and every `<run>/summary.json`, `<run>/metrics.jsonl`
/// and `<run>/error.txt`. ``write(to:)`` writes `results.md`, `runs.csv`, `runs.json`, `error_vs_batch.svg`,
/// `training_curves.svg`, and PNG versions of both plots.
public struct SweepReport {
    /// The plan and cells from `plan.json`, if present.
    public var plan: SweepPlanRecord?
    /// Every run of the plan with records, in plan order (without `plan.json`: every run directory, by name).
    public var runs: [SweepRunRecord]
    /// Run directories with records that `plan.json` does not list (left from another plan): listed in
    /// `results.md`, kept out of the tables, plots and `runs.csv`.
    public var otherRuns: [SweepRunRecord]
    /// Cells of the plan with no run directory records yet.
    public var pendingRuns: [String]
    /// Run directories that hold records the report cannot use and that `plan.json` does not describe (a damaged
    /// `summary.json`, or only an `error.txt`, with no plan to give their configuration): listed in `results.md`
    /// with the reason, kept out of the tables, plots and `runs.csv`.
    public var unreadableRuns: [UnreadableRun] = []
    /// The results table.
    public var table: ResultsTable

    /// `summary.json`.
    public static let summaryFileName = "summary.json"
    /// `metrics.jsonl`.
    public static let metricsFileName = "metrics.jsonl"
    /// `error.txt`.
    public static let errorFileName = "error.txt"
    /// The files ``write(to:)`` always produces; a sweep with a GN groups axis also gets `error_vs_groups.svg`
    /// and `error_vs_groups.png`.
    public static let reportFileNames = [
        "results.md", "runs.csv", "runs.json", "error_vs_batch.svg",
        "error_vs_batch.png", "training_curves.svg", "training_curves.png",
    ]

    /// Reads a sweep directory.
    /// - Throws: ``SweepError/missingSweepDirectory(_:)``; ``SweepError/unreadableRecord(_:reason:)`` for a
    ///   malformed `plan.json`. A run whose own records are malformed is reported as failed instead.
    public static func build(from directory: URL) throws -> SweepReport {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory),
            isDirectory.boolValue
        else { throw SweepError.missingSweepDirectory(directory) }
        let plan = try SweepPlanRecord.read(from: directory)
        let cellsByName = Dictionary((plan?.cells ?? []).map { ($0.runName, $0) }, uniquingKeysWith: { a, _ in a })
        let contents =
            (try? FileManager.default.contentsOfDirectory(
                at: directory, includingPropertiesForKeys: [.isDirectoryKey])) ?? []
        let dirNames = Set(
            contents.filter { url in
                (try? url.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) == true
            }.map(\.lastPathComponent))
        let planned = (plan?.cells ?? []).map(\.runName)
        let names = planned.filter(dirNames.contains) + dirNames.subtracting(planned).sorted()

        var runs: [SweepRunRecord] = [], others: [SweepRunRecord] = [], unreadable: [UnreadableRun] = []
        for name in names {
            guard
                let run = readRun(
                    directory.appendingPathComponent(name, isDirectory: true), cell: cellsByName[name],
                    unreadable: &unreadable)
            else { continue }
            if plan == nil || cellsByName[name] != nil { runs.append(run) } else { others.append(run) }
        }
        if plan == nil { inferColumns(&runs) }
        let present = Set(runs.map(\.runName))
        let pending = planned.filter { !present.contains($0) }
        return SweepReport(
            plan: plan, runs: runs, otherRuns: others, pendingRuns: pending, unreadableRuns: unreadable,
            table: ResultsTable(runs: runs, plan: plan))
    }

    /// Writes every report file into `directory` (normally the sweep directory itself).
    /// - Throws: ``SweepError/cannotWrite(_:reason:)``.
    public func write(to directory: URL) throws {
        try save(Data(markdown().utf8), "results.md", in: directory)
        try save(Data(ResultsCSV.csv(runs).utf8), "runs.csv", in: directory)
        try save(ResultsCSV.json(runs), "runs.json", in: directory)
        let errorPlot = errorVersusBatchCanvas()
        let curves = trainingCurvesCanvas()
        try save(Data(SVGPlot.render(errorPlot).utf8), "error_vs_batch.svg", in: directory)
        try save(Data(SVGPlot.render(curves).utf8), "training_curves.svg", in: directory)
        try save(PNGPlot.render(errorPlot), "error_vs_batch.png", in: directory)
        try save(PNGPlot.render(curves), "training_curves.png", in: directory)
        if !table.groupRows.isEmpty {
            let groups = errorVersusGroupsCanvas()
            try save(Data(SVGPlot.render(groups).utf8), "error_vs_groups.svg", in: directory)
            try save(PNGPlot.render(groups), "error_vs_groups.png", in: directory)
        }
    }

    /// Reads a sweep directory and writes its report files into it.
    @discardableResult
    public static func rebuild(in directory: URL) throws -> SweepReport {
        let report = try build(from: directory)
        try report.write(to: directory)
        return report
    }

    /// The content of `results.md`.
    public func markdown() -> String {
        let axes = [
            table.mainRows.isEmpty && !table.groupRows.isEmpty ? nil : "normalization batch",
            table.groupRows.isEmpty ? nil : "GN groups",
        ].compactMap { $0 }
        var out = "# Sweep `\(plan?.plan.name ?? "sweep")`: test error vs \(axes.joined(separator: " and "))\n\n"
        if let setup = setupLine() { out += setup + "\n\n" }
        let count = { (s: RunStatus) in runs.filter { $0.status == s }.count }
        let total = plan?.cells.count ?? runs.count
        out +=
            "Runs: \(total) planned; \(count(.finished)) finished, \(count(.partial)) partial, "
            + "\(count(.failed)) failed, \(pendingRuns.count) not started.\n\n"
        if !table.mainRows.isEmpty || table.groupRows.isEmpty {
            out += "## Test error (%) by normalization batch size\n\n" + table.markdown() + "\n"
        }
        if let ablation = table.ablationMarkdown() {
            out += "## MABN ablation: change in test error against the full MABN\n\n" + ablation + "\n"
        }
        if let groups = table.groupsMarkdown() {
            out += "## GroupNorm: number of groups and channels per group\n\n" + groups + "\n"
        }
        out += "## Figures\n\n"
        if !table.mainRows.isEmpty { out += "![Test error vs normalization batch](error_vs_batch.svg)\n\n" }
        if !table.groupRows.isEmpty { out += "![GN: test error vs groups](error_vs_groups.svg)\n\n" }
        out += "![Training curves](training_curves.svg)\n\n"
        out += "Each figure also comes as a PNG. Per-run rows: `runs.csv`, `runs.json`.\n"
        let skipping = runs.filter { ($0.skippedUpdates ?? 0) > 0 }
        if !skipping.isEmpty {
            out +=
                "\n## Runs whose running statistics skipped batches\n\n"
                + "These runs' BN, BRN or MABN layers met batches whose statistics were not finite and left their "
                + "running statistics (used at test time) unchanged for them; their test errors above include "
                + "that.\n\n"
            for run in skipping {
                let count = run.skippedUpdates ?? 0
                out += "- `\(run.runName)`: \(count) skipped update\(count == 1 ? "" : "s")\n"
            }
        }
        let failed = runs.filter { $0.status == .failed }
        if !failed.isEmpty {
            out += "\n## Failed runs\n\n"
            for run in failed {
                let first = (run.error ?? "").split(separator: "\n").first.map(String.init) ?? ""
                out += "- `\(run.runName)`: \(first)\n"
            }
        }
        if !unreadableRuns.isEmpty {
            out += "\n## Run directories that could not be read (ignored above)\n\n"
            for run in unreadableRuns {
                let first = run.reason.split(separator: "\n").first.map(String.init) ?? ""
                out += "- `\(run.runName)`: \(first)\n"
            }
        }
        if !otherRuns.isEmpty {
            out +=
                "\n## Runs not in plan.json (ignored above)\n\n"
                + otherRuns.map { "`\($0.runName)`" }.joined(separator: ", ") + "\n"
        }
        if !pendingRuns.isEmpty {
            out += "\n## Not started\n\n" + pendingRuns.map { "`\($0)`" }.joined(separator: ", ") + "\n"
        }
        return out
    }

    /// One sentence describing the plan's recipe.
    private func setupLine() -> String? {
        guard let record = plan else { return nil }
        let p = record.plan, b = p.base
        let train = b.trainLimit.map { "\(Self.grouped($0)) training" } ?? "all training"
        let test = b.testLimit.map { "\(Self.grouped($0)) test" } ?? "all test"
        var batching: String
        switch p.setting {
        case .normalizationBatch:
            let lr = b.learningRate ?? 0.1 * Double(p.batch) / 32
            batching =
                "SGD batch \(p.batch) (peak learning rate \(lr)); BN/BRN statistics over ghost batches of the "
                + "column's size, one MABN iteration per ghost batch"
            if let ranks = p.ranks {
                batching +=
                    " (cells named -rR below the SGD batch: on R ≤ \(ranks) mpirun ranks instead, each "
                    + "normalizing its own images)"
            }
        case .perGPU:
            batching = "per-GPU batches: SGD batch = \(p.gpus) × the column's size, learning rate 0.1 × batch / 32"
        }
        let seeds = p.seeds.map(String.init).joined(separator: ", ")
        return "\(b.model), \(batching); \(b.epochs) epoch\(b.epochs == 1 ? "" : "s") on \(train) images, "
            + "tested on \(test) images; \(b.schedule) schedule; seeds \(seeds)."
    }

    /// `24000` → `24,000`.
    private static func grouped(_ value: Int) -> String {
        var digits = String(value.magnitude), out = ""
        while digits.count > 3 {
            out = "," + digits.suffix(3) + out
            digits.removeLast(3)
        }
        return (value < 0 ? "-" : "") + digits + out
    }

    private func save(_ data: Data, _ name: String, in directory: URL) throws {
        let url = directory.appendingPathComponent(name)
        do {
            try data.write(to: url, options: .atomic)
        } catch {
            throw SweepError.cannotWrite(url, reason: ErrorText.describe(error, about: url.path))
        }
    }

    /// Reads one run directory; nil when it holds no records and the plan does not know it, or when it holds only
    /// records the report cannot use and no plan gives its configuration (then it is added to `unreadable`).
    private static func readRun(_ runDir: URL, cell: SweepCell?, unreadable: inout [UnreadableRun]) -> SweepRunRecord? {
        let fm = FileManager.default
        let summaryURL = runDir.appendingPathComponent(summaryFileName)
        let metricsURL = runDir.appendingPathComponent(metricsFileName)
        let errorURL = runDir.appendingPathComponent(errorFileName)
        // NormKit's decoder: the trainer's encoder writes non-finite numbers as "nan", "inf" and "-inf".
        let decoder = JSONDecoder.normKit
        var summary: RunSummary?
        var problems: [String] = []
        if fm.fileExists(atPath: summaryURL.path) {
            do {
                let data = try Data(readFileBytes(path: summaryURL.path))
                do {
                    summary = try decoder.decode(RunSummary.self, from: data)
                } catch {
                    problems.append(
                        "unreadable \(summaryFileName): "
                            + ErrorText.describeDecoding(error, of: RunSummary.self, from: data, decoder: decoder))
                }
            } catch {
                problems.append("unreadable \(summaryFileName): \(ErrorText.describe(error, about: summaryURL.path))")
            }
        }
        var errorText = (try? readFileBytes(path: errorURL.path)).map { String(decoding: $0, as: UTF8.self) }?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard let configuration = summary?.configuration ?? cell?.configuration else {
            if let reason = ([errorText].compactMap { $0 } + problems).first {
                unreadable.append(UnreadableRun(runName: runDir.lastPathComponent, reason: reason))
            }
            return nil
        }
        var epochs = summary?.epochs ?? []
        if summary?.finished != true,
            let lines = (try? readFileBytes(path: metricsURL.path)).map({ String(decoding: $0, as: UTF8.self) })
        {
            // A line being written when the sweep stopped may be truncated: keep the ones that decode.
            let fromFile = lines.split(separator: "\n").compactMap {
                try? decoder.decode(EpochMetrics.self, from: Data($0.utf8))
            }
            if fromFile.count > epochs.count { epochs = fromFile }
        }
        if !problems.isEmpty { errorText = ([errorText].compactMap { $0 } + problems).joined(separator: "\n") }
        let status: RunStatus
        if errorText != nil, summary?.finished != true {
            status = .failed
        } else if summary?.finished == true {
            status = .finished
        } else if !epochs.isEmpty {
            status = .partial
        } else {
            return nil
        }
        let columns = cell?.columns ?? [configuration.effectiveNormBatch]
        let groupSpec = cell.map(\.groupSpec) ?? nil
        let last = epochs.last
        let throughput = epochs.isEmpty ? nil : epochs.map(\.imagesPerSecond).reduce(0, +) / Double(epochs.count)
        return SweepRunRecord(
            runName: runDir.lastPathComponent, status: status, configuration: configuration, columns: columns,
            groupSpec: groupSpec, epochsCompleted: epochs.count,
            finalTestError: summary?.finalTestError ?? last?.testError,
            bestTestError: summary?.bestTestError ?? epochs.map(\.testError).min(),
            wallSeconds: summary?.wallSeconds ?? last?.seconds,
            imagesPerSecond: summary?.imagesPerSecond ?? throughput,
            error: status == .failed ? errorText : nil,
            skippedUpdates: summary?.skippedUpdates ?? EpochMetrics.totalSkippedUpdates(epochs), epochs: epochs)
    }

    /// Without `plan.json`: a batch-independent run at the SGD batch (normBatch nil) fills every column when all
    /// runs share one SGD batch; GN runs get a groups value when GN runs differ in their groups fields.
    private static func inferColumns(_ runs: inout [SweepRunRecord]) {
        let batches = Set(runs.map(\.configuration.batch))
        let allColumns = Set(runs.map(\.configuration.effectiveNormBatch)).sorted(by: >)
        let gnSpecs = Set(
            runs.filter { $0.configuration.norm == .gn }.compactMap {
                GroupSpec(configuration: $0.configuration)
            })
        for index in runs.indices {
            let config = runs[index].configuration
            if batches.count == 1, config.normBatch == nil, !SweepPlan.dependsOnNormalizationBatch(config.norm) {
                runs[index].columns = allColumns
            }
            if config.norm == .gn, gnSpecs.count > 1 { runs[index].groupSpec = GroupSpec(configuration: config) }
        }
    }
}
