import ArgumentParser
import Foundation
import NormKitExperiments
import NormKitTraining

/// `normkit stats`: the MABN paper's backward-statistics argument measured on a trained BN model (spec §11).
struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract:
            "How far BN's forward (μ_B, σ²_B) and backward (g_B, Ψ_B) batch statistics stray from their population values, per batch size.",
        discussion: """
            For every BN layer of the checkpoint's model, over --batches random training batches of each size, the \
            relative deviation E|stat_B − stat| / (|stat| + scale) of each statistic from its value over the first \
            --population training images (scale: the spread of the per-sample statistic), averaged over channels, \
            and the same after a moving average over 32 / B batches (MABN's buffer; "–" where --batches is below \
            that window). Writes stats.md, stats.json and stats.svg into --out. The batches are drawn from the \
            first --population training images; the test images are not used.
            """)

    @Option(help: "A model.safetensors of a BN run (or its run directory).")
    var checkpoint: String
    @Option(parsing: .list, help: "Comma-separated batch sizes.")
    var sizes = "1,2,4,8,16,32"
    @Option(parsing: .number, help: "Random batches per size.")
    var batches = 200
    @Option(
        parsing: .number,
        help: """
            Training images that define the population values, in 250...1000000 and at most the training set's \
            size (default: 10000, or all of them when there are fewer).
            """)
    var population: Int?
    @Option(parsing: .number, help: "Seed of the batch draws.")
    var seed: UInt64 = 0
    @Option(help: "Output directory (default: <run directory>/stats).")
    var out: String?
    @Option(parsing: .number, help: "Threads.")
    var threads = 2
    @Option(help: DataOptions.checkpointDataHelp)
    var data: String?

    /// `--population` unless given.
    static let defaultPopulation = 10_000

    func validate() throws {
        _ = try parsedSizes()
        guard (1...100_000).contains(batches) else {
            throw ValidationError("--batches \(batches): must be in 1...100000")
        }
        if let population, !(250...1_000_000).contains(population) {
            throw ValidationError("--population \(population): must be in 250...1000000")
        }
        try validateNotEmpty(out, "--out", "a directory for stats.md, stats.json and stats.svg")
        try validateThreads(threads)
    }

    func parsedSizes() throws -> [Int] {
        let values = sizes.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) >= 1 && ($0 ?? 0) <= 4096 }) else {
            throw ValidationError("--sizes '\(sizes)': must be comma-separated batch sizes in 1...4096")
        }
        return values.map { $0! }
    }

    func run() throws {
        let url = modelFile(checkpoint)
        Parallelism.threadCount = threads
        BLAS.setThreads(1)
        var file = try TrainingCheckpoint.read(at: url)
        // The statistics of batches of each size B: no ghost batches inside them (normBatch does not change the
        // model's tensors).
        file.configuration.normBatch = nil
        guard file.configuration.norm == .bn else {
            throw CommandFailure(
                "\(url.path) is a \(file.configuration.norm.rawValue) model: the statistics measured are BN's (g_B and Ψ_B of a BN layer); give a checkpoint trained with --norm bn"
            )
        }
        let directory =
            try data.map { URL(fileURLWithPath: $0) }
            ?? file.data?.source.map { try TrainCommand.recordedDirectory($0, of: url) }
        let population = self.population ?? Self.defaultPopulation
        let (train, _) = try FashionMNIST.load(
            directory: directory, trainLimit: population, testLimit: 1,
            statistics: file.data?.statistics)
        // An explicit --population is used as given or refused, never cut to the training set's size.
        if let asked = self.population, train.count < asked {
            throw CommandFailure(
                "--population \(asked): the training set in \((directory ?? FashionMNIST.defaultDirectory).path) has "
                    + "only \(train.count) images; give at most \(train.count) (or leave --population out)")
        }
        let model = try TrainingCheckpoint.buildModel(
            for: file, at: url, inChannels: train.channels,
            classes: train.classCount)
        let report = try BatchStatisticsAnalysis.run(
            model: model, data: train, batchSizes: try parsedSizes(),
            batches: batches, populationImages: train.count, seed: seed,
            checkpoint: url.path)
        let output = URL(fileURLWithPath: out ?? url.deletingLastPathComponent().appendingPathComponent("stats").path)
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        let table = report.markdown()
        try AtomicFile.write(Array((table + "\n").utf8), to: output.appendingPathComponent("stats.md"))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(Array(try encoder.encode(report)), to: output.appendingPathComponent("stats.json"))
        try AtomicFile.write(Array(report.svg().utf8), to: output.appendingPathComponent("stats.svg"))
        print(
            "normkit stats: \(url.path), \(report.populationImages) population images, \(batches) batches per size; "
                + "relative deviation from the population value (per channel, then the mean over channels)")
        print(table)
        print("written in \(output.path): stats.md, stats.json, stats.svg")
    }
}
