import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// Activations fused into the apply stage of every normalization layer (`layer.activation`, ``FusedActivation``):
///
/// - **Fused == unfused.** For every layer kind (BN whole, ghost and per-sample batches; GN, LN, IN; BRN whole and
///   ghost; MABN paper, ghost and BN form; frozen BN) × ReLU, SiLU × both layouts × every kernel path this CPU has
///   (native AVX-512, native AVX2, portable Swift), a layer with the activation equals a twin without it followed
///   by the activation in float64: the outputs in training (two steps) and evaluation, and the backward
///   (`dx`, `dγ`, `dβ`) of the fused layer for `dy` equals the twin's for `dy ⊙ act'(z)`. Random `γ`, `β` and
///   running state (past MABN's warm-up and `r` threshold, BRN with clipping `r`, `d`); odd shapes, a set longer
///   than one 2048-float block, more than 1024 channels, and (2, 64, 24, 24).
/// - **Float64 reference.** GN + SiLU and BN + ReLU against a float64 re-implementation (forward) and central finite
///   differences of `Σ w ⊙ act(norm(x))` (backward); BN evaluation + ReLU against float64.
/// - **ReLU and NaN.** `relu(NaN)` is NaN and its gradient passes `dy` (as PyTorch's); NaN stays in its element (frozen BN, BN
///   evaluation) or its set (GN).
/// - **Identity.** `activation = .identity` is bit for bit the layer whose activation was never set.
/// - **Extremes.** SiLU at pre-activations near ±90, across the exp clamp (−87…−100) and at ±1e4: finite, close
///   to float64, finite gradients; and at |z| up to 3e38, where silu(z) is 0 (z ≪ 0) or z (z ≫ 0) to float
///   precision, and so is its gradient.
/// - **Paths.** Also GN channels-last with a sample of more than 2^20 floats, its rows split over threads.
/// - **Switching** identity → SiLU → ReLU → identity … on one layer between steps: each backward is right.
/// - **x = 1e4 + 0.01·randn** with GN + SiLU and BN + ReLU matches float64.
final class FusedActivationTests: KernelPathTestCase {
    typealias Kit = VariantTestKit

    // MARK: - Float64 activations (written here, independently of FusedActivation's own)

    static func act64(_ activation: FusedActivation, _ z: Double) -> Double {
        switch activation {
        case .identity: return z
        case .relu: return z.isNaN ? z : (z > 0 ? z : 0)
        case .silu: return z / (1 + Foundation.exp(-z))
        }
    }

    static func derivative64(_ activation: FusedActivation, _ z: Double) -> Double {
        switch activation {
        case .identity: return 1
        case .relu: return z <= 0 ? 0 : 1  // PyTorch's threshold_backward: a NaN passes dy
        case .silu:
            let s = 1 / (1 + Foundation.exp(-z))
            return s * (1 + z * (1 - s))
        }
    }

    /// `dy ⊙ act'(z)` in float64, rounded to float (elementwise in memory order: `dy` and `z` share a layout).
    static func chain(_ dy: Tensor, through z: Tensor, _ activation: FusedActivation) -> Tensor {
        precondition(dy.shape == z.shape && dy.layout == z.layout)
        let values = zip(dy.values, z.values).map { Float(Double($0) * derivative64(activation, Double($1))) }
        return try! Tensor(shape: dy.shape, layout: dy.layout, values: values)
    }

    /// `max_i |y_i − act(z_i)| / (1e-5·|act(z_i)| + 1e-6·max|act(z)|)` in memory order: at most 1 passes. NaN or a
    /// shape or layout mismatch gives infinity.
    static func forwardRatio(_ y: Tensor, _ z: Tensor, _ activation: FusedActivation) -> Double {
        guard y.shape == z.shape, y.layout == z.layout else { return .infinity }
        let reference = z.values.map { act64(activation, Double($0)) }
        let scale = reference.map(abs).max() ?? 0
        var worst = 0.0
        for (a, r) in zip(y.values, reference) {
            let error = abs(Double(a) - r)
            if error.isNaN { return .infinity }
            worst = max(worst, error / (1e-5 * abs(r) + 1e-6 * scale + 1e-30))
        }
        return worst
    }

    /// Bit patterns, so NaNs and signed zeros compare exactly.
    static func bits(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }

    // MARK: - Worst errors and failures, asserted once per key

    final class Tally {
        private(set) var worst: [String: (value: Double, context: String)] = [:]
        private var failures: [String: (count: Int, examples: [String])] = [:]
        private(set) var checks = 0

        /// Records `value` under `key`; a value above `limit` (or NaN) is a failure.
        func check(_ key: String, _ value: Double, limit: Double, _ context: String) {
            checks += 1
            let v = value.isNaN ? Double.infinity : value
            if v > (worst[key]?.value ?? -1) { worst[key] = (v, context) }
            if !(v <= limit) {
                var f = failures[key] ?? (0, [])
                f.count += 1
                if f.examples.count < 4 { f.examples.append("\(context): \(value)") }
                failures[key] = f
            }
        }

        /// Records a condition that must hold.
        func expect(_ key: String, _ condition: Bool, _ context: String) {
            check(key, condition ? 0 : 1, limit: 0.5, context)
        }

        func assertClean(_ title: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertGreaterThan(checks, 0, "\(title): nothing was checked", file: file, line: line)
            for (key, f) in failures.sorted(by: { $0.key < $1.key }) {
                XCTFail(
                    "\(title): \(key) fails in \(f.count) case(s), e.g. \(f.examples.joined(separator: " | "))",
                    file: file, line: line)
            }
            let lines = worst.keys.sorted().map {
                String(
                    format: "  %-44@ %.3e  (%@)", $0 as NSString, worst[$0]!.value,
                    worst[$0]!.context as NSString)
            }
            print("\(title) (\(checks) checks):\n" + lines.joined(separator: "\n"))
        }
    }

    // MARK: - Layer kinds

    enum Family: String, CaseIterable {
        case batchNorm, groupNorm, batchRenorm, movingAverage, frozen
    }

    struct LayerSpec {
        let label: String
        let make: (_ channels: Int) throws -> NormalizationLayer
        /// Values in one normalization set for a shape (`Int.max` for frozen BN, which has none).
        let valuesPerSet: (_ shape: [Int]) -> Int
        /// Whether the layer subtracts a batch mean: with two values per set its `dx` is rounding noise (x̂ = ±1).
        let subtractsMean: Bool
        /// The ghost batch it needs to divide the batch (and be smaller than it), if any.
        let ghost: Int?
        /// Whether the running state depends on the backward (MABN's `buffer_gz`, `buffer_g`).
        let backwardState: Bool

        func applies(to shape: [Int]) -> Bool {
            if let ghost, shape[0] % ghost != 0 || shape[0] == ghost { return false }
            let values = valuesPerSet(shape)
            if values < 2 { return false }
            if subtractsMean && values <= 2 { return false }
            return true
        }
    }

    static func positions(_ shape: [Int]) -> Int { shape.dropFirst(2).reduce(1, *) }

    /// A GN group count strictly between 1 and C with more than one channel per group, if C has one.
    static func middleGroups(_ c: Int) -> Int? { [2, 3, 4, 8, 16].filter { c % $0 == 0 && $0 < c }.last }

