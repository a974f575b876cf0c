import Foundation

/// Why a model cannot be folded or exported. Each message names the layer (by its state-dict path) or the
/// file, and the reason.
public enum FoldingError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// A normalization that is not a fixed per-channel affine at inference (GN, LN, IN, or a layer type NormKit
    /// does not know how to fold); `path` is its state-dict path in the model, or the checkpoint's file.
    case notFoldable(path: String, layer: String, reason: String)
    /// Folding gave a value that is not finite (a running variance of −ε, a running std of 0, a diverged run).
    case nonFiniteResult(path: String, channel: Int, reason: String)
    /// A weight or bias of the model itself is not finite (a diverged run): `path` is its state-dict key
    /// (`layer2.0.conv1.weight`, `fc.bias`, …), `channel` the output channel (or class) it belongs to.
    case nonFiniteWeight(path: String, channel: Int)
    /// A model or file that has no folded form (a VGG checkpoint, a file that is not a folded export, …).
    case unsupported(String)
    /// `--out` names an existing file and `--overwrite` was not given.
    case outputExists(path: String)
    /// `--out` names an existing directory (never replaced, with or without `--overwrite`).
    case outputIsDirectory(path: String)

    public var description: String {
        switch self {
        case .notFoldable(let path, let layer, let reason):
            return "\(path): cannot fold \(layer) into the preceding convolution: \(reason)"
        case .nonFiniteResult(let path, let channel, let reason):
            return "folding '\(path)' gives a non-finite value in channel \(channel): \(reason)"
        case .nonFiniteWeight(let path, let channel):
            return "'\(path)' holds a non-finite value in output channel \(channel): the model's own weights are "
                + "not finite (a diverged run?), so it has no folded form"
        case .unsupported(let what): return what
        case .outputExists(let path):
            return
                "\(path) already exists; pass --overwrite (`overwrite: true` from code) to replace it (the export "
                + "never replaces a file by default)"
        case .outputIsDirectory(let path):
            return "\(path) is a directory; the output (--out, or `to:` from code) names the safetensors file to "
                + "write (for example \((path as NSString).appendingPathComponent("folded.safetensors"))), "
                + "and overwriting replaces only a file"
        }
    }

    /// The same text as ``description``.
    public var errorDescription: String? { description }
}

/// The normalization kinds that are a fixed per-channel affine at inference and fold (spec §10).
public let foldableNormKinds: Set<NormKind> = [.bn, .brn, .mabn, .frozenBN, .none]

extension NormKind {
    /// Why this kind cannot be folded into a convolution, nil when it can (``foldableNormKinds``).
    public var foldingRefusal: String? {
        switch self {
        case .gn, .ln, .in:
            return "\(rawValue) normalizes every image with its own statistics (per-sample mean and variance), "
                + "so at inference it is not a fixed per-channel affine; only bn, brn, mabn, frozen-bn and none fold"
        case .bn, .syncbn, .brn, .mabn, .frozenBN, .none:
            return nil
        }
    }
}

