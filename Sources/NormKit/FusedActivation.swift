import CNormKitKernels
import Foundation

/// An activation fused into a normalization layer's apply stage: with `layer.activation = .silu` the layer outputs
/// `silu(norm(x))` in the same pass that normalizes, and its backward takes the gradient of that output, masking
/// (ReLU) or scaling (SiLU) `dy` inside the gradient-sums pass it already makes. Every normalization layer has one
/// (``NormalizationLayer/activation``), in training and evaluation, in both layouts.
///
/// - `identity`: the plain normalization.
/// - `relu`: `max(0, z)` (a NaN stays NaN, as in PyTorch); its gradient is 0 where `z ≤ 0`, else `dy` (a
///   NaN `z` passes `dy`, as PyTorch's `threshold_backward` does).
/// - `silu`: `z·σ(z)` (SiLU, or Swish, the activation after GroupNorm in diffusion U-Nets); its gradient is
///   `dy·(σ + z·σ·(1 − σ))`. The native kernels compute `exp` with a polynomial accurate to about 2 float ulps.
public enum FusedActivation: String, CaseIterable, Sendable, Codable {
    case identity
    case relu
    case silu

    /// The activation in float64: the reference the kernels are tested against.
    public func callAsFunction(_ z: Double) -> Double {
        switch self {
        case .identity: return z
        case .relu: return z.isNaN ? z : max(0, z)
        case .silu: return z / (1 + Foundation.exp(-z))
        }
    }

    /// `act'(z)` in float64 (ReLU: 0 for `z ≤ 0`, else 1, NaN included).
    public func derivative(_ z: Double) -> Double {
        switch self {
        case .identity: return 1
        case .relu: return z <= 0 ? 0 : 1
        case .silu:
            let s = 1 / (1 + Foundation.exp(-z))
            return s + z * s * (1 - s)
        }
    }

    /// The work a pass over `elements` values with this activation counts for the kernels' thread split
    /// (``Parallelism/forEachRange(count:work:minimumWork:granule:_:)``): SiLU's `exp` and reciprocal make a pass
    /// arithmetic-bound, about three plain passes (GN on (8, 64, 14, 14), one thread, `normkit bench`), so smaller
    /// tensors already pay for a second thread.
    func work(elements: Int) -> Int { self == .silu ? 3 * elements : elements }

    /// The kernels' code (`NK_IDENTITY`, `NK_RELU`, `NK_SILU`).
    var kernelCode: Int32 {
        switch self {
        case .identity: return Int32(NK_IDENTITY)
        case .relu: return Int32(NK_RELU)
        case .silu: return Int32(NK_SILU)
        }
    }

    /// `act(z)` in float, the portable kernels' version.
    @inline(__always)
    func apply(_ z: Float) -> Float {
        switch self {
        case .identity: return z
        case .relu: return z.isNaN ? z : max(0, z)
        case .silu: return z / (1 + Foundation.exp(-z))
        }
    }

    /// `dy·act'(z)` in float, the portable kernels' version.
    @inline(__always)
    func gradient(_ dy: Float, at z: Float) -> Float {
        switch self {
        case .identity: return dy
        case .relu: return z <= 0 ? 0 : dy
        case .silu:
            let s = 1 / (1 + Foundation.exp(-z))
            return dy * (s + z * s * (1 - s))
        }
    }
}

/// What a training forward with a fused activation keeps for its backward: the pre-activation
/// `z = scale[k]·(x − center[k]) + shift[k]` per coefficient `k` (per sample block and channel, as
/// ``NormalizationGeometry/coefficient(n:c:)``), so the backward recomputes `act'(z)` from `x` instead of storing
/// `z`. Grown only when the geometry grows: steady training allocates nothing.
struct PreActivation {
    private(set) var activation: FusedActivation = .identity
    private var storage: [Float] = []
    private var count = 0

    /// Whether the backward has an activation to undo.
    var isActive: Bool { activation != .identity }

    /// Forgets the record (the next backward is the plain normalization's).
    mutating func clear() { activation = .identity }

