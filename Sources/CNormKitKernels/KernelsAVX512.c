// The AVX-512 (F and VL) vector layer of the one kernel body (the scheme: KernelTable.h; the layer's contract: KernelBody.h).
#include "KernelTable.h"

#ifdef NK_X86
#include <immintrin.h>

// VL as well as F: with F alone clang allocated a loop of 32 live vectors in 19 of the 32 registers and spilled the
// rest (the 16-vector sums below, 2.3x a plain read's time against 1.14x with VL; a throwaway C model, session 51). Every
// AVX-512 processor since Skylake-SP has VL; the dispatch (RowKernels.c) asks for both.
#define NK_TARGET "avx512f,avx512vl"
#define NK_TABLE nk_kernels_avx512
#define NK_LEVEL 3
#define NK_LANES 16
// The sums hold rows of up to 16 vectors, 32 accumulators, in the 32 registers (KernelBodyChannelsLast.h, CL_SUMS_WIDTH).
#define NK_SUMS_VECTORS 16
#define NK_PS(op) _mm512_##op##_ps
typedef __m512 vf;
#define vstream(p, v) _mm512_stream_ps(p, v)
#define vstream_fence() _mm_sfence()
#define vprefetch(p, n) _mm_prefetch((const char *)((uintptr_t)(p) + (uintptr_t)(n) * sizeof(float)), _MM_HINT_T0)

// Lane masks are mask registers: a partial load or store is one instruction and touches only the masked lanes.
typedef __mmask16 vmask;
#define vmask_first(n) ((__mmask16)((1u << (n)) - 1))
#define vload_part(m, p) _mm512_maskz_loadu_ps(m, p)
#define vstore_part(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#define vblend(m, a, b) _mm512_mask_blend_ps(m, b, a)
#define vkeep(m, v) _mm512_maskz_mov_ps(m, v)
#define vreduce(v) _mm512_reduce_add_ps(v)
#define vround(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vscale2_floor(p, n) _mm512_scalef_ps(p, n) /* scalef floors n: one instruction where AVX2 needs five */
typedef __m512i vindex;
#define vindex_truncate(v) _mm512_cvttps_epi32(v)
#define vpermute(i, v) _mm512_permutexvar_ps(i, v)
// 2^(j/16), j = 0 … 15, rounded to float; the permute reads the low 4 bits of each lane's index.
#define NK_EXP_BITS 4
static const float exp2_sixteenths[16] __attribute__((aligned(64))) = {
    0x1p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f, 0x1.3dea64p+0f, 0x1.4bfdaep+0f,
    0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f, 0x1.ae89fap+0f, 0x1.c199bep+0f,
    0x1.d5818ep+0f, 0x1.ea4afap+0f};
#define vexp2_fraction(t) _mm512_permutexvar_ps(_mm512_cvtps_epi32(t), _mm512_load_ps(exp2_sixteenths))
#define vkeep_above(z, t, v) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, t, _CMP_GT_OQ), v)
#define vdrop_at_most(z, t, v) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, t, _CMP_NLE_UQ), v)
// One masked division, where the AMD machine kind (Zen 5) divides faster than the 14-bit estimate and its Newton
// step that it replaced: GN + SiLU's forward 0.81–0.88× the time, forward+backward 0.85–0.94× (PERFORMANCE.md,
// session 15). The masked-off lanes get a·0.
#define vdiv_above(z, t, a, b) \
    _mm512_mask_div_ps(_mm512_mul_ps(a, _mm512_setzero_ps()), _mm512_cmp_ps_mask(z, t, _CMP_GT_OQ), a, b)

// A 16×16 transpose folded into 15 shuffle-add steps: within 128-bit lanes (unpack, shuffle), then across them.
NK_INLINE vf vreduce_lanes(const vf *v) {
    vf l1[8], l2[4], l3[2];
    for (int i = 0; i < 8; i++)
        l1[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        l2[i] = _mm512_add_ps(_mm512_shuffle_ps(l1[2 * i], l1[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(l1[2 * i], l1[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++)
        l3[i] = _mm512_add_ps(_mm512_shuffle_f32x4(l2[2 * i], l2[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(l2[2 * i], l2[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// The float sum of v's lanes added in vreduce_lanes's order (within 128-bit lanes (e0 + e2) + (e1 + e3), then those
// pairwise across them), so the same bits as vreduce_lanes's lane for v.
NK_INLINE float vreduce_as_lanes(vf v) {
    v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm512_cvtss_f32(v);
}

#include "KernelBody.h"
#include "KernelBodySets.h"
#include "KernelBodyChannelsLast.h"
#endif
