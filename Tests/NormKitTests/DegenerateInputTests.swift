import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// Degenerate shapes and extreme values through the public API, on every kernel path this CPU has and in both
/// layouts (the guarantees: `docs/NORMALIZATION.md`, "NormKit on degenerate input"):
///
/// - **Sets of one value** (IN and GN with one channel per group on 1×1 maps, LN of one channel): the variance is
///   0, so `y = act(β)` exactly, `dγ = 0` exactly, `dβ = Σ dz` and `dx = 0` to the rounding of its terms, with and
///   without a fused activation. (BN's one value per channel in training is an error: InputErrorTests.)
/// - **Constant inputs** (variance exactly 0, sets longer than one float block): the same exact output,
///   `dx = rstd·(g − mean g)` (spec §1 with `x̂ = 0`), BN's running variance 0.
/// - **ε must be positive**: `ε = 0` made a constant set `0/0` (NaN through the whole network); every layer refuses it
///   at construction, and the smallest positive float is enough to keep a constant set finite.
/// - **No values**: a spatial dimension of 0 is refused by every forward that takes statistics from its input (GN in
///   both modes, MABN's training forward), as BN's and BRN's training forwards already did; evaluation with running
///   statistics returns an empty tensor.
/// - **A shape whose size overflows** `Int` is refused by `Tensor(shape:)` instead of trapping, and **a size larger
///   than memory** (a tensor, a layer's per-channel vectors, MABN's ring buffer) before anything is allocated.
/// - **Magnitudes**: float64 accuracy while a set's spread stays below about 1e17 and its mean below about 1e20;
///   beyond (a spread of 1e20) the squared deviations overflow float: outputs stay finite, no running statistic
///   becomes infinite, and a skipped update is counted.
/// - **One non-finite element**: GN keeps it in its set, BN in its channel; every other output and gradient is bit
///   for bit the clean input's.
/// - **Odd sizes**: C = 1, 3, 17, 33, positions 1, 7, 15, 17, N = 1, 3, with ReLU and SiLU fused, against float64.
final class DegenerateInputTests: KernelPathTestCase {
    typealias Kit = VariantTestKit

    /// The activations in float64 (FusedActivationTests' own, independent of ``FusedActivation``'s).
    static func act64(_ activation: FusedActivation, _ z: Double) -> Double {
        FusedActivationTests.act64(activation, z)
    }
    static func derivative64(_ activation: FusedActivation, _ z: Double) -> Double {
        FusedActivationTests.derivative64(activation, z)
    }

    /// Random `γ` (0.5…1.5, random sign) and `β` (−1…1), as floats.
    static func randomAffine(_ c: Int, _ rng: inout SeededGenerator) -> ([Float], [Float]) {
        let gamma = (0..<c).map { _ in Float.random(in: 0.5...1.5, using: &rng) * (Bool.random(using: &rng) ? 1 : -1) }
        return (gamma, (0..<c).map { _ in Float.random(in: -1...1, using: &rng) })
    }

    static func setAffine(_ layer: NormalizationLayer, _ gamma: [Float], _ beta: [Float]) {
        layer.weight!.value = gamma
        layer.bias!.value = beta
    }

    /// What one training step (forward, backward) gives, in logical order.
    struct Step {
        var y: [Double], dx: [Double], dgamma: [Float], dbeta: [Float]
    }

    func trainingStep(
        _ layer: NormalizationLayer, _ shape: [Int], _ layout: TensorLayout, x: [Double], dy: [Double]
    ) throws -> Step {
        let y = try layer.forward(Kit.tensor(shape, layout, x), training: true)
        let grads = try layer.backward(Kit.tensor(shape, layout, dy))
        return Step(y: Kit.logical(y), dx: Kit.logical(grads.input), dgamma: grads.weight!, dbeta: grads.bias!)
    }