/// The per-channel affine `y = scale·x + shift` a normalization computes in evaluation mode (spec §10), from the
/// layer's public state, in Double:
///
/// | layer | scale | shift |
/// |---|---|---|
/// | ``/NormKit/BatchNorm``, ``/NormKit/FrozenBatchNorm`` | `γ / sqrt(running_var + ε)` | `β − running_mean·scale` |
/// | ``/NormKit/BatchRenorm`` | `γ / running_std` | `β − running_mean·scale` |
/// | ``/NormKit/MovingAverageBatchNorm`` | `γ / sqrt(running_var + ε)` (EMA of `χ²`) | `β` |
///
/// (`γ = 1`, `β = 0` for a layer without affine parameters.) These are the layers' own evaluation coefficients
/// (each layer computes its scale the same way, in Double, before its eval forward); NormKit's layers do not
/// expose them, so they are recomputed here from `weight`, `bias` and the running statistics.
///
/// - Returns: nil for the identity (a nil layer).
/// - Throws: ``FoldingError/notFoldable(path:layer:reason:)`` for ``/NormKit/GroupNorm`` (GN, LN, IN) and any other layer
///   type.
public func inferenceAffine(of layer: NormalizationLayer?, path: String) throws -> (scale: [Double], shift: [Double])? {
    guard let layer else { return nil }
    let c = layer.channels
    let gamma = (0..<c).map { Double(layer.weight?.value[$0] ?? 1) }
    let beta = (0..<c).map { Double(layer.bias?.value[$0] ?? 0) }
    let eps = Double(layer.epsilon)
    func centred(_ scale: [Double], _ mean: [Float]) -> (scale: [Double], shift: [Double]) {
        (scale, (0..<c).map { beta[$0] - Double(mean[$0]) * scale[$0] })
    }
    switch layer {
    case let bn as BatchNorm:
        return centred((0..<c).map { gamma[$0] / (Double(bn.runningVariance[$0]) + eps).squareRoot() }, bn.runningMean)
    case let frozen as FrozenBatchNorm:
        return centred(
            (0..<c).map { gamma[$0] / (Double(frozen.runningVariance[$0]) + eps).squareRoot() },
            frozen.runningMean)
    case let brn as BatchRenorm:
        return centred((0..<c).map { gamma[$0] / Double(brn.runningStd[$0]) }, brn.runningMean)
    case let mabn as MovingAverageBatchNorm:
        guard mabn.parts.secondMomentForm else {
            throw FoldingError.notFoldable(
                path: path, layer: layer.name,
                reason: "an ablation of MABN without its second-moment form (mean-and-variance form) is not the "
                    + "model the folded reference describes; fold only the paper's normalization form")
        }
        return ((0..<c).map { gamma[$0] / (Double(mabn.runningSecondMoment[$0]) + eps).squareRoot() }, beta)
    case let gn as GroupNorm:
        let kind = gn.groups == 1 ? "LayerNorm" : (gn.groups == gn.channels ? "InstanceNorm" : "GroupNorm")
        throw FoldingError.notFoldable(
            path: path, layer: layer.name,
            reason: "\(kind) normalizes every image with its own statistics (per-sample mean and variance), so at "
                + "inference it is not a fixed per-channel affine; only BN, BRN, MABN, frozen BN and no "
                + "normalization fold")
    default:
        throw FoldingError.notFoldable(
            path: path, layer: layer.name,
            reason: "\(type(of: layer)) is not known to be a fixed per-channel affine at inference; only BN, BRN, "
                + "MABN, frozen BN and no normalization fold")
    }
}

