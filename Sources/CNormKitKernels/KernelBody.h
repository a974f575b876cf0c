/*
 * The one body of the native row and set kernels (the scheme: KernelTable.h). Not a header to include anywhere
 * else: KernelsAVX512.c and KernelsAVX2.c each include it once, after defining the vector layer:
 *
 *   NK_TARGET          the `target` attribute string ("avx512f", "avx2,fma")
 *   NK_TABLE           the name of the exported nk_kernel_table; NK_LEVEL its level
 *   NK_LANES, vf       floats per vector, the vector type
 *   NK_PS(op)          the intrinsic _mm…_<op>_ps (setzero, set1, loadu, storeu, add, sub, mul, fmadd)
 *   vmask, vmask_first(n), vload_part(m, p), vstore_part(p, m, v), vkeep(m, v)
 *                      the first n (0 < n < NK_LANES) lanes: loads that read and stores that write no other
 *                      element, and zeroing of the other lanes
 *   vreduce(v)         the float sum of v's lanes
 *   vreduce_lanes(v)   lane t = the sum of the lanes of v[t], for an array of NK_LANES vectors (a transposing
 *                      reduction: one for NK_LANES sums instead of NK_LANES horizontal sums)
 */
#define vzero NK_PS(setzero)
#define vset1 NK_PS(set1)
#define vload NK_PS(loadu)
#define vstore NK_PS(storeu)
#define vadd NK_PS(add)
#define vsub NK_PS(sub)
#define vmul NK_PS(mul)
#define vfma NK_PS(fmadd) /* vfma(a, b, c) = a·b + c */

#define BLOCK NK_BLOCK_LENGTH
#define STEP (4 * NK_LANES) /* one step of the long loops: four vectors into four accumulators */

// ---- Runs: n ≤ BLOCK contiguous floats added into the caller's float accumulators ----------------------------
// Long runs use four independent accumulators (an add or FMA has 3–4 cycles of latency; one chain would cap a
// core at a vector every few cycles), folded into the caller's before returning; the last n mod NK_LANES
// elements go in as one partial vector.

// s + Σ x.
NK_INLINE vf addrun(vf s, const float *x, long n) {
    long i = 0;
    if (n >= STEP) {
        vf s1 = vzero(), s2 = vzero(), s3 = vzero();
        for (; i + STEP <= n; i += STEP) {
            s = vadd(s, vload(x + i));
            s1 = vadd(s1, vload(x + i + NK_LANES));
            s2 = vadd(s2, vload(x + i + 2 * NK_LANES));
            s3 = vadd(s3, vload(x + i + 3 * NK_LANES));
        }
        s = vadd(vadd(s, s1), vadd(s2, s3));
    }
    for (; i + NK_LANES <= n; i += NK_LANES) s = vadd(s, vload(x + i));
    if (i < n) s = vadd(s, vload_part(vmask_first(n - i), x + i));
    return s;
}

