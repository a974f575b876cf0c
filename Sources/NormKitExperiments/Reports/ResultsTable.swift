import Foundation
import NormKitTraining

/// A line of the results table and of the error-vs-batch plot: a normalization, and for GN on a groups axis,
/// the groups value.
public struct SeriesKey: Hashable, Codable, Sendable, Comparable {
    /// The normalization.
    public var norm: NormKind
    /// The GN groups-axis value, if the run is on one.
    public var groupSpec: GroupSpec?
    /// An MABN ablation's parts switched off (``/NormKitTraining/TrainingConfiguration/mabnWithout``, joined by
    /// `, `); nil for the paper's MABN and every other norm.
    public var variant: String?

    /// Creates a key.
    public init(norm: NormKind, groupSpec: GroupSpec? = nil, variant: String? = nil) {
        self.norm = norm; self.groupSpec = groupSpec; self.variant = variant
    }

    /// The key of a run with this configuration (and groups-axis value).
    public init(configuration: TrainingConfiguration, groupSpec: GroupSpec?) {
        let without = configuration.mabnWithout ?? []
        self.init(
            norm: configuration.norm, groupSpec: groupSpec,
            variant: without.isEmpty ? nil : without.joined(separator: ", "))
    }

    /// The label the papers use: `BN`, `GN`, `BN*` (frozen BN), `GN (G=8)`, `GN (4 ch/group)`; an ablation's
    /// `MABN without renorm, cenconv`.
    public var label: String {
        let name: String
        switch norm {
        case .frozenBN: name = "BN*"
        case .none: name = "none"
        default: name = norm.rawValue.uppercased()
        }
        if let variant { return "\(name) without \(variant)" }
        guard let spec = groupSpec else { return name }
        return "\(name) (\(spec))"
    }

    /// Normalization order (the declaration order of ``/NormKitTraining/NormKind``, as in `allCases`), then groups
    /// before group sizes, larger values first.
    public static func < (a: SeriesKey, b: SeriesKey) -> Bool {
        let ia = NormKind.allCases.firstIndex(of: a.norm)!, ib = NormKind.allCases.firstIndex(of: b.norm)!
        if ia != ib { return ia < ib }
        func rank(_ s: GroupSpec?) -> (Int, Int) {
            switch s {
            case nil: return (0, 0)
            case .groups(let g)?: return (1, -g)
            case .groupSize(let c)?: return (2, -c)
            }
        }
        if rank(a.groupSpec) != rank(b.groupSpec) { return rank(a.groupSpec) < rank(b.groupSpec) }
        return (a.variant ?? "") < (b.variant ?? "")
    }
}

/// The papers' results table: rows = normalizations, columns = normalization batch sizes (largest first),
/// cells = mean test error (%) ± sample standard deviation over seeds, plus `BN − GN` differences
/// (GN paper, Table 2) and, for a GN groups axis, GN paper Table 3's layout.
public struct ResultsTable: Sendable {
    /// One table cell: statistics over the seeds that reported a test error.
    public struct Entry: Equatable, Sendable {
        /// Every seed's test error after its last epoch, in percent.
        public var values: [Double]
        /// Runs the plan asked for in this cell (equal to `values.count` when all reported).
        public var requested: Int
        /// True when an unfinished run contributed its last completed epoch.
        public var partial: Bool
        /// True when the value comes from a run reused across columns (a batch-independent normalization).
        public var reused: Bool

        /// Seeds that reported.
        public var n: Int { values.count }
        /// Mean test error in percent (nil when no seed reported).
        public var mean: Double? { values.isEmpty ? nil : values.reduce(0, +) / Double(values.count) }
        /// Sample standard deviation (divisor n − 1) in percent; nil with fewer than two values.
        public var std: Double? {
            guard values.count > 1, let m = mean else { return nil }
            let ss = values.reduce(0) { $0 + ($1 - m) * ($1 - m) }
            return (ss / Double(values.count - 1)).squareRoot()
        }
    }

    /// One table row.
    public struct Row: Sendable {
        /// The series.
        public var key: SeriesKey
        /// Entries by normalization batch column (missing: nothing requested or reported).
        public var entries: [Int: Entry]
        /// True when this row's runs are reused across columns.
        public var reused: Bool { entries.values.contains { $0.reused } }
    }

    /// Normalization batch sizes, largest first.
    public var columns: [Int]
    /// Rows in display order (the plan's normalization order).
    public var rows: [Row]
    /// The SGD batch reused runs trained at (for the footnote), when known.
    public var reuseBatch: Int?

