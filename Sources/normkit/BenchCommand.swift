import ArgumentParser
import Foundation
import NormKitExperiments
import NormKitTraining

/// `normkit bench`: GroupNorm and BatchNorm kernel timings as a fraction of copy bandwidth; with `--inference`,
/// the eval forward of a GN ResNet against the folded MABN ResNet of the same depth.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time GN and BN forward and forward+backward against this machine's memory-copy bandwidth.",
        discussion: """
            The copy bandwidth (a 256 MB memcpy, the same statistic as the rows) is measured before the first row \
            and after every row; each row's fractions use the mean of the two around it, so a machine whose speed \
            drifts over the run is compared with itself. The kernel table also times BN's evaluation forward (its \
            running statistics' affine) and, for tensors \
            below the streaming-store threshold, a memcpy of the same tensor on the same threads: the floor of any \
            forward at that size and cache level ("copy / fwd": the fraction of it a forward reaches). With \
            --inference: latency per image at batch 1 and throughput at --batch of a GN ResNet, the same MABN \
            ResNet in eval mode and folded (normkit export --fold), timed alternately in one run. With \
            --streaming-check: whether streaming a normalization's output pays once the convolution that reads it \
            is counted (conv → GroupNorm → conv, forward and forward+backward, output cached and streamed alternated).
            """)

    @Option(parsing: .number, help: "Threads for the kernels (the default is this machine's core count).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(parsing: .number, help: "Timed repetitions per measurement (default 9, 200 with --inference).")
    var repetitions: Int?

    @Option(
        help: """
            What to report of the repetitions: median (the typical time) or best (the shortest: the steadier way to \
            compare two builds alternated on a shared machine). Kernel table only.
            """)
    var statistic: KernelBenchmark.Statistic = .median

    @Flag(help: "Time inference instead: a GN ResNet vs the folded MABN ResNet of the same depth.")
    var inference = false

    @Flag(
        help: """
            Time conv → GroupNorm → conv chains with the normalization's outputs cached and streamed, alternated \
            (--shapes: 4-D; --repetitions: pairs, default 100).
            """)
    var streamingCheck = false

    @Option(parsing: .number, help: "With --inference: the ResNet depth (6n+2; default 20).")
    var depth: Int?

    @Option(parsing: .number, help: "With --inference: the batch of the throughput measurement (default 32).")
    var batch: Int?

    @Option(help: "Memory order: channelsFirst (NCHW) or channelsLast (NHWC); default both, side by side.")
    var layout: TensorLayout?

    @Option(
        parsing: .list,
        help: """
            Shapes to time instead of the defaults, e.g. '8x64x14x14,2x2048x7x7' (each small enough that the \
            benchmark's tensors of it fit in half this machine's memory).
            """)
    var shapes: String?

    @Option(
        parsing: .number,
        help: """
            Groups of the GroupNorm rows (default 32; 1 times LayerNorm). A shape with fewer channels C than that \
            gets G = C (InstanceNorm), as the GN paper's default does, and a note says so; the rows are labelled \
            with the G used. G must divide every shape's C. Kernel table only.
            """)
    var groups: Int?

    @Flag(help: "Time the layers without γ and β (affine: false); the rows say so. Kernel table only.")
    var withoutAffine = false

    @Option(
        help: """
            The layers of the kernel table, comma-separated, from gn, gn-silu, bn, brn, mabn, frozen-bn (default \
            gn,gn-silu,bn; frozen-bn keeps its frozen γ, β with --without-affine). Kernel table only.
            """)
    var layers: String?

    /// ``layers`` parsed (the defaults without it).
    func parsedLayers() throws -> [KernelBenchmark.Layer] {
        guard let layers else { return KernelBenchmark.Layer.defaults }
        let names = layers.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let valid = KernelBenchmark.Layer.allCases.map(\.rawValue).joined(separator: ", ")
        return try names.map { name in
            guard let layer = KernelBenchmark.Layer(rawValue: name) else {
                throw ValidationError("--layers '\(layers)': '\(name)' is not one of \(valid)")
            }
            return layer
        }
    }

    @Option(
        help: """
            Fuse this activation (relu or silu) into every layer of the kernel table but gn-silu, which keeps \
            SiLU; the rows' names say which (BatchNorm+ReLU: the ResNets' block). Kernel table only.
            """)
    var activation: FusedActivation = .identity

    @Option(
        help: """
            Write the rows as JSON to this file too (checked before any timing: its directory must exist; an \
            existing file is refused unless --overwrite is given).
            """)
    var json: String?

    @Flag(help: "Replace the --json file if it exists (only a regular file, or the file a symbolic link points to).")
    var overwrite = false

    @Option(
        parsing: .number,
        help: """
            Outputs of at least this many elements are written with non-temporal stores (default: NormKit's, \
            \(KernelDispatch.streamingStoreThreshold); 0: every output). Kernel table only.
            """)
    var streamingThreshold: Int?

    func validate() throws {
        try validateThreads(threads)
        if overwrite, json == nil {
            throw ValidationError("--overwrite replaces the --json file: pass --json FILE, or leave --overwrite out")
        }
        if let repetitions, repetitions < 1 {
            throw ValidationError("--repetitions must be at least 1, got \(repetitions)")
        }
        if let streamingThreshold, streamingThreshold < 0 {
            throw ValidationError("--streaming-threshold must be 0 or more elements, got \(streamingThreshold)")
        }
        if inference, streamingCheck {
            throw ValidationError("--inference and --streaming-check are two different benchmarks: choose one")
        }
        if streamingCheck, streamingThreshold != nil || statistic != .median || layout != nil {
            throw ValidationError(
                "--streaming-check compares cached and streamed outputs in the convolutions' layout (median of pairs): "
                    + "--streaming-threshold, --statistic and --layout do not apply")
        }
        if streamingCheck, let shapes, try parsedShapes().contains(where: { $0.count != 4 }) {
            throw ValidationError("--streaming-check: --shapes '\(shapes)' must all be NxCxHxW")
        }
        if inference || streamingCheck, activation != .identity {
            throw ValidationError("--activation applies to the kernel table, not to --inference or --streaming-check")
        }
        if inference, streamingThreshold != nil {
            throw ValidationError("--streaming-threshold applies to the kernel table, not to --inference")
        }
        if inference, statistic != .median {
            throw ValidationError("--statistic applies to the kernel table, not to --inference (which reports medians)")
        }
        if let groups {
            guard groups >= 1 else { throw ValidationError("--groups must be at least 1, got \(groups)") }
            if inference || streamingCheck {
                throw ValidationError("--groups applies to the kernel table, not to --inference or --streaming-check")
            }
        }
        if withoutAffine, inference || streamingCheck {
            throw ValidationError(
                "--without-affine applies to the kernel table, not to --inference or --streaming-check")
        }
        if layers != nil, inference || streamingCheck {
            throw ValidationError("--layers applies to the kernel table, not to --inference or --streaming-check")
        }
        let chosen = try parsedLayers()
        if Set(chosen).count != chosen.count {
            throw ValidationError("--layers '\(layers ?? "")' names a layer twice")
        }
        let groups = self.groups ?? KernelBenchmark.defaultGroups
        if !inference, !streamingCheck,
            let shape = try parsedShapes().first(where: { $0[1] % min(groups, $0[1]) != 0 })
        {
            throw ValidationError(
                "--groups \(groups): \(min(groups, shape[1])) groups do not divide the \(shape[1]) channels of shape "
                    + shape.map(String.init).joined(separator: "x"))
        }
        if !inference, depth != nil || batch != nil {
            throw ValidationError("--depth and --batch apply to --inference (the kernel table times the given shapes)")
        }
        if inference, shapes != nil || layout != nil {
            throw ValidationError(
                "--shapes and --layout apply to the kernel table and --streaming-check, not to --inference "
                    + "(which times ResNets on 1×28×28 images; --depth and --batch set them)")
        }
        if let depth {
            guard depth >= 8, depth <= ConfigurationLimits.maxResNetDepth, (depth - 2) % 6 == 0 else {
                throw ValidationError(
                    "--depth \(depth): must be 6n+2 between 8 and \(ConfigurationLimits.maxResNetDepth)")
            }
        }
        if let batch {
            guard (1...ConfigurationLimits.maxBatch).contains(batch) else {
                throw ValidationError("--batch \(batch): must be in 1...\(ConfigurationLimits.maxBatch)")
            }
        }
        if !inference, shapes != nil {
            let memory = MemoryLimit.bytes / 2
            for shape in try parsedShapes() {
                let name = shape.map(String.init).joined(separator: "x")
                let (bytes, what) =
                    streamingCheck
                    ? (StreamingStoreBenchmark.bytesNeeded(for: shape), "the conv → GroupNorm → conv chain")
                    : (KernelBenchmark.bytesNeeded(for: shape), "\(KernelBenchmark.tensorsPerShape) tensors of it")
                guard let bytes, bytes <= memory else {
                    throw ValidationError(
                        "--shapes: \(name) needs "
                            + (bytes.map { "\(Self.byteText($0)) (\($0) bytes) for \(what)" }
                                ?? "more bytes than a 64-bit count holds for \(what)")
                            + ", more than half this machine's memory (\(Self.byteText(memory))): give smaller shapes")
                }
            }
        }
    }

    /// `12.3 GB` (decimal units).
    static func byteText<T: BinaryInteger>(_ bytes: T) -> String {
        let value = Double(bytes)
        for (unit, scale) in [("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)]
        where value >= scale {
            return String(format: "%.1f %@", value / scale, unit)
        }
        return "\(bytes) bytes"
    }

    func parsedShapes() throws -> [[Int]] {
        guard let shapes else { return KernelBenchmark.defaultShapes }
        let items = shapes.split(separator: ",", omittingEmptySubsequences: false)
        guard items.contains(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) else {
            throw ValidationError("--shapes '\(shapes)': give at least one shape, e.g. '8x64x14x14,2x2048x7x7'")
        }
        return try items.map { item in
            let dims = item.split(separator: "x", omittingEmptySubsequences: false).map {
                Int($0.trimmingCharacters(in: .whitespaces))
            }
            guard (2...5).contains(dims.count), dims.allSatisfy({ ($0 ?? 0) >= 1 }) else {
                throw ValidationError(
                    "--shapes: '\(item)' is not NxCx… with 2 to 5 positive dimensions "
                        + "(shapes are separated by commas)")
            }
            let shape = dims.map { $0! }
            guard KernelBenchmark.elementCount(shape) != nil else {
                throw ValidationError(
                    "--shapes: '\(item)' has more elements than a 64-bit count holds (\(Int.max)): give smaller shapes")
            }
            return shape
        }
    }

    func run() throws {
        try checkJSONDestination()
        Parallelism.threadCount = threads
        #if DEBUG
            print("warning: this is a debug build; benchmark a release build (swift build -c release)")
        #endif
        if inference { return try runInference() }
        if streamingCheck { return try runStreamingCheck() }
        if let streamingThreshold { KernelDispatch.streamingStoreThreshold = streamingThreshold }
        let repetitions = repetitions ?? 9
        let groups = self.groups ?? KernelBenchmark.defaultGroups
        for shape in try parsedShapes() where shape[1] < groups {
            print(
                "note: the GroupNorm rows of \(shape.map(String.init).joined(separator: "x")) use G = \(shape[1]) "
                    + "(InstanceNorm): \(self.groups == nil ? "the default " : "")--groups \(groups) is more than "
                    + "its \(shape[1]) channels")
        }
        let meter = KernelBenchmark.CopyBandwidthMeter(threads: threads)
        let layouts = layout.map { [$0] } ?? TensorLayout.allCases
        let rows = try KernelBenchmark.run(
            shapes: try parsedShapes(), layouts: layouts, groups: groups, layers: try parsedLayers(),
            repetitions: repetitions, statistic: statistic, affine: !withoutAffine, activation: activation
        ) { meter.measure(statistic) }
        print(
            "normkit bench: \(threads) thread(s), layouts \(layouts.map(\.rawValue).joined(separator: " and ")), kernels \(KernelDispatch.description), \(statistic.rawValue) of \(repetitions), streaming stores from \(KernelDispatch.streamingStoreThreshold) elements, L2 \(KernelDispatch.levelTwoCacheBytes >> 10) KB"
        )
        print(KernelBenchmark.markdown(rows))
        try writeJSON(rows)
    }

    /// `--inference`: GN vs folded MABN ResNet eval forwards.
    func runInference() throws {
        let repetitions = repetitions ?? 200
        let depth = self.depth ?? 20, batch = self.batch ?? 32
        BLAS.setThreads(1)
        let rows = try InferenceBenchmark.run(depth: depth, batch: batch, repetitions: repetitions)
        print(
            "normkit bench --inference: ResNet-\(depth), 1×28×28 images, eval forward, \(threads) thread(s), "
                + "median of \(repetitions) (batch 1) / \(max(1, repetitions / 4)) (batch \(batch)), models alternated")
        print(InferenceBenchmark.markdown(rows))
        try writeJSON(rows)
    }

    /// `--streaming-check`: conv → GN → conv with the normalization's outputs cached vs streamed.
    func runStreamingCheck() throws {
        let pairs = repetitions ?? 100
        let shapes = self.shapes == nil ? StreamingStoreBenchmark.defaultShapes : try parsedShapes()
        let rows = try StreamingStoreBenchmark.run(shapes: shapes, pairs: pairs)
        print(
            "normkit bench --streaming-check: \(threads) thread(s), convolutions \(ConvolutionEngine.preferred.versionDescription) "
                + "(\(ConvolutionEngine.preferred.activationLayout.rawValue)), median of \(pairs) alternated pairs; "
                + "the default threshold streams outputs of \(KernelDispatch.streamingStoreThreshold) elements or more")
        print(StreamingStoreBenchmark.markdown(rows))
        try writeJSON(rows)
    }

    /// Refuses a `--json` destination that the write at the end would fail on or that holds a file not to be
    /// replaced, before any timing: a missing directory, a directory, a pipe or device, an existing file without
    /// `--overwrite`.
    func checkJSONDestination() throws {
        guard let json else { return }
        guard !json.isEmpty else { throw CommandFailure("--json: the file name is empty") }
        let given = URL(fileURLWithPath: json)
        // A pipe, a device or a directory (itself or as a link's target) is refused here.
        let target = try AtomicFile.resolvedDestination(of: given)
        let directory = target.deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            throw CommandFailure("--json \(json): the directory \(directory) does not exist; create it first")
        }
        guard isDirectory.boolValue else {
            throw CommandFailure("--json \(json): \(directory) is not a directory")
        }
        guard FileManager.default.isWritableFile(atPath: directory) else {
            throw CommandFailure("--json \(json): the directory \(directory) is not writable")
        }
        if !overwrite, FileManager.default.fileExists(atPath: target.path) {
            throw CommandFailure(
                "--json \(json): \(given.path) already exists; pass --overwrite to replace it, or choose another file")
        }
    }

    func writeJSON<T: Encodable>(_ rows: T) throws {
        guard let json else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(Array(try encoder.encode(rows)), to: URL(fileURLWithPath: json), replacing: overwrite)
    }
}

extension TensorLayout: ExpressibleByArgument {}
extension KernelBenchmark.Statistic: ExpressibleByArgument {}
extension FusedActivation: ExpressibleByArgument {}
