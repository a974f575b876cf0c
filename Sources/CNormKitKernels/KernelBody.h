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
 *   vround(v), vpow2(n)   round to nearest integer; 2^n for integral n in [−126, 127] (exponent bits)
 *   vkeep_positive(z, v)  v where z > 0, else 0 (NaN z: 0)
 *   vrecip_estimate(v)    1/v to 12 (AVX2) or 14 (AVX-512) bits
 */
#define vzero NK_PS(setzero)
#define vset1 NK_PS(set1)
#define vload NK_PS(loadu)
#define vstore NK_PS(storeu)
#define vadd NK_PS(add)
#define vsub NK_PS(sub)
#define vmul NK_PS(mul)
#define vfma NK_PS(fmadd) /* vfma(a, b, c) = a·b + c */
#define vmax NK_PS(max)     /* vmax(a, b): b when either is NaN */
#define vmin NK_PS(min)

#define BLOCK NK_BLOCK_LENGTH
#define STEP (4 * NK_LANES) /* one step of the long loops: four vectors into four accumulators */

// ---- Fused activations (NK_IDENTITY, NK_RELU, NK_SILU; every caller passes a literal) --------------------------
// exp by Cephes' expf scheme: n = round(x·log2 e), r = x − n·ln 2 in two parts, a degree-6 polynomial, times 2^n.
// x is clamped to [−87.33, 88] so 2^n stays a normal float.
NK_INLINE vf vexp(vf x) {
    x = vmin(vmax(x, vset1(-87.33654f)), vset1(88.0f));
    const vf n = vround(vmul(x, vset1(1.44269504088896341f)));
    vf r = vfma(n, vset1(-0.693359375f), x);
    r = vfma(n, vset1(2.12194440e-4f), r);
    vf p = vset1(1.9875691500e-4f);
    p = vfma(p, r, vset1(1.3981999507e-3f));
    p = vfma(p, r, vset1(8.3334519073e-3f));
    p = vfma(p, r, vset1(4.1665795894e-2f));
    p = vfma(p, r, vset1(1.6666665459e-1f));
    p = vfma(p, r, vset1(5.0000001201e-1f));
    p = vfma(p, vmul(r, r), vadd(r, vset1(1.0f)));
    return vmul(p, vpow2(n));
}

// 1/v from the estimate and one Newton step (e ← e·(2 − v·e): 12 → ~23, 14 → 24 bits), for v ≥ 1: three
// pipelined operations instead of a division (one per ~10–16 cycles), which would bound SiLU's pass.
NK_INLINE vf vrecip(vf v) {
    const vf e = vrecip_estimate(v);
    return vmul(e, vfma(vsub(vzero(), v), e, vset1(2.0f)));
}

// σ(z) = 1/(1 + e) with e = exp(−z), also returned in *e; below z = −87 (σ < 2e−38) σ is 0, not the ~6e−39 of the
// clamped exp, which SiLU would multiply by a huge |z| (σ(−1e33)·(−1e33) is 0, not −6e−6). A NaN z gives σ = 0
// and SiLU = z·0 = NaN.
NK_INLINE vf vsigmoid(vf z, vf *e) {
    *e = vexp(vsub(vzero(), z));
    return vkeep_positive(vadd(z, vset1(87.0f)), vrecip(vadd(vset1(1.0f), *e)));
}

// act(z): the forward's apply stage.
NK_INLINE vf vact(const int act, vf z) {
    if (act == NK_RELU) return vmax(vzero(), z);  // max(0, NaN) is NaN: ReLU keeps NaN, as PyTorch's does
    vf e;
    if (act == NK_SILU) return vmul(z, vsigmoid(z, &e));
    return z;
}

