// Pending: the core (NormKit) defines this same struct; the lead deletes this file at the merge.

/// What a non-strict `loadStateDict(_:strict:)` did not match: PyTorch's `_IncompatibleKeys`.
public struct StateDictLoadResult: Sendable, Equatable, CustomStringConvertible {
    /// Keys the module has and the state dict lacks (their tensors kept their values).
    public var missingKeys: [String]
    /// Keys the state dict has and the module does not (ignored).
    public var unexpectedKeys: [String]

    /// A result with these keys.
    public init(missingKeys: [String] = [], unexpectedKeys: [String] = []) {
        self.missingKeys = missingKeys
        self.unexpectedKeys = unexpectedKeys
    }

    /// Whether every key matched.
    public var isEmpty: Bool { missingKeys.isEmpty && unexpectedKeys.isEmpty }

    /// `"all keys matched"`, or the missing and unexpected keys.
    public var description: String {
        if isEmpty { return "all keys matched" }
        return "missing keys: [\(missingKeys.joined(separator: ", "))]; "
            + "unexpected keys: [\(unexpectedKeys.joined(separator: ", "))]"
    }
}
