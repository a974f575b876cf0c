import Foundation
import NormKitTraining
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// A finished or interrupted run is never overwritten, mixed with another, or corrupted by a second writer.
final class WorkNeverLostTests: XCTestCase {
    func testTrainRefusesADirectoryHoldingAnotherRunAndOverwriteReplacesIt() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("overwrite")
        let run = try copyDirectory(fixture.baseRun, to: scratch, name: "run")
        let before = snapshot(of: run)
        let other = fixture.baseArguments + ["--lr", "0.05", "--out", run.path]

        let refused = try CLI.run(other, in: scratch)
        assertRefused(
            refused, mentioning: [run.path, "already holds a run", "--overwrite"],
            "train --out DIR holding a finished run")
        XCTAssertEqual(snapshot(of: run), before, "a refused train must leave every file of the run byte-identical")

        let replaced = try CLI.run(other + ["--overwrite"], in: scratch)
        assertExit(replaced, 0, "train --overwrite")
        let summary = try XCTUnwrap(try summaryJSON(in: run))
        XCTAssertEqual(summary["finished"] as? Bool, true)
        let configuration = try XCTUnwrap(summary["configuration"] as? [String: Any])
        XCTAssertEqual(configuration["learningRate"] as? Double, 0.05, "--overwrite should have replaced the run")
    }

    func testDefaultRunDirectoriesDifferForRunsThatDiffer() throws {
        let fixture = try CLIFixture.shared()
        let cwd = try fixture.scratch("default-out")
        // The third names its data relative to the working directory.
        let relativeOtherData = "../\(fixture.otherData.lastPathComponent)"
        XCTAssertEqual(
            cwd.deletingLastPathComponent().standardizedFileURL.path,
            fixture.otherData.deletingLastPathComponent().standardizedFileURL.path)
        let commands = [
            fixture.baseArguments,
            fixture.baseArguments + ["--lr", "0.05"],
            CLIFixture.quickTraining(dataPath: relativeOtherData),
        ]
        for arguments in commands {
            assertExit(try CLI.run(arguments, in: cwd), 0, arguments.joined(separator: " "))
        }
        let runs = cwd.appendingPathComponent("runs")
        let names = try FileManager.default.contentsOfDirectory(atPath: runs.path).sorted()
        XCTAssertEqual(
            names.count, commands.count,
            "runs differing in --lr or --data get their own default directory: \(names)")
        for name in names {
            XCTAssertTrue(isFinished(runs.appendingPathComponent(name)), "\(name) should hold a finished run")
        }

        // The run on relative data evaluates from another working directory without --data: its checkpoint
        // records the data directory as an absolute path.
        for name in names {
            let run = runs.appendingPathComponent(name)
            // (Two levels below the training's working directory: "../fmnist-other" would not resolve here.)
            let eval = try CLI.run(["eval", "--checkpoint", run.path, "--threads", "1"], in: run)
            assertExit(eval, 0, "eval of \(name) from another directory, without --data")
            let finalError = try XCTUnwrap(try summaryJSON(in: run)?["finalTestError"] as? Double)
            XCTAssertTrue(
                eval.stdout.contains(String(format: "test error %.2f%% on 16 images", 100 * finalError)),
                eval.summary)
        }
    }

    /// Arguments of a run long enough to be interrupted: 24 small steps (batch 4 of 16 images, 6 epochs), a
    /// checkpoint after each.
    private func longRun(_ fixture: CLIFixture, out: URL) -> [String] {
        [
            "train", "--data", fixture.data.path, "--threads", "1", "--epochs", "6", "--batch", "4",
            "--train-limit", "16", "--checkpoint-every", "1", "--out", out.path,
        ]
    }

    /// Starts `arguments`, waits for the first checkpoint, sends `signal` and returns the result.
    private func interrupt(_ arguments: [String], out: URL, with signal: Int32, in cwd: URL) throws -> CLIResult {
        let process = try CLI.Running(arguments, in: cwd)
        let model = out.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let appeared = CLI.waitUntil(timeout: 30) {
            FileManager.default.fileExists(atPath: model.path) || !process.process.isRunning
        }
        XCTAssertTrue(
            appeared && process.process.isRunning,
            "the run should be writing checkpoints when it is signalled\n\(process.stdoutSoFar)")
        if process.process.isRunning { process.send(signal) }
        return process.wait()
    }

    func testSIGTERMSavesACheckpointThatIsProtectedAndResumable() throws {
        let fixture = try CLIFixture.shared()
        let cwd = try fixture.scratch("sigterm")
        let out = cwd.appendingPathComponent("run")
        let arguments = longRun(fixture, out: out)
        let stopped = try interrupt(arguments, out: out, with: SIGTERM, in: cwd)
        assertExit(stopped, 143, "train stopped by SIGTERM")
        XCTAssertTrue(stopped.stdout.contains("--resume"), "it should say how to continue\n\(stopped.summary)")
        let model = out.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let checkpoint = try TrainingCheckpoint.read(at: model)
        XCTAssertGreaterThan(checkpoint.step, 0)
        XCTAssertEqual(
            checkpoint.data?.source.map { URL(fileURLWithPath: $0.directory).lastPathComponent },
            fixture.data.lastPathComponent, "the checkpoint records the data it was trained on")
        XCTAssertFalse(isFinished(out))

        let before = snapshot(of: out)
        let again = try CLI.run(arguments, in: cwd)
        assertRefused(
            again, mentioning: [out.path, "interrupted at step \(checkpoint.step)", "--resume"],
            "the same command again without --resume")
        XCTAssertEqual(snapshot(of: out), before, "a refused train must leave the checkpoint untouched")

        let otherData = try CLI.run(
            [
                "train", "--resume", out.path, "--threads", "1",
                "--data", fixture.otherData.path,
            ], in: cwd)
        assertRefused(
            otherData, mentioning: [fixture.data.lastPathComponent, fixture.otherData.lastPathComponent],
            "train --resume DIR --data OTHER")
        XCTAssertEqual(snapshot(of: out), before, "a refused resume must leave the checkpoint untouched")

        let resumed = try CLI.run(["train", "--resume", out.path, "--threads", "1"], in: cwd)
        assertExit(resumed, 0, "train --resume after SIGTERM (no --data: the recorded data directory)")
        XCTAssertTrue(resumed.stdout.contains("resuming \(out.path) at step \(checkpoint.step)"), resumed.summary)
        XCTAssertTrue(isFinished(out))
        let summary = try XCTUnwrap(try summaryJSON(in: out))
        let data = try XCTUnwrap(summary["data"] as? [String: Any], "summary.json records its data")
        let source = try XCTUnwrap(data["source"] as? [String: Any])
        XCTAssertEqual(
            (source["directory"] as? String).map { URL(fileURLWithPath: $0).lastPathComponent },
            fixture.data.lastPathComponent, "the resumed run should have continued on its own data")
    }

    func testSIGINTSavesACheckpointAndResumeFinishes() throws {
        let fixture = try CLIFixture.shared()
        let cwd = try fixture.scratch("sigint")
        let out = cwd.appendingPathComponent("run")
        let stopped = try interrupt(longRun(fixture, out: out), out: out, with: SIGINT, in: cwd)
        assertExit(stopped, 130, "train stopped by SIGINT")
        let checkpoint = try TrainingCheckpoint.read(at: out.appendingPathComponent(TrainingCheckpoint.modelFileName))
        XCTAssertGreaterThan(checkpoint.step, 0)

        let before = snapshot(of: out)
        let again = try CLI.run(longRun(fixture, out: out), in: cwd)
        assertRefused(again, mentioning: [out.path, "--resume"], "the same command again without --resume")
        XCTAssertEqual(snapshot(of: out), before, "a refused train must leave the checkpoint untouched")

        let resumed = try CLI.run(
            [
                "train", "--resume", out.path, "--threads", "1",
                "--data", fixture.data.path,
            ], in: cwd)
        assertExit(resumed, 0, "train --resume after SIGINT")
        XCTAssertTrue(isFinished(out))
    }

    /// `--threads 2` trains GN as two in-process replicas: Ctrl-C stops both with one checkpoint, and the resumed
    /// run ends with the tensors of an uninterrupted one.
    func testSIGINTStopsReplicasTogetherAndResumeEndsWhereAnUninterruptedRunDoes() throws {
        let fixture = try CLIFixture.shared()
        let cwd = try fixture.scratch("sigint-replicas")
        let out = cwd.appendingPathComponent("run"), full = cwd.appendingPathComponent("full")
        func arguments(_ out: URL) -> [String] {
            var arguments = longRun(fixture, out: out)
            arguments[arguments.firstIndex(of: "--threads")! + 1] = "2"
            return arguments
        }
        let uninterrupted = try CLI.run(arguments(full), in: cwd)
        assertExit(uninterrupted, 0, "the uninterrupted replica run")
        XCTAssertTrue(
            uninterrupted.stdout.contains("2 in-process replicas"),
            "GN on 2 threads trains replicas\n\(uninterrupted.summary)")
        let stopped = try interrupt(arguments(out), out: out, with: SIGINT, in: cwd)
        assertExit(stopped, 130, "replicas stopped by SIGINT")
        let checkpoint = try TrainingCheckpoint.read(at: out.appendingPathComponent(TrainingCheckpoint.modelFileName))
        XCTAssertGreaterThan(checkpoint.step, 0)
        let resumed = try CLI.run(["train", "--resume", out.path, "--threads", "2"], in: cwd)
        assertExit(resumed, 0, "train --resume of the replicas")
        XCTAssertTrue(isFinished(out))
        let model = TrainingCheckpoint.modelFileName
        let a = try SafeTensors.read(from: out.appendingPathComponent(model)).tensors
        let b = try SafeTensors.read(from: full.appendingPathComponent(model)).tensors
        XCTAssertFalse(a.isEmpty)
        XCTAssertEqual(a, b, "the resumed replicas' final tensors differ from the uninterrupted run's")
    }

    func testASecondTrainingOfTheSameDirectoryIsRefusedWhileTheFirstRuns() throws {
        let fixture = try CLIFixture.shared()
        let cwd = try fixture.scratch("concurrent")
        let out = cwd.appendingPathComponent("run")
        let arguments = longRun(fixture, out: out)
        let first = try CLI.Running(arguments, in: cwd)
        let model = out.appendingPathComponent(TrainingCheckpoint.modelFileName)
        XCTAssertTrue(
            CLI.waitUntil(timeout: 30) {
                FileManager.default.fileExists(atPath: model.path) || !first.process.isRunning
            })
        XCTAssertTrue(first.process.isRunning, "the first run should still be training\n\(first.stdoutSoFar)")

        let second = try CLI.run(arguments, in: cwd)
        assertRefused(
            second, mentioning: ["in use by another normkit process", "pid \(first.pid)"],
            "a second train --out of a directory being written")
        let secondResume = try CLI.run(["train", "--resume", out.path, "--threads", "1"], in: cwd)
        assertRefused(
            secondResume, mentioning: ["in use by another normkit process"],
            "a second train --resume of a directory being written")
        XCTAssertTrue(
            first.process.isRunning, "the refused commands must not have stopped the first\n\(first.stdoutSoFar)")

        first.send(SIGTERM)
        assertExit(first.wait(), 143, "the first run, stopped by SIGTERM")
        let checkpoint = try TrainingCheckpoint.read(at: model)
        let state = out.appendingPathComponent("training-state-\(checkpoint.step).safetensors")
        XCTAssertTrue(FileManager.default.fileExists(atPath: state.path), "the first run's training state survives")
        let resumed = try CLI.run(["train", "--resume", out.path, "--threads", "1"], in: cwd)
        assertExit(resumed, 0, "resume of the first run")
        XCTAssertTrue(isFinished(out))
    }

    func testReportRefusesADirectoryThatIsNotASweep() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("report")
        let directory = try copyDirectory(fixture.baseRun, to: scratch, name: "not-a-sweep")
        let results = directory.appendingPathComponent("results.md")
        let text = Data("# my own notes, not a sweep report\n".utf8)
        try text.write(to: results)
        let before = snapshot(of: directory)

        let result = try CLI.run(["report", directory.path], in: scratch)
        assertRefused(result, mentioning: [directory.path, "not a sweep directory"], "report of a run directory")
        XCTAssertEqual(try Data(contentsOf: results), text, "results.md must be unchanged")
        XCTAssertEqual(snapshot(of: directory), before, "report must write nothing into a directory it refuses")
    }
}
