import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// `mpirun -np R normkit train --distributed` against the single-process training it must equal (issue 11's
/// equivalence tests): after several SGD steps every tensor of the two checkpoints agrees within float rounding.
/// Skipped where Open MPI's `mpirun` is not installed (CI installs it).
final class DistributedTrainingTests: XCTestCase {
    static let mpirun = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// The mpirun options for one machine (as MPICommunicator.mpirunArguments(): root in a container, more ranks
    /// than cores, no pinning, shared memory).
    static var mpirunOptions: [String] {
        (geteuid() == 0 ? ["--allow-run-as-root"] : [])
            + ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader", "--timeout", "100"]
    }

    private var data: URL!
    private var root: URL!

    override func setUpWithError() throws {
        guard Self.mpirun != nil else { throw XCTSkip("mpirun not installed (apt-get install openmpi-bin)") }
        root = try makeTemporaryDirectory("normkit-mpi")
        data = root.appendingPathComponent("data")
        try SyntheticData.write(to: data, trainCount: 96, testCount: 24, seed: 5)
    }

    /// Runs `normkit` under `mpirun -np ranks` (or directly with `ranks` nil) and returns the run's checkpoint.
    /// With `output` nil, `arguments` name the run (`--resume DIR`), whose checkpoint is returned.
    private func train(
        ranks: Int?, _ arguments: [String], name: String, output: URL?? = .none,
        file: StaticString = #filePath, line: UInt = #line
    ) throws -> [String: StateTensor] {
        let resuming = arguments.first == "--resume"
        let out = resuming ? URL(fileURLWithPath: arguments[1]) : root.appendingPathComponent(name)
        let common =
            resuming
            ? ["train", "--threads", "1"]
            : ["train", "--threads", "1", "--test-limit", "24", "--out", out.path]
                + (arguments.contains("--epochs") ? [] : ["--epochs", "1"])
                + (arguments.contains("--data") ? [] : ["--data", data.path])
        let process = Process()
        let logs = root.appendingPathComponent("\(name).log")
        _ = FileManager.default.createFile(atPath: logs.path, contents: nil)
        if let ranks {
            process.executableURL = URL(fileURLWithPath: Self.mpirun!)
            process.arguments =
                ["-np", "\(ranks)"] + Self.mpirunOptions + [CLI.binary.path] + common
                + ["--distributed"] + arguments
        } else {
            process.executableURL = CLI.binary
            process.arguments = common + arguments
        }
        process.standardOutput = try FileHandle(forWritingTo: logs)
        process.standardError = process.standardOutput
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let log = (try? String(contentsOf: logs, encoding: .utf8)) ?? ""
        XCTAssertEqual(process.terminationStatus, 0, "\(name) failed:\n\(log)", file: file, line: line)
        return try SafeTensors.read(from: out.appendingPathComponent(TrainingCheckpoint.modelFileName)).tensors
    }

    /// The largest difference between same-named float tensors relative to the tensor's largest magnitude, or to
    /// 1/1000 of the model's largest when that is larger. The floor is for tensors that are cancellation residues:
    /// a bias whose gradient sums to almost nothing holds values near 1e-6 built from terms near 1e-3, so its
    /// rounding (about 1e-9 after three steps, seen for GN's `layer2.0.norm1.bias` on an AMD EPYC machine) is large
    /// against its own size and tiny against the terms it came from; a wrong value in such a tensor still shows
    /// (a difference of 1e-6 is 3e-3 relative against a model whose largest weight is 0.3).
    private func assertClose(
        _ a: [String: StateTensor], _ b: [String: StateTensor], tolerance: Double,
        _ label: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(Set(a.keys), Set(b.keys), label, file: file, line: line)
        func magnitude(_ values: [Float]) -> Double { values.map { Double(abs($0)) }.max() ?? 0 }
        let floor = 1e-3 * b.values.map { if case .float32(_, let y) = $0 { magnitude(y) } else { 0 } }.max()!
        var worst = (0.0, "")
        for (name, tensor) in a {
            guard case .float32(_, let x) = tensor, case .float32(_, let y)? = b[name] else { continue }
            let scale = max(magnitude(y), floor, 1e-6)
            let difference = zip(x, y).map { Double(abs($0 - $1)) }.max() ?? 0
            if difference / scale > worst.0 { worst = (difference / scale, name) }
        }
        print("\(label): worst relative difference \(worst.0) (\(worst.1))")
        XCTAssertLessThan(worst.0, tolerance, "\(label): \(worst.1)", file: file, line: line)
    }

