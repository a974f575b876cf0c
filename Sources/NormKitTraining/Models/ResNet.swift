/// He et al.'s residual network for small images (depth `6n+2`): a 3×3 stem, three stages of `n` basic blocks
/// at widths 16/32/64 with strides 1/2/2, global average pooling and a linear classifier. The layout, tensor
/// names and initialisation (He normal, fan-out; `γ = 0` for each block's last norm unless
/// `zeroInitResidualScale` is off) are those of `torch_models.ResNet`, so checkpoints load there with
/// `strict=True`.
///
/// The tree is `conv1`, `norm1`, `layer1`…`layer3` (``stages``, each a ``ResNetStage`` of ``BasicBlock``s) and
/// `fc`, readable from outside: `model.stages[1].blocks[0].conv1.weight` is `layer2.0.conv1.weight`.
public final class ResNet: Model {
    /// `6n+2`.
    public let depth: Int
    /// The normalization used everywhere.
    public let normalization: NormalizationSettings
    /// Whether each block's last normalization started with `γ = 0`.
    public let zeroInitResidualScale: Bool
    /// The three stages (`layer1`, `layer2`, `layer3`), `n` blocks each.
    public let stages: [ResNetStage]
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true
    private let stem: LayerSlot<Conv2d>
    /// The stem's normalization and the ReLU after it (fused into its apply stage).
    private let stemNorm: NormalizationReLUSlot
    private let pool = LayerSlot(GlobalAveragePool())
    private let classifier: LayerSlot<Linear>
    private var input = Tensor(zeros: [0, 0])

    /// How every convolution computes (default ``ConvolutionEngine/preferred``). Setting it sets each
    /// ``Conv2d/engine`` and the layout of the activations between them (``ConvolutionEngine/activationLayout``:
    /// channels-last for oneDNN, so no activation is ever reordered; the input is converted once per forward).
    public var engine: ConvolutionEngine = .preferred {
        didSet { for conv in convolutions { conv.engine = engine } }
    }

    /// Whether the ReLU after the stem's and each block's first normalization runs inside that normalization's
    /// apply stage (``/NormKit/FusedActivation/relu``: one pass fewer each way), on by default. The layer's
    /// ``/NormKit/NormalizationLayer/activation`` is set at each forward; a normalization with an observer
    /// (``NormalizationModule/observer``) always runs unfused, so the observer sees the normalization's own output
    /// gradient. The residual sum's ReLU is fused with the sum (``BasicBlock``) either way.
    public var fusesActivations = true {
        didSet {
            stemNorm.fuses = fusesActivations
            for block in blocks { block.fusesActivations = fusesActivations }
        }
    }

    /// Every convolution, the stem first.
    private var convolutions: [Conv2d] {
        [conv1] + blocks.flatMap { block in [block.conv1, block.conv2] + (block.downsample.map { [$0.conv] } ?? []) }
    }

