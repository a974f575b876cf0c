// The channels-first forward and backward on sets of 392 to 3,136 floats, in batches of 16, 4, 2 and 1 sets,
// alternated in one process.
//
// Each shape runs as `normkit` runs it on two threads: the sets (GN's groups of one sample) go in batches of
// consecutive sets, half the batches per thread. The forward: a batch's moments (nk_sets_moments), its coefficients
// (here a plain loop), then its apply (nk_sets_affine_centered, identity or SiLU). The backward: a batch's gradient
// sums (nk_sets_gradient_sums; under SiLU dz stored over dx), coefficients (a plain loop), then its gradient apply
// (nk_sets_gradient_apply). The time is the whole model, best of the rounds for each batch size. `normkit` batches
// 64 KB of sets (at most 16,384 floats: NormalizationGeometry.setsPerBatch) and, since session 48, sets of more than
// 512 floats by at most 4,096 floats in the forward without SiLU (forwardSetsPerBatch) and rows of more than 512
// floats by at most 2,048 floats of each input in the backward (backwardSetsPerBatch), which the moments and
// gradient sums kernels take one at a time. The kernels are compiled from Sources/CNormKitKernels as they are (they
// pick AVX-512 at run time):
//
//   clang -O2 -ISources/CNormKitKernels/include scripts/set_batch_probe.c Sources/CNormKitKernels/*.c \
//       -o /tmp/set_batch_probe -lpthread -lm && /tmp/set_batch_probe 16
//   /tmp/set_batch_probe 30 2x2048x49x64 8x512x49x16      # other shapes: N x C x H·W x C/G (C/G at most 64)
//
// PERFORMANCE.md, sessions 48 (the default shapes) and 49 (7 × 7 maps).
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "NormKitRowKernels.h"

enum { THREADS = 2, SIZES = 4, MAX_SET_CHANNELS = 64 };
static const long batch_sizes[SIZES] = {16, 4, 2, 1};
static long channels_per_set, positions, set_count, set_floats, per_batch;
static int activation, backward, repetitions;
static float *x, *y, *dy, *dx;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void forward(long o, long sets) {
    double mean[16], m2[16];
    float k[16], a[16 * MAX_SET_CHANNELS], b[16 * MAX_SET_CHANNELS];
    nk_sets_moments(x + o, sets, set_floats, 1, set_floats, set_floats, mean, m2);
    for (long j = 0; j < sets; j++) {
        k[j] = (float)mean[j];
        const float rstd = (float)(1 / sqrt(m2[j] / (double)set_floats + 1e-5));
        for (long r = j * channels_per_set; r < (j + 1) * channels_per_set; r++) a[r] = rstd, b[r] = 0.1f;
    }
    nk_sets_affine_centered(y + o, x + o, sets, set_floats, 1, channels_per_set, positions, set_floats, k, a, b,
                            activation, NK_STORE_CACHED);
}

static void backward_pass(long o, long sets, const float *scale, const float *shift, const float *center) {
    double s1[16 * MAX_SET_CHANNELS], s2[16 * MAX_SET_CHANNELS];
    float k[16], p[16 * MAX_SET_CHANNELS], q[16], r[16];
    for (long j = 0; j < sets; j++) k[j] = 0.5f;
    nk_activation_backward act = {NK_SILU, scale, shift, center, dx + o};
    nk_sets_gradient_sums(s1, s2, 0, dy + o, x + o, sets, set_floats, 1, channels_per_set, positions, set_floats, k,
                          activation == NK_SILU ? &act : NULL);
    for (long j = 0; j < sets; j++) {
        q[j] = (float)(s2[j * channels_per_set] * 1e-6), r[j] = (float)(s1[j * channels_per_set] * 1e-6);
        for (long c = j * channels_per_set; c < (j + 1) * channels_per_set; c++) p[c] = 1.1f;
    }
    nk_sets_gradient_apply(dx + o, activation == NK_SILU ? dx + o : dy + o, x + o, sets, set_floats, 1,
                           channels_per_set, positions, set_floats, p, q, r, k, NK_STORE_CACHED);
}

