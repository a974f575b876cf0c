// See include/NormKitDNNL.h.
#define _GNU_SOURCE
#include "NormKitDNNL.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[512];

static void set_error(const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(last_error, sizeof last_error, format, arguments);
    va_end(arguments);
}

const char *nk_dnnl_last_error(void) { return last_error; }

#if __has_include(<oneapi/dnnl/dnnl.h>) && !defined(NORMKIT_WITHOUT_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>

// oneDNN runs on the caller's thread only: NormKit's pool owns the cores (see the header).
extern void omp_set_num_threads(int);

int nk_dnnl_is_available(void) { return 1; }

const char *nk_dnnl_version(void) {
    static char text[32];
    const dnnl_version_t *v = dnnl_version();
    snprintf(text, sizeof text, "%d.%d.%d", v->major, v->minor, v->patch);
    return text;
}

// Every oneDNN call of a thread (creation included) runs on that thread alone: OpenMP never starts a team.
static _Thread_local int single_threaded = 0;
static void use_one_thread(void) {
    if (!single_threaded) { omp_set_num_threads(1); single_threaded = 1; }
}

static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_success;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static void create_engine(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

// One primitive with its memory objects (data handles set per call) and its own scratchpad.
typedef struct {
    dnnl_primitive_desc_t descriptor;
    dnnl_primitive_t primitive;
    void *scratchpad;
    dnnl_memory_t scratchpad_memory;
} step;

// The user's OIHW weights reordered into (or out of) a primitive's own layout.
typedef struct {
    dnnl_primitive_t reorder;   // NULL when the layouts are the same (a copy)
    void *buffer;               // in the primitive's layout
    size_t bytes;
    dnnl_memory_t user, own;
} weight_buffer;

struct nk_dnnl_convolution {
    dnnl_stream_t stream;
    step forward, backward_data, backward_weights;
    weight_buffer forward_weights, backward_data_weights, weight_gradient;
    dnnl_memory_t x, y, bias, dx, dy, dbias;
    size_t weight_count;
    int has_bias;
};

#define CHECK(call)                                                                                      \
    do {                                                                                                 \
        dnnl_status_t status_ = (call);                                                                  \
        if (status_ != dnnl_success) {                                                                   \
            set_error("oneDNN: %s failed with status %d (line %d)", #call, (int)status_, __LINE__);      \
            return status_;                                                                              \
        }                                                                                                \
    } while (0)

static dnnl_status_t memory(dnnl_memory_t *out, const dnnl_memory_desc_t *md) {
    return dnnl_memory_create(out, md, engine, DNNL_MEMORY_NONE);
}

static void *aligned(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes < 64 ? 64 : bytes) != 0) return NULL;
    return p;
}

// oneDNN's first implementation for `operation`, except that a `brgconv` first choice gives way to the direct
// `jit` kernel of the same instruction set when `prefer_direct` (see `prefers_direct_forward`). Same descriptor
// otherwise: the caller owns it.
static dnnl_status_t choose_implementation(dnnl_primitive_desc_t *out, const void *operation,
                                           const_dnnl_primitive_attr_t attr, const_dnnl_primitive_desc_t hint,
                                           int prefer_direct) {
    if (!prefer_direct) return dnnl_primitive_desc_create(out, operation, attr, engine, hint);
    dnnl_primitive_desc_iterator_t candidates;
    CHECK(dnnl_primitive_desc_iterator_create(&candidates, operation, attr, engine, hint));
    dnnl_primitive_desc_t first = dnnl_primitive_desc_iterator_fetch(candidates), direct = NULL;
    const char *name = NULL;
    if (first && dnnl_primitive_desc_query(first, dnnl_query_impl_info_str, 0, &name) == dnnl_success && name &&
        strncmp(name, "brgconv:", 8) == 0) {
        char wanted[64];  // "brgconv:avx512_core" → "jit:avx512_core"
        snprintf(wanted, sizeof wanted, "jit:%s", name + 8);
        while (!direct && dnnl_primitive_desc_iterator_next(candidates) == dnnl_success) {
            dnnl_primitive_desc_t candidate = dnnl_primitive_desc_iterator_fetch(candidates);
            const char *candidate_name = NULL;
            if (candidate && dnnl_primitive_desc_query(candidate, dnnl_query_impl_info_str, 0, &candidate_name) ==
                                 dnnl_success && candidate_name && strcmp(candidate_name, wanted) == 0)
                direct = candidate;
            else if (candidate)
                dnnl_primitive_desc_destroy(candidate);
        }
    }
    dnnl_primitive_desc_iterator_destroy(candidates);
    if (direct) {
        dnnl_primitive_desc_destroy(first);
        *out = direct;
        return dnnl_success;
    }
    if (!first) return dnnl_unimplemented;
    *out = first;
    return dnnl_success;
}