    static func specs(_ family: Family, channels c: Int) -> [LayerSpec] {
        func spec(
            _ label: String, ghost: Int? = nil, subtractsMean: Bool = true,
            backwardState: Bool = false, values: @escaping ([Int]) -> Int,
            _ make: @escaping (Int) throws -> NormalizationLayer
        ) -> LayerSpec {
            LayerSpec(
                label: label, make: make, valuesPerSet: values, subtractsMean: subtractsMean, ghost: ghost,
                backwardState: backwardState)
        }
        let brnSchedule = BatchRenorm.Schedule(warmupSteps: 0, rMax: 1.2, dMax: 0.1, rSteps: 1, dSteps: 1)
        switch family {
        case .batchNorm:
            return [
                spec("BN", values: { $0[0] * positions($0) }) { try BatchNorm(channels: $0, momentum: 0.3) },
                spec("BN normBatch 2", ghost: 2, values: { 2 * positions($0) }) {
                    try BatchNorm(channels: $0, momentum: 0.3, normBatch: 2)
                },
                spec("BN normBatch 1", ghost: 1, values: { positions($0) }) {
                    try BatchNorm(channels: $0, momentum: 0.3, normBatch: 1)
                },
                spec("BN affine false", values: { $0[0] * positions($0) }) {
                    try BatchNorm(channels: $0, affine: false)
                },
            ]
        case .groupNorm:
            var specs = [
                spec("LN", values: { $0[1] * positions($0) }) { try GroupNorm.layerNorm(channels: $0) },
                spec("IN", values: { positions($0) }) { try GroupNorm.instanceNorm(channels: $0) },
                spec("LN affine false", values: { $0[1] * positions($0) }) {
                    try GroupNorm.layerNorm(channels: $0, affine: false)
                },
            ]
            if let g = middleGroups(c) {
                specs.append(
                    spec("GN \(g) groups", values: { $0[1] / g * positions($0) }) {
                        try GroupNorm(channels: $0, groups: g)
                    })
            }
            return specs
        case .batchRenorm:
            return [
                spec("BRN", values: { $0[0] * positions($0) }) {
                    try BatchRenorm(channels: $0, momentum: 0.1, schedule: brnSchedule)
                },
                spec("BRN normBatch 2", ghost: 2, values: { 2 * positions($0) }) {
                    try BatchRenorm(channels: $0, momentum: 0.1, schedule: brnSchedule, normBatch: 2)
                },
                spec("BRN affine false", values: { $0[0] * positions($0) }) {
                    try BatchRenorm(channels: $0, momentum: 0.1, schedule: brnSchedule, affine: false)
                },
            ]
        case .movingAverage:
            return [
                spec(
                    "MABN", subtractsMean: false, backwardState: true,
                    values: { $0[0] * positions($0) }
                ) {
                    try MovingAverageBatchNorm(channels: $0, bufferSize: 2, warmup: 0)
                },
                spec(
                    "MABN normBatch 2", ghost: 2, subtractsMean: false, backwardState: true,
                    values: { 2 * positions($0) }
                ) {
                    try MovingAverageBatchNorm(channels: $0, bufferSize: 3, warmup: 0, normBatch: 2)
                },
                spec("MABN BN form", backwardState: true, values: { $0[0] * positions($0) }) {
                    try MovingAverageBatchNorm(
                        channels: $0, bufferSize: 2, warmup: 0,
                        parts: MovingAverageBatchNorm.Parts(secondMomentForm: false))
                },
                spec(
                    "MABN affine false", subtractsMean: false, backwardState: true,
                    values: { $0[0] * positions($0) }
                ) {
                    try MovingAverageBatchNorm(channels: $0, bufferSize: 2, warmup: 0, affine: false)
                },
            ]
        case .frozen:
            return [
                spec("frozen BN", subtractsMean: false, values: { _ in Int.max }) {
                    try FrozenBatchNorm(channels: $0, trainableAffine: true)
                }
            ]
        }
    }

    /// A random, valid state for `layer`: `γ` = ±(0.5…1.5), `β` in −1…1, running means 0…1, variances and second
    /// moments 1…4, BRN's running std 1…2, MABN's backward buffers −0.3…0.3; step counters 7, MABN's `iters` 1500
    /// (past its warm-up and its `r` threshold of 1000, so the SMA and `r` are active).
    static func randomState(for layer: NormalizationLayer, _ rng: inout SeededGenerator) -> [String: StateTensor] {
        var state: [String: StateTensor] = [:]
        for (key, entry) in layer.stateDict().sorted(by: { $0.key < $1.key }) {
            switch entry {
            case .float32(let shape, let values):
                let range: ClosedRange<Float>
                switch key {
                case "weight": range = 0.5...1.5
                case "bias": range = -1...1
                case "running_mean", "buffer_mean": range = 0...1
                case "running_var", "buffer_x2": range = 1...4
                case "running_std": range = 1...2
                case "buffer_gz", "buffer_g": range = -0.3...0.3
                default:
                    XCTFail("unexpected state entry \(key) of \(layer.name)")
                    range = 0...0
                }
                var v = Kit.randomFloats(values.count, in: range, &rng)
                if key == "weight" { v = v.map { Bool.random(using: &rng) ? $0 : -$0 } }
                state[key] = .float32(shape: shape, values: v)
            case .int64(let shape, let values):
                state[key] = .int64(shape: shape, values: values.map { _ in key == "iters" ? 1500 : 7 })
            }
        }
        return state
    }

    /// Normal float values (Box–Muller in float, fast), channels-first.
    static func normal(_ shape: [Int], mean: Float, std: Float, _ rng: inout SeededGenerator) -> Tensor {
        Tensor.randomNormal(shape: shape, layout: .channelsFirst, mean: mean, standardDeviation: std, using: &rng)
    }

    // MARK: - 1. Fused == normalization then activation

    /// Odd sizes, SIMD tails, batches of 16 sets with remainders, spatial ranks 0 to 3, rows longer than one
    /// 2048-float block (2500 positions), more than 1024 channels (the channels-last kernels' column split) and a
    /// larger map.
    static let compositionShapes: [[Int]] = [
        [3, 6, 5, 7], [4, 32, 7, 7], [2, 48, 1, 1], [6, 48, 1, 1], [6, 12], [4, 20, 9], [2, 8, 3, 4, 5],
        [2, 3, 50, 50], [2, 1040, 3], [2, 64, 24, 24],
    ]

    func testFusedBatchNormMatchesNormalizationThenActivation() throws { try runComposition(.batchNorm, seed: 11) }
    func testFusedGroupNormMatchesNormalizationThenActivation() throws { try runComposition(.groupNorm, seed: 12) }
    func testFusedBatchRenormMatchesNormalizationThenActivation() throws { try runComposition(.batchRenorm, seed: 13) }
    func testFusedMovingAverageBatchNormMatchesNormalizationThenActivation() throws {
        try runComposition(.movingAverage, seed: 14)
    }
    func testFusedFrozenBatchNormMatchesNormalizationThenActivation() throws { try runComposition(.frozen, seed: 15) }

    /// Tolerances of the backward comparisons (max-abs difference over max-abs of the twin's).
    static let backwardTolerance = 1e-5

    func runComposition(_ family: Family, seed: UInt64) throws {
        var rng = SeededGenerator(seed: 0xF05E_D000 + seed)
        let tally = Tally()
        var pathsRun = Set<Path>()
        for shape in Self.compositionShapes {
            // Two training steps and an evaluation, the same inputs for every layer kind, path and activation.
            let xs = (0..<3).map { _ in Self.normal(shape, mean: 0.5, std: 1.5, &rng) }
            let dys = (0..<2).map { _ in Self.normal(shape, mean: 0, std: 1, &rng) }
            for spec in Self.specs(family, channels: shape[1]) where spec.applies(to: shape) {
                let state = Self.randomState(for: try spec.make(shape[1]), &rng)
                for path in Path.allCases where select(path) {
                    pathsRun.insert(path)
                    for layout in TensorLayout.allCases {
                        let x = xs.map { $0.converted(to: layout) }, dy = dys.map { $0.converted(to: layout) }
                        for activation in [FusedActivation.relu, .silu] {
                            try checkComposition(
                                spec, activation: activation, state: state, x: x, dy: dy,
                                context: "\(spec.label) \(activation) \(shape) \(layout) \(path)",
                                tally: tally)
                        }
                    }
                }
            }
        }
        XCTAssertTrue(pathsRun.contains(.portable))
        tally.assertClean("FusedActivationTests \(family) (paths: \(pathsRun.map(\.rawValue).sorted()))")
    }