    /// 2 ranks × 16 images with per-worker BN == one process with ghost batches of 16 in a batch of 32.
    func testPerWorkerBatchNormEqualsGhostBatches() throws {
        let ranks = try train(ranks: 2, ["--norm", "bn", "--batch", "32"], name: "bn-2ranks")
        let single = try train(ranks: nil, ["--norm", "bn", "--batch", "32", "--norm-batch", "16"], name: "bn-ghost")
        assertClose(ranks, single, tolerance: 1e-5, "per-worker BN, 2 ranks vs ghost batches")
    }

    /// Per-worker BRN: 2 ranks × 16 == ghost batches of 16 in one process (running mean and std averaged over
    /// ranks: BRN's ghost-batch update), with `r` and `d` active from the first steps (the schedule scaled to 6 steps).
    func testPerWorkerBatchRenormEqualsGhostBatches() throws {
        let common = ["--norm", "brn", "--batch", "32", "--epochs", "2", "--brn-momentum", "0.3"]
        let ranks = try train(ranks: 2, common, name: "brn-2ranks")
        let single = try train(ranks: nil, common + ["--norm-batch", "16"], name: "brn-ghost")
        assertClose(ranks, single, tolerance: 1e-5, "per-worker BRN, 2 ranks vs ghost batches")
    }

    /// 2 ranks × 16 with SyncBN == one process with BN over 32; and 3 ranks × 8 == BN over 24 (SyncBN's counts).
    func testSyncBatchNormEqualsBatchNormOverTheGlobalBatch() throws {
        let ranks = try train(ranks: 2, ["--norm", "syncbn", "--batch", "32"], name: "sync-2ranks")
        let single = try train(ranks: nil, ["--norm", "bn", "--batch", "32"], name: "bn-32")
        assertClose(ranks, single, tolerance: 1e-5, "SyncBN, 2 ranks vs BN over 32")
        // The checkpoint names the reference model that loads it: a BN ResNet.
        let (_, metadata) = try SafeTensors.read(
            from: root.appendingPathComponent("sync-2ranks").appendingPathComponent(TrainingCheckpoint.modelFileName))
        let torch = try JSONDecoder().decode([String: String].self, from: Data(metadata["torch_model_arguments"]!.utf8))
        XCTAssertEqual(torch["norm"], "bn")
        let three = try train(ranks: 3, ["--norm", "syncbn", "--batch", "24"], name: "sync-3ranks")
        let single24 = try train(ranks: nil, ["--norm", "bn", "--batch", "24"], name: "bn-24")
        assertClose(three, single24, tolerance: 1e-5, "SyncBN, 3 ranks vs BN over 24")
    }

    /// GN needs nothing across workers: 2 ranks × 16 == one process over 32. Evaluation is sharded (each rank 12 of
    /// the 24 test images, 3 ranks 8 each): the summary's test numbers are the whole test set's.
    func testGroupNormEqualsSingleProcess() throws {
        let ranks = try train(ranks: 2, ["--norm", "gn", "--batch", "32"], name: "gn-2ranks")
        let single = try train(ranks: nil, ["--norm", "gn", "--batch", "32"], name: "gn-32")
        assertClose(ranks, single, tolerance: 1e-5, "GN, 2 ranks vs one process")
        _ = try train(ranks: 3, ["--norm", "gn", "--batch", "24"], name: "gn-3ranks")
        _ = try train(ranks: nil, ["--norm", "gn", "--batch", "24"], name: "gn-24")
        for (distributed, alone) in [("gn-2ranks", "gn-32"), ("gn-3ranks", "gn-24")] {
            let a = try summary(distributed), b = try summary(alone)
            XCTAssertEqual(a.finalTestError, b.finalTestError, distributed)
            XCTAssertEqual(a.perClassAccuracy, b.perClassAccuracy, distributed)
            XCTAssertEqual(
                a.epochs.last!.testLoss, b.epochs.last!.testLoss, accuracy: 1e-5 * b.epochs.last!.testLoss,
                distributed)
        }
    }