// With d = x − k: *s += Σ d, *q += Σ d² (centred sums: grad = 0, dy unused) or *s += Σ dy, *q += Σ dy·d
// (gradient sums: grad = 1). Every caller passes grad as a literal and the function is always inlined, so each
// gets a loop without the test; the same holds for the other `grad` flags below.
NK_INLINE void pairrun(const int grad, vf *s, vf *q, const float *dy, const float *x, long n, vf kv) {
    vf s0 = *s, q0 = *q;
    long i = 0;
    if (n >= STEP) {
        vf s1 = vzero(), q1 = vzero(), s2 = vzero(), q2 = vzero(), s3 = vzero(), q3 = vzero();
        for (; i + STEP <= n; i += STEP) {
            vf d0 = vsub(vload(x + i), kv), d1 = vsub(vload(x + i + NK_LANES), kv),
               d2 = vsub(vload(x + i + 2 * NK_LANES), kv), d3 = vsub(vload(x + i + 3 * NK_LANES), kv);
            vf g0 = grad ? vload(dy + i) : d0, g1 = grad ? vload(dy + i + NK_LANES) : d1,
               g2 = grad ? vload(dy + i + 2 * NK_LANES) : d2, g3 = grad ? vload(dy + i + 3 * NK_LANES) : d3;
            s0 = vadd(s0, g0); q0 = vfma(g0, d0, q0);
            s1 = vadd(s1, g1); q1 = vfma(g1, d1, q1);
            s2 = vadd(s2, g2); q2 = vfma(g2, d2, q2);
            s3 = vadd(s3, g3); q3 = vfma(g3, d3, q3);
        }
        s0 = vadd(vadd(s0, s1), vadd(s2, s3));
        q0 = vadd(vadd(q0, q1), vadd(q2, q3));
    }
    for (; i + NK_LANES <= n; i += NK_LANES) {
        vf d = vsub(vload(x + i), kv), g = grad ? vload(dy + i) : d;
        s0 = vadd(s0, g);
        q0 = vfma(g, d, q0);
    }
    if (i < n) {
        vmask m = vmask_first(n - i);
        vf d = vkeep(m, vsub(vload_part(m, x + i), kv)), g = grad ? vload_part(m, dy + i) : d;
        s0 = vadd(s0, g);
        q0 = vfma(g, d, q0);
    }
    *s = s0;
    *q = q0;
}

// ---- Row kernels ------------------------------------------------------------------------------------------
NK_FN double row_sum(const float *x, long n) {
    double total = 0;
    for (long start = 0; start < n; start += BLOCK)
        total += (double)vreduce(addrun(vzero(), x + start, n - start < BLOCK ? n - start : BLOCK));
    return total;
}

// The pair sums of pairrun over a row of any length, float lanes flushed into double totals every BLOCK.
NK_INLINE void row_pair_sums(const int grad, const float *dy, const float *x, long n, float k, double *s1,
                             double *s2) {
    double t1 = 0, t2 = 0;
    const vf kv = vset1(k);
    for (long start = 0; start < n; start += BLOCK) {
        vf s = vzero(), q = vzero();
        pairrun(grad, &s, &q, grad ? dy + start : NULL, x + start, n - start < BLOCK ? n - start : BLOCK, kv);
        t1 += (double)vreduce(s);
        t2 += (double)vreduce(q);
    }
    *s1 = t1;
    *s2 = t2;
}

NK_FN void row_centered_sums(const float *x, long n, float k, double *s1, double *s2) {
    row_pair_sums(0, NULL, x, n, k, s1, s2);
}

NK_FN void row_gradient_sums(const float *dy, const float *x, long n, float k, double *s1, double *s2) {
    row_pair_sums(1, dy, x, n, k, s1, s2);
}

// out = p·dy + (q·(x − k) + r) (grad = 1), or q·(x − k) + r (grad = 0: the affine a·(x − k) + b).
NK_INLINE void row_apply(const int grad, float *out, const float *dy, const float *x, long n, float p, float q,
                         float r, float k) {
    const vf pv = vset1(p), qv = vset1(q), rv = vset1(r), kv = vset1(k);
    long i = 0;
    for (; i + NK_LANES <= n; i += NK_LANES) {
        vf t = vfma(vsub(vload(x + i), kv), qv, rv);
        vstore(out + i, grad ? vfma(vload(dy + i), pv, t) : t);
    }
    if (i < n) {
        vmask m = vmask_first(n - i);
        vf t = vfma(vsub(vload_part(m, x + i), kv), qv, rv);
        vstore_part(out + i, m, grad ? vfma(vload_part(m, dy + i), pv, t) : t);
    }
}

NK_FN void row_affine_centered(float *y, const float *x, long n, float k, float a, float b) {
    row_apply(0, y, NULL, x, n, 0, a, b, k);
}

NK_FN void row_gradient_apply(float *dx, const float *dy, const float *x, long n, float p, float q, float r,
                              float k) {
    row_apply(1, dx, dy, x, n, p, q, r, k);
}

