/// The engine's staged passes, for rules that need every set's statistics before any set's coefficients: SyncBN
/// (a reduction across workers between the statistics and coefficients stages, spec section 9) and MABN (moving
/// averages that run through the chunks in order, and across workers). The stages are those of the fused path,
/// run one after the other over the whole tensor:
///
/// ```
/// forward:  statistics (mean, variance per set) → rule (all sets: affines) → apply y = act(a·(x − k) + b)
/// backward: gradient sums (Σdz, Σdz·(x − k) per sample and channel) → rule (all sets: gradient affines)
///           → apply dx = p·dz + q·(x − k) + o, and the one dγ/dβ walk
/// ```
///
/// Sets are per channel (`g.channelsPerSet == 1`), set `s = block·C + c`; the rule sees and writes Double.
/// A rule's forward output per set: `y = act(scale·(x − center) + shift)`, in Double (``Centering`` makes the apply
/// exact for |center| ≫ the spread of `x`). In a staged pass `center` is also the centre of the backward's sums.
struct SetAffines {
    var scale: [Double] = [], center: [Double] = [], shift: [Double] = []

    /// Makes sure there are `count` sets (reallocating only when the count changes).
    mutating func resize(_ count: Int) {
        if scale.count != count {
            scale = [Double](repeating: 0, count: count)
            (center, shift) = (scale, scale)
        }
    }

    /// The apply stage: `y = act(scale·(x − center) + shift)` over sets of a per-channel geometry, through the Float
    /// coefficients `scale`, `shift`, `center` it leaves in `scratch` (at 0, `n` and `2n` for `n` sets).
    func apply(
        _ x: Tensor, into y: inout Tensor, scratch: inout [Float], activation: FusedActivation,
        geometry g: NormalizationGeometry
    ) {
        let n = g.setCount
        if scratch.count < 3 * n { scratch = [Float](repeating: 0, count: 3 * n) }
        y.prepare(shape: x.shape, layout: x.layout)
        scratch.withUnsafeMutableBufferPointer { sp in
            let scaleF = sp.baseAddress!, shiftF = scaleF + n, centerF = shiftF + n
            for s in 0..<n {
                let centering = Centering(center[s])
                (scaleF[s], centerF[s]) = (Float(scale[s]), centering.center)
                shiftF[s] = centering.shift(shift[s], scale: scale[s])
            }
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    NormalizationKernels.apply(
                        y: yp.baseAddress!, x: xp.baseAddress!, center: centerF, scale: scaleF, shift: shiftF,
                        activation: activation, geometry: g)
                }
            }
        }
    }
}

/// A rule's backward output per set: `dx = scale·dz + slope·(x − center) + offset` with the forward's `center`, and
/// `dγ_c = Σ_s gammaScale[s]·Σ dz·(x − center)` (`∂y/∂γ = gammaScale·(x − center)`).
struct SetGradientAffines {
    var scale: [Double] = [], slope: [Double] = [], offset: [Double] = [], gammaScale: [Double] = []

    /// Makes sure there are `count` sets (reallocating only when the count changes).
    mutating func resize(_ count: Int) {
        if scale.count != count {
            scale = [Double](repeating: 0, count: count)
            (slope, offset, gammaScale) = (scale, scale, scale)
        }
    }
}

extension StatisticsWorkspace {
    /// The staged training forward: per-set statistics into ``mean`` and ``variance``; then `rule`, over all sets at
    /// once, which may replace the statistics (SyncBN puts the global ones there) and must write every set's affine;
    /// then the apply stage with `activation`. Nothing is written to `y` if `rule` throws.
    mutating func normalizeStaged(
        _ x: Tensor, into y: inout Tensor, activation: FusedActivation, geometry g: NormalizationGeometry,
        rule: (_ mean: inout [Double], _ variance: inout [Double], _ affines: inout SetAffines) throws -> Void
    ) rethrows {
        precondition(g.channelsPerSet == 1, "staged passes are per channel")
        if mean.count != g.setCount {
            mean = [Double](repeating: 0, count: g.setCount)
            variance = mean
        }
        x.withUnsafeBufferPointer { xp in
            scratchDouble.withDoubles(NormalizationKernels.doubleScratchCount(g)) { dp in
                NormalizationKernels.statistics(
                    mean: &mean, variance: &variance, x: xp.baseAddress!, scratch: dp, geometry: g)
            }
        }
        stagedAffines.resize(g.setCount)
        try rule(&mean, &variance, &stagedAffines)
        stagedAffines.apply(x, into: &y, scratch: &scratch, activation: activation, geometry: g)
        recordPreActivation(activation, geometry: g)
    }

