// oneDNN's direct and Winograd convolutions on one thread, side by side: the measurement behind
// `winograd_pays` in Sources/CNormKitDNNL/Convolution.c (docs/PERFORMANCE.md, session 44).
//
//   g++ -O2 scripts/winograd_probe.cpp -o /tmp/winograd_probe -ldnnl
//   OMP_NUM_THREADS=1 /tmp/winograd_probe 16:16:28 32:32:14 64:64:7 --images 1,2,4,8,16
//
// Each shape is channels:filters:size (3 × 3, stride 1, padding 1). Per image count it prints the best of 30 runs
// of the forward, backward-data and backward-weights passes in µs: oneDNN's direct kernels on NHWC activations (what
// `onednn-direct` runs) and its Winograd F(4×4, 3×3) in the blocked layout it picks (activation reorders excluded),
// the ratio of the two sums, and the shape's output tiles × channels per thread, the measure `winograd_pays` uses.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

static double best_microseconds(primitive p, stream &s, const std::unordered_map<int, memory> &args) {
    for (int i = 0; i < 5; i++) p.execute(s, args);
    s.wait();
    double best = 1e30;
    for (int r = 0; r < 30; r++) {
        auto t0 = std::chrono::steady_clock::now();
        p.execute(s, args);
        s.wait();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best * 1e6;
}

static void fill(memory &m) {
    float *p = static_cast<float *>(m.get_data_handle());
    size_t n = m.get_desc().get_size() / sizeof(float);
    for (size_t i = 0; i < n; i++) p[i] = float(i % 17) * 0.01f - 0.08f;
}

// The three passes' times (µs) and oneDNN's implementation name for the forward.
static std::vector<double> passes(engine &eng, stream &s, algorithm alg, tag activations, memory::dims src,
                                  memory::dims wei, memory::dims dst, std::string &name) {
    memory::dims strides{1, 1}, pad{1, 1};
    auto smd = memory::desc(src, dt::f32, activations), dmd = memory::desc(dst, dt::f32, activations);
    auto wmd = memory::desc(wei, dt::f32, tag::any);
    auto fpd = convolution_forward::primitive_desc(
        convolution_forward::desc(prop_kind::forward_training, alg, smd, wmd, dmd, strides, pad, pad), eng);
    auto bdpd = convolution_backward_data::primitive_desc(
        convolution_backward_data::desc(alg, smd, wmd, dmd, strides, pad, pad), eng, fpd);
    auto bwpd = convolution_backward_weights::primitive_desc(
        convolution_backward_weights::desc(alg, smd, wmd, dmd, strides, pad, pad), eng, fpd);
    memory x(fpd.src_desc(), eng), w(fpd.weights_desc(), eng), y(fpd.dst_desc(), eng);
    memory dy(bdpd.diff_dst_desc(), eng), wb(bdpd.weights_desc(), eng), dx(bdpd.diff_src_desc(), eng);
    memory dw(bwpd.diff_weights_desc(), eng);
    for (memory *m : {&x, &w, &dy, &wb}) fill(*m);
    name = fpd.impl_info_str();
    return {best_microseconds(convolution_forward(fpd), s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, y}}),
            best_microseconds(convolution_backward_data(bdpd), s,
                              {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DIFF_SRC, dx}}),
            best_microseconds(convolution_backward_weights(bwpd), s,
                              {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}})};
}

int main(int argc, char **argv) {
    std::vector<std::string> shapes;
    std::vector<int> images{1, 2, 4, 8, 16};
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--images" && i + 1 < argc) {
            images.clear();
            std::stringstream list(argv[++i]);
            for (std::string item; std::getline(list, item, ',');) images.push_back(std::atoi(item.c_str()));
        } else {
            shapes.push_back(a);
        }
    }
    if (shapes.empty()) shapes = {"16:16:28", "32:32:14", "64:64:7"};
    engine eng(engine::kind::cpu, 0);
    stream s(eng);
    std::printf("| channels → filters | size | images | direct fwd / bwd-data / bwd-weights µs | Winograd µs | "
                "Winograd / direct | tiles × channels |\n|---|---:|---:|---|---|---:|---:|\n");
    for (const std::string &shape : shapes) {
        int c = 0, f = 0, size = 0;
        if (std::sscanf(shape.c_str(), "%d:%d:%d", &c, &f, &size) != 3 || c < 1 || f < 1 || size < 1) {
            std::fprintf(stderr, "bad shape %s (channels:filters:size)\n", shape.c_str());
            return 1;
        }
        for (int n : images) {
            memory::dims src{n, c, size, size}, wei{f, c, 3, 3}, dst{n, f, size, size};
            std::string direct_name, winograd_name;
            auto direct = passes(eng, s, algorithm::convolution_direct, tag::nhwc, src, wei, dst, direct_name);
            std::vector<double> winograd;
            try {
                winograd = passes(eng, s, algorithm::convolution_winograd, tag::any, src, wei, dst, winograd_name);
            } catch (const error &) {
                std::printf("| %d → %d | %d | %d | %.0f / %.0f / %.0f | (no Winograd here) | | |\n", c, f, size, n,
                            direct[0], direct[1], direct[2]);
                continue;
            }
            double d = direct[0] + direct[1] + direct[2], w = winograd[0] + winograd[1] + winograd[2];
            long tiles = long(n) * ((size + 3) / 4) * ((size + 3) / 4);
            std::printf("| %d → %d | %d | %d | %.0f / %.0f / %.0f | %.0f / %.0f / %.0f | %.2f | %ld |\n", c, f, size, n,
                        direct[0], direct[1], direct[2], winograd[0], winograd[1], winograd[2], w / d, tiles * c);
        }
    }
    return 0;
}
