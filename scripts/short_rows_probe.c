// The channels-first forward apply (nk_sets_affine_centered) on rows of m floats, one thread, one call on about
// 12 K floats that stay in L1/L2, beside a copy of the same floats: GN's layout (sets of 16 rows, a set's rows
// contiguous) and BN's (one-row sets side by side, two pieces), the identity and SiLU; best of the repetitions,
// nanoseconds per 1,000 floats. Since session 50 rows shorter than 64 floats that are not whole vectors go as one run
// of whole vectors (sets_affine_runs); longer rows, and every row before, go row by row. To compare the two walks,
// build the probe against this tree's kernels and against those of a commit before it, and run the two alternately:
//
//   clang -O2 -ISources/CNormKitKernels/include scripts/short_rows_probe.c Sources/CNormKitKernels/*.c \
//       -o /tmp/short_rows_new -lm
//   mkdir -p /tmp/old && git archive 708be00 Sources/CNormKitKernels | tar -x -C /tmp/old
//   clang -O2 -I/tmp/old/Sources/CNormKitKernels/include scripts/short_rows_probe.c \
//       /tmp/old/Sources/CNormKitKernels/*.c -o /tmp/short_rows_old -lm
//   for i in 1 2; do /tmp/short_rows_old; /tmp/short_rows_new; done      # add 2 to run the AVX2 bodies
//
// PERFORMANCE.md, session 50.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "NormKitRowKernels.h"

enum { FLOATS = 1 << 16, REPETITIONS = 2000 };
static float x[FLOATS], y[FLOATS], a[FLOATS], b[FLOATS], k[FLOATS];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc > 1) {
        const int level = atoi(argv[1]);
        if (level != 2 && level != 3) {
            fprintf(stderr, "usage: %s [2|3]   (the kernel level: 2 = AVX2, 3 = AVX-512, the default)\n", argv[0]);
            return 2;
        }
        if (nk_limit_native_level(level) != level) {
            fprintf(stderr, "this CPU does not run level %d kernels\n", level);
            return 1;
        }
    }
    if (nk_native_level() == 0) {
        fprintf(stderr, "this CPU has neither AVX2 nor AVX-512: the native kernels do nothing\n");
        return 1;
    }
    for (int i = 0; i < FLOATS; i++) {
        x[i] = (float)(i % 97) * 0.01f;
        a[i] = 1 + (float)(i % 89) * 1e-3f;
        b[i] = 0.5f;
        k[i] = 0.25f;
    }
    static const long widths[] = {1, 4, 9, 25, 49, 100, 196};
    printf("kernel level %d; ns per 1,000 floats, best of %d calls\n", nk_native_level(), REPETITIONS);
    printf("%5s %-3s %-8s %8s %8s\n", "m", "", "", "apply", "copy");
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        const long m = widths[w];
        for (int layout = 0; layout < 2; layout++)
            for (int activation = 0; activation < 2; activation++) {
                const int act = activation ? NK_SILU : NK_IDENTITY;
                long rows, sets, pieces, set_stride, piece_stride;
                if (layout == 0) {  // GN: sets of 16 rows
                    rows = 16, pieces = 1, sets = 12288 / (16 * m) > 0 ? 12288 / (16 * m) : 1;
                    set_stride = piece_stride = rows * m;
                } else {  // BN: one-row sets side by side in two pieces
                    rows = 1, pieces = 2, sets = 6144 / m > 1 ? 6144 / m : 2;
                    set_stride = m, piece_stride = sets * m;
                }
                const long floats = sets * rows * pieces * m;
                double apply = 1e9, copy = 1e9;
                for (int r = 0; r < REPETITIONS; r++) {
                    double t0 = now();
                    nk_sets_affine_centered(y, x, sets, set_stride, pieces, rows, m, piece_stride, k, a, b, act,
                                            NK_STORE_CACHED);
                    double t1 = now();
                    memcpy(y, x, (size_t)floats * sizeof(float));
                    double t2 = now();
                    if (t1 - t0 < apply) apply = t1 - t0;
                    if (t2 - t1 < copy) copy = t2 - t1;
                }
                printf("%5ld %-3s %-8s %8.1f %8.1f\n", m, layout ? "BN" : "GN", act == NK_SILU ? "SiLU" : "identity",
                       apply * 1e12 / floats, copy * 1e12 / floats);
            }
    }
    return 0;
}
