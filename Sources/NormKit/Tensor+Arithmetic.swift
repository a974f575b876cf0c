/// Reshaping and element-wise arithmetic: what a custom forward needs between layers (a residual sum around a
/// normalization, a flatten before a linear layer) without copying through ``Tensor/withUnsafeMutableBufferPointer(_:)``.
///
/// The element-wise operations take two tensors of one shape **and** one layout (no broadcasting, no implicit
/// conversion) and throw ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)``
/// otherwise. The in-place forms (``add(_:)``, ``subtract(_:)``, ``scale(by:)``) write into the tensor's own memory
/// when nothing else shares it, so they allocate nothing in a training loop.
extension Tensor {
    /// The same elements under another shape of the same element count: PyTorch's `reshape`, over the **logical**
    /// order of `(N, C, *spatial)` (row-major: the last dimension fastest), whatever the ``layout``.
    ///
    /// - A channels-first tensor is reshaped without copying: the result shares its memory (copy-on-write), in
    ///   channels-first.
    /// - A channels-last tensor keeps its memory and layout when `newShape` keeps `N` and `C` and only regroups the
    ///   spatial dimensions (`(N, C, H, W)` → `(N, C, H·W)`: each position's channels stay together). Any other
    ///   reshape of it (a flatten `(N, C, H, W)` → `(N, C·H·W)`, as before a linear layer) takes the elements in
    ///   the logical order, channel-major as PyTorch's `x.reshape(N, -1)` on an NCHW tensor: the result is a
    ///   channels-first copy (no copy when `C = 1` or there is one position, where both orders are the same).
    ///
    /// So `x.reshaped(to: s)` has the same logical elements, in the same logical order, for `x` in either layout.
    ///
    /// As in PyTorch's `reshape`, one dimension of `newShape` may be `-1`: it is inferred from this tensor's element
    /// count and the other dimensions (`x.reshaped(to: [N, -1])` flattens each sample). Unlike PyTorch's, the
    /// result is always a `Tensor`, of rank 2 to 5 (`(N, C, *spatial)` with spatial rank 0 to 3): a shape of
    /// another rank is refused, `-1` or not.
    ///
    /// - Parameter newShape: `(N', C', *spatial')` with spatial rank 0 to 3 and as many elements as this tensor, of
    ///   which at most one dimension is `-1` (inferred).
    /// - Returns: the reshaped tensor (see above for its layout), whose ``shape`` has the inferred dimension.
    /// - Throws: ``NormalizationError/invalidArgument(layer:name:value:expected:)`` (layer
    ///   `"Tensor.reshaped(to:)"`, name `"newShape"`) for more than one `-1`, or a `-1` the other dimensions do
    ///   not determine: their product does not divide this tensor's element count, or is 0 (any size would do);
    ///   ``NormalizationError/invalidShape(layer:shape:)`` (with `newShape` as given) when `newShape` is not a
    ///   tensor shape (``isValid(shape:)``: another rank, a negative dimension other than one `-1`);
    ///   ``NormalizationError/elementCountMismatch(layer:expected:got:)`` (`expected` is `newShape`'s element
    ///   count, `got` this tensor's) when the counts differ.
    public func reshaped(to newShape: [Int]) throws -> Tensor {
        let source = "Tensor.reshaped(to:)"
        let resolved = try inferringDimension(of: newShape, source: source)
        guard Tensor.isValid(shape: resolved) else {
            throw NormalizationError.invalidShape(layer: source, shape: newShape)
        }
        let newCount = resolved.reduce(1, *)
        guard newCount == count else {
            throw NormalizationError.elementCountMismatch(layer: source, expected: newCount, got: count)
        }
        switch layout {
        case .channelsFirst:
            return Tensor(sharing: storage, shape: resolved, layout: .channelsFirst)
        case .channelsLast:
            if resolved[0] == shape[0] && resolved[1] == shape[1] {
                return Tensor(sharing: storage, shape: resolved, layout: .channelsLast)
            }
            // Both memory orders are the logical one when there is one channel or one position.
            let inLogicalOrder = channels == 1 || spatialCount == 1 ? self : converted(to: .channelsFirst)
            return Tensor(sharing: inLogicalOrder.storage, shape: resolved, layout: .channelsFirst)
        }
    }

    /// `shape` with its one `-1` replaced by the size that gives this tensor's element count; `shape` itself when
    /// it has no `-1` (or another negative dimension, which the caller refuses as an invalid shape).
    private func inferringDimension(of shape: [Int], source: String) throws -> [Int] {
        let inferred = shape.indices.filter { shape[$0] == -1 }
        guard let index = inferred.first, !shape.contains(where: { $0 < -1 }) else { return shape }
        func refuse(_ expected: String) -> NormalizationError {
            .invalidArgument(layer: source, name: "newShape", value: "\(shape)", expected: expected)
        }
        let divisor = "dimensions besides the -1 whose product divides the tensor's \(count) elements"
        guard inferred.count == 1 else {
            throw refuse("at most one -1 (the one dimension inferred from the element count), got \(inferred.count)")
        }
        guard let known = shape.enumerated().lazy.filter({ $0.offset != index }).map(\.element).checkedProduct else {
            throw refuse("\(divisor), got a product beyond Int")
        }
        guard known != 0 else { throw refuse("no 0 beside a -1 (0 elements for any size: the -1 cannot be inferred)") }
        guard count % known == 0 else { throw refuse("\(divisor), got \(known)") }
        var resolved = shape
        resolved[index] = count / known
        return resolved
    }

