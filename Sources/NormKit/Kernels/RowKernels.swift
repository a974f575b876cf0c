import CNormKitKernels
import Foundation
import Synchronization

// Contiguous-row primitives shared by every normalization kernel. Each reads or writes one run of `count`
// floats with 16-wide SIMD vectors; sums are accumulated in float32 lanes over blocks of `blockLength`
// elements and the block totals in Double, so long rows keep float64-level accuracy.

@usableFromInline typealias Vector = SIMD16<Float>

@inline(__always) @usableFromInline
func loadVector(_ p: UnsafePointer<Float>, _ i: Int) -> Vector {
    UnsafeRawPointer(p + i).loadUnaligned(as: Vector.self)
}

@inline(__always) @usableFromInline
func storeVector(_ v: Vector, _ p: UnsafeMutablePointer<Float>, _ i: Int) {
    UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: Vector.self)
}

/// Float32 partial sums never cover more than this many elements before moving into a Double.
@usableFromInline let blockLength = Int(NK_BLOCK_LENGTH)

/// `Σ x` over a row.
@inline(__always) @usableFromInline
func portableRowSum(_ x: UnsafePointer<Float>, _ count: Int) -> Double {
    var total = 0.0
    var start = 0
    while start < count {
        let end = min(start + blockLength, count)
        var acc = Vector(repeating: 0)
        var i = start
        while i + 16 <= end { acc += loadVector(x, i); i += 16 }
        var tail: Float = 0
        while i < end { tail += x[i]; i += 1 }
        total += Double(acc.sum() + tail)
        start = end
    }
    return total
}

/// Two sums over a row, accumulated in Float per block of ``blockLength`` and in Double across blocks: `lanes(i)` gives
/// the two terms of the 16 elements at `i`, `element(i)` those of one element (the block's tail).
@inline(__always) @usableFromInline
func portableBlockedPairSums(
    _ count: Int, lanes: (Int) -> (Vector, Vector), element: (Int) -> (Float, Float)
) -> (Double, Double) {
    var s1 = 0.0, s2 = 0.0, start = 0
    while start < count {
        let end = min(start + blockLength, count)
        var a1 = Vector(repeating: 0), a2 = Vector(repeating: 0), i = start
        while i + 16 <= end {
            let (u, v) = lanes(i)
            (a1, a2) = (a1 + u, a2 + v)
            i += 16
        }
        var t1: Float = 0, t2: Float = 0
        while i < end {
            let (u, v) = element(i)
            (t1, t2) = (t1 + u, t2 + v)
            i += 1
        }
        (s1, s2) = (s1 + Double(a1.sum() + t1), s2 + Double(a2.sum() + t2))
        start = end
    }
    return (s1, s2)
}

/// `(Σ (x−k), Σ (x−k)²)` over a row: with `k` the set's mean this is the second pass of the corrected
/// two-pass variance, `var = (Σd² − (Σd)²/m) / m`, which stays accurate when the mean dwarfs the spread.
@inline(__always) @usableFromInline
func portableRowCenteredSums(_ x: UnsafePointer<Float>, _ count: Int, center k: Float) -> (Double, Double) {
    let kv = Vector(repeating: k)
    return portableBlockedPairSums(
        count,
        lanes: { i in
            let d = loadVector(x, i) - kv
            return (d, d * d)
        },
        element: { i in
            let d = x[i] - k
            return (d, d * d)
        })
}

/// `(Σ dy, Σ dy·(x−k))` over a row: the two per-channel sums every mean-subtracting backward needs.
@inline(__always) @usableFromInline
func portableRowGradientSums(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int, center k: Float
) -> (Double, Double) {
    let kv = Vector(repeating: k)
    return portableBlockedPairSums(
        count,
        lanes: { i in
            let g = loadVector(dy, i)
            return (g, g * (loadVector(x, i) - kv))
        },
        element: { i in (dy[i], dy[i] * (x[i] - k)) })
}

