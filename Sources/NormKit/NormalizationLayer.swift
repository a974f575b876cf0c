/// The gradients a normalization backward produces. Equal when every part is (a ``Tensor`` compares its shape,
/// layout and elements).
public struct NormalizationGradients: Sendable, Equatable {
    /// `∂loss/∂x`, same shape and layout as the forward's input.
    public var input: Tensor
    /// `∂loss/∂γ` per channel (nil without affine parameters).
    public var weight: [Float]?
    /// `∂loss/∂β` per channel (nil without affine parameters).
    public var bias: [Float]?

    /// Gradients from their parts.
    public init(input: Tensor, weight: [Float]?, bias: [Float]?) {
        self.input = input
        self.weight = weight
        self.bias = bias
    }
}

/// The layer family of NormKit: a forward into the caller's buffer and the backward of the last training forward.
///
/// ``NormalizationLayer`` refines it with `γ`/`β`, running state and state dicts; the training stack's `Layer`
/// (NormKitTraining) refines it with the module tree (convolutions, pooling, losses, models' parts), so one
/// training loop drives both kinds.
public protocol TensorLayer: AnyObject {
    /// Computes the output for `x` into `y` (reusing `y`'s memory when it can). A training forward saves what the
    /// backward needs.
    func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws

    /// Backpropagates `dy` through the last training forward into `dx` (reusing its memory when it can) and
    /// overwrites the parameters' gradients.
    func backward(_ dy: Tensor, into dx: inout Tensor) throws
}

extension TensorLayer {
    /// The output for `x` in a new tensor.
    ///
    /// - Throws: as ``forward(_:into:training:)``.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var y = Tensor(zeros: [0, 0])
        try forward(x, into: &y, training: training)
        return y
    }
}

/// The shape every NormKit normalization layer shares (a ``TensorLayer``).
///
/// - A layer is a reference type holding its parameters (``weight`` `γ`, ``bias`` `β`, per channel), its
///   running statistics (saved with ``stateDict()``, never given to an optimizer) and what its last training
///   forward saved for the backward.
/// - `training` is an explicit argument: there is no global mode.
/// - Each training forward pairs with at most one backward; a backward without one throws
///   ``NormalizationError/backwardBeforeForward(layer:)``. An evaluation forward touches no state: a pending
///   training forward can still be backpropagated after it. The backward overwrites the parameters' gradients.
/// - Input is `(N, C, *spatial)` with spatial rank 0 to 3 in either ``TensorLayout``.
/// - Bad input throws a ``NormalizationError`` naming the layer and changes nothing (see its error policy).
/// - ``loadStateDict(_:strict:)`` is strict by default, as PyTorch's `load_state_dict`.
///
/// **Concurrency.** A layer is a single-task object: it mutates its running statistics, saved activations and
/// scratch buffers on every call, so it is not `Sendable` and Swift 6 refuses to share one between tasks. Use one
/// layer per task, or own it in an actor and call it there. The tensors going in and out (``Tensor``,
/// ``NormalizationGradients``, ``StateTensor``) are `Sendable`:
///
/// ```swift
/// actor NormalizationStage {
///     private let norm: GroupNorm
///     init(channels: Int) throws { norm = try GroupNorm(channels: channels, groups: 32) }
///     func forward(_ x: Tensor) throws -> Tensor { try norm.forward(x, training: true) }
///     func backward(_ dy: Tensor) throws -> NormalizationGradients { try norm.backward(dy) }
/// }
/// let stage = try NormalizationStage(channels: 64)
/// async let y = stage.forward(x)   // calls from any task run one at a time, on the actor
/// ```
///
/// The kernels inside one call already use several threads (``Parallelism``).
public protocol NormalizationLayer: TensorLayer {
    /// A short description in initializer syntax (`"GroupNorm(channels: 64, groups: 32)"`), which begins every
    /// error message the layer throws.
    var name: String { get }
    /// `C`, the number of channels the layer was built for.
    var channels: Int { get }
    /// `ε`, added to the variance inside the square root.
    var epsilon: Float { get }
    /// `γ` of shape `(C,)`, nil when built with `affine: false`.
    var weight: Parameter? { get }
    /// `β` of shape `(C,)`, nil when built with `affine: false`.
    var bias: Parameter? { get }
    /// The activation fused into the layer's apply stage: ``FusedActivation/identity`` (the default) for the plain
    /// normalization, ``FusedActivation/relu`` or ``FusedActivation/silu`` to output `act(norm(x))` in the same
    /// pass, in training and evaluation; ``backward(_:into:)`` then takes the gradient of that output and masks or
    /// scales it inside its gradient-sums pass. Equal to the layer followed by the activation, to float rounding.
    var activation: FusedActivation { get set }

