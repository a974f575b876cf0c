import Foundation
import NormKit
import NormKitTraining
import XCTest

/// Spec §8's recipe as the trainer applies it to the layers it builds, checked against numbers computed here from the
/// spec's words: BRN's schedule scaled to the run's own length (§3), MABN's `S_buf = 32 / normBatch` with its paper
/// parameters and weight-centred convolutions everywhere (§4, §5), the learning rate `0.1 × batch / 32`.
final class SpecRecipeConformanceTests: XCTestCase {
    /// Every normalization layer of `trainer`'s model, and every convolution.
    private func parts(of trainer: Trainer) -> (norms: [NormalizationLayer], convs: [Conv2d]) {
        let modules = trainer.model.namedModules().map(\.module)
        return (
            modules.compactMap { ($0 as? NormalizationModule)?.layer },
            modules.compactMap { $0 as? Conv2d }
        )
    }

    private func trainer(_ norm: NormKind, batch: Int, normBatch: Int?, epochs: Int) throws -> Trainer {
        var c = TrainingConfiguration()
        c.model = "resnet8"
        c.norm = norm
        c.batch = batch
        c.normBatch = normBatch
        c.epochs = epochs
        c.seed = 3
        c.threads = 2
        let data = try TorchModelParityTests.syntheticData(count: 128, testCount: 16, size: 16, seed: 11)
        return try Trainer(
            configuration: c, train: data.0, test: data.1, output: nil, progress: ProgressReporter(style: .silent))
    }

    /// A BRN run of 3 epochs of 128 images at batch 16 is 24 SGD steps: every BatchRenorm layer the trainer builds has
    /// the paper's schedule scaled to those 24 steps (spec §3: warm-up to 5 % of the steps, `r_max` relaxed by 40 %,
    /// `d_max` by 25 %, here 1.2 → 1, 9.6 → 10 and 6 steps, to `r_max = 3`, `d_max = 5`), so that BRN leaves plain
    /// BN within the run; the learning rate is `0.1 × 16/32`. Its convolutions are ordinary (not centred).
    func testTrainerScalesTheBatchRenormScheduleToTheRunLength() throws {
        let t = try trainer(.brn, batch: 16, normBatch: nil, epochs: 3)
        let (norms, convs) = parts(of: t)
        let brn = norms.compactMap { $0 as? BatchRenorm }
        XCTAssertEqual(brn.count, norms.count)
        XCTAssertEqual(brn.count, 9)  // stem, 2 per block, 2 downsample shortcuts
        for layer in brn {
            XCTAssertEqual(layer.schedule.warmupSteps, 1)
            XCTAssertEqual(layer.schedule.rSteps, 10)
            XCTAssertEqual(layer.schedule.dSteps, 6)
            XCTAssertEqual(layer.schedule.rMax, 3)
            XCTAssertEqual(layer.schedule.dMax, 5)
            XCTAssertEqual(layer.momentum, 0.01)
        }
        // After warm-up the limits move: by the last step both are fully relaxed.
        XCTAssertTrue(brn[0].schedule.limits(step: 24) == (3, 5))
        XCTAssertEqual(t.configuration.peakLearningRate, 0.05, accuracy: 1e-15)
        XCTAssertFalse(convs.isEmpty)
        XCTAssertTrue(convs.allSatisfy { !$0.centred })
    }

    /// An MABN run at batch 16 with `normBatch = 4` simulates a batch of 32 (spec §8): every MABN layer has
    /// `S_buf = 32 / 4 = 8`, iterations of 4 samples, the paper's `ε = 1e-5`, EMA weight 0.98 on the old value and
    /// warm-up 100; every convolution, the stem's and the shortcuts' included, is weight-centred (spec §5).
    func testTrainerBuildsMABNWithTheRecipeBufferAndCentredConvolutions() throws {
        let t = try trainer(.mabn, batch: 16, normBatch: 4, epochs: 1)
        let (norms, convs) = parts(of: t)
        let mabn = norms.compactMap { $0 as? MovingAverageBatchNorm }
        XCTAssertEqual(mabn.count, 9)
        XCTAssertEqual(mabn.count, norms.count)
        for layer in mabn {
            XCTAssertEqual(layer.bufferSize, 8)
            XCTAssertEqual(layer.normBatch, 4)
            XCTAssertEqual(layer.epsilon, 1e-5)
            XCTAssertEqual(layer.oldValueWeight, 0.98)
            XCTAssertEqual(layer.warmup, 100)
            XCTAssertEqual(layer.parts, .paper)
        }
        XCTAssertEqual(convs.count, 9)  // stem, 2 per block, 2 shortcuts
        XCTAssertTrue(convs.allSatisfy(\.centred))
    }
}
