/// The inference form of a ``ResNet`` whose normalizations were folded into the convolutions before them
/// (spec §10): every convolution carries a bias, every normalization slot is the identity. It is
/// `torch_models.ResNet(depth, "folded")`: the same tree and tensor names (`conv1.weight`, `conv1.bias`,
/// `layer1.0.conv1.bias`, …, `layer2.0.downsample.0.bias`, `fc.weight`), so its ``stateDict()`` loads there with
/// `strict=True` and vice versa.
///
/// Build one from a trained model with ``fold(_:)``; a fresh one (He-normal weights, zero biases) is only useful
/// as the target of a ``Module/loadStateDict(_:)``. It is a full ``Model`` (its backward works), but it exists for
/// inference: evaluate it in either mode, there is nothing mode-dependent left in it.
public final class FoldedResNet: Model {
    /// `6n+2`.
    public let depth: Int
    /// The width of the first stage (16 in NormKit's models).
    public let width: Int
    /// The three stages (`layer1`, `layer2`, `layer3`), `n` blocks each.
    public let stages: [FoldedResNetStage]
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``); it changes nothing in this model.
    public var training = true
    private let stem: LayerSlot<Conv2d>
    /// `norm1`: the identity, kept so the tree prints and nests as the reference's.
    public let norm1 = NormalizationModule(nil)
    private let stemReLU = LayerSlot(ReLU())
    private let pool = LayerSlot(GlobalAveragePool())
    private let classifier: LayerSlot<Linear>
    private var input = Tensor(zeros: [0, 0])

    /// How every convolution computes (default ``ConvolutionEngine/preferred``), and so the activations' layout
    /// (channels-last for oneDNN), as ``ResNet/engine``.
    public var engine: ConvolutionEngine = .preferred {
        didSet {
            conv1.engine = engine
            for block in blocks {
                block.conv1.engine = engine
                block.conv2.engine = engine
                block.downsample?.conv.engine = engine
            }
        }
    }

    /// A folded ResNet of `depth` layers (`6n+2`) and stage widths `width`, `2·width`, `4·width`, with He-normal
    /// weights from `generator` and zero biases.
    ///
    /// - Throws: ``ModelError/invalidDepth(_:)``;
    ///   ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` before any layer is built when the
    ///   weights with their gradients need more bytes than this machine's physical memory; or an error of a layer's
    ///   constructor (a width, channel or class count below 1).
    public init(
        depth: Int, inChannels: Int = 1, classes: Int = 10, width: Int = 16,
        generator: inout SeededGenerator
    ) throws {
        guard depth >= 8, (depth - 2) % 6 == 0 else { throw ModelError.invalidDepth(depth) }
        if inChannels >= 1, classes >= 1, width >= 1 {  // (below 1: the layer's constructor names the argument)
            try WeightBudget.resNet(depth: depth, inChannels: inChannels, classes: classes, width: width).check(
                model:
                    "FoldedResNet(depth: \(depth), inChannels: \(inChannels), classes: \(classes), width: \(width))")
        }
        self.depth = depth
        self.width = width
        let n = (depth - 2) / 6
        stem = LayerSlot(
            try Conv2d(
                inChannels: inChannels, outChannels: width, kernelSize: 3, stride: 1, padding: 1,
                bias: true, generator: &generator))
        stem.layer.computesInputGradient = false
        var cin = width
        var stages: [FoldedResNetStage] = []
        for (cout, stride) in [(width, 1), (2 * width, 2), (4 * width, 2)] {
            var blocks: [FoldedBasicBlock] = []
            for b in 0..<n {
                blocks.append(
                    try FoldedBasicBlock(
                        inChannels: cin, outChannels: cout, stride: b == 0 ? stride : 1,
                        generator: &generator))
                cin = cout
            }
            stages.append(FoldedResNetStage(blocks: blocks))
        }
        self.stages = stages
        classifier = LayerSlot(try Linear(inFeatures: cin, outFeatures: classes, generator: &generator))
    }

    /// The stem convolution with its bias (`conv1`).
    public var conv1: Conv2d { stem.layer }
    /// The classifier (`fc`).
    public var fc: Linear { classifier.layer }
    /// Every block, stage by stage.
    public var blocks: [FoldedBasicBlock] { stages.flatMap(\.blocks) }

    /// `"Folded ResNet-8"`.
    public var name: String { "Folded ResNet-\(depth)" }
    /// `"ResNet"`, as the reference's class.
    public var summary: String { "ResNet" }
    /// `conv1`, `norm1`, `layer1`, `layer2`, `layer3`, `fc`.
    public var children: [(name: String, module: any Module)] {
        [("conv1", conv1), ("norm1", norm1)]
            + stages.enumerated().map { ("layer\($0.offset + 1)", $0.element) }
            + [("fc", fc)]
    }

    /// Logits `(N, classes)` for images `(N, inChannels, H, W)`, in a buffer reused by the next forward. Both
    /// modes compute the same thing.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = try stem.forward(activations(x, in: engine.activationLayout, buffer: &input), training: training)
        h = try stemReLU.forward(h, training: training)
        for stage in stages { for block in stage.blocks { h = try block.forward(h, training: training) } }
        h = try pool.forward(h, training: training)
        return try classifier.forward(h, training: training)
    }

    /// Backpropagates `∂loss/∂logits` through the last training forward into every parameter's gradient.
    public func backward(_ logitsGradient: Tensor) throws {
        var g = try classifier.backward(logitsGradient)
        g = try pool.backward(g)
        for stage in stages.reversed() { for block in stage.blocks.reversed() { g = try block.backward(g) } }
        g = try stemReLU.backward(g)
        _ = try stem.backward(g)
    }
}

