import NormKit
import XCTest

/// Compiled in the Swift 6 language mode: the value types NormKit hands between tasks are `Sendable` (checked
/// here at compile time), a layer lives in an actor and is driven from many tasks, and the process-wide
/// ``Parallelism`` settings are set from concurrent tasks.

/// Compiles only for `Sendable` types.
private func requireSendable<T: Sendable>(_: T.Type) {}

/// A normalization layer owned by an actor: the pattern `NormalizationLayer`'s documentation gives for sharing one
/// layer between tasks. Each call runs a whole forward/backward pair, so pairs from different tasks never
/// interleave.
private actor NormalizationStage {
    private let layer: BatchNorm
    private(set) var steps = 0

    init(channels: Int) throws {
        layer = try BatchNorm(channels: channels, normBatch: 2)
    }

    /// One training step: forward then backward, returning `y` and the gradients.
    func trainingStep(_ x: Tensor, _ dy: Tensor) throws -> (Tensor, NormalizationGradients) {
        let y = try layer.forward(x, training: true)
        let gradients = try layer.backward(dy)
        steps += 1
        return (y, gradients)
    }

    var batchesTracked: Int64 { layer.batchesTracked }
    var state: [String: StateTensor] { layer.stateDict() }
}

final class ConcurrencyTests: XCTestCase {

    func testValueTypesAreSendable() {
        requireSendable(Tensor.self)
        requireSendable(TensorLayout.self)
        requireSendable(NormalizationGradients.self)
        requireSendable(NormalizationError.self)
        requireSendable(StateTensor.self)
        requireSendable(StateDictLoadResult.self)
        requireSendable(BatchRenorm.Schedule.self)
        requireSendable(SeededGenerator.self)
        requireSendable(ParameterRole.self)
        // A thrown error crosses task boundaries as `any Error & Sendable`.
        let error: any Error & Sendable = NormalizationError.emptyBatch(layer: "BatchNorm(channels: 1)")
        XCTAssertEqual(error.localizedDescription, "BatchNorm(channels: 1): the batch is empty (N = 0)")
    }

    /// Eight tasks drive one actor-owned BatchNorm. Training gradients depend only on `(x, dy, γ)`, so each task's
    /// result must equal a private layer's for the same inputs, and the running statistics must count 8 steps.
    func testLayerOwnedByAnActorDrivenFromManyTasks() async throws {
        let channels = 4, shape = [4, channels, 3, 3], tasks = 8
        let stage = try NormalizationStage(channels: channels)
        let results = try await withThrowingTaskGroup(of: (Int, Tensor, NormalizationGradients).self) { group in
            for task in 0..<tasks {
                group.addTask {
                    let (x, dy) = Self.inputs(task: task, shape: shape)
                    let (y, gradients) = try await stage.trainingStep(x, dy)
                    return (task, y, gradients)
                }
            }
            var all: [Int: (Tensor, NormalizationGradients)] = [:]
            for try await (task, y, gradients) in group { all[task] = (y, gradients) }
            return all
        }
        XCTAssertEqual(results.count, tasks)
        let steps = await stage.steps
        let tracked = await stage.batchesTracked
        XCTAssertEqual(steps, tasks)
        XCTAssertEqual(tracked, Int64(tasks))
        for task in 0..<tasks {
            let (x, dy) = Self.inputs(task: task, shape: shape)
            let alone = try BatchNorm(channels: channels, normBatch: 2)
            let y = try alone.forward(x, training: true)
            let gradients = try alone.backward(dy)
            let result = try XCTUnwrap(results[task])
            XCTAssertEqual(result.0.values, y.values, "task \(task): y")
            XCTAssertEqual(result.1.input.values, gradients.input.values, "task \(task): dx")
            XCTAssertEqual(result.1.weight, gradients.weight, "task \(task): dγ")
            XCTAssertEqual(result.1.bias, gradients.bias, "task \(task): dβ")
        }
        let state = await stage.state
        XCTAssertEqual(state["num_batches_tracked"], .int64(shape: [], values: [Int64(tasks)]))
    }

    /// One layer per task (the other documented pattern): no sharing, no actor.
    func testOneLayerPerTask() async throws {
        let outputs = try await withThrowingTaskGroup(of: [Float].self) { group in
            for _ in 0..<4 {
                group.addTask {
                    let norm = try GroupNorm(channels: 4, groups: 2)
                    let (x, _) = Self.inputs(task: 0, shape: [2, 4, 5])
                    return try norm.forward(x, training: false).values
                }
            }
            var all: [[Float]] = []
            for try await values in group { all.append(values) }
            return all
        }
        XCTAssertEqual(outputs.count, 4)
        XCTAssertTrue(outputs.allSatisfy { $0 == outputs[0] })
    }

    /// `Parallelism.threadCount` and `workerSpinMicroseconds` are process-wide atomics: tasks set them while layers
    /// run kernels large enough to split, and every value read back is one that some task wrote.
    func testParallelismSettingsFromConcurrentTasks() async throws {
        let savedThreads = Parallelism.threadCount, savedSpin = Parallelism.workerSpinMicroseconds
        let seen = try await withThrowingTaskGroup(of: [Int].self) { group in
            for task in 0..<8 {
                group.addTask {
                    let norm = try GroupNorm(channels: 8, groups: 4)
                    let (x, _) = Self.inputs(task: task, shape: [2, 8, 64, 64])  // 65,536 elements: threaded
                    var reads: [Int] = []
                    for step in 0..<20 {
                        Parallelism.threadCount = 1 + (task + step) % 3
                        Parallelism.workerSpinMicroseconds = (task + step) % 2 == 0 ? 0 : 50
                        reads.append(Parallelism.threadCount)
                        _ = try norm.forward(x, training: false)
                    }
                    return reads
                }
            }
            var all: [Int] = []
            for try await reads in group { all += reads }
            return all
        }
        XCTAssertEqual(seen.count, 160)
        XCTAssertTrue(seen.allSatisfy { (1...3).contains($0) }, "\(Set(seen))")
        XCTAssertTrue([0, 50].contains(Parallelism.workerSpinMicroseconds))
        // Values below the minimum are clamped, not stored.
        Parallelism.threadCount = 0
        XCTAssertEqual(Parallelism.threadCount, 1)
        Parallelism.workerSpinMicroseconds = -5
        XCTAssertEqual(Parallelism.workerSpinMicroseconds, 0)
        Parallelism.threadCount = savedThreads
        Parallelism.workerSpinMicroseconds = savedSpin
        XCTAssertEqual(Parallelism.threadCount, savedThreads)
    }

    /// Deterministic `x`, `dy` of `shape` for `task`.
    private static func inputs(task: Int, shape: [Int]) -> (Tensor, Tensor) {
        var rng = SeededGenerator(seed: 0x5E9D + UInt64(task))
        let x = Tensor.randomNormal(shape: shape, mean: Float(task), standardDeviation: 2, using: &rng)
        let dy = Tensor.randomNormal(shape: shape, using: &rng)
        return (x, dy)
    }
}
