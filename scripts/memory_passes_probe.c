// The channels-last kernels' passes over a tensor read from memory against plain loops moving the same bytes.
//
// Each pass of BN's NHWC forward and backward on (32, 256, 56, 56) (103 MB per tensor, beyond the caches), on two
// threads that each take half of the rows, as `normkit` runs it: the sums (`x`; `dy` and `x`) and the applies (`x` to
// `y`; `dy` and `x` to `dx`, streamed), each beside a plain AVX-512 loop that reads and writes the same bytes in
// address order (the floor of that pass on this machine), alternated round by round; best of the rounds. The kernels
// are compiled from Sources/CNormKitKernels as they are, with the toolchain's clang and no target flags (as SwiftPM
// builds them; they pick AVX-512 at run time):
//
//   clang -O2 -ISources/CNormKitKernels/include scripts/memory_passes_probe.c Sources/CNormKitKernels/*.c \
//       -o /tmp/memory_passes_probe -lpthread -lm && /tmp/memory_passes_probe 10
//
// PERFORMANCE.md, session 45: the sums passes had read at 0.6–0.8x the plain loops' rate.
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "NormKitRowKernels.h"

enum { THREADS = 2, CHANNELS = 256, PASSES = 8 };
static const long rows = 32L * 56 * 56;
static float *x, *dy, *out;
static float shift[CHANNELS], scale[CHANNELS], offset[CHANNELS], slope[CHANNELS];
static double sums[THREADS][2][CHANNELS];
static float sink[THREADS * 16];
static int pass;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Plain loops: `streams` inputs read in address order, summed (out NULL) or written to `out` by streaming stores.
__attribute__((target("avx512f,fma"))) static void plain_pass(int t, const float *a, const float *b, float *o, long first, long count) {
    __m512 s = _mm512_setzero_ps(), q = s;
    for (long i = first * CHANNELS; i < (first + count) * CHANNELS; i += 16) {
        __m512 v = _mm512_loadu_ps(a + i), w = b ? _mm512_loadu_ps(b + i) : v;
        if (o) _mm512_stream_ps(o + i, _mm512_fmadd_ps(v, w, s));
        else {
            s = _mm512_add_ps(s, v);
            q = _mm512_fmadd_ps(v, w, q);
        }
    }
    if (o) _mm_sfence();
    sink[t * 16] += _mm512_reduce_add_ps(_mm512_add_ps(s, q));
}

static void *run(void *argument) {
    const int t = (int)(long)argument;
    const long first = rows * t / THREADS, count = rows * (t + 1) / THREADS - first, o = first * CHANNELS;
    double *s1 = sums[t][0], *s2 = sums[t][1];
    switch (pass) {
    case 0: nk_cl_centered_sums(s1, s2, x + o, count, CHANNELS, CHANNELS, shift, NK_READ_AHEAD); break;
    case 1: plain_pass(t, x, NULL, NULL, first, count); break;
    case 2: nk_cl_gradient_sums(s1, s2, dy + o, x + o, count, CHANNELS, CHANNELS, shift, NULL, NK_READ_AHEAD); break;
    case 3: plain_pass(t, dy, x, NULL, first, count); break;
    case 4:
        nk_cl_affine_centered(out + o, x + o, count, CHANNELS, CHANNELS, shift, scale, offset, NK_IDENTITY,
                              NK_STORE_STREAMING, NK_READ_AHEAD);
        break;
    case 5: plain_pass(t, x, NULL, out, first, count); break;
    case 6:
        nk_cl_gradient_apply(out + o, dy + o, x + o, count, CHANNELS, CHANNELS, scale, slope, offset, shift, NULL,
                             NK_STORE_STREAMING);
        break;
    case 7: plain_pass(t, dy, x, out, first, count); break;
    }
    return NULL;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 10;
    const long n = rows * CHANNELS;
    x = aligned_alloc(4096, n * sizeof(float));
    dy = aligned_alloc(4096, n * sizeof(float));
    out = aligned_alloc(4096, n * sizeof(float));
    if (!x || !dy || !out) return 1;
    for (long i = 0; i < n; i++) x[i] = (float)(i % 13) * 0.1f, dy[i] = (float)(i % 7) * 0.1f, out[i] = 0;
    for (int c = 0; c < CHANNELS; c++) shift[c] = 0.5f, scale[c] = 1.1f, offset[c] = 0.2f, slope[c] = 0.9f;
    double best[PASSES];
    for (int p = 0; p < PASSES; p++) best[p] = 1e9;
    for (int r = 0; r < rounds; r++)
        for (pass = 0; pass < PASSES; pass++) {
            pthread_t threads[THREADS];
            const double start = now();
            for (long t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, run, (void *)t);
            for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
            if (now() - start < best[pass]) best[pass] = now() - start;
        }
    static const char *names[] = {"sums of x", "gradient sums of dy, x", "apply x -> y", "gradient apply dy, x -> dx"};
    printf("(32, 256, 56, 56) NHWC, %d threads, best of %d rounds: kernel ms, plain loop ms, kernel / plain\n",
           THREADS, rounds);
    for (int p = 0; p < PASSES; p += 2)
        printf("%-28s %7.2f %7.2f %5.2f\n", names[p / 2], best[p] * 1e3, best[p + 1] * 1e3, best[p] / best[p + 1]);
    return 0;
}
