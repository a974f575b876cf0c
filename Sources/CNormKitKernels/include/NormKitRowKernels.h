#ifndef NORMKIT_ROW_KERNELS_H
#define NORMKIT_ROW_KERNELS_H
/*
 * Wide-vector (AVX2+FMA, AVX-512) versions of NormKit's row primitives: one body compiled per instruction set,
 * the table for this CPU chosen once at the first call (the scheme: ../KernelTable.h). The Swift SIMD versions in Sources/NormKit/Kernels/RowKernels.swift are the reference and the fallback; the
 * tests run both and compare them. Semantics are identical: float lanes accumulate over blocks of at most
 * NK_BLOCK_LENGTH elements, block totals are added in double.
 */
#ifdef __cplusplus
extern "C" {
#endif

/* Floats summed in float lanes before a block total is added in double (the Swift kernels' `blockLength`). */
enum { NK_BLOCK_LENGTH = 2048 };

/* 0: none (use the Swift path), 2: AVX2 + FMA, 3: AVX-512F. Callers check it is > 0 before calling the kernels
 * below: at level 0 they do nothing (nk_row_sum returns 0). */
int nk_native_level(void);
/* Caps the level used from now on (2 runs the AVX2 bodies on an AVX-512 CPU, as the tests do; 0 none); returns
 * the level now in use. Thread-safe; kernels already running finish on the table they started with. */
int nk_limit_native_level(int maximum);

/*
 * Activations fused into the apply stage: the forward writes y = act(a·(x − k) + b) instead of the affine alone.
 * Identity, ReLU (max(0, z), NaN kept) and SiLU (z·σ(z), σ from a table-driven exp; SiLU and its derivative
 * within 3–4 float ulps of float64, KernelPathTests).
 */
enum { NK_IDENTITY = 0, NK_RELU = 1, NK_SILU = 2 };

/*
 * The backward of a fused activation, given to the gradient-sums kernels. `kind` is NK_RELU or NK_SILU; `scale`,
 * `shift`, `center` give the forward's pre-activation z = scale·(x − center) + shift, indexed like the kernel's
 * other per-row (or per-channel) coefficients. The kernel sums dz = dy·act'(z) in place of dy and stores dz to
 * `dz` (laid out like dy, which it may alias), where the apply stage reads it as its dy: the activation's backward
 * costs no pass of its own. A NULL nk_activation_backward is the identity.
 */
/*
 * How the apply kernels (nk_sets_affine_centered, nk_sets_gradient_apply, nk_cl_affine_centered,
 * nk_cl_gradient_apply) write their output. NK_STORE_STREAMING: whole vectors by non-temporal stores, for an output
 * larger than the caches: no read of each line before it is written, no eviction of the inputs still to be read;
 * the same values, fenced before the call returns. An output that is also an input (y = x in place, or dx over the
 * dz it reads) is stored as NK_STORE_CACHED: its lines are in cache already, and streaming over a modified line
 * writes it to memory twice. The channels-last kernels also stream only when `out` and the row stride c are whole
 * vectors.
 */
enum { NK_STORE_CACHED = 0, NK_STORE_STREAMING = 1 };
/*
 * Where the channels-last kernels (nk_cl_centered_sums, nk_cl_gradient_sums, nk_cl_affine_centered) find their
 * inputs. NK_READ_AHEAD, for inputs larger than the caches: the sums kernels prefetch each line one tile (about 32 KB)
 * ahead. NK_READ_CACHED (inputs in L1 or L2) and NK_READ_FROM_L3 (larger than the L2 of the threads that read them,
 * within the caches): no prefetches (on inputs in L2 or L3 they cost more than they save), except under SiLU, whose
 * passes always prefetch. Beyond L2 (NK_READ_FROM_L3 and NK_READ_AHEAD) the forward's apply walks whole rows in
 * address order rather than in 64-channel strips down a tile. The same values in every mode.
 */
enum { NK_READ_CACHED = 0, NK_READ_AHEAD = 1, NK_READ_FROM_L3 = 2 };

typedef struct nk_activation_backward {
    int kind;
    const float *scale, *shift, *center;
    float *dz;
} nk_activation_backward;

double nk_row_sum(const float *x, long n);
void nk_row_centered_sums(const float *x, long n, float k, double *s1, double *s2);
void nk_row_gradient_sums(const float *dy, const float *x, long n, float k, double *s1, double *s2,
                          const nk_activation_backward *act);
void nk_row_affine(float *y, const float *x, long n, float a, float b);
void nk_row_affine_centered(float *y, const float *x, long n, float k, float a, float b, int act);
void nk_row_gradient_apply(float *dx, const float *dy, const float *x, long n, float p, float q, float r, float k);

/*
 * Set kernels, over a batch of `sets` normalization sets: set j starts at x + j·set_stride and is `pieces` runs of
 * `rows·m` contiguous floats, run i at i·piece_stride; row r of a run belongs to the set's r-th channel.
 * Per-set values (k, q, r, mean, m2) are indexed j, per-row coefficients (a, b, p) j·rows + r.
 */
/* Mean and centred sum of squares Σ(x−μ)² per set (shifted two-pass: float mean k, then Σ(x−k), Σ(x−k)² in
 * float lanes over at most NK_BLOCK_LENGTH elements, double totals, corrected for the rounding of k). */
void nk_sets_moments(const float *x, long sets, long set_stride, long pieces, long run, long piece_stride,
                     double *mean, double *m2);
/* y = act(a·(x − k) + b) (y may alias x; k NULL: 0); store: NK_STORE_CACHED or NK_STORE_STREAMING. */
void nk_sets_affine_centered(float *y, const float *x, long sets, long set_stride, long pieces, long rows, long m,
                             long piece_stride, const float *k, const float *a, const float *b, int act, int store);
/* Per row: s1[j·rows + i·out_stride + r] = Σ dy, s2[…] = Σ dy·(x − k) (dy: dz with a fused activation). */
void nk_sets_gradient_sums(double *s1, double *s2, long out_stride, const float *dy, const float *x, long sets,
                           long set_stride, long pieces, long rows, long m, long piece_stride, const float *k,
                           const nk_activation_backward *act);
/* dx = p·dy + q·(x − k) + r. */
void nk_sets_gradient_apply(float *dx, const float *dy, const float *x, long sets, long set_stride, long pieces,
                            long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                            const float *k, int store);

/* The coefficients stage of a set's channels in double, rounded once to float:
 * a[c] = γ[c]·factor, scale[c] = (float)a[c], shift[c] = (float)(β[c] − a[c]·residual), for c < count. */
void nk_channel_coefficients(float *scale, float *shift, const float *gamma, const float *beta, long count,
                             double factor, double residual);

/* The coefficients stage of count one-channel sets (BN's consecutive channels of one sample block; set i at index i
 * of every array, gamma and beta moved to the first channel; NULL: 1, 0) standardized: from mean and biased variance,
 * rstd = 1/sqrt(var + ε), gain = 1, offset = 0, and scale, shift, centers. The double arithmetic of NormKit's Swift
 * loop. */
void nk_standardized_coefficients(double *rstd, double *gain, double *offset, float *scale, float *shift,
                                  float *centers, const double *mean, const double *variance, long count,
                                  float epsilon, const float *gamma, const float *beta);

/* The evaluation stage's coefficients of count channels (BN, BRN, MABN), in double, rounded once to float: per channel
 * a = γ/sqrt(spread + ε) (root != 0) or γ/spread (root = 0), centers = (float)center (center NULL: 0), scale = (float)a
 * and shift = (float)(β − a·(center − centers)); gamma, beta NULL: 1, 0. The double arithmetic of NormKit's Swift
 * loop. */
void nk_evaluation_coefficients(float *scale, float *shift, float *centers, const float *center, const float *spread,
                                const float *gamma, const float *beta, long count, double epsilon, int root);

/* The backward's coefficients stage of w one-channel sets (BN's channels of one sample block; set i's mean and rstd
 * at index i, its channel's γ·gain at ge[i]; sample j's Σdz at s1[j·stride + i] and Σdz·(x − k) about k = (float)mean
 * at s2[j·stride + i], made exact in place): p = rstd·ge, and the slope q and offset r (at k) of
 * dx = p·dz + q·(x − k) + r. The double arithmetic of NormKit's Swift loop. */
void nk_gradient_coefficients(float *p, float *q, float *r, double *s2, const double *s1, const double *mean,
                              const double *rstd, const double *ge, long samples, long stride, long w, double count);

/* GN, LN or IN (standardized) on one sample of an N × C matrix (one position per sample): its `sets` sets of w
 * contiguous channels (c = sets·w), set t of mean[t] and rstd[t], normalized as x̂ = (x − k)·(float)rstd + c with
 * k = (float)mean and c = (float)(−(mean − k)·rstd), in float, and z = γ·x̂ + β (x̂ without an affine: gamma and
 * beta NULL). The forward: the sets' mean, biased variance (nk_sets_moments, then ·1/w) and rstd = 1/sqrt(var + ε)
 * in double, and y = act(z). */
void nk_matrix_row_forward(float *y, double *mean, double *variance, double *rstd, const float *x, long sets, long w,
                           float epsilon, const float *gamma, const float *beta, int act);
/* The backward, with dz = dy, or dy·act'(z) for the forward's fused activation act (z recomputed; dz stored to dx
 * first): per set A = Σ γ·dz and B = Σ γ·dz·(x − μ) (float lanes, double totals every NK_BLOCK_LENGTH channels,
 * made exact about μ), slope = −rstd³·B/w, offset = −rstd·A/w, and dx = rstd·γ·dz + slope·(x − μ) + offset; per
 * channel dgamma[c] += dz·x̂ and dbeta[c] += dz (float accumulators: the caller adds them in double every few
 * samples; not touched without an affine, and may be NULL then). */
void nk_matrix_row_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, long sets, long w,
                            const double *mean, const double *rstd, const float *gamma, const float *beta, int act);

