import NormKit

/// Data-parallel training: one ``Trainer`` per worker, all with the same configuration and seed, so every worker
/// draws the same shuffled, augmented SGD batch and trains on its own equal slice of it (worker `w` of `R` takes
/// samples `w·B/R ..< (w+1)·B/R`: every image is seen once per epoch). Worker 0's parameters are broadcast before
/// the first step; after each backward the gradients are summed over workers and divided by `R` (the gradient of
/// the batch's mean loss), so every worker takes the same SGD step. The batch's loss, correct count and any stop
/// request are summed too, so all workers stop, checkpoint and diverge together. Worker 0 alone writes the run's
/// directory (checkpoints, metrics, summary); every worker evaluates the whole test set (the same model gives the
/// same numbers).
///
/// Normalization across workers: per-worker BN (`--norm bn`, the papers' "images per GPU") normalizes each
/// worker's slice with its own statistics; the running statistics are averaged over workers after every step,
/// which is the update ghost batches of `B/R` make in one process. SyncBN (`--norm syncbn`) normalizes with the
/// global batch's statistics (``/NormKit/BatchNorm/crossWorkerReduction``). GN, LN and IN need nothing. BRN and
/// MABN keep per-worker running state (their parameters stay in step through the gradients).
extension Trainer {
    /// Makes this trainer one worker of `group`. Call it before ``resume(from:)`` and ``run()``.
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` when the SGD batch does not split into equal
    ///   per-worker batches.
    public func distribute(over group: DataParallelGroup) throws {
        let workers = group.workerCount, batch = configuration.batch
        guard workers >= 1, batch % workers == 0 else {
            throw TrainingError.invalidConfiguration(
                "the SGD batch \(batch) does not split into \(workers) equal per-worker batches (choose --batch as a multiple of the number of ranks)")
        }
        dataParallel = group
        gradientClock = TimedDataParallelGroup(group)
        statisticsClock = TimedDataParallelGroup(group)
        if configuration.norm == .syncbn {
            for layer in normalizationLayers { (layer as? BatchNorm)?.crossWorkerReduction = statisticsClock }
        }
    }

    /// The communication of the steps so far: the gradients' all-reduce, and the normalization layers' reductions
    /// (SyncBN's statistics, per-worker BN's running statistics), each as seconds, collectives and values
    /// contributed by this worker. Nil without data parallelism.
    public var communication: (gradients: TimedDataParallelGroup, statistics: TimedDataParallelGroup)? {
        guard let gradientClock, let statisticsClock else { return nil }
        return (gradientClock, statisticsClock)
    }

    /// Every normalization layer of the model.
    var normalizationLayers: [NormalizationLayer] {
        model.namedModules().compactMap { ($0.module as? NormalizationModule)?.layer }
    }

    /// This worker's samples of a batch of `batchSize` (all of them without data parallelism).
    func workerSampleRange(_ batchSize: Int) -> Range<Int> {
        guard let group = dataParallel else { return 0..<batchSize }
        let share = batchSize / group.workerCount
        return (group.workerIndex * share)..<((group.workerIndex + 1) * share)
    }

    /// This worker's images of the batch in `images` (the tensor itself without data parallelism) and their count.
    func workerBatch(_ images: Tensor, _ batchSize: Int) -> (Tensor, Int) {
        guard dataParallel != nil else { return (images, batchSize) }
        let range = workerSampleRange(batchSize)
        var shape = images.shape
        shape[0] = range.count
        workerImages.prepare(shape: shape, layout: images.layout)
        let perSample = images.count / max(images.batch, 1)
        images.withUnsafeBufferPointer { source in
            workerImages.withUnsafeMutableBufferPointer { target in
                target.baseAddress!.update(from: source.baseAddress! + range.lowerBound * perSample,
                                           count: range.count * perSample)
            }
        }
        return (workerImages, range.count)
    }

    /// The batch's mean loss, correct predictions, images and stop request over all workers (this worker's alone
    /// without data parallelism).
    func batchTotals(loss: Float, correct: Int, count: Int, stop: Bool)
        throws -> (loss: Double, correct: Int, count: Int, stop: Bool)
    {
        guard let group = dataParallel else { return (Double(loss), correct, count, stop) }
        stepTotals[0] = Double(loss) * Double(count)
        stepTotals[1] = Double(correct)
        stepTotals[2] = Double(count)
        stepTotals[3] = stop ? 1 : 0
        try stepTotals.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        return (stepTotals[0] / stepTotals[2], Int(stepTotals[1]), Int(stepTotals[2]), stepTotals[3] > 0)
    }

    /// Sums every parameter's gradient over the workers (one reduction of all of them) and divides by the number
    /// of workers.
    func averageGradientsOverWorkers() throws {
        guard let group = dataParallel, group.workerCount > 1 else { return }
        let parameters = model.parameters
        let total = parameters.reduce(0) { $0 + $1.gradient.count }
        if flatGradients.count != total { flatGradients = [Float](repeating: 0, count: total) }
        var offset = 0
        for p in parameters {
            let count = p.gradient.count
            p.gradient.withUnsafeBufferPointer { g in
                flatGradients.withUnsafeMutableBufferPointer { f in
                    (f.baseAddress! + offset).update(from: g.baseAddress!, count: count)
                }
            }
            offset += count
        }
        try flatGradients.withUnsafeMutableBufferPointer { try (gradientClock ?? group).allReduceSum($0) }
        let scale = 1 / Float(group.workerCount)
        offset = 0
        for p in parameters {
            let count = p.gradient.count
            flatGradients.withUnsafeBufferPointer { f in
                p.gradient.withUnsafeMutableBufferPointer { g in
                    for i in 0..<count { g[i] = f[offset + i] * scale }
                }
            }
            offset += count
        }
    }

    /// Per-worker BN: the running statistics averaged over the workers after each step (see the type's notes).
    func synchronizeRunningStatistics() throws {
        guard let group = dataParallel, group.workerCount > 1, configuration.norm == .bn else { return }
        for layer in normalizationLayers {
            try (layer as? BatchNorm)?.averageRunningStatistics(over: statisticsClock ?? group)
        }
    }

    /// Worker 0's parameters on every worker (identical seeds already agree; this makes it a guarantee).
    func broadcastInitialParameters() throws {
        guard let group = dataParallel, group.workerCount > 1 else { return }
        for p in model.parameters {
            try p.value.withUnsafeMutableBufferPointer { try group.broadcast($0, from: 0) }
        }
    }
}
