import CNormKitKernels

// The channels-last (NHWC) paths of NormalizationKernels on the native kernels: one sample's M positions are M rows of
// C contiguous floats, and the C kernels vectorise across channels (nk_cl_*, KernelBody.h). Reductions split the batch
// over threads; the applies split the rows (positions) of the batch, so a batch of 1 uses every core too. Per-channel
// rows of per-set values (k, q, r) are built in stack scratch of C floats per call. The portable loops
// (NormalizationKernels.swift, `centeredSums` here) remain the reference and the path without native kernels.

extension NormalizationKernels {
    /// Whether the channels-last native kernels run (the same switch as the row kernels).
    @inline(__always) static var nativeChannelsLast: Bool { nativeKernels }

    /// Channels-last statistics in one pass over `x`, shifted: per (n, c), `Σ(x−k)` and `Σ(x−k)²` with `k` the
    /// channel's value in the first row of the sample block (a value of the data, so `x − k` is of the order of
    /// the spread even when |μ| ≫ σ); per set, in double, `μ = Σ(k·M + Σ(x−k)) / count` and
    /// `Σ(x−μ)² = Σ [Σ(x−k)² − 2(μ−k)·Σ(x−k) + M·(μ−k)²]`. `scratch`: ``doubleScratchCount(_:)`` doubles.
    static func statisticsChannelsLast(
        mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>, x: UnsafePointer<Float>,
        scratch: UnsafeMutablePointer<Double>, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions
        let s1 = scratch, s2 = scratch + g.batch * c
        @inline(__always) func shift(_ n: Int) -> UnsafePointer<Float> {
            x + (n / g.samplesPerSet) * g.samplesPerSet * m * c
        }
        let partial = scratch + 2 * g.batch * c
        forEachSamplePart(g, backward: false, work: g.elementCount, sums: (s1, s2), partial: partial) {
            n, rows, a1, a2 in
            centeredSums(
                a1, a2, x + (n * m + rows.lowerBound) * c, rows: rows.count, channels: c, shift: shift(n),
                read: g.inputRead)
        }
        shiftedSetMoments(
            mean: mean, variance: variance, sets: 0..<g.setCount, s1: s1, s2: s2, shift: { shift($0) }, geometry: g)
    }

    /// The parts of rows each sample's channels-last reduction (``statisticsChannelsLast``, the gradient sums) is cut
    /// into: ``blockParts(_:backward:)``'s `perSample`, fixed by the shape, so that a batch of one sample (a matrix in
    /// ``NormalizationGeometry/kernelForm``, whose one sample is the whole batch) uses every core, with the same bits
    /// on any thread count.
    static func reductionParts(_ g: NormalizationGeometry, backward: Bool) -> Int {
        blockParts(g, backward: backward).perSample
    }

    /// Doubles of partial sums ``forEachSamplePart(_:backward:work:sums:partial:_:)`` takes for `g` (0: not cut).
    static func reductionPartsScratchCount(_ g: NormalizationGeometry, backward: Bool) -> Int {
        let parts = reductionParts(g, backward: backward)
        return parts > 1 ? 2 * g.batch * parts * g.channels : 0
    }

    /// Per-(n, c) sums `sums.0 + n·C`, `sums.1 + n·C` (zeroed here) from `body(n, rows, a1, a2)`, which adds the sums of
    /// sample `n`'s `rows` into `a1`, `a2` (C each, zeroed): the samples over the threads (`work`: the thread split's
    /// units, ``Parallelism/forEachRange(count:work:minimumWork:granule:_:)``), each cut into
    /// ``reductionParts(_:backward:)`` parts of rows whose sums (in `partial`,
    /// ``reductionPartsScratchCount(_:backward:)`` doubles) are added in part order.
    @inline(__always)
    static func forEachSamplePart(
        _ g: NormalizationGeometry, backward: Bool, work: Int,
        sums: (UnsafeMutablePointer<Double>, UnsafeMutablePointer<Double>), partial: UnsafeMutablePointer<Double>,
        _ body: (
            _ n: Int, _ rows: Range<Int>, _ a1: UnsafeMutablePointer<Double>, _ a2: UnsafeMutablePointer<Double>
        ) -> Void
    ) {
        let c = g.channels, m = g.positions, parts = reductionParts(g, backward: backward)
        guard parts > 1 else {
            Parallelism.forEachRange(count: g.batch, work: work) { samples in
                for n in samples {
                    let a1 = sums.0 + n * c, a2 = sums.1 + n * c
                    a1.update(repeating: 0, count: c)
                    a2.update(repeating: 0, count: c)
                    body(n, 0..<m, a1, a2)
                }
            }
            return
        }
        Parallelism.forEachRange(count: g.batch * parts, work: work) { items in
            for item in items {
                let a1 = partial + 2 * item * c, a2 = a1 + c
                a1.update(repeating: 0, count: 2 * c)
                body(item / parts, rows(ofParts: (item % parts)..<(item % parts + 1), parts, positions: m), a1, a2)
            }
        }
        for n in 0..<g.batch {
            addParts(
                s1: sums.0 + n * c, s2: sums.1 + n * c, partial: partial + 2 * n * parts * c, parts: parts, channels: c)
        }
    }

    /// Per channel, `s1 += Σ(x − k)` and `s2 += Σ(x − k)²` over `rows` rows of `channels` floats: the native kernel
    /// (reading as ``NormalizationGeometry/inputRead`` says), or the portable loop in Double.
    @inline(__always)
    static func centeredSums(
        _ s1: UnsafeMutablePointer<Double>, _ s2: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Float>, rows: Int,
        channels c: Int, shift k: UnsafePointer<Float>, read: Int32
    ) {
        if nativeChannelsLast { return nk_cl_centered_sums(s1, s2, x, rows, c, c, k, read) }
        for p in 0..<rows {
            for ch in 0..<c {
                let d = Double(x[p * c + ch]) - Double(k[ch])
                (s1[ch], s2[ch]) = (s1[ch] + d, s2[ch] + d * d)
            }
        }
    }

