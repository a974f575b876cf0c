import CNormKitDNNL
import Foundation
import NormKit
import Synchronization

/// How ``Conv2d`` computes: oneDNN's convolutions (the engine PyTorch's CPU convolutions use) or NormKit's own
/// im2col + OpenBLAS `sgemm` lowering.
///
/// - ``oneDNN``: Debian's `libdnnl-dev`, found when NormKit is built (``isAvailable``). Direct convolutions that
///   read and write activations in place in either layout, NHWC (channels-last, its fast path) or NCHW; and, for
///   3 × 3 stride-1 convolutions with channels in whole blocks of 16 on enough output tiles per thread, oneDNN's
///   Winograd F(4×4, 3×3) on AVX-512, whose activations are reordered to and from its blocked layout (not at all
///   for NHWC with 16 channels, the same memory). Winograd rounds differently from a direct sum: about 3× the
///   direct kernels' error, about 1e-6 of the largest value (`ConvolutionEngineTests`); ``oneDNNDirect`` never
///   uses it. The weights are reordered to the layout oneDNN picked once per forward.
/// - ``oneDNNDirect``: oneDNN's direct convolutions only.
/// - ``im2col``: patches + `sgemm`, channels-first only; the reference the oneDNN path is tested against, and the
///   engine on a machine without oneDNN.
///
/// Both split the batch over ``/NormKit/Parallelism/threadCount`` threads of NormKit's pool, each running its
/// engine single-threaded on its own images: NormKit's pool is the one owner of the cores (oneDNN's OpenMP threads
/// and OpenBLAS's threads are never started), and the weight gradients are summed in thread order, so results do
/// not depend on scheduling.
public enum ConvolutionEngine: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// oneDNN (`libdnnl`), NHWC or NCHW: direct, and Winograd where it pays.
    case oneDNN = "onednn"
    /// oneDNN's direct convolutions only (no Winograd).
    case oneDNNDirect = "onednn-direct"
    /// im2col + OpenBLAS `sgemm`, NCHW.
    case im2col

    /// Whether this build has the engine (oneDNN needs `libdnnl-dev` when NormKit is compiled).
    public var isAvailable: Bool {
        switch self {
        case .oneDNN, .oneDNNDirect: return nk_dnnl_is_available() != 0
        case .im2col: return true
        }
    }

    /// Whether the engine is one of oneDNN's.
    public var usesOneDNN: Bool { self != .im2col }

    /// Whether the engine may run oneDNN's Winograd convolutions (where they pay).
    var allowsWinograd: Bool { self == .oneDNN }

    /// oneDNN when this build has it, else im2col.
    public static var preferred: ConvolutionEngine { ConvolutionEngine.oneDNN.isAvailable ? .oneDNN : .im2col }

    /// The activation layout a network built for this engine keeps: channels-last for oneDNN, channels-first
    /// for im2col.
    public var activationLayout: TensorLayout { usesOneDNN ? .channelsLast : .channelsFirst }

    /// `"onednn"`, `"onednn-direct"` or `"im2col"`.
    public var description: String { rawValue }

    /// `"oneDNN 2.6.3, Winograd where it pays"`, `"oneDNN 2.6.3, direct only"` or `"im2col + OpenBLAS (SkylakeX)"`,
    /// for logs, benchmarks and a run's summary.
    public var versionDescription: String {
        let oneDNN = "oneDNN \(String(cString: nk_dnnl_version()))"
        switch self {
        case .oneDNN: return isAvailable ? oneDNN + ", Winograd where it pays" : "oneDNN (not built in)"
        case .oneDNNDirect: return isAvailable ? oneDNN + ", direct only" : "oneDNN (not built in)"
        case .im2col: return "im2col + OpenBLAS (\(BLAS.coreName))"
        }
    }

    /// Why the engine cannot be used in this build, nil when it can.
    public var unavailableReason: String? {
        isAvailable ? nil : Self.oneDNNMissingReason(headerInstalled: Self.oneDNNHeaderInstalled)
    }

    /// Whether `libdnnl-dev`'s header, which Package.swift looks for, is on this machine now.
    package static var oneDNNHeaderInstalled: Bool {
        FileManager.default.fileExists(atPath: "/usr/include/oneapi/dnnl/dnnl.h")
    }

    /// Why a build without oneDNN lacks it: the package is missing, or the build was configured before it was
    /// installed (SwiftPM keeps its first evaluation of Package.swift, in `.build` and in its cache of manifests, so
    /// a rebuild alone keeps the im2col engine, about 2× slower to train).
    package static func oneDNNMissingReason(headerInstalled: Bool) -> String {
        headerInstalled
            ? "NormKit was built without oneDNN, though libdnnl-dev is installed: the build was configured with "
                + "NORMKIT_WITHOUT_ONEDNN or before the package was installed (SwiftPM keeps its first reading of "
                + "Package.swift); run `bash scripts/setup.sh --reconfigure` and rebuild"
            : "NormKit was built without oneDNN: install Debian's libdnnl-dev (`bash scripts/setup.sh`) and rebuild"
    }

    /// A warning for a build whose preferred engine is im2col only because it was configured before oneDNN was
    /// installed (nil otherwise, and when `NORMKIT_WITHOUT_ONEDNN` asked for such a build).
    public static var staleConfigurationWarning: String? {
        guard !ConvolutionEngine.oneDNN.isAvailable, oneDNNHeaderInstalled,
            ProcessInfo.processInfo.environment["NORMKIT_WITHOUT_ONEDNN"] == nil
        else { return nil }
        return "warning: " + oneDNNMissingReason(headerInstalled: true)
    }
}

