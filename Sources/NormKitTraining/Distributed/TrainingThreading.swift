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
/// Worker 0's trainer (``first``) is built here, on the calling thread; the other replicas' trainers are built by
/// their own threads in ``run()``. Set the trainers' properties (``Trainer/checkpointEverySteps``,
/// ``Trainer/convolutionEngine``, …) through ``forEach(_:)`` and resume them all with ``resume(from:)``, then
/// ``run()``.
public final class ThreadedRun {
    /// Worker 0's trainer: the one that reports and writes the run.
    public let first: Trainer
    /// The replicas' group (nil: one trainer).
    public let group: InProcessWorkerGroup?
    /// What every other replica's trainer is built from, on its own thread.
    private let replica: Replica
    /// What ``forEach(_:)`` did to ``first``, done to every other replica's trainer once it is built.
    private var setups: [@Sendable (Trainer) throws -> Void] = []

    /// The parts of a replica's trainer that its thread receives (all `Sendable`).
    private struct Replica: Sendable {
        let configuration: TrainingConfiguration
        let train: Dataset
        let test: Dataset
        let output: URL?
    }

    /// The run of `configuration` (its ``TrainingConfiguration/threads`` threads, used as `threading` says) on
    /// `train` and `test`. With replicas the configuration is ``TrainingConfiguration/perWorker(workers:)``'s.
    ///
    /// - Throws: ``TrainingError/invalidConfiguration(_:)`` (a batch ``TrainingThreading/replicas`` cannot split),
    ///   or what ``Trainer/init(configuration:train:test:output:progress:)`` throws for worker 0's trainer.
    public init(
        configuration: TrainingConfiguration, threading: TrainingThreading = .auto, train: Dataset, test: Dataset,
        output: URL?, progress: ProgressReporter = ProgressReporter()
    ) throws {
        let replicas = try threading.replicas(for: configuration, threads: configuration.threads)
        let c = configuration.perWorker(workers: replicas)
        group = replicas > 1 ? try InProcessWorkerGroup(workers: replicas) : nil
        replica = Replica(configuration: c, train: train, test: test, output: output)
        first = try Trainer(configuration: c, train: train, test: test, output: output, progress: progress)
    }

    /// `body` on worker 0's trainer now, and on every other replica's trainer in ``run()`` once its thread has
    /// built it (before it trains). `body` is `@Sendable`: it runs on the replicas' threads.
    ///
    /// - Throws: What `body` throws on worker 0's trainer (the other replicas' errors are ``run()``'s).
    public func forEach(_ body: @escaping @Sendable (Trainer) throws -> Void) rethrows {
        try body(first)
        setups.append(body)
    }

    /// Every trainer resumed from `directory` (``Trainer/resume(from:)``): worker 0's now, the others' in ``run()``.
    ///
    /// - Throws: What ``Trainer/resume(from:)`` throws for worker 0's trainer.
    public func resume(from directory: URL) throws { try forEach { try $0.resume(from: directory) } }

    /// Trains (each replica on a thread of its own, worker 0 on the calling thread) and returns worker 0's summary.
    ///
    /// - Throws: ``Trainer/run()``'s errors, what building, setting up (``forEach(_:)``, ``resume(from:)``) and
    ///   distributing a replica's trainer throws (``Trainer/distribute(over:)``): the lowest-numbered replica's own
    ///   failure before the others' (``InProcessWorkerGroup/run(_:)``).
    @discardableResult
    public func run() throws -> RunSummary {
        guard let group else { return try first.run() }
        let (first, replica, setups) = (self.first, self.replica, self.setups)
        return try group.run(
            first: { worker in
                // After resume(from:): worker 0 writes the run either way, the one thing resuming asks of it.
                try first.distribute(over: worker)
                // Training starts together: worker 0's clock does not run while the others build their trainers.
                try worker.barrier()
                return try first.run()
            },
            others: { worker in
                let trainer = try Trainer(
                    configuration: replica.configuration, train: replica.train, test: replica.test,
                    output: replica.output, progress: ProgressReporter(style: .silent))
                try trainer.distribute(over: worker)
                for setup in setups { try setup(trainer) }
                try worker.barrier()
                _ = try trainer.run()
            }
        ).first
    }
}