    /// Four sets' means and biased variances from their entries' shifted sums: lane t of entry `(j, i)` holds set t's
    /// shift `k`, `Σ(x−k)` and `Σ(x−k)²` of its sample `j`, channel `i` (M values each); `μ = Σ(k·M + Σ(x−k)) / count`
    /// and `Σ(x−μ)² = Σ [Σ(x−k)² − 2(μ−k)·Σ(x−k) + M·(μ−k)²]`, in double, entries in (sample, channel) order. Each
    /// lane is one set's sequence of operations, so its value is the set's alone; the four chains of additions
    /// interleave where one set's would wait on each addition in turn (17 % of GN (2, 2048, 7, 7)'s NHWC forward).
    @inline(__always)
    static func shiftedMoments(
        positions m: Int, count: Double, samples: Int, channels: Int,
        _ entry: (_ sample: Int, _ channel: Int) -> (shift: SIMD4<Double>, sum: SIMD4<Double>, squares: SIMD4<Double>)
    )
        -> (mean: SIMD4<Double>, variance: SIMD4<Double>)
    {
        let mm = Double(m)
        var total = SIMD4<Double>()
        for j in 0..<samples {
            for i in 0..<channels {
                let (k, s1, _) = entry(j, i)
                total += k * mm + s1
            }
        }
        let mu = total / count
        var m2 = SIMD4<Double>()
        for j in 0..<samples {
            for i in 0..<channels {
                let (k, s1, s2) = entry(j, i)
                let e = mu - k
                m2 += s2 - 2 * e * s1 + mm * e * e
            }
        }
        let variance = m2 / count
        return (mu, variance.replacing(with: 0, where: .!(variance .>= 0)))  // max(0, v), NaN to 0 as max does
    }

    /// Calls `body(first, lanes)` for `sets` four at a time, `lanes` (1 … 4) of them real: lane t stands for set
    /// `first + min(t, lanes − 1)`, a last partial group repeating its last set in the lanes past it.
    @inline(__always)
    static func forEachSetQuad(_ sets: Range<Int>, _ body: (_ first: Int, _ lanes: Int) -> Void) {
        var s = sets.lowerBound
        while s < sets.upperBound {
            let lanes = min(4, sets.upperBound - s)
            body(s, lanes)
            s += lanes
        }
    }

    /// The moments of sets `sets` from the per-(n, c) shifted sums `s1`, `s2` (`C` apart per sample) and the shifts
    /// `shift(n0)[ch]` of each set's block (first sample `n0`), four sets at a time (``shiftedMoments``).
    @inline(__always)
    static func shiftedSetMoments(
        mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>, sets: Range<Int>,
        s1: UnsafePointer<Double>, s2: UnsafePointer<Double>, shift: (_ n0: Int) -> UnsafePointer<Float>,
        geometry g: NormalizationGeometry
    ) {
        let c = g.channels, cps = g.channelsPerSet, sps = g.samplesPerSet, count = Double(g.elementsPerSet)
        if nativeChannelsLast && cps >= 8 {
            // Sets of a vector of channels or more: each set's channels in vector lanes (nk_cl_set_moments), where the
            // loop below runs one chain of scalar additions per set. The sets of each block in one call.
            var s = sets.lowerBound
            while s < sets.upperBound {
                let (block, index) = s.quotientAndRemainder(dividingBy: g.channelBlocks)
                let inBlock = min(sets.upperBound - s, g.channelBlocks - index), n0 = block * sps, c0 = index * cps
                nk_cl_set_moments(
                    mean + s, variance + s, shift(n0) + c0, s1 + n0 * c + c0, s2 + n0 * c + c0, inBlock, cps, sps, c,
                    Double(g.positions), count)
                s += inBlock
            }
            return
        }
        forEachSetQuad(sets) { first, lanes in
            let (block, index) = first.quotientAndRemainder(dividingBy: g.channelBlocks)
            // Lane t's shifts, Σ(x−k) and Σ(x−k)² from its set's first channel of its block's first sample (the sets
            // are consecutive: one division for the quad, more only for lanes past the first set's block).
            @inline(__always) func lane(
                _ t: Int
            ) -> (UnsafePointer<Float>, UnsafePointer<Double>, UnsafePointer<Double>) {
                let i = index + min(t, lanes - 1)
                let (b, r) = i < g.channelBlocks ? (block, i) : (block + i / g.channelBlocks, i % g.channelBlocks)
                let n0 = b * sps, c0 = r * cps
                return (shift(n0) + c0, s1 + n0 * c + c0, s2 + n0 * c + c0)
            }
            let (l0, l1, l2, l3) = (lane(0), lane(1), lane(2), lane(3))
            let (mu, v) = shiftedMoments(positions: g.positions, count: count, samples: sps, channels: cps) { j, i in
                let o = j * c + i
                return (
                    SIMD4(Double(l0.0[i]), Double(l1.0[i]), Double(l2.0[i]), Double(l3.0[i])),
                    SIMD4(l0.1[o], l1.1[o], l2.1[o], l3.1[o]), SIMD4(l0.2[o], l1.2[o], l2.2[o], l3.2[o])
                )
            }
            for t in 0..<lanes { (mean[first + t], variance[first + t]) = (mu[t], v[t]) }
        }
    }

