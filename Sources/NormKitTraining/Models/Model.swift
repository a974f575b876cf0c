import Foundation

/// A classifier the trainer can drive: forward to logits and backward from their gradient. Its parameters (for
/// the optimizer), PyTorch-compatible state dict (for checkpoints), printing and train/eval switch come from
/// the module tree (``Module``).
public protocol Model: Module {
    /// Logits `(N, classes)` for images `(N, C, H, W)`. The result is a buffer the model reuses.
    func forward(_ x: Tensor, training: Bool) throws -> Tensor
    /// Backpropagates `∂loss/∂logits` through the last training forward, setting every parameter's gradient.
    func backward(_ logitsGradient: Tensor) throws
}

extension Model {
    /// The logits for `x` in the model's current mode (``Module/training``, set by ``Module/train(_:)`` and
    /// ``Module/eval()``): `forward(x, training: training)`.
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try forward(x, training: training)
    }
}

/// Errors from building or loading a model. Each message names the model, the tensor (by its full state-dict
/// key) or the file involved.
public enum ModelError: Error, CustomStringConvertible, Equatable, LocalizedError {
    /// A model name `makeModel(named:…)` does not know.
    case unknownModel(String)
    /// A ResNet depth that is not `6n+2` (at least 8).
    case invalidDepth(Int)
    /// Something the model or its checkpoint cannot do; the text says what.
    case unsupported(String)
    /// A checkpoint lacks this tensor (the optimizer state of a training checkpoint: `velocity.0003`).
    case missingTensor(String)
    /// A checkpoint has these tensors the model does not. (``Module/loadStateDict(_:strict:)`` throws
    /// ``incompatibleStateDict(missingKeys:unexpectedKeys:)`` instead.)
    case unexpectedTensors([String])
    /// A strict ``Module/loadStateDict(_:strict:)`` whose keys are not exactly the model's (PyTorch's "Missing
    /// key(s)" / "Unexpected key(s)"): every one of them, each list sorted (the message shows the first ten of
    /// each); as a layer's ``/NormKit/NormalizationError/incompatibleStateDict(layer:missingKeys:unexpectedKeys:)``.
    case incompatibleStateDict(missingKeys: [String], unexpectedKeys: [String])
    /// A tensor of the right name but the wrong shape or dtype.
    case mismatchedTensor(name: String, expected: String, found: String)

    public var description: String {
        switch self {
        case .unknownModel(let name):
            return "unknown model '\(name)': expected resnetD with D = 6n+2 (resnet8, resnet14, resnet20, …) or vgg"
        case .invalidDepth(let d): return "ResNet depth \(d) is not of the form 6n+2 (8, 14, 20, 26, …)"
        case .unsupported(let what): return what
        case .missingTensor(let name): return "checkpoint has no tensor '\(name)'"
        case .unexpectedTensors(let names):
            return
                "checkpoint has tensors the model does not: \(names.prefix(5).joined(separator: ", "))\(names.count > 5 ? ", …" : "")"
        case .incompatibleStateDict(let missing, let unexpected):
            // A model has many keys (56 in a ResNet-8): the first ten of each list, and how many more.
            func list(_ keys: [String]) -> String {
                keys.prefix(10).joined(separator: ", ") + (keys.count > 10 ? ", and \(keys.count - 10) more" : "")
            }
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing key(s) \(list(missing))") }
            if !unexpected.isEmpty { parts.append("unexpected key(s) \(list(unexpected))") }
            return "state dict does not match the model: \(parts.joined(separator: "; ")) (a strict load needs "
                + "exactly the model's keys; loadStateDict(_:strict: false) loads the matching entries and reports "
                + "the rest)"
        case .mismatchedTensor(let name, let expected, let found):
            return "checkpoint tensor '\(name)' is \(found), the model expects \(expected)"
        }
    }

    /// The same text as ``description``, so `error.localizedDescription` is the message too.
    public var errorDescription: String? { description }
}

