// See include/NormKitDNNL.h: the one weight gradient the oneDNN engine computes itself.
#include "NormKitDNNL.h"

#include <string.h>

// Products and sums stay separate roundings (as in the scalar loop), so every path gives the same bits.
#pragma clang fp contract(off)

// The scalar loop, for any kernel size and filter count: per position (image, row, column in order), db += dy and
// acc[tap] += x[tap] · dy for each valid tap; acc is tap-major, `taps × filters` floats.
static void weight_gradient_any(float *acc, float *db, const float *x, const float *dy, int images, int height,
                                int width, int filters, int kernel, int stride, int padding, int out_height,
                                int out_width) {
    for (int n = 0; n < images; n++) {
        const float *image = x + (long)n * height * width;
        for (int oh = 0; oh < out_height; oh++) {
            for (int ow = 0; ow < out_width; ow++) {
                const float *row = dy + (((long)n * out_height + oh) * out_width + ow) * filters;
                if (db)
                    for (int f = 0; f < filters; f++) db[f] += row[f];
                for (int ki = 0; ki < kernel; ki++) {
                    const int ih = oh * stride - padding + ki;
                    if (ih < 0 || ih >= height) continue;
                    for (int kj = 0; kj < kernel; kj++) {
                        const int iw = ow * stride - padding + kj;
                        if (iw < 0 || iw >= width) continue;
                        const float value = image[ih * width + iw];
                        float *target = acc + (ki * kernel + kj) * filters;
                        for (int f = 0; f < filters; f++) target[f] += value * row[f];
                    }
                }
            }
        }
    }
}

// 3 × 3 kernels, 16 filters at a time: the nine taps' sums (and db's) of one 16-filter slice stay in vector
// registers over every position; the same additions in the same order as `weight_gradient_any`.
typedef float v16 __attribute__((vector_size(64)));

#define NK_3X3_BODY                                                                                             \
    for (int f0 = 0; f0 < filters; f0 += 16) {                                                                 \
        v16 a[3][3], bsum;                                                                                     \
        memcpy(&bsum, db ? db + f0 : acc, sizeof bsum);                                                        \
        for (int t = 0; t < 9; t++) memcpy(&a[t / 3][t % 3], acc + t * filters + f0, sizeof(v16));             \
        for (int n = 0; n < images; n++) {                                                                     \
            const float *image = x + (long)n * height * width;                                                 \
            for (int oh = 0; oh < out_height; oh++) {                                                          \
                const float *rows = dy + (((long)n * out_height + oh) * out_width) * filters + f0;             \
                for (int ow = 0; ow < out_width; ow++) {                                                       \
                    v16 row;                                                                                   \
                    memcpy(&row, rows + (long)ow * filters, sizeof row);                                       \
                    bsum += row;                                                                               \
                    for (int ki = 0; ki < 3; ki++) {                                                           \
                        const int ih = oh * stride - padding + ki;                                             \
                        if (ih < 0 || ih >= height) continue;                                                  \
                        for (int kj = 0; kj < 3; kj++) {                                                       \
                            const int iw = ow * stride - padding + kj;                                         \
                            if (iw < 0 || iw >= width) continue;                                               \
                            a[ki][kj] += image[ih * width + iw] * row;                                         \
                        }                                                                                      \
                    }                                                                                          \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        if (db) memcpy(db + f0, &bsum, sizeof bsum);                                                           \
        for (int t = 0; t < 9; t++) memcpy(acc + t * filters + f0, &a[t / 3][t % 3], sizeof(v16));             \
    }

#define NK_3X3_PARAMETERS                                                                                      \
    float *acc, float *db, const float *x, const float *dy, int images, int height, int width, int filters,   \
        int stride, int padding, int out_height, int out_width

__attribute__((target("avx512f"))) static void weight_gradient_3x3_avx512(NK_3X3_PARAMETERS) { NK_3X3_BODY }
__attribute__((target("avx2"))) static void weight_gradient_3x3_avx2(NK_3X3_PARAMETERS) { NK_3X3_BODY }

void nk_single_channel_weight_gradient(float *dweights, float *dbias, const float *x, const float *dy, int images,
                                       int height, int width, int filters, int kernel, int stride, int padding,
                                       int out_height, int out_width, float *scratch, int level) {
    const int taps = kernel * kernel, vectors = kernel == 3 && filters % 16 == 0;
    memset(scratch, 0, sizeof(float) * (size_t)taps * filters);
    if (dbias) memset(dbias, 0, sizeof(float) * (size_t)filters);
    if (vectors && level >= 2 && __builtin_cpu_supports("avx512f"))
        weight_gradient_3x3_avx512(scratch, dbias, x, dy, images, height, width, filters, stride, padding,
                                   out_height, out_width);
    else if (vectors && level >= 1 && __builtin_cpu_supports("avx2"))
        weight_gradient_3x3_avx2(scratch, dbias, x, dy, images, height, width, filters, stride, padding,
                                 out_height, out_width);
    else
        weight_gradient_any(scratch, dbias, x, dy, images, height, width, filters, kernel, stride, padding,
                            out_height, out_width);
    for (int f = 0; f < filters; f++)
        for (int t = 0; t < taps; t++) dweights[(long)f * taps + t] = scratch[(long)t * filters + f];
}