/// `y = a·x + b` over a row (`y` may alias `x`).
@inline(__always) @usableFromInline
func portableRowAffine(
    _ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int, scale a: Float, shift b: Float
) {
    let av = Vector(repeating: a), bv = Vector(repeating: b)
    var i = 0
    while i + 16 <= count {
        storeVector(loadVector(x, i) * av + bv, y, i)
        i += 16
    }
    while i < count { y[i] = x[i] * a + b; i += 1 }
}

/// `y = a·(x − k) + b` over a row (`y` may alias `x`). With `k` near the row's values `x − k` is (nearly) exact, so
/// the output keeps float32 accuracy relative to its own scale even when |k| dwarfs the spread of `x`; the
/// folded `rowAffine(scale: a, shift: b − a·k)` would round `a·x` on a grid of `ulp(a·k)`.
@inline(__always) @usableFromInline
func portableRowAffineCentered(
    _ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int,
    center k: Float, scale a: Float, shift b: Float
) {
    let kv = Vector(repeating: k), av = Vector(repeating: a), bv = Vector(repeating: b)
    var i = 0
    while i + 16 <= count {
        storeVector((loadVector(x, i) - kv) * av + bv, y, i)
        i += 16
    }
    while i < count { y[i] = (x[i] - k) * a + b; i += 1 }
}

/// `dx = p·dy + q·(x−k) + r` over a row: every backward in NormKit reduces to this form per channel.
@inline(__always) @usableFromInline
func portableRowGradientApply(
    _ dx: UnsafeMutablePointer<Float>, _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
    _ count: Int, p: Float, q: Float, r: Float, center k: Float
) {
    let pv = Vector(repeating: p), qv = Vector(repeating: q), rv = Vector(repeating: r), kv = Vector(repeating: k)
    var i = 0
    while i + 16 <= count {
        storeVector(loadVector(dy, i) * pv + (loadVector(x, i) - kv) * qv + rv, dx, i)
        i += 16
    }
    while i < count { dx[i] = dy[i] * p + (x[i] - k) * q + r; i += 1 }
}

// MARK: Dispatch

/// The switch the row primitives read on every call. An atomic constant rather than a `static var`: a global
/// variable pays a dynamic exclusivity check per access, which costs more than a 49-element row, while a relaxed
/// atomic load is the same single byte load as a plain one (and makes a change from another thread race-free).
/// `NORMKIT_KERNELS=portable` starts with the portable kernels, `NORMKIT_KERNELS=avx2` caps the native ones at AVX2.
@usableFromInline let nativeKernelsFlag: Atomic<Bool> = {
    let choice = ProcessInfo.processInfo.environment["NORMKIT_KERNELS"]
    if choice == "avx2" { _ = nk_limit_native_level(2) }
    return Atomic(nk_native_level() > 0 && choice != "portable")
}()

/// The value behind ``KernelDispatch/streamingStoreThreshold``.
let streamingStoreThresholdStorage = Atomic<Int>(1 << 22)

/// The value behind ``KernelDispatch/levelTwoCacheBytes``: the C library's figure for this CPU, or 2 MB.
let levelTwoCacheBytesStorage: Atomic<Int> = {
    let reported = sysconf(Int32(_SC_LEVEL2_CACHE_SIZE))
    return Atomic(reported > 0 ? reported : 2 << 20)
}()

/// Whether the native row and set kernels run: ``KernelDispatch/useNativeKernels``, as the kernels read it.
@inline(__always) @usableFromInline
var nativeKernels: Bool { nativeKernelsFlag.load(ordering: .relaxed) }