    /// Normalizes `x` into `y` (reusing `y`'s memory when it can). In training mode the layer uses batch
    /// statistics (as it defines them), updates its running statistics and saves what the backward needs.
    ///
    /// - Throws: a ``NormalizationError`` naming the layer, before any state changes:
    ///   ``NormalizationError/invalidShape(layer:shape:)``, ``NormalizationError/channelMismatch(layer:expected:got:)``
    ///   or ``NormalizationError/emptyBatch(layer:)`` for any input; in a forward that takes statistics from its
    ///   batch, ``NormalizationError/normBatchDoesNotDivide(layer:batch:normBatch:)`` and
    ///   ``NormalizationError/tooFewValuesPerChannel(layer:valuesPerSet:)``; with a ``CrossWorkerReduction``,
    ///   ``NormalizationError/crossWorkerReductionFailed(layer:reason:)`` (and
    ///   ``NormalizationError/invalidArgument(layer:name:value:expected:)`` for one with a `normBatch`).
    func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws

    /// Backpropagates `dy` through the last training forward into `dx`, and sets ``weight`` and ``bias`` gradients.
    ///
    /// - Throws: ``NormalizationError/backwardBeforeForward(layer:)`` without a training forward to pair with (or a
    ///   second time for one), ``NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)``
    ///   unless `dy` has the forward input's shape and layout (both before anything changes: a pending forward can
    ///   still be backpropagated); with a ``CrossWorkerReduction``,
    ///   ``NormalizationError/crossWorkerReductionFailed(layer:reason:)``.
    func backward(_ dy: Tensor, into dx: inout Tensor) throws

    /// The layer's checkpointable tensors in PyTorch `state_dict` naming (`weight`, `bias`, `running_mean`, …).
    func stateDict() -> [String: StateTensor]

    /// Restores tensors written by ``stateDict()``, as PyTorch's `load_state_dict(state, strict=strict)`.
    ///
    /// - `strict: true`: `state` must hold exactly the layer's keys; a missing or unexpected key throws
    ///   ``NormalizationError/incompatibleStateDict(layer:missingKeys:unexpectedKeys:)`` naming them all (a
    ///   layer built with `affine: false` given `weight`/`bias` is such an unexpected-keys error).
    /// - `strict: false`: loads the entries that match and returns the missing and unexpected keys; what is
    ///   missing keeps its current value.
    ///
    /// Either way an entry of the wrong shape or dtype, or with values the layer cannot use (a negative variance,
    /// a negative step counter), throws ``NormalizationError/invalidState(layer:name:reason:)``. A load that
    /// throws changes nothing.
    @discardableResult
    func loadStateDict(_ state: [String: StateTensor], strict: Bool) throws -> StateDictLoadResult
}

extension NormalizationLayer {
    /// The trainable parameters (`γ`, `β`), empty with `affine: false`.
    public var parameters: [Parameter] { [weight, bias].compactMap { $0 } }

    /// ``loadStateDict(_:strict:)`` with `strict: true` (PyTorch's default): every key of the layer, and no other.
    ///
    /// - Throws: as ``loadStateDict(_:strict:)``.
    @discardableResult
    public func loadStateDict(_ state: [String: StateTensor]) throws -> StateDictLoadResult {
        try loadStateDict(state, strict: true)
    }