    /// Layer A (`activation`) and its twin B (identity, same state) through two training steps and an evaluation:
    /// `A(x) == act(B(x))`, `A.backward(dy) == B.backward(dy ⊙ act'(B(x)))`, and the same running state after.
    /// A writes into tensors kept across steps (`forward(_:into:training:)`, `backward(_:into:)` reuse their
    /// memory, so stale values of the last step sit there); B allocates.
    func checkComposition(
        _ spec: LayerSpec, activation: FusedActivation, state: [String: StateTensor],
        x: [Tensor], dy: [Tensor], context: String, tally: Tally
    ) throws {
        let c = x[0].channels
        let fused = try spec.make(c), plain = try spec.make(c)
        try fused.loadStateDict(state)
        try plain.loadStateDict(state)
        tally.expect("activation defaults to identity", fused.activation == .identity, context)
        fused.activation = activation
        tally.expect("activation is kept", fused.activation == activation, context)
        var y = Tensor(zeros: [1, 1]), dx = Tensor(zeros: [1, 1]), ye = Tensor(zeros: [1, 1])
        for step in 0..<2 {
            let at = "\(context) step \(step)"
            try fused.forward(x[step], into: &y, training: true)
            let z = try plain.forward(x[step], training: true)
            tally.check("training y vs act(twin)", Self.forwardRatio(y, z, activation), limit: 1, at)
            // An evaluation forward between a training forward and its backward changes nothing (every layer).
            try fused.forward(x[2], into: &ye, training: false)
            let ze = try plain.forward(x[2], training: false)
            tally.check(
                "evaluation y (backward pending) vs act(twin)", Self.forwardRatio(ye, ze, activation), limit: 1, at)
            try fused.backward(dy[step], into: &dx)
            let gp = try plain.backward(Self.chain(dy[step], through: z, activation))
            tally.expect("dx shape and layout", dx.shape == x[step].shape && dx.layout == x[step].layout, at)
            tally.check(
                "dx vs twin's for dy·act'(z)",
                Kit.relErr(
                    dx.values.map(Double.init),
                    gp.input.values.map(Double.init)),
                limit: Self.backwardTolerance, at)
            if let dg = fused.weight?.gradient, let db = fused.bias?.gradient, let pg = gp.weight, let pb = gp.bias {
                tally.check(
                    "dγ vs twin's", Kit.relErr(dg.map(Double.init), pg.map(Double.init)),
                    limit: Self.backwardTolerance, at)
                tally.check(
                    "dβ vs twin's", Kit.relErr(db.map(Double.init), pb.map(Double.init)),
                    limit: Self.backwardTolerance, at)
            } else {
                tally.expect(
                    "affine gradients exactly when affine",
                    fused.weight == nil && fused.bias == nil
                        && gp.weight == nil && gp.bias == nil, at)
            }
        }
        try fused.forward(x[2], into: &ye, training: false)
        let z = try plain.forward(x[2], training: false)
        tally.check("evaluation y vs act(twin)", Self.forwardRatio(ye, z, activation), limit: 1, context)
        // The forward statistics do not depend on the activation: the running state is the twin's (MABN's backward
        // buffers hold Ψ of dz, equal to rounding).
        let sf = fused.stateDict(), sp = plain.stateDict()
        tally.expect("same state keys", Set(sf.keys) == Set(sp.keys), context)
        for (key, value) in sf {
            guard let other = sp[key] else { continue }
            if spec.backwardState, ["buffer_gz", "buffer_g"].contains(key),
                case .float32(_, let a) = value, case .float32(_, let b) = other
            {
                tally.check(
                    "MABN backward buffers vs twin's", Kit.relErr(a.map(Double.init), b.map(Double.init)),
                    limit: Self.backwardTolerance, "\(context) \(key)")
            } else {
                tally.expect("running state equals the twin's", value == other, "\(context) \(key)")
            }
        }
    }

    /// GN channels-last with a sample of more than 2^20 floats (4 MB): the native kernels split each sample's rows
    /// over the threads for the sums, the apply, the gradient sums (which write `dz`) and the gradient apply (also
    /// with more threads than cores: 5 parts of a sample on this machine's 2 cores).
    func testChannelsLastGroupNormLargeSampleSplitOverThreads() throws {
        var rng = SeededGenerator(seed: 0xB16)
        let tally = Tally()
        let shape = [1, 64, 129, 128]  // 1,056,768 floats in its one sample
        let x = (0..<3).map { _ in Self.normal(shape, mean: 0.5, std: 1.5, &rng).converted(to: .channelsLast) }
        let dy = (0..<2).map { _ in Self.normal(shape, mean: 0, std: 1, &rng).converted(to: .channelsLast) }
        let spec = Self.specs(.groupNorm, channels: shape[1]).first { $0.label == "GN 16 groups" }!
        let state = Self.randomState(for: try spec.make(shape[1]), &rng)
        // The portable kernels have no tiled path: their channels-last GN is always the unfused one, covered by the
        // composition tests.
        for path in [Path.native, .avx2] where select(path) {
            for (threads, activation) in [(Self.defaultThreads, FusedActivation.silu), (5, .relu)] {
                Parallelism.threadCount = threads
                try checkComposition(
                    spec, activation: activation, state: state, x: x, dy: dy,
                    context: "\(spec.label) \(activation) \(shape) \(path) \(threads) threads",
                    tally: tally)
            }
        }
        try XCTSkipIf(tally.checks == 0, "this CPU has no native kernels")
        tally.assertClean("FusedActivationTests GN channels-last, 2^20+ floats per sample")
    }

    /// Channels-first sets of 2^18 floats (1 MB) or more are split over the threads in parts of whole rows: LN on
    /// one 1 MB sample (16 parts of 4 rows) and BN on channels of four samples (parts of one row each, crossing
    /// samples); IN's one-row sets in 16 pieces of their row. Fused against the unfused composition on every path,
    /// also with more threads than cores.
    func testChannelsFirstSetsSplitOverThreads() throws {
        var rng = SeededGenerator(seed: 0xB17)
        let tally = Tally()
        for (shape, family, label) in [
            ([1, 64, 66, 64], Family.groupNorm, "LN"), ([4, 2, 256, 256], .batchNorm, "BN"),
            ([1, 2, 512, 520], .groupNorm, "IN"),
        ] {
            let x = (0..<3).map { _ in Self.normal(shape, mean: 0.5, std: 1.5, &rng) }
            let dy = (0..<2).map { _ in Self.normal(shape, mean: 0, std: 1, &rng) }
            let spec = Self.specs(family, channels: shape[1]).first { $0.label == label }!
            let state = Self.randomState(for: try spec.make(shape[1]), &rng)
            for path in Path.allCases where select(path) {
                for (threads, activation) in [(Self.defaultThreads, FusedActivation.silu), (5, .relu)] {
                    Parallelism.threadCount = threads
                    try checkComposition(
                        spec, activation: activation, state: state, x: x, dy: dy,
                        context: "\(spec.label) \(activation) \(shape) \(path) \(threads) threads", tally: tally)
                }
            }
        }
        Parallelism.threadCount = Self.defaultThreads
        tally.assertClean("FusedActivationTests channels-first sets of 2^18+ floats")
    }

    // MARK: - 2. Float64 reference and finite differences

