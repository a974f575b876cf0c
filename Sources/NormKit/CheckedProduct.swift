extension Sequence where Element == Int {
    /// The product of the elements (1 for none), or nil when a partial product overflows `Int`, for sizes that come
    /// from input — a shape in a hand-built state dict or a file, a file's dimensions, a user's image size — which
    /// must be refused with an error rather than multiplied into an overflow trap.
    package var checkedProduct: Int? {
        var product = 1
        for factor in self {
            let (next, overflow) = product.multipliedReportingOverflow(by: factor)
            if overflow { return nil }
            product = next
        }
        return product
    }
}
