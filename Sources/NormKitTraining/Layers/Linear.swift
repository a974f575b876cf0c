/// A fully connected layer on `(N, in)` tensors, PyTorch's `nn.Linear`: `y = x·Wᵀ + b`.
///
/// - ``weight`` has shape `(out, in)` and ``bias`` `(out,)` (`state_dict` names `weight`, `bias`).
/// - PyTorch's default initialisation: both uniform in `±1/√in`, drawn from the given generator.
/// - Input is rank 2. Both ``/NormKit/TensorLayout``s are accepted (a rank-2 tensor has the same memory in either);
///   the output and `dx` are channels-first.
public final class Linear: Layer {
    /// `in`, the input features.
    public let inFeatures: Int
    /// `out`, the output features.
    public let outFeatures: Int
    /// `W`, shape `(out, in)`, role ``/NormKit/ParameterRole/weight``.
    public let weight: Parameter
    /// `b`, shape `(out,)`, role ``/NormKit/ParameterRole/bias``.
    public let bias: Parameter

    /// `"Linear(64→10)"`.
    public var name: String { "Linear(\(inFeatures)→\(outFeatures))" }

    /// PyTorch's `repr`: `"Linear(in_features=64, out_features=10, bias=True)"`.
    public var summary: String { "Linear(in_features=\(inFeatures), out_features=\(outFeatures), bias=True)" }

    /// ``weight`` and ``bias`` (state-dict names `weight`, `bias`).
    public var ownParameters: [Parameter] { [weight, bias] }

    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    private var savedInput: Tensor?
    // The last forward's output shape, and the last training forward's (see Shape+InPlace.swift).
    private var outputShape: [Int] = []
    private var savedOutputShape: [Int] = []

    /// A linear layer with PyTorch's default uniform initialisation drawn from `generator` (weight first,
    /// then bias).
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` for a feature count below 1
    ///   or above `Int32.max` (OpenBLAS's sizes are 32-bit); ``/NormKit/NormalizationError/invalidShape(layer:shape:)``
    ///   when the weight `(out, in)` has too many values to count (``/NormKit/Tensor/isValid(shape:)``);
    ///   ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when it needs more bytes than this
    ///   machine's physical memory. All before anything is allocated.
    public init(inFeatures: Int, outFeatures: Int, generator: inout SeededGenerator) throws {
        for (argument, value) in [("inFeatures", inFeatures), ("outFeatures", outFeatures)]
        where !(1...Int(Int32.max)).contains(value) {
            throw NormalizationError.invalidArgument(
                layer: "Linear", name: argument, value: "\(value)",
                expected: value < 1 ? "at least 1" : "at most \(Int32.max)")
        }
        let shape = [outFeatures, inFeatures]
        guard Tensor.isValid(shape: shape) else { throw NormalizationError.invalidShape(layer: "Linear", shape: shape) }
        try MemoryLimit.check(
            MemoryLimit.floatBytes(outFeatures, inFeatures), layer: "Linear", what: "the weight \(shape)")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        let bound = 1 / Float(inFeatures).squareRoot()
        let w = (0..<(outFeatures * inFeatures)).map { _ in Float.random(in: -bound...bound, using: &generator) }
        let b = (0..<outFeatures).map { _ in Float.random(in: -bound...bound, using: &generator) }
        weight = Parameter(name: "weight", shape: shape, role: .weight, value: w)
        bias = Parameter(name: "bias", shape: [outFeatures], role: .bias, value: b)
        BLAS.configureDefaultIfNeeded()
    }

    /// `y = x·Wᵀ + b` for `x` of shape `(N, in)`; a training forward keeps a reference to `x`.
    ///
    /// - Throws: ``LayerError/wrongRank(layer:expected:shape:)``, ``/NormKit/NormalizationError/channelMismatch(layer:expected:got:)``,
    ///   ``/NormKit/NormalizationError/emptyBatch(layer:)``, ``LayerError/sizeBeyond32Bits(layer:size:value:limit:)``
    ///   for a batch beyond OpenBLAS's 32-bit sizes, or
    ///   ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` for an output `(N, out)` larger
    ///   than this machine's memory (both before anything is allocated).
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        guard x.shape.count == 2 else { throw LayerError.wrongRank(layer: name, expected: 2, shape: x.shape) }
        guard x.channels == inFeatures else {
            throw NormalizationError.channelMismatch(layer: name, expected: inFeatures, got: x.channels)
        }
        guard x.batch > 0 else { throw NormalizationError.emptyBatch(layer: name) }
        let n = x.batch, i = inFeatures, o = outFeatures
        try Self.checkOutput(batch: n, features: o, layer: name)
        outputShape.setDimensions(n, o)
        y.prepare(shape: outputShape, layout: .channelsFirst)
        x.withUnsafeBufferPointer { xb in
            weight.value.withUnsafeBufferPointer { wb in
                bias.value.withUnsafeBufferPointer { bb in
                    y.withUnsafeMutableBufferPointer { yb in
                        let yp = yb.baseAddress!
                        for r in 0..<n { (yp + r * o).update(from: bb.baseAddress!, count: o) }
                        BLAS.sgemm(
                            transposeB: true, m: n, n: o, k: i, a: xb.baseAddress!, lda: i,
                            b: wb.baseAddress!, ldb: i, beta: 1, c: yp, ldc: o)
                    }
                }
            }
        }
        if training {
            savedInput = x
            savedOutputShape = outputShape
        }
    }

    /// Throws unless a batch of `batch` rows fits OpenBLAS's 32-bit sizes (the batch is the M of the forward's GEMM
    /// and the K of the weight gradient's) and its output of `batch × features` floats fits in memory.
    package static func checkOutput(batch: Int, features: Int, layer: @autoclosure () -> String) throws {
        try BLAS.check(batch, "batch", layer: layer())
        try MemoryLimit.check(
            MemoryLimit.floatBytes(batch, features), layer: layer(), what: "the output [\(batch), \(features)]")
    }

    /// Sets `∂L/∂W = dyᵀ·x`, `∂L/∂b = Σ_rows dy` and writes `dx = dy·W`.
    ///
    /// - Throws: ``/NormKit/NormalizationError/backwardBeforeForward(layer:)`` or
    ///   ``/NormKit/NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        guard let x = savedInput else { throw NormalizationError.backwardBeforeForward(layer: name) }
        let n = x.batch, i = inFeatures, o = outFeatures
        try LayerCheck.gradient(dy, shape: savedOutputShape, layout: .channelsFirst, layer: name)
        dx.prepare(shape: x.shape, layout: .channelsFirst)
        x.withUnsafeBufferPointer { xb in
            dy.withUnsafeBufferPointer { db in
                let dyp = db.baseAddress!
                weight.gradient.withUnsafeMutableBufferPointer { gw in
                    BLAS.sgemm(
                        transposeA: true, m: o, n: i, k: n, a: dyp, lda: o, b: xb.baseAddress!, ldb: i,
                        c: gw.baseAddress!, ldc: i)
                }
                bias.gradient.withUnsafeMutableBufferPointer { gb in
                    for c in 0..<o { gb[c] = 0 }
                    for r in 0..<n {
                        for c in 0..<o { gb[c] += dyp[r * o + c] }
                    }
                }
                weight.value.withUnsafeBufferPointer { wb in
                    dx.withUnsafeMutableBufferPointer { dxb in
                        BLAS.sgemm(
                            m: n, n: i, k: o, a: dyp, lda: o, b: wb.baseAddress!, ldb: i,
                            c: dxb.baseAddress!, ldc: i)
                    }
                }
            }
        }
        savedInput = nil
    }

}
