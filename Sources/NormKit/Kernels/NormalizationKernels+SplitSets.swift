// Channels-first sets of 1 MB and more (LN's whole samples, GN with few groups on large maps, BN's channels over a
// large batch, IN's large maps) go one at a time to all the threads. A set is cut into parts fixed by its shape: of
// whole rows, or, for a set of one row (IN; BN at batch 1), of whole vectors of that row. Each thread takes one
// contiguous run of parts for the moments, the parts' moments are merged in part order, the set gets its
// coefficients, and each thread applies the same elements, which are still in its own L2. The backward does the same
// with `x` and `dy` (per-row sums need no merge where a row lies in one part; a one-row set's parts add theirs in part
// order). Without it a set went to one thread: a geometry with fewer sets than threads (LN at batch 1, IN on three
// channels) ran on fewer cores, and a set larger than L2 was read a second time from L3 (the channels-last
// counterpart is `blockParts` in ChannelsLastKernels.swift).

extension NormalizationKernels {
    /// The parts each channels-first set of `g` is cut into: 1 (not split) below ``splitSampleFloats``, else one per
    /// row up to ``maximumSampleParts``, or for a set of one row (one channel of one sample) ``maximumSampleParts``
    /// pieces of that row (``elements(ofPart:_:geometry:)``).
    static func setParts(_ g: NormalizationGeometry) -> Int {
        guard g.layout == .channelsFirst, g.elementsPerSet >= splitSampleFloats else { return 1 }
        let rows = g.samplesPerSet * g.channelsPerSet
        return min(maximumSampleParts, rows > 1 ? rows : g.positions / partVector)
    }

    /// Floats per vector boundary of a one-row set's parts (64 bytes: each part starts a cache line after the row's
    /// start).
    static let partVector = 16

    /// Doubles of scratch for a split set's partial moments (two per part; none when sets are not split).
    static func setSplitScratchCount(_ g: NormalizationGeometry) -> Int {
        let parts = setParts(g)
        return parts > 1 ? 2 * parts : 0
    }

    /// The elements of part `t` of a split set of `g`, numbered through the set's rows in order: whole rows, or for
    /// a one-row set a piece of it whose ends (but the row's last) are multiples of ``partVector``.
    @inline(__always)
    static func elements(ofPart t: Int, _ parts: Int, geometry g: NormalizationGeometry) -> Range<Int> {
        let rowCount = g.samplesPerSet * g.channelsPerSet, m = g.positions
        if rowCount > 1 {
            let rows = rows(ofParts: t..<(t + 1), parts, positions: rowCount)
            return (rows.lowerBound * m)..<(rows.upperBound * m)
        }
        @inline(__always) func edge(_ t: Int) -> Int { t == parts ? m : m * t / parts / partVector * partVector }
        return edge(t)..<edge(t + 1)
    }

    /// Calls `body(element, rows, length, coefficient)` on each contiguous run of part `t` of set `s`: the offset of
    /// its first element in the tensor, its rows and their length (whole rows of `M` floats, one per sample they
    /// touch; or one piece of a one-row set's row), the coefficient index of its first row (rows of a run have
    /// consecutive coefficients).
    @inline(__always)
    static func forEachRun(
        ofPart t: Int, _ parts: Int, set s: Int, geometry g: NormalizationGeometry,
        _ body: (Int, Int, Int, Int) -> Void
    ) {
        let m = g.positions, part = elements(ofPart: t, parts, geometry: g)
        if g.samplesPerSet * g.channelsPerSet > 1 {
            forEachRun(ofRows: (part.lowerBound / m)..<(part.upperBound / m), set: s, geometry: g) { o, rows, k in
                body(o, rows, m, k)
            }
        } else {
            forEachRun(ofRows: 0..<1, set: s, geometry: g) { o, _, k in body(o + part.lowerBound, 1, part.count, k) }
        }
    }

