import Foundation
import NormKit
import NormKitTraining
import XCTest

/// Spec §8's optimiser and schedule, checked against values computed here: the learning-rate schedule (linear warm-up
/// from `lr/25` to `lr` over the first 15 % of the steps, then cosine decay to 0) and weight decay `5e-4` on conv and
/// linear weights only, with PyTorch's SGD momentum.
final class SpecRecipeTests: XCTestCase {
    // MARK: Spec §8: the learning-rate schedule

    /// The default configuration's schedule over `T = 200` steps at batch 64 (`lr = 0.1 × 64/32 = 0.2`, warm-up
    /// `W = 15 % × 200 = 30` steps), step by step against the spec's formula written independently here:
    /// `lr/25·(1 − s/W) + lr·s/W` during warm-up and `lr·cos²(π/2 · (s − W)/(T − W))` after it (the same curve as
    /// `lr/2·(1 + cos(π·…))`), which reaches 0 at `s = T`, the end of the run. The key points are also checked as
    /// literals: step 0, mid-warm-up, the end of warm-up, mid-cosine and the last step.
    func testScheduleIsLinearWarmUpFromOneTwentyFifthThenCosineToZero() throws {
        var configuration = TrainingConfiguration()
        XCTAssertEqual(configuration.schedule, "cosine", "spec §8 default")
        XCTAssertEqual(configuration.warmupFraction, 0.15, "spec §8 default: warm-up over 15 % of the steps")
        configuration.batch = 64
        configuration.epochs = 2
        let schedule = try LearningRateSchedule(configuration, stepsPerEpoch: 100)
        let lr = 0.2, total = 200, warmup = 30
        XCTAssertEqual(schedule.peak, lr, accuracy: 1e-15, "lr = 0.1 × batch / 32")
        XCTAssertEqual(schedule.totalSteps, total)
        XCTAssertEqual(schedule.warmupSteps, warmup, "15 % of 200 steps")

        func expected(_ step: Int) -> Double {
            if step < warmup {
                let t = Double(step) / Double(warmup)
                return lr / 25 * (1 - t) + lr * t
            }
            let angle = Double.pi / 2 * Double(step - warmup) / Double(total - warmup)
            return lr * cos(angle) * cos(angle)
        }
        for step in 0...total {
            XCTAssertEqual(schedule.rate(at: step), expected(step), accuracy: 1e-12 * lr, "step \(step)")
        }
        // The key points, as numbers.
        XCTAssertEqual(schedule.rate(at: 0), 0.008, accuracy: 1e-15, "step 0: lr/25")
        XCTAssertEqual(schedule.rate(at: 15), 0.104, accuracy: 1e-15, "mid-warm-up: (lr/25 + lr)/2")
        XCTAssertEqual(schedule.rate(at: 29), 0.008 + 0.192 * 29 / 30, accuracy: 1e-15, "last warm-up step")
        XCTAssertEqual(schedule.rate(at: 30), 0.2, accuracy: 1e-15, "end of warm-up: lr")
        XCTAssertEqual(schedule.rate(at: 115), 0.1, accuracy: 1e-15, "mid-cosine (half-way from 30 to 200): lr/2")
        let last = 0.2 * pow(sin(Double.pi / 2 / 170), 2)  // cos²(π/2·169/170) = sin²(π/2/170)
        XCTAssertEqual(schedule.rate(at: total - 1), last, accuracy: 1e-15, "the last step (199)")
        XCTAssertLessThan(schedule.rate(at: total - 1), 2e-5, "the last step is within 1e-4·lr of 0")
        XCTAssertEqual(schedule.rate(at: total), 0, accuracy: 1e-15, "0 at the end of the run")
        // Shape: strictly increasing warm-up, non-increasing decay, never negative.
        for step in 1..<warmup { XCTAssertGreaterThan(schedule.rate(at: step), schedule.rate(at: step - 1)) }
        for step in (warmup + 1)...total {
            XCTAssertLessThanOrEqual(schedule.rate(at: step), schedule.rate(at: step - 1), "step \(step)")
            XCTAssertGreaterThanOrEqual(schedule.rate(at: step), 0)
        }
    }

    /// The default configuration (batch 32, 2 epochs of Fashion-MNIST's 60,000 images: 3,750 steps): the warm-up
    /// is 15 % of the steps (562.5, so 562 or 563), from `0.1/25` to `0.1`, and the last step is near 0.
    func testDefaultRunScheduleWarmsUpOverFifteenPercentOfTheSteps() throws {
        let configuration = TrainingConfiguration()
        let schedule = try LearningRateSchedule(configuration, stepsPerEpoch: 60_000 / 32)
        XCTAssertEqual(schedule.totalSteps, 3750)
        XCTAssertLessThanOrEqual(abs(Double(schedule.warmupSteps) - 562.5), 0.5, "\(schedule.warmupSteps)")
        XCTAssertEqual(schedule.rate(at: 0), 0.1 / 25, accuracy: 1e-15)
        XCTAssertEqual(schedule.rate(at: schedule.warmupSteps), 0.1, accuracy: 1e-15)
        let w = Double(schedule.warmupSteps), s = (w / 2).rounded(.down)
        XCTAssertEqual(schedule.rate(at: Int(s)), 0.1 / 25 + (0.1 - 0.1 / 25) * s / w, accuracy: 1e-15)
        let span = 3750 - w, angle = Double.pi / 2 * (span - 1) / span
        XCTAssertEqual(schedule.rate(at: 3749), 0.1 * cos(angle) * cos(angle), accuracy: 1e-15)
    }

