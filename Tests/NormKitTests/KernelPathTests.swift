import CNormKitKernels
import NormKit
import XCTest
import _NormKitTestSupport

/// The two implementations of the row primitives side by side: the portable Swift SIMD kernels and the native
/// AVX2/AVX-512 ones. Both must match the float64 reference, and each other to float rounding.
final class KernelPathTests: XCTestCase {
    override func tearDown() {
        KernelDispatch.limitNativeInstructionSet(to: .avx512)
        KernelDispatch.useNativeKernels = Self.defaultNative
        super.tearDown()
    }

    static let defaultNative = KernelDispatch.useNativeKernels

    /// Shapes that cover every spatial rank, SIMD tails, the multi-threaded paths, the set kernels' batches of 16
    /// sets or rows with a remainder (40 and 20 channels), rows longer than one unrolled step (130) and sets larger
    /// than one float block (4·784, 64·49).
    let shapes: [[Int]] = [
        [5, 12], [3, 12, 7], [2, 16, 9, 11], [2, 8, 3, 5, 7], [4, 32, 28, 28], [2, 64, 7, 7],
        [3, 40, 5, 5], [4, 20, 130], [2, 2048, 3],
    ]

    func layers(channels c: Int) throws -> [(NormalizationLayer, RefSets)] {
        [
            (try GroupNorm(channels: c, groups: 4), .groupNorm(groups: 4)),
            (try GroupNorm(channels: c, groupSize: 2), .groupNorm(groups: c / 2)),
            (try GroupNorm.layerNorm(channels: c), .groupNorm(groups: 1)),
            (try BatchNorm(channels: c), .batchNorm(normBatch: 0)),
            (try BatchNorm(channels: c, normBatch: 1), .batchNorm(normBatch: 1)),
        ]
    }

    func testPortableKernelsMatchTheFloat64Reference() throws {
        KernelDispatch.useNativeKernels = false
        try checkAgainstReference(label: "portable")
    }

