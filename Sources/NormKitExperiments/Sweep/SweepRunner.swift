import Foundation
import NormKitTraining

/// What happened to one cell during ``SweepRunner/run()``.
public enum SweepCellStatus: String, Codable, Sendable {
    /// A finished `summary.json` with the cell's configuration was already there.
    case skipped
    /// The run function returned a finished summary.
    case finished
    /// The run function returned a summary with `finished == false` (a restart redoes it).
    case unfinished
    /// The run function threw; the error text is in `<runDir>/error.txt`.
    case failed
}

/// One cell's line in a ``SweepOutcome``.
public struct SweepCellResult: Equatable, Sendable {
    /// The run directory's name.
    public var runName: String
    /// What happened.
    public var status: SweepCellStatus
    /// The error text of a failed cell.
    public var error: String?

    /// Creates a result.
    public init(runName: String, status: SweepCellStatus, error: String? = nil) {
        self.runName = runName; self.status = status; self.error = error
    }
}

/// The result of ``SweepRunner/run()``: every cell's status, in run order.
public struct SweepOutcome: Sendable {
    /// One entry per cell.
    public var cells: [SweepCellResult]

    /// Cells with this status.
    public func count(_ status: SweepCellStatus) -> Int { cells.filter { $0.status == status }.count }
    /// The failed cells' names.
    public var failedRuns: [String] { cells.filter { $0.status == .failed }.map(\.runName) }
}

/// Runs a plan's cells in order, one run directory each, resuming where an interrupted sweep stopped.
///
/// Layout: `<directory>/plan.json` (the plan and its cells), `<directory>/<runName>/` per cell (the run function
/// writes `summary.json`, `metrics.jsonl`, checkpoints there), and the report files
/// (see ``SweepReport``), rebuilt after every cell so that a partial sweep has a partial report.
///
/// A cell whose `summary.json` exists with `finished == true` is skipped; any other cell is (re)run. Before a rerun
/// the runner removes a stale `error.txt` and an unfinished `summary.json` and leaves everything else (a run
/// function that can resume from its checkpoints may). A cell whose run throws gets `<runDir>/error.txt` and the
/// sweep goes on.
public final class SweepRunner {
    /// Trains one configuration into a run directory (created by the runner) and returns its summary. It should
    /// write `summary.json` itself; if it does not, the runner writes the returned summary there.
    public typealias RunFunction = (TrainingConfiguration, URL) throws -> RunSummary
    /// Trains one cell (its configuration, and its ``SweepCell/ranks``) into a run directory, as ``RunFunction``.
    public typealias CellRunFunction = (SweepCell, URL) throws -> RunSummary

    /// The plan.
    public let plan: SweepPlan
    /// The sweep directory (created if missing).
    public let directory: URL
    /// Progress lines (one per cell, report problems); prints nothing by default.
    public var log: (String) -> Void = { _ in }
    /// Rebuild the report after every cell (default true).
    public var rebuildsReport = true

    private let include: (SweepCell) -> Bool
    private let runFunction: CellRunFunction

    /// Creates a runner.
    /// - Parameters:
    ///   - plan: the grid to run.
    ///   - directory: the sweep directory.
    ///   - include: the caller's cell filter (see ``SweepPlan/cells(including:)``).
    ///   - run: trains one cell.
    public convenience init(
        plan: SweepPlan, directory: URL, include: @escaping (SweepCell) -> Bool = { _ in true },
        run: @escaping RunFunction
    ) {
        self.init(plan: plan, directory: directory, include: include, runCell: { try run($0.configuration, $1) })
    }

    /// Creates a runner whose run function sees the whole cell (for ``SweepCell/ranks``).
    public init(
        plan: SweepPlan, directory: URL, include: @escaping (SweepCell) -> Bool = { _ in true },
        runCell: @escaping CellRunFunction
    ) {
        self.plan = plan; self.directory = directory; self.include = include; self.runFunction = runCell
    }

    /// The cells this runner runs, in order.
    public func cells() throws -> [SweepCell] { try plan.cells(including: include) }

