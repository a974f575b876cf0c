/*
 * The one body of the native row and set kernels (the scheme: KernelTable.h), in three parts that KernelsAVX512.c
 * and KernelsAVX2.c each include once, in this order, after defining the vector layer; not headers to include
 * anywhere else:
 *
 *   KernelBody.h              this file: the vector layer's contract, fused activations, runs, the row kernels
 *   KernelBodySets.h          the set kernels (moments, gradient sums, affine and gradient apply over sets), the
 *                             coefficient stages, and GN/LN/IN on one row of an N × C matrix (forward, backward)
 *   KernelBodyChannelsLast.h  the channels-last (NHWC) kernels, then the exported table of all of them
 *
 * The vector layer:
 *
 *   NK_TARGET          the `target` attribute string ("avx512f", "avx2,fma")
 *   NK_TABLE           the name of the exported nk_kernel_table; NK_LEVEL its level
 *   NK_LANES, vf       floats per vector, the vector type
 *   NK_PS(op)          the intrinsic _mm…_<op>_ps (setzero, set1, loadu, storeu, add, sub, mul, fmadd, fnmadd,
 *                      fnmsub)
 *   vmask, vmask_first(n), vload_part(m, p), vstore_part(p, m, v), vkeep(m, v)
 *                      the first n (0 < n ≤ NK_LANES) lanes: loads that read and stores that write no other
 *                      element, and zeroing of the other lanes
 *   vblend(m, a, b)    a's lanes where m has them, b's elsewhere
 *   vreduce(v)         the float sum of v's lanes
 *   vreduce_lanes(v)   lane t = the sum of the lanes of v[t], for an array of NK_LANES vectors (a transposing
 *                      reduction: one for NK_LANES sums instead of NK_LANES horizontal sums)
 *   vround(v)          round to nearest integer
 *   vindex, vindex_truncate(v), vpermute(i, v)   a vector of 32-bit lane numbers, v's lanes truncated to integers,
 *                      and the vector whose lane l is v's lane i[l] (i's lanes in 0 … NK_LANES − 1)
 *   NK_EXP_BITS, vexp2_fraction(t)   2^(j/2^NK_EXP_BITS) for j = t mod 2^NK_EXP_BITS, integral t, from a table of
 *                      2^NK_EXP_BITS floats that one lane permute reads (AVX-512: 16 entries, AVX2: 8)
 *   vscale2_floor(p, n)  p·2^⌊n⌋ for n in [−126, 128) (AVX-512: scalef; AVX2: 2^⌊n⌋ from exponent bits, then a
 *                      multiply)
 *   vkeep_above(z, t, v)  v where z > t, else 0 (NaN z or t: 0)
 *   vdrop_at_most(z, t, v)  0 where z ≤ t, else v (NaN z or t: v)
 *   vdiv_above(z, t, a, b)  a/b where z > t, else a·0 (NaN z or t: a·0); b ≥ 1 in every use (AVX-512: one
 *                      masked division, correctly rounded; AVX2: the reciprocal estimate and a Newton step, ~23 bits)
 *   vstream(p, v)      a non-temporal store of a whole vector to p, aligned to NK_LANES floats; vstream_fence()
 *                      orders a kernel's non-temporal stores before its return (they are weakly ordered)
 *   vprefetch(p, n)    a hint to bring the line of the float n places after p into L1 (computed as an integer
 *                      address: it may lie past the data, and a prefetch never faults)
 */
#define vzero NK_PS(setzero)
#define vset1 NK_PS(set1)
#define vload NK_PS(loadu)
#define vstore NK_PS(storeu)
#define vadd NK_PS(add)
#define vsub NK_PS(sub)
#define vmul NK_PS(mul)
#define vfma NK_PS(fmadd) /* vfma(a, b, c) = a·b + c */
#define vfnma NK_PS(fnmadd) /* vfnma(a, b, c) = c − a·b */
#define vfnms NK_PS(fnmsub) /* vfnms(a, b, c) = −a·b − c */
#define vmax NK_PS(max)     /* vmax(a, b): b when either is NaN */
#define vmin NK_PS(min)