    /// Adds `other` element by element, in place: `self[i] += other[i]` (float32, one rounding per element).
    ///
    /// Writes into this tensor's memory when nothing else shares it (no allocation: the form for a hot loop), else
    /// into a private copy first (copy-on-write). Large tensors are split over NormKit's pool
    /// (``Parallelism/threadCount``); each element's sum is the same on any thread count.
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)``
    ///   (`layer` `"Tensor"`, `operation` `"add"`) unless `other` has this tensor's shape and layout; nothing is
    ///   changed then.
    public mutating func add(_ other: Tensor) throws {
        try checkOperand(other, operation: "add")
        combine(with: other, sign: 1)
    }

    /// Subtracts `other` element by element, in place: `self[i] -= other[i]`, as ``add(_:)`` in every other respect.
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)``
    ///   (`operation` `"subtract"`) unless `other` has this tensor's shape and layout; nothing is changed then.
    public mutating func subtract(_ other: Tensor) throws {
        try checkOperand(other, operation: "subtract")
        combine(with: other, sign: -1)
    }

    /// `self[i] += sign · other[i]` (`sign` ±1, so each element is one exact sum or difference), on the pool.
    private mutating func combine(with other: Tensor, sign: Float) {
        let count = self.count
        other.withUnsafeBufferPointer { source in
            withUnsafeMutableBufferPointer { target in
                guard let s = source.baseAddress, let t = target.baseAddress else { return }
                Parallelism.forEachRange(count: count, work: count) { range in
                    if sign > 0 {
                        for i in range { t[i] += s[i] }
                    } else {
                        for i in range { t[i] -= s[i] }
                    }
                }
            }
        }
    }

    /// The element-wise difference `self − other`, a new tensor (see ``subtract(_:)`` for the in-place form).
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)`` unless
    ///   both have one shape and layout.
    public func subtracting(_ other: Tensor) throws -> Tensor {
        var difference = self
        try difference.subtract(other)
        return difference
    }

    /// `lhs.subtracting(rhs)`.
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)`` unless
    ///   both have one shape and layout.
    public static func - (lhs: Tensor, rhs: Tensor) throws -> Tensor { try lhs.subtracting(rhs) }

    /// `lhs.subtract(rhs)`, in place.
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)`` unless
    ///   both have one shape and layout; `lhs` is unchanged then.
    public static func -= (lhs: inout Tensor, rhs: Tensor) throws { try lhs.subtract(rhs) }

    /// The element-wise sum of this tensor and `other`, a new tensor (see ``add(_:)`` for the in-place form).
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)`` unless
    ///   both have one shape and layout.
    public func adding(_ other: Tensor) throws -> Tensor {
        var sum = self
        try sum.add(other)
        return sum
    }

    /// Multiplies every element by `factor`, in place (no allocation when nothing else shares the memory).
    public mutating func scale(by factor: Float) {
        let count = self.count
        withUnsafeMutableBufferPointer { target in
            guard let t = target.baseAddress else { return }
            Parallelism.forEachRange(count: count, work: count) { range in
                for i in range { t[i] *= factor }
            }
        }
    }

    /// Every element multiplied by `factor`, a new tensor (see ``scale(by:)`` for the in-place form).
    public func scaled(by factor: Float) -> Tensor {
        var result = self
        result.scale(by: factor)
        return result
    }

    /// `lhs.adding(rhs)`.
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)`` unless
    ///   both have one shape and layout.
    public static func + (lhs: Tensor, rhs: Tensor) throws -> Tensor { try lhs.adding(rhs) }

    /// `lhs.add(rhs)`, in place.
    ///
    /// - Throws: ``NormalizationError/operandMismatch(layer:operation:left:leftLayout:right:rightLayout:)`` unless
    ///   both have one shape and layout; `lhs` is unchanged then.
    public static func += (lhs: inout Tensor, rhs: Tensor) throws { try lhs.add(rhs) }

    /// Throws unless `other` has this tensor's shape and layout.
    private func checkOperand(_ other: Tensor, operation: String) throws {
        guard other.shape == shape, other.layout == layout else {
            throw NormalizationError.operandMismatch(
                layer: "Tensor", operation: operation, left: shape, leftLayout: layout, right: other.shape,
                rightLayout: other.layout)
        }
    }
}
