import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// MABN in a data-parallel job (``MovingAverageBatchNorm/crossWorkerReduction``): every worker's batch is one more
/// chunk of the same sequence of iterations, so `R` workers with `k` samples each compute exactly what one MABN with
/// ghost batches of `k` computes over their concatenated samples (issue 11: "per-worker iterations as ghost
/// chunks"), and every worker keeps the same state.
final class MABNAcrossWorkersTests: XCTestCase {
    private struct Step {
        var x: Tensor
        var dy: Tensor
    }

    private struct Outcome {
        var y: [Float] = []
        var dx: [Float] = []
        var dGamma: [Float] = []
        var dBeta: [Float] = []
        var state: [String: StateTensor] = [:]
        var iterations: Int64 = 0
        var lastR: [Float] = []
    }

    /// Samples `range` of `x` as a tensor of their own, in `x`'s layout.
    private func samples(_ x: Tensor, _ range: Range<Int>) -> Tensor {
        let perSample = x.count / x.batch
        var shape = x.shape
        shape[0] = range.count
        return try! Tensor(
            shape: shape, layout: x.layout,
            values: Array(x.values[(range.lowerBound * perSample)..<(range.upperBound * perSample)]))
    }

    private func makeLayer(
        channels: Int, normBatch: Int?, parts: MovingAverageBatchNorm.Parts
    ) throws
        -> MovingAverageBatchNorm
    {
        let layer = try MovingAverageBatchNorm(
            channels: channels, bufferSize: 3, warmup: 5, normBatch: normBatch,
            parts: parts)
        layer.weight!.value = (0..<channels).map { 0.5 + Float($0) / Float(channels) }
        layer.bias!.value = (0..<channels).map { Float($0) * 0.1 - 0.2 }
        layer.activation = .silu
        return layer
    }

    /// Runs `steps` forward/backward pairs of one layer over `samples` of each step; returns its last step.
    private func train(_ layer: MovingAverageBatchNorm, _ steps: [Step], samples range: Range<Int>) throws -> Outcome {
        var y = Tensor(zeros: [0, 0]), dx = Tensor(zeros: [0, 0])
        for step in steps {
            try layer.forward(samples(step.x, range), into: &y, training: true)
            try layer.backward(samples(step.dy, range), into: &dx)
        }
        return Outcome(
            y: y.values, dx: dx.values, dGamma: layer.weight!.gradient, dBeta: layer.bias!.gradient,
            state: layer.stateDict(), iterations: layer.iterations, lastR: layer.lastR)
    }

    private func maxRelative(_ a: [Float], _ b: [Float]) -> Double {
        XCTAssertEqual(a.count, b.count)
        let scale = max(b.map { Double(abs($0)) }.max() ?? 0, 1e-30)
        return zip(a, b).map { Double(abs($0 - $1)) }.max().map { $0 / scale } ?? 0
    }

    private func floats(_ tensor: StateTensor?) -> [Float] {
        guard case .float32(_, let values)? = tensor else { return [] }
        return values
    }

