import Foundation
import NormKitTraining
import XCTest

/// Settings and data that used to be accepted and give a silently wrong run are refused, and `eval` and
/// `train --resume` use the data a run was trained on.
final class SilentlyWrongTests: XCTestCase {
    /// `train` with `extra` on the main data into a fresh directory.
    private func train(_ extra: [String], name: String) throws -> CLIResult {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch(name)
        return try CLI.run(fixture.baseArguments + extra + ["--out", out.appendingPathComponent("run").path], in: out)
    }

    func testSettingsThatDoNothingForTheNormalizationAreRefused() throws {
        for norm in ["gn", "ln", "in"] {
            assertRefused(
                try train(["--norm", norm, "--norm-batch", "4"], name: "nb-\(norm)"), code: 64,
                mentioning: ["--norm-batch"], "--norm \(norm) --norm-batch 4")
        }
        assertRefused(
            try train(["--norm", "bn", "--groups", "4"], name: "bn-groups"), code: 64,
            mentioning: ["--groups"], "--norm bn --groups 4")
        assertRefused(
            try train(["--norm", "bn", "--group-size", "2"], name: "bn-group-size"), code: 64,
            mentioning: ["--group-size"], "--norm bn --group-size 2")
    }

    func testOutOfRangeOptimizerSettingsAreRefused() throws {
        let cases: [(arguments: [String], flag: String)] = [
            (["--weight-decay=-1"], "--weight-decay"),
            (["--momentum", "1"], "--momentum"),
            (["--momentum=-0.1"], "--momentum"),
            (["--lr", "nan"], "--lr"),
            (["--lr", "inf"], "--lr"),
        ]
        for (arguments, flag) in cases {
            assertRefused(
                try train(arguments, name: "range"), code: 64, mentioning: [flag],
                "train \(arguments.joined(separator: " "))")
        }
    }

    func testConstantTrainingImagesAreRefused() throws {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch("constant")
        let result = try CLI.run(
            CLIFixture.quickTraining(data: fixture.constantData)
                + ["--out", out.appendingPathComponent("run").path], in: out)
        assertRefused(result, mentioning: ["constant", "fmnist-constant"], "training on images that are all one value")
        XCTAssertFalse(isFinished(out.appendingPathComponent("run")))
    }

    func testEvalUsesTheRecordedDataAndSaysWhenGivenOtherData() throws {
        let fixture = try CLIFixture.shared()
        let summary = try XCTUnwrap(try summaryJSON(in: fixture.baseRun))
        let finalError = try XCTUnwrap(summary["finalTestError"] as? Double)
        let expected = String(format: "test error %.2f%% on 16 images", 100 * finalError)

        let recorded = try CLI.run(["eval", "--checkpoint", fixture.baseRun.path, "--threads", "1"], in: fixture.root)
        assertExit(recorded, 0, "eval without --data")
        XCTAssertTrue(
            recorded.stdout.contains(expected),
            "eval without --data should evaluate on the training run's data: '\(expected)'\n\(recorded.summary)")
        XCTAssertFalse(recorded.stdout.contains("note:"), recorded.summary)

        let same = try CLI.run(
            [
                "eval", "--checkpoint", fixture.baseRun.path, "--threads", "1",
                "--data", fixture.data.path,
            ], in: fixture.root)
        assertExit(same, 0, "eval --data (the training data)")
        XCTAssertTrue(same.stdout.contains(expected), same.summary)
        XCTAssertFalse(same.stdout.contains("note:"), same.summary)

        let other = try CLI.run(
            [
                "eval", "--checkpoint", fixture.baseRun.path, "--threads", "1",
                "--data", fixture.otherData.path,
            ], in: fixture.root)
        assertExit(other, 0, "eval --data OTHER")
        XCTAssertTrue(
            other.stdout.contains("not the data the model was trained on"),
            "eval on other data should say so\n\(other.summary)")
        XCTAssertTrue(other.stdout.contains(fixture.otherData.lastPathComponent), other.summary)
    }

    func testEvalOfACheckpointWithoutADataRecordRecomputesTheStatistics() throws {
        let fixture = try CLIFixture.shared()
        let finalError = try XCTUnwrap(try summaryJSON(in: fixture.baseRun)?["finalTestError"] as? Double)
        let (tensors, metadata) = try SafeTensors.read(
            from: fixture.baseRun.appendingPathComponent(TrainingCheckpoint.modelFileName))
        XCTAssertNotNil(metadata["data"], "a new checkpoint records its data")
        var older = metadata
        older["data"] = nil
        let url = try fixture.scratch("no-data-record").appendingPathComponent("model.safetensors")
        try SafeTensors.write(tensors, metadata: older, to: url)

        let result = try CLI.run(
            ["eval", "--checkpoint", url.path, "--threads", "1", "--data", fixture.data.path],
            in: fixture.root)
        assertExit(result, 0, "eval of a checkpoint written before data records")
        XCTAssertTrue(result.stdout.contains("does not record its pixel statistics"), result.summary)
        XCTAssertTrue(
            result.stdout.contains(String(format: "test error %.2f%% on 16 images", 100 * finalError)),
            result.summary)
    }

