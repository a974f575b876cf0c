import CNormKitKernels

// The kernels behind every layer. A normalization set is a block of `samplesPerSet` consecutive samples by
// `channelsPerSet` consecutive channels, over all spatial positions:
//
//   BatchNorm (ghost batch k)  samplesPerSet = k, channelsPerSet = 1
//   GroupNorm (G groups)       samplesPerSet = 1, channelsPerSet = C/G   (LN: C, IN: 1)
//
// Sets are numbered `b·channelBlocks + g` (sample block b, channel block g). Per-channel coefficients are
// indexed `b·C + c` so a ghost-batched BN or a GN can give each (sample block, channel) its own affine.
//
// Channels-first: each (n, c) plane is a contiguous row of M floats; the kernels walk one set at a time
// through all of its passes so the set stays in cache (one DRAM read of x and one write of y per forward).
// Channels-last: per-(n, c) sums are gathered position by position into Double accumulators.

/// Shape and grouping of one normalization call.
struct NormalizationGeometry: Equatable {
    let layout: TensorLayout
    let batch: Int
    let channels: Int
    let positions: Int
    let samplesPerSet: Int
    let channelsPerSet: Int

    init(layout: TensorLayout, batch: Int, channels: Int, positions: Int, samplesPerSet: Int, channelsPerSet: Int) {
        assert(batch % samplesPerSet == 0 && channels % channelsPerSet == 0)
        (self.layout, self.batch, self.channels, self.positions) = (layout, batch, channels, positions)
        (self.samplesPerSet, self.channelsPerSet) = (samplesPerSet, channelsPerSet)
    }

    var sampleBlocks: Int { batch / samplesPerSet }
    var channelBlocks: Int { channels / channelsPerSet }
    var setCount: Int { sampleBlocks * channelBlocks }
    var elementsPerSet: Int { samplesPerSet * channelsPerSet * positions }
    /// Size of a per-(sample block, channel) coefficient array.
    var coefficientCount: Int { sampleBlocks * channels }
    var elementCount: Int { batch * channels * positions }
    /// How the apply stages (training and evaluation) store this tensor's output: streaming from
    /// ``KernelDispatch/streamingStoreThreshold`` elements on.
    var outputStore: Int32 {
        Int32(elementCount >= KernelDispatch.streamingStoreThreshold ? NK_STORE_STREAMING : NK_STORE_CACHED)
    }
    /// Where the channels-last kernels find the inputs: `NK_READ_AHEAD` beyond the caches (the size from which the
    /// outputs are streamed: the sums prefetch), `NK_READ_FROM_L3` where the tensor is larger than the threads' L2
    /// (``KernelDispatch/levelTwoCacheBytes`` each), else `NK_READ_CACHED`. Beyond L2 the forward's apply walks whole
    /// rows in address order rather than in strips of 64 channels (`cl_forward_walk_fits`: PERFORMANCE.md, session 47).
    var inputRead: Int32 {
        if elementCount >= KernelDispatch.streamingStoreThreshold { return Int32(NK_READ_AHEAD) }
        let bytes = elementCount * MemoryLayout<Float>.size
        return Int32(
            bytes > Parallelism.threadCount * KernelDispatch.levelTwoCacheBytes ? NK_READ_FROM_L3 : NK_READ_CACHED)
    }

    /// The same sets over the same memory in the form the kernels walk fastest. With one position per sample (inputs
    /// `(N, C)`, or 1 × 1 maps) both layouts are one `N × C` matrix: it is walked channels-last (vectorized across
    /// channels, where channels-first walks `N·C` rows of one float), and a sample block's samples become the
    /// positions of one sample, so that BN's per-(sample, channel) sums, one per element there, are per (block,
    /// channel). Set and coefficient numbers are unchanged. BN on (256, 1024, 1, 1) took 1.46 ms forward and 6.1 ms
    /// forward+backward channels-first, 0.22 and 2.2 channels-last; now 0.04 and 0.11 in both (PERFORMANCE.md,
    /// session 37). The fused workspace takes it itself; the staged layers (MABN, SyncBN, frozen BN) build their
    /// geometry in this form, so that their rules see its per-(block, channel) sums (session 38).
    var kernelForm: NormalizationGeometry {
        guard positions == 1 else { return self }
        return NormalizationGeometry(
            layout: .channelsLast, batch: sampleBlocks, channels: channels, positions: samplesPerSet,
            samplesPerSet: 1, channelsPerSet: channelsPerSet)
    }

