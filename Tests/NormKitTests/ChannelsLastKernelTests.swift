import Foundation
import NormKit
import XCTest
import _NormKitTestSupport

/// The channels-last (NHWC) paths of every normalization layer (BN with and without ghost batches, GN including LN
/// and IN, BRN, MABN, frozen BN), on the native kernels (`nk_cl_*`, AVX-512 and AVX2) and the portable Swift loops:
///
/// - training forward, backward (`dx`, `dγ`, `dβ`), evaluation forward and the running state of a channels-last
///   input equal those of the same layer on the channels-first input, and a float64 reference;
/// - the native, AVX2 and portable kernels agree with each other;
/// - channel counts that are not multiples of 8 or 16 (3, 17, 65, 70) and larger than one 4-vector chunk (65, 70,
///   130), positions 1, 7, 49, 300 and 3000 (more than one 2048-position block); 520 channels, cut into slices of
///   whole sets on two threads (the tiled path's slices, `NormalizationKernels.tileWidth`); samples of 1 MB and
///   more, their rows split over 2 and 3 threads; BN's blocks of 512 KB to 4 MB cut at their samples;
/// - the hard input `x = 1e4 + 0.01·randn` is as accurate channels-last as channels-first;
/// - results do not depend on the thread count and repeat exactly.
///
/// Helpers: `VariantTestKit` (BatchRenormTests.swift), `Float64Reference` and the layers' own float64 references in
/// BatchRenormTests, MovingAverageBatchNormTests and FrozenBatchNormTests.
final class ChannelsLastKernelTests: KernelPathTestCase {
    typealias Kit = VariantTestKit

    // MARK: - Shapes and cases

    /// `[N, C, spatial…]`: channels 3, 8, 17, 64, 65, 70, 130, 300, 520; positions 1, 7, 9, 49, 300, 3000. [2, 300, 150]:
    /// rows wide enough that a kernel tile is 27 rows and float totals run over two tiles before going to double.
    static let shapes: [[Int]] = [
        [6, 3], [6, 17], [6, 130],
        [4, 8, 7], [4, 65, 7], [4, 17, 7],
        [4, 70, 7, 7], [4, 3, 7, 7], [2, 64, 49], [2, 130, 7, 7],
        [1, 70, 3, 10, 10],
        [2, 3, 3000], [2, 17, 50, 60], [2, 130, 3000], [2, 520, 3, 3], [2, 300, 150],
    ]

    /// GN group counts per channel count: LN (1), IN (C) and some in between.
    static func groups(_ c: Int) -> [Int] {
        switch c {
        case 8: return [1, 4, 8]
        case 64: return [1, 16, 64]
        case 65: return [1, 5, 13, 65]
        case 70: return [1, 7, 35, 70]
        case 130: return [1, 13, 65, 130]
        case 300: return [1, 30, 300]
        case 520: return [1, 8, 520]
        default: return [1, c]
        }
    }

    /// What a layer produced, in logical `(n, c, p)` order.
    struct Outputs {
        var y: [Double], dx: [Double], dgamma: [Double]?, dbeta: [Double]?, yEval: [Double]
        var state: [String: [Double]]
    }

    /// What the float64 reference says (`dgammaScale`, `dbetaScale`: the magnitude of the sums, 0 for max|value|).
    struct ReferenceOutputs {
        var y: [Double], dx: [Double], dgamma: [Double]?, dbeta: [Double]?, yEval: [Double]
        var dgammaScale = 0.0, dbetaScale = 0.0
    }

    /// A layer to build (the same each call) and its float64 reference for one shape (nil: no reference).
    struct LayerCase {
        var label: String
        var make: () throws -> NormalizationLayer
        var reference: (([Double], [Double]) -> ReferenceOutputs)?
    }

    static func floats(
        _ count: Int, in range: ClosedRange<Float>, signed: Bool = false,
        _ rng: inout SeededGenerator
    ) -> [Float] {
        (0..<count).map { _ in
            let v = Float.random(in: range, using: &rng)
            return signed && Bool.random(using: &rng) ? -v : v
        }
    }

    static func doubles(_ v: [Float]) -> [Double] { v.map(Double.init) }

    static func refTensor(_ shape: [Int], _ data: [Double]) -> RefTensor {
        RefTensor(batch: shape[0], channels: shape[1], positions: shape.dropFirst(2).reduce(1, *), data: data)
    }

    /// BatchNorm (momentum 0.3, random affine), whole batch or ghost batches of `normBatch`.
    static func batchNormCase(
        _ shape: [Int], normBatch: Int?, affine: Bool = true,
        _ rng: inout SeededGenerator
    ) -> LayerCase {
        let c = shape[1]
        let gamma = floats(c, in: 0.5...1.5, signed: true, &rng), beta = floats(c, in: -1...1, &rng)
        let momentum: Float = 0.3
        let make = { () throws -> NormalizationLayer in
            let layer = try BatchNorm(channels: c, momentum: momentum, normBatch: normBatch, affine: affine)
            layer.weight?.value = gamma
            layer.bias?.value = beta
            return layer
        }
        let reference = { (x: [Double], dy: [Double]) -> ReferenceOutputs in
            let rx = refTensor(shape, x), sets = RefSets.batchNorm(normBatch: normBatch ?? shape[0])
            let g = affine ? doubles(gamma) : nil, b = affine ? doubles(beta) : nil
            let forward = Float64Reference.forward(rx, sets: sets, gamma: g, beta: b)
            let backward = Float64Reference.backward(rx, dy: refTensor(shape, dy), sets: sets, gamma: g)
            var mean = [Double](repeating: 0, count: c), variance = [Double](repeating: 1, count: c)
            Float64Reference.updateRunning(mean: &mean, variance: &variance, with: forward, momentum: Double(momentum))
            let eval = Float64Reference.batchNormEval(
                rx, runningMean: mean, runningVariance: variance, gamma: g, beta: b)
            return ReferenceOutputs(
                y: forward.y.data, dx: backward.dx.data, dgamma: affine ? backward.dgamma : nil,
                dbeta: affine ? backward.dbeta : nil, yEval: eval.data)
        }
        return LayerCase(
            label: "BN normBatch \(normBatch.map(String.init) ?? "all")\(affine ? "" : " no affine")",
            make: make, reference: reference)
    }

