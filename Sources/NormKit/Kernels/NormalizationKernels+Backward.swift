import CNormKitKernels

// The backward stages of the normalization pipeline: per-(n, c) gradient sums, the gradient apply
// `dx = p·dz + q·(x − k) + o`, and the fused set-batch backward of BN-form layers (NormalizationKernels.swift has
// the geometry and the forward stages).

extension NormalizationKernels {
    /// Per-(n, c) `Σ dy` and `Σ dy·(x − center[set])` (Double); with a fused activation, of `dz = dy·act'(z)`,
    /// which is also written to `activation.dz` (laid out like `dy`) for the apply stage, unless `storingDz` is false
    /// (channels-last native only: ``recomputesDz(_:activationFused:)``). `partial`: channels-last,
    /// ``reductionPartsScratchCount(_:backward:)`` doubles (`backward: true`).
    static func gradientSums(
        sumDy: UnsafeMutablePointer<Double>, sumDyCentered: UnsafeMutablePointer<Double>,
        dy: UnsafePointer<Float>, x: UnsafePointer<Float>, center: UnsafePointer<Double>,
        partial: UnsafeMutablePointer<Double>, activation: ActivationBackward? = nil, storingDz: Bool = true,
        geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions
        switch g.layout {
        case .channelsFirst:
            Parallelism.forEachRange(count: g.batch * c, work: backwardWork(g, activation)) { rows in
                for row in rows {
                    let centering = Centering(center[g.set(n: row / c, c: row % c)])
                    let (a1, a2) = rowGradientSums(
                        dy + row * m, x + row * m, m, center: centering.center, activation: activation,
                        coefficient: g.coefficient(n: row / c, c: row % c), element: row * m)
                    sumDy[row] = a1
                    sumDyCentered[row] = centering.exactSum(centered: a2, sumDy: a1)
                }
            }
        case .channelsLast:
            if nativeChannelsLast {
                return nativeGradientSumsChannelsLast(
                    sumDy: sumDy, sumDyCentered: sumDyCentered, dy: dy, x: x, center: center, partial: partial,
                    activation: activation, storingDz: storingDz, geometry: g)
            }
            Parallelism.forEachRange(count: g.batch, work: backwardWork(g, activation)) { samples in
                for n in samples {
                    let a1 = sumDy + n * c, a2 = sumDyCentered + n * c
                    a1.initialize(repeating: 0, count: c)
                    a2.initialize(repeating: 0, count: c)
                    for p in 0..<m {
                        let o = (n * m + p) * c
                        if let activation {
                            activation.portableChannels(
                                dy: dy + o, x: x + o, count: c, coefficient: g.coefficient(n: n, c: 0), element: o)
                        }
                        let upstream = activation.map { UnsafePointer($0.dz) } ?? dy
                        for ch in 0..<c {
                            let gy = Double(upstream[o + ch])
                            a1[ch] += gy
                            a2[ch] += gy * (Double(x[o + ch]) - center[g.set(n: n, c: ch)])
                        }
                    }
                }
            }
        }
    }

    /// `dx = scale[b,c]·dy + slope[set]·(x − center[set]) + offset[set]`; with `recomputing` (channels-last native,
    /// ``recomputesDz(_:activationFused:)``), of `dz = dy·act'(z)` recomputed from `x` in place of `dy`.
    static func gradientApply(
        dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        center: UnsafePointer<Double>, scale: UnsafePointer<Float>,
        slope: UnsafePointer<Float>, offset: UnsafePointer<Float>, recomputing activation: ActivationBackward? = nil,
        geometry g: NormalizationGeometry
    ) {
        let c = g.channels, m = g.positions
        assert(activation == nil || recomputesDz(g, activationFused: true))
        switch g.layout {
        case .channelsFirst:
            Parallelism.forEachRange(count: g.batch * c, work: 2 * g.elementCount) { rows in
                for row in rows {
                    let n = row / c, ch = row % c, s = g.set(n: n, c: ch)
                    let centering = Centering(center[s])
                    rowGradientApply(
                        dx + row * m, dy + row * m, x + row * m, m, p: scale[g.coefficient(n: n, c: ch)], q: slope[s],
                        r: centering.offset(Double(offset[s]), slope: Double(slope[s])), center: centering.center)
                }
            }
        case .channelsLast:
            if nativeChannelsLast {
                return nativeGradientApplyChannelsLast(
                    dx: dx, dy: dy, x: x, scale: scale, activation: activation, geometry: g
                ) { s in
                    let centering = Centering(center[s])
                    return (
                        centering.center, slope[s], centering.offset(Double(offset[s]), slope: Double(slope[s]))
                    )
                }
            }
            Parallelism.forEachRange(count: g.batch * m, work: 2 * g.elementCount) { rows in
                for row in rows {
                    let n = row / m, o = row * c, base = g.coefficient(n: n, c: 0)
                    for ch in 0..<c {
                        let s = g.set(n: n, c: ch)
                        dx[o + ch] =
                            scale[base + ch] * dy[o + ch]
                            + slope[s] * Float(Double(x[o + ch]) - center[s]) + offset[s]
                    }
                }
            }
        }
    }

