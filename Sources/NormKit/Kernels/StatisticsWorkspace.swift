/// The buffers and kernel calls that BatchNorm and GroupNorm share: a training forward that computes per-set
/// statistics and normalizes (``normalize(_:into:gamma:beta:epsilon:geometry:)``), and the matching backward
/// (``backward(_:input:into:gamma:geometry:)``). Buffers are resized only when the geometry changes, so steady
/// training allocates nothing.
struct StatisticsWorkspace {
    /// Per-set mean, biased variance and `1/sqrt(var + ε)` of the last forward (after the rule of a staged
    /// forward: SyncBN's global statistics).
    var mean: [Double] = []
    var variance: [Double] = []
    private(set) var rstd: [Double] = []
    /// Per-set `gain` and `offset` of the last forward's ``NormalizationRule`` (1 and 0 for BN and GN).
    private(set) var gain: [Double] = []
    private(set) var offset: [Double] = []
    /// Per-(n, c) `Σ dy` and `Σ dy·(x − μ)` of the last backward.
    var sumDy: [Double] = []
    var sumDyCentered: [Double] = []
    var scratch: [Float] = []
    var scratchDouble = KernelScratch()
    private var gammaEffective: [Double] = []
    /// The last forward's pre-activation, when it had a fused activation.
    var preActivation = PreActivation()
    /// Whether the last forward was a standardized matrix (``NormalizationKernels/isMatrix(_:)``): its backward is
    /// ``NormalizationKernels/matrixBackward(dx:dgamma:dbeta:dy:x:mean:rstd:gamma:beta:activation:scratch:geometry:)``,
    /// which recomputes a fused activation's `z`, so ``preActivation`` keeps only the activation.
    private var matrixForward = false
    /// The staged passes' per-set affines (StatisticsWorkspace+Staged.swift).
    var stagedAffines = SetAffines()
    var stagedGradients = SetGradientAffines()

