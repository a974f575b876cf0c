// A standalone C model of NormKit's channels-last GN forward passes (cl_centered_sums, cl_affine_centered in
// Sources/CNormKitKernels/KernelBodyChannelsLast.h) and of other orders to walk their rows, one thread, on samples of
// about 100 K floats with rows of 1,024, 1,040, 2,048 and 2,064 channels. It found why rows a multiple of 4 KB apart
// ran 1.8x slower on the AMD Zen 4 machine kind, and the row-by-row apply the kernels now take for them
// (docs/PERFORMANCE.md, session 36). Every variant's output is compared with the kernel order's bits ("!" marks a
// difference). Not built with the package:
//
//   clang -O3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -Wno-implicit-const-int-float-conversion \
//       -o /tmp/channels_last_walk scripts/channels_last_walk.c
//   /tmp/channels_last_walk Y_OFFSET TILE_ROWS PASSES   # e.g. 0 16 sag: y at x's page offset, tiles of 16 rows,
//                                                     # s(ums), a(pply), g(N forward); medians of 2001 runs in µs
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define L 16
#define CL_WIDTH 64
#define CL_MAX 1024
#define CL_ROWS 64
#define INL static inline __attribute__((always_inline))
typedef __m512 vf;

static int TILE = 16;  // CL_TILE_ROWS (sums minimum tile, apply tile for wide rows)
static int PF = 0;     // software prefetch mode