    /// Builds the table from the sweep's runs; `plan` gives the columns, the row order and the requested counts
    /// (without it: the columns seen, ``SeriesKey`` order, and the number of distinct seeds).
    public init(runs: [SweepRunRecord], plan: SweepPlanRecord?) {
        var values: [SeriesKey: [Int: Entry]] = [:]
        for run in runs where run.status == .finished || run.status == .partial {
            guard let error = run.finalTestError else { continue }
            let key = run.seriesKey
            for column in run.columns {
                var entry =
                    values[key, default: [:]][column]
                    ?? Entry(
                        values: [], requested: 0, partial: false,
                        reused: false)
                entry.values.append(error * 100)
                entry.partial = entry.partial || run.status == .partial
                entry.reused = entry.reused || run.columns.count > 1
                values[key, default: [:]][column] = entry
            }
        }
        var requested: [SeriesKey: [Int: Int]] = [:]
        var order: [SeriesKey] = []
        if let plan {
            columns = plan.plan.columns
            for cell in plan.cells {
                let key = SeriesKey(configuration: cell.configuration, groupSpec: cell.groupSpec)
                if !order.contains(key) { order.append(key) }
                for column in cell.columns { requested[key, default: [:]][column, default: 0] += 1 }
            }
            reuseBatch = plan.cells.first(where: { $0.isReused })?.configuration.batch
        } else {
            columns = Set(runs.flatMap(\.columns)).sorted(by: >)
            let seeds = Set(runs.map(\.configuration.seed)).count
            for (key, byColumn) in values {
                for column in byColumn.keys { requested[key, default: [:]][column] = seeds }
            }
            reuseBatch = runs.first(where: { $0.columns.count > 1 })?.configuration.batch
        }
        order += values.keys.filter { !order.contains($0) }.sorted()
        rows = order.map { key in
            var entries = values[key] ?? [:]
            for (column, count) in requested[key] ?? [:] {
                var entry = entries[column] ?? Entry(values: [], requested: 0, partial: false, reused: false)
                entry.requested = max(count, entry.n)
                entries[column] = entry
            }
            for (column, entry) in entries where entry.requested < entry.n { entries[column]!.requested = entry.n }
            return Row(key: key, entries: entries)
        }
    }

    /// The entry of a series at a column.
    public func entry(_ key: SeriesKey, column: Int) -> Entry? {
        rows.first { $0.key == key }?.entries[column]
    }

    /// `mean(BN) − mean(other)` in percentage points at a column (the GN paper's `BN − GN` row uses `.gn`);
    /// nil when either is missing (GN runs on a groups axis and MABN ablation variants do not count).
    public func difference(from other: NormKind = .gn, column: Int) -> Double? {
        let others = mainRows.filter { $0.key.norm == other && $0.key.variant == nil }
        guard others.count == 1,
            let bn = entry(SeriesKey(norm: .bn), column: column)?.mean,
            let value = others[0].entries[column]?.mean
        else { return nil }
        return bn - value
    }

    /// Rows on a GN groups axis (GN paper, Table 3); shown in their own tables and plot.
    public var groupRows: [Row] { rows.filter { $0.key.groupSpec != nil } }

    /// Rows not on a groups axis: the main table and the error-vs-batch plot.
    public var mainRows: [Row] { rows.filter { $0.key.groupSpec == nil } }

    /// The Markdown of the main table (``mainRows``) and its footnotes.
    public func markdown() -> String {
        let rows = mainRows
        guard !rows.isEmpty else {
            return "No normalization-batch series: every run is on the GN groups axis (see the groups tables).\n"
        }
        var lines: [String] = []
        let header = "| normalization batch | " + columns.map(String.init).joined(separator: " | ") + " |"
        lines.append(header)
        lines.append("|---|" + String(repeating: "---:|", count: columns.count))
        for row in rows {
            let label = row.key.label + (row.reused ? " †" : "")
            let cells = columns.map { Self.format(row.entries[$0]) }
            lines.append("| \(label) | " + cells.joined(separator: " | ") + " |")
        }
        for other in [NormKind.mabn, .gn] {
            let diffs = columns.map { difference(from: other, column: $0) }
            guard diffs.contains(where: { $0 != nil }) else { continue }
            let label = "BN − \(SeriesKey(norm: other).label)"
            lines.append("| **\(label)** | " + diffs.map { $0.map(Self.signed) ?? "—" }.joined(separator: " | ") + " |")
        }
        lines.append("")
        lines += footnotes(for: rows)
        return lines.joined(separator: "\n") + "\n"
    }