    /// Statistics of every set of `x`, the rule's gain and offset per set, and
    /// `y = act(γ·(gain·(x − μ)·rstd + offset) + β)`.
    mutating func normalize(
        _ x: Tensor, into y: inout Tensor, gamma: [Float]?, beta: [Float]?, epsilon: Float,
        rule: some NormalizationRule = Standardization(), activation: FusedActivation = .identity,
        geometry layerGeometry: NormalizationGeometry
    ) {
        let g = layerGeometry.kernelForm
        if mean.count != g.setCount || gain.count != g.setCount {
            mean = [Double](repeating: 0, count: g.setCount)
            variance = mean
            rstd = mean
            gain = mean
            offset = mean
        }
        y.prepare(shape: x.shape, layout: x.layout)
        matrixForward = NormalizationKernels.isMatrix(g) && rule is Standardization
        if matrixForward {
            return normalizeMatrix(
                x, into: &y, gamma: gamma, beta: beta, epsilon: epsilon, activation: activation,
                geometry: g)
        }
        reserveScratch(g)
        let doubles = NormalizationKernels.doubleScratchCount(g), n = g.coefficientCount
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                scratch.withUnsafeMutableBufferPointer { sp in
                    scratchDouble.withDoubles(doubles) { dp in
                        withOptionalPointers(gamma, beta) { gp, bp in
                            NormalizationKernels.normalize(
                                y: yp.baseAddress!, mean: &mean, variance: &variance, rstd: &rstd, gain: &gain,
                                offset: &offset, x: xp.baseAddress!, gamma: gp, beta: bp, epsilon: epsilon, rule: rule,
                                scratchScale: sp.baseAddress!, scratchShift: sp.baseAddress! + n, scratchDouble: dp,
                                activation: activation, geometry: g)
                        }
                    }
                }
            }
        }
        recordPreActivation(activation, geometry: g)
    }

    /// Grows ``scratch`` to what the forward and backward kernels take for `g` (coefficients, centres, a tile's rows).
    private mutating func reserveScratch(_ g: NormalizationGeometry) {
        let count = 4 * g.coefficientCount + 3 * g.setCount
        if scratch.count < count { scratch = [Float](repeating: 0, count: count) }
    }

    /// Keeps the forward's `z = scale·(x − center) + shift` per coefficient (from `scratch`, where
    /// `NormalizationKernels.normalize` leaves it) for the backward of a fused activation.
    mutating func recordPreActivation(_ activation: FusedActivation, geometry g: NormalizationGeometry) {
        let n = g.coefficientCount
        scratch.withUnsafeBufferPointer { sp in
            let scale = sp.baseAddress!, shift = scale + n, centers = shift + n
            preActivation.record(activation, count: n) { a, b, k in
                a.update(from: scale, count: n)
                b.update(from: shift, count: n)
                switch g.layout {
                case .channelsFirst:  // centres per set
                    for block in 0..<g.sampleBlocks {
                        for set in 0..<g.channelBlocks {
                            (k + block * g.channels + set * g.channelsPerSet).update(
                                repeating: centers[block * g.channelBlocks + set], count: g.channelsPerSet)
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
        bias: Parameter?, geometry layerGeometry: NormalizationGeometry
    ) {
        let g = layerGeometry.kernelForm, gamma = weight?.value
        if matrixForward {
            return matrixBackward(dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g)
        }
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
            gain.withUnsafeBufferPointer { gain in
                // γ_c·gain of the channel's set, walked set by set (no division per channel).
                func fill(_ gamma: UnsafePointer<Float>?) {
                    let cps = g.channelsPerSet
                    for b in 0..<g.sampleBlocks {
                        for set in 0..<g.channelBlocks {
                            let setGain = gain[b &* g.channelBlocks &+ set]
                            let row = ge.baseAddress! + (b &* c &+ set &* cps)
                            if let gamma {
                                let channels = gamma + set &* cps
                                for j in 0..<cps { row[j] = Double(channels[j]) * setGain }
                            } else {
                                for j in 0..<cps { row[j] = setGain }
                            }
                        }
                    }
                }
                if let gamma { gamma.withUnsafeBufferPointer { fill($0.baseAddress!) } } else { fill(nil) }
            }
        }
        dx.prepare(shape: x.shape, layout: x.layout)
        reserveScratch(g)
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    scratch.withUnsafeMutableBufferPointer { sp in
                        scratchDouble.withDoubles(NormalizationKernels.backwardDoubleScratchCount(g)) { dp in
                            preActivation.withBackward(dz: dxp.baseAddress!) { activation in
                                NormalizationKernels.normalizeBackward(
                                    dx: dxp.baseAddress!, sumDy: &sumDy, sumDyCentered: &sumDyCentered,
                                    dy: dyp.baseAddress!, x: xp.baseAddress!, mean: mean, rstd: rstd,
                                    gammaEffective: gammaEffective, scratch: sp.baseAddress!, scratchDouble: dp,
                                    activation: activation, geometry: g)
                            }
                        }
                    }
                }
            }
        }
        let (plainSums, centeredSums) = (sumDy, sumDyCentered)
        scratchDouble.withDoubles(4 * c) { scratch in
            writeAffineGradients(
                weight: weight, bias: bias, sumDy: plainSums, sumDyCentered: centeredSums, geometry: g,
                scratch: scratch, setScale: { rstd[$0] * gain[$0] }, setOffset: { offset[$0] })
        }
    }
}

