// NormKit's bridge to oneDNN (Debian's libdnnl-dev, oneDNN 2.x): 2-D convolutions forward, backward-data and
// backward-weights (with bias) for one fixed shape each, their primitives created once and reused.
//
// One `nk_dnnl_convolution` belongs to one thread at a time (it owns its stream, its scratchpads and its weight
// buffers); NormKit gives each worker of its pool its own. Each runs oneDNN single-threaded, so NormKit's pool is
// the one owner of the cores and oneDNN's OpenMP threads are never started.
//
// Activations are float32 in the caller's memory, `(N, C, H, W)` logically, NCHW or NHWC in memory as chosen at
// creation; the direct kernels read and write them in place (no reorder), Winograd's (where asked for and chosen)
// through a reorder to and from its blocked layout in working memory of the calling thread (shared by every
// convolution the thread runs, with their scratchpads; freed when the thread ends), none for NHWC with 16 channels,
// the same memory. Weights are given and returned in PyTorch's OIHW order and reordered to the layout oneDNN picked
// only in `nk_dnnl_convolution_set_weights`.
//
// Every function returns 0 on success or a oneDNN status (> 0); `nk_dnnl_last_error` describes the last failure
// of the calling thread.
#ifndef NORMKIT_DNNL_H
#define NORMKIT_DNNL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nk_dnnl_convolution nk_dnnl_convolution;

/// 1 when NormKit was built with oneDNN (its headers were found), else 0 and every other call fails.
int nk_dnnl_is_available(void);

/// oneDNN's version, "2.6.3", or "" without oneDNN.
const char *nk_dnnl_version(void);

/// The calling thread's last error message ("" if none).
const char *nk_dnnl_last_error(void);

/// A convolution of `batch` images of `channels × height × width` into `filters` channels, square kernel `kernel`,
/// `stride` and zero `padding` on every side; `channels_last` selects NHWC memory for input and output (else
/// NCHW); `winograd` non-zero lets a 3 × 3 stride-1 convolution with channels and filters in whole blocks of 16 run
/// oneDNN's Winograd F(4×4, 3×3) where oneDNN has it (AVX-512) and `batch` gives it enough output tiles (see
/// `winograd_pays` in Convolution.c), else the direct kernels. NULL on failure (see `nk_dnnl_last_error`).
nk_dnnl_convolution *nk_dnnl_convolution_create(int batch, int channels, int height, int width, int filters,
                                                int kernel, int stride, int padding, int has_bias,
                                                int channels_last, int winograd);

void nk_dnnl_convolution_destroy(nk_dnnl_convolution *convolution);

/// The name of the oneDNN implementation a pass runs (0: forward, 1: backward-data, 2: backward-weights), as
/// `ONEDNN_VERBOSE` prints it ("jit:avx512_core", "brgconv:avx512_core", …); valid while the convolution lives, ""
/// without oneDNN, for a NULL convolution or for another pass.
const char *nk_dnnl_convolution_implementation(const nk_dnnl_convolution *convolution, int pass);

/// Reorders `weights` (OIHW, `filters × channels × kernel × kernel`) into the forward primitive's own layout; call
/// before the forward after the weights changed.
int nk_dnnl_convolution_set_weights(nk_dnnl_convolution *convolution, const float *weights);

/// The same for the backward-data primitive (its layout may differ); call before the backward-data.
int nk_dnnl_convolution_set_backward_weights(nk_dnnl_convolution *convolution, const float *weights);

/// `y = conv(x, weights) + bias` (`bias` may be NULL when created without one).
int nk_dnnl_convolution_forward(nk_dnnl_convolution *convolution, const float *x, const float *bias, float *y);

/// `dx = conv_transpose(dy, weights)`.
int nk_dnnl_convolution_backward_data(nk_dnnl_convolution *convolution, const float *dy, float *dx);

/// `dweights` (OIHW, overwritten) and `dbias` (overwritten; may be NULL without a bias) from `x` and `dy`.
int nk_dnnl_convolution_backward_weights(nk_dnnl_convolution *convolution, const float *x, const float *dy,
                                         float *dweights, float *dbias);

/// The weight gradient of a convolution with one input channel over channels-last `dy`, computed by NormKit
/// (see `Conv2d+OneDNN.swift`; available without oneDNN too): `dweights` (OIHW, `filters × kernel × kernel`) and
/// `dbias` (may be NULL), both overwritten, from `x` (`images × height × width`) and `dy` (`images × out_height ×
/// out_width × filters`); `scratch` holds `kernel² × filters` floats. Sums run over positions in order, products
/// and sums rounded separately: the same bits on every instruction set. `level` caps the instruction set used
/// (2: AVX-512, 1: AVX2, 0: scalar; the CPU's own limit applies too).
void nk_single_channel_weight_gradient(float *dweights, float *dbias, const float *x, const float *dy, int images,
                                       int height, int width, int filters, int kernel, int stride, int padding,
                                       int out_height, int out_width, float *scratch, int level);

#ifdef __cplusplus
}
#endif

#endif
