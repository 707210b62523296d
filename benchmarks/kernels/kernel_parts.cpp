// The native kernels' parts alone, on one row of 256 pixels that stays in cache (L2 at least), for
// benchmarks/kernel_roofline.py: each 1x1 conv's product of LKDN-S (42 channels), each depthwise conv, and GELU.
// The kernel source is included whole, so the parts are the ones the network runs, built with the same settings
// (-D flags).

#include "lkdn_cpu.cpp"

#include <chrono>

namespace {

constexpr int kPixels = 256;
#ifndef PARTS_RING_OFFSET
#define PARTS_RING_OFFSET 0  // floats between a cache line's start and the depthwise convs' ring (the kernels: 0)
#endif
using S = Widths<42>;
constexpr int NC = S::cp / kLanes, NG = S::gp / kLanes, ND = S::dp / kLanes;

// float storage on a cache line, as the kernels' rings are
struct Buffer {
    std::vector<float> memory;
    float* data;
    explicit Buffer(size_t n, float value) : memory(n + kLineFloats, value), data(on_line(memory.data())) {}
};

template <class Fn>
double seconds_per_call(Fn fn, long reps) {
    double best = 1e30;
    for (int t = 0; t < 3; ++t) {
        const auto start = std::chrono::steady_clock::now();
        for (long r = 0; r < reps; ++r) {
            fn();
            asm volatile("" ::: "memory");
        }
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return best / reps;
}

template <int NV, int CIN>
double product(long reps) {
    const size_t cin = CIN, nv = NV;
    Buffer in(kPixels * cin, 0.5f), w(cin * nv * kLanes, 0.01f), b(nv * kLanes, 0.0f), out(kPixels * nv * kLanes, 0.0f);
    const Store<NV> epi{out.data, NV * kLanes};
    return seconds_per_call([&] { matmul_row<NV, CIN>(in.data, CIN, kPixels, w.data, b.data, epi); }, reps);
}

template <int NV, int K, int DIL>
double depthwise(long reps) {
    const int rows = 32;
    Ring src{rows, kPixels, NV * kLanes, nullptr};
    const size_t taps = K * K, nv = NV;
    Buffer memory(src.floats() + PARTS_RING_OFFSET, 0.5f), w(taps * nv * kLanes, 0.01f), b(nv * kLanes, 0.0f), out(kPixels * nv * kLanes, 0.0f);
    src.data = memory.data + PARTS_RING_OFFSET;
    const Store<NV> epi{out.data, NV * kLanes};
    return seconds_per_call([&] { depthwise_row<NV, K, DIL>(src, rows / 2, rows, 0, kPixels, w.data, b.data, epi); },
                            reps);
}

}  // namespace

extern "C" {

// Seconds per row of 256 pixels for part `i` (0-7), or per 256 vectors for GELU (8); its multiply-accumulates
// per row go to *macs (real and padded channels alike: what the part computes); -1 for an unknown part.
double kernel_part(int i, long reps, double* macs) {
    const double row = kPixels * kLanes;
    switch (i) {
        case 0: *macs = row * 42 * NG; return product<NG, 42>(reps);  // a distillation step's product
        case 1: *macs = row * 42 * NC; return product<NC, 42>(reps);  // LKA's pointwise conv, c6, c2
        case 2: *macs = row * 84 * NC; return product<NC, 84>(reps);  // c5
        case 3: *macs = row * 42 * ND; return product<ND, 42>(reps);  // c4's pointwise half
        case 4: *macs = row * 9 * NC; return depthwise<NC, 3, 1>(reps);  // a refine block's 3x3
        case 5: *macs = row * 9 * ND; return depthwise<ND, 3, 1>(reps);  // c4's 3x3
        case 6: *macs = row * 25 * NC; return depthwise<NC, 5, 1>(reps);  // LKA's 5x5
        case 7: *macs = row * 25 * NC; return depthwise<NC, 5, 3>(reps);  // LKA's dilated 5x5
        case 8: {
            Buffer x(size_t(kPixels) * kLanes, 0.0f), y(size_t(kPixels) * kLanes, 0.0f);
            for (int k = 0; k < kPixels * kLanes; ++k) x.data[k] = (k % 1000) * 0.012f - 6.0f;
            *macs = 0;
            return seconds_per_call([&] { lkdn_gelu(x.data, y.data, long(kPixels) * kLanes); }, reps);
        }
        default: return -1;
    }
}
}