// ------------------------------------------------------------------ sums
// One slice (nv vectors) of one tile: accumulators in registers, as cl_pairs_tile (ahead = 0, grad = 0).
INL void sums_tile(const int nv, float *fa, float *fb, const float *x, long rows, long c, const float *k,
                   long pfnext) {
    vf kv[8], a[8], q[8];
    for (int v = 0; v < nv; v++) {
        kv[v] = _mm512_loadu_ps(k + v * L);
        a[v] = _mm512_loadu_ps(fa + v * L);
        q[v] = _mm512_loadu_ps(fb + v * L);
    }
    for (long p = 0; p < rows; p++) {
        if (pfnext)
            for (int v = 0; v < nv; v++) _mm_prefetch((const char *)(x + p * c + pfnext + v * L), _MM_HINT_T0);
        for (int v = 0; v < nv; v++) {
            vf d = _mm512_sub_ps(_mm512_loadu_ps(x + p * c + v * L), kv[v]);
            a[v] = _mm512_add_ps(a[v], d);
            q[v] = _mm512_fmadd_ps(d, d, q[v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        _mm512_storeu_ps(fa + v * L, a[v]);
        _mm512_storeu_ps(fb + v * L, q[v]);
    }
}

#define NVSW(nv, body)  \
    switch (nv) {       \
    case 1: body(1); break; \
    case 2: body(2); break; \
    case 3: body(3); break; \
    case 4: body(4); break; \
    case 8: body(8); break; \
    default: abort();   \
    }

static float fa[CL_MAX + 64] __attribute__((aligned(64))), fb[CL_MAX + 64] __attribute__((aligned(64)));

INL void flush(double *s1, double *s2, long w) {
    for (long j = 0; j < w; j++) {
        s1[j] += fa[j];
        s2[j] += fb[j];
        fa[j] = fb[j] = 0;
    }
}

// slicew = 64 (kernel) or 128; prefetch: 1 = next slice's lines of the same rows, 2 = same slice next tile
static void sums_run(double *s1, double *s2, const float *x, long m, long c, long w, const float *k, int slicew) {
    long tile = TILE;
    while (tile < CL_ROWS && 2 * tile * w <= 8192) tile *= 2;
    for (long j = 0; j < w + 64; j++) fa[j] = fb[j] = 0;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0;
        for (long c0 = 0; c0 < w; c0 += slicew) {
            const long cw = w - c0 < slicew ? w - c0 : slicew;
            long pfn = 0;
            if (PF == 1) pfn = c0 + cw < w ? slicew : (p0 + rows < m ? rows * c - c0 : 0);
            if (PF == 2) pfn = p0 + rows < m ? rows * c : 0;
#define ST(NV) sums_tile(NV, fa + c0, fb + c0, x + p0 * c + c0, rows, c, k + c0, pfn)
            NVSW((int)((cw + L - 1) / L), ST)
#undef ST
        }
        if ((p0 + rows) % CL_ROWS == 0 || p0 + rows == m) flush(s1, s2, w);
    }
}

// Row-major: each row walked fully, accumulators (fa, fb) and k loaded from / stored to L1 every row.
static void sums_run_rowmajor(double *s1, double *s2, const float *x, long m, long c, long w, const float *k) {
    for (long j = 0; j < w + 64; j++) fa[j] = fb[j] = 0;
    for (long p = 0; p < m; p++) {
        const float *xr = x + p * c;
        for (long j = 0; j < w; j += L) {  // w a multiple of 16 here
            vf d = _mm512_sub_ps(_mm512_loadu_ps(xr + j), _mm512_loadu_ps(k + j));
            _mm512_storeu_ps(fa + j, _mm512_add_ps(_mm512_loadu_ps(fa + j), d));
            _mm512_storeu_ps(fb + j, _mm512_fmadd_ps(d, d, _mm512_loadu_ps(fb + j)));
        }
        if ((p + 1) % CL_ROWS == 0 || p + 1 == m) flush(s1, s2, w);
    }
}

// Wavefront over a tile: at step t, tile row r does slice t - r (if valid), accumulators from L1.
// Each slice still gets its rows in row order.
static void sums_run_wave(double *s1, double *s2, const float *x, long m, long c, long w, const float *k) {
    long tile = TILE;
    while (tile < CL_ROWS && 2 * tile * w <= 8192) tile *= 2;
    const long S = (w + 63) / 64;
    for (long j = 0; j < w + 64; j++) fa[j] = fb[j] = 0;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0;
        for (long t = 0; t < S + rows - 1; t++) {
            long r0 = t - S + 1 > 0 ? t - S + 1 : 0, r1 = t < rows - 1 ? t : rows - 1;
            for (long r = r0; r <= r1; r++) {
                const long c0 = (t - r) * 64, cw = w - c0 < 64 ? w - c0 : 64;
                const float *xr = x + (p0 + r) * c + c0;
                for (long j = 0; j < cw; j += L) {
                    vf d = _mm512_sub_ps(_mm512_loadu_ps(xr + j), _mm512_loadu_ps(k + c0 + j));
                    _mm512_storeu_ps(fa + c0 + j, _mm512_add_ps(_mm512_loadu_ps(fa + c0 + j), d));
                    _mm512_storeu_ps(fb + c0 + j, _mm512_fmadd_ps(d, d, _mm512_loadu_ps(fb + c0 + j)));
                }
            }
        }
        if ((p0 + rows) % CL_ROWS == 0 || p0 + rows == m) flush(s1, s2, w);
    }
}

// variant: 0 kernel, 1 128-wide slices, 2 prefetch next slice, 3 prefetch next tile, 4 row-major, 5 wavefront
static void sums(int variant, double *s1, double *s2, const float *x, long m, long c, const float *k) {
    for (long c0 = 0; c0 < c; c0 += CL_MAX) {
        const long cw = c - c0 < CL_MAX ? c - c0 : CL_MAX;
        PF = variant == 2 ? 1 : variant == 3 ? 2 : 0;
        if (variant == 4) sums_run_rowmajor(s1 + c0, s2 + c0, x + c0, m, c, cw, k + c0);
        else if (variant == 5) sums_run_wave(s1 + c0, s2 + c0, x + c0, m, c, cw, k + c0);
        else sums_run(s1 + c0, s2 + c0, x + c0, m, c, cw, k + c0, variant == 1 ? 128 : 64);
    }
    PF = 0;
}

// ------------------------------------------------------------------ apply
INL void apply_nv(const int nv, float *out, const float *x, long rows, long c, const float *a, const float *b,
                  const float *k, long pfnext) {
    vf kv[8], av[8], bv[8];
    for (int v = 0; v < nv; v++) {
        kv[v] = _mm512_loadu_ps(k + v * L);
        av[v] = _mm512_loadu_ps(a + v * L);
        bv[v] = _mm512_loadu_ps(b + v * L);
    }
    const float *xr = x;
    float *outr = out;
    for (const float *end = x + rows * c; xr != end; xr += c, outr += c) {
        if (pfnext)
            for (int v = 0; v < nv; v++) {
                _mm_prefetch((const char *)(xr + pfnext + v * L), _MM_HINT_T0);
                if (PF >= 3) _mm_prefetch((const char *)(outr + pfnext + v * L), _MM_HINT_ET0);
            }
        for (int v = 0; v < nv; v++) {
            vf value = _mm512_fmadd_ps(av[v], _mm512_sub_ps(_mm512_loadu_ps(xr + v * L), kv[v]), bv[v]);
            _mm512_storeu_ps(outr + v * L, value);
        }
    }
}

static void apply_tiles(float *out, const float *x, long m, long c, const float *a, const float *b, const float *k,
                        int slicew) {
    const long w = c;
    const long tile = w >= 8192 / TILE ? TILE : 8192 / w;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0, o = p0 * c;
        for (long c0 = 0; c0 < w; c0 += slicew) {
            const long cw = w - c0 < slicew ? w - c0 : slicew;
            long pfn = 0;
            if (PF == 1 || PF == 3) pfn = c0 + cw < w ? slicew : (p0 + rows < m ? rows * c - c0 : 0);
            if (PF == 2) pfn = p0 + rows < m ? tile * c : 0;
#define AP(NV) apply_nv(NV, out + o + c0, x + o + c0, rows, c, a + c0, b + c0, k + c0, pfn)
            NVSW((int)((cw + L - 1) / L), AP)
#undef AP
        }
    }
}

