/// He et al.'s basic residual block: `relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))`, the shortcut
/// a 1×1 conv + norm (``downsample``) when the shape changes. Names follow `torch_models.BasicBlock`: `conv1`,
/// `norm1`, `conv2`, `norm2`, `downsample.0`, `downsample.1` (the ReLUs are functional there, so they are not
/// part of the tree).
///
/// Read-only from outside: reach its layers to inspect or change their tensors; ``ResNet`` runs it.
public final class BasicBlock: Module {
    private let conv1Slot: LayerSlot<Conv2d>
    /// `norm1` and the ReLU after it (fused into norm1's apply stage).
    private let norm1Slot: NormalizationReLUSlot
    private let conv2Slot: LayerSlot<Conv2d>
    private let norm2Slot: NormalizationSlot
    /// The projection shortcut, nil for the identity shortcut.
    public let downsample: ResNetShortcut?
    /// The block's output `relu(norm2(…) + shortcut)`, one fused pass.
    private let residual = ResidualReLU()
    /// The mode `ResNet`'s `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    /// The first 3×3 convolution (carries the block's stride).
    public var conv1: Conv2d { conv1Slot.layer }
    /// The normalization after ``conv1``.
    public var norm1: NormalizationModule { norm1Slot.module }
    /// The second 3×3 convolution.
    public var conv2: Conv2d { conv2Slot.layer }
    /// The normalization after ``conv2``, the block's last (its `γ` starts at 0 by default).
    public var norm2: NormalizationModule { norm2Slot.module }

    /// `zeroInitLastScale` sets ``norm2``'s `γ` to 0 (spec §6), so the block starts as its shortcut.
    init(
        inChannels: Int, outChannels: Int, stride: Int, normalization: NormalizationSettings,
        zeroInitLastScale: Bool, generator: inout SeededGenerator
    ) throws {
        let centred = normalization.centresConvolutions
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
        if stride != 1 || inChannels != outChannels {
            downsample = try ResNetShortcut(
                inChannels: inChannels, outChannels: outChannels, stride: stride,
                normalization: normalization, generator: &generator)
        } else {
            downsample = nil
        }
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

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = try conv1Slot.forward(x, training: training)
        h = try norm1Slot.forward(h, training: training)
        h = try conv2Slot.forward(h, training: training)
        h = try norm2Slot.forward(h, training: training)
        return residual.forward(h, shortcut: try downsample?.forward(x, training: training) ?? x, training: training)
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        inputGradient(try backwardToBranches(dy))
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
/// the reference's `nn.Sequential` `downsample`.
public final class ResNetShortcut: Module {
    private let convSlot: LayerSlot<Conv2d>
    private let normSlot: NormalizationSlot
    /// The mode `ResNet`'s `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    /// The 1×1 convolution (`downsample.0`).
    public var conv: Conv2d { convSlot.layer }
    /// The normalization after it (`downsample.1`).
    public var norm: NormalizationModule { normSlot.module }

    init(
        inChannels: Int, outChannels: Int, stride: Int, normalization: NormalizationSettings,
        generator: inout SeededGenerator
    ) throws {
        convSlot = LayerSlot(
            try Conv2d(
                inChannels: inChannels, outChannels: outChannels, kernelSize: 1,
                stride: stride, padding: 0, bias: false,
                centred: normalization.centresConvolutions, generator: &generator))
        normSlot = NormalizationSlot(try normalization.makeLayer(channels: outChannels))
    }

    /// `"Sequential"`, as in the reference.
    public var summary: String { "Sequential" }
    /// `0`: the convolution, `1`: the normalization.
    public var children: [(name: String, module: any Module)] { [("0", conv), ("1", norm)] }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        try normSlot.forward(try convSlot.forward(x, training: training), training: training)
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        try convSlot.backward(try normSlot.backward(dy))
    }
}

/// One stage of a ``ResNet``: its blocks in order, named `0`, `1`, … as the reference's `nn.Sequential`
/// `layer1`…`layer3`.
public final class ResNetStage: Module {
    /// The blocks; the first carries the stage's stride.
    public let blocks: [BasicBlock]
    /// The mode `ResNet`'s `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true

    init(blocks: [BasicBlock]) { self.blocks = blocks }

    /// `"Sequential"`, as in the reference.
    public var summary: String { "Sequential" }
    /// The blocks, named `"0"`, `"1"`, ….
    public var children: [(name: String, module: any Module)] {
        blocks.enumerated().map { ("\($0.offset)", $0.element) }
    }
}
