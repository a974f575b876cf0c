// The channels-last kernels of the native kernel body and its exported table: part three of three, included last,
// after KernelBody.h and KernelBodySets.h, by KernelsAVX512.c and KernelsAVX2.c (the scheme: KernelTable.h).

// ---- Channels-last (NHWC): one sample's m positions are m rows of c contiguous floats ------------------------
// Each row's channels go in vectors, CL_WIDTH channels (4 vectors) at a time with coefficients and accumulators in
// registers; wider rows are cut into tiles of rows (the apply: about 32 KB, and at least CL_TILE_ROWS rows; the sums:
// chunks of CL_ROWS rows or more) that every CL_WIDTH-channel slice sweeps in turn, so memory is read once, nearly in
// order. Each element is read once whatever the tile's height; the height sets how many rows share one load of a
// slice's coefficients (and the sums' accumulators): rows of 1,024 channels and more took 8, 4 or fewer rows per sweep
// before session 21, and 16 made GN's NHWC forward on (2, 2048, 7, 7) and (32, 2048, 7, 7) about 0.9x the time
// (PERFORMANCE.md, session 21). The apply walks rows whose tile sweep would alias row by row instead (cl_apply_rows,
// session 36), and so do whole rows read from memory (the sums, cl_pairs_walk; session 45) and the forward's applies
// of whole rows from beyond L2 (cl_forward_walk_fits; from memory session 45, from L3 session 47).
// Each float lane adds at most CL_ROWS positions before its total goes to double.
#define CL_VECTORS 4
#define CL_WIDTH (CL_VECTORS * NK_LANES)
#define CL_MAX 1024
#define CL_ROWS 64
#define CL_TILE_ROWS 16

// Vector v of a run of nv vectors whose last one has `tail` lanes (0: full), loaded or stored with the tail mask tm.
#define CL_LOAD(p, v) ((v) == nv - 1 && tail ? vload_part(tm, (p)) : vload(p))
#define CL_STORE(p, v, value)                                             \
    do {                                                                  \
        if ((v) == nv - 1 && tail) vstore_part((p), tm, (value));         \
        else vstore((p), (value));                                        \
    } while (0)

// The per-channel arrays of an nk_activation_backward moved to channel c0, and its dz to element o.
NK_INLINE nk_activation_backward act_at(const nk_activation_backward *b, long c0, long o) {
    nk_activation_backward moved = *b;
    moved.scale += c0;
    moved.shift += c0;
    moved.center += c0;
    if (moved.dz) moved.dz += o;
    return moved;
}

// The runs below take their vector count nv (1 … CL_VECTORS) as a constant: CL_NV calls body(NV) with NV a literal,
// so each copy unrolls its vector loops and keeps coefficients and accumulators in registers. (With nv a variable
// they lived on the stack, and each row's sums waited on the store of the row before: 1.5–2× the time.)
#define CL_NV(w, body)                                                    \
    switch ((int)(((w) + NK_LANES - 1) / NK_LANES)) {                     \
    case 1: body(1); break;                                               \
    case 2: body(2); break;                                               \
    case 3: body(3); break;                                               \
    default: body(4); break;                                              \
    }

// The widest rows the sums take in one slice of registers: NK_SUMS_VECTORS vectors (the layer's; CL_VECTORS where its
// registers hold no more than the strips', 16 with AVX-512's 32: a 256-channel row). cl_sums_wide.
#define CL_SUMS_WIDTH (NK_SUMS_VECTORS * NK_LANES)

// Whether the sums pass prefetches: for inputs beyond the caches (read NK_READ_AHEAD), and always with SiLU. A
// tile's strips (CL_WIDTH channels of each row, rows c apart) are not a stream the hardware prefetcher runs far
// ahead on, and from memory a pass then holds too few misses in flight; so each line is prefetched one tile
// (32 KB) ahead. SiLU's ~25 operations per vector fill the core's window, so its passes (the forward's apply too)
// prefetch wherever the data is. Measured (PERFORMANCE.md, session 24): (32, 256, 56, 56) GN forward 0.85–0.91x
// the time, GN + SiLU 0.86–0.92x; from L2/L3 without SiLU the prefetches cost more than they save (1.07–1.23x),
// and so did the apply's beyond the caches (BN's forward 1.07–1.13x), which therefore prefetches under SiLU only.
#define CL_AHEAD(act, read) ((act) == NK_SILU || (read) == NK_READ_AHEAD)

// p[0 … n) += the first n lanes of v (n ≤ NK_LANES), each widened to double: the operations of a scalar loop, so its
// bits, with whole vectors where n = NK_LANES.
typedef double nk_double_lanes
    __attribute__((vector_size(NK_LANES * sizeof(double)), aligned(sizeof(double)), may_alias));
