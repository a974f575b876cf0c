import ArgumentParser
import Foundation
import NormKitTraining

/// `normkit bench`: GroupNorm and BatchNorm kernel timings as a fraction of copy bandwidth.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time GN and BN forward and forward+backward against this machine's memory-copy bandwidth.")

    @Option(help: "Threads for the kernels (default: all cores).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "Timed repetitions per measurement (the median is reported).")
    var repetitions: Int = 9

    @Option(help: "Memory order: channelsFirst (NCHW) or channelsLast (NHWC).")
    var layout: TensorLayout = .channelsFirst

    @Option(help: "Write the rows as JSON to this file too.")
    var json: String?

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be at least 1, got \(repetitions)") }
    }

    func run() throws {
        Parallelism.threadCount = threads
        #if DEBUG
        print("warning: this is a debug build; benchmark a release build (swift build -c release)")
        #endif
        let copy = KernelBenchmark.copyBandwidth(threads: threads)
        let rows = try KernelBenchmark.run(layout: layout, repetitions: repetitions, copyBytesPerSecond: copy)
        print("normkit bench: \(threads) thread(s), layout \(layout.rawValue), median of \(repetitions)")
        print(KernelBenchmark.markdown(rows, copyBytesPerSecond: copy))
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(rows).write(to: URL(fileURLWithPath: json), options: .atomic)
        }
    }
}

extension TensorLayout: ExpressibleByArgument {}
