/// A plain VGG-style network for 28×28 images, the GN paper's "no normalization" study: three stages of two
/// 3×3 conv–norm–ReLU units (widths 16, 32, 64) with 2×2 max pooling between stages, global average pooling
/// and a linear classifier. With `--norm none` the convs carry biases and there is no normalization at all.
///
/// Tensor names follow a PyTorch `nn.Sequential` called `features` (conv at index `3k`, its norm at `3k+1`,
/// ReLU at `3k+2`, pools in between) plus `fc`.
public final class VGG: Model {
    private enum Unit {
        case conv(index: Int, LayerSlot<Conv2d>, normIndex: Int, NormalizationSlot, LayerSlot<ReLU>)
        case pool(LayerSlot<MaxPool2d>)
    }
    private let units: [Unit]
    private let gap = LayerSlot(GlobalAveragePool())
    private let classifier: LayerSlot<Linear>
    /// The normalization used after every conv.
    public let normalization: NormalizationSettings

    /// Builds the network.
    public init(normalization: NormalizationSettings, inChannels: Int = 1, classes: Int = 10, widths: [Int] = [16, 32, 64],
                generator: inout SeededGenerator) throws {
        self.normalization = normalization
        var units: [Unit] = []
        var cin = inChannels, index = 0
        for (s, width) in widths.enumerated() {
            if s > 0 {
                units.append(.pool(LayerSlot(try MaxPool2d(kernelSize: 2, stride: 2))))
                index += 1
            }
            for _ in 0..<2 {
                let conv = try Conv2d(inChannels: cin, outChannels: width, kernelSize: 3, stride: 1, padding: 1,
                                  bias: normalization.kind == .none, centred: normalization.centresConvolutions,
                                  generator: &generator)
                if units.isEmpty { conv.computesInputGradient = false }
                units.append(.conv(index: index, LayerSlot(conv), normIndex: index + 1,
                                   NormalizationSlot(try normalization.makeLayer(channels: width)), LayerSlot(ReLU())))
                index += 3
                cin = width
            }
        }
        self.units = units
        classifier = LayerSlot(try Linear(inFeatures: cin, outFeatures: classes, generator: &generator))
    }

    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var h = x
        for unit in units {
            switch unit {
            case .conv(_, let conv, _, let norm, let relu):
                h = try relu.forward(try norm.forward(try conv.forward(h, training: training), training: training),
                                     training: training)
            case .pool(let pool):
                h = try pool.forward(h, training: training)
            }
        }
        return try classifier.forward(try gap.forward(h, training: training), training: training)
    }

    public func backward(_ logitsGradient: Tensor) throws {
        var g = try gap.backward(try classifier.backward(logitsGradient))
        for unit in units.reversed() {
            switch unit {
            case .conv(_, let conv, _, let norm, let relu):
                g = try conv.backward(try norm.backward(try relu.backward(g)))
            case .pool(let pool):
                g = try pool.backward(g)
            }
        }
    }

    public var parameters: [Parameter] {
        units.flatMap { unit -> [Parameter] in
            if case .conv(_, let conv, _, let norm, _) = unit { return conv.layer.parameters + norm.parameters }
            return []
        } + classifier.layer.parameters
    }

    public func stateDict() -> [String: StateTensor] {
        var s = prefixed("fc", classifier.layer.stateDict())
        for case .conv(let i, let conv, let j, let norm, _) in units {
            s.merge(prefixed("features.\(i)", conv.layer.stateDict())) { $1 }
            s.merge(prefixed("features.\(j)", norm.stateDict())) { $1 }
        }
        return s
    }

    public func loadStateDict(_ state: [String: StateTensor]) throws {
        try loadAtomically(self, state, load)
    }

    private func load(_ state: [String: StateTensor]) throws {
        try classifier.layer.loadStateDict(unprefixed("fc", state))
        for case .conv(let i, let conv, let j, let norm, _) in units {
            try conv.layer.loadStateDict(unprefixed("features.\(i)", state))
            try norm.loadStateDict(unprefixed("features.\(j)", state))
        }
    }
}