    /// The backward of `x̂ = (x−μ)·rstd` with upstream `g = gammaEffective[b,c]·dy`:
    /// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` per set. Also returns the per-(n, c) sums `Σdy`, `Σdy·(x−μ)`
    /// from which the layer forms `dγ` and `dβ`. Fused per set in channels-first order.
    static func normalizeBackward(
        dx: UnsafeMutablePointer<Float>, sumDy: UnsafeMutablePointer<Double>,
        sumDyCentered: UnsafeMutablePointer<Double>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>,
        gammaEffective: UnsafePointer<Double>, scratch: UnsafeMutablePointer<Float>,
        scratchDouble: UnsafeMutablePointer<Double>, activation: ActivationBackward? = nil,
        geometry g: NormalizationGeometry
    ) {
        let c = g.channels
        // With a fused activation the sums stage writes dz = dy·act'(z) into dx and the apply stage reads it there.
        let upstream = activation.map { UnsafePointer($0.dz) } ?? dy
        switch g.layout {
        case .channelsFirst:
            // scratch: the per-row factor rstd·γ_c at [b·C + c], then per set the slope q, offset r and float
            // centre μ̃ (each set owns its entries; a batch of consecutive sets finds them consecutive).
            let p = scratch, q = scratch + g.coefficientCount, r = q + g.setCount, center = r + g.setCount
            let cps = g.channelsPerSet, store = g.outputStore, parts = setParts(g)
            if parts > 1 {
                return normalizeBackwardSplitSets(
                    dx: dx, sumDy: sumDy, sumDyCentered: sumDyCentered, dy: dy, x: x, mean: mean, rstd: rstd,
                    gammaEffective: gammaEffective, p: p, q: q, r: r, center: center, partial: scratchDouble,
                    activation: activation, parts: parts, geometry: g)
            }
            let perBatch = g.backwardSetsPerBatch(activation: activation?.activation)
            g.forEachSetBatch(work: backwardWork(g, activation), setsPerBatch: perBatch) { first, size in
                let b = first / g.channelBlocks, k0 = b * c + (first % g.channelBlocks) * cps
                let batch = g.batch(ofSets: first, count: size)
                for s in first..<(first + size) { center[s] = Centering(mean[s]).center }
                setGradientSums(
                    sumDy + b * g.samplesPerSet * c + (first % g.channelBlocks) * cps,
                    sumDyCentered + b * g.samplesPerSet * c + (first % g.channelBlocks) * cps,
                    outStride: c, dy + batch.offset, x + batch.offset, batch, center: center + first,
                    activation: activation?.moved(coefficient: k0, element: batch.offset))
                if cps == 1, nativeKernels {
                    // BN's one-channel sets: the loop below for the batch's channels in one vectorized call.
                    let e0 = b * g.samplesPerSet * c + (first % g.channelBlocks)
                    nk_gradient_coefficients(
                        p + k0, q + first, r + first, sumDyCentered + e0, sumDy + e0, mean + first, rstd + first,
                        gammaEffective + k0, g.samplesPerSet, c, size, Double(g.elementsPerSet))
                } else {
                    for s in first..<(first + size) {
                        // Rows were centred on the float μ̃ = center[s] (the forward's Centering(μ).center).
                        let (slope, offset) = setGradientCoefficients(
                            sumDy: sumDy, sumDyCentered: sumDyCentered, mean: mean, rstd: rstd,
                            gammaEffective: gammaEffective, set: s, centeredOnFloat: true, geometry: g)
                        let c0 = (s % g.channelBlocks) * cps
                        let setRstd = rstd[s], row = p + b * c + c0, ge = gammaEffective + b * c + c0
                        for j in 0..<cps { row[j] = Float(setRstd * ge[j]) }
                        (q[s], r[s]) = (Float(slope), Centering(mean[s]).offset(offset, slope: slope))
                    }
                }
                setGradientApply(
                    dx + batch.offset, upstream + batch.offset, x + batch.offset, batch, p: p + k0,
                    q: q + first, r: r + first, center: center + first, store: store)
            }
        case .channelsLast:
            if let width = tileWidth(g, backward: true) {
                return nativeNormalizeBackwardTiled(
                    dx: dx, sumDy: sumDy, sumDyCentered: sumDyCentered, dy: dy, x: x, mean: mean, rstd: rstd,
                    gammaEffective: gammaEffective, scratch: scratch, partial: scratchDouble, activation: activation,
                    width: width, geometry: g)
            }
            let recompute = recomputesDz(g, activationFused: activation != nil)
            gradientSums(
                sumDy: sumDy, sumDyCentered: sumDyCentered, dy: dy, x: x, center: mean, partial: scratchDouble,
                activation: activation, storingDz: !recompute, geometry: g)
            // scratch holds: scale (coefficientCount), slope (sets), offset (sets; native: at the float centre).
            let scale = scratch, slope = scratch + g.coefficientCount, offset = slope + g.setCount
            for s in 0..<g.setCount {
                let (q, o) = setGradientCoefficients(
                    sumDy: sumDy, sumDyCentered: sumDyCentered, mean: mean, rstd: rstd,
                    gammaEffective: gammaEffective, set: s, centeredOnFloat: false, geometry: g)
                // The native offset moves to the float centre from the Double slope and offset, as the tiled path's
                // does: a shape takes one path or the other by the thread count, and both give the same bits.
                (slope[s], offset[s]) = (
                    Float(q), nativeChannelsLast ? Centering(mean[s]).offset(o, slope: q) : Float(o)
                )
            }
            for n in stride(from: 0, to: g.batch, by: g.samplesPerSet) {
                for ch in 0..<c {
                    let k = g.coefficient(n: n, c: ch)
                    scale[k] = Float(rstd[g.set(n: n, c: ch)] * gammaEffective[k])
                }
            }
            guard nativeChannelsLast else {
                return gradientApply(
                    dx: dx, dy: upstream, x: x, center: mean, scale: scale, slope: slope, offset: offset, geometry: g)
            }
            nativeGradientApplyChannelsLast(
                dx: dx, dy: recompute ? dy : upstream, x: x, scale: scale, activation: recompute ? activation : nil,
                geometry: g
            ) { s in
                (Centering(mean[s]).center, slope[s], offset[s])
            }
        }
    }

