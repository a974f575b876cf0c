/// ``Conv2d``'s im2col engine on one thread's images: im2col writes the patch matrix of a group of images,
/// one GEMM per group computes the outputs (forward) or the gradients (backward), col2im scatters `dx` back.
extension Conv2d {
    static func forwardImages(
        _ images: Range<Int>, group: Int, _ g: ConvolutionGeometry,
        x: UnsafePointer<Float>, weights: UnsafePointer<Float>, bias: [Float]?,
        y: UnsafeMutablePointer<Float>, workspace: ConvolutionWorkspace
    ) {
        let p = g.positions, o = g.filters, inPlane = g.channels * g.height * g.width, outImage = o * p
        let patches = workspace.patches.pointer, staging = workspace.staging.pointer
        var n0 = images.lowerBound
        while n0 < images.upperBound {
            let m = min(group, images.upperBound - n0), columns = m * p
            for j in 0..<m {
                im2col(g, x + (n0 + j) * inPlane, patches + j * p, rowStride: columns)
            }
            if m == 1 {
                BLAS.sgemm(
                    m: o, n: p, k: g.fanIn, a: weights, lda: g.fanIn, b: patches, ldb: p, c: y + n0 * outImage,
                    ldc: p)
            } else {
                BLAS.sgemm(
                    m: o, n: columns, k: g.fanIn, a: weights, lda: g.fanIn, b: patches, ldb: columns,
                    c: staging, ldc: columns)
                for j in 0..<m {
                    let image = y + (n0 + j) * outImage
                    for f in 0..<o {
                        (image + f * p).update(from: staging + f * columns + j * p, count: p)
                    }
                }
            }
            if let bias {
                for j in 0..<m {
                    let image = y + (n0 + j) * outImage
                    for f in 0..<o {
                        let row = image + f * p, b = bias[f]
                        for i in 0..<p { row[i] += b }
                    }
                }
            }
            n0 += m
        }
    }

    static func backwardImages(
        _ images: Range<Int>, group: Int, _ g: ConvolutionGeometry,
        x: UnsafePointer<Float>, weights: UnsafePointer<Float>,
        dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?,
        workspace: ConvolutionWorkspace
    ) {
        let p = g.positions, o = g.filters, inPlane = g.channels * g.height * g.width, outImage = o * p
        let patches = workspace.patches.pointer, staging = workspace.staging.pointer
        let dw = workspace.weightGradient.pointer, db = workspace.biasGradient.pointer
        db.update(repeating: 0, count: o)
        var first = true
        var n0 = images.lowerBound
        while n0 < images.upperBound {
            let m = min(group, images.upperBound - n0), columns = m * p
            for j in 0..<m {
                im2col(g, x + (n0 + j) * inPlane, patches + j * p, rowStride: columns)
            }
            // dY of the group as one `out × columns` matrix.
            let dyGroup: UnsafePointer<Float>
            if m == 1 {
                dyGroup = dy + n0 * outImage
            } else {
                for j in 0..<m {
                    let image = dy + (n0 + j) * outImage
                    for f in 0..<o { (staging + f * columns + j * p).update(from: image + f * p, count: p) }
                }
                dyGroup = UnsafePointer(staging)
            }
            // dW (+)= dY · patchesᵀ
            BLAS.sgemm(
                transposeB: true, m: o, n: g.fanIn, k: columns, a: dyGroup, lda: columns, b: patches,
                ldb: columns, beta: first ? 0 : 1, c: dw, ldc: g.fanIn)
            first = false
            for f in 0..<o {
                let row = dyGroup + f * columns
                var total: Float = 0
                for i in 0..<columns { total += row[i] }
                db[f] += total
            }
            if let dx {
                // dPatches = Wᵀ · dY, written over the patches, then scattered back (col2im).
                BLAS.sgemm(
                    transposeA: true, m: g.fanIn, n: columns, k: o, a: weights, lda: g.fanIn, b: dyGroup,
                    ldb: columns, c: patches, ldc: columns)
                for j in 0..<m {
                    col2im(g, patches + j * p, rowStride: columns, into: dx + (n0 + j) * inPlane)
                }
            }
            n0 += m
        }
    }