// dy·act'(z): the backward. SiLU' = σ + z·σ·(1 − σ) = σ·(1 + z·(e·σ)), with 1 − σ = e·σ (e = exp(−z)) rather than
// a subtraction: near σ = 1 the subtraction keeps only the reciprocal's error, which z multiplies (1e30 for z = 1e30).
NK_INLINE vf vact_grad(const int act, vf dy, vf z) {
    if (act == NK_RELU) return vkeep_positive(z, dy);
    vf e;
    const vf s = vsigmoid(z, &e);
    // e·σ = 1 − σ ≤ 1 before z multiplies it (z·e alone overflows), and 0 above z = 87, where the clamped exp is
    // too large (the true z·(1 − σ) < 87·exp(−87) there).
    const vf tail = vkeep_positive(vsub(vset1(87.0f), z), vmul(e, s));
    return vmul(vmul(dy, s), vfma(z, tail, vset1(1.0f)));
}

// The backward's view of a fused activation for one row or channel vector: the forward's z = fa·(x − fk) + fb.
typedef struct { vf fa, fb, fk; } act_affine;

// The gradient to sum at x with upstream dy: dy itself (act 0) or dz = dy·act'(z), stored to dz[0 … lanes).
#define ACT_GRAD(act, g, xv, aff, dz, store)                                                     \
    do {                                                                                       \
        if (act) {                                                                             \
            g = vact_grad(act, g, vfma((aff).fa, vsub(xv, (aff).fk), (aff).fb));               \
            store;                                                                             \
        }                                                                                      \
    } while (0)

// Calls `call(A)` with A the literal activation matching the run-time `act`, so each body is compiled per case.
#define ACT_DISPATCH(act, call)                       \
    switch (act) {                                    \
    case NK_RELU: call(NK_RELU); break;               \
    case NK_SILU: call(NK_SILU); break;               \
    default: call(NK_IDENTITY); break;                \
    }

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

// With d = x − k: *s += Σ d, *q += Σ d² (centred sums: grad = 0, dy unused) or *s += Σ g, *q += Σ g·d with g = dy
// (gradient sums: grad = 1), or with a fused activation (act > 0) g = dy·act'(z), z = aff·x, also stored to dz.
// Every caller passes grad and act as literals and the function is always inlined, so each gets a loop without
// the tests; the same holds for the other `grad` and `act` flags below.
NK_INLINE void pairrun(const int grad, const int act, vf *s, vf *q, const float *dy, const float *x, long n, vf kv,
                       act_affine aff, float *dz) {
    vf s0 = *s, q0 = *q;
    long i = 0;
    if (n >= STEP) {
        vf s1 = vzero(), q1 = vzero(), s2 = vzero(), q2 = vzero(), s3 = vzero(), q3 = vzero();
        for (; i + STEP <= n; i += STEP) {
            vf x0 = vload(x + i), x1 = vload(x + i + NK_LANES), x2 = vload(x + i + 2 * NK_LANES),
               x3 = vload(x + i + 3 * NK_LANES);
            vf d0 = vsub(x0, kv), d1 = vsub(x1, kv), d2 = vsub(x2, kv), d3 = vsub(x3, kv);
            vf g0 = grad ? vload(dy + i) : d0, g1 = grad ? vload(dy + i + NK_LANES) : d1,
               g2 = grad ? vload(dy + i + 2 * NK_LANES) : d2, g3 = grad ? vload(dy + i + 3 * NK_LANES) : d3;
            ACT_GRAD(act, g0, x0, aff, dz, vstore(dz + i, g0));
            ACT_GRAD(act, g1, x1, aff, dz, vstore(dz + i + NK_LANES, g1));
            ACT_GRAD(act, g2, x2, aff, dz, vstore(dz + i + 2 * NK_LANES, g2));
            ACT_GRAD(act, g3, x3, aff, dz, vstore(dz + i + 3 * NK_LANES, g3));
            s0 = vadd(s0, g0); q0 = vfma(g0, d0, q0);
            s1 = vadd(s1, g1); q1 = vfma(g1, d1, q1);
            s2 = vadd(s2, g2); q2 = vfma(g2, d2, q2);
            s3 = vadd(s3, g3); q3 = vfma(g3, d3, q3);
        }
        s0 = vadd(vadd(s0, s1), vadd(s2, s3));
        q0 = vadd(vadd(q0, q1), vadd(q2, q3));
    }
    for (; i + NK_LANES <= n; i += NK_LANES) {
        vf xv = vload(x + i), d = vsub(xv, kv), g = grad ? vload(dy + i) : d;
        ACT_GRAD(act, g, xv, aff, dz, vstore(dz + i, g));
        s0 = vadd(s0, g);
        q0 = vfma(g, d, q0);
    }
    if (i < n) {
        vmask m = vmask_first(n - i);
        vf xv = vload_part(m, x + i), d = vkeep(m, vsub(xv, kv)), g = grad ? vload_part(m, dy + i) : d;
        ACT_GRAD(act, g, xv, aff, dz, vstore_part(dz + i, m, g));
        s0 = vadd(s0, g);
        q0 = vfma(g, d, q0);
    }
    *s = s0;
    *q = q0;
}

