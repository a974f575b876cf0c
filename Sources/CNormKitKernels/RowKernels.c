// Wide-vector row primitives: AVX-512F and AVX2+FMA bodies compiled with function-level target attributes
// (no global compiler flags), chosen once by cpuid. See include/NormKitRowKernels.h.
#include "NormKitRowKernels.h"

#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#include <immintrin.h>
#define NK_X86 1
#endif

#define BLOCK 2048

#ifdef NK_X86
#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))

// ---- AVX-512 ------------------------------------------------------------------------------------------------
// Lane j of the result is the sum of the lanes of v[j] (a 16×16 transpose folded into 15 shuffle-add steps).
AVX512 static inline __m512 hsum16x16(const __m512 *v) {
    __m512 l1[8], l2[4], l3[2];
    for (int i = 0; i < 8; i++)
        l1[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        l2[i] = _mm512_add_ps(_mm512_shuffle_ps(l1[2 * i], l1[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(l1[2 * i], l1[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++)
        l3[i] = _mm512_add_ps(_mm512_shuffle_f32x4(l2[2 * i], l2[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(l2[2 * i], l2[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// The accumulating loops below add a run of n ≤ BLOCK floats into the caller's vector accumulators. Long runs
// use four independent accumulators (an add or FMA has 3–4 cycles of latency; one chain would cap a core at a
// vector every few cycles), folded into the caller's before returning.

// *s += Σ x.
AVX512 static inline __m512 addrun512(__m512 s, const float *x, long n) {
    long i = 0;
    if (n >= 64) {
        __m512 s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
        for (; i + 64 <= n; i += 64) {
            s = _mm512_add_ps(s, _mm512_loadu_ps(x + i));
            s1 = _mm512_add_ps(s1, _mm512_loadu_ps(x + i + 16));
            s2 = _mm512_add_ps(s2, _mm512_loadu_ps(x + i + 32));
            s3 = _mm512_add_ps(s3, _mm512_loadu_ps(x + i + 48));
        }
        s = _mm512_add_ps(_mm512_add_ps(s, s1), _mm512_add_ps(s2, s3));
    }
    for (; i + 16 <= n; i += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(x + i));
    if (i < n) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps((__mmask16)((1u << (n - i)) - 1), x + i));
    return s;
}

// *s += Σ (x − k), *q += Σ (x − k)².
AVX512 static inline void centredrun512(__m512 *s, __m512 *q, const float *x, long n, __m512 kv) {
    __m512 s0 = *s, q0 = *q;
    long i = 0;
    if (n >= 64) {
        __m512 s1 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
               q2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps(), q3 = _mm512_setzero_ps();
        for (; i + 64 <= n; i += 64) {
            __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), kv), d1 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), kv),
                   d2 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 32), kv), d3 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 48), kv);
            s0 = _mm512_add_ps(s0, d0); q0 = _mm512_fmadd_ps(d0, d0, q0);
            s1 = _mm512_add_ps(s1, d1); q1 = _mm512_fmadd_ps(d1, d1, q1);
            s2 = _mm512_add_ps(s2, d2); q2 = _mm512_fmadd_ps(d2, d2, q2);
            s3 = _mm512_add_ps(s3, d3); q3 = _mm512_fmadd_ps(d3, d3, q3);
        }
        s0 = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
        q0 = _mm512_add_ps(_mm512_add_ps(q0, q1), _mm512_add_ps(q2, q3));
    }
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), kv);
        s0 = _mm512_add_ps(s0, d);
        q0 = _mm512_fmadd_ps(d, d, q0);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), kv);
        s0 = _mm512_add_ps(s0, d);
        q0 = _mm512_fmadd_ps(d, d, q0);
    }
    *s = s0;
    *q = q0;
}