// The forward of a convolution with at most 16 input channels (ResNet's 1-channel stem and its first stage) runs
// oneDNN 2.6's direct `jit` kernel instead of its first choice, `brgconv`: in ResNet-20 training on this machine
// kind (AMD EPYC, AVX-512) 299 vs 423 µs per 16 images at 16 → 16 channels, 55 vs 142 µs for the stem, and the
// same output bits in every model tried (`normkit train` models byte-identical for ResNet-8 and ResNet-20 with BN,
// GN and MABN, batch 32 and 2, 1 and 2 threads). With 32 or more input channels the two are within noise of each
// other (and round differently), so oneDNN's choice stays.
static int prefers_direct_forward(int channels) { return channels <= 16; }

static dnnl_status_t finish_step(step *s, const_dnnl_primitive_attr_t attr, const void *operation,
                                 const_dnnl_primitive_desc_t hint, int prefer_direct) {
    CHECK(choose_implementation(&s->descriptor, operation, attr, hint, prefer_direct));
    CHECK(dnnl_primitive_create(&s->primitive, s->descriptor));
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(s->descriptor, dnnl_query_scratchpad_md, 0);
    size_t bytes = dnnl_memory_desc_get_size(md);
    if (bytes > 0) {
        s->scratchpad = aligned(bytes);
        if (!s->scratchpad) { set_error("out of memory for a %zu-byte oneDNN scratchpad", bytes); return dnnl_out_of_memory; }
        CHECK(dnnl_memory_create(&s->scratchpad_memory, md, engine, s->scratchpad));
    }
    return dnnl_success;
}

// `user_md` (OIHW) to or from the layout `own_md` the primitive picked.
static dnnl_status_t make_weight_buffer(weight_buffer *b, const dnnl_memory_desc_t *user_md,
                                        const dnnl_memory_desc_t *own_md, int to_user) {
    b->bytes = dnnl_memory_desc_get_size(own_md);
    b->buffer = aligned(b->bytes);
    if (!b->buffer) { set_error("out of memory for %zu bytes of oneDNN weights", b->bytes); return dnnl_out_of_memory; }
    memset(b->buffer, 0, b->bytes);  // blocked layouts may pad; the padding must be zero
    CHECK(memory(&b->user, user_md));
    CHECK(dnnl_memory_create(&b->own, own_md, engine, b->buffer));
    if (dnnl_memory_desc_equal(user_md, own_md)) return dnnl_success;
    dnnl_primitive_desc_t rpd;
    const dnnl_memory_desc_t *from = to_user ? own_md : user_md, *to = to_user ? user_md : own_md;
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, from, engine, to, engine, NULL));
    dnnl_status_t status = dnnl_primitive_create(&b->reorder, rpd);
    dnnl_primitive_desc_destroy(rpd);
    CHECK(status);
    return dnnl_success;
}

static dnnl_status_t run(nk_dnnl_convolution *c, step *s, int count, dnnl_exec_arg_t *arguments) {
    if (s->scratchpad_memory) arguments[count++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, s->scratchpad_memory};
    CHECK(dnnl_primitive_execute(s->primitive, c->stream, count, arguments));
    CHECK(dnnl_stream_wait(c->stream));
    return dnnl_success;
}