#define BLOCK NK_BLOCK_LENGTH
#define STEP (4 * NK_LANES) /* one step of the long loops: four vectors into four accumulators */

// ---- Fused activations (NK_IDENTITY, NK_RELU, NK_SILU; every caller passes a literal) --------------------------
// exp(−z) = exp(x) for x = −z, from a table: t = round(x·2^B·log2 e) (B = NK_EXP_BITS), r = x − t·ln 2/2^B in two
// parts (|r| ≤ ln 2/2^(B+1); t·0.693359375 has at most 20 bits, so the first product is exact), exp(r) − 1 as
// r + r²·(1/2 + r/6) (+ r²·r²/24 for B = 3; the next term is below 2^−26 relative), then the table's 2^(j/2^B) for
// j = t mod 2^B and 2^⌊t/2^B⌋. Cephes' expf, used before session 18, needs a degree-6 polynomial on |r| ≤ ln 2/2:
// this takes two multiply-adds fewer and its dependent chain three shorter, and the SiLU kernels run 0.85–0.9× the
// time (PERFORMANCE.md, session 18); within the same ulps of float64 (KernelPathTests). z is clamped above at
// 87.33654, so that ⌊t/2^B⌋ ≥ −126 and the scale stays a normal float; not below: for z < −88 the result may be inf
// or NaN, and every caller replaces the lanes below z = −87. The negation is folded into the clamp and the first
// reduction step.
NK_INLINE vf vexp_negated(vf z) {
    const float steps = (float)(1 << NK_EXP_BITS);
    z = vmin(z, vset1(87.33654f));
    const vf t = vround(vmul(z, vset1(-1.44269504088896341f * steps)));
    vf r = vfnms(t, vset1(0.693359375f / steps), z);
    r = vfma(t, vset1(2.12194440e-4f / steps), r);
#if NK_EXP_BITS >= 4
    vf q = vfma(r, vset1(1.0f / 6), vset1(0.5f));
#else
    vf q = vfma(vfma(r, vset1(1.0f / 24), vset1(1.0f / 6)), r, vset1(0.5f));
#endif
    q = vfma(vmul(r, r), q, r);
    const vf table = vexp2_fraction(t);
    return vscale2_floor(vfma(table, q, table), vmul(t, vset1(1.0f / steps)));
}

// σ(z) = 1/(1 + e) with e = exp(−z), also returned in *e; below z = −87 (σ < 2e−38) σ is 0, whatever e is there
// (not a tiny σ that SiLU would multiply by a huge |z|: σ(−1e33)·(−1e33) is 0). A NaN z gives σ = 0 and SiLU' = NaN
// (see vact_grad).
NK_INLINE vf vsigmoid(vf z, vf *e) {
    *e = vexp_negated(z);
    return vdiv_above(z, vset1(-87.0f), vset1(1.0f), vadd(vset1(1.0f), *e));
}

// SiLU(z) = z/(1 + e^−z), one division (AVX-512: rounded once); below z = −87 z·0 as above (−0, or NaN for −inf),
// and NaN for a NaN z.
NK_INLINE vf vsilu(vf z) { return vdiv_above(z, vset1(-87.0f), z, vadd(vset1(1.0f), vexp_negated(z))); }

// act(z): the forward's apply stage.
NK_INLINE vf vact(const int act, vf z) {
    if (act == NK_RELU) return vmax(vzero(), z);  // max(0, NaN) is NaN: ReLU keeps NaN, as PyTorch's does
    if (act == NK_SILU) return vsilu(z);
    return z;
}