/// A residual block of a ``FoldedResNet``: `relu(conv2(relu(conv1(x))) + shortcut(x))` with biased convolutions,
/// the shortcut a strided 1×1 conv with bias (``downsample``) when the shape changes. Children as the reference's
/// folded `BasicBlock`: `conv1`, `norm1` (identity), `conv2`, `norm2` (identity), `downsample`.
public final class FoldedBasicBlock: Module {
    private let conv1Slot: LayerSlot<Conv2d>
    private let relu1 = LayerSlot(ReLU())
    private let conv2Slot: LayerSlot<Conv2d>
    /// `relu(conv2(…) + shortcut)` in one pass.
    private let residual = ResidualReLU()
    /// `norm1`, the identity.
    public let norm1 = NormalizationModule(nil)
    /// `norm2`, the identity.
    public let norm2 = NormalizationModule(nil)
    /// The projection shortcut (`downsample.0` the conv, `downsample.1` the identity), nil for the identity
    /// shortcut.
    public let downsample: FoldedShortcut?
    /// The mode (see ``Module/training``); it changes nothing here.
    public var training = true

    /// The first 3×3 convolution (carries the block's stride).
    public var conv1: Conv2d { conv1Slot.layer }
    /// The second 3×3 convolution.
    public var conv2: Conv2d { conv2Slot.layer }

    init(inChannels: Int, outChannels: Int, stride: Int, generator: inout SeededGenerator) throws {
        conv1Slot = LayerSlot(
            try Conv2d(
                inChannels: inChannels, outChannels: outChannels, kernelSize: 3,
                stride: stride, padding: 1, bias: true, generator: &generator))
        conv2Slot = LayerSlot(
            try Conv2d(
                inChannels: outChannels, outChannels: outChannels, kernelSize: 3, stride: 1,
                padding: 1, bias: true, generator: &generator))
        downsample =
            stride != 1 || inChannels != outChannels
            ? try FoldedShortcut(
                inChannels: inChannels, outChannels: outChannels, stride: stride,
                generator: &generator)
            : nil
    }

    /// `"BasicBlock"`.
    public var summary: String { "BasicBlock" }
    /// `conv1`, `norm1`, `conv2`, `norm2`, then `downsample` when there is one.
    public var children: [(name: String, module: any Module)] {
        [("conv1", conv1), ("norm1", norm1), ("conv2", conv2), ("norm2", norm2)]
            + (downsample.map { [("downsample", $0)] } ?? [])
    }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = try conv1Slot.forward(x, training: training)
        h = try relu1.forward(h, training: training)
        h = try conv2Slot.forward(h, training: training)
        return residual.forward(h, shortcut: try downsample?.forward(x, training: training) ?? x, training: training)
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        let dsum = try residual.backward(dy, layer: "BasicBlock")
        var g = try conv2Slot.backward(dsum)
        g = try relu1.backward(g)
        g = try conv1Slot.backward(g)
        return residual.inputGradient(branch: g, shortcut: try downsample?.backward(dsum) ?? dsum)
    }
}

/// A folded block's projection shortcut: a strided 1×1 convolution with bias (`0`) and the identity (`1`), as
/// the reference's `nn.Sequential` `downsample`.
public final class FoldedShortcut: Module {
    private let convSlot: LayerSlot<Conv2d>
    /// `downsample.1`, the identity.
    public let norm = NormalizationModule(nil)
    /// The mode (see ``Module/training``); it changes nothing here.
    public var training = true

    /// The 1×1 convolution (`downsample.0`).
    public var conv: Conv2d { convSlot.layer }

    init(inChannels: Int, outChannels: Int, stride: Int, generator: inout SeededGenerator) throws {
        convSlot = LayerSlot(
            try Conv2d(
                inChannels: inChannels, outChannels: outChannels, kernelSize: 1,
                stride: stride, padding: 0, bias: true, generator: &generator))
    }

    /// `"Sequential"`, as in the reference.
    public var summary: String { "Sequential" }
    /// `0`: the convolution, `1`: the identity.
    public var children: [(name: String, module: any Module)] { [("0", conv), ("1", norm)] }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor { try convSlot.forward(x, training: training) }

    func backward(_ dy: Tensor) throws -> Tensor { try convSlot.backward(dy) }
}

/// One stage of a ``FoldedResNet``: its blocks, named `0`, `1`, … as the reference's `layer1`…`layer3`.
public final class FoldedResNetStage: Module {
    /// The blocks; the first carries the stage's stride.
    public let blocks: [FoldedBasicBlock]
    /// The mode (see ``Module/training``); it changes nothing here.
    public var training = true

    init(blocks: [FoldedBasicBlock]) { self.blocks = blocks }

    /// `"Sequential"`, as in the reference.
    public var summary: String { "Sequential" }
    /// The blocks, named `"0"`, `"1"`, ….
    public var children: [(name: String, module: any Module)] {
        blocks.enumerated().map { ("\($0.offset)", $0.element) }
    }
}