/* The statistics-to-coefficients stage of w one-channel sets (BN) standardized (gain 1, offset 0), from a
 * channels-last tile's per-sample shifted sums: for channel i, s1/s2 of sample j at j·stride + i about the shift
 * k[i] (positions values each, count in all); writes mean, biased variance, rstd, gain = 1, offset = 0 of set i and
 * scale, shift, centers of channel i (gamma, beta NULL: 1, 0). The double arithmetic of NormKit's Swift loops. */
void nk_cl_standardized_coefficients(double *mean, double *variance, double *rstd, double *gain, double *offset,
                                     float *scale, float *shift, float *centers, const float *k, const double *s1,
                                     const double *s2, long samples, long stride, long w, double positions,
                                     double count, float epsilon, const float *gamma, const float *beta);

/* The mean and biased variance of sets of w >= 8 consecutive channels (GN, LN) of a channels-last tile, from the
 * per-sample shifted sums: set t's channels t·w … t·w + w − 1, s1/s2 of sample j < samples at j·stride + channel
 * about the shift k[channel] (positions values each, count in all). In double; channel i adds into lane i mod 8,
 * the lanes then in a fixed order, so the bits do not depend on the caller's threads. */
void nk_cl_set_moments(double *mean, double *variance, const float *k, const double *s1, const double *s2, long sets,
                       long w, long samples, long stride, double positions, double count);