static dnnl_status_t move_weights(nk_dnnl_convolution *c, weight_buffer *b, const float *user, int to_user) {
    CHECK(dnnl_memory_set_data_handle(b->user, (void *)user));
    if (!b->reorder) {
        if (to_user) memcpy((void *)user, b->buffer, c->weight_count * sizeof(float));
        else memcpy(b->buffer, user, c->weight_count * sizeof(float));
        return dnnl_success;
    }
    dnnl_exec_arg_t arguments[2] = {{DNNL_ARG_FROM, to_user ? b->own : b->user},
                                    {DNNL_ARG_TO, to_user ? b->user : b->own}};
    CHECK(dnnl_primitive_execute(b->reorder, c->stream, 2, arguments));
    CHECK(dnnl_stream_wait(c->stream));
    return dnnl_success;
}

static dnnl_status_t create(nk_dnnl_convolution *c, int n, int ci, int h, int w, int co, int k, int stride,
                            int padding, int has_bias, int channels_last) {
    CHECK(engine_status);
    CHECK(dnnl_stream_create(&c->stream, engine, dnnl_stream_default_flags));
    const int oh = (h + 2 * padding - k) / stride + 1, ow = (w + 2 * padding - k) / stride + 1;
    const dnnl_format_tag_t activations = channels_last ? dnnl_nhwc : dnnl_nchw;
    dnnl_dims_t src_dims = {n, ci, h, w}, dst_dims = {n, co, oh, ow}, weight_dims = {co, ci, k, k}, bias_dims = {co};
    dnnl_dims_t strides = {stride, stride}, pad = {padding, padding};
    dnnl_memory_desc_t src, dst, weights_any, weights_user, bias;
    CHECK(dnnl_memory_desc_init_by_tag(&src, 4, src_dims, dnnl_f32, activations));
    CHECK(dnnl_memory_desc_init_by_tag(&dst, 4, dst_dims, dnnl_f32, activations));
    CHECK(dnnl_memory_desc_init_by_tag(&weights_any, 4, weight_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&weights_user, 4, weight_dims, dnnl_f32, dnnl_oihw));
    CHECK(dnnl_memory_desc_init_by_tag(&bias, 1, bias_dims, dnnl_f32, dnnl_x));
    c->weight_count = (size_t)co * ci * k * k;
    c->has_bias = has_bias;

    dnnl_primitive_attr_t attr;
    CHECK(dnnl_primitive_attr_create(&attr));
    dnnl_status_t status = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (status != dnnl_success) { dnnl_primitive_attr_destroy(attr); CHECK(status); }

    dnnl_convolution_desc_t forward, backward_data, backward_weights;
    status = dnnl_convolution_forward_desc_init(&forward, dnnl_forward_training, dnnl_convolution_direct, &src,
                                                &weights_any, has_bias ? &bias : NULL, &dst, strides, pad, pad);
    if (status == dnnl_success) status = finish_step(&c->forward, attr, &forward, NULL, prefers_direct_forward(ci));
    if (status == dnnl_success)
        status = dnnl_convolution_backward_data_desc_init(&backward_data, dnnl_convolution_direct, &src,
                                                          &weights_any, &dst, strides, pad, pad);
    if (status == dnnl_success)
        status = finish_step(&c->backward_data, attr, &backward_data, c->forward.descriptor, 0);
    if (status == dnnl_success)
        status = dnnl_convolution_backward_weights_desc_init(&backward_weights, dnnl_convolution_direct, &src,
                                                             &weights_any, has_bias ? &bias : NULL, &dst, strides,
                                                             pad, pad);
    if (status == dnnl_success)
        status = finish_step(&c->backward_weights, attr, &backward_weights, c->forward.descriptor, 0);
    dnnl_primitive_attr_destroy(attr);
    if (status != dnnl_success) return status;

    CHECK(make_weight_buffer(&c->forward_weights, &weights_user,
                             dnnl_primitive_desc_query_md(c->forward.descriptor, dnnl_query_weights_md, 0), 0));
    CHECK(make_weight_buffer(&c->backward_data_weights, &weights_user,
                             dnnl_primitive_desc_query_md(c->backward_data.descriptor, dnnl_query_weights_md, 0), 0));
    CHECK(make_weight_buffer(&c->weight_gradient, &weights_user,
                             dnnl_primitive_desc_query_md(c->backward_weights.descriptor,
                                                          dnnl_query_diff_weights_md, 0), 1));
    CHECK(memory(&c->x, &src));
    CHECK(memory(&c->y, &dst));
    CHECK(memory(&c->dx, &src));
    CHECK(memory(&c->dy, &dst));
    if (has_bias) {
        CHECK(memory(&c->bias, &bias));
        CHECK(memory(&c->dbias, &bias));
    }
    return dnnl_success;
}