// ---- Set kernels (layout: include/NormKitRowKernels.h) ------------------------------------------------------
// Sets short enough to sit in one float block (≤ BLOCK floats, rows ≤ BLOCK) go NK_LANES at a time: each set or
// row accumulates in its own vector and one transposing reduction (vreduce_lanes) turns NK_LANES vectors into
// NK_LANES sums, instead of NK_LANES separate horizontal sums each ending a dependency chain.

// Mean and Σ(x − mean)² from the float mean k and the sums d1 = Σ(x − k), d2 = Σ(x − k)² over 1/inverse values:
// Σ(x − k) is not exactly 0 because k is rounded to float, so correct for it.
static inline void finish_moments(float k, double d1, double d2, double inverse, double *mean, double *m2) {
    *mean = (double)k + d1 * inverse;
    double centred = d2 - d1 * d1 * inverse;
    *m2 = centred > 0 ? centred : 0;
}

// One pass over a set of any size, float lanes flushed into double totals every BLOCK elements:
// t[0] = Σ x without kv; with *kv = k, t[0] = Σ(x − k), t[1] = Σ(x − k)².
NK_INLINE void set_pass(const float *x, long pieces, long run, long stride, const vf *kv, double t[2]) {
    long filled = 0;
    vf s = vzero(), q = vzero();
    t[0] = t[1] = 0;
    for (long p = 0; p < pieces; p++)
        for (long i = 0; i < run;) {
            long n = run - i < BLOCK - filled ? run - i : BLOCK - filled;
            if (kv) pairrun(0, &s, &q, NULL, x + p * stride + i, n, *kv);
            else s = addrun(s, x + p * stride + i, n);
            i += n;
            filled += n;
            if (filled == BLOCK) {
                t[0] += (double)vreduce(s);
                t[1] += kv ? (double)vreduce(q) : 0;
                s = q = vzero();
                filled = 0;
            }
        }
    t[0] += (double)vreduce(s);
    t[1] += kv ? (double)vreduce(q) : 0;
}

// One set of any size: the shifted two-pass method.
NK_FN void set_moments(const float *x, long pieces, long run, long stride, double *mean, double *m2) {
    double total[2], d[2];
    set_pass(x, pieces, run, stride, NULL, total);
    const double inverse = 1 / ((double)pieces * (double)run);
    const float k = (float)(total[0] * inverse);
    const vf kv = vset1(k);
    set_pass(x, pieces, run, stride, &kv, d);
    finish_moments(k, d[0], d[1], inverse, mean, m2);
}

NK_FN void sets_moments(const float *x, long sets, long set_stride, long pieces, long run, long piece_stride,
                        double *mean, double *m2) {
    long j = 0;
    if (pieces * run <= BLOCK) {
        const double inverse = 1 / ((double)pieces * (double)run);
        for (; j + NK_LANES <= sets; j += NK_LANES) {
            const float *base = x + j * set_stride;
            vf acc[NK_LANES], s[NK_LANES], q[NK_LANES];
            for (int t = 0; t < NK_LANES; t++) {
                acc[t] = vzero();
                for (long p = 0; p < pieces; p++) acc[t] = addrun(acc[t], base + t * set_stride + p * piece_stride, run);
            }
            float k[NK_LANES], d1[NK_LANES], d2[NK_LANES];
            vstore(k, vmul(vreduce_lanes(acc), vset1((float)inverse)));
            for (int t = 0; t < NK_LANES; t++) {
                s[t] = q[t] = vzero();
                for (long p = 0; p < pieces; p++)
                    pairrun(0, &s[t], &q[t], NULL, base + t * set_stride + p * piece_stride, run, vset1(k[t]));
            }
            vstore(d1, vreduce_lanes(s));
            vstore(d2, vreduce_lanes(q));
            for (int t = 0; t < NK_LANES; t++) finish_moments(k[t], d1[t], d2[t], inverse, mean + j + t, m2 + j + t);
        }
    }
    for (; j < sets; j++) set_moments(x + j * set_stride, pieces, run, piece_stride, mean + j, m2 + j);
}

