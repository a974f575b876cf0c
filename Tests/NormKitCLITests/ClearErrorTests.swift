import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Inputs that used to crash `normkit` (a trap, a hang, a huge allocation) end in a clear error instead: a
/// non-zero exit code, a message on standard error naming the flag or the file and the field, no crash report.
final class ClearErrorTests: XCTestCase {
    func testCheckpointEveryZeroIsAUsageError() throws {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch("checkpoint-every-0")
        let result = try CLI.run(
            CLIFixture.quickTraining(data: fixture.data)
                + ["--checkpoint-every", "0", "--out", out.appendingPathComponent("run").path],
            in: out)
        assertRefused(result, code: 64, mentioning: ["--checkpoint-every"], "train --checkpoint-every 0")
    }

    /// `normkit bench --statistic` takes median or best, `--streaming-threshold` a count of 0 or more, `--groups` a
    /// count of at least 1 that divides every shape's channels and `--layers` known layers each once, all only for the
    /// kernel table; `--streaming-check`
    /// takes none of them, nor `--inference`, `--layout` or shapes that are not 4-D: anything else is a usage error
    /// naming the flag, before any timing starts.
    func testBenchStatisticIsAChoiceOfTheKernelTable() throws {
        let out = try CLIFixture.shared().scratch("bench-statistic")
        for (arguments, words) in [
            (["bench", "--statistic", "fastest"], ["--statistic", "median", "best"]),
            (["bench", "--inference", "--statistic", "best"], ["--statistic", "--inference"]),
            (["bench", "--streaming-threshold=-1"], ["--streaming-threshold", "0 or more"]),
            (["bench", "--inference", "--streaming-threshold", "0"], ["--streaming-threshold", "--inference"]),
            (["bench", "--streaming-check", "--inference"], ["--streaming-check", "--inference"]),
            (
                ["bench", "--streaming-check", "--streaming-threshold", "0"],
                ["--streaming-check", "--streaming-threshold"]
            ),
            (["bench", "--streaming-check", "--layout", "channelsFirst"], ["--streaming-check", "--layout"]),
            (["bench", "--streaming-check", "--shapes", "2x8x4"], ["--streaming-check", "NxCxHxW"]),
            (["bench", "--groups", "0"], ["--groups", "at least 1"]),
            (["bench", "--groups", "3", "--shapes", "2x64x4x4"], ["--groups 3", "64 channels", "2x64x4x4"]),
            (["bench", "--groups", "32", "--inference"], ["--groups", "--inference"]),
            (["bench", "--without-affine", "--streaming-check"], ["--without-affine", "--streaming-check"]),
            (["bench", "--layers", "gn,ln"], ["--layers", "'ln'", "gn-silu", "frozen-bn"]),
            (["bench", "--layers", "bn,"], ["--layers", "''"]),
            (["bench", "--layers", "mabn,mabn"], ["--layers", "twice"]),
            (["bench", "--layers", "mabn", "--inference"], ["--layers", "--inference"]),
            (["bench", "--activation", "relu", "--inference"], ["--activation", "--inference"]),
            (["bench", "--activation", "gelu"], ["--activation", "gelu"]),
        ] {
            let result = try CLI.run(arguments, in: out)
            assertRefused(result, code: 64, mentioning: words, arguments.joined(separator: " "))
        }
    }