    /// Calls `body(n, firstRow, rows)` for the runs of rows of `rows` that lie in one sample each, `m` rows per
    /// sample (channels-last: its positions; channels-first: its channels).
    @inline(__always)
    static func forEachSampleRun(_ rows: Range<Int>, rowsPerSample m: Int, _ body: (Int, Int, Int) -> Void) {
        var row = rows.lowerBound
        while row < rows.upperBound {
            let n = row / m, end = min(rows.upperBound, (n + 1) * m)
            body(n, row, end - row)
            row = end
        }
    }

    /// `y = act(scale[b,c]·(x − center[b,c]) + shift[b,c])` (center nil: 0), rows of the batch split over threads.
    static func nativeApplyChannelsLast(
        y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
        center: UnsafePointer<Float>?, scale: UnsafePointer<Float>,
        shift: UnsafePointer<Float>, activation: FusedActivation, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions, store = g.outputStore, read = g.inputRead
        Parallelism.forEachRange(count: g.batch * m, work: activation.work(elements: g.elementCount)) { rows in
            forEachSampleRun(rows, rowsPerSample: m) { n, first, count in
                let k0 = g.coefficient(n: n, c: 0)
                nk_cl_affine_centered(
                    y + first * c, x + first * c, count, c, c, center.map { $0 + k0 }, scale + k0,
                    shift + k0, activation.kernelCode, store, read)
            }
        }
    }

    /// Per-(n, c) `Σ dy` and `Σ dy·(x − center[set])` (moved from the float `k = Float(center)` to the exact centre);
    /// with a fused activation, of `dz = dy·act'(z)`, also written to `activation.dz`. `partial`:
    /// ``reductionPartsScratchCount(_:backward:)`` doubles (backward).
    static func nativeGradientSumsChannelsLast(
        sumDy: UnsafeMutablePointer<Double>, sumDyCentered: UnsafeMutablePointer<Double>, dy: UnsafePointer<Float>,
        x: UnsafePointer<Float>, center: UnsafePointer<Double>, partial: UnsafeMutablePointer<Double>,
        activation: ActivationBackward?, storingDz: Bool, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions
        let work = backwardWork(g, activation)
        forEachSamplePart(g, backward: true, work: work, sums: (sumDy, sumDyCentered), partial: partial) {
            n, rows, a1, a2 in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: c) { k in
                for ch in 0..<c { k[ch] = Float(center[g.set(n: n, c: ch)]) }
                let o = (n * m + rows.lowerBound) * c
                withKernelActivation(
                    activation, coefficient: g.coefficient(n: n, c: 0), element: o, storingDz: storingDz
                ) {
                    nk_cl_gradient_sums(a1, a2, dy + o, x + o, rows.count, c, c, k.baseAddress!, $0, g.inputRead)
                }
            }
        }
        for n in 0..<g.batch {
            let a1 = sumDy + n * c, a2 = sumDyCentered + n * c
            for ch in 0..<c {
                a2[ch] = Centering(center[g.set(n: n, c: ch)]).exactSum(centered: a2[ch], sumDy: a1[ch])
            }
        }
    }

    /// `dx = scale[b,c]·dy + q·(x − k) + r` with `(k, q, r) = setCoefficients(set)` (the set's float centre, slope and
    /// offset at that centre), rows of the batch split over threads; with `activation`, of `dz = dy·act'(z)`
    /// recomputed from `x` (``recomputesDz(_:activationFused:)``) in place of `dy`.
    static func nativeGradientApplyChannelsLast(
        dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        scale: UnsafePointer<Float>, activation: ActivationBackward?, geometry g: NormalizationGeometry,
        setCoefficients: (_ set: Int) -> (center: Float, slope: Float, offset: Float)
    ) {
        let c = g.channels, m = g.positions, store = g.outputStore
        Parallelism.forEachRange(count: g.batch * m, work: 2 * g.elementCount) { rows in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 3 * c) { rowValues in
                let k = rowValues.baseAddress!, q = k + c, r = q + c
                forEachSampleRun(rows, rowsPerSample: m) { n, first, count in
                    for ch in 0..<c { (k[ch], q[ch], r[ch]) = setCoefficients(g.set(n: n, c: ch)) }
                    let o = first * c, k0 = g.coefficient(n: n, c: 0)
                    withKernelActivation(activation, coefficient: k0, element: 0, storingDz: false) {
                        nk_cl_gradient_apply(dx + o, dy + o, x + o, count, c, c, scale + k0, q, r, k, $0, store)
                    }
                }
            }
        }
    }
}

// Tiles: one sample block (BN: the batch or a ghost batch; GN, LN, IN: a sample) by a slice of channels holding
// whole sets, small enough to stay in L2. The whole pipeline runs per tile (statistics, coefficients, apply while
// the tile is cached; the backward likewise), so x is read from memory once per direction. The rows of a slice are
// `w` channels of each position, `C` floats apart: narrower than `minimumSlice` they cost more than the second read
// they save (the prefetchers fetch whole rows; `normkit bench` measured 16–80-channel slices of 256–512-channel
// rows 1.2–1.4× slower than the unfused path), so such shapes take the unfused path; except a sample's sets read
// from memory on a core with less than 2 MB of L2 (`narrowestSlice`).
extension NormalizationKernels {
    /// Floats of `x` per tile (512 KB: with `x`, `dy` and `dx` of the backward it stays in a 2 MB L2).
    static let tileFloats = 1 << 17
    /// The narrowest slice of a row that is not the whole row (1 KB).
    static let minimumSlice = 256
    /// The narrowest slice of a sample's sets (GN, LN, IN) read from memory on a core with less than 2 MB of L2
    /// (192 bytes of each row): there the split sample's share of a thread (1.6 MB of `x`, and as much of `dy`, on
    /// (32, 256, 56, 56)) is read again from L3, where a slice's tile is read again from L2. On the AMD Zen 4 kind
    /// (1 MB of L2) GN's NHWC forward+backward on (32, 256, 56, 56) took 0.85–0.88x the time in slices of 48
    /// channels, on (32, 512, 28, 28) 0.77–0.91x in slices of 128; slices of 32 channels on (32, 128, 56, 56) did
    /// not measure apart from the noise (±20 % between runs of one build there), so 48 is the narrowest. On the Intel
    /// kind (2 MB) slices of 32–128 channels were 1.20–1.32x slower (PERFORMANCE.md, sessions 22 and 39). Batches of
    /// four samples per thread or more take whole samples per thread instead (``takesWholeSamplePerThread(_:)``).
    static let narrowSliceFromMemory = 48

