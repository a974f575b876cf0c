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
    public func step(learningRate: Float) {
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

    /// Restores velocities saved from an optimizer over the same parameters.
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
