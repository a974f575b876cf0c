import ArgumentParser
import Foundation
import NormKitTraining

extension NormKind: ExpressibleByArgument {}

/// Where the data comes from (shared by train, eval and sweep).
struct DataOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Directory with Fashion-MNIST-style IDX files (.gz or raw).",
        discussion: "Default: /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)."))
    var data: String?

    @Option(help: "Use only the first N training images.")
    var trainLimit: Int?

    @Option(help: "Use only the first N test images.")
    var testLimit: Int?

    func validate() throws {
        if let trainLimit, trainLimit < 1 { throw ValidationError("--train-limit must be at least 1, got \(trainLimit)") }
        if let testLimit, testLimit < 1 { throw ValidationError("--test-limit must be at least 1, got \(testLimit)") }
    }

    func load(trainLimit: Int? = nil, testLimit: Int? = nil) throws -> (train: Dataset, test: Dataset) {
        try FashionMNIST.load(directory: data.map { URL(fileURLWithPath: $0) },
                              trainLimit: trainLimit ?? self.trainLimit, testLimit: testLimit ?? self.testLimit)
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
    @Option(help: "GN groups (default 16: 1/2/4 channels per group in ResNet's three stages).")
    var groups: Int?
    @Option(help: "GN channels per group (instead of --groups).")
    var groupSize: Int?
    @Option(help: "SGD batch size.")
    var batch = 32
    @Option(help: "Samples per normalization batch (BN/BRN ghost batch, MABN iteration); must divide --batch.")
    var normBatch: Int?
    @Option(help: "Epochs.")
    var epochs = 2
    @Option(help: "Peak learning rate (default 0.1 × batch / 32, the linear scaling rule).")
    var lr: Double?
    @Option(help: "SGD momentum.")
    var momentum = 0.9
    @Option(help: "Weight decay (conv and linear weights only unless --decay-all).")
    var weightDecay = 5e-4
    @Flag(help: "Apply weight decay to γ, β and biases too.")
    var decayAll = false
    @Option(help: "Learning-rate schedule after warm-up: cosine or step.")
    var schedule = "cosine"
    @Option(help: "Comma-separated epochs at which the step schedule divides the rate by 10.")
    var milestones = ""
    @Option(help: "Fraction of steps in linear warm-up from lr/25.")
    var warmup = 0.15
    @Flag(help: "Disable random crop and flip.")
    var noAugment = false
    @Option(help: "Random seed (initialisation, order, augmentation).")
    var seed: UInt64 = 0
    @Option(help: "Threads (kernels and convolutions).")
    var threads = 2
    @Option(help: "Output directory (default runs/<model>-<norm>-b<batch>-nb<normBatch>-s<seed>).")
    var out: String?
    @Option(help: "Continue the run saved in this directory (its configuration is used).")
    var resume: String?
    @Option(help: "Also save a checkpoint every N steps.")
    var checkpointEvery: Int?
    @OptionGroup var dataOptions: DataOptions

    func validate() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1, got \(batch)") }
        guard epochs >= 1 else { throw ValidationError("--epochs must be at least 1, got \(epochs)") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
        if let normBatch, normBatch < 1 || batch % normBatch != 0 {
            throw ValidationError("--norm-batch \(normBatch) must divide --batch \(batch)")
        }
        if groups != nil && groupSize != nil { throw ValidationError("give --groups or --group-size, not both") }
        if let groups, groups < 1 { throw ValidationError("--groups must be at least 1, got \(groups)") }
        if let groupSize, groupSize < 1 { throw ValidationError("--group-size must be at least 1, got \(groupSize)") }
        guard ["cosine", "step"].contains(schedule) else {
            throw ValidationError("--schedule must be cosine or step, got \(schedule)")
        }
        if let lr, !(lr > 0) { throw ValidationError("--lr must be positive, got \(lr)") }
        guard (0..<1).contains(warmup) else { throw ValidationError("--warmup must be in [0, 1), got \(warmup)") }
        _ = try parsedMilestones()
    }

    func parsedMilestones() throws -> [Int] {
        try milestones.split(separator: ",").map {
            guard let v = Int($0.trimmingCharacters(in: .whitespaces)), v >= 0 else {
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
        return c
    }

    func run() throws {
        var configuration: TrainingConfiguration
        let directory: URL
        if let resume {
            directory = URL(fileURLWithPath: resume)
            let modelURL = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
            guard FileManager.default.fileExists(atPath: modelURL.path) else {
                throw TrainingError.nothingToResume(directory.path)
            }
            configuration = try TrainingCheckpoint.readModel(at: modelURL).configuration
            configuration.threads = threads
        } else {
            configuration = try trainingConfiguration()
            let name = "\(model)-\(norm.rawValue)-b\(batch)-nb\(normBatch ?? batch)-s\(seed)"
            directory = URL(fileURLWithPath: out ?? "runs/\(name)")
        }
        let (train, test) = try dataOptions.load(trainLimit: configuration.trainLimit,
                                                 testLimit: configuration.testLimit)
        let trainer = try Trainer(configuration: configuration, train: train, test: test, output: directory)
        trainer.checkpointEverySteps = checkpointEvery
        if resume != nil {
            try trainer.resume(from: directory)
            print("resuming \(directory.path) at step \(trainer.step)")
        }
        print("training \(configuration.model) with \(configuration.norm.rawValue) "
              + "(batch \(configuration.batch), norm batch \(configuration.effectiveNormBatch), "
              + "\(configuration.epochs) epochs, lr \(configuration.peakLearningRate)) on \(train.count) images → \(directory.path)")
        Trainer.stopOnInterrupt()
        do {
            let summary = try trainer.run()
            print(String(format: "final test error %.2f%% (best %.2f%%), %.0f img/s, %@ wall; summary in %@",
                         100 * summary.finalTestError, 100 * summary.bestTestError, summary.imagesPerSecond,
                         ProgressReporter.clock(summary.wallSeconds),
                         directory.appendingPathComponent("summary.json").path))
        } catch let error as TrainingError {
            if case .interrupted = error {
                print("\n\(error)")
                throw ExitCode(130)
            }
            throw error
        }
    }
}

/// `normkit eval`: test error and per-class accuracy of a checkpoint.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval", abstract: "Evaluate a checkpoint (model.safetensors) on the test set.")

    @Option(help: "A model.safetensors written by normkit train (or its run directory).")
    var checkpoint: String
    @Option(help: "Threads.")
    var threads = 2
    @OptionGroup var dataOptions: DataOptions

    func run() throws {
        var url = URL(fileURLWithPath: checkpoint)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            url = url.appendingPathComponent(TrainingCheckpoint.modelFileName)
        }
        Parallelism.threadCount = threads
        BLAS.setThreads(1)
        let (tensors, configuration, step) = try TrainingCheckpoint.readModel(at: url)
        // The training set's pixel statistics standardise the test set, as in training.
        let (_, test) = try dataOptions.load(trainLimit: configuration.trainLimit, testLimit: dataOptions.testLimit)
        let normalization = try NormalizationSettings(configuration, totalSteps: 1)
        let model = try makeModel(named: configuration.model, normalization: normalization,
                                  inChannels: test.channels, classes: test.classCount, seed: configuration.seed)
        try model.loadStateDict(tensors)
        let evaluation = try Trainer.evaluate(model: model, on: test)
        print("\(url.path): \(configuration.model) with \(configuration.norm.rawValue), step \(step)")
        print(String(format: "test error %.2f%% on %d images (loss %.4f)", 100 * evaluation.error, evaluation.count,
                     evaluation.loss))
        print("\n| class | accuracy |\n|---|---:|")
        for (i, accuracy) in evaluation.perClassAccuracy.enumerated() {
            let name = i < test.classNames.count ? test.classNames[i] : "\(i)"
            print(String(format: "| %@ | %.2f%% |", name, 100 * accuracy))
        }
    }
}
