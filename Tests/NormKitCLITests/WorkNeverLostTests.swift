import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

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
        // Long enough to outlast the two refused commands below on a loaded machine (6 epochs did not always).
        var arguments = longRun(fixture, out: out)
        arguments[arguments.firstIndex(of: "--epochs")! + 1] = "40"
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

    /// `export --fold --overwrite` never replaces a named pipe or a directory, itself or behind a symbolic link
    /// (the audit's `--out /dev/null` replaced a device node with a regular file): refused before the
    /// checkpoint is read, the pipe still a pipe. Onto a symbolic link it writes the file the link points to
    /// (which `--overwrite` must allow if it exists), and the link stays a link.
    func testExportNeverReplacesANamedPipeAndWritesThroughASymbolicLink() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("export-destinations")
        let bnRun = scratch.appendingPathComponent("bn-run")
        assertExit(
            try CLI.run(
                CLIFixture.quickTraining(data: fixture.data) + ["--norm", "bn", "--out", bnRun.path], in: scratch),
            0, "train a BN run to export")
        func export(_ out: URL, overwrite: Bool = true) throws -> CLIResult {
            try CLI.run(
                ["export", "--fold", "--checkpoint", bnRun.path, "--out", out.path]
                    + (overwrite ? ["--overwrite"] : []),
                in: scratch, timeout: 60)
        }

        let pipe = scratch.appendingPathComponent("pipe.safetensors")
        try makeNamedPipe(at: pipe)
        let linkToPipe = scratch.appendingPathComponent("to-pipe.safetensors")
        try FileManager.default.createSymbolicLink(atPath: linkToPipe.path, withDestinationPath: "pipe.safetensors")
        let directory = scratch.appendingPathComponent("a-directory.safetensors")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: false)
        for (out, words) in [
            (pipe, ["is a named pipe", "nothing was written"]),
            (linkToPipe, ["symbolic link to \(pipe.path)", "is a named pipe"]),
            (directory, ["is a directory"]),
        ] {
            let result = try export(out)
            assertRefused(result, mentioning: [out.path] + words, "export --overwrite --out \(out.lastPathComponent)")
            XCTAssertFalse(result.stdout.contains("wrote"), result.summary)
        }
        XCTAssertEqual(fileType(at: pipe), "fifo", "the pipe must stay a pipe")
        XCTAssertEqual(fileType(at: linkToPipe), "link")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), [])
        XCTAssertEqual(temporaryFiles(in: scratch), [])

        // A link to a file in another directory: refused without --overwrite (the file exists), written
        // through with it.
        let elsewhere = scratch.appendingPathComponent("elsewhere")
        try FileManager.default.createDirectory(at: elsewhere, withIntermediateDirectories: false)
        let target = elsewhere.appendingPathComponent("folded.safetensors")
        let old = Data("an older export".utf8)
        try old.write(to: target)
        let link = scratch.appendingPathComponent("folded.safetensors")
        try FileManager.default.createSymbolicLink(
            atPath: link.path, withDestinationPath: "elsewhere/folded.safetensors")
        assertRefused(
            try export(link, overwrite: false), mentioning: [link.path, "--overwrite"],
            "export onto a link, no --overwrite")
        XCTAssertEqual(try Data(contentsOf: target), old)
        assertExit(try export(link), 0, "export --overwrite onto a symbolic link")
        XCTAssertEqual(fileType(at: link), "link", "the link must stay a link")
        XCTAssertEqual(
            try FileManager.default.destinationOfSymbolicLink(atPath: link.path), "elsewhere/folded.safetensors")
        XCTAssertEqual(fileType(at: target), "file")
        XCTAssertEqual(try FoldedExport.read(at: target).metadata["format"], FoldedExport.format)
        XCTAssertEqual(temporaryFiles(in: scratch), [])
        XCTAssertEqual(temporaryFiles(in: elsewhere), [])
    }

    /// `train --resume` of a run whose model and metrics files are symbolic links to files kept elsewhere writes
    /// through the links and leaves them links (it used to replace each link with a regular file); a run file
    /// that is a named pipe is refused before any step, naming it, with the pipe and the checkpoint untouched
    /// (it used to be replaced at the end of the first epoch).
    func testResumeWritesThroughSymbolicLinksAndRefusesANamedPipe() throws {
        let fixture = try CLIFixture.shared()
        let cwd = try fixture.scratch("resume-destinations")
        let out = cwd.appendingPathComponent("run")
        let metrics = out.appendingPathComponent("metrics.jsonl")
        let model = out.appendingPathComponent(TrainingCheckpoint.modelFileName)
        // Interrupted after its first epoch (4 of 24 steps), so that it has a metrics file.
        let process = try CLI.Running(longRun(fixture, out: out), in: cwd)
        XCTAssertTrue(
            CLI.waitUntil(timeout: 60) {
                FileManager.default.fileExists(atPath: metrics.path) || !process.process.isRunning
            })
        XCTAssertTrue(process.process.isRunning, "the run should still be training\n\(process.stdoutSoFar)")
        if process.process.isRunning { process.send(SIGTERM) }
        assertExit(process.wait(), 143, "the run stopped by SIGTERM")
        let piped = try copyDirectory(out, to: cwd, name: "piped")

        let elsewhere = cwd.appendingPathComponent("elsewhere")
        try FileManager.default.createDirectory(at: elsewhere, withIntermediateDirectories: false)
        for (file, name) in [(model, "model.safetensors"), (metrics, "metrics.jsonl")] {
            try FileManager.default.moveItem(at: file, to: elsewhere.appendingPathComponent(name))
            try FileManager.default.createSymbolicLink(atPath: file.path, withDestinationPath: "../elsewhere/\(name)")
        }
        let resumed = try CLI.run(["train", "--resume", out.path, "--threads", "1"], in: cwd)
        assertExit(resumed, 0, "train --resume of a run whose files are symbolic links")
        XCTAssertTrue(isFinished(out))
        XCTAssertEqual(fileType(at: model), "link", "the model file's link must stay a link")
        XCTAssertEqual(fileType(at: metrics), "link", "the metrics file's link must stay a link")
        XCTAssertEqual(
            try TrainingCheckpoint.read(at: elsewhere.appendingPathComponent("model.safetensors")).step, 24,
            "the final checkpoint went to the link's target")
        let lines = try String(contentsOf: elsewhere.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        XCTAssertEqual(lines.split(separator: "\n").count, 6, "one line per epoch in the link's target")
        XCTAssertEqual(temporaryFiles(in: out), [])
        XCTAssertEqual(temporaryFiles(in: elsewhere), [])

        let pipe = piped.appendingPathComponent("metrics.jsonl")
        try FileManager.default.removeItem(at: pipe)
        try makeNamedPipe(at: pipe)
        let pipedModel = piped.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let before = try Data(contentsOf: pipedModel)
        let refused = try CLI.run(["train", "--resume", piped.path, "--threads", "1"], in: cwd, timeout: 60)
        assertRefused(refused, mentioning: [pipe.path, "is a named pipe"], "train --resume of a run with a pipe")
        XCTAssertFalse(refused.stdout.contains("epoch "), "refused before any step\n\(refused.summary)")
        XCTAssertEqual(fileType(at: pipe), "fifo", "the pipe must stay a pipe")
        XCTAssertEqual(try Data(contentsOf: pipedModel), before, "the checkpoint must be untouched")
    }

    /// `bench --json FILE` refuses an existing FILE unless `--overwrite` is given, and a path it cannot write,
    /// before any timing: it used to replace the file silently, and to fail on a bad path only after the whole
    /// benchmark.
    func testBenchJSONRefusesAnExistingFileWithoutOverwriteAndABadPathBeforeTiming() throws {
        let scratch = try CLIFixture.shared().scratch("bench-json")
        let quick = [
            "bench", "--threads", "1", "--shapes", "2x8x4x4", "--layout", "channelsFirst", "--repetitions", "1",
        ]
        let existing = scratch.appendingPathComponent("results.json")
        let notes = Data("my own results, not to be lost\n".utf8)
        try notes.write(to: existing)
        for (path, words) in [
            (existing, ["already exists", "--overwrite"]),
            (scratch.appendingPathComponent("missing/rows.json"), ["does not exist"]),
            (scratch, ["is a directory"]),
        ] {
            let result = try CLI.run(quick + ["--json", path.path], in: scratch)
            assertRefused(result, mentioning: [path.path] + words, "bench --json \(path.path)")
            XCTAssertFalse(result.stdout.contains("normkit bench:"), "refused before any timing\n\(result.summary)")
        }
        XCTAssertEqual(try Data(contentsOf: existing), notes, "the refused bench must leave the file as it was")
        assertRefused(
            try CLI.run(["bench", "--overwrite"], in: scratch), code: 64, mentioning: ["--overwrite", "--json"],
            "bench --overwrite without --json")

        assertExit(try CLI.run(quick + ["--json", existing.path, "--overwrite"], in: scratch), 0, "bench --overwrite")
        let rows = try JSONSerialization.jsonObject(with: Data(contentsOf: existing)) as? [[String: Any]]
        XCTAssertFalse(rows?.isEmpty ?? true, "--overwrite replaced the file with the rows")
        let fresh = scratch.appendingPathComponent("fresh.json")
        assertExit(try CLI.run(quick + ["--json", fresh.path], in: scratch), 0, "bench --json of a new file")
        XCTAssertEqual(fileType(at: fresh), "file")
        XCTAssertEqual(temporaryFiles(in: scratch), [])
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