    /// The same memory and sets seen channels-first, for one position per sample (`positions == 1`), where both
    /// layouts are one `N × C` matrix: a set is then `samplesPerSet` runs of `channelsPerSet` contiguous floats.
    var channelsFirstView: NormalizationGeometry {
        precondition(positions == 1, "only a matrix reads the same in both layouts")
        return NormalizationGeometry(
            layout: .channelsFirst, batch: batch, channels: channels, positions: 1, samplesPerSet: samplesPerSet,
            channelsPerSet: channelsPerSet)
    }

    @inline(__always) func set(n: Int, c: Int) -> Int {
        (n / samplesPerSet) * channelBlocks + c / channelsPerSet
    }
    @inline(__always) func coefficient(n: Int, c: Int) -> Int { (n / samplesPerSet) * channels + c }
}

/// Stateless kernels over raw buffers: outputs first, then inputs, then the geometry.
enum NormalizationKernels {
    /// Floats per statistics chunk (32 KB). Sets up to this size get their two-pass moments from the batched set
    /// kernel while they sit in cache; larger sets are read once from memory, in groups of this size after a first
    /// one of ``shiftEstimateFloats`` (``rangeMoments(x:set:elements:geometry:)``). With two passes per group, 4,096
    /// and 12,288 measured slower on GN (2,256,56,56) and (32,256,56,56) (`normkit bench`), and two passes over
    /// whole sets of up to 256 KB measured no faster.
    static let statisticsChunk = 8192

    /// Floats of a large set's first statistics group, whose two-pass mean shifts the one-pass sums of the groups
    /// after it (``rangeMoments(x:set:elements:geometry:)``): 8 KB, so its second pass reads L1.
    static let shiftEstimateFloats = 2048

    // MARK: Forward

    /// Doubles of kernel scratch that ``statistics(mean:variance:x:scratch:geometry:)`` and `normalize` need
    /// (channels-last per-(n, c) sums, then a split sample's or a cut reduction's partial sums; channels-first a split
    /// set's partial moments). Callers keep it between steps.
    static func doubleScratchCount(_ g: NormalizationGeometry) -> Int {
        g.layout == .channelsLast
            ? 2 * g.batch * g.channels
                + max(sampleSplitScratchCount(g), reductionPartsScratchCount(g, backward: false))
            : max(1, setSplitScratchCount(g))
    }

    /// Doubles of kernel scratch that `normalizeBackward` and the gradient sums need (a split sample's or split set's
    /// partial sums; at least 1).
    static func backwardDoubleScratchCount(_ g: NormalizationGeometry) -> Int {
        max(
            1,
            g.layout == .channelsLast
                ? max(sampleSplitScratchCount(g), reductionPartsScratchCount(g, backward: true))
                : setSplitScratchCount(g))
    }

    /// The work of a backward over `g` for the thread split: two passes, the sums pass a fused activation's.
    static func backwardWork(_ g: NormalizationGeometry, _ activation: ActivationBackward?) -> Int {
        g.elementCount + (activation?.activation ?? .identity).work(elements: g.elementCount)
    }

    /// Whether the channels-last native backward recomputes `dz = dy·act'(z)` in its apply stage from `x` and `dy`
    /// (the sums kernel's operations, so the same bits) instead of storing it over `dx` in the sums pass and reading
    /// it back: for inputs read from memory (``NormalizationGeometry/inputRead``), where those stores fetch every
    /// line of `dx` from memory before writing it, and the apply's stores of `dx` over the `dz` it reads cannot
    /// stream. NHWC forward+backward on (32, 256, 56, 56) and (32, 512, 28, 28) took 0.91–0.94x the time with GN +
    /// SiLU and 0.79–0.87x with BN, MABN or BRN + ReLU (PERFORMANCE.md, session 40). In L2 or L3 the stored `dz`
    /// stays cached, and SiLU's ~25 operations per vector would run twice. (Frozen BN, whose apply never reads `x`,
    /// keeps storing `dz`: `StatisticsWorkspace.backwardStaged(readsInput:)`.)
    static func recomputesDz(_ g: NormalizationGeometry, activationFused: Bool) -> Bool {
        activationFused && g.layout == .channelsLast && nativeChannelsLast && g.inputRead == Int32(NK_READ_AHEAD)
    }

