import NormKit
import NormKitTraining

/// Allocation calls of the parts of a whole training step (one step, or summed over several).
struct ModelStepAllocations {
    var forward = 0
    var loss = 0
    var backward = 0
    var optimizer = 0
    var total: Int { forward + loss + backward + optimizer }
}

/// A model, its loss and optimizer, and one fixed random batch: the trainer's step without the data pipeline.
struct ModelTrainingStep {
    let model: Model
    let loss = SoftmaxCrossEntropy()
    let optimizer: SGD
    let images: Tensor
    /// Labels as the trainer holds them (`Int32`, from `BatchIterator`), passed as the slice it passes.
    let labels: [Int32]
    /// `∂loss/∂logits`, reused by every step.
    var logitsGradient = Tensor(zeros: [0, 0])

    /// `modelName` with `normalization` on a random batch of `batch` 28×28 one-channel images (Fashion-MNIST's
    /// shape) with random labels out of 10 classes.
    init(
        modelName: String, normalization: NormalizationSettings, batch: Int, seed: UInt64,
        engine: ConvolutionEngine
    ) throws {
        model = try makeModel(named: modelName, normalization: normalization, inChannels: 1, classes: 10, seed: seed)
        model.useConvolutionEngine(engine)
        optimizer = SGD(parameters: model.parameters)
        var generator = SeededGenerator(seed: seed)
        images = Tensor.randomNormal(shape: [batch, 1, 28, 28], using: &generator)
        labels = (0..<batch).map { _ in Int32.random(in: 0..<10, using: &generator) }
    }

    /// One training step: forward, loss, backward, SGD update. Returns each part's allocations.
    mutating func run() throws -> ModelStepAllocations {
        var logits: Tensor?
        var counts = ModelStepAllocations()
        counts.forward = try AllocationCounter.mallocs { logits = try model.forward(images, training: true) }
        counts.loss = try AllocationCounter.mallocs {
            _ = try loss.forward(logits: logits!, labels: labels[0..<labels.count])
            try loss.backward(into: &logitsGradient)
        }
        counts.backward = try AllocationCounter.mallocs { try model.backward(logitsGradient) }
        counts.optimizer = try AllocationCounter.mallocs { try optimizer.step(learningRate: 0.01) }
        return counts
    }

    /// Runs `warmUp` steps, then returns the allocations of `measured` more steps, by part.
    mutating func mallocs(afterWarmUp warmUp: Int, measured: Int) throws -> ModelStepAllocations {
        for _ in 0..<warmUp { _ = try run() }
        var sum = ModelStepAllocations()
        for _ in 0..<measured {
            let step = try run()
            sum.forward += step.forward
            sum.loss += step.loss
            sum.backward += step.backward
            sum.optimizer += step.optimizer
        }
        return sum
    }
}
