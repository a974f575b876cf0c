// normkit-allocations: counts the heap allocations of NormKit's training steps once their buffers are sized.
//
// The project's rule is that hot loops allocate nothing per step: layers write into caller-owned tensors
// (`forward(_:into:training:)`, `backward(_:into:)`) and keep their workspaces between steps. This tool runs
// each normalization layer, and whole ResNet-8 training steps, a few times to size every buffer, then counts
// the allocation calls of the following steps with malloc-interposer, and prints Markdown tables:
//
// 1. every normalization layer in both memory orders on a small input (single-threaded kernels), a training step
//    and an evaluation forward, on (N, C, H, W) and on (N, C) (one position per sample, which the kernels walk as a
//    matrix): enforced, the tool exits 1 if any row is above 0;
// 2. the same on an input large enough for the kernels to use 2 threads: reported only;
// 3. whole ResNet-8 training steps (GN, BN), split into forward, loss, backward and SGD: reported only;
// 4. the same steps on one thread with the im2col engine: enforced, the tool exits 1 if any is above 0.
//
// Run it with the interposer preloaded (see README.md):
//     LD_PRELOAD=.build/release/libMallocInterposerSwift.so .build/release/normkit-allocations

import Foundation
import NormKit
import NormKitTraining

/// Steps run before counting: the first step sizes every buffer.
let warmUpSteps = 3
/// Steps whose allocations are counted.
let measuredSteps = 20
/// The enforced layers' input `(N, C, H, W)`: small enough that every kernel runs on the calling thread.
let layerShape = [8, 16, 6, 6]
/// The enforced layers' input with one position per sample (`NormalizationGeometry.kernelForm`: BN's ghost batches
/// become the positions of one sample).
let flatLayerShape = [8, 16]
/// A larger input, 131,072 elements: twice `Parallelism.forEachRange`'s default minimum work, so with 2 threads
/// the kernels split their work through `DispatchQueue.concurrentPerform`.
let threadedLayerShape = [8, 16, 32, 32]
/// The models' batch size.
let modelBatch = 8

/// Formats `total / steps` as a per-step number: exact when it divides, else two decimals.
func perStep(_ total: Int, _ steps: Int) -> String {
    total % steps == 0 ? "\(total / steps)" : String(format: "%.2f", Double(total) / Double(steps))
}

/// `"8×16×6×6"`.
func shapeText(_ shape: [Int]) -> String { shape.map(String.init).joined(separator: "×") }

/// Prints a table of every layer case in both layouts on input `shape`, and returns the rows that allocate.
func measureLayers(shape: [Int]) throws -> [String] {
    print("| layer | layout | mallocs per step (forward+backward, evaluation forward) |\n|---|---|---|")
    var allocating: [String] = []
    for layerCase in LayerCase.all {
        for layout in [TensorLayout.channelsFirst, .channelsLast] {
            var step = try LayerTrainingStep(layerCase, shape: shape, layout: layout, seed: 1)
            let total = try step.mallocs(afterWarmUp: warmUpSteps, measured: measuredSteps)
            print("| \(layerCase.label) | \(layout.rawValue) | \(perStep(total, measuredSteps)) |")
            if total > 0 { allocating.append("\(layerCase.label) (\(layout.rawValue))") }
        }
    }
    return allocating
}

// Refuse to report counts that cannot move.
guard AllocationCounter.interposerIsLoaded() else {
    let executable = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
    let library = executable.deletingLastPathComponent().appendingPathComponent("libMallocInterposerSwift.so")
    FileHandle.standardError.write(
        Data(
            """
            normkit-allocations: allocations are not being counted (malloc-interposer does not intercept malloc in \
            this process), so every count would be 0.
            Run it with the interposer's library preloaded (it is built next to this executable):
                LD_PRELOAD=\(library.path) \(executable.path)

            """.utf8))
    exit(2)
}

