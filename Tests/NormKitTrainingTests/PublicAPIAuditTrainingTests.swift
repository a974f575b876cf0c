import Foundation
import NormKitTraining
import XCTest

/// A user's audit of `NormKitTraining`'s public API (imported without `@testable`, as a consumer package sees it):
/// sizes whose product overflows `Int`, hand-built state dicts, and the conformances Swift 6 code needs.
final class PublicAPIAuditTrainingTests: XCTestCase {

    // MARK: Sizes whose product overflows

    /// `IDXFile(dimensions:bytes:)` takes each dimension up to `UInt32.max` (the format's limit); three of them
    /// overflow `Int` when multiplied, which trapped. It is the data-length error, naming the dimensions.
    func testIDXDimensionsWhoseProductOverflowsAreRefused() {
        let dimensions = [Int(UInt32.max), Int(UInt32.max), Int(UInt32.max)]
        XCTAssertThrowsError(try IDXFile(dimensions: dimensions, bytes: [])) {
            guard case .invalidArgument(let name, _, let expected) = $0 as? DataError else {
                return XCTFail("expected DataError.invalidArgument, got \($0)")
            }
            XCTAssertEqual(name, "IDX dimensions")
            XCTAssertTrue(expected.contains("product"), expected)
        }
        XCTAssertNoThrow(try IDXFile(dimensions: [2, 0, Int(UInt32.max)], bytes: []), "an empty file is fine")
    }

    /// `Dataset(images:…)` and `Dataset(pixels:…)` multiply `channels × height × width` (and the label count):
    /// sizes whose product overflows are the image-shape error, not a trap.
    func testDatasetImageSizeThatOverflowsIsRefused() {
        let statistics = PixelStatistics(mean: 0, std: 1)
        let side = 1 << 22
        XCTAssertThrowsError(
            try Dataset(
                images: [], labels: [0], channels: side, height: side, width: side, classCount: 1,
                statistics: statistics)
        ) { Self.assertImageShapeError($0) }
        XCTAssertThrowsError(
            try Dataset(
                pixels: [], labels: [0, 0], channels: 1, height: 1 << 31, width: 1 << 31, classCount: 1,
                statistics: statistics)
        ) { Self.assertImageShapeError($0) }
        XCTAssertNoThrow(
            try Dataset(images: [1, 2], labels: [0, 1], height: 1, width: 1, classCount: 2, statistics: statistics))
    }

    /// `Augmentation.apply(_:to:channels:height:width:)` likewise.
    func testAugmentationImageSizeThatOverflowsIsRefused() throws {
        let augmentation = try Augmentation(padding: 1, padValue: 0)
        let identity = Augmentation.Transform(offsetY: 1, offsetX: 1, flip: false)
        XCTAssertThrowsError(
            try augmentation.apply(identity, to: [], channels: 1 << 22, height: 1 << 22, width: 1 << 22)
        ) {
            guard case .invalidArgument(let name, _, _) = $0 as? DataError else {
                return XCTFail("expected DataError.invalidArgument, got \($0)")
            }
            XCTAssertEqual(name, "image")
        }
        XCTAssertEqual(try augmentation.apply(identity, to: [1, 2, 3, 4], height: 2, width: 2), [1, 2, 3, 4])
    }

    private static func assertImageShapeError(_ error: Error, line: UInt = #line) {
        guard case .invalidArgument(let name, _, let expected) = error as? DataError else {
            return XCTFail("expected DataError.invalidArgument, got \(error)", line: line)
        }
        XCTAssertEqual(name, "image shape", line: line)
        XCTAssertTrue(expected.contains("Int"), expected, line: line)
    }

    // MARK: Hand-built state dicts

    /// A tensor of the wrong shape whose dimensions overflow when multiplied is the mismatched-tensor error of a
    /// model and the invalid-state error of a layer; the message that describes it multiplied them and trapped.
    func testStateTensorOfAnOverflowingShapeIsRefused() throws {
        var generator = SeededGenerator(seed: 0)
        let huge: StateTensor = .float32(shape: [1 << 40, 1 << 40], values: [])
        let model = Sequential(try Linear(inFeatures: 4, outFeatures: 2, generator: &generator))
        var state = model.stateDict()
        state["0.weight"] = huge
        XCTAssertThrowsError(try model.loadStateDict(state)) {
            guard case .mismatchedTensor(let name, _, let found) = $0 as? ModelError else {
                return XCTFail("expected ModelError.mismatchedTensor, got \($0)")
            }
            XCTAssertEqual(name, "0.weight")
            XCTAssertEqual(found, "float32 [1099511627776, 1099511627776] with 0 values")
        }
        let linear = try Linear(inFeatures: 4, outFeatures: 2, generator: &generator)
        var own = linear.stateDict()
        own["weight"] = huge
        XCTAssertThrowsError(try linear.loadStateDict(own, strict: false)) {
            guard case .invalidState(_, let name, _) = $0 as? NormalizationError else {
                return XCTFail("expected NormalizationError.invalidState, got \($0)")
            }
            XCTAssertEqual(name, "weight")
        }
    }

    // MARK: Conformances

    /// What `TrainingCheckpoint.read(at:)` returns, and a resumable training state, are plain values of `Sendable`
    /// parts: Swift 6 code reads a checkpoint in a task and hands it to another (this test did not compile when
    /// they were not `Sendable`).
    func testCheckpointValuesCrossTasks() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "PublicAPIAuditTrainingTests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("missing.safetensors")
        let read = Task.detached { () throws -> TrainingCheckpoint.ModelFile in try TrainingCheckpoint.read(at: url) }
        do {
            _ = try await read.value
            XCTFail("read a file that does not exist")
        } catch {
            XCTAssertFalse(error.localizedDescription.isEmpty)
        }
        let state = TrainingCheckpoint.TrainingState(
            step: 3, position: BatchIterator.Position(epoch: 0, batchIndex: 3), history: [], epochLossSum: 1,
            epochCorrect: 2, epochImages: 3, elapsedSeconds: 4, epochTrainingSeconds: 5)
        let copy = await Task.detached { state }.value
        XCTAssertEqual(copy, state)
    }

    /// Evaluating on a dataset with no images gave error 0 and loss 0, a perfect score for nothing; it is refused.
    func testEvaluatingAnEmptyDatasetIsRefused() throws {
        var generator = SeededGenerator(seed: 0)
        let model = try ResNet(depth: 8, normalization: NormalizationSettings(kind: .bn), generator: &generator)
        let statistics = PixelStatistics(mean: 0.5, std: 0.25)
        let empty = try Dataset(images: [], labels: [], height: 8, width: 8, classCount: 10, statistics: statistics)
        XCTAssertThrowsError(try Trainer.evaluate(model: model, on: empty)) { error in
            guard case DataError.invalidArgument(let name, let value, _)? = error as? DataError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(name, "evaluation dataset")
            XCTAssertEqual(value, "0 images")
        }
        let one = try Dataset(
            images: [Float](repeating: 0, count: 64), labels: [3], height: 8, width: 8, classCount: 10,
            statistics: statistics)
        XCTAssertEqual(try Trainer.evaluate(model: model, on: one).count, 1)
    }
}
