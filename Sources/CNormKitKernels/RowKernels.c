// The public row and set primitives (include/NormKitRowKernels.h): each forwards to the kernel table chosen once
// for this CPU. The kernels themselves are one body compiled per instruction set: see KernelTable.h.
#include "KernelTable.h"

#include <pthread.h>
#include <stdatomic.h>

// Tables by level (0 none, 2 AVX2+FMA, 3 AVX-512F+VL); level 1 has none.
#ifdef NK_X86
static const nk_kernel_table *const tables[4] = {NULL, NULL, &nk_kernels_avx2, &nk_kernels_avx512};
#else
static const nk_kernel_table *const tables[4] = {NULL, NULL, NULL, NULL};
#endif

static pthread_once_t detection = PTHREAD_ONCE_INIT;
static pthread_mutex_t capping = PTHREAD_MUTEX_INITIALIZER;  // serializes writers of `cap` and `active`
static int detected = 0;                                      // the CPU's level; written once, in detect()
static int cap = 3;                                           // guarded by `capping`
// The table in use: NULL before detection and at level 0. Readers load it once per call (acquire); a change of
// cap publishes a whole table (release), so a kernel call runs entirely on one instruction set.
static _Atomic(const nk_kernel_table *) active = NULL;

static void choose_table(void) {
    int level = detected < cap ? detected : cap;
    atomic_store_explicit(&active, tables[level < 0 ? 0 : level], memory_order_release);
}

static void detect(void) {
#ifdef NK_X86
    __builtin_cpu_init();
    detected = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 3
             : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 2 : 0;
#endif
    pthread_mutex_lock(&capping);
    choose_table();
    pthread_mutex_unlock(&capping);
}

// The table for this call: after the first call one acquire load (a plain load on x86) and a predicted branch.
static inline const nk_kernel_table *kernels(void) {
    const nk_kernel_table *table = atomic_load_explicit(&active, memory_order_acquire);
    if (__builtin_expect(table == NULL, 0)) {
        pthread_once(&detection, detect);
        table = atomic_load_explicit(&active, memory_order_acquire);
    }
    return table;
}

int nk_native_level(void) {
    const nk_kernel_table *table = kernels();
    return table ? table->level : 0;
}

int nk_limit_native_level(int maximum) {
    pthread_once(&detection, detect);
    pthread_mutex_lock(&capping);
    cap = maximum > 3 ? 3 : maximum;
    choose_table();
    pthread_mutex_unlock(&capping);
    return nk_native_level();
}

// Callers check nk_native_level() > 0 first; at level 0 these do nothing (and nk_row_sum returns 0).
#define NK_FORWARD(call)                        \
    const nk_kernel_table *table = kernels();   \
    if (table) table->call

double nk_row_sum(const float *x, long n) {
    const nk_kernel_table *table = kernels();
    return table ? table->row_sum(x, n) : 0;
}

void nk_row_centered_sums(const float *x, long n, float k, double *s1, double *s2) {
    NK_FORWARD(row_centered_sums(x, n, k, s1, s2));
}

void nk_row_gradient_sums(const float *dy, const float *x, long n, float k, double *s1, double *s2,
                          const nk_activation_backward *act) {
    NK_FORWARD(row_gradient_sums(dy, x, n, k, s1, s2, act));
}

void nk_row_affine(float *y, const float *x, long n, float a, float b) {
    NK_FORWARD(row_affine_centered(y, x, n, 0, a, b, NK_IDENTITY));
}

void nk_row_affine_centered(float *y, const float *x, long n, float k, float a, float b, int act) {
    NK_FORWARD(row_affine_centered(y, x, n, k, a, b, act));
}

void nk_row_gradient_apply(float *dx, const float *dy, const float *x, long n, float p, float q, float r, float k) {
    NK_FORWARD(row_gradient_apply(dx, dy, x, n, p, q, r, k));
}

void nk_sets_moments(const float *x, long sets, long set_stride, long pieces, long run, long piece_stride,
                     double *mean, double *m2) {
    NK_FORWARD(sets_moments(x, sets, set_stride, pieces, run, piece_stride, mean, m2));
}

void nk_sets_affine_centered(float *y, const float *x, long sets, long set_stride, long pieces, long rows, long m,
                             long piece_stride, const float *k, const float *a, const float *b, int act, int store) {
    NK_FORWARD(sets_affine_centered(y, x, sets, set_stride, pieces, rows, m, piece_stride, k, a, b, act, store));
}

