extension Module {
    /// Restores the tree's tensors from `state` (keys as ``stateDict()`` writes them): PyTorch's
    /// `load_state_dict(state, strict=strict)`.
    ///
    /// - A strict load needs exactly the tree's keys. A non-strict one loads the keys that match, keeps the
    ///   current value of every tensor `state` lacks, ignores keys the tree does not have, and reports both.
    /// - Either way a tensor of the right name but the wrong dtype or shape throws, and so does a value a
    ///   module refuses (a negative running variance, …).
    /// - A load that throws changes nothing.
    ///
    /// - Throws: when a strict load's keys are not exactly the tree's, an error listing every missing and every
    ///   unexpected key (sorted): ``ModelError/incompatibleStateDict(missingKeys:unexpectedKeys:)`` for a ``Model``,
    ///   ``/NormKit/NormalizationError/incompatibleStateDict(layer:missingKeys:unexpectedKeys:)`` for a layer (as
    ///   NormKit's layers throw). For a tensor of the wrong dtype or shape,
    ///   ``ModelError/mismatchedTensor(name:expected:found:)`` for a model,
    ///   ``/NormKit/NormalizationError/invalidState(layer:name:reason:)`` naming the layer and the key for a layer;
    ///   or the error of the module that refused a value.
    /// - Returns: the keys the tree has and `state` lacks, and those `state` has and the tree does not (both
    ///   sorted; empty after a strict load).
    @discardableResult
    public func loadStateDict(_ state: [String: StateTensor], strict: Bool) throws -> StateDictLoadResult {
        let modules = namedModules()
        let current = stateDict()
        let missing = current.keys.filter { state[$0] == nil }.sorted()
        let unexpected = state.keys.filter { current[$0] == nil }.sorted()
        let refusal = StateRefusal(root: self, modules: modules)
        if strict, !missing.isEmpty || !unexpected.isEmpty {
            throw refusal.incompatible(missing: missing, unexpected: unexpected)
        }
        var merged = current
        for name in current.keys.sorted() {
            guard let have = state[name] else { continue }
            let want = current[name]!
            guard want.shape == have.shape, want.dtypeName == have.dtypeName, have.holdsItsShape else {
                throw refusal.mismatched(name, expected: want, found: have)
            }
            merged[name] = have
        }
        do {
            try load(merged, into: modules)
        } catch {
            try? load(current, into: modules)
            throw error
        }
        return StateDictLoadResult(missingKeys: missing, unexpectedKeys: unexpected)
    }

    /// A strict ``loadStateDict(_:strict:)``: `state` must hold exactly the tree's tensors.
    ///
    /// - Throws: as ``loadStateDict(_:strict:)``.
    public func loadStateDict(_ state: [String: StateTensor]) throws {
        try loadStateDict(state, strict: true)
    }
}

/// Hands each module its own entries of a complete, checked state dict.
private func load(_ state: [String: StateTensor], into modules: [(name: String, module: any Module)]) throws {
    for (path, module) in modules {
        let names = module.ownParameters.map(\.name) + module.ownBuffers().map(\.name)
        guard !names.isEmpty else { continue }
        var own: [String: StateTensor] = [:]
        for name in names { own[name] = state[qualified(path, name)] }
        try module.loadOwnState(own)
    }
}

/// The error a refused load throws: ``ModelError`` at a model's root, `NormalizationError` at a layer's.
private struct StateRefusal {
    let root: any Module
    let modules: [(name: String, module: any Module)]

    /// The module that owns `key` (the one whose path is the key without its last component).
    private func owner(of key: String) -> any Module {
        let path = key.split(separator: ".").dropLast().joined(separator: ".")
        return modules.first { $0.name == path }?.module ?? root
    }

    func incompatible(missing: [String], unexpected: [String]) -> Error {
        if root is Model { return ModelError.incompatibleStateDict(missingKeys: missing, unexpectedKeys: unexpected) }
        return NormalizationError.incompatibleStateDict(
            layer: root.name, missingKeys: missing, unexpectedKeys: unexpected)
    }

    func mismatched(_ key: String, expected: StateTensor, found: StateTensor) -> Error {
        let want = "\(expected.dtypeName) \(expected.shape)"
        let have =
            "\(found.dtypeName) \(found.shape)"
            + (found.holdsItsShape ? "" : " with \(found.valueCount) values")
        if root is Model { return ModelError.mismatchedTensor(name: key, expected: want, found: have) }
        return NormalizationError.invalidState(
            layer: owner(of: key).name, name: key, reason: "expected \(want), got \(have)")
    }
}

extension StateTensor {
    /// `float32` or `int64`.
    var dtypeName: String {
        if case .int64 = self { return "int64" }
        return "float32"
    }

    /// How many values the tensor carries.
    var valueCount: Int {
        switch self {
        case .float32(_, let values): return values.count
        case .int64(_, let values): return values.count
        }
    }

    /// Whether the tensor carries exactly its shape's element count (false for a shape whose product overflows:
    /// a hand-built entry's shape is input, never multiplied unchecked).
    var holdsItsShape: Bool { shape.checkedProduct == valueCount }
}
