import COpenBLAS
import Foundation
import NormKit
import Synchronization

/// The one place NormKitTraining talks to OpenBLAS: its thread count and a thin row-major `sgemm`.
///
/// **Threading policy.** Never nest OpenBLAS threads inside NormKit's own parallel loops. The layers read
/// ``threads`` on each call: when OpenBLAS runs single-threaded they split the batch over
/// ``/NormKit/Parallelism/threadCount`` threads themselves (each thread calling a single-threaded `sgemm` on its own
/// images and scratch); otherwise their loops stay serial and OpenBLAS threads each GEMM. The first is the
/// faster configuration on this project's small convolutions (about 2.5× at batch 32 and 2× at batch 2 on
/// 2 cores, measured in `ConvolutionTests.testConvolutionTimings`), so it is the default: building the first
/// ``Conv2d`` or ``Linear`` sets OpenBLAS to 1 thread unless ``setThreads(_:)`` was called before.
public enum BLAS {
    /// Whether ``setThreads(_:)`` (or the default) has configured OpenBLAS in this process.
    private static let configured = Atomic<Bool>(false)

    /// Sets the number of threads OpenBLAS uses for each call (at least 1).
    ///
    /// Call it at start-up, not while another thread is inside a BLAS call.
    public static func setThreads(_ n: Int) {
        configured.store(true, ordering: .relaxed)
        openblas_set_num_threads(Int32(clamping: max(1, n)))
    }

    /// Applies the default policy (OpenBLAS single-threaded, layers thread over images) unless
    /// ``setThreads(_:)`` was called before. Layers call it from their initialisers.
    static func configureDefaultIfNeeded() {
        if !configured.load(ordering: .relaxed) { setThreads(1) }
    }

    /// The number of threads OpenBLAS currently uses per call.
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The CPU kernel family OpenBLAS selected (for example `"SkylakeX"` or `"Haswell"`), for logs.
    public static var coreName: String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name)
    }

    /// OpenBLAS kernel families that use neither AVX2 nor AVX-512: what its run-time detection falls back to on a
    /// CPU model it does not know (OpenBLAS 0.3.21, Debian 12, calls Intel's Emerald Rapids "Prescott").
    static let genericCores: Set<String> = [
        "Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
        "Katmai", "Coppermine", "Northwood", "Banias", "Sandybridge",
    ]

    /// The `OPENBLAS_CORETYPE` this process should have had: `"SkylakeX"` (AVX-512) or `"Haswell"` (AVX2) when
    /// OpenBLAS chose a generic kernel family on a CPU that has those instructions (3–4× slower `sgemm` here), nil
    /// when its choice is fine or the variable is set. OpenBLAS reads the variable only when it is loaded, so only
    /// a new process can use it: `normkit` re-executes itself with it set.
    public static var suggestedCoreType: String? {
        guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil, genericCores.contains(coreName) else {
            return nil
        }
        switch KernelDispatch.instructionSet {
        case .avx512: return "SkylakeX"
        case .avx2: return "Haswell"
        default: return nil
        }
    }

    /// Row-major single-precision GEMM: `C = α·op(A)·op(B) + β·C` with `op(A)` of shape `m × k`, `op(B)` of
    /// shape `k × n` and `C` of shape `m × n`.
    ///
    /// - Parameters:
    ///   - transposeA: `op(A) = Aᵀ`; `A` is then stored `k × m`.
    ///   - transposeB: `op(B) = Bᵀ`; `B` is then stored `n × k`.
    ///   - m: the rows of `op(A)` and `C`; nothing is done when `m` or `n` is 0.
    ///   - n: the columns of `op(B)` and `C`.
    ///   - k: the columns of `op(A)`, the rows of `op(B)`.
    ///   - alpha: `α`, the scale of the product.
    ///   - a: `A`, row-major.
    ///   - lda: the row stride (in elements) of `A` as stored.
    ///   - b: `B`, row-major.
    ///   - ldb: the row stride (in elements) of `B` as stored.
    ///   - beta: `β`, the scale of `C`'s old contents (0: `C` is overwritten, its old values are never read).
    ///   - c: `C`, row-major, read (unless `β = 0`) and written.
    ///   - ldc: the row stride (in elements) of `C`.
    /// - Precondition: the pointers cover the stated extents (callers size their buffers from the same numbers),
    ///   and every size fits OpenBLAS's 32-bit integers (at most `Int32.max`; checked in every build, the message
    ///   names the sizes). The layers refuse larger inputs with a thrown error before they call it.
    @inline(__always)
    public static func sgemm(
        transposeA: Bool = false, transposeB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        guard let m32 = Int32(exactly: m), let n32 = Int32(exactly: n), let k32 = Int32(exactly: k),
            let lda32 = Int32(exactly: lda), let ldb32 = Int32(exactly: ldb), let ldc32 = Int32(exactly: ldc)
        else {
            fatalError(
                "BLAS.sgemm: m \(m), n \(n), k \(k), lda \(lda), ldb \(ldb), ldc \(ldc) exceed OpenBLAS's 32-bit sizes "
                    + "(at most \(Int32.max))")
        }
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            m32, n32, k32, alpha, a, lda32, b, ldb32, beta, c, ldc32)
    }

    /// Throws unless `value`, a size an OpenBLAS call will take, fits its 32-bit integers. `size` (what the value
    /// is) and `layer` are evaluated only to build the error.
    ///
    /// - Throws: ``LayerError/sizeBeyond32Bits(layer:size:value:limit:)``.
    package static func check(
        _ value: Int, _ size: @autoclosure () -> String, layer: @autoclosure () -> String
    ) throws {
        guard value > Int32.max else { return }
        throw LayerError.sizeBeyond32Bits(layer: layer(), size: size(), value: value, limit: "OpenBLAS's 32-bit sizes")
    }
}

/// A 64-byte-aligned block of `Float` scratch memory owned by one layer. It only grows, so steady-state
/// training steps allocate nothing; its contents are unspecified after ``reserve(_:)``. Its owner checks a size
/// that input can make large against `MemoryLimit` before reserving it.
final class LayerScratch {
    /// The first element.
    private(set) var pointer: UnsafeMutablePointer<Float>
    /// How many floats ``pointer`` can hold.
    private(set) var capacity: Int

    init(capacity: Int = 16) {
        self.capacity = max(capacity, 16)
        pointer = LayerScratch.allocate(self.capacity)
    }

    /// Makes room for at least `count` floats (the old contents are dropped when it grows).
    func reserve(_ count: Int) {
        guard count > capacity else { return }
        UnsafeMutableRawPointer(pointer).deallocate()
        capacity = count
        pointer = LayerScratch.allocate(count)
    }

    private static func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<Float>.stride, alignment: 64)
        return raw.initializeMemory(as: Float.self, repeating: 0, count: count)
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }
}
