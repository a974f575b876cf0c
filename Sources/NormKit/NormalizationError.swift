import Foundation

/// Everything NormKit refuses, with a message that names the thing that refused it (the layer, `Tensor`, …) and
/// the offending numbers.
///
/// **Error policy.** NormKit separates two kinds of mistakes:
/// - *Input errors* are thrown as a `NormalizationError`: anything whose value can come from data, files,
///   configuration or users — a layer's input and gradient tensors, its constructor arguments, a state dict, a
///   shape built from data (``Tensor/init(shape:layout:)``, ``Tensor/init(shape:layout:values:)``), a size larger
///   than this machine's memory (``tooLargeForMemory(layer:what:bytes:limit:)``). Layers check their inputs before
///   touching any state, so a thrown error leaves parameters, running statistics and saved activations exactly as
///   they were.
/// - *Programmer errors* are preconditions, checked in debug **and** release builds, that stop the process with a
///   message naming the values: an element index outside a tensor (``Tensor/subscript(_:_:_:)``; test it first
///   with ``Tensor/isValidIndex(n:c:position:)``), an impossible shape passed to a non-throwing initializer
///   (``Tensor/init(zeros:layout:)``, meant for shapes written in code), a parameter built with the wrong number
///   of values. Only the `withUnsafe…` APIs are unchecked: they are the kernels' fast path.
///
/// `localizedDescription` (``errorDescription``) is the same message as ``description``. See `docs/ERRORS.md`.
public enum NormalizationError: Error, Equatable, Sendable, CustomStringConvertible, LocalizedError {
    /// A shape that is not `(N, C, *spatial)` with spatial rank 0 to 3, or whose size overflows
    /// (``Tensor/isValid(shape:)``).
    case invalidShape(layer: String, shape: [Int])
    /// A block of memory larger than this machine's physical memory (`limit` bytes), refused before anything is
    /// allocated: a tensor (``Tensor/init(shape:layout:)``), a layer's weights, buffers, output or workspace. `what`
    /// names the block and its size; `bytes` is what it needs, `Int.max` when that is more than `Int` counts.
    case tooLargeForMemory(layer: String, what: String, bytes: Int, limit: Int)
    /// A value array whose length does not match the shape.
    case elementCountMismatch(layer: String, expected: Int, got: Int)
    /// `channels` is not divisible by `groups`, or `groups` is not in `1...channels` (``GroupNorm``).
    case invalidGroups(channels: Int, groups: Int)
    /// `channels` is not divisible by `groupSize`, or `groupSize` is not in `1...channels` (``GroupNorm``).
    case invalidGroupSize(channels: Int, groupSize: Int)
    /// An argument out of range, or a combination of arguments that is refused (name, value, what is allowed).
    case invalidArgument(layer: String, name: String, value: String, expected: String)
    /// The input's channel count is not the layer's.
    case channelMismatch(layer: String, expected: Int, got: Int)
    /// Two tensors that must match (the backward's `dy` and the forward's `x`) differ in shape or layout.
    case shapeMismatch(
        layer: String, expected: [Int], expectedLayout: TensorLayout, got: [Int], gotLayout: TensorLayout)
    /// The two operands of an element-wise operation (`operation`: `"add"`, …) differ in shape or layout:
    /// ``Tensor/add(_:)`` and the other element-wise ``Tensor`` operations need one shape and one layout (convert one
    /// with ``Tensor/converted(to:)`` first).
    case operandMismatch(
        layer: String, operation: String, left: [Int], leftLayout: TensorLayout, right: [Int],
        rightLayout: TensorLayout)
    /// The batch has no samples.
    case emptyBatch(layer: String)
    /// Too few values in a normalization set for the statistics a forward takes from its input: one value per channel
    /// in a training batch of BN or BRN (the variance is undefined, as in PyTorch), or none at all (`valuesPerSet: 0`:
    /// a spatial dimension of 0) in any such forward (BN, BRN and MABN training, GroupNorm in both modes).
    case tooFewValuesPerChannel(layer: String, valuesPerSet: Int)
    /// `normBatch` must divide the batch size.
    case normBatchDoesNotDivide(layer: String, batch: Int, normBatch: Int)
    /// `backward` was called without a training forward to pair with (or twice for one forward).
    case backwardBeforeForward(layer: String)
    /// A state entry (checkpoint tensor) has the wrong shape, dtype or values.
    case invalidState(layer: String, name: String, reason: String)
    /// A strict state-dict load whose keys are not exactly the layer's (PyTorch's "Missing key(s)" /
    /// "Unexpected key(s)"); both lists sorted.
    case incompatibleStateDict(layer: String, missingKeys: [String], unexpectedKeys: [String])
    /// SyncBN's reduction across workers (``CrossWorkerReduction``) failed, or the workers disagree (`reason`).
    case crossWorkerReductionFailed(layer: String, reason: String)

