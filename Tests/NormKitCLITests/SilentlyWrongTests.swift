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

    /// The flags to drop from `train --resume` are named as typed (`--lr`), not only by the recorded field
    /// (`learningRate`).
    func testResumeNamesTheFlagsToDrop() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("resume-flag-names")
        let run = try copyDirectory(fixture.baseRun, to: scratch, name: "run")
        let before = snapshot(of: run)
        let result = try CLI.run(
            ["train", "--resume", run.path, "--threads", "1", "--lr", "0.5", "--no-augment", "--seed", "3"],
            in: scratch)
        assertRefused(
            result, code: 64,
            mentioning: ["--resume", "--lr (learningRate)", "--no-augment (augment)", "--seed (seed)"],
            "train --resume DIR --lr 0.5 --no-augment --seed 3")
        XCTAssertEqual(snapshot(of: run), before)
    }

    /// `--milestones` is where the step schedule divides the rate: with the cosine schedule it was accepted and
    /// ignored.
    func testMilestonesWithTheCosineScheduleAreRefused() throws {
        for extra in [["--milestones", "1"], ["--schedule", "cosine", "--milestones", "1"]] {
            assertRefused(
                try train(extra, name: "milestones-cosine"), code: 64,
                mentioning: ["--milestones 1", "--schedule cosine", "--schedule step"],
                "train \(extra.joined(separator: " "))")
        }
    }

    /// A BN run of the main data (for `normkit stats`, which measures BN layers).
    private func bnRun(_ name: String) throws -> URL {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch(name).appendingPathComponent("run")
        let result = try CLI.run(
            CLIFixture.quickTraining(data: fixture.data) + ["--norm", "bn", "--out", out.path],
            in: out.deletingLastPathComponent())
        assertExit(result, 0, "train --norm bn")
        return out
    }

    /// `normkit stats` with fewer batches than a size's moving-average window printed 0.0000 for the averages it
    /// never computed: they are "–", the output says why, and stats.json has no moving average for that size. An
    /// explicit --population above the training set's size is refused (it was cut to the size silently), and
    /// --train-limit and --test-limit, which stats never used, are not accepted.
    func testStatsSaysWhatItDidNotComputeAndTakesNoFlagItIgnores() throws {
        let run = try bnRun("stats-sma")
        let out = run.deletingLastPathComponent().appendingPathComponent("stats")
        let result = try CLI.run(
            [
                "stats", "--checkpoint", run.path, "--sizes", "1,16", "--batches", "2", "--threads", "1",
                "--out", out.path,
            ], in: run.deletingLastPathComponent())
        assertExit(result, 0, "stats --batches 2 --sizes 1,16")
        let rowB1 = try XCTUnwrap(result.stdout.split(separator: "\n").first { $0.hasPrefix("| 1 |") }, result.summary)
        XCTAssertTrue(rowB1.hasSuffix("| 32 | – | – | – | – |"), "B = 1: window 32, not computed\n\(result.summary)")
        let rowB16 = try XCTUnwrap(result.stdout.split(separator: "\n").first { $0.hasPrefix("| 16 |") })
        XCTAssertFalse(rowB16.contains("–"), "B = 16: window 2, computed from 2 batches\n\(result.summary)")
        XCTAssertTrue(result.stdout.contains("–: not computed"), result.summary)
        XCTAssertTrue(result.stdout.contains("B = 1 (window 32)"), result.summary)
        XCTAssertTrue(result.stdout.contains("32 population images"), result.summary)
        let json = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("stats.json")))
                as? [String: Any])
        let rows = try XCTUnwrap(json["rows"] as? [[String: Any]])
        XCTAssertFalse(rows.isEmpty)
        for row in rows {
            XCTAssertEqual(row["movingAverage"] == nil, (row["batch"] as? Int) == 1, "\(row)")
        }

        let population = try CLI.run(
            ["stats", "--checkpoint", run.path, "--population", "100000", "--batches", "2", "--threads", "1"],
            in: run.deletingLastPathComponent())
        assertRefused(population, mentioning: ["--population 100000", "only 32 images"], "stats --population 100000")

        for flag in ["--train-limit", "--test-limit"] {
            let limited = try CLI.run(
                ["stats", "--checkpoint", run.path, flag, "8", "--batches", "2", "--threads", "1"],
                in: run.deletingLastPathComponent())
            assertRefused(limited, code: 64, mentioning: [flag], "stats \(flag) 8")
        }
    }

    /// `normkit eval` printed 0.00% accuracy for classes with no test image (they have none: "–"), and accepted
    /// --train-limit, which it never used.
    func testEvalShowsNoAccuracyForClassesWithoutImagesAndRefusesTrainLimit() throws {
        let fixture = try CLIFixture.shared()
        let result = try CLI.run(
            ["eval", "--checkpoint", fixture.baseRun.path, "--threads", "1", "--test-limit", "5"], in: fixture.root)
        assertExit(result, 0, "eval --test-limit 5")
        // Labels cycle through 0…9: the first five test images are of classes 0…4.
        let lines = result.stdout.split(separator: "\n")
        XCTAssertEqual(lines.filter { $0.hasPrefix("|") && $0.hasSuffix("| – |") }.count, 5, result.summary)
        XCTAssertEqual(lines.filter { $0.hasPrefix("|") && $0.hasSuffix("% |") }.count, 5, result.summary)
        XCTAssertTrue(result.stdout.contains("no test image of these 5 classes"), result.summary)

        let limited = try CLI.run(
            ["eval", "--checkpoint", fixture.baseRun.path, "--threads", "1", "--train-limit", "8"], in: fixture.root)
        assertRefused(limited, code: 64, mentioning: ["--train-limit"], "eval --train-limit 8")
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
