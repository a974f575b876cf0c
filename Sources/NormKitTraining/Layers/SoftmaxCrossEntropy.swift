import Foundation

/// Softmax followed by the cross-entropy with integer labels, averaged over the batch: PyTorch's
/// `F.cross_entropy(logits, labels)` (reduction `mean`).
///
/// The forward computes each row's log-sum-exp around the row maximum in Double (stable for any finite
/// logits), stores the probabilities and the labels, and returns the mean loss; ``backward(into:)`` writes
/// `∂loss/∂logits = (softmax − onehot) / N`. ``predictions`` and ``correctCount`` serve error counting.
/// Buffers are reused while the batch shape stays the same.
public final class SoftmaxCrossEntropy {
    /// The row-wise argmax of the last forward's logits (the first maximum on ties).
    public private(set) var predictions: [Int] = []
    /// How many ``predictions`` equal the last forward's labels.
    public private(set) var correctCount = 0

    private var probabilities: [Float] = []
    private var savedLabels: [Int] = []
    private var savedShape: [Int]?
    private var logitsShape: [Int] = []  // reused every step (see Shape+InPlace.swift)

    /// A loss with no state yet.
    public init() {}

    /// The mean cross-entropy of `logits` `(N, K)` against `labels` (`N` values in `0..<K`).
    ///
    /// - Throws: ``LayerError/wrongRank(layer:expected:shape:)``, ``/NormKit/NormalizationError/emptyBatch(layer:)``,
    ///   ``LayerError/labelCountMismatch(batch:labels:)`` or ``LayerError/labelOutOfRange(index:label:classes:)``;
    ///   nothing is changed when it throws.
    public func forward(logits: Tensor, labels: [Int]) throws -> Float {
        try crossEntropy(logits: logits, labels: labels)
    }

    /// ``forward(logits:labels:)`` for labels as ``BatchIterator`` and ``Dataset`` hold them (`Int32`): an array
    /// or a slice of one (a worker's share of a batch), with no conversion array of the caller's.
    ///
    /// - Throws: as ``forward(logits:labels:)``.
    public func forward<Labels: RandomAccessCollection>(logits: Tensor, labels: Labels) throws -> Float
    where Labels.Element == Int32, Labels.Index == Int {
        // The loop runs on the labels' memory, specialized here: called from another module this generic function
        // is not specialized, and the loop over `Labels` itself allocated 6 times per label (Benchmarks/).
        if let loss = try labels.withContiguousStorageIfAvailable({ try crossEntropy(logits: logits, labels: $0) }) {
            return loss
        }
        return try crossEntropy(logits: logits, labels: Array(labels))
    }

    /// The forward of both label types (`Int`, `Int32`: every label converts to `Int` exactly).
    private func crossEntropy<Labels: RandomAccessCollection>(logits: Tensor, labels: Labels) throws -> Float
    where Labels.Element: BinaryInteger, Labels.Index == Int {
        let layer = "SoftmaxCrossEntropy"
        guard logits.shape.count == 2 else {
            throw LayerError.wrongRank(layer: layer, expected: 2, shape: logits.shape)
        }
        let n = logits.batch, k = logits.channels
        guard n > 0 else { throw NormalizationError.emptyBatch(layer: layer) }
        guard labels.count == n else { throw LayerError.labelCountMismatch(batch: n, labels: labels.count) }
        for (i, label) in labels.enumerated() where !(0..<k).contains(Int(label)) {
            throw LayerError.labelOutOfRange(index: i, label: Int(label), classes: k)
        }
        if probabilities.count != n * k { probabilities = [Float](repeating: 0, count: n * k) }
        if predictions.count != n { predictions = [Int](repeating: 0, count: n) }
        var total = 0.0, correct = 0
        logits.withUnsafeBufferPointer { lb in
            probabilities.withUnsafeMutableBufferPointer { pb in
                for r in 0..<n {
                    let row = lb.baseAddress! + r * k, prob = pb.baseAddress! + r * k
                    var best = 0
                    for j in 1..<max(k, 1) where row[j] > row[best] { best = j }
                    let top = Double(row[best])
                    var sum = 0.0
                    for j in 0..<k { sum += Foundation.exp(Double(row[j]) - top) }
                    let logSum = top + Foundation.log(sum)
                    for j in 0..<k { prob[j] = Float(Foundation.exp(Double(row[j]) - logSum)) }
                    let label = Int(labels[labels.startIndex + r])
                    total += logSum - Double(row[label])
                    predictions[r] = best
                    if best == label { correct += 1 }
                }
            }
        }
        if savedLabels.count != n { savedLabels = [Int](repeating: 0, count: n) }
        for r in 0..<n { savedLabels[r] = Int(labels[labels.startIndex + r]) }
        logitsShape.setDimensions(n, k)
        savedShape = logitsShape
        correctCount = correct
        return Float(total / Double(n))
    }

    /// Writes `∂(mean loss)/∂logits = (softmax − onehot(label)) / N` of the last forward into `dlogits`
    /// (shape `(N, K)`, channels-first; its memory is reused when it can be). May be called more than once.
    ///
    /// - Throws: ``/NormKit/NormalizationError/backwardBeforeForward(layer:)`` before any forward.
    public func backward(into dlogits: inout Tensor) throws {
        guard let shape = savedShape else {
            throw NormalizationError.backwardBeforeForward(layer: "SoftmaxCrossEntropy")
        }
        let n = shape[0], k = shape[1], scale = 1 / Float(n)
        dlogits.prepare(shape: shape, layout: .channelsFirst)
        probabilities.withUnsafeBufferPointer { pb in
            dlogits.withUnsafeMutableBufferPointer { db in
                for i in 0..<(n * k) { db[i] = pb[i] * scale }
                for r in 0..<n { db[r * k + savedLabels[r]] -= scale }
            }
        }
    }
}
