/// What a non-strict load left out (PyTorch's `_IncompatibleKeys`).
///
/// Returned by ``NormalizationLayer/loadStateDict(_:strict:)``: with `strict: false` it lists the layer's keys
/// the state dict did not have (those kept their values) and the state dict's keys the layer does not have
/// (ignored). A strict load that returns has nothing to report: it is empty.
public struct StateDictLoadResult: Sendable, Equatable, CustomStringConvertible {
    /// The layer's keys absent from the state dict, sorted.
    public var missingKeys: [String]
    /// The state dict's keys the layer does not have, sorted.
    public var unexpectedKeys: [String]

    /// A result listing `missingKeys` and `unexpectedKeys` (each sorted here).
    public init(missingKeys: [String] = [], unexpectedKeys: [String] = []) {
        self.missingKeys = missingKeys.sorted()
        self.unexpectedKeys = unexpectedKeys.sorted()
    }

    /// Whether every key matched (nothing missing, nothing unexpected).
    public var isEmpty: Bool { missingKeys.isEmpty && unexpectedKeys.isEmpty }

    /// `"missing keys: [a, b]; unexpected keys: [c]"`, or `"all keys matched"`.
    public var description: String {
        if isEmpty { return "all keys matched" }
        return "missing keys: [\(missingKeys.joined(separator: ", "))]; "
            + "unexpected keys: [\(unexpectedKeys.joined(separator: ", "))]"
    }
}