    /// The narrowest slice `tileWidth` takes for `g`: ``narrowSliceFromMemory`` for sets inside a sample of an input
    /// beyond the caches (``KernelDispatch/streamingStoreThreshold``) on a core with less than 2 MB of L2, else
    /// ``minimumSlice``. Not for BN: a slice of its sets spans the whole batch, rows `C` floats apart.
    static func narrowestSlice(_ g: NormalizationGeometry) -> Int {
        setsFromMemoryOnSmallL2(g) ? narrowSliceFromMemory : minimumSlice
    }

    /// Whether `g`'s sets lie inside a sample (GN, LN, IN) of an input beyond the caches (read `NK_READ_AHEAD`:
    /// ``NormalizationGeometry/inputRead``) on a core with less than 2 MB of L2.
    static func setsFromMemoryOnSmallL2(_ g: NormalizationGeometry) -> Bool {
        g.samplesPerSet == 1 && g.inputRead == Int32(NK_READ_AHEAD) && KernelDispatch.levelTwoCacheBytes < 2 << 20
    }

    /// Whether the tiles of `g` are whole samples, each on one thread, where slices (``narrowestSlice(_:)``) or a
    /// sample split over the threads (``blockParts(_:backward:)``) would take them: sets inside a sample from memory
    /// on a core with less than 2 MB of L2 (``setsFromMemoryOnSmallL2(_:)``), samples of at most
    /// ``fusedSampleFloats``, and at least four per thread when they divide evenly over the threads, else eight (the
    /// last uneven round then costs at most an eighth: (9, 256, 56, 56) on two threads, five samples on one and four
    /// on the other, measured GN + SiLU's forward 1.06× the time of 48-channel slices, pairs 0.61–1.36). A thread's
    /// sample (3.2 MB on (32, 256, 56, 56)) outgrows its L2 as a slice's tile does not, but its rows are read whole
    /// and in order, and no thread waits on another between the two passes of every sample, as the split passes do.
    /// On the AMD Zen 4 kind GN's NHWC forward+backward on (32, 256, 56, 56) took 0.75× the time of 48-channel
    /// slices, (32, 512, 28, 28) 0.74×, (8, 1024, 28, 28) 0.84× (PERFORMANCE.md, session 46). Likewise sets inside
    /// a sample of an input read from L3 (`NK_READ_FROM_L3`) whose samples divide evenly over the threads, however
    /// few: the split passes wait for every thread twice a sample (after the sums and after the apply) and add the
    /// parts' sums on one thread in between. GN's NHWC forward on (2, 256, 56, 56), (2, 512, 28, 28) and
    /// (4, 512, 28, 28) took 0.97–0.98×, 0.76–0.97× and 0.83–0.93× the split passes' time, forward+backward
    /// 0.91–0.95×, 0.79–0.98× and 0.77–0.95× (medians of alternated rounds, three or four runs each; PERFORMANCE.md,
    /// session 50). A split sample sums in the same parts either way (``sliceSums``), so the bits do not depend on the
    /// thread count.
    static func takesWholeSamplePerThread(_ g: NormalizationGeometry) -> Bool {
        let threads = Parallelism.threadCount, blocks = g.sampleBlocks
        guard g.positions * g.channels <= fusedSampleFloats else { return false }
        if g.samplesPerSet == 1 && g.inputRead == Int32(NK_READ_FROM_L3) && blocks % threads == 0 { return true }
        let balanced = blocks % threads == 0 ? blocks >= 4 * threads : blocks >= 8 * threads
        return setsFromMemoryOnSmallL2(g) && balanced
    }

    /// Whole-sample tiles of at least this many floats (1 MB) go one sample at a time to all the threads, cut into
    /// parts of rows (``blockParts(_:backward:)``): each thread's parts stay in its own L2 from the sums to the apply,
    /// where one thread per sample re-read the whole sample from L3, and a batch smaller than the thread count still
    /// uses every core, where it ran on one. An 800 KB sample at batch 8, which stays in L2 whole, measured 1.11× the
    /// time split; the larger ones faster (PERFORMANCE.md, session 22).
    static let splitSampleFloats = 1 << 18
    /// The parts a split sample is cut into, at most (fixed by the shape, not by the thread count, so that the bits
    /// do not depend on it: each part's sums are added in part order), and the fewest rows a part has.
    static let maximumSampleParts = 16
    static let minimumPartRows = 64
    /// Samples too short to split (fewer than two parts of ``minimumPartRows``) take one whole-sample tile up to this
    /// many floats (4 MB), and the unfused path beyond it, which splits the apply's rows over the threads.
    static let fusedSampleFloats = 1 << 20