    func testNativeKernelsMatchTheFloat64Reference() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        KernelDispatch.useNativeKernels = true
        try checkAgainstReference(label: "native \(KernelDispatch.nativeInstructionSet)")
    }

    func testAVX2KernelsMatchTheFloat64Reference() throws {
        try XCTSkipIf(KernelDispatch.instructionSet < .avx2, "this CPU has no AVX2")
        KernelDispatch.useNativeKernels = true
        XCTAssertEqual(KernelDispatch.limitNativeInstructionSet(to: .avx2), .avx2)
        try checkAgainstReference(label: "native avx2")
    }

    func checkAgainstReference(label: String) throws {
        var rng = SeededGenerator(seed: 77)
        let log = ErrorLog()
        for shape in shapes {
            for layout in TensorLayout.allCases {
                for (layer, sets) in try layers(channels: shape[1]) {
                    if case .batchNorm(let k) = sets, k == 1, shape.count == 2 { continue }  // one value per set
                    // Two values per set: x̂ = ±1 and dx cancels to rounding noise, so a relative error means nothing.
                    if case .groupNorm(let groups) = sets, groups == shape[1] / 2, shape.count == 2 { continue }
                    let resolved: RefSets
                    if case .batchNorm(let k) = sets {
                        resolved = .batchNorm(normBatch: k == 0 ? shape[0] : k)
                    } else {
                        resolved = sets
                    }
                    let (gamma, beta) = randomizeAffine(layer, using: &rng)
                    let x = randomTensor(shape, layout: layout, scale: 2, offset: 3, using: &rng)
                    let dy = randomTensor(shape, layout: layout, using: &rng)
                    try checkTrainingStep(
                        layer, sets: resolved, x: x, dy: dy, gamma: gamma, beta: beta,
                        label: "\(label) \(layer.name) \(shape) \(layout)", log: log)
                }
            }
        }
        log.report("KernelPathTests \(label)")
    }

    /// Channels-first sets of 2^18 floats (1 MB) or more go one at a time to all the threads, cut into parts of whole
    /// rows fixed by the shape (`NormalizationKernels.setParts`): LN on one sample (16 parts of 4 rows; on three
    /// samples of 20 rows, parts of one or two rows), GN with 2 groups, BN whose channels span six samples (parts
    /// crossing samples), BRN (a rule of the fused path), SyncBN on one worker (the staged path's statistics stage);
    /// and one-row sets, cut into 16 pieces of their row whose gradient sums add up: IN's maps, BN at batch 1 (rows
    /// of 520 · 521 floats, not a whole number of vectors). Each against the float64 reference on 2 and 3 threads,
    /// native and portable kernels.
    func testSetsSplitOverThreadsMatchTheFloat64Reference() throws {
        var rng = SeededGenerator(seed: 0x5917)
        let log = ErrorLog(), defaultThreads = Parallelism.threadCount
        defer { Parallelism.threadCount = defaultThreads }
        let cases: [([Int], RefSets, () throws -> NormalizationLayer)] = [
            ([1, 64, 4201], .groupNorm(groups: 1), { try GroupNorm.layerNorm(channels: 64) }),
            ([3, 20, 13200], .groupNorm(groups: 1), { try GroupNorm.layerNorm(channels: 20) }),
            ([1, 64, 96, 96], .groupNorm(groups: 2), { try GroupNorm(channels: 64, groups: 2) }),
            ([6, 1, 240, 240], .batchNorm(normBatch: 6), { try BatchNorm(channels: 1) }),
            ([6, 1, 240, 240], .batchNorm(normBatch: 6), { try BatchRenorm(channels: 1) }),
            (
                [6, 1, 240, 240], .batchNorm(normBatch: 6),
                {
                    // SyncBN on one worker: the staged path, whose statistics stage splits the set too.
                    let bn = try BatchNorm(channels: 1)
                    bn.crossWorkerReduction = InProcessWorkers.Handle(InProcessWorkers(count: 1), worker: 0)
                    return bn
                }
            ),
            ([1, 2, 512, 520], .groupNorm(groups: 2), { try GroupNorm.instanceNorm(channels: 2) }),
        ]
        // BN at batch 1 draws from a generator of its own, so that the cases above keep their data (a γ gradient
        // summed over 2^18 floats of uncorrelated dy is a cancelling sum, about √n against Σ|terms| about n, which
        // `checkTrainingStep` judges against the magnitude of its terms: `sumError`).
        var batchOneRng = SeededGenerator(seed: 0x5918)
        let batchOne: ([Int], RefSets, () throws -> NormalizationLayer) = (
            [1, 4, 520, 521], .batchNorm(normBatch: 1), { try BatchNorm(channels: 4) }
        )
        let native = KernelDispatch.nativeInstructionSet == "none" ? [false] : [false, true]
        for useNative in native {
            KernelDispatch.useNativeKernels = useNative
            for threads in [2, 3] {
                Parallelism.threadCount = threads
                for (index, (shape, sets, make)) in (cases + [batchOne]).enumerated() {
                    let layer = try make()
                    let (gamma, beta, x, dy) =
                        index < cases.count
                        ? draw(layer, shape, &rng) : draw(layer, shape, &batchOneRng)
                    try checkTrainingStep(
                        layer, sets: sets, x: x, dy: dy, gamma: gamma, beta: beta,
                        label: "\(layer.name) \(shape) native \(useNative) \(threads) threads", log: log)
                }
            }
        }
        log.report("KernelPathTests sets split over threads")

        func draw(
            _ layer: NormalizationLayer, _ shape: [Int], _ rng: inout SeededGenerator
        ) -> ([Double]?, [Double]?, Tensor, Tensor) {
            let (gamma, beta) = randomizeAffine(layer, using: &rng)
            let x = randomTensor(shape, scale: 2, offset: 3, using: &rng)
            return (gamma, beta, x, randomTensor(shape, using: &rng))
        }
    }

    /// `sumError`, the measure of dγ and dβ where their terms cancel: the largest error over the largest
    /// magnitude of a channel's terms; a lost term or a NaN is far above `checkTrainingStep`'s 1e-6, float rounding
    /// of the terms far below.
    func testSumErrorIsTheErrorOverTheTermsMagnitude() {
        // Two channels whose sums cancel to 0.5 and 2 from terms of magnitude 1,000 and 4,000.
        let reference = [0.5, 2.0], terms = [1000.0, 4000.0]
        XCTAssertEqual(sumError([0.5, 2], reference, terms: terms), 0)
        XCTAssertEqual(sumError([0.5, 2.002], reference, terms: terms), 0.002 / 4000, accuracy: 1e-10)
        XCTAssertGreaterThan(relativeError([Float(0.5), 2.002], reference), 1e-5)  // meaningless on such sums
        XCTAssertGreaterThan(sumError([0.5, 2 + 0.3], reference, terms: terms), 1e-6)  // a lost term of 0.3
        XCTAssertEqual(sumError([.nan, 2], reference, terms: terms), .infinity)
    }

    func testNativeAndPortableAgree() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 5)
        let widest = KernelDispatch.instructionSet
        for shape in shapes {
            let x = randomTensor(shape, scale: 3, offset: -2, using: &rng)
            let dy = randomTensor(shape, using: &rng)
            var outputs: [(String, [Float])] = []
            for (label, native, limit) in [
                ("portable", false, widest), ("avx2", true, .avx2), ("widest", true, widest),
            ] {
                KernelDispatch.useNativeKernels = native
                KernelDispatch.limitNativeInstructionSet(to: limit)
                var values: [Float] = []
                for layer in [
                    try MovingAverageBatchNorm(channels: shape[1], bufferSize: 2) as NormalizationLayer,
                    try GroupNorm(channels: shape[1], groups: 2), try BatchNorm(channels: shape[1]),
                ] {
                    values += try layer.forward(x, training: true).values + layer.backward(dy).input.values
                }
                outputs.append((label, values))
            }
            let scale = outputs[0].1.map(abs).max() ?? 1
            for (label, values) in outputs.dropFirst() {
                let difference = zip(outputs[0].1, values).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(Double(difference / scale), 1e-6, "\(label) vs portable, \(shape)")
            }
        }
    }

    /// The coefficients stage of wide sets (`nk_channel_coefficients`) is the layers' double arithmetic bit for bit on
    /// every instruction set: `a = γ·factor`, `scale = Float(a)`, `shift = Float(β − a·δ)`, each in double and rounded
    /// to float once (float arithmetic, a wrong lane or a lost tail would differ). Counts cover whole vectors and
    /// tails.
    func testChannelCoefficientsKernelIsTheDoubleArithmeticBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 2026)
        var mismatches = 0, compared = 0
        forEachNativeInstructionSet { limit in
            for count in [1, 3, 8, 15, 16, 17, 31, 64, 100, 512] {
                let gamma = (0..<count).map { _ in Float.random(in: -3...3, using: &rng) }
                let beta = (0..<count).map { _ in Float.random(in: -3...3, using: &rng) }
                let factor = Double.random(in: 0.01...50, using: &rng)
                let residual = Double.random(in: -1e-3...1e-3, using: &rng)
                var scale = [Float](repeating: .nan, count: count), shift = scale
                nk_channel_coefficients(&scale, &shift, gamma, beta, count, factor, residual)
                for c in 0..<count {
                    let a = Double(gamma[c]) * factor
                    compared += 1
                    if scale[c].bitPattern != Float(a).bitPattern
                        || shift[c].bitPattern != Float(Double(beta[c]) - a * residual).bitPattern
                    {
                        mismatches += 1
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, 0, "\(mismatches) of \(compared) coefficients differ from the double arithmetic")
    }

    /// The moments of channels-last multi-channel sets (`nk_cl_set_moments`, GN's and LN's statistics stage) from the
    /// per-sample shifted sums of real data: the mean and biased variance of the data in float64 within 1e-14 of
    /// |μ| + σ (double rounding of terms of size |μ|), on both instruction sets; set widths with whole vectors of 8 and tails, 1 and 3 samples per set,
    /// the shifts far from the mean (|μ| ≫ σ: the correction terms must be right). Entries past each sample's sets
    /// hold NaN: a kernel that read past a set's last channel would return NaN.
    func testSetMomentsKernelMatchesTheDataMoments() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 0x5E7)
        var worst = 0.0
        forEachNativeInstructionSet { limit in
            for (w, samples, sets, positions) in [
                (8, 1, 3, 5), (9, 1, 2, 7), (15, 3, 2, 4), (16, 1, 4, 49), (17, 3, 3, 6), (64, 1, 2, 49),
                (100, 3, 1, 9),
            ] {
                let stride = sets * w + 5, mu = Double.random(in: -1e3...1e3, using: &rng)
                var s1 = [Double](repeating: .nan, count: samples * stride), s2 = s1
                var data = [[Double]](repeating: [], count: sets)
                let k = (0..<(sets * w)).map { _ in Float(mu + Double.random(in: -3...3, using: &rng)) }
                for j in 0..<samples {
                    for ch in 0..<(sets * w) {
                        let values = (0..<positions).map { _ in mu + Double.random(in: -2...2, using: &rng) }
                        data[ch / w] += values
                        s1[j * stride + ch] = values.reduce(0) { $0 + ($1 - Double(k[ch])) }
                        s2[j * stride + ch] = values.reduce(0) { $0 + ($1 - Double(k[ch])) * ($1 - Double(k[ch])) }
                    }
                }
                var mean = [Double](repeating: .nan, count: sets), variance = mean
                nk_cl_set_moments(
                    &mean, &variance, k, s1, s2, sets, w, samples, stride, Double(positions),
                    Double(samples * w * positions))
                for t in 0..<sets {
                    let values = data[t], n = Double(values.count)
                    let m = values.reduce(0, +) / n
                    let v = values.reduce(0) { $0 + ($1 - m) * ($1 - m) } / n
                    let error = max(abs(mean[t] - m), abs(variance[t] - v)) / (abs(m) + v.squareRoot())
                    worst = max(worst, error.isNaN ? .infinity : error)
                    XCTAssertLessThan(error, 1e-14, "\(limit) w \(w) samples \(samples) set \(t)")
                }
            }
        }
        XCTAssertLessThan(worst, 1e-14)
    }

    /// `nk_sets_moments` takes sets of up to 512 floats in groups of NK_LANES (both passes over the group, one
    /// transposing reduction), and larger sets of up to 2,048 floats one at a time, both passes while the
    /// set is in L1, their lanes added as a group's are. Those larger sets' mean and centred sum of squares must be
    /// the same bits however the sets are grouped into calls (all at once, one at a time, split at an odd set), so
    /// that the forward's batch size never changes a result; the grouped ones the same bits when a call is split
    /// between groups; every set within float rounding of the float64 moments of its data. On both instruction sets
    /// (the limit is the same): 1 to 4 pieces, whole vectors and tails.
    func testSetMomentsAreTheSameBitsHoweverTheSetsAreGrouped() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 0x5E75)
        var walked = 0
        forEachNativeInstructionSet { limit in
            let lanes = limit == .avx2 ? 8 : 16
            for (pieces, run, sets) in [
                (1, 7, 33), (1, 49, 40), (2, 49, 19), (1, 196, 35), (1, 512, 18), (1, 513, 17), (2, 392, 21),
                (1, 784, 16), (1, 1024, 9), (3, 341, 20), (4, 300, 5), (1, 1029, 17), (1, 2048, 3),
            ] {
                let pieceStride = run + 3, setStride = pieces * pieceStride + 5
                let mu = Float.random(in: -1e3...1e3, using: &rng)
                let x = (0..<(sets * setStride)).map { _ in mu + Float.random(in: -2...2, using: &rng) }
                func moments(_ first: Int, _ count: Int) -> ([Double], [Double]) {
                    var mean = [Double](repeating: .nan, count: count), m2 = mean
                    x.withUnsafeBufferPointer {
                        nk_sets_moments(
                            $0.baseAddress! + first * setStride, count, setStride, pieces, run, pieceStride, &mean, &m2)
                    }
                    return (mean, m2)
                }
                let oneByOne = pieces * run > 512
                let label = "\(limit) pieces \(pieces) run \(run) sets \(sets)"
                let whole = moments(0, sets), cut = oneByOne ? 1 + sets / 3 : lanes
                let (head, tail) = (moments(0, cut), moments(cut, sets - cut))
                XCTAssertEqual((head.0 + tail.0).map(\.bitPattern), whole.0.map(\.bitPattern), label)
                XCTAssertEqual((head.1 + tail.1).map(\.bitPattern), whole.1.map(\.bitPattern), label)
                for j in 0..<sets {
                    if oneByOne {
                        let one = moments(j, 1)
                        XCTAssertEqual(one.0[0].bitPattern, whole.0[j].bitPattern, "\(label) set \(j) mean")
                        XCTAssertEqual(one.1[0].bitPattern, whole.1[j].bitPattern, "\(label) set \(j) m2")
                        walked += 1
                    }
                    let values = (0..<pieces).flatMap { p in
                        (0..<run).map { Double(x[j * setStride + p * pieceStride + $0]) }
                    }
                    let n = Double(values.count), m = values.reduce(0, +) / n
                    let m2 = values.reduce(0) { $0 + ($1 - m) * ($1 - m) }
                    XCTAssertLessThan(abs(whole.0[j] - m), 1e-5 * (m2 / n).squareRoot(), "\(label) set \(j) mean")
                    XCTAssertLessThan(abs(whole.1[j] - m2), 1e-5 * m2, "\(label) set \(j) m2")
                }
            }
        }
        XCTAssertGreaterThan(walked, 150)
    }

    /// `nk_sets_gradient_sums` takes rows of up to 512 floats NK_LANES at a time (one transposing reduction) and longer
    /// ones (up to 2,048) one at a time, their lanes added as a group's are, so that the backward can batch such rows
    /// by fewer than NK_LANES (not under SiLU, which keeps its groups). Each long row's sums, and `dz` under ReLU, must
    /// be the same bits however the rows are grouped into calls (all sets at once, one set at a time, one row at a
    /// time), with no activation and with ReLU, on both instruction sets; and the sums without an activation within
    /// float rounding of their float64 values. Rows of 513 to 2,048 floats, whole vectors and tails, 2 pieces of 3
    /// rows a set.
    func testGradientSumsOfLongRowsAreTheSameBitsHoweverTheRowsAreGrouped() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 0x6A05)
        var compared = 0
        forEachNativeInstructionSet { limit in
            for m in [513, 784, 1029, 2048] {
                let (sets, pieces, rows) = (4, 2, 3), setStride = rows * m + 3, pieceStride = sets * setStride + 5
                let count = pieces * pieceStride, coefficients = sets * rows
                // Inputs in buffers that outlive every call (the activation's arrays are pointers in its descriptor).
                func buffer(_ values: [Float]) -> UnsafeMutableBufferPointer<Float> {
                    let b = UnsafeMutableBufferPointer<Float>.allocate(capacity: values.count)
                    _ = b.initialize(from: values)
                    return b
                }
                let x = buffer(VariantTestKit.randomFloats(count, in: -3...4, &rng))
                let dy = buffer(VariantTestKit.randomFloats(count, in: -1...1, &rng))
                let k = buffer(VariantTestKit.randomFloats(sets, in: -0.5...0.5, &rng))
                let scales = buffer(VariantTestKit.randomFloats(coefficients, in: -2...2, &rng))
                let shifts = buffer(VariantTestKit.randomFloats(coefficients, in: -1...1, &rng))
                let centers = buffer((0..<coefficients).map { k[$0 / rows] })
                defer { [x, dy, k, scales, shifts, centers].forEach { $0.deallocate() } }
                for kind in [NK_IDENTITY, NK_RELU].map(Int32.init) {
                    // Sums and dz of sets first..<first + n, or of one row (piece p, row r) of set `first`.
                    func sums(sets first: Int, _ n: Int, row: (p: Int, r: Int)? = nil) -> ([Double], [Double], [Float])
                    {
                        let s1 = UnsafeMutableBufferPointer<Double>.allocate(capacity: coefficients * pieces)
                        let s2 = UnsafeMutableBufferPointer<Double>.allocate(capacity: coefficients * pieces)
                        s1.initialize(repeating: .nan)
                        s2.initialize(repeating: .nan)
                        let dz = buffer([Float](repeating: 0, count: count))
                        defer {
                            s1.deallocate()
                            s2.deallocate()
                            dz.deallocate()
                        }
                        let o = first * setStride + (row.map { $0.p * pieceStride + $0.r * m } ?? 0)
                        let c = first * rows + (row?.r ?? 0), out = c + (row?.p ?? 0) * coefficients
                        let (pieceCount, rowCount, outStride) = row == nil ? (pieces, rows, coefficients) : (1, 1, 1)
                        var act = nk_activation_backward(
                            kind: kind, scale: scales.baseAddress! + c, shift: shifts.baseAddress! + c,
                            center: centers.baseAddress! + c, dz: dz.baseAddress! + o)
                        withUnsafeMutablePointer(to: &act) { descriptor in
                            nk_sets_gradient_sums(
                                s1.baseAddress! + out, s2.baseAddress! + out, outStride, dy.baseAddress! + o,
                                x.baseAddress! + o, n, setStride,
                                pieceCount, rowCount, m, pieceStride, k.baseAddress! + first,
                                kind == NK_IDENTITY ? nil : descriptor)
                        }
                        return (Array(s1), Array(s2), Array(dz))
                    }
                    let whole = sums(sets: 0, sets)
                    let label = "\(limit) m \(m) activation \(kind)"
                    for j in 0..<sets {
                        let oneSet = sums(sets: j, 1)
                        for p in 0..<pieces {
                            for r in 0..<rows {
                                let oneRow = sums(sets: j, 1, row: (p, r))
                                let out = j * rows + r + p * coefficients, o = j * setStride + p * pieceStride + r * m
                                for part in [oneSet, oneRow] {
                                    XCTAssertEqual(part.0[out].bitPattern, whole.0[out].bitPattern, "\(label) Σdz")
                                    XCTAssertEqual(part.1[out].bitPattern, whole.1[out].bitPattern, "\(label) Σdz·d")
                                    XCTAssertEqual(
                                        part.2[o..<(o + m)].map(\.bitPattern), whole.2[o..<(o + m)].map(\.bitPattern),
                                        "\(label) dz")
                                }
                                if kind == NK_IDENTITY {
                                    var t1 = 0.0, t2 = 0.0, magnitude = 0.0
                                    for i in o..<(o + m) {
                                        let d = Double(x[i]) - Double(k[j])
                                        t1 += Double(dy[i])
                                        t2 += Double(dy[i]) * d
                                        magnitude += abs(Double(dy[i])) * (1 + abs(d))
                                    }
                                    XCTAssertLessThan(abs(whole.0[out] - t1), 1e-6 * magnitude, label)
                                    XCTAssertLessThan(abs(whole.1[out] - t2), 1e-6 * magnitude, label)
                                }
                                compared += 1
                            }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(compared, 2 * 4 * 2 * 4 * 2 * 3)
    }

    /// SiLU on rows whose last vector is partial: the set kernels evaluate the tails of NK_LANES rows together, in
    /// full vectors. Every element's value (`y` forward, `dz` backward) must be the one-row call's bit for bit, and the
    /// per-row sums equal to float rounding (their last addition is the same; the reduction differs), on both
    /// instruction sets: tails of 1 to 4 floats, rows shorter than a vector and longer than a float block (2,100),
    /// two full groups of rows and a remainder.
    /// A last row whose unused lanes give an overflowing z (scale·center beyond float) keeps its sums finite.
    func testGatheredSiLUTailsAreTheRowPathBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 4049)
        let silu = Int32(NK_SILU)
        var mismatches = 0, compared = 0, worstSum = 0.0
        forEachNativeInstructionSet { limit in
            for m in [3, 7, 17, 49, 196, 2100] {
                let (sets, pieces, rows) = (3, 2, 6), setStride = rows * m, pieceStride = sets * setStride
                let count = pieces * pieceStride, coefficients = sets * rows
                var x = VariantTestKit.randomFloats(count, in: -3...4, &rng)
                let dy = VariantTestKit.randomFloats(count, in: -1...1, &rng)
                var k = VariantTestKit.randomFloats(sets, in: -0.5...0.5, &rng)
                var scales = VariantTestKit.randomFloats(coefficients, in: -2...2, &rng)
                let shifts = VariantTestKit.randomFloats(coefficients, in: -1...1, &rng)
                // The last set: x = center = 1e36 and its last row's scale 1e3, so z = shift there but
                // 1e3·(0 − 1e36) = −inf in the lanes past the rows' ends (one row gathered, one not).
                k[sets - 1] = 1e36
                scales[coefficients - 1] = 1e3
                for p in 0..<pieces {
                    for i in 0..<setStride { x[(sets - 1) * setStride + p * pieceStride + i] = 1e36 }
                }
                var yAll = [Float](repeating: .nan, count: count), yRow = yAll, dzAll = yAll, dzRow = yAll
                var s1All = [Double](repeating: .nan, count: coefficients * pieces), s2All = s1All
                var s1Row = s1All, s2Row = s1All
                nk_sets_affine_centered(
                    &yAll, x, sets, setStride, pieces, rows, m, pieceStride, k, scales, shifts, silu,
                    Int32(NK_STORE_CACHED))
                // The activation's arrays as pointers that outlive the descriptor (row c at a + c, …).
                let a = UnsafeMutableBufferPointer<Float>.allocate(capacity: coefficients)
                let b = UnsafeMutableBufferPointer<Float>.allocate(capacity: coefficients)
                let center = UnsafeMutableBufferPointer<Float>.allocate(capacity: coefficients)
                defer { [a, b, center].forEach { $0.deallocate() } }
                _ = a.initialize(from: scales)
                _ = b.initialize(from: shifts)
                _ = center.initialize(from: (0..<coefficients).map { k[$0 / rows] })
                dzAll.withUnsafeMutableBufferPointer { dz in
                    var act = nk_activation_backward(
                        kind: silu, scale: a.baseAddress!, shift: b.baseAddress!, center: center.baseAddress!,
                        dz: dz.baseAddress!)
                    nk_sets_gradient_sums(
                        &s1All, &s2All, coefficients, dy, x, sets, setStride, pieces, rows, m, pieceStride, k, &act)
                }
                for j in 0..<sets {
                    for p in 0..<pieces {
                        for r in 0..<rows {
                            let o = j * setStride + p * pieceStride + r * m, c = j * rows + r
                            let out = j * rows + p * coefficients + r
                            yRow.withUnsafeMutableBufferPointer { y in
                                nk_sets_affine_centered(
                                    y.baseAddress! + o, Array(x[o..<(o + m)]), 1, m, 1, 1, m, m, [k[j]], [scales[c]],
                                    [shifts[c]], silu, Int32(NK_STORE_CACHED))
                            }
                            dzRow.withUnsafeMutableBufferPointer { dz in
                                var act = nk_activation_backward(
                                    kind: silu, scale: a.baseAddress! + c, shift: b.baseAddress! + c,
                                    center: center.baseAddress! + c, dz: dz.baseAddress! + o)
                                nk_sets_gradient_sums(
                                    &s1Row[out], &s2Row[out], 1, Array(dy[o..<(o + m)]), Array(x[o..<(o + m)]), 1, m,
                                    1, 1, m, m, [k[j]], &act)
                            }
                            var magnitude = 1e-30
                            for i in o..<(o + m) {
                                let d = abs(Double(x[i]) - Double(k[j]))
                                magnitude += abs(Double(dzRow[i])) * (1 + d)
                            }
                            for (all, one) in [(s1All[out], s1Row[out]), (s2All[out], s2Row[out])] {
                                XCTAssertTrue(all.isFinite && one.isFinite, "m \(m) row \(out): sums \(all), \(one)")
                                worstSum = max(worstSum, abs(all - one) / magnitude)
                            }
                        }
                    }
                }
                for i in 0..<count {
                    compared += 2
                    if yAll[i].bitPattern != yRow[i].bitPattern { mismatches += 1 }
                    if dzAll[i].bitPattern != dzRow[i].bitPattern { mismatches += 1 }
                }
            }
        }
        XCTAssertEqual(mismatches, 0, "\(mismatches) of \(compared) SiLU values differ from the one-row kernels'")
        XCTAssertLessThan(worstSum, 1e-6, "gradient sums vs the one-row kernels', relative to Σ|terms|")
    }

    /// The channels-first gradient apply walks each piece of several rows of more than `NK_LANES` floats that are not
    /// whole vectors as one run of vectors, blending two rows' `p` where a vector meets both; streamed, it goes row by
    /// row. Both must give every element the same bits: rows of 17 to 196 floats (and 16 and 64, whole vectors, and 7,
    /// shorter than a vector), 1 to 64 rows a piece, pieces and sets with gaps between them, with and without `k`,
    /// on AVX2 and AVX-512. The gaps must stay untouched.
    func testGradientApplyRunsAreTheRowPathBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 4343)
        var compared = 0, mismatches: [String] = []
        forEachNativeInstructionSet { limit in
            for m in [7, 16, 17, 25, 33, 49, 64, 100, 196] {
                for (rows, pieces, gap) in [(2, 1, 0), (3, 2, 5), (64, 1, 0), (5, 3, 1)] {
                    let sets = 3, pieceStride = rows * m + gap, setStride = pieces * pieceStride + gap
                    let count = sets * setStride, coefficients = sets * rows
                    let x = VariantTestKit.randomFloats(count, in: -3...4, &rng)
                    let dy = VariantTestKit.randomFloats(count, in: -1...1, &rng)
                    let p = VariantTestKit.randomFloats(coefficients, in: -2...2, &rng)
                    let q = VariantTestKit.randomFloats(sets, in: -2...2, &rng)
                    let r = VariantTestKit.randomFloats(sets, in: -1...1, &rng)
                    let k = VariantTestKit.randomFloats(sets, in: -0.5...0.5, &rng)
                    for centers in [k, nil] as [[Float]?] {
                        var cached = [Float](repeating: .nan, count: count), streamed = cached
                        for (store, out) in [(NK_STORE_CACHED, 0), (NK_STORE_STREAMING, 1)] {
                            var dx = [Float](repeating: .nan, count: count)
                            if let centers {
                                nk_sets_gradient_apply(
                                    &dx, dy, x, sets, setStride, pieces, rows, m, pieceStride, p, q, r, centers,
                                    Int32(store))
                            } else {
                                nk_sets_gradient_apply(
                                    &dx, dy, x, sets, setStride, pieces, rows, m, pieceStride, p, q, r, nil,
                                    Int32(store))
                            }
                            if out == 0 { cached = dx } else { streamed = dx }
                        }
                        compared += count
                        if cached.map(\.bitPattern) != streamed.map(\.bitPattern) {
                            mismatches.append("\(limit.name) m \(m) rows \(rows) pieces \(pieces) k \(centers != nil)")
                        }
                        var inPieces = [Bool](repeating: false, count: count)
                        for j in 0..<sets {
                            for i in 0..<pieces {
                                let o = j * setStride + i * pieceStride
                                for e in o..<(o + rows * m) { inPieces[e] = true }
                            }
                        }
                        let touchedGaps = (0..<count).filter {
                            !inPieces[$0] && cached[$0].bitPattern != Float.nan.bitPattern
                        }
                        if !touchedGaps.isEmpty {
                            mismatches.append("m \(m) rows \(rows): \(touchedGaps.count) gap floats written")
                        }
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, [], "the run and the row walk differ (\(compared) values compared)")
    }

    /// The channels-first forward apply walks each piece of several rows shorter than 64 floats that are not whole
    /// vectors (`m` not a multiple of `NK_LANES`) as one run of vectors, each lane's coefficients permuted from the
    /// period's, and so each piece of one-row sets side by side (BN's channels, `k` per row). It must give every
    /// element the bits of the one-row kernel: rows of 1 to 63 floats (and as controls 16, whole vectors, and 100 to
    /// 196, which go row by row), 1 to 64 rows a piece and 2 to 37 one-row sets (partial last periods), pieces and
    /// sets with gaps between them (which must stay untouched), with and without `k`, the identity, ReLU and SiLU, out
    /// of place and in place, on AVX2 and AVX-512.
    func testAffineRunsAreTheRowPathBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 5050)
        var compared = 0, mismatches: [String] = []
        forEachNativeInstructionSet { limit in
            for m in [1, 2, 3, 7, 9, 12, 16, 17, 25, 49, 63, 100, 169, 196] {
                // GN's sets (rows of one set contiguous), then BN's (one-row sets side by side in each piece).
                let layouts =
                    [(2, 1, 0), (3, 2, 5), (64, 1, 0), (5, 3, 1), (17, 2, 3)].map { rows, pieces, gap in
                        (
                            sets: 3, rows: rows, pieces: pieces, setStride: pieces * (rows * m + gap) + gap,
                            pieceStride: rows * m + gap, count: 3 * (pieces * (rows * m + gap) + gap)
                        )
                    }
                    + [(2, 1, 0), (5, 3, 1), (16, 2, 0), (37, 2, 7)].map { sets, pieces, gap in
                        (
                            sets: sets, rows: 1, pieces: pieces, setStride: m, pieceStride: sets * m + gap,
                            count: pieces * (sets * m + gap)
                        )
                    }
                for (sets, rows, pieces, setStride, pieceStride, count) in layouts {
                    let coefficients = sets * rows
                    let x = VariantTestKit.randomFloats(count, in: -3...4, &rng)
                    let a = VariantTestKit.randomFloats(coefficients, in: -2...2, &rng)
                    let b = VariantTestKit.randomFloats(coefficients, in: -1...1, &rng)
                    let k = VariantTestKit.randomFloats(sets, in: -0.5...0.5, &rng)
                    for act in [NK_IDENTITY, NK_RELU, NK_SILU].map(Int32.init) {
                        for centers in [k, nil] as [[Float]?] {
                            var runs = [Float](repeating: .nan, count: count), byRow = runs
                            nk_sets_affine_centered(
                                &runs, x, sets, setStride, pieces, rows, m, pieceStride, centers, a, b, act,
                                Int32(NK_STORE_CACHED))
                            var inPlace = x
                            inPlace.withUnsafeMutableBufferPointer { y in
                                nk_sets_affine_centered(
                                    y.baseAddress!, y.baseAddress!, sets, setStride, pieces, rows, m, pieceStride,
                                    centers, a, b, act, Int32(NK_STORE_CACHED))
                            }
                            var inPieces = [Bool](repeating: false, count: count)
                            for j in 0..<sets {
                                for i in 0..<pieces {
                                    for r in 0..<rows {
                                        let o = j * setStride + i * pieceStride + r * m, c = j * rows + r
                                        for e in o..<(o + m) { inPieces[e] = true }
                                        let row = Array(x[o..<(o + m)])
                                        byRow.withUnsafeMutableBufferPointer { y in
                                            if let centers {
                                                nk_sets_affine_centered(
                                                    y.baseAddress! + o, row, 1, m, 1, 1, m, m, [centers[j]], [a[c]],
                                                    [b[c]], act, Int32(NK_STORE_CACHED))
                                            } else {
                                                nk_sets_affine_centered(
                                                    y.baseAddress! + o, row, 1, m, 1, 1, m, m, nil, [a[c]], [b[c]],
                                                    act, Int32(NK_STORE_CACHED))
                                            }
                                        }
                                    }
                                }
                            }
                            compared += 2 * count
                            let label =
                                "\(limit.name) m \(m) rows \(rows) pieces \(pieces) act \(act) k \(centers != nil)"
                            if runs.map(\.bitPattern) != byRow.map(\.bitPattern) { mismatches.append(label) }
                            let expectedInPlace = (0..<count).map { inPieces[$0] ? byRow[$0] : x[$0] }
                            if inPlace.map(\.bitPattern) != expectedInPlace.map(\.bitPattern) {
                                mismatches.append(label + " in place")
                            }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, [], "the run and the row walk differ (\(compared) values compared)")
    }

    /// Non-temporal stores and the channels-last read-ahead (both from ``KernelDispatch/streamingStoreThreshold`` on)
    /// change how the stages write and read, not what: every layer's forward output and backward gradients (GN, BN,
    /// MABN, frozen BN) and the evaluation outputs are the same bits streamed and prefetched (threshold 0) and cached
    /// (`Int.max`), on both instruction sets and layouts, with the identity, ReLU and SiLU fused. Rows of 49, 99 and
    /// 130 floats start off vector boundaries (the partial first vector), and 24 channels-last channels are not whole
    /// vectors (ordinary stores), 32 and 64 are (streamed); (1, 64, 64, 64) is one sample of 2^18 floats, which the
    /// channels-last kernels split over the threads, and (1, 4, 520, 521) has one-row sets of 270,920 floats (GN with
    /// 4 groups is IN there; BN at batch 1), split channels-first into pieces that start off vector boundaries. GN's
    /// channels-first gradient apply on rows of 49, 99 and 130 floats walks each set's rows as one run of vectors when
    /// cached and row by row when streamed, so those walks are compared too. Channels-last rows wider than a strip
    /// (64 channels on AVX-512, 32 on AVX2) read from memory are summed row by row (`cl_pairs_walk`) where cached they
    /// are swept in strips: (3, 200, 9, 10) and (2, 132, 70) (partial last vectors of 8 and 4 channels on AVX-512, of 4
    /// on AVX2) and (6, 200) (a matrix) compare the two.
    func testStreamingStoresGiveTheSameBits() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        let saved = KernelDispatch.streamingStoreThreshold
        defer { KernelDispatch.streamingStoreThreshold = saved }
        var rng = SeededGenerator(seed: 16)
        var compared = 0, mismatches: [String] = []
        try forEachNativeInstructionSet { limit in
            for shape in [
                [3, 24, 7, 7], [2, 32, 9, 11], [4, 64, 28, 28], [2, 32, 130], [5, 64], [1, 64, 64, 64],
                [1, 4, 520, 521], [3, 200, 9, 10], [2, 132, 70], [6, 200],
            ] {
                for layout in TensorLayout.allCases {
                    let x = randomTensor(shape, layout: layout, scale: 2, offset: 1, using: &rng)
                    let dy = randomTensor(shape, layout: layout, using: &rng)
                    for activation in [FusedActivation.identity, .relu, .silu] {
                        var runs: [[Float]] = []
                        for threshold in [Int.max, 0] {
                            KernelDispatch.streamingStoreThreshold = threshold
                            var values: [Float] = []
                            for layer in try [
                                GroupNorm(channels: shape[1], groups: 4), BatchNorm(channels: shape[1]),
                                MovingAverageBatchNorm(channels: shape[1], bufferSize: 2),
                                FrozenBatchNorm(channels: shape[1], trainableAffine: true),
                            ] as [NormalizationLayer] {
                                layer.activation = activation
                                let y = try layer.forward(x, training: true), gradients = try layer.backward(dy)
                                values += y.values + gradients.input.values
                                values += (gradients.weight ?? []) + (gradients.bias ?? [])
                                // Evaluation: the running statistics' affine (GN's is its training forward).
                                if !(layer is GroupNorm) { values += try layer.forward(x, training: false).values }
                            }
                            runs.append(values)
                        }
                        compared += runs[0].count
                        if runs[0].map(\.bitPattern) != runs[1].map(\.bitPattern) {
                            mismatches.append("\(limit.name) \(shape) \(layout) \(activation)")
                        }
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, [], "streamed and cached stores differ (\(compared) values compared)")
    }

    /// From memory (inputs of ``KernelDispatch/streamingStoreThreshold`` elements and more) the channels-last
    /// backward with a fused activation recomputes `dz = dy·act'(z)` from `x` and `dy` in its apply stage, where in
    /// the caches its sums pass stores `dz` over `dx` and the apply reads it back (`NormalizationKernels.recomputesDz`):
    /// `dx`, `dγ` and `dβ` are the same bits either way, with ReLU and SiLU, on 1 and 2 threads, AVX2 and AVX-512, on
    /// each channels-last path of the backward: GN's slices of 48 channels (2, 256, 28, 28) on a 1 MB L2, GN's samples
    /// split in parts (1, 64, 64, 64), BN's batch split in parts (4, 64, 28, 28), BN's unfused stages (5, 64, 60,
    /// 60): 18,000 rows per channel, too many for a tile), and the staged layers' (MABN, BRN; frozen BN, whose apply
    /// reads `dz` alone, keeps storing it: an infinite `x` leaves its `dx` finite).
    func testRecomputedDzGivesTheSameBits() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        let savedThreshold = KernelDispatch.streamingStoreThreshold, savedL2 = KernelDispatch.levelTwoCacheBytes
        let savedThreads = Parallelism.threadCount
        defer {
            KernelDispatch.streamingStoreThreshold = savedThreshold
            KernelDispatch.levelTwoCacheBytes = savedL2
            Parallelism.threadCount = savedThreads
            KernelDispatch.useNativeKernels = true
            KernelDispatch.limitNativeInstructionSet(to: KernelDispatch.instructionSet)
        }
        KernelDispatch.levelTwoCacheBytes = 1 << 20
        var rng = SeededGenerator(seed: 40)
        var compared = 0, mismatches: [String] = []
        try forEachNativeInstructionSet { limit in
            for (shape, isBatchNorm) in [
                ([2, 256, 28, 28], false), ([1, 64, 64, 64], false), ([4, 64, 28, 28], true), ([5, 64, 60, 60], true),
            ] {
                let x = randomTensor(shape, layout: .channelsLast, scale: 2, offset: 1, using: &rng)
                let dy = randomTensor(shape, layout: .channelsLast, using: &rng)
                let gamma = (0..<shape[1]).map { _ in Float.random(in: 0.5...1.5, using: &rng) }
                let beta = (0..<shape[1]).map { _ in Float.random(in: -0.5...0.5, using: &rng) }
                for activation in [FusedActivation.relu, .silu] {
                    for threads in [1, 2] {
                        Parallelism.threadCount = threads
                        var runs: [[UInt32]] = []
                        for threshold in [Int.max, 0] {
                            KernelDispatch.streamingStoreThreshold = threshold
                            let c = shape[1]
                            let layers: [NormalizationLayer] =
                                isBatchNorm
                                ? [
                                    try BatchNorm(channels: c), try MovingAverageBatchNorm(channels: c, bufferSize: 2),
                                    try BatchRenorm(channels: c),
                                    try FrozenBatchNorm(channels: c, trainableAffine: true),
                                ] : [try GroupNorm(channels: c, groups: 32)]
                            var values: [UInt32] = []
                            for layer in layers {
                                layer.weight?.value = gamma
                                layer.bias?.value = beta
                                layer.activation = activation
                                _ = try layer.forward(x, training: true)
                                let gradients = try layer.backward(dy)
                                values += (gradients.input.values + (gradients.weight ?? []) + (gradients.bias ?? []))
                                    .map(\.bitPattern)
                            }
                            runs.append(values)
                        }
                        compared += runs[0].count
                        if runs[0] != runs[1] { mismatches.append("\(limit.name) \(shape) \(activation) \(threads)") }
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, [], "recomputed and stored dz differ (\(compared) values compared)")
        // Frozen BN from memory with an infinite input: its dx = scale·dz + offset stays finite.
        KernelDispatch.streamingStoreThreshold = 0
        var x = randomTensor([5, 64, 60, 60], layout: .channelsLast, using: &rng)
        x.withUnsafeMutableBufferPointer { $0[7] = .infinity }
        let frozen = try FrozenBatchNorm(channels: 64, trainableAffine: true)
        frozen.activation = .relu
        _ = try frozen.forward(x, training: true)
        let dx = try frozen.backward(randomTensor([5, 64, 60, 60], layout: .channelsLast, using: &rng)).input
        XCTAssertTrue(dx.values.allSatisfy(\.isFinite), "frozen BN + ReLU from memory: dx not finite at an infinite x")
    }

    /// The channels-last sums (`nk_cl_centered_sums`, `nk_cl_gradient_sums` without an activation) are the lane rule
    /// bit for bit, however a row is cut into slices: per channel, with `d = x − k` in float, a float lane adds `d`
    /// (or `dy`) and `fma(d, d, ·)` (or `fma(dy, d, ·)`) row by row, and goes to double every 64 rows from the first
    /// and at the last, added to what the sums held. Widths from under a vector to past 256 channels (AVX-512's 16-vector
    /// slices of registers, session 51) with tails, whole rows and slices of wider rows, every read mode (from memory
    /// whole rows of up to 256 channels go in order, wider ones by the walk), with and without a shift.
    func testChannelsLastSumsAreTheLaneRuleBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 51)
        let m = 150
        var cases = 0
        forEachNativeInstructionSet { limit in
            for w in [7, 16, 65, 100, 200, 256, 257, 300, 520] {
                for c in [w, w + 24] {
                    let x = VariantTestKit.randomFloats(m * c, in: -3...4, &rng)
                    let dy = VariantTestKit.randomFloats(m * c, in: -1...1, &rng)
                    let k = VariantTestKit.randomFloats(w, in: -0.5...0.5, &rng)
                    let start = (0..<2 * w).map { Double($0) * 0.25 - 3 }
                    for gradient in [false, true] {
                        for centred in [true, false] {
                            var expected = start
                            for r0 in stride(from: 0, to: m, by: 64) {
                                for ch in 0..<w {
                                    var (a, q) = (Float(0), Float(0))
                                    for row in r0..<min(r0 + 64, m) {
                                        let d = x[row * c + ch] - (centred ? k[ch] : 0)
                                        let g = gradient ? dy[row * c + ch] : d
                                        a += g
                                        q = q.addingProduct(g, d)
                                    }
                                    expected[ch] += Double(a)
                                    expected[w + ch] += Double(q)
                                }
                            }
                            for read in [NK_READ_CACHED, NK_READ_AHEAD, NK_READ_FROM_L3] {
                                var sums = start
                                sums.withUnsafeMutableBufferPointer { s in
                                    k.withUnsafeBufferPointer { kp in
                                        let shift = centred ? kp.baseAddress : nil
                                        if gradient {
                                            nk_cl_gradient_sums(
                                                s.baseAddress!, s.baseAddress! + w, dy, x, m, c, w, shift, nil,
                                                Int32(read))
                                        } else {
                                            nk_cl_centered_sums(
                                                s.baseAddress!, s.baseAddress! + w, x, m, c, w, shift, Int32(read))
                                        }
                                    }
                                }
                                let wrong = (0..<2 * w).first { sums[$0].bitPattern != expected[$0].bitPattern }
                                XCTAssertNil(
                                    wrong,
                                    "\(limit.name) w \(w) c \(c) gradient \(gradient) centred \(centred) read \(read): "
                                        + "sum \(wrong ?? 0) is \(sums[wrong ?? 0]), the lane rule gives \(expected[wrong ?? 0])"
                                )
                                cases += 1
                            }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(cases, 2 * 9 * 2 * 2 * 2 * 3)
    }

    /// The channels-last apply (`nk_cl_affine_centered`, `nk_cl_gradient_apply`) on rows wider than a slice walks
    /// them row by row when its tile sweep would load a row of `x` at the page offset of the row of `out` it has just
    /// stored (4K aliasing: rows a multiple of 4 KB apart, `x` and `out` at the same page offset), and, for the
    /// backward without an activation, unless the row walk would alias itself (`out` up to a slice past `x`'s or
    /// `dy`'s page offset), and, for the forward on whole rows read from beyond L2 (`NK_READ_FROM_L3`), wherever the
    /// row walk does not alias itself; in tiles of rows otherwise. The row walk reads coefficient rows that are not on
    /// vector boundaries from aligned copies. Every walk
    /// gives the same bits, and each element is `fma(a, x − k, b)` (then `fma(p, dy, ·)`) as a scalar fused
    /// multiply-add gives it, for rows of 1,024 channels (the aliasing case with `out` at `x`'s page offset; not with
    /// `out` 1 KB further), 1,029 (a partial last vector; aliasing with `out` 20 bytes on) and 1,200 (`out` 64 bytes on:
    /// the row walk's own aliasing, so tiles), coefficients on a vector boundary and 16 bytes past one, every
    /// activation, a slice narrower than the row, with and without centres, cached and streamed stores, inputs read as
    /// cached and from L3.
    func testChannelsLastApplyGivesTheSameBitsRowByRowAndInTiles() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 36)
        let m = 21
        var cases = 0
        forEachNativeInstructionSet { limit in
            for (c, offsets) in [(1024, [0, 1024]), (1029, [20, 1044]), (1200, [64, 1024])] {
                // x, dy and out each on pages of their own (out then moved `offset` bytes on): dy at x's page offset.
                let count = m * c, span = (4 * count / 4096 + 2) * 4096
                let raw = UnsafeMutableRawPointer.allocate(byteCount: 3 * span, alignment: 4096)
                defer { raw.deallocate() }
                let x = raw.bindMemory(to: Float.self, capacity: count)
                let dy = (raw + span).bindMemory(to: Float.self, capacity: count)
                let outBase = raw + 2 * span
                for i in 0..<count {
                    x[i] = Float.random(in: -3...3, using: &rng)
                    dy[i] = Float.random(in: -1...1, using: &rng)
                }
                // The coefficient rows k, a, b, q, `stride` floats apart (a whole number of cache lines), moved by
                // `shift` floats: 0 puts them on vector boundaries, 4 puts them 16 bytes past.
                let stride = (c + 31) / 16 * 16
                let rows = UnsafeMutableRawPointer.allocate(byteCount: 4 * stride * 4, alignment: 64)
                    .bindMemory(to: Float.self, capacity: 4 * stride)
                defer { rows.deallocate() }
                let values = (
                    k: (0..<c).map { _ in Float.random(in: -1...1, using: &rng) },
                    a: (0..<c).map { _ in Float.random(in: 0.5...2, using: &rng) },
                    b: (0..<c).map { _ in Float.random(in: -1...1, using: &rng) },
                    q: (0..<c).map { _ in Float.random(in: -1...1, using: &rng) }
                )
                for w in [c, c - 40] {
                    for centred in [true, false] {
                        for store in [NK_STORE_CACHED, NK_STORE_STREAMING] {
                            for kind in [NK_IDENTITY, NK_RELU, NK_SILU, -1] {  // -1: the gradient apply
                                var results: [[UInt32]] = []
                                for offset in offsets {
                                    for read in [NK_READ_CACHED, NK_READ_FROM_L3] {
                                        for shift in [0, 4] {
                                            let (k, a, b, q) = (
                                                rows + shift, rows + stride + shift,
                                                rows + 2 * stride + shift, rows + 3 * stride + shift
                                            )
                                            k.update(from: values.k, count: c)
                                            a.update(from: values.a, count: c)
                                            b.update(from: values.b, count: c)
                                            q.update(from: values.q, count: c)
                                            let out = (outBase + offset).bindMemory(to: Float.self, capacity: count)
                                            out.update(repeating: .nan, count: count)
                                            if kind < 0 {
                                                nk_cl_gradient_apply(out, dy, x, m, c, w, q, a, b, k, nil, Int32(store))
                                            } else {
                                                nk_cl_affine_centered(
                                                    out, x, m, c, w, centred ? k : nil, a, b, Int32(kind), Int32(store),
                                                    Int32(read))
                                            }
                                            results.append((0..<count).map { out[$0].bitPattern })
                                            if kind == NK_IDENTITY || kind < 0 {
                                                for row in 0..<m {
                                                    for ch in 0..<w {
                                                        let i = row * c + ch
                                                        let d = x[i] - (centred || kind < 0 ? k[ch] : 0)
                                                        var expected = b[ch].addingProduct(a[ch], d)
                                                        if kind < 0 { expected = expected.addingProduct(q[ch], dy[i]) }
                                                        if out[i].bitPattern != expected.bitPattern {
                                                            return XCTFail(
                                                                "\(limit.name) c \(c) w \(w) kind \(kind) offset \(offset) "
                                                                    + "read \(read) shift \(shift): element \(i) is \(out[i]), fma "
                                                                    + "gives \(expected)")
                                                        }
                                                    }
                                                }
                                            }
                                            cases += 1
                                        }
                                    }
                                }
                                for other in results.dropFirst() {
                                    XCTAssertEqual(
                                        results[0], other,
                                        "\(limit.name) c \(c) w \(w) centred \(centred) store \(store) kind \(kind)")
                                }
                            }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(cases, 2 * 3 * 2 * 2 * 2 * 4 * 2 * 2 * 2)
    }

    /// The evaluation coefficients of BN, BRN and MABN (`nk_evaluation_coefficients`, 8 channels at a time) are the
    /// Swift loop they replace bit for bit: `a = γ/sqrt(spread + ε)` or `γ/spread` in double, `k = Float(μ)`,
    /// `scale = Float(a)`, `shift = Float(β − a·(μ − k))`. Channel counts around the vector width and its remainder,
    /// with and without γ, β and centres, on both instruction sets, over values that reach the edges: means up to 1e30,
    /// subnormal, zero and negative spreads, infinite and NaN entries (an infinite mean's residual is NaN). (A running
    /// mean is a float, so its residual is 0 otherwise: the shift is β unless `a` is not finite.)
    func testEvaluationCoefficientsKernelIsTheSwiftLoopBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 37)
        let special: [Float] = [
            0, -0.0, .leastNormalMagnitude / 4, -.leastNormalMagnitude / 4, 1e38, -1e38, .infinity, -.infinity, .nan,
            -1,
        ]
        func values(_ n: Int, _ range: ClosedRange<Float>) -> [Float] {
            (0..<n).map { i in
                i % 5 == 4 ? special[(i / 5) % special.count] : Float.random(in: range, using: &rng)
            }
        }
        var checked = 0
        forEachNativeInstructionSet { limit in
            for n in [1, 7, 8, 9, 17, 63, 1000] {
                let spread = values(n, 1e-6...1e3), gamma = values(n, -2...2), beta = values(n, -1...1)
                let center = values(n, -1e4...1e4).enumerated().map { $0 % 3 == 1 ? $1 * 1e26 : $1 }
                for (root, epsilon) in [(true, 1e-5), (true, 0.5), (false, 0)] as [(Bool, Double)] {
                    for (affine, centred) in [(true, true), (false, true), (true, false), (false, false)] {
                        var scale = [Float](repeating: .nan, count: n), shift = scale, centre = scale
                        gamma.withUnsafeBufferPointer { gp in
                            beta.withUnsafeBufferPointer { bp in
                                center.withUnsafeBufferPointer { mp in
                                    nk_evaluation_coefficients(
                                        &scale, &shift, &centre, centred ? mp.baseAddress : nil, spread,
                                        affine ? gp.baseAddress : nil, affine ? bp.baseAddress : nil, n, epsilon,
                                        root ? 1 : 0)
                                }
                            }
                        }
                        let got = [scale, shift, centre]
                        for i in 0..<n {
                            let s = Double(spread[i]), sigma = root ? (s + epsilon).squareRoot() : s
                            let a = Double(affine ? gamma[i] : 1) / sigma
                            let mu = Double(centred ? center[i] : 0), k = Float(mu)
                            let want = [Float(a), Float(Double(affine ? beta[i] : 0) - a * (mu - Double(k))), k]
                            for (j, name) in ["scale", "shift", "centre"].enumerated()
                            where got[j][i].bitPattern != want[j].bitPattern {
                                return XCTFail(
                                    "\(limit.name) n \(n) root \(root) affine \(affine) centred \(centred): \(name) "
                                        + "of channel \(i) is \(got[j][i]), the Swift loop gives \(want[j])")
                            }
                        }
                        checked += 1
                    }
                }
            }
        }
        XCTAssertEqual(checked, 2 * 7 * 3 * 4)
    }

    /// The backward's coefficients of BN's one-channel sets (`nk_gradient_coefficients`, 8 channels at a time, in the
    /// channels-last tiles and the channels-first set batches) are the Swift loop they replace bit for bit
    /// (`NormalizationKernels.setGradientCoefficients` and its callers' conversions): the sums made exact in place
    /// and `p`, `q`, `r` of `dx = p·dz + q·(x − k) + r`, for 1 to 5 samples (a ghost batch's), channel counts around
    /// the vector width, means far from their float (a residual), and infinite and NaN entries, on both instruction
    /// sets. (A NaN is compared as a NaN: the vectorized code may negate before or after a product, which flips a
    /// NaN's sign bit and nothing else.)
    func testGradientCoefficientsKernelIsTheSwiftLoopBitForBit() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        var rng = SeededGenerator(seed: 0x37_02)
        let special: [Double] = [0, -0.0, .leastNormalMagnitude / 4, 1e300, .infinity, -.infinity, .nan]
        func values(_ n: Int, _ range: ClosedRange<Double>) -> [Double] {
            (0..<n).map { i in i % 7 == 6 ? special[(i / 7) % special.count] : Double.random(in: range, using: &rng) }
        }
        var checked = 0
        forEachNativeInstructionSet { limit in
            for samples in [1, 2, 5] {
                for w in [1, 7, 8, 9, 63, 65, 130] {
                    let stride = w + 3, count = Double(samples * 49)
                    // Means of doubles, so that k = Float(mean) leaves a residual.
                    let mean = values(w, -3...3).map { $0 + 1e-9 }, rstd = values(w, 0.1...10)
                    let ge = values(w, -2...2), s1 = values(samples * stride, -50...50)
                    let s2 = values(samples * stride, -50...50)
                    var got = s2, p = [Float](repeating: .nan, count: w), q = p, r = p
                    nk_gradient_coefficients(
                        &p, &q, &r, &got, s1, mean, rstd, ge, samples, stride, w, count)
                    var want = s2
                    for i in 0..<w {
                        let k = Float(mean[i]), residual = mean[i] - Double(k)
                        var meanG = 0.0, meanGX = 0.0
                        for j in 0..<samples {
                            let row = j * stride + i
                            want[row] = want[row] - residual * s1[row]
                            meanG += ge[i] * s1[row]
                            meanGX += ge[i] * want[row]
                        }
                        let rs = rstd[i]
                        let slope = -rs * rs * (meanGX * rs / count), offset = -rs * (meanG / count)
                        let expected = [Float(rs * ge[i]), Float(slope), Float(offset - slope * residual)]
                        for (value, (name, wanted)) in zip([p[i], q[i], r[i]], zip(["p", "q", "r"], expected))
                        where value.bitPattern != wanted.bitPattern && !(value.isNaN && wanted.isNaN) {
                            return XCTFail(
                                "\(limit.name) samples \(samples) w \(w): \(name) of channel \(i) is \(value), "
                                    + "the Swift loop gives \(wanted)")
                        }
                    }
                    for row in 0..<(samples * stride)
                    where got[row].bitPattern != want[row].bitPattern && !(got[row].isNaN && want[row].isNaN) {
                        let untouched = row % stride >= w && got[row].bitPattern == s2[row].bitPattern
                        if !untouched {
                            return XCTFail("\(limit.name) samples \(samples) w \(w): sum \(row) is \(got[row])")
                        }
                    }
                    checked += 1
                }
            }
        }
        XCTAssertEqual(checked, 2 * 3 * 7)
    }

    /// The native SiLU against float64, element by element: `silu(z)` (the forward's apply) in ulps of the float64
    /// value rounded to float, and `silu'(z)` (the backward's `dz` with dy = 1) in float ulps of its terms' scale
    /// `σ·(1 + |z|·(1 − σ))` (it crosses 0 near z = −1.28), on a dense grid of z over [−87, 88] and at the edges where
    /// the kernels switch to their limits. An exp or a reciprocal a few bits short (the reciprocal estimate without
    /// its Newton step) breaks the bounds. Below z = −87 the forward is −0 and the gradient 0; NaN stays NaN.
    func testNativeSiLUIsWithinULPsOfFloat64() throws {
        try XCTSkipIf(KernelDispatch.nativeInstructionSet == "none", "this CPU has neither AVX2 nor AVX-512")
        let silu = Int32(NK_SILU)
        var z = stride(from: -87.0, through: 88.0, by: 1.0 / 1024).map { Float($0) }
        z += [-1e-30, 0, 1e-30, -87.5, -88.5, -100, -1e30, -3e38, 87.5, 100, 1e30, 3e38, .nan]
        let n = z.count
        func ulps(_ value: Float, _ reference: Double) -> Int {
            let r = Float(reference)
            if value == r { return 0 }
            guard value.sign == r.sign, value.isFinite, r.isFinite else { return .max }
            return abs(Int(value.bitPattern) - Int(r.bitPattern))
        }
        for (limit, forwardBound, backwardBound) in [
            // Measured worst: AVX2 4 and 4 ulps, AVX-512 3 and 3; one more allowed.
            (KernelDispatch.InstructionSet.avx2, 5, 5), (KernelDispatch.instructionSet, 4, 4),
        ] {
            KernelDispatch.useNativeKernels = true
            KernelDispatch.limitNativeInstructionSet(to: limit)
            var y = [Float](repeating: .nan, count: n), dz = y
            var s1 = 0.0, s2 = 0.0
            nk_sets_affine_centered(&y, z, 1, n, 1, 1, n, n, [0], [1], [0], silu, Int32(NK_STORE_CACHED))
            // The activation's scale 1, shift 0 and centre 0, in memory that outlives the descriptor.
            let affine = UnsafeMutableBufferPointer<Float>.allocate(capacity: 3)
            defer { affine.deallocate() }
            _ = affine.initialize(from: [1, 0, 0])
            dz.withUnsafeMutableBufferPointer { out in
                var act = nk_activation_backward(
                    kind: silu, scale: affine.baseAddress!, shift: affine.baseAddress! + 1,
                    center: affine.baseAddress! + 2, dz: out.baseAddress!)
                nk_sets_gradient_sums(
                    &s1, &s2, 1, [Float](repeating: 1, count: n), z, 1, n, 1, 1, n, n, [0], &act)
            }
            var worstForward = 0, worstBackward = 0
            for i in 0..<n {
                let v = Double(z[i]), label = "\(limit) z = \(z[i])"
                if v.isNaN {
                    XCTAssertTrue(y[i].isNaN && dz[i].isNaN, "\(label): \(y[i]), \(dz[i])")
                } else if v <= -87 {
                    XCTAssertEqual(y[i].bitPattern, (-0.0 as Float).bitPattern, "\(label): silu \(y[i])")
                    XCTAssertEqual(dz[i], 0, "\(label): silu' \(dz[i])")
                } else {
                    let forward = ulps(y[i], v / (1 + Foundation.exp(-v)))
                    // silu' = σ·(1 + z·(1 − σ)) crosses 0 near z = −1.28: its error in float ulps of the terms' scale.
                    let s = 1 / (1 + Foundation.exp(-v)), scale = s * (1 + abs(v) * (1 - s))
                    let backward = Int((abs(Double(dz[i]) - s * (1 + v * (1 - s))) / (scale * 0x1p-23)).rounded(.up))
                    XCTAssertLessThanOrEqual(forward, forwardBound, "\(label): silu \(y[i])")
                    XCTAssertLessThanOrEqual(backward, backwardBound, "\(label): silu' \(dz[i])")
                    worstForward = max(worstForward, forward)
                    worstBackward = max(worstBackward, backward)
                }
            }
            print("SiLU \(limit): worst \(worstForward) ulps forward, \(worstBackward) backward over \(n) values")
        }
    }
}