    func testResumeRefusesOtherDataAndFlagsThatChangeTheRun() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("resume-refusals")
        // A finished copy of the base run: both refusals come before any training step (the interrupted case
        // of --data OTHER is in WorkNeverLostTests.testSIGTERMSavesACheckpointThatIsProtectedAndResumable).
        let run = try copyDirectory(fixture.baseRun, to: scratch, name: "run")
        let before = snapshot(of: run)

        let otherData = try CLI.run(
            [
                "train", "--resume", run.path, "--threads", "1",
                "--data", fixture.otherData.path,
            ], in: scratch)
        assertRefused(
            otherData, mentioning: [fixture.data.lastPathComponent, fixture.otherData.lastPathComponent],
            "train --resume DIR --data OTHER")
        XCTAssertEqual(snapshot(of: run), before)

        let otherRate = try CLI.run(["train", "--resume", run.path, "--threads", "1", "--lr", "0.5"], in: scratch)
        assertRefused(otherRate, code: 64, mentioning: ["--resume", "learningRate"], "train --resume DIR --lr 0.5")
        XCTAssertEqual(snapshot(of: run), before)
    }

    /// KNOWN BUG at 599a558 (left failing on purpose): `TrainCommand.validate()` copies the data options into the
    /// defaults it compares a resumed run's flags with, so `--train-limit` and `--test-limit` never count as a
    /// change: `train --resume DIR --train-limit 8` exits 0 and silently trains on the recorded limit.
    func testResumeRefusesADifferentTrainOrTestLimit() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("resume-limits")
        let run = try copyDirectory(fixture.baseRun, to: scratch, name: "run")
        let before = snapshot(of: run)
        for (flag, field) in [("--train-limit", "trainLimit"), ("--test-limit", "testLimit")] {
            let result = try CLI.run(["train", "--resume", run.path, "--threads", "1", flag, "8"], in: scratch)
            assertRefused(result, code: 64, mentioning: ["--resume", field], "train --resume DIR \(flag) 8")
            XCTAssertEqual(snapshot(of: run), before, "train --resume DIR \(flag) 8 must not touch the run")
        }
    }

    /// `train` with `extra` on the main data diverges: a clear error, no finished summary, no NaN in JSON, and
    /// any checkpoint on disk holds only finite weights of bounded size.
    private func assertDiverges(_ extra: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch("diverge").appendingPathComponent("run")
        let what = "train " + extra.joined(separator: " ")
        let result = try CLI.run(
            fixture.baseArguments + extra + ["--out", out.path],
            in: out.deletingLastPathComponent())
        assertRefused(result, mentioning: ["training diverged at step"], what, file: file, line: line)
        for phrase in ["encode", "Float.nan", "Double.nan", "invalidValue", "JSON"] {
            XCTAssertFalse(
                result.stderr.contains(phrase), "\(what): NaN reached a JSON encoder\n\(result.summary)",
                file: file, line: line)
        }
        XCTAssertFalse(
            isFinished(out), "\(what): a diverged run must not be recorded as finished", file: file, line: line)
        let model = out.appendingPathComponent(TrainingCheckpoint.modelFileName)
        guard FileManager.default.fileExists(atPath: model.path) else { return }
        let (tensors, _) = try SafeTensors.read(from: model)
        for (name, tensor) in tensors {
            guard case .float32(_, let values) = tensor else { continue }
            XCTAssertTrue(
                values.allSatisfy(\.isFinite), "\(what): \(name) was saved with a non-finite value",
                file: file, line: line)
            if name.hasSuffix("weight") || name.hasSuffix("bias") {
                XCTAssertLessThanOrEqual(
                    values.map(abs).max() ?? 0, 1e4, "\(what): \(name) was saved with a huge value",
                    file: file, line: line)
            }
        }
    }

    func testDivergenceStopsTheRunWithoutWritingItAsFinished() throws {
        try assertDiverges(["--lr", "1000", "--epochs", "3", "--checkpoint-every", "1"])
    }

    func testADivergingRunNeverSavesNonFiniteOrHugeWeights() throws {
        try assertDiverges(["--lr", "1e6", "--epochs", "3", "--checkpoint-every", "1"])
    }
}
