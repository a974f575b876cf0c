/// Everything a NormKit layer refuses, with a message that names the offending numbers.
///
/// Layers check their inputs before touching any state, so a thrown error leaves parameters, running
/// statistics and saved activations exactly as they were.
public enum NormalizationError: Error, Equatable, CustomStringConvertible {
    /// A shape that is not `(N, C, *spatial)` with spatial rank 0 to 3.
    case invalidShape([Int])
    /// A value array whose length does not match the shape.
    case elementCountMismatch(expected: Int, got: Int)
    /// `channels` is not divisible by `groups`, or `groups` is not in `1...channels`.
    case invalidGroups(channels: Int, groups: Int)
    /// `channels` is not divisible by `groupSize`, or `groupSize` is not in `1...channels`.
    case invalidGroupSize(channels: Int, groupSize: Int)
    /// A constructor argument out of range (name, value, what is allowed).
    case invalidArgument(name: String, value: String, expected: String)
    /// The input's channel count is not the layer's.
    case channelMismatch(layer: String, expected: Int, got: Int)
    /// Two tensors that must match (for example `dy` and the forward's `x`) do not.
    case shapeMismatch(expected: [Int], got: [Int], layout: String)
    /// The batch has no samples.
    case emptyBatch(layer: String)
    /// A training batch with one value per channel in a normalization set: the variance is undefined.
    case tooFewValuesPerChannel(layer: String, valuesPerSet: Int)
    /// `normBatch` must divide the batch size.
    case normBatchDoesNotDivide(batch: Int, normBatch: Int)
    /// `backward` was called without a training forward to pair with (or twice for one forward).
    case backwardBeforeForward(layer: String)
    /// A state entry (checkpoint tensor) is missing or has the wrong shape or type.
    case invalidState(layer: String, name: String, reason: String)

    public var description: String {
        switch self {
        case .invalidShape(let shape):
            return "invalid tensor shape \(shape): expected (N, C, *spatial) with spatial rank 0 to 3 and no negative dimension"
        case .elementCountMismatch(let expected, let got):
            return "expected \(expected) values for this shape, got \(got)"
        case .invalidGroups(let channels, let groups):
            return "GroupNorm: \(channels) channels cannot be split into \(groups) groups (groups must be in 1...\(channels) and divide \(channels))"
        case .invalidGroupSize(let channels, let groupSize):
            return "GroupNorm: \(channels) channels cannot be split into groups of \(groupSize) channels (group size must be in 1...\(channels) and divide \(channels))"
        case .invalidArgument(let name, let value, let expected):
            return "invalid \(name) = \(value): expected \(expected)"
        case .channelMismatch(let layer, let expected, let got):
            return "\(layer): input has \(got) channels, the layer was built for \(expected)"
        case .shapeMismatch(let expected, let got, let layout):
            return "shape mismatch: expected \(expected) (\(layout)), got \(got)"
        case .emptyBatch(let layer):
            return "\(layer): the batch is empty (N = 0)"
        case .tooFewValuesPerChannel(let layer, let count):
            return "\(layer): expected more than 1 value per channel when training, got \(count) (batch statistics need at least 2 values)"
        case .normBatchDoesNotDivide(let batch, let normBatch):
            return "normBatch \(normBatch) does not divide the batch size \(batch): every ghost batch must have exactly normBatch samples"
        case .backwardBeforeForward(let layer):
            return "\(layer): backward called without a preceding training forward (each forward pairs with one backward)"
        case .invalidState(let layer, let name, let reason):
            return "\(layer): state '\(name)': \(reason)"
        }
    }
}
