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

// One primitive and its scratchpad (in the thread's arena, bound per call).
typedef struct {
    dnnl_primitive_desc_t descriptor;
    dnnl_primitive_t primitive;
    size_t scratchpad_bytes;
    dnnl_memory_t scratchpad_memory;
} step;

// The user's OIHW weights reordered into (or out of) a primitive's own layout.
typedef struct {
    dnnl_primitive_t reorder;   // NULL when the layouts are the same (a copy)
    void *buffer;               // in the primitive's layout
    size_t bytes;
    dnnl_memory_t user, own;
} weight_buffer;

// Activations in the primitives' own layout (in the thread's arena, bound per call), with the reorders from and to
// the caller's layout.
typedef struct {
    size_t bytes;  // 0 when the two layouts are one (no buffer, no reorders: `own` points at the caller's memory)
    dnnl_memory_t own;
    dnnl_primitive_t from_user, to_user;
} activation_buffer;

struct nk_dnnl_convolution {
    dnnl_stream_t stream;
    step forward, backward_data, backward_weights;
    weight_buffer forward_weights, backward_data_weights, weight_gradient;
    dnnl_memory_t x, y, bias, dx, dy, dbias;
    size_t weight_count;
    int has_bias;
    // Winograd: the primitives read and write activations in their own blocked layout, in these two buffers
    // (input side: x and dx; output side: y and dy), reordered from and to the caller's memory every call.
    int blocked;
    activation_buffer input_side, output_side;
    size_t arena_bytes;  // the largest scratchpad, then the two activation buffers
};

// Every convolution a thread runs shares that thread's working memory (scratchpads, Winograd's blocked activations):
// a call uses it only while it runs, and one buffer for all the layers of a network stays in cache where one per
// layer and pass (Winograd's are megabytes) would be read from memory every step. It grows to the largest call's
// need on the thread's first such call and is freed when the thread ends.
typedef struct {
    void *base;
    size_t bytes;
} arena;
static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;
static void free_arena(void *a) {
    free(((arena *)a)->base);
    free(a);
}
static void make_arena_key(void) { pthread_key_create(&arena_key, free_arena); }

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

static size_t whole_lines(size_t bytes) { return (bytes + 63) / 64 * 64; }