    /// The apply stage alone, for a rule with no statistics (frozen BN): `rule` writes every set's affine, then
    /// `y = act(scale·(x − center) + shift)`; with `training`, the activation is kept for
    /// ``backwardStaged(_:input:into:weight:bias:geometry:rule:)``.
    mutating func normalizeFixed(
        _ x: Tensor, into y: inout Tensor, activation: FusedActivation, training: Bool,
        geometry g: NormalizationGeometry, rule: (_ affines: inout SetAffines) -> Void
    ) {
        precondition(g.channelsPerSet == 1, "staged passes are per channel")
        stagedAffines.resize(g.setCount)
        rule(&stagedAffines)
        stagedAffines.apply(x, into: &y, scratch: &scratch, activation: activation, geometry: g)
        if training { recordPreActivation(activation, geometry: g) }
    }

    /// The staged backward of the last ``normalizeStaged(_:into:activation:geometry:rule:)``: per-(n, c) `Σ dz` and
    /// `Σ dz·(x − center)` (`dz` is `dy` through the fused activation); then `rule`, over all sets, which may reduce
    /// the sums across workers and must write every set's gradient affine; then `dx` and, when the layer is affine,
    /// `dγ`, `dβ` into `weight` and `bias`. `readsInput` false: every slope is 0 (frozen BN), and the apply reads
    /// `dz` alone, never `x` (so `dz` is stored even from memory: recomputed, it would read `x`, and an infinite `x`
    /// would turn `dx` into NaN through `0·(x − k)`).
    mutating func backwardStaged(
        _ dy: Tensor, input x: Tensor, into dx: inout Tensor, weight: Parameter?, bias: Parameter?,
        geometry g: NormalizationGeometry, readsInput: Bool = true,
        rule: (_ sumDy: [Double], _ sumDyCentered: [Double], _ gradients: inout SetGradientAffines) throws -> Void
    ) rethrows {
        let n = g.setCount
        if sumDy.count != g.batch * g.channels {
            sumDy = [Double](repeating: 0, count: g.batch * g.channels)
            sumDyCentered = sumDy
        }
        dx.prepare(shape: x.shape, layout: x.layout)
        let center = stagedAffines.center
        // From memory the apply recomputes dz from x and dy (NormalizationKernels.recomputesDz).
        let recompute =
            readsInput && NormalizationKernels.recomputesDz(g, activationFused: preActivation.isActive)
        x.withUnsafeBufferPointer { xp in
            dy.withUnsafeBufferPointer { dyp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    scratchDouble.withDoubles(NormalizationKernels.backwardDoubleScratchCount(g)) { partial in
                        preActivation.withBackward(dz: dxp.baseAddress!) { activation in
                            NormalizationKernels.gradientSums(
                                sumDy: &sumDy, sumDyCentered: &sumDyCentered, dy: dyp.baseAddress!,
                                x: xp.baseAddress!, center: center, partial: partial, activation: activation,
                                storingDz: !recompute, geometry: g)
                        }
                    }
                }
            }
        }
        stagedGradients.resize(n)
        try rule(sumDy, sumDyCentered, &stagedGradients)
        let gradients = stagedGradients, upstreamIsDz = preActivation.isActive && !recompute
        // (Recomputing dz reads x even where the slope is 0.)
        let applyReadsInput = recompute || (readsInput && gradients.slope.contains { $0 != 0 })
        if scratch.count < 3 * n { scratch = [Float](repeating: 0, count: 3 * n) }
        scratch.withUnsafeMutableBufferPointer { sp in
            let scale = sp.baseAddress!, slope = scale + n, offset = slope + n
            for s in 0..<n {
                (scale[s], slope[s]) = (Float(gradients.scale[s]), Float(gradients.slope[s]))
                offset[s] = Float(gradients.offset[s])
            }
            x.withUnsafeBufferPointer { xp in
                dx.withUnsafeMutableBufferPointer { dxp in
                    func run(_ upstream: UnsafePointer<Float>) {
                        guard applyReadsInput else {  // dx = scale·dz + offset, x not read (frozen BN)
                            return NormalizationKernels.apply(
                                y: dxp.baseAddress!, x: upstream, scale: scale, shift: offset, geometry: g)
                        }
                        preActivation.withBackward(dz: dxp.baseAddress!) { activation in
                            NormalizationKernels.gradientApply(
                                dx: dxp.baseAddress!, dy: upstream, x: xp.baseAddress!, center: center, scale: scale,
                                slope: slope, offset: offset, recomputing: recompute ? activation : nil, geometry: g)
                        }
                    }
                    if upstreamIsDz {
                        run(dxp.baseAddress!)
                    } else {
                        dy.withUnsafeBufferPointer { run($0.baseAddress!) }
                    }
                }
            }
        }
        let (plainSums, centeredSums) = (sumDy, sumDyCentered)
        scratchDouble.withDoubles(4 * g.channels) { scratch in
            writeAffineGradients(
                weight: weight, bias: bias, sumDy: plainSums, sumDyCentered: centeredSums, geometry: g,
                scratch: scratch, setScale: { gradients.gammaScale[$0] })
        }
    }
}
