/// He et al.'s basic residual block: `relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))`, the shortcut
/// a 1×1 conv + norm (``downsample``) when the shape changes. Names follow `torch_models.BasicBlock`: `conv1`,
/// `norm1`, `conv2`, `norm2`, `downsample.0`, `downsample.1` (the ReLUs are functional there, so they are not
/// part of the tree).
///
/// ``ResNet`` builds and runs its blocks; a block is also a ``Layer``, so a network of your own can use it (in a
/// ``Sequential``, or in a ``ResNetStage``):
///
/// ```swift
/// var generator = SeededGenerator(seed: 0)
/// let gn = NormalizationSettings(kind: .gn, groups: 4)
/// let block = try BasicBlock(inChannels: 16, outChannels: 32, stride: 2, normalization: gn, generator: &generator)
/// // block.downsample is the 1×1 projection: the block halves H and W and doubles the channels
/// ```
public final class BasicBlock: Layer {
    private let conv1Slot: LayerSlot<Conv2d>
    /// `norm1` and the ReLU after it (fused into norm1's apply stage).
    private let norm1Slot: NormalizationReLUSlot
    private let conv2Slot: LayerSlot<Conv2d>
    private let norm2Slot: NormalizationSlot
    /// The projection shortcut, nil for the identity shortcut.
    public let downsample: ResNetShortcut?
    /// The block's output `relu(norm2(…) + shortcut)`, one fused pass.
    private let residual = ResidualReLU()
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    /// The first 3×3 convolution (carries the block's stride).
    public var conv1: Conv2d { conv1Slot.layer }
    /// The normalization after ``conv1``.
    public var norm1: NormalizationModule { norm1Slot.module }
    /// The second 3×3 convolution.
    public var conv2: Conv2d { conv2Slot.layer }
    /// The normalization after ``conv2``, the block's last (its `γ` starts at 0 by default).
    public var norm2: NormalizationModule { norm2Slot.module }

    /// The input channels.
    public var inChannels: Int { conv1.inChannels }
    /// The output channels.
    public var outChannels: Int { conv1.outChannels }
    /// The stride of ``conv1`` (and of the shortcut): the output's `H` and `W` are `⌈H / stride⌉`, `⌈W / stride⌉`.
    public var stride: Int { conv1.stride }

    /// How the block's convolutions compute (``Conv2d/engine``; also the shortcut's). ``ResNet/engine`` sets it on
    /// each of its blocks.
    public var engine: ConvolutionEngine {
        get { conv1.engine }
        set { for conv in convolutions { conv.engine = newValue } }
    }

    /// ``conv1``, ``conv2`` and the shortcut's convolution when there is one.
    private var convolutions: [Conv2d] { [conv1, conv2] + (downsample.map { [$0.conv] } ?? []) }