// The calling thread's arena, at least `bytes` long; NULL when out of memory.
static void *thread_arena(size_t bytes) {
    pthread_once(&arena_once, make_arena_key);
    arena *a = pthread_getspecific(arena_key);
    if (!a) {
        if (!(a = calloc(1, sizeof *a))) return NULL;
        if (pthread_setspecific(arena_key, a) != 0) { free(a); return NULL; }
    }
    if (a->bytes < bytes) {
        free(a->base);
        a->base = aligned(bytes);
        a->bytes = a->base ? bytes : 0;
    }
    return a->base;
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

// Whether oneDNN's Winograd F(4×4, 3×3) beats its direct kernels: it computes each 4 × 4 tile of the output from
// 36 products per channel pair where the direct sum takes 144, but its transforms cost per tile and per channel
// whatever the batch, so it needs enough tiles of enough channels. `scripts/winograd_probe.cpp` on the AMD Zen 4
// kind, one thread, the three passes' time against the direct kernels' on NHWC (PERFORMANCE.md, session 44):
// 16 channels on 28 × 28 (49 tiles an image) 0.92× at 1 image, 0.82× at 2; 32 on 14 × 14 (16 tiles) 1.38× at 1,
// 1.14× at 2, 0.93× at 4; 64 on 7 × 7 (4 tiles) 2.79× at 1, 1.75× at 2, 1.24× at 4, 0.87× at 8. Every shape from
// 1,536 tile-channels was faster, every one below within 0.92× or slower.
static int winograd_pays(int images, int channels, int out_height, int out_width) {
    const long tiles = (long)images * ((out_height + 3) / 4) * ((out_width + 3) / 4);
    return tiles * channels >= 1536;
}

static dnnl_status_t finish_step(step *s, const_dnnl_primitive_attr_t attr, const void *operation,
                                 const_dnnl_primitive_desc_t hint, int prefer_direct) {
    CHECK(choose_implementation(&s->descriptor, operation, attr, hint, prefer_direct));
    CHECK(dnnl_primitive_create(&s->primitive, s->descriptor));
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(s->descriptor, dnnl_query_scratchpad_md, 0);
    s->scratchpad_bytes = dnnl_memory_desc_get_size(md);
    if (s->scratchpad_bytes > 0) CHECK(dnnl_memory_create(&s->scratchpad_memory, md, engine, DNNL_MEMORY_NONE));
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

// Points the scratchpads and the blocked activations into the calling thread's arena.
static dnnl_status_t bind_arena(nk_dnnl_convolution *c) {
    if (c->arena_bytes == 0) return dnnl_success;
    char *base = thread_arena(c->arena_bytes);
    if (!base) {
        set_error("out of memory for %zu bytes of oneDNN working memory", c->arena_bytes);
        return dnnl_out_of_memory;
    }
    step *steps[] = {&c->forward, &c->backward_data, &c->backward_weights};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++)
        if (steps[i]->scratchpad_memory) CHECK(dnnl_memory_set_data_handle(steps[i]->scratchpad_memory, base));
    char *input = base + c->arena_bytes - whole_lines(c->output_side.bytes) - whole_lines(c->input_side.bytes);
    if (c->input_side.bytes) CHECK(dnnl_memory_set_data_handle(c->input_side.own, input));
    if (c->output_side.bytes)
        CHECK(dnnl_memory_set_data_handle(c->output_side.own, input + whole_lines(c->input_side.bytes)));
    return dnnl_success;
}

// One activation reorder: the caller's `user` into `b`'s own layout, or back; where the layouts are one, `b` is
// pointed at the caller's memory instead.
static dnnl_status_t move_activations(nk_dnnl_convolution *c, activation_buffer *b, dnnl_memory_t user, int to_user) {
    if (!b->from_user) {  // the same layout: the primitive reads or writes the caller's memory
        void *p = NULL;
        CHECK(dnnl_memory_get_data_handle(user, &p));
        CHECK(dnnl_memory_set_data_handle(b->own, p));
        return dnnl_success;
    }
    dnnl_exec_arg_t arguments[2] = {{DNNL_ARG_FROM, to_user ? b->own : user}, {DNNL_ARG_TO, to_user ? user : b->own}};
    CHECK(dnnl_primitive_execute(to_user ? b->to_user : b->from_user, c->stream, 2, arguments));
    CHECK(dnnl_stream_wait(c->stream));
    return dnnl_success;
}

// Before a Winograd pass that reads the caller's `source` and writes its `target`: `source` in `read`'s own layout,
// `written` ready to receive the output (its own buffer, or the caller's memory where the layouts are one).
static dnnl_status_t enter_pass(nk_dnnl_convolution *c, activation_buffer *read, dnnl_memory_t source,
                                activation_buffer *written, dnnl_memory_t target) {
    CHECK(move_activations(c, read, source, 0));
    return written->from_user ? dnnl_success : move_activations(c, written, target, 1);
}

// What a pass reads or writes for the caller's `user`: `user` itself, or `b`'s own layout under Winograd.
static dnnl_memory_t operand(const nk_dnnl_convolution *c, const activation_buffer *b, dnnl_memory_t user) {
    return c->blocked ? b->own : user;
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

// The three passes' primitives for `algorithm` over activations described by `src` and `dst`.
static dnnl_status_t create_steps(nk_dnnl_convolution *c, dnnl_alg_kind_t algorithm, const dnnl_memory_desc_t *src,
                                  const dnnl_memory_desc_t *weights, const dnnl_memory_desc_t *bias,
                                  const dnnl_memory_desc_t *dst, const dnnl_dims_t strides, const dnnl_dims_t pad,
                                  int prefer_direct) {
    dnnl_primitive_attr_t attr;
    CHECK(dnnl_primitive_attr_create(&attr));
    dnnl_status_t status = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (status != dnnl_success) { dnnl_primitive_attr_destroy(attr); CHECK(status); }
    dnnl_convolution_desc_t forward, backward_data, backward_weights;
    status = dnnl_convolution_forward_desc_init(&forward, dnnl_forward_training, algorithm, src, weights, bias, dst,
                                                strides, pad, pad);
    if (status == dnnl_success) status = finish_step(&c->forward, attr, &forward, NULL, prefer_direct);
    if (status == dnnl_success)
        status = dnnl_convolution_backward_data_desc_init(&backward_data, algorithm, src, weights, dst, strides, pad,
                                                          pad);
    if (status == dnnl_success)
        status = finish_step(&c->backward_data, attr, &backward_data, c->forward.descriptor, 0);
    if (status == dnnl_success)
        status = dnnl_convolution_backward_weights_desc_init(&backward_weights, algorithm, src, weights, bias, dst,
                                                             strides, pad, pad);
    if (status == dnnl_success)
        status = finish_step(&c->backward_weights, attr, &backward_weights, c->forward.descriptor, 0);
    dnnl_primitive_attr_destroy(attr);
    return status;
}

static void destroy_step(step *s);

// Whether `md`'s memory is NHWC's: a blocked layout of one block of all C channels (nChw16c with C = 16) whose
// other strides are NHWC's puts (n, c, h, w) at n·CHW + (c / C)·stride + h·WC + w·C + c % C, NHWC's offset.
static int is_channels_last(const dnnl_memory_desc_t *md) {
    if (md->ndims != 4 || md->format_kind != dnnl_blocked || md->offset0 != 0) return 0;
    for (int d = 0; d < 4; d++)
        if (md->padded_dims[d] != md->dims[d] || md->padded_offsets[d] != 0) return 0;
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    const dnnl_dim_t c = md->dims[1], h = md->dims[2], w = md->dims[3];
    const int one_block = b->inner_nblks == 1 && b->inner_idxs[0] == 1 && b->inner_blks[0] == c;
    const int unblocked = b->inner_nblks == 0 && b->strides[1] == 1;
    return (one_block || unblocked) && b->strides[0] == c * h * w && b->strides[2] == w * c && b->strides[3] == c;
}

// `own_md` (the primitives' layout, without padding: the arena's bytes are whatever the last call left) with
// reorders from and to `user_md`.
static dnnl_status_t make_activation_buffer(activation_buffer *b, const dnnl_memory_desc_t *user_md,
                                            const dnnl_memory_desc_t *own_md) {
    if (dnnl_memory_desc_get_size(own_md) != dnnl_memory_desc_get_size(user_md)) return dnnl_unimplemented;  // padded
    CHECK(dnnl_memory_create(&b->own, own_md, engine, DNNL_MEMORY_NONE));
    if (is_channels_last(user_md) && is_channels_last(own_md)) return dnnl_success;
    b->bytes = dnnl_memory_desc_get_size(own_md);
    dnnl_primitive_desc_t rpd;
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, user_md, engine, own_md, engine, NULL));
    dnnl_status_t status = dnnl_primitive_create(&b->from_user, rpd);
    dnnl_primitive_desc_destroy(rpd);
    CHECK(status);
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, own_md, engine, user_md, engine, NULL));
    status = dnnl_primitive_create(&b->to_user, rpd);
    dnnl_primitive_desc_destroy(rpd);
    CHECK(status);
    return dnnl_success;
}