    /// Per-set mean and biased variance (corrected two-pass, Double results). `scratch`: ``doubleScratchCount(_:)``.
    static func statistics(
        mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>,
        x: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Double>, geometry g: NormalizationGeometry
    ) {
        switch g.layout {
        case .channelsFirst:
            let parts = setParts(g)
            if parts > 1 {
                for s in 0..<g.setCount {
                    (mean[s], variance[s]) = splitSetMoments(x: x, set: s, parts: parts, partial: scratch, geometry: g)
                }
                return
            }
            g.forEachSetBatch(work: g.elementCount) { first, size in
                batchStatistics(mean: mean, variance: variance, x: x, sets: first..<(first + size), geometry: g)
            }
        case .channelsLast:
            statisticsChannelsLast(mean: mean, variance: variance, x: x, scratch: scratch, geometry: g)
        }
    }

    /// `y = act(scale[b,c]·(x − center[b,c]) + shift[b,c])` for every element (coefficients per sample block and
    /// channel; `center` nil: 0). The centring is kept out of the fold `a·x + b`, so the output stays accurate when
    /// |center| dwarfs the spread of `x`.
    static func apply(
        y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, center: UnsafePointer<Float>? = nil,
        scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, activation: FusedActivation = .identity,
        geometry g: NormalizationGeometry
    ) {
        let m = g.positions, c = g.channels
        switch g.layout {
        case .channelsFirst:
            if nativeKernels {
                return nativeApplyChannelsFirst(
                    y: y, x: x, center: center, scale: scale, shift: shift, activation: activation, geometry: g)
            }
            Parallelism.forEachRange(count: g.batch * c, work: activation.work(elements: g.elementCount)) { rows in
                for row in rows {
                    let k = g.coefficient(n: row / c, c: row % c)
                    if center == nil, activation == .identity {
                        rowAffine(y + row * m, x + row * m, m, scale: scale[k], shift: shift[k])
                    } else {
                        rowAffineCentered(
                            y + row * m, x + row * m, m, center: center?[k] ?? 0, scale: scale[k], shift: shift[k],
                            activation: activation)
                    }
                }
            }
        case .channelsLast:
            if nativeChannelsLast {
                return nativeApplyChannelsLast(
                    y: y, x: x, center: center, scale: scale, shift: shift, activation: activation, geometry: g)
            }
            Parallelism.forEachRange(count: g.batch * m, work: activation.work(elements: g.elementCount)) { rows in
                for row in rows {
                    let base = g.coefficient(n: row / m, c: 0)
                    let yr = y + row * c, xr = x + row * c, a = scale + base, b = shift + base
                    for ch in 0..<c { yr[ch] = activation.apply((xr[ch] - (center?[base + ch] ?? 0)) * a[ch] + b[ch]) }
                }
            }
        }
    }

