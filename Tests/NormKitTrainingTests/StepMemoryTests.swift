import Foundation
import NormKit
import NormKitTraining
import XCTest

/// A batch whose training step does not fit in this machine's memory is refused before the run, with its numbers,
/// instead of the kernel killing the process at the first step (each of its blocks fits the per-block limit).
final class StepMemoryTests: XCTestCase {
    func testTheProbedMemoryGrowsWithTheBatchAsTheModelsStepDoes() throws {
        var c = TrainingConfiguration()
        c.model = "resnet8"
        c.norm = .gn
        let memory = try XCTUnwrap(
            StepMemory.measure(c, channels: 1, height: 28, width: 28, classes: 10), "glibc measures the heap")
        print("resnet8 gn: base \(memory.baseBytes) B, \(memory.bytesPerImage) B per image")
        // Every image holds at least its activations and their gradients: the stem's and each 3×3 convolution's
        // output, 16·28·28 floats at stage 1 (5 convolutions), 32·14·14 (4 and a shortcut) and 64·7·7 at stage 3.
        let convolutionOutputs = 16 * 784 * 5 + 32 * 196 * 5 + 64 * 49 * 5
        XCTAssertGreaterThan(memory.bytesPerImage, 2 * 4 * convolutionOutputs)
        XCTAssertLessThan(memory.bytesPerImage, 40 * 4 * convolutionOutputs)
    }

    /// The line through the probes at 2 and 6 images predicts what a model holds after a step of 48 images.
    func testTheProbesPredictALargerBatch() throws {
        for (model, norm) in [("resnet20", NormKind.bn), ("resnet8", .mabn), ("vgg", .gn)] {
            var c = TrainingConfiguration()
            c.model = model
            c.norm = norm
            let memory = try XCTUnwrap(StepMemory.measure(c, channels: 1, height: 28, width: 28, classes: 10))
            let held = try StepMemory.heapHeld(c, batch: 48, 1, 28, 28, 10)
            print(
                "\(model) \(norm): base \(memory.baseBytes) B, \(memory.bytesPerImage) B per image; 48 images: "
                    + "predicted \(memory.bytes(batch: 48)), held \(held)")
            XCTAssertEqual(Double(memory.bytes(batch: 48)), Double(held), accuracy: 0.15 * Double(held), model)
        }
    }

    /// Against a given amount of free memory: a batch beyond it is refused with the model, the batch, the bytes and
    /// the largest batch that fits; the largest batch itself passes.
    func testABatchBeyondTheFreeMemoryIsRefusedWithTheLargestThatFits() throws {
        let data = try TrainingTests.synthetic()
        var c = TrainingTests.smallConfiguration(.gn)
        let memory = try XCTUnwrap(
            StepMemory.measure(
                c, channels: data.train.channels, height: data.train.height, width: data.train.width,
                classes: data.train.classCount))
        let available = memory.bytes(batch: 100)
        c.batch = 128
        XCTAssertThrowsError(try Trainer.checkStepMemory(c, train: data.train, test: data.test, available: available)) {
            error in
            guard
                case .notEnoughMemory(let model, let batch, let bytes, let free, let largest)? = error as? TrainingError
            else { return XCTFail("\(error)") }
            XCTAssertEqual(model, "resnet8 with gn")
            XCTAssertEqual(batch, 128)
            XCTAssertEqual(bytes, memory.bytes(batch: 128))
            XCTAssertEqual(free, available)
            XCTAssertEqual(largest, 100)
            XCTAssertTrue("\(error)".contains("a batch of at most 100 fits"), "\(error)")
        }
        c.batch = 100
        XCTAssertNoThrow(try Trainer.checkStepMemory(c, train: data.train, test: data.test, available: available))
        XCTAssertThrowsError(try Trainer.checkStepMemory(c, train: data.train, test: data.test, available: 1000)) {
            XCTAssertTrue("\($0)".contains("no batch fits"), "\($0)")
        }
    }

    /// The real thing: ResNet-20 at a batch of 16,384 28×28 images needs about 50 GB (3 MB per image); a trainer
    /// refuses it before building its model where the machine has less free (it used to be killed by the kernel at
    /// its first step).
    func testATrainerRefusesABatchThisMachineCannotHold() throws {
        var c = TrainingConfiguration()
        c.model = "resnet20"
        c.batch = 16_384
        c.epochs = 1
        let memory = try XCTUnwrap(StepMemory.measure(c, channels: 1, height: 28, width: 28, classes: 10))
        guard memory.bytes(batch: c.batch) > MemoryLimit.availableBytes() else {
            throw XCTSkip("this machine has room for \(memory.bytes(batch: c.batch)) bytes")
        }
        let (train, test) = try TorchModelParityTests.syntheticData(count: c.batch, testCount: 16, size: 28, seed: 3)
        XCTAssertThrowsError(try Trainer(configuration: c, train: train, test: test, output: nil)) { error in
            guard case .notEnoughMemory(_, 16_384, _, _, let largest)? = error as? TrainingError else {
                return XCTFail("\(error)")
            }
            XCTAssertLessThan(largest, 16_384)
        }
    }
}