// The act_affine of per-row (or per-channel, at offset o) arrays of an nk_activation_backward (unused with act 0).
NK_INLINE act_affine act_row(const int act, const nk_activation_backward *b, long o) {
    act_affine a;
    a.fa = act ? vset1(b->scale[o]) : vzero();
    a.fb = act ? vset1(b->shift[o]) : vzero();
    a.fk = act ? vset1(b->center[o]) : vzero();
    return a;
}

static const act_affine no_act = {0};

// ---- Row kernels ------------------------------------------------------------------------------------------
NK_FN double row_sum(const float *x, long n) {
    double total = 0;
    for (long start = 0; start < n; start += BLOCK)
        total += (double)vreduce(addrun(vzero(), x + start, n - start < BLOCK ? n - start : BLOCK));
    return total;
}

// The pair sums of pairrun over a row of any length, float lanes flushed into double totals every BLOCK.
NK_INLINE void row_pair_sums(const int grad, const int act, const float *dy, const float *x, long n, float k,
                             double *s1, double *s2, act_affine aff, float *dz) {
    double t1 = 0, t2 = 0;
    const vf kv = vset1(k);
    for (long start = 0; start < n; start += BLOCK) {
        vf s = vzero(), q = vzero();
        pairrun(grad, act, &s, &q, grad ? dy + start : NULL, x + start, n - start < BLOCK ? n - start : BLOCK, kv,
                aff, act ? dz + start : NULL);
        t1 += (double)vreduce(s);
        t2 += (double)vreduce(q);
    }
    *s1 = t1;
    *s2 = t2;
}

NK_FN void row_centered_sums(const float *x, long n, float k, double *s1, double *s2) {
    row_pair_sums(0, 0, NULL, x, n, k, s1, s2, no_act, NULL);
}

NK_FN void row_gradient_sums(const float *dy, const float *x, long n, float k, double *s1, double *s2,
                             const nk_activation_backward *b) {
#define ROW_GRADIENT_SUMS(A) row_pair_sums(1, A, dy, x, n, k, s1, s2, act_row(A, b, 0), A ? b->dz : NULL)
    ACT_DISPATCH(b ? b->kind : NK_IDENTITY, ROW_GRADIENT_SUMS)
#undef ROW_GRADIENT_SUMS
}

// out = p·dy + (q·(x − k) + r) (grad = 1), or act(q·(x − k) + r) (grad = 0: the affine a·(x − k) + b and the fused
// activation).
NK_INLINE void row_apply(const int grad, const int act, float *out, const float *dy, const float *x, long n, float p,
                         float q, float r, float k) {
    const vf pv = vset1(p), qv = vset1(q), rv = vset1(r), kv = vset1(k);
    long i = 0;
    for (; i + NK_LANES <= n; i += NK_LANES) {
        vf t = vfma(vsub(vload(x + i), kv), qv, rv);
        vstore(out + i, grad ? vfma(vload(dy + i), pv, t) : vact(act, t));
    }
    if (i < n) {
        vmask m = vmask_first(n - i);
        vf t = vfma(vsub(vload_part(m, x + i), kv), qv, rv);
        vstore_part(out + i, m, grad ? vfma(vload_part(m, dy + i), pv, t) : vact(act, t));
    }
}

