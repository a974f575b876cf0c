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
        let c = g.channels, m = g.positions, count = Double(g.elementsPerSet)
        let s1 = scratch, s2 = scratch + g.batch * c
        @inline(__always) func shift(_ n: Int) -> UnsafePointer<Float> {
            x + (n / g.samplesPerSet) * g.samplesPerSet * m * c
        }
        Parallelism.forEachRange(count: g.batch, work: g.elementCount) { samples in
            for n in samples {
                (s1 + n * c).update(repeating: 0, count: c)
                (s2 + n * c).update(repeating: 0, count: c)
                centeredSums(s1 + n * c, s2 + n * c, x + n * m * c, rows: m, channels: c, shift: shift(n))
            }
        }
        let cps = g.channelsPerSet, sps = g.samplesPerSet
        for s in 0..<g.setCount {
            let n0 = (s / g.channelBlocks) * sps, c0 = (s % g.channelBlocks) * cps, k = shift(n0)
            (mean[s], variance[s]) = shiftedMoments(positions: m, count: count, entries: sps * cps) { i in
                let ch = c0 + i % cps, e = (n0 + i / cps) * c + ch
                return (Double(k[ch]), s1[e], s2[e])
            }
        }
    }

    /// Per channel, `s1 += Σ(x − k)` and `s2 += Σ(x − k)²` over `rows` rows of `channels` floats: the native kernel,
    /// or the portable loop in Double.
    @inline(__always)
    static func centeredSums(
        _ s1: UnsafeMutablePointer<Double>, _ s2: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Float>, rows: Int,
        channels c: Int, shift k: UnsafePointer<Float>
    ) {
        if nativeChannelsLast { return nk_cl_centered_sums(s1, s2, x, rows, c, k) }
        for p in 0..<rows {
            for ch in 0..<c {
                let d = Double(x[p * c + ch]) - Double(k[ch])
                (s1[ch], s2[ch]) = (s1[ch] + d, s2[ch] + d * d)
            }
        }
    }

    /// A set's mean and biased variance from its entries' shifted sums: entry `i` (one (n, c) of the set, M values)
    /// has shift `k`, `Σ(x−k)` and `Σ(x−k)²`; `μ = Σ(k·M + Σ(x−k)) / count` and
    /// `Σ(x−μ)² = Σ [Σ(x−k)² − 2(μ−k)·Σ(x−k) + M·(μ−k)²]`, in double.
    @inline(__always)
    static func shiftedMoments(
        positions m: Int, count: Double, entries: Int, _ entry: (Int) -> (shift: Double, sum: Double, squares: Double)
    )
        -> (mean: Double, variance: Double)
    {
        let mm = Double(m)
        var total = 0.0
        for i in 0..<entries {
            let (k, s1, _) = entry(i)
            total += k * mm + s1
        }
        let mu = total / count
        var m2 = 0.0
        for i in 0..<entries {
            let (k, s1, s2) = entry(i)
            let e = mu - k
            m2 += s2 - 2 * e * s1 + mm * e * e
        }
        return (mu, max(0, m2 / count))
    }

    /// Calls `body(n, firstRow, rows)` for the runs of rows (positions) of `rows` that lie in one sample each.
    @inline(__always)
    private static func forEachSampleRun(_ rows: Range<Int>, positions m: Int, _ body: (Int, Int, Int) -> Void) {
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
        let c = g.channels, m = g.positions
        Parallelism.forEachRange(count: g.batch * m, work: g.elementCount) { rows in
            forEachSampleRun(rows, positions: m) { n, first, count in
                let k0 = g.coefficient(n: n, c: 0)
                nk_cl_affine_centered(
                    y + first * c, x + first * c, count, c, center.map { $0 + k0 }, scale + k0,
                    shift + k0, activation.kernelCode)
            }
        }
    }

    /// Per-(n, c) `Σ dy` and `Σ dy·(x − center[set])` (moved from the float `k = Float(center)` to the exact centre);
    /// with a fused activation, of `dz = dy·act'(z)`, also written to `activation.dz`.
    static func nativeGradientSumsChannelsLast(
        sumDy: UnsafeMutablePointer<Double>, sumDyCentered: UnsafeMutablePointer<Double>, dy: UnsafePointer<Float>,
        x: UnsafePointer<Float>, center: UnsafePointer<Double>,
        activation: ActivationBackward?, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions
        Parallelism.forEachRange(count: g.batch, work: 2 * g.elementCount) { samples in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: c) { k in
                for n in samples {
                    for ch in 0..<c { k[ch] = Float(center[g.set(n: n, c: ch)]) }
                    let a1 = sumDy + n * c, a2 = sumDyCentered + n * c
                    a1.update(repeating: 0, count: c)
                    a2.update(repeating: 0, count: c)
                    withKernelActivation(activation, coefficient: g.coefficient(n: n, c: 0), element: n * m * c) {
                        nk_cl_gradient_sums(a1, a2, dy + n * m * c, x + n * m * c, m, c, k.baseAddress!, $0)
                    }
                    for ch in 0..<c {
                        a2[ch] = Centering(center[g.set(n: n, c: ch)]).exactSum(centered: a2[ch], sumDy: a1[ch])
                    }
                }
            }
        }
    }

    /// `dx = scale[b,c]·dy + slope[set]·(x − center[set]) + offset[set]`, rows of the batch split over threads.
    static func nativeGradientApplyChannelsLast(
        dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
        x: UnsafePointer<Float>, center: UnsafePointer<Double>,
        scale: UnsafePointer<Float>, slope: UnsafePointer<Float>,
        offset: UnsafePointer<Float>, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions
        Parallelism.forEachRange(count: g.batch * m, work: 2 * g.elementCount) { rows in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 3 * c) { rowValues in
                let k = rowValues.baseAddress!, q = k + c, r = q + c
                forEachSampleRun(rows, positions: m) { n, first, count in
                    for ch in 0..<c {
                        let s = g.set(n: n, c: ch)
                        let centering = Centering(center[s])
                        k[ch] = centering.center
                        q[ch] = slope[s]
                        r[ch] = centering.offset(Double(offset[s]), slope: Double(slope[s]))
                    }
                    let o = first * c
                    nk_cl_gradient_apply(dx + o, dy + o, x + o, count, c, scale + g.coefficient(n: n, c: 0), q, r, k)
                }
            }
        }
    }
}

