/// Group Normalization (Wu & He, 2018): each sample's channels are split into `G` contiguous groups and each
/// group is normalized by its own mean and variance over its channels and all spatial positions.
///
/// Conventions (spec sections 0–1):
/// - Grouping is **contiguous**: channel `c` is in group `c / (C/G)`, as in PyTorch's `nn.GroupNorm` and the
///   paper's code (MLX's default interleaves channels; NormKit does not).
/// - Variance is biased (divide by the set size); `ε` (default `1e-5`) sits inside the square root.
/// - `γ`, `β` are per channel, shape `(C,)`.
/// - Statistics never depend on other samples, so training and evaluation compute the same thing and there
///   are no running statistics.
///
/// ``layerNorm(channels:epsilon:affine:)`` (`G = 1`) and ``instanceNorm(channels:epsilon:affine:)`` (`G = C`)
/// are the paper's LN and IN for conv nets, with per-channel affine.
///
/// The grouping is given once: ``init(channels:groups:epsilon:affine:)`` or
/// ``init(channels:groupSize:epsilon:affine:)``; ``init(channels:groups:groupSize:epsilon:affine:)`` takes either
/// from optional settings and refuses both.
///
/// ```swift
/// let norm = try GroupNorm(channels: 64, groups: 32)
/// let y = try norm.forward(x, training: true)
/// let grads = try norm.backward(dy)   // grads.input, grads.weight, grads.bias
/// ```
public final class GroupNorm: NormalizationLayer {
    /// `C`.
    public let channels: Int
    /// `G`, the number of groups.
    public let groups: Int
    /// `ε`.
    public let epsilon: Float
    /// `γ` (nil with `affine: false`).
    public let weight: Parameter?
    /// `β` (nil with `affine: false`).
    public let bias: Parameter?
    /// The activation fused into the apply stage (``FusedActivation``): the output is `act(norm(x))` and the
    /// backward takes its gradient. Set it between steps, not between a forward and its backward.
    public var activation: FusedActivation = .identity

    /// `"GroupNorm(channels: 64, groups: 32)"` (with `affine: false` when set).
    public var name: String {
        GroupNorm.describe(channels: channels, grouping: "groups: \(groups)", affine: weight != nil)
    }

    /// The ``name`` of a GroupNorm built with these arguments (`grouping`: `"groups: 32"` or `"groupSize: 2"`).
    static func describe(channels: Int, grouping: String, affine: Bool) -> String {
        layerName("GroupNorm", channels: channels, [grouping], affine: affine)
    }
    /// `C / G`.
    public var groupSize: Int { channels / groups }

    // Saved by the training forward for the backward, and the buffers reused across steps.
    private var pending = PendingForward()
    private var workspace = StatisticsWorkspace()
    /// The evaluation forward's own buffers, so that it leaves a pending training forward's statistics alone.
    private var evaluationWorkspace = StatisticsWorkspace()

    /// A GroupNorm with `groups` groups.
    ///
    /// - Throws: ``NormalizationError/invalidGroups(channels:groups:)`` unless `1 ≤ groups ≤ channels` and
    ///   `groups` divides `channels`; ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for
    ///   `channels < 1` or `epsilon ≤ 0` (or not finite);
    ///   ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when a per-channel vector needs more bytes
    ///   than this machine's physical memory.
    public init(channels: Int, groups: Int, epsilon: Float = 1e-5, affine: Bool = true) throws {
        let layer = GroupNorm.describe(channels: channels, grouping: "groups: \(groups)", affine: affine)
        try LayerArgument.validate(layer: layer, .channels(channels))
        guard groups >= 1, groups <= channels, channels % groups == 0 else {
            throw NormalizationError.invalidGroups(channels: channels, groups: groups)
        }
        try LayerArgument.validate(layer: layer, .epsilon(epsilon), .perChannel(channels))
        self.channels = channels
        self.groups = groups
        self.epsilon = epsilon
        (weight, bias) = makeAffine(channels: channels, affine: affine)
    }

    /// A GroupNorm whose groups have `groupSize` channels each (`G = C / groupSize`).
    ///
    /// - Throws: ``NormalizationError/invalidGroupSize(channels:groupSize:)`` unless `groupSize` divides
    ///   `channels`.
    public convenience init(channels: Int, groupSize: Int, epsilon: Float = 1e-5, affine: Bool = true) throws {
        guard groupSize >= 1, groupSize <= channels, channels % groupSize == 0 else {
            throw NormalizationError.invalidGroupSize(channels: channels, groupSize: groupSize)
        }
        try self.init(channels: channels, groups: channels / groupSize, epsilon: epsilon, affine: affine)
    }