    /// Backpropagates `dy` and returns `dx`, `dγ` and `dβ`.
    ///
    /// - Throws: as ``backward(_:into:)``.
    public func backward(_ dy: Tensor) throws -> NormalizationGradients {
        var dx = Tensor(zeros: [0, 0])
        try backward(dy, into: &dx)
        return NormalizationGradients(input: dx, weight: weight?.gradient, bias: bias?.gradient)
    }
}

/// Shared input checks.
enum InputCheck {
    /// Throws unless `x` is `(N, C, *S)` with `N > 0` and the layer's channel count. `layer` (the layer's name for
    /// the error) is only evaluated on failure: building it allocates, and this runs every step.
    static func validate(_ x: Tensor, channels: Int, layer: @autoclosure () -> String) throws {
        try Tensor.validate(shape: x.shape, for: layer())
        guard x.channels == channels else {
            throw NormalizationError.channelMismatch(layer: layer(), expected: channels, got: x.channels)
        }
        guard x.batch > 0 else { throw NormalizationError.emptyBatch(layer: layer()) }
    }

    /// Throws unless `dy` matches the saved input's shape and layout (`layer` evaluated only on failure).
    static func validateGradient(_ dy: Tensor, like x: Tensor, layer: @autoclosure () -> String) throws {
        guard dy.shape == x.shape, dy.layout == x.layout else {
            throw NormalizationError.shapeMismatch(
                layer: layer(), expected: x.shape, expectedLayout: x.layout, got: dy.shape, gotLayout: dy.layout)
        }
    }
}

/// What a training forward saves for its one backward: the input and the geometry it was normalized with.
struct PendingForward {
    private var input: Tensor?
    private var geometry: NormalizationGeometry?

    /// Saves `x` and `g` (a training forward).
    mutating func save(_ x: Tensor, _ g: NormalizationGeometry) { (input, geometry) = (x, g) }

    /// Forgets the pending forward (after its backward).
    mutating func clear() { (input, geometry) = (nil, nil) }

    /// The saved input and geometry for the backward of `dy`, still pending (``clear()`` after the backward).
    ///
    /// - Throws: ``NormalizationError/backwardBeforeForward(layer:)`` without one, and
    ///   ``NormalizationError/shapeMismatch(layer:expected:expectedLayout:got:gotLayout:)`` unless `dy` matches
    ///   the input (`layer` evaluated only then).
    func forBackward(of dy: Tensor, layer: @autoclosure () -> String) throws -> (Tensor, NormalizationGeometry) {
        guard let input, let geometry else { throw NormalizationError.backwardBeforeForward(layer: layer()) }
        try InputCheck.validateGradient(dy, like: input, layer: layer())
        return (input, geometry)
    }
}

/// Calls `body` with `value` under one exclusive access for the whole call: for an array property of a class, the
/// writes inside pay no exclusivity check per element (no pointer code needed to avoid them).
@inline(__always)
func updating<Value, Result>(_ value: inout Value, _ body: (inout Value) throws -> Result) rethrows -> Result {
    try body(&value)
}

/// Makes a `γ`/`β` pair for `channels` (or nil pair when `affine` is false).
func makeAffine(channels: Int, affine: Bool) -> (Parameter?, Parameter?) {
    guard affine else { return (nil, nil) }
    return (
        Parameter(
            name: "weight", shape: [channels], role: .normalizationScale,
            value: [Float](repeating: 1, count: channels)),
        Parameter(
            name: "bias", shape: [channels], role: .normalizationShift, value: [Float](repeating: 0, count: channels))
    )
}