// *s += Σ dy, *q += Σ dy·(x − k).
AVX512 static inline void gradrun512(__m512 *s, __m512 *q, const float *dy, const float *x, long n, __m512 kv) {
    __m512 s0 = *s, q0 = *q;
    long i = 0;
    if (n >= 64) {
        __m512 s1 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
               q2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps(), q3 = _mm512_setzero_ps();
        for (; i + 64 <= n; i += 64) {
            __m512 g0 = _mm512_loadu_ps(dy + i), g1 = _mm512_loadu_ps(dy + i + 16),
                   g2 = _mm512_loadu_ps(dy + i + 32), g3 = _mm512_loadu_ps(dy + i + 48);
            s0 = _mm512_add_ps(s0, g0); q0 = _mm512_fmadd_ps(g0, _mm512_sub_ps(_mm512_loadu_ps(x + i), kv), q0);
            s1 = _mm512_add_ps(s1, g1); q1 = _mm512_fmadd_ps(g1, _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), kv), q1);
            s2 = _mm512_add_ps(s2, g2); q2 = _mm512_fmadd_ps(g2, _mm512_sub_ps(_mm512_loadu_ps(x + i + 32), kv), q2);
            s3 = _mm512_add_ps(s3, g3); q3 = _mm512_fmadd_ps(g3, _mm512_sub_ps(_mm512_loadu_ps(x + i + 48), kv), q3);
        }
        s0 = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
        q0 = _mm512_add_ps(_mm512_add_ps(q0, q1), _mm512_add_ps(q2, q3));
    }
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(dy + i);
        s0 = _mm512_add_ps(s0, g);
        q0 = _mm512_fmadd_ps(g, _mm512_sub_ps(_mm512_loadu_ps(x + i), kv), q0);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 g = _mm512_maskz_loadu_ps(m, dy + i);
        s0 = _mm512_add_ps(s0, g);
        q0 = _mm512_fmadd_ps(g, _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), kv), q0);
    }
    *s = s0;
    *q = q0;
}

AVX512 static double sum512(const float *x, long n) {
    double total = 0;
    for (long start = 0; start < n; start += BLOCK) {
        long len = n - start < BLOCK ? n - start : BLOCK;
        total += (double)_mm512_reduce_add_ps(addrun512(_mm512_setzero_ps(), x + start, len));
    }
    return total;
}

AVX512 static void centered512(const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    const __m512 kv = _mm512_set1_ps(k);
    for (long start = 0; start < n; start += BLOCK) {
        long len = n - start < BLOCK ? n - start : BLOCK;
        __m512 a = _mm512_setzero_ps(), q = _mm512_setzero_ps();
        centredrun512(&a, &q, x + start, len, kv);
        t1 += (double)_mm512_reduce_add_ps(a);
        t2 += (double)_mm512_reduce_add_ps(q);
    }
    *s1 = t1;
    *s2 = t2;
}

AVX512 static void gradsums512(const float *dy, const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    const __m512 kv = _mm512_set1_ps(k);
    for (long start = 0; start < n; start += BLOCK) {
        long len = n - start < BLOCK ? n - start : BLOCK;
        __m512 a = _mm512_setzero_ps(), q = _mm512_setzero_ps();
        gradrun512(&a, &q, dy + start, x + start, len, kv);
        t1 += (double)_mm512_reduce_add_ps(a);
        t2 += (double)_mm512_reduce_add_ps(q);
    }
    *s1 = t1;
    *s2 = t2;
}

AVX512 static void affine512(float *y, const float *x, long n, float k, float a, float b) {
    __m512 kv = _mm512_set1_ps(k), av = _mm512_set1_ps(a), bv = _mm512_set1_ps(b);
    long i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), kv), av, bv));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), kv), av, bv));
    }
}

AVX512 static void gradapply512(float *dx, const float *dy, const float *x, long n, float p, float q, float r,
                                float k) {
    __m512 pv = _mm512_set1_ps(p), qv = _mm512_set1_ps(q), rv = _mm512_set1_ps(r), kv = _mm512_set1_ps(k);
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 t = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), kv), qv, rv);
        _mm512_storeu_ps(dx + i, _mm512_fmadd_ps(_mm512_loadu_ps(dy + i), pv, t));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 t = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), kv), qv, rv);
        _mm512_mask_storeu_ps(dx + i, m, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dy + i), pv, t));
    }
}

// ---- AVX-512 set kernels ------------------------------------------------------------------------------------
// A batch of `sets` normalization sets, set j starting at x + j·set_stride; a set is `pieces` runs of `rows·m`
// contiguous floats, run i at i·piece_stride (BatchNorm: one row per run, one run per sample of the ghost batch;
// GroupNorm: one run of C/G rows). Sets short enough to sit in one float block (≤ BLOCK floats, rows ≤ BLOCK)
// go 16 at a time: each set or row accumulates in its own vector and one transposing reduction (hsum16x16)
// turns 16 vectors into 16 sums, instead of 16 separate horizontal sums each ending a dependency chain.

