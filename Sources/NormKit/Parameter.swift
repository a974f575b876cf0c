/// What a trainable tensor is, so an optimizer can treat kinds differently (for example no weight decay on
/// normalization parameters and biases).
public enum ParameterRole: String, Sendable, Codable {
    /// A convolution or linear weight.
    case weight
    /// A bias of a convolution or linear layer.
    case bias
    /// A normalization layer's per-channel scale `γ`.
    case normalizationScale
    /// A normalization layer's per-channel shift `β`.
    case normalizationShift
}

/// A trainable tensor and its gradient, shared by reference between the layer that uses it and the optimizer
/// that updates it.
///
/// Not `Sendable`: it is mutable state owned by one layer (and its optimizer), used from one task at a time.
///
/// Layers overwrite ``gradient`` in each backward (they do not accumulate). Running statistics are never
/// `Parameter`s: an optimizer cannot touch them.
public final class Parameter {
    /// The PyTorch `state_dict` name within its layer (`"weight"`, `"bias"`).
    public let name: String
    /// The tensor's shape in PyTorch's convention (`(C,)` for `γ`, `(out, in, kh, kw)` for a conv weight).
    public let shape: [Int]
    /// What the tensor is.
    public let role: ParameterRole
    /// The values, row-major in ``shape``: change them in place (`value[i] -= …`) or assign an array of the same
    /// count.
    ///
    /// - Precondition: an assigned array has the shape's element count. Layers and optimizers read the values with
    ///   unchecked pointers, so another count is a programmer error that stops the process with a message naming
    ///   the parameter (in debug and release), rather than a read past the array's end.
    public var value: [Float] {
        get { storedValue }
        set { storedValue = newValue; checkCount(storedValue.count, "values") }
        // In place, so that an optimizer's step copies nothing (a `didSet` observer made every in-place change of
        // a parameter copy its array: one allocation per parameter per step).
        _modify {
            yield &storedValue
            checkCount(storedValue.count, "values")
        }
    }
    /// `∂loss/∂value` from the last backward.
    ///
    /// - Precondition: as ``value``, an assigned array has the shape's element count.
    public var gradient: [Float] {
        get { storedGradient }
        set { storedGradient = newValue; checkCount(storedGradient.count, "gradient values") }
        _modify {
            yield &storedGradient
            checkCount(storedGradient.count, "gradient values")
        }
    }
    private var storedValue: [Float]
    private var storedGradient: [Float]
    /// The element count of ``shape``.
    private let count: Int
    /// `false` freezes the parameter (its gradient is still computed; optimizers skip it).
    public var isTrainable: Bool

    /// A parameter of `shape` filled with `value`, zero gradient.
    ///
    /// - Precondition: `value.count` is the element count of `shape` (a programmer error otherwise).
    public init(name: String, shape: [Int], role: ParameterRole, value: [Float], isTrainable: Bool = true) {
        checkPrecondition(
            value.count == shape.reduce(1, *), "Parameter \(name): \(value.count) values for shape \(shape)")
        self.name = name
        self.shape = shape
        self.role = role
        self.storedValue = value
        self.storedGradient = [Float](repeating: 0, count: value.count)
        self.count = value.count
        self.isTrainable = isTrainable
    }

    /// Stops the process unless `assigned` is the shape's element count.
    private func checkCount(_ assigned: Int, _ what: String) {
        checkPrecondition(
            assigned == count, "Parameter \(name): \(assigned) \(what) assigned to shape \(shape) (\(count) values)")
    }
}

extension Parameter: CustomStringConvertible {
    /// `"Parameter(weight, shape=[16, 1, 3, 3], requires_grad=True)"`: the name within its layer, the shape and
    /// whether it is trainable (an optimizer updates it from its gradient); `requires_grad=False` for a frozen one.
    public var description: String {
        "Parameter(\(name), shape=\(shape), requires_grad=\(isTrainable ? "True" : "False"))"
    }
}

/// One named tensor of a layer's checkpointable state, in PyTorch's `state_dict` naming and dtype.
public enum StateTensor: Equatable, Sendable {
    /// A float32 tensor (parameters and running statistics).
    case float32(shape: [Int], values: [Float])
    /// An int64 tensor (step counters such as `num_batches_tracked`).
    case int64(shape: [Int], values: [Int64])

    /// The tensor's shape.
    public var shape: [Int] {
        switch self {
        case .float32(let shape, _), .int64(let shape, _): return shape
        }
    }

    /// The values of a ``float32(shape:values:)`` tensor (row-major in ``shape``), nil for an int64 one:
    /// `layer.stateDict()["running_mean"]?.float32Values`.
    public var float32Values: [Float]? {
        guard case .float32(_, let values) = self else { return nil }
        return values
    }

    /// The values of an ``int64(shape:values:)`` tensor (a step counter such as `num_batches_tracked`), nil for a
    /// float32 one.
    public var int64Values: [Int64]? {
        guard case .int64(_, let values) = self else { return nil }
        return values
    }
}
