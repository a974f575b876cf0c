import Foundation

/// What only the training stack's layers (``Conv2d``, ``Linear``, ``ReLU``, ``MaxPool2d``, ``GlobalAveragePool``,
/// ``SoftmaxCrossEntropy``) refuse, with a message that names the offending numbers: a rank or layout, a window
/// larger than the input, labels, a compute engine, a size beyond 32 bits. What every layer of the family
/// (`NormKit.TensorLayer`) can refuse — a constructor argument, the channel count, an empty batch, a gradient of the
/// wrong shape, a backward without its forward, a state entry, a size larger than memory — is NormKit's
/// `NormalizationError`, one vocabulary for both modules.
///
/// Layers check their inputs before touching any state, so a thrown error leaves parameters and saved
/// activations exactly as they were.
public enum LayerError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The input does not have the rank the layer needs (`4` for `(N, C, H, W)`, `2` for `(N, C)`).
    case wrongRank(layer: String, expected: Int, shape: [Int])
    /// The layer only supports another memory layout (the spatial layers are channels-first, NCHW, only).
    case unsupportedLayout(layer: String, layout: TensorLayout)
    /// The (padded) input is smaller than the window, so the output would be empty.
    case inputTooSmall(layer: String, height: Int, width: Int, kernelSize: Int, padding: Int)
    /// The number of labels is not the batch size.
    case labelCountMismatch(batch: Int, labels: Int)
    /// A label outside `0..<classes` (at sample `index`).
    case labelOutOfRange(index: Int, label: Int, classes: Int)
    /// A compute engine (oneDNN) refused or failed a call; `message` is its own explanation.
    case engineFailure(layer: String, engine: String, message: String)
    /// A size of this input beyond the 32-bit integers that `limit` takes (at most `Int32.max`): OpenBLAS's GEMM
    /// sizes (``Linear``'s batch, the output positions per image of ``Conv2d``'s im2col engine), ``MaxPool2d``'s
    /// indices of each window's maximum within a plane. Refused before anything is allocated or computed.
    case sizeBeyond32Bits(layer: String, size: String, value: Int, limit: String)

    /// A sentence naming the layer and the numbers involved.
    public var description: String {
        switch self {
        case .wrongRank(let layer, let expected, let shape):
            let form = expected == 4 ? "(N, C, H, W)" : expected == 2 ? "(N, C)" : "rank \(expected)"
            return "\(layer): expected a rank-\(expected) input \(form), got shape \(shape) (rank \(shape.count))"
        case .unsupportedLayout(let layer, let layout):
            return "\(layer): layout \(layout) is not supported; convert the input to channelsFirst (NCHW)"
        case .inputTooSmall(let layer, let height, let width, let kernelSize, let padding):
            return "\(layer): a \(height)×\(width) input with padding \(padding) is smaller than the "
                + "\(kernelSize)×\(kernelSize) window (the output would be empty)"
        case .labelCountMismatch(let batch, let labels):
            return "SoftmaxCrossEntropy: \(labels) labels for a batch of \(batch) rows"
        case .labelOutOfRange(let index, let label, let classes):
            return "SoftmaxCrossEntropy: label \(label) at sample \(index) is outside 0..<\(classes)"
        case .engineFailure(let layer, let engine, let message):
            return "\(layer): the \(engine) engine failed: \(message)"
        case .sizeBeyond32Bits(let layer, let size, let value, let limit):
            return "\(layer): \(size) \(value) exceeds \(limit) (at most \(Int32.max))"
        }
    }

    /// The same text as ``description``, so `error.localizedDescription` is the message too.
    public var errorDescription: String? { description }
}

/// Shared input checks and state-dict helpers of the training layers.
enum LayerCheck {
    /// Throws for the first of `arguments` (name, value) below 1, a constructor's sizes, counts and strides.
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)``.
    static func atLeastOne(_ arguments: KeyValuePairs<String, Int>, layer: String) throws {
        for (name, value) in arguments where value < 1 {
            throw NormalizationError.invalidArgument(
                layer: layer, name: name, value: "\(value)", expected: "at least 1")
        }
    }

    /// Throws unless `x` is a non-empty channels-first `(N, C, H, W)` tensor with `channels` channels (any when nil).
    /// `layer` is evaluated only to build an error (a layer's name is an interpolated string).
    static func spatial(
        _ x: Tensor, channels: Int?, layer: @autoclosure () -> String,
        channelsLastToo: Bool = false
    ) throws {
        guard x.layout == .channelsFirst || channelsLastToo else {
            throw LayerError.unsupportedLayout(layer: layer(), layout: x.layout)
        }
        guard x.shape.count == 4 else { throw LayerError.wrongRank(layer: layer(), expected: 4, shape: x.shape) }
        if let channels, x.channels != channels {
            throw NormalizationError.channelMismatch(layer: layer(), expected: channels, got: x.channels)
        }
        guard x.batch > 0 else { throw NormalizationError.emptyBatch(layer: layer()) }
    }

    /// Throws unless `dy` has `shape` and `layout`.
    static func gradient(_ dy: Tensor, shape: [Int], layout: TensorLayout, layer: @autoclosure () -> String) throws {
        guard dy.shape == shape, dy.layout == layout else {
            throw NormalizationError.shapeMismatch(
                layer: layer(), expected: shape, expectedLayout: layout,
                got: dy.shape, gotLayout: dy.layout)
        }
    }

    /// The float32 values of `name` in `state`, checked against `shape`.
    static func floats(_ state: [String: StateTensor], _ name: String, shape: [Int], layer: String) throws -> [Float] {
        guard let entry = state[name] else {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: "missing")
        }
        guard case .float32(let s, let values) = entry else {
            throw NormalizationError.invalidState(layer: layer, name: name, reason: "expected float32, got int64")
        }
        guard s == shape, values.count == shape.reduce(1, *) else {
            throw NormalizationError.invalidState(
                layer: layer, name: name,
                reason: "expected shape \(shape), got \(s) with \(values.count) values")
        }
        return values
    }
}
