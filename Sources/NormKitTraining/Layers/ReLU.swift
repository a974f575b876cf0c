/// The rectifier `y = max(x, 0)` (NaN passes through, as in PyTorch), on any shape and layout.
///
/// A training forward keeps a reference to its output `y` (no copy); the backward passes `dy` where `y > 0`.
/// No parameters.
public final class ReLU: Layer {
    /// `"ReLU"`.
    public let name = "ReLU"
    /// `"ReLU()"`.
    public var summary: String { "ReLU()" }
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    private var savedOutput: Tensor?

    /// A rectifier.
    public init() {}

    /// `y = max(x, 0)`, same shape and layout as `x`.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        y.prepare(shape: x.shape, layout: x.layout)
        let count = x.count
        x.withUnsafeBufferPointer { xb in
            y.withUnsafeMutableBufferPointer { yb in
                let xp = xb.baseAddress!, yp = yb.baseAddress!
                Parallelism.forEachRange(count: count, work: count, minimumWork: 1 << 17) { range in
                    Elementwise.relu(xp + range.lowerBound, yp + range.lowerBound, range.count)
                }
            }
        }
        if training { savedOutput = y }
    }

    /// `dx = dy · [y > 0]`.
    ///
    /// - Throws: ``/NormKit/NormalizationError/backwardBeforeForward(layer:)`` or
    ///   ``/NormKit/NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        guard let y = savedOutput else { throw NormalizationError.backwardBeforeForward(layer: name) }
        try LayerCheck.gradient(dy, shape: y.shape, layout: y.layout, layer: name)
        reluBackward(output: y, dy, into: &dx)
        savedOutput = nil
    }
}

/// SIMD element-wise loops of the training layers.
enum Elementwise {
    typealias Vector = SIMD16<Float>

    /// `y[i] = x[i] < 0 ? 0 : x[i]` (`y` may alias `x`).
    @inline(__always)
    static func relu(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int) {
        let zero = Vector(repeating: 0)
        var i = 0
        while i + 16 <= count {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: Vector.self)
            UnsafeMutableRawPointer(y + i).storeBytes(of: v.replacing(with: zero, where: v .< zero), as: Vector.self)
            i += 16
        }
        while i < count { y[i] = x[i] < 0 ? 0 : x[i]; i += 1 }
    }

    /// `y[i] = max(a[i] + b[i], 0)`: a residual sum and its ReLU in one pass (`y` may alias `a` or `b`).
    @inline(__always)
    static func addReLU(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
        _ count: Int
    ) {
        let zero = Vector(repeating: 0)
        var i = 0
        while i + 16 <= count {
            let v =
                UnsafeRawPointer(a + i).loadUnaligned(as: Vector.self)
                + UnsafeRawPointer(b + i).loadUnaligned(as: Vector.self)
            UnsafeMutableRawPointer(y + i).storeBytes(of: v.replacing(with: zero, where: v .< zero), as: Vector.self)
            i += 16
        }
        while i < count { let v = a[i] + b[i]; y[i] = v < 0 ? 0 : v; i += 1 }
    }

    /// `dx[i] = y[i] > 0 ? dy[i] : 0`.
    @inline(__always)
    static func reluBackward(
        _ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
        _ count: Int
    ) {
        let zero = Vector(repeating: 0)
        var i = 0
        while i + 16 <= count {
            let v = UnsafeRawPointer(y + i).loadUnaligned(as: Vector.self)
            let g = UnsafeRawPointer(dy + i).loadUnaligned(as: Vector.self)
            UnsafeMutableRawPointer(dx + i).storeBytes(of: zero.replacing(with: g, where: v .> zero), as: Vector.self)
            i += 16
        }
        while i < count { dx[i] = y[i] > 0 ? dy[i] : 0; i += 1 }
    }
}