    func testScalarActivationsMatchTheirDefinitions() {
        let points: [Double] = [-1e4, -100, -90, -20, -3, -1.2784645, -0.5, -1e-3, 0, 1e-3, 0.5, 1, 3, 20, 90, 1e4]
        let identity = FusedActivation.identity, relu = FusedActivation.relu, silu = FusedActivation.silu
        for z in points {
            XCTAssertEqual(identity(z), z)
            XCTAssertEqual(identity.derivative(z), 1)
            XCTAssertEqual(relu(z), z > 0 ? z : 0)
            XCTAssertEqual(relu.derivative(z), z > 0 ? 1 : 0)
            let reference = z / (1 + Foundation.exp(-z))
            XCTAssertEqual(silu(z), reference, accuracy: 1e-14 * max(1, abs(reference)), "silu(\(z))")
            // The derivative against central differences of the function itself (away from the tails).
            if abs(z) <= 20 {
                let h = 1e-6, fd = (silu(z + h) - silu(z - h)) / (2 * h)
                XCTAssertEqual(silu.derivative(z), fd, accuracy: 1e-8, "silu'(\(z))")
            }
            XCTAssertEqual(silu.derivative(z), Self.derivative64(.silu, z), accuracy: 1e-14)
        }
        XCTAssertTrue(relu(.nan).isNaN, "relu keeps NaN")
        XCTAssertEqual(relu.derivative(.nan), 1, "relu passes dy at NaN, as PyTorch's threshold_backward")
        XCTAssertTrue(silu(.nan).isNaN)
        XCTAssertEqual(silu(-1.2784645), -0.2784645, accuracy: 1e-7, "SiLU's minimum")
        XCTAssertEqual(FusedActivation.allCases, [.identity, .relu, .silu])
    }

    /// `Σ w ⊙ act(norm(x))` in float64 (`Float64Reference.forward`, then the activation written here).
    static func compositeOutput(
        _ x: [Double], shape: [Int], sets: RefSets, gamma: [Double], beta: [Double],
        _ activation: FusedActivation
    ) -> (z: [Double], y: [Double]) {
        let rx = RefTensor(batch: shape[0], channels: shape[1], positions: positions(shape), data: x)
        let z = Float64Reference.forward(rx, sets: sets, gamma: gamma, beta: beta).y.data
        return (z, z.map { act64(activation, $0) })
    }

    /// Central finite differences (step `h`) of `L = Σ w ⊙ act(norm(x))` with respect to x, γ and β.
    static func finiteDifferences(
        _ x: [Double], w: [Double], shape: [Int], sets: RefSets, gamma: [Double],
        beta: [Double], _ activation: FusedActivation, h: Double = 1e-5
    )
        -> (dx: [Double], dgamma: [Double], dbeta: [Double])
    {
        func loss(_ x: [Double], _ g: [Double], _ b: [Double]) -> Double {
            zip(compositeOutput(x, shape: shape, sets: sets, gamma: g, beta: b, activation).y, w)
                .reduce(0) { $0 + $1.0 * $1.1 }
        }
        func central(_ f: (Double) -> Double) -> Double { (f(h) - f(-h)) / (2 * h) }
        let dx = x.indices.map { i in
            central { d in
                var p = x; p[i] += d; return loss(p, gamma, beta)
            }
        }
        let dgamma = gamma.indices.map { c in
            central { d in
                var p = gamma; p[c] += d; return loss(x, p, beta)
            }
        }
        let dbeta = beta.indices.map { c in
            central { d in
                var p = beta; p[c] += d; return loss(x, gamma, p)
            }
        }
        return (dx, dgamma, dbeta)
    }

    /// Random `γ` (±0.5…1.5) and `β` (−1…1), exactly representable in float.
    static func randomAffine(_ c: Int, _ rng: inout SeededGenerator) -> (gamma: [Double], beta: [Double]) {
        let gamma = Kit.randomFloats(c, in: 0.5...1.5, &rng).map { Double(Bool.random(using: &rng) ? $0 : -$0) }
        let beta = Kit.randomFloats(c, in: -1...1, &rng).map(Double.init)
        return (gamma, beta)
    }