NK_FN void row_affine_centered(float *y, const float *x, long n, float k, float a, float b, int act) {
#define ROW_AFFINE(A) row_apply(0, A, y, NULL, x, n, 0, a, b, k)
    ACT_DISPATCH(act, ROW_AFFINE)
#undef ROW_AFFINE
}

NK_FN void row_gradient_apply(float *dx, const float *dy, const float *x, long n, float p, float q, float r,
                              float k) {
    row_apply(1, 0, dx, dy, x, n, p, q, r, k);
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
            if (kv) pairrun(0, 0, &s, &q, NULL, x + p * stride + i, n, *kv, no_act, NULL);
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
                    pairrun(0, 0, &s[t], &q[t], NULL, base + t * set_stride + p * piece_stride, run, vset1(k[t]),
                            no_act, NULL);
            }
            vstore(d1, vreduce_lanes(s));
            vstore(d2, vreduce_lanes(q));
            for (int t = 0; t < NK_LANES; t++) finish_moments(k[t], d1[t], d2[t], inverse, mean + j + t, m2 + j + t);
        }
    }
    for (; j < sets; j++) set_moments(x + j * set_stride, pieces, run, piece_stride, mean + j, m2 + j);
}

NK_INLINE void sets_gradient_sums_body(const int act, double *s1, double *s2, long out_stride, const float *dy,
                                       const float *x, long sets, long set_stride, long pieces, long rows, long m,
                                       long piece_stride, const float *k, const nk_activation_backward *b) {
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
                pairrun(1, act, &a[t], &q[t], dy + o, x + o, m, vset1(k[j]), act_row(act, b, j * rows + r),
                        act ? b->dz + o : NULL);
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
        row_pair_sums(1, act, dy + o, x + o, m, k[j], s1 + out, s2 + out, act_row(act, b, j * rows + r),
                      act ? b->dz + o : NULL);
    }
}

NK_FN void sets_gradient_sums(double *s1, double *s2, long out_stride, const float *dy, const float *x, long sets,
                              long set_stride, long pieces, long rows, long m, long piece_stride, const float *k,
                              const nk_activation_backward *b) {
#define SETS_GRADIENT_SUMS(A) \
    sets_gradient_sums_body(A, s1, s2, out_stride, dy, x, sets, set_stride, pieces, rows, m, piece_stride, k, b)
    ACT_DISPATCH(b ? b->kind : NK_IDENTITY, SETS_GRADIENT_SUMS)
#undef SETS_GRADIENT_SUMS
}

// Row by row, c = j·rows + r: y = act(a[c]·(x − k[j]) + b[c]) (grad = 0, q = a and r = b per row), or
// dx = p[c]·dy + q[j]·(x − k[j]) + r[j] (grad = 1).
NK_INLINE void sets_apply(const int grad, const int act, float *out, const float *dy, const float *x, long sets, long set_stride, long pieces,
                          long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                          const float *k) {
    for (long j = 0; j < sets; j++)
        for (long i = 0; i < pieces; i++)
            for (long row = 0; row < rows; row++) {
                long o = j * set_stride + i * piece_stride + row * m, c = j * rows + row;
                if (grad) row_apply(1, 0, out + o, dy + o, x + o, m, p[c], q[j], r[j], k[j]);
                else row_apply(0, act, out + o, NULL, x + o, m, 0, q[c], r[c], k[j]);
            }
}

NK_FN void sets_affine_centered(float *y, const float *x, long sets, long set_stride, long pieces, long rows,
                                long m, long piece_stride, const float *k, const float *a, const float *b,
                                int act) {
#define SETS_AFFINE(A) sets_apply(0, A, y, NULL, x, sets, set_stride, pieces, rows, m, piece_stride, NULL, a, b, k)
    ACT_DISPATCH(act, SETS_AFFINE)
#undef SETS_AFFINE
}