    /// GroupNorm with `groups` groups (1: LN, C: IN), random affine.
    static func groupNormCase(
        _ shape: [Int], groups: Int, affine: Bool = true, _ rng: inout SeededGenerator
    ) -> LayerCase {
        let c = shape[1]
        let gamma = floats(c, in: 0.5...1.5, signed: true, &rng), beta = floats(c, in: -1...1, &rng)
        let make = { () throws -> NormalizationLayer in
            let layer = try GroupNorm(channels: c, groups: groups, affine: affine)
            layer.weight?.value = gamma
            layer.bias?.value = beta
            return layer
        }
        let reference = { (x: [Double], dy: [Double]) -> ReferenceOutputs in
            let rx = refTensor(shape, x), sets = RefSets.groupNorm(groups: groups)
            let g = affine ? doubles(gamma) : nil, b = affine ? doubles(beta) : nil
            let forward = Float64Reference.forward(rx, sets: sets, gamma: g, beta: b)
            let backward = Float64Reference.backward(rx, dy: refTensor(shape, dy), sets: sets, gamma: g)
            return ReferenceOutputs(
                y: forward.y.data, dx: backward.dx.data, dgamma: affine ? backward.dgamma : nil,
                dbeta: affine ? backward.dbeta : nil, yEval: forward.y.data)
        }
        let kind = groups == 1 ? "LN" : groups == c ? "IN" : "GN \(groups) groups"
        return LayerCase(label: kind, make: make, reference: reference)
    }

    static let renormSchedule = BatchRenorm.Schedule(warmupSteps: 2, rMax: 2.5, dMax: 1.5, rSteps: 12, dSteps: 8)

    /// BatchRenorm mid-relaxation (step 5 of a short schedule) with random running statistics, so `r` and `d` are
    /// neither 1 and 0 nor all clipped.
    static func batchRenormCase(_ shape: [Int], normBatch: Int?, _ rng: inout SeededGenerator) -> LayerCase {
        let c = shape[1], positions = shape.dropFirst(2).reduce(1, *)
        let gamma = floats(c, in: 0.5...1.5, &rng), beta = floats(c, in: -0.5...0.5, &rng)
        let rm = floats(c, in: -1...1, &rng), rs = floats(c, in: 0.4...2.5, &rng)
        let momentum: Float = 0.3, step: Int64 = 5
        let make = { () throws -> NormalizationLayer in
            let layer = try BatchRenorm(channels: c, momentum: momentum, schedule: renormSchedule, normBatch: normBatch)
            try layer.loadStateDict([
                "weight": .float32(shape: [c], values: gamma), "bias": .float32(shape: [c], values: beta),
                "running_mean": .float32(shape: [c], values: rm), "running_std": .float32(shape: [c], values: rs),
                "num_batches_tracked": .int64(shape: [], values: [step]),
            ])
            return layer
        }
        let reference = { (x: [Double], dy: [Double]) -> ReferenceOutputs in
            let ref = BatchRenormTests.Reference(
                channels: c, epsilon: Double(Float(1e-5)), momentum: Double(momentum),
                schedule: renormSchedule, normBatch: normBatch,
                gamma: doubles(gamma), beta: doubles(beta))
            ref.runningMean = doubles(rm)
            ref.runningStd = doubles(rs)
            ref.step = Int(step)
            let y = ref.forward(x, batch: shape[0], positions: positions)
            let back = ref.backward(dy)
            return ReferenceOutputs(y: y, back, yEval: ref.evaluate(x, batch: shape[0], positions: positions))
        }
        return LayerCase(
            label: "BRN normBatch \(normBatch.map(String.init) ?? "all")", make: make, reference: reference)
    }

    /// MABN (buffer 3) fresh (`iters` 0: batch statistics) or at `iters` 1500 (the SMA and the r phase, with random
    /// buffers and running second moments).
    static func movingAverageCase(
        _ shape: [Int], normBatch: Int?, iters: Int64,
        _ rng: inout SeededGenerator
    ) -> LayerCase {
        let c = shape[1], positions = shape.dropFirst(2).reduce(1, *), bufferSize = 3
        let gamma = floats(c, in: 0.5...1.5, &rng), beta = floats(c, in: -0.5...0.5, &rng)
        let running = (0..<c).map { _ in Float(Foundation.exp(Double.random(in: -3...3, using: &rng))) }
        let x2 = iters == 0 ? [Float](repeating: 0, count: bufferSize * c) : floats(bufferSize * c, in: 0.5...4, &rng)
        let gz = iters == 0 ? x2 : floats(bufferSize * c, in: -0.3...0.3, &rng)
        let make = { () throws -> NormalizationLayer in
            let layer = try MovingAverageBatchNorm(
                channels: c, bufferSize: bufferSize, warmup: 100, normBatch: normBatch)
            try layer.loadStateDict([
                "weight": .float32(shape: [c], values: gamma), "bias": .float32(shape: [c], values: beta),
                "running_var": .float32(shape: [c], values: running), "iters": .int64(shape: [], values: [iters]),
                "buffer_x2": .float32(shape: [bufferSize, c], values: x2),
                "buffer_gz": .float32(shape: [bufferSize, c], values: gz),
            ])
            return layer
        }
        let reference = { (x: [Double], dy: [Double]) -> ReferenceOutputs in
            let ref = MovingAverageBatchNormTests.Reference(
                channels: c, bufferSize: bufferSize, warmup: 100, momentum: Double(Float(0.98)),
                epsilon: Double(Float(1e-5)), normBatch: normBatch, gamma: doubles(gamma), beta: doubles(beta))
            ref.running = doubles(running)
            ref.t = Int(iters)
            ref.bufX2 = doubles(x2)
            ref.bufGz = doubles(gz)
            let y = ref.forward(x, batch: shape[0], positions: positions)
            let back = ref.backward(dy)
            return ReferenceOutputs(y: y, back, yEval: ref.evaluate(x, batch: shape[0], positions: positions))
        }
        return LayerCase(
            label: "MABN iters \(iters) normBatch \(normBatch.map(String.init) ?? "all")", make: make,
            reference: reference)
    }

    /// MABN in the BN form (`Parts.batchNorm`: centred statistics, no SMA): no float64 reference here, checked
    /// channels-last against channels-first and across kernel paths.
    static func movingAverageBatchNormFormCase(
        _ shape: [Int], normBatch: Int?, _ rng: inout SeededGenerator
    ) -> LayerCase {
        let c = shape[1]
        let gamma = floats(c, in: 0.5...1.5, &rng), beta = floats(c, in: -0.5...0.5, &rng)
        let make = { () throws -> NormalizationLayer in
            let layer = try MovingAverageBatchNorm(
                channels: c, bufferSize: 2, warmup: 0, normBatch: normBatch,
                parts: .batchNorm)
            layer.weight?.value = gamma
            layer.bias?.value = beta
            return layer
        }
        return LayerCase(
            label: "MABN BN form normBatch \(normBatch.map(String.init) ?? "all")", make: make,
            reference: nil)
    }

