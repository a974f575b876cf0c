import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Regressions found by the `fuzz-training-state` target (docs/FUZZING.md, "Findings"): a training state that
/// `--resume` loads must be one the run could have written.
final class TrainingStateFuzzRegressionTests: XCTestCase {
    /// BN over ghost batches of 8, batch 16 over 64 images: 4 steps per epoch, 2 epochs.
    private func configuration() -> TrainingConfiguration {
        var c = TrainingConfiguration()
        c.model = "resnet8"
        c.norm = .bn
        c.batch = 16
        c.normBatch = 8
        c.epochs = 2
        c.seed = 5
        c.threads = 2
        return c
    }

    private func trainer(output: URL?) throws -> Trainer {
        let data = try TorchModelParityTests.syntheticData(count: 64, testCount: 16, size: 16, seed: 9)
        return try Trainer(
            configuration: configuration(), train: data.0, test: data.1, output: output,
            progress: ProgressReporter(style: .silent))
    }

    /// The training state's history held any number of epoch records: a state at epoch 1 with none, or with
    /// three, was resumed, and the run "finished" with 1 or 4 records for its 2 epochs, written to `metrics.jsonl`
    /// and `summary.json` as if true. A state's history must be the records of the epochs before its position.
    /// Likewise its loss sum and seconds, which a run writes finite and non-negative: a NaN loss sum was resumed
    /// and became the epoch's training loss in the records. And the numbers inside a history record, which a run writes
    /// finite (it stops as diverged first): a NaN test error was carried into `metrics.jsonl` and `summary.json`.
    func testResumeRefusesAHistoryOrSumsTheRunCannotHaveWritten() throws {
        let directory = try makeTemporaryDirectory("history").appendingPathComponent("run")
        let first = try trainer(output: directory)
        first.stopAfterStep = 5  // epoch 1, batch 1: one epoch record
        XCTAssertThrowsError(try first.run())
        let stateURL = directory.appendingPathComponent("training-state-5.safetensors")
        let (velocities, metadata) = try SafeTensors.read(from: stateURL)
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let encoder = JSONEncoder()
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let saved = try decoder.decode(TrainingCheckpoint.TrainingState.self, from: Data(metadata["state"]!.utf8))
        XCTAssertEqual(saved.history.map(\.epoch), [0])
        let record = saved.history[0]

        var renumbered = record
        renumbered.epoch = 1
        var wrongStep = record
        wrongStep.step = 3
        func recorded(_ change: (inout EpochMetrics) -> Void) -> [EpochMetrics] {
            var edited = record
            change(&edited)
            return [edited]
        }
        typealias State = TrainingCheckpoint.TrainingState
        let edits: [(String, String, (inout State) -> Void)] = [
            ("no records", "epoch record", { $0.history = [] }),
            ("three records", "epoch record", { $0.history = [record, record, record] }),
            ("renumbered", "epoch record", { $0.history = [renumbered] }),
            ("another step", "epoch record", { $0.history = [wrongStep] }),
            ("NaN loss sum", "finite", { $0.epochLossSum = .nan }),
            ("negative loss sum", "finite", { $0.epochLossSum = -1 }),
            ("infinite seconds", "finite", { $0.elapsedSeconds = .infinity }),
            ("negative epoch seconds", "finite", { $0.epochTrainingSeconds = -0.5 }),
            ("NaN train loss in a record", "epoch 0's record", { $0.history = recorded { $0.trainLoss = .nan } }),
            ("infinite test loss", "epoch 0's record", { $0.history = recorded { $0.testLoss = .infinity } }),
            ("NaN test error in a record", "epoch 0's record", { $0.history = recorded { $0.testError = .nan } }),
            ("train error above 1", "epoch 0's record", { $0.history = recorded { $0.trainError = 1.5 } }),
            ("NaN learning rate", "epoch 0's record", { $0.history = recorded { $0.learningRate = .nan } }),
            ("negative seconds in a record", "epoch 0's record", { $0.history = recorded { $0.seconds = -1 } }),
            ("NaN images/s", "epoch 0's record", { $0.history = recorded { $0.imagesPerSecond = .nan } }),
            ("negative skipped updates", "epoch 0's record", { $0.history = recorded { $0.skippedUpdates = -2 } }),
        ]
        for (what, expected, change) in edits {
            var state = saved
            change(&state)
            var edited = metadata
            edited["state"] = String(decoding: try encoder.encode(state), as: UTF8.self)
            try SafeTensors.write(velocities, metadata: edited, to: stateURL)
            let resumed = try trainer(output: nil)
            XCTAssertThrowsError(try resumed.resume(from: directory), what) { error in
                guard case .unreadableMetadata(let path, let field, let reason)? = error as? CheckpointError else {
                    return XCTFail("\(what): \(error)")
                }
                XCTAssertEqual(path, stateURL.path, what)
                XCTAssertEqual(field, "state", what)
                XCTAssertTrue(reason.contains(expected), "\(what): \(reason)")
            }
            XCTAssertEqual(resumed.step, 0, what)
            XCTAssertEqual(resumed.history, [], what)
        }

        // The state as saved still resumes, and the run ends with one record per epoch.
        try SafeTensors.write(velocities, metadata: metadata, to: stateURL)
        let resumed = try trainer(output: nil)
        try resumed.resume(from: directory)
        XCTAssertEqual(resumed.step, 5)
        let summary = try resumed.run()
        XCTAssertEqual(summary.epochs.map(\.epoch), [0, 1])
        XCTAssertEqual(summary.epochs.map(\.step), [4, 8])
    }
}