// One set of any size: float lanes flushed into double totals every BLOCK elements.
AVX512 static void moments512(const float *x, long pieces, long run, long stride, double *mean, double *m2) {
    double total = 0;
    long filled = 0;
    __m512 acc = _mm512_setzero_ps();
    for (long p = 0; p < pieces; p++)
        for (long i = 0; i < run;) {
            long n = run - i < BLOCK - filled ? run - i : BLOCK - filled;
            acc = addrun512(acc, x + p * stride + i, n);
            i += n;
            filled += n;
            if (filled == BLOCK) {
                total += (double)_mm512_reduce_add_ps(acc);
                acc = _mm512_setzero_ps();
                filled = 0;
            }
        }
    total += (double)_mm512_reduce_add_ps(acc);
    const double inverse = 1 / ((double)pieces * (double)run);
    const float k = (float)(total * inverse);
    const __m512 kv = _mm512_set1_ps(k);
    double d1 = 0, d2 = 0;
    filled = 0;
    __m512 s = _mm512_setzero_ps(), q = _mm512_setzero_ps();
    for (long p = 0; p < pieces; p++)
        for (long i = 0; i < run;) {
            long n = run - i < BLOCK - filled ? run - i : BLOCK - filled;
            centredrun512(&s, &q, x + p * stride + i, n, kv);
            i += n;
            filled += n;
            if (filled == BLOCK) {
                d1 += (double)_mm512_reduce_add_ps(s);
                d2 += (double)_mm512_reduce_add_ps(q);
                s = q = _mm512_setzero_ps();
                filled = 0;
            }
        }
    d1 += (double)_mm512_reduce_add_ps(s);
    d2 += (double)_mm512_reduce_add_ps(q);
    // Σ(x − k) is not exactly 0 because k is rounded to float: correct for it.
    *mean = (double)k + d1 * inverse;
    double centred = d2 - d1 * d1 * inverse;
    *m2 = centred > 0 ? centred : 0;
}

AVX512 static void setsmoments512(const float *x, long sets, long set_stride, long pieces, long run,
                                  long piece_stride, double *mean, double *m2) {
    long j = 0;
    if (pieces * run <= BLOCK) {
        const double inverse = 1 / ((double)pieces * (double)run);
        for (; j + 16 <= sets; j += 16) {
            const float *base = x + j * set_stride;
            __m512 acc[16], s[16], q[16];
            for (int t = 0; t < 16; t++) {
                acc[t] = _mm512_setzero_ps();
                for (long p = 0; p < pieces; p++) acc[t] = addrun512(acc[t], base + t * set_stride + p * piece_stride, run);
            }
            float k[16], d1[16], d2[16];
            _mm512_storeu_ps(k, _mm512_mul_ps(hsum16x16(acc), _mm512_set1_ps((float)inverse)));
            for (int t = 0; t < 16; t++) {
                s[t] = q[t] = _mm512_setzero_ps();
                __m512 kv = _mm512_set1_ps(k[t]);
                for (long p = 0; p < pieces; p++)
                    centredrun512(&s[t], &q[t], base + t * set_stride + p * piece_stride, run, kv);
            }
            _mm512_storeu_ps(d1, hsum16x16(s));
            _mm512_storeu_ps(d2, hsum16x16(q));
            for (int t = 0; t < 16; t++) {
                mean[j + t] = (double)k[t] + (double)d1[t] * inverse;
                double centred = (double)d2[t] - (double)d1[t] * (double)d1[t] * inverse;
                m2[j + t] = centred > 0 ? centred : 0;
            }
        }
    }
    for (; j < sets; j++) moments512(x + j * set_stride, pieces, run, piece_stride, mean + j, m2 + j);
}