    private func summary(_ name: String) throws -> RunSummary {
        try JSONDecoder().decode(
            RunSummary.self,
            from: Data(
                contentsOf: root.appendingPathComponent(name).appendingPathComponent("summary.json")))
    }

    /// MABN: 2 ranks × 16 == one process with ghost chunks of 16 (each rank's batch one more iteration of the same
    /// sequence, rank 0's first). No warm-up and the default buffer of 2, so the SMAs of both passes mix the ranks'
    /// statistics from the third iteration on; 2 epochs, 6 steps, 12 iterations.
    func testMABNEqualsGhostChunksInOneProcess() throws {
        let common = ["--norm", "mabn", "--batch", "32", "--epochs", "2", "--mabn-warmup", "0"]
        let ranks = try train(ranks: 2, common, name: "mabn-2ranks")
        let single = try train(ranks: nil, common + ["--norm-batch", "16"], name: "mabn-ghost")
        assertClose(ranks, single, tolerance: 1e-5, "MABN, 2 ranks vs ghost chunks")
        let recorded = try TrainingCheckpoint.read(
            at: root.appendingPathComponent("mabn-2ranks").appendingPathComponent(TrainingCheckpoint.modelFileName))
        XCTAssertEqual(recorded.configuration.normBatch, 16, "the per-worker normalization batch is recorded")
        XCTAssertEqual(recorded.configuration.mabnBufferSize, 2, "about 32 images: 32 / 16")
    }

    /// Ctrl-C under mpirun stops every rank at the same step with rank 0's checkpoint. Resumed on 2 ranks, the run
    /// ends with the weights of a 2-rank run never interrupted (resume is exact); resumed in one process (another
    /// number of ranks, the same global batch) it finishes too. (One process against two ranks is compared over 3
    /// steps above: over a hundred steps float rounding differences grow chaotically, as between 1 and 2 threads.)
    func testInterruptedRunResumesExactlyAndOnAnotherRankCount() throws {
        // 2,400 images in batches of 8: 300 steps, long enough to be interrupted after the first checkpoint (mpirun
        // forwards the signal after a second or so).
        let longData = root.appendingPathComponent("long-data")
        try SyntheticData.write(to: longData, trainCount: 2400, testCount: 24, seed: 6)
        let out = root.appendingPathComponent("interrupted")
        let arguments = ["--data", longData.path, "--batch", "8", "--norm", "syncbn"]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.mpirun!)
        process.arguments =
            ["-np", "2"] + Self.mpirunOptions + [
                CLI.binary.path, "train", "--distributed",
                "--threads", "1", "--epochs", "1", "--test-limit", "24", "--checkpoint-every", "1", "--out", out.path,
            ]
            + arguments
        let logs = root.appendingPathComponent("interrupted.log")
        _ = FileManager.default.createFile(atPath: logs.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: logs)
        process.standardError = process.standardOutput
        try process.run()
        let model = out.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let appeared = CLI.waitUntil(timeout: 60) {
            FileManager.default.fileExists(atPath: model.path) || !process.isRunning
        }
        let log = { (try? String(contentsOf: logs, encoding: .utf8)) ?? "" }
        XCTAssertTrue(appeared && process.isRunning, "the run should be checkpointing when interrupted:\n\(log())")
        if process.isRunning { kill(process.processIdentifier, SIGINT) }
        process.waitUntilExit()
        XCTAssertNotEqual(process.terminationStatus, 0, log())
        let stopped = try TrainingCheckpoint.read(at: model)
        XCTAssertTrue(log().contains("interrupted: checkpoint of step \(stopped.step)"), log())
        XCTAssertLessThan(stopped.step, 300, "stopped before the end")
        let alone = root.appendingPathComponent("interrupted-alone")
        try FileManager.default.copyItem(at: out, to: alone)

        let resumed = try train(ranks: 2, ["--resume", out.path], name: "resumed-2ranks", output: nil)
        let never = try train(ranks: 2, arguments, name: "never-stopped")
        assertClose(resumed, never, tolerance: 1e-6, "2 ranks interrupted at step \(stopped.step) and resumed")

