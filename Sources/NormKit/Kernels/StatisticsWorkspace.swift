/// The buffers and kernel calls that BatchNorm and GroupNorm share: a training forward that computes per-set
/// statistics and normalizes (``normalize(_:into:gamma:beta:epsilon:geometry:)``), and the matching backward
/// (``backward(_:input:into:gamma:geometry:)``). Buffers are resized only when the geometry changes, so steady
/// training allocates nothing.
struct StatisticsWorkspace {
    /// Per-set mean, biased variance and `1/sqrt(var + ε)` of the last forward.
    private(set) var mean: [Double] = []
    private(set) var variance: [Double] = []
    private(set) var rstd: [Double] = []
    /// Per-(n, c) `Σ dy` and `Σ dy·(x − μ)` of the last backward.
    private(set) var sumDy: [Double] = []
    private(set) var sumDyCentered: [Double] = []
    private var scratch: [Float] = []
    private var scratchDouble = KernelScratch()
    private var gammaEffective: [Float] = []
    private var affineAccumulators: [Double] = []
    /// The last forward's pre-activation, when it had a fused activation.
    private var preActivation = PreActivation()

    /// Statistics of every set of `x` and `y = act(γ·(x − μ)·rstd + β)`.
    mutating func normalize(_ x: Tensor, into y: inout Tensor, gamma: [Float]?, beta: [Float]?, epsilon: Float,
                            activation: FusedActivation = .identity, geometry g: NormalizationGeometry) {
        if mean.count != g.setCount {
            mean = [Double](repeating: 0, count: g.setCount)
            variance = mean
            rstd = mean
        }
        let scratchCount = 3 * g.coefficientCount + 3 * g.setCount  // see NormalizationKernels
        if scratch.count < scratchCount { scratch = [Float](repeating: 0, count: scratchCount) }
        y.prepare(shape: x.shape, layout: x.layout)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                mean.withUnsafeMutableBufferPointer { mp in
                    variance.withUnsafeMutableBufferPointer { vp in
                        rstd.withUnsafeMutableBufferPointer { rp in
                            scratch.withUnsafeMutableBufferPointer { sp in
                                scratchDouble.withDoubles(NormalizationKernels.doubleScratchCount(g)) { dp in
                                    withOptionalPointers(gamma, beta) { gp, bp in
                                        NormalizationKernels.normalize(
                                            y: yp.baseAddress!, mean: mp.baseAddress!, variance: vp.baseAddress!,
                                            rstd: rp.baseAddress!, x: xp.baseAddress!, gamma: gp, beta: bp,
                                            epsilon: epsilon, scratchScale: sp.baseAddress!,
                                            scratchShift: sp.baseAddress! + g.coefficientCount, scratchDouble: dp,
                                            activation: activation, geometry: g)
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

    /// `dx` of the last ``normalize(_:into:gamma:beta:epsilon:activation:geometry:)`` for upstream `dy` (the
    /// gradient of the activation's output when it had one), and, when the layer is affine, `dγ_c = Σ dz·x̂` and
    /// `dβ_c = Σ dz` into `weight` and `bias` (`γ` is `weight`'s value, or 1; `dz` is `dy` through the activation).
    mutating func backward(_ dy: Tensor, input x: Tensor, into dx: inout Tensor, weight: Parameter?,
                           bias: Parameter?, geometry g: NormalizationGeometry) {
        let gamma = weight?.value
        let c = g.channels
        if sumDy.count != g.batch * c {
            sumDy = [Double](repeating: 0, count: g.batch * c)
            sumDyCentered = sumDy
        }
        if gammaEffective.count != g.coefficientCount {
            gammaEffective = [Float](repeating: 1, count: g.coefficientCount)
        }
        if let gamma {
            for b in 0..<g.sampleBlocks { for ch in 0..<c { gammaEffective[b * c + ch] = gamma[ch] } }
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
        if let weight, let bias { affineGradients(weight: weight, bias: bias, geometry: g) }
    }

    /// `dγ_c = Σ_n rstd[set(n, c)]·Σdy·(x − μ)[n, c]` and `dβ_c = Σ_n Σdy[n, c]` from the sums of the last backward,
    /// walked row by row (contiguous) with the set index advanced per channel block: no division per element.
    private mutating func affineGradients(weight: Parameter, bias: Parameter, geometry g: NormalizationGeometry) {
        let c = g.channels, cps = g.channelsPerSet
        if affineAccumulators.count != 2 * c { affineAccumulators = [Double](repeating: 0, count: 2 * c) }
        sumDy.withUnsafeBufferPointer { s1 in
            sumDyCentered.withUnsafeBufferPointer { s2 in
                rstd.withUnsafeBufferPointer { r in
                    affineAccumulators.withUnsafeMutableBufferPointer { acc in
                        let dg = acc.baseAddress!, db = dg + c
                        dg.update(repeating: 0, count: 2 * c)
                        for n in 0..<g.batch {
                            let row = n * c, firstSet = (n / g.samplesPerSet) * g.channelBlocks
                            for block in 0..<g.channelBlocks {
                                let scale = r[firstSet + block]
                                for ch in (block * cps)..<((block + 1) * cps) {
                                    dg[ch] += scale * s2[row + ch]
                                    db[ch] += s1[row + ch]
                                }
                            }
                        }
                        weight.gradient.withUnsafeMutableBufferPointer { w in
                            for ch in 0..<c { w[ch] = Float(dg[ch]) }
                        }
                        bias.gradient.withUnsafeMutableBufferPointer { b in
                            for ch in 0..<c { b[ch] = Float(db[ch]) }
                        }
                    }
                }
            }
        }
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