NK_FN void sets_gradient_sums(double *s1, double *s2, long out_stride, const float *dy, const float *x, long sets,
                              long set_stride, long pieces, long rows, long m, long piece_stride, const float *k) {
    const long total = sets * pieces * rows;
    long i = 0;
    if (m <= BLOCK) {
        // Rows in (set, piece, row) order, NK_LANES at a time.
        long j = 0, p = 0, r = 0;
        for (; i + NK_LANES <= total; i += NK_LANES) {
            vf a[NK_LANES], q[NK_LANES];
            long out[NK_LANES];
            for (int t = 0; t < NK_LANES; t++) {
                long o = j * set_stride + p * piece_stride + r * m;
                out[t] = j * rows + p * out_stride + r;
                a[t] = q[t] = vzero();
                pairrun(1, &a[t], &q[t], dy + o, x + o, m, vset1(k[j]));
                if (++r == rows) { r = 0; if (++p == pieces) { p = 0; j++; } }
            }
            float f1[NK_LANES], f2[NK_LANES];
            vstore(f1, vreduce_lanes(a));
            vstore(f2, vreduce_lanes(q));
            for (int t = 0; t < NK_LANES; t++) {
                s1[out[t]] = (double)f1[t];
                s2[out[t]] = (double)f2[t];
            }
        }
    }
    for (; i < total; i++) {
        long j = i / (pieces * rows), p = (i / rows) % pieces, r = i % rows;
        long o = j * set_stride + p * piece_stride + r * m, out = j * rows + p * out_stride + r;
        row_pair_sums(1, dy + o, x + o, m, k[j], s1 + out, s2 + out);
    }
}

// Row by row, c = j·rows + r: y = a[c]·(x − k[j]) + b[c] (grad = 0, q = a and r = b per row), or
// dx = p[c]·dy + q[j]·(x − k[j]) + r[j] (grad = 1).
NK_INLINE void sets_apply(const int grad, float *out, const float *dy, const float *x, long sets, long set_stride, long pieces,
                          long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                          const float *k) {
    for (long j = 0; j < sets; j++)
        for (long i = 0; i < pieces; i++)
            for (long row = 0; row < rows; row++) {
                long o = j * set_stride + i * piece_stride + row * m, c = j * rows + row;
                if (grad) row_apply(1, out + o, dy + o, x + o, m, p[c], q[j], r[j], k[j]);
                else row_apply(0, out + o, NULL, x + o, m, 0, q[c], r[c], k[j]);
            }
}

NK_FN void sets_affine_centered(float *y, const float *x, long sets, long set_stride, long pieces, long rows,
                                long m, long piece_stride, const float *k, const float *a, const float *b) {
    sets_apply(0, y, NULL, x, sets, set_stride, pieces, rows, m, piece_stride, NULL, a, b, k);
}

NK_FN void sets_gradient_apply(float *dx, const float *dy, const float *x, long sets, long set_stride, long pieces,
                               long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                               const float *k) {
    sets_apply(1, dx, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k);
}

// ---- Channels-last (NHWC): one sample's m positions are m rows of c contiguous floats ------------------------
// Each row's channels go in vectors, CL_WIDTH channels (4 vectors) at a time with coefficients and accumulators in
// registers; wider rows are cut into tiles of rows that stay in L1 while every CL_WIDTH-channel slice sweeps them,
// so memory is read once, in order. Each float lane adds at most CL_ROWS positions before its total goes to double.
#define CL_VECTORS 4
#define CL_WIDTH (CL_VECTORS * NK_LANES)
#define CL_MAX 1024
#define CL_ROWS 64

