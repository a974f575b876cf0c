// Shapes that layers keep between steps. `Tensor.prepare(shape:layout:)` takes an `[Int]`, and an array literal
// built on every call is a heap allocation per layer per step; a layer that keeps its output shape in a stored
// array and rewrites it only when a dimension changes hands the same storage over every step instead.

extension Array where Element == Int {
    /// Makes the array `[a, b]`, leaving it untouched (no allocation, no copy) when it already is.
    @inline(__always)
    mutating func setDimensions(_ a: Int, _ b: Int) {
        if count == 2 && self[0] == a && self[1] == b { return }
        self = [a, b]
    }

    /// Makes the array `[a, b, c, d]`, leaving it untouched (no allocation, no copy) when it already is.
    @inline(__always)
    mutating func setDimensions(_ a: Int, _ b: Int, _ c: Int, _ d: Int) {
        if count == 4 && self[0] == a && self[1] == b && self[2] == c && self[3] == d { return }
        self = [a, b, c, d]
    }
}