    /// The slice width (channels) of the tiled path for `g` (the forward's or the backward's), or nil for the unfused
    /// path (statistics of the whole tensor, then the apply). Whole rows when a block's rows fit a tile and there is a
    /// block per thread, or when each thread takes whole samples (``takesWholeSamplePerThread(_:)``); whole rows cut
    /// into parts (``blockParts(_:backward:)``) for a block of several samples or a lone sample below
    /// ``splitSampleFloats``; else slices of at least ``narrowestSlice(_:)`` channels holding whole sets, one per thread
    /// at least, of equal widths where those are wide enough (else of `fit` channels and a remainder); else, for sets
    /// inside one sample, the whole sample (its rows split over the threads from ``splitSampleFloats``; a sample too
    /// short to split only up to ``fusedSampleFloats``). Samples of ``splitSampleFloats`` or more take slices before
    /// parts where the slices are wide enough: GN (2, 2048, 16, 16) NHWC in parts measured 1.07× the forward's time and
    /// 1.05× the forward+backward's (PERFORMANCE.md, session 27).
    static func tileWidth(_ g: NormalizationGeometry, backward: Bool) -> Int? {
        guard nativeChannelsLast, g.channels > 0, g.positions > 0 else { return nil }
        let rows = g.samplesPerSet * g.positions, c = g.channels, fit = tileFloats / rows
        let threads = Parallelism.threadCount, slicesPerBlock = (threads + g.sampleBlocks - 1) / g.sampleBlocks
        let narrowest = narrowestSlice(g)
        if c <= fit && g.sampleBlocks >= threads || takesWholeSamplePerThread(g) { return c }
        if g.samplesPerSet > 1 || g.positions * c < splitSampleFloats, blockParts(g, backward: backward).total > 1 {
            return c
        }
        let cps = g.channelsPerSet, step = cps % 16 == 0 || 16 % cps != 0 ? cps : 16  // whole sets, whole vectors
        // As many slices per block as the tile size needs, rounded up to a multiple of the slices a block needs for
        // the threads, and slices of equal width: the tiles split evenly over the threads. (Slices of `fit` channels
        // and a narrow remainder gave BN (2, 1024, 14, 14) NHWC tiles of 320, 320, 320 and 64 channels, two per
        // thread: one thread had 640 channels, 2 MB of `x` and `y`, and spilled its L2.)
        if fit > 0 {  // (0: a block's rows alone exceed a tile)
            let needed = max(slicesPerBlock, (c + fit - 1) / fit)
            let slices = (needed + slicesPerBlock - 1) / slicesPerBlock * slicesPerBlock
            let even = ((c + slices - 1) / slices + step - 1) / step * step
            if even >= narrowest { return min(even, c) }
        }
        let width = min(fit, (c + slicesPerBlock - 1) / slicesPerBlock) / step * step
        if width >= narrowest { return min(width, c) }
        return g.samplesPerSet == 1 && (rows * c <= fusedSampleFloats || blockParts(g, backward: backward).total > 1)
            ? c : nil
    }

    /// The parts of rows each sample block of `g` is cut into when its tiles are whole blocks, each part inside one
    /// sample: `perSample` parts of each of its samples' rows, `total` in all (1: not cut). Each part's sums are added
    /// in part order, and the parts are fixed by the shape and the direction, never by the thread count.
    ///
    /// - A sample of ``splitSampleFloats`` or more: up to ``maximumSampleParts`` parts of at least
    ///   ``minimumPartRows`` rows.
    /// - A lone sample (batch 1) of ``tileFloats`` or more: two parts where its tile would be one thread's (LN: a set
    ///   as wide as the row leaves no slices), and in the backward, whose `x`, `dy` and `dx` would not stay in L2 in
    ///   slices (below).
    /// - A block of several samples (BN's batch or ghost batch) of ``tileFloats`` to ``fusedSampleFloats`` whose
    ///   samples have ``minimumPartRows`` rows: at least at its samples.
    ///
    /// Slices of channels do not shrink what a tile takes of the caches when a row is a multiple of 4 KB (every
    /// power-of-two channel count from 1,024; from 256 a page holds whole rows at the same offsets too): the slice's
    /// lines of every row fall in the same cache sets, a fraction `slice / row` of them. BN (2, 1024, 14, 14) NHWC in
    /// 256-channel slices of its 392 rows put 1.6 MB of `x` and `y` per slice in a quarter of L2's sets.
    static func blockParts(_ g: NormalizationGeometry, backward: Bool) -> (perSample: Int, total: Int) {
        let m = g.positions, sample = m * g.channels, block = g.samplesPerSet * sample
        let perSample = sample >= splitSampleFloats ? max(1, min(maximumSampleParts, m / minimumPartRows)) : 1
        if g.samplesPerSet == 1 {
            let lone = g.sampleBlocks == 1 && sample >= tileFloats && m >= 2 * minimumPartRows
            let split = lone && (backward || g.channelsPerSet == g.channels)
            return perSample == 1 && split ? (2, 2) : (perSample, perSample)
        }
        guard m >= minimumPartRows, block >= tileFloats, block <= fusedSampleFloats else { return (1, 1) }
        return (perSample, g.samplesPerSet * perSample)
    }

    /// The parts the tiled passes split each sample block of `g` into over the threads (``splitPasses``) for tiles
    /// `width` channels wide: ``blockParts(_:backward:)`` for whole rows, unless each thread takes whole samples
    /// (``takesWholeSamplePerThread(_:)``); else one part (not split).
    static func splitParts(
        _ g: NormalizationGeometry, width: Int, backward: Bool
    ) -> (perSample: Int, total: Int) {
        width == g.channels && !takesWholeSamplePerThread(g) ? blockParts(g, backward: backward) : (1, 1)
    }

    /// Doubles of scratch for the partial sums of a split block (``blockParts(_:backward:)``): per part, two rows of
    /// C.
    static func sampleSplitScratchCount(_ g: NormalizationGeometry) -> Int {
        let parts = blockParts(g, backward: true).total  // (at least the forward's)
        return parts > 1 ? 2 * parts * g.channels : 0
    }