    /// Calls `body(element, rows, coefficient)` on each contiguous run of the rows `rows` of set `s` (one per sample
    /// they touch): the offset of its first element in the tensor, how many rows, the coefficient index of its first
    /// row (rows of a run have consecutive coefficients; the per-(n, c) sums' index is `element / M`).
    @inline(__always)
    static func forEachRun(
        ofRows rows: Range<Int>, set s: Int, geometry g: NormalizationGeometry, _ body: (Int, Int, Int) -> Void
    ) {
        let cps = g.channelsPerSet, b = s / g.channelBlocks, c0 = (s % g.channelBlocks) * cps
        var r = rows.lowerBound
        while r < rows.upperBound {
            let n = b * g.samplesPerSet + r / cps, c = c0 + r % cps, count = min(cps - r % cps, rows.upperBound - r)
            body((n * g.channels + c) * g.positions, count, b * g.channels + c)
            r += count
        }
    }

    /// A run of `rows` consecutive rows of `m` floats as a one-set batch for the set kernels.
    @inline(__always)
    static func runBatch(rows: Int, positions m: Int) -> SetBatch {
        SetBatch(offset: 0, sets: 1, setStride: 0, pieces: 1, rows: rows, m: m, pieceStride: 0)
    }

    /// Mean and biased variance of set `s` split into `parts` (``statistics(mean:variance:x:scratch:geometry:)``):
    /// each thread a contiguous share of the parts (``forEachShare(of:_:)``), then the parts merged in order.
    static func splitSetMoments(
        x: UnsafePointer<Float>, set s: Int, parts: Int, partial: UnsafeMutablePointer<Double>,
        geometry g: NormalizationGeometry
    ) -> (mean: Double, variance: Double) {
        forEachShare(of: parts) { share in
            for t in share { partMoments(partial, x: x, set: s, part: t, parts: parts, geometry: g) }
        }
        return mergedPartMoments(partial, parts: parts, geometry: g)
    }

    /// Part `t`'s mean and centred sum of squares of set `s`, to `partial[2t]` and `partial[2t + 1]`.
    @inline(__always)
    static func partMoments(
        _ partial: UnsafeMutablePointer<Double>, x: UnsafePointer<Float>, set s: Int, part t: Int, parts: Int,
        geometry g: NormalizationGeometry
    ) {
        (partial[2 * t], partial[2 * t + 1]) = rangeMoments(
            x: x, set: s, elements: elements(ofPart: t, parts, geometry: g), geometry: g)
    }

    /// The set's mean and biased variance from its parts' moments, merged in part order (so the result does not
    /// depend on the thread count).
    static func mergedPartMoments(
        _ partial: UnsafePointer<Double>, parts: Int, geometry g: NormalizationGeometry
    ) -> (mean: Double, variance: Double) {
        var (count, mean, m2) = (Double(elements(ofPart: 0, parts, geometry: g).count), partial[0], partial[1])
        for t in 1..<parts {
            let k = Double(elements(ofPart: t, parts, geometry: g).count)
            (count, mean, m2) = mergedMoments(
                count: count, mean: mean, m2: m2, with: k, partial[2 * t], partial[2 * t + 1])
        }
        return (mean, max(0, m2) / count)
    }

    /// The training forward of `normalize` for split sets (``setParts(_:)`` > 1), one set after the other: its
    /// moments over the threads, its coefficients (`scale`/`shift` per coefficient, `centers` per set), then each
    /// thread applies the rows it read, walking its parts last to first (what it read last is the likeliest to be
    /// still in L2).
    static func normalizeSplitSets(
        y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>,
        rstd: UnsafeMutablePointer<Double>, gain: UnsafeMutablePointer<Double>, offset: UnsafeMutablePointer<Double>,
        x: UnsafePointer<Float>, gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, epsilon: Float,
        rule: some NormalizationRule, scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>,
        centers: UnsafeMutablePointer<Float>, partial: UnsafeMutablePointer<Double>, activation: FusedActivation,
        parts: Int, geometry g: NormalizationGeometry
    ) {
        let store = g.outputStore
        for s in 0..<g.setCount {
            splitPasses(parts: parts) { t in
                partMoments(partial, x: x, set: s, part: t, parts: parts, geometry: g)
            } between: {
                (mean[s], variance[s]) = mergedPartMoments(partial, parts: parts, geometry: g)
                centers[s] = setCoefficients(
                    scale: scale, shift: shift, rstd: rstd, gain: gain, offset: offset, set: s, mean: mean[s],
                    variance: variance[s], gamma: gamma, beta: beta, epsilon: epsilon, rule: rule, geometry: g)
            } apply: { t in
                forEachRun(ofPart: t, parts, set: s, geometry: g) { o, rows, length, k in
                    setAffineCentered(
                        y + o, x + o, runBatch(rows: rows, positions: length), center: centers + s, scale: scale + k,
                        shift: shift + k, activation: activation, store: store)
                }
            }
        }
    }

