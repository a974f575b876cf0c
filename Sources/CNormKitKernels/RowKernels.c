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
AVX512 static double sum512(const float *x, long n) {
    double total = 0;
    for (long start = 0; start < n; start += BLOCK) {
        long end = start + BLOCK < n ? start + BLOCK : n, i = start;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (; i + 32 <= end; i += 32) {
            a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
            a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
        }
        if (i < end) {
            __mmask16 m = end - i >= 16 ? 0xFFFF : (__mmask16)((1u << (end - i)) - 1);
            a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m, x + i));
            i += 16;
            if (i < end) a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps((__mmask16)((1u << (end - i)) - 1), x + i));
        }
        total += (double)_mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
    return total;
}

AVX512 static void centered512(const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    __m512 kv = _mm512_set1_ps(k);
    for (long start = 0; start < n; start += BLOCK) {
        long end = start + BLOCK < n ? start + BLOCK : n, i = start;
        __m512 a = _mm512_setzero_ps(), q = _mm512_setzero_ps();
        for (; i + 16 <= end; i += 16) {
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), kv);
            a = _mm512_add_ps(a, d);
            q = _mm512_fmadd_ps(d, d, q);
        }
        if (i < end) {
            __mmask16 m = (__mmask16)((1u << (end - i)) - 1);
            __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), kv);
            a = _mm512_add_ps(a, d);
            q = _mm512_fmadd_ps(d, d, q);
        }
        t1 += (double)_mm512_reduce_add_ps(a);
        t2 += (double)_mm512_reduce_add_ps(q);
    }
    *s1 = t1;
    *s2 = t2;
}

AVX512 static void gradsums512(const float *dy, const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    __m512 kv = _mm512_set1_ps(k);
    for (long start = 0; start < n; start += BLOCK) {
        long end = start + BLOCK < n ? start + BLOCK : n, i = start;
        __m512 a = _mm512_setzero_ps(), q = _mm512_setzero_ps();
        for (; i + 16 <= end; i += 16) {
            __m512 g = _mm512_loadu_ps(dy + i);
            a = _mm512_add_ps(a, g);
            q = _mm512_fmadd_ps(g, _mm512_sub_ps(_mm512_loadu_ps(x + i), kv), q);
        }
        if (i < end) {
            __mmask16 m = (__mmask16)((1u << (end - i)) - 1);
            __m512 g = _mm512_maskz_loadu_ps(m, dy + i);
            a = _mm512_add_ps(a, g);
            q = _mm512_fmadd_ps(g, _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), kv), q);
        }
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

// ---- AVX2 + FMA ---------------------------------------------------------------------------------------------
AVX2 static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static double sum256(const float *x, long n) {
    double total = 0;
    for (long start = 0; start < n; start += BLOCK) {
        long end = start + BLOCK < n ? start + BLOCK : n, i = start;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (; i + 16 <= end; i += 16) {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
        }
        float tail = 0;
        for (; i < end; i++) tail += x[i];
        total += (double)(hsum256(_mm256_add_ps(a0, a1)) + tail);
    }
    return total;
}

AVX2 static void centered256(const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    __m256 kv = _mm256_set1_ps(k);
    for (long start = 0; start < n; start += BLOCK) {
        long end = start + BLOCK < n ? start + BLOCK : n, i = start;
        __m256 a = _mm256_setzero_ps(), q = _mm256_setzero_ps();
        for (; i + 8 <= end; i += 8) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), kv);
            a = _mm256_add_ps(a, d);
            q = _mm256_fmadd_ps(d, d, q);
        }
        float ta = 0, tq = 0;
        for (; i < end; i++) { float d = x[i] - k; ta += d; tq += d * d; }
        t1 += (double)(hsum256(a) + ta);
        t2 += (double)(hsum256(q) + tq);
    }
    *s1 = t1;
    *s2 = t2;
}

AVX2 static void gradsums256(const float *dy, const float *x, long n, float k, double *s1, double *s2) {
    double t1 = 0, t2 = 0;
    __m256 kv = _mm256_set1_ps(k);
    for (long start = 0; start < n; start += BLOCK) {
        long end = start + BLOCK < n ? start + BLOCK : n, i = start;
        __m256 a = _mm256_setzero_ps(), q = _mm256_setzero_ps();
        for (; i + 8 <= end; i += 8) {
            __m256 g = _mm256_loadu_ps(dy + i);
            a = _mm256_add_ps(a, g);
            q = _mm256_fmadd_ps(g, _mm256_sub_ps(_mm256_loadu_ps(x + i), kv), q);
        }
        float ta = 0, tq = 0;
        for (; i < end; i++) { ta += dy[i]; tq += dy[i] * (x[i] - k); }
        t1 += (double)(hsum256(a) + ta);
        t2 += (double)(hsum256(q) + tq);
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
#endif

// ---- Dispatch -----------------------------------------------------------------------------------------------
static int level = -1;

int nk_native_level(void) {
    if (level < 0) {
#ifdef NK_X86
        __builtin_cpu_init();
        level = __builtin_cpu_supports("avx512f") ? 3
              : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 2 : 0;
#else
        level = 0;
#endif
    }
    return level;
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
