import NormKit

/// Data-parallel training: one ``Trainer`` per worker (MPI ranks through `NormKitDistributed`, or threads of one
/// process through ``InProcessWorkerGroup``), all with the same configuration and seed, so every worker
/// draws the same shuffled, augmented SGD batch and trains on its own equal slice of it (worker `w` of `R` takes
/// samples `w·B/R ..< (w+1)·B/R`: every image is seen once per epoch). Worker 0's parameters are broadcast before
/// the first step; each worker divides its loss gradient by `R` and after the backward the gradients are summed
/// over workers (the gradient of the batch's mean loss, and inside the network the gradients one process computes
/// over the whole batch), so every worker takes the same SGD step. The batch's loss, correct count and any stop
/// request are summed too, so all workers stop, checkpoint and diverge together. Worker 0 alone writes the run's
/// directory (checkpoints, metrics, summary). Evaluation is sharded: worker `w` evaluates its contiguous share of
/// the test set and the sums (loss, errors, per-class counts) are added over workers, so every worker reports the
/// numbers of the whole test set.
///
/// Normalization across workers: per-worker BN (`--norm bn`, the papers' "images per GPU") normalizes each
/// worker's slice with its own statistics; the running statistics are averaged over workers after every step,
/// which is the update ghost batches of `B/R` make in one process. SyncBN (`--norm syncbn`) normalizes with the
/// global batch's statistics (``/NormKit/BatchNorm/crossWorkerReduction``). MABN continues one sequence of
/// iterations over the workers' batches, worker after worker, as ghost chunks in one process
/// (``/NormKit/MovingAverageBatchNorm/crossWorkerReduction``): every worker keeps the same state. Per-worker BRN
/// averages its running mean and standard deviation like BN (the ghost-batch update). GN, LN and IN need nothing.
///
/// The per-worker normalizations (BN, BRN, MABN) need a normalization batch that divides the per-worker batch:
/// ``TrainingConfiguration/perWorker(workers:)`` makes the default (the whole per-worker batch) explicit, so that
/// the checkpoint says what was trained and a resume in one process uses ghost batches of the same size.
extension Trainer {
    /// Makes this trainer one worker of `group`. Call it before ``run()``, and before ``resume(from:)`` on every
    /// worker but worker 0 (whose resume is the same either way: it locks and writes the run, as a single process's
    /// does; ``ThreadedRun`` resumes it first).
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` when the SGD batch does not split into equal
    ///   per-worker batches.
    public func distribute(over group: DataParallelGroup) throws {
        let workers = group.workerCount, batch = configuration.batch
        guard workers >= 1, batch % workers == 0 else {
            throw TrainingError.invalidConfiguration(
                "the SGD batch \(batch) does not split into \(workers) equal per-worker batches (choose --batch as a multiple of the number of ranks)"
            )
        }
        let perWorker = batch / workers, normBatch = configuration.normBatch ?? batch
        if configuration.norm == .syncbn && configuration.normBatch != nil {
            throw TrainingError.invalidConfiguration(
                "SyncBN normalizes over the whole SGD batch of all workers; drop --norm-batch")
        }
        if [.bn, .brn, .mabn].contains(configuration.norm) && perWorker % normBatch != 0 {
            throw TrainingError.invalidConfiguration(
                "each of the \(workers) workers normalizes its own \(perWorker) images, so the normalization batch \(normBatch) must divide \(perWorker) (use --norm-batch \(perWorker) or a divisor of it, or --norm syncbn)"
            )
        }
        dataParallel = group
        let images = test.count, worker = group.workerIndex
        testShard =
            workers > 1 && images >= workers
            ? try test.samples((worker * images / workers)..<((worker + 1) * images / workers)) : nil
        gradientClock = TimedDataParallelGroup(group)
        statisticsClock = TimedDataParallelGroup(group)
        for layer in normalizationLayers {
            switch (configuration.norm, layer) {
            case (.syncbn, let layer as BatchNorm): layer.crossWorkerReduction = statisticsClock
            case (.mabn, let layer as MovingAverageBatchNorm): layer.crossWorkerReduction = statisticsClock
            default: break
            }
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
                target.baseAddress!.update(
                    from: source.baseAddress! + range.lowerBound * perSample,
                    count: range.count * perSample)
            }
        }
        return (workerImages, range.count)
    }

    /// The batch's mean loss, correct predictions, images and stop request over all workers (this worker's alone
    /// without data parallelism).
    func batchTotals(
        loss: Float, correct: Int, count: Int, stop: Bool
    )
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

    /// Turns the gradient of this worker's mean loss into its share of the gradient of the whole batch's mean
    /// loss (divides by the number of workers), so that every gradient inside the network, and every statistic a
    /// layer keeps of it (MABN's `Ψ` buffer), is what one process computes over the whole batch.
    func scaleToGlobalBatch(_ gradient: inout Tensor) {
        guard let group = dataParallel, group.workerCount > 1 else { return }
        let scale = 1 / Float(group.workerCount)
        gradient.withUnsafeMutableBufferPointer { g in
            for i in g.indices { g[i] *= scale }
        }
    }

    /// Sums every parameter's gradient over the workers (one reduction of all of them): with
    /// ``scaleToGlobalBatch(_:)`` the gradient of the whole batch's mean loss.
    func sumGradientsOverWorkers() throws {
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
        offset = 0
        for p in parameters {
            let count = p.gradient.count
            flatGradients.withUnsafeBufferPointer { f in
                p.gradient.withUnsafeMutableBufferPointer { g in
                    g.baseAddress!.update(from: f.baseAddress! + offset, count: count)
                }
            }
            offset += count
        }
    }

    /// This worker's evaluation of its `shard` of the test set, summed over the workers.
    func evaluateSharded(_ shard: Dataset) throws -> Evaluation {
        var totals = try EvaluationTotals(model: model, on: shard, batchSize: 500)
        guard let group = dataParallel else { return totals.evaluation }
        let classes = totals.countPerClass.count
        var sums =
            [totals.lossSum, Double(totals.wrong)] + totals.correctPerClass.map(Double.init)
            + totals.countPerClass.map(Double.init)
        try sums.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        totals.lossSum = sums[0]
        totals.wrong = Int(sums[1])
        totals.correctPerClass = sums[2..<(2 + classes)].map { Int($0) }
        totals.countPerClass = sums[(2 + classes)...].map { Int($0) }
        return totals.evaluation
    }

    /// Per-worker BN and BRN: the running statistics averaged over the workers after each step (see the type's
    /// notes).
    func synchronizeRunningStatistics() throws {
        guard let group = dataParallel, group.workerCount > 1 else { return }
        for layer in normalizationLayers {
            switch (configuration.norm, layer) {
            case (.bn, let layer as BatchNorm): try layer.averageRunningStatistics(over: statisticsClock ?? group)
            case (.brn, let layer as BatchRenorm): try layer.averageRunningStatistics(over: statisticsClock ?? group)
            default: break
            }
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

extension TrainingConfiguration {
    /// This configuration for a data-parallel run on `workers` workers: per-worker BN, BRN and MABN normalize each
    /// worker's `batch / workers` images, so an unset ``normBatch`` becomes that number (recorded in the checkpoint;
    /// MABN's default buffer follows it). Other normalizations, one worker, or a batch that does not split are left
    /// as they are (``Trainer/distribute(over:)`` refuses the last).
    public func perWorker(workers: Int) -> TrainingConfiguration {
        var c = self
        if workers > 1, normBatch == nil, batch % workers == 0, [.bn, .brn, .mabn].contains(norm) {
            c.normBatch = batch / workers
        }
        return c
    }
}
