/// A plain VGG-style network for 28×28 images, the GN paper's "no normalization" study: three stages of two
/// 3×3 conv–norm–ReLU units (widths 16, 32, 64) with 2×2 max pooling between stages, global average pooling
/// and a linear classifier. With `--norm none` the convs carry biases and there is no normalization at all.
///
/// The tree is a PyTorch `nn.Sequential` called ``features`` (conv at index `3k`, its norm at `3k+1` (an
/// `Identity` with `--norm none`), ReLU at `3k+2`, pools in between) plus `fc`.
public final class VGG: Model {
    /// The convolutional part (`features`).
    public let features: Sequential
    /// The normalization used after every conv.
    public let normalization: NormalizationSettings
    /// The mode `callAsFunction(_:)` uses (see ``Module/training``).
    public var training = true
    private let gap = LayerSlot(GlobalAveragePool())
    private let classifier: LayerSlot<Linear>

    /// Builds the network.
    ///
    /// - Throws: ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` before any layer is built
    ///   when the convolution and linear weights with their gradients need more bytes than this machine's physical
    ///   memory; otherwise a layer's constructor error: ``/NormKit/NormalizationError`` for a width, `inChannels` or
    ///   `classes` below 1, or for settings the normalization refuses (see ``NormalizationSettings/makeLayer(channels:)``).
    public init(
        normalization: NormalizationSettings, inChannels: Int = 1, classes: Int = 10, widths: [Int] = [16, 32, 64],
        generator: inout SeededGenerator
    ) throws {
        if inChannels >= 1, classes >= 1, widths.allSatisfy({ $0 >= 1 }) {  // (below 1: the layer's constructor says)
            try WeightBudget.vgg(inChannels: inChannels, classes: classes, widths: widths).check(
                model: "VGG(inChannels: \(inChannels), classes: \(classes), widths: \(widths))")
        }
        self.normalization = normalization
        var layers: [any Layer] = []
        var cin = inChannels
        for (s, width) in widths.enumerated() {
            if s > 0 { layers.append(try MaxPool2d(kernelSize: 2, stride: 2)) }
            for _ in 0..<2 {
                let conv = try Conv2d(
                    inChannels: cin, outChannels: width, kernelSize: 3, stride: 1, padding: 1,
                    bias: normalization.kind == .none, centred: normalization.centresConvolutions,
                    generator: &generator)
                if layers.isEmpty { conv.computesInputGradient = false }
                layers += [conv, NormalizationModule(try normalization.makeLayer(channels: width)), ReLU()]
                cin = width
            }
        }
        features = Sequential(layers)
        classifier = LayerSlot(try Linear(inFeatures: cin, outFeatures: classes, generator: &generator))
    }

    /// The classifier (`fc`).
    public var fc: Linear { classifier.layer }
    /// `"VGG"`.
    public var summary: String { "VGG" }
    /// `features`, `fc`.
    public var children: [(name: String, module: any Module)] { [("features", features), ("fc", fc)] }

    /// Logits `(N, classes)` for images `(N, inChannels, H, W)`, in a buffer reused by the next forward.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        let h = try features.forward(x, training: training)
        return try classifier.forward(try gap.forward(h, training: training), training: training)
    }

    /// Backpropagates `∂loss/∂logits` through the last training forward into every parameter's gradient.
    public func backward(_ logitsGradient: Tensor) throws {
        try features.backward(try gap.backward(try classifier.backward(logitsGradient)))
    }
}
