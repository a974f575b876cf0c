import NormKit
import XCTest
import _NormKitTestSupport

/// BatchNorm, training (whole batch and ghost batches `normBatch`) and evaluation, with and without affine,
/// forward, backward and running statistics over several steps, against the float64 reference (spec §1–2) on
/// random shapes of every spatial rank 0–3 in both layouts, plus finite differences.
final class BatchNormTests: XCTestCase {
    private let log = ErrorLog()

    override func tearDown() {
        log.report("\(name) worst relative errors")
        super.tearDown()
    }

    /// Three training steps (new x, dy each) then an eval forward; checks y, dx, dγ, dβ each step, the running
    /// mean/var after each step and the eval output, against a float64 chain started from the same state.
    private func runSteps(
        _ bn: BatchNorm, shape: [Int], layout: TensorLayout, steps: Int = 3, scale: Float = 2,
        offset: Float = 0.7, label: String, using rng: inout SeededGenerator
    ) throws {
        let (gamma, beta) = randomizeAffine(bn, using: &rng)
        let k = bn.normBatch ?? shape[0]
        var refMean = [Double](repeating: 0, count: bn.channels)
        var refVar = [Double](repeating: 1, count: bn.channels)
        for step in 0..<steps {
            let x = randomTensor(shape, scale: scale, offset: offset, using: &rng).converted(to: layout)
            let dy = randomTensor(shape, using: &rng).converted(to: layout)
            let ref = try checkTrainingStep(
                bn, sets: .batchNorm(normBatch: k), x: x, dy: dy, gamma: gamma,
                beta: beta, label: "\(label) step \(step)", log: log)
            Float64Reference.updateRunning(
                mean: &refMean, variance: &refVar, with: ref,
                momentum: Double(bn.momentum))
            let em = relativeError(bn.runningMean, refMean), ev = relativeError(bn.runningVariance, refVar)
            log.record("running_mean", em)
            log.record("running_var", ev)
            XCTAssertLessThanOrEqual(em, referenceTolerance, "running_mean \(label) step \(step)")
            XCTAssertLessThanOrEqual(ev, referenceTolerance, "running_var \(label) step \(step)")
        }
        XCTAssertEqual(bn.batchesTracked, Int64(steps))
        let x = randomTensor(shape, scale: scale, offset: offset, using: &rng).converted(to: layout)
        let refEval = Float64Reference.batchNormEval(
            RefTensor(x), runningMean: refMean, runningVariance: refVar,
            gamma: gamma, beta: beta)
        let before = (bn.runningMean, bn.runningVariance)
        let y = try bn.forward(x, training: false)
        let ee = relativeError(y, refEval)
        log.record("eval y", ee)
        XCTAssertLessThanOrEqual(ee, referenceTolerance, "eval \(label)")
        XCTAssertEqual(bn.runningMean, before.0, "eval must not touch running statistics")
        XCTAssertEqual(bn.runningVariance, before.1)
        XCTAssertEqual(bn.batchesTracked, Int64(steps))
    }