    /// The training forward: per-set statistics, the rule's `gain` and `offset` per set, then
    /// `y = act(γ_c·(gain·(x−μ)·rstd + offset) + β_c)`, fused per set in channels-first order. `gamma`/`beta` are per
    /// channel (nil: 1 and 0). Writes mean, biased variance, rstd, gain and offset per set, and leaves the
    /// per-coefficient scale and shift in `scratchScale`/`scratchShift` and the float centres after the shifts (per
    /// set channels-first, per coefficient channels-last).
    static func normalize(
        y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Double>,
        variance: UnsafeMutablePointer<Double>, rstd: UnsafeMutablePointer<Double>,
        gain: UnsafeMutablePointer<Double>, offset: UnsafeMutablePointer<Double>, x: UnsafePointer<Float>,
        gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, epsilon: Float, rule: some NormalizationRule,
        scratchScale: UnsafeMutablePointer<Float>, scratchShift: UnsafeMutablePointer<Float>,
        scratchDouble: UnsafeMutablePointer<Double>, activation: FusedActivation = .identity,
        geometry g: NormalizationGeometry
    ) {
        let cps = g.channelsPerSet
        switch g.layout {
        case .channelsFirst:
            // Per-row coefficients go to scale/shift[b·C + c] and centres to center[s]: each set owns its entries,
            // so threads never share one, and a batch of consecutive sets finds its coefficients consecutive.
            let center = scratchShift + g.coefficientCount, store = g.outputStore, parts = setParts(g)
            if parts > 1 {
                return normalizeSplitSets(
                    y: y, mean: mean, variance: variance, rstd: rstd, gain: gain, offset: offset, x: x, gamma: gamma,
                    beta: beta, epsilon: epsilon, rule: rule, scale: scratchScale, shift: scratchShift, centers: center,
                    partial: scratchDouble, activation: activation, parts: parts, geometry: g)
            }
            let perBatch = g.forwardSetsPerBatch(activation: activation)
            g.forEachSetBatch(work: activation.work(elements: g.elementCount), setsPerBatch: perBatch) { first, size in
                batchStatistics(mean: mean, variance: variance, x: x, sets: first..<(first + size), geometry: g)
                let batch = g.batch(ofSets: first, count: size)
                let k0 = (first / g.channelBlocks) * g.channels + (first % g.channelBlocks) * cps
                if cps == 1, rule is Standardization, nativeKernels {
                    // BN's one-channel sets: the loop below for the batch's channels in one vectorized call (a
                    // square root and a division per set dominated it on many short sets: (2, 2048, 7, 7)).
                    let c0 = first % g.channelBlocks
                    nk_standardized_coefficients(
                        rstd + first, gain + first, offset + first, scratchScale + k0, scratchShift + k0,
                        center + first, mean + first, variance + first, size, epsilon, gamma.map { $0 + c0 },
                        beta.map { $0 + c0 })
                } else {
                    for s in first..<(first + size) {
                        center[s] = setCoefficients(
                            scale: scratchScale, shift: scratchShift, rstd: rstd, gain: gain, offset: offset, set: s,
                            mean: mean[s], variance: variance[s], gamma: gamma, beta: beta, epsilon: epsilon,
                            rule: rule, geometry: g)
                    }
                }
                setAffineCentered(
                    y + batch.offset, x + batch.offset, batch, center: center + first,
                    scale: scratchScale + k0, shift: scratchShift + k0, activation: activation, store: store)
            }
        case .channelsLast:
            let centers = scratchShift + g.coefficientCount
            if let width = tileWidth(g, backward: false) {
                return nativeNormalizeTiled(
                    y: y, mean: mean, variance: variance, rstd: rstd, gain: gain, offset: offset, x: x, gamma: gamma,
                    beta: beta, epsilon: epsilon, rule: rule, scale: scratchScale, shift: scratchShift,
                    centers: centers, sums: scratchDouble, activation: activation, width: width, geometry: g)
            }
            statisticsChannelsLast(mean: mean, variance: variance, x: x, scratch: scratchDouble, geometry: g)
            for s in 0..<g.setCount {
                let center = setCoefficients(
                    scale: scratchScale, shift: scratchShift, rstd: rstd, gain: gain, offset: offset, set: s,
                    mean: mean[s], variance: variance[s], gamma: gamma, beta: beta, epsilon: epsilon, rule: rule,
                    geometry: g)
                let k0 = g.coefficient(n: (s / g.channelBlocks) * g.samplesPerSet, c: (s % g.channelBlocks) * cps)
                (centers + k0).update(repeating: center, count: cps)
            }
            apply(
                y: y, x: x, center: centers, scale: scratchScale, shift: scratchShift, activation: activation,
                geometry: g)
        }
    }

    /// The coefficients stage of set `s`: `rstd = 1/sqrt(var + ε)`, the rule's `gain` and `offset`, and for each of
    /// its channels the `scale`, `shift` of `y = scale·(x − μ̃) + shift` (at `b·C + c`); returns `μ̃ = Float(μ)`.
    /// Centred rather than folded into `a·x + b'`, which loses all accuracy when |μ| ≫ σ (x = 1e4 + 0.01·randn).
    @inline(__always)
    static func setCoefficients(
        scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Double>,
        gain: UnsafeMutablePointer<Double>, offset: UnsafeMutablePointer<Double>, set s: Int, mean: Double,
        variance: Double, gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, epsilon: Float,
        rule: some NormalizationRule, geometry g: NormalizationGeometry
    ) -> Float {
        let r = 1 / (variance + Double(epsilon)).squareRoot(), c0 = (s % g.channelBlocks) * g.channelsPerSet
        let set = rule.setAffine(set: s, channel: c0, mean: mean, variance: variance, rstd: r)
        (rstd[s], gain[s], offset[s]) = (r, set.gain, set.offset)
        let row = (s / g.channelBlocks) * g.channels
        return channelCoefficients(
            scale: scale + row, shift: shift + row, set: s, factor: set.gain * r, offset: set.offset, mean: mean,
            gamma: gamma, beta: beta, geometry: g)
    }

