// The AVX2+FMA vector layer of the one kernel body (the scheme: KernelTable.h; the layer's contract: KernelBody.h).
#include "KernelTable.h"

#ifdef NK_X86
#include <immintrin.h>

#define NK_TARGET "avx2,fma"
#define NK_TABLE nk_kernels_avx2
#define NK_LEVEL 2
#define NK_LANES 8
// The sums hold the strips' 4 vectors, no more: 16 registers (KernelBodyChannelsLast.h, CL_SUMS_WIDTH).
#define NK_SUMS_VECTORS CL_VECTORS
#define NK_PS(op) _mm256_##op##_ps
typedef __m256 vf;
#define vstream(p, v) _mm256_stream_ps(p, v)
#define vstream_fence() _mm_sfence()
#define vprefetch(p, n) _mm_prefetch((const char *)((uintptr_t)(p) + (uintptr_t)(n) * sizeof(float)), _MM_HINT_T0)

// No mask registers: a lane mask is a vector of all-ones (kept) or zero 32-bit lanes; vmaskmov loads and stores
// neither read nor write (nor fault on) the other lanes.
typedef __m256i vmask;
#define vmask_first(n) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define vload_part(m, p) _mm256_maskload_ps(p, m)
#define vstore_part(p, m, v) _mm256_maskstore_ps(p, m, v)
#define vblend(m, a, b) _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m))
#define vkeep(m, v) _mm256_and_ps(v, _mm256_castsi256_ps(m))
#define vround(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vscale2_floor(p, n)                                                                                    \
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(                                                  \
                         _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_floor_ps(n)), _mm256_set1_epi32(127)), 23)))
typedef __m256i vindex;
#define vindex_truncate(v) _mm256_cvttps_epi32(v)
#define vpermute(i, v) _mm256_permutevar8x32_ps(v, i)
// 2^(j/8), j = 0 … 7, rounded to float; the permute reads the low 3 bits of each lane's index.
#define NK_EXP_BITS 3
#define vexp2_fraction(t)                                                                                      \
    _mm256_permutevar8x32_ps(_mm256_setr_ps(0x1p+0f, 0x1.172b84p+0f, 0x1.306fe0p+0f, 0x1.4bfdaep+0f, 0x1.6a09e6p+0f, \
                                            0x1.8ace54p+0f, 0x1.ae89fap+0f, 0x1.d5818ep+0f),                  \
                             _mm256_cvtps_epi32(t))
#define vkeep_above(z, t, v) _mm256_and_ps(_mm256_cmp_ps(z, t, _CMP_GT_OQ), v)
#define vdrop_at_most(z, t, v) _mm256_and_ps(_mm256_cmp_ps(z, t, _CMP_NLE_UQ), v)

// a/b as a times 1/b from the 12-bit estimate and one Newton step (e ← e·(2 − b·e): ~23 bits for b ≥ 1): three
// pipelined operations, where the dividers of AVX2-only CPUs take ~5 cycles or more per vector (not measured here).
NK_INLINE vf vdiv_above(vf z, vf t, vf a, vf b) {
    const vf e = _mm256_rcp_ps(b);
    return _mm256_mul_ps(a, vkeep_above(z, t, _mm256_mul_ps(e, _mm256_fnmadd_ps(b, e, _mm256_set1_ps(2.0f)))));
}

NK_INLINE float vreduce(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// An 8×8 transpose folded into 7 shuffle-add steps: within 128-bit lanes (unpack, shuffle), then across them.
NK_INLINE vf vreduce_lanes(const vf *v) {
    vf l1[4], l2[2];
    for (int i = 0; i < 4; i++)
        l1[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        l2[i] = _mm256_add_ps(_mm256_shuffle_ps(l1[2 * i], l1[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(l1[2 * i], l1[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_permute2f128_ps(l2[0], l2[1], 0x20), _mm256_permute2f128_ps(l2[0], l2[1], 0x31));
}

// The float sum of v's lanes added in vreduce_lanes's order (within 128-bit lanes (e0 + e2) + (e1 + e3), then the
// two halves), so the same bits as vreduce_lanes's lane for v.
NK_INLINE float vreduce_as_lanes(vf v) {
    v = _mm256_add_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm256_add_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

#include "KernelBody.h"
#include "KernelBodySets.h"
#include "KernelBodyChannelsLast.h"
#endif