/*
 * Channels-last (NHWC) kernels: channels 0 … w − 1 (w ≤ c) of m rows (positions) c floats apart, so a call covers a
 * slice of channels of one or more consecutive samples; per-channel arrays (k, a, b, p, q, r) have w entries.
 * Vectorised across channels; each float lane adds at most 64 positions before its total is added in double.
 */
/* s1[ch] += Σ (x − k[ch]), s2[ch] += Σ (x − k[ch])² (k NULL: 0). */
void nk_cl_centered_sums(double *s1, double *s2, const float *x, long m, long c, long w, const float *k, int read);
/* s1[ch] += Σ dy, s2[ch] += Σ dy·(x − k[ch]) (dy: dz = dy·act'(z) with a fused activation, stored to act->dz
 * unless it is NULL). */
void nk_cl_gradient_sums(double *s1, double *s2, const float *dy, const float *x, long m, long c, long w,
                         const float *k, const nk_activation_backward *act, int read);
/* y = act(a[ch]·(x − k[ch]) + b[ch]) (k NULL: 0; y may alias x). */
void nk_cl_affine_centered(float *y, const float *x, long m, long c, long w, const float *k, const float *a,
                           const float *b, int act, int store, int read);
/* dx = p[ch]·g + q[ch]·(x − k[ch]) + r[ch], g = dy; with act (non-NULL), g = dz = dy·act'(z) recomputed from x
 * with the same operations as nk_cl_gradient_sums (the same bits; act->dz is not used). */
void nk_cl_gradient_apply(float *dx, const float *dy, const float *x, long m, long c, long w, const float *p,
                          const float *q, const float *r, const float *k, const nk_activation_backward *act,
                          int store);

#ifdef __cplusplus
}
#endif
#endif
