import NormKit

/// One normalization layer configuration to check, built fresh for each memory order.
struct LayerCase: Sendable {
    /// The row label in the table.
    let label: String
    /// Builds the layer for `channels` channels.
    let make: @Sendable (_ channels: Int) throws -> NormalizationLayer

    /// Every layer NormKit ships; BN and MABN also with ghost batches / after their warm-up.
    static let all: [LayerCase] = [
        LayerCase(label: "GroupNorm (G=4)") { try GroupNorm(channels: $0, groups: 4) },
        LayerCase(label: "LayerNorm (GN, G=1)") { try GroupNorm.layerNorm(channels: $0) },
        LayerCase(label: "InstanceNorm (GN, G=C)") { try GroupNorm.instanceNorm(channels: $0) },
        LayerCase(label: "BatchNorm") { try BatchNorm(channels: $0) },
        LayerCase(label: "BatchNorm (normBatch 2)") { try BatchNorm(channels: $0, normBatch: 2) },
        LayerCase(label: "BatchRenorm") { try BatchRenorm(channels: $0) },
        // MABN uses the current batch's statistics for its first `warmup` iterations (default 100) and its
        // moving averages after: one row for each code path.
        LayerCase(label: "MovingAverageBatchNorm (S_buf 2, warm-up)") {
            try MovingAverageBatchNorm(channels: $0, bufferSize: 2)
        },
        LayerCase(label: "MovingAverageBatchNorm (S_buf 2, after warm-up)") {
            try MovingAverageBatchNorm(channels: $0, bufferSize: 2, warmup: 0)
        },
        LayerCase(label: "FrozenBatchNorm") { try FrozenBatchNorm(channels: $0) },
        // Fused activations: the forward's affine is recorded for the backward in buffers kept across steps.
        LayerCase(label: "GroupNorm (G=4) + SiLU") { try GroupNorm(channels: $0, groups: 4).activated(.silu) },
        LayerCase(label: "BatchNorm + ReLU") { try BatchNorm(channels: $0).activated(.relu) },
        LayerCase(label: "BatchRenorm + ReLU") { try BatchRenorm(channels: $0).activated(.relu) },
        LayerCase(label: "MovingAverageBatchNorm (after warm-up) + SiLU") {
            try MovingAverageBatchNorm(channels: $0, bufferSize: 2, warmup: 0).activated(.silu)
        },
        LayerCase(label: "FrozenBatchNorm + ReLU") { try FrozenBatchNorm(channels: $0).activated(.relu) },
    ]
}

/// A layer with the input, output gradient and reused output buffers of one training step and one evaluation
/// forward.
struct LayerTrainingStep {
    let layer: NormalizationLayer
    let x: Tensor
    let dy: Tensor
    /// The forward's output, reused by every step.
    var y = Tensor(zeros: [0, 0])
    /// The backward's input gradient, reused by every step.
    var dx = Tensor(zeros: [0, 0])
    /// The evaluation forward's output, reused by every step.
    var yEvaluation = Tensor(zeros: [0, 0])

    /// `layerCase`'s layer on random `x` and `dy` of `shape` (`(N, C, *spatial)`) stored in `layout`.
    init(_ layerCase: LayerCase, shape: [Int], layout: TensorLayout, seed: UInt64) throws {
        var generator = SeededGenerator(seed: seed)
        layer = try layerCase.make(shape[1])
        x = Tensor.randomNormal(shape: shape, layout: layout, mean: 0.5, standardDeviation: 2, using: &generator)
        dy = Tensor.randomNormal(shape: shape, layout: layout, using: &generator)
    }

    /// One training step of the layer, forward into ``y`` and backward into ``dx``, then an evaluation forward into
    /// ``yEvaluation`` (the running statistics' affine of BN, BRN and MABN).
    mutating func run() throws {
        try layer.forward(x, into: &y, training: true)
        try layer.backward(dy, into: &dx)
        try layer.forward(x, into: &yEvaluation, training: false)
    }

    /// Runs `warmUp` steps (which size the buffers), then returns the allocations of `measured` more steps.
    mutating func mallocs(afterWarmUp warmUp: Int, measured: Int) throws -> Int {
        for _ in 0..<warmUp { try run() }
        return try AllocationCounter.mallocs { for _ in 0..<measured { try run() } }
    }
}

extension NormalizationLayer {
    /// The layer with `activation` fused into its apply stage.
    func activated(_ activation: FusedActivation) -> Self {
        self.activation = activation
        return self
    }
}