    /// A training step of a new layer from `make`, given `γ`, `β` and `activation`, on every kernel path and in both
    /// layouts; `check` gets the layer, the step, the layout and a label naming the activation, path and layout.
    func forEachTrainingStep(
        _ make: () throws -> NormalizationLayer, shape: [Int], x: [Double], dy: [Double], gamma: [Float],
        beta: [Float], activation: FusedActivation = .identity,
        _ check: (NormalizationLayer, Step, TensorLayout, String) throws -> Void
    ) throws {
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                let layer = try make()
                Self.setAffine(layer, gamma, beta)
                layer.activation = activation
                let step = try trainingStep(layer, shape, layout, x: x, dy: dy)
                try check(layer, step, layout, "\(activation) \(path) \(layout)")
            }
        }
        select(.native)
    }

    /// The spec's backward of a set whose `x̂` is 0 (spec §1): `dx = rstd·(g − mean_I(g))` with `g = γ_c·dz`, and
    /// `dβ_c = Σ dz`; also the magnitude of dx's terms, `rstd·max|g|`. `sets` lists each set's `(n, c)` pairs.
    static func zeroVarianceBackward(
        dz: [Double], gamma: [Float], epsilon: Float, sets: [[(n: Int, c: Int)]], channels: Int, positions: Int
    ) -> (dx: [Double], dbeta: [Double], scale: Double) {
        let rstd = 1 / Double(epsilon).squareRoot()
        var dx = [Double](repeating: 0, count: dz.count), dbeta = [Double](repeating: 0, count: channels)
        var scale = 0.0
        func index(_ n: Int, _ c: Int, _ p: Int) -> Int { (n * channels + c) * positions + p }
        for set in sets {
            var sum = 0.0
            for (n, c) in set { for p in 0..<positions { sum += Double(gamma[c]) * dz[index(n, c, p)] } }
            let mean = sum / Double(set.count * positions)
            for (n, c) in set {
                for p in 0..<positions {
                    let g = Double(gamma[c]) * dz[index(n, c, p)]
                    dx[index(n, c, p)] = rstd * (g - mean)
                    scale = max(scale, rstd * abs(g))
                    dbeta[c] += dz[index(n, c, p)]
                }
            }
        }
        return (dx, dbeta, scale)
    }

    /// Checks a training step on an input whose sets all have variance 0 against the spec: `y = act(β)` (exact for
    /// identity and ReLU; SiLU to its kernel's few ulps), `dγ = 0` exactly, `dβ = Σ dz`, `dx = rstd·(g − mean g)`
    /// to float rounding of its terms.
    func checkZeroVarianceStep(
        _ step: Step, shape: [Int], dy: [Double], gamma: [Float], beta: [Float], activation: FusedActivation,
        sets: RefSets, epsilon: Float = 1e-5, _ at: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        let c = shape[1], m = shape.dropFirst(2).reduce(1, *)
        var dz = dy
        for i in dz.indices { dz[i] *= Self.derivative64(activation, Double(beta[(i / m) % c])) }
        for i in step.y.indices {
            let want = Self.act64(activation, Double(beta[(i / m) % c]))
            if activation == .silu {
                XCTAssertEqual(step.y[i], want, accuracy: 1e-6 * max(1, abs(want)), "y \(at)", file: file, line: line)
            } else if step.y[i] != Double(Float(want)) {
                return XCTFail(
                    "y[\(i)] = \(step.y[i]), want act(β) = \(Float(want)) exactly: \(at)", file: file, line: line)
            }
        }
        XCTAssertEqual(
            step.dgamma, [Float](repeating: 0, count: c), "dγ = Σ dz·x̂ with x̂ = 0: \(at)", file: file, line: line)
        let want = Self.zeroVarianceBackward(
            dz: dz, gamma: gamma, epsilon: epsilon, sets: sets.members(batch: shape[0], channels: c), channels: c,
            positions: m)
        let dbetaTerms = (0..<c).map { ch in
            (0..<shape[0]).reduce(0.0) { t, n in t + (0..<m).reduce(0.0) { $0 + abs(dz[(n * c + ch) * m + $1]) } }
        }
        XCTAssertLessThanOrEqual(
            sumError(step.dbeta, want.dbeta, terms: dbetaTerms), 1e-6, "dβ \(at)", file: file, line: line)
        XCTAssertLessThanOrEqual(
            Kit.relErr(step.dx, want.dx, scale: want.scale), 1e-6, "dx \(at)", file: file, line: line)
    }

    // MARK: - Sets of one value

    /// IN on 1×1 maps, GN with one channel per group, LN of a single channel: every set holds one value, its variance
    /// is 0, and the spec's formulas give `y = β`, `dγ = 0`, `dβ = Σ dy`, `dx = rstd·(g − g) = 0`. (PyTorch's
    /// InstanceNorm refuses one spatial value in training; GroupNorm accepts it, and so does NormKit's, whose IN is GN.)
    func testSetsOfOneValueGiveBetaAndZeroGradientsAsTheSpecSays() throws {
        var rng = SeededGenerator(seed: 0xDE61)
        let cases: [(String, [Int], () throws -> NormalizationLayer, RefSets)] = [
            ("IN 1×1", [3, 4, 1, 1], { try GroupNorm.instanceNorm(channels: 4) }, .groupNorm(groups: 4)),
            (
                "IN 1×1, one sample, 33 channels", [1, 33, 1, 1], { try GroupNorm.instanceNorm(channels: 33) },
                .groupNorm(groups: 33)
            ),
            ("GN groupSize 1, rank 0", [2, 17], { try GroupNorm(channels: 17, groupSize: 1) }, .groupNorm(groups: 17)),
            (
                "LN of one channel, 1×1×1", [3, 1, 1, 1, 1], { try GroupNorm.layerNorm(channels: 1) },
                .groupNorm(groups: 1)
            ),
        ]
        var checked = 0
        for (label, shape, make, sets) in cases {
            let count = shape.reduce(1, *)
            let x = Kit.randomLogical(count, mean: 0.5, std: 2, &rng),
                dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
            let (gamma, beta) = Self.randomAffine(shape[1], &rng)
            for activation in FusedActivation.allCases {
                try forEachTrainingStep(
                    make, shape: shape, x: x, dy: dy, gamma: gamma, beta: beta, activation: activation
                ) { layer, step, layout, run in
                    let at = "\(label) \(shape) \(run)"
                    checkZeroVarianceStep(
                        step, shape: shape, dy: dy, gamma: gamma, beta: beta, activation: activation, sets: sets, at)
                    // GN's evaluation computes the same.
                    let yEval = Kit.logical(try layer.forward(Kit.tensor(shape, layout, x), training: false))
                    XCTAssertEqual(yEval, step.y, "evaluation \(at)")
                    checked += 1
                }
            }
        }
        print("DegenerateInputTests: \(checked) one-value-set steps")
    }

    // MARK: - Constant inputs

    /// Every set constant (variance exactly 0): BN (whole batch and ghost batches), BRN, GN, LN, IN on values from 0
    /// to 3e5, sets shorter and longer than one 2048-float block, 33 channels; `y = act(β)` exactly, `dγ = 0`
    /// exactly, `dx = rstd·(g − mean g)`, and BN's running mean is the value and its running variance 0 (to 1e-15).
    func testConstantInputsHaveZeroVarianceAndTheSpecsOutputs() throws {
        var rng = SeededGenerator(seed: 0xDE62)
        let brnSchedule = BatchRenorm.Schedule(warmupSteps: 0, rMax: 1.5, dMax: 0, rSteps: 1, dSteps: 1)
        var checked = 0
        for shape in [[4, 3, 5], [4, 33, 7], [4, 3, 48, 48]] {
            let c = shape[1], count = shape.reduce(1, *), m = count / shape[0] / c
            let cases: [(String, () throws -> NormalizationLayer, RefSets)] = [
                ("BN", { try BatchNorm(channels: c, momentum: 1) }, .batchNorm(normBatch: 4)),
                ("BN normBatch 2", { try BatchNorm(channels: c, momentum: 1, normBatch: 2) }, .batchNorm(normBatch: 2)),
                // BRN with d_max = 0: y = γ·(r·x̂) + β with x̂ = 0.
                ("BRN", { try BatchRenorm(channels: c, schedule: brnSchedule) }, .batchNorm(normBatch: 4)),
                ("GN 3 groups", { try GroupNorm(channels: c, groups: 3) }, .groupNorm(groups: 3)),
                ("LN", { try GroupNorm.layerNorm(channels: c) }, .groupNorm(groups: 1)),
                ("IN", { try GroupNorm.instanceNorm(channels: c) }, .groupNorm(groups: c)),
            ]
            for value in [0, 7, 0.1, -3e5] as [Double] {
                let x = [Double](repeating: value, count: count), dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
                let (gamma, beta) = Self.randomAffine(c, &rng)
                for (label, make, sets) in cases {
                    for activation in FusedActivation.allCases {
                        try forEachTrainingStep(
                            make, shape: shape, x: x, dy: dy, gamma: gamma, beta: beta, activation: activation
                        ) { layer, step, _, run in
                            let at = "\(label) x = \(value) \(shape) \(run)"
                            if layer is BatchRenorm {
                                // r scales the gradient (spec §3): the forward and dγ only.
                                XCTAssertTrue(step.dgamma.allSatisfy { $0 == 0 }, "dγ \(at)")
                                for (i, y) in step.y.enumerated() {
                                    let want = Double(Float(Self.act64(activation, Double(beta[(i / m) % c]))))
                                    XCTAssertEqual(y, want, accuracy: activation == .silu ? 1e-6 : 0, at)
                                }
                            } else {
                                checkZeroVarianceStep(
                                    step, shape: shape, dy: dy, gamma: gamma, beta: beta, activation: activation,
                                    sets: sets, at)
                            }
                            if let bn = layer as? BatchNorm {
                                // The float mean of the first pass may miss the value by an ulp, which the
                                // correction takes out to about 1e-15·ulp(x)² (docs/NORMALIZATION.md).
                                XCTAssertEqual(bn.runningMean, [Float](repeating: Float(value), count: c), at)
                                XCTAssertTrue(
                                    bn.runningVariance.allSatisfy { $0 <= 1e-15 }, "\(bn.runningVariance) \(at)")
                                XCTAssertEqual(bn.skippedUpdates, 0, at)
                            }
                            checked += 1
                        }
                    }
                }
            }
        }
        print("DegenerateInputTests: \(checked) constant-input steps")
    }

    // MARK: - ε

    /// `ε = 0` let a constant set (an all-zero channel after a dead ReLU, zero padding) compute `0·(1/0)`: NaN
    /// outputs and gradients in BN, GN and BRN training and GN evaluation, and in MABN and frozen BN on an all-zero
    /// statistic. PyTorch's BN refuses `eps = 0` in training ("eps must be positive"); every NormKit layer now refuses
    /// it at construction, with NaN, infinite and negative values. The smallest positive float keeps a constant set
    /// finite: `y = β`.
    func testEpsilonMustBePositiveAndTheSmallestPositiveOneKeepsConstantSetsFinite() throws {
        var rng = SeededGenerator(seed: 0xDE63)
        let makers: [(String, (Float) throws -> NormalizationLayer)] = [
            ("BatchNorm", { try BatchNorm(channels: 2, epsilon: $0) }),
            ("GroupNorm", { try GroupNorm(channels: 2, groups: 1, epsilon: $0) }),
            ("BatchRenorm", { try BatchRenorm(channels: 2, epsilon: $0) }),
            ("MovingAverageBatchNorm", { try MovingAverageBatchNorm(channels: 2, bufferSize: 2, epsilon: $0) }),
            ("FrozenBatchNorm", { try FrozenBatchNorm(channels: 2, epsilon: $0) }),
        ]
        for (kind, make) in makers {
            for epsilon in [0, -0.0, -1e-5, .nan, .infinity, -.infinity] as [Float] {
                XCTAssertThrowsError(try make(epsilon), "\(kind) epsilon \(epsilon)") { error in
                    guard case .invalidArgument(let layer, let name, _, let expected)? = error as? NormalizationError
                    else { return XCTFail("\(kind) epsilon \(epsilon): \(error)") }
                    XCTAssertTrue(layer.hasPrefix(kind), "\(error)")
                    XCTAssertEqual(name, "epsilon")
                    XCTAssertEqual(expected, "a finite value > 0")
                }
            }
            let layer = try make(.leastNonzeroMagnitude)
            let zeros = Tensor(zeros: [3, 2, 4])
            let y = try layer.forward(zeros, training: true)
            let grads = try layer.backward(Tensor.randomNormal(shape: [3, 2, 4], using: &rng))
            XCTAssertTrue(y.values.allSatisfy { $0 == 0 }, "\(kind): y = β = 0, got \(y.values)")
            XCTAssertTrue(grads.input.values.allSatisfy(\.isFinite), "\(kind): dx \(grads.input.values)")
            XCTAssertTrue(try layer.forward(zeros, training: false).values.allSatisfy(\.isFinite), kind)
        }
    }

    // MARK: - No values

    /// An input with a spatial dimension of 0 has no values to take statistics from. BN and BRN refused it in
    /// training (as one value per channel); GN trained on it and returned `dγ = NaN` (0·(1/sqrt(NaN))), and MABN
    /// advanced its iteration counter and counted a skipped update for an empty chunk, then returned `dγ = NaN`. Now
    /// every forward that takes statistics from its input refuses it — BN, BRN and MABN training, GN/LN/IN in both
    /// modes (as PyTorch's GroupNorm: "Expected HxW to be greater than 0") — with a message that says why, and nothing
    /// changes; evaluation with running statistics, and frozen BN, return an empty tensor (zero gradients).
    func testAZeroSpatialDimensionIsRefusedWhereStatisticsComeFromTheInput() throws {
        for shape in [[2, 4, 0], [2, 4, 3, 0], [1, 4, 0, 0], [2, 4, 0, 2, 2]] {
            for layout in TensorLayout.allCases {
                let x = try Tensor(shape: shape, layout: layout)
                let statistics: [(NormalizationLayer, evaluationToo: Bool)] = [
                    (try BatchNorm(channels: 4), false), (try BatchNorm(channels: 4, normBatch: 1), false),
                    (try BatchRenorm(channels: 4), false),
                    (try MovingAverageBatchNorm(channels: 4, bufferSize: 2), false),
                    (try GroupNorm(channels: 4, groups: 2), true), (try GroupNorm.layerNorm(channels: 4), true),
                    (try GroupNorm.instanceNorm(channels: 4), true),
                ]
                for (layer, evaluationToo) in statistics {
                    let at = "\(layer.name) \(shape) \(layout)"
                    let before = layer.stateDict()
                    for training in evaluationToo ? [true, false] : [true] {
                        XCTAssertThrowsError(try layer.forward(x, training: training), at) { error in
                            XCTAssertEqual(
                                error as? NormalizationError,
                                .tooFewValuesPerChannel(layer: layer.name, valuesPerSet: 0),
                                at)
                            XCTAssertTrue("\(error)".contains("a spatial dimension is 0"), "\(error)")
                        }
                    }
                    XCTAssertEqual(layer.stateDict(), before, at)
                    XCTAssertThrowsError(try layer.backward(x), "no forward to pair with: \(at)")
                    if let mabn = layer as? MovingAverageBatchNorm {
                        XCTAssertEqual(mabn.iterations, 0, at)
                        XCTAssertEqual(mabn.skippedUpdates, 0, at)
                    }
                    if !evaluationToo {
                        let y = try layer.forward(x, training: false)
                        XCTAssertEqual(y.shape, shape, at)
                        XCTAssertEqual(y.layout, layout, at)
                    }
                }
                let frozen = try FrozenBatchNorm(channels: 4, trainableAffine: true)
                let y = try frozen.forward(x, training: true)
                XCTAssertEqual(y.shape, shape)
                let grads = try frozen.backward(x)
                XCTAssertEqual(grads.input.shape, shape)
                XCTAssertEqual(grads.weight, [0, 0, 0, 0])
                XCTAssertEqual(grads.bias, [0, 0, 0, 0])
            }
        }
    }

    // MARK: - Shapes

    /// `Tensor(shape:)` is the initializer for shapes from data; one whose element count overflows `Int` (2^40 × 2^40,
    /// also followed by a 0, which leaves the partial product `N·C` to overflow) trapped on that arithmetic overflow.
    /// It is refused with `invalidShape`, as is a count whose bytes overflow (2 × 2^61 floats).
    func testAShapeWhoseSizeOverflowsIsRefusedNotATrap() {
        for shape in [[1 << 40, 1 << 40], [1 << 40, 1 << 40, 0], [1 << 31, 1 << 31, 1 << 2], [2, 1 << 61]] {
            XCTAssertFalse(Tensor.isValid(shape: shape), "\(shape)")
            XCTAssertThrowsError(try Tensor(shape: shape)) { error in
                XCTAssertEqual(error as? NormalizationError, .invalidShape(layer: "Tensor", shape: shape))
            }
            XCTAssertThrowsError(try Tensor(shape: shape, values: []))
            XCTAssertThrowsError(try Tensor.validate(shape: shape, for: "GroupNorm(channels: 4, groups: 2)")) { error in
                XCTAssertTrue("\(error)".contains("\(shape)"), "\(error)")
            }
        }
        // Large but representable empty shapes stay valid.
        XCTAssertTrue(Tensor.isValid(shape: [1 << 20, 1 << 20, 0]))
        XCTAssertTrue(Tensor.isValid(shape: [0, 1 << 60]))
    }

    /// A size that fits in `Int` but not in memory crashed in the allocator (or, with overcommit, got the process
    /// killed when the pages were touched): `Tensor(shape: [2^30, 2^20])`, a layer over 2^40 channels (its `γ`, `β` and
    /// running statistics), MABN's `bufferSize × channels` ring buffer; a ring of 2^62 × 4 floats trapped on the
    /// multiplication. Each is now `tooLargeForMemory`, naming the block, its bytes and this machine's memory, before
    /// anything is allocated (the test allocates nothing large).
    func testSizesLargerThanMemoryAreRefusedBeforeAnythingIsAllocated() {
        let limit = MemoryLimit.bytes
        func assertTooLarge(
            _ make: @autoclosure () throws -> Any, layer: String, what: String, bytes: Int, line: UInt = #line
        ) {
            XCTAssertThrowsError(try make(), line: line) { error in
                XCTAssertEqual(
                    error as? NormalizationError,
                    .tooLargeForMemory(layer: layer, what: what, bytes: bytes, limit: limit), line: line)
                let size = bytes == Int.max ? "more than \(Int.max) bytes" : "\(bytes) bytes"
                XCTAssertEqual(
                    "\(error)",
                    "\(layer): \(what) needs \(size), more than this machine's memory (\(limit) bytes) can hold",
                    line: line)
            }
        }
        let shape = [1 << 30, 1 << 20]
        XCTAssertTrue(Tensor.isValid(shape: shape), "countable: only memory refuses it")
        assertTooLarge(try Tensor(shape: shape), layer: "Tensor", what: "a tensor of shape \(shape)", bytes: 1 << 52)
        assertTooLarge(
            try Tensor(shape: shape, values: []), layer: "Tensor", what: "a tensor of shape \(shape)", bytes: 1 << 52)
        assertTooLarge(
            try Tensor.validate(shape: shape, for: "Source"), layer: "Source", what: "a tensor of shape \(shape)",
            bytes: 1 << 52)

        let channels = 1 << 40, perChannel = "a per-channel vector of \(channels) floats"
        assertTooLarge(
            try BatchNorm(channels: channels), layer: "BatchNorm(channels: \(channels))", what: perChannel,
            bytes: 1 << 42)
        assertTooLarge(
            try BatchRenorm(channels: channels), layer: "BatchRenorm(channels: \(channels))", what: perChannel,
            bytes: 1 << 42)
        assertTooLarge(
            try FrozenBatchNorm(channels: channels), layer: "FrozenBatchNorm(channels: \(channels))", what: perChannel,
            bytes: 1 << 42)
        assertTooLarge(
            try GroupNorm(channels: channels, groups: 1), layer: "GroupNorm(channels: \(channels), groups: 1)",
            what: perChannel, bytes: 1 << 42)
        assertTooLarge(
            try GroupNorm(channels: Int.max, groups: 1), layer: "GroupNorm(channels: \(Int.max), groups: 1)",
            what: "a per-channel vector of \(Int.max) floats", bytes: Int.max)
        let mabn = { (channels: Int, buffer: Int) in try MovingAverageBatchNorm(channels: channels, bufferSize: buffer)
        }
        func mabnName(_ channels: Int, _ buffer: Int) -> String {
            "MovingAverageBatchNorm(channels: \(channels), bufferSize: \(buffer))"
        }
        assertTooLarge(try mabn(channels, 1), layer: mabnName(channels, 1), what: perChannel, bytes: 1 << 42)
        let ring = "a ring buffer (bufferSize × channels)"
        assertTooLarge(
            try mabn(1 << 20, 1 << 30), layer: mabnName(1 << 20, 1 << 30),
            what: "\(ring) of \(1 << 30) × \(1 << 20) floats", bytes: 1 << 52)
        assertTooLarge(
            try mabn(4, 1 << 62), layer: mabnName(4, 1 << 62), what: "\(ring) of \(1 << 62) × 4 floats", bytes: Int.max)
    }

    // MARK: - Magnitudes

    /// The statistics add squared deviations from a float mean in float lanes (at most 2,048 per float sum), so they
    /// are float64-accurate while a set's spread stays below about 1e17 and its mean below about 1e20 (the float
    /// mean of the first pass misses the true one by up to ~1e-5 relative, a deviation of its own); PyTorch's float
    /// kernels give `y = β` from a spread of about 1e19. Beyond, at a spread of 1e20, `Σ(x − μ)²` overflows float on
    /// the native paths: the outputs stay finite (the variance is infinite and `y` collapses to `β`, as PyTorch's),
    /// and BN, BRN and MABN leave their running statistics alone and count the skipped update.
    func testMagnitudesUpToTheDocumentedRangeMatchFloat64AndBeyondStayFinite() throws {
        var rng = SeededGenerator(seed: 0xDE64)
        let tolerance = 1e-5
        var worst = 0.0
        for (mean, spread) in [(0.0, 1e17), (-3e17, 1e17), (1e20, 1e16)] {
            for shape in [[3, 17, 15], [2, 3, 48, 48]] {
                let c = shape[1], count = shape.reduce(1, *),
                    rx = RefTensor(
                        batch: shape[0], channels: c,
                        positions: count / shape[0] / c, data: Kit.randomLogical(count, mean: mean, std: spread, &rng))
                let dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
                var rdy = rx
                rdy.data = dy
                let (gamma, beta) = Self.randomAffine(c, &rng)
                let cases: [(String, () throws -> NormalizationLayer, RefSets)] = [
                    ("BN", { try BatchNorm(channels: c) }, .batchNorm(normBatch: shape[0])),
                    (
                        "GN", { try GroupNorm(channels: c, groups: c == 17 ? 1 : 3) },
                        .groupNorm(groups: c == 17 ? 1 : 3)
                    ),
                    ("IN", { try GroupNorm.instanceNorm(channels: c) }, .groupNorm(groups: c)),
                ]
                for (label, make, sets) in cases {
                    let g64 = gamma.map(Double.init), b64 = beta.map(Double.init)
                    let want = Float64Reference.forward(rx, sets: sets, gamma: g64, beta: b64)
                    let back = Float64Reference.backward(rx, dy: rdy, sets: sets, gamma: g64)
                    try forEachTrainingStep(make, shape: shape, x: rx.data, dy: dy, gamma: gamma, beta: beta) {
                        _, step, _, run in
                        let errors = [
                            Kit.relErr(step.y, want.y.data), Kit.relErr(step.dx, back.dx.data),
                            sumError(step.dgamma, back.dgamma, terms: back.dgammaTerms),
                            sumError(step.dbeta, back.dbeta, terms: back.dbetaTerms),
                        ]
                        worst = max(worst, errors.max()!)
                        XCTAssertLessThanOrEqual(
                            errors.max()!, tolerance,
                            "y, dx, dγ, dβ \(errors) \(label) \(mean) ± \(spread) \(shape) \(run)")
                    }
                }
            }
        }
        // Beyond the range: finite outputs, running statistics kept.
        let shape = [4, 3, 48, 48], count = shape.reduce(1, *)
        let x = Kit.randomLogical(count, mean: 0, std: 1e20, &rng), dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                let layers: [NormalizationLayer] = [
                    try BatchNorm(channels: 3), try BatchRenorm(channels: 3),
                    try MovingAverageBatchNorm(channels: 3, bufferSize: 2), try GroupNorm(channels: 3, groups: 1),
                ]
                for layer in layers {
                    let at = "\(layer.name) x = ±1e20 \(path) \(layout)"
                    let before = layer.stateDict().filter { $0.key.hasPrefix("running") }
                    let step = try trainingStep(layer, shape, layout, x: x, dy: dy)
                    XCTAssertTrue(step.y.allSatisfy(\.isFinite) && step.dx.allSatisfy(\.isFinite), at)
                    // Paths whose sums overflow skip the update and count it; one that gets a finite variance (the
                    // portable channels-last sums run in Double) stores finite values.
                    let after = layer.stateDict().filter { $0.key.hasPrefix("running") }
                    for case .float32(_, let values) in after.values {
                        XCTAssertTrue(values.allSatisfy(\.isFinite), "\(values) \(at)")
                    }
                    let skipped =
                        (layer as? BatchNorm)?.skippedUpdates ?? (layer as? BatchRenorm)?.skippedUpdates
                        ?? (layer as? MovingAverageBatchNorm)?.skippedUpdates
                    if let skipped { XCTAssertEqual(skipped, after == before ? 1 : 0, at) }
                }
            }
        }
        select(.native)
        print(
            String(format: "DegenerateInputTests: spread 1e17 (means 0, -3e17), 1e20 ± 1e16: worst error %.2e", worst))
    }

    // MARK: - Non-finite elements

    /// NaN, +∞ or −∞ in one element: GN's output and `dx` are non-finite in that (sample, group) set only and BN's in
    /// that channel only; every other element, and `dγ`, `dβ` of the untouched channels, are bit for bit those of the
    /// same layer on the input without it. (ReLU's NaN semantics: FusedActivationTests.)
    func testOneNonFiniteElementStaysInItsSetOrChannel() throws {
        var rng = SeededGenerator(seed: 0xDE65)
        let shape = [3, 6, 5, 5], count = shape.reduce(1, *), m = 25
        let clean = Kit.randomLogical(count, mean: 0.3, std: 1.2, &rng),
            dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
        let (gamma, beta) = Self.randomAffine(6, &rng)
        let bad = (1 * 6 + 2) * m + 7  // sample 1, channel 2 (GN group 1 of 3)
        for value in [Double.nan, .infinity, -.infinity] {
            var x = clean
            x[bad] = value
            let cases: [(NormalizationLayer, NormalizationLayer, (Int) -> Bool, Set<Int>)] = [
                (
                    try GroupNorm(channels: 6, groups: 3), try GroupNorm(channels: 6, groups: 3),
                    { i in i / (6 * m) == 1 && (i / m) % 6 / 2 == 1 }, [2, 3]
                ),
                (try BatchNorm(channels: 6), try BatchNorm(channels: 6), { i in (i / m) % 6 == 2 }, [2]),
            ]
            for path in Path.allCases where select(path) {
                for layout in TensorLayout.allCases {
                    for (poisoned, reference, inPoisonedSet, poisonedChannels) in cases {
                        Self.setAffine(poisoned, gamma, beta)
                        Self.setAffine(reference, gamma, beta)
                        let at = "\(poisoned.name) x = \(value) \(path) \(layout)"
                        let got = try trainingStep(poisoned, shape, layout, x: x, dy: dy)
                        let want = try trainingStep(reference, shape, layout, x: clean, dy: dy)
                        for i in 0..<count {
                            if inPoisonedSet(i) {
                                XCTAssertFalse(got.y[i].isFinite, "\(at) y[\(i)]")
                            } else if got.y[i].bitPattern != want.y[i].bitPattern
                                || got.dx[i].bitPattern != want.dx[i].bitPattern
                            {
                                return XCTFail("\(at): element \(i) differs from the clean input's")
                            }
                        }
                        for ch in 0..<6 where !poisonedChannels.contains(ch) {
                            XCTAssertEqual(got.dgamma[ch].bitPattern, want.dgamma[ch].bitPattern, "\(at) dγ[\(ch)]")
                        }
                        XCTAssertEqual(got.dbeta, want.dbeta, "dβ = Σ dy does not see x: \(at)")
                    }
                }
            }
        }
        select(.native)
    }

    // MARK: - Odd sizes

    /// Vector tails and short rows: N = 1, 3; C = 1, 3, 17, 33; positions 1, 7, 15, 17 (1-D) and 3×5; BN (whole batch,
    /// ghost batches of 1 where a set keeps two values), LN, IN and GN with 3 groups where C allows; identity, ReLU
    /// and SiLU fused; both layouts, every path; `y`, `dx`, `dγ`, `dβ` against float64. Sets of one or two values are
    /// checked against the magnitude of `dx`'s terms (`rstd·|γ·dz|`), where the true `dx` cancels to (almost) 0.
    func testOddSizesMatchTheFloat64ReferenceWithFusedActivations() throws {
        var rng = SeededGenerator(seed: 0xDE66)
        var worst: [String: Double] = [:], checked = 0
        for n in [1, 3] {
            for c in [1, 3, 17, 33] {
                for spatial in [[1], [7], [15], [17], [3, 5]] {
                    let shape = [n, c] + spatial, m = spatial.reduce(1, *), count = shape.reduce(1, *)
                    var cases: [(String, () throws -> NormalizationLayer, RefSets)] = [
                        ("LN", { try GroupNorm.layerNorm(channels: c) }, .groupNorm(groups: 1)),
                        ("IN", { try GroupNorm.instanceNorm(channels: c) }, .groupNorm(groups: c)),
                    ]
                    if c % 3 == 0 && c > 3 {
                        cases.append(("GN 3 groups", { try GroupNorm(channels: c, groups: 3) }, .groupNorm(groups: 3)))
                    }
                    if n * m > 1 { cases.append(("BN", { try BatchNorm(channels: c) }, .batchNorm(normBatch: n))) }
                    if n > 1 && m > 1 {
                        cases.append(
                            ("BN normBatch 1", { try BatchNorm(channels: c, normBatch: 1) }, .batchNorm(normBatch: 1)))
                    }
                    let rx = RefTensor(
                        batch: n, channels: c, positions: m, data: Kit.randomLogical(count, mean: 0.4, std: 1.7, &rng))
                    let dy = Kit.randomLogical(count, mean: 0.1, std: 1, &rng)
                    let (gamma, beta) = Self.randomAffine(c, &rng)
                    let g64 = gamma.map(Double.init), b64 = beta.map(Double.init)
                    for (label, make, sets) in cases {
                        let forward = Float64Reference.forward(rx, sets: sets, gamma: g64, beta: b64)
                        let tinySets = sets.members(batch: n, channels: c)[0].count * m <= 2
                        for activation in FusedActivation.allCases {
                            var rdz = rx
                            rdz.data = zip(dy, forward.y.data).map { $0 * Self.derivative64(activation, $1) }
                            let back = Float64Reference.backward(rx, dy: rdz, sets: sets, gamma: g64)
                            let y = forward.y.data.map { Self.act64(activation, $0) }
                            // Where sets hold one or two values dx cancels to (almost) 0: measure it against the
                            // magnitude of its terms, rstd of the element's set times |γ_c·dz|.
                            var dxTerms = 0.0
                            for (s, members) in sets.members(batch: n, channels: c).enumerated() {
                                for (i, ch) in members {
                                    for p in 0..<m {
                                        dxTerms = max(dxTerms, forward.rstd[s] * abs(g64[ch] * rdz[i, ch, p]))
                                    }
                                }
                            }
                            try forEachTrainingStep(
                                make, shape: shape, x: rx.data, dy: dy, gamma: gamma, beta: beta,
                                activation: activation
                            ) { _, step, _, run in
                                for (key, error) in [
                                    ("y", Kit.relErr(step.y, y)),
                                    ("dx", Kit.relErr(step.dx, back.dx.data, scale: tinySets ? dxTerms : 0)),
                                    ("dγ", sumError(step.dgamma, back.dgamma, terms: back.dgammaTerms)),
                                    ("dβ", sumError(step.dbeta, back.dbeta, terms: back.dbetaTerms)),
                                ] {
                                    worst[key] = max(worst[key] ?? 0, error.isNaN ? .infinity : error)
                                    XCTAssertLessThanOrEqual(error, 1e-5, "\(key) \(label) \(shape) \(run)")
                                }
                                checked += 1
                            }
                        }
                    }
                }
            }
        }
        print("DegenerateInputTests: \(checked) odd-size steps, worst errors \(worst.sorted { $0.key < $1.key })")
    }
}
