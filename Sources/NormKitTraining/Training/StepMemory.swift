import Foundation
import NormKit
import Synchronization

/// The memory a training run's model needs at a batch size, measured rather than guessed, so that a batch too large
/// for this machine is refused with its numbers before the run starts instead of the process being killed by the
/// kernel at the first step (every block of such a run fits the per-block ``/NormKit/MemoryLimit``; their sum does
/// not).
///
/// A model holds its weights, and per image its activations, saved values and gradients, which its layers allocate at
/// their first step and reuse after: the heap (``/NormKit/MemoryLimit/heapBytesInUse()``) it holds after one
/// training step is close to `base + perImage · batch`. Two probe models of the run's kind, each built and stepped
/// once on zeros at 2 and 6 images, give the two numbers; the probes are freed before the run's model is built and
/// their result is kept per model kind for the process.
package struct StepMemory: Equatable, Sendable {
    /// The bytes that do not grow with the batch: weights, their gradients and optimizer-independent workspaces.
    package var baseBytes: Int
    /// The bytes each image of a training step adds.
    package var bytesPerImage: Int

    /// The images a step is probed at.
    static let probeBatches = (small: 2, large: 6)

    /// The bytes of a step of `batch` images (saturating).
    package func bytes(batch: Int) -> Int {
        let (perBatch, overflow) = bytesPerImage.multipliedReportingOverflow(by: max(0, batch))
        let (total, sumOverflow) = baseBytes.addingReportingOverflow(perBatch)
        return overflow || sumOverflow ? .max : total
    }

    /// The largest batch whose step fits in `bytes`, 0 when none does.
    package func largestBatch(fitting bytes: Int) -> Int {
        guard bytesPerImage > 0 else { return .max }
        return max(0, (bytes - baseBytes) / bytesPerImage)
    }

    private static let measured = Mutex<[String: StepMemory]>([:])

    /// The step memory of `configuration`'s model for images of `channels × height × width` and `classes` classes;
    /// nil where the heap cannot be measured or the probe model cannot be built or stepped (the run's own model then
    /// reports why). Measured once per model kind per process (under a lock: two trainers
    /// built at once do not count each other's probes).
    package static func measure(
        _ configuration: TrainingConfiguration, channels: Int, height: Int, width: Int, classes: Int
    ) -> StepMemory? {
        guard MemoryLimit.heapBytesInUse() != nil else { return nil }
        let c = configuration
        let key = [
            c.model, c.norm.rawValue, "\(c.groups ?? -1)", "\(c.groupSize ?? -1)", "\(c.mabnBuffer ?? -1)",
            "\(channels)", "\(height)", "\(width)", "\(classes)",
        ].joined(separator: " ")
        return measured.withLock { known in
            if let memory = known[key] { return memory }
            // A configuration the probe cannot build or step is left to the run's own model to report.
            guard let small = try? heapHeld(c, batch: probeBatches.small, channels, height, width, classes),
                let large = try? heapHeld(c, batch: probeBatches.large, channels, height, width, classes)
            else { return nil }
            let perImage = max(0, (large - small) / (probeBatches.large - probeBatches.small))
            let memory = StepMemory(
                baseBytes: max(0, small - perImage * probeBatches.small), bytesPerImage: perImage)
            known[key] = memory
            return memory
        }
    }

    /// The heap a fresh model of `configuration`'s kind holds after building and one training step on `batch` zero
    /// images (statistics over the whole probe batch; SyncBN probed as the BN it computes).
    package static func heapHeld(
        _ configuration: TrainingConfiguration, batch: Int, _ channels: Int, _ height: Int, _ width: Int,
        _ classes: Int
    ) throws -> Int {
        var probe = configuration
        probe.batch = batch
        probe.normBatch = nil
        if probe.norm == .syncbn { probe.norm = .bn }
        let before = MemoryLimit.heapBytesInUse() ?? 0
        let model = try makeModel(
            named: probe.model, normalization: try NormalizationSettings(probe, totalSteps: 1),
            inChannels: channels, classes: classes, seed: 0)
        let images = Tensor(zeros: [batch, channels, height, width])
        let labels = [Int32](repeating: 0, count: batch)
        let loss = SoftmaxCrossEntropy()
        var logitsGradient = Tensor(zeros: [0, 0])
        _ = try loss.forward(logits: try model.forward(images, training: true), labels: labels[...])
        try loss.backward(into: &logitsGradient)
        try model.backward(logitsGradient)
        let after = MemoryLimit.heapBytesInUse() ?? 0
        return withExtendedLifetime((model, images, loss, logitsGradient)) { max(0, after - before) }
    }
}
