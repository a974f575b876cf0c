import Dispatch
import Foundation
import Synchronization

/// Set to the signal number by SIGINT or SIGTERM; the trainer checks it after every step.
/// Kept `nonisolated(unsafe)`: a signal handler may only touch a plain `sig_atomic_t` global (no lock, no lazy init).
nonisolated(unsafe) private var interruptRequested: sig_atomic_t = 0
/// The signal behind ``Trainer/lastInterruptSignal`` (0: none), set by the trainer after it stopped.
private let interruptSignalSeen = Atomic<Int32>(0)

/// Trains one model with one configuration: SGD steps over shuffled, augmented batches, an evaluation on the
/// test set after every epoch, `metrics.jsonl`, `summary.json` and checkpoints in the output directory.
///
/// The same configuration and seed give the same numbers (all kernels split work deterministically), and
/// ``resume(from:)`` continues a saved run exactly where it stopped.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let normalization: NormalizationSettings
    public let model: Model
    public let optimizer: SGD
    public let schedule: LearningRateSchedule
    public let train: Dataset
    public let test: Dataset
    /// Where records and checkpoints go (nil: nowhere).
    public let output: URL?
    /// How progress is shown.
    public var progress: ProgressReporter
    /// Stop (with a checkpoint) after this many steps in total, as if interrupted; for tests and time-boxed runs.
    public var stopAfterStep: Int?
    /// Save a checkpoint every this many steps as well as at every epoch's end (nil or 0: only at epoch ends).
    public var checkpointEverySteps: Int?
    /// Let a new (not resumed) run replace a run already in ``output``: its checkpoint, states and records are set
    /// aside, deleted once the new run has written its first checkpoint, and put back if it stops before (an error,
    /// a divergence). Off by default: ``run()`` then refuses with ``TrainingError/runExists(path:state:)``.
    public var replacesExistingRun = false
    /// A training loss above this (or not finite) stops the run as diverged. Cross-entropy starts near
    /// `ln(classes)` (2.3 for 10 classes); a mean above 1,000 is far past any recovering run.
    public var divergenceLossBound: Float = 1_000
    /// A weight above this in magnitude (or not finite) at a checkpoint stops the run as diverged instead of
    /// being saved. Trained conv nets keep weights of order 1.
    public var divergenceWeightBound: Float = 10_000
    /// How the model's convolutions compute (default ``ConvolutionEngine/preferred``); not part of the run's
    /// identity (results agree within float rounding), recorded in `summary.json`.
    public var convolutionEngine: ConvolutionEngine = .preferred {
        didSet { model.useConvolutionEngine(convolutionEngine) }
    }
    /// What the run is trained on (recorded in checkpoints and `summary.json`).
    public let dataRecord: DataRecord
    /// The step of the last checkpoint written or resumed from.
    public private(set) var lastCheckpointStep: Int?
    private var lock: RunDirectoryLock?

    public private(set) var step = 0
    public private(set) var history: [EpochMetrics] = []
    /// Each step's training loss (in memory, for tests and curves).
    public private(set) var stepLosses: [Float] = []
    let batches: BatchIterator
    let stepsPerEpoch: Int
    private let loss = SoftmaxCrossEntropy()
    private var images = Tensor(zeros: [0, 0])
    private var labels32: [Int32] = []
    private var logitsGradient = Tensor(zeros: [0, 0])
    private var epochLossSum = 0.0, epochCorrect = 0, epochImages = 0
    /// Running-statistic updates the normalization layers skipped in the unfinished epoch, over all workers
    /// (``countSkippedUpdates()``), and the model's layers' own count when last added to it.
    private var epochSkippedUpdates = 0, layerSkipsCounted = 0
    private var elapsedBefore = 0.0, epochTrainingSeconds = 0.0
    /// Data-parallel training (``distribute(over:)``): the workers, and this worker's slice of each batch.
    var dataParallel: DataParallelGroup?
    var gradientClock: TimedDataParallelGroup?
    var statisticsClock: TimedDataParallelGroup?
    var workerImages = Tensor(zeros: [0, 0])
    var workerLabels: [Int32] = []
    var flatGradients: [Float] = []
    var stepTotals: [Double] = [0, 0, 0, 0]
    /// This worker's contiguous share of the test set (nil: the whole of it).
    var testShard: Dataset?
    /// Whether this process writes the run's files (the only process, or worker 0 of a data-parallel run).
    var writesRun: Bool { (dataParallel?.workerIndex ?? 0) == 0 }

    /// A trainer for `configuration` on `train`, evaluated on `test`.
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` naming the bad field, or the model's construction
    ///   error (for example GN groups that do not divide a stage's width).
    public init(
        configuration: TrainingConfiguration, train: Dataset, test: Dataset, output: URL?,
        progress: ProgressReporter = ProgressReporter()
    ) throws {
        let c = configuration.resolved
        do { try c.validate() } catch let error as ConfigurationError {
            throw TrainingError.invalidConfiguration(error.description)
        }
        guard train.count >= c.batch else {
            throw TrainingError.invalidConfiguration(
                "the training set has \(train.count) images, fewer than one batch of \(c.batch)")
        }
        stepsPerEpoch = train.count / c.batch
        // The schedule checks the learning rate (and its other arguments) for the trainer.
        do {
            schedule = try LearningRateSchedule(c, stepsPerEpoch: stepsPerEpoch)
        } catch let error as NormalizationError {
            throw TrainingError.invalidConfiguration(error.description)
        }
        try Self.checkStepMemory(c, train: train, test: test, available: MemoryLimit.availableBytes())
        self.configuration = c
        self.dataRecord = DataRecord(train: train, test: test)
        self.train = train
        self.test = test
        self.output = output
        self.progress = progress
        let totalSteps = stepsPerEpoch * c.epochs
        normalization = try NormalizationSettings(c, totalSteps: totalSteps)
        model = try makeModel(
            named: c.model, normalization: normalization, inChannels: train.channels,
            classes: train.classCount, seed: c.seed)
        optimizer = SGD(
            parameters: model.parameters, momentum: Float(c.momentum), weightDecay: Float(c.weightDecay),
            decayAllParameters: c.decayAllParameters)
        batches = try BatchIterator(
            dataset: train, batchSize: c.batch, shuffle: true, dropLast: true,
            augmentation: c.augment ? .standard(for: train) : nil, seed: c.seed)
    }

    /// Refuses a configuration whose training step (or evaluation batch) needs more memory than `available`, measured
    /// on probe steps of its model (``StepMemory``): every block of such a run fits in memory, their sum does not,
    /// and the kernel would kill the process at its first step.
    ///
    /// - Throws: ``TrainingError/notEnoughMemory(model:batch:bytes:available:largestBatch:)``.
    package static func checkStepMemory(
        _ c: TrainingConfiguration, train: Dataset, test: Dataset, available: Int
    ) throws {
        let evaluationBatch = min(500, test.count)
        guard
            let memory = StepMemory.measure(
                c, channels: train.channels, height: train.height, width: train.width, classes: train.classCount)
        else { return }
        let bytes = memory.bytes(batch: max(c.batch, evaluationBatch))
        guard bytes > available else { return }
        throw TrainingError.notEnoughMemory(
            model: "\(c.model) with \(c.norm.rawValue)", batch: c.batch, bytes: bytes, available: available,
            largestBatch: memory.largestBatch(fitting: available))
    }

    /// Restores model, optimizer, data position and history from a checkpoint written by this configuration.
    ///
    /// - Throws: ``TrainingError/nothingToResume(_:)``, ``TrainingError/runDirectoryLocked(path:pid:)`` while
    ///   another process writes the directory, ``TrainingError/invalidConfiguration(_:)`` for a run of another
    ///   configuration, ``TrainingError/dataMismatch(directory:recorded:given:)`` when the checkpoint records
    ///   other data than this trainer's, and checkpoint reading errors.
    public func resume(from directory: URL) throws {
        let modelURL = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        guard FileManager.default.fileExists(atPath: modelURL.path) else {
            throw TrainingError.nothingToResume(directory.path)
        }
        if writesRun { try acquireLock(directory) }
        let file = try TrainingCheckpoint.read(at: modelURL)
        var saved = file.configuration
        saved.threads = configuration.threads
        guard saved == configuration else {
            throw TrainingError.invalidConfiguration(
                "\(directory.path) was trained with another configuration (\(saved.differences(from: configuration).joined(separator: "; "))); resume it with its own (normkit train --resume)"
            )
        }
        if let recorded = file.data?.source, let given = dataRecord.source, recorded.fingerprint != given.fingerprint {
            throw TrainingError.dataMismatch(
                directory: directory.path, recorded: "\(recorded.directory) (fingerprint \(recorded.fingerprint))",
                given: "\(given.directory) (fingerprint \(given.fingerprint))")
        }
        let state = try TrainingCheckpoint.load(into: model, optimizer: optimizer, from: directory)
        try checkReachable(state, in: directory)
        try batches.seek(to: state.position)
        step = state.step
        history = state.history
        epochLossSum = state.epochLossSum
        epochCorrect = state.epochCorrect
        epochImages = state.epochImages
        epochSkippedUpdates = state.epochSkippedUpdates ?? 0
        elapsedBefore = state.elapsedSeconds
        epochTrainingSeconds = state.epochTrainingSeconds
        lastCheckpointStep = state.step
        resumed = true
    }

    private var resumed = false

    /// Refuses a training state this configuration cannot have written (an edited or hostile file): its step must be
    /// its position's (epoch · steps per epoch + batch, within the run's epochs), its epoch's counts at most one
    /// epoch's images, its sums of loss and seconds finite and 0 or more, and its history the records of the epochs
    /// before its position, each with numbers a run writes (finite, errors in 0…1). The counters then stay far from
    /// overflowing as the run counts on, and the run's records stay one per epoch.
    private func checkReachable(_ state: TrainingCheckpoint.TrainingState, in directory: URL) throws {
        let (p, c) = (state.position, configuration)
        let (stepsBefore, overflow) = p.epoch.multipliedReportingOverflow(by: stepsPerEpoch)
        var problem: String?
        if !(0...c.epochs).contains(p.epoch) || !(0...stepsPerEpoch).contains(p.batchIndex) || overflow
            || state.step != stepsBefore + p.batchIndex
        {
            problem =
                "step \(state.step) at epoch \(p.epoch), batch \(p.batchIndex): a run of \(c.epochs) epochs of "
                + "\(stepsPerEpoch) steps is at step epoch · \(stepsPerEpoch) + batch"
        } else if !(0...train.count).contains(state.epochImages)
            || !(0...state.epochImages).contains(state.epochCorrect)
        {
            problem =
                "\(state.epochCorrect) correct of \(state.epochImages) images this epoch, for an epoch of "
                + "\(train.count) images"
        } else if let skipped = state.epochSkippedUpdates, skipped < 0 {
            problem = "\(skipped) skipped running-statistic updates this epoch: a count is 0 or more"
        } else if ![state.epochLossSum, state.elapsedSeconds, state.epochTrainingSeconds].allSatisfy({
            $0.isFinite && $0 >= 0
        }) {
            // A run stops as diverged before a loss is not finite; a sum of losses or of seconds is 0 or more.
            problem =
                "loss sum \(state.epochLossSum), \(state.elapsedSeconds) s elapsed, \(state.epochTrainingSeconds) s "
                + "training this epoch: each is a finite number, 0 or more"
        } else if state.history.map(\.epoch) != Array(0..<p.epoch)
            || state.history.contains(where: { $0.step != ($0.epoch + 1) * stepsPerEpoch })
        {
            // The records of the epochs before the position, as the run appended them: anything else would be
            // carried into metrics.jsonl and summary.json as the run's own.
            problem =
                "\(state.history.count) epoch record(s) (epochs \(state.history.map(\.epoch)), steps "
                + "\(state.history.map(\.step))) at epoch \(p.epoch): a run has one per epoch before it, epoch e "
                + "ending at step (e + 1) · \(stepsPerEpoch)"
        } else if let record = state.history.first(where: { !Self.isRecordable($0) }) {
            // A run stops as diverged before it records a loss that is not finite; anything else would be carried
            // into metrics.jsonl, summary.json and the reports as the run's own numbers.
            problem =
                "epoch \(record.epoch)'s record (train loss \(record.trainLoss), error \(record.trainError); test "
                + "loss \(record.testLoss), error \(record.testError); learning rate \(record.learningRate); "
                + "\(record.seconds) s; \(record.imagesPerSecond) images/s; skipped updates "
                + "\(record.skippedUpdates.map(String.init) ?? "none")): losses, seconds, images/s and counts are "
                + "finite and 0 or more, errors between 0 and 1"
        }
        if let problem {
            throw CheckpointError.unreadableMetadata(
                path: directory.appendingPathComponent(
                    TrainingCheckpoint.stateFileName(step: state.step)
                ).path, field: "state", reason: problem)
        }
    }

    /// Whether `record` holds numbers a run can have written: the run stops as diverged before a loss is not finite.
    private static func isRecordable(_ record: EpochMetrics) -> Bool {
        let nonNegative = [record.trainLoss, record.testLoss, record.seconds, record.imagesPerSecond]
        return nonNegative.allSatisfy { $0.isFinite && $0 >= 0 } && (0...1).contains(record.trainError)
            && (0...1).contains(record.testError) && record.learningRate.isFinite && (record.skippedUpdates ?? 0) >= 0
    }

    /// Locks `directory` for this trainer (once) and removes temporary files of writers that died.
    private func acquireLock(_ directory: URL) throws {
        guard lock == nil else { return }
        let lock = try RunDirectoryLock.acquire(directory)
        self.lock = lock
        if let pid = lock.previousHolder {
            progress.message("note: \(directory.path) was last locked by pid \(pid), which has exited; taking it over")
        }
        for name in RunDirectory.removeStaleTemporaryFiles(in: directory) {
            progress.message("removed \(name), a temporary file of a writer that died")
        }
        // A replacing run that died (kill -9) before its first checkpoint left the run it replaced set aside: put
        // it back; one that died after it left the set-aside copy only.
        let aside = directory.appendingPathComponent(RunDirectory.replacedRunFolderName)
        if FileManager.default.fileExists(atPath: aside.path) {
            if FileManager.default.fileExists(
                atPath: directory.appendingPathComponent(TrainingCheckpoint.modelFileName).path)
            {
                RunDirectory.discardRunSetAside(in: directory)
            } else {
                try RunDirectory.restoreRunSetAside(in: directory)
                progress.message(
                    "put back the run in \(directory.path) that a replacing run, stopped before its first "
                        + "checkpoint, had set aside")
            }
        }
    }

    /// Installs SIGINT and SIGTERM handlers that make running trainers save a checkpoint and stop after the
    /// current step (a second signal quits at once).
    public static func stopOnInterrupt() {
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber) { received in
                if interruptRequested != 0 { _exit(128 + received) }
                interruptRequested = received
            }
        }
    }

    /// The signal that stopped the last interrupted run (SIGINT or SIGTERM), for the exit code `128 + signal`;
    /// nil when it stopped at ``stopAfterStep``.
    public private(set) static var lastInterruptSignal: Int32? {
        get {
            let signal = interruptSignalSeen.load(ordering: .relaxed)
            return signal == 0 ? nil : signal
        }
        set { interruptSignalSeen.store(newValue ?? 0, ordering: .relaxed) }
    }

    /// Trains until the last epoch (or an interruption), evaluating after each epoch.
    ///
    /// - Returns: the summary (also written to `summary.json` when finished).
    /// - Throws: ``TrainingError/interrupted(step:directory:)`` after saving a checkpoint on Ctrl-C or at
    ///   ``stopAfterStep``.
    @discardableResult
    public func run() throws -> RunSummary {
        let c = configuration
        // In-process replicas each run on one thread: the cores are theirs (one owner at a time).
        Parallelism.threadCount = dataParallel is InProcessWorkerGroup.Worker ? 1 : c.threads
        BLAS.setThreads(1)
        defer { lock?.release(); lock = nil }
        if let output, writesRun {
            try acquireLock(output)
            if !resumed {
                let contents = RunDirectory.contents(of: output)
                if contents != .empty {
                    guard replacesExistingRun else {
                        if case .unreadableCheckpoint(let reason) = contents {
                            throw TrainingError.unreadableRun(path: output.path, reason: reason)
                        }
                        throw TrainingError.runExists(path: output.path, state: Self.describe(contents))
                    }
                    try RunDirectory.setRunAside(in: output)
                    replacedRunIsAside = true
                }
            }
        }
        do {
            if let output, writesRun {
                // Before any step: the run's files must be ones a save may replace (a regular file or a link to
                // one, never a pipe or a device left under the name), or the first save would fail after an epoch.
                for name in [TrainingCheckpoint.modelFileName, "metrics.jsonl", "summary.json"] {
                    _ = try AtomicFile.resolvedDestination(of: output.appendingPathComponent(name))
                }
            }
            return try trainAndEvaluate()
        } catch {
            if replacedRunIsAside, let output {
                replacedRunIsAside = false
                do {
                    try RunDirectory.restoreRunSetAside(in: output)
                    progress.message("put back the run this one was to replace in \(output.path) (no new checkpoint)")
                } catch let restoring {
                    progress.message(
                        "could not put back the replaced run: \(restoring); it is in "
                            + "\(output.appendingPathComponent(RunDirectory.replacedRunFolderName).path)")
                }
            }
            throw error
        }
    }

    /// Whether the run this one replaces is set aside in ``output`` (``RunDirectory/setRunAside(in:)``) until the
    /// first checkpoint.
    private var replacedRunIsAside = false

    /// The loop of ``run()`` once the run directory is locked.
    private func trainAndEvaluate() throws -> RunSummary {
        let c = configuration
        try broadcastInitialParameters()
        layerSkipsCounted = layerSkippedUpdates
        let start = DispatchTime.now().uptimeNanoseconds
        func now() -> Double { elapsedBefore + Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        var lastEvaluation: Evaluation?
        while batches.epoch < c.epochs {
            let epoch = batches.epoch
            var segmentStart = DispatchTime.now().uptimeNanoseconds
            let imagesAtSegmentStart = epochImages
            while let batchSize = batches.next(into: &images, labels: &labels32) {
                let rate = schedule.rate(at: step)
                // This worker's samples of the batch (all of it without data parallelism).
                let (input, n) = workerBatch(images, batchSize)
                let firstLabel = dataParallel == nil ? 0 : workerSampleRange(batchSize).lowerBound
                let logits = try model.forward(input, training: true)
                let localValue = try loss.forward(logits: logits, labels: labels32[firstLabel..<firstLabel + n])
                // The batch's mean loss, correct count and stop request over all workers: every worker decides
                // alike whether to stop or to call the run diverged.
                let totals = try batchTotals(
                    loss: localValue, correct: loss.correctCount, count: n,
                    stop: interruptRequested != 0 || step + 1 == stopAfterStep)
                let value = Float(totals.loss)
                guard value.isFinite, value <= divergenceLossBound else {
                    throw TrainingError.diverged(
                        step: step + 1, what: "loss \(value)",
                        lastCheckpointStep: lastCheckpointStep, directory: output?.path)
                }
                try loss.backward(into: &logitsGradient)
                scaleToGlobalBatch(&logitsGradient)
                try model.backward(logitsGradient)
                try sumGradientsOverWorkers()
                try optimizer.step(learningRate: Float(rate))
                try synchronizeRunningStatistics()
                step += 1
                stepLosses.append(value)
                epochLossSum += totals.loss * Double(totals.count)
                epochCorrect += totals.correct
                epochImages += totals.count
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - segmentStart) / 1e9
                let speed = Double(epochImages - imagesAtSegmentStart) / max(seconds, 1e-9)
                let left = Double((c.epochs - epoch) * stepsPerEpoch - batches.batchIndex) * Double(c.batch) / speed
                progress.step(
                    epoch: epoch, epochs: c.epochs, batch: batches.batchIndex, batches: stepsPerEpoch,
                    loss: epochLossSum / Double(max(epochImages, 1)), imagesPerSecond: speed,
                    secondsLeft: left)
                let stopNow = totals.stop
                if stopNow || (checkpointEverySteps.map { $0 > 0 && step % $0 == 0 } ?? false) {
                    try countSkippedUpdates()
                    epochTrainingSeconds += Double(DispatchTime.now().uptimeNanoseconds - segmentStart) / 1e9
                    segmentStart = DispatchTime.now().uptimeNanoseconds
                    try saveCheckpoint(elapsed: now())
                    if stopNow {
                        Self.lastInterruptSignal = interruptRequested == 0 ? nil : interruptRequested
                        interruptRequested = 0
                        throw TrainingError.interrupted(step: step, directory: output?.path ?? "(no output directory)")
                    }
                }
            }
            epochTrainingSeconds += Double(DispatchTime.now().uptimeNanoseconds - segmentStart) / 1e9
            try countSkippedUpdates()
            let evaluation = try evaluate()
            guard evaluation.loss.isFinite else {
                throw TrainingError.diverged(
                    step: step, what: "test loss \(evaluation.loss) after epoch \(epoch + 1)",
                    lastCheckpointStep: lastCheckpointStep, directory: output?.path)
            }
            lastEvaluation = evaluation
            let metrics = EpochMetrics(
                epoch: epoch, step: step, trainLoss: epochLossSum / Double(max(epochImages, 1)),
                trainError: 1 - Double(epochCorrect) / Double(max(epochImages, 1)), testLoss: evaluation.loss,
                testError: evaluation.error, learningRate: schedule.rate(at: max(step - 1, 0)), seconds: now(),
                imagesPerSecond: Double(epochImages) / max(epochTrainingSeconds, 1e-9),
                skippedUpdates: epochSkippedUpdates)
            history.append(metrics)
            progress.epoch(metrics, epochs: c.epochs)
            if epochSkippedUpdates > 0 {
                progress.message(
                    "warning: epoch \(epoch + 1)/\(c.epochs): \(epochSkippedUpdates) running-statistic update(s) "
                        + "skipped (batch statistics not finite); the running statistics keep their last finite values")
            }
            epochLossSum = 0; epochCorrect = 0; epochImages = 0; epochTrainingSeconds = 0; epochSkippedUpdates = 0
            try batches.seek(epoch: epoch + 1)
            if let output, writesRun {
                try writeMetrics(to: output.appendingPathComponent("metrics.jsonl"))
                try saveCheckpoint(elapsed: now())
            }
        }
        let evaluation = try lastEvaluation ?? evaluate()
        let summary = RunSummary(
            configuration: c, finalTestError: evaluation.error,
            bestTestError: history.map(\.testError).min() ?? evaluation.error, epochs: history, wallSeconds: now(),
            imagesPerSecond: history.isEmpty ? 0 : history.map(\.imagesPerSecond).reduce(0, +) / Double(history.count),
            perClassAccuracy: evaluation.perClassAccuracy, finished: true, data: dataRecord,
            convolutionEngine: convolutionEngine.versionDescription,
            workers: dataParallel.map(\.workerCount).flatMap { $0 > 1 ? $0 : nil },
            skippedUpdates: EpochMetrics.totalSkippedUpdates(history) ?? 0)
        if let output, writesRun {
            try AtomicFile.write(
                Array(try JSONEncoder.normKit(pretty: true).encode(summary)),
                to: output.appendingPathComponent("summary.json"))
        }
        return summary
    }

    /// "finished", "interrupted at step k", … for messages.
    static func describe(_ contents: RunDirectory.Contents) -> String {
        switch contents {
        case .empty: return "empty"
        case .finished: return "a finished run"
        case .unfinished(let step): return "a run interrupted at step \(step)"
        case .unreadableCheckpoint(let reason): return "a run whose checkpoint cannot be read: \(reason)"
        case .records(let files): return "records of a run: \(files.joined(separator: ", "))"
        }
    }

    /// Why the model or optimizer state must not be saved (a value not finite, a weight past
    /// ``divergenceWeightBound``), or nil.
    private func unsaveableState() -> String? {
        for (name, tensor) in model.stateDict() {
            guard case .float32(_, let values) = tensor else { continue }
            var largest: Float = 0
            for v in values {
                guard v.isFinite else { return "\(name) holds \(v)" }
                largest = max(largest, abs(v))
            }
            let isWeight = name.hasSuffix("weight") || name.hasSuffix("bias")
            if isWeight && largest > divergenceWeightBound {
                return "\(name) reached |w| = \(largest), above \(divergenceWeightBound)"
            }
        }
        for (i, velocity) in optimizer.velocities.enumerated() where !velocity.allSatisfy(\.isFinite) {
            return "the SGD velocity of parameter \(i) is not finite"
        }
        return nil
    }

    private func saveCheckpoint(elapsed: Double) throws {
        guard let output, writesRun else { return }
        if let reason = unsaveableState() {
            throw TrainingError.diverged(
                step: step, what: reason, lastCheckpointStep: lastCheckpointStep,
                directory: output.path)
        }
        let state = TrainingCheckpoint.TrainingState(
            step: step, position: batches.position, history: history, epochLossSum: epochLossSum,
            epochCorrect: epochCorrect, epochImages: epochImages, elapsedSeconds: elapsed,
            epochTrainingSeconds: epochTrainingSeconds, epochSkippedUpdates: epochSkippedUpdates)
        try TrainingCheckpoint.save(
            model: model, optimizer: optimizer, state: state, configuration: configuration,
            normalization: normalization, data: dataRecord, to: output)
        lastCheckpointStep = step
        if replacedRunIsAside {
            RunDirectory.discardRunSetAside(in: output)
            replacedRunIsAside = false
        }
    }

    /// The running-statistic updates the model's BN, BRN and MABN layers have skipped since they were built (their
    /// `skippedUpdates`: batches whose statistics were not finite) on this worker: for layers whose statistics the
    /// workers share (SyncBN, MABN across workers: ``/NormKit/BatchNorm/crossWorkerReduction``) worker 0's alone,
    /// since every worker sees the same statistics and skips the same updates; for the per-worker layers (BN, BRN),
    /// whose statistics are each worker's own, every worker's. Summed over the workers, a synchronized layer's
    /// skipped step counts once whatever the number of workers, as in one process.
    private var layerSkippedUpdates: Int {
        let countsSynchronized = (dataParallel?.workerIndex ?? 0) == 0
        return normalizationLayers.reduce(0) { total, layer in
            switch layer {
            case let bn as BatchNorm:
                return bn.crossWorkerReduction != nil && !countsSynchronized ? total : total + bn.skippedUpdates
            case let brn as BatchRenorm: return total + brn.skippedUpdates
            case let mabn as MovingAverageBatchNorm:
                return mabn.crossWorkerReduction != nil && !countsSynchronized ? total : total + mabn.skippedUpdates
            default: return total
            }
        }
    }

    /// Adds the updates the layers skipped since the last count, summed over the workers (``layerSkippedUpdates``:
    /// a synchronized layer's on worker 0 alone), to the epoch's count. Every worker calls it at the same points (an
    /// epoch's end, before a checkpoint): it is a collective.
    private func countSkippedUpdates() throws {
        let layers = layerSkippedUpdates
        var skipped = [Double(layers - layerSkipsCounted)]
        layerSkipsCounted = layers
        if let group = dataParallel, group.workerCount > 1 {
            try skipped.withUnsafeMutableBufferPointer { try group.allReduceSum($0) }
        }
        epochSkippedUpdates = epochSkippedUpdates.saturatingSum(Int(skipped[0]))
    }

    /// Writes `metrics.jsonl` from the history (whole file, atomically: a resumed run never duplicates lines).
    private func writeMetrics(to url: URL) throws {
        let encoder = JSONEncoder.normKit()
        var text = ""
        for m in history { text += String(decoding: try encoder.encode(m), as: UTF8.self) + "\n" }
        try AtomicFile.write(Array(text.utf8), to: url)
    }
}