    /// The rows of parts `t` of `parts` of a sample of `m` rows (contiguous, in order, sizes within one of each other).
    @inline(__always)
    static func rows(ofParts t: Range<Int>, _ parts: Int, positions m: Int) -> Range<Int> {
        (m * t.lowerBound / parts)..<(m * t.upperBound / parts)
    }

    /// The rows of part `t` of block `block`'s ``blockParts(_:backward:)`` and the element its first row starts at:
    /// the block's sample `t / perSample`, its rows of part `t % perSample`.
    @inline(__always)
    static func blockPart(
        _ t: Int, of parts: (perSample: Int, total: Int), block: Int, geometry g: NormalizationGeometry
    ) -> (rows: Int, element: Int) {
        let n = block * g.samplesPerSet + t / parts.perSample, j = t % parts.perSample
        let part = rows(ofParts: j..<(j + 1), parts.perSample, positions: g.positions)
        return (part.count, (n * g.positions + part.lowerBound) * g.channels)
    }

    /// Calls `body(share)` on each thread with its contiguous share of a split sample's or set's `parts`, one piece
    /// per thread, so that a thread meets in its cache the rows it read when it applies them (pieces smaller than a
    /// thread's share would let an early thread take some of another's).
    @inline(__always)
    static func forEachShare(of parts: Int, _ body: (Range<Int>) -> Void) {
        let threads = min(Parallelism.threadCount, parts)
        Parallelism.forEachPart(threads) { t in body((parts * t / threads)..<(parts * (t + 1) / threads)) }
    }

    /// The two passes over a split sample or set: `read(t)` on every part (each thread its share,
    /// ``forEachShare(of:_:)``), `between()` on the calling thread (the parts' sums added in part order, the
    /// coefficients), then `apply(t)` on every part, each thread the same share last part first: the rows read last
    /// are the likeliest to be still in L2 (a share of `x` and `dy` can be larger than L2, and ordinary stores of `y`
    /// take L2 lines too); session 22 measured GN (2, 256, 56, 56) NHWC forward 0.95× and forward+backward 0.91× the
    /// time of walking them first to last.
    @inline(__always)
    static func splitPasses(parts: Int, read: (Int) -> Void, between: () -> Void, apply: (Int) -> Void) {
        forEachShare(of: parts) { share in for t in share { read(t) } }
        between()
        forEachShare(of: parts) { share in for t in share.reversed() { apply(t) } }
    }

    /// `s1[ch] = Σ_t partial[2t·C + ch]`, `s2[ch] = Σ_t partial[(2t + 1)·C + ch]`, parts added in order.
    @inline(__always)
    static func addParts(
        s1: UnsafeMutablePointer<Double>, s2: UnsafeMutablePointer<Double>, partial: UnsafePointer<Double>, parts: Int,
        channels c: Int
    ) {
        s1.update(from: partial, count: c)
        s2.update(from: partial + c, count: c)
        for t in 1..<parts {
            let p1 = partial + 2 * t * c, p2 = p1 + c
            for ch in 0..<c {
                s1[ch] += p1[ch]
                s2[ch] += p2[ch]
            }
        }
    }

    /// ``addParts(s1:s2:partial:parts:channels:)`` for each sample `n` of block `block` of a split block
    /// (``blockParts(_:backward:)``): its per-channel sums at `s1 + n·C`, `s2 + n·C` from its parts' in `partial`.
    @inline(__always)
    static func addParts(
        s1: UnsafeMutablePointer<Double>, s2: UnsafeMutablePointer<Double>, partial: UnsafePointer<Double>,
        of parts: (perSample: Int, total: Int), block: Int, geometry g: NormalizationGeometry
    ) {
        let c = g.channels
        for j in 0..<g.samplesPerSet {
            let n = block * g.samplesPerSet + j
            addParts(
                s1: s1 + n * c, s2: s2 + n * c, partial: partial + 2 * j * parts.perSample * c, parts: parts.perSample,
                channels: c)
        }
    }

