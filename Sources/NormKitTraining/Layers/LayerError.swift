import Foundation

/// Everything a training-stack layer (``Conv2d``, ``Linear``, ``ReLU``, ``MaxPool2d``,
/// ``GlobalAveragePool``, ``SoftmaxCrossEntropy``) refuses, with a message that names the offending numbers.
///
/// Layers check their inputs before touching any state, so a thrown error leaves parameters and saved
/// activations exactly as they were.
public enum LayerError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// A constructor argument out of range (layer, argument name, value, what is allowed).
    case invalidArgument(layer: String, name: String, value: Int, expected: String)
    /// The input does not have the rank the layer needs (`4` for `(N, C, H, W)`, `2` for `(N, C)`).
    case wrongRank(layer: String, expected: Int, shape: [Int])
    /// The layer only supports another memory layout (the spatial layers are channels-first, NCHW, only).
    case unsupportedLayout(layer: String, layout: TensorLayout)
    /// The input's channel (feature) count is not the layer's.
    case channelMismatch(layer: String, expected: Int, got: Int)
    /// The batch has no samples.
    case emptyBatch(layer: String)
    /// The (padded) input is smaller than the window, so the output would be empty.
    case inputTooSmall(layer: String, height: Int, width: Int, kernelSize: Int, padding: Int)
    /// The gradient given to `backward` does not match the last training forward's output.
    case gradientMismatch(
        layer: String, expected: [Int], expectedLayout: TensorLayout, got: [Int],
        gotLayout: TensorLayout)
    /// `backward` was called without a training forward to pair with (or twice for one forward).
    case backwardBeforeForward(layer: String)
    /// The number of labels is not the batch size.
    case labelCountMismatch(batch: Int, labels: Int)
    /// A label outside `0..<classes` (at sample `index`).
    case labelOutOfRange(index: Int, label: Int, classes: Int)
    /// A state entry (checkpoint tensor) is missing or has the wrong shape or type.
    case invalidState(layer: String, name: String, reason: String)
    /// A compute engine (oneDNN) refused or failed a call; `message` is its own explanation.
    case engineFailure(layer: String, engine: String, message: String)

    /// A sentence naming the layer and the numbers involved.
    public var description: String {
        switch self {
        case .invalidArgument(let layer, let name, let value, let expected):
            return "\(layer): invalid \(name) = \(value): expected \(expected)"
        case .wrongRank(let layer, let expected, let shape):
            let form = expected == 4 ? "(N, C, H, W)" : expected == 2 ? "(N, C)" : "rank \(expected)"
            return "\(layer): expected a rank-\(expected) input \(form), got shape \(shape) (rank \(shape.count))"
        case .unsupportedLayout(let layer, let layout):
            return "\(layer): layout \(layout) is not supported; convert the input to channelsFirst (NCHW)"
        case .channelMismatch(let layer, let expected, let got):
            return "\(layer): input has \(got) channels, the layer was built for \(expected)"
        case .emptyBatch(let layer):
            return "\(layer): the batch is empty (N = 0)"
        case .inputTooSmall(let layer, let height, let width, let kernelSize, let padding):
            return "\(layer): a \(height)×\(width) input with padding \(padding) is smaller than the "
                + "\(kernelSize)×\(kernelSize) window (the output would be empty)"
        case .gradientMismatch(let layer, let expected, let expectedLayout, let got, let gotLayout):
            return "\(layer): gradient has shape \(got) (\(gotLayout)), the forward's output was \(expected) "
                + "(\(expectedLayout))"
        case .backwardBeforeForward(let layer):
            return
                "\(layer): backward called without a preceding training forward (each forward pairs with one backward)"
        case .labelCountMismatch(let batch, let labels):
            return "SoftmaxCrossEntropy: \(labels) labels for a batch of \(batch) rows"
        case .labelOutOfRange(let index, let label, let classes):
            return "SoftmaxCrossEntropy: label \(label) at sample \(index) is outside 0..<\(classes)"
        case .invalidState(let layer, let name, let reason):
            return "\(layer): state '\(name)': \(reason)"
        case .engineFailure(let layer, let engine, let message):
            return "\(layer): the \(engine) engine failed: \(message)"
        }
    }

    /// The same text as ``description``, so `error.localizedDescription` is the message too.
    public var errorDescription: String? { description }
}

/// Shared input checks and state-dict helpers of the training layers.
enum LayerCheck {
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
            throw LayerError.channelMismatch(layer: layer(), expected: channels, got: x.channels)
        }
        guard x.batch > 0 else { throw LayerError.emptyBatch(layer: layer()) }
    }

    /// Throws unless `dy` has `shape` and `layout`.
    static func gradient(_ dy: Tensor, shape: [Int], layout: TensorLayout, layer: @autoclosure () -> String) throws {
        guard dy.shape == shape, dy.layout == layout else {
            throw LayerError.gradientMismatch(
                layer: layer(), expected: shape, expectedLayout: layout,
                got: dy.shape, gotLayout: dy.layout)
        }
    }

    /// The float32 values of `name` in `state`, checked against `shape`.
    static func floats(_ state: [String: StateTensor], _ name: String, shape: [Int], layer: String) throws -> [Float] {
        guard let entry = state[name] else {
            throw LayerError.invalidState(layer: layer, name: name, reason: "missing")
        }
        guard case .float32(let s, let values) = entry else {
            throw LayerError.invalidState(layer: layer, name: name, reason: "expected float32, got int64")
        }
        guard s == shape, values.count == shape.reduce(1, *) else {
            throw LayerError.invalidState(
                layer: layer, name: name,
                reason: "expected shape \(shape), got \(s) with \(values.count) values")
        }
        return values
    }
}
