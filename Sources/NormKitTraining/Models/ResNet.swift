/// He et al.'s basic residual block: `relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))`, the shortcut
/// a 1×1 conv + norm when the shape changes. Names follow `torch_models.BasicBlock`.
final class BasicBlock {
    let conv1: LayerSlot<Conv2d>
    let norm1: NormalizationSlot
    let relu1 = LayerSlot(ReLU())
    let conv2: LayerSlot<Conv2d>
    let norm2: NormalizationSlot
    let downsampleConv: LayerSlot<Conv2d>?
    let downsampleNorm: NormalizationSlot?
    let relu2 = LayerSlot(ReLU())
    private var sum = Tensor(zeros: [0, 0])
    private var inputGradient = Tensor(zeros: [0, 0])

    init(inChannels: Int, outChannels: Int, stride: Int, normalization: NormalizationSettings,
         generator: inout SeededGenerator) throws {
        let centred = normalization.centresConvolutions
        conv1 = LayerSlot(try Conv2d(inChannels: inChannels, outChannels: outChannels, kernelSize: 3, stride: stride,
                                 padding: 1, bias: false, centred: centred, generator: &generator))
        norm1 = NormalizationSlot(try normalization.makeLayer(channels: outChannels))
        conv2 = LayerSlot(try Conv2d(inChannels: outChannels, outChannels: outChannels, kernelSize: 3, stride: 1,
                                 padding: 1, bias: false, centred: centred, generator: &generator))
        norm2 = NormalizationSlot(try normalization.makeLayer(channels: outChannels))
        norm2.zeroScale()
        if stride != 1 || inChannels != outChannels {
            downsampleConv = LayerSlot(try Conv2d(inChannels: inChannels, outChannels: outChannels, kernelSize: 1,
                                              stride: stride, padding: 0, bias: false, centred: centred,
                                              generator: &generator))
            downsampleNorm = NormalizationSlot(try normalization.makeLayer(channels: outChannels))
        } else {
            downsampleConv = nil
            downsampleNorm = nil
        }
    }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = try conv1.forward(x, training: training)
        h = try norm1.forward(h, training: training)
        h = try relu1.forward(h, training: training)
        h = try conv2.forward(h, training: training)
        h = try norm2.forward(h, training: training)
        sum.prepare(shape: h.shape, layout: h.layout)
        _ = h.withUnsafeBufferPointer { src in sum.withUnsafeMutableBufferPointer { $0.update(fromContentsOf: src) } }
        if let downsampleConv, let downsampleNorm {
            var s = try downsampleConv.forward(x, training: training)
            s = try downsampleNorm.forward(s, training: training)
            addInPlace(&sum, s)
        } else {
            addInPlace(&sum, x)
        }
        return try relu2.forward(sum, training: training)
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        let dsum = try relu2.backward(dy)
        var g = try norm2.backward(dsum)
        g = try conv2.backward(g)
        g = try relu1.backward(g)
        g = try norm1.backward(g)
        g = try conv1.backward(g)
        inputGradient.prepare(shape: g.shape, layout: g.layout)
        _ = g.withUnsafeBufferPointer { src in inputGradient.withUnsafeMutableBufferPointer { $0.update(fromContentsOf: src) } }
        if let downsampleConv, let downsampleNorm {
            var s = try downsampleNorm.backward(dsum)
            s = try downsampleConv.backward(s)
            addInPlace(&inputGradient, s)
        } else {
            addInPlace(&inputGradient, dsum)
        }
        return inputGradient
    }

    var parameters: [Parameter] {
        conv1.layer.parameters + norm1.parameters + conv2.layer.parameters + norm2.parameters
            + (downsampleConv?.layer.parameters ?? []) + (downsampleNorm?.parameters ?? [])
    }

    func stateDict() -> [String: StateTensor] {
        var s = prefixed("conv1", conv1.layer.stateDict())
        s.merge(prefixed("norm1", norm1.stateDict())) { $1 }
        s.merge(prefixed("conv2", conv2.layer.stateDict())) { $1 }
        s.merge(prefixed("norm2", norm2.stateDict())) { $1 }
        if let downsampleConv, let downsampleNorm {
            s.merge(prefixed("downsample.0", downsampleConv.layer.stateDict())) { $1 }
            s.merge(prefixed("downsample.1", downsampleNorm.stateDict())) { $1 }
        }
        return s
    }

    func loadStateDict(_ state: [String: StateTensor]) throws {
        try conv1.layer.loadStateDict(unprefixed("conv1", state))
        try norm1.loadStateDict(unprefixed("norm1", state))
        try conv2.layer.loadStateDict(unprefixed("conv2", state))
        try norm2.loadStateDict(unprefixed("norm2", state))
        if let downsampleConv, let downsampleNorm {
            try downsampleConv.layer.loadStateDict(unprefixed("downsample.0", state))
            try downsampleNorm.loadStateDict(unprefixed("downsample.1", state))
        }
    }
}