/// A normalization slot with its own output buffers; the identity passes tensors through without a copy.
final class NormalizationSlot {
    let module: NormalizationModule
    private var output = Tensor(zeros: [0, 0])
    private var inputGradient = Tensor(zeros: [0, 0])

    init(_ layer: NormalizationLayer?) { module = NormalizationModule(layer) }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        module.observer?.normalization(module, sawInput: x, training: training)
        guard let layer = module.layer else { return x }
        try layer.forward(x, into: &output, training: training)
        return output
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        module.observer?.normalization(module, sawOutputGradient: dy)
        guard let layer = module.layer else { return dy }
        try layer.backward(dy, into: &inputGradient)
        return inputGradient
    }
}

/// A normalization followed by ReLU. The ReLU runs in the normalization's apply stage (its
/// ``/NormKit/NormalizationLayer/activation`` set to ``/NormKit/FusedActivation/relu``, forward and backward in the
/// passes the layer makes anyway) when ``fuses`` is on, there is a normalization and no observer is attached (an
/// observer is shown the normalization's own output gradient); otherwise as a pass of its own.
final class NormalizationReLUSlot {
    let norm: NormalizationSlot
    private let relu = LayerSlot(ReLU())
    /// Whether to fuse when possible (``ResNet/fusesActivations``).
    var fuses = true
    private var fusedLastForward = false

    init(_ layer: NormalizationLayer?) { norm = NormalizationSlot(layer) }

    var module: NormalizationModule { norm.module }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        let fuse = fuses && module.layer != nil && module.observer == nil
        module.layer?.activation = fuse ? .relu : .identity
        fusedLastForward = fuse
        let h = try norm.forward(x, training: training)
        return fuse ? h : try relu.forward(h, training: training)
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        try norm.backward(fusedLastForward ? dy : try relu.backward(dy))
    }
}

/// A layer with its output and input-gradient buffers, reused across steps.
final class LayerSlot<L: Layer> {
    let layer: L
    private var output = Tensor(zeros: [0, 0])
    private var inputGradient = Tensor(zeros: [0, 0])

    init(_ layer: L) { self.layer = layer }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        try layer.forward(x, into: &output, training: training)
        return output
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        try layer.backward(dy, into: &inputGradient)
        return inputGradient
    }
}

/// Writes `x` into `buffer` in `layout` (a copy when the layouts agree or `x` has one channel; reuses `buffer`).
func convert(_ x: Tensor, into buffer: inout Tensor, layout: TensorLayout) {
    buffer.prepare(shape: x.shape, layout: layout)
    let n = x.batch, c = x.channels, m = x.shape.dropFirst(2).reduce(1, *)
    let sameOrder = x.layout == layout || c == 1
    x.withUnsafeBufferPointer { source in
        buffer.withUnsafeMutableBufferPointer { target in
            if sameOrder {
                target.baseAddress!.update(from: source.baseAddress!, count: source.count)
                return
            }
            for i in 0..<n {
                for k in 0..<c {
                    for p in 0..<m {
                        let first = (i * c + k) * m + p, last = (i * m + p) * c + k
                        if layout == .channelsLast {
                            target[last] = source[first]
                        } else {
                            target[first] = source[last]
                        }
                    }
                }
            }
        }
    }
}

/// The end of a residual block: `relu(h + shortcut)` in one pass, its masked backward, and the input gradient as the
/// sum of the two branches' (``BasicBlock`` and ``FoldedBasicBlock``).
final class ResidualReLU {
    private var output = Tensor(zeros: [0, 0])
    private var savedOutput: Tensor?
    private var outputGradient = Tensor(zeros: [0, 0])
    private var inputGradient = Tensor(zeros: [0, 0])

    /// `relu(h + shortcut)`, kept for the backward after a training forward.
    func forward(_ h: Tensor, shortcut: Tensor, training: Bool) -> Tensor {
        addReLU(h, shortcut, into: &output)
        if training { savedOutput = output }
        return output
    }