nk_dnnl_convolution *nk_dnnl_convolution_create(int batch, int channels, int height, int width, int filters,
                                                int kernel, int stride, int padding, int has_bias,
                                                int channels_last) {
    if (batch < 1 || channels < 1 || filters < 1 || kernel < 1 || stride < 1 || padding < 0 ||
        height + 2 * padding < kernel || width + 2 * padding < kernel) {
        set_error("invalid convolution: batch %d, %d→%d channels, %dx%d input, kernel %d, stride %d, padding %d",
                  batch, channels, filters, height, width, kernel, stride, padding);
        return NULL;
    }
    use_one_thread();
    pthread_once(&engine_once, create_engine);
    nk_dnnl_convolution *c = calloc(1, sizeof *c);
    if (!c) { set_error("out of memory"); return NULL; }
    if (create(c, batch, channels, height, width, filters, kernel, stride, padding, has_bias, channels_last)
        != dnnl_success) {
        nk_dnnl_convolution_destroy(c);
        return NULL;
    }
    return c;
}

static void destroy_step(step *s) {
    if (s->primitive) dnnl_primitive_destroy(s->primitive);
    if (s->descriptor) dnnl_primitive_desc_destroy(s->descriptor);
    if (s->scratchpad_memory) dnnl_memory_destroy(s->scratchpad_memory);
    free(s->scratchpad);
}

static void destroy_weights(weight_buffer *b) {
    if (b->reorder) dnnl_primitive_destroy(b->reorder);
    if (b->user) dnnl_memory_destroy(b->user);
    if (b->own) dnnl_memory_destroy(b->own);
    free(b->buffer);
}

void nk_dnnl_convolution_destroy(nk_dnnl_convolution *c) {
    if (!c) return;
    destroy_step(&c->forward);
    destroy_step(&c->backward_data);
    destroy_step(&c->backward_weights);
    destroy_weights(&c->forward_weights);
    destroy_weights(&c->backward_data_weights);
    destroy_weights(&c->weight_gradient);
    dnnl_memory_t memories[] = {c->x, c->y, c->bias, c->dx, c->dy, c->dbias};
    for (size_t i = 0; i < sizeof memories / sizeof *memories; i++)
        if (memories[i]) dnnl_memory_destroy(memories[i]);
    if (c->stream) dnnl_stream_destroy(c->stream);
    free(c);
}

const char *nk_dnnl_convolution_implementation(const nk_dnnl_convolution *c, int pass) {
    if (!c) return "";
    const step *s = pass == 0 ? &c->forward : pass == 1 ? &c->backward_data : pass == 2 ? &c->backward_weights : NULL;
    const char *name = NULL;
    if (!s || !s->descriptor ||
        dnnl_primitive_desc_query(s->descriptor, dnnl_query_impl_info_str, 0, &name) != dnnl_success || !name)
        return "";
    return name;
}

int nk_dnnl_convolution_set_weights(nk_dnnl_convolution *c, const float *weights) {
    use_one_thread();
    CHECK(move_weights(c, &c->forward_weights, weights, 0));
    return 0;
}

int nk_dnnl_convolution_set_backward_weights(nk_dnnl_convolution *c, const float *weights) {
    use_one_thread();
    CHECK(move_weights(c, &c->backward_data_weights, weights, 0));
    return 0;
}