static void *run(void *argument) {
    const long t = (long)argument, batches = set_count / per_batch;
    const long first = batches * t / THREADS, end = batches * (t + 1) / THREADS;
    float scale[16 * MAX_SET_CHANNELS], shift[16 * MAX_SET_CHANNELS], center[16 * MAX_SET_CHANNELS];
    for (int i = 0; i < 16 * MAX_SET_CHANNELS; i++) scale[i] = 1.1f, shift[i] = 0.1f, center[i] = 0.2f;
    for (int i = 0; i < repetitions; i++)
        for (long batch = first; batch < end; batch++) {
            const long o = batch * per_batch * set_floats;
            if (backward) backward_pass(o, per_batch, scale, shift, center);
            else forward(o, per_batch);
        }
    return NULL;
}

static double timed(long sets_per_batch) {
    per_batch = sets_per_batch;
    pthread_t threads[THREADS];
    const double start = now();
    for (long t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, run, (void *)t);
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    return (now() - start) / repetitions * 1e6;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 20;
    // (N, C, H·W, C/G): GN with G = 32 (G = C where C = 32), or the shapes given after the rounds.
    long shapes[16][4] = {{16, 32, 3136, 1}, {32, 32, 784, 1}, {2, 64, 784, 2}, {32, 64, 196, 2}};
    unsigned shape_count = 4;
    if (argc > 2) {
        shape_count = 0;
        for (int a = 2; a < argc && shape_count < 16; a++, shape_count++) {
            long *shape = shapes[shape_count];
            if (sscanf(argv[a], "%ldx%ldx%ldx%ld", &shape[0], &shape[1], &shape[2], &shape[3]) != 4 || shape[0] < 1 ||
                shape[2] < 1 || shape[3] < 1 || shape[3] > MAX_SET_CHANNELS || shape[1] % shape[3] ||
                (shape[1] / shape[3]) % 16) {
                fprintf(stderr, "%s: expected N x C x H·W x C/G, C/G at most %d, G = C / (C/G) a multiple of 16\n", argv[a],
                        MAX_SET_CHANNELS);
                return 2;
            }
        }
    }
    printf("channels-first layer model, %d threads, best of %d alternated rounds (us), batches of", THREADS, rounds);
    for (int i = 0; i < SIZES; i++) printf(" %ld", batch_sizes[i]);
    printf(" sets; then each / 16 sets\n");
    for (int mode = 0; mode < 4; mode++) {
        backward = mode / 2, activation = mode % 2 ? NK_SILU : NK_IDENTITY;
        for (unsigned s = 0; s < shape_count; s++) {
            const long n = shapes[s][0] * shapes[s][1] * shapes[s][2];
            channels_per_set = shapes[s][3], positions = shapes[s][2];
            set_floats = channels_per_set * positions, set_count = n / set_floats;
            repetitions = (int)(40000000 / n) + 1;
            x = aligned_alloc(4096, n * sizeof(float) + 4096);
            y = aligned_alloc(4096, n * sizeof(float) + 4096);
            dy = aligned_alloc(4096, n * sizeof(float) + 4096);
            dx = aligned_alloc(4096, n * sizeof(float) + 4096);
            if (!x || !y || !dy || !dx) return 1;
            for (long j = 0; j < n; j++) x[j] = (float)(j % 13) * 0.1f, dy[j] = (float)(j % 7) * 0.1f - 0.3f;
            for (long j = 0; j < n; j++) y[j] = dx[j] = 0;
            double best[SIZES];
            for (int i = 0; i < SIZES; i++) best[i] = 1e9;
            for (int r = 0; r < rounds; r++)
                for (int i = 0; i < SIZES; i++) {
                    const int which = r % 2 ? SIZES - 1 - i : i;
                    const double time = timed(batch_sizes[which]);
                    if (time < best[which]) best[which] = time;
                }
            printf("%-8s %-8s (%ld, %ld, %ld) sets of %ld floats:", backward ? "backward" : "forward",
                   activation == NK_SILU ? "SiLU" : "identity", shapes[s][0], shapes[s][1], shapes[s][2], set_floats);
            for (int i = 0; i < SIZES; i++) printf(" %.2f", best[i]);
            printf(" |");
            for (int i = 1; i < SIZES; i++) printf(" %.3f", best[i] / best[0]);
            printf("\n");
            free(x);
            free(y);
            free(dy);
            free(dx);
        }
    }
    return 0;
}