    /// The coefficients stage of the BN-form backward for set `s` (upstream `g = γ_eff·dz`, `dx = p·dz +
    /// slope·(x − μ) + offset` with `p = rstd·γ_eff`): slope and offset from the set's per-(n, c) sums. With
    /// `centeredOnFloat`, the sums are `Σdz·(x − μ̃)` and are first made exact, in place.
    @inline(__always)
    static func setGradientCoefficients(
        sumDy: UnsafePointer<Double>, sumDyCentered: UnsafeMutablePointer<Double>, mean: UnsafePointer<Double>,
        rstd: UnsafePointer<Double>, gammaEffective: UnsafePointer<Double>, set s: Int, centeredOnFloat: Bool,
        geometry g: NormalizationGeometry
    ) -> (slope: Double, offset: Double) {
        let b = s / g.channelBlocks, c0 = (s % g.channelBlocks) * g.channelsPerSet, centering = Centering(mean[s])
        var meanG = 0.0, meanGX = 0.0
        for n in (b * g.samplesPerSet)..<((b + 1) * g.samplesPerSet) {
            for c in c0..<(c0 + g.channelsPerSet) {
                let row = n * g.channels + c, ge = gammaEffective[b * g.channels + c]
                if centeredOnFloat {
                    sumDyCentered[row] = centering.exactSum(centered: sumDyCentered[row], sumDy: sumDy[row])
                }
                meanG += ge * sumDy[row]
                meanGX += ge * sumDyCentered[row]
            }
        }
        let rs = rstd[s], count = Double(g.elementsPerSet)
        return (-rs * rs * (meanGX * rs / count), -rs * (meanG / count))
    }
}