    /// The MABN ablation's verdict (issue 12): per variant and column, its mean test error minus the full MABN's
    /// in percentage points (positive: the variant is worse, so the parts it lacks help). Nil without variant rows
    /// or without a full-MABN row.
    public func ablationMarkdown() -> String? {
        let variants = mainRows.filter { $0.key.norm == .mabn && $0.key.variant != nil }
        guard !variants.isEmpty, let full = mainRows.first(where: { $0.key == SeriesKey(norm: .mabn) }) else {
            return nil
        }
        var lines = [
            "| MABN parts switched off | " + columns.map(String.init).joined(separator: " | ") + " |",
            "|---|" + String(repeating: "---:|", count: columns.count),
        ]
        for row in variants {
            let cells = columns.map { column -> String in
                guard let value = row.entries[column]?.mean, let reference = full.entries[column]?.mean else {
                    return "—"
                }
                return Self.signed(value - reference)
            }
            lines.append("| \(row.key.variant!) | " + cells.joined(separator: " | ") + " |")
        }
        lines.append("")
        lines.append(
            "Test error minus the full MABN's, in percentage points, by SGD/normalization batch; positive: "
                + "worse without those parts. Compare with the seeds' standard deviations in the table above.")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The Markdown of the groups-axis tables (GN paper, Table 3: one table for the number of groups, one for
    /// channels per group, with each value's difference from the best), or nil without a groups axis.
    public func groupsMarkdown() -> String? {
        let groupRows = self.groupRows
        guard !groupRows.isEmpty else { return nil }
        // Reused runs fill every column with the same values: show them once.
        let allReused = groupRows.allSatisfy { $0.reused }
        let shown =
            allReused ? Array(columns.prefix(1)) : columns.filter { c in groupRows.contains { $0.entries[c] != nil } }
        var lines: [String] = []
        let byGroups = groupRows.filter { if case .groups = $0.key.groupSpec { return true } else { return false } }
        let bySize = groupRows.filter { if case .groupSize = $0.key.groupSpec { return true } else { return false } }
        for (title, subset, oneLabel) in [("groups (G)", byGroups, "=LN"), ("channels per group", bySize, "=IN")] {
            guard !subset.isEmpty else { continue }
            let heads = subset.map { row -> String in
                let v = row.key.groupSpec!.value
                return v == 1 ? "\(v) (\(oneLabel))" : "\(v)"
            }
            lines.append("| \(title) | " + heads.joined(separator: " | ") + " |")
            lines.append("|---|" + String(repeating: "---:|", count: subset.count))
            for column in shown {
                let label = shown.count == 1 ? "error %" : "error % (normalization batch \(column))"
                lines.append(
                    "| \(label) | " + subset.map { Self.format($0.entries[column]) }.joined(separator: " | ")
                        + " |")
                if let best = subset.compactMap({ $0.entries[column]?.mean }).min() {
                    let deltas = subset.map { row in row.entries[column]?.mean.map { Self.signed($0 - best) } ?? "—" }
                    lines.append("| Δ vs best | " + deltas.joined(separator: " | ") + " |")
                }
            }
            lines.append("")
        }
        lines += footnotes(for: groupRows).filter { !$0.hasPrefix("†") }
        return lines.joined(separator: "\n") + "\n"
    }

    private func footnotes(for rows: [Row]) -> [String] {
        var notes = ["Test error (%) after the last epoch: mean ± sample standard deviation (n − 1) over seeds."]
        let reusedLabels = rows.filter(\.reused).map(\.key.label)
        if !reusedLabels.isEmpty {
            let batch = reuseBatch.map { " (\($0))" } ?? ""
            notes.append(
                "† \(reusedLabels.joined(separator: ", ")) \(reusedLabels.count == 1 ? "does" : "do") not "
                    + "depend on the normalization batch: one run per seed at the SGD batch\(batch) fills every column "
                    + "(runs at smaller normalization batches would repeat the same math with different ghost-batch "
                    + "bookkeeping).")
        }
        let entries = rows.flatMap { $0.entries.values }
        if entries.contains(where: { $0.n < $0.requested }) {
            notes.append("(n=k): only k of the requested seeds reported; — : no run reported yet.")
        }
        if entries.contains(where: \.partial) {
            notes.append("*: includes unfinished runs (their last completed epoch).")
        }
        return notes.map { $0 + "  " }
    }

    /// `12.34 ± 0.56`, `12.34 (n=1)*`, `—`.
    static func format(_ entry: Entry?) -> String {
        guard let entry, let mean = entry.mean else { return "—" }
        var text = String(format: "%.2f", mean)
        if let std = entry.std { text += String(format: " ± %.2f", std) }
        if entry.n < entry.requested { text += " (n=\(entry.n))" }
        if entry.partial { text += "*" }
        return text
    }

    /// `+1.23` / `−0.45` (a true minus sign, as in the papers).
    static func signed(_ value: Double) -> String {
        let text = String(format: "%+.2f", value)
        return text.hasPrefix("-") ? "−" + text.dropFirst() : text
    }
}
