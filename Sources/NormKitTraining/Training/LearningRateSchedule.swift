import Foundation

/// The learning rate as a function of the step.
///
/// Its arguments are checked when it is made (``init(peak:warmupSteps:totalSteps:decay:)``), so every schedule has a
/// positive finite peak and at least one step; its properties are read-only.
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
    public private(set) var peak: Double
    /// Steps of linear warm-up from `peak / 25` to `peak`.
    public private(set) var warmupSteps: Int
    /// All steps of the run.
    public private(set) var totalSteps: Int
    /// What happens after warm-up.
    public private(set) var decay: Decay

    /// A schedule of `totalSteps` steps: linear warm-up from `peak / 25` over the first `warmupSteps`, then
    /// `decay` from `peak`.
    ///
    /// - Parameters:
    ///   - peak: the learning rate after warm-up, a positive finite number.
    ///   - warmupSteps: the steps of warm-up, at least 0; more than `totalSteps` is clamped to `totalSteps` (a
    ///     warm-up that fills the run).
    ///   - totalSteps: all steps of the run, at least 1.
    ///   - decay: what happens after warm-up; ``Decay/step(milestones:)``'s milestones are steps, at least 0 (one
    ///     past the run is never reached).
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer
    ///   `"LearningRateSchedule"`) naming the first argument out of range: `peak` that is 0, negative, infinite or
    ///   NaN, a negative `warmupSteps`, a `totalSteps` below 1, or a negative milestone (name `"milestones"`).
    public init(peak: Double, warmupSteps: Int, totalSteps: Int, decay: Decay) throws {
        guard peak > 0, peak.isFinite else {
            throw Self.refuse("peak", peak, "a positive finite number (the learning rate after warm-up)")
        }
        guard warmupSteps >= 0 else { throw Self.refuse("warmupSteps", warmupSteps, "at least 0") }
        guard totalSteps >= 1 else { throw Self.refuse("totalSteps", totalSteps, "at least 1") }
        if case .step(let milestones) = decay, let negative = milestones.first(where: { $0 < 0 }) {
            throw Self.refuse("milestones", negative, "steps, at least 0")
        }
        self.peak = peak
        self.totalSteps = totalSteps
        self.warmupSteps = min(warmupSteps, totalSteps)
        self.decay = decay
    }

    /// The schedule of a training configuration with `stepsPerEpoch` steps per epoch (spec §8 by default:
    /// linear warm-up over the first 15 % of the steps from lr/25, then cosine to 0).
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer
    ///   `"LearningRateSchedule"`) for `stepsPerEpoch` below 1, a `schedule` other than `cosine` and `step`, a
    ///   `warmupFraction` outside `[0, 1]`, steps or milestone steps beyond `Int`, or the error of
    ///   ``init(peak:warmupSteps:totalSteps:decay:)`` for the peak learning rate
    ///   (``TrainingConfiguration/peakLearningRate``), the steps or the milestones.
    ///   ``TrainingConfiguration/validate(source:)`` refuses all of these in a configuration first, naming its flag.
    public init(_ configuration: TrainingConfiguration, stepsPerEpoch: Int) throws {
        guard stepsPerEpoch >= 1 else { throw Self.refuse("stepsPerEpoch", stepsPerEpoch, "at least 1") }
        let fraction = configuration.warmupFraction
        guard fraction >= 0, fraction <= 1 else { throw Self.refuse("warmupFraction", fraction, "in [0, 1]") }
        func steps(_ name: String, epochs: Int) throws -> Int {
            let (product, overflow) = epochs.multipliedReportingOverflow(by: stepsPerEpoch)
            guard !overflow else {
                throw Self.refuse(name, epochs, "epochs whose steps (× \(stepsPerEpoch) per epoch) fit in Int")
            }
            return product
        }
        let total = try steps("epochs", epochs: configuration.epochs)
        let decay: Decay
        switch configuration.schedule {
        case "cosine": decay = .cosine
        case "step": decay = .step(milestones: try configuration.milestones.map { try steps("milestones", epochs: $0) })
        default: throw Self.refuse("schedule", configuration.schedule, "cosine or step")
        }
        try self.init(
            peak: configuration.peakLearningRate, warmupSteps: Int((fraction * Double(total)).rounded()),
            totalSteps: total, decay: decay)
    }

    private static func refuse(_ name: String, _ value: Any, _ expected: String) -> NormalizationError {
        .invalidArgument(layer: "LearningRateSchedule", name: name, value: "\(value)", expected: expected)
    }

    /// The learning rate for step `step` (0-based); with ``Decay/cosine``, 0 from `totalSteps` on. A negative step
    /// is before the run and gets step 0's rate, so the rate is never negative (the warm-up line would go below 0
    /// before step 0).
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
