/// A NormKit ``/NormKit/NormalizationLayer`` as a leaf of the module tree, or the identity (PyTorch's `nn.Identity`, a
/// model's `--norm none` slot) when ``layer`` is nil.
///
/// Its tensors are the wrapped layer's: ``ownParameters`` are `γ`/`β` (`weight`, `bias`), ``ownBuffers()`` the
/// rest of the layer's `stateDict()` (`running_mean`, `running_var`, `num_batches_tracked`, MABN's `iters`,
/// `buffer_x2`, …), restored through the layer's own `loadStateDict(_:)` with all its checks.
public final class NormalizationModule: Layer {
    /// The normalization, nil for the identity.
    public let layer: NormalizationLayer?
    /// Sees this normalization's input in every forward and its output gradient in every backward (analyses such
    /// as `normkit stats`); nil, the default, costs one branch per call.
    public weak var observer: NormalizationObserver?
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    /// Wraps `layer` (nil: the identity).
    public init(_ layer: NormalizationLayer?) { self.layer = layer }

    /// The layer's name (`"GroupNorm(channels: 32, groups: 16)"`), or `"Identity"`.
    public var name: String { layer?.name ?? "Identity" }

    /// PyTorch's `repr` of the counterpart module: `GroupNorm(16, 32)` (groups, channels), `BatchNorm2d(32,
    /// momentum=0.1)`, `BatchRenorm2d(…)`, `MovingAverageBatchNorm2d(32, buffer_size=16, momentum=0.98)`,
    /// `FrozenBatchNorm2d(32)`, `Identity()`; with `eps=` when it is not 1e-05, `norm_batch=` for ghost batches
    /// and `affine=False` without `γ`/`β`.
    public var summary: String {
        guard let layer else { return "Identity()" }
        var arguments: [String]
        switch layer {
        case let gn as GroupNorm: arguments = ["\(gn.groups)", "\(gn.channels)"]
        case let bn as BatchNorm:
            arguments = ["\(bn.channels)", "momentum=\(bn.momentum)"] + Self.normBatch(bn.normBatch)
        case let brn as BatchRenorm:
            arguments = ["\(brn.channels)", "momentum=\(brn.momentum)"] + Self.normBatch(brn.normBatch)
        case let mabn as MovingAverageBatchNorm:
            arguments =
                ["\(mabn.channels)", "buffer_size=\(mabn.bufferSize)", "momentum=\(mabn.oldValueWeight)"]
                + Self.normBatch(mabn.normBatch)
        case is FrozenBatchNorm: arguments = ["\(layer.channels)"]
        default: return layer.name
        }
        if layer.epsilon != 1e-5 { arguments.append("eps=\(layer.epsilon)") }
        if layer.weight == nil { arguments.append("affine=False") }
        return "\(Self.kind(of: layer))(\(arguments.joined(separator: ", ")))"
    }

    /// The PyTorch class name of `layer`'s counterpart.
    private static func kind(of layer: NormalizationLayer) -> String {
        switch layer {
        case is GroupNorm: return "GroupNorm"
        case is BatchNorm: return "BatchNorm2d"
        case is BatchRenorm: return "BatchRenorm2d"
        case is MovingAverageBatchNorm: return "MovingAverageBatchNorm2d"
        default: return "FrozenBatchNorm2d"
        }
    }

    private static func normBatch(_ k: Int?) -> [String] { k.map { ["norm_batch=\($0)"] } ?? [] }

    /// `γ` and `β` (none for the identity or without affine parameters).
    public var ownParameters: [Parameter] { layer?.parameters ?? [] }

    /// The layer's state entries that are not parameters, the BatchNorm family's first (`running_mean`,
    /// `running_var`/`running_std`, `num_batches_tracked`), then MABN's (`iters`, `buffer_x2`, `buffer_gz`),
    /// then any other in name order.
    public func ownBuffers() -> [(name: String, value: StateTensor)] {
        guard let layer else { return [] }
        let parameterNames = Set(ownParameters.map(\.name))
        let state = layer.stateDict().filter { !parameterNames.contains($0.key) }
        return state.keys.sorted { Self.bufferRank($0) < Self.bufferRank($1) }.map { ($0, state[$0]!) }
    }

    private static let bufferOrder = [
        "running_mean", "running_var", "running_std", "num_batches_tracked", "iters",
        "buffer_x2", "buffer_gz",
    ]

    private static func bufferRank(_ name: String) -> (Int, String) {
        (bufferOrder.firstIndex(of: name) ?? bufferOrder.count, name)
    }

    /// Restores the layer through its `loadStateDict(_:)` (which checks every value, then assigns them all).
    public func loadOwnState(_ state: [String: StateTensor]) throws {
        try layer?.loadStateDict(state)
    }

    /// Normalizes `x` into `y` (the identity copies it).
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        observer?.normalization(self, sawInput: x, training: training)
        guard let layer else { return copy(x, into: &y) }
        try layer.forward(x, into: &y, training: training)
    }

    /// Backpropagates `dy` into `dx` (the identity copies it).
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        observer?.normalization(self, sawOutputGradient: dy)
        guard let layer else { return copy(dy, into: &dx) }
        try layer.backward(dy, into: &dx)
    }

    /// Sets `γ` to 0 (the last normalization of a residual block, spec §6); frozen `γ`s stay.
    func zeroScale() {
        guard let weight = layer?.weight, weight.isTrainable else { return }
        weight.value = [Float](repeating: 0, count: weight.value.count)
    }
}

/// Copies `x` into `y` (same shape and layout), reusing `y`'s memory when it can.
func copy(_ x: Tensor, into y: inout Tensor) {
    y.prepare(shape: x.shape, layout: x.layout)
    x.withUnsafeBufferPointer { src in y.withUnsafeMutableBufferPointer { _ = $0.update(fromContentsOf: src) } }
}

/// What an analysis attached to a ``NormalizationModule`` (its ``NormalizationModule/observer``) is shown.
public protocol NormalizationObserver: AnyObject {
    /// The input of a forward, before the layer normalizes it.
    func normalization(_ module: NormalizationModule, sawInput x: Tensor, training: Bool)
    /// The gradient of the layer's output in a backward, before the layer backpropagates it.
    func normalization(_ module: NormalizationModule, sawOutputGradient dy: Tensor)
}
