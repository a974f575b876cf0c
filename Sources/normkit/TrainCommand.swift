import ArgumentParser
import Foundation
import NormKitDistributed
import NormKitTraining

extension NormKind: ExpressibleByArgument {}

/// Where the data comes from and how much of it (shared by train and sweep).
struct DataOptions: ParsableArguments {
    /// The help of `--data` for `train` and `sweep`.
    static let dataHelp = ArgumentHelp(
        "Directory with Fashion-MNIST-style IDX files (.gz or raw).",
        discussion: """
            Default: /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist).
            """)

    /// The help of `--data` for the commands that read a checkpoint (`eval`, `stats`): they default to the data
    /// the model was trained on.
    static let checkpointDataHelp = ArgumentHelp(
        "Directory with Fashion-MNIST-style IDX files (.gz or raw).",
        discussion: """
            Default: the directory the checkpoint records (the data the model was trained on), else \
            /usr/share/datasets/fashion-mnist.
            """)

    @Option(help: dataHelp)
    var data: String?

    @Option(parsing: .number, help: "Use only the first N training images.")
    var trainLimit: Int?

    @Option(parsing: .number, help: "Use only the first N test images.")
    var testLimit: Int?

    func validate() throws {
        if let trainLimit, trainLimit < 1 {
            throw ValidationError("--train-limit must be at least 1, got \(trainLimit)")
        }
        if let testLimit, testLimit < 1 { throw ValidationError("--test-limit must be at least 1, got \(testLimit)") }
    }

    func load(trainLimit: Int? = nil, testLimit: Int? = nil) throws -> (train: Dataset, test: Dataset) {
        try FashionMNIST.load(
            directory: data.map { URL(fileURLWithPath: $0) },
            trainLimit: trainLimit ?? self.trainLimit, testLimit: testLimit ?? self.testLimit)
    }
}

/// `--data` and `--test-limit`: the options of a command that reads only test images (`eval`; the training
/// images a checkpoint was trained on are its own record, so `--train-limit` is not offered).
struct TestDataOptions: ParsableArguments {
    @Option(help: DataOptions.checkpointDataHelp)
    var data: String?

    @Option(parsing: .number, help: "Use only the first N test images.")
    var testLimit: Int?

    func validate() throws {
        if let testLimit, testLimit < 1 { throw ValidationError("--test-limit must be at least 1, got \(testLimit)") }
    }
}

