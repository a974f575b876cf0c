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
    /// ``matrixBackward(dx:dgamma:dbeta:dy:x:mean:rstd:gamma:beta:activation:scratch:geometry:)``.
    static func isMatrix(_ g: NormalizationGeometry) -> Bool {
        g.layout == .channelsLast && g.positions == 1 && g.samplesPerSet == 1 && nativeKernels
    }

    /// The standardized training forward of a matrix: per sample one `nk_matrix_row_forward` (the sets' mean,
    /// biased variance and rstd, then `y = act(γ·x̂ + β)`) for each of its ``matrixPieces(_:)``, the samples and
    /// pieces over the threads. No per-coefficient scale or shift is kept: the backward recomputes a fused
    /// activation's `z`.
    static func normalizeMatrix(
        y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Double>, variance: UnsafeMutablePointer<Double>,
        rstd: UnsafeMutablePointer<Double>, x: UnsafePointer<Float>, gamma: UnsafePointer<Float>?,
        beta: UnsafePointer<Float>?, epsilon: Float, activation: FusedActivation, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, sets = g.channelBlocks, cps = g.channelsPerSet, pieces = matrixPieces(g)
        Parallelism.forEachRange(count: g.batch * pieces, work: 2 * activation.work(elements: g.elementCount)) {
            units in
            for unit in units {
                let (n, piece) = unit.quotientAndRemainder(dividingBy: pieces)
                let pieceSets = rows(ofParts: piece..<(piece + 1), pieces, positions: sets)
                let s0 = pieceSets.lowerBound, row = n * c + s0 * cps, s = n * sets + s0
                nk_matrix_row_forward(
                    y + row, mean + s, variance + s, rstd + s, x + row, pieceSets.count, cps, epsilon,
                    gamma.map { $0 + s0 * cps }, beta.map { $0 + s0 * cps }, activation.kernelCode)
            }
        }
    }

    /// Samples per block of ``matrixBackward(dx:dgamma:dbeta:dy:x:mean:rstd:gamma:beta:activation:scratch:geometry:)``
    /// for `g`: a block's dγ, dβ terms add in float over its samples (as the channels-last kernels' lanes add at most
    /// 64 positions), then the blocks in double and in order. Up to 64 samples, and at least 4 blocks where the batch
    /// has 4 samples, so that a short batch of wide rows still has a block per thread: LN on (32, 16384) in one block
    /// of 32 took 1.6x the time of blocks of 16 or 8 on 2 threads; on (128, 8192) blocks of 32 and 16 took 1.06x and
    /// 1.08x the time of 64 (PERFORMANCE.md, session 39). Fixed by the shape, so the bits do not depend on the thread
    /// count.
    static func matrixBlock(_ g: NormalizationGeometry) -> Int {
        min(64, max(1, g.batch / 4))
    }

    /// The blocks of samples of ``matrixBlock(_:)``.
    static func matrixBlocks(_ g: NormalizationGeometry) -> Int {
        let block = matrixBlock(g)
        return g.batch / block + (g.batch % block > 0 ? 1 : 0)
    }

    /// The floats of scratch that `matrixBackward` takes for `g`: each block's dγ, dβ terms.
    static func matrixBackwardScratch(_ g: NormalizationGeometry) -> Int {
        2 * g.channels * matrixBlocks(g)
    }

    /// The pieces of whole sets each row of `g` goes to the threads in: one per ``matrixPieceFloats`` of the row, up
    /// to one per set (a sample of GN on (1, 2^20) has no other parallelism). The pieces do not change the bits: a
    /// set's arithmetic is its own, and each channel's dγ, dβ terms add over a block's samples in order whatever the
    /// piece.
    static func matrixPieces(_ g: NormalizationGeometry) -> Int {
        max(1, min(g.channelBlocks, g.channels / matrixPieceFloats))
    }

    /// Channels whose dγ or dβ the backward adds over the blocks at a time, in 1 KB of doubles (the most that
    /// `withUnsafeTemporaryAllocation` puts on the stack: 2 KB allocated on the heap per call).
    static let matrixSumChunk = 128

    /// Floats of a row per piece (64 KB) at least.
    static let matrixPieceFloats = 1 << 14

    /// The backward of a standardized matrix forward: per sample one `nk_matrix_row_backward` (its `dx` and its
    /// terms of dγ, dβ; a fused activation's `z` recomputed from `x`, the statistics, `γ` and `β`), the threads
    /// taking blocks of ``matrixBlock(_:)`` samples and pieces of wide rows (``matrixPieceFloats``); then `dgamma`,
    /// `dbeta` (nil without an affine) the blocks' sums in double, rounded once to float, the channels over the
    /// threads. `scratch`: ``matrixBackwardScratch(_:)`` floats.
    static func matrixBackward(
        dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>?, dbeta: UnsafeMutablePointer<Float>?,
        dy: UnsafePointer<Float>, x: UnsafePointer<Float>, mean: UnsafePointer<Double>, rstd: UnsafePointer<Double>,
        gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, activation: FusedActivation,
        scratch: UnsafeMutablePointer<Float>, geometry g: NormalizationGeometry
    ) {
        let c = g.channels, sets = g.channelBlocks, cps = g.channelsPerSet, affine = dgamma != nil
        let block = matrixBlock(g), blocks = matrixBlocks(g)
        let pieces = matrixPieces(g)
        let work = g.elementCount + activation.work(elements: g.elementCount)
        Parallelism.forEachRange(count: blocks * pieces, work: work) { units in
            for unit in units {
                let (b, piece) = unit.quotientAndRemainder(dividingBy: pieces)
                let pieceSets = rows(ofParts: piece..<(piece + 1), pieces, positions: sets)
                let s0 = pieceSets.lowerBound, ch0 = s0 * cps
                let dgammaTerms = scratch + 2 * c * b + ch0, dbetaTerms = dgammaTerms + c
                if affine {
                    dgammaTerms.update(repeating: 0, count: pieceSets.count * cps)
                    dbetaTerms.update(repeating: 0, count: pieceSets.count * cps)
                }
                for n in (b * block)..<min((b + 1) * block, g.batch) {
                    let row = n * c + ch0
                    nk_matrix_row_backward(
                        dx + row, affine ? dgammaTerms : nil, affine ? dbetaTerms : nil, dy + row, x + row,
                        pieceSets.count, cps, mean + n * sets + s0, rstd + n * sets + s0, gamma.map { $0 + ch0 },
                        beta.map { $0 + ch0 }, activation.kernelCode)
                }
            }
        }
        guard let dgamma, let dbeta else { return }
        /// `sums[ch]` for `channels`: the blocks' `terms[ch]` (every `2·C` floats) added in double in block order,
        /// rounded to float (one block's terms are its sums).
        @inline(__always) func addBlocks(
            _ sums: UnsafeMutablePointer<Float>, _ terms: UnsafePointer<Float>, _ channels: Range<Int>
        ) {
            guard blocks > 1 else {
                return (sums + channels.lowerBound).update(from: terms + channels.lowerBound, count: channels.count)
            }
            // Channels a chunk at a time, the blocks added into a chunk of doubles on the stack (vectorized).
            withUnsafeTemporaryAllocation(of: Double.self, capacity: matrixSumChunk) { buffer in
                let chunkSums = buffer.baseAddress!
                for lower in stride(from: channels.lowerBound, to: channels.upperBound, by: matrixSumChunk) {
                    let count = min(matrixSumChunk, channels.upperBound - lower), chunk = sums + lower
                    let firstTerms = terms + lower
                    for i in 0..<count { chunkSums[i] = Double(firstTerms[i]) }
                    for b in 1..<blocks {
                        let blockTerms = firstTerms + 2 * c * b
                        for i in 0..<count { chunkSums[i] += Double(blockTerms[i]) }
                    }
                    for i in 0..<count { chunk[i] = Float(chunkSums[i]) }
                }
            }
        }
        Parallelism.forEachRange(count: c, work: 2 * c * blocks) { channels in
            addBlocks(dgamma, scratch, channels)
            addBlocks(dbeta, scratch + c, channels)
        }
    }
}
