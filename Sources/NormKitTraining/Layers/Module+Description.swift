import Foundation

extension Module {
    /// The tree as PyTorch prints a module: a leaf's ``summary``, or a container's kind followed by one
    /// `(name): …` line per child, nested and indented by two spaces:
    ///
    /// ```
    /// BasicBlock(
    ///   (conv1): Conv2d(16, 32, kernel_size=3, stride=2, padding=1, bias=False)
    ///   (norm1): GroupNorm(16, 32)
    ///   …
    /// )
    /// ```
    public var description: String {
        let children = self.children
        guard !children.isEmpty else { return summary }
        var lines = [summary + "("]
        for (name, child) in children {
            let text = child.description.replacingOccurrences(of: "\n", with: "\n  ")
            lines.append("  (\(name)): \(text)")
        }
        lines.append(")")
        return lines.joined(separator: "\n")
    }
}
