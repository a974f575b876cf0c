import Foundation

/// The learning rate as a function of the step.
public struct LearningRateSchedule: Equatable, Sendable {
    /// The shape after warm-up.
    public enum Decay: Equatable, Sendable {
        /// Cosine from the peak to 0 at step `totalSteps`, one past the last (PyTorch's convention: the last step runs
        /// at a small positive rate).
        case cosine
        /// Divide by 10 at each of these steps.
        case step(milestones: [Int])
    }

    /// The learning rate after warm-up.
    public var peak: Double
    /// Steps of linear warm-up from `peak / 25` to `peak`.
    public var warmupSteps: Int
    /// All steps of the run.
    public var totalSteps: Int
    /// What happens after warm-up.
    public var decay: Decay

    /// A schedule; `warmupSteps` is clamped to `0...totalSteps`.
    public init(peak: Double, warmupSteps: Int, totalSteps: Int, decay: Decay) {
        self.peak = peak
        self.totalSteps = max(1, totalSteps)
        self.warmupSteps = min(max(0, warmupSteps), self.totalSteps)
        self.decay = decay
    }

    /// The schedule of a training configuration with `stepsPerEpoch` steps per epoch (spec §8 by default:
    /// linear warm-up over the first 15 % of the steps from lr/25, then cosine to 0).
    public init(_ configuration: TrainingConfiguration, stepsPerEpoch: Int) {
        let total = configuration.epochs * stepsPerEpoch
        let decay: Decay =
            configuration.schedule == "step"
            ? .step(milestones: configuration.milestones.map { $0 * stepsPerEpoch }) : .cosine
        self.init(
            peak: configuration.peakLearningRate,
            warmupSteps: Int((configuration.warmupFraction * Double(total)).rounded()),
            totalSteps: total, decay: decay)
    }

    /// The learning rate for step `step` (0-based); with ``Decay/cosine``, 0 from `totalSteps` on. A negative step
    /// is before the run and gets step 0's rate, so the rate is never negative for a `peak` of 0 or more (the
    /// warm-up line would go below 0 before step 0).
    public func rate(at step: Int) -> Double {
        let step = max(0, step)
        if step < warmupSteps {
            let start = peak / 25
            return start + (peak - start) * Double(step) / Double(max(1, warmupSteps))
        }
        switch decay {
        case .cosine:
            // From `totalSteps` on the rate is 0, also when warm-up fills the run and the cosine has no span.
            let span = max(1, totalSteps - warmupSteps)
            let progress = step >= totalSteps ? 1 : min(1, Double(step - warmupSteps) / Double(span))
            return peak * 0.5 * (1 + cos(.pi * progress))
        case .step(let milestones):
            return peak * pow(0.1, Double(milestones.filter { step >= $0 }.count))
        }
    }
}