AVX512 static void setsaffine512(float *y, const float *x, long sets, long set_stride, long pieces, long rows,
                                 long m, long piece_stride, const float *k, const float *a, const float *b) {
    for (long j = 0; j < sets; j++)
        for (long p = 0; p < pieces; p++)
            for (long r = 0; r < rows; r++) {
                long o = j * set_stride + p * piece_stride + r * m;
                affine512(y + o, x + o, m, k[j], a[j * rows + r], b[j * rows + r]);
            }
}

AVX512 static void setsgradsums512(double *s1, double *s2, long out_stride, const float *dy, const float *x,
                                   long sets, long set_stride, long pieces, long rows, long m, long piece_stride,
                                   const float *k) {
    const long total = sets * pieces * rows;
    long i = 0;
    if (m <= BLOCK) {
        // Rows in (set, piece, row) order, 16 at a time.
        long j = 0, p = 0, r = 0;
        for (; i + 16 <= total; i += 16) {
            __m512 a[16], q[16];
            long out[16];
            for (int t = 0; t < 16; t++) {
                long o = j * set_stride + p * piece_stride + r * m;
                out[t] = j * rows + p * out_stride + r;
                a[t] = q[t] = _mm512_setzero_ps();
                gradrun512(&a[t], &q[t], dy + o, x + o, m, _mm512_set1_ps(k[j]));
                if (++r == rows) { r = 0; if (++p == pieces) { p = 0; j++; } }
            }
            float f1[16], f2[16];
            _mm512_storeu_ps(f1, hsum16x16(a));
            _mm512_storeu_ps(f2, hsum16x16(q));
            for (int t = 0; t < 16; t++) {
                s1[out[t]] = (double)f1[t];
                s2[out[t]] = (double)f2[t];
            }
        }
    }
    for (; i < total; i++) {
        long j = i / (pieces * rows), p = (i / rows) % pieces, r = i % rows;
        long o = j * set_stride + p * piece_stride + r * m, out = j * rows + p * out_stride + r;
        gradsums512(dy + o, x + o, m, k[j], s1 + out, s2 + out);
    }
}

AVX512 static void setsgradapply512(float *dx, const float *dy, const float *x, long sets, long set_stride,
                                    long pieces, long rows, long m, long piece_stride, const float *p_row,
                                    const float *q, const float *r, const float *k) {
    for (long j = 0; j < sets; j++)
        for (long p = 0; p < pieces; p++)
            for (long row = 0; row < rows; row++) {
                long o = j * set_stride + p * piece_stride + row * m;
                gradapply512(dx + o, dy + o, x + o, m, p_row[j * rows + row], q[j], r[j], k[j]);
            }
}

// ---- AVX2 + FMA ---------------------------------------------------------------------------------------------
AVX2 static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Accumulating loops as in the AVX-512 section (four accumulators on long runs); AVX2 has no masked loads, so
// the last n mod 8 elements go into scalar tails.

// s += Σ x; *tail += the remainder.
AVX2 static inline __m256 addrun256(__m256 s, float *tail, const float *x, long n) {
    long i = 0;
    if (n >= 32) {
        __m256 s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        for (; i + 32 <= n; i += 32) {
            s = _mm256_add_ps(s, _mm256_loadu_ps(x + i));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
            s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + i + 16));
            s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + i + 24));
        }
        s = _mm256_add_ps(_mm256_add_ps(s, s1), _mm256_add_ps(s2, s3));
    }
    for (; i + 8 <= n; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + i));
    float t = 0;
    for (; i < n; i++) t += x[i];
    *tail += t;
    return s;
}

// *s += Σ (x − k), *q += Σ (x − k)²; tails in t[0], t[1].
AVX2 static inline void centredrun256(__m256 *s, __m256 *q, float *t, const float *x, long n, float k) {
    const __m256 kv = _mm256_set1_ps(k);
    __m256 s0 = *s, q0 = *q;
    long i = 0;
    if (n >= 32) {
        __m256 s1 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
               q2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps(), q3 = _mm256_setzero_ps();
        for (; i + 32 <= n; i += 32) {
            __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), kv), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), kv),
                   d2 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 16), kv), d3 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 24), kv);
            s0 = _mm256_add_ps(s0, d0); q0 = _mm256_fmadd_ps(d0, d0, q0);
            s1 = _mm256_add_ps(s1, d1); q1 = _mm256_fmadd_ps(d1, d1, q1);
            s2 = _mm256_add_ps(s2, d2); q2 = _mm256_fmadd_ps(d2, d2, q2);
            s3 = _mm256_add_ps(s3, d3); q3 = _mm256_fmadd_ps(d3, d3, q3);
        }
        s0 = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        q0 = _mm256_add_ps(_mm256_add_ps(q0, q1), _mm256_add_ps(q2, q3));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), kv);
        s0 = _mm256_add_ps(s0, d);
        q0 = _mm256_fmadd_ps(d, d, q0);
    }
    for (; i < n; i++) { float d = x[i] - k; t[0] += d; t[1] += d * d; }
    *s = s0;
    *q = q0;
}