// row-major: each row walked fully, coefficients reloaded from L1 for every vector
static void apply_rowmajor(float *out, const float *x, long m, long c, const float *a, const float *b,
                           const float *k) {
    for (long p = 0; p < m; p++) {
        const float *xr = x + p * c;
        float *yr = out + p * c;
        for (long j = 0; j < c; j += L)
            _mm512_storeu_ps(yr + j, _mm512_fmadd_ps(_mm512_loadu_ps(a + j),
                                                     _mm512_sub_ps(_mm512_loadu_ps(xr + j), _mm512_loadu_ps(k + j)),
                                                     _mm512_loadu_ps(b + j)));
    }
}

// wavefront over a tile: step t, row r does slice t - r; coefficients from L1
static void apply_wave(float *out, const float *x, long m, long c, const float *a, const float *b, const float *k) {
    const long tile = c >= 8192 / TILE ? TILE : 8192 / c, S = (c + 63) / 64;
    for (long p0 = 0; p0 < m; p0 += tile) {
        const long rows = p0 + tile < m ? tile : m - p0;
        for (long t = 0; t < S + rows - 1; t++) {
            long r0 = t - S + 1 > 0 ? t - S + 1 : 0, r1 = t < rows - 1 ? t : rows - 1;
            for (long r = r0; r <= r1; r++) {
                const long c0 = (t - r) * 64, cw = c - c0 < 64 ? c - c0 : 64;
                const float *xr = x + (p0 + r) * c + c0;
                float *yr = out + (p0 + r) * c + c0;
                for (long j = 0; j < cw; j += L)
                    _mm512_storeu_ps(yr + j, _mm512_fmadd_ps(_mm512_loadu_ps(a + c0 + j),
                                                             _mm512_sub_ps(_mm512_loadu_ps(xr + j),
                                                                           _mm512_loadu_ps(k + c0 + j)),
                                                             _mm512_loadu_ps(b + c0 + j)));
            }
        }
    }
}

// row-major within 1024-channel column chunks (coefficients 12 KB stay in L1), coefficients from L1
static void apply_rowchunk(float *out, const float *x, long m, long c, const float *a, const float *b,
                           const float *k) {
    for (long c0 = 0; c0 < c; c0 += CL_MAX) {
        const long cw = c - c0 < CL_MAX ? c - c0 : CL_MAX;
        for (long p = 0; p < m; p++) {
            const float *xr = x + p * c + c0;
            float *yr = out + p * c + c0;
            for (long j = 0; j < cw; j += L)
                _mm512_storeu_ps(yr + j, _mm512_fmadd_ps(_mm512_loadu_ps(a + c0 + j),
                                                         _mm512_sub_ps(_mm512_loadu_ps(xr + j),
                                                                       _mm512_loadu_ps(k + c0 + j)),
                                                         _mm512_loadu_ps(b + c0 + j)));
        }
    }
}

// variant: 0 kernel, 1 128-wide slices, 2 prefetch next slice (x), 3 prefetch next tile (x), 4 row-major,
// 5 wavefront, 6 prefetch next slice x + prefetchw y, 7 row-major in 1024-ch chunks
static void apply(int variant, float *y, const float *x, long m, long c, const float *a, const float *b,
                  const float *k) {
    PF = variant == 2 ? 1 : variant == 3 ? 2 : variant == 6 ? 3 : 0;
    if (variant == 4) apply_rowmajor(y, x, m, c, a, b, k);
    else if (variant == 5) apply_wave(y, x, m, c, a, b, k);
    else if (variant == 7) apply_rowchunk(y, x, m, c, a, b, k);
    else apply_tiles(y, x, m, c, a, b, k, variant == 1 ? 128 : 64);
    PF = 0;
}

// ------------------------------------------------------------------ harness
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}
static int cmpd(const void *p, const void *q) {
    double a = *(const double *)p, b = *(const double *)q;
    return a < b ? -1 : a > b;
}
#define REPS 2001
static double tm[REPS];
#define TIME(stmt)                                              \
    ({                                                          \
        for (int r_ = 0; r_ < 200; r_++) { stmt; }               \
        for (int r_ = 0; r_ < REPS; r_++) {                     \
            double t0_ = now();                                 \
            stmt;                                               \
            tm[r_] = now() - t0_;                               \
        }                                                       \
        qsort(tm, REPS, sizeof(double), cmpd);                  \
        tm[REPS / 2];                                           \
    })