    /// A GroupNorm from optional settings that give the grouping either as a number of groups or as channels per
    /// group: exactly one of `groups` and `groupSize` must be non-nil (no silent preference).
    ///
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` (name `"groups/groupSize"`)
    ///   when both or neither are given; otherwise as ``init(channels:groups:epsilon:affine:)`` or
    ///   ``init(channels:groupSize:epsilon:affine:)``.
    public convenience init(
        channels: Int, groups: Int?, groupSize: Int?, epsilon: Float = 1e-5, affine: Bool = true
    ) throws {
        switch (groups, groupSize) {
        case (let groups?, nil):
            try self.init(channels: channels, groups: groups, epsilon: epsilon, affine: affine)
        case (nil, let groupSize?):
            try self.init(channels: channels, groupSize: groupSize, epsilon: epsilon, affine: affine)
        default:
            let given = "groups: \(groups.map(String.init) ?? "nil"), groupSize: \(groupSize.map(String.init) ?? "nil")"
            throw NormalizationError.invalidArgument(
                layer: layerName("GroupNorm", channels: channels, [given], affine: affine), name: "groups/groupSize",
                value: given, expected: "exactly one of groups and groupSize (both describe the grouping)")
        }
    }

    /// Layer Normalization for conv nets: one statistic per sample over all channels and positions (`G = 1`),
    /// per-channel `γ`, `β`.
    ///
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for `channels < 1` or an `ε`
    ///   that is not finite and positive.
    public static func layerNorm(channels: Int, epsilon: Float = 1e-5, affine: Bool = true) throws -> GroupNorm {
        try GroupNorm(channels: channels, groups: 1, epsilon: epsilon, affine: affine)
    }

    /// Instance Normalization: one statistic per sample and channel (`G = C`), per-channel `γ`, `β`.
    ///
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for `channels < 1` or an `ε`
    ///   that is not finite and positive.
    public static func instanceNorm(channels: Int, epsilon: Float = 1e-5, affine: Bool = true) throws -> GroupNorm {
        try GroupNorm(channels: channels, groups: channels, epsilon: epsilon, affine: affine)
    }

    /// Normalizes each (sample, group); identical in training and evaluation. In training it saves `x` and the
    /// group statistics for ``backward(_:into:)``; an evaluation forward touches no state (a pending training
    /// forward can still be backpropagated after it).
    ///
    /// - Throws: also ``NormalizationError/tooFewValuesPerChannel(layer:valuesPerSet:)`` in both modes when a spatial
    ///   dimension is 0: a group of no values has no statistics (PyTorch's GroupNorm refuses it too).
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        try InputCheck.validate(x, channels: channels, layer: name)
        guard x.spatialCount > 0 else { throw NormalizationError.tooFewValuesPerChannel(layer: name, valuesPerSet: 0) }
        let g = NormalizationGeometry(
            layout: x.layout, batch: x.batch, channels: channels,
            positions: x.spatialCount, samplesPerSet: 1, channelsPerSet: groupSize)
        if training {
            workspace.normalize(
                x, into: &y, gamma: weight?.value, beta: bias?.value, epsilon: epsilon, activation: activation,
                geometry: g)
            pending.save(x, g)
        } else {
            evaluationWorkspace.normalize(
                x, into: &y, gamma: weight?.value, beta: bias?.value, epsilon: epsilon, activation: activation,
                geometry: g)
        }
    }

    /// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` per group with `g = γ_c·dy`; `dγ_c = Σ dy·x̂`, `dβ_c = Σ dy`.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        let (x, g) = try pending.forBackward(of: dy, layer: name)
        workspace.backward(dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g)
        pending.clear()
    }

    /// `weight` and `bias` (when affine); GroupNorm has no running statistics.
    public func stateDict() -> [String: StateTensor] {
        var state: [String: StateTensor] = [:]
        if let weight { state["weight"] = .float32(shape: [channels], values: weight.value) }
        if let bias { state["bias"] = .float32(shape: [channels], values: bias.value) }
        return state
    }

    /// Restores `weight` and `bias` (strict: exactly those keys, none for `affine: false`; see
    /// ``NormalizationLayer/loadStateDict(_:strict:)``); nothing changes if it throws.
    @discardableResult
    public func loadStateDict(_ state: [String: StateTensor], strict: Bool) throws -> StateDictLoadResult {
        var reader = StateDictReader(state, layer: name, strict: strict)
        let affine = try reader.affine(weight: weight, bias: bias, channels: channels)
        let result = try reader.finish()
        affine.restore(weight: weight, bias: bias)
        return result
    }
}