/// The one `dγ`/`dβ` walk of every layer: `dγ_c = Σ_n scale[s]·Σdy·(x − k)[n, c] + offset[s]·Σdy[n, c]` and
/// `dβ_c = Σ_n Σdy[n, c]` with `s` the set of `(n, c)` in `g`, from the per-(n, c) sums of a backward, written into
/// the parameters' gradients (nothing without them). `setScale` and `setOffset` are called once per set; pass
/// closures over local copies of the arrays they read, not over `self` (a stored property read pays an exclusivity
/// check). Inlined so that each caller's closures are specialised into the loop. Every channel's sums run over `n`
/// in order, row by row (`n`), each row's channels contiguous so that the loop over them vectorizes; `scratch`
/// holds `4·C` doubles (accumulators, then a sample block's scale and offset per channel).
@inline(__always)
func writeAffineGradients(
    weight: Parameter?, bias: Parameter?, sumDy: [Double], sumDyCentered: [Double],
    geometry g: NormalizationGeometry, scratch: UnsafeMutablePointer<Double>, setScale: (Int) -> Double,
    setOffset: (Int) -> Double = { _ in 0 }
) {
    guard let weight, let bias else { return }
    let c = g.channels, k = g.samplesPerSet, cps = g.channelsPerSet
    let dg = scratch, db = dg + c, scale = db + c, offset = scale + c
    dg.update(repeating: 0, count: 2 * c)
    sumDy.withUnsafeBufferPointer { sumDy in
        sumDyCentered.withUnsafeBufferPointer { sumDyCentered in
            for block in 0..<g.sampleBlocks {
                for set in 0..<g.channelBlocks {
                    let s = block &* g.channelBlocks &+ set, setScale = setScale(s), setOffset = setOffset(s)
                    for ch in (set &* cps)..<((set &+ 1) &* cps) { (scale[ch], offset[ch]) = (setScale, setOffset) }
                }
                for n in (block &* k)..<((block &+ 1) &* k) {
                    let centered = sumDyCentered.baseAddress! + n &* c, plain = sumDy.baseAddress! + n &* c
                    for ch in 0..<c {
                        dg[ch] += scale[ch] * centered[ch] + offset[ch] * plain[ch]
                        db[ch] += plain[ch]
                    }
                }
            }
        }
    }
    storeAffineGradients(weight: weight, bias: bias, dgamma: dg, dbeta: db)
}

/// `weight.gradient = Float(dgamma)`, `bias.gradient = Float(dbeta)` (the layer's channel count each): one exclusive
/// access per gradient.
@inline(__always)
func storeAffineGradients(
    weight: Parameter, bias: Parameter, dgamma: UnsafePointer<Double>, dbeta: UnsafePointer<Double>
) {
    weight.gradient.withUnsafeMutableBufferPointer { dGamma in
        bias.gradient.withUnsafeMutableBufferPointer { dBeta in
            for ch in 0..<dGamma.count { (dGamma[ch], dBeta[ch]) = (Float(dgamma[ch]), Float(dbeta[ch])) }
        }
    }
}

/// A constructor argument of a normalization layer and the range it must be in.
enum LayerArgument {
    /// An integer argument (`channels`, `bufferSize`, `warmup`) that must be at least `minimum`.
    case count(String, Int, atLeast: Int)
    /// `ε`: finite and > 0 (`ε = 0` makes a constant set `0·(1/0)`, NaN; PyTorch's BN refuses it in training too).
    case epsilon(Float)
    /// A weight in `0...1` (`momentum`, `oldValueWeight`); `meaning` says which value it weights, in the error's
    /// expected text (`"0...1 (meaning)"`), since the layers differ.
    case fraction(String, Float, meaning: String)
    /// `normBatch`: nil (the whole batch) or at least 1.
    case normBatch(Int?)
    /// A block of `rows × columns` floats the constructor allocates (named by `what`), which must fit in this
    /// machine's memory (`MemoryLimit`); the counts are at least 1 (checked before).
    case floats(String, rows: Int, columns: Int)

    /// `channels`: at least 1.
    static func channels(_ channels: Int) -> LayerArgument { .count("channels", channels, atLeast: 1) }

    /// The per-channel vectors (`γ`, `β`, running statistics) of `channels` floats each.
    static func perChannel(_ channels: Int) -> LayerArgument {
        .floats("a per-channel vector", rows: 1, columns: channels)
    }

