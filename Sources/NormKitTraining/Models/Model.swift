import Foundation

/// A classifier the trainer can drive: forward to logits, backward from their gradient, parameters for the
/// optimizer and a PyTorch-compatible state dict for checkpoints.
public protocol Model: AnyObject {
    /// Logits `(N, classes)` for images `(N, C, H, W)`. The result is a buffer the model reuses.
    func forward(_ x: Tensor, training: Bool) throws -> Tensor
    /// Backpropagates `∂loss/∂logits` through the last training forward, setting every parameter's gradient.
    func backward(_ logitsGradient: Tensor) throws
    /// Every trainable parameter, in a fixed order.
    var parameters: [Parameter] { get }
    /// Every checkpointable tensor under its PyTorch `state_dict` name.
    func stateDict() -> [String: StateTensor]
    /// Restores ``stateDict()``; throws naming the first missing, unexpected or mis-shaped tensor.
    func loadStateDict(_ state: [String: StateTensor]) throws
}

/// Errors from building or loading a model.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case unknownModel(String)
    case invalidDepth(Int)
    case unsupported(String)
    case missingTensor(String)
    case unexpectedTensors([String])
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
            return "checkpoint has tensors the model does not: \(names.prefix(5).joined(separator: ", "))\(names.count > 5 ? ", …" : "")"
        case .mismatchedTensor(let name, let expected, let found):
            return "checkpoint tensor '\(name)' is \(found), the model expects \(expected)"
        }
    }
}

/// Checks that `state` has exactly `model`'s tensor names, then runs `load`; if `load` throws, restores the
/// model's previous state so a failed load changes nothing.
func loadAtomically(_ model: Model, _ state: [String: StateTensor],
                    _ load: ([String: StateTensor]) throws -> Void) throws {
    let backup = model.stateDict()
    let expected = Set(backup.keys)
    if let missing = expected.subtracting(state.keys).sorted().first { throw ModelError.missingTensor(missing) }
    let extra = Set(state.keys).subtracting(expected).sorted()
    guard extra.isEmpty else { throw ModelError.unexpectedTensors(extra) }
    for name in expected.sorted() {
        let want = backup[name]!, have = state[name]!
        if want.shape != have.shape || want.dtypeName != have.dtypeName {
            throw ModelError.mismatchedTensor(name: name, expected: "\(want.dtypeName) \(want.shape)",
                                              found: "\(have.dtypeName) \(have.shape)")
        }
    }
    do { try load(state) } catch {
        try? load(backup)
        throw error
    }
}

/// A state dict under a name prefix.
func prefixed(_ prefix: String, _ state: [String: StateTensor]) -> [String: StateTensor] {
    Dictionary(uniqueKeysWithValues: state.map { ("\(prefix).\($0.key)", $0.value) })
}

/// The entries of `state` under `prefix.`, with the prefix removed.
func unprefixed(_ prefix: String, _ state: [String: StateTensor]) -> [String: StateTensor] {
    var out: [String: StateTensor] = [:]
    let p = prefix + "."
    for (k, v) in state where k.hasPrefix(p) { out[String(k.dropFirst(p.count))] = v }
    return out
}

/// A normalization layer slot that may be empty (`--norm none`), with its own output buffers.
final class NormalizationSlot {
    let layer: NormalizationLayer?
    private var output = Tensor(zeros: [0, 0])
    private var inputGradient = Tensor(zeros: [0, 0])

    init(_ layer: NormalizationLayer?) { self.layer = layer }

    func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        guard let layer else { return x }
        try layer.forward(x, into: &output, training: training)
        return output
    }

    func backward(_ dy: Tensor) throws -> Tensor {
        guard let layer else { return dy }
        try layer.backward(dy, into: &inputGradient)
        return inputGradient
    }

    var parameters: [Parameter] { layer?.parameters ?? [] }
    func stateDict() -> [String: StateTensor] { layer?.stateDict() ?? [:] }
    func loadStateDict(_ state: [String: StateTensor]) throws { try layer?.loadStateDict(state) }

    /// Sets `γ` to 0 (the last normalization of a residual block, spec §6).
    func zeroScale() {
        guard let weight = layer?.weight, weight.isTrainable else { return }
        weight.value = [Float](repeating: 0, count: weight.value.count)
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

/// `a += b` elementwise (same shape and layout).
func addInPlace(_ a: inout Tensor, _ b: Tensor) {
    precondition(a.shape == b.shape && a.layout == b.layout)
    b.withUnsafeBufferPointer { bp in
        a.withUnsafeMutableBufferPointer { ap in
            for i in 0..<ap.count { ap[i] += bp[i] }
        }
    }
}

/// Parses `resnet8`, `resnet20`, … or `vgg`, and builds the model.
public func makeModel(named name: String, normalization: NormalizationSettings, inChannels: Int = 1,
                      classes: Int = 10, seed: UInt64) throws -> Model {
    var generator = SeededGenerator(seed: seed)
    let lower = name.lowercased()
    if lower.hasPrefix("resnet"), let depth = Int(lower.dropFirst("resnet".count)) {
        return try ResNet(depth: depth, normalization: normalization, inChannels: inChannels, classes: classes,
                          generator: &generator)
    }
    if lower == "vgg" {
        return try VGG(normalization: normalization, inChannels: inChannels, classes: classes, generator: &generator)
    }
    throw ModelError.unknownModel(name)
}

extension StateTensor {
    /// `float32` or `int64`.
    var dtypeName: String {
        if case .int64 = self { return "int64" }
        return "float32"
    }
}