    /// `workers` workers of `perWorker` samples, each split into ghost chunks of `chunk`, over `stepCount` steps,
    /// against one layer with ghost batches of `chunk` over all `workers × perWorker` samples.
    private func check(
        workers: Int, perWorker: Int, chunk: Int, stepCount: Int, parts: MovingAverageBatchNorm.Parts,
        layout: TensorLayout = .channelsFirst, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let channels = 3, batch = workers * perWorker
        var generator = SeededGenerator(seed: UInt64(workers * 100 + perWorker * 10 + chunk))
        let steps = (0..<stepCount).map { step -> Step in
            // Statistics that move from step to step (so the SMA differs from the batch statistic).
            let raw = Tensor.randomNormal(shape: [batch, channels, 2, 3], using: &generator)
            let scale = 1 + Float(step % 7) * 0.3
            let x = try! Tensor(shape: raw.shape, values: raw.values.map { $0 * scale + 0.2 })
            let dy = Tensor.randomNormal(shape: raw.shape, using: &generator)
            return Step(x: x.converted(to: layout), dy: dy.converted(to: layout))
        }
        let single = try train(
            try makeLayer(channels: channels, normBatch: chunk, parts: parts), steps,
            samples: 0..<batch)

        let group = InProcessWorkers(count: workers)
        var outcomes = [Outcome?](repeating: nil, count: workers)
        var failures = [Error?](repeating: nil, count: workers)
        let lock = NSLock()
        runConcurrently(workers) { w in
            do {
                let layer = try self.makeLayer(
                    channels: channels, normBatch: chunk == perWorker ? nil : chunk,
                    parts: parts)
                layer.crossWorkerReduction = InProcessWorkers.Handle(group, worker: w)
                let outcome = try self.train(layer, steps, samples: (w * perWorker)..<((w + 1) * perWorker))
                lock.lock(); outcomes[w] = outcome; lock.unlock()
            } catch {
                lock.lock(); failures[w] = error; lock.unlock()
            }
        }
        if let failure = failures.compactMap({ $0 }).first { throw failure }
        let results = outcomes.map { $0! }
        let label = "\(workers) workers × \(perWorker) in chunks of \(chunk), \(stepCount) steps, \(parts), \(layout)"

        XCTAssertEqual(results[0].iterations, single.iterations, label, file: file, line: line)
        XCTAssertLessThan(maxRelative(results.flatMap(\.y), single.y), 1e-5, "y, \(label)", file: file, line: line)
        XCTAssertLessThan(maxRelative(results.flatMap(\.dx), single.dx), 1e-5, "dx, \(label)", file: file, line: line)
        XCTAssertLessThan(
            maxRelative(results.flatMap(\.lastR), single.lastR), 1e-5, "r, \(label)",
            file: file, line: line)
        let dGamma = (0..<channels).map { c in results.reduce(Float(0)) { $0 + $1.dGamma[c] } }
        let dBeta = (0..<channels).map { c in results.reduce(Float(0)) { $0 + $1.dBeta[c] } }
        XCTAssertLessThan(maxRelative(dGamma, single.dGamma), 1e-5, "dγ, \(label)", file: file, line: line)
        XCTAssertLessThan(maxRelative(dBeta, single.dBeta), 1e-5, "dβ, \(label)", file: file, line: line)
        for (name, tensor) in single.state where name != "weight" && name != "bias" {
            let expected = floats(tensor)
            guard !expected.isEmpty else { continue }
            XCTAssertLessThan(
                maxRelative(floats(results[0].state[name]), expected), 1e-5, "\(name), \(label)",
                file: file, line: line)
            for result in results.dropFirst() {
                XCTAssertEqual(
                    floats(result.state[name]), floats(results[0].state[name]),
                    "workers disagree on \(name), \(label)", file: file, line: line)
            }
        }
    }

    /// Past warm-up and past the buffer's length: the SMA of both passes mixes chunks of both workers.
    func testTwoWorkersEqualGhostChunksInOneProcess() throws {
        try check(workers: 2, perWorker: 4, chunk: 4, stepCount: 9, parts: .paper)
        try check(workers: 2, perWorker: 4, chunk: 4, stepCount: 9, parts: .paper, layout: .channelsLast)
    }

    /// Three workers, each with ghost chunks of its own: worker `w`'s chunks follow worker `w − 1`'s.
    func testThreeWorkersWithGhostChunksOfTheirOwn() throws {
        try check(workers: 3, perWorker: 4, chunk: 2, stepCount: 6, parts: .paper)
    }

    /// The BN form gathers `g_B` too; with every SMA off the layer is BN per chunk.
    func testAblationPartsAcrossWorkers() throws {
        try check(workers: 2, perWorker: 2, chunk: 2, stepCount: 8, parts: .init(without: [.form]))
        try check(workers: 2, perWorker: 2, chunk: 2, stepCount: 4, parts: .batchNorm)
    }

    /// Past the renormalization threshold (`r ≠ 1` after 1,000 iterations): 2 workers × 1 chunk, 510 steps.
    func testRenormalizationAcrossWorkers() throws {
        try check(workers: 2, perWorker: 2, chunk: 2, stepCount: 510, parts: .paper)
    }

    /// A transport that fails is a thrown error naming the layer, never a trap or a hang.
    func testFailingTransportIsAnError() throws {
        final class Gone: CrossWorkerReduction {
            struct PeerGone: Error {}
            var workerIndex: Int { 0 }
            var workerCount: Int { 2 }
            func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws { throw PeerGone() }
            func allGather(_ local: UnsafeBufferPointer<Double>, into all: UnsafeMutableBufferPointer<Double>) throws {
                throw PeerGone()
            }
        }
        let layer = try makeLayer(channels: 3, normBatch: nil, parts: .paper)
        layer.crossWorkerReduction = Gone()
        var y = Tensor(zeros: [0, 0])
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [2, 3, 2, 2]), into: &y, training: true)) { error in
            guard case NormalizationError.crossWorkerReductionFailed(let name, _)? = error as? NormalizationError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(name, layer.name)
        }
    }
}
