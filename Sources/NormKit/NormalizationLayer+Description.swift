// `print(layer)` and `"\(layer)"` show a layer's arguments, as its errors do: `GroupNorm(channels: 64, groups: 32)`
// rather than the type's name (`NormKit.GroupNorm`).

extension BatchNorm: CustomStringConvertible {
    /// The layer's ``name``: `"BatchNorm(channels: 64)"`.
    public var description: String { name }
}

extension GroupNorm: CustomStringConvertible {
    /// The layer's ``name``: `"GroupNorm(channels: 64, groups: 32)"`.
    public var description: String { name }
}

extension BatchRenorm: CustomStringConvertible {
    /// The layer's ``name``: `"BatchRenorm(channels: 64)"`.
    public var description: String { name }
}

extension MovingAverageBatchNorm: CustomStringConvertible {
    /// The layer's ``name``: `"MovingAverageBatchNorm(channels: 64, bufferSize: 16)"`.
    public var description: String { name }
}

extension FrozenBatchNorm: CustomStringConvertible {
    /// The layer's ``name``: `"FrozenBatchNorm(channels: 64)"`.
    public var description: String { name }
}
