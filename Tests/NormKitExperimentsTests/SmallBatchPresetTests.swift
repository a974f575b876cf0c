import NormKitExperiments
import NormKitTraining
import XCTest

/// Issue 12's presets: true small batches (SGD batch = normalization batch), GN's Table 1 curves, VGG.
final class SmallBatchPresetTests: XCTestCase {
    func testSmallBatchCellsAreTrueSmallBatchesWithScaledRateAndMABNBuffer() throws {
        let preset = try SweepPresets.named("small-batch")
        let cells = try preset.plan.cells()
        XCTAssertEqual(cells.count, 4 * 5 * 3, "BN, BRN, GN, MABN × 5 batches × 3 seeds, every column a run")
        for cell in cells {
            let c = cell.configuration
            XCTAssertEqual(c.batch, c.effectiveNormBatch, cell.runName)
            XCTAssertEqual(c.peakLearningRate, 0.1 * Double(c.batch) / 32, accuracy: 1e-12, cell.runName)
            XCTAssertEqual(c.epochs, SweepPresets.recipe.epochs)
            XCTAssertNoThrow(try c.validate(), cell.runName)
            if c.norm == .mabn { XCTAssertEqual(c.mabnBufferSize, 32 / c.batch, cell.runName) }
        }
        XCTAssertEqual(Set(cells.map(\.configuration.batch)), [32, 16, 8, 4, 2])
        XCTAssertEqual(Set(cells.map(\.configuration.norm)), [.bn, .brn, .gn, .mabn])
    }

    func testPaperTable1AndVGGPresets() throws {
        let table1 = try SweepPresets.named("paper-table1").plan.cells()
        XCTAssertEqual(Set(table1.map(\.configuration.norm)), [.bn, .ln, .in, .gn])
        XCTAssertTrue(table1.allSatisfy { $0.configuration.epochs >= 10 && $0.configuration.batch == 32 })
        XCTAssertEqual(table1.count, 12)
        let vgg = try SweepPresets.named("vgg").plan.cells()
        XCTAssertEqual(Set(vgg.map(\.configuration.norm)), [.none, .bn, .gn])
        XCTAssertTrue(vgg.allSatisfy { $0.configuration.model == "vgg" })
        XCTAssertEqual(vgg.count, 9)
        for cell in table1 + vgg { XCTAssertNoThrow(try cell.configuration.validate(), cell.runName) }
    }

    func testSweepErrorsReadTheSameThroughLocalizedDescription() {
        XCTAssertThrowsError(try SweepPresets.named("nope")) { error in
            XCTAssertEqual(error.localizedDescription, "\(error)")
            XCTAssertTrue(error.localizedDescription.contains("small-batch"), error.localizedDescription)
        }
    }
}
