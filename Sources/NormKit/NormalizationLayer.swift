/// The gradients a normalization backward produces.
public struct NormalizationGradients {
    /// `∂loss/∂x`, same shape and layout as the forward's input.
    public var input: Tensor
    /// `∂loss/∂γ` per channel (nil without affine parameters).
    public var weight: [Float]?
    /// `∂loss/∂β` per channel (nil without affine parameters).
    public var bias: [Float]?
}

/// The shape every NormKit normalization layer shares.
///
/// - A layer is a reference type holding its parameters (``weight`` `γ`, ``bias`` `β`, per channel), its
///   running statistics (saved with ``stateDict()``, never given to an optimizer) and what its last training
///   forward saved for the backward.
/// - `training` is an explicit argument: there is no global mode.
/// - Each training forward pairs with at most one backward; a backward without one throws
///   ``NormalizationError/backwardBeforeForward(layer:)``. The backward overwrites the parameters' gradients.
/// - Input is `(N, C, *spatial)` with spatial rank 0 to 3 in either ``TensorLayout``.
public protocol NormalizationLayer: AnyObject {
    /// A short description (`"GroupNorm(C=64, G=32)"`), used in error messages.
    var name: String { get }
    /// `C`, the number of channels the layer was built for.
    var channels: Int { get }
    /// `ε`, added to the variance inside the square root.
    var epsilon: Float { get }
    /// `γ` of shape `(C,)`, nil when built with `affine: false`.
    var weight: Parameter? { get }
    /// `β` of shape `(C,)`, nil when built with `affine: false`.
    var bias: Parameter? { get }

    /// Normalizes `x` into `y` (reusing `y`'s memory when it can). In training mode the layer uses batch
    /// statistics (as it defines them), updates its running statistics and saves what the backward needs.
    func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws

    /// Backpropagates `dy` through the last training forward into `dx`, and sets ``weight`` and ``bias``
    /// gradients.
    func backward(_ dy: Tensor, into dx: inout Tensor) throws

    /// The layer's checkpointable tensors in PyTorch `state_dict` naming (`weight`, `bias`, `running_mean`, …).
    func stateDict() -> [String: StateTensor]

    /// Restores tensors written by ``stateDict()``; throws without changing anything when an entry is missing or
    /// has the wrong shape or dtype.
    func loadStateDict(_ state: [String: StateTensor]) throws
}

extension NormalizationLayer {
    /// The trainable parameters (`γ`, `β`), empty with `affine: false`.
    public var parameters: [Parameter] { [weight, bias].compactMap { $0 } }

    /// Normalizes `x` into a new tensor.
    public func forward(_ x: Tensor, training: Bool) throws -> Tensor {
        var y = Tensor(zeros: [0, 0])
        try forward(x, into: &y, training: training)
        return y
    }

    /// Backpropagates `dy` and returns `dx`, `dγ` and `dβ`.
    public func backward(_ dy: Tensor) throws -> NormalizationGradients {
        var dx = Tensor(zeros: [0, 0])
        try backward(dy, into: &dx)
        return NormalizationGradients(input: dx, weight: weight?.gradient, bias: bias?.gradient)
    }
}

/// Shared input checks.
enum InputCheck {
    /// Throws unless `x` is `(N, C, *S)` with `N > 0` and the layer's channel count.
    static func validate(_ x: Tensor, channels: Int, layer: String) throws {
        try Tensor.validate(shape: x.shape)
        guard x.channels == channels else {
            throw NormalizationError.channelMismatch(layer: layer, expected: channels, got: x.channels)
        }
        guard x.batch > 0 else { throw NormalizationError.emptyBatch(layer: layer) }
    }

    /// Throws unless `dy` matches the saved input's shape and layout.
    static func validateGradient(_ dy: Tensor, like x: Tensor) throws {
        guard dy.shape == x.shape, dy.layout == x.layout else {
            throw NormalizationError.shapeMismatch(expected: x.shape, got: dy.shape, layout: "\(x.layout)")
        }
    }
}

/// Makes a `γ`/`β` pair for `channels` (or nil pair when `affine` is false).
func makeAffine(channels: Int, affine: Bool) -> (Parameter?, Parameter?) {
    guard affine else { return (nil, nil) }
    return (Parameter(name: "weight", shape: [channels], role: .normalizationScale,
                      value: [Float](repeating: 1, count: channels)),
            Parameter(name: "bias", shape: [channels], role: .normalizationShift,
                      value: [Float](repeating: 0, count: channels)))
}

/// Writes `dγ_c = Σ_n scale[n,c]·sumDyCentered[n,c] + Σ_n offset[n,c]·sumDy[n,c]` and `dβ_c = Σ_n sumDy[n,c]`
/// into the parameters' gradients. `scale` and `offset` are functions of (n, c); pass closures over local copies of
/// the arrays they read, not over `self` (a stored property read per element pays an exclusivity check).
func setAffineGradients(weight: Parameter?, bias: Parameter?, batch: Int, channels: Int,
                        sumDy: [Double], sumDyCentered: [Double],
                        scale: (Int, Int) -> Double, offset: (Int, Int) -> Double = { _, _ in 0 }) {
    guard let weight, let bias else { return }
    // One exclusive access per array for the whole loop (not one per element).
    weight.gradient.withUnsafeMutableBufferPointer { dGamma in
        bias.gradient.withUnsafeMutableBufferPointer { dBeta in
            for c in 0..<channels {
                var dg = 0.0, db = 0.0
                for n in 0..<batch {
                    let i = n * channels + c
                    dg += scale(n, c) * sumDyCentered[i] + offset(n, c) * sumDy[i]
                    db += sumDy[i]
                }
                dGamma[c] = Float(dg)
                dBeta[c] = Float(db)
            }
        }
    }
}