extension Module {
    /// Sets the engine of every ``Conv2d`` in this tree; a ``ResNet`` also switches the layout of its activations
    /// (``ResNet/engine``).
    public func useConvolutionEngine(_ engine: ConvolutionEngine) {
        if let resnet = self as? ResNet {
            resnet.engine = engine
            return
        }
        if let folded = self as? FoldedResNet {
            folded.engine = engine
            return
        }
        if let conv = self as? Conv2d { conv.engine = engine }
        for child in children { child.module.useConvolutionEngine(engine) }
    }
}

/// One ``Conv2d``'s oneDNN primitives: per thread of the batch split, a `nk_dnnl_convolution` for that thread's
/// image count and layout (a few shapes kept, so alternating training and evaluation batches rebuild nothing).
/// Each handle is used by one thread at a time.
final class OneDNNConvolutions {
    struct Key: Hashable {
        var batch: Int
        var height: Int
        var width: Int
        var channelsLast: Bool
        var winograd: Bool
    }

    private var perThread: [[Key: OpaquePointer]] = []
    private static let shapesKept = 4
    /// The handles of the call in progress, one per thread (``reserve(threads:)`` sizes it).
    private(set) var current = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: 1)
    private var currentCapacity = 1
    /// The first failure of the call in progress (threads cannot throw across the pool).
    let failure = FirstFailure()

    /// The first error message recorded by any thread of a parallel section.
    final class FirstFailure: Sendable {
        private let message = Mutex<String?>(nil)
        func reset() { message.withLock { $0 = nil } }
        func record(_ text: String) { message.withLock { if $0 == nil { $0 = text } } }
        var value: String? { message.withLock { $0 } }
    }

    /// The handle of thread `t` for `key`, created on first use; throws oneDNN's message when it cannot be built.
    func handle(
        thread t: Int, _ key: Key, geometry g: ConvolutionGeometry, hasBias: Bool, layer: String
    ) throws
        -> OpaquePointer
    {
        if let existing = perThread[t][key] { return existing }
        // The constructor keeps channels, kernel, stride and padding within Int32; the input's sizes are checked here.
        let sizes = [key.batch, key.height + 2 * g.padding, key.width + 2 * g.padding]
        guard sizes.allSatisfy({ $0 <= Int32.max }) else {
            throw LayerError.engineFailure(
                layer: layer, engine: "oneDNN",
                message: "\(key.batch) images of \(key.height)×\(key.width) with padding \(g.padding) exceed its "
                    + "32-bit sizes (at most \(Int32.max) images and padded rows or columns); use the im2col engine")
        }
        if perThread[t].count >= Self.shapesKept, let victim = perThread[t].first {
            nk_dnnl_convolution_destroy(victim.value)
            perThread[t].removeValue(forKey: victim.key)
        }
        guard
            let created = nk_dnnl_convolution_create(
                Int32(key.batch), Int32(g.channels), Int32(key.height), Int32(key.width), Int32(g.filters),
                Int32(g.kernel), Int32(g.stride), Int32(g.padding), hasBias ? 1 : 0, key.channelsLast ? 1 : 0,
                key.winograd ? 1 : 0)
        else {
            throw LayerError.engineFailure(layer: layer, engine: "oneDNN", message: OneDNNConvolutions.lastError)
        }
        perThread[t][key] = created
        return created
    }

    /// Makes room for `threads` threads' handles (call before a parallel section).
    func reserve(threads: Int) {
        while perThread.count < threads { perThread.append([:]) }
        if currentCapacity < threads {
            current.deallocate()
            current = .allocate(capacity: threads)
            currentCapacity = threads
        }
    }

    /// The calling thread's last oneDNN error message.
    static var lastError: String { String(cString: nk_dnnl_last_error()) }

    deinit {
        for handles in perThread { for handle in handles.values { nk_dnnl_convolution_destroy(handle) } }
        current.deallocate()
    }
}