/// He et al.'s residual network for small images (depth `6n+2`): a 3×3 stem, three stages of `n` basic blocks
/// at widths 16/32/64 with strides 1/2/2, global average pooling and a linear classifier. The layout, tensor
/// names and initialisation (He normal, fan-out; `γ = 0` for each block's last norm) are those of
/// `torch_models.ResNet`, so checkpoints load there with `strict=True`.
public final class ResNet: Model {
    /// `6n+2`.
    public let depth: Int
    /// The normalization used everywhere.
    public let normalization: NormalizationSettings
    let stem: LayerSlot<Conv2d>
    let stemNorm: NormalizationSlot
    let stemReLU = LayerSlot(ReLU())
    let stages: [[BasicBlock]]
    let pool = LayerSlot(GlobalAveragePool())
    let classifier: LayerSlot<Linear>

    /// Builds a ResNet of `depth` layers (`6n+2`), stage widths `width`, `2·width`, `4·width`.
    public init(depth: Int, normalization: NormalizationSettings, inChannels: Int = 1, classes: Int = 10,
                width: Int = 16, generator: inout SeededGenerator) throws {
        guard depth >= 8, (depth - 2) % 6 == 0 else { throw ModelError.invalidDepth(depth) }
        self.depth = depth
        self.normalization = normalization
        let n = (depth - 2) / 6
        stem = LayerSlot(try Conv2d(inChannels: inChannels, outChannels: width, kernelSize: 3, stride: 1, padding: 1,
                                bias: false, centred: normalization.centresConvolutions, generator: &generator))
        stem.layer.computesInputGradient = false
        stemNorm = NormalizationSlot(try normalization.makeLayer(channels: width))
        var cin = width
        var stages: [[BasicBlock]] = []
        for (cout, stride) in [(width, 1), (2 * width, 2), (4 * width, 2)] {
            var blocks: [BasicBlock] = []
            for b in 0..<n {
                blocks.append(try BasicBlock(inChannels: cin, outChannels: cout, stride: b == 0 ? stride : 1,
                                             normalization: normalization, generator: &generator))
                cin = cout
            }
            stages.append(blocks)
        }
        self.stages = stages
        classifier = LayerSlot(try Linear(inFeatures: cin, outFeatures: classes, generator: &generator))
    }

    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = try stem.forward(x, training: training)
        h = try stemNorm.forward(h, training: training)
        h = try stemReLU.forward(h, training: training)
        for stage in stages { for block in stage { h = try block.forward(h, training: training) } }
        h = try pool.forward(h, training: training)
        return try classifier.forward(h, training: training)
    }

    public func backward(_ logitsGradient: Tensor) throws {
        var g = try classifier.backward(logitsGradient)
        g = try pool.backward(g)
        for stage in stages.reversed() { for block in stage.reversed() { g = try block.backward(g) } }
        g = try stemReLU.backward(g)
        g = try stemNorm.backward(g)
        _ = try stem.backward(g)
    }

    public var parameters: [Parameter] {
        stem.layer.parameters + stemNorm.parameters + stages.flatMap { $0.flatMap(\.parameters) }
            + classifier.layer.parameters
    }

    public func stateDict() -> [String: StateTensor] {
        var s = prefixed("conv1", stem.layer.stateDict())
        s.merge(prefixed("norm1", stemNorm.stateDict())) { $1 }
        for (i, stage) in stages.enumerated() {
            for (j, block) in stage.enumerated() {
                s.merge(prefixed("layer\(i + 1).\(j)", block.stateDict())) { $1 }
            }
        }
        s.merge(prefixed("fc", classifier.layer.stateDict())) { $1 }
        return s
    }

    public func loadStateDict(_ state: [String: StateTensor]) throws {
        try loadAtomically(self, state, load)
    }

    private func load(_ state: [String: StateTensor]) throws {
        try stem.layer.loadStateDict(unprefixed("conv1", state))
        try stemNorm.loadStateDict(unprefixed("norm1", state))
        for (i, stage) in stages.enumerated() {
            for (j, block) in stage.enumerated() { try block.loadStateDict(unprefixed("layer\(i + 1).\(j)", state)) }
        }
        try classifier.layer.loadStateDict(unprefixed("fc", state))
    }
}