    // MARK: Spec §8: weight decay 5e-4 on conv and linear weights only

    /// A conv (with a bias), a BatchNorm and a linear layer, every parameter set to non-zero values and given a zero
    /// gradient; two steps of the default SGD (momentum 0.9, weight decay 5e-4) at learning rates 0.1 then 0.05.
    /// PyTorch's SGD, simulated here in float64 (`g = ∇ + λ·w`, `v ← μ·v + g`, `w ← w − lr·v`): the conv and linear
    /// weights shrink, the first step by exactly `1 − 0.1·5e-4`, the second by the momentum-carried amount; the
    /// biases and BN's `γ`, `β` are bit-for-bit unchanged and keep zero velocity. With ``SGD/decayAllParameters``
    /// every parameter shrinks alike (the filter is the parameter's role, nothing else).
    func testWeightDecayShrinksOnlyConvAndLinearWeightsWithPyTorchMomentum() throws {
        let defaults = TrainingConfiguration()
        XCTAssertEqual(defaults.weightDecay, 5e-4, "spec §8")
        XCTAssertEqual(defaults.momentum, 0.9, "spec §8")
        XCTAssertFalse(defaults.decayAllParameters, "spec §8: weights only by default")

        for decayAll in [false, true] {
            var generator = SeededGenerator(seed: 0x5E08)
            let model = Sequential(
                try Conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, bias: true, generator: &generator),
                NormalizationModule(try BatchNorm(channels: 3)),
                try Linear(inFeatures: 3, outFeatures: 4, generator: &generator))
            let named = model.namedParameters()
            XCTAssertEqual(
                named.map { "\($0.name):\($0.parameter.role.rawValue)" },
                [
                    "0.weight:weight", "0.bias:bias", "1.weight:normalizationScale", "1.bias:normalizationShift",
                    "2.weight:weight", "2.bias:bias",
                ])
            for (_, p) in named {
                p.value = (0..<p.value.count).map { i in
                    let magnitude = Float(0.5 + 1.5 * Double((i * 7 + p.value.count) % 11) / 10)
                    return i % 2 == 0 ? magnitude : -magnitude
                }
                p.gradient = [Float](repeating: 0, count: p.value.count)
            }
            let sgd =
                decayAll
                ? SGD(parameters: model.parameters, decayAllParameters: true) : SGD(parameters: model.parameters)
            XCTAssertEqual(sgd.momentum, 0.9, "SGD's default momentum")
            XCTAssertEqual(sgd.weightDecay, 5e-4, "SGD's default weight decay")

            let initial = named.map { $0.parameter.value }
            var weights = initial.map { $0.map(Double.init) }
            var velocities = initial.map { [Double](repeating: 0, count: $0.count) }
            let (mu, lambda) = (0.9, Double(Float(5e-4)))
            for (stepIndex, lr) in [Float(0.1), 0.05].enumerated() {
                try sgd.step(learningRate: lr)
                for (index, (name, p)) in named.enumerated() {
                    let decayed = decayAll || p.role == .weight
                    let label = "\(name) (\(p.role)), step \(stepIndex + 1), decayAll \(decayAll)"
                    for i in 0..<p.value.count {
                        let g = 0 + (decayed ? lambda : 0) * weights[index][i]
                        velocities[index][i] = mu * velocities[index][i] + g
                        weights[index][i] -= Double(lr) * velocities[index][i]
                    }
                    if decayed {
                        for i in 0..<p.value.count {
                            let got = Double(p.value[i]), want = weights[index][i]
                            XCTAssertEqual(got, want, accuracy: 2e-7 * abs(want), "\(label) [\(i)]")
                        }
                        if stepIndex == 0 {
                            // The first step's factor, exactly 1 − lr·λ (to float rounding of w).
                            for i in 0..<p.value.count {
                                let factor = Double(p.value[i]) / Double(initial[index][i])
                                XCTAssertEqual(factor, 1 - 0.1 * lambda, accuracy: 2e-7, "\(label) [\(i)] factor")
                            }
                        }
                        XCTAssertTrue(
                            zip(p.value, initial[index]).allSatisfy { abs($0) < abs($1) }, "\(label): shrinks")
                    } else {
                        XCTAssertEqual(p.value, initial[index], "\(label): no weight decay")
                        XCTAssertTrue(sgd.velocities[index].allSatisfy { $0 == 0 }, "\(label): zero velocity")
                    }
                }
            }
        }
    }
}