/// Which implementation of the row and set primitives NormKit's kernels use.
///
/// The portable kernels are Swift `SIMD16<Float>` code (baseline x86-64 vectors without `unsafeFlags`); the
/// native kernels are the same loops with AVX2+FMA or AVX-512 intrinsics in the small C target `CNormKitKernels`,
/// chosen at run time by CPU feature. Both accumulate in float lanes over blocks of at most 2048 elements and in
/// Double across blocks; they differ only by float rounding, and the tests run all of them against each other and
/// against float64 references. The environment variable `NORMKIT_KERNELS=portable` forces the portable path and
/// `NORMKIT_KERNELS=avx2` the AVX2 bodies on an AVX-512 CPU; ``useNativeKernels`` and
/// ``limitNativeInstructionSet(to:)`` do the same from code.
///
/// These switches are process-wide. They are atomic (the Swift switch and the C target's table), so setting one
/// from any task is no data race; but unlike ``Parallelism``'s settings, which a kernel call reads once when it
/// starts, the kernels read them per row: a layer running on another task while one changes may mix the two
/// implementations within that call (results that differ from either by float rounding). They are for start-up
/// and tests: set them while no kernel runs.
public enum KernelDispatch {
    /// The native instruction sets, narrowest first.
    public enum InstructionSet: Int, Comparable, CaseIterable, Sendable {
        /// Neither: only the portable kernels run.
        case none = 0
        /// AVX2 with FMA (256-bit vectors).
        case avx2 = 2
        /// AVX-512F with VL (512-bit vectors, masked tails, transposing reductions for short rows).
        case avx512 = 3

        /// `"none"`, `"avx2"`, `"avx512"`.
        public var name: String {
            switch self {
            case .none: return "none"
            case .avx2: return "avx2"
            case .avx512: return "avx512"
            }
        }

        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    /// The native instruction set in use (the CPU's widest, or less after ``limitNativeInstructionSet(to:)``).
    public static var instructionSet: InstructionSet {
        _ = nativeKernels  // applies NORMKIT_KERNELS first
        return InstructionSet(rawValue: Int(nk_native_level())) ?? .none
    }

    /// The name of ``instructionSet``: `"avx512"`, `"avx2"` or `"none"`.
    public static var nativeInstructionSet: String { instructionSet.name }

    /// Uses at most `limit` from now on (`.avx2` runs the AVX2 bodies on an AVX-512 CPU; `.avx512` lifts the cap).
    /// Call it between kernel calls, not while kernels run. Returns the instruction set now in use.
    @discardableResult
    public static func limitNativeInstructionSet(to limit: InstructionSet) -> InstructionSet {
        _ = nativeKernels
        _ = nk_limit_native_level(Int32(max(limit.rawValue, 0)))
        if instructionSet == .none { nativeKernelsFlag.store(false, ordering: .relaxed) }
        return instructionSet
    }

    /// Whether the native kernels run (default: when the CPU has them and `NORMKIT_KERNELS` is not `portable`).
    /// Set it before running kernels, not while they run.
    public static var useNativeKernels: Bool {
        get { nativeKernels }
        set { nativeKernelsFlag.store(newValue && nk_native_level() > 0, ordering: .relaxed) }
    }

    /// The size, in elements, from which the native kernels' apply stages write their output (the training
    /// forward's `y` and backward's `dx`, the evaluation forward's `y`) with non-temporal stores (default 4 Mi floats,
    /// 16 MB: with its input it fills the 32 MB L3 of this project's machine kinds). An output that large leaves the
    /// caches anyway; streaming it skips the read of each line before it is written and keeps the inputs still to be
    /// read in cache (GN and BN on (8, 256, 56, 56), both layouts: 0.71–0.90× the time; on L3-resident tensors it is
    /// slower: docs/PERFORMANCE.md, session 16; and a light layer reading a streamed 6.4 MB output from memory made a
    /// conv → GN → conv chain 1.2–1.3× slower: session 21, `normkit bench --streaming-check`, which times the choice
    /// on any shapes). An output that is also the call's input is never streamed. The values
    /// are the same either way. `0` streams every output (values below 0 are stored as 0), `Int.max` none.
    /// Process-wide and atomic; a kernel call reads it once, when it starts.
    public static var streamingStoreThreshold: Int {
        get { streamingStoreThresholdStorage.load(ordering: .relaxed) }
        set { streamingStoreThresholdStorage.store(max(newValue, 0), ordering: .relaxed) }
    }