static void destroy_activations(activation_buffer *b);

// The Winograd passes with their blocked activation buffers; on failure nothing of them is left in `c`.
static dnnl_status_t create_winograd(nk_dnnl_convolution *c, const dnnl_memory_desc_t *src,
                                     const dnnl_memory_desc_t *src_any, const dnnl_memory_desc_t *weights,
                                     const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst,
                                     const dnnl_memory_desc_t *dst_any, const dnnl_dims_t strides,
                                     const dnnl_dims_t pad) {
    dnnl_status_t status =
        create_steps(c, dnnl_convolution_winograd, src_any, weights, bias, dst_any, strides, pad, 0);
    if (status == dnnl_success) {
        const dnnl_memory_desc_t *own_src = dnnl_primitive_desc_query_md(c->forward.descriptor, dnnl_query_src_md, 0),
                                 *own_dst = dnnl_primitive_desc_query_md(c->forward.descriptor, dnnl_query_dst_md, 0);
        const_dnnl_primitive_desc_t bd = c->backward_data.descriptor, bw = c->backward_weights.descriptor;
        if (!dnnl_memory_desc_equal(own_src, dnnl_primitive_desc_query_md(bd, dnnl_query_diff_src_md, 0)) ||
            !dnnl_memory_desc_equal(own_src, dnnl_primitive_desc_query_md(bw, dnnl_query_src_md, 0)) ||
            !dnnl_memory_desc_equal(own_dst, dnnl_primitive_desc_query_md(bd, dnnl_query_diff_dst_md, 0)) ||
            !dnnl_memory_desc_equal(own_dst, dnnl_primitive_desc_query_md(bw, dnnl_query_diff_dst_md, 0)))
            status = dnnl_unimplemented;  // the passes picked different activation layouts
        if (status == dnnl_success) status = make_activation_buffer(&c->input_side, src, own_src);
        if (status == dnnl_success) status = make_activation_buffer(&c->output_side, dst, own_dst);
    }
    if (status != dnnl_success) {
        step *steps[] = {&c->forward, &c->backward_data, &c->backward_weights};
        for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
            destroy_step(steps[i]);
            memset(steps[i], 0, sizeof *steps[i]);
        }
        destroy_activations(&c->input_side);
        destroy_activations(&c->output_side);
        memset(&c->input_side, 0, sizeof c->input_side);
        memset(&c->output_side, 0, sizeof c->output_side);
    }
    return status;
}

