extension Dictionary where Key == String, Value == StateTensor {
    /// The entries under `prefix`, with the prefix and its dot removed: one layer's state dict out of a model's.
    ///
    /// `prefix` is a dotted module path (`"layer1.0.norm1"`, a trailing dot optional) and matches whole components
    /// only: `"layer1.0.norm1"` takes `layer1.0.norm1.weight` as `weight`, not `layer1.0.norm10.weight`. A key
    /// equal to the prefix itself is not taken; an empty prefix takes every entry. A prefix nothing is under gives an
    /// empty dictionary (a strict load of it then names every key the layer misses).
    ///
    /// ```swift
    /// let state = try SafeTensors.read(from: url).tensors                // a ResNet's state dict
    /// try norm.loadStateDict(state.scoped(to: "layer1.0.norm1"))        // strict: exactly that layer's keys
    /// ```
    ///
    /// ``prefixed(with:)`` is the inverse.
    public func scoped(to prefix: String) -> [String: StateTensor] {
        let path = prefix.hasSuffix(".") ? String(prefix.dropLast()) : prefix
        guard !path.isEmpty else { return self }
        let head = path + "."
        var scoped: [String: StateTensor] = [:]
        for (key, value) in self where key.count > head.count && key.hasPrefix(head) {
            scoped[String(key.dropFirst(head.count))] = value
        }
        return scoped
    }

    /// Every entry with `prefix` and a dot before its key: a layer's state dict under its name in a model's.
    ///
    /// `prefix` may end with the dot; an empty prefix changes nothing. The inverse of ``scoped(to:)``:
    /// `state.prefixed(with: p).scoped(to: p) == state` (when no key is empty).
    ///
    /// ```swift
    /// var state = model.stateDict()
    /// state.merge(norm.stateDict().prefixed(with: "layer1.0.norm1")) { _, new in new }
    /// try model.loadStateDict(state)
    /// ```
    public func prefixed(with prefix: String) -> [String: StateTensor] {
        let path = prefix.hasSuffix(".") ? String(prefix.dropLast()) : prefix
        guard !path.isEmpty else { return self }
        return Dictionary(uniqueKeysWithValues: map { (path + "." + $0.key, $0.value) })
    }
}
