// Evaluating a model on a test set: the results, the trainer's evaluate methods and the sums behind them.

/// Test-set results.
public struct Evaluation: Equatable, Sendable {
    /// Mean cross-entropy.
    public var loss: Double
    /// Fraction misclassified.
    public var error: Double
    /// Accuracy per class.
    public var perClassAccuracy: [Double]
    /// Number of test images.
    public var count: Int

    /// An evaluation with these values, for code that takes one (a report, an early-stopping rule) and its tests;
    /// ``Trainer/evaluate(model:on:batchSize:)`` computes real ones. The values are stored as given.
    ///
    /// - Parameters:
    ///   - loss: the mean cross-entropy.
    ///   - error: the fraction misclassified.
    ///   - perClassAccuracy: the accuracy of each class, indexed by label.
    ///   - count: the number of images evaluated.
    public init(loss: Double, error: Double, perClassAccuracy: [Double], count: Int) {
        self.loss = loss
        self.error = error
        self.perClassAccuracy = perClassAccuracy
        self.count = count
    }
}

extension Trainer {
    /// Evaluates the model on the test set (evaluation mode: running statistics, no state changes).
    public func evaluate() throws -> Evaluation {
        guard let shard = testShard else { return try Trainer.evaluate(model: model, on: test) }
        return try evaluateSharded(shard)
    }

    /// Evaluates `model` on `dataset` in batches of `batchSize`, in evaluation mode whatever the model's
    /// ``Module/training`` (which it leaves as it was).
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` for a `batchSize` below 1 or a dataset with no
    ///   images (whose error would be a meaningless 0), or the model's own error for images it cannot take
    ///   (``LayerError``, ``/NormKit/NormalizationError``: the wrong channel count, an image smaller than a window, …).
    public static func evaluate(model: Model, on dataset: Dataset, batchSize: Int = 500) throws -> Evaluation {
        guard dataset.count > 0 else {
            throw DataError.invalidArgument(
                name: "evaluation dataset", value: "0 images", expected: "at least one image to evaluate")
        }
        return try EvaluationTotals(model: model, on: dataset, batchSize: batchSize).evaluation
    }
}

/// The sums an ``Evaluation`` is made of (they add up over parts of a test set).
struct EvaluationTotals {
    /// Σ cross-entropy, misclassified images, and per class the correct predictions and the images.
    var lossSum = 0.0, wrong = 0
    var correctPerClass: [Int]
    var countPerClass: [Int]

    /// The totals of `model` on `dataset`, in batches of `batchSize`.
    init(model: Model, on dataset: Dataset, batchSize: Int) throws {
        correctPerClass = [Int](repeating: 0, count: dataset.classCount)
        countPerClass = correctPerClass
        let iterator = try BatchIterator(dataset: dataset, batchSize: batchSize, shuffle: false, dropLast: false)
        let loss = SoftmaxCrossEntropy()
        var x = Tensor(zeros: [0, 0]), labels: [Int32] = []
        while let n = iterator.next(into: &x, labels: &labels) {
            let logits = try model.forward(x, training: false)
            lossSum += Double(try loss.forward(logits: logits, labels: labels)) * Double(n)
            for i in 0..<n {
                let label = Int(labels[i])
                countPerClass[label] += 1
                if loss.predictions[i] == label { correctPerClass[label] += 1 } else { wrong += 1 }
            }
        }
    }

    /// Mean loss, error and per-class accuracy.
    var evaluation: Evaluation {
        let images = countPerClass.reduce(0, +), count = max(images, 1)
        return Evaluation(
            loss: lossSum / Double(count), error: Double(wrong) / Double(count),
            perClassAccuracy: zip(correctPerClass, countPerClass).map { $1 > 0 ? Double($0) / Double($1) : 0 },
            count: images)
    }
}
