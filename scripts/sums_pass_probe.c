// The channels-last sums passes over a tensor in L3 against plain loops reading the same bytes.
//
// GN's NHWC forward and backward on (2, 256, 56, 56) (6.4 MB per tensor: beyond L2, within L3) as `normkit` runs it
// on two threads, one sample each (`takesWholeSamplePerThread`): the sums of x (`nk_cl_centered_sums`) and the
// gradient sums of dy and x (`nk_cl_gradient_sums`), read NK_READ_FROM_L3, each beside a plain AVX-512 loop that reads
// the same bytes in address order (the floor of that pass here). The threads are pinned and start together; each
// round runs the four passes in turn; the table gives the median over the rounds and each kernel's median over its
// plain loop's. The last line is a checksum of the sums' bits: two builds of the kernels that add the same values in
// the same order print the same one. Compiled from Sources/CNormKitKernels as they are (or as a commit had them:
// `git archive REV Sources/CNormKitKernels | tar -x -C DIR`), with the toolchain's clang and no target flags, as
// SwiftPM builds them:
//
//   clang -O2 -ISources/CNormKitKernels/include scripts/sums_pass_probe.c Sources/CNormKitKernels/*.c \
//       -o /tmp/sums_pass_probe -lpthread -lm && /tmp/sums_pass_probe 300
//
// PERFORMANCE.md, session 51: 16-vector slices of registers took the sums of x from 1.40–1.45x a plain read to
// 1.18–1.19x.
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "NormKitRowKernels.h"

enum { THREADS = 2, CHANNELS = 256, PASSES = 4 };
static const long positions = 56 * 56;
static float *x, *dy;
static float shift[CHANNELS];
static double sums[PASSES][THREADS][2][CHANNELS];
static float sink[THREADS * 16];
static int pass;
static pthread_barrier_t start, finish;
static double seconds[THREADS];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// A plain read of `count` floats of a (and b) in address order, two vectors a step, summed into a sink.
__attribute__((target("avx512f,fma"))) static void plain_read(int t, const float *a, const float *b, long count) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
    for (long i = 0; i < count; i += 32) {
        const __m512 u = _mm512_loadu_ps(a + i), v = _mm512_loadu_ps(a + i + 16);
        const __m512 bu = b ? _mm512_loadu_ps(b + i) : u, bv = b ? _mm512_loadu_ps(b + i + 16) : v;
        s0 = _mm512_add_ps(s0, u);
        s1 = _mm512_add_ps(s1, v);
        q0 = _mm512_fmadd_ps(u, bu, q0);
        q1 = _mm512_fmadd_ps(v, bv, q1);
    }
    sink[t * 16] += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(q0, q1)));
}

static void *run(void *argument) {
    const int t = (int)(long)argument;
    const long o = t * positions * CHANNELS;
    for (;;) {
        pthread_barrier_wait(&start);
        if (pass < 0) return NULL;
        double *s1 = sums[pass][t][0], *s2 = sums[pass][t][1];
        const double began = now();
        switch (pass) {
        case 0: nk_cl_centered_sums(s1, s2, x + o, positions, CHANNELS, CHANNELS, shift, NK_READ_FROM_L3); break;
        case 1: plain_read(t, x + o, NULL, positions * CHANNELS); break;
        case 2:
            nk_cl_gradient_sums(s1, s2, dy + o, x + o, positions, CHANNELS, CHANNELS, shift, NULL, NK_READ_FROM_L3);
            break;
        case 3: plain_read(t, dy + o, x + o, positions * CHANNELS); break;
        }
        seconds[t] = now() - began;
        pthread_barrier_wait(&finish);
    }
}

static int ascending(const void *a, const void *b) {
    const double u = *(const double *)a, v = *(const double *)b;
    return u < v ? -1 : u > v;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 300;
    if (rounds < 1) {
        fprintf(stderr, "usage: %s [rounds ≥ 1]\n", argv[0]);
        return 2;
    }
    if (!__builtin_cpu_supports("avx512f")) {
        fprintf(stderr, "this probe's plain loops need AVX-512F\n");
        return 1;
    }
    const long n = THREADS * positions * CHANNELS;
    x = aligned_alloc(4096, n * sizeof(float));
    dy = aligned_alloc(4096, n * sizeof(float));
    double *times = malloc(sizeof(double) * PASSES * rounds);
    if (!x || !dy || !times) return 1;
    for (long i = 0; i < n; i++) x[i] = (float)(i % 13) * 0.37f - 1, dy[i] = (float)(i % 7) * 0.11f - 0.3f;
    for (int c = 0; c < CHANNELS; c++) shift[c] = 0.5f + c * 0.001f;
    pthread_barrier_init(&start, NULL, THREADS + 1);
    pthread_barrier_init(&finish, NULL, THREADS + 1);
    pthread_t threads[THREADS];
    for (long t = 0; t < THREADS; t++) {
        pthread_create(&threads[t], NULL, run, (void *)t);
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(t, &cpus);
        pthread_setaffinity_np(threads[t], sizeof cpus, &cpus);
    }
    for (int r = 0; r < rounds; r++)
        for (int p = 0; p < PASSES; p++) {
            memset(sums[p], 0, sizeof sums[p]);
            pass = p;
            pthread_barrier_wait(&start);
            pthread_barrier_wait(&finish);
            times[p * rounds + r] = seconds[0] > seconds[1] ? seconds[0] : seconds[1];
        }
    pass = -1;
    pthread_barrier_wait(&start);
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    double median[PASSES];
    for (int p = 0; p < PASSES; p++) {
        qsort(times + p * rounds, rounds, sizeof(double), ascending);
        median[p] = times[p * rounds + rounds / 2];
    }
    printf("(2, 256, 56, 56) NHWC from L3, %d threads of one sample each, median of %d rounds: kernel µs, plain µs, "
           "kernel / plain\n",
           THREADS, rounds);
    printf("%-24s %7.1f %7.1f %5.2f\n", "sums of x", median[0] * 1e6, median[1] * 1e6, median[0] / median[1]);
    printf("%-24s %7.1f %7.1f %5.2f\n", "gradient sums of dy, x", median[2] * 1e6, median[3] * 1e6,
           median[2] / median[3]);
    uint64_t checksum = 0;
    for (int p = 0; p < PASSES; p += 2)
        for (int t = 0; t < THREADS; t++)
            for (int s = 0; s < 2; s++)
                for (int c = 0; c < CHANNELS; c++) {
                    uint64_t bits;
                    memcpy(&bits, &sums[p][t][s][c], sizeof bits);
                    checksum = checksum * 1000003 + bits;
                }
    printf("checksum of the sums' bits: %016llx\n", (unsigned long long)checksum);
    return 0;
}