    /// A negative number after a numeric option (`--batch -1`) reaches the command's own range check, which names the
    /// flag and the value, as `--batch=-1` does, for every integer and floating-point option of every command:
    /// ArgumentParser took `-1` for a short flag and said "Missing value for '--batch <batch>'". A flag in a value's
    /// place is still refused by name, and a value that is missing still is.
    func testANegativeNumberAfterANumericOptionReachesItsRangeCheck() throws {
        let out = try CLIFixture.shared().scratch("negative-numbers")
        let commands: [(command: [String], flags: [String])] = [
            (
                ["train"],
                [
                    "--batch", "--epochs", "--groups", "--group-size", "--norm-batch", "--lr", "--momentum",
                    "--weight-decay", "--warmup", "--seed", "--threads", "--checkpoint-every", "--mabn-buffer",
                    "--mabn-warmup", "--mabn-old-weight", "--bn-momentum", "--brn-momentum", "--brn-r-max",
                    "--brn-d-max", "--train-limit", "--test-limit",
                ]
            ),
            (["eval", "--checkpoint", "none"], ["--threads", "--test-limit"]),
            (["bench"], ["--threads", "--repetitions", "--groups", "--streaming-threshold"]),
            (["bench", "--inference"], ["--depth", "--batch"]),
            (["stats", "--checkpoint", "none"], ["--batches", "--population", "--seed", "--threads"]),
            (
                ["sweep", "--out", out.appendingPathComponent("sweep").path],
                ["--threads", "--ranks", "--train-limit", "--test-limit"]
            ),
        ]
        for (command, flags) in commands {
            for flag in flags {
                let arguments = command + [flag, "-1"]
                let result = try CLI.run(arguments, in: out)
                let what = arguments.joined(separator: " ")
                assertRefused(result, code: 64, mentioning: [flag, "-1"], what)
                XCTAssertFalse(result.stderr.contains("Missing value"), "\(what)\n\(result.summary)")
            }
        }
        assertRefused(
            try CLI.run(["train", "--batch", "--epochs", "3"], in: out), code: 64,
            mentioning: ["The value '--epochs' is invalid for '--batch <batch>'"], "train --batch --epochs 3")
        assertRefused(
            try CLI.run(["train", "--epochs", "3", "--batch"], in: out), code: 64,
            mentioning: ["Missing value for '--batch <batch>'"], "train --epochs 3 --batch")
        XCTAssertNil(fileType(at: out.appendingPathComponent("sweep")), "nothing was created")
    }

    /// A comma-separated list that starts with `-` (`--seeds -1`, `--milestones -3,5`) reaches the command's own check
    /// of the list, which names the flag, the value and what it must be, as `--seeds=-1` does, for every list option
    /// of every command: ArgumentParser took `-1` for a short flag and said "Missing value for '--seeds <seeds>'". A
    /// flag in the list's place is named by the same check; a list that is missing still is.
    func testAListStartingWithAMinusReachesItsCheck() throws {
        let out = try CLIFixture.shared().scratch("negative-lists")
        let sweep = ["sweep", "--out", out.appendingPathComponent("sweep").path]
        let cases: [(arguments: [String], words: [String])] = [
            (sweep + ["--seeds", "-1"], ["--seeds must be comma-separated non-negative integers, got '-1'"]),
            (sweep + ["--seeds", "-1,2"], ["--seeds", "'-1,2'"]),
            (sweep + ["--norm-batches", "-2"], ["--norm-batches must be comma-separated positive integers, got '-2'"]),
            (sweep + ["--norms", "-bn"], ["--norms: '-bn' is not one of bn, gn"]),
            (sweep + ["--seeds", "--threads", "2"], ["--seeds", "got '--threads'"]),
            (["stats", "--checkpoint", "none", "--sizes", "-1"], ["--sizes '-1': must be", "in 1...4096"]),
            (["train", "--schedule", "step", "--milestones", "-3,5"], ["--milestones -3: must be epochs in 0...2"]),
            (["train", "--schedule", "step", "--milestones", "1,-3"], ["--milestones -3: must be epochs in 0...2"]),
            (["train", "--milestones", "--schedule", "step"], ["--milestones", "got '--schedule'"]),
            (["train", "--norm", "mabn", "--mabn-without", "-renorm"], ["--mabn-without -renorm: must be MABN parts"]),
            (["bench", "--shapes", "-1x2"], ["--shapes: '-1x2' is not NxCx… with 2 to 5 positive dimensions"]),
        ]
        for (arguments, words) in cases {
            let result = try CLI.run(arguments, in: out)
            let what = arguments.joined(separator: " ")
            assertRefused(result, code: 64, mentioning: words, what)
            XCTAssertFalse(result.stderr.contains("Missing value"), "\(what)\n\(result.summary)")
        }
        assertRefused(
            try CLI.run(["train", "--epochs", "3", "--milestones"], in: out), code: 64,
            mentioning: ["Missing value for '--milestones <milestones>'"], "train --epochs 3 --milestones")
        XCTAssertNil(fileType(at: out.appendingPathComponent("sweep")), "nothing was created")
    }