    /// The channels' part of ``setCoefficients(scale:shift:rstd:gain:offset:set:mean:variance:gamma:beta:epsilon:rule:geometry:)``:
    /// for each channel `c` of set `s`, `scale[c]`, `shift[c]` of `y = scale·(x − μ̃) + shift` for a set normalized
    /// by `factor = gain·rstd` and `offset` (`scale`, `shift` point at the set's sample block's channel 0); returns
    /// `μ̃`. The matrix backward calls it again with the stored `gain·rstd` to recompute a fused activation's `z`
    /// with the forward's bits.
    @inline(__always)
    static func channelCoefficients(
        scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>, set s: Int, factor: Double,
        offset: Double, mean: Double, gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
        geometry g: NormalizationGeometry
    ) -> Float {
        let c0 = (s % g.channelBlocks) * g.channelsPerSet, centering = Centering(mean)
        if g.channelsPerSet >= 16, let gamma, let beta, offset == 0, nativeKernels {
            // Wide sets of an affine BN/GN layer: the loop below, vectorized (a call costs more than the loop for a
            // few channels, and BN's sets have one).
            nk_channel_coefficients(
                scale + c0, shift + c0, gamma + c0, beta + c0, g.channelsPerSet, factor, centering.residual)
            return centering.center
        }
        for c in c0..<(c0 + g.channelsPerSet) {
            (scale[c], shift[c]) = centering.coefficients(
                gamma: Double(gamma?[c] ?? 1), beta: Double(beta?[c] ?? 0), factor: factor, offset: offset)
        }
        return centering.center
    }

    /// Mean and biased variance of the consecutive sets `sets` (one sample block): sets that fit in a statistics
    /// chunk go through the batched set kernel (two passes while the set sits in L1), larger ones through
    /// ``setStatisticsChannelsFirst(x:set:geometry:)``.
    @inline(__always)
    static func batchStatistics(
        mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>,
        x: UnsafePointer<Float>, sets: Range<Int>, geometry g: NormalizationGeometry
    ) {
        guard g.elementsPerSet <= statisticsChunk else {
            for s in sets { (mean[s], variance[s]) = setStatisticsChannelsFirst(x: x, set: s, geometry: g) }
            return
        }
        let batch = g.batch(ofSets: sets.lowerBound, count: sets.count)
        setMoments(mean: mean + sets.lowerBound, m2: variance + sets.lowerBound, x + batch.offset, batch)
        let inverse = 1 / Double(g.elementsPerSet)
        for s in sets { variance[s] *= inverse }
    }

    /// Mean and biased variance of one set (``rangeMoments(x:set:elements:geometry:)`` over all of it).
    @inline(__always)
    static func setStatisticsChannelsFirst(
        x: UnsafePointer<Float>, set s: Int, geometry g: NormalizationGeometry
    )
        -> (mean: Double, variance: Double)
    {
        let (mean, m2) = rangeMoments(x: x, set: s, elements: 0..<g.elementsPerSet, geometry: g)
        return (mean, m2 / Double(g.elementsPerSet))
    }

