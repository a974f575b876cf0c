import ArgumentParser
import Foundation
import NormKitExperiments
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

    @Option(help: "Shapes to time instead of the defaults, e.g. '8x64x14x14,2x2048x7x7'.")
    var shapes: String?

    @Option(help: "Write the rows as JSON to this file too.")
    var json: String?

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be at least 1, got \(repetitions)") }
        _ = try parsedShapes()
    }

    func parsedShapes() throws -> [[Int]] {
        guard let shapes else { return KernelBenchmark.defaultShapes }
        return try shapes.split(separator: ",").map { item in
            let dims = item.split(separator: "x").compactMap { Int($0) }
            guard dims.count == item.split(separator: "x").count, (2...5).contains(dims.count),
                  dims.allSatisfy({ $0 >= 1 }) else {
                throw ValidationError("--shapes: '\(item)' is not NxCx… with 2 to 5 positive dimensions")
            }
            return dims
        }
    }

    func run() throws {
        Parallelism.threadCount = threads
        #if DEBUG
        print("warning: this is a debug build; benchmark a release build (swift build -c release)")
        #endif
        let copy = KernelBenchmark.copyBandwidth(threads: threads)
        let rows = try KernelBenchmark.run(shapes: try parsedShapes(), layout: layout, repetitions: repetitions, copyBytesPerSecond: copy)
        print("normkit bench: \(threads) thread(s), layout \(layout.rawValue), kernels \(KernelDispatch.description), median of \(repetitions)")
        print(KernelBenchmark.markdown(rows, copyBytesPerSecond: copy))
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(rows).write(to: URL(fileURLWithPath: json), options: .atomic)
        }
    }
}

extension TensorLayout: ExpressibleByArgument {}
