/// A differentiable layer of the training stack: the same shape as NormKit's ``NormalizationLayer``.
///
/// Each training forward saves what its backward needs; the backward overwrites the parameters' gradients
/// and writes `dx` into the caller's buffer (reused when its shape matches).
public protocol Layer: AnyObject {
    /// Computes the layer's output into `y`.
    func forward(_ x: Tensor, into y: inout Tensor, training: Bool) throws
    /// Backpropagates `dy` into `dx` and sets the parameters' gradients.
    func backward(_ dy: Tensor, into dx: inout Tensor) throws
    /// The trainable parameters.
    var parameters: [Parameter] { get }
    /// Checkpointable tensors in PyTorch `state_dict` naming, relative to the layer.
    func stateDict() -> [String: StateTensor]
    /// Restores what ``stateDict()`` wrote; throws and changes nothing on a missing or mis-shaped entry.
    func loadStateDict(_ state: [String: StateTensor]) throws
}