    /// A block that builds its projection shortcut when it needs one, as ``ResNet`` does: a ``ResNetShortcut``
    /// when `stride ≠ 1` or `inChannels ≠ outChannels`, the identity otherwise.
    ///
    /// The convolutions are bias-free 3×3 (padding 1; `conv1` strided), He-normal (`fan_out`) from `generator`, in
    /// the order `conv1`, `conv2`, then the shortcut's: a ``ResNet`` built from the same generator state has the same
    /// weights in its first block.
    ///
    /// - Parameters:
    ///   - inChannels: the input's channels (at least 1).
    ///   - outChannels: the output's channels (at least 1).
    ///   - stride: `conv1`'s (and the shortcut's) stride, at least 1.
    ///   - normalization: the normalization after each convolution (``NormalizationSettings``; kind `.none` for
    ///     none).
    ///   - zeroInitLastScale: start ``norm2``'s `γ` at 0 (spec §6, the default, as ``ResNet``'s
    ///     `zeroInitResidualScale`), so the block starts as its shortcut.
    ///   - centresConvolutions: whether the convolutions are weight-centred (MABN's CenConv); nil, the default,
    ///     takes `normalization`'s ``NormalizationSettings/centresConvolutions`` as ``ResNet`` does.
    ///   - engine: how the convolutions compute (``ConvolutionEngine/preferred`` by default; see ``engine``).
    ///     They run on NormKit's pool of ``/NormKit/Parallelism/threadCount`` threads, as every layer.
    ///   - generator: the random numbers for the convolutions' initialisation.
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer `"BasicBlock"`)
    ///   for `inChannels`, `outChannels` or `stride` below 1, before anything is built; or a layer constructor's
    ///   error (``Conv2d/init(inChannels:outChannels:kernelSize:stride:padding:bias:centred:generator:)``,
    ///   ``NormalizationSettings/makeLayer(channels:)``: groups that do not divide `outChannels`, …).
    public convenience init(
        inChannels: Int, outChannels: Int, stride: Int = 1, normalization: NormalizationSettings,
        zeroInitLastScale: Bool = true, centresConvolutions: Bool? = nil, engine: ConvolutionEngine = .preferred,
        generator: inout SeededGenerator
    ) throws {
        try Self.validate(inChannels: inChannels, outChannels: outChannels, stride: stride)
        try self.init(
            inChannels: inChannels, outChannels: outChannels, stride: stride, normalization: normalization,
            zeroInitLastScale: zeroInitLastScale, centresConvolutions: centresConvolutions, engine: engine,
            shortcut: .automatic, generator: &generator)
    }

    /// A block with the shortcut you give, as torchvision's `BasicBlock(inplanes, planes, stride, downsample)`:
    /// `downsample` nil is the identity shortcut, which only a block that keeps the shape can use.
    ///
    /// The parameters are those of
    /// ``init(inChannels:outChannels:stride:normalization:zeroInitLastScale:centresConvolutions:engine:generator:)``;
    /// `downsample` is a ``ResNetShortcut`` from `inChannels` to `outChannels` with this `stride`, or nil when
    /// `stride == 1` and `inChannels == outChannels`. Its engine is set to `engine`.
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer `"BasicBlock"`)
    ///   for `inChannels`, `outChannels` or `stride` below 1; with name `"downsample"` when `downsample` is nil
    ///   but the block changes the shape (`stride ≠ 1` or `inChannels ≠ outChannels`: the identity cannot be added
    ///   to its output), or when the given shortcut's channels or stride are not the block's. All before anything
    ///   is built. Or a layer constructor's error.
    public convenience init(
        inChannels: Int, outChannels: Int, stride: Int = 1, normalization: NormalizationSettings,
        downsample: ResNetShortcut?, zeroInitLastScale: Bool = true, centresConvolutions: Bool? = nil,
        engine: ConvolutionEngine = .preferred, generator: inout SeededGenerator
    ) throws {
        try Self.validate(inChannels: inChannels, outChannels: outChannels, stride: stride)
        let block = "BasicBlock"
        if let downsample {
            let given = (downsample.inChannels, downsample.outChannels, downsample.stride)
            guard given == (inChannels, outChannels, stride) else {
                throw NormalizationError.invalidArgument(
                    layer: block, name: "downsample",
                    value: "a shortcut \(given.0)→\(given.1) with stride \(given.2)",
                    expected: "a shortcut \(inChannels)→\(outChannels) with stride \(stride), the block's")
            }
        } else if stride != 1 || inChannels != outChannels {
            throw NormalizationError.invalidArgument(
                layer: block, name: "downsample", value: "nil",
                expected: "a ResNetShortcut(inChannels: \(inChannels), outChannels: \(outChannels), stride: "
                    + "\(stride), …): the block maps \(inChannels) to \(outChannels) channels with stride "
                    + "\(stride), so its input cannot be added to its output (the identity shortcut needs stride 1 "
                    + "and equal channels)")
        }
        try self.init(
            inChannels: inChannels, outChannels: outChannels, stride: stride, normalization: normalization,
            zeroInitLastScale: zeroInitLastScale, centresConvolutions: centresConvolutions, engine: engine,
            shortcut: .given(downsample), generator: &generator)
    }

    /// Where the shortcut of a block under construction comes from.
    private enum ShortcutSource {
        case automatic
        case given(ResNetShortcut?)
    }

    /// Throws unless the channels and the stride are at least 1.
    private static func validate(inChannels: Int, outChannels: Int, stride: Int) throws {
        try LayerCheck.atLeastOne(
            ["inChannels": inChannels, "outChannels": outChannels, "stride": stride], layer: "BasicBlock")
    }

    private init(
        inChannels: Int, outChannels: Int, stride: Int, normalization: NormalizationSettings,
        zeroInitLastScale: Bool, centresConvolutions: Bool?, engine: ConvolutionEngine, shortcut: ShortcutSource,
        generator: inout SeededGenerator
    ) throws {
        let centred = centresConvolutions ?? normalization.centresConvolutions
        conv1Slot = LayerSlot(
            try Conv2d(
                inChannels: inChannels, outChannels: outChannels, kernelSize: 3,
                stride: stride, padding: 1, bias: false, centred: centred,
                generator: &generator))
        norm1Slot = NormalizationReLUSlot(try normalization.makeLayer(channels: outChannels))
        conv2Slot = LayerSlot(
            try Conv2d(
                inChannels: outChannels, outChannels: outChannels, kernelSize: 3, stride: 1,
                padding: 1, bias: false, centred: centred, generator: &generator))
        norm2Slot = NormalizationSlot(try normalization.makeLayer(channels: outChannels))
        if zeroInitLastScale { norm2Slot.module.zeroScale() }
        switch shortcut {
        case .given(let given): downsample = given
        case .automatic:
            if stride != 1 || inChannels != outChannels {
                downsample = try ResNetShortcut(
                    inChannels: inChannels, outChannels: outChannels, stride: stride,
                    normalization: normalization, centresConvolutions: centred, engine: engine,
                    generator: &generator)
            } else {
                downsample = nil
            }
        }
        self.engine = engine
    }

    /// `"BasicBlock"`.
    public var summary: String { "BasicBlock" }
    /// `conv1`, `norm1`, `conv2`, `norm2`, then `downsample` when there is one.
    public var children: [(name: String, module: any Module)] {
        [("conv1", conv1), ("norm1", norm1), ("conv2", conv2), ("norm2", norm2)]
            + (downsample.map { [("downsample", $0)] } ?? [])
    }

    /// Whether norm1's ReLU runs in norm1's apply stage (``ResNet/fusesActivations``).
    var fusesActivations: Bool {
        get { norm1Slot.fuses }
        set { norm1Slot.fuses = newValue }
    }

    /// The block's output for `x` `(N, inChannels, H, W)`, in a buffer the block reuses at its next forward (copy
    /// it to keep it). A training forward saves what ``backward(_:)`` needs.
    ///
    /// - Throws: the error of the layer that refuses `x` (``Conv2d/forward(_:into:training:)``: a wrong rank,
    ///   channel count or layout, an empty batch; the normalization's).
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = try conv1Slot.forward(x, training: training)
        h = try norm1Slot.forward(h, training: training)
        h = try conv2Slot.forward(h, training: training)
        h = try norm2Slot.forward(h, training: training)
        return residual.forward(h, shortcut: try downsample?.forward(x, training: training) ?? x, training: training)
    }

    /// Backpropagates `dy` (the gradient of the last training forward's output) through the block, setting every
    /// parameter's gradient; returns the input gradient in a buffer the block reuses at its next backward.
    ///
    /// - Throws: ``/NormKit/NormalizationError/backwardBeforeForward(layer:)`` without a training forward to pair
    ///   with; ``/NormKit/NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)`` when `dy`
    ///   is not of the output's shape and layout. Nothing is changed then.
    public func backward(_ dy: Tensor) throws -> Tensor {
        inputGradient(try backwardToBranches(dy))
    }

    /// ``forward(_:training:)`` into `y` (a copy of the output buffer, reusing `y`'s memory when it can).
    ///
    /// - Throws: as ``forward(_:training:)``.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        copy(try forward(x, training: training), into: &y)
    }

    /// ``backward(_:)`` into `dx` (a copy of the input-gradient buffer, reusing `dx`'s memory when it can).
    ///
    /// - Throws: as ``backward(_:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        copy(try backward(dy), into: &dx)
    }

    /// The backward from `∂L/∂output` to the input gradient's two terms (``BlockGradient``), left unsummed.
    func backwardToBranches(_ dy: Tensor) throws -> BlockGradient {
        try branches(residual.backward(dy, layer: "BasicBlock"))
    }

    /// The same from the next block's unsummed input gradient, added inside this block's masked ReLU pass.
    func backwardToBranches(_ dy: BlockGradient) throws -> BlockGradient {
        try branches(residual.backward(dy, layer: "BasicBlock"))
    }

    /// The input gradient from its two terms (one pass, into a buffer of this block's).
    func inputGradient(_ parts: BlockGradient) -> Tensor {
        residual.inputGradient(branch: parts.branch, shortcut: parts.shortcut)
    }

    private func branches(_ dsum: Tensor) throws -> BlockGradient {
        var g = try norm2Slot.backward(dsum)
        g = try conv2Slot.backward(g)
        g = try norm1Slot.backward(g)
        g = try conv1Slot.backward(g)
        return BlockGradient(branch: g, shortcut: try downsample?.backward(dsum) ?? dsum)
    }
}

