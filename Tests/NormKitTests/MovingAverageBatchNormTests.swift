import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

// Moving Average Batch Normalization (spec section 4) against a float64 reference written here, finite
// differences during warm-up, the committed numpy trace (scripts/make_trace_fixtures.py), state round trips and
// error handling. Helpers: `VariantTestKit` (BatchRenormTests.swift).

final class MovingAverageBatchNormTests: XCTestCase {
    typealias Kit = VariantTestKit

    // MARK: float64 reference

    /// Spec section 4 in float64 over logical `(n, c, p)` arrays; each chunk of `normBatch` samples is one
    /// iteration.
    final class Reference {
        let channels: Int, bufferSize: Int, warmup: Int, momentum: Double, epsilon: Double, normBatch: Int?
        var gamma: [Double], beta: [Double]
        var running: [Double], t = 0, bufX2: [Double], bufGz: [Double]
        struct Chunk { var v: [Double], r: [Double], t: Int, useBatch: Bool }
        var chunks: [Chunk] = [], x: [Double] = [], batch = 0, positions = 0, k = 0

        init(
            channels: Int, bufferSize: Int, warmup: Int, momentum: Double = 0.98, epsilon: Double = 1e-5,
            normBatch: Int?, gamma: [Double], beta: [Double]
        ) {
            self.channels = channels
            self.bufferSize = bufferSize
            self.warmup = warmup
            self.momentum = momentum
            self.epsilon = epsilon
            self.normBatch = normBatch
            self.gamma = gamma
            self.beta = beta
            running = [Double](repeating: 1, count: channels)
            bufX2 = [Double](repeating: 0, count: bufferSize * channels)
            bufGz = bufX2
        }

        func index(_ n: Int, _ c: Int, _ p: Int) -> Int { (n * channels + c) * positions + p }

        func ringMean(_ buffer: [Double], _ c: Int) -> Double {
            (0..<bufferSize).reduce(0) { $0 + buffer[$1 * channels + c] } / Double(bufferSize)
        }

