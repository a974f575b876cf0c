// The channels-last forward on whole rows in L3: its apply in 64-channel strips down tiles of rows (read
// NK_READ_CACHED) against row by row in address order (NK_READ_FROM_L3), alternated in one process.
//
// Each shape runs as `normkit` runs it on two threads: a split sample's parts (blockParts: up to 16 parts of at least
// 64 rows), each thread summing its share of the parts (nk_cl_centered_sums) and then applying it last part first
// (nk_cl_affine_centered), sample after sample; samples too short to split go whole, one thread each. The time is
// the whole forward model (sums and apply), best of the rounds for each walk, and the rounds each walk won. The
// kernels are compiled from Sources/CNormKitKernels as they are (they pick AVX-512 at run time):
//
//   clang -O2 -ISources/CNormKitKernels/include scripts/apply_walk_probe.c Sources/CNormKitKernels/*.c \
//       -o /tmp/apply_walk_probe -lpthread -lm && /tmp/apply_walk_probe 30
//
// PERFORMANCE.md, session 47: beyond the threads' L2 the rows won 21-29 of 30 rounds (best 0.73-1.01x the tiles' time),
// within it 10-17 (0.95-1.13x).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "NormKitRowKernels.h"

enum { THREADS = 2 };
static long samples, channels, rows, parts;
static int read_mode, repetitions;
static float *x, *y, *shift, *scale, *offset;
static double sums[THREADS][2][4096];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Rows [first, end) of sample s: the sums, then (after the caller's other parts) the apply.
static void sums_of(int t, long s, long first, long end) {
    nk_cl_centered_sums(sums[t][0], sums[t][1], x + (s * rows + first) * channels, end - first, channels, channels,
                        shift + s * channels, NK_READ_CACHED);
}
static void apply_of(long s, long first, long end) {
    const long o = (s * rows + first) * channels;
    nk_cl_affine_centered(y + o, x + o, end - first, channels, channels, shift + s * channels, scale + s * channels,
                          offset + s * channels, NK_IDENTITY, NK_STORE_CACHED, read_mode);
}

static void *run(void *argument) {
    const int t = (int)(long)argument;
    for (int i = 0; i < repetitions; i++) {
        if (parts > 1) {
            const long p0 = parts * t / THREADS, p1 = parts * (t + 1) / THREADS;
            for (long s = 0; s < samples; s++) {
                for (long p = p0; p < p1; p++) sums_of(t, s, rows * p / parts, rows * (p + 1) / parts);
                for (long p = p1 - 1; p >= p0; p--) apply_of(s, rows * p / parts, rows * (p + 1) / parts);
            }
        } else {
            for (long s = samples * t / THREADS; s < samples * (t + 1) / THREADS; s++) {
                sums_of(t, s, 0, rows);
                apply_of(s, 0, rows);
            }
        }
    }
    return NULL;
}

static double timed(int mode) {
    read_mode = mode;
    pthread_t threads[THREADS];
    const double start = now();
    for (long t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, run, (void *)t);
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    return (now() - start) / repetitions;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 30;
    // (N, C, H·W, parts per sample): GN's split samples, BN's batch (one block of 2 samples: 24 parts of its rows),
    // whole samples, and tensors within two L2s of 1 MB.
    static const long shapes[][4] = {{2, 256, 3136, 16}, {2, 512, 784, 12}, {1, 512, 1568, 24},
                                     {4, 256, 784, 1},   {2, 128, 784, 1},  {2, 2048, 49, 1}};
    printf("channels-last forward model, %d threads, best of %d alternated rounds (us): tiles, rows, rows / tiles\n",
           THREADS, rounds);
    for (unsigned i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        samples = shapes[i][0], channels = shapes[i][1], rows = shapes[i][2], parts = shapes[i][3];
        const long n = samples * rows * channels;
        repetitions = (int)(40000000 / n) + 1;
        x = aligned_alloc(4096, n * sizeof(float) + 4096);
        y = aligned_alloc(4096, n * sizeof(float) + 4096);
        shift = aligned_alloc(64, samples * channels * sizeof(float));
        scale = aligned_alloc(64, samples * channels * sizeof(float));
        offset = aligned_alloc(64, samples * channels * sizeof(float));
        if (!x || !y || !shift || !scale || !offset) return 1;
        for (long j = 0; j < n; j++) x[j] = (float)(j % 13) * 0.1f, y[j] = 0;
        for (long j = 0; j < samples * channels; j++) shift[j] = 0.5f, scale[j] = 1.1f, offset[j] = 0.2f;
        double best[2] = {1e9, 1e9};
        int wins = 0;
        for (int r = 0; r < rounds; r++) {
            const int first = r % 2 ? NK_READ_FROM_L3 : NK_READ_CACHED;
            const int second = first == NK_READ_CACHED ? NK_READ_FROM_L3 : NK_READ_CACHED;
            const double a = timed(first), b = timed(second);
            const double tiles = first == NK_READ_CACHED ? a : b, walk = first == NK_READ_CACHED ? b : a;
            if (tiles < best[0]) best[0] = tiles;
            if (walk < best[1]) best[1] = walk;
            wins += walk < tiles;
        }
        printf("(%ld, %ld, %ld rows) %2ld parts, %5.1f MB: %7.1f %7.1f %5.3f (rows faster in %d of %d rounds)\n",
               samples, channels, rows, parts, n * 4e-6, best[0] * 1e6, best[1] * 1e6, best[1] / best[0], wins,
               rounds);
        free(x), free(y), free(shift), free(scale), free(offset);
    }
    return 0;
}
