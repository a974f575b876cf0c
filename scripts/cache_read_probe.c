// How much of the caches this machine gives one core right now: the read rate of buffers of 1 MB to 256 MB, each read
// again and again (best of the repetitions), on one thread. On a shared VM the L3 is shared with other guests, and
// the size at which the rate falls towards memory's moves with their load; a tensor pass whose working set lies
// beyond that size runs at memory's rate though it "fits" the L3 lscpu reports (PERFORMANCE.md, session 49: the
// (2, 256, 56, 56) forward+backward cells, 25.6 MB of x, y, dy and dx, where the rate had fallen to a third by 24 MB).
//
//   clang -O2 -mavx512f scripts/cache_read_probe.c -o /tmp/cache_read_probe && /tmp/cache_read_probe
//
// (-mavx2 on a CPU without AVX-512: the loop is written with the compiler's vector extension, any width works.)
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef float lanes __attribute__((vector_size(64)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    static const int megabytes[] = {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 256};
    printf("one thread, read rate by buffer size (best of the repetitions)\n");
    for (unsigned s = 0; s < sizeof megabytes / sizeof megabytes[0]; s++) {
        const size_t bytes = (size_t)megabytes[s] << 20, n = bytes / sizeof(lanes);
        lanes *a = aligned_alloc(64, bytes);
        if (!a) return 1;
        for (size_t i = 0; i < n; i++) a[i] = (lanes){0} + (float)(i % 7);
        int repetitions = (int)((512u << 20) / bytes);
        if (repetitions < 4) repetitions = 4;
        if (repetitions > 200) repetitions = 200;
        double best = 1e9;
        lanes total = {0};
        for (int r = 0; r < repetitions; r++) {
            const double start = now();
            lanes s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            for (size_t i = 0; i < n; i += 4) s0 += a[i], s1 += a[i + 1], s2 += a[i + 2], s3 += a[i + 3];
            total += s0 + s1 + s2 + s3;
            const double t = now() - start;
            if (t < best) best = t;
        }
        printf("%4d MB: %6.1f GB/s%s\n", megabytes[s], bytes / best / 1e9, total[0] == -1 ? " " : "");
        free(a);
    }
    return 0;
}
