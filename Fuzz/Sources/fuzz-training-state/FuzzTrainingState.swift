import Foundation
import FuzzSupport
import NormKitTraining

/// Fuzzes the training state `normkit train --resume` loads: a real checkpoint directory (written once by a real
/// run of a tiny ResNet-8, stopped mid-run at step 3 of 4) whose `training-state-3.safetensors` holds the input as
/// its `state` metadata JSON (`TrainingCheckpoint.TrainingState`) and the run's optimizer velocities. Each input
/// goes through `Trainer.resume(from:)` (which calls `TrainingCheckpoint.load(into:optimizer:from:)`, checks the
/// state against the run and positions the batch iterator by it) and, when accepted, `Trainer.run()` to the end
/// of the run, in memory (no output directory).
///
/// Input: the `state` JSON, then optionally a NUL byte and two bytes damaging the velocities: the first drops that
/// many tensors from the end (modulo their count + 1), the second, when not 0, shortens tensor `(b − 1) % count`
/// by one value.
///
/// Properties: a refused state throws a checkpoint, model, data or training error (never a trap); an accepted one
/// sets the trainer's step and history to the state's, and the run continues to its last step and finishes with
/// one metrics record per epoch, every number in them finite.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTrainingState(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let nul = input.firstIndex(of: 0)
    let stateJSON = String(decoding: input[..<(nul ?? input.endIndex)], as: UTF8.self)
    var velocities = Resume.velocities
    if let nul {
        let damage = Array(input[(nul + 1)...])
        let names = velocities.keys.sorted()
        if let drop = damage.first {
            for name in names.suffix(Int(drop) % (names.count + 1)) { velocities[name] = nil }
        }
        if damage.count > 1, damage[1] != 0, !names.isEmpty {
            let name = names[(Int(damage[1]) - 1) % names.count]
            if case .float32(_, let values)? = velocities[name], !values.isEmpty {
                velocities[name] = .float32(shape: [values.count - 1], values: Array(values.dropLast()))
            }
        }
    }
    do {
        try SafeTensors.write(
            velocities,
            metadata: ["format": TrainingCheckpoint.format, "state": stateJSON, "step": "\(Resume.step)"],
            to: Resume.stateURL)
    } catch {
        Fuzz.check(false, "cannot write the training state: \(error)")
    }
    // A trainer whose resume was refused is used again (making one is most of an input's time); one that resumed
    // runs to its end and is replaced.
    let trainer: Trainer
    do {
        trainer = try Resume.spare ?? Resume.makeTrainer()
    } catch {
        Fuzz.check(false, "cannot make the trainer: \(error)")
        return 0
    }
    Resume.spare = nil
    do {
        try trainer.resume(from: Resume.directory)
    } catch {
        Fuzz.check(trainer.step == 0 && trainer.history.isEmpty, "a refused resume changed the step or history")
        Resume.spare = trainer
        Fuzz.check(
            error is CheckpointError || error is ModelError || error is SafeTensorsError || error is TrainingError
                || error is DataError,
            "resume threw an unspecific error: \(type(of: error)): \(error)")
        Fuzz.log("refused: \(error)")
        return 0
    }
    // Accepted: the state decoded (the harness decodes it again to compare).
    let state = try? Resume.decoder.decode(TrainingCheckpoint.TrainingState.self, from: Data(stateJSON.utf8))
    Fuzz.check(state != nil, "resume accepted a state NormKit's decoder cannot read")
    Fuzz.check(trainer.step == Resume.step, "resumed at step \(trainer.step), the checkpoint's is \(Resume.step)")
    // Compared as NormKit writes them: a NaN loss is not == itself.
    Fuzz.check(
        (try? Resume.encoder.encode(trainer.history)) == (try? Resume.encoder.encode(state?.history ?? [])),
        "the resumed history is not the state's")
    do {
        let summary = try trainer.run()
        Fuzz.check(summary.finished, "a resumed run did not finish")
        Fuzz.check(trainer.step == Resume.totalSteps, "finished at step \(trainer.step) of \(Resume.totalSteps)")
        Fuzz.check(
            summary.epochs.count == Resume.configuration.epochs && trainer.history.count == summary.epochs.count,
            "a run of \(Resume.configuration.epochs) epochs finished with \(summary.epochs.count) epoch records")
        Fuzz.check(
            summary.epochs.map(\.epoch) == Array(0..<Resume.configuration.epochs),
            "epoch records numbered \(summary.epochs.map(\.epoch))")
        // A run stops as diverged before it records a number that is not finite: no accepted state carries one in.
        Fuzz.check(
            summary.epochs.allSatisfy {
                [
                    $0.trainLoss, $0.trainError, $0.testLoss, $0.testError, $0.learningRate, $0.seconds,
                    $0.imagesPerSecond,
                ]
                .allSatisfy(\.isFinite)
            } && summary.bestTestError.isFinite,
            "a resumed run finished with a record that is not finite")
    } catch {
        Fuzz.check(false, "a resumed run failed: \(error)")
    }
    return 0
}

/// The run every input resumes: made once per process.
enum Resume {
    /// ResNet-8 with BN (ghost batches of 2), batch 4 over 8 images of 8×8: 2 steps per epoch, 2 epochs.
    static let configuration: TrainingConfiguration = {
        var c = TrainingConfiguration()
        c.model = "resnet8"
        c.norm = .bn
        c.batch = 4
        c.normBatch = 2
        c.epochs = 2
        c.seed = 3
        c.threads = 1
        c.augment = true
        return c
    }()
    static let step = 3
    /// A trainer whose last resume was refused.
    nonisolated(unsafe) static var spare: Trainer?
    static let totalSteps = 4
    static let data: (train: Dataset, test: Dataset) = {
        func make(_ n: Int, seed: UInt64) -> Dataset {
            var generator = SeededGenerator(seed: seed)
            let pixels = (0..<(n * 64)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            let labels = (0..<n).map { _ in Int32(generator.next() % 10) }
            return try! Dataset(
                pixels: pixels, labels: labels, height: 8, width: 8, classCount: 10,
                statistics: PixelStatistics(mean: 0.5, std: 0.3))
        }
        return (make(8, seed: 1), make(4, seed: 2))
    }()
    static func makeTrainer(output: URL? = nil) throws -> Trainer {
        try Trainer(
            configuration: configuration, train: data.train, test: data.test, output: output,
            progress: ProgressReporter(style: .silent))
    }
    /// The checkpoint directory, written by a real run stopped after ``step``.
    static let directory: URL = {
        let directory = Fuzz.scratchDirectory.appendingPathComponent("run", isDirectory: true)
        let trainer = try! makeTrainer(output: directory)
        trainer.stopAfterStep = step
        _ = try? trainer.run()
        Fuzz.check(trainer.step == step, "the setup run stopped at step \(trainer.step)")
        return directory
    }()
    static var stateURL: URL { directory.appendingPathComponent("training-state-\(step).safetensors") }
    /// The optimizer velocities the setup run saved.
    static let velocities: [String: StateTensor] = {
        let (tensors, _) = try! SafeTensors.read(from: stateURL)
        return tensors
    }()
    /// NormKit's encoder for its records.
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }()
    /// NormKit's decoder for its records (`"inf"`, `"-inf"`, `"nan"` for non-finite numbers).
    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }()
}