static dnnl_status_t create(nk_dnnl_convolution *c, int n, int ci, int h, int w, int co, int k, int stride,
                            int padding, int has_bias, int channels_last, int winograd) {
    CHECK(engine_status);
    CHECK(dnnl_stream_create(&c->stream, engine, dnnl_stream_default_flags));
    const int oh = (h + 2 * padding - k) / stride + 1, ow = (w + 2 * padding - k) / stride + 1;
    const dnnl_format_tag_t activations = channels_last ? dnnl_nhwc : dnnl_nchw;
    dnnl_dims_t src_dims = {n, ci, h, w}, dst_dims = {n, co, oh, ow}, weight_dims = {co, ci, k, k}, bias_dims = {co};
    dnnl_dims_t strides = {stride, stride}, pad = {padding, padding};
    dnnl_memory_desc_t src, dst, src_any, dst_any, weights_any, weights_user, bias;
    CHECK(dnnl_memory_desc_init_by_tag(&src, 4, src_dims, dnnl_f32, activations));
    CHECK(dnnl_memory_desc_init_by_tag(&dst, 4, dst_dims, dnnl_f32, activations));
    CHECK(dnnl_memory_desc_init_by_tag(&src_any, 4, src_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&dst_any, 4, dst_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&weights_any, 4, weight_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&weights_user, 4, weight_dims, dnnl_f32, dnnl_oihw));
    CHECK(dnnl_memory_desc_init_by_tag(&bias, 1, bias_dims, dnnl_f32, dnnl_x));
    c->weight_count = (size_t)co * ci * k * k;
    c->has_bias = has_bias;

    // Winograd where oneDNN has it (3 × 3, stride 1, channels in whole blocks of 16 on AVX-512) and it pays, in its
    // blocked layout; the direct algorithm in the caller's layout everywhere else.
    if (winograd && k == 3 && stride == 1 && ci % 16 == 0 && co % 16 == 0 && winograd_pays(n, ci, oh, ow)) {
        dnnl_status_t status = create_winograd(c, &src, &src_any, &weights_any, has_bias ? &bias : NULL, &dst,
                                               &dst_any, strides, pad);
        if (status != dnnl_success && status != dnnl_unimplemented) return status;
        c->blocked = status == dnnl_success;
    }
    if (!c->blocked)
        CHECK(create_steps(c, dnnl_convolution_direct, &src, &weights_any, has_bias ? &bias : NULL, &dst, strides,
                           pad, prefers_direct_forward(ci)));
    size_t scratchpad = c->forward.scratchpad_bytes;
    if (c->backward_data.scratchpad_bytes > scratchpad) scratchpad = c->backward_data.scratchpad_bytes;
    if (c->backward_weights.scratchpad_bytes > scratchpad) scratchpad = c->backward_weights.scratchpad_bytes;
    c->arena_bytes = whole_lines(scratchpad) + whole_lines(c->input_side.bytes) + whole_lines(c->output_side.bytes);

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
                                                int channels_last, int winograd) {
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
    if (create(c, batch, channels, height, width, filters, kernel, stride, padding, has_bias, channels_last, winograd)
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
}

static void destroy_activations(activation_buffer *b) {
    if (b->from_user) dnnl_primitive_destroy(b->from_user);
    if (b->to_user) dnnl_primitive_destroy(b->to_user);
    if (b->own) dnnl_memory_destroy(b->own);
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
    destroy_activations(&c->input_side);
    destroy_activations(&c->output_side);
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
    CHECK(bind_arena(c));
    CHECK(dnnl_memory_set_data_handle(c->x, (void *)x));
    CHECK(dnnl_memory_set_data_handle(c->y, y));
    if (c->blocked) CHECK(enter_pass(c, &c->input_side, c->x, &c->output_side, c->y));
    dnnl_exec_arg_t arguments[5] = {{DNNL_ARG_SRC, operand(c, &c->input_side, c->x)},
                                    {DNNL_ARG_WEIGHTS, c->forward_weights.own},
                                    {DNNL_ARG_DST, operand(c, &c->output_side, c->y)}};
    int count = 3;
    if (c->has_bias) {
        if (!bias) { set_error("the convolution has a bias but none was given"); return dnnl_invalid_arguments; }
        CHECK(dnnl_memory_set_data_handle(c->bias, (void *)bias));
        arguments[count++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, c->bias};
    }
    CHECK(run(c, &c->forward, count, arguments));
    if (c->blocked) CHECK(move_activations(c, &c->output_side, c->y, 1));
    return dnnl_success;
}

int nk_dnnl_convolution_backward_data(nk_dnnl_convolution *c, const float *dy, float *dx) {
    use_one_thread();
    CHECK(bind_arena(c));
    CHECK(dnnl_memory_set_data_handle(c->dy, (void *)dy));
    CHECK(dnnl_memory_set_data_handle(c->dx, dx));
    if (c->blocked) CHECK(enter_pass(c, &c->output_side, c->dy, &c->input_side, c->dx));
    dnnl_exec_arg_t arguments[4] = {{DNNL_ARG_DIFF_DST, operand(c, &c->output_side, c->dy)},
                                    {DNNL_ARG_WEIGHTS, c->backward_data_weights.own},
                                    {DNNL_ARG_DIFF_SRC, operand(c, &c->input_side, c->dx)}};
    CHECK(run(c, &c->backward_data, 3, arguments));
    if (c->blocked) CHECK(move_activations(c, &c->input_side, c->dx, 1));
    return dnnl_success;
}

int nk_dnnl_convolution_backward_weights(nk_dnnl_convolution *c, const float *x, const float *dy, float *dweights,
                                         float *dbias) {
    use_one_thread();
    CHECK(bind_arena(c));
    CHECK(dnnl_memory_set_data_handle(c->x, (void *)x));
    CHECK(dnnl_memory_set_data_handle(c->dy, (void *)dy));
    if (c->blocked) {
        CHECK(move_activations(c, &c->input_side, c->x, 0));
        CHECK(move_activations(c, &c->output_side, c->dy, 0));
    }
    dnnl_exec_arg_t arguments[5] = {{DNNL_ARG_SRC, operand(c, &c->input_side, c->x)},
                                    {DNNL_ARG_DIFF_DST, operand(c, &c->output_side, c->dy)},
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
                                                int channels_last, int winograd) {
    (void)winograd;
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