// *s += Σ dy, *q += Σ dy·(x − k); tails in t[0], t[1].
AVX2 static inline void gradrun256(__m256 *s, __m256 *q, float *t, const float *dy, const float *x, long n, float k) {
    const __m256 kv = _mm256_set1_ps(k);
    __m256 s0 = *s, q0 = *q;
    long i = 0;
    if (n >= 32) {
        __m256 s1 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
               q2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps(), q3 = _mm256_setzero_ps();
        for (; i + 32 <= n; i += 32) {
            __m256 g0 = _mm256_loadu_ps(dy + i), g1 = _mm256_loadu_ps(dy + i + 8),
                   g2 = _mm256_loadu_ps(dy + i + 16), g3 = _mm256_loadu_ps(dy + i + 24);
            s0 = _mm256_add_ps(s0, g0); q0 = _mm256_fmadd_ps(g0, _mm256_sub_ps(_mm256_loadu_ps(x + i), kv), q0);
            s1 = _mm256_add_ps(s1, g1); q1 = _mm256_fmadd_ps(g1, _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), kv), q1);
            s2 = _mm256_add_ps(s2, g2); q2 = _mm256_fmadd_ps(g2, _mm256_sub_ps(_mm256_loadu_ps(x + i + 16), kv), q2);
            s3 = _mm256_add_ps(s3, g3); q3 = _mm256_fmadd_ps(g3, _mm256_sub_ps(_mm256_loadu_ps(x + i + 24), kv), q3);
        }
        s0 = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        q0 = _mm256_add_ps(_mm256_add_ps(q0, q1), _mm256_add_ps(q2, q3));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(dy + i);
        s0 = _mm256_add_ps(s0, g);
        q0 = _mm256_fmadd_ps(g, _mm256_sub_ps(_mm256_loadu_ps(x + i), kv), q0);
    }
    for (; i < n; i++) { t[0] += dy[i]; t[1] += dy[i] * (x[i] - k); }
    *s = s0;
    *q = q0;
}

AVX2 static double sum256(const float *x, long n) {
    double total = 0;
    for (long start = 0; start < n; start += BLOCK) {
        long len = n - start < BLOCK ? n - start : BLOCK;
        float tail = 0;
        __m256 s = addrun256(_mm256_setzero_ps(), &tail, x + start, len);
        total += (double)(hsum256(s) + tail);
    }
    return total;
}

AVX2 static void centered256(const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    for (long start = 0; start < n; start += BLOCK) {
        long len = n - start < BLOCK ? n - start : BLOCK;
        __m256 a = _mm256_setzero_ps(), q = _mm256_setzero_ps();
        float t[2] = {0, 0};
        centredrun256(&a, &q, t, x + start, len, k);
        t1 += (double)(hsum256(a) + t[0]);
        t2 += (double)(hsum256(q) + t[1]);
    }
    *s1 = t1;
    *s2 = t2;
}

AVX2 static void gradsums256(const float *dy, const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    for (long start = 0; start < n; start += BLOCK) {
        long len = n - start < BLOCK ? n - start : BLOCK;
        __m256 a = _mm256_setzero_ps(), q = _mm256_setzero_ps();
        float t[2] = {0, 0};
        gradrun256(&a, &q, t, dy + start, x + start, len, k);
        t1 += (double)(hsum256(a) + t[0]);
        t2 += (double)(hsum256(q) + t[1]);
    }
    *s1 = t1;
    *s2 = t2;
}