NK_FN void sets_gradient_apply(float *dx, const float *dy, const float *x, long sets, long set_stride, long pieces,
                               long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                               const float *k) {
    sets_apply(1, 0, dx, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k);
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

// The per-channel arrays of an nk_activation_backward moved to channel c0, and its dz to element o.
NK_INLINE nk_activation_backward act_at(const nk_activation_backward *b, long c0, long o) {
    nk_activation_backward moved = *b;
    moved.scale += c0;
    moved.shift += c0;
    moved.center += c0;
    moved.dz += o;
    return moved;
}

// Per channel, with d = x − k[ch] (k NULL: 0): fa[ch] += Σ d, fb[ch] += Σ d² (grad 0), or fa[ch] += Σ g,
// fb[ch] += Σ g·d (grad 1; g = dy, or dz = dy·act'(z) stored to b->dz with act > 0), over `rows` rows of channels
// 0 … w − 1 (w ≤ CL_WIDTH: all in registers), rows c apart.
NK_INLINE void cl_pairs_tile(const int grad, const int act, float *fa, float *fb, const float *dy, const float *x,
                             long rows, long c, long w, const float *k, const nk_activation_backward *b) {
    CL_RUN(w);
    vf kv[CL_VECTORS], a[CL_VECTORS], q[CL_VECTORS];
    act_affine aff[CL_VECTORS];
    for (int v = 0; v < nv; v++) {
        kv[v] = k ? CL_LOAD(k + v * NK_LANES, v) : vzero();
        a[v] = vload(fa + v * NK_LANES);
        q[v] = vload(fb + v * NK_LANES);
        if (act) {
            aff[v].fa = CL_LOAD(b->scale + v * NK_LANES, v);
            aff[v].fb = CL_LOAD(b->shift + v * NK_LANES, v);
            aff[v].fk = CL_LOAD(b->center + v * NK_LANES, v);
        }
    }
    for (long p = 0; p < rows; p++) {
        for (int v = 0; v < nv; v++) {
            const long o = p * c + v * NK_LANES;
            vf xv = CL_LOAD(x + o, v), d = vsub(xv, kv[v]);
            vf g = grad ? CL_LOAD(dy + o, v) : d;
            ACT_GRAD(act, g, xv, aff[v], b->dz, CL_STORE(b->dz + o, v, g));
            a[v] = vadd(a[v], g);
            q[v] = vfma(g, d, q[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        vstore(fa + v * NK_LANES, a[v]);
        vstore(fb + v * NK_LANES, q[v]);
    }
}

// s1[ch] += Σ d (or Σ g), s2[ch] += Σ d² (or Σ g·d) for channels 0 … w − 1 (w ≤ CL_MAX) of m rows c apart. The rows
// go in tiles of at most CL_ROWS rows and about 32 KB; each tile is swept once per CL_WIDTH channels while it sits in
// L1, so x (and dy) come from memory once, in order. A float lane adds one value per row, so its total goes to double
// after every tile (≤ CL_ROWS values: the accuracy of the channels-first kernels, whose lanes add ~n/64 values).
NK_INLINE void cl_pairs_run(const int grad, const int act, double *s1, double *s2, const float *dy, const float *x,
                            long m, long c, long w, const float *k, const nk_activation_backward *b) {
    float fa[CL_MAX + NK_LANES], fb[CL_MAX + NK_LANES];
    const long fit = 8192 / c, tile = fit < 1 ? 1 : fit < CL_ROWS ? fit : CL_ROWS;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0;
        for (long j = 0; j < w + NK_LANES; j++) fa[j] = fb[j] = 0;  // the lanes past w are loaded, never used
        for (long c0 = 0; c0 < w; c0 += CL_WIDTH) {
            const long cw = w - c0 < CL_WIDTH ? w - c0 : CL_WIDTH;
            nk_activation_backward moved = act ? act_at(b, c0, p0 * c + c0) : (nk_activation_backward){0};
            cl_pairs_tile(grad, act, fa + c0, fb + c0, grad ? dy + p0 * c + c0 : NULL, x + p0 * c + c0, rows, c, cw,
                          k ? k + c0 : NULL, &moved);
        }
        for (long j = 0; j < w; j++) { s1[j] += fa[j]; s2[j] += fb[j]; }
    }
}

NK_INLINE void cl_pairs(const int grad, const int act, double *s1, double *s2, const float *dy, const float *x,
                        long m, long c, const float *k, const nk_activation_backward *b) {
    for (long c0 = 0; c0 < c; c0 += CL_MAX) {
        const long w = c - c0 < CL_MAX ? c - c0 : CL_MAX;
        nk_activation_backward moved = act ? act_at(b, c0, c0) : (nk_activation_backward){0};
        cl_pairs_run(grad, act, s1 + c0, s2 + c0, grad ? dy + c0 : NULL, x + c0, m, c, w, k ? k + c0 : NULL, &moved);
    }
}

NK_FN void cl_centered_sums(double *s1, double *s2, const float *x, long m, long c, const float *k) {
    cl_pairs(0, 0, s1, s2, NULL, x, m, c, k, NULL);
}

NK_FN void cl_gradient_sums(double *s1, double *s2, const float *dy, const float *x, long m, long c, const float *k,
                            const nk_activation_backward *b) {
#define CL_GRADIENT_SUMS(A) cl_pairs(1, A, s1, s2, dy, x, m, c, k, b)
    ACT_DISPATCH(b ? b->kind : NK_IDENTITY, CL_GRADIENT_SUMS)
#undef CL_GRADIENT_SUMS
}

// out = act(a[ch]·(x − k[ch]) + b[ch]) (grad 0), or p·dy + q·(x − k) + r (grad 1: a = q, b = r); out may alias x.
// Channels c0 … c0 + w − 1 (w ≤ CL_WIDTH: coefficients in registers) of rows c apart.
NK_INLINE void cl_apply_run(const int grad, const int act, float *out, const float *dy, const float *x, long m, long c,
                            long w, const float *p, const float *a, const float *b, const float *k) {
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
            value = grad ? vfma(pv[v], CL_LOAD(dy + o, v), value) : vact(act, value);
            CL_STORE(out + o, v, value);
        }
    }
}

NK_INLINE void cl_apply(const int grad, const int act, float *out, const float *dy, const float *x, long m, long c,
                        const float *p, const float *a, const float *b, const float *k) {
    if (c <= CL_WIDTH) {
        cl_apply_run(grad, act, out, dy, x, m, c, c, p, a, b, k);
        return;
    }
    // Wide rows: tiles of about 32 KB of rows, swept once per CL_WIDTH channels while in L1 (coefficients in
    // registers for each sweep).
    const long tile = c >= 8192 ? 1 : 8192 / c;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0, o = p0 * c;
        for (long c0 = 0; c0 < c; c0 += CL_WIDTH) {
            const long w = c - c0 < CL_WIDTH ? c - c0 : CL_WIDTH;
            cl_apply_run(grad, act, out + o + c0, grad ? dy + o + c0 : NULL, x + o + c0, rows, c, w,
                         grad ? p + c0 : NULL, a + c0, b + c0, k ? k + c0 : NULL);
        }
    }
}

NK_FN void cl_affine_centered(float *y, const float *x, long m, long c, const float *k, const float *a,
                              const float *b, int act) {
#define CL_AFFINE(A) cl_apply(0, A, y, NULL, x, m, c, NULL, a, b, k)
    ACT_DISPATCH(act, CL_AFFINE)
#undef CL_AFFINE
}

NK_FN void cl_gradient_apply(float *dx, const float *dy, const float *x, long m, long c, const float *p,
                             const float *q, const float *r, const float *k) {
    cl_apply(1, 0, dx, dy, x, m, c, p, q, r, k);
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