    /// Checks `arguments` in order.
    ///
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` naming `layer` for the first
    ///   one out of range.
    static func validate(layer: String, _ arguments: LayerArgument...) throws {
        for argument in arguments { try argument.validate(layer: layer) }
    }

    /// Throws ``NormalizationError/invalidArgument(layer:name:value:expected:)`` if the argument is out of range.
    func validate(layer: String) throws {
        switch self {
        case .count(let name, let value, let minimum):
            guard value >= minimum else {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: name, value: "\(value)", expected: "at least \(minimum)")
            }
        case .epsilon(let epsilon):
            guard epsilon > 0, epsilon.isFinite else {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: "epsilon", value: "\(epsilon)", expected: "a finite value > 0")
            }
        case .fraction(let name, let value, let meaning):
            guard (0...1).contains(value) else {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: name, value: "\(value)", expected: "0...1 (\(meaning))")
            }
        case .normBatch(let normBatch):
            if let normBatch, normBatch < 1 {
                throw NormalizationError.invalidArgument(
                    layer: layer, name: "normBatch", value: "\(normBatch)", expected: "at least 1")
            }
        case .floats(let what, let rows, let columns):
            try MemoryLimit.check(
                MemoryLimit.floatBytes(rows, columns), layer: layer,
                what: rows == 1 ? "\(what) of \(columns) floats" : "\(what) of \(rows) × \(columns) floats")
        }
    }
}

/// `"Kind(channels: C, extra…)"` with `, affine: false` when the layer has no `γ`, `β`: the layers' names.
func layerName(_ kind: String, channels: Int, _ extras: [String?] = [], affine: Bool = true) -> String {
    let parts = ["channels: \(channels)"] + extras.compactMap { $0 } + (affine ? [] : ["affine: false"])
    return "\(kind)(\(parts.joined(separator: ", ")))"
}

extension NormalizationGeometry {
    /// One set per channel over the whole batch of `x`: the geometry of a per-channel affine map (evaluation
    /// with running statistics, frozen statistics).
    static func perChannel(_ x: Tensor, channels: Int) -> NormalizationGeometry {
        NormalizationGeometry(
            layout: x.layout, batch: x.batch, channels: channels, positions: x.spatialCount,
            samplesPerSet: x.batch, channelsPerSet: 1)
    }

    /// The sets of a ghost-batched training forward over `x`: runs of `normBatch` consecutive samples (the whole
    /// batch when nil) by one channel.
    ///
    /// - Throws: ``NormalizationError/normBatchDoesNotDivide(layer:batch:normBatch:)`` naming `layer` (evaluated
    ///   only then) unless `normBatch` divides the batch, and
    ///   ``NormalizationError/tooFewValuesPerChannel(layer:valuesPerSet:)`` when a spatial dimension is 0 (no values
    ///   to take statistics from).
    static func ghostBatches(
        _ x: Tensor, channels: Int, normBatch: Int?, layer: @autoclosure () -> String
    )
        throws -> NormalizationGeometry
    {
        let k = normBatch ?? x.batch
        guard x.batch % k == 0 else {
            throw NormalizationError.normBatchDoesNotDivide(layer: layer(), batch: x.batch, normBatch: k)
        }
        guard x.spatialCount > 0 else {
            throw NormalizationError.tooFewValuesPerChannel(layer: layer(), valuesPerSet: 0)
        }
        return NormalizationGeometry(
            layout: x.layout, batch: x.batch, channels: channels, positions: x.spatialCount,
            samplesPerSet: k, channelsPerSet: 1)
    }

    /// ``ghostBatches(_:channels:normBatch:layer:)`` for a layer that normalizes by a batch variance, which needs more
    /// than one value per set.
    ///
    /// - Throws: also ``NormalizationError/tooFewValuesPerChannel(layer:valuesPerSet:)``, naming `layer` (only
    ///   evaluated then: building it allocates, and this runs every step).
    static func varianceGhostBatches(
        _ x: Tensor, channels: Int, normBatch: Int?, layer: @autoclosure () -> String
    )
        throws -> NormalizationGeometry
    {
        let g = try ghostBatches(x, channels: channels, normBatch: normBatch, layer: layer())
        guard g.elementsPerSet > 1 else {
            throw NormalizationError.tooFewValuesPerChannel(layer: layer(), valuesPerSet: g.elementsPerSet)
        }
        return g
    }
}
