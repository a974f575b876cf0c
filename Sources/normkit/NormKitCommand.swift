import ArgumentParser
import Foundation
import NormKitTraining

@main
struct NormKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "normkit",
        abstract: "Normalization layers for small batches: train, evaluate, sweep, report, benchmark, export, analyse.",
        subcommands: [
            TrainCommand.self, EvalCommand.self, SweepCommand.self, ReportCommand.self, BenchCommand.self,
            ExportCommand.self, StatsCommand.self,
        ])

    /// Line-buffers standard output first, so that progress lines reach a log file (`normkit sweep … > log`) as
    /// they are printed rather than when a 4 KB buffer fills, then parses and runs the command.
    static func main() {
        useFastBLASKernels()
        StandardOutput.useLineBuffering()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: userFacing(error))
        }
    }

    /// Re-executes this process once with `OPENBLAS_CORETYPE` set when OpenBLAS fell back to generic kernels on a
    /// CPU with AVX2/AVX-512 (``BLAS/suggestedCoreType``); the same PID, arguments and descriptors. If the exec
    /// fails, carries on with the slow kernels.
    static func useFastBLASKernels() {
        guard let core = BLAS.suggestedCoreType else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        let arguments = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", arguments)
    }

    /// Foundation's and Codable's errors in NormKit's words ("path: reason"), never `NSCocoaErrorDomain` text;
    /// NormKit's and the argument parser's own errors unchanged.
    static func userFacing(_ error: Error) -> Error {
        if error is DecodingError || error is EncodingError || type(of: error) == NSError.self || error is CocoaError
            || error is POSIXError
        {
            return CommandFailure(ErrorText.describe(error))
        }
        return error
    }
}

/// A failure while a command runs (not a usage mistake, so no usage text follows it).
struct CommandFailure: Error, CustomStringConvertible, LocalizedError {
    let description: String
    init(_ description: String) { self.description = description }
    var errorDescription: String? { description }
}

extension SingleValueParsingStrategy {
    /// The parsing of every numeric option (integer or floating-point): the next argument is its value even when it
    /// starts with `-`, so `--batch -1` reaches the command's own range check, as `--batch=-1` does, instead of
    /// ArgumentParser's "Missing value for '--batch <batch>'" (it takes `-1` for a short flag). A flag in the
    /// value's place is refused by name: `--batch --epochs 3` is "The value '--epochs' is invalid for
    /// '--batch <batch>'".
    static var number: SingleValueParsingStrategy { .unconditional }

    /// The parsing of every comma-separated list option (`--seeds`, `--norms`, `--norm-batches`, `--sizes`,
    /// `--milestones`, `--mabn-without`, `--shapes`), as ``number``: the next argument is the list even when it
    /// starts with `-`, so `--seeds -1` and `--milestones -3,5` reach the command's own check of the list, which
    /// names the flag, the value and what it must be, instead of "Missing value for '--seeds <seeds>'". A flag in
    /// the list's place is named by the same check ("--seeds must be comma-separated non-negative integers, got
    /// '--threads'").
    static var list: SingleValueParsingStrategy { .unconditional }
}

/// The check of every command's `--threads`: 1 to ``ConfigurationLimits/maxThreads``, with the words `train`'s
/// configuration check uses ("--threads 0: must be in 1...1024").
func validateThreads(_ threads: Int) throws {
    guard (1...ConfigurationLimits.maxThreads).contains(threads) else {
        throw ValidationError("--threads \(threads): must be in 1...\(ConfigurationLimits.maxThreads)")
    }
}

/// Refuses an empty path for `flag` (`--out ""` would otherwise mean the current directory).
func validateNotEmpty(_ path: String?, _ flag: String, _ what: String) throws {
    if let path, path.trimmingCharacters(in: .whitespaces).isEmpty {
        throw ValidationError("\(flag) '\(path)': give \(what) (an empty path would mean the current directory)")
    }
}

/// The model file a `--checkpoint` names: the file itself, or `model.safetensors` inside a run directory.
func modelFile(_ checkpoint: String) -> URL {
    let url = URL(fileURLWithPath: checkpoint)
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
        return url.appendingPathComponent(TrainingCheckpoint.modelFileName)
    }
    return url
}