    /// The bytes of one core's L2 cache the channels-last kernels assume (default: what the C library reports, 2 MB
    /// when it reports none). Below 2 MB, GN, LN and IN on inputs beyond the caches take narrower tiles (slices of
    /// 48 channels and more) so that a tile's second pass reads L2, not L3 (docs/PERFORMANCE.md, session 39). It
    /// changes which tiles the kernels take, never a value. Process-wide and atomic; set it while no kernel runs.
    public static var levelTwoCacheBytes: Int {
        get { levelTwoCacheBytesStorage.load(ordering: .relaxed) }
        set { levelTwoCacheBytesStorage.store(max(newValue, 0), ordering: .relaxed) }
    }

    /// `"native (avx512)"`, `"portable (Swift SIMD16)"`, … for logs and benchmarks.
    public static var description: String {
        useNativeKernels ? "native (\(nativeInstructionSet))" : "portable (Swift SIMD16)"
    }
}

@inline(__always) @usableFromInline
func rowSum(_ x: UnsafePointer<Float>, _ count: Int) -> Double {
    nativeKernels ? nk_row_sum(x, count) : portableRowSum(x, count)
}

@inline(__always) @usableFromInline
func rowCenteredSums(_ x: UnsafePointer<Float>, _ count: Int, center k: Float) -> (Double, Double) {
    guard nativeKernels else { return portableRowCenteredSums(x, count, center: k) }
    var s1 = 0.0, s2 = 0.0
    nk_row_centered_sums(x, count, k, &s1, &s2)
    return (s1, s2)
}

/// `(Σ g, Σ g·(x − k))` over a row with `g = dy`, or with a fused activation `g = dz = dy·act'(z)` (the forward's
/// pre-activation of `coefficient`), which is also written to `activation.dz` from `element` on.
@inline(__always)
func rowGradientSums(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int, center k: Float,
    activation: ActivationBackward? = nil, coefficient: Int = 0, element: Int = 0
)
    -> (Double, Double)
{
    if nativeKernels {
        var s1 = 0.0, s2 = 0.0
        withKernelActivation(activation, coefficient: coefficient, element: element) {
            nk_row_gradient_sums(dy, x, count, k, &s1, &s2, $0)
        }
        return (s1, s2)
    }
    guard let activation else { return portableRowGradientSums(dy, x, count, center: k) }
    activation.portableRow(dy: dy, x: x, count: count, coefficient: coefficient, element: element)
    return portableRowGradientSums(activation.dz + element, x, count, center: k)
}

@inline(__always) @usableFromInline
func rowAffine(
    _ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int, scale a: Float, shift b: Float
) {
    if nativeKernels {
        nk_row_affine(y, x, count, a, b)
    } else {
        portableRowAffine(y, x, count, scale: a, shift: b)
    }
}

/// `y = act(a·(x − k) + b)` over a row (`y` may alias `x`).
@inline(__always) @usableFromInline
func rowAffineCentered(
    _ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int,
    center k: Float, scale a: Float, shift b: Float, activation: FusedActivation = .identity
) {
    if nativeKernels {
        nk_row_affine_centered(y, x, count, k, a, b, activation.kernelCode)
    } else {
        portableRowAffineCentered(y, x, count, center: k, scale: a, shift: b)
        portableActivate(y, count, activation)
    }
}

/// `y = act(y)` in place (the portable kernels' activation, after their affine).
@inline(__always)
func portableActivate(_ y: UnsafeMutablePointer<Float>, _ count: Int, _ activation: FusedActivation) {
    guard activation != .identity else { return }
    for i in 0..<count { y[i] = activation.apply(y[i]) }
}

@inline(__always) @usableFromInline
func rowGradientApply(
    _ dx: UnsafeMutablePointer<Float>, _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
    _ count: Int, p: Float, q: Float, r: Float, center k: Float
) {
    if nativeKernels {
        nk_row_gradient_apply(dx, dy, x, count, p, q, r, k)
    } else {
        portableRowGradientApply(dx, dy, x, count, p: p, q: q, r: r, center: k)
    }
}