static const char *SN[] = {"kernel (64-ch slices, tile)", "128-ch slices", "prefetch next slice",
                           "prefetch next tile", "row-major (acc in L1)", "wavefront (acc in L1)"};
static const char *AN[] = {"kernel (64-ch slices, tile)", "128-ch slices", "prefetch next slice x",
                           "prefetch next tile x", "row-major (coef in L1)", "wavefront (coef in L1)",
                           "prefetch next slice x + prefetchw y", "row-major in 1024-ch chunks"};

int main(int argc, char **argv) {
    long yoff = argc > 1 ? atol(argv[1]) : 0;   // bytes y is offset from a page boundary
    TILE = argc > 2 ? atoi(argv[2]) : 16;
    const char *only = argc > 3 ? argv[3] : "sa";
    const long cs[4] = {1024, 1040, 2048, 2064}, ms[4] = {98, 98, 49, 49};
    const long maxn = 2064 * 49 + 4096;
    float *x, *yb, *y, *ref;
    if (posix_memalign((void **)&x, 4096, maxn * 4) || posix_memalign((void **)&yb, 4096, maxn * 4 + 8192) ||
        posix_memalign((void **)&ref, 4096, maxn * 4))
        return 1;
    y = (float *)((char *)yb + yoff);
    float *a = aligned_alloc(64, 4096 * 4), *b = aligned_alloc(64, 4096 * 4), *k = aligned_alloc(64, 4096 * 4);
    double *s1 = aligned_alloc(64, 4096 * 8), *s2 = aligned_alloc(64, 4096 * 8), *r1 = aligned_alloc(64, 4096 * 8),
           *r2 = aligned_alloc(64, 4096 * 8);
    srand(1);
    for (long i = 0; i < maxn; i++) x[i] = (float)rand() / RAND_MAX * 4 - 1;
    for (long i = 0; i < 4096; i++) {
        a[i] = 0.5f + (float)rand() / RAND_MAX;
        b[i] = (float)rand() / RAND_MAX - 0.5f;
        k[i] = (float)rand() / RAND_MAX * 0.1f;
    }
    printf("x %% 4096 = %ld, y %% 4096 = %ld, tile %d\n", (long)((uintptr_t)x % 4096), (long)((uintptr_t)y % 4096),
           TILE);
    printf("%-40s", "pass / variant  (us, median)");
    for (int i = 0; i < 4; i++) printf("  c=%-6ld", cs[i]);
    printf("\n%-38s", "memcpy same size");
    for (int i = 0; i < 4; i++) {
        long n = cs[i] * ms[i];
        printf("  %8.2f", TIME(memcpy(y, x, n * 4)));
    }
    printf("\n");
    if (strchr(only, 's'))
        for (int v = 0; v < 6; v++) {
            printf("sums  %-34s", SN[v]);
            for (int i = 0; i < 4; i++) {
                long c = cs[i], m = ms[i];
                memset(r1, 0, c * 8), memset(r2, 0, c * 8);
                sums(0, r1, r2, x, m, c, k);
                memset(s1, 0, c * 8), memset(s2, 0, c * 8);
                sums(v, s1, s2, x, m, c, k);
                int same = !memcmp(s1, r1, c * 8) && !memcmp(s2, r2, c * 8);
                double t = TIME(sums(v, s1, s2, x, m, c, k));
                printf("  %7.2f%s", t, same ? " " : "!");
            }
            printf("\n");
        }
    if (strchr(only, 'a'))
        for (int v = 0; v < 8; v++) {
            printf("apply %-34s", AN[v]);
            for (int i = 0; i < 4; i++) {
                long c = cs[i], m = ms[i];
                apply(0, y, x, m, c, a, b, k);
                memcpy(ref, y, m * c * 4);
                memset(y, 0, m * c * 4);
                apply(v, y, x, m, c, a, b, k);
                int same = !memcmp(ref, y, m * c * 4);
                double t = TIME(apply(v, y, x, m, c, a, b, k));
                printf("  %7.2f%s", t, same ? " " : "!");
            }
            printf("\n");
        }
    if (strchr(only, 'g')) {  // GN forward: sums then apply, kernel order
        printf("%-40s", "GN fwd (sums+apply, kernel)");
        for (int i = 0; i < 4; i++) {
            long c = cs[i], m = ms[i];
            printf("  %8.2f", TIME((sums(0, s1, s2, x, m, c, k), apply(0, y, x, m, c, a, b, k))));
        }
        printf("\n%-40s", "GN fwd (128-ch sums + row-chunk apply)");
        for (int i = 0; i < 4; i++) {
            long c = cs[i], m = ms[i];
            printf("  %8.2f", TIME((sums(1, s1, s2, x, m, c, k), apply(7, y, x, m, c, a, b, k))));
        }
        printf("\n");
    }
    return 0;
}