    /// A slice's per-channel sums of one sample, `s1`, `s2` (`w` channels, zeroed here) from `sums(s1, s2, firstRow,
    /// rows)` over the sample's `parts` parts of rows (``blockParts(_:backward:)``'s `perSample`), added in part order
    /// as the split passes add them: a sample that takes slices on one thread count and parts on another gets the same
    /// bits. (The kernel's float totals go to double at the same rows for any slice width, `cl_pairs_run`.)
    @inline(__always)
    static func sliceSums(
        _ s1: UnsafeMutablePointer<Double>, _ s2: UnsafeMutablePointer<Double>, width w: Int, parts: Int,
        positions m: Int,
        _ sums: (_ s1: UnsafeMutablePointer<Double>, _ s2: UnsafeMutablePointer<Double>, _ row: Int, _ rows: Int) ->
            Void
    ) {
        s1.update(repeating: 0, count: w)
        s2.update(repeating: 0, count: w)
        let first = rows(ofParts: 0..<1, parts, positions: m)
        sums(s1, s2, first.lowerBound, first.count)
        guard parts > 1 else { return }
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * w) { buffer in
            let p1 = buffer.baseAddress!, p2 = p1 + w
            for t in 1..<parts {
                let part = rows(ofParts: t..<(t + 1), parts, positions: m)
                p1.update(repeating: 0, count: w)
                p2.update(repeating: 0, count: w)
                sums(p1, p2, part.lowerBound, part.count)
                for ch in 0..<w {
                    s1[ch] += p1[ch]
                    s2[ch] += p2[ch]
                }
            }
        }
    }

    /// Calls `body(block, firstChannel, width)` for the tiles `tiles` of slices `width` channels wide.
    @inline(__always)
    private static func forEachTile(
        _ tiles: Range<Int>, width: Int, geometry g: NormalizationGeometry, _ body: (Int, Int, Int) -> Void
    ) {
        let slices = (g.channels + width - 1) / width
        for tile in tiles {
            let c0 = (tile % slices) * width
            body(tile / slices, c0, min(width, g.channels - c0))
        }
    }

    /// The training forward per tile: one-pass shifted statistics of the tile's sets (shift: the block's first row),
    /// their coefficients, then `y = act(a·(x − μ̃) + b)` while the tile is in cache. `centers`/`scale`/`shift`
    /// get per-(block, channel) entries; `sums` holds the per-(n, c) sums and, after them, a split sample's partial
    /// sums (``doubleScratchCount(_:)``). Whole samples of ``splitSampleFloats`` or more go one at a time to all the
    /// threads, in parts of rows that a thread takes for the sums and again for the apply.
    static func nativeNormalizeTiled(
        y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>,
        rstd: UnsafeMutablePointer<Double>, gain: UnsafeMutablePointer<Double>, offset: UnsafeMutablePointer<Double>,
        x: UnsafePointer<Float>, gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, epsilon: Float,
        rule: some NormalizationRule, scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>,
        centers: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Double>, activation: FusedActivation,
        width: Int, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions, sps = g.samplesPerSet, cps = g.channelsPerSet
        let count = Double(g.elementsPerSet), tiles = g.sampleBlocks * ((c + width - 1) / width)
        let store = g.outputStore, read = g.inputRead

        /// The sets of one tile: moments from the per-sample sums, then the rule's coefficients.
        @inline(__always) func standardizeSets(b: Int, c0: Int, w: Int, first: UnsafePointer<Float>) {
            let sets = (b * g.channelBlocks + c0 / cps)..<(b * g.channelBlocks + (c0 + w) / cps)
            shiftedSetMoments(
                mean: mean, variance: variance, sets: sets, s1: sums, s2: sums + g.batch * c,
                shift: { _ in first - c0 },
                geometry: g)
            for s in sets {
                let sc0 = (s % g.channelBlocks) * cps
                let center = setCoefficients(
                    scale: scale, shift: shift, rstd: rstd, gain: gain, offset: offset, set: s, mean: mean[s],
                    variance: variance[s], gamma: gamma, beta: beta, epsilon: epsilon, rule: rule, geometry: g)
                (centers + b * c + sc0).update(repeating: center, count: cps)
            }
        }

        /// The coefficients of one tile's sets from the per-(n, c) sums of its samples.
        @inline(__always) func tileCoefficients(b: Int, c0: Int, w: Int, first: UnsafePointer<Float>) {
            if cps == 1, rule is Standardization {
                // BN's one-channel sets: `standardizeSets` for all of the tile's channels in one vectorized call.
                let s0 = b * g.channelBlocks + c0, e0 = b * sps * c + c0
                nk_cl_standardized_coefficients(
                    mean + s0, variance + s0, rstd + s0, gain + s0, offset + s0, scale + s0, shift + s0,
                    centers + s0, first, sums + e0, sums + g.batch * c + e0, sps, c, w, Double(m), count, epsilon,
                    gamma.map { $0 + c0 }, beta.map { $0 + c0 })
            } else {
                standardizeSets(b: b, c0: c0, w: w, first: first)
            }
        }

        let parts = splitParts(g, width: width, backward: false)
        if parts.total > 1 {
            let partial = sums + 2 * g.batch * c
            for b in 0..<g.sampleBlocks {
                let first = x + b * sps * m * c, k = b * c
                splitPasses(parts: parts.total) { t in
                    let (rows, o) = blockPart(t, of: parts, block: b, geometry: g)
                    let a1 = partial + 2 * t * c, a2 = a1 + c
                    a1.update(repeating: 0, count: c)
                    a2.update(repeating: 0, count: c)
                    nk_cl_centered_sums(a1, a2, x + o, rows, c, c, first, read)
                } between: {
                    addParts(s1: sums, s2: sums + g.batch * c, partial: partial, of: parts, block: b, geometry: g)
                    tileCoefficients(b: b, c0: 0, w: c, first: first)
                } apply: { t in
                    let (rows, o) = blockPart(t, of: parts, block: b, geometry: g)
                    nk_cl_affine_centered(
                        y + o, x + o, rows, c, c, centers + k, scale + k, shift + k, activation.kernelCode, store,
                        read)
                }
            }
            return
        }
        // A slice of a sample that the split passes would cut (on another thread count) sums it in the same parts.
        let sliceParts = sps == 1 ? blockParts(g, backward: false).perSample : 1
        Parallelism.forEachRange(count: tiles, work: activation.work(elements: g.elementCount)) { range in
            forEachTile(range, width: width, geometry: g) { b, c0, w in
                let n0 = b * sps, first = x + n0 * m * c + c0
                for n in n0..<(n0 + sps) {
                    sliceSums(
                        sums + n * c + c0, sums + (g.batch + n) * c + c0, width: w, parts: sliceParts, positions: m
                    ) { a1, a2, row, rows in
                        nk_cl_centered_sums(a1, a2, x + (n * m + row) * c + c0, rows, c, w, first, read)
                    }
                }
                tileCoefficients(b: b, c0: c0, w: w, first: first)
                let k = b * c + c0, o = n0 * m * c + c0
                nk_cl_affine_centered(
                    y + o, x + o, sps * m, c, w, centers + k, scale + k, shift + k, activation.kernelCode, store,
                    read)
            }
        }
    }

    /// The training backward per tile: gradient sums of the tile's sets, their slopes and offsets, then `dx` while
    /// the tile's `x` and `dy` are in cache. Writes the per-(n, c) `Σdy`, `Σdy·(x−μ)` as the unfused path does.
    /// With a fused activation the sums pass turns `dy` into `dz` (written to `activation.dz`, normally `dx`) and
    /// the apply reads it back while it is cached. `scratch`: `4·coefficientCount` floats (a tile's per-channel
    /// `k`, `p`, `q`, `r` at its own coefficients); `partial`: a split sample's partial sums
    /// (``sampleSplitScratchCount(_:)`` doubles). Whole samples of ``splitSampleFloats`` or more go one at a time to
    /// all the threads, as in the forward.
    static func nativeNormalizeBackwardTiled(
        dx: UnsafeMutablePointer<Float>, sumDy: UnsafeMutablePointer<Double>,
        sumDyCentered: UnsafeMutablePointer<Double>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>, gammaEffective: UnsafePointer<Double>,
        scratch: UnsafeMutablePointer<Float>, partial: UnsafeMutablePointer<Double>, activation: ActivationBackward?,
        width: Int, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions, sps = g.samplesPerSet, cps = g.channelsPerSet
        let tiles = g.sampleBlocks * ((c + width - 1) / width), store = g.outputStore, read = g.inputRead
        // From memory the apply recomputes `dz` from `x` and `dy` (``recomputesDz(_:activationFused:)``).
        let recompute = recomputesDz(g, activationFused: activation != nil)
        let upstream = recompute ? dy : activation.map { UnsafePointer($0.dz) } ?? dy
        let applied = recompute ? activation : nil

        /// The tile's row of centres `k` (the sets' float means), from its coefficients' entry in `scratch`.
        @inline(__always) func tileCenters(b: Int, c0: Int, w: Int) -> UnsafeMutablePointer<Float> {
            let k = scratch + 4 * (b * c + c0), s0 = b * g.channelBlocks + c0 / cps
            for s in s0..<(s0 + w / cps) {
                (k + (s - s0) * cps).update(repeating: Centering(mean[s]).center, count: cps)
            }
            return k
        }
        /// The tile's `p = rstd·γ` per channel and `q`, `r` of its sets (after `k`), from the per-(n, c) sums.
        @inline(__always) func tileCoefficients(b: Int, c0: Int, w: Int) {
            let k = scratch + 4 * (b * c + c0), p = k + w, q = p + w, r = q + w
            let s0 = b * g.channelBlocks + c0 / cps
            if cps == 1 {
                // BN's one-channel sets: the loop below for all of the tile's channels in one vectorized call.
                let e0 = b * sps * c + c0
                return nk_gradient_coefficients(
                    p, q, r, sumDyCentered + e0, sumDy + e0, mean + s0, rstd + s0, gammaEffective + b * c + c0,
                    sps, c, w, Double(g.elementsPerSet))
            }
            for s in s0..<(s0 + w / cps) {
                let (slope, offset) = setGradientCoefficients(
                    sumDy: sumDy, sumDyCentered: sumDyCentered, mean: mean, rstd: rstd,
                    gammaEffective: gammaEffective, set: s, centeredOnFloat: true, geometry: g)
                let setSlope = Float(slope), setOffset = Centering(mean[s]).offset(offset, slope: slope)
                for j in ((s - s0) * cps)..<((s - s0 + 1) * cps) {
                    p[j] = Float(rstd[s] * gammaEffective[b * c + c0 + j])
                    (q[j], r[j]) = (setSlope, setOffset)
                }
            }
        }

        let parts = splitParts(g, width: width, backward: true)
        if parts.total > 1 {
            for b in 0..<g.sampleBlocks {
                let k = tileCenters(b: b, c0: 0, w: c), p = k + c, q = p + c, r = q + c
                splitPasses(parts: parts.total) { t in
                    let (count, o) = blockPart(t, of: parts, block: b, geometry: g)
                    let a1 = partial + 2 * t * c, a2 = a1 + c
                    a1.update(repeating: 0, count: c)
                    a2.update(repeating: 0, count: c)
                    withKernelActivation(activation, coefficient: b * c, element: o, storingDz: !recompute) {
                        nk_cl_gradient_sums(a1, a2, dy + o, x + o, count, c, c, k, $0, read)
                    }
                } between: {
                    addParts(s1: sumDy, s2: sumDyCentered, partial: partial, of: parts, block: b, geometry: g)
                    tileCoefficients(b: b, c0: 0, w: c)
                } apply: { t in
                    let (count, o) = blockPart(t, of: parts, block: b, geometry: g)
                    withKernelActivation(applied, coefficient: b * c, element: 0, storingDz: false) {
                        nk_cl_gradient_apply(dx + o, upstream + o, x + o, count, c, c, p, q, r, k, $0, store)
                    }
                }
            }
            return
        }
        let sliceParts = sps == 1 ? blockParts(g, backward: true).perSample : 1  // (as in the forward)
        Parallelism.forEachRange(count: tiles, work: backwardWork(g, activation)) { range in
            forEachTile(range, width: width, geometry: g) { b, c0, w in
                let k = tileCenters(b: b, c0: c0, w: w), p = k + w, q = p + w, r = q + w, n0 = b * sps
                for n in n0..<(n0 + sps) {
                    sliceSums(
                        sumDy + n * c + c0, sumDyCentered + n * c + c0, width: w, parts: sliceParts, positions: m
                    ) { a1, a2, row, rows in
                        let o = (n * m + row) * c + c0
                        withKernelActivation(
                            activation, coefficient: b * c + c0, element: o, storingDz: !recompute
                        ) {
                            nk_cl_gradient_sums(a1, a2, dy + o, x + o, rows, c, w, k, $0, read)
                        }
                    }
                }
                tileCoefficients(b: b, c0: c0, w: w)
                let o = n0 * m * c + c0
                withKernelActivation(applied, coefficient: b * c + c0, element: 0, storingDz: false) {
                    nk_cl_gradient_apply(dx + o, upstream + o, x + o, sps * m, c, w, p, q, r, k, $0, store)
                }
            }
        }
    }
}