// Sets inside one sample (GN, LN, IN: samplesPerSet = 1): the whole pipeline per sample, so a sample small enough
// to stay in L2 is read from memory once per pass direction (statistics, coefficients, apply while it is cached).
extension NormalizationKernels {
    /// Samples up to this many floats (4 MB: L2, or the L3 of this project's machines) take the per-sample fused path.
    static let fusedSampleFloats = 1 << 20

    /// Whether ``nativeNormalizePerSample(y:mean:variance:rstd:x:gamma:beta:epsilon:scale:shift:centers:sums:geometry:)``
    /// and ``nativeNormalizeBackwardPerSample(dx:sumDy:sumDyCentered:dy:x:mean:rstd:gammaEffective:geometry:)``
    /// apply to `g`.
    static func fusesPerSample(_ g: NormalizationGeometry) -> Bool {
        nativeChannelsLast && g.samplesPerSet == 1 && g.channels * g.positions <= fusedSampleFloats
    }

    /// The training forward per sample: one-pass shifted statistics of its sets, their coefficients, then
    /// `y = act(a·(x − μ̃) + b)` while the sample is in cache. `centers`/`scale`/`shift` get per-(n, c) entries.
    static func nativeNormalizePerSample(
        y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Double>,
        variance: UnsafeMutablePointer<Double>, rstd: UnsafeMutablePointer<Double>,
        gain: UnsafeMutablePointer<Double>, offset: UnsafeMutablePointer<Double>,
        x: UnsafePointer<Float>, gamma: UnsafePointer<Float>?,
        beta: UnsafePointer<Float>?, epsilon: Float, rule: some NormalizationRule,
        scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>,
        centers: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Double>,
        activation: FusedActivation, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions, cps = g.channelsPerSet, blocks = g.channelBlocks
        let count = Double(g.elementsPerSet)
        Parallelism.forEachRange(count: g.batch, work: g.elementCount) { samples in
            for n in samples {
                let xs = x + n * m * c, a1 = sums + n * c, a2 = sums + (g.batch + n) * c
                a1.update(repeating: 0, count: c)
                a2.update(repeating: 0, count: c)
                nk_cl_centered_sums(a1, a2, xs, m, c, xs)  // shifted by the sample's first row
                for j in 0..<blocks {
                    let s = n * blocks + j, c0 = j * cps
                    let (mu, v) = shiftedMoments(positions: m, count: count, entries: cps) { i in
                        (Double(xs[c0 + i]), a1[c0 + i], a2[c0 + i])
                    }
                    (mean[s], variance[s]) = (mu, v)
                    let center = setCoefficients(
                        scale: scale, shift: shift, rstd: rstd, gain: gain, offset: offset, set: s, mean: mu,
                        variance: v, gamma: gamma, beta: beta, epsilon: epsilon, rule: rule, geometry: g)
                    (centers + n * c + c0).update(repeating: center, count: cps)
                }
                nk_cl_affine_centered(
                    y + n * m * c, xs, m, c, centers + n * c, scale + n * c, shift + n * c, activation.kernelCode)
            }
        }
    }