AVX2 static void affine256(float *y, const float *x, long n, float k, float a, float b) {
    __m256 kv = _mm256_set1_ps(k), av = _mm256_set1_ps(a), bv = _mm256_set1_ps(b);
    long i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), kv), av, bv));
    for (; i < n; i++) y[i] = (x[i] - k) * a + b;
}

AVX2 static void gradapply256(float *dx, const float *dy, const float *x, long n, float p, float q, float r,
                              float k) {
    __m256 pv = _mm256_set1_ps(p), qv = _mm256_set1_ps(q), rv = _mm256_set1_ps(r), kv = _mm256_set1_ps(k);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 t = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), kv), qv, rv);
        _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), pv, t));
    }
    for (; i < n; i++) dx[i] = dy[i] * p + (x[i] - k) * q + r;
}
// ---- AVX2 + FMA set kernels (the same sums; one set or row at a time, no transposing reduction) -----------
AVX2 static void moments256(const float *x, long pieces, long run, long stride, double *mean, double *m2) {
    double total = 0;
    long filled = 0;
    __m256 acc = _mm256_setzero_ps();
    float tail = 0;
    for (long p = 0; p < pieces; p++)
        for (long i = 0; i < run;) {
            long n = run - i < BLOCK - filled ? run - i : BLOCK - filled;
            acc = addrun256(acc, &tail, x + p * stride + i, n);
            i += n;
            filled += n;
            if (filled == BLOCK) {
                total += (double)(hsum256(acc) + tail);
                acc = _mm256_setzero_ps();
                tail = 0;
                filled = 0;
            }
        }
    total += (double)(hsum256(acc) + tail);
    const double inverse = 1 / ((double)pieces * (double)run);
    const float k = (float)(total * inverse);
    double d1 = 0, d2 = 0;
    float t[2] = {0, 0};
    filled = 0;
    __m256 s = _mm256_setzero_ps(), q = _mm256_setzero_ps();
    for (long p = 0; p < pieces; p++)
        for (long i = 0; i < run;) {
            long n = run - i < BLOCK - filled ? run - i : BLOCK - filled;
            centredrun256(&s, &q, t, x + p * stride + i, n, k);
            i += n;
            filled += n;
            if (filled == BLOCK) {
                d1 += (double)(hsum256(s) + t[0]);
                d2 += (double)(hsum256(q) + t[1]);
                s = q = _mm256_setzero_ps();
                t[0] = t[1] = 0;
                filled = 0;
            }
        }
    d1 += (double)(hsum256(s) + t[0]);
    d2 += (double)(hsum256(q) + t[1]);
    *mean = (double)k + d1 * inverse;
    double centred = d2 - d1 * d1 * inverse;
    *m2 = centred > 0 ? centred : 0;
}

AVX2 static void setsmoments256(const float *x, long sets, long set_stride, long pieces, long run,
                                long piece_stride, double *mean, double *m2) {
    for (long j = 0; j < sets; j++) moments256(x + j * set_stride, pieces, run, piece_stride, mean + j, m2 + j);
}

AVX2 static void setsaffine256(float *y, const float *x, long sets, long set_stride, long pieces, long rows,
                               long m, long piece_stride, const float *k, const float *a, const float *b) {
    for (long j = 0; j < sets; j++)
        for (long p = 0; p < pieces; p++)
            for (long r = 0; r < rows; r++) {
                long o = j * set_stride + p * piece_stride + r * m;
                affine256(y + o, x + o, m, k[j], a[j * rows + r], b[j * rows + r]);
            }
}

AVX2 static void setsgradsums256(double *s1, double *s2, long out_stride, const float *dy, const float *x,
                                 long sets, long set_stride, long pieces, long rows, long m, long piece_stride,
                                 const float *k) {
    for (long j = 0; j < sets; j++)
        for (long p = 0; p < pieces; p++)
            for (long r = 0; r < rows; r++) {
                long o = j * set_stride + p * piece_stride + r * m, out = j * rows + p * out_stride + r;
                gradsums256(dy + o, x + o, m, k[j], s1 + out, s2 + out);
            }
}