extension StatisticsWorkspace {
    /// ``normalize(_:into:gamma:beta:epsilon:rule:activation:geometry:)`` of a standardized matrix (`g` its kernel
    /// form, ``NormalizationKernels/isMatrix(_:)``): no per-coefficient scratch, and of the activation only its kind.
    private mutating func normalizeMatrix(
        _ x: Tensor, into y: inout Tensor, gamma: [Float]?, beta: [Float]?, epsilon: Float,
        activation: FusedActivation, geometry g: NormalizationGeometry
    ) {
        gain.withUnsafeMutableBufferPointer { $0.update(repeating: 1) }
        offset.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                withOptionalPointers(gamma, beta) { gp, bp in
                    NormalizationKernels.normalizeMatrix(
                        y: yp.baseAddress!, mean: &mean, variance: &variance, rstd: &rstd, x: xp.baseAddress!,
                        gamma: gp, beta: bp, epsilon: epsilon, activation: activation, geometry: g)
                }
            }
        }
        preActivation.record(activation)
    }

    /// ``backward(_:input:into:weight:bias:geometry:)`` after a standardized matrix forward (`g` its kernel form).
    private mutating func matrixBackward(
        _ dy: Tensor, input x: Tensor, into dx: inout Tensor, weight: Parameter?, bias: Parameter?,
        geometry g: NormalizationGeometry
    ) {
        guard NormalizationKernels.isMatrix(g) else {
            // The native kernels were switched off since the forward: the general backward, with the fused
            // activation's record the matrix forward did not keep.
            matrixForward = false
            recordMatrixPreActivation(gamma: weight?.value, beta: bias?.value, geometry: g)
            return backward(dy, input: x, into: &dx, weight: weight, bias: bias, geometry: g)
        }
        let floats = NormalizationKernels.matrixBackwardScratch(g)
        if scratch.count < floats { scratch = [Float](repeating: 0, count: floats) }
        dx.prepare(shape: x.shape, layout: x.layout)
        let (mean, rstd) = (mean, rstd)
        let activation = preActivation.activation
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    scratch.withUnsafeMutableBufferPointer { sp in
                        withOptionalPointers(weight?.value, bias?.value) { gp, bp in
                            withAffineGradients(weight, bias) { dgamma, dbeta in
                                NormalizationKernels.matrixBackward(
                                    dx: dxp.baseAddress!, dgamma: dgamma, dbeta: dbeta, dy: dyp.baseAddress!,
                                    x: xp.baseAddress!, mean: mean, rstd: rstd, gamma: gp, beta: bp,
                                    activation: activation, scratch: sp.baseAddress!, geometry: g)
                            }
                        }
                    }
                }
            }
        }
    }

    /// The pre-activation record of the last matrix forward (`g`), which it did not keep: every sample's coefficients
    /// recomputed from the stored statistics (its `z` within a float rounding of the matrix kernel's).
    private mutating func recordMatrixPreActivation(
        gamma: [Float]?, beta: [Float]?, geometry g: NormalizationGeometry
    ) {
        let activation = preActivation.activation, (mean, rstd, gain, offset) = (mean, rstd, gain, offset)
        withOptionalPointers(gamma, beta) { gp, bp in
            preActivation.record(activation, count: g.coefficientCount) { scale, shift, centers in
                for s in 0..<g.setCount {
                    let row = (s / g.channelBlocks) * g.channels, c0 = (s % g.channelBlocks) * g.channelsPerSet
                    let center = NormalizationKernels.channelCoefficients(
                        scale: scale + row, shift: shift + row, set: s, factor: gain[s] * rstd[s], offset: offset[s],
                        mean: mean[s], gamma: gp, beta: bp, geometry: g)
                    (centers + row + c0).update(repeating: center, count: g.channelsPerSet)
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
    @inline(__always)
    mutating func withDoubles<R>(_ count: Int, _ body: (UnsafeMutablePointer<Double>) -> R) -> R {
        if storage.count < count { storage = [Double](repeating: 0, count: max(count, 1)) }
        return storage.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}

/// Calls `body` with pointers to the gradients of an affine layer's `weight` and `bias` (nil pointers when it has
/// none).
func withAffineGradients<R>(
    _ weight: Parameter?, _ bias: Parameter?,
    _ body: (UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?) -> R
) -> R {
    guard let weight, let bias else { return body(nil, nil) }
    return weight.gradient.withUnsafeMutableBufferPointer { w in
        bias.gradient.withUnsafeMutableBufferPointer { b in body(w.baseAddress, b.baseAddress) }
    }
}

/// Calls `body` with pointers to two optional arrays (nil pointers for nil arrays).
func withOptionalPointers<R>(
    _ a: [Float]?, _ b: [Float]?, _ body: (UnsafePointer<Float>?, UnsafePointer<Float>?) -> R
) -> R {
    guard let a, let b else { return body(nil, nil) }
    return a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in body(ap.baseAddress, bp.baseAddress) } }
}
