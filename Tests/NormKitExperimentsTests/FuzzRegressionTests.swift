import Foundation
import NormKitExperiments
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Regression tests for what the libFuzzer targets in `Fuzz/` found (docs/FUZZING.md, "Findings"). Each test
/// feeds the input shape the fuzzer produced through the same public entry point the harness uses.
final class FuzzRegressionTests: XCTestCase {
    /// A small per-GPU plan with `gpus` simulated GPUs and normalization batches 8 and 2.
    private func perGPUPlan(gpus: Int) -> SweepPlan {
        var base = TrainingConfiguration()
        base.epochs = 1
        return SweepPlan(
            name: "per-gpu", base: base, norms: [.mabn, .ln], normBatches: [8, 2], setting: .perGPU,
            gpus: gpus, seeds: [0])
    }

    /// fuzz-sweep-plan, crash: a `plan.json` with `"setting": "per-gpu"` and `"gpus": 4611686018427387904`
    /// validated, and `cells()` then trapped on the arithmetic overflow of `gpus × normBatch` (the SGD batch).
    func testPerGPUPlanWhoseSGDBatchOverflowsIsRefusedNotTrapped() throws {
        let directory = try makeTemporaryDirectory("normkit-fuzz-regression")
        let valid = perGPUPlan(gpus: 4)
        try SweepPlanRecord(plan: valid, cells: try valid.cells()).write(to: directory)
        let url = directory.appendingPathComponent(SweepPlanRecord.fileName)
        let text = try String(contentsOf: url, encoding: .utf8)
        XCTAssertTrue(text.contains("\"gpus\" : 4"), "the plan file format changed: \(text.prefix(200))")
        try text.replacingOccurrences(of: "\"gpus\" : 4", with: "\"gpus\" : 4611686018427387904")
            .write(to: url, atomically: true, encoding: .utf8)

        let plan = try XCTUnwrap(try SweepPlanRecord.read(from: directory)).plan
        XCTAssertEqual(plan.gpus, 4_611_686_018_427_387_904)
        XCTAssertThrowsError(try plan.validate()) { error in
            XCTAssertEqual(
                error as? SweepError,
                .invalidPlan(
                    "gpus 4611686018427387904 × normalization batch 8 overflows the SGD batch (at most \(Int.max))"))
        }
        XCTAssertThrowsError(try plan.cells()) { error in
            guard case .invalidPlan(let reason)? = error as? SweepError else {
                return XCTFail("expected invalidPlan, got \(error)")
            }
            XCTAssertTrue(reason.contains("overflows"), reason)
        }
        XCTAssertEqual(plan.estimatedSeconds(imagesPerSecond: 1000), 0, "an invalid plan has no estimate")
    }

    /// The overflow check is exact: the largest per-GPU batch that fits in `Int` is still accepted.
    func testPerGPUPlanAtTheLargestRepresentableBatchIsAccepted() throws {
        let gpus = Int.max / 8
        let cells = try perGPUPlan(gpus: gpus).cells()
        XCTAssertEqual(cells.map(\.configuration.batch).max(), gpus * 8)
        XCTAssertThrowsError(try perGPUPlan(gpus: gpus + 1).validate())
    }

    /// fuzz-sweep-plan, leak: reading an empty `plan.json` through `Data(contentsOf:)` leaked 4 KiB per call
    /// (LeakSanitizer). The file is now read with NormKit's POSIX reader; an empty or truncated plan is still a
    /// clear `unreadableRecord` naming the file, and a valid one reads back unchanged.
    func testEmptyAndTruncatedPlanFilesAreUnreadableRecords() throws {
        let directory = try makeTemporaryDirectory("normkit-fuzz-regression")
        let url = directory.appendingPathComponent(SweepPlanRecord.fileName)
        let plan = perGPUPlan(gpus: 2)
        let record = SweepPlanRecord(plan: plan, cells: try plan.cells())
        try record.write(to: directory)
        XCTAssertEqual(try SweepPlanRecord.read(from: directory), record)
        let full = try Data(contentsOf: url)

        for content in [Data(), full.prefix(full.count / 2)] {
            try content.write(to: url)
            XCTAssertThrowsError(try SweepPlanRecord.read(from: directory)) { error in
                guard case .unreadableRecord(let where_, let reason)? = error as? SweepError else {
                    return XCTFail("expected unreadableRecord, got \(error)")
                }
                XCTAssertEqual(where_.lastPathComponent, SweepPlanRecord.fileName)
                XCTAssertTrue(reason.contains("not valid JSON") || reason.contains("DecodingError"), reason)
            }
        }
        XCTAssertThrowsError(try SweepReport.build(from: directory)) { error in
            guard case .unreadableRecord? = error as? SweepError else {
                return XCTFail("expected unreadableRecord, got \(error)")
            }
        }
    }

    /// A `plan.json` that is a directory (not a regular file) is an unreadable record, not a crash.
    func testPlanFileThatIsADirectoryIsAnUnreadableRecord() throws {
        let directory = try makeTemporaryDirectory("normkit-fuzz-regression")
        try FileManager.default.createDirectory(
            at: directory.appendingPathComponent(SweepPlanRecord.fileName), withIntermediateDirectories: false)
        XCTAssertThrowsError(try SweepPlanRecord.read(from: directory)) { error in
            guard case .unreadableRecord(_, let reason)? = error as? SweepError else {
                return XCTFail("expected unreadableRecord, got \(error)")
            }
            XCTAssertTrue(reason.contains("not a regular file"), reason)
        }
    }
}