    /// The training backward of `normalizeBackward` for split sets, one set after the other: each thread's rows'
    /// gradient sums (of `dz` with a fused activation, written to `activation.dz`; a one-row set's parts' sums to
    /// `partial`, two doubles per part, then added in part order), the set's slope and offset, then `dx` over the
    /// same elements, last part first. `p` (per coefficient), `q`, `r` and `center` (per set) as in the set-batch
    /// path.
    static func normalizeBackwardSplitSets(
        dx: UnsafeMutablePointer<Float>, sumDy: UnsafeMutablePointer<Double>,
        sumDyCentered: UnsafeMutablePointer<Double>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>, gammaEffective: UnsafePointer<Double>,
        p: UnsafeMutablePointer<Float>, q: UnsafeMutablePointer<Float>, r: UnsafeMutablePointer<Float>,
        center: UnsafeMutablePointer<Float>, partial: UnsafeMutablePointer<Double>, activation: ActivationBackward?,
        parts: Int, geometry g: NormalizationGeometry
    ) {
        let m = g.positions, c = g.channels, cps = g.channelsPerSet, store = g.outputStore
        let upstream = activation.map { UnsafePointer($0.dz) } ?? dy, oneRow = g.samplesPerSet * cps == 1
        for s in 0..<g.setCount {
            center[s] = Centering(mean[s]).center
            splitPasses(parts: parts) { t in
                forEachRun(ofPart: t, parts, set: s, geometry: g) { o, rows, length, k in
                    let s1 = oneRow ? partial + 2 * t : sumDy + o / m, s2 = oneRow ? s1 + 1 : sumDyCentered + o / m
                    setGradientSums(
                        s1, s2, outStride: c, dy + o, x + o, runBatch(rows: rows, positions: length),
                        center: center + s, activation: activation?.moved(coefficient: k, element: o))
                }
            } between: {
                if oneRow {
                    // The row's sums: its parts' added in part order (the same bits on any thread count).
                    forEachRun(ofRows: 0..<1, set: s, geometry: g) { o, _, _ in
                        (sumDy[o / m], sumDyCentered[o / m]) = (0, 0)
                        for t in 0..<parts {
                            sumDy[o / m] += partial[2 * t]
                            sumDyCentered[o / m] += partial[2 * t + 1]
                        }
                    }
                }
                let (slope, offset) = setGradientCoefficients(
                    sumDy: sumDy, sumDyCentered: sumDyCentered, mean: mean, rstd: rstd,
                    gammaEffective: gammaEffective, set: s, centeredOnFloat: true, geometry: g)
                let k0 = (s / g.channelBlocks) * c + (s % g.channelBlocks) * cps
                for k in k0..<(k0 + cps) { p[k] = Float(rstd[s] * gammaEffective[k]) }
                (q[s], r[s]) = (Float(slope), Centering(mean[s]).offset(offset, slope: slope))
            } apply: { t in
                forEachRun(ofPart: t, parts, set: s, geometry: g) { o, rows, length, k in
                    setGradientApply(
                        dx + o, upstream + o, x + o, runBatch(rows: rows, positions: length), p: p + k, q: q + s,
                        r: r + s, center: center + s, store: store)
                }
            }
        }
    }
}