int nk_dnnl_convolution_forward(nk_dnnl_convolution *c, const float *x, const float *bias, float *y) {
    use_one_thread();
    CHECK(dnnl_memory_set_data_handle(c->x, (void *)x));
    CHECK(dnnl_memory_set_data_handle(c->y, y));
    dnnl_exec_arg_t arguments[5] = {{DNNL_ARG_SRC, c->x}, {DNNL_ARG_WEIGHTS, c->forward_weights.own},
                                    {DNNL_ARG_DST, c->y}};
    int count = 3;
    if (c->has_bias) {
        if (!bias) { set_error("the convolution has a bias but none was given"); return dnnl_invalid_arguments; }
        CHECK(dnnl_memory_set_data_handle(c->bias, (void *)bias));
        arguments[count++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, c->bias};
    }
    return run(c, &c->forward, count, arguments);
}

int nk_dnnl_convolution_backward_data(nk_dnnl_convolution *c, const float *dy, float *dx) {
    use_one_thread();
    CHECK(dnnl_memory_set_data_handle(c->dy, (void *)dy));
    CHECK(dnnl_memory_set_data_handle(c->dx, dx));
    dnnl_exec_arg_t arguments[4] = {{DNNL_ARG_DIFF_DST, c->dy}, {DNNL_ARG_WEIGHTS, c->backward_data_weights.own},
                                    {DNNL_ARG_DIFF_SRC, c->dx}};
    return run(c, &c->backward_data, 3, arguments);
}

int nk_dnnl_convolution_backward_weights(nk_dnnl_convolution *c, const float *x, const float *dy, float *dweights,
                                         float *dbias) {
    use_one_thread();
    CHECK(dnnl_memory_set_data_handle(c->x, (void *)x));
    CHECK(dnnl_memory_set_data_handle(c->dy, (void *)dy));
    dnnl_exec_arg_t arguments[5] = {{DNNL_ARG_SRC, c->x}, {DNNL_ARG_DIFF_DST, c->dy},
                                    {DNNL_ARG_DIFF_WEIGHTS, c->weight_gradient.own}};
    int count = 3;
    if (c->has_bias) {
        if (!dbias) { set_error("the convolution has a bias but no bias gradient was given"); return dnnl_invalid_arguments; }
        CHECK(dnnl_memory_set_data_handle(c->dbias, dbias));
        arguments[count++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_BIAS, c->dbias};
    }
    dnnl_status_t status = run(c, &c->backward_weights, count, arguments);
    if (status != dnnl_success) return status;
    return move_weights(c, &c->weight_gradient, dweights, 1);
}

#else  // built without oneDNN's headers: the engine is unavailable and says why

int nk_dnnl_is_available(void) { return 0; }
const char *nk_dnnl_version(void) { return ""; }

static int unavailable(void) {
    set_error("NormKit was built without oneDNN (install libdnnl-dev and rebuild)");
    return 1;
}

nk_dnnl_convolution *nk_dnnl_convolution_create(int batch, int channels, int height, int width, int filters,
                                                int kernel, int stride, int padding, int has_bias,
                                                int channels_last) {
    (void)batch; (void)channels; (void)height; (void)width; (void)filters; (void)kernel; (void)stride;
    (void)padding; (void)has_bias; (void)channels_last;
    unavailable();
    return NULL;
}
void nk_dnnl_convolution_destroy(nk_dnnl_convolution *c) { (void)c; }
const char *nk_dnnl_convolution_implementation(const nk_dnnl_convolution *c, int pass) {
    (void)c;
    (void)pass;
    return "";
}
int nk_dnnl_convolution_set_weights(nk_dnnl_convolution *c, const float *w) { (void)c; (void)w; return unavailable(); }
int nk_dnnl_convolution_set_backward_weights(nk_dnnl_convolution *c, const float *w) {
    (void)c; (void)w; return unavailable();
}
int nk_dnnl_convolution_forward(nk_dnnl_convolution *c, const float *x, const float *b, float *y) {
    (void)c; (void)x; (void)b; (void)y; return unavailable();
}
int nk_dnnl_convolution_backward_data(nk_dnnl_convolution *c, const float *dy, float *dx) {
    (void)c; (void)dy; (void)dx; return unavailable();
}
int nk_dnnl_convolution_backward_weights(nk_dnnl_convolution *c, const float *x, const float *dy, float *dw,
                                         float *db) {
    (void)c; (void)x; (void)dy; (void)dw; (void)db; return unavailable();
}

#endif
