/// Stochastic gradient descent with momentum and decoupled-from-nothing (L2, PyTorch-style) weight decay.
///
/// PyTorch's `torch.optim.SGD` update, per parameter: `g ← ∇ + λ·w` (when decayed), `v ← μ·v + g`,
/// `w ← w − lr·v`. By default weight decay applies to conv and linear weights only, not to normalization
/// `γ`, `β` or biases (spec §8); ``decayAllParameters`` changes that. Parameters with `isTrainable == false`
/// are left alone. Running statistics are never parameters, so the optimizer cannot touch them.
public final class SGD {
    /// The parameters, in the model's fixed order.
    public let parameters: [Parameter]
    /// `μ`.
    public var momentum: Float
    /// `λ`.
    public var weightDecay: Float
    /// Apply weight decay to every parameter rather than to weights only.
    public var decayAllParameters: Bool
    /// Velocity per parameter (saved in training checkpoints).
    public internal(set) var velocities: [[Float]]

    /// An optimizer over `parameters`.
    public init(
        parameters: [Parameter], momentum: Float = 0.9, weightDecay: Float = 5e-4,
        decayAllParameters: Bool = false
    ) {
        self.parameters = parameters
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.decayAllParameters = decayAllParameters
        velocities = parameters.map { [Float](repeating: 0, count: $0.value.count) }
    }

    /// One update with learning rate `learningRate`.
    ///
    /// A non-finite gradient is not checked here (that would read every gradient twice): it makes its weight and
    /// velocity non-finite, and the trainer's divergence check stops the run on the next loss or before the next
    /// checkpoint (`docs/RELIABILITY.md` §3).
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer `"SGD"`) for a
    ///   learning rate or ``weightDecay`` that is negative or not finite, or a ``momentum`` outside `[0, 1)` (NaN
    ///   included), before changing anything.
    public func step(learningRate: Float) throws {
        try Self.check("learningRate", learningRate, learningRate >= 0 && learningRate.isFinite, "a finite number ≥ 0")
        try Self.check("momentum", momentum, momentum >= 0 && momentum < 1, "in [0, 1)")
        try Self.check("weightDecay", weightDecay, weightDecay >= 0 && weightDecay.isFinite, "a finite number ≥ 0")
        for (index, parameter) in parameters.enumerated() where parameter.isTrainable {
            let decay = (decayAllParameters || parameter.role == .weight) ? weightDecay : 0
            let mu = momentum
            parameter.value.withUnsafeMutableBufferPointer { w in
                parameter.gradient.withUnsafeBufferPointer { g in
                    velocities[index].withUnsafeMutableBufferPointer { v in
                        for i in 0..<w.count {
                            let grad = g[i] + decay * w[i]
                            v[i] = mu * v[i] + grad
                            w[i] -= learningRate * v[i]
                        }
                    }
                }
            }
        }
    }

    private static func check(_ name: String, _ value: Float, _ valid: Bool, _ expected: String) throws {
        guard valid else {
            throw NormalizationError.invalidArgument(layer: "SGD", name: name, value: "\(value)", expected: expected)
        }
    }

    /// Restores velocities saved from an optimizer over the same parameters.
    ///
    /// - Throws: ``ModelError/unsupported(_:)`` unless `saved` has one array per parameter with its element count;
    ///   nothing changes then.
    public func loadVelocities(_ saved: [[Float]]) throws {
        guard saved.count == parameters.count,
            zip(saved, parameters).allSatisfy({ $0.count == $1.value.count })
        else {
            throw ModelError.unsupported(
                "optimizer state does not match the model: \(saved.count) velocity tensors for \(parameters.count) parameters"
            )
        }
        velocities = saved
    }
}
