import ArgumentParser
import Foundation
import NormKitTraining

@main
struct NormKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "normkit",
        abstract: "Normalization layers for small batches: benchmark, train, evaluate, sweep.",
        subcommands: [TrainCommand.self, EvalCommand.self, SweepCommand.self, ReportCommand.self, BenchCommand.self])

    /// Line-buffers standard output first, so that progress lines reach a log file (`normkit sweep … > log`) as
    /// they are printed rather than when a 4 KB buffer fills, then parses and runs the command.
    static func main() {
        setvbuf(stdout, nil, _IOLBF, 0)
        main(nil)
    }
}