        func forward(_ x: [Double], batch: Int, positions: Int) -> [Double] {
            self.x = x
            self.batch = batch
            self.positions = positions
            k = normBatch ?? batch
            chunks = []
            var y = x
            for b in 0..<(batch / k) {
                t += 1
                let slot = t % bufferSize
                var x2 = [Double](repeating: 0, count: channels)
                for c in 0..<channels {
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions { x2[c] += x[index(n, c, p)] * x[index(n, c, p)] }
                    }
                    x2[c] /= Double(k * positions)
                    bufX2[slot * channels + c] = x2[c]
                }
                let useBatch = t <= bufferSize || t < warmup
                var chunk = Chunk(v: x2, r: [Double](repeating: 1, count: channels), t: t, useBatch: useBatch)
                for c in 0..<channels {
                    let v = useBatch ? x2[c] : ringMean(bufX2, c)
                    chunk.v[c] = v
                    if t > max(1000, warmup) {
                        chunk.r[c] = min(max((v + epsilon).squareRoot() / (running[c] + epsilon).squareRoot(), 0.2), 5)
                    }
                    running[c] = momentum * running[c] + (1 - momentum) * v
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = index(n, c, p)
                            y[i] = gamma[c] * chunk.r[c] * x[i] / (v + epsilon).squareRoot() + beta[c]
                        }
                    }
                }
                chunks.append(chunk)
            }
            return y
        }

        /// Also returns `max_c Σ|dy·r·z|` and `max_c Σ|dy|`, the magnitudes of the parameter-gradient sums.
        func backward(
            _ dy: [Double]
        )
            -> (dx: [Double], dgamma: [Double], dbeta: [Double], dgammaScale: Double, dbetaScale: Double)
        {
            var dx = dy, dgamma = [Double](repeating: 0, count: channels), dbeta = dgamma
            var dgAbs = dgamma, dbAbs = dgamma
            for (b, chunk) in chunks.enumerated() {
                let slot = chunk.t % bufferSize
                var gz = [Double](repeating: 0, count: channels)
                for c in 0..<channels {
                    let root = (chunk.v[c] + epsilon).squareRoot()
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = index(n, c, p), z = x[i] / root
                            gz[c] += dy[i] * gamma[c] * chunk.r[c] * z
                            dgamma[c] += dy[i] * chunk.r[c] * z
                            dbeta[c] += dy[i]
                            dgAbs[c] += abs(dy[i] * chunk.r[c] * z)
                            dbAbs[c] += abs(dy[i])
                        }
                    }
                    gz[c] /= Double(k * positions)
                    bufGz[slot * channels + c] = gz[c]
                }
                for c in 0..<channels {
                    let root = (chunk.v[c] + epsilon).squareRoot()
                    let psi = chunk.useBatch ? gz[c] : ringMean(bufGz, c)
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = index(n, c, p)
                            let g = dy[i] * gamma[c] * chunk.r[c], z = x[i] / root
                            dx[i] = (g - z * psi) / root
                        }
                    }
                }
            }
            return (dx, dgamma, dbeta, dgAbs.max()!, dbAbs.max()!)
        }

        func evaluate(_ x: [Double], batch: Int, positions: Int) -> [Double] {
            var y = x
            for n in 0..<batch {
                for c in 0..<channels {
                    for p in 0..<positions {
                        let i = (n * channels + c) * positions + p
                        y[i] = gamma[c] * x[i] / (running[c] + epsilon).squareRoot() + beta[c]
                    }
                }
            }
            return y
        }

        /// `y = γ·x/sqrt(mean_chunk(x²) + ε) + β`: what a warm-up forward computes, as a function to differentiate.
        static func warmupFunction(
            _ x: [Double], batch: Int, channels: Int, positions: Int, k: Int, epsilon: Double,
            gamma: [Double], beta: [Double]
        ) -> [Double] {
            var y = x
            for b in 0..<(batch / k) {
                for c in 0..<channels {
                    var x2 = 0.0
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions { let v = x[(n * channels + c) * positions + p]; x2 += v * v }
                    }
                    let root = (x2 / Double(k * positions) + epsilon).squareRoot()
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = (n * channels + c) * positions + p
                            y[i] = gamma[c] * x[i] / root + beta[c]
                        }
                    }
                }
            }
            return y
        }
    }

    /// A layer and its reference with the same γ, β and state (`iters`, buffers, running second moment).
    func makePair(
        channels: Int, bufferSize: Int, warmup: Int, normBatch: Int?, affine: Bool, iters: Int64,
        rng: inout SeededGenerator
    ) throws -> (MovingAverageBatchNorm, Reference) {
        let layer = try MovingAverageBatchNorm(
            channels: channels, bufferSize: bufferSize, warmup: warmup,
            normBatch: normBatch, affine: affine)
        let gamma = affine ? Kit.randomFloats(channels, in: 0.5...1.5, &rng) : [Float](repeating: 1, count: channels)
        let beta = affine ? Kit.randomFloats(channels, in: -0.5...0.5, &rng) : [Float](repeating: 0, count: channels)
        // Log-uniform running second moment in [1e-3, 1e3]: r is clipped at 1/5 or 5 in some channels.
        let running = (0..<channels).map { _ in
            Float(Foundation.exp(Double.random(in: Foundation.log(1e-3)...Foundation.log(1e3), using: &rng)))
        }
        let x2 =
            iters == 0
            ? [Float](repeating: 0, count: bufferSize * channels)
            : Kit.randomFloats(bufferSize * channels, in: 0.5...4, &rng)
        let gz = iters == 0 ? x2 : Kit.randomFloats(bufferSize * channels, in: -0.3...0.3, &rng)
        var state: [String: StateTensor] = [
            "running_var": .float32(shape: [channels], values: running),
            "iters": .int64(shape: [], values: [iters]),
            "buffer_x2": .float32(shape: [bufferSize, channels], values: x2),
            "buffer_gz": .float32(shape: [bufferSize, channels], values: gz),
        ]
        if affine {
            state["weight"] = .float32(shape: [channels], values: gamma)
            state["bias"] = .float32(shape: [channels], values: beta)
        }
        try layer.loadStateDict(state)
        let ref = Reference(
            channels: channels, bufferSize: bufferSize, warmup: warmup,
            epsilon: Double(layer.epsilon), normBatch: normBatch,
            gamma: gamma.map(Double.init), beta: beta.map(Double.init))
        ref.running = running.map(Double.init)
        ref.t = Int(iters)
        ref.bufX2 = x2.map(Double.init)
        ref.bufGz = gz.map(Double.init)
        return (layer, ref)
    }

    func stateOf(_ layer: MovingAverageBatchNorm) -> [String: [Double]] {
        [
            "running_var": layer.runningSecondMoment.map(Double.init), "iters": [Double(layer.iterations)],
            "buffer_x2": layer.secondMomentBuffer.map(Double.init),
            "buffer_gz": layer.backwardStatisticBuffer.map(Double.init),
        ]
    }

    // MARK: Tests

    /// Forward, backward (dx, dγ, dβ), r, the state after each step and evaluation agree with the float64
    /// reference to 1e-5 on random shapes of spatial rank 0–3, both layouts, whole and ghost batches, in three
    /// regimes: fresh (warm-up, batch statistics), a short warm-up crossing into the SMA, and iterations 999+
    /// crossing into the r phase (with random buffers and running second moments so r is clipped or free).
    func testMatchesFloat64Reference() throws {
        var rng = SeededGenerator(seed: 401)
        var worst: [String: Double] = [:]
        var rValues = 0, rNotOne = 0, rClipped = 0, smaChunks = 0
        for rank in 0...3 {
            for layout in TensorLayout.allCases {
                for ghost in [false, true] {
                    for regime in 0..<3 {
                        let channels = Int.random(in: 1...4, using: &rng)
                        let spatial = Kit.randomSpatial(rank: rank, &rng)
                        let positions = spatial.reduce(1, *)
                        // ≥ 3 values per chunk: with one value the warm-up dx is ~ε/x² (pure rounding noise).
                        let least = (3 + positions - 1) / positions
                        let k = max(Int.random(in: 1...3, using: &rng), least)
                        let batch =
                            ghost
                            ? k * Int.random(in: 2...3, using: &rng)
                            : max(Int.random(in: 1...4, using: &rng), least)
                        let bufferSize = Int.random(in: 1...4, using: &rng)
                        let (warmup, iters): (Int, Int64) = [(100, 0), (4, 1), (100, 998)][regime]
                        let affine = !(rank == 1 && ghost)
                        let (layer, ref) = try makePair(
                            channels: channels, bufferSize: bufferSize, warmup: warmup,
                            normBatch: ghost ? k : nil, affine: affine, iters: iters,
                            rng: &rng)
                        let shape = [batch, channels] + spatial
                        for step in 0..<3 {
                            let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0.2, std: 1.5, &rng)
                            let dyl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
                            let x = Kit.tensor(shape, layout, xl), dy = Kit.tensor(shape, layout, dyl)
                            let context =
                                "rank \(rank) \(layout) ghost \(ghost) regime \(regime) step \(step) shape \(shape) S \(bufferSize)"
                            let y = try layer.forward(x, training: true)
                            let yr = ref.forward(xl, batch: batch, positions: positions)
                            let rr = ref.chunks.flatMap(\.r)
                            Kit.record(&worst, "y", Kit.relErr(Kit.logical(y), yr), context)
                            Kit.record(&worst, "r", Kit.relErr(layer.lastR.map(Double.init), rr), context)
                            rValues += rr.count
                            rNotOne += rr.filter { $0 != 1 }.count
                            rClipped += rr.filter { $0 == 5 || $0 == 0.2 }.count
                            smaChunks += ref.chunks.filter { !$0.useBatch }.count
                            let grads = try layer.backward(dy)
                            let gr = ref.backward(dyl)
                            Kit.record(&worst, "dx", Kit.relErr(Kit.logical(grads.input), gr.dx), context)
                            if affine {
                                Kit.recordAffineGradients(&worst, grads, gr, context)
                            } else {
                                XCTAssertNil(grads.weight)
                            }
                            let state = stateOf(layer)
                            Kit.record(
                                &worst, "state",
                                max(
                                    Kit.relErr(state["running_var"]!, ref.running),
                                    Kit.relErr(state["buffer_x2"]!, ref.bufX2),
                                    Kit.relErr(state["buffer_gz"]!, ref.bufGz)), context)
                            XCTAssertEqual(layer.iterations, Int64(ref.t), context)
                            let ye = try layer.forward(x, training: false)
                            Kit.record(
                                &worst, "eval",
                                Kit.relErr(
                                    Kit.logical(ye),
                                    ref.evaluate(xl, batch: batch, positions: positions)),
                                context)
                        }
                    }
                }
            }
        }
        print(
            "MovingAverageBatchNorm vs float64 reference, max relative errors:", Kit.describe(worst),
            "| r ≠ 1 in \(rNotOne) of \(rValues) (clipped \(rClipped)), SMA chunks \(smaChunks)")
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-5, key) }
        XCTAssertGreaterThan(rNotOne, rClipped)
        XCTAssertGreaterThan(rClipped, 0)
        XCTAssertGreaterThan(smaChunks, 0)
    }

    /// A shape large enough for the kernels' multi-threaded paths (73,728 elements), in the SMA and r phase with
    /// ghost batches, agrees with float64 too.
    func testLargeShapeMatchesFloat64Reference() throws {
        var rng = SeededGenerator(seed: 406)
        var worst: [String: Double] = [:]
        let shape = [4, 8, 48, 48], positions = 48 * 48
        for layout in TensorLayout.allCases {
            let (layer, ref) = try makePair(
                channels: 8, bufferSize: 3, warmup: 100, normBatch: 2, affine: true,
                iters: 1500, rng: &rng)
            let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0.1, std: 1.5, &rng)
            let dyl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
            let y = try layer.forward(Kit.tensor(shape, layout, xl), training: true)
            let grads = try layer.backward(Kit.tensor(shape, layout, dyl))
            let yr = ref.forward(xl, batch: 4, positions: positions), gr = ref.backward(dyl)
            Kit.recordStep(&worst, y: y, grads, reference: yr, gr, "\(layout)")
            Kit.record(
                &worst, "state",
                max(
                    Kit.relErr(layer.secondMomentBuffer.map(Double.init), ref.bufX2),
                    Kit.relErr(layer.backwardStatisticBuffer.map(Double.init), ref.bufGz),
                    Kit.relErr(layer.runningSecondMoment.map(Double.init), ref.running)), "\(layout)")
        }
        print("MovingAverageBatchNorm on [4, 8, 48, 48], max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-5, key) }
    }

    /// During warm-up the backward is the exact gradient of `y = γ·x/sqrt(mean(x²)+ε) + β` (per chunk): compare
    /// with central finite differences of `L = Σ w·y` in float64 (dx, dγ, dβ), whole and ghost batches.
    func testWarmupBackwardMatchesFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 402)
        var worst: [String: Double] = [:]
        let cases: [([Int], Int?, TensorLayout)] = [
            ([3, 2, 4], nil, .channelsFirst), ([6, 3, 2, 2], 2, .channelsLast),
            ([4, 2], 2, .channelsFirst), ([2, 2, 2, 1, 3], 1, .channelsLast),
        ]
        for (shape, normBatch, layout) in cases {
            let channels = shape[1], batch = shape[0], positions = shape.dropFirst(2).reduce(1, *)
            let layer = try MovingAverageBatchNorm(channels: channels, bufferSize: 4, normBatch: normBatch)
            layer.weight!.value = Kit.randomFloats(channels, in: 0.5...1.5, &rng)
            layer.bias!.value = Kit.randomFloats(channels, in: -0.5...0.5, &rng)
            let gamma = layer.weight!.value.map(Double.init), beta = layer.bias!.value.map(Double.init)
            let xl = Kit.randomLogical(shape.reduce(1, *), mean: 0.3, std: 1.2, &rng)
            let wl = Kit.randomLogical(shape.reduce(1, *), mean: 0, std: 1, &rng)
            _ = try layer.forward(Kit.tensor(shape, layout, xl), training: true)
            let grads = try layer.backward(Kit.tensor(shape, layout, wl))
            let k = normBatch ?? batch, eps = Double(layer.epsilon)
            func loss(_ x: [Double], _ g: [Double], _ b: [Double]) -> Double {
                let y = Reference.warmupFunction(
                    x, batch: batch, channels: channels, positions: positions, k: k,
                    epsilon: eps, gamma: g, beta: b)
                return zip(y, wl).reduce(0) { $0 + $1.0 * $1.1 }
            }
            let h = 1e-5
            let fdx = centralDifferences(at: xl, h: h) { loss($0, gamma, beta) }
            let fdg = centralDifferences(at: gamma, h: h) { loss(xl, $0, beta) }
            let fdb = centralDifferences(at: beta, h: h) { loss(xl, gamma, $0) }
            let context = "\(shape) normBatch \(String(describing: normBatch))"
            Kit.record(&worst, "dx", Kit.relErr(Kit.logical(grads.input), fdx), context)
            Kit.record(&worst, "dgamma", Kit.relErr(grads.weight!.map(Double.init), fdg), context)
            Kit.record(&worst, "dbeta", Kit.relErr(grads.bias!.map(Double.init), fdb), context)
        }
        print(
            "MovingAverageBatchNorm warm-up backward vs finite differences, max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-4, key) }
    }

    /// 1,200 steps (whole batch: 1,200 iterations; ghost batches of 2: 3,600) on closed-form inputs whose scale
    /// drifts and spikes match the committed numpy trace: warm-up, SMA, and the r phase (r ≠ 1, sometimes
    /// clipped at 5) are all reached.
    func testMatchesCommittedTrace() throws {
        let file = try Kit.loadTrace("mabn_trace")
        XCTAssertEqual(file.runs.count, 2)
        XCTAssertTrue(file.runs.contains { $0.normBatch != nil && $0.normBatch! < $0.shape[0] })
        for run in file.runs {
            let layer = try MovingAverageBatchNorm(
                channels: run.shape[1], bufferSize: try XCTUnwrap(run.bufferSize),
                oldValueWeight: Float(run.momentum),
                warmup: try XCTUnwrap(run.warmup),
                normBatch: run.normBatch)
            var rNotOne = 0, rClipped = 0
            let worst = try Kit.replayTrace(
                run, kind: .mabn, layer: layer,
                r: {
                    let r = layer.lastR
                    rNotOne += r.filter { $0 != 1 }.count
                    rClipped += r.filter { $0 == 5 || $0 == 0.2 }.count
                    return r
                }, d: nil, state: { stateOf(layer) })
            print(
                "MovingAverageBatchNorm trace '\(run.name)', max relative errors:", Kit.describe(worst),
                "| r ≠ 1: \(rNotOne), clipped: \(rClipped) (reference: \(run.stats ?? [:]))")
            for (key, value) in worst { XCTAssertLessThanOrEqual(value, 1e-4, "\(run.name): \(key)") }
            let chunks = run.shape[0] / (run.normBatch ?? run.shape[0])
            XCTAssertEqual(layer.iterations, Int64(run.steps * chunks))
            XCTAssertEqual(rNotOne, run.stats?["rNotOne"])
            XCTAssertEqual(rClipped, run.stats?["rClipped"])
            XCTAssertGreaterThan(rClipped, 0)
            XCTAssertEqual(layer.skippedUpdates, 0)
        }
    }

    /// stateDict mid-run → a new layer → loadStateDict: the next steps (forward, backward, evaluation) are
    /// bitwise identical. A state with a wrong shape, dtype or value throws and changes nothing.
    func testStateRoundTripMidRun() throws {
        let shape = [4, 3, 2, 2]
        func make() throws -> MovingAverageBatchNorm {
            try MovingAverageBatchNorm(channels: 3, bufferSize: 4, warmup: 20, normBatch: 2)
        }
        let a = try make()
        a.weight!.value = [0.5, 1, 2]
        a.bias!.value = [0, 0.25, -1]
        for s in 1...150 {  // 300 iterations: past warm-up, SMA in both directions
            let (x, dy) = Kit.traceInputs(.mabn, step: s, shape: shape, layout: .channelsLast)
            _ = try a.forward(x, training: true)
            _ = try a.backward(dy)
        }
        let state = a.stateDict()
        XCTAssertEqual(Set(state.keys), ["weight", "bias", "running_var", "iters", "buffer_x2", "buffer_gz"])
        XCTAssertEqual(state["iters"], .int64(shape: [], values: [300]))
        XCTAssertEqual(state["buffer_x2"]?.shape, [4, 3])
        XCTAssertEqual(state["buffer_gz"]?.shape, [4, 3])
        XCTAssertEqual(state["running_var"]?.shape, [3])
        let b = try make()
        try b.loadStateDict(state)
        XCTAssertEqual(b.stateDict(), state)
        for s in 151...158 {
            let (x, dy) = Kit.traceInputs(.mabn, step: s, shape: shape, layout: .channelsLast)
            XCTAssertEqual(try a.forward(x, training: true).values, try b.forward(x, training: true).values)
            let ga = try a.backward(dy), gb = try b.backward(dy)
            XCTAssertEqual(ga.input.values, gb.input.values)
            XCTAssertEqual(ga.weight, gb.weight)
            XCTAssertEqual(ga.bias, gb.bias)
            XCTAssertEqual(try a.forward(x, training: false).values, try b.forward(x, training: false).values)
        }
        XCTAssertEqual(a.stateDict(), b.stateDict())

        let before = b.stateDict()
        Kit.assertLoadThrowsInvalidState(
            b, before,
            [
                "buffer_x2": .float32(shape: [5, 3], values: [Float](repeating: 1, count: 15)),
                "running_var": .float32(shape: [3], values: [7, 7, 7]),
            ], "buffer_x2")
        Kit.assertLoadThrowsInvalidState(
            b, before, ["buffer_gz": .float32(shape: [3, 4], values: [Float](repeating: 1, count: 12))], "buffer_gz")
        Kit.assertLoadThrowsInvalidState(b, before, ["iters": .int64(shape: [], values: [-1])], "iters")
        Kit.assertLoadThrowsInvalidState(b, before, ["iters": .float32(shape: [], values: [3])], "iters")
        Kit.assertLoadThrowsInvalidState(
            b, before, ["running_var": .float32(shape: [3], values: [1, -1, 1])], "running_var")
        Kit.assertLoadThrowsInvalidState(b, before, ["bias": .float32(shape: [2], values: [1, 1])], "bias")
        XCTAssertEqual(b.stateDict(), before)
    }

    /// An evaluation forward (of any shape) leaves every piece of state untouched: the state dict, `lastR`, the
    /// skip counter, and the pending training forward (whose backward then equals a twin's that saw no eval).
    func testEvaluationTouchesNoState() throws {
        let a = try MovingAverageBatchNorm(channels: 2, bufferSize: 3, warmup: 5, normBatch: 2)
        let b = try MovingAverageBatchNorm(channels: 2, bufferSize: 3, warmup: 5, normBatch: 2)
        var rng = SeededGenerator(seed: 403)
        for s in 1...12 {
            let (x, dy) = Kit.traceInputs(.mabn, step: s, shape: [4, 2, 3], layout: .channelsFirst)
            _ = try a.forward(x, training: true)
            _ = try b.forward(x, training: true)
            if s < 12 {
                _ = try a.backward(dy)
                _ = try b.backward(dy)
            }
        }
        let state = a.stateDict(), r = a.lastR
        for shape in [[4, 2, 3], [1, 2], [3, 2, 2, 2, 2]] {
            for layout in TensorLayout.allCases {
                let y = try a.forward(Kit.randomTensor(shape, layout, mean: 0, std: 2, &rng), training: false)
                XCTAssertEqual(y.shape, shape)
            }
        }
        XCTAssertEqual(a.stateDict(), state)
        XCTAssertEqual(a.lastR, r)
        XCTAssertEqual(a.iterations, 24)
        let (_, dy) = Kit.traceInputs(.mabn, step: 12, shape: [4, 2, 3], layout: .channelsFirst)
        let ga = try a.backward(dy), gb = try b.backward(dy)
        XCTAssertEqual(ga.input.values, gb.input.values)
        XCTAssertEqual(a.stateDict(), b.stateDict())
    }

    /// Bad input throws the specific error and changes no state.
    func testBadInputThrows() throws {
        func assertArgument(_ name: String, _ body: () throws -> MovingAverageBatchNorm) {
            XCTAssertThrowsError(try body()) { error in
                guard case NormalizationError.invalidArgument(_, let n, _, _) = error else {
                    return XCTFail("\(error)")
                }
                XCTAssertEqual(n, name)
            }
        }
        assertArgument("bufferSize") { try MovingAverageBatchNorm(channels: 2, bufferSize: 0) }
        assertArgument("bufferSize") { try MovingAverageBatchNorm(channels: 2, bufferSize: -3) }
        assertArgument("channels") { try MovingAverageBatchNorm(channels: 0, bufferSize: 2) }
        assertArgument("oldValueWeight") { try MovingAverageBatchNorm(channels: 2, bufferSize: 2, oldValueWeight: 1.5) }
        assertArgument("epsilon") { try MovingAverageBatchNorm(channels: 2, bufferSize: 2, epsilon: .nan) }
        assertArgument("warmup") { try MovingAverageBatchNorm(channels: 2, bufferSize: 2, warmup: -1) }
        assertArgument("normBatch") { try MovingAverageBatchNorm(channels: 2, bufferSize: 2, normBatch: 0) }

        let layer = try MovingAverageBatchNorm(channels: 3, bufferSize: 2, normBatch: 2)
        var rng = SeededGenerator(seed: 404)
        _ = try layer.forward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng), training: true)
        _ = try layer.backward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng))
        let before = layer.stateDict()
        XCTAssertThrowsError(try layer.backward(Tensor(zeros: [4, 3, 2]))) {
            XCTAssertEqual($0 as? NormalizationError, .backwardBeforeForward(layer: layer.name))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [4, 5, 2]), training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .channelMismatch(layer: layer.name, expected: 3, got: 5))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [4, 5, 2]), training: false)) {
            XCTAssertEqual($0 as? NormalizationError, .channelMismatch(layer: layer.name, expected: 3, got: 5))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [5, 3, 2]), training: true)) {
            XCTAssertEqual(
                $0 as? NormalizationError, .normBatchDoesNotDivide(layer: layer.name, batch: 5, normBatch: 2))
        }
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [0, 3, 2]), training: true)) {
            XCTAssertEqual($0 as? NormalizationError, .emptyBatch(layer: layer.name))
        }
        XCTAssertEqual(layer.stateDict(), before)
        XCTAssertEqual(layer.iterations, 2)
        // A gradient of the wrong shape keeps the pending forward (and the buffers) as they were.
        _ = try layer.forward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng), training: true)
        let pending = layer.stateDict()
        XCTAssertThrowsError(try layer.backward(Tensor(zeros: [4, 3, 2], layout: .channelsLast))) {
            guard case NormalizationError.shapeMismatch = $0 else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(layer.stateDict(), pending)
        XCTAssertNoThrow(try layer.backward(Tensor(zeros: [4, 3, 2])))
    }

    /// A chunk with a non-finite value writes neither its ring slot nor the EMA (counted in skippedUpdates); the
    /// other chunks of the same forward update as usual.
    func testNonFiniteChunkIsSkipped() throws {
        let layer = try MovingAverageBatchNorm(channels: 2, bufferSize: 4, warmup: 2, normBatch: 2)
        var rng = SeededGenerator(seed: 405)
        for _ in 0..<3 {
            _ = try layer.forward(Kit.randomTensor([4, 2, 3], .channelsFirst, mean: 0, std: 1, &rng), training: true)
            _ = try layer.backward(Kit.randomTensor([4, 2, 3], .channelsFirst, mean: 0, std: 1, &rng))
        }
        let buffer = layer.secondMomentBuffer, t = layer.iterations  // 6
        var xl = Kit.randomLogical(24, mean: 0, std: 1, &rng)
        xl[5] = .nan  // sample 0, channel 1: chunk 0 (t = 7)
        _ = try layer.forward(Kit.tensor([4, 2, 3], .channelsFirst, xl), training: true)
        XCTAssertEqual(layer.skippedUpdates, 1)
        XCTAssertEqual(layer.iterations, t + 2)
        let slot7 = Int((t + 1) % 4), slot8 = Int((t + 2) % 4)
        XCTAssertEqual(
            Array(layer.secondMomentBuffer[(slot7 * 2)..<(slot7 * 2 + 2)]),
            Array(buffer[(slot7 * 2)..<(slot7 * 2 + 2)]))
        for c in 0..<2 {  // chunk 1 = samples 2, 3
            var x2 = 0.0
            for n in 2..<4 { for p in 0..<3 { x2 += xl[(n * 2 + c) * 3 + p] * xl[(n * 2 + c) * 3 + p] } }
            XCTAssertEqual(Double(layer.secondMomentBuffer[slot8 * 2 + c]), x2 / 6, accuracy: 1e-6 * x2)
        }
        XCTAssertTrue(layer.runningSecondMoment.allSatisfy(\.isFinite))
        XCTAssertTrue(layer.secondMomentBuffer.allSatisfy(\.isFinite))
        _ = try layer.backward(Kit.randomTensor([4, 2, 3], .channelsFirst, mean: 0, std: 1, &rng))
        XCTAssertEqual(layer.skippedUpdates, 2)  // chunk 0's Ψ is NaN too
        XCTAssertTrue(layer.backwardStatisticBuffer.allSatisfy(\.isFinite))
    }
}