        let single = try CLI.run(
            ["train", "--resume", alone.path, "--threads", "1", "--data", longData.path],
            in: root)
        XCTAssertEqual(single.status, 0, single.summary)
        XCTAssertEqual(
            try TrainingCheckpoint.read(at: alone.appendingPathComponent(TrainingCheckpoint.modelFileName))
                .step, 300, "resumed in one process, to the end")
    }

    /// `normkit sweep --ranks 2`: the BN cell below the SGD batch trains under `mpirun -np 2` (its summary says 2
    /// workers, its configuration is the ghost-batch cell's), the full-batch cell in one process; the same command
    /// again skips both, and the ranked cell's weights equal a ghost-batch run of the same configuration.
    func testSweepRanksAxisRunsCellsUnderMPIRun() throws {
        let sweep = root.appendingPathComponent("sweep-r2")
        let arguments = [
            "sweep", "--preset", "quick", "--ranks", "2", "--norms", "bn", "--threads", "2",
            "--data", data.path, "--train-limit", "96", "--test-limit", "24", "--out", sweep.path,
        ]
        let first = try CLI.run(arguments, in: root, timeout: 300)
        XCTAssertEqual(first.status, 0, first.summary)
        XCTAssertTrue(first.stdout.contains("mpirun -np 2"), first.stdout)
        let ranked = sweep.appendingPathComponent("bn-nb2-r2-s0")
        let summary = try JSONDecoder().decode(
            RunSummary.self, from: Data(contentsOf: ranked.appendingPathComponent("summary.json")))
        XCTAssertEqual(summary.workers, 2)
        XCTAssertEqual(summary.configuration.normBatch, 2)
        XCTAssertEqual(summary.configuration.batch, 32)
        let whole = try JSONDecoder().decode(
            RunSummary.self,
            from: Data(
                contentsOf:
                    sweep.appendingPathComponent("bn-nb32-s0").appendingPathComponent("summary.json")))
        XCTAssertNil(whole.workers, "the full-batch cell runs in one process")
        let report = try String(contentsOf: sweep.appendingPathComponent("results.md"), encoding: .utf8)
        XCTAssertTrue(report.contains("on R ≤ 2 mpirun ranks instead"), report)

        let again = try CLI.run(arguments, in: root, timeout: 300)
        XCTAssertEqual(again.status, 0, again.summary)
        XCTAssertTrue(again.stdout.contains("bn-nb2-r2-s0: finished earlier, skipped"), again.stdout)

        var ghost = summary.configuration
        ghost.threads = 1
        let single = try train(ranks: nil, ghost.trainArguments + ["--data", data.path], name: "ghost-of-sweep")
        let weights = try SafeTensors.read(from: ranked.appendingPathComponent(TrainingCheckpoint.modelFileName))
        assertClose(weights.tensors, single, tolerance: 1e-4, "sweep cell on 2 ranks vs ghost batches")
    }

    /// A rank killed mid-run (`SIGKILL`, as the OOM killer would) ends the job without a hang, and nothing but the
    /// steps after the last checkpoint is lost: rank 0's checkpoint is intact and the run resumes to its end.
    func testKilledRankEndsTheJobAndTheRunResumes() throws {
        let longData = root.appendingPathComponent("kill-data")
        try SyntheticData.write(to: longData, trainCount: 2400, testCount: 24, seed: 7)
        let out = root.appendingPathComponent("killed")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.mpirun!)
        process.arguments =
            ["-np", "2"] + Self.mpirunOptions + [
                CLI.binary.path, "train", "--distributed",
                "--threads", "1", "--epochs", "1", "--test-limit", "24", "--checkpoint-every", "1", "--batch", "8",
                "--norm", "syncbn", "--data", longData.path, "--out", out.path,
            ]
        let logs = root.appendingPathComponent("killed.log")
        _ = FileManager.default.createFile(atPath: logs.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: logs)
        process.standardError = process.standardOutput
        try process.run()
        let log = { (try? String(contentsOf: logs, encoding: .utf8)) ?? "" }
        let model = out.appendingPathComponent(TrainingCheckpoint.modelFileName)
        XCTAssertTrue(
            CLI.waitUntil(timeout: 60) { FileManager.default.fileExists(atPath: model.path) },
            "no checkpoint:\n\(log())")
        let rank1 = try XCTUnwrap(Self.rankProcess(1, writing: out.path), "rank 1 not found:\n\(log())")
        kill(rank1, SIGKILL)
        let ended = CLI.waitUntil(timeout: 60) { !process.isRunning }
        if !ended { process.terminate() }
        XCTAssertTrue(ended, "mpirun still running 60 s after a rank died:\n\(log())")
        process.waitUntilExit()
        XCTAssertNotEqual(process.terminationStatus, 0, log())
        XCTAssertTrue(log().contains("rank 1"), "mpirun names the rank that died:\n\(log())")
        XCTAssertTrue(
            log().contains("normkit-mpi: rank 0 of 2 got SIGTERM while in MPI_"),
            "rank 0 says where it was stopped:\n\(log())")
        let saved = try TrainingCheckpoint.read(at: model)
        XCTAssertGreaterThan(saved.step, 0)
        XCTAssertLessThan(saved.step, 300)
        let resumed = try train(ranks: 2, ["--resume", out.path], name: "killed-resumed", output: nil)
        XCTAssertFalse(resumed.isEmpty)
        XCTAssertEqual(try TrainingCheckpoint.read(at: model).step, 300, "resumed to the end")
    }

    /// The process id of `normkit` rank `rank` whose command line names `path` (from /proc).
    private static func rankProcess(_ rank: Int, writing path: String) -> pid_t? {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = pid_t(entry),
                let command = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                let environment = FileManager.default.contents(atPath: "/proc/\(pid)/environ")
            else { continue }
            let arguments = command.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            let variables = environment.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if arguments.first?.hasSuffix("normkit") == true, arguments.contains(path),
                variables.contains("OMPI_COMM_WORLD_RANK=\(rank)")
            {
                return pid
            }
        }
        return nil
    }

    /// Runs `normkit ARGUMENTS` under `mpirun -np ranks` and returns its exit status and output.
    private func mpirun(ranks: Int, _ arguments: [String], name: String) throws -> (status: Int32, log: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.mpirun!)
        process.arguments = ["-np", "\(ranks)"] + Self.mpirunOptions + [CLI.binary.path] + arguments
        let logs = root.appendingPathComponent("\(name).log")
        _ = FileManager.default.createFile(atPath: logs.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: logs)
        process.standardError = process.standardOutput
        try process.run()
        process.waitUntilExit()
        return (process.terminationStatus, (try? String(contentsOf: logs, encoding: .utf8)) ?? "")
    }

    /// A batch that does not split evenly is refused with the reason, on every rank, before any step.
    func testUnevenSplitIsRefused() throws {
        let (status, log) = try mpirun(
            ranks: 3,
            [
                "train", "--distributed", "--data", data.path, "--threads", "1",
                "--batch", "32", "--out", root.appendingPathComponent("uneven").path,
            ], name: "uneven")
        XCTAssertNotEqual(status, 0, log)
        XCTAssertTrue(log.contains("does not split into 3 equal per-worker batches"), log)
    }

    /// A per-worker normalization batch that does not divide the per-worker batch is refused with the remedy.
    func testNormalizationBatchLargerThanPerWorkerBatchIsRefused() throws {
        let (status, log) = try mpirun(
            ranks: 2,
            [
                "train", "--distributed", "--data", data.path, "--threads", "1",
                "--batch", "32", "--norm", "bn", "--norm-batch", "32",
                "--out", root.appendingPathComponent("too-large").path,
            ], name: "too-large")
        XCTAssertNotEqual(status, 0, log)
        XCTAssertTrue(log.contains("normalization batch 32 must divide 16"), log)
        XCTAssertTrue(log.contains("--norm-batch 16"), log)
    }

    /// `--distributed` outside mpirun says how to launch it.
    func testDistributedOutsideMPIRunSaysHowToLaunch() throws {
        let result = try CLI.run(
            [
                "train", "--distributed", "--data", data.path, "--threads", "1",
                "--out", root.appendingPathComponent("alone").path,
            ], in: root)
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("mpirun -np 2"), result.stderr)
    }
}