    /// The float layer (γ, β set, `activation`) against float64: the training output, and `dx`, `dγ`, `dβ` for
    /// `dy = w` against central finite differences of the float64 composite. Also checks the float64 chain rule
    /// (norm backward of `w ⊙ act'(z)`) against the same finite differences.
    func checkAgainstFloat64(
        _ make: () throws -> NormalizationLayer, activation: FusedActivation, shape: [Int],
        sets: RefSets, x: [Double], w: [Double], gamma: [Double], beta: [Double],
        label: String, tally: Tally,
        afterTraining: ((NormalizationLayer, TensorLayout, String) throws -> Void)? = nil
    )
        throws
    {
        let (z, y) = Self.compositeOutput(x, shape: shape, sets: sets, gamma: gamma, beta: beta, activation)
        let fd = Self.finiteDifferences(x, w: w, shape: shape, sets: sets, gamma: gamma, beta: beta, activation)
        let rx = RefTensor(batch: shape[0], channels: shape[1], positions: Self.positions(shape), data: x)
        let dz = RefTensor(
            batch: shape[0], channels: shape[1], positions: Self.positions(shape),
            data: zip(w, z).map { $0 * Self.derivative64(activation, $1) })
        let analytic = Float64Reference.backward(rx, dy: dz, sets: sets, gamma: gamma)
        tally.check(
            "float64 chain rule vs finite differences",
            max(
                Kit.relErr(analytic.dx.data, fd.dx), Kit.relErr(analytic.dgamma, fd.dgamma),
                Kit.relErr(analytic.dbeta, fd.dbeta)), limit: 1e-7, label)
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                let at = "\(label) \(layout) \(path)"
                let layer = try make()
                layer.weight!.value = gamma.map { Float($0) }
                layer.bias!.value = beta.map { Float($0) }
                layer.activation = activation
                let out = try layer.forward(Kit.tensor(shape, layout, x), training: true)
                tally.check("y vs float64", Kit.relErr(Kit.logical(out), y), limit: 1e-5, at)
                let grads = try layer.backward(Kit.tensor(shape, layout, w))
                tally.check("dx vs finite differences", Kit.relErr(Kit.logical(grads.input), fd.dx), limit: 1e-5, at)
                tally.check(
                    "dγ vs finite differences", Kit.relErr(grads.weight!.map(Double.init), fd.dgamma),
                    limit: 1e-5, at)
                tally.check(
                    "dβ vs finite differences", Kit.relErr(grads.bias!.map(Double.init), fd.dbeta),
                    limit: 1e-5, at)
                try afterTraining?(layer, layout, at)
            }
        }
    }

    func testGroupNormSiLUMatchesFloat64ReferenceAndFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 0x5_11)
        let tally = Tally()
        let shape = [2, 6, 2, 3], c = shape[1], count = shape.reduce(1, *)
        for groups in [3, 1, 6] {
            let x = Kit.randomLogical(count, mean: 0.5, std: 1.5, &rng)
            let w = Kit.randomLogical(count, mean: 0, std: 1, &rng)
            let (gamma, beta) = Self.randomAffine(c, &rng)
            try checkAgainstFloat64(
                { try GroupNorm(channels: c, groups: groups) }, activation: .silu, shape: shape,
                sets: .groupNorm(groups: groups), x: x, w: w, gamma: gamma, beta: beta,
                label: "GN \(groups) groups + SiLU \(shape)", tally: tally)
        }
        tally.assertClean("FusedActivationTests GN + SiLU vs float64")
    }

    func testBatchNormReLUMatchesFloat64ReferenceAndFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 0xB_4E1)
        let tally = Tally()
        let shape = [4, 3, 2, 3], c = shape[1], count = shape.reduce(1, *), m = Self.positions(shape)
        for normBatch in [4, 2] {
            let sets = RefSets.batchNorm(normBatch: normBatch)
            let (gamma, beta) = Self.randomAffine(c, &rng)
            // Inputs whose pre-activations all stay 1e-3 away from ReLU's kink (finite differences step 1e-5).
            var x: [Double] = []
            for attempt in 0... {
                x = Kit.randomLogical(count, mean: 0.5, std: 1.5, &rng)
                let z = Self.compositeOutput(x, shape: shape, sets: sets, gamma: gamma, beta: beta, .relu).z
                if z.allSatisfy({ abs($0) >= 1e-3 }) { break }
                guard attempt < 100 else { return XCTFail("no input away from the kink") }
            }
            let w = Kit.randomLogical(count, mean: 0, std: 1, &rng)
            let evaluationInput = Kit.randomLogical(count, mean: 0.2, std: 2, &rng)
            try checkAgainstFloat64(
                { try BatchNorm(channels: c, normBatch: normBatch) }, activation: .relu,
                shape: shape, sets: sets, x: x, w: w, gamma: gamma, beta: beta,
                label: "BN normBatch \(normBatch) + ReLU \(shape)", tally: tally
            ) { layer, layout, at in
                // Evaluation with the running statistics the training step left: relu(BN_eval(x)) in float64.
                let bn = layer as! BatchNorm
                let rx = RefTensor(batch: shape[0], channels: c, positions: m, data: evaluationInput)
                let want = Float64Reference.batchNormEval(
                    rx, runningMean: bn.runningMean.map(Double.init),
                    runningVariance: bn.runningVariance.map(Double.init),
                    gamma: gamma, beta: beta, epsilon: Double(bn.epsilon)
                ).data.map { Self.act64(.relu, $0) }
                let got = try layer.forward(Kit.tensor(shape, layout, evaluationInput), training: false)
                tally.check("evaluation y vs float64", Kit.relErr(Kit.logical(got), want), limit: 1e-5, at)
            }
        }
        tally.assertClean("FusedActivationTests BN + ReLU vs float64")
    }

    // MARK: - 3. NaN and identity

    /// ReLU keeps NaN and its gradient there is `dy` (PyTorch's semantics: `threshold_backward` zeroes only where
    /// `y ≤ 0`). Frozen BN (elementwise, training and
    /// evaluation) and BN evaluation keep NaN in its element; GN keeps it in its set. SiLU propagates NaN too.
    func testReLUKeepsNaNAndPassesItsGradientAsPyTorch() throws {
        var rng = SeededGenerator(seed: 0x4A4)
        let tally = Tally()
        let shape = [2, 5, 4, 3], c = shape[1], m = Self.positions(shape), count = shape.reduce(1, *)
        let nanAt: Set<Int> = [(0 * c + 1) * m + 3, (1 * c + 4) * m + 0, (1 * c + 1) * m + 7]  // logical indices
        let gamma = Kit.randomFloats(c, in: 0.5...1.5, &rng).map { Bool.random(using: &rng) ? $0 : -$0 }
        let beta = Kit.randomFloats(c, in: -1...1, &rng)
        let mean = Kit.randomFloats(c, in: 0...1, &rng), variance = Kit.randomFloats(c, in: 1...4, &rng)
        let epsilon = Double(Float(1e-5))
        let scale = (0..<c).map { Double(gamma[$0]) / (Double(variance[$0]) + epsilon).squareRoot() }
        func z(_ x: [Double]) -> [Double] {
            x.indices.map { i in
                let ch = (i / m) % c; return scale[ch] * (x[i] - Double(mean[ch])) + Double(beta[ch])
            }
        }
        // Pre-activations away from ReLU's kink, so float and float64 agree on the mask.
        var x: [Double] = []
        for attempt in 0... {
            x = Kit.randomLogical(count, mean: 0.5, std: 1.5, &rng)
            if z(x).allSatisfy({ abs($0) >= 1e-3 }) { break }
            guard attempt < 100 else { return XCTFail("no input away from the kink") }
        }
        for i in nanAt { x[i] = .nan }
        let dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
        let zx = z(x)
        let state: [String: StateTensor] = [
            "weight": .float32(shape: [c], values: gamma), "bias": .float32(shape: [c], values: beta),
            "running_mean": .float32(shape: [c], values: mean), "running_var": .float32(shape: [c], values: variance),
        ]
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                for activation in [FusedActivation.relu, .silu] {
                    let at = "\(activation) \(layout) \(path)"
                    // Frozen BN: elementwise in both modes.
                    let frozen = try FrozenBatchNorm(channels: c, trainableAffine: true)
                    try frozen.loadStateDict(state)
                    frozen.activation = activation
                    let training = Kit.logical(try frozen.forward(Kit.tensor(shape, layout, x), training: true))
                    let grads = try frozen.backward(Kit.tensor(shape, layout, dy))
                    let evaluation = Kit.logical(try frozen.forward(Kit.tensor(shape, layout, x), training: false))
                    let dx = Kit.logical(grads.input)
                    for (mode, y) in [("training", training), ("evaluation", evaluation)] {
                        for i in 0..<count {
                            if nanAt.contains(i) {
                                tally.expect("frozen BN: act(NaN) is NaN (\(mode))", y[i].isNaN, "\(at) element \(i)")
                            } else {
                                let want = Self.act64(activation, zx[i])
                                tally.check(
                                    "frozen BN: y vs float64 next to NaN (\(mode))",
                                    abs(y[i] - want) / (1e-5 * abs(want) + 4e-6), limit: 1, "\(at) element \(i)")
                            }
                        }
                    }
                    for i in 0..<count where !nanAt.contains(i) {
                        let ch = (i / m) % c, want = scale[ch] * dy[i] * Self.derivative64(activation, zx[i])
                        tally.check(
                            "frozen BN: dx vs float64 next to NaN", abs(dx[i] - want) / (1e-5 * abs(want) + 4e-6),
                            limit: 1, "\(at) element \(i)")
                    }
                    guard activation == .relu else { continue }
                    for i in nanAt {
                        let want = scale[(i / m) % c] * dy[i]
                        tally.check(
                            "frozen BN + ReLU: dx is scale·dy at NaN (relu passes dy at NaN, as PyTorch)",
                            abs(dx[i] - want) / (1e-5 * abs(want) + 4e-6), limit: 1, "\(at) element \(i)")
                    }
                    // dβ = Σ dz with dz = dy at NaN: finite for every channel; dγ for the channels without NaN.
                    let nanChannels = Set(nanAt.map { ($0 / m) % c })
                    for ch in 0..<c {
                        var db = 0.0, dg = 0.0, terms = 0.0, termsG = 0.0
                        for n in 0..<shape[0] {
                            for p in 0..<m {
                                let i = (n * c + ch) * m + p
                                guard !(zx[i] <= 0) else { continue }  // NaN z: dz = dy
                                let xhat = (x[i] - Double(mean[ch])) / (Double(variance[ch]) + epsilon).squareRoot()
                                db += dy[i]
                                dg += dy[i] * xhat
                                terms += abs(dy[i])
                                termsG += abs(dy[i] * xhat)
                            }
                        }
                        tally.check(
                            "frozen BN + ReLU: dβ vs float64 with NaN in the channel",
                            abs(Double(grads.bias![ch]) - db) / (1e-5 * terms + 1e-7), limit: 1, "\(at) channel \(ch)")
                        if !nanChannels.contains(ch) {
                            tally.check(
                                "frozen BN + ReLU: dγ vs float64",
                                abs(Double(grads.weight![ch]) - dg)
                                    / (1e-5 * termsG + 1e-7), limit: 1, "\(at) channel \(ch)")
                        }
                    }

                    // BN evaluation: NaN stays in its element.
                    let bn = try BatchNorm(channels: c)
                    var bnState = bn.stateDict()
                    for (key, value) in state { bnState[key] = value }
                    try bn.loadStateDict(bnState)
                    bn.activation = .relu
                    let ye = Kit.logical(try bn.forward(Kit.tensor(shape, layout, x), training: false))
                    for i in 0..<count {
                        if nanAt.contains(i) {
                            tally.expect("BN evaluation + ReLU: relu(NaN) is NaN", ye[i].isNaN, "\(at) element \(i)")
                        } else {
                            let want = Self.act64(.relu, zx[i])
                            tally.check(
                                "BN evaluation + ReLU: y vs float64 next to NaN",
                                abs(ye[i] - want) / (1e-5 * abs(want) + 1e-6), limit: 1, "\(at) element \(i)")
                        }
                    }
                }
            }
        }

        // GN: a NaN poisons its (sample, group) set only; relu must keep it NaN there (not 0).
        let gnShape = [3, 6, 4, 5], gc = 6, gm = 20, groups = 3
        var gx = Kit.randomLogical(gnShape.reduce(1, *), mean: 0.5, std: 1.5, &rng)
        gx[(1 * gc + 2) * gm + 7] = .nan  // sample 1, channel 2: group 1
        let gdy = Kit.randomLogical(gx.count, mean: 0, std: 1, &rng)
        let (gg, gb) = Self.randomAffine(gc, &rng)
        let (gz, gyWant) = Self.compositeOutput(
            gx, shape: gnShape, sets: .groupNorm(groups: groups), gamma: gg, beta: gb, .relu)
        let rx = RefTensor(batch: 3, channels: gc, positions: gm, data: gx)
        let gdz = RefTensor(
            batch: 3, channels: gc, positions: gm,
            data: zip(gdy, gz).map { $0 * Self.derivative64(.relu, $1) })
        let gRef = Float64Reference.backward(rx, dy: gdz, sets: .groupNorm(groups: groups), gamma: gg)
        func poisoned(_ i: Int) -> Bool { i / (gc * gm) == 1 && (i / gm) % gc / (gc / groups) == 1 }
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                let at = "GN \(layout) \(path)"
                let gn = try GroupNorm(channels: gc, groups: groups)
                gn.weight!.value = gg.map { Float($0) }
                gn.bias!.value = gb.map { Float($0) }
                gn.activation = .relu
                let y = Kit.logical(try gn.forward(Kit.tensor(gnShape, layout, gx), training: true))
                let grads = try gn.backward(Kit.tensor(gnShape, layout, gdy))
                let dx = Kit.logical(grads.input)
                let clean = y.indices.filter { !poisoned($0) }
                tally.expect(
                    "GN + ReLU: the set with NaN is NaN", y.indices.filter(poisoned).allSatisfy { y[$0].isNaN }, at)
                tally.check(
                    "GN + ReLU: other sets vs float64", Kit.relErr(clean.map { y[$0] }, clean.map { gyWant[$0] }),
                    limit: 1e-5, at)
                tally.check(
                    "GN + ReLU: dx of other sets vs float64",
                    Kit.relErr(clean.map { dx[$0] }, clean.map { gRef.dx.data[$0] }), limit: 1e-5, at)
                tally.check(
                    "GN + ReLU: dβ (finite: dz = dy where z is NaN) vs float64",
                    Kit.relErr(grads.bias!.map(Double.init), gRef.dbeta), limit: 1e-5, at)
                let cleanChannels = [0, 1, 4, 5]
                tally.check(
                    "GN + ReLU: dγ of channels without NaN vs float64",
                    Kit.relErr(cleanChannels.map { Double(grads.weight![$0]) }, cleanChannels.map { gRef.dgamma[$0] }),
                    limit: 1e-5, at)
            }
        }
        tally.assertClean("FusedActivationTests NaN")
    }

    /// `activation = .identity` (also after being set to another activation before any forward) is the layer
    /// whose activation was never set, bit for bit: outputs, gradients and running state.
    func testIdentityIsBitIdenticalToAnUnsetActivation() throws {
        var rng = SeededGenerator(seed: 0x1D)
        let tally = Tally()
        for shape in [[3, 6, 5, 7], [4, 32, 7, 7]] {
            let xs = (0..<3).map { _ in Self.normal(shape, mean: 0.5, std: 1.5, &rng) }
            let dys = (0..<2).map { _ in Self.normal(shape, mean: 0, std: 1, &rng) }
            for family in Family.allCases {
                for spec in Self.specs(family, channels: shape[1]) where spec.applies(to: shape) {
                    let state = Self.randomState(for: try spec.make(shape[1]), &rng)
                    for path in Path.allCases where select(path) {
                        for layout in TensorLayout.allCases {
                            let at = "\(spec.label) \(shape) \(layout) \(path)"
                            let unset = try spec.make(shape[1]), identity = try spec.make(shape[1])
                            try unset.loadStateDict(state)
                            try identity.loadStateDict(state)
                            identity.activation = .silu
                            identity.activation = .identity
                            for step in 0..<2 {
                                let x = xs[step].converted(to: layout), dy = dys[step].converted(to: layout)
                                let a = try identity.forward(x, training: true),
                                    b = try unset.forward(x, training: true)
                                tally.expect("training y bit-identical", Self.bits(a.values) == Self.bits(b.values), at)
                                let ga = try identity.backward(dy), gb = try unset.backward(dy)
                                tally.expect(
                                    "dx bit-identical", Self.bits(ga.input.values) == Self.bits(gb.input.values), at)
                                tally.expect(
                                    "dγ, dβ bit-identical",
                                    ga.weight.map(Self.bits) == gb.weight.map(Self.bits)
                                        && ga.bias.map(Self.bits) == gb.bias.map(Self.bits), at)
                            }
                            let x = xs[2].converted(to: layout)
                            let a = try identity.forward(x, training: false), b = try unset.forward(x, training: false)
                            tally.expect("evaluation y bit-identical", Self.bits(a.values) == Self.bits(b.values), at)
                            tally.expect("running state identical", identity.stateDict() == unset.stateDict(), at)
                        }
                    }
                }
            }
        }
        tally.assertClean("FusedActivationTests identity")
    }

    // MARK: - 4. Extreme pre-activations

    /// SiLU where `exp` over- or underflows in float: per channel (γ, β) gives pre-activations near +90, −90,
    /// ±1e4, across the native exp clamp (−75…−100), around 0 with |γ| = 3000, and a normal channel. Outputs and
    /// gradients are finite and close to float64 (silu(z) ≈ z for large z, ≈ 0 for very negative z); the error
    /// allowed for the output includes the float error of z itself (its rounding, |γ·x̂| + |β| at 4e-7, and for IN
    /// the float32 statistics, |γ| at 2e-6).
    func testSiLUSaturatesAccuratelyAtExtremePreActivations() throws {
        var rng = SeededGenerator(seed: 0xE7)
        let tally = Tally()
        let affine: [(gamma: Double, beta: Double)] = [
            (2, 90), (2, -90), (100, 1e4), (100, -1e4), (3000, 0), (5, -87),
            (1, 0), (-40, 100),
        ]
        let c = affine.count, shape = [2, c, 5, 7], m = Self.positions(shape), count = shape.reduce(1, *)
        let gamma = affine.map(\.gamma), beta = affine.map(\.beta)
        let sets = RefSets.groupNorm(groups: c)
        let x = Kit.randomLogical(count, mean: 0.5, std: 1.5, &rng)
        let dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
        let rx = RefTensor(batch: shape[0], channels: c, positions: m, data: x)
        let reference = Float64Reference.forward(rx, sets: sets, gamma: gamma, beta: beta)
        let z = reference.y.data, xhat = reference.xhat.data
        let dz = RefTensor(
            batch: shape[0], channels: c, positions: m,
            data: zip(dy, z).map { $0 * Self.derivative64(.silu, $1) })
        let back = Float64Reference.backward(rx, dy: dz, sets: sets, gamma: gamma)
        // Frozen BN with running mean 0 and variance 1: z = γ·x/sqrt(1 + ε) + β, elementwise.
        let epsilon = Double(Float(1e-5)), inv = 1 / (1 + epsilon).squareRoot()
        let frozenZ = x.indices.map { gamma[($0 / m) % c] * x[$0] * inv + beta[($0 / m) % c] }
        func roundingOfZ(_ i: Int, _ zTerm: Double) -> Double { 4e-7 * (abs(zTerm) + abs(beta[(i / m) % c])) }
        func channel(_ values: [Double], _ ch: Int) -> [Double] {
            (0..<shape[0]).flatMap { n in (0..<m).map { values[(n * c + ch) * m + $0] } }
        }
        XCTAssertTrue(z.contains { $0 > 9e3 } && z.contains { $0 < -9e3 } && z.contains { $0 < -88 && $0 > -100 })
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                let at = "\(layout) \(path)"
                // Instance norm: every channel its own set.
                let gn = try GroupNorm.instanceNorm(channels: c)
                gn.weight!.value = gamma.map { Float($0) }
                gn.bias!.value = beta.map { Float($0) }
                gn.activation = .silu
                let y = Kit.logical(try gn.forward(Kit.tensor(shape, layout, x), training: true))
                let grads = try gn.backward(Kit.tensor(shape, layout, dy))
                let dx = Kit.logical(grads.input)
                tally.expect("IN + SiLU: y finite", y.allSatisfy(\.isFinite), at)
                tally.expect(
                    "IN + SiLU: dx, dγ, dβ finite",
                    dx.allSatisfy(\.isFinite)
                        && grads.weight!.allSatisfy(\.isFinite) && grads.bias!.allSatisfy(\.isFinite), at)
                for i in 0..<count {
                    let want = Self.act64(.silu, z[i])
                    // z's own float error: its rounding, and the float32-lane statistics (~1e-7 of σ in μ).
                    let allowed =
                        1e-5 * abs(want) + 1.1
                        * (roundingOfZ(i, gamma[(i / m) % c] * xhat[i])
                            + 2e-6 * abs(gamma[(i / m) % c])) + 1e-30
                    tally.check(
                        "IN + SiLU: y vs float64 (ratio to allowed)", abs(y[i] - want) / allowed, limit: 1,
                        "\(at) element \(i) z = \(z[i])")
                }
                let dxScale = dx.map(abs).max() ?? 0
                for ch in 0..<c {
                    // Per channel, relative to the channel's largest value (and 1e-6 of the largest over all, for
                    // the saturated channels whose gradient is ~1e-37).
                    let ref = channel(back.dx.data, ch), got = channel(dx, ch)
                    tally.check(
                        "IN + SiLU: dx vs float64 per channel",
                        Kit.relErr(got, ref, scale: 1e-6 * dxScale), limit: 1e-4, "\(at) channel \(ch)")
                }
                tally.check(
                    "IN + SiLU: dγ vs float64",
                    Kit.relErr(
                        grads.weight!.map(Double.init), back.dgamma,
                        scale: 0), limit: 1e-4, at)
                tally.check(
                    "IN + SiLU: dβ vs float64", Kit.relErr(grads.bias!.map(Double.init), back.dbeta), limit: 1e-4, at)
                for ch in 0..<c {
                    let scale = (back.dgamma.map(abs).max() ?? 0) * 1e-6
                    tally.check(
                        "IN + SiLU: dγ per channel",
                        Kit.relErr(
                            [Double(grads.weight![ch])], [back.dgamma[ch]],
                            scale: scale), limit: 1e-4, "\(at) channel \(ch)")
                    let bscale = (back.dbeta.map(abs).max() ?? 0) * 1e-6
                    tally.check(
                        "IN + SiLU: dβ per channel",
                        Kit.relErr(
                            [Double(grads.bias![ch])], [back.dbeta[ch]],
                            scale: bscale), limit: 1e-4, "\(at) channel \(ch)")
                }

                // Frozen BN: the same pre-activations elementwise, training and evaluation.
                let frozen = try FrozenBatchNorm(channels: c, trainableAffine: true)
                try frozen.loadStateDict([
                    "weight": .float32(shape: [c], values: gamma.map { Float($0) }),
                    "bias": .float32(shape: [c], values: beta.map { Float($0) }),
                    "running_mean": .float32(shape: [c], values: [Float](repeating: 0, count: c)),
                    "running_var": .float32(shape: [c], values: [Float](repeating: 1, count: c)),
                ])
                frozen.activation = .silu
                let ft = Kit.logical(try frozen.forward(Kit.tensor(shape, layout, x), training: true))
                let fdx = Kit.logical(try frozen.backward(Kit.tensor(shape, layout, dy)).input)
                let fe = Kit.logical(try frozen.forward(Kit.tensor(shape, layout, x), training: false))
                tally.expect("frozen BN + SiLU: y and dx finite", (ft + fe + fdx).allSatisfy(\.isFinite), at)
                for i in 0..<count {
                    let ch = (i / m) % c, rounding = roundingOfZ(i, gamma[ch] * x[i])
                    let want = Self.act64(.silu, frozenZ[i]), allowed = 1e-5 * abs(want) + 1.1 * rounding + 1e-30
                    tally.check(
                        "frozen BN + SiLU: y vs float64 (training)", abs(ft[i] - want) / allowed, limit: 1,
                        "\(at) element \(i) z = \(frozenZ[i])")
                    tally.check(
                        "frozen BN + SiLU: y vs float64 (evaluation)", abs(fe[i] - want) / allowed, limit: 1,
                        "\(at) element \(i) z = \(frozenZ[i])")
                    let g = gamma[ch] * inv, wantDx = g * dy[i] * Self.derivative64(.silu, frozenZ[i])
                    let allowedDx = 1e-5 * abs(wantDx) + abs(g * dy[i]) * (0.6 * rounding + 1e-6) + 1e-30
                    tally.check(
                        "frozen BN + SiLU: dx vs float64", abs(fdx[i] - wantDx) / allowedDx, limit: 1,
                        "\(at) element \(i) z = \(frozenZ[i])")
                }
            }
        }
        tally.assertClean("FusedActivationTests SiLU extremes")
    }

    /// SiLU of huge pre-activations (|z| from 1e4 to 3e38, through frozen BN so z = γ·x/sqrt(1 + ε) + β with
    /// β = ±huge): silu(z) = z·σ(z) is 0 to float precision for z ≪ 0 (|z|·e^z underflows; the function's
    /// minimum is −0.278) and z for z ≫ 0, and so is its gradient (0 and dy). Output and `dx` within 1e-5 relative
    /// plus 1e-6 absolute of float64, in training and evaluation, on every path and layout.
    func testSiLUOfHugePreActivationsStaysSaturated() throws {
        var rng = SeededGenerator(seed: 0x4A6E)
        let tally = Tally()
        let beta: [Double] = [-1e4, -1e20, -1e30, -1e33, -1e35, -1e37, -3e38, 1e30, 3e38]
        let c = beta.count, shape = [2, c, 3, 5], m = Self.positions(shape), count = shape.reduce(1, *)
        let x = Kit.randomLogical(count, mean: 0, std: 1, &rng), dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
        let inv = 1 / (1 + Double(Float(1e-5))).squareRoot()
        let z = x.indices.map { x[$0] * inv + Double(Float(beta[($0 / m) % c])) }
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                let frozen = try FrozenBatchNorm(channels: c, trainableAffine: true)
                try frozen.loadStateDict([
                    "weight": .float32(shape: [c], values: [Float](repeating: 1, count: c)),
                    "bias": .float32(shape: [c], values: beta.map { Float($0) }),
                    "running_mean": .float32(shape: [c], values: [Float](repeating: 0, count: c)),
                    "running_var": .float32(shape: [c], values: [Float](repeating: 1, count: c)),
                ])
                frozen.activation = .silu
                let training = Kit.logical(try frozen.forward(Kit.tensor(shape, layout, x), training: true))
                let dx = Kit.logical(try frozen.backward(Kit.tensor(shape, layout, dy)).input)
                let evaluation = Kit.logical(try frozen.forward(Kit.tensor(shape, layout, x), training: false))
                for i in 0..<count {
                    let b = beta[(i / m) % c], at = "\(layout) \(path) β = \(b)"
                    let want = Self.act64(.silu, z[i]), wantDx = inv * dy[i] * Self.derivative64(.silu, z[i])
                    tally.check(
                        "silu(z) vs float64, training (ratio to allowed)",
                        abs(training[i] - want) / (1e-5 * abs(want) + 1e-6), limit: 1, "\(at): \(training[i])")
                    tally.check(
                        "silu(z) vs float64, evaluation (ratio to allowed)",
                        abs(evaluation[i] - want) / (1e-5 * abs(want) + 1e-6), limit: 1, "\(at): \(evaluation[i])")
                    tally.check(
                        "dx vs float64 (ratio to allowed)",
                        abs(dx[i] - wantDx) / (1e-5 * abs(wantDx) + 1e-6 * abs(dy[i]) + 1e-30), limit: 1,
                        "\(at): dx \(dx[i]), dy \(dy[i])")
                }
            }
        }
        tally.assertClean("FusedActivationTests SiLU of huge pre-activations")
    }

    // MARK: - 5. Switching the activation between steps

    /// One layer goes identity → SiLU → ReLU → identity → ReLU → SiLU → identity, one step each, against a twin
    /// that never has an activation (fed `dy ⊙ act'(z)`): every forward and backward matches, and the identity
    /// steps are bit for bit the twin's (for every layer whose state does not depend on the backward).
    func testSwitchingActivationBetweenSteps() throws {
        var rng = SeededGenerator(seed: 0x5C)
        let tally = Tally()
        let shape = [4, 12, 5, 3]
        let sequence: [FusedActivation] = [.identity, .silu, .relu, .identity, .relu, .silu, .identity]
        let xs = sequence.map { _ in Self.normal(shape, mean: 0.5, std: 1.5, &rng) }
        let dys = sequence.map { _ in Self.normal(shape, mean: 0, std: 1, &rng) }
        let evaluationInput = Self.normal(shape, mean: 0.5, std: 1.5, &rng)
        for family in Family.allCases {
            for spec in Self.specs(family, channels: shape[1]) where spec.applies(to: shape) {
                let state = Self.randomState(for: try spec.make(shape[1]), &rng)
                for path in Path.allCases where select(path) {
                    for layout in TensorLayout.allCases {
                        let layer = try spec.make(shape[1]), twin = try spec.make(shape[1])
                        try layer.loadStateDict(state)
                        try twin.loadStateDict(state)
                        for (step, activation) in sequence.enumerated() {
                            let at = "\(spec.label) \(layout) \(path) step \(step) \(activation)"
                            layer.activation = activation
                            let x = xs[step].converted(to: layout), dy = dys[step].converted(to: layout)
                            let y = try layer.forward(x, training: true), z = try twin.forward(x, training: true)
                            tally.check("y vs act(twin)", Self.forwardRatio(y, z, activation), limit: 1, at)
                            let g = try layer.backward(dy),
                                t = try twin.backward(Self.chain(dy, through: z, activation))
                            tally.check(
                                "dx vs twin's for dy·act'(z)",
                                Kit.relErr(
                                    g.input.values.map(Double.init),
                                    t.input.values.map(Double.init)),
                                limit: Self.backwardTolerance, at)
                            tally.check(
                                "dγ, dβ vs twin's",
                                max(
                                    Kit.relErr((g.weight ?? []).map(Double.init), (t.weight ?? []).map(Double.init)),
                                    Kit.relErr((g.bias ?? []).map(Double.init), (t.bias ?? []).map(Double.init))),
                                limit: Self.backwardTolerance, at)
                            tally.expect(
                                "affine gradients exactly when affine",
                                (g.weight != nil) == (layer.weight != nil) && (t.bias != nil) == (twin.bias != nil), at)
                            let ye = try layer.forward(evaluationInput.converted(to: layout), training: false)
                            let ze = try twin.forward(evaluationInput.converted(to: layout), training: false)
                            tally.check(
                                "evaluation y vs act(twin)", Self.forwardRatio(ye, ze, activation), limit: 1, at)
                            if activation == .identity && !spec.backwardState {
                                tally.expect(
                                    "identity step bit-identical to the twin",
                                    Self.bits(y.values) == Self.bits(z.values)
                                        && Self.bits(g.input.values) == Self.bits(t.input.values)
                                        && g.weight.map(Self.bits) == t.weight.map(Self.bits)
                                        && g.bias.map(Self.bits) == t.bias.map(Self.bits)
                                        && Self.bits(ye.values) == Self.bits(ze.values), at)
                            }
                        }
                    }
                }
            }
        }
        tally.assertClean("FusedActivationTests switching")
    }

    // MARK: - 6. Large mean, small spread

    /// `x = 1e4 + 0.01·randn` (float32) with GN + SiLU and BN + ReLU (whole and ghost batches) on every path and
    /// layout: the output and `dx`, `dγ`, `dβ` within 1e-5 of float64 (the layers centre on the float mean, so
    /// nothing is lost to the offset).
    func testLargeMeanSmallSpreadStaysExactWithActivations() throws {
        var rng = SeededGenerator(seed: 0x1E4)
        let tally = Tally()
        let cases: [(String, [Int], RefSets, FusedActivation, (Int) throws -> NormalizationLayer)] = [
            (
                "GN 4 groups + SiLU", [2, 8, 6, 6], .groupNorm(groups: 4), .silu,
                { try GroupNorm(channels: $0, groups: 4) }
            ),
            ("LN + SiLU", [2, 8, 6, 6], .groupNorm(groups: 1), .silu, { try GroupNorm.layerNorm(channels: $0) }),
            ("BN + ReLU", [4, 6, 5, 5], .batchNorm(normBatch: 4), .relu, { try BatchNorm(channels: $0) }),
            (
                "BN normBatch 2 + ReLU", [4, 6, 5, 5], .batchNorm(normBatch: 2), .relu,
                { try BatchNorm(channels: $0, normBatch: 2) }
            ),
        ]
        for (label, shape, sets, activation, make) in cases {
            let c = shape[1], count = shape.reduce(1, *)
            let (gamma, beta) = Self.randomAffine(c, &rng)
            var x: [Double] = [], z: [Double] = [], y: [Double] = []
            // For ReLU, inputs whose pre-activations stay 1e-3 away from the kink.
            for attempt in 0... {
                x = Kit.randomLogical(count, mean: 1e4, std: 0.01, &rng)
                (z, y) = Self.compositeOutput(x, shape: shape, sets: sets, gamma: gamma, beta: beta, activation)
                if activation != .relu || z.allSatisfy({ abs($0) >= 1e-3 }) { break }
                guard attempt < 200 else { return XCTFail("no input away from the kink") }
            }
            let dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
            let rx = RefTensor(batch: shape[0], channels: c, positions: Self.positions(shape), data: x)
            let dz = RefTensor(
                batch: shape[0], channels: c, positions: Self.positions(shape),
                data: zip(dy, z).map { $0 * Self.derivative64(activation, $1) })
            let back = Float64Reference.backward(rx, dy: dz, sets: sets, gamma: gamma)
            for path in Path.allCases where select(path) {
                for layout in TensorLayout.allCases {
                    let at = "\(label) \(shape) \(layout) \(path)"
                    let layer = try make(c)
                    layer.weight!.value = gamma.map { Float($0) }
                    layer.bias!.value = beta.map { Float($0) }
                    layer.activation = activation
                    let out = Kit.logical(try layer.forward(Kit.tensor(shape, layout, x), training: true))
                    let grads = try layer.backward(Kit.tensor(shape, layout, dy))
                    tally.check("y vs float64", Kit.relErr(out, y), limit: 1e-5, at)
                    tally.check("dx vs float64", Kit.relErr(Kit.logical(grads.input), back.dx.data), limit: 1e-5, at)
                    tally.check(
                        "dγ vs float64", Kit.relErr(grads.weight!.map(Double.init), back.dgamma), limit: 1e-5, at)
                    tally.check("dβ vs float64", Kit.relErr(grads.bias!.map(Double.init), back.dbeta), limit: 1e-5, at)
                }
            }
        }
        tally.assertClean("FusedActivationTests 1e4 + 0.01·randn")
    }
}
