/// Layers applied one after the other, PyTorch's `nn.Sequential`: the way to build a network in code.
///
/// Children are named by position (`"0"`, `"1"`, …), so tensors are `0.weight`, `1.running_mean`, … A
/// `Sequential` is a ``Model`` (forward to a reused output buffer, backward from the output's gradient, for the
/// optimizer and the trainer's evaluation) and a ``Layer`` (so it nests in another `Sequential`).
///
/// ```swift
/// var generator = SeededGenerator(seed: 0)
/// let net = Sequential(
///     try Conv2d(inChannels: 1, outChannels: 16, kernelSize: 3, padding: 1, generator: &generator),
///     NormalizationModule(try GroupNorm(channels: 16, groups: 4)),
///     ReLU(),
///     try MaxPool2d(kernelSize: 2),
///     GlobalAveragePool(),
///     try Linear(inFeatures: 16, outFeatures: 10, generator: &generator))
/// ```
///
/// Each layer's output and input gradient live in buffers reused across steps. An identity
/// ``NormalizationModule`` passes its input through without a copy.
public final class Sequential: Model, Layer {
    /// The layers, in order.
    public let layers: [any Layer]
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true
    private let slots: [AnyLayerSlot]

    /// The layers in order.
    public init(_ layers: [any Layer]) {
        self.layers = layers
        slots = layers.map(AnyLayerSlot.init)
    }

    /// The layers in order.
    public convenience init(_ layers: any Layer...) { self.init(layers) }

    /// `"Sequential"`.
    public var summary: String { "Sequential" }
    /// The layers, named `"0"`, `"1"`, ….
    public var children: [(name: String, module: any Module)] {
        layers.enumerated().map { ("\($0.offset)", $0.element) }
    }

    /// Runs the layers in order; returns the last one's output buffer (reused by the next forward), or `x` when
    /// there are no layers.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = x
        for slot in slots { h = try slot.forward(h, training: training) }
        return h
    }

    /// Backpropagates `gradient` (of the last training forward's output) through every layer, setting every
    /// parameter's gradient.
    public func backward(_ gradient: Tensor) throws {
        _ = try propagate(gradient)
    }

    /// Backpropagates through every layer; returns the first layer's input-gradient buffer.
    private func propagate(_ gradient: Tensor) throws -> Tensor {
        var g = gradient
        for slot in slots.reversed() { g = try slot.backward(g) }
        return g
    }

    /// ``forward(_:training:)`` into `y` (a copy of the output buffer).
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        copy(try forward(x, training: training), into: &y)
    }

    /// ``backward(_:)``, writing the input gradient into `dx`. When the first layer does not compute its input
    /// gradient (a ``Conv2d`` with `computesInputGradient == false`), `dx` is not meaningful.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        copy(try propagate(dy), into: &dx)
    }

    /// The output for `x` in the current mode (``Module/training``), a new tensor.
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        var y = Tensor(zeros: [0, 0])
        try forward(x, into: &y, training: training)
        return y
    }
}

/// A layer of any type with its output and input-gradient buffers, reused across steps. An identity
/// normalization passes tensors through.
final class AnyLayerSlot {
    let layer: any Layer
    private let passesThrough: Bool
    private var output = Tensor(zeros: [0, 0])
    private var inputGradient = Tensor(zeros: [0, 0])

    init(_ layer: any Layer) {
        self.layer = layer
        passesThrough = (layer as? NormalizationModule).map { $0.layer == nil } ?? false
    }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        if passesThrough { return x }
        try layer.forward(x, into: &output, training: training)
        return output
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        if passesThrough { return dy }
        try layer.backward(dy, into: &inputGradient)
        return inputGradient
    }
}