    /// Frozen BN with random statistics and affine.
    static func frozenCase(_ shape: [Int], _ rng: inout SeededGenerator) -> LayerCase {
        let c = shape[1], positions = shape.dropFirst(2).reduce(1, *)
        let gamma = floats(c, in: -1.5...1.5, &rng), beta = floats(c, in: -1...1, &rng)
        let mean = floats(c, in: -2...2, &rng), variance = floats(c, in: 0.01...4, &rng)
        let make = { () throws -> NormalizationLayer in
            let layer = try FrozenBatchNorm(channels: c, trainableAffine: true)
            try layer.loadStateDict([
                "weight": .float32(shape: [c], values: gamma), "bias": .float32(shape: [c], values: beta),
                "running_mean": .float32(shape: [c], values: mean),
                "running_var": .float32(shape: [c], values: variance),
            ])
            return layer
        }
        let reference = { (x: [Double], dy: [Double]) -> ReferenceOutputs in
            let ref = FrozenBatchNormTests.Reference(
                gamma: doubles(gamma), beta: doubles(beta), mean: doubles(mean),
                variance: doubles(variance), epsilon: Double(Float(1e-5)))
            let y = ref.forward(x, channels: c, positions: positions)
            let back = ref.backward(x, dy, channels: c, positions: positions)
            return ReferenceOutputs(y: y, back, yEval: y)
        }
        return LayerCase(label: "frozen BN", make: make, reference: reference)
    }

    /// Samples per ghost batch for a batch of `n` (nil when there is no proper ghost batch).
    static func ghost(_ n: Int) -> Int? {
        switch n {
        case 6: return 3
        case 4: return 2
        case 2: return 1
        default: return nil
        }
    }

    // MARK: - Running a case

    /// A training forward, its backward and an evaluation forward of a new layer on `x`, `dy` in `layout`.
    func run(
        _ c: LayerCase, shape: [Int], x: [Double], dy: [Double], layout: TensorLayout,
        file: StaticString = #filePath, line: UInt = #line
    ) throws -> Outputs {
        let layer = try c.make()
        let xt = Kit.tensor(shape, layout, x), dyt = Kit.tensor(shape, layout, dy)
        let y = try layer.forward(xt, training: true)
        XCTAssertEqual(y.layout, layout, file: file, line: line)
        XCTAssertEqual(y.shape, shape, file: file, line: line)
        let grads = try layer.backward(dyt)
        XCTAssertEqual(grads.input.layout, layout, file: file, line: line)
        XCTAssertEqual(grads.input.shape, shape, file: file, line: line)
        let yEval = try layer.forward(xt, training: false)
        XCTAssertEqual(yEval.layout, layout, file: file, line: line)
        var state: [String: [Double]] = [:]
        for (key, value) in layer.stateDict() {
            switch value {
            case .float32(_, let v): state[key] = v.map(Double.init)
            case .int64(_, let v): state[key] = v.map(Double.init)
            }
        }
        return Outputs(
            y: Kit.logical(y), dx: Kit.logical(grads.input), dgamma: grads.weight?.map(Double.init),
            dbeta: grads.bias?.map(Double.init), yEval: Kit.logical(yEval), state: state)
    }

    /// The worst relative errors seen, per quantity and comparison; reported and asserted at the end of a test.
    final class Worst {
        var values: [String: Double] = [:]
        var places: [String: String] = [:]
        func record(_ key: String, _ value: Double, _ place: String) {
            let v = value.isNaN ? .infinity : value
            if v > (values[key] ?? -1) {
                values[key] = v
                places[key] = place
            }
        }
        func assertBelow(_ tolerance: Double, _ title: String, file: StaticString = #filePath, line: UInt = #line) {
            print("\(title), worst relative errors:")
            for key in values.keys.sorted() {
                print(String(format: "  %-52@ %.2e  (%@)", key as NSString, values[key]!, places[key]! as NSString))
                XCTAssertLessThanOrEqual(
                    values[key]!, tolerance, "\(title): \(key) at \(places[key]!)",
                    file: file, line: line)
            }
        }
    }

    /// Runs `c` on every available path in both layouts and checks: each against the reference; channels-last
    /// against channels-first on the same path; the native and AVX2 channels-last outputs against the portable.
    func check(
        _ c: LayerCase, shape: [Int], worst: Worst, rng: inout SeededGenerator,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let count = shape.reduce(1, *)
        let x = Kit.randomLogical(count, mean: 0.4, std: 1.7, &rng)
        let dy = Kit.randomLogical(count, mean: 0.1, std: 1, &rng)
        let reference = c.reference?(x, dy)
        var results: [Path: [TensorLayout: Outputs]] = [:]
        for path in Path.allCases where select(path) {
            for layout in TensorLayout.allCases {
                results[path, default: [:]][layout] = try run(
                    c, shape: shape, x: x, dy: dy, layout: layout,
                    file: file, line: line)
            }
        }
        select(.native)
        XCTAssertNotNil(results[.portable], file: file, line: line)
        let place = "\(c.label) \(shape)"
        func compare(_ a: Outputs, _ want: ReferenceOutputs, _ what: String) {
            worst.record("y \(what)", Kit.relErr(a.y, want.y), place)
            worst.record("dx \(what)", Kit.relErr(a.dx, want.dx), place)
            worst.record("eval y \(what)", Kit.relErr(a.yEval, want.yEval), place)
            XCTAssertEqual(a.dgamma == nil, want.dgamma == nil, "\(what) \(place)", file: file, line: line)
            if let g = a.dgamma, let h = want.dgamma {
                worst.record("dγ \(what)", Kit.relErr(g, h, scale: want.dgammaScale), place)
            }
            if let g = a.dbeta, let h = want.dbeta {
                worst.record("dβ \(what)", Kit.relErr(g, h, scale: want.dbetaScale), place)
            }
        }
        func asReference(_ o: Outputs) -> ReferenceOutputs {
            ReferenceOutputs(
                y: o.y, dx: o.dx, dgamma: o.dgamma, dbeta: o.dbeta, yEval: o.yEval,
                dgammaScale: reference?.dgammaScale ?? 0, dbetaScale: reference?.dbetaScale ?? 0)
        }
        func compareState(_ a: Outputs, _ b: Outputs, _ what: String) {
            XCTAssertEqual(Set(a.state.keys), Set(b.state.keys), "\(what) \(place)", file: file, line: line)
            for (key, value) in a.state {
                guard let other = b.state[key], other.count == value.count else { continue }
                worst.record("state \(what)", Kit.relErr(value, other), place + " " + key)
            }
        }
        for (path, byLayout) in results {
            if let reference {
                for (layout, outputs) in byLayout {
                    compare(outputs, reference, "vs float64, \(layout == .channelsLast ? "CL" : "CF")")
                }
            }
            if let first = byLayout[.channelsFirst], let last = byLayout[.channelsLast] {
                compare(last, asReference(first), "CL vs CF (\(path.rawValue))")
                compareState(last, first, "CL vs CF")
            }
        }
        if let portable = results[.portable]?[.channelsLast] {
            for path in [Path.native, .avx2] {
                guard let last = results[path]?[.channelsLast] else { continue }
                compare(last, asReference(portable), "CL \(path.rawValue) vs CL portable")
                compareState(last, portable, "CL native/avx2 vs portable")
            }
        }
    }