/// A residual block's projection shortcut: a strided 1×1 convolution and a normalization, named `0` and `1` as
/// the reference's `nn.Sequential` `downsample`. A ``Layer``: give one to
/// ``BasicBlock/init(inChannels:outChannels:stride:normalization:downsample:zeroInitLastScale:centresConvolutions:engine:generator:)``.
public final class ResNetShortcut: Layer {
    private let convSlot: LayerSlot<Conv2d>
    private let normSlot: NormalizationSlot
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    /// The 1×1 convolution (`downsample.0`).
    public var conv: Conv2d { convSlot.layer }
    /// The normalization after it (`downsample.1`).
    public var norm: NormalizationModule { normSlot.module }
    /// The input channels.
    public var inChannels: Int { conv.inChannels }
    /// The output channels.
    public var outChannels: Int { conv.outChannels }
    /// The convolution's stride.
    public var stride: Int { conv.stride }

    /// A bias-free 1×1 convolution from `inChannels` to `outChannels` with `stride` (He-normal, `fan_out`, from
    /// `generator`) followed by `normalization`'s layer over `outChannels` channels.
    ///
    /// - Parameters:
    ///   - inChannels: the input's channels (at least 1).
    ///   - outChannels: the output's channels (at least 1).
    ///   - stride: the convolution's stride (at least 1); 1 by default, as ``BasicBlock``'s, ``ResNetStage``'s and
    ///     ``Conv2d``'s (torchvision's `conv1x1`): a shortcut of stride 1 changes only the channels.
    ///   - normalization: the normalization after the convolution (kind `.none` for none).
    ///   - centresConvolutions: whether the convolution is weight-centred (MABN's CenConv); nil, the default,
    ///     takes `normalization`'s ``NormalizationSettings/centresConvolutions``.
    ///   - engine: how the convolution computes (``Conv2d/engine``).
    ///   - generator: the random numbers for the convolution's initialisation.
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer
    ///   `"ResNetShortcut"`) for `inChannels`, `outChannels` or `stride` below 1, before anything is built; or a
    ///   layer constructor's error.
    public init(
        inChannels: Int, outChannels: Int, stride: Int = 1, normalization: NormalizationSettings,
        centresConvolutions: Bool? = nil, engine: ConvolutionEngine = .preferred, generator: inout SeededGenerator
    ) throws {
        try LayerCheck.atLeastOne(
            ["inChannels": inChannels, "outChannels": outChannels, "stride": stride], layer: "ResNetShortcut")
        convSlot = LayerSlot(
            try Conv2d(
                inChannels: inChannels, outChannels: outChannels, kernelSize: 1,
                stride: stride, padding: 0, bias: false,
                centred: centresConvolutions ?? normalization.centresConvolutions, generator: &generator))
        convSlot.layer.engine = engine
        normSlot = NormalizationSlot(try normalization.makeLayer(channels: outChannels))
    }

