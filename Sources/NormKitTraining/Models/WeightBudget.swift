import NormKit

/// The convolution and linear weights a model's constructor is about to build, counted before any layer is, so a
/// model whose weights do not fit in memory is refused at once (`MemoryLimit`) instead of building layer after layer
/// until the allocator fails. Each layer's constructor still checks its own weight; this checks their sum.
package struct WeightBudget {
    /// The bytes of the weights counted so far, nil once the count overflows `Int`.
    package var bytes: Int? = 0

    /// No weights yet, or (`bytes` nil) more than `Int` counts.
    package init(bytes: Int? = 0) { self.bytes = bytes }

    /// Adds `copies` blocks of `a·b·c·d` weights (non-negative factors).
    package mutating func add(_ a: Int, _ b: Int, _ c: Int = 1, _ d: Int = 1, copies: Int = 1) {
        guard let total = bytes, let block = MemoryLimit.floatBytes(a, b, c, d) else {
            bytes = nil
            return
        }
        let (blocks, overflow) = block.multipliedReportingOverflow(by: copies)
        let (sum, sumOverflow) = total.addingReportingOverflow(blocks)
        bytes = overflow || sumOverflow ? nil : sum
    }

    /// Throws unless the weights with their gradients (which every parameter allocates with its values) fit in this
    /// machine's memory; `model` names the model in the error.
    ///
    /// - Throws: ``/NormKit/NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)``.
    package func check(model: @autoclosure () -> String) throws {
        let doubled = bytes.flatMap { value -> Int? in
            let (twice, overflow) = value.multipliedReportingOverflow(by: 2)
            return overflow ? nil : twice
        }
        try MemoryLimit.check(
            doubled, layer: model(),
            what: "its "
                + (bytes.map { "\($0 / MemoryLayout<Float>.stride) " } ?? "")
                + "convolution and linear weights with their gradients")
    }

    /// The weights of a ResNet (``ResNet``, and ``FoldedResNet``, whose biases are not counted): the stem, per stage
    /// its first block (and projection shortcut) and `n − 1` more blocks of two `cout × cout` 3×3 convolutions, the
    /// classifier. The arguments are at least 1; a stage width that overflows gives `bytes` nil.
    package static func resNet(depth: Int, inChannels: Int, classes: Int, width: Int) -> WeightBudget {
        var budget = WeightBudget()
        let blocks = (depth - 2) / 6
        budget.add(width, inChannels, 3, 3)
        var cin = width
        for (multiple, stride) in [(1, 1), (2, 2), (4, 2)] {
            let (cout, overflow) = width.multipliedReportingOverflow(by: multiple)
            guard !overflow else { return WeightBudget(bytes: nil) }
            budget.add(cout, cin, 3, 3)
            budget.add(cout, cout, 3, 3, copies: 2 * blocks - 1)
            if stride != 1 || cin != cout { budget.add(cout, cin) }
            cin = cout
        }
        budget.add(classes, cin)
        return budget
    }

    /// The weights of a ``VGG``: two 3×3 convolutions per stage width, the classifier. The arguments are at least 1.
    package static func vgg(inChannels: Int, classes: Int, widths: [Int]) -> WeightBudget {
        var budget = WeightBudget()
        var cin = inChannels
        for width in widths {
            budget.add(width, cin, 3, 3)
            budget.add(width, width, 3, 3)
            cin = width
        }
        budget.add(classes, cin)
        return budget
    }
}
