import ArgumentParser
import NormKitTraining

@main
struct NormKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "normkit",
        abstract: "Normalization layers for small batches: benchmark, train, evaluate, sweep.",
        subcommands: [TrainCommand.self, EvalCommand.self, SweepCommand.self, ReportCommand.self, BenchCommand.self])
}
