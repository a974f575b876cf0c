/// The buffers and kernel calls that BatchNorm and GroupNorm share: a training forward that computes per-set
/// statistics and normalizes (``normalize(_:into:gamma:beta:epsilon:geometry:)``), and the matching backward
/// (``backward(_:input:into:gamma:geometry:)``). Buffers are resized only when the geometry changes, so steady
/// training allocates nothing.
struct StatisticsWorkspace {
    /// Per-set mean, biased variance and `1/sqrt(var + ε)` of the last forward.
    private(set) var mean: [Double] = []
    private(set) var variance: [Double] = []
    private(set) var rstd: [Double] = []
    /// Per-set `gain` and `offset` of the last forward's ``NormalizationRule`` (1 and 0 for BN and GN).
    private(set) var gain: [Double] = []
    private(set) var offset: [Double] = []
    /// Per-(n, c) `Σ dy` and `Σ dy·(x − μ)` of the last backward.
    private(set) var sumDy: [Double] = []
    private(set) var sumDyCentered: [Double] = []
    private var scratch: [Float] = []
    private var scratchDouble = KernelScratch()
    private var gammaEffective: [Double] = []
    /// The last forward's pre-activation, when it had a fused activation.
    private var preActivation = PreActivation()
    /// SyncBN: values per channel over all workers in the last reduced forward, and the reductions' buffers.
    private(set) var reducedCount = 0.0
    private var reductionBuffer: [Double] = []