    /// Builds a ResNet of `depth` layers (`6n+2`), stage widths `width`, `2·width`, `4·width`.
    ///
    /// - Parameters:
    ///   - depth: `6n+2` with `n ≥ 1` (8, 14, 20, …): `n` basic blocks per stage.
    ///   - normalization: the normalization after every convolution (``NormalizationSettings``).
    ///   - inChannels: the channels of the input images (1 for Fashion-MNIST).
    ///   - classes: the number of logits `fc` produces.
    ///   - width: the first stage's channels (16 in the papers' small-image ResNets).
    ///   - zeroInitResidualScale: start each block's last normalization with `γ = 0` (`docs/NORMALIZATION.md`
    ///     §6, the reference's and the default), so every block starts as its shortcut; `false` keeps `γ = 1`.
    ///     No effect on frozen `γ` (BN\*) or without normalization.
    ///   - generator: the random numbers for the He-normal initialisation of the convolutions and `fc`.
    /// - Throws: ``ModelError/invalidDepth(_:)``;
    ///   ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` before any layer is built when the
    ///   convolution and linear weights with their gradients need more bytes than this machine's physical memory (a
    ///   huge `width` or `depth`); or an error of a layer's constructor.
    public init(
        depth: Int, normalization: NormalizationSettings, inChannels: Int = 1, classes: Int = 10,
        width: Int = 16, zeroInitResidualScale: Bool = true, generator: inout SeededGenerator
    ) throws {
        guard depth >= 8, (depth - 2) % 6 == 0 else { throw ModelError.invalidDepth(depth) }
        if inChannels >= 1, classes >= 1, width >= 1 {  // (below 1: the layer's constructor names the argument)
            try WeightBudget.resNet(depth: depth, inChannels: inChannels, classes: classes, width: width).check(
                model: "ResNet(depth: \(depth), inChannels: \(inChannels), classes: \(classes), width: \(width))")
        }
        self.depth = depth
        self.normalization = normalization
        self.zeroInitResidualScale = zeroInitResidualScale
        let n = (depth - 2) / 6
        stem = LayerSlot(
            try Conv2d(
                inChannels: inChannels, outChannels: width, kernelSize: 3, stride: 1, padding: 1,
                bias: false, centred: normalization.centresConvolutions, generator: &generator))
        stem.layer.computesInputGradient = false
        stemNorm = NormalizationReLUSlot(try normalization.makeLayer(channels: width))
        var cin = width
        var stages: [ResNetStage] = []
        for (cout, stride) in [(width, 1), (2 * width, 2), (4 * width, 2)] {
            var blocks: [BasicBlock] = []
            for b in 0..<n {
                blocks.append(
                    try BasicBlock(
                        inChannels: cin, outChannels: cout, stride: b == 0 ? stride : 1,
                        normalization: normalization, zeroInitLastScale: zeroInitResidualScale,
                        generator: &generator))
                cin = cout
            }
            stages.append(ResNetStage(checked: blocks))
        }
        self.stages = stages
        classifier = LayerSlot(try Linear(inFeatures: cin, outFeatures: classes, generator: &generator))
    }

    /// The stem convolution (`conv1`; it computes no input gradient).
    public var conv1: Conv2d { stem.layer }
    /// The stem's normalization (`norm1`).
    public var norm1: NormalizationModule { stemNorm.module }
    /// The first stage (`layer1`, width `width`, stride 1).
    public var layer1: ResNetStage { stages[0] }
    /// The second stage (`layer2`, width `2·width`, stride 2).
    public var layer2: ResNetStage { stages[1] }
    /// The third stage (`layer3`, width `4·width`, stride 2).
    public var layer3: ResNetStage { stages[2] }
    /// The classifier (`fc`).
    public var fc: Linear { classifier.layer }
    /// Every block, stage by stage.
    public var blocks: [BasicBlock] { stages.flatMap(\.blocks) }

    /// `"ResNet-8"`.
    public var name: String { "ResNet-\(depth)" }
    /// `"ResNet"`.
    public var summary: String { "ResNet" }
    /// `conv1`, `norm1`, `layer1`, `layer2`, `layer3`, `fc`.
    public var children: [(name: String, module: any Module)] {
        [("conv1", conv1), ("norm1", norm1)]
            + stages.enumerated().map { ("layer\($0.offset + 1)", $0.element) }
            + [("fc", fc)]
    }

    /// Logits `(N, classes)` for images `(N, inChannels, H, W)`, in a buffer reused by the next forward.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = try stem.forward(activations(x, in: engine.activationLayout, buffer: &input), training: training)
        h = try stemNorm.forward(h, training: training)
        for stage in stages { for block in stage.blocks { h = try block.forward(h, training: training) } }
        h = try pool.forward(h, training: training)
        return try classifier.forward(h, training: training)
    }

    /// Backpropagates `∂loss/∂logits` through the last training forward into every parameter's gradient.
    public func backward(_ logitsGradient: Tensor) throws {
        var g = try classifier.backward(logitsGradient)
        g = try pool.backward(g)
        // Each block's input gradient stays two terms until the block before adds them in its masked ReLU pass.
        var pending: BlockGradient?
        for stage in stages.reversed() {
            for block in stage.blocks.reversed() {
                if let next = pending {
                    pending = try block.backwardToBranches(next)
                } else {
                    pending = try block.backwardToBranches(g)
                }
            }
        }
        if let first = pending { g = stages[0].blocks[0].inputGradient(first) }
        g = try stemNorm.backward(g)
        _ = try stem.backward(g)
    }
}
