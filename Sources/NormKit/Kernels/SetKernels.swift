import CNormKitKernels

// Set-level primitives: one call per batch of normalization sets instead of one per row. When rows are short
// (BatchNorm on 7×7 maps: 49 floats) the fixed cost of a call, a dispatch check and the horizontal sums that end
// each row's dependency chain outweigh the arithmetic; these move the loops over sets and rows inside the kernel,
// and the native (AVX-512) versions reduce 16 sets or rows at once with one transposing reduction. The portable
// versions loop over the portable row primitives; the tests run both against each other.

/// Where a batch of consecutive channels-first normalization sets lies in memory: `sets` sets, set `j` starting
/// `j·setStride` floats after `offset`; each set is `pieces` runs of `rows·m` contiguous floats, run `i` at
/// `i·pieceStride`; row `r` of a run belongs to the set's `r`-th channel. BatchNorm: one row per run, one run per
/// sample of the ghost batch. GroupNorm: one run of `C/G` rows.
@usableFromInline
struct SetBatch {
    @usableFromInline let offset: Int
    @usableFromInline let sets: Int
    @usableFromInline let setStride: Int
    @usableFromInline let pieces: Int
    @usableFromInline let rows: Int
    @usableFromInline let m: Int
    @usableFromInline let pieceStride: Int

    /// Floats per run.
    @usableFromInline var run: Int { rows * m }
}

extension NormalizationGeometry {
    /// Sets per batch of ``forEachSetBatch(work:_:)``: as many as fit in 16,384 floats (64 KB, so a batch read by the
    /// statistics pass is still in L1/L2 when the apply pass reads it again; measured best on this project's
    /// machine, `normkit bench` for 8,192 to 65,536), rounded down to a power of two that divides a sample block's
    /// sets, so that batches tile every block exactly.
    var setsPerBatch: Int { setsPerBatch(within: 16384) }

    /// The most sets that fit in `floats` floats (at least one), a power of two that divides a sample block's sets.
    private func setsPerBatch(within floats: Int) -> Int {
        var batch = 1
        while batch * 2 * elementsPerSet <= floats && channelBlocks % (batch * 2) == 0 { batch *= 2 }
        return batch
    }

    /// Sets per batch of the training forward (moments, coefficients, apply) with `activation` fused: ``setsPerBatch``,
    /// except for rows of more than 512 positions (sets of more than 512 floats, which the moments kernel takes one at
    /// a time: `sets_moments`, both passes while the set is in L1) under an apply that memory bounds (identity, ReLU):
    /// those go in batches of at most 4,096 floats (16 KB), so that the apply finds them in L1 too. In a C model with
    /// these kernels (`scripts/set_batch_probe.c`) the forward on GN (32, 32, 28, 28) NCHW (sets of 784 floats) took
    /// 0.79–0.82x the time of 64 KB batches, (16, 32, 56, 56) 0.81–0.83x, batches of 2,048 or 8,192 floats gained less;
    /// SiLU's apply, bound by its arithmetic, took 0.97–1.08x in the smaller batches, so it keeps the larger ones
    /// (PERFORMANCE.md, session 48). Short rows keep them too: in the same model GN (2, 2048, 7, 7)'s sets of 64 rows
    /// of 49 floats took 1.03–1.04x the time one set a batch (session 48's rule, by the set's size) that they take four
    /// a batch, (8, 512, 7, 7)'s sets of 16 rows 0.97–1.05x four a batch against sixteen (session 49); since the apply
    /// walks such rows as one run (session 50), (2, 2048, 7, 7) takes 0.99–1.01x at one to four sets a batch against
    /// sixteen and (8, 512, 7, 7) 0.98x at four, 1.12x at two, 1.43x at one. The backward's rule
    /// (``backwardSetsPerBatch``) was already by the row.
    func forwardSetsPerBatch(activation: FusedActivation) -> Int {
        positions > 512 && activation != .silu ? setsPerBatch(within: 4096) : setsPerBatch
    }

