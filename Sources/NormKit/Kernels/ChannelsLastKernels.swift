import CNormKitKernels

// The channels-last (NHWC) paths of NormalizationKernels on the native kernels: one sample's M positions are M rows
// of C contiguous floats, and the C kernels vectorise across channels (nk_cl_*, KernelBody.h). Reductions split the
// batch over threads; the applies split the rows (positions) of the batch, so a batch of 1 uses every core too.
// Per-channel rows of per-set values (k, q, r) are built in stack scratch of C floats per call.
// The portable loops in NormalizationKernels.swift remain the reference and the path without native kernels.

extension NormalizationGeometry {
    /// `Σ values[n·C + c]` over the (n, c) of set `s` (its samples × its channels).
    @inline(__always)
    func sumOverSet(_ s: Int, _ values: UnsafePointer<Double>) -> Double {
        let n0 = (s / channelBlocks) * samplesPerSet, c0 = (s % channelBlocks) * channelsPerSet
        var total = 0.0
        for n in n0..<(n0 + samplesPerSet) { for ch in c0..<(c0 + channelsPerSet) { total += values[n * channels + ch] } }
        return total
    }
}

extension NormalizationKernels {
    /// Whether the channels-last native kernels run (the same switch as the row kernels).
    @inline(__always) static var nativeChannelsLast: Bool { nativeKernelsFlag.pointee }

    /// Channels-last statistics, shifted two-pass: per-(n, c) `Σx` give the set means μ; then per-(n, c) `Σ(x−k)`
    /// and `Σ(x−k)²` with `k = Float(μ)`, and per set `Σ(x−μ)² = Σ(x−k)² − (Σ(x−k))²/count`.
    static func nativeStatisticsChannelsLast(mean: UnsafeMutablePointer<Double>,
                                             variance: UnsafeMutablePointer<Double>, x: UnsafePointer<Float>,
                                             scratch: UnsafeMutablePointer<Double>, geometry g: NormalizationGeometry) {
        let c = g.channels, m = g.positions, count = Double(g.elementsPerSet)
        let s1 = scratch, s2 = scratch + g.batch * c
        Parallelism.forEachRange(count: g.batch, work: g.elementCount) { samples in
            for n in samples {
                (s1 + n * c).update(repeating: 0, count: c)
                (s2 + n * c).update(repeating: 0, count: c)
                nk_cl_centered_sums(s1 + n * c, s2 + n * c, x + n * m * c, m, c, nil)
            }
        }
        for s in 0..<g.setCount { mean[s] = g.sumOverSet(s, s1) / count }
        Parallelism.forEachRange(count: g.batch, work: g.elementCount) { samples in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: c) { k in
                for n in samples {
                    for ch in 0..<c { k[ch] = Float(mean[g.set(n: n, c: ch)]) }
                    (s1 + n * c).update(repeating: 0, count: c)
                    (s2 + n * c).update(repeating: 0, count: c)
                    nk_cl_centered_sums(s1 + n * c, s2 + n * c, x + n * m * c, m, c, k.baseAddress!)
                }
            }
        }
        for s in 0..<g.setCount {
            let shifted = g.sumOverSet(s, s1)
            variance[s] = max(0, (g.sumOverSet(s, s2) - shifted * shifted / count) / count)
        }
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

    /// `y = scale[b,c]·(x − center[b,c]) + shift[b,c]` (center nil: 0), rows of the batch split over threads.
    static func nativeApplyChannelsLast(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                                        center: UnsafePointer<Float>?, scale: UnsafePointer<Float>,
                                        shift: UnsafePointer<Float>, geometry g: NormalizationGeometry) {
        let c = g.channels, m = g.positions
        Parallelism.forEachRange(count: g.batch * m, work: g.elementCount) { rows in
            forEachSampleRun(rows, positions: m) { n, first, count in
                let k0 = g.coefficient(n: n, c: 0)
                nk_cl_affine_centered(y + first * c, x + first * c, count, c, center.map { $0 + k0 }, scale + k0,
                                      shift + k0)
            }
        }
    }

    /// Per-(n, c) `Σ dy` and `Σ dy·(x − center[set])` (moved from the float `k = Float(center)` to the exact centre).
    static func nativeGradientSumsChannelsLast(sumDy: UnsafeMutablePointer<Double>,
                                               sumDyCentered: UnsafeMutablePointer<Double>, dy: UnsafePointer<Float>,
                                               x: UnsafePointer<Float>, center: UnsafePointer<Double>,
                                               geometry g: NormalizationGeometry) {
        let c = g.channels, m = g.positions
        Parallelism.forEachRange(count: g.batch, work: 2 * g.elementCount) { samples in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: c) { k in
                for n in samples {
                    for ch in 0..<c { k[ch] = Float(center[g.set(n: n, c: ch)]) }
                    let a1 = sumDy + n * c, a2 = sumDyCentered + n * c
                    a1.update(repeating: 0, count: c)
                    a2.update(repeating: 0, count: c)
                    nk_cl_gradient_sums(a1, a2, dy + n * m * c, x + n * m * c, m, c, k.baseAddress!)
                    for ch in 0..<c { a2[ch] -= (center[g.set(n: n, c: ch)] - Double(k[ch])) * a1[ch] }
                }
            }
        }
    }

    /// `dx = scale[b,c]·dy + slope[set]·(x − center[set]) + offset[set]`, rows of the batch split over threads.
    static func nativeGradientApplyChannelsLast(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                                x: UnsafePointer<Float>, center: UnsafePointer<Double>,
                                                scale: UnsafePointer<Float>, slope: UnsafePointer<Float>,
                                                offset: UnsafePointer<Float>, geometry g: NormalizationGeometry) {
        let c = g.channels, m = g.positions
        Parallelism.forEachRange(count: g.batch * m, work: 2 * g.elementCount) { rows in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 3 * c) { rowValues in
                let k = rowValues.baseAddress!, q = k + c, r = q + c
                forEachSampleRun(rows, positions: m) { n, first, count in
                    for ch in 0..<c {
                        let s = g.set(n: n, c: ch)
                        k[ch] = Float(center[s])
                        q[ch] = slope[s]
                        // The rows are centred on the float k; the offset absorbs the difference to the exact centre.
                        r[ch] = Float(Double(offset[s]) - Double(slope[s]) * (center[s] - Double(k[ch])))
                    }
                    let o = first * c
                    nk_cl_gradient_apply(dx + o, dy + o, x + o, count, c, scale + g.coefficient(n: n, c: 0), q, r, k)
                }
            }
        }
    }
}