// dy·act'(z): the backward. SiLU' = σ + z·σ·(1 − σ) = σ·(1 + z·(e·σ)), with 1 − σ = e·σ (e = exp(−z)) rather than
// a subtraction: near σ = 1 the subtraction keeps only the reciprocal's error, which z multiplies (1e30 for z = 1e30).
NK_INLINE vf vact_grad(const int act, vf dy, vf z) {
    if (act == NK_RELU) return vdrop_at_most(z, vzero(), dy);  // dy at a NaN z, as PyTorch's threshold_backward
    vf e;
    const vf s = vsigmoid(z, &e);
    // e·σ = 1 − σ ≤ 1 before z multiplies it (z·e alone overflows), and 0 outside (−87, 87): above, the clamped exp
    // is too large (the true z·(1 − σ) < 87·exp(−87) there); below, σ is 0 and e may be inf or NaN.
    const vf tail = vkeep_above(z, vset1(-87.0f), vkeep_above(vset1(87.0f), z, vmul(e, s)));
    return vmul(vmul(dy, s), vfma(z, tail, vset1(1.0f)));
}

// Activations costly enough that the set kernels gather rows' partial last vectors into full ones (SiLU: ~25
// vector operations per evaluation, where rows of 49 floats fill 49 of the 64 lanes they evaluate).
#define GATHER_TAILS(act) ((act) == NK_SILU)

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
        // The other lanes' x = 0 gives a z of their own, whose dy·act'(z) = 0·NaN when fa·fk overflows: keep them 0.
        if (act) g = vkeep(m, g);
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

// Non-temporal ("streaming") stores for the apply stages' outputs (stream = 1): a tensor larger than the caches
// (NK_STORE_STREAMING, chosen by the caller) is written without first reading each line of it (the read for
// ownership of an ordinary store) and without evicting the inputs still to be read; the values are the same.
NK_INLINE void row_store(const int stream, float *p, vf v) {
    if (stream) vstream(p, v);
    else vstore(p, v);
}

// The floats of out before its first vector boundary (0 … NK_LANES − 1), at most n: the part a streaming run stores
// as one partial vector before its aligned whole vectors.
NK_INLINE long head_to_boundary(const float *out, long n) {
    const long misaligned = (long)(((uintptr_t)out / sizeof(float)) % NK_LANES);
    const long head = misaligned ? NK_LANES - misaligned : 0;
    return head < n ? head : n;
}

// row_apply's value on the lanes of m only (its streaming head and its tail), stored with an ordinary masked store.
NK_INLINE void row_apply_part(const int grad, const int act, vmask m, float *out, const float *dy, const float *x,
                              vf pv, vf qv, vf rv, vf kv) {
    vf t = vfma(vsub(vload_part(m, x), kv), qv, rv);
    vstore_part(out, m, grad ? vfma(vload_part(m, dy), pv, t) : vact(act, t));
}

// out = p·dy + (q·(x − k) + r) (grad = 1), or act(q·(x − k) + r) (grad = 0: the affine a·(x − k) + b and the fused
// activation); whole vectors with non-temporal stores when stream = 1 (the caller fences), the floats before the
// first vector boundary then as one partial vector.
NK_INLINE void row_apply(const int grad, const int act, const int stream, float *out, const float *dy,
                         const float *x, long n, float p, float q, float r, float k) {
    const vf pv = vset1(p), qv = vset1(q), rv = vset1(r), kv = vset1(k);
    long i = stream ? head_to_boundary(out, n) : 0;
    if (i > 0) row_apply_part(grad, act, vmask_first(i), out, dy, x, pv, qv, rv, kv);
    for (; i + NK_LANES <= n; i += NK_LANES) {
        vf t = vfma(vsub(vload(x + i), kv), qv, rv);
        row_store(stream, out + i, grad ? vfma(vload(dy + i), pv, t) : vact(act, t));
    }
    if (i < n) row_apply_part(grad, act, vmask_first(n - i), out + i, dy + i, x + i, pv, qv, rv, kv);
}

NK_FN void row_affine_centered(float *y, const float *x, long n, float k, float a, float b, int act) {
#define ROW_AFFINE(A) row_apply(0, A, 0, y, NULL, x, n, 0, a, b, k)
    ACT_DISPATCH(act, ROW_AFFINE)
#undef ROW_AFFINE
}

NK_FN void row_gradient_apply(float *dx, const float *dy, const float *x, long n, float p, float q, float r,
                              float k) {
    row_apply(1, 0, 0, dx, dy, x, n, p, q, r, k);
}