    /// Sets per batch of the backward (gradient sums, coefficients, gradient apply) with `activation` fused:
    /// ``setsPerBatch``, except for rows of more than 512 positions, which the gradient sums kernel takes one at a time
    /// (`sets_gradient_sums_body`), without SiLU: those go in batches of at most 2,048 floats of each input (`dy` and
    /// `x`), so that the apply finds them in L1. In a C model with these kernels (`scripts/set_batch_probe.c`) GN's
    /// backward on (32, 32, 28, 28) NCHW took 0.73–0.75x the time of 64 KB batches, (16, 32, 56, 56) 0.78–0.86x. With
    /// SiLU the model saw 0.95–1.0x, but in the layer the larger batches took 0.92–0.99x the smaller ones' time
    /// (forward+backward, alternated), so SiLU keeps them (PERFORMANCE.md, session 48).
    func backwardSetsPerBatch(activation: FusedActivation?) -> Int {
        positions > 512 && activation != .silu ? setsPerBatch(within: 2048) : setsPerBatch
    }

    /// Sets `first..<first + count`, which must lie in one sample block (consecutive channel blocks).
    @inline(__always)
    func batch(ofSets first: Int, count: Int) -> SetBatch {
        let b = first / channelBlocks, c0 = (first % channelBlocks) * channelsPerSet
        assert((first + count - 1) / channelBlocks == b, "a set batch crosses a sample block")
        return SetBatch(
            offset: (b * samplesPerSet * channels + c0) * positions, sets: count,
            setStride: channelsPerSet * positions, pieces: samplesPerSet, rows: channelsPerSet,
            m: positions, pieceStride: channels * positions)
    }

    /// Calls `body(first, count)` on every batch of `perBatch` (by default ``setsPerBatch``) consecutive sets (which
    /// never crosses a sample block), the batches split over threads (`work` as in
    /// ``Parallelism/forEachRange(count:work:minimumWork:granule:_:)``) only between batches: each batch is the same
    /// whatever the split, and the kernels, whose 16-wide reductions group the sets and rows of a batch, give every set
    /// the same bits on any thread count (and whether a fused activation's cost makes a call use one thread or two).
    @inline(__always)
    func forEachSetBatch(work: Int, setsPerBatch perBatch: Int? = nil, _ body: (Int, Int) -> Void) {
        let perBatch = perBatch ?? setsPerBatch
        Parallelism.forEachRange(count: setCount, work: work, granule: perBatch) { sets in
            for first in stride(from: sets.lowerBound, to: sets.upperBound, by: perBatch) {
                body(first, Swift.min(perBatch, sets.upperBound - first))
            }
        }
    }
}

/// Per set: `mean[j]` and the centred sum of squares `m2[j] = Σ(x−mean)²`, by the shifted two-pass method (the
/// float mean `k` of a first pass, then `Σ(x−k)` and `Σ(x−k)²`, corrected for the rounding of `k`). Both passes
/// read the set: callers use it on sets that stay in cache (``NormalizationKernels/statisticsChunk``).
@inline(__always) @usableFromInline
func setMoments(
    mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Float>, _ batch: SetBatch
) {
    if nativeKernels {
        nk_sets_moments(x, batch.sets, batch.setStride, batch.pieces, batch.run, batch.pieceStride, mean, m2)
        return
    }
    let inverse = 1 / Double(batch.pieces * batch.run)
    for j in 0..<batch.sets {
        let set = x + j * batch.setStride
        var total = 0.0
        for p in 0..<batch.pieces { total += portableRowSum(set + p * batch.pieceStride, batch.run) }
        let k = Float(total * inverse)
        var d1 = 0.0, d2 = 0.0
        for p in 0..<batch.pieces {
            let (a, q) = portableRowCenteredSums(set + p * batch.pieceStride, batch.run, center: k)
            d1 += a
            d2 += q
        }
        mean[j] = Double(k) + d1 * inverse
        m2[j] = max(0, d2 - d1 * d1 * inverse)
    }
}