    func testMatchesFloat64ReferenceOnRandomShapes() throws {
        var rng = SeededGenerator(seed: 0xB401)
        var cases = 0, shapes: [[Int]] = []
        for rank in 0...3 {
            for trial in 0..<2 {
                let batch = [6, 4][trial]
                let channels = Int.random(in: 1...5, using: &rng)
                let spatial = randomSpatial(rank: rank, using: &rng)
                let shape = [batch, channels] + spatial
                let positions = spatial.reduce(1, *)
                shapes.append(shape)
                // Ghost batches: every divisor k of N with at least 3 values per set (a set of 2 values has
                // x̂ = ±sqrt(var/(var+ε)) and dx ∝ ε/var: pure cancellation, see testTwoValueSets).
                var normBatches: [Int?] = [nil]
                normBatches += (1..<batch).filter { batch % $0 == 0 && $0 * positions >= 3 }.map { Optional($0) }
                for layout in TensorLayout.allCases {
                    for affine in [true, false] {
                        for k in normBatches {
                            let bn = try BatchNorm(channels: channels, normBatch: k, affine: affine)
                            try runSteps(
                                bn, shape: shape, layout: layout,
                                label:
                                    "BN normBatch=\(k.map(String.init) ?? "nil") \(shape) \(layout) affine=\(affine)",
                                using: &rng)
                            cases += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(cases, 40)
        print("BatchNormTests: \(cases) random cases × 3 steps on shapes \(shapes)")
    }

    /// Shapes large enough for the multi-threaded paths (≥ 2·2¹⁵ elements per forward), positions not a multiple
    /// of 16; run with 2 and 3 threads (uneven splits).
    func testLargeShapesUseMultipleThreads() throws {
        var rng = SeededGenerator(seed: 0xB402)
        try withTwoOrThreeThreads(
            over: [([2, 64, 28, 28], nil), ([8, 32, 17, 17], 2), ([4, 16, 9, 11, 13], 2)] as [([Int], Int?)]
        ) { shape, k in
            for layout in TensorLayout.allCases {
                let bn = try BatchNorm(channels: shape[1], normBatch: k)
                try runSteps(
                    bn, shape: shape, layout: layout, steps: 2,
                    label: "BN \(shape) k=\(String(describing: k)) \(layout)",
                    using: &rng)
            }
        }
    }

    /// The Swift backward (whole batch and ghost batches) against central finite differences of `L = Σ w·y`.
    func testBackwardMatchesFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 0xB403)
        // (Several channels each: with one channel, max|dγ| is a single sum that can be 1000× smaller than
        // Σ|dy·x̂|, and float32 summation error is relative to the latter.)
        for (shape, k) in [
            ([5, 3], nil), ([6, 2], 3), ([3, 2, 5], nil), ([4, 2, 3], 2), ([2, 2, 3, 2], 1),
            ([2, 3, 2, 2, 2], nil),
        ] as [([Int], Int?)] {
            let x = randomTensor(shape, scale: 1.5, offset: -0.4, using: &rng)
            let w = randomTensor(shape, using: &rng)
            for layout in TensorLayout.allCases {
                for affine in [true, false] {
                    let bn = try BatchNorm(channels: shape[1], normBatch: k, affine: affine)
                    let (gamma, beta) = randomizeAffine(bn, using: &rng)
                    try checkFiniteDifferences(
                        bn, sets: .batchNorm(normBatch: k ?? shape[0]),
                        x: x.converted(to: layout), w: w.converted(to: layout),
                        gamma: gamma, beta: beta,
                        label: "BN \(shape) k=\(String(describing: k)) \(layout) affine=\(affine)",
                        log: log)
                }
            }
        }
    }

    /// Sets of exactly two values (the smallest BN accepts): y is still exact, and dx, which the math makes
    /// proportional to ε/var (it cancels almost completely), is checked with an absolute tolerance scaled by
    /// the size of the terms that cancel (rstd·|γ·dy|).
    func testTwoValueSets() throws {
        var rng = SeededGenerator(seed: 0xB404)
        let shape = [4, 3]
        let x = randomTensor(shape, using: &rng), dy = randomTensor(shape, using: &rng)
        let bn = try BatchNorm(channels: 3, normBatch: 2)
        let (gamma, beta) = randomizeAffine(bn, using: &rng)
        let ref = Float64Reference.forward(RefTensor(x), sets: .batchNorm(normBatch: 2), gamma: gamma, beta: beta)
        let y = try bn.forward(x, training: true)
        XCTAssertLessThanOrEqual(relativeError(y, ref.y), referenceTolerance)
        let refBack = Float64Reference.backward(
            RefTensor(x), dy: RefTensor(dy), sets: .batchNorm(normBatch: 2),
            gamma: gamma)
        let grads = try bn.backward(dy)
        let termScale = ref.rstd.max()! * RefTensor(dy).data.map(abs).max()! * 1.5
        let absErr = zip(RefTensor(grads.input).data, refBack.dx.data).map { abs($0 - $1) }.max()!
        XCTAssertLessThanOrEqual(absErr / termScale, 1e-6)
        XCTAssertLessThanOrEqual(relativeError(grads.weight!, refBack.dgamma), referenceTolerance)
        XCTAssertLessThanOrEqual(relativeError(grads.bias!, refBack.dbeta), referenceTolerance)
    }

    /// PyTorch's momentum convention (weight of the new value) and the unbiased stored variance.
    func testMomentumConventionAndState() throws {
        var rng = SeededGenerator(seed: 0xB405)
        let shape = [3, 4, 5]
        let x = randomTensor(shape, scale: 2, offset: 1, using: &rng)
        let ref = Float64Reference.forward(RefTensor(x), sets: .batchNorm(normBatch: 3), gamma: nil, beta: nil)

        let full = try BatchNorm(channels: 4, momentum: 1)
        _ = try full.forward(x, training: true)
        XCTAssertLessThanOrEqual(relativeError(full.runningMean, ref.channelMean), 1e-6)
        XCTAssertLessThanOrEqual(relativeError(full.runningVariance, ref.channelUnbiasedVariance), 1e-6)
        // Unbiased: var_B·m/(m−1), m = 15 values per channel.
        for c in 0..<4 {
            XCTAssertEqual(Double(full.runningVariance[c]), ref.variance[c] * 15 / 14, accuracy: 1e-5 * ref.variance[c])
        }

        let frozen = try BatchNorm(channels: 4, momentum: 0)
        _ = try frozen.forward(x, training: true)
        XCTAssertEqual(frozen.runningMean, [0, 0, 0, 0])
        XCTAssertEqual(frozen.runningVariance, [1, 1, 1, 1])

        let standard = try BatchNorm(channels: 4)
        XCTAssertEqual(standard.momentum, 0.1)
        _ = try standard.forward(x, training: true)
        for c in 0..<4 {
            XCTAssertEqual(Double(standard.runningMean[c]), 0.1 * ref.channelMean[c], accuracy: 1e-6)
            XCTAssertEqual(
                Double(standard.runningVariance[c]), 0.9 + 0.1 * ref.channelUnbiasedVariance[c], accuracy: 1e-6)
        }
        let state = standard.stateDict()
        XCTAssertEqual(Set(state.keys), ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"])
        XCTAssertEqual(state["num_batches_tracked"], .int64(shape: [], values: [1]))
        XCTAssertEqual(state["running_var"], .float32(shape: [4], values: standard.runningVariance))
    }

    /// Ghost batches: the running statistics are updated once per forward with the ghost batches' average
    /// (BatchNorm's documented choice), and the output of each chunk is that of a BN run on the chunk alone.
    func testGhostBatchesAreIndependentChunks() throws {
        var rng = SeededGenerator(seed: 0xB406)
        let shape = [6, 3, 4, 3]
        let x = randomTensor(shape, scale: 2, offset: 1, using: &rng), dy = randomTensor(shape, using: &rng)
        for layout in TensorLayout.allCases {
            let ghost = try BatchNorm(channels: 3, momentum: 0.3, normBatch: 2)
            randomizeAffine(ghost, using: &rng)
            let y = try ghost.forward(x.converted(to: layout), training: true)
            let dx = try ghost.backward(dy.converted(to: layout)).input
            var meanSum = [Double](repeating: 0, count: 3), varSum = meanSum
            for chunk in 0..<3 {
                let part = try BatchNorm(channels: 3, momentum: 0.3)
                part.weight!.value = ghost.weight!.value
                part.bias!.value = ghost.bias!.value
                let xc = try sliceBatch(x, from: 2 * chunk, count: 2),
                    dyc = try sliceBatch(dy, from: 2 * chunk, count: 2)
                let yc = try part.forward(xc.converted(to: layout), training: true)
                let dxc = try part.backward(dyc.converted(to: layout)).input
                XCTAssertLessThanOrEqual(
                    relativeError(RefTensor(yc).data, try sliceBatch(y, from: 2 * chunk, count: 2).values), 1e-6)
                XCTAssertLessThanOrEqual(
                    relativeError(RefTensor(dxc).data, try sliceBatch(dx, from: 2 * chunk, count: 2).values), 1e-6)
                for c in 0..<3 {
                    meanSum[c] += Double(part.runningMean[c]) / 3
                    varSum[c] += (Double(part.runningVariance[c]) - 0.7) / 3  // 0.7·1 + 0.3·v
                }
            }
            for c in 0..<3 {
                XCTAssertEqual(Double(ghost.runningMean[c]), meanSum[c], accuracy: 1e-6)
                XCTAssertEqual(Double(ghost.runningVariance[c]), 0.7 + varSum[c], accuracy: 1e-6)
            }
            XCTAssertEqual(ghost.batchesTracked, 1)
        }
    }
}

/// Samples `from ..< from + count` of `t` as a new channels-first tensor.
func sliceBatch(_ t: Tensor, from: Int, count: Int) throws -> Tensor {
    var values: [Float] = []
    for n in from..<(from + count) {
        for c in 0..<t.channels { for p in 0..<t.spatialCount { values.append(t[n, c, p]) } }
    }
    return try Tensor(shape: [count] + Array(t.shape.dropFirst()), values: values)
}