    /// Checks the case `make` builds on every shape with the whole batch, then with ghost batches where they keep
    /// ≥ 3 values per set.
    func checkWholeAndGhostBatches(
        worst: Worst, rng: inout SeededGenerator, file: StaticString = #filePath, line: UInt = #line,
        _ make: (_ shape: [Int], _ normBatch: Int?, _ rng: inout SeededGenerator) -> LayerCase
    ) throws {
        for shape in Self.shapes {
            try check(make(shape, nil, &rng), shape: shape, worst: worst, rng: &rng, file: file, line: line)
            if let k = Self.ghost(shape[0]), k * shape.dropFirst(2).reduce(1, *) >= 3 {
                try check(make(shape, k, &rng), shape: shape, worst: worst, rng: &rng, file: file, line: line)
            }
        }
    }

    /// Tolerance of every comparison (float rounding, as the other float64-reference tests).
    let tolerance = 1e-5

    // MARK: - Tests

    func testBatchNormChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_01)
        let worst = Worst()
        try checkWholeAndGhostBatches(worst: worst, rng: &rng) { Self.batchNormCase($0, normBatch: $1, &$2) }
        // Without affine parameters once.
        let shape = [4, 17, 7, 7]
        try check(Self.batchNormCase(shape, normBatch: 2, affine: false, &rng), shape: shape, worst: worst, rng: &rng)
        worst.assertBelow(tolerance, "ChannelsLastKernelTests BN")
    }

    /// Inputs with one position per sample (`(N, C)`, or 1 × 1 maps) are one `N × C` matrix in either layout, which
    /// the kernels walk channels-last with each sample block's samples as the positions of one sample
    /// (`NormalizationGeometry.kernelForm`). Checked: against the float64 reference on shapes whose matrix the kernels
    /// split over threads, in parts of rows or in slices of channels ([256, 1024], [512, 520]); and bit for bit, BN
    /// (whole batch and ghost batches) and GN give the same `y`, `dx`, `dγ`, `dβ`, evaluation `y` and running
    /// statistics on `(N, C)` and `(N, C, 1, 1)` in both layouts and, for BN, on the same memory read as
    /// `(N/k, C, k)` channels-last with ghost batches of one sample (the sets of ghost batches of `k`), on one and two
    /// threads.
    func testOnePositionPerSampleIsOneMatrix() throws {
        var rng = SeededGenerator(seed: 0xC1_37)
        let worst = Worst()
        for (shape, ghost) in [([256, 1024], 32), ([512, 520], nil), ([96, 70], 8)] as [([Int], Int?)] {
            try check(Self.batchNormCase(shape, normBatch: nil, &rng), shape: shape, worst: worst, rng: &rng)
            if let ghost {
                try check(Self.batchNormCase(shape, normBatch: ghost, &rng), shape: shape, worst: worst, rng: &rng)
            }
        }
        try check(Self.groupNormCase([256, 1024], groups: 32, &rng), shape: [256, 1024], worst: worst, rng: &rng)
        worst.assertBelow(tolerance, "ChannelsLastKernelTests one position per sample")

        /// y, dx, dγ, dβ, evaluation y and the state of a new layer on `x` (memory order) with `dy`, in memory order.
        func bits(
            _ layer: NormalizationLayer, _ shape: [Int], _ layout: TensorLayout, _ x: [Float], _ dy: [Float]
        )
            throws -> [String: [UInt32]]
        {
            let xt = try Tensor(shape: shape, layout: layout, values: x)
            let y = try layer.forward(xt, training: true)
            let grads = try layer.backward(try Tensor(shape: shape, layout: layout, values: dy))
            var out = [
                "y": y.values, "dx": grads.input.values, "dγ": grads.weight ?? [], "dβ": grads.bias ?? [],
                "eval": try layer.forward(xt, training: false).values,
            ]
            for (key, value) in layer.stateDict() {
                if case .float32(_, let v) = value { out[key] = v }
            }
            return out.mapValues { $0.map(\.bitPattern) }
        }
        for threads in [1, 2] {
            Parallelism.threadCount = threads
            for (n, c, ghost) in [(256, 1024, 32), (96, 70, 8), (6, 17, 3), (2, 4096, 2)] {
                let x = (0..<(n * c)).map { _ in Float.random(in: -2...4, using: &rng) }
                let dy = (0..<(n * c)).map { _ in Float.random(in: -1...1, using: &rng) }
                let gamma = Self.floats(c, in: 0.5...1.5, signed: true, &rng), beta = Self.floats(c, in: -1...1, &rng)
                func affine(_ layer: NormalizationLayer) -> NormalizationLayer {
                    layer.weight?.value = gamma
                    layer.bias?.value = beta
                    return layer
                }
                // With the shape of the same memory read channels-last as one sample per ghost batch.
                let layers: [(String, () throws -> NormalizationLayer, [Int]?)] = [
                    ("BN", { affine(try BatchNorm(channels: c, momentum: 0.3)) }, [1, c, n]),
                    (
                        "BN ghost \(ghost)", { affine(try BatchNorm(channels: c, momentum: 0.3, normBatch: ghost)) },
                        [n / ghost, c, ghost]
                    ),
                    ("GN", { affine(try GroupNorm(channels: c, groups: c % 32 == 0 ? 32 : 1)) }, nil),
                ]
                for (label, make, reshaped) in layers {
                    let want = try bits(make(), [n, c], .channelsFirst, x, dy)
                    let place = "\(label) (\(n), \(c)) threads \(threads)"
                    for (shape, layout) in [
                        ([n, c], TensorLayout.channelsLast), ([n, c, 1, 1], .channelsFirst),
                        ([n, c, 1, 1], .channelsLast),
                    ] {
                        XCTAssertEqual(try bits(make(), shape, layout, x, dy), want, "\(place) \(shape) \(layout)")
                    }
                    if let reshaped {
                        let layer = affine(try BatchNorm(channels: c, momentum: 0.3, normBatch: 1))
                        XCTAssertEqual(try bits(layer, reshaped, .channelsLast, x, dy), want, "\(place) as \(reshaped)")
                    }
                }
            }
        }
    }

    /// BN's one-channel sets take their coefficients from one C kernel: in the channels-last tiles with their moments
    /// (`nk_cl_standardized_coefficients`), channels-first per batch of sets (`nk_standardized_coefficients`);
    /// BatchRenorm in its warm-up (r = 1, d = 0) takes the same paths through the Swift loops of the rule. The two
    /// must give the same output and input gradient bit for bit (wide rows, cut into slices on two threads or, for
    /// [2, 512, 8, 16], at the samples; batches of sets not a whole number of vectors; with and without affine
    /// parameters; native, AVX2 and portable paths; both layouts).
    func testBatchNormCoefficientsKernelsAreTheRuleLoopBitForBit() throws {
        var rng = SeededGenerator(seed: 0xC1_09)
        let warmup = BatchRenorm.Schedule(warmupSteps: 100, rMax: 3, dMax: 5, rSteps: 10, dSteps: 10)
        for path in Path.allCases where select(path) {
            for (threads, layout) in [1, 2].flatMap({ t in TensorLayout.allCases.map { (t, $0) } }) {
                Parallelism.threadCount = threads
                for (shape, affine) in [
                    ([2, 2048, 7, 7], true), ([2, 520, 7, 7], true), ([4, 1024, 3, 3], false),
                    ([3, 70, 9, 9], true), ([2, 512, 8, 16], true),
                ] {
                    let bn = try BatchNorm(channels: shape[1], affine: affine)
                    let brn = try BatchRenorm(channels: shape[1], schedule: warmup, affine: affine)
                    if affine {
                        let gamma = (0..<shape[1]).map { _ in Float.random(in: 0.5...2, using: &rng) }
                        let beta = (0..<shape[1]).map { _ in Float.random(in: -1...1, using: &rng) }
                        bn.weight!.value = gamma
                        brn.weight!.value = gamma
                        bn.bias!.value = beta
                        brn.bias!.value = beta
                    }
                    let x = Tensor.randomNormal(
                        shape: shape, layout: layout, mean: 3, standardDeviation: 2, using: &rng)
                    let dy = Tensor.randomNormal(shape: shape, layout: layout, using: &rng)
                    var y1 = Tensor(zeros: [1, 1]), y2 = Tensor(zeros: [1, 1])
                    var dx1 = Tensor(zeros: [1, 1]), dx2 = Tensor(zeros: [1, 1])
                    try bn.forward(x, into: &y1, training: true)
                    try brn.forward(x, into: &y2, training: true)
                    try bn.backward(dy, into: &dx1)
                    try brn.backward(dy, into: &dx2)
                    let place = "\(path) threads \(threads) \(layout) \(shape) affine \(affine)"
                    XCTAssertEqual(y1.values, y2.values, place)
                    XCTAssertEqual(dx1.values, dx2.values, place)
                }
            }
        }
    }

    func testGroupNormLayerNormInstanceNormChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_02)
        let worst = Worst()
        for shape in Self.shapes {
            let c = shape[1], positions = shape.dropFirst(2).reduce(1, *)
            for groups in Self.groups(c) where (c / groups) * positions >= 3 {
                try check(Self.groupNormCase(shape, groups: groups, &rng), shape: shape, worst: worst, rng: &rng)
            }
        }
        let shape = [2, 70, 7, 7]
        try check(Self.groupNormCase(shape, groups: 7, affine: false, &rng), shape: shape, worst: worst, rng: &rng)
        worst.assertBelow(tolerance, "ChannelsLastKernelTests GN/LN/IN")
    }

    /// Samples of 262,144 floats (1 MB) or more, whose sets lie inside them: the native tiled path splits each
    /// sample's rows over the threads (`NormalizationKernels.splitSampleFloats`), the sums of each part added in
    /// order, then each thread applies its own rows. Batch 1 and 3, 2 and 3 threads (parts of unequal rows), GN, LN
    /// and IN, 130 channels (not a multiple of the vector), checked as every other shape: against the float64
    /// reference, against channels-first and against the portable kernels. Also LN on a 4 MB sample of 16 rows, too
    /// short to split, which takes the unfused path, and a lone sample of 624 KB ([1, 520, 300]) cut in two: LN's
    /// forward and backward, GN's backward.
    func testSamplesSplitOverThreadsChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_08)
        let worst = Worst()
        for threads in [2, 3] {
            Parallelism.threadCount = threads
            for (shape, groups) in [
                ([1, 64, 4201], 16), ([1, 64, 4201], 1), ([1, 64, 4201], 64), ([3, 130, 2017], 13),
                ([1, 66_000, 16], 1), ([1, 520, 300], 1), ([1, 520, 300], 13),
            ] {
                try check(Self.groupNormCase(shape, groups: groups, &rng), shape: shape, worst: worst, rng: &rng)
            }
        }
        Parallelism.threadCount = Self.defaultThreads
        worst.assertBelow(tolerance, "ChannelsLastKernelTests samples split over threads")
    }

    /// Blocks of several samples (BN's batch or ghost batch) of 512 KB to 4 MB whose samples have 64 rows or more:
    /// the native tiled path cuts the block's rows at its samples, and a sample of 1 MB or more into parts
    /// (`NormalizationKernels.blockParts`), each sample's sums added in part order, then each thread applies its own
    /// rows. BN and BRN, whole and ghost batches, 2 and 3 threads (shares of unequal parts), 130 and 70 channels,
    /// checked as every other shape; [2, 512, 128] is a block of exactly 512 KB; [1, 520, 300] a lone sample whose
    /// backward is cut in two.
    func testBlocksSplitOverThreadsChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_0A)
        let worst = Worst()
        let cases: [(shape: [Int], normBatch: Int?)] = [
            ([4, 70, 600], nil), ([3, 130, 1000], nil), ([6, 130, 700], 3), ([2, 130, 2100], nil),
            ([2, 512, 128], nil), ([1, 520, 300], nil),
        ]
        for threads in [2, 3] {
            Parallelism.threadCount = threads
            for (shape, normBatch) in cases {
                try check(Self.batchNormCase(shape, normBatch: normBatch, &rng), shape: shape, worst: worst, rng: &rng)
                try check(
                    Self.batchRenormCase(shape, normBatch: normBatch, &rng), shape: shape, worst: worst, rng: &rng)
            }
        }
        Parallelism.threadCount = Self.defaultThreads
        worst.assertBelow(tolerance, "ChannelsLastKernelTests blocks split over threads")
    }

    func testBatchRenormChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_03)
        let worst = Worst()
        try checkWholeAndGhostBatches(worst: worst, rng: &rng) { Self.batchRenormCase($0, normBatch: $1, &$2) }
        worst.assertBelow(tolerance, "ChannelsLastKernelTests BRN")
    }

    func testMovingAverageBatchNormChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_04)
        let worst = Worst()
        for shape in Self.shapes {
            let positions = shape.dropFirst(2).reduce(1, *)
            // ≥ 3 values per chunk (with fewer the warm-up dx is rounding noise).
            let k = Self.ghost(shape[0]).flatMap { $0 * positions >= 3 ? $0 : nil }
            try check(
                Self.movingAverageCase(shape, normBatch: nil, iters: 0, &rng), shape: shape, worst: worst, rng: &rng)
            try check(
                Self.movingAverageCase(shape, normBatch: k, iters: 1500, &rng), shape: shape, worst: worst,
                rng: &rng)
            try check(
                Self.movingAverageBatchNormFormCase(shape, normBatch: k, &rng), shape: shape, worst: worst,
                rng: &rng)
        }
        worst.assertBelow(tolerance, "ChannelsLastKernelTests MABN")
    }

    func testFrozenBatchNormChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_05)
        let worst = Worst()
        for shape in Self.shapes + [[1, 3, 1, 1], [1, 130, 5]] {
            try check(Self.frozenCase(shape, &rng), shape: shape, worst: worst, rng: &rng)
        }
        worst.assertBelow(tolerance, "ChannelsLastKernelTests frozen BN")
    }

    // MARK: - The hard numerics case

    /// `x = 1e4 + 0.01·randn` (float32) through BN (whole and ghost batches), GN (LN, IN, groups between) and
    /// BRN (fresh: plain BN statistics), affine off, on every kernel path in both layouts: every output element and
    /// `dx` within 1e-5 of float64 (relative to the largest), per set `mean(y)` within 1e-4 of 0 and `var(y)`
    /// within 1e-4 of `var/(var + ε)` (as NumericsTests), and channels-last no less accurate than channels-first.
    /// Also frozen BN with `running_mean ≈ 1e4`, `running_var ≈ 1e-4`; and the milder `x = 100 + randn` on 3000
    /// positions (more than one 2048-position block).
    func testLargeMeanSmallSpreadIsAsAccurateChannelsLast() throws {
        var rng = SeededGenerator(seed: 0xC1_06)
        let worst = Worst(), statistics = Worst()
        var byLayout: [String: [TensorLayout: Double]] = [:]
        // The hard input on three shapes, and a milder one (mean 100, std 1) on a set longer than one block.
        let inputs: [(shape: [Int], mean: Double, std: Double)] = [
            ([8, 3, 15, 15], 1e4, 0.01), ([4, 70, 7, 7], 1e4, 0.01), ([2, 17, 50, 60], 1e4, 0.01),
            ([2, 17, 50, 60], 100, 1),
        ]
        for (shape, offset, spread) in inputs {
            let c = shape[1], count = shape.reduce(1, *)
            let x = Kit.randomLogical(count, mean: offset, std: spread, &rng)
            let dy = Kit.randomLogical(count, mean: 0, std: 1, &rng)
            let rx = Self.refTensor(shape, x), rdy = Self.refTensor(shape, dy)
            var layers: [(String, () throws -> NormalizationLayer, RefSets)] = [
                ("BN", { try BatchNorm(channels: c, affine: false) }, .batchNorm(normBatch: shape[0])),
                ("BN ghost", { try BatchNorm(channels: c, normBatch: 1, affine: false) }, .batchNorm(normBatch: 1)),
                ("BRN", { try BatchRenorm(channels: c, affine: false) }, .batchNorm(normBatch: shape[0])),
            ]
            for groups in Self.groups(c) {
                layers.append(
                    (
                        "GN \(groups) groups", { try GroupNorm(channels: c, groups: groups, affine: false) },
                        .groupNorm(groups: groups)
                    ))
            }
            for (name, make, sets) in layers {
                let forward = Float64Reference.forward(rx, sets: sets, gamma: nil, beta: nil)
                let backward = Float64Reference.backward(rx, dy: rdy, sets: sets, gamma: nil)
                let members = sets.members(batch: shape[0], channels: c)
                for path in Path.allCases where select(path) {
                    for layout in TensorLayout.allCases {
                        let layer = try make()
                        let y = try layer.forward(Kit.tensor(shape, layout, x), training: true)
                        let dx = try layer.backward(Kit.tensor(shape, layout, dy)).input
                        let ry = Self.refTensor(shape, Kit.logical(y))
                        let place = "\(name) \(shape) x = \(offset) ± \(spread) \(path.rawValue) \(layout)"
                        let ey = Kit.relErr(ry.data, forward.y.data),
                            edx = Kit.relErr(Kit.logical(dx), backward.dx.data)
                        worst.record("y vs float64", ey, place)
                        worst.record("dx vs float64", edx, place)
                        var worstMean = 0.0, worstVariance = 0.0
                        for (s, set) in members.enumerated() {
                            var total = 0.0, squares = 0.0, n = 0.0
                            for (i, ch) in set { for p in 0..<ry.positions { total += ry[i, ch, p]; n += 1 } }
                            let mean = total / n
                            for (i, ch) in set {
                                for p in 0..<ry.positions { squares += (ry[i, ch, p] - mean) * (ry[i, ch, p] - mean) }
                            }
                            let v = forward.variance[s], want = v / (v + 1e-5)
                            worstMean = max(worstMean, abs(mean))
                            worstVariance = max(worstVariance, abs(squares / n - want) / want)
                        }
                        statistics.record("|mean(y)| per set (absolute)", worstMean, place)
                        statistics.record("var(y) per set (relative)", worstVariance, place)
                        let key = "\(name) \(shape) x = \(offset) ± \(spread) \(path.rawValue)"
                        byLayout[key, default: [:]][layout] = max(ey, edx)
                    }
                }
            }
            // Frozen BN far from zero.
            let rm = (0..<c).map { _ in Float(offset + Double.random(in: -1...1, using: &rng) * spread) }
            let rv = (0..<c).map { _ in Float(spread * spread * Double.random(in: 0.5...2, using: &rng)) }
            let ref = FrozenBatchNormTests.Reference(
                gamma: [Double](repeating: 1, count: c),
                beta: [Double](repeating: 0, count: c), mean: Self.doubles(rm),
                variance: Self.doubles(rv), epsilon: Double(Float(1e-5)))
            let want = ref.forward(x, channels: c, positions: shape.dropFirst(2).reduce(1, *))
            for path in Path.allCases where select(path) {
                for layout in TensorLayout.allCases {
                    let layer = try FrozenBatchNorm(channels: c)
                    try layer.loadStateDict([
                        "weight": .float32(shape: [c], values: [Float](repeating: 1, count: c)),
                        "bias": .float32(shape: [c], values: [Float](repeating: 0, count: c)),
                        "running_mean": .float32(shape: [c], values: rm),
                        "running_var": .float32(shape: [c], values: rv),
                    ])
                    let y = try layer.forward(Kit.tensor(shape, layout, x), training: false)
                    let e = Kit.relErr(Kit.logical(y), want)
                    worst.record(
                        "y vs float64", e, "frozen BN \(shape) x = \(offset) ± \(spread) \(path.rawValue) \(layout)")
                    byLayout["frozen BN \(shape) x = \(offset) ± \(spread) \(path.rawValue)", default: [:]][layout] = e
                }
            }
        }
        select(.native)
        worst.assertBelow(tolerance, "ChannelsLastKernelTests 1e4 + 0.01·randn")
        statistics.assertBelow(1e-4, "ChannelsLastKernelTests 1e4 + 0.01·randn, statistics of y")
        for (key, errors) in byLayout.sorted(by: { $0.key < $1.key }) {
            guard let first = errors[.channelsFirst], let last = errors[.channelsLast] else { continue }
            XCTAssertLessThanOrEqual(
                last, max(10 * first, 2e-6),
                "\(key): channels-last error \(last) vs channels-first \(first)")
        }
    }

    // MARK: - Threads

    /// The staged layers' reductions (MABN's statistics, frozen BN's and MABN's gradient sums) cut a sample of 2^18
    /// floats or more into parts of rows fixed by the shape, so that a batch of one sample, which every `(N, C)`
    /// matrix is in the kernels' form, uses every core: the float64 reference holds and the bits are the same on 1, 2
    /// and 3 threads (y, dx, dγ, dβ, evaluation), for a matrix of 16 parts and a 4-D sample of 1 × 64 × 70 × 70.
    func testStagedReductionsCutIntoPartsAreTheSameOnAnyThreadCount() throws {
        guard select(.native) else { throw XCTSkip("no native kernels on this CPU") }
        var rng = SeededGenerator(seed: 0xC1_38)
        let worst = Worst()
        for shape in [[1024, 300], [1, 64, 70, 70]] {
            let count = shape.reduce(1, *)
            let x = Kit.randomLogical(count, mean: 0.4, std: 1.7, &rng)
            let dy = Kit.randomLogical(count, mean: 0.1, std: 1, &rng)
            var cases = [Self.frozenCase(shape, &rng)]
            if shape[0] > 1 {
                cases += [
                    Self.movingAverageCase(shape, normBatch: nil, iters: 0, &rng),
                    Self.movingAverageCase(shape, normBatch: 256, iters: 1500, &rng),
                ]
            }
            for c in cases {
                try check(c, shape: shape, worst: worst, rng: &rng)
                select(.native)
                var bits: [Int: [[UInt64]]] = [:]
                for threads in [1, 2, 3] {
                    Parallelism.threadCount = threads
                    let out = try run(c, shape: shape, x: x, dy: dy, layout: .channelsLast)
                    bits[threads] = [out.y, out.dx, out.dgamma ?? [], out.dbeta ?? [], out.yEval].map {
                        $0.map(\.bitPattern)
                    }
                }
                Parallelism.threadCount = Self.defaultThreads
                XCTAssertEqual(bits[2], bits[1], "\(c.label) \(shape): 2 threads vs 1")
                XCTAssertEqual(bits[3], bits[1], "\(c.label) \(shape): 3 threads vs 1")
            }
        }
        worst.assertBelow(tolerance, "ChannelsLastKernelTests staged reductions cut into parts")
    }

    /// GN on an input beyond the caches (`KernelDispatch.streamingStoreThreshold` 0) of a core with less than 2 MB
    /// of L2 (`KernelDispatch.levelTwoCacheBytes` 1 MB) takes slices of 128 channels of its 256- and 512-channel rows
    /// (`NormalizationKernels.narrowestSlice`), where a 2 MB L2 or a cached input keeps whole samples; on one thread
    /// its four samples are four per thread, each a thread's whole (`NormalizationKernels.takesWholeSamplePerThread`),
    /// and (4, 64, 64, 64)'s samples, split over two or three threads in 16 parts of rows, are summed in the same
    /// parts on one thread. The same bits every way, on 1, 2 and 3 threads, against the float64 reference too; G = 32
    /// and G = 8 (8 and 32 channels per set on the wide rows: a slice that cut a set would fail).
    func testNarrowSlicesFromMemoryGiveTheSameBits() throws {
        guard select(.native) else { throw XCTSkip("no native kernels on this CPU") }
        try assertSameBitsUnderCacheSettings(
            [(2, Int.max, 1 << 20), (2, 0, 2 << 20), (2, 0, 1 << 20), (1, 0, 1 << 20), (3, 0, 1 << 20)],
            shapes: [[4, 256, 28, 28], [2, 512, 196], [4, 64, 64, 64]], groups: [32, 8], seed: 0xC1_39,
            label: "narrow slices from memory")
    }

    /// GN and LN on an input read from L3 (`KernelDispatch.levelTwoCacheBytes` 128 KB, no streaming) whose samples
    /// of more than 256 K floats divide evenly over the threads (1 and 2 threads for (2, 64, 64, 64), 1 and 3 for
    /// (3, 128, 48, 48)) take whole samples per thread (`NormalizationKernels.takesWholeSamplePerThread`), where 3
    /// and 2 threads, and a cached input (L2 64 MB) on 2 threads, split each sample over the threads in 16 parts of
    /// rows. The whole-sample path sums in the same parts (`sliceSums`): the same bits every way, and against the
    /// float64 reference too.
    func testWholeSamplesFromL3GiveTheSameBits() throws {
        guard select(.native) else { throw XCTSkip("no native kernels on this CPU") }
        try assertSameBitsUnderCacheSettings(
            [(2, Int.max, 64 << 20), (1, Int.max, 128 << 10), (2, Int.max, 128 << 10), (3, Int.max, 128 << 10)],
            shapes: [[2, 64, 64, 64], [3, 128, 48, 48]], groups: [32, 1], seed: 0xC1_50, label: "whole samples from L3")
    }

    /// GN with each of `groups` on each of `shapes` (random inputs from `seed`) under each (threads, streaming
    /// threshold, L2 bytes) setting on the native kernels: `y`, `dx`, `dγ` and `dβ` the bits of the first setting's,
    /// and within the float64 reference's tolerance. Puts the thread count, threshold and L2 size back.
    private func assertSameBitsUnderCacheSettings(
        _ settings: [(threads: Int, threshold: Int, l2: Int)], shapes: [[Int]], groups: [Int], seed: UInt64,
        label: String
    ) throws {
        let savedThreshold = KernelDispatch.streamingStoreThreshold, savedL2 = KernelDispatch.levelTwoCacheBytes
        defer {
            KernelDispatch.streamingStoreThreshold = savedThreshold
            KernelDispatch.levelTwoCacheBytes = savedL2
            Parallelism.threadCount = Self.defaultThreads
        }
        var rng = SeededGenerator(seed: seed)
        let worst = Worst()
        for shape in shapes {
            let count = shape.reduce(1, *)
            let x = Kit.randomLogical(count, mean: 0.4, std: 1.7, &rng)
            let dy = Kit.randomLogical(count, mean: 0.1, std: 1, &rng)
            for g in groups {
                let c = Self.groupNormCase(shape, groups: g, &rng)
                var bits: [(setting: String, outputs: [[UInt64]])] = []
                for (threads, threshold, l2) in settings {
                    Parallelism.threadCount = threads
                    KernelDispatch.streamingStoreThreshold = threshold
                    KernelDispatch.levelTwoCacheBytes = l2
                    select(.native)
                    let out = try run(c, shape: shape, x: x, dy: dy, layout: .channelsLast)
                    let outputs = [out.y, out.dx, out.dgamma ?? [], out.dbeta ?? []].map { $0.map(\.bitPattern) }
                    bits.append(("\(threads) threads, threshold \(threshold), L2 \(l2)", outputs))
                }
                for (setting, got) in bits.dropFirst() {
                    XCTAssertEqual(got, bits[0].outputs, "\(c.label) \(shape): \(setting) vs \(bits[0].setting)")
                }
                try check(c, shape: shape, worst: worst, rng: &rng)
            }
        }
        worst.assertBelow(tolerance, "ChannelsLastKernelTests \(label)")
    }

    /// On a tensor large enough for the threaded paths (780,000 elements; batch 2 and batch 1), one and two threads
    /// give the same outputs up to rounding, and the same thread count gives identical outputs run after run, on
    /// the native and the portable channels-last kernels.
    func testChannelsLastResultsDoNotDependOnThreads() throws {
        var rng = SeededGenerator(seed: 0xC1_07)
        for shape in [[2, 130, 3000], [1, 130, 60, 50]] {
            let count = shape.reduce(1, *)
            let x = Kit.randomLogical(count, mean: 0.4, std: 1.7, &rng)
            let dy = Kit.randomLogical(count, mean: 0.1, std: 1, &rng)
            var cases = [Self.groupNormCase(shape, groups: 13, &rng), Self.frozenCase(shape, &rng)]
            if shape[0] > 1 {
                cases += [
                    Self.batchNormCase(shape, normBatch: nil, &rng), Self.batchRenormCase(shape, normBatch: 1, &rng),
                    Self.movingAverageCase(shape, normBatch: nil, iters: 1500, &rng),
                ]
            }
            for c in cases {
                for path in [Path.native, .portable] where select(path) {
                    var first: [Int: Outputs] = [:]
                    for threads in [1, 2, 1, 2] {
                        Parallelism.threadCount = threads
                        let out = try run(c, shape: shape, x: x, dy: dy, layout: .channelsLast)
                        let label = "\(c.label) \(shape) \(path.rawValue) \(threads) threads"
                        if let earlier = first[threads] {
                            XCTAssertEqual(out.y, earlier.y, "y repeat \(label)")
                            XCTAssertEqual(out.dx, earlier.dx, "dx repeat \(label)")
                            XCTAssertEqual(out.dgamma, earlier.dgamma, "dγ repeat \(label)")
                            XCTAssertEqual(out.yEval, earlier.yEval, "eval repeat \(label)")
                        } else {
                            first[threads] = out
                        }
                    }
                    let one = first[1]!, two = first[2]!
                    let label = "\(c.label) \(shape) \(path.rawValue)"
                    XCTAssertLessThanOrEqual(Kit.relErr(two.y, one.y), 1e-6, "y 2 vs 1 threads \(label)")
                    XCTAssertLessThanOrEqual(Kit.relErr(two.dx, one.dx), 1e-6, "dx 2 vs 1 threads \(label)")
                    XCTAssertLessThanOrEqual(Kit.relErr(two.yEval, one.yEval), 1e-6, "eval 2 vs 1 threads \(label)")
                    if let g = two.dgamma, let h = one.dgamma {
                        XCTAssertLessThanOrEqual(Kit.relErr(g, h), 1e-6, "dγ 2 vs 1 threads \(label)")
                    }
                }
                Parallelism.threadCount = Self.defaultThreads
            }
        }
        select(.native)
    }
}

extension ChannelsLastKernelTests.ReferenceOutputs {
    /// The outputs of a reference forward `y`, its backward and its evaluation output `yEval`.
    init(y: [Double], _ back: VariantTestKit.ReferenceGradients, yEval: [Double]) {
        self.init(
            y: y, dx: back.dx, dgamma: back.dgamma, dbeta: back.dbeta, yEval: yEval,
            dgammaScale: back.dgammaScale, dbetaScale: back.dbetaScale)
    }
}