void nk_sets_gradient_sums(double *s1, double *s2, long out_stride, const float *dy, const float *x, long sets,
                           long set_stride, long pieces, long rows, long m, long piece_stride, const float *k,
                           const nk_activation_backward *act) {
    NK_FORWARD(sets_gradient_sums(s1, s2, out_stride, dy, x, sets, set_stride, pieces, rows, m, piece_stride, k, act));
}

void nk_sets_gradient_apply(float *dx, const float *dy, const float *x, long sets, long set_stride, long pieces,
                            long rows, long m, long piece_stride, const float *p, const float *q, const float *r,
                            const float *k, int store) {
    NK_FORWARD(sets_gradient_apply(dx, dy, x, sets, set_stride, pieces, rows, m, piece_stride, p, q, r, k, store));
}

void nk_channel_coefficients(float *scale, float *shift, const float *gamma, const float *beta, long count,
                             double factor, double residual) {
    NK_FORWARD(channel_coefficients(scale, shift, gamma, beta, count, factor, residual));
}

void nk_standardized_coefficients(double *rstd, double *gain, double *offset, float *scale, float *shift,
                                  float *centers, const double *mean, const double *variance, long count,
                                  float epsilon, const float *gamma, const float *beta) {
    NK_FORWARD(standardized_coefficients(rstd, gain, offset, scale, shift, centers, mean, variance, count, epsilon,
                                         gamma, beta));
}

void nk_evaluation_coefficients(float *scale, float *shift, float *centers, const float *center, const float *spread,
                                const float *gamma, const float *beta, long count, double epsilon, int root) {
    NK_FORWARD(evaluation_coefficients(scale, shift, centers, center, spread, gamma, beta, count, epsilon, root));
}

void nk_matrix_row_forward(float *y, double *mean, double *variance, double *rstd, const float *x, long sets, long w,
                           float epsilon, const float *gamma, const float *beta, int act) {
    NK_FORWARD(matrix_row_forward(y, mean, variance, rstd, x, sets, w, epsilon, gamma, beta, act));
}

void nk_matrix_row_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, long sets, long w,
                            const double *mean, const double *rstd, const float *gamma, const float *beta, int act) {
    NK_FORWARD(matrix_row_backward(dx, dgamma, dbeta, dy, x, sets, w, mean, rstd, gamma, beta, act));
}

void nk_gradient_coefficients(float *p, float *q, float *r, double *s2, const double *s1, const double *mean,
                              const double *rstd, const double *ge, long samples, long stride, long w, double count) {
    NK_FORWARD(gradient_coefficients(p, q, r, s2, s1, mean, rstd, ge, samples, stride, w, count));
}

void nk_cl_standardized_coefficients(double *mean, double *variance, double *rstd, double *gain, double *offset,
                                     float *scale, float *shift, float *centers, const float *k, const double *s1,
                                     const double *s2, long samples, long stride, long w, double positions,
                                     double count, float epsilon, const float *gamma, const float *beta) {
    NK_FORWARD(cl_standardized_coefficients(mean, variance, rstd, gain, offset, scale, shift, centers, k, s1, s2,
                                            samples, stride, w, positions, count, epsilon, gamma, beta));
}

void nk_cl_set_moments(double *mean, double *variance, const float *k, const double *s1, const double *s2, long sets,
                       long w, long samples, long stride, double positions, double count) {
    NK_FORWARD(cl_set_moments(mean, variance, k, s1, s2, sets, w, samples, stride, positions, count));
}

void nk_cl_centered_sums(double *s1, double *s2, const float *x, long m, long c, long w, const float *k, int read) {
    NK_FORWARD(cl_centered_sums(s1, s2, x, m, c, w, k, read));
}

void nk_cl_gradient_sums(double *s1, double *s2, const float *dy, const float *x, long m, long c, long w,
                         const float *k, const nk_activation_backward *act, int read) {
    NK_FORWARD(cl_gradient_sums(s1, s2, dy, x, m, c, w, k, act, read));
}

void nk_cl_affine_centered(float *y, const float *x, long m, long c, long w, const float *k, const float *a,
                           const float *b, int act, int store, int read) {
    NK_FORWARD(cl_affine_centered(y, x, m, c, w, k, a, b, act, store, read));
}

void nk_cl_gradient_apply(float *dx, const float *dy, const float *x, long m, long c, long w, const float *p,
                          const float *q, const float *r, const float *k, const nk_activation_backward *act,
                          int store) {
    NK_FORWARD(cl_gradient_apply(dx, dy, x, m, c, w, p, q, r, k, act, store));
}
