#ifndef NORMKIT_KERNEL_TABLE_H
#define NORMKIT_KERNEL_TABLE_H
/*
 * One body per kernel, compiled once per instruction set, dispatched once.
 *
 *   KernelBody.h      every primitive, written once against a small vector layer (vf, vload, vfma, vload_part …),
 *                     in three parts: KernelBody.h (rows), KernelBodySets.h, KernelBodyChannelsLast.h (+ the table)
 *   KernelsAVX512.c   the vector layer for AVX-512F+VL (16 lanes, mask registers), then #include the three parts
 *   KernelsAVX2.c     the vector layer for AVX2+FMA (8 lanes, vector masks), then #include the three parts
 *   RowKernels.c      detects the CPU once, points `active` at one table below, and forwards the public
 *                     nk_* calls (include/NormKitRowKernels.h) through it
 *
 * Each inclusion gives its functions internal linkage and the instruction set's function-level `target`
 * attribute (no global compiler flags: the package builds with SwiftPM's defaults), and exports only its
 * table. The Swift SIMD kernels in Sources/NormKit/Kernels are the reference and the path for other CPUs.
 */
#include "NormKitRowKernels.h"

#include <stdint.h>

/* The kernels every table holds, named once: X(name) for each nk_<name> of NormKitRowKernels.h
 * (nk_row_affine is row_affine_centered with k = 0). */
#define NK_KERNEL_NAMES(X)                                                                                     \
    X(row_sum) X(row_centered_sums) X(row_gradient_sums) X(row_affine_centered) X(row_gradient_apply)          \
    X(sets_moments) X(sets_affine_centered) X(sets_gradient_sums) X(sets_gradient_apply)                        \
    X(cl_centered_sums) X(cl_gradient_sums) X(cl_affine_centered) X(cl_gradient_apply)                         \
    X(channel_coefficients) X(standardized_coefficients) X(cl_standardized_coefficients)                   \
    X(evaluation_coefficients) X(gradient_coefficients) X(cl_set_moments) X(matrix_row_forward)     \
    X(matrix_row_backward)
#define NK_TABLE_FIELD(name) __typeof__(nk_##name) *name;

typedef struct nk_kernel_table {
    int level; /* the nk_native_level() value this table implements: 2 or 3 */
    NK_KERNEL_NAMES(NK_TABLE_FIELD)
} nk_kernel_table;

#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#define NK_X86 1
extern const nk_kernel_table nk_kernels_avx2;    /* KernelsAVX2.c */
extern const nk_kernel_table nk_kernels_avx512;  /* KernelsAVX512.c */
#endif

/* For the ISA files: a kernel function and an always-inlined helper compiled for the instruction set NK_TARGET. */
#define NK_FN __attribute__((target(NK_TARGET))) static
#define NK_INLINE __attribute__((target(NK_TARGET), always_inline)) static inline

#endif
