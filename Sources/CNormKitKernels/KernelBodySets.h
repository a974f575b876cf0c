// The set kernels of the native kernel body: part two of three, included after KernelBody.h by KernelsAVX512.c and
// KernelsAVX2.c (the scheme: KernelTable.h; the vector layer and the runs: KernelBody.h).

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

// Sets of up to SET_GROUP_FLOATS floats: NK_LANES sets at a time (a group of at most 32 KB), each pass over the whole
// group and one transposing reduction for the group's sums; the sets after the last group one at a time (set_moments).
// Larger sets of up to BLOCK floats one at a time, the second pass straight after the first, while the set is in L1,
// their lanes added as a group's are (vreduce_as_lanes): the bits a group gives them, however the sets are grouped
// into calls, and the forward batches such sets of rows longer than this limit by fewer than NK_LANES
// (NormalizationGeometry.forwardSetsPerBatch; sets of short rows, 7 × 7 maps, keep larger batches). Before session 48
// those went in groups too: with sets of 784 floats (GN (32, 32, 28, 28) NCHW, 49 KB a group) the second pass read L2,
// and the moments took twice a plain read of the sets (a C model with these kernels; PERFORMANCE.md, session 48).
#define SET_GROUP_FLOATS 512
NK_FN void sets_moments(const float *x, long sets, long set_stride, long pieces, long run, long piece_stride,
                        double *mean, double *m2) {
    long j = 0;
    const double inverse = 1 / ((double)pieces * (double)run);
    if (pieces * run <= BLOCK && pieces * run > SET_GROUP_FLOATS) {
        const float scale = (float)inverse;
        for (; j < sets; j++) {
            const float *set = x + j * set_stride;
            vf acc = vzero(), s = vzero(), q = vzero();
            for (long p = 0; p < pieces; p++) acc = addrun(acc, set + p * piece_stride, run);
            const float k = vreduce_as_lanes(acc) * scale;
            for (long p = 0; p < pieces; p++)
                pairrun(0, 0, &s, &q, NULL, set + p * piece_stride, run, vset1(k), no_act, NULL);
            finish_moments(k, vreduce_as_lanes(s), vreduce_as_lanes(q), inverse, mean + j, m2 + j);
        }
        return;
    }
    if (pieces * run <= BLOCK) {
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

// The next row in (set j, piece p, row r) order, the order of every set kernel's rows, with the row's offset
// o = j·set_stride + p·piece_stride + r·m and its coefficients' index c = j·rows + r kept by additions.
#define NEXT_ROW(j, p, r, o, c)                                                                                \
    do {                                                                                                       \
        (o) += m;                                                                                              \
        if (++(c), ++(r) == rows) {                                                                            \
            (r) = 0;                                                                                           \
            if (++(p) == pieces) (p) = 0, (j)++;                                                               \
            (o) = (j) * set_stride + (p) * piece_stride;                                                       \
            (c) = (j) * rows;                                                                                  \
        }                                                                                                      \
    } while (0)

NK_INLINE void sets_gradient_sums_body(const int act, double *s1, double *s2, long out_stride, const float *dy,
                                       const float *x, long sets, long set_stride, long pieces, long rows, long m,
                                       long piece_stride, const float *k, const nk_activation_backward *b) {
    const long total = sets * pieces * rows;
    long i = 0;
    if (act != NK_SILU && m > SET_GROUP_FLOATS && m <= BLOCK) {
        // Rows of more than SET_GROUP_FLOATS floats one at a time, their lanes added as a group's are: the bits a group
        // gives them however the rows are grouped into calls, and the backward batches such rows by fewer than
        // NK_LANES, so that its apply finds them in L1 (NormalizationGeometry.backwardSetsPerBatch; PERFORMANCE.md,
        // session 48). Not under SiLU, whose passes are bound by its arithmetic: it keeps its groups and batches.
        long j = 0, p = 0, r = 0, o = 0, c = 0;
        for (; i < total; i++) {
            vf a = vzero(), q = vzero();
            pairrun(1, act, &a, &q, dy + o, x + o, m, vset1(k[j]), act_row(act, b, c), act ? b->dz + o : NULL);
            s1[c + p * out_stride] = (double)vreduce_as_lanes(a);
            s2[c + p * out_stride] = (double)vreduce_as_lanes(q);
            NEXT_ROW(j, p, r, o, c);
        }
        return;
    }
    if (m <= BLOCK) {
        // Rows in (set, piece, row) order, NK_LANES at a time. With an activation worth it (GATHER_TAILS) and a
        // partial last vector, pairrun takes each row's full vectors and the rows' tails go through buffers as in
        // sets_apply: dy and z in, dz = dy·act'(z) out, then each row's tail is added last, as pairrun would.
        const int gather = GATHER_TAILS(act) && m % NK_LANES;
        const long body = gather ? m - m % NK_LANES : m, tail = m - body;
        const vmask tm = vmask_first(gather ? tail : 1);
        float zt[NK_LANES * NK_LANES], gt[NK_LANES * NK_LANES];
        long at[NK_LANES];
        float kt[NK_LANES];
        long j = 0, p = 0, r = 0, o = 0, c = 0;
        for (; i + NK_LANES <= total; i += NK_LANES) {
            vf a[NK_LANES], q[NK_LANES];
            long out[NK_LANES];
            for (int t = 0; t < NK_LANES; t++) {
                const act_affine aff = act_row(act, b, c);
                out[t] = c + p * out_stride;
                a[t] = q[t] = vzero();
                pairrun(1, act, &a[t], &q[t], dy + o, x + o, body, vset1(k[j]), aff, act ? b->dz + o : NULL);
                if (gather) {
                    const vf xv = vload_part(tm, x + o + body);
                    vstore_part(zt + t * tail, tm, vfma(aff.fa, vsub(xv, aff.fk), aff.fb));
                    vstore_part(gt + t * tail, tm, vload_part(tm, dy + o + body));
                    at[t] = o + body;
                    kt[t] = k[j];
                }
                NEXT_ROW(j, p, r, o, c);
            }
            if (gather) {
                for (long v = 0; v < tail; v++)
                    vstore(gt + v * NK_LANES, vact_grad(act, vload(gt + v * NK_LANES), vload(zt + v * NK_LANES)));
                for (int t = 0; t < NK_LANES; t++) {
                    const vf g = vload_part(tm, gt + t * tail);
                    const vf d = vkeep(tm, vsub(vload_part(tm, x + at[t]), vset1(kt[t])));
                    vstore_part(b->dz + at[t], tm, g);
                    a[t] = vadd(a[t], g);
                    q[t] = vfma(g, d, q[t]);
                }
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
// dx = p[c]·dy + q[j]·(x − k[j]) + r[j] (grad = 1); the rows' whole vectors streamed when stream = 1. k NULL: 0.
#define SET_K(j) (k ? k[(j)] : 0.0f)

// The gradient apply of sets_apply for pieces of several rows of m > NK_LANES floats that are not whole vectors
// (m % NK_LANES > 0: GN's 7 × 7 maps), without streaming: each piece's rows, contiguous, go as one run of whole vectors
// from the piece's first float, and a vector that meets two rows takes each lane's p from its own row (two broadcasts
// blended; q, r and k are the set's). Row by row, most of such rows' vectors cross two cache lines and each row ends
// in a partial vector: GN's backward apply on (2, 2048, 7, 7) NCHW took 1.25x this walk's time in a C model with these
// kernels, one thread, and GN + SiLU's forward+backward 1.09x in the layer (PERFORMANCE.md, session 43). Not for the
// forward's apply, which has two coefficients a row to blend (no faster this way), nor for pieces of one row (BN).
// Each element gets the same operations as row by row, so the same bits.
NK_INLINE vf sets_gradient_value(const float *dy, const float *x, long o, const float *p, long c, long next, vmask own,
                                 vf kv, vf qj, vf rj, int whole, vmask lanes) {
    const vf xv = whole ? vload(x + o) : vload_part(lanes, x + o);
    const vf g = whole ? vload(dy + o) : vload_part(lanes, dy + o);
    return vfma(g, vblend(own, vset1(p[c]), vset1(p[next])), vfma(vsub(xv, kv), qj, rj));
}

NK_INLINE void sets_apply_runs(float *out, const float *dy, const float *x, long sets, long set_stride, long pieces,
                               long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                               const float *k) {
    for (long j = 0; j < sets; j++) {
        const vf kv = vset1(SET_K(j)), qj = vset1(q[j]), rj = vset1(r[j]);
        for (long i = 0; i < pieces; i++) {
            const long o = j * set_stride + i * piece_stride, n = rows * m, last = j * rows + rows - 1;
            // Vector e's lanes below `left` are row c's, the others row c + 1's (or, past the piece's last row, lanes
            // beyond the piece: loaded as 0 and not stored). No branch on crossing a row, whose pattern has no short
            // period: a walk that branched there took 1.02x the rows' time in L1, where this one takes 0.85x.
            long c = j * rows, left = m, e = 0;
            for (; e + NK_LANES <= n; e += NK_LANES) {
                const vmask own = vmask_first(left < NK_LANES ? left : NK_LANES);
                vstore(out + o + e, sets_gradient_value(dy, x, o + e, p, c, c + (c < last), own, kv, qj, rj, 1, own));
                left -= NK_LANES;
                const long crossed = (long)((unsigned long)(left - 1) >> 63);  // left ≤ 0
                c += crossed;
                left += crossed * m;
            }
            if (e < n) {
                const vmask own = vmask_first(left < NK_LANES ? left : NK_LANES), lanes = vmask_first(n - e);
                vstore_part(out + o + e, lanes,
                            sets_gradient_value(dy, x, o + e, p, c, c + (c < last), own, kv, qj, rj, 0, lanes));
            }
        }
    }
}

// The forward apply of sets_apply for rows of fewer than RUN_FLOATS floats that are not whole vectors (m % NK_LANES
// > 0: 1 × 1 to 7 × 7 maps), without streaming, where a piece holds several of them: a set's rows (GN, LN) or the
// one-row sets of a batch side by side (BN: set_stride = m, k per row). They go as one run of whole vectors from the
// piece's first float, in periods of period_rows = NK_LANES / gcd(m, NK_LANES) rows, period_vectors = m / gcd(m,
// NK_LANES) < RUN_FLOATS vectors, each starting a multiple of NK_LANES floats into the run: a period's coefficients
// are one vector each (lane t: the period's row t), and lane l of its vector v belongs to row (NK_LANES·v + l) / m in
// every period (row_of, built once a call), so each lane's coefficient is one permute. Row by row, a 7 × 7 map's row
// is three vectors and a lane, most of them across two cache lines. One call on ~12 K floats in L1/L2, one thread
// (scripts/short_rows_probe.c against the row walk of 708be00): m = 49 0.69–0.80x the time (SiLU 0.88–0.89x), m = 9
// and 25 0.27–0.68x (SiLU 0.50–0.86x), m = 1 and 4 0.07–0.42x; the AVX2 bodies 0.64x at m = 49 and less on shorter
// rows. Rows of 100 and 196 floats walked this way too (a build not kept) took 0.89–1.04x and 0.98–1.15x: rows of
// RUN_FLOATS floats or more stay row by row (PERFORMANCE.md, session 50). Each element gets the operations of
// row_apply (act(a·(x − k) + b)), so the same bits.
#define RUN_FLOATS 64
NK_INLINE long run_period_vectors(long m) {
    long g = m, t = NK_LANES;
    while (t) {
        const long u = g % t;
        g = t;
        t = u;
    }
    return m / g;
}

// One run of `count` rows of m contiguous floats from x (and out): act(a[c]·(x − k) + b[c]) for row c, with k the
// run's *k (per_row = 0; k NULL: 0) or row c's k[c] (per_row = 1), in periods of period_rows rows (row_of).
NK_INLINE void affine_run(const int act, const int per_row, float *out, const float *x, long count, long m,
                          const float *a, const float *b, const float *k, const vindex *row_of, long period_rows) {
    const vf run_k = vset1(k && !per_row ? *k : 0.0f);
    for (long r0 = 0; r0 < count; r0 += period_rows) {
        const long n = count - r0 < period_rows ? count - r0 : period_rows, floats = n * m;
        const vmask first = vmask_first(n);
        const vf av = vload_part(first, a + r0), bv = vload_part(first, b + r0);
        const vf kr = per_row && k ? vload_part(first, k + r0) : run_k;
        const float *xp = x + r0 * m;
        float *yp = out + r0 * m;
#define RUN_VALUE(xv, v) \
    vfma(vsub(xv, per_row ? vpermute(row_of[v], kr) : kr), vpermute(row_of[v], av), vpermute(row_of[v], bv))
        long v = 0;
        for (; (v + 1) * NK_LANES <= floats; v++)
            vstore(yp + v * NK_LANES, vact(act, RUN_VALUE(vload(xp + v * NK_LANES), v)));
        if (v * NK_LANES < floats) {
            const vmask lanes = vmask_first(floats - v * NK_LANES);
            vstore_part(yp + v * NK_LANES, lanes, vact(act, RUN_VALUE(vload_part(lanes, xp + v * NK_LANES), v)));
        }
#undef RUN_VALUE
    }
}

NK_INLINE void sets_affine_runs(const int act, float *out, const float *x, long sets, long set_stride, long pieces,
                                long rows, long m, long piece_stride, const float *a, const float *b, const float *k) {
    static const float lane_numbers[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const long period_vectors = run_period_vectors(m), period_rows = period_vectors * NK_LANES / m;
    // (e + 1/2)·fl(1/m) for the float index e, truncated: within (q + 1)·2^−23 of (e + 1/2)/m (q ≤ 15 its integer
    // part), whose fraction lies in [1/(2m), 1 − 1/(2m)] with m < RUN_FLOATS, so exactly ⌊e/m⌋.
    vindex row_of[RUN_FLOATS];
    const vf inverse = vset1(1.0f / (float)m), step = vset1((float)NK_LANES);
    vf e = vadd(vload(lane_numbers), vset1(0.5f));
    for (long v = 0; v < period_vectors; v++, e = vadd(e, step)) row_of[v] = vindex_truncate(vmul(e, inverse));
    if (rows == 1 && set_stride == m) {
        // One-row sets side by side (BN's channels of one sample): a piece's rows of all the sets are one run.
        for (long i = 0; i < pieces; i++)
            affine_run(act, 1, out + i * piece_stride, x + i * piece_stride, sets, m, a, b, k, row_of, period_rows);
        return;
    }
    for (long j = 0; j < sets; j++)
        for (long i = 0; i < pieces; i++) {
            const long o = j * set_stride + i * piece_stride;
            affine_run(act, 0, out + o, x + o, rows, m, a + j * rows, b + j * rows, k ? k + j : NULL, row_of,
                       period_rows);
        }
}

NK_INLINE void sets_apply(const int grad, const int act, const int stream, float *out, const float *dy, const float *x,
                          long sets, long set_stride, long pieces, long rows, long m, long piece_stride, const float *p,
                          const float *q, const float *r, const float *k) {
    if (grad && !stream && rows > 1 && m > NK_LANES && m % NK_LANES) {
        sets_apply_runs(out, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k);
        return;
    }
    if (!grad && !stream && m < RUN_FLOATS && m % NK_LANES && (rows > 1 || (sets > 1 && set_stride == m))) {
        sets_affine_runs(act, out, x, sets, set_stride, pieces, rows, m, piece_stride, q, r, k);
        return;
    }
    // Rows in (set j, piece i, row) order; c = j·rows + row.
    long j = 0, i = 0, row = 0, o = 0, c = 0, left = sets * pieces * rows;
    if (!grad && GATHER_TAILS(act) && m % NK_LANES) {
        // Rows with a partial last vector: their full vectors in place, their tails NK_LANES rows at a time through
        // one buffer (tail element t of the group's row g at g·tail + t), so that every evaluation fills its lanes.
        const long body = m - m % NK_LANES, tail = m % NK_LANES;
        const vmask tm = vmask_first(tail);
        float zt[NK_LANES * NK_LANES];
        long at[NK_LANES];
        for (; left >= NK_LANES; left -= NK_LANES) {
            for (int g = 0; g < NK_LANES; g++) {
                row_apply(0, act, stream, out + o, NULL, x + o, body, 0, q[c], r[c], SET_K(j));
                vstore_part(zt + g * tail, tm,
                            vfma(vsub(vload_part(tm, x + o + body), vset1(SET_K(j))), vset1(q[c]), vset1(r[c])));
                at[g] = o + body;
                NEXT_ROW(j, i, row, o, c);
            }
            for (long v = 0; v < tail; v++) vstore(zt + v * NK_LANES, vact(act, vload(zt + v * NK_LANES)));
            for (int g = 0; g < NK_LANES; g++) vstore_part(out + at[g], tm, vload_part(tm, zt + g * tail));
        }
    }
    for (; left > 0; left--) {
        if (grad) row_apply(1, 0, stream, out + o, dy + o, x + o, m, p[c], q[j], r[j], SET_K(j));
        else row_apply(0, act, stream, out + o, NULL, x + o, m, 0, q[c], r[c], SET_K(j));
        NEXT_ROW(j, i, row, o, c);
    }
    if (stream) vstream_fence();
}
#undef NEXT_ROW
#undef SET_K

NK_FN void sets_affine_centered(float *y, const float *x, long sets, long set_stride, long pieces, long rows,
                                long m, long piece_stride, const float *k, const float *a, const float *b, int act,
                                int store) {
#define SETS_AFFINE(A)                                                                                           \
    do {                                                                                                         \
        if (store == NK_STORE_STREAMING && y != x)                                                               \
            sets_apply(0, A, 1, y, NULL, x, sets, set_stride, pieces, rows, m, piece_stride, NULL, a, b, k);    \
        else sets_apply(0, A, 0, y, NULL, x, sets, set_stride, pieces, rows, m, piece_stride, NULL, a, b, k);   \
    } while (0)
    ACT_DISPATCH(act, SETS_AFFINE)
#undef SETS_AFFINE
}

NK_FN void sets_gradient_apply(float *dx, const float *dy, const float *x, long sets, long set_stride, long pieces,
                               long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                               const float *k, int store) {
    if (store == NK_STORE_STREAMING && dx != dy && dx != x)
        sets_apply(1, 0, 1, dx, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k);
    else sets_apply(1, 0, 0, dx, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k);
}

/* A plain loop the compiler vectorizes for the instruction set, in double like the Swift loop it replaces; every
 * product and difference is its own statement and contraction is off, so each value is that loop's. */
NK_FN void channel_coefficients(float *restrict scale, float *restrict shift, const float *restrict gamma,
                                const float *restrict beta, long count, double factor, double residual) {
#pragma clang fp contract(off)
    for (long c = 0; c < count; c++) {
        const double a = (double)gamma[c] * factor;
        const double moved = a * residual;
        scale[c] = (float)a;
        shift[c] = (float)((double)beta[c] - moved);
    }
}

// One-channel set i standardized (gain 1, offset 0) from its mean mu and biased variance var: rstd = 1/sqrt(var + ε)
// and channel i's scale, shift and centre (NormalizationKernels.setCoefficients): the same double operations in the
// same order as that Swift code, so the same bits. `affine` (γ and β given, else 1 and 0) is a literal in every
// call, so that a loop of these never loads through a NULL γ: vectorized with the test inside, the loads became
// masked loads of NULL + i with an empty mask, which AMD's Zen 4 serves slowly (a non-affine BN's forward on
// (2, 4096, 1, 1) took 3x the affine one's; PERFORMANCE.md, session 37).
NK_INLINE void standardized_set(const int affine, long i, double mu, double var, double eps, double *restrict rstd,
                                double *restrict gain, double *restrict offset, float *restrict scale,
                                float *restrict shift, float *restrict centers, const float *restrict gamma,
                                const float *restrict beta) {
#pragma clang fp contract(off)
    const double r = 1 / __builtin_elementwise_sqrt(var + eps);  // no errno: a loop of these vectorizes
    const float center = (float)mu;
    const double residual = mu - (double)center;
    const double a = (affine ? (double)gamma[i] : 1.0) * r;
    rstd[i] = r;
    gain[i] = 1;
    offset[i] = 0;
    scale[i] = (float)a;
    shift[i] = (float)((affine ? (double)beta[i] : 0.0) - a * residual);
    centers[i] = center;
}

// One-channel sets (BN) of a channels-last tile, standardized (gain 1, offset 0): per channel i < w, from the
// samples' shifted sums (s1, s2 at j·stride + i, shift k[i]) the mean and biased variance (ChannelsLastKernels'
// shiftedMoments), rstd = 1/sqrt(var + ε), and the coefficients (NormalizationKernels.setCoefficients): the same
// double operations in the same order as those Swift loops, so the same bits. Chunks of channels go in vectors.
NK_FN void cl_standardized_coefficients(double *restrict mean, double *restrict variance, double *restrict rstd,
                                        double *restrict gain, double *restrict offset, float *restrict scale,
                                        float *restrict shift, float *restrict centers, const float *restrict k,
                                        const double *restrict s1, const double *restrict s2, long samples,
                                        long stride, long w, double positions, double count, float epsilon,
                                        const float *restrict gamma, const float *restrict beta) {
#pragma clang fp contract(off)
    enum { CHUNK = 64 };
    const double eps = (double)epsilon;
    for (long c0 = 0; c0 < w; c0 += CHUNK) {
        const long n = w - c0 < CHUNK ? w - c0 : CHUNK;
        double total[CHUNK], m2[CHUNK], mu[CHUNK];
        for (long i = 0; i < n; i++) total[i] = 0;
        for (long j = 0; j < samples; j++)
            for (long i = 0; i < n; i++) total[i] += (double)k[c0 + i] * positions + s1[j * stride + c0 + i];
        for (long i = 0; i < n; i++) {
            mu[i] = total[i] / count;
            m2[i] = 0;
        }
        for (long j = 0; j < samples; j++)
            for (long i = 0; i < n; i++) {
                const double e = mu[i] - (double)k[c0 + i], t = s1[j * stride + c0 + i];
                m2[i] += s2[j * stride + c0 + i] - 2 * e * t + positions * e * e;
            }
#define CL_STANDARDIZED(AFFINE)                                                                                \
    for (long i = 0; i < n; i++) {                                                                             \
        const double q = m2[i] / count, var = q >= 0 ? q : 0;                                                  \
        mean[c0 + i] = mu[i];                                                                                  \
        variance[c0 + i] = var;                                                                                \
        standardized_set(AFFINE, c0 + i, mu[i], var, eps, rstd, gain, offset, scale, shift, centers, gamma, beta); \
    }
        if (gamma) CL_STANDARDIZED(1) else CL_STANDARDIZED(0)
#undef CL_STANDARDIZED
    }
}

// Sets of w ≥ 8 channels of a channels-last tile (GN, LN): per set t < sets (channels t·w … t·w + w − 1), from the
// samples' shifted sums (s1, s2 of sample j < samples at j·stride + channel, shift k[channel]), the mean and biased
// variance as ChannelsLastKernels' shiftedMoments defines them, μ = Σ(k·M + Σ(x−k)) / count and Σ(x−μ)² =
// Σ [Σ(x−k)² − 2(μ−k)·Σ(x−k) + M·(μ−k)²], in double. Channel i adds into lane i mod 8 (8 doubles: one AVX-512
// vector, two AVX2), the lanes then in a fixed tree: the same bits on every thread count, within a few ulps of the
// Swift loop's one chain per set (the path without native kernels and for narrower sets), which waits on each
// addition in turn (about 10 % of GN (2, 2048, 7, 7)'s NHWC forward).
typedef double nk_double8 __attribute__((ext_vector_type(8)));

// The sum of the 8 lanes of *a, in a fixed tree. (Vectors of 8 doubles pass by pointer: by value they would
// change the ABI of the AVX2 build, which has no 512-bit registers; every helper is inlined anyway.)
NK_INLINE double lanes8_total(const nk_double8 *a) {
    const nk_double8 v = *a;
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

// *v = channels i … i + 7 of a row of w (doubles, or floats widened), the lanes past w 0.
#define NK_LOAD8(v, a, i, w)                                                                                   \
    do {                                                                                                       \
        if ((i) + 8 <= (w)) {                                                                                  \
            for (int l_ = 0; l_ < 8; l_++) (v)[l_] = (a)[(i) + l_];                                            \
        } else {                                                                                               \
            (v) = 0;                                                                                           \
            for (long l_ = 0; (i) + l_ < (w); l_++) (v)[l_] = (a)[(i) + l_];                                   \
        }                                                                                                      \
    } while (0)

NK_FN void cl_set_moments(double *restrict mean, double *restrict variance, const float *restrict k,
                          const double *restrict s1, const double *restrict s2, long sets, long w, long samples,
                          long stride, double positions, double count) {
#pragma clang fp contract(off)
    for (long t = 0; t < sets; t++) {
        const float *kt = k + t * w;
        nk_double8 total = 0, m2 = 0, kv, a, q;
        for (long j = 0; j < samples; j++)
            for (long i = 0; i < w; i += 8) {
                NK_LOAD8(kv, kt, i, w);
                NK_LOAD8(a, s1 + j * stride + t * w, i, w);
                total += kv * positions + a;  // lanes past w add 0
            }
        const double mu = lanes8_total(&total) / count;
        for (long j = 0; j < samples; j++)
            for (long i = 0; i < w; i += 8) {
                NK_LOAD8(kv, kt, i, w);
                NK_LOAD8(a, s1 + j * stride + t * w, i, w);
                NK_LOAD8(q, s2 + j * stride + t * w, i, w);
                nk_double8 e = mu - kv;
                for (long l = w - i; l < 8; l++) e[l] = 0;  // lanes past w: e = 0, so they add 0
                m2 += q - 2 * e * a + positions * e * e;
            }
        const double v = lanes8_total(&m2) / count;
        mean[t] = mu;
        variance[t] = v >= 0 ? v : 0;  // max(0, v), NaN to 0 as the Swift loop
    }
}

// The evaluation stage's coefficients of `count` channels (BN, BRN, MABN: EvaluationAffine in NormKit): a = γ/σ with
// σ = sqrt(spread + ε) (root = 1: a running variance or second moment) or the spread itself (root = 0: BRN's running
// standard deviation), the centre k = (float)μ of the running mean μ (center NULL: 0), scale = (float)a and
// shift = (float)(β − a·(μ − k)); gamma, beta NULL (both or neither): 1, 0. The double operations of
// EvaluationAffine's Swift loop in its order, so the same bits, 8 channels at a time (that stage took about 10 ns a
// channel before session 37, as much as the apply on BN (2, 2048, 7, 7); a scalar loop over pointers still 3–4:
// PERFORMANCE.md, session 37).
NK_INLINE void evaluation_channel(const int root, const int affine, const int centred, long i, float *restrict scale,
                                  float *restrict shift, float *restrict centers, const float *restrict center,
                                  const float *restrict spread, const float *restrict gamma,
                                  const float *restrict beta, double eps) {
#pragma clang fp contract(off)
    const double s = (double)spread[i];
    const double sigma = root ? __builtin_elementwise_sqrt(s + eps) : s;
    const double a = (affine ? (double)gamma[i] : 1.0) / sigma;
    const double mu = centred ? (double)center[i] : 0.0;
    const float k = (float)mu;
    const double residual = mu - (double)k;
    scale[i] = (float)a;
    shift[i] = (float)((affine ? (double)beta[i] : 0.0) - a * residual);
    centers[i] = k;
}

// One loop per combination of the flags, each a literal (standardized_set: no loads through NULL).
#define EVALUATION_LOOP(ROOT, AFFINE, CENTRED)                                                                    \
    do {                                                                                                          \
        _Pragma("clang loop vectorize(enable) vectorize_width(8)") for (long i = 0; i < count; i++)               \
            evaluation_channel(ROOT, AFFINE, CENTRED, i, scale, shift, centers, center, spread, gamma, beta, eps); \
    } while (0)
#define EVALUATION_CENTRED(ROOT, AFFINE)                           \
    do {                                                           \
        if (center) EVALUATION_LOOP(ROOT, AFFINE, 1);              \
        else EVALUATION_LOOP(ROOT, AFFINE, 0);                     \
    } while (0)
#define EVALUATION_AFFINE(ROOT)                                    \
    do {                                                           \
        if (gamma) EVALUATION_CENTRED(ROOT, 1);                    \
        else EVALUATION_CENTRED(ROOT, 0);                          \
    } while (0)

NK_FN void evaluation_coefficients(float *restrict scale, float *restrict shift, float *restrict centers,
                                   const float *restrict center, const float *restrict spread,
                                   const float *restrict gamma, const float *restrict beta, long count, double eps,
                                   int root) {
    if (root) EVALUATION_AFFINE(1);
    else EVALUATION_AFFINE(0);
}
#undef EVALUATION_AFFINE
#undef EVALUATION_CENTRED
#undef EVALUATION_LOOP

// The backward's coefficients stage of `w` one-channel sets (BN's channels of one sample block; set i's mean and rstd
// at index i, its channel's γ·gain at ge[i]; the per-sample sums s1 = Σdz and s2 = Σdz·(x − k) of sample j at
// j·stride + i, about k = (float)mean): s2 made exact in place (s2 − residual·s1, residual = mean − k), then
// meanG = Σ_j ge·s1, meanGX = Σ_j ge·s2, slope = −rstd·rstd·(meanGX·rstd/count), offset = −rstd·(meanG/count), and
// p = (float)(rstd·ge), q = (float)slope, r = (float)(offset − slope·residual) (the centre k is the caller's).
// The double operations of NormalizationKernels.setGradientCoefficients and its callers' conversions, in their
// order, so the same bits, 8 channels at a time (that loop, a set at a time, was about half of BN's backward on
// (2, 4096, 1, 1): PERFORMANCE.md, session 37).
NK_FN void gradient_coefficients(float *restrict p, float *restrict q, float *restrict r, double *restrict s2,
                                 const double *restrict s1, const double *restrict mean, const double *restrict rstd,
                                 const double *restrict ge, long samples, long stride, long w, double count) {
#pragma clang fp contract(off)
    enum { CHUNK = 64 };
    for (long c0 = 0; c0 < w; c0 += CHUNK) {
        const long n = w - c0 < CHUNK ? w - c0 : CHUNK;
        double residual[CHUNK], meanG[CHUNK], meanGX[CHUNK];
        for (long i = 0; i < n; i++) {
            const double mu = mean[c0 + i];
            residual[i] = mu - (double)(float)mu;
            meanG[i] = 0;
            meanGX[i] = 0;
        }
        for (long j = 0; j < samples; j++)
            for (long i = 0; i < n; i++) {
                const long row = j * stride + c0 + i;
                const double exact = s2[row] - residual[i] * s1[row];
                s2[row] = exact;
                meanG[i] += ge[c0 + i] * s1[row];
                meanGX[i] += ge[c0 + i] * exact;
            }
        for (long i = 0; i < n; i++) {
            const double rs = rstd[c0 + i];
            const double slope = -rs * rs * (meanGX[i] * rs / count), offset = -rs * (meanG[i] / count);
            p[c0 + i] = (float)(rs * ge[c0 + i]);
            q[c0 + i] = (float)slope;
            r[c0 + i] = (float)(offset - slope * residual[i]);
        }
    }
}

// The coefficients stage of `count` one-channel sets (BN's channels c0 … c0 + count − 1 of one sample block, set i
// at index i of every array, gamma and beta moved to c0), standardized, from their mean and biased variance.
NK_FN void standardized_coefficients(double *restrict rstd, double *restrict gain, double *restrict offset,
                                     float *restrict scale, float *restrict shift, float *restrict centers,
                                     const double *restrict mean, const double *restrict variance, long count,
                                     float epsilon, const float *restrict gamma, const float *restrict beta) {
    const double eps = (double)epsilon;
    if (gamma) {
#pragma clang loop vectorize(enable) vectorize_width(8)  // a square root and a division per set, 8 at a time
        for (long i = 0; i < count; i++)
            standardized_set(1, i, mean[i], variance[i], eps, rstd, gain, offset, scale, shift, centers, gamma, beta);
    } else {
#pragma clang loop vectorize(enable) vectorize_width(8)
        for (long i = 0; i < count; i++)
            standardized_set(0, i, mean[i], variance[i], eps, rstd, gain, offset, scale, shift, centers, gamma, beta);
    }
}

// ---- GN, LN, IN on one row of an N × C matrix (one position per sample) ---------------------------------------
// A sample's sets are runs of w contiguous channels there, a few KB in L1: its moments, its apply, and in the
// backward both passes of each set and its terms of dγ, dβ go in one call per sample. The forward's per-(n, c) scale
// and shift in double were as many as the data, and the tiles' per-(n, c) gradient sums 4x the data
// (PERFORMANCE.md, session 38). With x̂ = (x − k)·rstd + c (k = (float)μ, c = (float)(−(μ − k)·rstd) moving the
// centre to μ), the output is z = γ·x̂ + β in float, and act(z).

// Whole vectors (part = 0) or the lanes of m (part = 1; the others load as 0 and are not stored).
NK_INLINE vf vload_lanes(const int part, vmask m, const float *p) { return part ? vload_part(m, p) : vload(p); }
NK_INLINE void vstore_lanes(const int part, vmask m, float *p, vf v) {
    if (part) vstore_part(p, m, v);
    else vstore(p, v);
}

// z = γ·x̂ + β at channel i (x̂ alone without an affine).
NK_INLINE vf matrix_z(const int affine, const int part, vmask m, long i, vf xhat, const float *gamma,
                      const float *beta) {
    return affine ? vfma(vload_lanes(part, m, gamma + i), xhat, vload_lanes(part, m, beta + i)) : xhat;
}

// The set's centre k, x̂'s rstd and c as vectors, from its double mean and rstd.
typedef struct { vf k, r, c; } matrix_centring;
NK_INLINE matrix_centring matrix_centre(double mu, double rs) {
    const float k = (float)mu;
    matrix_centring t = {vset1(k), vset1((float)rs), vset1((float)(-(mu - (double)k) * rs))};
    return t;
}

NK_INLINE void matrix_row_forward_body(const int act, const int affine, float *y, double *mean, double *variance,
                                       double *rstd, const float *x, long sets, long w, float epsilon,
                                       const float *gamma, const float *beta) {
#pragma clang fp contract(off)
    sets_moments(x, sets, w, 1, w, w, mean, variance);
    const double inverse = 1 / (double)w, eps = (double)epsilon;
    for (long t = 0; t < sets; t++) {  // all the sets' square roots and divisions first: they vectorize
        variance[t] *= inverse;        // NormalizationKernels.batchStatistics, then setCoefficients' rstd
        rstd[t] = 1 / __builtin_elementwise_sqrt(variance[t] + eps);
    }
    for (long t = 0; t < sets; t++) {
        const matrix_centring e = matrix_centre(mean[t], rstd[t]);
        const long o = t * w;
        long i = 0;
        for (; i + NK_LANES <= w; i += NK_LANES) {
            const vf xhat = vfma(vsub(vload(x + o + i), e.k), e.r, e.c);
            vstore(y + o + i, vact(act, matrix_z(affine, 0, vmask_first(NK_LANES), o + i, xhat, gamma, beta)));
        }
        if (i < w) {
            const vmask m = vmask_first(w - i);
            const vf xhat = vfma(vsub(vload_part(m, x + o + i), e.k), e.r, e.c);
            vstore_part(y + o + i, m, vact(act, matrix_z(affine, 1, m, o + i, xhat, gamma, beta)));
        }
    }
}

NK_FN void matrix_row_forward(float *y, double *mean, double *variance, double *rstd, const float *x, long sets,
                              long w, float epsilon, const float *gamma, const float *beta, int act) {
#define MATRIX_FORWARD(A)                                                                                       \
    if (gamma) matrix_row_forward_body(A, 1, y, mean, variance, rstd, x, sets, w, epsilon, gamma, beta);       \
    else matrix_row_forward_body(A, 0, y, mean, variance, rstd, x, sets, w, epsilon, gamma, beta);
    ACT_DISPATCH(act, MATRIX_FORWARD)
#undef MATRIX_FORWARD
}

// Pass 1 on one vector of a set, at channel i: dz (dy, or dy·act'(z) stored to dx), the set's float sums
// s += Σ γ·dz, q += Σ γ·dz·(x − k), and the channels' float accumulators dγ += dz·x̂, dβ += dz (affine layers).
NK_INLINE void matrix_sums_step(const int act, const int affine, const int part, vmask m, long i, float *dx,
                                float *dgamma, float *dbeta, const float *dy, const float *x, const float *gamma,
                                const float *beta, matrix_centring e, vf *s, vf *q) {
    vf d = vsub(vload_lanes(part, m, x + i), e.k), g = vload_lanes(part, m, dy + i);
    if (part) d = vkeep(m, d);
    const vf xhat = vfma(d, e.r, e.c);
    if (act) {
        g = vact_grad(act, g, matrix_z(affine, part, m, i, xhat, gamma, beta));
        if (part) g = vkeep(m, g);  // lanes past the row: their z may give a dy·act'(z) of 0·NaN
        vstore_lanes(part, m, dx + i, g);
    }
    const vf weighted = affine ? vmul(g, vload_lanes(part, m, gamma + i)) : g;
    *s = vadd(*s, weighted);
    *q = vfma(weighted, d, *q);
    if (!affine) return;
    vstore_lanes(part, m, dgamma + i, vfma(g, xhat, vload_lanes(part, m, dgamma + i)));
    vstore_lanes(part, m, dbeta + i, vadd(vload_lanes(part, m, dbeta + i), g));
}

// Pass 2 on one vector: dx = (rstd·γ)·dz + q·(x − k) + o.
NK_INLINE void matrix_apply_step(const int act, const int affine, const int part, vmask m, long i, float *dx,
                                 const float *dy, const float *x, const float *gamma, vf kv, vf rv, vf qv, vf ov) {
    const vf dz = vload_lanes(part, m, act ? dx + i : dy + i);
    const vf p = affine ? vmul(vload_lanes(part, m, gamma + i), rv) : rv;
    vstore_lanes(part, m, dx + i, vfma(dz, p, vfma(vsub(vload_lanes(part, m, x + i), kv), qv, ov)));
}

NK_INLINE void matrix_row_backward_body(const int act, const int affine, float *dx, float *dgamma, float *dbeta,
                                        const float *dy, const float *x, long sets, long w, const double *mean,
                                        const double *rstd, const float *gamma, const float *beta) {
#pragma clang fp contract(off)
    for (long t = 0; t < sets; t++) {
        const long o = t * w;
        const double mu = mean[t], rs = rstd[t], residual = mu - (double)(float)mu;
        const matrix_centring e = matrix_centre(mu, rs);
        double sumG = 0, sumGD = 0;  // Σ γ·dz, Σ γ·dz·(x − k): float lanes, a double total every BLOCK channels
        for (long start = 0; start < w; start += BLOCK) {
            const long end = w - start < BLOCK ? w : start + BLOCK;
            vf s = vzero(), q = vzero();
            long i = start;
            for (; i + NK_LANES <= end; i += NK_LANES)
                matrix_sums_step(act, affine, 0, vmask_first(NK_LANES), o + i, dx, dgamma, dbeta, dy, x, gamma, beta,
                                 e, &s, &q);
            if (i < end)
                matrix_sums_step(act, affine, 1, vmask_first(end - i), o + i, dx, dgamma, dbeta, dy, x, gamma, beta,
                                 e, &s, &q);
            sumG += (double)vreduce(s);
            sumGD += (double)vreduce(q);
        }
        // NormalizationKernels.setGradientCoefficients for one sample's set (gain 1, offset 0), then its centring.
        const double exact = sumGD - residual * sumG, count = (double)w;
        const double slope = -rs * rs * (exact * rs / count), offset = -rs * (sumG / count);
        const vf qv = vset1((float)slope), ov = vset1((float)(offset - slope * residual));
        long i = 0;
        for (; i + NK_LANES <= w; i += NK_LANES)
            matrix_apply_step(act, affine, 0, vmask_first(NK_LANES), o + i, dx, dy, x, gamma, e.k, e.r, qv, ov);
        if (i < w)
            matrix_apply_step(act, affine, 1, vmask_first(w - i), o + i, dx, dy, x, gamma, e.k, e.r, qv, ov);
    }
}

NK_FN void matrix_row_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, long sets,
                               long w, const double *mean, const double *rstd, const float *gamma, const float *beta,
                               int act) {
#define MATRIX_BACKWARD(A)                                                                                      \
    if (gamma) matrix_row_backward_body(A, 1, dx, dgamma, dbeta, dy, x, sets, w, mean, rstd, gamma, beta);     \
    else matrix_row_backward_body(A, 0, dx, dgamma, dbeta, dy, x, sets, w, mean, rstd, gamma, beta);
    ACT_DISPATCH(act, MATRIX_BACKWARD)
#undef MATRIX_BACKWARD
}
