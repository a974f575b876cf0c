#ifndef NORMKIT_ROW_KERNELS_H
#define NORMKIT_ROW_KERNELS_H
/*
 * Wide-vector (AVX2+FMA, AVX-512) versions of NormKit's row primitives, selected at run time by CPU feature.
 * The Swift SIMD versions in Sources/NormKit/Kernels/RowKernels.swift are the reference and the fallback; the
 * tests run both and compare them. Semantics are identical: float lanes accumulate over blocks of at most
 * 2048 elements, block totals are added in double.
 */
#ifdef __cplusplus
extern "C" {
#endif

/* 0: none (use the Swift path), 2: AVX2 + FMA, 3: AVX-512F. */
int nk_native_level(void);

double nk_row_sum(const float *x, long n);
void nk_row_centered_sums(const float *x, long n, float k, double *s1, double *s2);
void nk_row_gradient_sums(const float *dy, const float *x, long n, float k, double *s1, double *s2);
void nk_row_affine(float *y, const float *x, long n, float a, float b);
void nk_row_affine_centered(float *y, const float *x, long n, float k, float a, float b);
void nk_row_gradient_apply(float *dx, const float *dy, const float *x, long n, float p, float q, float r, float k);

#ifdef __cplusplus
}
#endif
#endif