    /// `"Sequential"`, as in the reference.
    public var summary: String { "Sequential" }
    /// `0`: the convolution, `1`: the normalization.
    public var children: [(name: String, module: any Module)] { [("0", conv), ("1", norm)] }

    /// `norm(conv(x))`, in a buffer reused by the next forward.
    ///
    /// - Throws: the error of the layer that refuses `x`.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        try normSlot.forward(try convSlot.forward(x, training: training), training: training)
    }

    /// The input gradient of the last training forward for `dy`, in a buffer reused by the next backward; sets the
    /// parameters' gradients.
    ///
    /// - Throws: the error of the layer that refuses `dy` (a shape mismatch, a backward without its forward).
    public func backward(_ dy: Tensor) throws -> Tensor {
        try convSlot.backward(try normSlot.backward(dy))
    }

    /// ``forward(_:training:)`` into `y`.
    ///
    /// - Throws: as ``forward(_:training:)``.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        copy(try forward(x, training: training), into: &y)
    }

    /// ``backward(_:)`` into `dx`.
    ///
    /// - Throws: as ``backward(_:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        copy(try backward(dy), into: &dx)
    }
}

/// One stage of a ``ResNet``: its blocks in order, named `0`, `1`, … as the reference's `nn.Sequential`
/// `layer1`…`layer3`. A ``Layer``, so a network of your own can chain stages (in a ``Sequential``), and its state
/// dict is the reference's stage's: `state.scoped(to: "layer1")` of a ``ResNet``'s loads into a stage of the same
/// shape.
public final class ResNetStage: Layer {
    /// The blocks; the first carries the stage's stride.
    public let blocks: [BasicBlock]
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    /// A stage of the blocks you built.
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer `"ResNetStage"`)
    ///   when `blocks` is empty (name `"blocks"`), or when a block's ``BasicBlock/inChannels`` is not the previous
    ///   block's ``BasicBlock/outChannels`` (name `"blocks[i].inChannels"`).
    public convenience init(blocks: [BasicBlock]) throws {
        guard !blocks.isEmpty else {
            throw NormalizationError.invalidArgument(
                layer: "ResNetStage", name: "blocks", value: "[]", expected: "at least one block")
        }
        for i in blocks.indices.dropFirst() where blocks[i].inChannels != blocks[i - 1].outChannels {
            throw NormalizationError.invalidArgument(
                layer: "ResNetStage", name: "blocks[\(i)].inChannels", value: "\(blocks[i].inChannels)",
                expected: "\(blocks[i - 1].outChannels), the output channels of blocks[\(i - 1)]")
        }
        self.init(checked: blocks)
    }

    /// A stage of `count` blocks as ``ResNet`` builds one (torchvision's `_make_layer`): the first maps
    /// `inChannels` to `outChannels` with `stride` (and a projection shortcut when that changes the shape), the
    /// others keep `outChannels` with stride 1. Weights are drawn from `generator` block by block, so a ``ResNet``
    /// built from the same generator state has the same stage.
    ///
    /// `count` is the number of blocks (at least 1; `n` of a ResNet of depth `6n+2`); the other parameters are
    /// those of
    /// ``BasicBlock/init(inChannels:outChannels:stride:normalization:zeroInitLastScale:centresConvolutions:engine:generator:)``.
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer `"ResNetStage"`,
    ///   name `"count"`) for a count below 1; a block's errors (channels or stride below 1, …).
    public convenience init(
        inChannels: Int, outChannels: Int, count: Int, stride: Int = 1, normalization: NormalizationSettings,
        zeroInitLastScale: Bool = true, centresConvolutions: Bool? = nil, engine: ConvolutionEngine = .preferred,
        generator: inout SeededGenerator
    ) throws {
        try LayerCheck.atLeastOne(["count": count], layer: "ResNetStage")
        var blocks: [BasicBlock] = []
        for b in 0..<count {
            blocks.append(
                try BasicBlock(
                    inChannels: b == 0 ? inChannels : outChannels, outChannels: outChannels,
                    stride: b == 0 ? stride : 1, normalization: normalization, zeroInitLastScale: zeroInitLastScale,
                    centresConvolutions: centresConvolutions, engine: engine, generator: &generator))
        }
        self.init(checked: blocks)
    }

    /// Blocks already checked to chain (``ResNet``'s).
    init(checked blocks: [BasicBlock]) { self.blocks = blocks }

    /// `"Sequential"`, as in the reference.
    public var summary: String { "Sequential" }
    /// The blocks, named `"0"`, `"1"`, ….
    public var children: [(name: String, module: any Module)] {
        blocks.enumerated().map { ("\($0.offset)", $0.element) }
    }

    /// Runs the blocks in order; returns the last one's output buffer (reused by its next forward).
    ///
    /// - Throws: the error of the block that refuses its input.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = x
        for block in blocks { h = try block.forward(h, training: training) }
        return h
    }

    /// Backpropagates `dy` through every block (as ``ResNet`` does: each block's input gradient stays two terms
    /// until the block before adds them in its masked ReLU pass), setting every parameter's gradient; returns the
    /// input gradient in a buffer of the first block's.
    ///
    /// - Throws: as ``BasicBlock/backward(_:)``.
    public func backward(_ dy: Tensor) throws -> Tensor {
        var pending: BlockGradient?
        for block in blocks.reversed() {
            pending = try pending.map { try block.backwardToBranches($0) } ?? block.backwardToBranches(dy)
        }
        return pending.map { blocks[0].inputGradient($0) } ?? dy
    }

    /// ``forward(_:training:)`` into `y`.
    ///
    /// - Throws: as ``forward(_:training:)``.
    public func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws {
        copy(try forward(x, training: training), into: &y)
    }

    /// ``backward(_:)`` into `dx`.
    ///
    /// - Throws: as ``backward(_:)``.
    public func backward(_ dy: Tensor, into dx: inout Tensor) throws {
        copy(try backward(dy), into: &dx)
    }
}