    /// The output positions `[lower, upper)` along one axis whose input index `out·s − p + tap` is inside
    /// `0..<inputSize`.
    @inline(__always)
    private static func validRange(
        tap: Int, inputSize: Int, outputSize: Int, stride s: Int, padding p: Int
    )
        -> (Int, Int)
    {
        let shift = p - tap
        let lower = shift <= 0 ? 0 : (shift + s - 1) / s
        let top = inputSize - 1 + p - tap
        let upper = top < 0 ? 0 : min(outputSize, top / s + 1)
        return (min(lower, upper), upper)
    }

    /// Writes one image's `(C·k·k) × positions` patch matrix (row `(c·k + ki)·k + kj`, column `oh·W' + ow`)
    /// with rows `rowStride` apart.
    private static func im2col(
        _ g: ConvolutionGeometry, _ x: UnsafePointer<Float>,
        _ patches: UnsafeMutablePointer<Float>, rowStride: Int
    ) {
        let k = g.kernel, s = g.stride, pad = g.padding, h = g.height, w = g.width
        let ho = g.outHeight, wo = g.outWidth
        for c in 0..<g.channels {
            let plane = x + c * h * w
            for ki in 0..<k {
                let (ohLo, ohHi) = validRange(tap: ki, inputSize: h, outputSize: ho, stride: s, padding: pad)
                for kj in 0..<k {
                    let (owLo, owHi) = validRange(tap: kj, inputSize: w, outputSize: wo, stride: s, padding: pad)
                    let row = patches + ((c * k + ki) * k + kj) * rowStride
                    if ohLo > 0 { row.update(repeating: 0, count: ohLo * wo) }
                    if ohHi < ho { (row + ohHi * wo).update(repeating: 0, count: (ho - ohHi) * wo) }
                    let width = owHi - owLo
                    for oh in ohLo..<ohHi {
                        let d = row + oh * wo
                        if owLo > 0 { d.update(repeating: 0, count: owLo) }
                        if owHi < wo { (d + owHi).update(repeating: 0, count: wo - owHi) }
                        let src = plane + (oh * s - pad + ki) * w + (owLo * s - pad + kj), dst = d + owLo
                        if s == 1 {
                            dst.update(from: src, count: width)
                        } else {
                            for i in 0..<width { dst[i] = src[i * s] }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of ``im2col(_:_:_:rowStride:)``: overwrites one image's `dx` with the sum of the patch
    /// gradients over every window that read each input element.
    private static func col2im(
        _ g: ConvolutionGeometry, _ patches: UnsafePointer<Float>, rowStride: Int,
        into dx: UnsafeMutablePointer<Float>
    ) {
        let k = g.kernel, s = g.stride, pad = g.padding, h = g.height, w = g.width, wo = g.outWidth
        dx.update(repeating: 0, count: g.channels * h * w)
        for c in 0..<g.channels {
            let plane = dx + c * h * w
            for ki in 0..<k {
                let (ohLo, ohHi) = validRange(tap: ki, inputSize: h, outputSize: g.outHeight, stride: s, padding: pad)
                for kj in 0..<k {
                    let (owLo, owHi) = validRange(tap: kj, inputSize: w, outputSize: wo, stride: s, padding: pad)
                    let row = patches + ((c * k + ki) * k + kj) * rowStride
                    let width = owHi - owLo
                    for oh in ohLo..<ohHi {
                        let src = row + oh * wo + owLo
                        let dst = plane + (oh * s - pad + ki) * w + (owLo * s - pad + kj)
                        if s == 1 {
                            for i in 0..<width { dst[i] += src[i] }
                        } else {
                            for i in 0..<width { dst[i * s] += src[i] }
                        }
                    }
                }
            }
        }
    }
}