// OpenBLAS 0.3.21's small-matrix sgemm kernels of its AVX-512 families allocate 512 bytes per call
// (`sgemm_small_kernel_b0_nn_COOPERLAKE`, seen on the AMD Zen 4 machine kind with a backtracing malloc; SkylakeX
// likewise): a one-thread ResNet-8 step counted 1 allocation that is OpenBLAS's, not NormKit's. The tool then runs
// again with OpenBLAS's AVX2 family, whose kernels allocate nothing, and says so.
let allocatingBLASFamilies: Set<String> = ["SkylakeX", "Cooperlake"]
if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil, allocatingBLASFamilies.contains(BLAS.coreName) {
    print(
        "OpenBLAS chose its \(BLAS.coreName) kernels, whose small-matrix sgemm allocates per call (OpenBLAS 0.3.21): "
            + "running again with OPENBLAS_CORETYPE=Haswell so that the counts are NormKit's.")
    fflush(nil)  // the line above, before the exec replaces this process
    setenv("OPENBLAS_CORETYPE", "Haswell", 1)
    execv("/proc/self/exe", CommandLine.arguments.map { strdup($0) } + [nil])
}

// The trainer's threading: NormKit kernels over 2 threads, OpenBLAS single-threaded (layers thread over images).
Parallelism.threadCount = 2
BLAS.setThreads(1)

print(
    """
    Allocation calls per training step after \(warmUpSteps) warm-up steps, averaged over \(measuredSteps) steps \
    (Parallelism.threadCount = \(Parallelism.threadCount), OpenBLAS threads = \(BLAS.threads), OpenBLAS kernels \
    \(BLAS.coreName)).

    Normalization layers, input \(shapeText(layerShape)), single-threaded kernels (enforced: must be 0):

    """)
var allocatingLayers = try measureLayers(shape: layerShape)

print(
    """

    Normalization layers, input \(shapeText(flatLayerShape)), single-threaded kernels (enforced: must be 0):

    """)
allocatingLayers += try measureLayers(shape: flatLayerShape).map { "\($0) on \(shapeText(flatLayerShape))" }

print(
    """

    Normalization layers, input \(shapeText(threadedLayerShape)), kernels split over \(Parallelism.threadCount) \
    threads (reported, not enforced):

    """)
_ = try measureLayers(shape: threadedLayerShape)

print(
    """

    Whole training steps (forward, loss, backward, SGD), batch \(modelBatch) of 1×28×28, on each convolution engine \
    this build has (oneDNN: channels-last network; im2col: channels-first) (reported, not enforced):

    | model | engine | forward | loss | backward | SGD step | mallocs per step |
    |---|---|---|---|---|---|---|
    """)
for engine in ConvolutionEngine.allCases where engine.isAvailable {
    for (label, kind) in [("ResNet-8 + GN", NormKind.gn), ("ResNet-8 + BN", NormKind.bn)] {
        var step = try ModelTrainingStep(
            modelName: "resnet8", normalization: NormalizationSettings(kind: kind),
            batch: modelBatch, seed: 1, engine: engine)
        let counts = try step.mallocs(afterWarmUp: warmUpSteps, measured: measuredSteps)
        let parts = [counts.forward, counts.loss, counts.backward, counts.optimizer, counts.total]
        print("| \(label) | \(engine) | " + parts.map { perStep($0, measuredSteps) }.joined(separator: " | ") + " |")
    }
}

print(
    """

    Whole training steps on one thread (Parallelism.threadCount = 1), im2col engine (enforced: must be 0; the \
    oneDNN engine's steps allocate inside `dnnl_primitive_execute`, see README.md):

    | model | mallocs per step |
    |---|---|
    """)
var allocatingSteps: [String] = []
Parallelism.threadCount = 1
for (label, kind) in [("ResNet-8 + GN", NormKind.gn), ("ResNet-8 + BN", NormKind.bn)] {
    var step = try ModelTrainingStep(
        modelName: "resnet8", normalization: NormalizationSettings(kind: kind),
        batch: modelBatch, seed: 1, engine: .im2col)
    let counts = try step.mallocs(afterWarmUp: warmUpSteps, measured: measuredSteps)
    print("| \(label) | \(perStep(counts.total, measuredSteps)) |")
    if counts.total > 0 { allocatingSteps.append("\(label) (im2col, one thread)") }
}
Parallelism.threadCount = 2

if !allocatingSteps.isEmpty {
    print(
        "\nFAIL: \(allocatingSteps.count) whole training step(s) allocate on one thread: "
            + allocatingSteps.joined(separator: ", ") + ".")
    exit(1)
}

if allocatingLayers.isEmpty {
    print(
        "\nOK: no normalization layer allocates per step on \(shapeText(layerShape)) or \(shapeText(flatLayerShape)).")
} else {
    print(
        "\nFAIL: \(allocatingLayers.count) layer row(s) allocate per step: "
            + allocatingLayers.joined(separator: ", ") + ".")
    exit(1)
}