/// The inference model of `model`: every normalization folded into the convolution before it (spec §10),
/// `torch_models.fold(model)`. Per output channel `c` of a convolution with weight `W` and bias `b` (0 if it has
/// none) followed by a normalization with eval affine `(s, t)` (``inferenceAffine(of:path:)``):
/// `W'[c] = s_c·W[c]`, `b'_c = s_c·b_c + t_c`; MABN's CenConv weights are centred first, exactly as its forward
/// centres them (``/NormKit/WeightCentering/centered(_:filters:)``). The classifier is copied.
///
/// The result computes what `model` computes in evaluation mode (to float rounding), whatever `model`'s mode.
/// `model` is not changed.
///
/// - Throws: ``FoldingError/notFoldable(path:layer:reason:)`` for GN, LN, IN (per-sample statistics) or an
///   unknown normalization, naming the first such layer; ``FoldingError/nonFiniteWeight(path:channel:)`` for a
///   convolution's or the classifier's weight or bias that is infinite or NaN, naming the first;
///   ``FoldingError/nonFiniteResult(path:channel:reason:)`` when a running statistic makes a folded value infinite
///   or NaN.
public func fold(_ model: ResNet) throws -> FoldedResNet {
    if let reason = model.normalization.kind.foldingRefusal {
        throw FoldingError.notFoldable(path: "norm1", layer: model.norm1.name, reason: reason)
    }
    var generator = SeededGenerator(seed: 0)
    let folded = try FoldedResNet(
        depth: model.depth, inChannels: model.conv1.inChannels,
        classes: model.fc.outFeatures, width: model.conv1.outChannels,
        generator: &generator)
    try foldConvolution(model.conv1, "conv1", model.norm1, path: "norm1", into: folded.conv1)
    for (s, (stage, target)) in zip(model.stages, folded.stages).enumerated() {
        for (b, (block, into)) in zip(stage.blocks, target.blocks).enumerated() {
            let prefix = "layer\(s + 1).\(b)."
            try foldConvolution(block.conv1, prefix + "conv1", block.norm1, path: prefix + "norm1", into: into.conv1)
            try foldConvolution(block.conv2, prefix + "conv2", block.norm2, path: prefix + "norm2", into: into.conv2)
            if let shortcut = block.downsample, let targetShortcut = into.downsample {
                try foldConvolution(
                    shortcut.conv, prefix + "downsample.0", shortcut.norm, path: prefix + "downsample.1",
                    into: targetShortcut.conv)
            }
        }
    }
    try checkFinite(model.fc.weight.value, path: "fc.weight", channels: model.fc.outFeatures)
    try checkFinite(model.fc.bias.value, path: "fc.bias", channels: model.fc.outFeatures)
    folded.fc.weight.value = model.fc.weight.value
    folded.fc.bias.value = model.fc.bias.value
    folded.eval()
    return folded
}

/// Throws ``FoldingError/nonFiniteWeight(path:channel:)`` for the first value of `values` (`channels` equal rows)
/// that is infinite or NaN.
private func checkFinite(_ values: [Float], path: String, channels: Int) throws {
    guard let index = values.firstIndex(where: { !$0.isFinite }) else { return }
    throw FoldingError.nonFiniteWeight(path: path, channel: index / max(1, values.count / channels))
}

/// Writes `conv` (at state-dict path `convPath`) followed by `norm` (at `path`) into `target`'s weight and bias.
private func foldConvolution(
    _ conv: Conv2d, _ convPath: String, _ norm: NormalizationModule, path: String, into target: Conv2d
) throws {
    precondition(
        target.weight.shape == conv.weight.shape && target.bias != nil,
        "the folded model's convolution at \(path) does not match the source's")
    let filters = conv.outChannels
    try checkFinite(conv.weight.value, path: convPath + ".weight", channels: filters)
    if let bias = conv.bias { try checkFinite(bias.value, path: convPath + ".bias", channels: filters) }
    let weights =
        conv.centred
        ? try WeightCentering.centered(conv.weight.value, filters: filters)
        : conv.weight.value
    let bias = conv.bias?.value ?? [Float](repeating: 0, count: filters)
    guard let (scale, shift) = try inferenceAffine(of: norm.layer, path: path) else {
        target.weight.value = weights
        target.bias!.value = bias
        return
    }
    let fanIn = weights.count / filters
    var foldedWeights = weights
    var foldedBias = bias
    for c in 0..<filters {
        foldedBias[c] = Float(scale[c] * Double(bias[c]) + shift[c])
        for i in c * fanIn..<(c + 1) * fanIn { foldedWeights[i] = Float(scale[c] * Double(weights[i])) }
        guard scale[c].isFinite, foldedBias[c].isFinite,
            foldedWeights[c * fanIn..<(c + 1) * fanIn].allSatisfy(\.isFinite)
        else {
            throw FoldingError.nonFiniteResult(
                path: path, channel: c,
                reason: "the eval scale is \(scale[c]) and the shift \(shift[c]) (from \(norm.name)'s weight, bias and "
                    + "running statistics); its eval forward is not finite either")
        }
    }
    target.weight.value = foldedWeights
    target.bias!.value = foldedBias
}
