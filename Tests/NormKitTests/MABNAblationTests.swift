import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

// The MABN ablation switches (`MovingAverageBatchNorm.Parts`): every combination against a float64 reference of
// its exact formulas, the default bit-identical to the layer before the switches existed, finite differences
// where the gradient is exact, and the BN form with every part off against BatchNorm's training step.

final class MABNAblationTests: XCTestCase {
    typealias Kit = VariantTestKit

    /// FNV-1a over the bit patterns of everything a run of training and evaluation steps produces: outputs,
    /// input and parameter gradients, `r`, and the state dict after each step (keys sorted).
    static func traceHash(_ make: () throws -> MovingAverageBatchNorm) throws -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ values: [Float]) {
            for v in values {
                hash = (hash ^ UInt64(v.bitPattern)) &* 0x100_0000_01b3
            }
        }
        for (startIteration, layout) in [(Int64(0), TensorLayout.channelsFirst), (995, .channelsLast)] {
            let layer = try make()
            if startIteration > 0 {
                var state = layer.stateDict()
                state["iters"] = .int64(shape: [], values: [startIteration])
                state["running_var"] = .float32(shape: [3], values: [0.01, 1, 300])
                try layer.loadStateDict(state)
            }
            for s in 0..<24 {
                let (x, dy) = Kit.traceInputs(.mabn, step: s, shape: [4, 3, 5], layout: layout)
                let y = try layer.forward(x, training: true)
                let dx = try layer.backward(dy)
                mix(y.values)
                mix(dx.input.values)
                mix(dx.weight ?? [])
                mix(dx.bias ?? [])
                mix(layer.lastR)
                let state = layer.stateDict()
                for key in state.keys.sorted() {
                    if case .float32(_, let values) = state[key]! { mix(values) }
                }
                if s % 5 == 0 { mix(try layer.forward(x, training: false).values) }
            }
        }
        return hash
    }

    /// The default (the paper's MABN), and `parts: .paper` spelled out, compute bit for bit what the layer
    /// computed before it had switches: the hash was recorded from that layer (commit 928e28b) over the same
    /// trace (warm-up, SMA, and the `r` phase with `r` clipped and free), and recorded again (the layer's code
    /// unchanged) when the native channels-last kernels replaced the Swift loops behind its channels-last half:
    /// 0x13d0526bc39ad34a before, with the AVX-512 kernels.
    func testDefaultIsBitIdenticalToThePaperLayer() throws {
        let recorded: UInt64 = 0xee69_0e6d_2db9_24f8
        let hash = try Self.traceHash {
            try MovingAverageBatchNorm(channels: 3, bufferSize: 4, warmup: 3, normBatch: 2)
        }
        XCTAssertEqual(String(hash, radix: 16), String(recorded, radix: 16))
        let explicit = try Self.traceHash {
            try MovingAverageBatchNorm(channels: 3, bufferSize: 4, warmup: 3, normBatch: 2, parts: .paper)
        }
        XCTAssertEqual(explicit, recorded)
        // Any switch changes the trace (the hash sees every part).
        for parts in [
            MovingAverageBatchNorm.Parts(secondMomentForm: false), .init(forwardSMA: false),
            .init(backwardSMA: false), .init(renormalization: false),
        ] {
            let other = try Self.traceHash {
                try MovingAverageBatchNorm(channels: 3, bufferSize: 4, warmup: 3, normBatch: 2, parts: parts)
            }
            XCTAssertNotEqual(other, recorded, "\(parts)")
        }
    }

    // MARK: float64 reference

    /// Spec section 4 with `Parts` in float64 over logical `(n, c, p)` arrays, each chunk of `normBatch` samples
    /// one iteration; the BN form as documented on `MovingAverageBatchNorm.Parts`. A value type: a copy is an
    /// independent layer state (finite differences evaluate copies).
    struct Reference {
        let channels: Int, bufferSize: Int, warmup: Int, keep: Double, epsilon: Double, normBatch: Int?
        let parts: MovingAverageBatchNorm.Parts
        var gamma: [Double], beta: [Double]
        var running: [Double], runningMean: [Double], t = 0
        var bufX2: [Double], bufGz: [Double], bufMean: [Double], bufG: [Double]
        struct Chunk { var v: [Double], mu: [Double], r: [Double], t: Int }
        var chunks: [Chunk] = [], x: [Double] = [], batch = 0, positions = 0, k = 0

        init(
            channels: Int, bufferSize: Int, warmup: Int, normBatch: Int?, parts: MovingAverageBatchNorm.Parts,
            gamma: [Double], beta: [Double]
        ) {
            self.channels = channels; self.bufferSize = bufferSize; self.warmup = warmup; self.keep = 0.98
            self.epsilon = 1e-5; self.normBatch = normBatch; self.parts = parts
            self.gamma = gamma; self.beta = beta
            running = [Double](repeating: 1, count: channels)
            runningMean = [Double](repeating: 0, count: channels)
            bufX2 = [Double](repeating: 0, count: bufferSize * channels)
            bufGz = bufX2; bufMean = bufX2; bufG = bufX2
        }

        var meanForm: Bool { !parts.secondMomentForm }
        func index(_ n: Int, _ c: Int, _ p: Int) -> Int { (n * channels + c) * positions + p }
        func ringMean(_ buffer: [Double], _ c: Int) -> Double {
            (0..<bufferSize).reduce(0) { $0 + buffer[$1 * channels + c] } / Double(bufferSize)
        }
        func usesBatch(_ t: Int, sma: Bool) -> Bool { !sma || t <= bufferSize || t < warmup }

        mutating func forward(_ x: [Double], batch: Int, positions: Int) -> [Double] {
            self.x = x; self.batch = batch; self.positions = positions
            k = normBatch ?? batch
            chunks = []
            var y = x
            let count = Double(k * positions)
            for b in 0..<(batch / k) {
                t += 1
                let slot = t % bufferSize, useBatch = usesBatch(t, sma: parts.forwardSMA)
                var chunk = Chunk(v: [], mu: [], r: [], t: t)
                for c in 0..<channels {
                    var m = 0.0, x2 = 0.0, variance = 0.0
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions { m += x[index(n, c, p)]; x2 += x[index(n, c, p)] * x[index(n, c, p)] }
                    }
                    m /= count; x2 /= count
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions { variance += (x[index(n, c, p)] - m) * (x[index(n, c, p)] - m) }
                    }
                    variance /= count
                    bufX2[slot * channels + c] = meanForm ? variance : x2
                    if meanForm { bufMean[slot * channels + c] = m }
                    let v = useBatch ? (meanForm ? variance : x2) : ringMean(bufX2, c)
                    let mu = meanForm ? (useBatch ? m : ringMean(bufMean, c)) : 0
                    var r = 1.0
                    if parts.renormalization && t > max(1000, warmup) {
                        r = min(max((v + epsilon).squareRoot() / (running[c] + epsilon).squareRoot(), 0.2), 5)
                    }
                    running[c] = keep * running[c] + (1 - keep) * v
                    if meanForm { runningMean[c] = keep * runningMean[c] + (1 - keep) * mu }
                    chunk.v.append(v); chunk.mu.append(mu); chunk.r.append(r)
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = index(n, c, p)
                            y[i] = gamma[c] * r * (x[i] - mu) / (v + epsilon).squareRoot() + beta[c]
                        }
                    }
                }
                chunks.append(chunk)
            }
            return y
        }

        /// Also returns `termScale`, the largest `(|g| + |ḡ| + |x̂·Ψ̄|)/sqrt(v+ε)`: dx is a difference of such
        /// terms, which cancel exactly for a chunk of two values with batch statistics (then dx is rounding noise).
        mutating func backward(_ dy: [Double]) -> (dx: [Double], dgamma: [Double], dbeta: [Double], termScale: Double) {
            var dx = dy, dgamma = [Double](repeating: 0, count: channels), dbeta = dgamma, termScale = 0.0
            let count = Double(k * positions)
            for (b, chunk) in chunks.enumerated() {
                let slot = chunk.t % bufferSize, useBatch = usesBatch(chunk.t, sma: parts.backwardSMA)
                for c in 0..<channels {
                    let root = (chunk.v[c] + epsilon).squareRoot()
                    var psi = 0.0, gMean = 0.0
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = index(n, c, p), xh = (x[i] - chunk.mu[c]) / root, g = dy[i] * gamma[c] * chunk.r[c]
                            psi += g * xh; gMean += g
                            dgamma[c] += dy[i] * chunk.r[c] * xh
                            dbeta[c] += dy[i]
                        }
                    }
                    bufGz[slot * channels + c] = psi / count
                    if meanForm { bufG[slot * channels + c] = gMean / count }
                }
                for c in 0..<channels {
                    let root = (chunk.v[c] + epsilon).squareRoot()
                    let psi = useBatch ? bufGz[slot * channels + c] : ringMean(bufGz, c)
                    let gBar = meanForm ? (useBatch ? bufG[slot * channels + c] : ringMean(bufG, c)) : 0
                    for n in (b * k)..<((b + 1) * k) {
                        for p in 0..<positions {
                            let i = index(n, c, p), xh = (x[i] - chunk.mu[c]) / root, g = dy[i] * gamma[c] * chunk.r[c]
                            dx[i] = (g - gBar - xh * psi) / root
                            termScale = max(termScale, (abs(g) + abs(gBar) + abs(xh * psi)) / root)
                        }
                    }
                }
            }
            return (dx, dgamma, dbeta, termScale)
        }

        func evaluate(_ x: [Double], batch: Int, positions: Int) -> [Double] {
            var y = x
            for n in 0..<batch {
                for c in 0..<channels {
                    for p in 0..<positions {
                        let i = (n * channels + c) * positions + p, mu = meanForm ? runningMean[c] : 0
                        y[i] = gamma[c] * (x[i] - mu) / (running[c] + epsilon).squareRoot() + beta[c]
                    }
                }
            }
            return y
        }
    }

    /// All sixteen combinations of the layer's four switches.
    static var allParts: [MovingAverageBatchNorm.Parts] {
        (0..<16).map { bits in
            MovingAverageBatchNorm.Parts(
                secondMomentForm: bits & 1 != 0, forwardSMA: bits & 2 != 0,
                backwardSMA: bits & 4 != 0, renormalization: bits & 8 != 0)
        }
    }

    /// A layer and its reference with the same γ, β and state; with `iters > 0` random buffers and running
    /// statistics (log-uniform running variance, so `r` is clipped in some channels).
    func makePair(
        parts: MovingAverageBatchNorm.Parts, channels: Int, bufferSize: Int, warmup: Int, normBatch: Int?,
        iters: Int64, rng: inout SeededGenerator
    ) throws -> (MovingAverageBatchNorm, Reference) {
        let layer = try MovingAverageBatchNorm(
            channels: channels, bufferSize: bufferSize, warmup: warmup,
            normBatch: normBatch, parts: parts)
        let gamma = Kit.randomFloats(channels, in: 0.5...1.5, &rng),
            beta = Kit.randomFloats(channels, in: -0.5...0.5, &rng)
        var ref = Reference(
            channels: channels, bufferSize: bufferSize, warmup: warmup, normBatch: normBatch,
            parts: parts, gamma: gamma.map(Double.init), beta: beta.map(Double.init))
        var state = layer.stateDict()
        state["weight"] = .float32(shape: [channels], values: gamma)
        state["bias"] = .float32(shape: [channels], values: beta)
        if iters > 0 {
            let shape = [bufferSize, channels]
            let running = (0..<channels).map { _ in Float(Foundation.exp(Double.random(in: -7...7, using: &rng))) }
            let x2 = Kit.randomFloats(bufferSize * channels, in: 0.5...4, &rng)
            let gz = Kit.randomFloats(bufferSize * channels, in: -0.3...0.3, &rng)
            state["iters"] = .int64(shape: [], values: [iters])
            state["running_var"] = .float32(shape: [channels], values: running)
            state["buffer_x2"] = .float32(shape: shape, values: x2)
            state["buffer_gz"] = .float32(shape: shape, values: gz)
            ref.t = Int(iters); ref.running = running.map(Double.init)
            ref.bufX2 = x2.map(Double.init); ref.bufGz = gz.map(Double.init)
            if !parts.secondMomentForm {
                let rm = Kit.randomFloats(channels, in: -1...1, &rng)
                let bm = Kit.randomFloats(bufferSize * channels, in: -1...1, &rng)
                let bg = Kit.randomFloats(bufferSize * channels, in: -0.3...0.3, &rng)
                state["running_mean"] = .float32(shape: [channels], values: rm)
                state["buffer_mean"] = .float32(shape: shape, values: bm)
                state["buffer_g"] = .float32(shape: shape, values: bg)
                ref.runningMean = rm.map(Double.init); ref.bufMean = bm.map(Double.init); ref.bufG = bg.map(Double.init)
            }
        }
        try layer.loadStateDict(state)
        return (layer, ref)
    }

    func referenceState(_ ref: Reference) -> [String: [Double]] {
        var state = [
            "running_var": ref.running, "buffer_x2": ref.bufX2, "buffer_gz": ref.bufGz,
            "iters": [Double(ref.t)],
        ]
        if ref.meanForm {
            state["running_mean"] = ref.runningMean; state["buffer_mean"] = ref.bufMean; state["buffer_g"] = ref.bufG
        }
        return state
    }

    func layerState(_ layer: MovingAverageBatchNorm) -> [String: [Double]] {
        var state: [String: [Double]] = [:]
        for (key, value) in layer.stateDict() where key != "weight" && key != "bias" {
            switch value {
            case .float32(_, let values): state[key] = values.map(Double.init)
            case .int64(_, let values): state[key] = values.map(Double.init)
            }
        }
        return state
    }

    // MARK: Tests

    /// Every combination of the four switches: forward, backward (dx, dγ, dβ), the state after each step and
    /// evaluation agree with the float64 reference on random shapes, both layouts, whole and ghost batches, from a
    /// fresh layer across warm-up into the SMA, and from iteration 995 across the `r` threshold.
    func testEveryCombinationMatchesFloat64Reference() throws {
        var rng = SeededGenerator(seed: 1201)
        var worst: [String: Double] = [:]
        for parts in Self.allParts {
            for (trial, iters) in [Int64(0), 0, 995, 995].enumerated() {
                let channels = Int.random(in: 1...4, using: &rng), bufferSize = Int.random(in: 1...4, using: &rng)
                let spatial = Kit.randomSpatial(rank: Int.random(in: 0...2, using: &rng), &rng)
                let layout: TensorLayout = trial % 2 == 0 ? .channelsFirst : .channelsLast
                let normBatch: Int? = trial < 2 ? nil : 2
                let batch = 4, shape = [batch, channels] + spatial, positions = spatial.reduce(1, *)
                var (layer, ref) = try makePair(
                    parts: parts, channels: channels, bufferSize: bufferSize, warmup: 3,
                    normBatch: normBatch, iters: iters, rng: &rng)
                for step in 0..<9 {
                    let context = "\(parts) trial \(trial) step \(step)"
                    let xs = Kit.randomLogical(shape.reduce(1, *), mean: 0.4, std: 1.5, &rng)
                    let dys = Kit.randomLogical(xs.count, mean: 0.1, std: 1, &rng)
                    let y = try layer.forward(Kit.tensor(shape, layout, xs), training: true)
                    let yRef = ref.forward(xs, batch: batch, positions: positions)
                    Kit.record(&worst, "y", Kit.relErr(Kit.logical(y), yRef), context)
                    let grads = try layer.backward(Kit.tensor(shape, layout, dys))
                    let refGrads = ref.backward(dys)
                    Kit.record(
                        &worst, "dx",
                        Kit.relErr(
                            Kit.logical(grads.input), refGrads.dx,
                            scale: refGrads.termScale), context)
                    Kit.record(
                        &worst, "dgamma",
                        Kit.relErr(
                            grads.weight!.map(Double.init), refGrads.dgamma,
                            scale: 1), context)
                    Kit.record(
                        &worst, "dbeta", Kit.relErr(grads.bias!.map(Double.init), refGrads.dbeta, scale: 1),
                        context)
                    let state = layerState(layer), expected = referenceState(ref)
                    XCTAssertEqual(Set(state.keys), Set(expected.keys), context)
                    for (key, values) in expected {
                        Kit.record(&worst, key, Kit.relErr(state[key] ?? [], values, scale: 1e-3), context)
                    }
                    let yEval = try layer.forward(Kit.tensor(shape, layout, xs), training: false)
                    Kit.record(
                        &worst, "eval",
                        Kit.relErr(
                            Kit.logical(yEval),
                            ref.evaluate(
                                xs, batch: batch,
                                positions: positions)),
                        context)
                }
            }
        }
        print("MABN ablation vs float64 reference, max relative errors:", Kit.describe(worst))
        for (key, value) in worst { XCTAssertLessThan(value, 2e-5, key) }
    }

    /// The `r` phase is reached (r ≠ 1) only with renormalization on; off, r is 1 after the threshold too.
    func testRenormalizationSwitchControlsR() throws {
        var rng = SeededGenerator(seed: 7)
        for renorm in [true, false] {
            let parts = MovingAverageBatchNorm.Parts(renormalization: renorm)
            let (layer, _) = try makePair(
                parts: parts, channels: 3, bufferSize: 2, warmup: 3, normBatch: nil,
                iters: 1005, rng: &rng)
            _ = try layer.forward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 2, &rng), training: true)
            XCTAssertEqual(layer.lastR.contains { $0 != 1 }, renorm, "renormalization \(renorm): r \(layer.lastR)")
        }
    }

    /// With both moving averages and `r` off the gradient is exact at any iteration (and during warm-up with every
    /// part on): the layer's dx, dγ, dβ agree with central differences of the float64 forward, in both forms.
    func testExactGradientsMatchFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 99)
        let cases: [(MovingAverageBatchNorm.Parts, Int64)] = [
            (.batchNorm, 40),
            (
                MovingAverageBatchNorm.Parts(
                    forwardSMA: false, backwardSMA: false,
                    renormalization: false), 40
            ),
            (.paper, 0), (MovingAverageBatchNorm.Parts(secondMomentForm: false), 0),
        ]
        for (parts, iters) in cases {
            let shape = [4, 2, 3], positions = 3, batch = 4
            let (layer, ref) = try makePair(
                parts: parts, channels: 2, bufferSize: 4, warmup: 50, normBatch: 2,
                iters: iters, rng: &rng)
            let xs = Kit.randomLogical(24, mean: 0.3, std: 1, &rng), w = Kit.randomLogical(24, mean: 0, std: 1, &rng)
            _ = try layer.forward(Kit.tensor(shape, .channelsLast, xs), training: true)
            let grads = try layer.backward(Kit.tensor(shape, .channelsLast, w))
            func loss(_ x: [Double], gamma: [Double]? = nil, beta: [Double]? = nil) -> Double {
                var copy = ref
                if let gamma { copy.gamma = gamma }
                if let beta { copy.beta = beta }
                return zip(copy.forward(x, batch: batch, positions: positions), w).reduce(0) { $0 + $1.0 * $1.1 }
            }
            let h = 1e-6
            var fdX = xs, fdGamma = ref.gamma, fdBeta = ref.beta
            for i in xs.indices {
                var plus = xs, minus = xs
                plus[i] += h; minus[i] -= h
                fdX[i] = (loss(plus) - loss(minus)) / (2 * h)
            }
            for c in 0..<2 {
                var gp = ref.gamma, gm = ref.gamma, bp = ref.beta, bm = ref.beta
                gp[c] += h; gm[c] -= h; bp[c] += h; bm[c] -= h
                fdGamma[c] = (loss(xs, gamma: gp) - loss(xs, gamma: gm)) / (2 * h)
                fdBeta[c] = (loss(xs, beta: bp) - loss(xs, beta: bm)) / (2 * h)
            }
            XCTAssertLessThan(Kit.relErr(Kit.logical(grads.input), fdX), 1e-4, "dx, \(parts)")
            XCTAssertLessThan(Kit.relErr(grads.weight!.map(Double.init), fdGamma), 1e-4, "dγ, \(parts)")
            XCTAssertLessThan(Kit.relErr(grads.bias!.map(Double.init), fdBeta), 1e-4, "dβ, \(parts)")
        }
    }

    /// The strong anchor: the BN form with every part off is BatchNorm's training step (forward, dx, dγ, dβ
    /// within float rounding) at every iteration, for whole and ghost batches, both layouts.
    func testBatchNormFormWithEveryPartOffIsBatchNorm() throws {
        var rng = SeededGenerator(seed: 32)
        for trial in 0..<6 {
            let channels = Int.random(in: 1...5, using: &rng)
            let spatial = Kit.randomSpatial(rank: Int.random(in: 1...2, using: &rng), &rng)
            let normBatch: Int? = trial % 3 == 0 ? nil : 2
            let layout: TensorLayout = trial % 2 == 0 ? .channelsFirst : .channelsLast
            let shape = [4, channels] + spatial
            let mabn = try MovingAverageBatchNorm(
                channels: channels, bufferSize: 3, warmup: 2, normBatch: normBatch,
                parts: .batchNorm)
            let bn = try BatchNorm(channels: channels, normBatch: normBatch)
            let gamma = Kit.randomFloats(channels, in: 0.5...1.5, &rng),
                beta = Kit.randomFloats(channels, in: -1...1, &rng)
            for layer in [mabn, bn] as [NormalizationLayer] {
                var state = layer.stateDict()
                state["weight"] = .float32(shape: [channels], values: gamma)
                state["bias"] = .float32(shape: [channels], values: beta)
                try layer.loadStateDict(state)
            }
            for step in 0..<8 {
                let x = Kit.randomTensor(shape, layout, mean: 3, std: 2, &rng)
                let dy = Kit.randomTensor(shape, layout, mean: 0.2, std: 1, &rng)
                let context = "trial \(trial) step \(step)"
                let y = try mabn.forward(x, training: true), yBN = try bn.forward(x, training: true)
                XCTAssertLessThan(Kit.relErr(Kit.logical(y), Kit.logical(yBN)), 1e-5, "y, \(context)")
                let g = try mabn.backward(dy), gBN = try bn.backward(dy)
                XCTAssertLessThan(Kit.relErr(Kit.logical(g.input), Kit.logical(gBN.input)), 1e-5, "dx, \(context)")
                XCTAssertLessThan(
                    Kit.relErr(g.weight!.map(Double.init), gBN.weight!.map(Double.init), scale: 1),
                    1e-5, "dγ, \(context)")
                XCTAssertLessThan(
                    Kit.relErr(g.bias!.map(Double.init), gBN.bias!.map(Double.init), scale: 1),
                    1e-5, "dβ, \(context)")
            }
        }
    }

    /// The BN form's state dict adds `running_mean`, `buffer_mean`, `buffer_g` (documented) and round-trips: a
    /// fresh layer loaded from it continues bit for bit. A default MABN state dict lacks those keys and is refused
    /// by a strict load, naming them; the default's keys are the reference's, unchanged.
    func testBatchNormFormStateDict() throws {
        var rng = SeededGenerator(seed: 5)
        let parts = MovingAverageBatchNorm.Parts(secondMomentForm: false)
        let a = try MovingAverageBatchNorm(channels: 3, bufferSize: 2, warmup: 1, normBatch: 2, parts: parts)
        XCTAssertEqual(
            Set(a.stateDict().keys),
            [
                "weight", "bias", "running_var", "running_mean", "iters",
                "buffer_x2", "buffer_gz", "buffer_mean", "buffer_g",
            ])
        let paper = try MovingAverageBatchNorm(channels: 3, bufferSize: 2)
        XCTAssertEqual(
            Set(paper.stateDict().keys), ["weight", "bias", "running_var", "iters", "buffer_x2", "buffer_gz"])
        for _ in 0..<5 {
            _ = try a.forward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 1, std: 1, &rng), training: true)
            _ = try a.backward(Kit.randomTensor([4, 3, 2], .channelsFirst, mean: 0, std: 1, &rng))
        }
        XCTAssertNotEqual(a.runningMean, [0, 0, 0])
        let b = try MovingAverageBatchNorm(channels: 3, bufferSize: 2, warmup: 1, normBatch: 2, parts: parts)
        try b.loadStateDict(a.stateDict())
        XCTAssertEqual(b.stateDict(), a.stateDict())
        let x = Kit.randomTensor([4, 3, 2], .channelsLast, mean: 1, std: 1, &rng)
        let dy = Kit.randomTensor([4, 3, 2], .channelsLast, mean: 0, std: 1, &rng)
        XCTAssertEqual(try a.forward(x, training: true).values, try b.forward(x, training: true).values)
        XCTAssertEqual(try a.backward(dy).input.values, try b.backward(dy).input.values)
        XCTAssertEqual(b.stateDict(), a.stateDict())
        XCTAssertThrowsError(try b.loadStateDict(paper.stateDict())) { error in
            Kit.assertIncompatibleKeys(error, missing: ["buffer_g", "buffer_mean", "running_mean"])
        }
        var bad = a.stateDict()
        bad["running_mean"] = .float32(shape: [3], values: [0, .nan, 0])
        XCTAssertThrowsError(try b.loadStateDict(bad)) { Kit.assertInvalidState($0, "running_mean") }
    }

    /// The parts are named in the layer's name (for errors) and by `Parts.description`; `Parts(without:)` is the
    /// inverse of `missing`.
    func testPartsNamesAndDefaults() throws {
        XCTAssertEqual(try MovingAverageBatchNorm(channels: 2, bufferSize: 4).parts, .paper)
        XCTAssertEqual(MovingAverageBatchNorm.Parts(), .paper)
        XCTAssertEqual(MovingAverageBatchNorm.Parts.batchNorm.missing, MovingAverageBatchNorm.Parts.Part.allCases)
        let parts = MovingAverageBatchNorm.Parts(without: [.renormalization, .backwardSMA])
        XCTAssertEqual(parts.description, "without bwd-sma, renorm")
        XCTAssertEqual(MovingAverageBatchNorm.Parts(without: Set(parts.missing)), parts)
        XCTAssertEqual(
            try MovingAverageBatchNorm(channels: 2, bufferSize: 4, parts: parts).name,
            "MovingAverageBatchNorm(channels: 2, bufferSize: 4, parts: without bwd-sma, renorm)")
        XCTAssertEqual(
            try MovingAverageBatchNorm(channels: 2, bufferSize: 4).name,
            "MovingAverageBatchNorm(channels: 2, bufferSize: 4)")
        let json = try JSONEncoder().encode(parts)
        XCTAssertEqual(try JSONDecoder().decode(MovingAverageBatchNorm.Parts.self, from: json), parts)
    }
}
