import Foundation
import NormKitTraining
import XCTest

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

    /// `normkit bench --statistic` takes median or best, `--streaming-threshold` a count of 0 or more and `--groups` a
    /// count of at least 1 that divides every shape's channels, all only for the kernel table; `--streaming-check`
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
        ] {
            let result = try CLI.run(arguments, in: out)
            assertRefused(result, code: 64, mentioning: words, arguments.joined(separator: " "))
        }
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