    /// `∂L/∂(h + shortcut)` from `∂L/∂output`.
    func backward(_ dy: Tensor, layer: String) throws -> Tensor {
        guard let saved = savedOutput else { throw NormalizationError.backwardBeforeForward(layer: layer) }
        try LayerCheck.gradient(dy, shape: saved.shape, layout: saved.layout, layer: layer)
        reluBackward(output: saved, dy, into: &outputGradient)
        savedOutput = nil
        return outputGradient
    }

    /// `∂L/∂(h + shortcut)` from `∂L/∂output` given as the next block's two input-gradient branches: their sum
    /// and this ReLU's mask in one pass (the sum is never written out).
    func backward(_ dy: BlockGradient, layer: String) throws -> Tensor {
        guard let saved = savedOutput else { throw NormalizationError.backwardBeforeForward(layer: layer) }
        try LayerCheck.gradient(dy.branch, shape: saved.shape, layout: saved.layout, layer: layer)
        try LayerCheck.gradient(dy.shortcut, shape: saved.shape, layout: saved.layout, layer: layer)
        Elementwise.apply(saved, dy.branch, dy.shortcut, into: &outputGradient, Elementwise.addReLUBackward)
        savedOutput = nil
        return outputGradient
    }

    /// The block's input gradient: the residual branch's plus the shortcut's (one pass, split over the pool).
    func inputGradient(branch: Tensor, shortcut: Tensor) -> Tensor {
        Elementwise.apply(branch, shortcut, into: &inputGradient, Elementwise.add)
        return inputGradient
    }
}

/// A residual block's input gradient as its two terms, the residual branch's and the shortcut's: ``ResNet``
/// hands it to the block before, whose ``ResidualReLU`` adds them in its masked backward pass.
struct BlockGradient {
    var branch: Tensor
    var shortcut: Tensor
}

/// `x` in `layout`: `x` itself when it is already, else converted into `buffer` (reused between calls). The stems
/// of ``ResNet`` and ``FoldedResNet`` use it to give the network the activation layout of its engine.
func activations(_ x: Tensor, in layout: TensorLayout, buffer: inout Tensor) -> Tensor {
    guard x.layout != layout else { return x }
    convert(x, into: &buffer, layout: layout)
    return buffer
}

/// `y = max(a + b, 0)` elementwise (same shape and layout; `y` reused): a residual block's sum and ReLU in one pass.
func addReLU(_ a: Tensor, _ b: Tensor, into y: inout Tensor) { Elementwise.apply(a, b, into: &y, Elementwise.addReLU) }

/// `dx = y ≤ 0 ? 0 : dy` (same shape and layout; `dx` reused; a NaN `y` passes `dy`, as in PyTorch): the backward
/// of ``addReLU(_:_:into:)`` for both inputs.
func reluBackward(output y: Tensor, _ dy: Tensor, into dx: inout Tensor) {
    Elementwise.apply(y, dy, into: &dx, Elementwise.reluBackward)
}

/// Parses `resnet8`, `resnet20`, … or `vgg`, and builds the model.
///
/// - Throws: ``ModelError/unknownModel(_:)`` for another name, ``ModelError/invalidDepth(_:)`` for a depth that
///   is not `6n+2`, or a layer's constructor error (see ``NormalizationSettings/makeLayer(channels:)``).
public func makeModel(
    named name: String, normalization: NormalizationSettings, inChannels: Int = 1,
    classes: Int = 10, seed: UInt64
) throws -> Model {
    var generator = SeededGenerator(seed: seed)
    let lower = name.lowercased()
    if lower.hasPrefix("resnet"), let depth = Int(lower.dropFirst("resnet".count)) {
        return try ResNet(
            depth: depth, normalization: normalization, inChannels: inChannels, classes: classes,
            generator: &generator)
    }
    if lower == "vgg" {
        return try VGG(normalization: normalization, inChannels: inChannels, classes: classes, generator: &generator)
    }
    throw ModelError.unknownModel(name)
}
