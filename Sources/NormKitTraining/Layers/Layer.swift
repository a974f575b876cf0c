/// A differentiable layer of the training stack: a NormKit ``/NormKit/TensorLayer`` (the family
/// ``/NormKit/NormalizationLayer`` also belongs to) that is a ``Module`` (its parameters, state dict and printing
/// come from the module tree).
///
/// Each training forward saves what its backward needs; the backward overwrites the parameters' gradients
/// and writes `dx` into the caller's buffer (reused when its shape matches).
public protocol Layer: Module, TensorLayer {}

extension Layer {
    /// The output for `x` in a new tensor, in the layer's current mode (``Module/training``): the same as
    /// `forward(x, into: &y, training: training)`.
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        var y = Tensor(zeros: [0, 0])
        try forward(x, into: &y, training: training)
        return y
    }
}
