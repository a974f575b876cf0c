/// The rectifier `y = max(x, 0)` (NaN passes through, as in PyTorch), on any shape and layout.
///
/// A training forward keeps a reference to its output `y` (no copy); the backward passes `dy` except where `y ≤ 0`
/// (a NaN `y` passes it, as PyTorch's `threshold_backward` does).
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
        Elementwise.apply(x, x, into: &y, Elementwise.relu)
        if training { savedOutput = y }
    }

    /// `dx = y ≤ 0 ? 0 : dy`.
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
    typealias Kernel = (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void

    /// `y = kernel(a, b)` over two tensors of one shape and layout (`y` reused), split over NormKit's pool when large.
    static func apply(_ a: Tensor, _ b: Tensor, into y: inout Tensor, _ kernel: Kernel) {
        precondition(a.shape == b.shape && a.layout == b.layout)
        y.prepare(shape: a.shape, layout: a.layout)
        let count = a.count
        a.withUnsafeBufferPointer { ab in
            b.withUnsafeBufferPointer { bb in
                y.withUnsafeMutableBufferPointer { yb in
                    let ap = ab.baseAddress!, bp = bb.baseAddress!, yp = yb.baseAddress!
                    Parallelism.forEachRange(count: count, work: count) { r in
                        kernel(ap + r.lowerBound, bp + r.lowerBound, yp + r.lowerBound, r.count)
                    }
                }
            }
        }
    }

    typealias Kernel3 = (
        UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int
    ) -> Void

    /// `y = kernel(a, b, c)` over three tensors of one shape and layout (`y` reused), split as ``apply(_:_:into:_:)``.
    static func apply(_ a: Tensor, _ b: Tensor, _ c: Tensor, into y: inout Tensor, _ kernel: Kernel3) {
        precondition(a.shape == b.shape && a.layout == b.layout && a.shape == c.shape && a.layout == c.layout)
        y.prepare(shape: a.shape, layout: a.layout)
        let count = a.count
        a.withUnsafeBufferPointer { ab in
            b.withUnsafeBufferPointer { bb in
                c.withUnsafeBufferPointer { cb in
                    y.withUnsafeMutableBufferPointer { yb in
                        let ap = ab.baseAddress!, bp = bb.baseAddress!, cp = cb.baseAddress!, yp = yb.baseAddress!
                        Parallelism.forEachRange(count: count, work: count) { r in
                            let i = r.lowerBound
                            kernel(ap + i, bp + i, cp + i, yp + i, r.count)
                        }
                    }
                }
            }
        }
    }

    /// `y[i] = Op.value(a[i], b[i])`, 16 lanes at a time and the tail in one zero-padded vector (`y` may alias `a` or
    /// `b`). The operation is a type, so that the loop is specialized for it and inlines it: as a closure it was
    /// called out of line once per vector (session 27).
    @inline(__always)
    static func map<Op: VectorOperation>(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int,
        _: Op.Type
    ) {
        var i = 0
        while i + 16 <= count {
            let r = Op.value(
                UnsafeRawPointer(a + i).loadUnaligned(as: Vector.self),
                UnsafeRawPointer(b + i).loadUnaligned(as: Vector.self))
            UnsafeMutableRawPointer(y + i).storeBytes(of: r, as: Vector.self)
            i += 16
        }
        guard i < count else { return }
        var ta = Vector(repeating: 0), tb = ta
        for j in 0..<(count - i) { (ta[j], tb[j]) = (a[i + j], b[i + j]) }
        let r = Op.value(ta, tb)
        for j in 0..<(count - i) { y[i + j] = r[j] }
    }

    /// `max(a, 0)` (NaN passes through; `b` unused).
    enum ReLUOperation: VectorOperation {
        @inline(__always) static func value(_ a: Vector, _ b: Vector) -> Vector { a.replacing(with: 0, where: a .< 0) }
    }

    /// `max(a + b, 0)`: ``ReLUOperation`` of the sum.
    enum AddReLUOperation: VectorOperation {
        @inline(__always) static func value(_ a: Vector, _ b: Vector) -> Vector { ReLUOperation.value(a + b, b) }
    }

    /// `a + b`.
    enum AddOperation: VectorOperation {
        @inline(__always) static func value(_ a: Vector, _ b: Vector) -> Vector { a + b }
    }

    /// `a <= 0 ? 0 : b` (a: the ReLU's output, b: the gradient; a NaN output passes the gradient, as in PyTorch).
    enum ReLUBackwardOperation: VectorOperation {
        @inline(__always) static func value(_ a: Vector, _ b: Vector) -> Vector {
            b.replacing(with: 0, where: a .<= 0)
        }
    }

    /// `y[i] = x[i] < 0 ? 0 : x[i]` (`y` may alias `x`; `b` is not read).
    static func relu(
        _ x: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int
    ) {
        map(x, x, y, count, ReLUOperation.self)
    }

    /// `y[i] = max(a[i] + b[i], 0)`: a residual sum and its ReLU in one pass (`y` may alias `a` or `b`).
    static func addReLU(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int
    ) {
        map(a, b, y, count, AddReLUOperation.self)
    }

    /// `y[i] = a[i] + b[i]` (`y` may alias `a` or `b`).
    static func add(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int
    ) {
        map(a, b, y, count, AddOperation.self)
    }

    /// `dx[i] = y[i] <= 0 ? 0 : a[i] + b[i]`: ``reluBackward(_:_:_:_:)`` of the sum `a + b` (the same bits as
    /// ``add(_:_:_:_:)`` then the mask), in one pass.
    static func addReLUBackward(
        _ y: UnsafePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
        _ dx: UnsafeMutablePointer<Float>, _ count: Int
    ) {
        var i = 0
        while i + 16 <= count {
            let v = UnsafeRawPointer(y + i).loadUnaligned(as: Vector.self)
            let g =
                UnsafeRawPointer(a + i).loadUnaligned(as: Vector.self)
                + UnsafeRawPointer(b + i).loadUnaligned(as: Vector.self)
            UnsafeMutableRawPointer(dx + i).storeBytes(
                of: g.replacing(with: 0, where: v .<= 0), as: Vector.self)
            i += 16
        }
        while i < count {
            dx[i] = y[i] <= 0 ? 0 : a[i] + b[i]
            i += 1
        }
    }

    /// `dx[i] = y[i] <= 0 ? 0 : dy[i]`.
    static func reluBackward(
        _ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ count: Int
    ) {
        map(y, dy, dx, count, ReLUBackwardOperation.self)
    }
}

/// An element-wise operation of two 16-lane vectors for ``Elementwise/map(_:_:_:_:_:)``.
protocol VectorOperation {
    static func value(_ a: Elementwise.Vector, _ b: Elementwise.Vector) -> Elementwise.Vector
}