    /// The training backward per sample: gradient sums of its sets, their slopes and offsets, then `dx` while the
    /// sample's `x` and `dy` are in cache. Writes the per-(n, c) `Σdy`, `Σdy·(x−μ)` as the unfused path does. With
    /// a fused activation the sums pass turns `dy` into `dz` (written to `activation.dz`, normally `dx`) and the
    /// apply reads it back while it is cached.
    static func nativeNormalizeBackwardPerSample(
        dx: UnsafeMutablePointer<Float>, sumDy: UnsafeMutablePointer<Double>,
        sumDyCentered: UnsafeMutablePointer<Double>, dy: UnsafePointer<Float>,
        x: UnsafePointer<Float>, mean: UnsafePointer<Double>,
        rstd: UnsafePointer<Double>, gammaEffective: UnsafePointer<Double>,
        activation: ActivationBackward?, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions, cps = g.channelsPerSet, blocks = g.channelBlocks
        Parallelism.forEachRange(count: g.batch, work: 2 * g.elementCount) { samples in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 4 * c) { rows in
                let k = rows.baseAddress!, p = k + c, q = p + c, r = q + c
                for n in samples {
                    let o = n * m * c, a1 = sumDy + n * c, a2 = sumDyCentered + n * c
                    for ch in 0..<c { k[ch] = Centering(mean[n * blocks + ch / cps]).center }
                    a1.update(repeating: 0, count: c)
                    a2.update(repeating: 0, count: c)
                    withKernelActivation(activation, coefficient: n * c, element: o) {
                        nk_cl_gradient_sums(a1, a2, dy + o, x + o, m, c, k, $0)
                    }
                    for j in 0..<blocks {
                        let s = n * blocks + j, c0 = j * cps
                        let (slope, offset) = setGradientCoefficients(
                            sumDy: sumDy, sumDyCentered: sumDyCentered, mean: mean, rstd: rstd,
                            gammaEffective: gammaEffective, set: s, centeredOnFloat: true, geometry: g)
                        for ch in c0..<(c0 + cps) {
                            p[ch] = Float(rstd[s] * gammaEffective[n * c + ch])
                            (q[ch], r[ch]) = (Float(slope), Centering(mean[s]).offset(offset, slope: slope))
                        }
                    }
                    let upstream = activation.map { UnsafePointer($0.dz) } ?? dy
                    nk_cl_gradient_apply(dx + o, upstream + o, x + o, m, c, p, q, r, k)
                }
            }
        }
    }
}