    /// Runs every cell not finished yet, then rebuilds the report one last time.
    ///
    /// - Throws: ``SweepError/invalidPlan(_:)``; ``SweepError/configurationMismatch(runName:differences:)`` before
    ///   running anything when a finished run in the directory has another configuration than its cell (the
    ///   `threads` field is ignored); ``SweepError/cannotWrite(_:reason:)`` for the directory, `plan.json` or the
    ///   final report. A failing cell does not throw: see ``SweepOutcome``.
    @discardableResult
    public func run() throws -> SweepOutcome {
        let cells = try cells()
        try createDirectory(directory)
        for cell in cells {
            if let summary = try finishedSummary(for: cell) {
                let differences = Self.differences(summary.configuration, cell.configuration)
                if !differences.isEmpty {
                    throw SweepError.configurationMismatch(runName: cell.runName, differences: differences)
                }
            }
        }
        try SweepPlanRecord(plan: plan, cells: cells).write(to: directory)

        var outcome = SweepOutcome(cells: [])
        for (index, cell) in cells.enumerated() {
            let position = "[\(index + 1)/\(cells.count)] \(cell.runName)"
            if try finishedSummary(for: cell) != nil {
                outcome.cells.append(SweepCellResult(runName: cell.runName, status: .skipped))
                log("\(position): finished earlier, skipped")
                continue
            }
            let status = runCell(cell, position: position)
            outcome.cells.append(SweepCellResult(runName: cell.runName, status: status.0, error: status.1))
            if rebuildsReport {
                do {
                    try SweepReport.build(from: directory).write(to: directory)
                } catch {
                    log("report not rebuilt: \(ErrorText.describe(error))")
                }
            }
        }
        try SweepReport.build(from: directory).write(to: directory)
        return outcome
    }

    /// The run directory of a cell.
    public func runDirectory(for cell: SweepCell) -> URL {
        directory.appendingPathComponent(cell.runName, isDirectory: true)
    }

    private func runCell(_ cell: SweepCell, position: String) -> (SweepCellStatus, String?) {
        let runDir = runDirectory(for: cell)
        let summaryURL = runDir.appendingPathComponent(SweepReport.summaryFileName)
        let errorURL = runDir.appendingPathComponent(SweepReport.errorFileName)
        let fm = FileManager.default
        do {
            try createDirectory(runDir)
            if fm.fileExists(atPath: errorURL.path) { try fm.removeItem(at: errorURL) }
            if fm.fileExists(atPath: summaryURL.path) { try fm.removeItem(at: summaryURL) }
            log("\(position): running")
            let summary = try runFunction(cell, runDir)
            if !fm.fileExists(atPath: summaryURL.path) {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try encoder.encode(summary).write(to: summaryURL, options: .atomic)
            }
            let error = String(format: "%.2f", summary.finalTestError * 100)
            let skipped = summary.skippedUpdates ?? 0
            let skippedNote =
                skipped > 0
                ? "; \(skipped) running-statistic update\(skipped == 1 ? "" : "s") skipped (non-finite batch "
                    + "statistics)" : ""
            log(
                "\(position): \(summary.finished ? "finished" : "unfinished"), test error \(error) %\(skippedNote)")
            return (summary.finished ? .finished : .unfinished, nil)
        } catch {
            let text = ErrorText.describe(error)
            do {
                try createDirectory(runDir)
                try (text + "\n").write(to: errorURL, atomically: true, encoding: .utf8)
            } catch {
                log("\(position): cannot write \(errorURL.path): \(ErrorText.describe(error, about: errorURL.path))")
            }
            log("\(position): FAILED: \(text)")
            return (.failed, text)
        }
    }

    /// The cell's summary if it exists and is finished; nil otherwise (an unreadable summary counts as unfinished).
    private func finishedSummary(for cell: SweepCell) throws -> RunSummary? {
        let url = runDirectory(for: cell).appendingPathComponent(SweepReport.summaryFileName)
        guard FileManager.default.fileExists(atPath: url.path),
            let data = try? Data(readFileBytes(path: url.path)),
            let summary = try? JSONDecoder.normKit.decode(RunSummary.self, from: data),
            summary.finished
        else { return nil }
        return summary
    }

    private func createDirectory(_ url: URL) throws {
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        } catch {
            throw SweepError.cannotWrite(url, reason: ErrorText.describe(error, about: url.path))
        }
    }

    /// Field-by-field differences (`name: old → new`), ignoring `threads`, and GN's grouping when neither run is
    /// GN (a BN run does not depend on it: runs made before a change of the GN default stay valid).
    static func differences(_ old: TrainingConfiguration, _ new: TrainingConfiguration) -> [String] {
        // Resolved: a recorded default (GN's groups, MABN's buffer) equals the same default left implicit.
        var a = old.resolved, b = new.resolved
        a.threads = 0; b.threads = 0
        if a.norm != .gn && b.norm != .gn {
            (a.groups, a.groupSize, b.groups, b.groupSize) = (nil, nil, nil, nil)
        }
        guard a != b else { return [] }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        guard let da = try? encoder.encode(a), let db = try? encoder.encode(b),
            let ja = (try? JSONSerialization.jsonObject(with: da)) as? [String: Any],
            let jb = (try? JSONSerialization.jsonObject(with: db)) as? [String: Any]
        else {
            return ["configurations differ"]
        }
        let keys = Set(ja.keys).union(jb.keys).sorted()
        return keys.compactMap { key in
            let va = ja[key].map { "\($0)" } ?? "nil", vb = jb[key].map { "\($0)" } ?? "nil"
            return va == vb ? nil : "\(key): \(va) → \(vb)"
        }
    }
}
