import ArgumentParser
import Dispatch
import Foundation
import NormKitExperiments
import NormKitTraining

/// `normkit sweep`: a grid of training runs, collected into a table, a CSV and plots.
struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Run a grid of trainings (normalizations × normalization batch sizes × seeds) and report it.",
        discussion: """
            Presets: quick (CI smoke test), demo (the README's 5–20-minute main job), paper-table2 (BN vs GN over \
            normalization batches 32..2), paper-table3 (GN groups), mabn (BN, BRN, MABN, GN over 32..2), \
            small-batch (true SGD batches 32..2), mabn-ablation (MABN minus each part), paper-table1 (BN, LN, IN, GN curves), vgg (VGG: none, BN, GN). Each run \
            lands in its own directory; an interrupted sweep started again skips finished runs and resumes the \
            unfinished one from its checkpoint. `normkit report DIR` rebuilds the report.
            """)

    @Option(help: "quick, demo, paper-table2, paper-table3, mabn, small-batch, mabn-ablation, paper-table1 or vgg.")
    var preset: String = "demo"
    @Option(help: "Sweep directory (default runs/sweep-<preset>).")
    var out: String?
    @Option(parsing: .list, help: "Comma-separated seeds, overriding the preset's.")
    var seeds: String?
    @Option(parsing: .number, help: "Threads (per run; divided among the ranks of a --ranks cell).")
    var threads = 2
    @Option(
        parsing: .number,
        help: ArgumentHelp(
            "Real ranks instead of ghost batches: BN, BRN and MABN cells below the SGD batch run under mpirun.",
            discussion: "A cell with normalization batch k in SGD batch B runs on gcd(R, B/k) ranks (mpirun -np, "
                + "each rank's B/R images in ghost batches of k); other cells run in this process. Default sweep "
                + "directory: runs/sweep-<preset>-r<R>. Needs openmpi-bin and libopenmpi-dev."))
    var ranks: Int?
    @Option(parsing: .list, help: "Only these normalizations of the preset, comma-separated (e.g. bn,gn).")
    var norms: String?
    @Option(parsing: .list, help: "Only these normalization batches of the preset, comma-separated (e.g. 16,8).")
    var normBatches: String?
    @OptionGroup var dataOptions: DataOptions

    func validate() throws {
        _ = try SweepPresets.named(preset)
        try validateThreads(threads)
        try validateNotEmpty(out, "--out", "a sweep directory")
        if let ranks, ranks < 1 { throw ValidationError("--ranks must be at least 1, got \(ranks)") }
        _ = try parsedSeeds()
        _ = try parsedFilter()
    }

    /// The cells `--norms` and `--norm-batches` keep (every cell without them).
    func parsedFilter() throws -> (SweepCell) -> Bool {
        let kinds = try norms.map { list in
            try Set(
                list.split(separator: ",").map { name -> NormKind in
                    guard let kind = NormKind(rawValue: name.trimmingCharacters(in: .whitespaces)) else {
                        throw ValidationError(
                            "--norms: '\(name)' is not one of \(NormKind.allCases.map(\.rawValue).joined(separator: ", "))"
                        )
                    }
                    return kind
                })
        }
        let batches = try normBatches.map { list in
            try Set(
                list.split(separator: ",").map { value -> Int in
                    guard let size = Int(value.trimmingCharacters(in: .whitespaces)), size >= 1 else {
                        throw ValidationError("--norm-batches must be comma-separated positive integers, got '\(list)'")
                    }
                    return size
                })
        }
        return { cell in
            (kinds?.contains(cell.configuration.norm) ?? true)
                && (batches.map { !$0.isDisjoint(with: cell.columns) } ?? true)
        }
    }

    func parsedSeeds() throws -> [UInt64]? {
        guard let seeds else { return nil }
        let values = seeds.split(separator: ",").compactMap { UInt64($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.count == seeds.split(separator: ",").count else {
            throw ValidationError("--seeds must be comma-separated non-negative integers, got '\(seeds)'")
        }
        return values
    }

    func run() throws {
        let preset = try SweepPresets.named(preset)
        var plan = preset.plan
        if let seeds = try parsedSeeds() { plan.seeds = seeds }
        plan.base.threads = threads
        plan.ranks = ranks
        let include = try parsedFilter()
        if let limit = dataOptions.trainLimit { plan.base.trainLimit = limit }
        if let limit = dataOptions.testLimit { plan.base.testLimit = limit }
        let directory = URL(fileURLWithPath: out ?? "runs/sweep-\(preset.name)\(ranks.map { "-r\($0)" } ?? "")")
        Parallelism.threadCount = threads
        BLAS.setThreads(1)

        // Every cell passes the checks of a new run before anything is built or trained.
        let cells = try plan.cells(including: include)
        guard !cells.isEmpty else { throw CommandFailure("--norms/--norm-batches leave no cell of the preset") }
        if cells.contains(where: { $0.ranks != nil }) { _ = try RankedRun.mpirun() }
        for cell in cells {
            do { try cell.configuration.validate() } catch let error as ConfigurationError {
                throw CommandFailure("sweep cell \(cell.runName): \(error.description)")
            }
        }
        // One sweep per directory at a time (each run also locks its own directory).
        let sweepLock = try RunDirectoryLock.acquire(directory)
        defer { sweepLock.release() }
        if let warning = ConvolutionEngine.staleConfigurationWarning {
            FileHandle.standardError.write(Data((warning + "\n").utf8))
        }
        let speed = try measureThroughput(plan.base)
        let estimate = plan.estimatedSeconds(imagesPerSecond: speed, including: include)
        print("normkit sweep --preset \(preset.name): \(preset.description)")
        print(
            String(
                format: "%d runs; this machine trains ResNet-8 at about %.0f images/s, so expect about %@.",
                cells.count, speed, ProgressReporter.clock(estimate)))
        print("results → \(directory.path)")

        var datasets: [String: (train: Dataset, test: Dataset)] = [:]
        let interactive = isatty(STDOUT_FILENO) == 1
        Trainer.stopOnInterrupt()
        let runner = SweepRunner(plan: plan, directory: directory, include: include) { cell, runDirectory in
            if let ranks = cell.ranks {
                return try RankedRun(
                    cell: cell, ranks: ranks, directory: runDirectory,
                    threads: max(1, threads / ranks), data: dataOptions.data
                ).run()
            }
            let configuration = cell.configuration
            let key = "\(configuration.trainLimit ?? -1)/\(configuration.testLimit ?? -1)"
            if datasets[key] == nil {
                datasets[key] = try dataOptions.load(
                    trainLimit: configuration.trainLimit,
                    testLimit: configuration.testLimit)
            }
            let (train, test) = datasets[key]!
            // GN, LN, IN, … cells as in-process replicas (TrainingThreading.auto), the others as one model.
            let run = try ThreadedRun(
                configuration: configuration, train: train, test: test, output: runDirectory,
                progress: ProgressReporter(style: interactive ? .bar : .silent))
            if FileManager.default.fileExists(
                atPath: runDirectory.appendingPathComponent(TrainingCheckpoint.modelFileName).path)
            {
                try run.resume(from: runDirectory)
            } else {
                // Records without a checkpoint (a run that died before its first save) are this cell's own: redo it.
                run.forEach { $0.replacesExistingRun = true }
            }
            do {
                return try run.run()
            } catch TrainingError.interrupted(let step, _) {
                print(
                    "\ninterrupted at step \(step) of \(runDirectory.lastPathComponent); its checkpoint is saved. "
                        + "Run the same command again to continue the sweep.")
                Foundation.exit(128 + (Trainer.lastInterruptSignal ?? SIGINT))
            }
        }
        runner.log = { print($0) }
        let outcome = try runner.run()
        let report = try SweepReport.build(from: directory)
        print("\n" + report.markdown())
        if !outcome.failedRuns.isEmpty {
            print("failed runs (see error.txt in each): \(outcome.failedRuns.joined(separator: ", "))")
        }
        print("table: \(directory.appendingPathComponent("results.md").path)")
        let plot = plan.groupAxis.isEmpty ? "error_vs_batch.svg" : "error_vs_groups.svg"
        print(
            "plot:  \(directory.appendingPathComponent(plot).path) (and .png; training curves in training_curves.svg)")
        if !outcome.failedRuns.isEmpty { throw ExitCode.failure }
    }

    /// Images per second of a few ResNet-8 training steps on random data (for the duration estimate).
    func measureThroughput(_ base: TrainingConfiguration) throws -> Double {
        var generator = SeededGenerator(seed: 1)
        let settings = NormalizationSettings(kind: .gn)
        let model = try makeModel(named: base.model, normalization: settings, seed: 1)
        let x = Tensor.randomNormal(shape: [base.batch, 1, 28, 28], using: &generator)
        let labels = (0..<base.batch).map { $0 % 10 }
        let loss = SoftmaxCrossEntropy()
        var dlogits = Tensor(zeros: [0, 0])
        func step() throws {
            _ = try loss.forward(logits: try model.forward(x, training: true), labels: labels)
            try loss.backward(into: &dlogits)
            try model.backward(dlogits)
        }
        try step()
        let steps = 8
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<steps { try step() }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return Double(steps * base.batch) / max(seconds, 1e-9)
    }
}

/// `normkit report DIR`: rebuild a sweep's table, CSV/JSON and plots from its run directories.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report", abstract: "Rebuild results.md, runs.csv/json and the plots of a (partial) sweep.")

    @Argument(help: "The sweep directory.")
    var directory: String

    func run() throws {
        let url = URL(fileURLWithPath: directory)
        guard try SweepPlanRecord.read(from: url) != nil else {
            throw CommandFailure(
                "\(url.path) is not a sweep directory (it has no \(SweepPlanRecord.fileName)); "
                    + "`normkit report` rebuilds the report of a directory written by `normkit sweep`, "
                    + "and writes nothing elsewhere")
        }
        let report = try SweepReport.build(from: url)
        try report.write(to: url)
        print(report.markdown())
        let files = [
            "results.md", "runs.csv", "runs.json", "error_vs_batch.svg", "error_vs_batch.png",
            "error_vs_groups.svg", "error_vs_groups.png", "training_curves.svg", "training_curves.png",
        ]
        let written = files.filter { FileManager.default.fileExists(atPath: url.appendingPathComponent($0).path) }
        print("written in \(url.path): \(written.joined(separator: ", "))")
    }
}