    /// Statistics of every set of `x`, the rule's gain and offset per set, and
    /// `y = act(γ·(gain·(x − μ)·rstd + offset) + β)`.
    mutating func normalize(
        _ x: Tensor, into y: inout Tensor, gamma: [Float]?, beta: [Float]?, epsilon: Float,
        rule: some NormalizationRule = Standardization(), activation: FusedActivation = .identity,
        geometry g: NormalizationGeometry
    ) {
        if mean.count != g.setCount || gain.count != g.setCount {
            mean = [Double](repeating: 0, count: g.setCount)
            variance = mean
            rstd = mean
            gain = mean
            offset = mean
        }
        let scratchCount = 3 * g.coefficientCount + 3 * g.setCount  // see NormalizationKernels
        if scratch.count < scratchCount { scratch = [Float](repeating: 0, count: scratchCount) }
        y.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                mean.withUnsafeMutableBufferPointer { mp in
                    variance.withUnsafeMutableBufferPointer { vp in
                        rstd.withUnsafeMutableBufferPointer { rp in
                            gain.withUnsafeMutableBufferPointer { gainp in
                                offset.withUnsafeMutableBufferPointer { offsetp in
                                    scratch.withUnsafeMutableBufferPointer { sp in
                                        scratchDouble.withDoubles(NormalizationKernels.doubleScratchCount(g)) { dp in
                                            withOptionalPointers(gamma, beta) { gp, bp in
                                                NormalizationKernels.normalize(
                                                    y: yp.baseAddress!, mean: mp.baseAddress!,
                                                    variance: vp.baseAddress!,
                                                    rstd: rp.baseAddress!, gain: gainp.baseAddress!,
                                                    offset: offsetp.baseAddress!, x: xp.baseAddress!, gamma: gp,
                                                    beta: bp,
                                                    epsilon: epsilon, rule: rule, scratchScale: sp.baseAddress!,
                                                    scratchShift: sp.baseAddress! + g.coefficientCount,
                                                    scratchDouble: dp,
                                                    activation: activation, geometry: g)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        recordPreActivation(activation, geometry: g)
    }

    /// Keeps the forward's `z = scale·(x − center) + shift` per coefficient (from `scratch`, where
    /// ``NormalizationKernels/normalize(y:mean:variance:rstd:x:gamma:beta:epsilon:scratchScale:scratchShift:scratchDouble:activation:geometry:)``
    /// leaves it) for the backward of a fused activation.
    private mutating func recordPreActivation(_ activation: FusedActivation, geometry g: NormalizationGeometry) {
        let n = g.coefficientCount
        scratch.withUnsafeBufferPointer { sp in
            let scale = sp.baseAddress!, shift = scale + n, centers = shift + n
            preActivation.record(activation, count: n) { a, b, k in
                a.update(from: scale, count: n)
                b.update(from: shift, count: n)
                switch g.layout {
                case .channelsFirst:  // centres per set
                    for block in 0..<g.sampleBlocks {
                        for c in 0..<g.channels {
                            k[block * g.channels + c] = centers[block * g.channelBlocks + c / g.channelsPerSet]
                        }
                    }
                case .channelsLast:  // centres per coefficient
                    k.update(from: centers, count: n)
                }
            }
        }
    }

    /// `dx` of the last ``normalize(_:into:gamma:beta:epsilon:rule:activation:geometry:)`` for upstream `dy` (the
    /// gradient of the activation's output when it had one): BN's backward with `γ·gain`; and, when the layer is
    /// affine, `dγ_c = Σ dz·(gain·x̂ + offset)` and `dβ_c = Σ dz` into `weight` and `bias` (`γ` is `weight`'s value,
    /// or 1; `dz` is `dy` through the activation).
    mutating func backward(
        _ dy: Tensor, input x: Tensor, into dx: inout Tensor, weight: Parameter?,
        bias: Parameter?, geometry g: NormalizationGeometry
    ) {
        let gamma = weight?.value
        let c = g.channels
        if sumDy.count != g.batch * c {
            sumDy = [Double](repeating: 0, count: g.batch * c)
            sumDyCentered = sumDy
        }
        if gammaEffective.count != g.coefficientCount {
            gammaEffective = [Double](repeating: 1, count: g.coefficientCount)
        }
        let gain = gain, rstd = rstd, offset = offset
        gammaEffective.withUnsafeMutableBufferPointer { ge in
            for b in 0..<g.sampleBlocks {
                for ch in 0..<c {
                    ge[b * c + ch] = Double(gamma?[ch] ?? 1) * gain[b * g.channelBlocks + ch / g.channelsPerSet]
                }
            }
        }
        dx.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    sumDy.withUnsafeMutableBufferPointer { s1 in
                        sumDyCentered.withUnsafeMutableBufferPointer { s2 in
                            scratch.withUnsafeMutableBufferPointer { sp in
                                scratchDouble.withDoubles(NormalizationKernels.doubleScratchCount(g)) { dp in
                                    preActivation.withBackward(dz: dxp.baseAddress!) { activation in
                                        NormalizationKernels.normalizeBackward(
                                            dx: dxp.baseAddress!, sumDy: s1.baseAddress!,
                                            sumDyCentered: s2.baseAddress!, dy: dyp.baseAddress!, x: xp.baseAddress!,
                                            mean: mean, rstd: rstd, gammaEffective: gammaEffective,
                                            scratch: sp.baseAddress!, scratchDouble: dp, activation: activation,
                                            geometry: g)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        writeAffineGradients(
            weight: weight, bias: bias, sumDy: sumDy, sumDyCentered: sumDyCentered, geometry: g,
            setScale: { rstd[$0] * gain[$0] }, setOffset: { offset[$0] })
    }
}

// MARK: SyncBN (spec section 9): statistics → reduction across workers → coefficients → apply

extension StatisticsWorkspace {
    /// SyncBN's training forward over per-channel geometry `g`: this worker's per-channel mean and biased variance,
    /// gathered from every worker as (count, mean, M2) and merged in worker order with Chan's formula (exact for
    /// unequal batches, as stable as the single-process kernels: no raw `Σx²`), then the coefficients and
    /// `y = act(γ·(x − μ)·rstd + β)` of the global statistics. Nothing changes if the reduction throws.
    mutating func normalizeAcrossWorkers(
        _ x: Tensor, into y: inout Tensor, gamma: [Float]?, beta: [Float]?,
        epsilon: Float, activation: FusedActivation,
        reduction: CrossWorkerReduction, geometry g: NormalizationGeometry,
        layer: String
    ) throws {
        let c = g.channels, workers = reduction.workerCount
        var localMean = [Double](repeating: 0, count: 0), localVariance = localMean
        swap(&localMean, &mean)
        swap(&localVariance, &variance)
        defer {
            swap(&localMean, &mean)
            swap(&localVariance, &variance)
        }
        if localMean.count != c {
            localMean = [Double](repeating: 0, count: c)
            localVariance = localMean
        }
        x.withUnsafeBufferPointer { xp in
            scratchDouble.withDoubles(NormalizationKernels.doubleScratchCount(g)) { dp in
                NormalizationKernels.statistics(
                    mean: &localMean, variance: &localVariance, x: xp.baseAddress!,
                    scratch: dp, geometry: g)
            }
        }
        if reductionBuffer.count < 3 * c * (workers + 1) {
            reductionBuffer = [Double](repeating: 0, count: 3 * c * (workers + 1))
        }
        let count = Double(g.elementsPerSet)
        let merged: Double = try reductionBuffer.withUnsafeMutableBufferPointer { buffer in
            let local = UnsafeMutableBufferPointer(rebasing: buffer[0..<(3 * c)])
            let all = UnsafeMutableBufferPointer(rebasing: buffer[(3 * c)..<(3 * c * (workers + 1))])
            for ch in 0..<c {
                (local[3 * ch], local[3 * ch + 1], local[3 * ch + 2]) =
                    (count, localMean[ch], localVariance[ch] * count)
            }
            do { try reduction.allGather(UnsafeBufferPointer(local), into: all) } catch {
                throw NormalizationError.crossWorkerReductionFailed(layer: layer, reason: "\(error)")
            }
            var total = 0.0
            for ch in 0..<c {
                var n = 0.0, mu = 0.0, m2 = 0.0
                for w in 0..<workers {
                    let e = (w * c + ch) * 3, k = all[e], delta = all[e + 1] - mu
                    guard k > 0 else { continue }
                    let merged = n + k
                    mu += delta * (k / merged)
                    m2 += all[e + 2] + delta * delta * n * (k / merged)
                    n = merged
                }
                local[3 * ch + 1] = mu
                local[3 * ch + 2] = max(0, m2 / n)
                total = n
            }
            return total
        }
        guard merged > 1 else {
            throw NormalizationError.tooFewValuesPerChannel(layer: layer, valuesPerSet: Int(merged))
        }
        // The global statistics replace the local ones (the deferred swap puts them in place).
        for ch in 0..<c {
            localMean[ch] = reductionBuffer[3 * ch + 1]
            localVariance[ch] = reductionBuffer[3 * ch + 2]
        }
        reducedCount = merged
        if rstd.count != c { rstd = [Double](repeating: 0, count: c) }
        let scratchCount = 3 * g.coefficientCount + 3 * g.setCount
        if scratch.count < scratchCount { scratch = [Float](repeating: 0, count: scratchCount) }
        y.prepare(shape: x.shape, layout: x.layout)
        scratch.withUnsafeMutableBufferPointer { sp in
            let scale = sp.baseAddress!, shift = scale + c, centers = shift + c
            for ch in 0..<c {
                let r = 1 / (localVariance[ch] + Double(epsilon)).squareRoot(), a = Double(gamma?[ch] ?? 1) * r
                rstd[ch] = r
                let centering = Centering(localMean[ch])
                centers[ch] = centering.center
                scale[ch] = Float(a)
                shift[ch] = centering.shift(Double(beta?[ch] ?? 0), scale: a)
            }
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    NormalizationKernels.applyCentered(
                        y: yp.baseAddress!, x: xp.baseAddress!, center: centers,
                        scale: scale, shift: shift, activation: activation, geometry: g)
                }
            }
        }
        recordPreActivation(activation, geometry: g)
    }

    /// SyncBN's backward of the last ``normalizeAcrossWorkers(_:into:gamma:beta:epsilon:activation:reduction:geometry:layer:)``:
    /// this worker's per-channel `Σ dz` and `Σ dz·(x − μ)`, summed over all workers, give
    /// `dx = γ·rstd·(dz − Σdz/n − x̂·Σdz·x̂/n)` with `n` the global count; `dγ`, `dβ` are this worker's sums (the
    /// data-parallel step averages parameter gradients over workers like every other gradient).
    mutating func backwardAcrossWorkers(
        _ dy: Tensor, input x: Tensor, into dx: inout Tensor, weight: Parameter?,
        bias: Parameter?, reduction: CrossWorkerReduction,
        geometry g: NormalizationGeometry, layer: String
    ) throws {
        let c = g.channels, gamma = weight?.value
        if sumDy.count != g.batch * c {
            sumDy = [Double](repeating: 0, count: g.batch * c)
            sumDyCentered = sumDy
        }
        dx.prepare(shape: x.shape, layout: x.layout)
        let mean = mean
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    preActivation.withBackward(dz: dxp.baseAddress!) { activation in
                        NormalizationKernels.gradientSums(
                            sumDy: &sumDy, sumDyCentered: &sumDyCentered,
                            dy: dyp.baseAddress!, x: xp.baseAddress!, center: mean,
                            activation: activation, geometry: g)
                    }
                }
            }
        }
        try reductionBuffer.withUnsafeMutableBufferPointer { buffer in
            let totals = UnsafeMutableBufferPointer(rebasing: buffer[0..<(2 * c)])
            for ch in 0..<c {
                var t1 = 0.0, t2 = 0.0
                for n in 0..<g.batch {
                    t1 += sumDy[n * c + ch]
                    t2 += sumDyCentered[n * c + ch]
                }
                (totals[ch], totals[c + ch]) = (t1, t2)
            }
            do { try reduction.allReduceSum(totals) } catch {
                throw NormalizationError.crossWorkerReductionFailed(layer: layer, reason: "\(error)")
            }
        }
        let count = reducedCount, upstreamIsDz = preActivation.isActive
        scratch.withUnsafeMutableBufferPointer { sp in
            let scale = sp.baseAddress!, slope = scale + c, offset = slope + c
            for ch in 0..<c {
                let r = rstd[ch], ge = Double(gamma?[ch] ?? 1)
                let meanG = ge * reductionBuffer[ch] / count, meanGX = ge * reductionBuffer[c + ch] * r / count
                scale[ch] = Float(r * ge)
                slope[ch] = Float(-r * r * meanGX)
                offset[ch] = Float(-r * meanG)
            }
            x.withUnsafeBufferPointer { xp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    func run(_ upstream: UnsafePointer<Float>) {
                        NormalizationKernels.gradientApply(
                            dx: dxp.baseAddress!, dy: upstream, x: xp.baseAddress!,
                            center: mean, scale: scale, slope: slope, offset: offset,
                            geometry: g)
                    }
                    if upstreamIsDz {
                        run(dxp.baseAddress!)
                    } else {
                        dy.withUnsafeBufferPointer { run($0.baseAddress!) }
                    }
                }
            }
        }
        writeAffineGradients(
            weight: weight, bias: bias, sumDy: sumDy, sumDyCentered: sumDyCentered, geometry: g,
            setScale: { [rstd] in rstd[$0] })
    }
}

/// Doubles a layer keeps for kernel temporaries (``NormalizationKernels/doubleScratchCount(_:)``), grown only when
/// a geometry needs more, so a training step allocates nothing.
struct KernelScratch {
    private var storage: [Double] = []

    /// Calls `body` with at least `count` doubles of scratch (contents unspecified).
    mutating func withDoubles<R>(_ count: Int, _ body: (UnsafeMutablePointer<Double>) -> R) -> R {
        if storage.count < count { storage = [Double](repeating: 0, count: max(count, 1)) }
        return storage.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}