    /// Records `activation` over `count` coefficients; `fill` writes scale, shift and center (each `count` long).
    mutating func record(
        _ activation: FusedActivation, count: Int,
        _ fill: (
            _ scale: UnsafeMutablePointer<Float>, _ shift: UnsafeMutablePointer<Float>,
            _ center: UnsafeMutablePointer<Float>
        ) -> Void
    ) {
        self.activation = activation
        guard activation != .identity else { return }
        if storage.count < 3 * count { storage = [Float](repeating: 0, count: 3 * count) }
        self.count = count
        storage.withUnsafeMutableBufferPointer { p in
            fill(p.baseAddress!, p.baseAddress! + count, p.baseAddress! + 2 * count)
        }
    }

    /// Records `activation` alone, for a backward that recomputes its pre-activation (the matrix backward).
    mutating func record(_ activation: FusedActivation) {
        self.activation = activation
        count = 0
    }

    /// Calls `body` with the backward's view of the record, writing `dz` to `dz` (nil when there is no activation).
    func withBackward<R>(dz: UnsafeMutablePointer<Float>, _ body: (ActivationBackward?) -> R) -> R {
        guard isActive else { return body(nil) }
        return storage.withUnsafeBufferPointer { p in
            body(
                ActivationBackward(
                    activation: activation, scale: p.baseAddress!, shift: p.baseAddress! + count,
                    center: p.baseAddress! + 2 * count, dz: dz))
        }
    }
}

/// The backward of a fused activation as the gradient-sums kernels take it (`nk_activation_backward`): the
/// forward's pre-activation affine per coefficient, and where `dz = dy·act'(z)` goes (laid out like `dy`).
struct ActivationBackward {
    let activation: FusedActivation
    let scale: UnsafePointer<Float>
    let shift: UnsafePointer<Float>
    let center: UnsafePointer<Float>
    let dz: UnsafeMutablePointer<Float>

    /// The same with the coefficient arrays moved to `coefficient` and `dz` to `element`.
    @inline(__always)
    func moved(coefficient k: Int, element o: Int) -> ActivationBackward {
        ActivationBackward(activation: activation, scale: scale + k, shift: shift + k, center: center + k, dz: dz + o)
    }

    /// The kernel descriptor with the coefficient arrays moved to `coefficient` and `dz` to `element`.
    @inline(__always)
    func kernel(coefficient k: Int, element o: Int) -> nk_activation_backward {
        nk_activation_backward(
            kind: activation.kernelCode, scale: scale + k, shift: shift + k, center: center + k, dz: dz + o)
    }

    /// The portable path: `dz[o + i] = dy[i]·act'(z)` for `count` elements of coefficient `k`, element `o` on.
    @inline(__always)
    func portableRow(
        dy: UnsafePointer<Float>, x: UnsafePointer<Float>, count: Int, coefficient k: Int, element o: Int
    ) {
        let a = scale[k], b = shift[k], c = center[k], out = dz + o
        for i in 0..<count { out[i] = activation.gradient(dy[i], at: (x[i] - c) * a + b) }
    }

    /// The portable channels-last path: `dz[o + ch] = dy[ch]·act'(z)` for one position's `count` channels, whose
    /// coefficients start at `coefficient`.
    @inline(__always)
    func portableChannels(
        dy: UnsafePointer<Float>, x: UnsafePointer<Float>, count: Int, coefficient k: Int, element o: Int
    ) {
        let a = scale + k, b = shift + k, c = center + k, out = dz + o
        for ch in 0..<count { out[ch] = activation.gradient(dy[ch], at: (x[ch] - c[ch]) * a[ch] + b[ch]) }
    }
}

/// Calls `body` with a pointer to the kernel descriptor of `backward` at (coefficient, element), or nil. With
/// `storingDz` false its `dz` is NULL: a sums kernel then keeps `dz` to itself (the apply recomputes it), and an apply
/// kernel given the descriptor recomputes `dz` from `x` and `dy`.
@inline(__always)
func withKernelActivation<R>(
    _ backward: ActivationBackward?, coefficient: Int, element: Int, storingDz: Bool = true,
    _ body: (UnsafePointer<nk_activation_backward>?) -> R
) -> R {
    guard let backward else { return body(nil) }
    var descriptor = backward.kernel(coefficient: coefficient, element: element)
    if !storingDz { descriptor.dz = nil }
    return withUnsafePointer(to: &descriptor) { body($0) }
}
