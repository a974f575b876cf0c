// Pending: `Parameter` belongs to NormKit (the core). If the core gives it its own `description`, delete this
// file at the merge.

extension Parameter: CustomStringConvertible {
    /// `"Parameter(weight, shape=[16, 1, 3, 3], requires_grad=True)"`: the name within its layer, the shape and
    /// whether it is trainable (an optimizer updates it from its gradient); `requires_grad=False` for a frozen one.
    public var description: String {
        "Parameter(\(name), shape=\(shape), requires_grad=\(isTrainable ? "True" : "False"))"
    }
}