    /// What refused: a layer's ``NormalizationLayer/name`` (`"BatchNorm(channels: 64)"`), or `"Tensor"`,
    /// `"BatchRenorm.Schedule"`, `"WeightCentering"`.
    public var layer: String {
        switch self {
        case .invalidShape(let layer, _), .tooLargeForMemory(let layer, _, _, _),
            .elementCountMismatch(let layer, _, _),
            .invalidArgument(let layer, _, _, _),
            .channelMismatch(let layer, _, _), .shapeMismatch(let layer, _, _, _, _),
            .operandMismatch(let layer, _, _, _, _, _), .emptyBatch(let layer),
            .tooFewValuesPerChannel(let layer, _), .normBatchDoesNotDivide(let layer, _, _),
            .backwardBeforeForward(let layer), .invalidState(let layer, _, _),
            .incompatibleStateDict(let layer, _, _), .crossWorkerReductionFailed(let layer, _):
            return layer
        case .invalidGroups(let channels, let groups):
            return GroupNorm.describe(channels: channels, grouping: "groups: \(groups)", affine: true)
        case .invalidGroupSize(let channels, let groupSize):
            return GroupNorm.describe(channels: channels, grouping: "groupSize: \(groupSize)", affine: true)
        }
    }

    /// `"<layer>: <what is wrong, with the numbers>"`.
    public var description: String { "\(layer): \(problem)" }

    /// The same message as ``description`` (so `error.localizedDescription` shows it).
    public var errorDescription: String? { description }

    /// The message without the layer prefix.
    private var problem: String {
        switch self {
        case .invalidShape(_, let shape):
            return
                "invalid tensor shape \(shape): expected (N, C, *spatial) with spatial rank 0 to 3, no negative dimension "
                + "and fewer than 2^61 elements (the product of the non-zero dimensions)"
        case .tooLargeForMemory(_, let what, let bytes, let limit):
            let size = bytes == Int.max ? "more than \(Int.max) bytes" : "\(bytes) bytes"
            return "\(what) needs \(size), more than this machine's memory (\(limit) bytes) can hold"
        case .elementCountMismatch(_, let expected, let got):
            return "expected \(expected) values for this shape, got \(got)"
        case .invalidGroups(let channels, let groups):
            return
                "\(channels) channels cannot be split into \(groups) groups (groups must be in 1...\(channels) and divide \(channels))"
        case .invalidGroupSize(let channels, let groupSize):
            return
                "\(channels) channels cannot be split into groups of \(groupSize) channels (group size must be in 1...\(channels) and divide \(channels))"
        case .invalidArgument(_, let name, let value, let expected):
            return "invalid \(name) = \(value): expected \(expected)"
        case .channelMismatch(_, let expected, let got):
            return "input has \(got) channels, the layer was built for \(expected)"
        case .shapeMismatch(_, let expected, let expectedLayout, let got, let gotLayout):
            return
                "gradient does not match the forward's output: expected \(expected) \(expectedLayout), got \(got) \(gotLayout)"
        case .operandMismatch(_, let operation, let left, let leftLayout, let right, let rightLayout):
            let fix =
                left == right
                ? "convert one with converted(to:)" : "there is no broadcasting"
            return
                "\(operation) needs two tensors of one shape and layout, got \(left) \(leftLayout) and \(right) "
                + "\(rightLayout) (\(fix))"
        case .emptyBatch:
            return "the batch is empty (N = 0)"
        case .tooFewValuesPerChannel(_, let count):
            if count == 0 {
                return "a spatial dimension is 0: no values to take the statistics of a normalization set from"
            }
            return
                "expected more than 1 value per channel when training, got \(count) (batch statistics need at least 2 values)"
        case .normBatchDoesNotDivide(_, let batch, let normBatch):
            return
                "normBatch \(normBatch) does not divide the batch size \(batch): every ghost batch must have exactly normBatch samples"
        case .backwardBeforeForward:
            return
                "backward called without a preceding training forward (each forward pairs with one backward; a layer "
                + "instance used twice in one network keeps only one forward: give each use its own instance)"
        case .invalidState(_, let name, let reason):
            return "state '\(name)': \(reason)"
        case .incompatibleStateDict(_, let missing, let unexpected):
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing key(s) \(missing.joined(separator: ", "))") }
            if !unexpected.isEmpty { parts.append("unexpected key(s) \(unexpected.joined(separator: ", "))") }
            return "state dict does not match the layer: \(parts.joined(separator: "; ")) "
                + "(a strict load needs exactly the layer's keys; loadStateDict(_:strict: false) loads the matching "
                + "entries and reports the rest)"
        case .crossWorkerReductionFailed(_, let reason):
            return "SyncBN's reduction across workers failed: \(reason)"
        }
    }
}