// Vector v of a run of nv vectors whose last one has `tail` lanes (0: full), loaded or stored with the tail mask tm.
#define CL_LOAD(p, v) ((v) == nv - 1 && tail ? vload_part(tm, (p)) : vload(p))
#define CL_STORE(p, v, value)                                             \
    do {                                                                  \
        if ((v) == nv - 1 && tail) vstore_part((p), tm, (value));         \
        else vstore((p), (value));                                        \
    } while (0)
#define CL_RUN(w)                                                         \
    const int nv = (int)(((w) + NK_LANES - 1) / NK_LANES);                \
    const long tail = (w) % NK_LANES;                                     \
    const vmask tm = vmask_first(tail ? tail : 1)

// Per channel, with d = x − k[ch] (k NULL: 0): fa[ch] += Σ d, fb[ch] += Σ d² (grad 0), or fa[ch] += Σ dy,
// fb[ch] += Σ dy·d (grad 1), over `rows` rows of channels 0 … w − 1 (w ≤ CL_WIDTH: all in registers), rows c apart.
NK_INLINE void cl_pairs_tile(const int grad, float *fa, float *fb, const float *dy, const float *x, long rows, long c,
                             long w, const float *k) {
    CL_RUN(w);
    vf kv[CL_VECTORS], a[CL_VECTORS], b[CL_VECTORS];
    for (int v = 0; v < nv; v++) {
        kv[v] = k ? CL_LOAD(k + v * NK_LANES, v) : vzero();
        a[v] = vload(fa + v * NK_LANES);
        b[v] = vload(fb + v * NK_LANES);
    }
    for (long p = 0; p < rows; p++) {
        for (int v = 0; v < nv; v++) {
            const long o = p * c + v * NK_LANES;
            vf d = vsub(CL_LOAD(x + o, v), kv[v]);
            vf g = grad ? CL_LOAD(dy + o, v) : d;
            a[v] = vadd(a[v], g);
            b[v] = vfma(g, d, b[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        vstore(fa + v * NK_LANES, a[v]);
        vstore(fb + v * NK_LANES, b[v]);
    }
}

// s1[ch] += Σ d (or Σ dy), s2[ch] += Σ d² (or Σ dy·d) for channels 0 … w − 1 (w ≤ CL_MAX) of m rows c apart. The rows
// go in tiles of at most CL_ROWS rows and about 32 KB; each tile is swept once per CL_WIDTH channels while it sits in
// L1, so x (and dy) come from memory once, in order. A float lane adds one value per row, so its total goes to double
// after every tile (≤ CL_ROWS values: the accuracy of the channels-first kernels, whose lanes add ~n/64 values).
NK_INLINE void cl_pairs_run(const int grad, double *s1, double *s2, const float *dy, const float *x, long m, long c,
                            long w, const float *k) {
    float fa[CL_MAX + NK_LANES], fb[CL_MAX + NK_LANES];
    const long fit = 8192 / c, tile = fit < 1 ? 1 : fit < CL_ROWS ? fit : CL_ROWS;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0;
        for (long j = 0; j < w + NK_LANES; j++) fa[j] = fb[j] = 0;  // the lanes past w are loaded, never used
        for (long c0 = 0; c0 < w; c0 += CL_WIDTH) {
            const long cw = w - c0 < CL_WIDTH ? w - c0 : CL_WIDTH;
            cl_pairs_tile(grad, fa + c0, fb + c0, grad ? dy + p0 * c + c0 : NULL, x + p0 * c + c0, rows, c, cw,
                          k ? k + c0 : NULL);
        }
        for (long j = 0; j < w; j++) { s1[j] += fa[j]; s2[j] += fb[j]; }
    }
}

NK_INLINE void cl_pairs(const int grad, double *s1, double *s2, const float *dy, const float *x, long m, long c,
                        const float *k) {
    for (long c0 = 0; c0 < c; c0 += CL_MAX) {
        const long w = c - c0 < CL_MAX ? c - c0 : CL_MAX;
        cl_pairs_run(grad, s1 + c0, s2 + c0, grad ? dy + c0 : NULL, x + c0, m, c, w, k ? k + c0 : NULL);
    }
}

NK_FN void cl_centered_sums(double *s1, double *s2, const float *x, long m, long c, const float *k) {
    cl_pairs(0, s1, s2, NULL, x, m, c, k);
}

NK_FN void cl_gradient_sums(double *s1, double *s2, const float *dy, const float *x, long m, long c, const float *k) {
    cl_pairs(1, s1, s2, dy, x, m, c, k);
}

// out = a[ch]·(x − k[ch]) + b[ch] (grad 0), or p·dy + q·(x − k) + r (grad 1: a = q, b = r); out may alias x.
// Channels c0 … c0 + w − 1 (w ≤ CL_WIDTH: coefficients in registers) of rows c apart.
NK_INLINE void cl_apply_run(const int grad, float *out, const float *dy, const float *x, long m, long c, long w,
                            const float *p, const float *a, const float *b, const float *k) {
    CL_RUN(w);
    vf kv[CL_VECTORS], av[CL_VECTORS], bv[CL_VECTORS], pv[CL_VECTORS];
    for (int v = 0; v < nv; v++) {
        const long o = v * NK_LANES;
        kv[v] = k ? CL_LOAD(k + o, v) : vzero();
        av[v] = CL_LOAD(a + o, v);
        bv[v] = CL_LOAD(b + o, v);
        pv[v] = grad ? CL_LOAD(p + o, v) : vzero();
    }
    for (long i = 0; i < m; i++) {
        for (int v = 0; v < nv; v++) {
            const long o = i * c + v * NK_LANES;
            vf value = vfma(av[v], vsub(CL_LOAD(x + o, v), kv[v]), bv[v]);
            if (grad) value = vfma(pv[v], CL_LOAD(dy + o, v), value);
            CL_STORE(out + o, v, value);
        }
    }
}

NK_INLINE void cl_apply(const int grad, float *out, const float *dy, const float *x, long m, long c,
                        const float *p, const float *a, const float *b, const float *k) {
    if (c <= CL_WIDTH) {
        cl_apply_run(grad, out, dy, x, m, c, c, p, a, b, k);
        return;
    }
    // Wide rows: tiles of about 32 KB of rows, swept once per CL_WIDTH channels while in L1 (coefficients in
    // registers for each sweep).
    const long tile = c >= 8192 ? 1 : 8192 / c;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0, o = p0 * c;
        for (long c0 = 0; c0 < c; c0 += CL_WIDTH) {
            const long w = c - c0 < CL_WIDTH ? c - c0 : CL_WIDTH;
            cl_apply_run(grad, out + o + c0, grad ? dy + o + c0 : NULL, x + o + c0, rows, c, w,
                         grad ? p + c0 : NULL, a + c0, b + c0, k ? k + c0 : NULL);
        }
    }
}

NK_FN void cl_affine_centered(float *y, const float *x, long m, long c, const float *k, const float *a,
                              const float *b) {
    cl_apply(0, y, NULL, x, m, c, NULL, a, b, k);
}

NK_FN void cl_gradient_apply(float *dx, const float *dy, const float *x, long m, long c, const float *p,
                             const float *q, const float *r, const float *k) {
    cl_apply(1, dx, dy, x, m, c, p, q, r, k);
}

const nk_kernel_table NK_TABLE = {
    .level = NK_LEVEL,
    .row_sum = row_sum,
    .row_centered_sums = row_centered_sums,
    .row_gradient_sums = row_gradient_sums,
    .row_affine_centered = row_affine_centered,
    .row_gradient_apply = row_gradient_apply,
    .sets_moments = sets_moments,
    .sets_affine_centered = sets_affine_centered,
    .sets_gradient_sums = sets_gradient_sums,
    .sets_gradient_apply = sets_gradient_apply,
    .cl_centered_sums = cl_centered_sums,
    .cl_gradient_sums = cl_gradient_sums,
    .cl_affine_centered = cl_affine_centered,
    .cl_gradient_apply = cl_gradient_apply,
};
