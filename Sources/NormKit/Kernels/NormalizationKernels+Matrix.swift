import CNormKitKernels

// GN, LN and IN on an `N × C` matrix (one position per sample: `(N, C)` inputs, 1 × 1 maps), a sample at a time.
// A sample's sets are runs of `C/G` contiguous floats there, a few KB that stay in L1 through the whole of its
// forward (moments, then apply) and of its backward (gradient sums, then apply, and its terms of dγ, dβ). The other
// channels-last paths keep per-(sample, channel) coefficients and gradient sums, as many as the data (in double, 4x
// its bytes), for a matrix: LN on (4096, 768) took 1.9 ms forward and 18.5 forward+backward that way, 0.33 and 1.2
// this way (PERFORMANCE.md, session 38).

extension NormalizationKernels {
    /// Whether `g` (a ``NormalizationGeometry/kernelForm``) is an `N × C` matrix with its sets inside a sample (GN,
    /// LN, IN on `(N, C)` or 1 × 1 maps) on the native kernels. Standardized (not a renormalization rule), such a
    /// layer takes ``normalizeMatrix(y:mean:variance:rstd:x:gamma:beta:epsilon:activation:geometry:)`` and
    /// ``matrixBackward(dx:dgamma:dbeta:dy:x:mean:rstd:gamma:beta:activation:scratch:scratchDouble:geometry:)``.
    static func isMatrix(_ g: NormalizationGeometry) -> Bool {
        g.layout == .channelsLast && g.positions == 1 && g.samplesPerSet == 1 && nativeKernels
    }

    /// The standardized training forward of a matrix: per sample one `nk_matrix_row_forward` (the sets' mean,
    /// biased variance and rstd, then `y = act(γ·x̂ + β)`), the samples over the threads. No per-coefficient scale
    /// or shift is kept: the backward recomputes a fused activation's `z`.
    static func normalizeMatrix(
        y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>,
        rstd: UnsafeMutablePointer<Double>, x: UnsafePointer<Float>, gamma: UnsafePointer<Float>?,
        beta: UnsafePointer<Float>?, epsilon: Float, activation: FusedActivation, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, sets = g.channelBlocks
        Parallelism.forEachRange(count: g.batch, work: 2 * activation.work(elements: g.elementCount)) { samples in
            for n in samples {
                let s = n * sets
                nk_matrix_row_forward(
                    y + n * c, mean + s, variance + s, rstd + s, x + n * c, sets, g.channelsPerSet, epsilon, gamma,
                    beta, activation.kernelCode)
            }
        }
    }

    /// Samples per block of ``matrixBackward(dx:dgamma:dbeta:dy:x:mean:rstd:gamma:beta:activation:scratch:scratchDouble:geometry:)``:
    /// a block's dγ, dβ terms add in float over its samples (as the channels-last kernels' lanes add at most 64
    /// positions), then the blocks in double and in order, so the bits do not depend on the thread count.
    static let matrixBlock = 64

    /// The floats and doubles of scratch that `matrixBackward` takes for `g` (the doubles' last `2·C` are free for
    /// the caller's dγ, dβ).
    static func matrixBackwardScratch(_ g: NormalizationGeometry) -> (floats: Int, doubles: Int) {
        let blocks = (g.batch + matrixBlock - 1) / matrixBlock
        return (2 * g.channels * blocks, 2 * g.channels * (blocks + 1))
    }

    /// The backward of a standardized matrix forward: per sample one `nk_matrix_row_backward` (its `dx` and its
    /// terms of dγ, dβ; a fused activation's `z` recomputed from `x`, the statistics, `γ` and `β`), the samples over
    /// the threads in blocks of ``matrixBlock``; then `dgamma`, `dbeta` (nil without an affine) the blocks' sums in
    /// double. `scratch`, `scratchDouble`: ``matrixBackwardScratch(_:)``.
    static func matrixBackward(
        dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Double>?, dbeta: UnsafeMutablePointer<Double>?,
        dy: UnsafePointer<Float>, x: UnsafePointer<Float>, mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>,
        gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, activation: FusedActivation,
        scratch: UnsafeMutablePointer<Float>, scratchDouble: UnsafeMutablePointer<Double>,
        geometry g: NormalizationGeometry
    ) {
        let c = g.channels, sets = g.channelBlocks, affine = dgamma != nil
        let work = g.elementCount + activation.work(elements: g.elementCount)
        Parallelism.forEachRange(count: g.batch, work: work, granule: matrixBlock) { samples in
            // Ranges start at whole blocks (the granule).
            for first in stride(from: samples.lowerBound, to: samples.upperBound, by: matrixBlock) {
                let block = first / matrixBlock
                let dgammaTerms = scratch + 2 * c * block, dbetaTerms = dgammaTerms + c
                if affine { dgammaTerms.update(repeating: 0, count: 2 * c) }
                for n in first..<min(first + matrixBlock, samples.upperBound) {
                    nk_matrix_row_backward(
                        dx + n * c, affine ? dgammaTerms : nil, affine ? dbetaTerms : nil, dy + n * c, x + n * c,
                        sets, g.channelsPerSet, mean + n * sets, rstd + n * sets, gamma, beta, activation.kernelCode)
                }
                if affine {
                    let sums = scratchDouble + 2 * c * block
                    for i in 0..<(2 * c) { sums[i] = Double(dgammaTerms[i]) }
                }
            }
        }
        guard let dgamma, let dbeta else { return }
        dgamma.update(repeating: 0, count: c)
        dbeta.update(repeating: 0, count: c)
        for block in 0..<((g.batch + matrixBlock - 1) / matrixBlock) {
            let sums = scratchDouble + 2 * c * block
            for ch in 0..<c {
                dgamma[ch] += sums[ch]
                dbeta[ch] += sums[c + ch]
            }
        }
    }
}
