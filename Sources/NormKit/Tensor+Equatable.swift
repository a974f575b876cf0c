extension Tensor: Equatable {
    /// Whether `a` and `b` have the same shape, the same layout and equal elements in memory order, compared as
    /// `[Float]` compares them (a NaN equals nothing, `-0.0 == 0.0`).
    ///
    /// The layout is part of the value: a tensor and its ``converted(to:)`` copy in the other layout are not equal
    /// (compare `a.converted(to: b.layout) == b`). Reads each element once, with no allocation.
    public static func == (a: Tensor, b: Tensor) -> Bool {
        guard a.shape == b.shape, a.layout == b.layout else { return false }
        return a.withUnsafeBufferPointer { x in b.withUnsafeBufferPointer { y in x.elementsEqual(y) } }
    }
}
