import Foundation

/// How a training run uses its threads: one model whose every layer splits its work over them, or one model
/// replica per thread on an equal share of every batch (``InProcessWorkerGroup``).
public enum TrainingThreading: String, Codable, CaseIterable, Sendable {
    /// Replicas when they compute what one model computes (see ``replicas(for:threads:)``), layers otherwise.
    case auto
    /// One replica per thread, always: BN, BRN and MABN then normalize each replica's share of the batch (per-worker
    /// normalization, as with MPI ranks); SyncBN normalizes over the whole batch.
    case replicas
    /// One model; each layer splits its work over the threads.
    case layers

    /// The normalizations whose training is the same (up to float rounding) whether one model sees the whole batch
    /// or replicas see equal shares of it: those without batch statistics, and SyncBN, whose statistics the
    /// replicas reduce.
    public static let replicaInvariantNorms: Set<NormKind> = [.gn, .ln, .in, .frozenBN, .none, .syncbn]

    /// The number of in-process replicas for `configuration` on `threads` threads (1: a single model).
    ///
    /// ``auto`` uses replicas for the ``replicaInvariantNorms`` when the batch splits into `threads` equal shares: on
    /// this project's 2-core machines that trained ResNet-20 GN at batch 32 about 1.06× faster than splitting every
    /// layer, and ResNet-8 GN at batch 2 (one image per replica) 1.12× (docs/PERFORMANCE.md, session 19).
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` when ``replicas`` is asked for a batch that does not split.
    public func replicas(for configuration: TrainingConfiguration, threads: Int) throws -> Int {
        let batch = configuration.batch
        switch self {
        case .layers: return 1
        case .replicas:
            guard threads >= 1, batch % threads == 0 else {
                throw TrainingError.invalidConfiguration(
                    "--threading replicas splits the batch \(batch) into \(threads) equal shares, one per thread; "
                        + "choose --batch as a multiple of --threads")
            }
            return threads
        case .auto:
            let eligible =
                Self.replicaInvariantNorms.contains(configuration.norm) && threads > 1 && batch % threads == 0
            return eligible ? threads : 1
        }
    }
}

/// One training run on this process's threads: a single ``Trainer`` (``TrainingThreading/layers``), or one replica per
/// thread over an ``InProcessWorkerGroup`` (worker 0 reports progress and writes the run; the others are silent).
/// Set the trainers' properties (``Trainer/checkpointEverySteps``, ``Trainer/convolutionEngine``, …) through
/// ``forEach(_:)`` and resume them all with ``resume(from:)``, then ``run()``.
public struct ThreadedRun {
    /// Worker 0's trainer first; one per replica.
    public let trainers: [Trainer]
    /// The replicas' group (nil: one trainer).
    public let group: InProcessWorkerGroup?
    /// The trainer that reports and writes the run.
    public var first: Trainer { trainers[0] }

    /// The trainers of `configuration` (its ``TrainingConfiguration/threads`` threads, used as `threading` says) on
    /// `train` and `test`. With replicas the configuration is ``TrainingConfiguration/perWorker(workers:)``'s.
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` (a batch ``TrainingThreading/replicas`` cannot split),
    ///   or what ``Trainer/init(configuration:train:test:output:progress:)`` and
    ///   ``Trainer/distribute(over:)`` throw.
    public init(
        configuration: TrainingConfiguration, threading: TrainingThreading = .auto, train: Dataset, test: Dataset,
        output: URL?, progress: ProgressReporter = ProgressReporter()
    ) throws {
        let replicas = try threading.replicas(for: configuration, threads: configuration.threads)
        let c = configuration.perWorker(workers: replicas)
        group = replicas > 1 ? try InProcessWorkerGroup(workers: replicas) : nil
        trainers = try (0..<replicas).map { [group] w in
            let trainer = try Trainer(
                configuration: c, train: train, test: test, output: output,
                progress: w == 0 ? progress : ProgressReporter(style: .silent))
            if let group { try trainer.distribute(over: group.worker(w)) }
            return trainer
        }
    }

    /// `body` on every trainer, worker 0's first.
    public func forEach(_ body: (Trainer) throws -> Void) rethrows { for t in trainers { try body(t) } }

    /// Every trainer resumed from `directory` (``Trainer/resume(from:)``).
    public func resume(from directory: URL) throws { try forEach { try $0.resume(from: directory) } }

    /// Trains (each replica on a thread of its own) and returns worker 0's summary; the errors are
    /// ``Trainer/run()``'s (a replica's own failure before the others').
    @discardableResult
    public func run() throws -> RunSummary {
        guard let group else { return try first.run() }
        let trainers = self.trainers
        return try group.run { try trainers[$0].run() }[0]
    }
}
