import Foundation
import NormKitTraining

/// `runs.csv` and `runs.json`: one row per run with every configuration field and its results.
public enum ResultsCSV {
    /// The CSV header, in column order. Errors are percentages here (`*_pct`); `norm_batch` is the effective one.
    public static let header = [
        "run", "status", "model", "norm", "groups", "group_size", "batch", "norm_batch", "epochs",
        "learning_rate", "momentum", "weight_decay", "decay_all_parameters", "schedule", "warmup_fraction",
        "milestones", "seed", "train_limit", "test_limit", "augment", "threads", "columns", "epochs_completed",
        "final_test_error_pct", "best_test_error_pct", "wall_seconds", "images_per_second", "error",
    ]

    /// The CSV text (RFC 4180 quoting, `\n` line ends): a header and one line per run.
    public static func csv(_ runs: [SweepRunRecord]) -> String {
        var lines = [header.joined(separator: ",")]
        for run in runs {
            let c = run.configuration
            let fields: [String] = [
                run.runName, run.status.rawValue, c.model, c.norm.rawValue, optional(c.groups), optional(c.groupSize),
                "\(c.batch)", "\(c.effectiveNormBatch)", "\(c.epochs)", number(c.peakLearningRate),
                number(c.momentum), number(c.weightDecay), "\(c.decayAllParameters)", c.schedule,
                number(c.warmupFraction), c.milestones.map(String.init).joined(separator: " "), "\(c.seed)",
                optional(c.trainLimit), optional(c.testLimit), "\(c.augment)", "\(c.threads)",
                run.columns.map(String.init).joined(separator: " "), "\(run.epochsCompleted)",
                percent(run.finalTestError), percent(run.bestTestError), run.wallSeconds.map { fixed($0, 1) } ?? "",
                run.imagesPerSecond.map { fixed($0, 1) } ?? "", run.error ?? "",
            ]
            lines.append(fields.map(quote).joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The JSON array of ``SweepRunRecord`` (pretty-printed, sorted keys; errors as fractions like `summary.json`).
    /// - Throws: ``SweepError/cannotWrite(_:reason:)`` if encoding fails (a non-finite number).
    public static func json(_ runs: [SweepRunRecord]) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        do {
            return try encoder.encode(runs)
        } catch {
            throw SweepError.cannotWrite(URL(fileURLWithPath: "runs.json"), reason: ErrorText.describe(error))
        }
    }

    private static func optional(_ value: Int?) -> String { value.map(String.init) ?? "" }
    private static func number(_ value: Double) -> String { "\(value)" }
    private static func fixed(_ value: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", value) }
    private static func percent(_ fraction: Double?) -> String { fraction.map { fixed($0 * 100, 3) } ?? "" }

    /// Quotes a field when it holds a comma, quote or line break.
    private static func quote(_ field: String) -> String {
        guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return field }
        return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