/// `normkit train`: one model, one normalization, one run directory.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a ResNet (or VGG) with any normalization on Fashion-MNIST.",
        discussion: """
            Writes metrics.jsonl (one line per epoch), summary.json, and a checkpoint (model.safetensors, loadable \
            by PyTorch's torch_models.ResNet with strict=True) into --out. Ctrl-C saves a checkpoint and exits; \
            `normkit train --resume DIR` continues exactly where it stopped.
            """)

    @Option(help: "resnet8, resnet14, resnet20, … (depth 6n+2) or vgg.")
    var model = "resnet8"
    @Option(help: "Normalization: \(NormKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var norm: NormKind = .gn
    @Option(parsing: .number, help: "GN groups (default 16: 1/2/4 channels per group in ResNet's three stages).")
    var groups: Int?
    @Option(parsing: .number, help: "GN channels per group (instead of --groups).")
    var groupSize: Int?
    @Option(parsing: .number, help: "SGD batch size.")
    var batch = 32
    @Option(
        parsing: .number,
        help: "Samples per normalization batch (BN/BRN ghost batch, MABN iteration); must divide --batch.")
    var normBatch: Int?
    @Option(parsing: .number, help: "Epochs.")
    var epochs = 2
    @Option(parsing: .number, help: "Peak learning rate (default 0.1 × batch / 32, the linear scaling rule).")
    var lr: Double?
    @Option(parsing: .number, help: "SGD momentum.")
    var momentum = 0.9
    @Option(parsing: .number, help: "Weight decay (conv and linear weights only unless --decay-all).")
    var weightDecay = 5e-4
    @Flag(help: "Apply weight decay to γ, β and biases too.")
    var decayAll = false
    @Option(help: "Learning-rate schedule after warm-up: cosine or step.")
    var schedule = "cosine"
    @Option(
        parsing: .list,
        help: "Comma-separated epochs at which the step schedule divides the rate by 10 (--schedule step only).")
    var milestones = ""
    @Option(parsing: .number, help: "Fraction of steps in linear warm-up from lr/25.")
    var warmup = 0.15
    @Flag(help: "Disable random crop and flip.")
    var noAugment = false
    @Option(parsing: .number, help: "Random seed (initialisation, order, augmentation).")
    var seed: UInt64 = 0
    @Option(parsing: .number, help: "Threads (kernels and convolutions; --threading says how a run uses them).")
    var threads = 2
    @Option(
        help: """
            Output directory (default runs/<model>-<norm>-b<batch>-nb<normBatch>-s<seed>-<hash>, the hash covering \
            every setting but --threads, and the data).
            """)
    var out: String?
    @Option(
        help: """
            Continue the run saved in this directory (its configuration is used, and its data directory unless \
            --data is given).
            """)
    var resume: String?
    @Option(parsing: .number, help: "Also save a checkpoint every N steps.")
    var checkpointEvery: Int?
    @OptionGroup var dataOptions: DataOptions

    @Option(
        parsing: .number, help: "MABN's buffer S_buf in iterations (default: max(1, 32 / norm batch), about 32 images)."
    )
    var mabnBuffer: Int?
    @Option(parsing: .number, help: "MABN iterations that use batch statistics (default 100).")
    var mabnWarmup: Int?
    @Option(parsing: .number, help: "MABN's EMA factor: the weight of the OLD value (default 0.98, the authors').")
    var mabnOldWeight: Double?
    @Option(
        parsing: .list,
        help: ArgumentHelp(
            "MABN ablation: parts to switch off, comma-separated, from form, fwd-sma, bwd-sma, renorm, cenconv.",
            discussion: "form: mean and variance (BN form) instead of the second moment; fwd-sma / bwd-sma: the "
                + "current batch's forward / backward statistics instead of their moving averages; renorm: r = 1; "
                + "cenconv: ordinary instead of weight-centred convolutions. Default: none (the paper's MABN)."))
    var mabnWithout: String?
    @Option(parsing: .number, help: "BN's momentum, PyTorch's convention: the weight of the NEW value (default 0.1).")
    var bnMomentum: Double?
    @Option(parsing: .number, help: "BRN's momentum: the weight of the NEW value (default 0.01).")
    var brnMomentum: Double?
    @Option(parsing: .number, help: "BRN's fully relaxed r_max (default 3).")
    var brnRMax: Double?
    @Option(parsing: .number, help: "BRN's fully relaxed d_max (default 5).")
    var brnDMax: Double?
    @Option(help: "BRN's relaxation schedule: scaled (to this run's steps, default) or paper (5k/40k/25k steps).")
    var brnSchedule: String?
    @Flag(
        help:
            "Replace the run already in --out (its checkpoint and records are set aside, deleted at the new run's first checkpoint, put back if it stops before)."
    )
    var overwrite = false
    @Flag(
        help: ArgumentHelp(
            "Data-parallel training over the ranks of mpirun (one model replica each, the batch split evenly).",
            discussion:
                "Run as: mpirun -np R --allow-run-as-root --oversubscribe --bind-to none normkit train --distributed --threads T ... (R·T ≤ cores; --allow-run-as-root only as root). --norm bn is per-worker BN, --norm syncbn synchronises the statistics. Needs openmpi-bin and libopenmpi-dev."
        ))
    var distributed = false
    @Option(
        help: ArgumentHelp(
            "Convolution engine: onednn (default when built in; channels-last network), onednn-direct or im2col (OpenBLAS).",
            discussion:
                "onednn runs oneDNN's Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions with channels in blocks of 16 on enough output tiles per thread (AVX-512), direct kernels elsewhere; onednn-direct only direct ones (Winograd rounds differently: about 3x the direct kernels' error, ~1e-6 of the largest value)."
        ))
    var convEngine: ConvolutionEngine = .preferred
    @Option(
        help: ArgumentHelp(
            "How --threads are used: auto, replicas (one model replica per thread, the batch split evenly) or layers (every layer split over the threads).",
            discussion:
                "auto: replicas for gn, ln, in, frozen-bn, none and syncbn (the same training up to float rounding), layers for bn, brn and mabn, whose statistics would become per replica (--threading replicas: per-worker normalization, as with --distributed)."
        ))
    var threading: TrainingThreading = .auto

    func validate() throws {
        if let reason = convEngine.unavailableReason { throw ValidationError("--conv-engine \(convEngine): \(reason)") }
        if let every = checkpointEvery, every < 1 {
            throw ValidationError("--checkpoint-every \(every): must be at least 1 (steps between checkpoints)")
        }
        try validateNotEmpty(out, "--out", "a run directory")
        try validateNotEmpty(resume, "--resume", "the run directory to continue")
        let configuration = try trainingConfiguration()
        do {
            try configuration.validate()
        } catch let error as ConfigurationError {
            throw ValidationError(error.description)
        }
        if distributed && threading == .replicas {
            throw ValidationError(
                "--threading replicas trains replicas in this process; under --distributed every MPI rank is a replica already (drop --threading, or use --threading layers)"
            )
        }
        if resume == nil && !distributed {
            do { _ = try threading.replicas(for: configuration, threads: threads) } catch let error as TrainingError {
                if case .invalidConfiguration(let why) = error { throw ValidationError(why) }
                throw error
            }
        }
        if resume != nil {
            // A resumed run continues with its own configuration: a flag that would change it is refused, not ignored.
            // (--data is not part of the configuration: it may point at the same files elsewhere.)
            var defaults = try TrainCommand.parse([])
            defaults.threads = threads
            defaults.dataOptions.data = dataOptions.data
            let given = try defaults.trainingConfiguration().differences(from: configuration)
            guard given.isEmpty else {
                // `differences` names the recorded fields ("learningRate …"): say the flags, and the field each sets.
                let flags = given.map { difference -> String in
                    let field = String(difference.split(separator: " ").first ?? "")
                    return TrainingConfiguration.flagNames[field].map { "\($0) (\(field))" } ?? field
                }
                throw ValidationError(
                    "--resume continues a run with the configuration recorded in its checkpoint; "
                        + "drop the configuration flags given with it: \(flags.joined(separator: ", "))")
            }
            if out != nil { throw ValidationError("--resume DIR writes into DIR; drop --out") }
            if overwrite { throw ValidationError("--overwrite replaces a run; it cannot be combined with --resume") }
        } else {
            do { try configuration.validateApplicability() } catch let error as ConfigurationError {
                throw ValidationError(error.description)
            }
        }
        _ = try parsedMilestones()
    }

    /// The epochs of `--milestones`; their range (0 to `--epochs`) is the configuration check's.
    func parsedMilestones() throws -> [Int] {
        try milestones.split(separator: ",").map {
            guard let v = Int($0.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--milestones must be comma-separated epochs, got '\(milestones)'")
            }
            return v
        }
    }

    func trainingConfiguration() throws -> TrainingConfiguration {
        var c = TrainingConfiguration()
        c.model = model; c.norm = norm; c.groups = groups; c.groupSize = groupSize
        c.batch = batch; c.normBatch = normBatch; c.epochs = epochs; c.learningRate = lr
        c.momentum = momentum; c.weightDecay = weightDecay; c.decayAllParameters = decayAll
        c.schedule = schedule; c.milestones = try parsedMilestones(); c.warmupFraction = warmup
        c.seed = seed; c.trainLimit = dataOptions.trainLimit; c.testLimit = dataOptions.testLimit
        c.augment = !noAugment; c.threads = threads
        c.mabnBuffer = mabnBuffer; c.mabnWarmup = mabnWarmup; c.mabnOldValueWeight = mabnOldWeight
        c.mabnWithout = mabnWithout.map { list in
            list.split(separator: ",", omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
        }
        c.bnMomentum = bnMomentum; c.brnMomentum = brnMomentum; c.brnRMax = brnRMax; c.brnDMax = brnDMax
        c.brnSchedule = brnSchedule
        return c
    }

    func run() throws {
        let configuration: TrainingConfiguration
        let directory: URL
        let train: Dataset, test: Dataset
        // Before the communicator, which wraps the handlers (a SIGTERM inside a collective prints which rank and call).
        Trainer.stopOnInterrupt()
        let communicator = distributed ? try Self.communicator() : nil
        if let resume {
            directory = URL(fileURLWithPath: resume)
            let modelURL = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
            guard FileManager.default.fileExists(atPath: modelURL.path) else {
                throw TrainingError.nothingToResume(directory.path)
            }
            let file = try TrainingCheckpoint.read(at: modelURL)
            var saved = file.configuration
            saved.threads = threads
            configuration = saved
            // The data it was trained on, unless --data says otherwise (the trainer then compares fingerprints).
            let dataDirectory =
                try dataOptions.data.map { URL(fileURLWithPath: $0) }
                ?? file.data?.source.map { try Self.recordedDirectory($0, of: modelURL) }
            (train, test) = try FashionMNIST.load(
                directory: dataDirectory, trainLimit: configuration.trainLimit,
                testLimit: configuration.testLimit,
                statistics: file.data?.statistics)
        } else {
            let given = try trainingConfiguration()
            let replicas = communicator == nil ? try threading.replicas(for: given, threads: threads) : 1
            configuration = given.perWorker(workers: communicator?.workerCount ?? replicas)
            (train, test) = try dataOptions.load(
                trainLimit: configuration.trainLimit,
                testLimit: configuration.testLimit)
            directory = URL(fileURLWithPath: out ?? "runs/\(Self.defaultRunName(configuration, data: train.source))")
        }
        let isFirstWorker = (communicator?.workerIndex ?? 0) == 0
        // In-process replicas (one per thread) or this process's one model (always one under mpirun).
        let run: ThreadedRun
        do {
            run = try ThreadedRun(
                configuration: configuration, threading: communicator == nil ? threading : .layers, train: train,
                test: test, output: directory,
                progress: isFirstWorker ? ProgressReporter() : ProgressReporter(style: .silent))
            if let communicator { try run.first.distribute(over: communicator) }
        } catch let error where resume != nil {
            throw CommandFailure(
                "\(directory.appendingPathComponent(TrainingCheckpoint.modelFileName).path): its configuration does not build a model: \(ErrorText.describe(error))"
            )
        }
        run.forEach { trainer in
            trainer.checkpointEverySteps = checkpointEvery
            trainer.replacesExistingRun = overwrite
            trainer.convolutionEngine = convEngine
        }
        if resume != nil { try run.resume(from: directory) }
        let trainer = run.first
        if resume != nil && isFirstWorker { print("resuming \(directory.path) at step \(trainer.step)") }
        let normDescription =
            configuration.norm == .syncbn
            ? "SyncBN" : configuration.norm == .bn ? "per-worker BN" : configuration.norm.rawValue
        if let communicator, isFirstWorker {
            print(
                "data-parallel over \(communicator.workerCount) MPI ranks: \(configuration.batch / communicator.workerCount) images per rank per step, \(normDescription)"
            )
        }
        if let replicas = run.group?.workerCount {
            print(
                "data-parallel over \(replicas) in-process replicas, one per thread: \(configuration.batch / replicas) images each per step, \(normDescription)"
            )
        }
        if isFirstWorker, convEngine == .im2col, let warning = ConvolutionEngine.staleConfigurationWarning {
            FileHandle.standardError.write(Data((warning + "\n").utf8))
        }
        if isFirstWorker {
            print(
                "training \(configuration.model) with \(configuration.norm.rawValue) "
                    + "(batch \(configuration.batch), norm batch \(configuration.effectiveNormBatch), "
                    + "\(configuration.epochs) epochs, lr \(configuration.peakLearningRate)) on \(train.count) images → \(directory.path)"
                    + " [\(convEngine.versionDescription)]")
        }
        let firstStep = trainer.step
        do {
            let summary = try run.run()
            try communicator?.finalize()
            guard isFirstWorker else { return }
            if let (gradients, statistics) = trainer.communication, trainer.step > firstStep {
                let steps = Double(trainer.step - firstStep)
                print(
                    String(
                        format:
                            "communication per step (\(communicator == nil ? "worker" : "rank") 0): gradient all-reduce %.3f ms (%d floats), "
                            + "normalization reductions %.3f ms (%.1f collectives, %.0f values)",
                        1e3 * gradients.seconds / steps, gradients.values / max(gradients.calls, 1),
                        1e3 * statistics.seconds / steps, Double(statistics.calls) / steps,
                        Double(statistics.values) / steps))
            }
            print(
                String(
                    format: "final test error %.2f%% (best %.2f%%), %.0f img/s, %@ wall; summary in %@",
                    100 * summary.finalTestError, 100 * summary.bestTestError, summary.imagesPerSecond,
                    ProgressReporter.clock(summary.wallSeconds),
                    directory.appendingPathComponent("summary.json").path))
        } catch let error as TrainingError {
            if case .interrupted = error {
                if isFirstWorker {
                    print("\n\(error)")
                    StandardOutput.flush()
                }
                // The other ranks leave only once rank 0 has saved and said so: mpirun ends the whole job as soon
                // as one rank exits with an error.
                try? communicator?.barrier()
                throw ExitCode(128 + (Trainer.lastInterruptSignal ?? SIGINT))
            }
            throw error
        }
    }

    /// This process's MPI communicator for `--distributed`; a clear error without MPI or outside mpirun.
    static func communicator() throws -> MPICommunicator {
        guard MPICommunicator.isAvailable else {
            throw CommandFailure("--distributed: " + DistributedError.mpiUnavailable.description)
        }
        guard MPICommunicator.launchedUnderMPI() else {
            throw CommandFailure(
                "--distributed runs under mpirun, one process per rank: mpirun -np 2 "
                    + MPICommunicator.mpirunArguments().joined(separator: " ")
                    + " normkit train --distributed --threads 1 …")
        }
        return try MPICommunicator()
    }

    /// The directory a checkpoint records its data in; an error saying to pass --data when it is gone.
    static func recordedDirectory(_ source: DataSource, of checkpoint: URL) throws -> URL {
        guard FileManager.default.fileExists(atPath: source.directory) else {
            throw CommandFailure(
                "\(checkpoint.path) was trained on the data in \(source.directory), which is not "
                    + "there any more; pass --data with a directory holding the same files")
        }
        return URL(fileURLWithPath: source.directory)
    }

    /// `<model>-<norm>-b<batch>-nb<normBatch>-s<seed>-<hash>`: readable, and distinct for runs whose
    /// configurations or data differ in anything (the hash covers every field but the thread count, and the
    /// data's fingerprint).
    static func defaultRunName(_ c: TrainingConfiguration, data: DataSource?) -> String {
        "\(c.model)-\(c.norm.rawValue)-b\(c.batch)-nb\(c.effectiveNormBatch)-s\(c.seed)-"
            + c.identityHash(data: data?.fingerprint ?? "")
    }
}

/// `normkit eval`: test error and per-class accuracy of a checkpoint.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval", abstract: "Evaluate a checkpoint (model.safetensors) on the test set.")

    @Option(help: "A model.safetensors written by normkit train (or its run directory).")
    var checkpoint: String
    @Option(parsing: .number, help: "Threads.")
    var threads = 2
    @OptionGroup var dataOptions: TestDataOptions

    func validate() throws {
        try validateThreads(threads)
    }

    func run() throws {
        let url = modelFile(checkpoint)
        Parallelism.threadCount = threads
        BLAS.setThreads(1)
        // Read and validate everything the file says before building or allocating anything.
        let file = try TrainingCheckpoint.read(at: url)
        let configuration = file.configuration
        let test = try testSet(for: file)
        let model = try TrainingCheckpoint.buildModel(
            for: file, at: url, inChannels: test.channels,
            classes: test.classCount)
        let evaluation = try Trainer.evaluate(model: model, on: test)
        guard evaluation.loss.isFinite else {
            throw CommandFailure(
                "\(url.path): the test loss is \(evaluation.loss): the checkpoint's weights or running statistics are not finite (a diverged run?)"
            )
        }
        print("\(url.path): \(configuration.model) with \(configuration.norm.rawValue), step \(file.step)")
        print(
            String(
                format: "test error %.2f%% on %d images (loss %.4f)", 100 * evaluation.error, evaluation.count,
                evaluation.loss))
        print("\n| class | accuracy |\n|---|---:|")
        // A class with no test image has no accuracy: "–", not 0 %.
        var images = [Int](repeating: 0, count: evaluation.perClassAccuracy.count)
        for label in test.labels where images.indices.contains(Int(label)) { images[Int(label)] += 1 }
        for (i, accuracy) in evaluation.perClassAccuracy.enumerated() {
            let name = i < test.classNames.count ? test.classNames[i] : "\(i)"
            print(images[i] > 0 ? String(format: "| %@ | %.2f%% |", name, 100 * accuracy) : "| \(name) | – |")
        }
        let missing = images.filter { $0 == 0 }.count
        if missing > 0 {
            print(
                "\n–: no test image of \(missing == 1 ? "this class" : "these \(missing) classes") among the "
                    + "\(evaluation.count) evaluated\(dataOptions.testLimit.map { " (--test-limit \($0))" } ?? "")")
        }
    }

    /// The test images, standardised with the training statistics the checkpoint recorded; data from --data,
    /// else the directory the model was trained on, else the default. Says so when that is not the training data.
    func testSet(for file: TrainingCheckpoint.ModelFile) throws -> Dataset {
        let recorded = file.data?.source
        let directory =
            try dataOptions.data.map { URL(fileURLWithPath: $0) }
            ?? recorded.map { try TrainCommand.recordedDirectory($0, of: URL(fileURLWithPath: checkpoint)) }
        guard let statistics = file.data?.statistics else {
            print(
                "note: this checkpoint does not record its pixel statistics (written by an older normkit); "
                    + "recomputing them from the training images in \((directory ?? FashionMNIST.defaultDirectory).path)"
            )
            return try FashionMNIST.load(
                directory: directory, trainLimit: file.configuration.trainLimit,
                testLimit: dataOptions.testLimit
            ).test
        }
        let test = try FashionMNIST.loadTest(directory: directory, limit: dataOptions.testLimit, statistics: statistics)
        if let recorded, let given = test.source, recorded.fingerprint != given.fingerprint {
            print(
                "note: evaluating on \(given.directory) (fingerprint \(given.fingerprint)), not the data the model "
                    + "was trained on (\(recorded.directory), fingerprint \(recorded.fingerprint)); "
                    + "the images are standardised with the training statistics recorded in the checkpoint")
        }
        return test
    }
}

extension ConvolutionEngine: ExpressibleByArgument {}
extension TrainingThreading: ExpressibleByArgument {}