AVX2 static void setsgradapply256(float *dx, const float *dy, const float *x, long sets, long set_stride,
                                  long pieces, long rows, long m, long piece_stride, const float *p_row,
                                  const float *q, const float *r, const float *k) {
    for (long j = 0; j < sets; j++)
        for (long p = 0; p < pieces; p++)
            for (long row = 0; row < rows; row++) {
                long o = j * set_stride + p * piece_stride + row * m;
                gradapply256(dx + o, dy + o, x + o, m, p_row[j * rows + row], q[j], r[j], k[j]);
            }
}
#endif

// ---- Dispatch -----------------------------------------------------------------------------------------------
static int detected = -1, cap = 3;

int nk_native_level(void) {
    if (detected < 0) {
#ifdef NK_X86
        __builtin_cpu_init();
        detected = __builtin_cpu_supports("avx512f") ? 3
                 : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 2 : 0;
#else
        detected = 0;
#endif
    }
    return detected < cap ? detected : cap;
}

int nk_limit_native_level(int maximum) {
    cap = maximum;
    return nk_native_level();
}

// Callers check nk_native_level() > 0 first; these never run on a machine without the features.
double nk_row_sum(const float *x, long n) {
#ifdef NK_X86
    return nk_native_level() == 3 ? sum512(x, n) : sum256(x, n);
#else
    (void)x; (void)n; return 0;
#endif
}

void nk_row_centered_sums(const float *x, long n, float k, double *s1, double *s2) {
#ifdef NK_X86
    if (nk_native_level() == 3) centered512(x, n, k, s1, s2); else centered256(x, n, k, s1, s2);
#endif
}

void nk_row_gradient_sums(const float *dy, const float *x, long n, float k, double *s1, double *s2) {
#ifdef NK_X86
    if (nk_native_level() == 3) gradsums512(dy, x, n, k, s1, s2); else gradsums256(dy, x, n, k, s1, s2);
#endif
}

void nk_row_affine(float *y, const float *x, long n, float a, float b) {
#ifdef NK_X86
    if (nk_native_level() == 3) affine512(y, x, n, 0, a, b); else affine256(y, x, n, 0, a, b);
#endif
}

void nk_row_affine_centered(float *y, const float *x, long n, float k, float a, float b) {
#ifdef NK_X86
    if (nk_native_level() == 3) affine512(y, x, n, k, a, b); else affine256(y, x, n, k, a, b);
#endif
}

void nk_row_gradient_apply(float *dx, const float *dy, const float *x, long n, float p, float q, float r, float k) {
#ifdef NK_X86
    if (nk_native_level() == 3) gradapply512(dx, dy, x, n, p, q, r, k);
    else gradapply256(dx, dy, x, n, p, q, r, k);
#endif
}

void nk_sets_moments(const float *x, long sets, long set_stride, long pieces, long run, long piece_stride,
                     double *mean, double *m2) {
#ifdef NK_X86
    if (nk_native_level() == 3) setsmoments512(x, sets, set_stride, pieces, run, piece_stride, mean, m2);
    else setsmoments256(x, sets, set_stride, pieces, run, piece_stride, mean, m2);
#endif
}

void nk_sets_affine_centered(float *y, const float *x, long sets, long set_stride, long pieces, long rows, long m,
                             long piece_stride, const float *k, const float *a, const float *b) {
#ifdef NK_X86
    if (nk_native_level() == 3) setsaffine512(y, x, sets, set_stride, pieces, rows, m, piece_stride, k, a, b);
    else setsaffine256(y, x, sets, set_stride, pieces, rows, m, piece_stride, k, a, b);
#endif
}

void nk_sets_gradient_sums(double *s1, double *s2, long out_stride, const float *dy, const float *x, long sets,
                           long set_stride, long pieces, long rows, long m, long piece_stride, const float *k) {
#ifdef NK_X86
    if (nk_native_level() == 3)
        setsgradsums512(s1, s2, out_stride, dy, x, sets, set_stride, pieces, rows, m, piece_stride, k);
    else setsgradsums256(s1, s2, out_stride, dy, x, sets, set_stride, pieces, rows, m, piece_stride, k);
#endif
}

void nk_sets_gradient_apply(float *dx, const float *dy, const float *x, long sets, long set_stride, long pieces,
                            long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                            const float *k) {
#ifdef NK_X86
    if (nk_native_level() == 3)
        setsgradapply512(dx, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k);
    else setsgradapply256(dx, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k);
#endif
}