    /// A checkpoint that is a named pipe blocked `eval`, `export` and `train --resume` forever (opening it waited
    /// for a writer): each refuses it at once, naming the path and what it is.
    func testACheckpointThatIsANamedPipeIsRefusedAtOnce() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("fifo-checkpoint")
        let pipe = scratch.appendingPathComponent("ff.safetensors")
        try makeNamedPipe(at: pipe)
        let run = scratch.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: run, withIntermediateDirectories: false)
        let runPipe = run.appendingPathComponent(TrainingCheckpoint.modelFileName)
        try makeNamedPipe(at: runPipe)
        let folded = scratch.appendingPathComponent("folded.safetensors")
        for (arguments, path) in [
            (["eval", "--checkpoint", pipe.path, "--data", fixture.data.path, "--threads", "1"], pipe),
            (["export", "--fold", "--checkpoint", pipe.path, "--out", folded.path], pipe),
            (["train", "--resume", run.path, "--threads", "1"], runPipe),
        ] {
            let what = "normkit " + arguments.joined(separator: " ")
            let result = try CLI.run(arguments, in: scratch, timeout: 30)
            assertRefused(result, mentioning: [path.path, "is a named pipe"], what)
            XCTAssertLessThan(result.seconds, 10, "\(what) should fail at once\n\(result.summary)")
        }
        XCTAssertNil(fileType(at: folded), "nothing was exported")
        XCTAssertEqual(fileType(at: pipe), "fifo")
        XCTAssertEqual(fileType(at: runPipe), "fifo")
    }

    /// A dataset file that is a named pipe blocked `train` and `eval` forever (the data fingerprint and the IDX
    /// reader both opened it): refused at once, naming the file and what it is.
    func testADatasetFileThatIsANamedPipeIsRefusedAtOnce() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("fifo-data")
        let data = try copyDirectory(fixture.data, to: scratch, name: "data")
        let pipe = data.appendingPathComponent("t10k-labels-idx1-ubyte")
        try FileManager.default.removeItem(at: pipe)
        try makeNamedPipe(at: pipe)
        for arguments in [
            CLIFixture.quickTraining(data: data) + ["--out", scratch.appendingPathComponent("run").path],
            ["eval", "--checkpoint", fixture.baseRun.path, "--data", data.path, "--threads", "1"],
        ] {
            let what = "normkit " + arguments.joined(separator: " ")
            let result = try CLI.run(arguments, in: scratch, timeout: 30)
            assertRefused(result, mentioning: [pipe.path, "is a named pipe"], what)
            XCTAssertLessThan(result.seconds, 10, "\(what) should fail at once\n\(result.summary)")
        }
        XCTAssertNil(fileType(at: scratch.appendingPathComponent("run")), "the refused train made no run directory")
    }

    /// A training-labels file of 10 KB whose gzip data inflates to 10 MB of zeros behind a valid header for 32
    /// labels (a decompression bomb; the audit's 1 MB one reached 1.1 GB of memory) is refused as soon as the
    /// output passes the 40 bytes the header declares, saying so.
    func testAGzipBombDatasetFileIsRefusedAtTheSizeItsHeaderDeclares() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("gzip-bomb")
        let data = try copyDirectory(fixture.data, to: scratch, name: "data")
        let plain = data.appendingPathComponent("train-labels-idx1-ubyte")
        let labels = try Data(contentsOf: plain)
        XCTAssertEqual(labels.count, 40, "the fixture's 32 labels and their 8-byte header")
        try FileManager.default.removeItem(at: plain)
        let bomb = data.appendingPathComponent("train-labels-idx1-ubyte.gz")
        try Data(try Gzip.compress(Array(labels) + [UInt8](repeating: 0, count: 10_000_000), level: 9)).write(to: bomb)
        let result = try CLI.run(
            CLIFixture.quickTraining(data: data) + ["--out", scratch.appendingPathComponent("run").path], in: scratch,
            timeout: 60)
        assertRefused(
            result, mentioning: [bomb.path, "decompresses to more than the 40 bytes its IDX header declares"],
            "train on a gzip bomb")
    }

    /// `normkit bench --shapes` is bounded before anything is allocated: an empty list, a shape whose element count
    /// overflows `Int` (it trapped in `Tensor(zeros:)`) and a shape whose tensors do not fit in half the memory (it
    /// aborted on allocation) are usage errors naming the shape; `--threads` has the cap of every other command; and
    /// the flags of one benchmark are refused with another (they were ignored).
    func testBenchRefusesShapesItCannotHoldAndFlagsOfAnotherBenchmark() throws {
        let out = try CLIFixture.shared().scratch("bench-bounds")
        for (arguments, words) in [
            (["bench", "--shapes", ""], ["--shapes", "at least one shape"]),
            (["bench", "--shapes", ","], ["--shapes", "at least one shape"]),
            (["bench", "--shapes", "2x8x4x4,"], ["--shapes", "'' is not NxCx"]),
            (
                ["bench", "--shapes", "4294967296x4294967296", "--groups", "1"],
                ["4294967296x4294967296", "more elements than a 64-bit count holds"]
            ),
            (
                ["bench", "--shapes", "65536x65536x65536"],
                ["65536x65536x65536", "7881299347898368 bytes", "half this machine's memory"]
            ),
            (
                ["bench", "--streaming-check", "--shapes", "64x65536x64x64"],
                ["64x65536x64x64", "bytes", "half this machine's memory"]
            ),
            (["bench", "--threads", "100000"], ["--threads 100000: must be in 1...1024"]),
            (["bench", "--threads", "0"], ["--threads 0: must be in 1...1024"]),
            (["bench", "--inference", "--shapes", "2x8x4x4"], ["--shapes", "--inference"]),
            (["bench", "--depth", "56"], ["--depth", "--inference"]),
            (["bench", "--batch", "8"], ["--batch", "--inference"]),
        ] {
            let result = try CLI.run(arguments, in: out, timeout: 30)
            assertRefused(result, code: 64, mentioning: words, arguments.joined(separator: " "))
            XCTAssertLessThan(result.seconds, 10, "\(arguments.joined(separator: " ")): refused before any timing")
        }
    }

    /// `bench --groups` above a shape's channels gives that shape's GroupNorm rows G = C (InstanceNorm, as the GN
    /// paper's default G = min(32, C) does): the output says so, and the rows are labelled with the G used.
    func testBenchSaysWhenGroupsAreMoreThanAShapesChannels() throws {
        let out = try CLIFixture.shared().scratch("bench-groups-note")
        let result = try CLI.run(
            [
                "bench", "--shapes", "2x8x2x2", "--groups", "64", "--repetitions", "1", "--layout", "channelsFirst",
                "--threads", "1",
            ], in: out)
        assertExit(result, 0, "bench --groups 64 on 8 channels")
        XCTAssertTrue(
            result.stdout.contains("note: the GroupNorm rows of 2x8x2x2 use G = 8 (InstanceNorm): --groups 64"),
            result.summary)
        XCTAssertTrue(result.stdout.contains("| GroupNorm G=8 | (2,8,2,2) |"), result.summary)
    }

    /// Every command caps `--threads` at ConfigurationLimits.maxThreads with the same words.
    func testEveryCommandCapsThreadsAlike() throws {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch("threads-cap")
        let checkpoint = fixture.baseRun.path
        for arguments in [
            ["bench"], ["sweep", "--preset", "quick"], ["eval", "--checkpoint", checkpoint],
            ["stats", "--checkpoint", checkpoint], CLIFixture.quickTraining(data: fixture.data),
        ] {
            let result = try CLI.run(arguments + ["--threads", "100000"], in: out, timeout: 30)
            assertRefused(
                result, code: 64, mentioning: ["--threads 100000: must be in 1...1024"],
                (arguments + ["--threads", "100000"]).joined(separator: " "))
        }
    }

    /// A file-system error is "path: reason" in the C library's words, never Foundation's domain and code:
    /// `train --out FILE/sub` said "(NSCocoaErrorDomain error 512.)".
    func testAFileInTheWayOfTheRunDirectoryIsNamed() throws {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch("out-under-a-file")
        let file = out.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: file)
        let result = try CLI.run(
            CLIFixture.quickTraining(data: fixture.data) + ["--out", file.appendingPathComponent("sub").path], in: out)
        assertRefused(
            result, mentioning: [file.appendingPathComponent("sub").path, "Not a directory", "\(file.path) is a file"],
            "train --out FILE/sub")
        XCTAssertFalse(result.stderr.contains("NSCocoaErrorDomain"), result.summary)
        XCTAssertFalse(result.stderr.contains("Error Domain"), result.summary)
    }

    /// `--out ""` is refused by every command that writes into it (train trained into the working directory).
    func testAnEmptyOutIsRefused() throws {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch("empty-out")
        for arguments in [
            CLIFixture.quickTraining(data: fixture.data) + ["--out", ""],
            ["train", "--resume", ""],
            ["sweep", "--preset", "quick", "--out", ""],
            ["stats", "--checkpoint", fixture.baseRun.path, "--out", ""],
            ["export", "--fold", "--checkpoint", fixture.baseRun.path, "--out", ""],
        ] {
            let flag = arguments.contains("--resume") ? "--resume" : "--out"
            let result = try CLI.run(arguments, in: out, timeout: 30)
            assertRefused(result, code: 64, mentioning: [flag, "empty path"], arguments.joined(separator: " "))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.path), [], "nothing written")
    }

    /// A checkpoint's configuration that is valid JSON with a number its field cannot hold was reported as "the
    /// top level: The given data was not valid JSON": the field and the problem are named.
    func testANumberACheckpointFieldCannotHoldIsNamed() throws {
        let fixture = try CLIFixture.shared()
        let cases: [(name: String, edit: (inout [String: Any]) -> Void, words: [String])] = [
            ("negative", { $0["seed"] = -1 }, ["field seed: -1 is not a valid UInt64"]),
            (
                "past-uint64", { $0["seed"] = NSDecimalNumber(string: "18446744073709551621") },
                ["field seed: 18446744073709551621 is not a valid UInt64"]
            ),
            ("fraction", { $0["batch"] = 8.5 }, ["field batch: 8.5 is not an integer"]),
        ]
        for (name, edit, words) in cases {
            let url = try checkpoint(name, editing: edit)
            let result = try CLI.run(
                ["eval", "--checkpoint", url.path, "--data", fixture.data.path, "--threads", "1"],
                in: url.deletingLastPathComponent(), timeout: 30)
            assertRefused(result, mentioning: [url.path] + words, "eval of a checkpoint with \(name) number")
            XCTAssertFalse(result.stderr.contains("not valid JSON"), result.summary)
        }
    }

    /// A damaged `model.safetensors` in `--out` was "a run interrupted at step 0. Continue it with --resume", and
    /// the resume then failed: the message says the checkpoint cannot be read, and why (for a finished run too).
    func testADamagedCheckpointInOutIsNotCalledAnInterruptedRun() throws {
        let fixture = try CLIFixture.shared()
        let scratch = try fixture.scratch("damaged-out")
        for finished in [false, true] {
            let run = try copyDirectory(fixture.baseRun, to: scratch, name: "run-\(finished ? "finished" : "stopped")")
            if !finished { try FileManager.default.removeItem(at: run.appendingPathComponent("summary.json")) }
            let model = run.appendingPathComponent(TrainingCheckpoint.modelFileName)
            try Data(try Data(contentsOf: model).prefix(100)).write(to: model)
            let before = snapshot(of: run)
            let result = try CLI.run(CLIFixture.quickTraining(data: fixture.data) + ["--out", run.path], in: scratch)
            assertRefused(
                result,
                mentioning: [run.path, "checkpoint cannot be read", "cannot be resumed", "truncated", "--overwrite"],
                "train --out DIR with a damaged model.safetensors (finished: \(finished))")
            XCTAssertFalse(result.stderr.contains("interrupted at step"), result.summary)
            XCTAssertFalse(result.stderr.contains("--resume"), result.summary)
            XCTAssertEqual(snapshot(of: run), before)
        }
    }

    /// `export --out DIR` suggested --overwrite, which then failed with "Is a directory": it says DIR is a directory.
    func testExportToADirectorySaysItIsADirectory() throws {
        let fixture = try CLIFixture.shared()
        let out = try fixture.scratch("export-dir")
        let target = out.appendingPathComponent("folded")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        for extra in [[], ["--overwrite"]] {
            let result = try CLI.run(
                ["export", "--fold", "--checkpoint", fixture.baseRun.path, "--out", target.path] + extra, in: out)
            assertRefused(
                result, mentioning: ["\(target.path) is a directory", "safetensors file"],
                "export --out DIR \(extra.joined())")
            XCTAssertFalse(result.stderr.contains("pass --overwrite"), result.summary)
        }
    }

    /// A copy of the base run's model file whose `__metadata__` `configuration` has `edit` applied.
    private func checkpoint(_ name: String, editing edit: (inout [String: Any]) -> Void) throws -> URL {
        let fixture = try CLIFixture.shared()
        let (tensors, metadata) = try SafeTensors.read(
            from: fixture.baseRun.appendingPathComponent(TrainingCheckpoint.modelFileName))
        let json = try XCTUnwrap(metadata["configuration"], "the base checkpoint records its configuration")
        var configuration = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        edit(&configuration)
        var edited = metadata
        edited["configuration"] = String(
            decoding: try JSONSerialization.data(withJSONObject: configuration, options: [.sortedKeys]), as: UTF8.self)
        let url = try fixture.scratch("edited-\(name)").appendingPathComponent("model.safetensors")
        try SafeTensors.write(tensors, metadata: edited, to: url)
        return url
    }

    /// `normkit eval` of a checkpoint edited by `edit` fails within a few seconds, naming the file and `field`.
    private func assertEvalRefuses(
        _ name: String, field: [String], editing edit: (inout [String: Any]) -> Void,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let fixture = try CLIFixture.shared()
        let url = try checkpoint(name, editing: edit)
        let result = try CLI.run(
            ["eval", "--checkpoint", url.path, "--data", fixture.data.path, "--threads", "1"],
            in: url.deletingLastPathComponent(), timeout: 30)
        assertRefused(result, mentioning: [url.path], "eval of a checkpoint with \(name)", file: file, line: line)
        XCTAssertTrue(
            field.contains { result.stderr.contains($0) },
            "eval of a checkpoint with \(name): stderr should name the field (\(field))\n\(result.summary)",
            file: file, line: line)
        XCTAssertLessThan(
            result.seconds, 10, "eval of a checkpoint with \(name) should fail at once", file: file, line: line)
    }

    func testEvalRefusesACheckpointWithBatchZero() throws {
        try assertEvalRefuses("batch 0", field: ["--batch", "\"batch\""]) { $0["batch"] = 0 }
    }

    func testEvalRefusesACheckpointWithNormBatchZero() throws {
        try assertEvalRefuses("normBatch 0", field: ["--norm-batch", "normBatch"]) { $0["normBatch"] = 0 }
    }

    func testEvalRefusesAnMABNCheckpointWithAHugeBuffer() throws {
        try assertEvalRefuses("mabn batch 2^40, normBatch 1", field: ["--batch", "--norm-batch"]) {
            $0["norm"] = "mabn"
            $0["groups"] = nil
            $0["batch"] = 1_099_511_627_776
            $0["normBatch"] = 1
        }
    }

    func testEvalRefusesACheckpointOfAnImpossibleDepth() throws {
        try assertEvalRefuses("model resnet60000002", field: ["--model"]) { $0["model"] = "resnet60000002" }
    }

    func testEvalRefusesAConfigurationOfAnotherModelThanItsTensors() throws {
        try assertEvalRefuses("resnet14 configuration on resnet8 tensors", field: ["resnet14"]) {
            $0["model"] = "resnet14"
        }
    }

    /// KNOWN BUG at 599a558 (left failing on purpose): only ResNet depths are compared with the file's tensors, so
    /// a `vgg` configuration on ResNet tensors fails later, in `loadStateDict`, with "checkpoint has no tensor
    /// 'features.0.weight'": the message does not name the file.
    func testEvalRefusesAVGGConfigurationOnResNetTensors() throws {
        try assertEvalRefuses("vgg configuration on resnet8 tensors", field: ["vgg"]) { $0["model"] = "vgg" }
    }
}
