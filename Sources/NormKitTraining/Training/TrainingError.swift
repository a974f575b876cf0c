import Foundation

/// Errors of a training run. Every message names the directory or file and says what to do.
public enum TrainingError: Error, CustomStringConvertible, Equatable, LocalizedError {
    case invalidConfiguration(String)
    /// The run stopped on request (Ctrl-C, SIGTERM, or ``Trainer/stopAfterStep``) after saving a checkpoint at
    /// `step`.
    case interrupted(step: Int, directory: String)
    case nothingToResume(String)
    /// The loss (or a weight) stopped being finite or passed the trainer's bounds at `step`; nothing was saved
    /// after the last good checkpoint (`lastCheckpointStep`, nil when none was written).
    case diverged(step: Int, what: String, lastCheckpointStep: Int?, directory: String?)
    /// A new run was pointed at a directory that holds a run; `state` says which (finished, interrupted at …).
    case runExists(path: String, state: String)
    /// A new run was pointed at a directory whose checkpoint (`model.safetensors`) cannot be read, so the run in it
    /// can be neither resumed nor kept; `reason` says why.
    case unreadableRun(path: String, reason: String)
    /// Another process (its PID when known) holds the directory's lock.
    case runDirectoryLocked(path: String, pid: Int32?)
    /// A file or directory could not be created or written.
    case cannotWrite(path: String, reason: String)
    /// A resumed run was given other data than it was trained on.
    case dataMismatch(directory: String, recorded: String, given: String)
    /// A data-parallel run stopped because worker `worker` failed (``InProcessWorkerGroup``): `reason` is its error.
    case workerFailed(worker: Int, reason: String)
    /// A training step of `model` at `batch` images needs about `bytes` (measured per image on probe steps), more
    /// than the `available` bytes of memory the machine has free; `largestBatch` is the largest batch that fits.
    case notEnoughMemory(model: String, batch: Int, bytes: Int, available: Int, largestBatch: Int)

    public var description: String {
        switch self {
        case .invalidConfiguration(let why): return "invalid training configuration: \(why)"
        case .interrupted(let step, let dir):
            return
                "interrupted: checkpoint of step \(step) saved in \(dir); continue with `normkit train --resume \(dir)`"
        case .nothingToResume(let dir):
            return "nothing to resume in \(dir): it has no \(TrainingCheckpoint.modelFileName)"
        case .diverged(let step, let what, let last, let dir):
            let checkpoint =
                last.map { "last good checkpoint: step \($0)" + (dir.map { " in \($0)" } ?? "") }
                ?? "no checkpoint was written"
            return "training diverged at step \(step) (\(what)); \(checkpoint). Hint: lower --lr or raise --warmup."
        case .runExists(let path, let state):
            return "\(path) already holds a run (\(state)). Continue it with `normkit train --resume \(path)`, "
                + "choose another --out, or pass --overwrite to replace it."
        case .unreadableRun(let path, let reason):
            return "\(path) holds a run whose checkpoint cannot be read, so it cannot be resumed (\(reason)). "
                + "Choose another --out, or pass --overwrite to replace that run."
        case .runDirectoryLocked(let path, let pid):
            return "\(path) is in use by another normkit process\(pid.map { " (pid \($0))" } ?? ""); "
                + "wait for it to finish or stop it first"
        case .cannotWrite(let path, let reason):
            return "cannot write \(path): \(reason)"
        case .dataMismatch(let directory, let recorded, let given):
            return "\(directory) was trained on \(recorded), but the data given is \(given); "
                + "resume it with the same data (--data), or start a new run"
        case .workerFailed(let worker, let reason):
            return "data-parallel worker \(worker) stopped the run: \(reason)"
        case .notEnoughMemory(let model, let batch, let bytes, let available, let largest):
            let fits = largest > 0 ? "a batch of at most \(largest) fits" : "no batch fits"
            return "\(model) at batch \(batch) needs about \(Self.gigabytes(bytes)) for a training step, more than "
                + "the \(Self.gigabytes(available)) of memory free on this machine; \(fits). Hint: lower --batch "
                + "(or free memory); the run would otherwise be killed by the kernel at its first step."
        }
    }

    public var errorDescription: String? { description }

    /// `25.4 GB` (powers of 1024, as `free -h`).
    private static func gigabytes(_ bytes: Int) -> String {
        String(format: "%.1f GB", Double(bytes) / Double(1 << 30))
    }
}

/// A model or training-state file that is readable safetensors but not a usable NormKit checkpoint.
public enum CheckpointError: Error, CustomStringConvertible, Equatable, LocalizedError {
    /// The file has no NormKit configuration in its metadata.
    case notACheckpoint(path: String)
    /// A metadata field does not decode or holds an impossible value.
    case unreadableMetadata(path: String, field: String, reason: String)
    /// The tensors do not belong to the model the configuration describes.
    case tensorsDoNotMatch(path: String, reason: String)
    /// The model file refers to a training state that is not there.
    case missingTrainingState(path: String, step: Int)

    public var description: String {
        switch self {
        case .notACheckpoint(let path):
            return "\(path) has no NormKit configuration in its metadata: not a checkpoint written by normkit train"
        case .unreadableMetadata(let path, let field, let reason):
            return
                "\(path): metadata field '\(field)' is unreadable (\(reason)); the file is damaged or was not written by normkit"
        case .tensorsDoNotMatch(let path, let reason):
            return "\(path): tensors do not match the recorded configuration: \(reason)"
        case .missingTrainingState(let path, let step):
            return
                "\(path) (the training state of step \(step)) is missing: the model file can be evaluated but not resumed"
        }
    }

    public var errorDescription: String? { description }
}