/// `y = act(a[j·rows + r]·(x − k[j]) + b[j·rows + r])` over the batch (`y` may alias `x`); `store`: how the native
/// kernel writes `y` (`NK_STORE_CACHED` or `NK_STORE_STREAMING`, ``NormalizationGeometry/outputStore``).
@inline(__always) @usableFromInline
func setAffineCentered(
    _ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ batch: SetBatch,
    center k: UnsafePointer<Float>, scale a: UnsafePointer<Float>, shift b: UnsafePointer<Float>,
    activation: FusedActivation = .identity, store: Int32 = Int32(NK_STORE_CACHED)
) {
    if nativeKernels {
        nk_sets_affine_centered(
            y, x, batch.sets, batch.setStride, batch.pieces, batch.rows, batch.m,
            batch.pieceStride, k, a, b, activation.kernelCode, store)
        return
    }
    for j in 0..<batch.sets {
        for p in 0..<batch.pieces {
            for r in 0..<batch.rows {
                let o = j * batch.setStride + p * batch.pieceStride + r * batch.m, c = j * batch.rows + r
                portableRowAffineCentered(y + o, x + o, batch.m, center: k[j], scale: a[c], shift: b[c])
                portableActivate(y + o, batch.m, activation)
            }
        }
    }
}

/// Per row: `s1[j·rows + i·outStride + r] = Σ dy` and `s2[…] = Σ dy·(x − k[j])` (row `r` of run `i` of set `j`).
/// With a fused activation (`activation`'s arrays and `dz` already moved to the batch's first coefficient and
/// element) the sums are of `dz = dy·act'(z)`, which is also written out.
@inline(__always)
func setGradientSums(
    _ s1: UnsafeMutablePointer<Double>, _ s2: UnsafeMutablePointer<Double>, outStride: Int,
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ batch: SetBatch,
    center k: UnsafePointer<Float>, activation: ActivationBackward? = nil
) {
    if nativeKernels {
        withKernelActivation(activation, coefficient: 0, element: 0) {
            nk_sets_gradient_sums(
                s1, s2, outStride, dy, x, batch.sets, batch.setStride, batch.pieces, batch.rows,
                batch.m, batch.pieceStride, k, $0)
        }
        return
    }
    for j in 0..<batch.sets {
        for p in 0..<batch.pieces {
            for r in 0..<batch.rows {
                let o = j * batch.setStride + p * batch.pieceStride + r * batch.m
                let out = j * batch.rows + p * outStride + r
                if let activation {
                    activation.portableRow(
                        dy: dy + o, x: x + o, count: batch.m, coefficient: j * batch.rows + r, element: o)
                    (s1[out], s2[out]) = portableRowGradientSums(activation.dz + o, x + o, batch.m, center: k[j])
                } else {
                    (s1[out], s2[out]) = portableRowGradientSums(dy + o, x + o, batch.m, center: k[j])
                }
            }
        }
    }
}

/// `dx = p[j·rows + r]·dy + q[j]·(x − k[j]) + r[j]` over the batch (`store` as in ``setAffineCentered``).
@inline(__always) @usableFromInline
func setGradientApply(
    _ dx: UnsafeMutablePointer<Float>, _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
    _ batch: SetBatch, p: UnsafePointer<Float>, q: UnsafePointer<Float>, r: UnsafePointer<Float>,
    center k: UnsafePointer<Float>, store: Int32 = Int32(NK_STORE_CACHED)
) {
    if nativeKernels {
        nk_sets_gradient_apply(
            dx, dy, x, batch.sets, batch.setStride, batch.pieces, batch.rows, batch.m, batch.pieceStride, p, q, r, k,
            store)
        return
    }
    for j in 0..<batch.sets {
        for piece in 0..<batch.pieces {
            for row in 0..<batch.rows {
                let o = j * batch.setStride + piece * batch.pieceStride + row * batch.m
                portableRowGradientApply(
                    dx + o, dy + o, x + o, batch.m, p: p[j * batch.rows + row], q: q[j], r: r[j], center: k[j])
            }
        }
    }
}