typedef float nk_float_lanes __attribute__((vector_size(NK_LANES * sizeof(float))));
NK_INLINE void vadd_widened(double *p, vf v, long n) {
    if (n == NK_LANES) {
        *(nk_double_lanes *)p += __builtin_convertvector((nk_float_lanes)v, nk_double_lanes);
        return;
    }
    float lanes[NK_LANES];
    vstore(lanes, v);
    for (long j = 0; j < n; j++) p[j] += lanes[j];
}

// Per channel, with d = x − k[ch] (k NULL: 0): s1[ch] += Σ d, s2[ch] += Σ d² (grad 0), or s1[ch] += Σ g,
// s2[ch] += Σ g·d (grad 1; g = dy, or dz = dy·act'(z) with act > 0, stored to b->dz unless it is NULL), over `rows`
// (≤ CL_ROWS) rows of channels 0 … w − 1 (nv vectors, w ≤ CL_WIDTH: all in registers), rows c apart: each lane adds
// its rows in float, in order, and its total then to double. With ahead = 1 each line of x (and dy) is prefetched
// `distance` rows on (about 32 KB: CL_AHEAD).
NK_INLINE void cl_pairs_tile(const int grad, const int act, const int ahead, const int nv, double *s1, double *s2,
                             const float *dy, const float *x, long rows, long c, long w, const float *k,
                             const nk_activation_backward *b, long distance) {
    const long tail = w % NK_LANES;
    const vmask tm = vmask_first(tail ? tail : 1);
    vf kv[CL_VECTORS], a[CL_VECTORS], q[CL_VECTORS];
    act_affine aff[CL_VECTORS];
    float *const dz = act ? b->dz : NULL;
    for (int v = 0; v < nv; v++) {
        kv[v] = k ? CL_LOAD(k + v * NK_LANES, v) : vzero();
        a[v] = q[v] = vzero();
        if (act) {
            aff[v].fa = CL_LOAD(b->scale + v * NK_LANES, v);
            aff[v].fb = CL_LOAD(b->shift + v * NK_LANES, v);
            aff[v].fk = CL_LOAD(b->center + v * NK_LANES, v);
        }
    }
    for (long p = 0; p < rows; p++) {
        for (int v = 0; v < nv; v++) {
            const long o = p * c + v * NK_LANES;
            if (ahead) {
                vprefetch(x, o + distance * c);
                if (grad) vprefetch(dy, o + distance * c);
            }
            vf xv = CL_LOAD(x + o, v), d = vsub(xv, kv[v]);
            vf g = grad ? CL_LOAD(dy + o, v) : d;
            ACT_GRAD(act, g, xv, aff[v], dz, if (dz) CL_STORE(dz + o, v, g));
            a[v] = vadd(a[v], g);
            q[v] = vfma(g, d, q[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        const long lanes = v == nv - 1 && tail ? tail : NK_LANES;
        vadd_widened(s1 + v * NK_LANES, a[v], lanes);
        vadd_widened(s2 + v * NK_LANES, q[v], lanes);
    }
}

// s1[ch] += Σ d (or Σ g), s2[ch] += Σ d² (or Σ g·d) for channels 0 … w − 1 (w ≤ CL_MAX) of m rows c apart. The rows
// go in chunks of CL_ROWS rows or a power of two times more, the tallest within CL_CHUNK_FLOATS floats of x (and dy);
// each CL_WIDTH-channel slice sweeps a whole chunk before the next slice starts, so x (and dy) come from memory or L3
// once (a chunk stays in L2 for the slices after the first). A float lane adds one value per row, so its total goes to
// double every CL_ROWS rows (the accuracy of the channels-first kernels, whose lanes add ~n/64 values) and at the last
// row: at the same rows for every w, so that a channel's sums are the same bits whether its slice of the row is narrow
// or the whole row (the slice width follows the thread count; session 28). The lanes stay in registers for their
// CL_ROWS rows and go to double in vectors (cl_pairs_tile). Until session 43 a slice swept tiles of 16–64 rows (about
// 32 KB), storing its lanes to float rows and reloading them from tile to tile, and a scalar loop added those rows to
// double: the same bits, and GN's NHWC sums pass on (2, 256, 56, 56) split over two threads took 1.08x this one's
// time (a C model with these kernels; PERFORMANCE.md, session 43).
#define CL_CHUNK_FLOATS 32768
NK_INLINE void cl_pairs_run(const int grad, const int act, const int ahead, double *s1, double *s2, const float *dy,
                            const float *x, long m, long c, long w, const float *k, const nk_activation_backward *b) {
    long chunk = CL_ROWS;
    while (2 * chunk * w * (grad ? 2 : 1) <= CL_CHUNK_FLOATS) chunk *= 2;
    // Prefetches (ahead = 1) go 16, 32 or 64 rows on in each slice's run, the most within about 32 KB (CL_AHEAD).
    long distance = CL_TILE_ROWS;
    while (distance < CL_ROWS && 2 * distance * w <= 8192) distance *= 2;
    for (long p0 = 0; p0 < m; p0 += chunk) {
        const long rows = p0 + chunk < m ? chunk : m - p0;
        for (long c0 = 0; c0 < w; c0 += CL_WIDTH) {
            const long cw = w - c0 < CL_WIDTH ? w - c0 : CL_WIDTH;
            for (long r0 = 0; r0 < rows; r0 += CL_ROWS) {
                const long block = r0 + CL_ROWS < rows ? CL_ROWS : rows - r0, o = (p0 + r0) * c + c0;
                nk_activation_backward moved = act ? act_at(b, c0, o) : (nk_activation_backward){0};
#define CL_PAIRS_TILE(NV)                                                                                   \
    cl_pairs_tile(grad, act, ahead, NV, s1 + c0, s2 + c0, grad ? dy + o : NULL, x + o, block, c, cw,              \
                  k ? k + c0 : NULL, &moved, distance)
                CL_NV(cw, CL_PAIRS_TILE)
#undef CL_PAIRS_TILE
            }
        }
    }
}

#if NK_SUMS_VECTORS > CL_VECTORS
// cl_pairs_run's sums without an activation for rows of CL_WIDTH < w ≤ CL_SUMS_WIDTH channels (nv = 5 … NK_SUMS_VECTORS
// vectors, rows c apart) as one slice: each row read whole and in order, its 2·nv accumulators in registers (AVX-512's
// 32), the shifts read beside x from L1 (the registers cannot also hold them), no prefetches of our own. Each lane adds
// the same values in the same order and goes to double every CL_ROWS rows from the first and at the last: the bits of
// the strips. Until session 51 such rows went as strips of CL_WIDTH channels, a 256-channel row in four sweeps; on
// (2, 256, 56, 56) from L3, one sample a thread, the sums of x took 1.35–1.65x a plain read's time and the gradient sums
// 1.40–1.51x, this way 1.20–1.35x and 1.11–1.23x: 0.80–0.89x and 0.76–0.83x the time (scripts/sums_pass_probe.c, the
// two trees' kernels alternated). Rows of 512 channels as two such slices took 1.45–1.50x against the strips'
// 1.34–1.43x, so wider rows stay strips. What the compiler needs to keep the
// accumulators in registers: the loops unrolled by pragma, k never NULL (a test of it in the loop: the sums of x
// 1.6x a read), a copy for rows of whole vectors (a partial last vector loaded in the loop took a register and three
// accumulators to the stack: 1.37x), and this code out of line (cl_sums_wide_rows).
#define CL_NV_WIDE(w, body)                                               \
    switch ((int)(((w) + NK_LANES - 1) / NK_LANES)) {                     \
    case 5: body(5); break;                                               \
    case 6: body(6); break;                                               \
    case 7: body(7); break;                                               \
    case 8: body(8); break;                                               \
    case 9: body(9); break;                                               \
    case 10: body(10); break;                                             \
    case 11: body(11); break;                                             \
    case 12: body(12); break;                                             \
    case 13: body(13); break;                                             \
    case 14: body(14); break;                                             \
    case 15: body(15); break;                                             \
    default: body(16); break;                                             \
    }
NK_INLINE void cl_sums_wide(const int grad, const int nv, const int whole, double *s1, double *s2, const float *dy,
                            const float *x, long m, long c, long w, const float *k) {
    const long tail = whole ? 0 : w % NK_LANES;
    const vmask tm = vmask_first(tail ? tail : 1);
    vf a[NK_SUMS_VECTORS], q[NK_SUMS_VECTORS];
    for (long p0 = 0; p0 < m; p0 += CL_ROWS) {
        const long end = p0 + CL_ROWS < m ? p0 + CL_ROWS : m;
#pragma clang loop unroll(full)
        for (int v = 0; v < nv; v++) a[v] = q[v] = vzero();
        for (long p = p0; p < end; p++) {
#pragma clang loop unroll(full)
            for (int v = 0; v < nv; v++) {
                const long o = p * c + v * NK_LANES;
                const vf d = vsub(CL_LOAD(x + o, v), CL_LOAD(k + v * NK_LANES, v)), g = grad ? CL_LOAD(dy + o, v) : d;
                a[v] = vadd(a[v], g);
                q[v] = vfma(g, d, q[v]);
            }
        }
#pragma clang loop unroll(full)
        for (int v = 0; v < nv; v++) {
            const long lanes = v == nv - 1 && tail ? tail : NK_LANES;
            vadd_widened(s1 + v * NK_LANES, a[v], lanes);
            vadd_widened(s2 + v * NK_LANES, q[v], lanes);
        }
    }
}

// cl_sums_wide for nv = ⌈w / NK_LANES⌉, with or without a shift (none: a row of zeros, x − 0 being x bit for bit). Out
// of line: inlined beside the strips, its copies made the strips' passes over 512-channel rows 1.02–1.08x the time.
__attribute__((target(NK_TARGET), noinline)) static void cl_sums_wide_rows(const int grad, double *s1, double *s2,
                                                                           const float *dy, const float *x, long m,
                                                                           long c, long w, const float *k) {
#define CL_SUMS_WIDE(NV)                                                      \
    do {                                                                      \
        if (grad && whole) cl_sums_wide(1, NV, 1, s1, s2, dy, x, m, c, w, k); \
        else if (grad) cl_sums_wide(1, NV, 0, s1, s2, dy, x, m, c, w, k);     \
        else if (whole) cl_sums_wide(0, NV, 1, s1, s2, NULL, x, m, c, w, k);  \
        else cl_sums_wide(0, NV, 0, s1, s2, NULL, x, m, c, w, k);             \
    } while (0)
    static const float zeros[CL_SUMS_WIDTH];
    if (!k) k = zeros;
    const int whole = w % NK_LANES == 0;
    CL_NV_WIDE(w, CL_SUMS_WIDE)
#undef CL_SUMS_WIDE
}
#endif

// cl_pairs_run's sums for whole rows (w = c) of CL_WIDTH to CL_MAX channels read from memory (NK_READ_AHEAD): row by
// row, each row's lines in address order (the hardware prefetchers follow; prefetches of our own were no faster), the
// float lanes in an L1 row of accumulators loaded and stored beside each vector, where the strips keep them in
// registers. From memory the strips read a quarter of each 1 KB row per sweep, which the prefetchers serve poorly: on
// (32, 256, 56, 56) the gradient sums take 0.58–0.65x their time this way (a plain loop's rate), the sums of x
// 0.79–1.01x (scripts/memory_passes_probe.c; PERFORMANCE.md, session 45). Not for slices of rows (w < c: a GN tile's),
// which took 1.3–1.8x, nor with the lanes kept in registers over four rows read vector by vector (1.2–1.85x). Each lane
// adds the same values in the same order and goes to double at the same rows (every CL_ROWS from the first, and at the
// last), so the bits are cl_pairs_run's.
NK_INLINE void cl_pairs_walk(const int grad, const int act, double *s1, double *s2, const float *dy, const float *x,
                             long m, long c, long w, const float *k, const nk_activation_backward *b) {
    _Alignas(64) float lanes[2][CL_MAX];
    const long tail = w % NK_LANES, whole = w - tail;
    const vmask tm = vmask_first(tail ? tail : 1);
    float *const dz = act ? b->dz : NULL;
    for (long p0 = 0; p0 < m; p0 += CL_ROWS) {
        const long end = p0 + CL_ROWS < m ? p0 + CL_ROWS : m;
        for (long j = 0; j < w; j += NK_LANES) {
            vstore(lanes[0] + j, vzero());
            vstore(lanes[1] + j, vzero());
        }
        for (long o = p0 * c; o < end * c; o += c) {
            for (long j = 0; j < w; j += NK_LANES) {
                const int part = j == whole;
#define CW_LOAD(ptr) (part ? vload_part(tm, (ptr)) : vload(ptr))
                const vf xv = CW_LOAD(x + o + j), d = vsub(xv, k ? CW_LOAD(k + j) : vzero());
                vf g = grad ? CW_LOAD(dy + o + j) : d;
                if (act) {
                    const act_affine aff = {CW_LOAD(b->scale + j), CW_LOAD(b->shift + j), CW_LOAD(b->center + j)};
                    ACT_GRAD(act, g, xv, aff, dz, if (dz) {
                        if (part) vstore_part(dz + o + j, tm, g);
                        else vstore(dz + o + j, g);
                    });
                }
#undef CW_LOAD
                vstore(lanes[0] + j, vadd(vload(lanes[0] + j), g));
                vstore(lanes[1] + j, vfma(g, d, vload(lanes[1] + j)));
            }
        }
        for (long j = 0; j < w; j += NK_LANES) {
            const long n = j == whole ? tail : NK_LANES;
            vadd_widened(s1 + j, vload(lanes[0] + j), n);
            vadd_widened(s2 + j, vload(lanes[1] + j), n);
        }
    }
}

// The sums of channels 0 … w − 1 in runs of CL_MAX channels. Rows of CL_WIDTH < w ≤ CL_SUMS_WIDTH channels without
// an activation take cl_sums_wide (from memory (fromMemory = 1, NK_READ_AHEAD) whole rows only: slices of rows there
// are unmeasured); other whole rows of CL_WIDTH to CL_MAX channels from memory cl_pairs_walk. From memory, on
// (32, 256, 56, 56), the sums of x took 1.00–1.09x a plain read's time by cl_sums_wide against the walk's 1.37–1.69x
// (1.19–1.20x when the wide rows prefetched), the gradient sums 0.88–1.01x against 0.96–1.03x
// (scripts/memory_passes_probe.c; PERFORMANCE.md, session 51).
NK_INLINE void cl_pairs(const int grad, const int act, const int ahead, const int fromMemory, double *s1, double *s2,
                        const float *dy, const float *x, long m, long c, long w, const float *k,
                        const nk_activation_backward *b) {
#if NK_SUMS_VECTORS > CL_VECTORS
    if (!act && w > CL_WIDTH && w <= CL_SUMS_WIDTH && (w == c || !fromMemory)) {
        cl_sums_wide_rows(grad, s1, s2, dy, x, m, c, w, k);
        return;
    }
#endif
    if (fromMemory && w == c && w > CL_WIDTH && w <= CL_MAX) {
        cl_pairs_walk(grad, act, s1, s2, dy, x, m, c, w, k, b);
        return;
    }
    for (long c0 = 0; c0 < w; c0 += CL_MAX) {
        const long cw = w - c0 < CL_MAX ? w - c0 : CL_MAX;
        nk_activation_backward moved = act ? act_at(b, c0, c0) : (nk_activation_backward){0};
        cl_pairs_run(grad, act, ahead, s1 + c0, s2 + c0, grad ? dy + c0 : NULL, x + c0, m, c, cw, k ? k + c0 : NULL,
                     &moved);
    }
}

NK_FN void cl_centered_sums(double *s1, double *s2, const float *x, long m, long c, long w, const float *k,
                            int read) {
    if (read == NK_READ_AHEAD) cl_pairs(0, 0, 1, 1, s1, s2, NULL, x, m, c, w, k, NULL);
    else cl_pairs(0, 0, 0, 0, s1, s2, NULL, x, m, c, w, k, NULL);
}

NK_FN void cl_gradient_sums(double *s1, double *s2, const float *dy, const float *x, long m, long c, long w,
                            const float *k, const nk_activation_backward *b, int read) {
#define CL_GRADIENT_SUMS(A) cl_pairs(1, A, CL_AHEAD(A, read), read == NK_READ_AHEAD, s1, s2, dy, x, m, c, w, k, b)
    ACT_DISPATCH(b ? b->kind : NK_IDENTITY, CL_GRADIENT_SUMS)
#undef CL_GRADIENT_SUMS
}

// The apply's value at one vector of x (both walks below, so the same bits): act(a·(x − k) + b), or p·g + (q·(x − k) +
// r) with g = dy, or dz = dy·act'(z) recomputed as the sums pass computes it (ACT_GRAD: the same operations).
NK_INLINE vf cl_apply_value(const int grad, const int act, vf xv, vf g, vf kv, vf av, vf bv, vf pv,
                            const act_affine aff) {
    const vf value = vfma(av, vsub(xv, kv), bv);
    if (!grad) return vact(act, value);
    ACT_GRAD(act, g, xv, aff, NULL, (void)0);
    return vfma(pv, g, value);
}

// out = act(a[ch]·(x − k[ch]) + b[ch]) (grad 0), or p·dy + q·(x − k) + r (grad 1: a = q, b = r); out may alias x.
// Channels c0 … c0 + w − 1 (w ≤ CL_WIDTH: coefficients in registers) of rows c apart; whole vectors streamed when
// stream = 1 (every row's vectors then start on a vector boundary: cl_apply checks); with ahead = 1 each line of x
// prefetched `distance` rows on.
NK_INLINE void cl_apply_nv(const int grad, const int act, const int stream, const int ahead, const int nv, float *out,
                           const float *dy, const float *x, long m, long c, long w, const float *p, const float *a,
                           const float *b, const float *k, const nk_activation_backward *ab, long distance) {
    const long tail = w % NK_LANES;
    const vmask tm = vmask_first(tail ? tail : 1);
    vf kv[CL_VECTORS], av[CL_VECTORS], bv[CL_VECTORS], pv[CL_VECTORS];
    act_affine aff[CL_VECTORS];
    for (int v = 0; v < nv; v++) {
        const long o = v * NK_LANES;
        kv[v] = k ? CL_LOAD(k + o, v) : vzero();
        av[v] = CL_LOAD(a + o, v);
        bv[v] = CL_LOAD(b + o, v);
        pv[v] = grad ? CL_LOAD(p + o, v) : vzero();
        aff[v] = no_act;
        if (grad && act) {
            aff[v].fa = CL_LOAD(ab->scale + o, v);
            aff[v].fb = CL_LOAD(ab->shift + o, v);
            aff[v].fk = CL_LOAD(ab->center + o, v);
        }
    }
    // Rows walked by pointers up to an end pointer: with an index into x, dy and out, clang kept the row count and
    // `out` on the stack (the function holds every variant), and each row waited on a decrement through memory (GN's
    // 16-channel NHWC forward 1.7x the time); a count down ran 1.03–1.7x (PERFORMANCE.md, session 30).
    const float *xr = x, *dyr = dy;
    float *outr = out;
    for (const float *end = x + m * c; xr != end; xr += c, outr += c) {
        for (int v = 0; v < nv; v++) {
            const long o = v * NK_LANES;
            if (ahead) vprefetch(xr, o + distance * c);
            const vf g = grad ? CL_LOAD(dyr + o, v) : vzero();
            const vf value = cl_apply_value(grad, act, CL_LOAD(xr + o, v), g, kv[v], av[v], bv[v], pv[v], aff[v]);
            if (v == nv - 1 && tail) vstore_part(outr + o, tm, value);
            else row_store(stream, outr + o, value);
        }
        if (grad) dyr += c;
    }
}

NK_INLINE void cl_apply_run(const int grad, const int act, const int stream, const int ahead, float *out,
                            const float *dy, const float *x, long m, long c, long w, const float *p, const float *a,
                            const float *b, const float *k, const nk_activation_backward *ab, long distance) {
#define CL_APPLY_NV(NV) cl_apply_nv(grad, act, stream, ahead, NV, out, dy, x, m, c, w, p, a, b, k, ab, distance)
    CL_NV(w, CL_APPLY_NV)
#undef CL_APPLY_NV
}

// Whether a tile's sweep would load row r + 1 of `in` at the low 12 address bits of the stores to row r of `out` it has
// just made (within a slice's CL_WIDTH channels either way): the core then takes each load for one that may depend on
// those stores (4K aliasing). Rows a multiple of 4 KB apart with x and y at the same page offset do that at every
// vector: GN's NHWC forward on (1, 2048, 7, 7) took 1.8x the time of (1, 2064, 7, 7) on Zen 4 (PERFORMANCE.md,
// session 36).
NK_INLINE int cl_next_row_aliases(const float *out, const float *in, long c) {
    if (!in) return 0;
    const unsigned long span = CL_WIDTH * sizeof(float);
    const unsigned long offset = ((uintptr_t)in + (uintptr_t)c * sizeof(float) - (uintptr_t)out) % 4096;
    return offset < span || offset > 4096 - span;
}

// One vector of the row walk at channel j (part: the row's partial last vector, mask tm; centered: k is not NULL, a
// constant so that no load of k is made conditional).
NK_INLINE void cl_walk_vector(const int grad, const int act, const int stream, const int centered, const int part,
                              const vmask tm, float *out, const float *dy, const float *x, long j, const float *p,
                              const float *a, const float *b, const float *k, const nk_activation_backward *ab) {
#define RW_LOAD(ptr) (part ? vload_part(tm, (ptr)) : vload(ptr))
    act_affine aff = no_act;
    if (grad && act) aff = (act_affine){RW_LOAD(ab->scale + j), RW_LOAD(ab->shift + j), RW_LOAD(ab->center + j)};
    const vf value = cl_apply_value(grad, act, RW_LOAD(x + j), grad ? RW_LOAD(dy + j) : vzero(),
                                    centered ? RW_LOAD(k + j) : vzero(), RW_LOAD(a + j), RW_LOAD(b + j),
                                    grad ? RW_LOAD(p + j) : vzero(), aff);
#undef RW_LOAD
    if (part) vstore_part(out + j, tm, value);
    else row_store(stream, out + j, value);
}

// Rows of w ≤ CL_MAX channels.
NK_INLINE void cl_row_walk(const int grad, const int act, const int stream, const int centered, float *out,
                           const float *dy, const float *x, long m, long c, long w, const float *p, const float *a,
                           const float *b, const float *k, const nk_activation_backward *ab) {
    const long tail = w % NK_LANES, whole = w - tail;
    const vmask tm = vmask_first(tail ? tail : 1);
    const float *xr = x, *dyr = dy;
    float *outr = out;
    for (long r = 0; r < m; r++, xr += c, outr += c) {
        for (long j = 0; j < whole; j += NK_LANES)
            cl_walk_vector(grad, act, stream, centered, 0, tm, outr, dyr, xr, j, p, a, b, k, ab);
        if (tail) cl_walk_vector(grad, act, stream, centered, 1, tm, outr, dyr, xr, whole, p, a, b, k, ab);
        if (grad) dyr += c;
    }
}

NK_INLINE int cl_on_vector_boundary(const float *p) { return !p || (uintptr_t)p % (NK_LANES * sizeof(float)) == 0; }

// `row` itself when it is on a vector boundary (or NULL), else its first w floats copied to `copy` (on one).
NK_INLINE const float *cl_on_boundary(const float *row, float *copy, long w) {
    if (cl_on_vector_boundary(row)) return row;
    for (long j = 0; j < w; j++) copy[j] = row[j];
    return copy;
}

// The apply row by row, CL_MAX channels at a time: each vector's coefficients loaded from L1 beside it (a chunk's,
// 12–28 KB, stay there), each row's loads and stores in address order. The coefficient rows are read from vector
// boundaries, copied onto them first where they are not: a load across two cache lines costs two, and the walk makes
// one per coefficient row per vector of data (GN (2, 2048, 7, 7) NHWC forward 0.85x the time with them aligned;
// PERFORMANCE.md, session 41). Taken for rows whose tile sweep would alias (cl_next_row_aliases: a row's loads then
// follow the stores of the row before by a whole row) and for rows a multiple of 4 KB apart, whose tile puts every
// row's slice in the same few cache sets (1.4x the time even where x and out are at other page offsets; a C model of
// both walks, PERFORMANCE.md, session 36); for the forward's apply over whole rows from beyond L2
// (cl_forward_walk_fits), whose tile sweep the prefetchers serve poorly from memory and from L3; and for the
// backward's apply without an activation (cl_row_walk_fits):
// there the tile sweep's strided strips of x, dy and out (CL_WIDTH channels down a tile) cost more than the row walk's
// loads from L1 (session 41). The same operations on each element, so the same bits. Not under SiLU, whose ~25
// operations per vector hide the aliasing and which ran 1.0–1.3x the time this way.
NK_INLINE void cl_apply_rows(const int grad, const int act, const int stream, float *out, const float *dy,
                             const float *x, long m, long c, long w, const float *p, const float *a, const float *b,
                             const float *k, const nk_activation_backward *ab) {
    _Alignas(64) float copies[7][CL_MAX];
    for (long c1 = 0; c1 < w; c1 += CL_MAX) {
        const long cw = w - c1 < CL_MAX ? w - c1 : CL_MAX;
        nk_activation_backward moved = {0};
        if (grad && act) {
            moved = act_at(ab, c1, 0);
            moved.scale = cl_on_boundary(moved.scale, copies[4], cw);
            moved.shift = cl_on_boundary(moved.shift, copies[5], cw);
            moved.center = cl_on_boundary(moved.center, copies[6], cw);
        }
        const float *pc = grad ? cl_on_boundary(p + c1, copies[0], cw) : NULL;
        const float *ac = cl_on_boundary(a + c1, copies[1], cw), *bc = cl_on_boundary(b + c1, copies[2], cw);
        const float *kc = k ? cl_on_boundary(k + c1, copies[3], cw) : NULL;
        float *o = out + c1;
        const float *d = grad ? dy + c1 : NULL, *xc = x + c1;
        if (k) cl_row_walk(grad, act, stream, 1, o, d, xc, m, c, cw, pc, ac, bc, kc, &moved);
        else cl_row_walk(grad, act, stream, 0, o, d, xc, m, c, cw, pc, ac, bc, kc, &moved);
    }
}

// Whether the row walk's load of `in` at a vector would follow its store to `out` a vector or a few before at the same
// low 12 address bits (out up to CL_WIDTH floats past in's page offset): 1.3x the time where out sat 64 bytes on.
NK_INLINE int cl_row_walk_aliases(const float *out, const float *in) {
    if (!in) return 0;
    const unsigned long offset = ((uintptr_t)out - (uintptr_t)in) % 4096;
    return offset != 0 && offset <= CL_WIDTH * sizeof(float);
}

// Whether the backward's apply walks rows (cl_apply_rows): without an activation to recompute (its three more
// coefficient rows made the walk slower) and where the row walk does not alias itself.
NK_INLINE int cl_row_walk_fits(const int grad, const int act, const float *out, const float *dy, const float *x) {
    return grad && act == NK_IDENTITY && !cl_row_walk_aliases(out, x) && !cl_row_walk_aliases(out, dy);
}

// Whether the forward's apply walks rows (cl_apply_rows): whole rows (w = c) read from beyond L2 (read NK_READ_FROM_L3
// or NK_READ_AHEAD), where the row walk does not alias itself. The tile sweep reads a quarter of each row per strip,
// which the prefetchers serve poorly from memory (BN's on (32, 256, 56, 56) 0.86–0.97x the time row by row,
// scripts/memory_passes_probe.c, session 45) and from L3 (the forward of 3.2–6.4 MB tensors: the row walk faster in 21
// to 29 of 30 alternated rounds, scripts/apply_walk_probe.c; GN's NHWC forward+backward on (2, 256, 56, 56) 0.84x the
// time, as the backward's traffic pushes x out of L3 between forwards); on rows in L2 the row walk took up to 1.13x
// the time of the strips ((2, 128, 28, 28)), which load each slice's coefficients once a tile (PERFORMANCE.md,
// session 47).
NK_INLINE int cl_forward_walk_fits(const int grad, const int read, const float *out, const float *x, long c, long w) {
    return !grad && read != NK_READ_CACHED && w == c && !cl_row_walk_aliases(out, x);
}

NK_INLINE void cl_apply_tiles(const int grad, const int act, const int stream, const int ahead, const int read,
                              float *out, const float *dy, const float *x, long m, long c, long w, const float *p,
                              const float *a, const float *b, const float *k, const nk_activation_backward *ab) {
    if (w <= CL_WIDTH) {
        // One run: prefetch about 32 KB ahead (the rows that a wide row's tile would hold).
        const long distance = c >= 8192 / CL_TILE_ROWS ? CL_TILE_ROWS : 8192 / c;
        cl_apply_run(grad, act, stream, ahead, out, dy, x, m, c, w, p, a, b, k, ab, distance);
        return;
    }
    if (act != NK_SILU && ((c * (long)sizeof(float)) % 4096 == 0 || cl_next_row_aliases(out, x, c) ||
                           cl_next_row_aliases(out, dy, c) || cl_row_walk_fits(grad, act, out, dy, x) ||
                           cl_forward_walk_fits(grad, read, out, x, c, w))) {
        cl_apply_rows(grad, act, stream, out, dy, x, m, c, w, p, a, b, k, ab);
        return;
    }
    // Wide rows: tiles of about 32 KB of rows (at least CL_TILE_ROWS), swept once per CL_WIDTH channels
    // (coefficients in registers for each sweep).
    const long tile = w >= 8192 / CL_TILE_ROWS ? CL_TILE_ROWS : 8192 / w;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0, o = p0 * c;
        for (long c0 = 0; c0 < w; c0 += CL_WIDTH) {
            const long cw = w - c0 < CL_WIDTH ? w - c0 : CL_WIDTH;
            const nk_activation_backward moved = grad && act ? act_at(ab, c0, 0) : (nk_activation_backward){0};
            cl_apply_run(grad, act, stream, ahead, out + o + c0, grad ? dy + o + c0 : NULL, x + o + c0, rows, c, cw,
                         grad ? p + c0 : NULL, a + c0, b + c0, k ? k + c0 : NULL, &moved, tile);
        }
    }
}

// Streams (store NK_STORE_STREAMING) only where every row's vectors start on a vector boundary (out on one and c a
// whole number of vectors; the slices' first channels are multiples of CL_WIDTH) and out is not an input; else
// ordinary stores. `read`: where x is (NK_READ_*), for the forward's choice of walk.
NK_INLINE void cl_apply(const int grad, const int act, int store, int read, float *out, const float *dy,
                        const float *x, long m, long c, long w, const float *p, const float *a, const float *b,
                        const float *k, const nk_activation_backward *ab) {
    if (store == NK_STORE_STREAMING && out != x && out != dy && head_to_boundary(out, NK_LANES) == 0 &&
        c % NK_LANES == 0) {
        cl_apply_tiles(grad, act, 1, act == NK_SILU, read, out, dy, x, m, c, w, p, a, b, k, ab);
        vstream_fence();
    } else {
        cl_apply_tiles(grad, act, 0, act == NK_SILU, read, out, dy, x, m, c, w, p, a, b, k, ab);
    }
}

NK_FN void cl_affine_centered(float *y, const float *x, long m, long c, long w, const float *k, const float *a,
                              const float *b, int act, int store, int read) {
#define CL_AFFINE(A) cl_apply(0, A, store, read, y, NULL, x, m, c, w, NULL, a, b, k, NULL)
    ACT_DISPATCH(act, CL_AFFINE)
#undef CL_AFFINE
}

// dx = p·g + q·(x − k) + r with g = dy, or (act non-NULL) g = dz = dy·act'(z) recomputed from x as the sums pass
// computes it (act->dz unused).
NK_FN void cl_gradient_apply(float *dx, const float *dy, const float *x, long m, long c, long w, const float *p,
                             const float *q, const float *r, const float *k, const nk_activation_backward *act,
                             int store) {
#define CL_GRADIENT_APPLY(A) cl_apply(1, A, store, NK_READ_CACHED, dx, dy, x, m, c, w, p, q, r, k, act)
    ACT_DISPATCH(act ? act->kind : NK_IDENTITY, CL_GRADIENT_APPLY)
#undef CL_GRADIENT_APPLY
}

#define NK_TABLE_ENTRY(name) .name = name,
const nk_kernel_table NK_TABLE = {.level = NK_LEVEL, NK_KERNEL_NAMES(NK_TABLE_ENTRY)};
#undef NK_TABLE_ENTRY