    /// Mean and centred sum of squares of the elements `elements` of set `s`, numbered through the set's rows in
    /// order (one contiguous run of `channelsPerSet·M` floats per sample). The range is cut into groups from its
    /// start — several short rows form one group, a long row is split: a first group of ``shiftEstimateFloats``,
    /// which gets an exact two-pass mean while it sits in L1, then groups of ``statisticsChunk`` floats, each read
    /// once for `Σ(x−k)` and `Σ(x−k)²` shifted by `k`, the float mean of the groups before it. Groups are merged
    /// with Chan's parallel formula in Double: one pass from L2/L3/DRAM, float64-level accuracy, and few merges
    /// even when rows are short (BN on 7×7 maps).
    ///
    /// A group's rounding error is about `u·Σ(x−k)²` (`u` float's): its own centred sum plus its count times the
    /// squared distance of its mean from `k`. That distance is what the merge adds to the set's sum of squares, at
    /// least `1/5` of it while the groups before weigh at least a fifth of the merged count (the first group is a
    /// quarter of the next), so every group's error stays a few `u` of the set's centred sum of squares, whatever
    /// its groups' means. Shifting each group by its own two-pass mean read every group twice: on Zen 4, whose 32 KB
    /// L1 a group fills, the moments of GN's sets on (2, 256, 56, 56) took 1.9x one read of them, and the layer's
    /// forward 1.25x its time now (PERFORMANCE.md, session 42).
    @inline(__always)
    static func rangeMoments(
        x: UnsafePointer<Float>, set s: Int, elements: Range<Int>, geometry g: NormalizationGeometry
    )
        -> (mean: Double, m2: Double)
    {
        let m = g.positions
        let b = s / g.channelBlocks, c0 = (s % g.channelBlocks) * g.channelsPerSet
        let run = g.channelsPerSet * m, firstSample = b * g.samplesPerSet
        @inline(__always) func base(_ n: Int) -> UnsafePointer<Float> { x + (n * g.channels + c0) * m }
        /// Calls `body` on each contiguous piece of the elements `lower..<upper` (one per run they touch).
        @inline(__always) func forEachPiece(_ lower: Int, _ upper: Int, _ body: (UnsafePointer<Float>, Int) -> Void) {
            var i = lower
            while i < upper {
                let o = i % run, length = min(run - o, upper - i)
                body(base(firstSample + i / run) + o, length)
                i += length
            }
        }
        var count = 0.0, mean = 0.0, m2 = 0.0, lower = elements.lowerBound
        while lower < elements.upperBound {
            let first = lower == elements.lowerBound
            let upper = min(lower + (first ? shiftEstimateFloats : statisticsChunk), elements.upperBound)
            let k = Double(upper - lower), inverseK = 1 / k  // one division per group: divisions dominate short sets
            var shift = Float(mean)
            if first {
                var total = 0.0
                forEachPiece(lower, upper) { p, length in total += rowSum(p, length) }
                shift = Float(total * inverseK)
            }
            var d1 = 0.0, d2 = 0.0
            forEachPiece(lower, upper) { p, length in
                let (a, q) = rowCenteredSums(p, length, center: shift)
                d1 += a
                d2 += q
            }
            // Σ(x−k) is not 0: k is rounded to float, and past the first group it is the earlier groups' mean.
            let mu = Double(shift) + d1 * inverseK, q = max(0, d2 - d1 * d1 * inverseK)
            lower = upper
            if first {
                (count, mean, m2) = (k, mu, q)
                continue
            }
            (count, mean, m2) = mergedMoments(count: count, mean: mean, m2: m2, with: k, mu, q)
        }
        return (mean, max(0, m2))
    }

    /// Chan's parallel formula: the count, mean and centred sum of squares of two groups' union.
    @inline(__always)
    static func mergedMoments(
        count: Double, mean: Double, m2: Double, with k: Double, _ mu: Double, _ q: Double
    ) -> (count: Double, mean: Double, m2: Double) {
        let merged = count + k, delta = mu - mean, weight = k / merged
        return (merged, mean + delta * weight, m2 + q + delta * delta * count * weight)
    }
}

extension NormalizationKernels {
    /// `apply`'s channels-first path on the native kernels (the evaluation forward's `y`, the staged rules' training
    /// `y`, frozen BN's `dx`): the rows of each sample's channels go to the set kernel as one-row sets, one call per
    /// sample run of a thread's rows, which streams their aligned whole vectors from
    /// ``KernelDispatch/streamingStoreThreshold`` elements (the row kernels store through the cache). The same values
    /// as the row kernels' (`row_apply` on each row). Below that size it called the row kernel once per row before
    /// session 37, about 5 ns a row: BN's evaluation forward on (2, 4096, 1, 1) took 0.042 ms, 0.025 in set-kernel
    /// calls, one thread (PERFORMANCE.md, session 37; such shapes now take `kernelForm`'s channels-last walk).
    private static func nativeApplyChannelsFirst(
        y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, center: UnsafePointer<Float>?,
        scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, activation: FusedActivation,
        geometry g: NormalizationGeometry
    ) {
        let m = g.positions, c = g.channels
        Parallelism.forEachRange(count: g.batch * c, work: activation.work(elements: g.elementCount)) { rows in
            forEachSampleRun(rows, rowsPerSample: c) { n, row, count in
                let k = g.coefficient(n: n, c: row - n * c)
                nk_sets_affine_centered(
                    y + row * m, x + row * m, count, m, 1, 1, m, m, center.map { $0 + k }, scale + k, shift + k,
                    activation.kernelCode, g.outputStore)
            }
        }
    }
}
