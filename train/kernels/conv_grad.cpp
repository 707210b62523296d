// Gradients of LKDN's convs on channels-last (NHWC) float32 tensors, for training on a CPU, where oneDNN's
// are far slower than its forward convs.
//
// depthwise_weight_grad: weight and bias gradients of a stride-1 depthwise conv. In NHWC an output row and the
// input row a tap reads are both contiguous spans of pixels x channels, shifted by whole pixels, so every
// (row, tap) pair is one multiply-add over a span. For 3x3 and 5x5 kernels every tap's sum stays in a register
// while a block of rows is swept (accumulate_rows_in_registers); other kernels add into a small buffer per
// thread (accumulate_rows). The threads' sums are added at the end.
//
// pointwise_backward: input, weight and bias gradients of 1x1 convs of one input in one pass over tiles of
// pixels, while each tile of the output gradients and the input is in cache (oneDNN reads them in separate
// passes, once per conv, and the input gradients are summed afterwards).
//
// Vectors from vector.h: built with -march=native they use what the CPU has (AVX-512 here), and they are
// correct on any target (tests build both ways).

#include "vector.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

struct Shape {
    int n, h, w, c;       // input
    int ho, wo;           // output (the gradient)
    int kh, kw, dh, dw;   // kernel size and dilation
    int ph, pw;           // zero padding
};

// Runs fn(thread, threads) on up to `threads` threads of the OpenMP runtime. Built with -fopenmp and loaded
// into a process that has imported torch, that is torch's own runtime (the library is found by its soname), so
// the kernels share torch's threads instead of competing with them while they spin-wait between ops.
template <class Fn>
void in_parallel(int threads, Fn fn) {
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
    fn(omp_get_thread_num(), omp_get_num_threads());
#else
    (void)threads;
    fn(0, 1);
#endif
}

// out[k % period] += g[k] * in[k] (in[k] = 1 without `in`) for k in [k0, k1). `period` is a multiple of
// kLanes, and `out` and `g` start on 64-byte boundaries: vectors start where k is a multiple of kLanes, so
// only `in` is read unaligned (a vector split across cache lines costs two accesses). The partial vectors at
// either end go one float at a time.
inline void add_span(float* out, long period, const float* g, const float* in, long k0, long k1) {
    auto one = [&](long k) { out[k % period] += g[k] * (in ? in[k] : 1.0f); };
    long k = k0;
    for (; k < k1 && k % kLanes; ++k) one(k);
    for (long o = k % period; k + kLanes <= k1;) {
        // vectors up to the end of the period, so the inner loop carries no wrap-around
        const long count = std::min((period - o) / kLanes, (k1 - k) / kLanes);
        float* __restrict a = out + o;
        const float* __restrict gk = g + k;
        if (in) {
            const float* __restrict ik = in + k;
            for (long v = 0; v < count * kLanes; v += kLanes) store(a + v, load(a + v) + load(gk + v) * load(ik + v));
        } else {
            for (long v = 0; v < count * kLanes; v += kLanes) store(a + v, load(a + v) + load(gk + v));
        }
        k += count * kLanes;
        o += count * kLanes;
        if (o == period) o = 0;
    }
    for (; k < k1; ++k) one(k);
}

// Adds the rows [r0, r1) of the gradient (rows over images and output rows) into acc (taps x period) and
// bias (period floats, may be null), where `period` is a multiple of both c and kLanes: flat index k of a row
// adds into k % period. A period of lcm(c, 16) keeps all taps' sums in L1.
void accumulate_rows(const Shape& s, long period, const float* grad, const float* x, int r0, int r1, float* acc,
                     float* bias) {
    const long span = long(s.wo) * s.c;
    for (int r = r0; r < r1; ++r) {
        const int image = r / s.ho, yo = r % s.ho;
        const float* g = grad + long(r) * span;
        if (bias) add_span(bias, period, g, nullptr, 0, span);
        for (int i = 0; i < s.kh; ++i) {
            const int y = yo - s.ph + i * s.dh;
            if (y < 0 || y >= s.h) continue;  // zero padding: the tap adds nothing on this row
            const float* row = x + (long(image) * s.h + y) * s.w * s.c;
            for (int j = 0; j < s.kw; ++j) {
                const int shift = j * s.dw - s.pw;  // input pixel = output pixel + shift
                const int x0 = std::max(0, -shift), x1 = std::min(s.wo, s.w - shift);
                if (x0 < x1)
                    add_span(acc + (i * s.kw + j) * period, period, g, row + long(shift) * s.c, long(x0) * s.c,
                             long(x1) * s.c);
            }
        }
    }
}

// The same sums for a KH x KW kernel, with every tap's sum in a register: for each vector position of the
// rows, a block of up to kRowBlock rows of one image is swept, each g vector loaded once for all taps, and only
// then are the registers added to acc. Vectors near either end of a row, where a tap reaches past the row
// (zero padding), load only the lanes inside it.
constexpr int kRowBlock = 32;

// One vector position k of the rows [b0, b1) of one image into registers, then into acc and bias. INSIDE: every
// tap's lanes lie inside the input row (no masking).
template <int KH, int KW, bool INSIDE>
void sweep(const Shape& s, long period, const float* grad, const float* x, int image, int b0, int b1, long k,
           int lanes, const long* shift, float* acc, float* bias) {
    // everything the loop reads besides the tensors, in locals: the compiler then keeps them in registers
    // instead of reloading them through pointers it cannot prove unchanged
    const long span = long(s.wo) * s.c, width = long(s.w) * s.c;
    const int h = s.h, ph = s.ph, dh = s.dh, first_row = image * s.ho;
    const float* image_x = x + long(image) * h * width + k;
    const long first = shift[0], step = KW > 1 ? shift[1] - shift[0] : 0;  // taps of a row: equally spaced
    int lo[KW], hi[KW];  // the lanes of each tap inside the input row (all of them when INSIDE)
    for (int j = 0; j < KW; ++j) {
        const long at = k + first + j * step;
        lo[j] = int(std::clamp(-at, 0L, long(kLanes)));
        hi[j] = int(std::clamp(width - at, 0L, long(kLanes)));
    }
    vf sums[KH][KW] = {}, bias_sum{};
    for (int r = b0; r < b1; ++r) {
        const float* g = grad + long(r) * span + k;
        const vf gv = lanes == kLanes ? load(g) : load_lanes(g, lanes);
        bias_sum += gv;
        const int y0 = r - first_row - ph;
#pragma GCC unroll 8
        for (int i = 0; i < KH; ++i) {
            const int y = y0 + i * dh;
            if (y < 0 || y >= h) continue;  // zero padding: the tap adds nothing on this row
            const float* tap = image_x + long(y) * width + first;
#pragma GCC unroll 8
            for (int j = 0; j < KW; ++j, tap += step) {
                if (INSIDE) {
                    sums[i][j] += gv * load(tap);
                } else if (lo[j] < hi[j]) {
                    sums[i][j] += gv * load_lanes(tap, lo[j], hi[j]);
                }
            }
        }
    }
    const long o = k % period;
#pragma GCC unroll 32
    for (int t = 0; t < KH * KW; ++t) store(acc + t * period + o, load(acc + t * period + o) + sums[t / KW][t % KW]);
    if (bias) store(bias + o, load(bias + o) + bias_sum);
}

template <int KH, int KW>
void accumulate_rows_in_registers(const Shape& s, long period, const float* grad, const float* x, int r0, int r1,
                                  float* acc, float* bias) {
    const long span = long(s.wo) * s.c, width = long(s.w) * s.c;
    long shift[KW];
    for (int j = 0; j < KW; ++j) shift[j] = long(j * s.dw - s.pw) * s.c;
    for (int b0 = r0; b0 < r1;) {
        const int image = b0 / s.ho, b1 = std::min({r1, b0 + kRowBlock, (image + 1) * s.ho});
        for (long k = 0; k < span; k += kLanes) {
            const int lanes = int(std::min<long>(kLanes, span - k));
            if (k + shift[0] >= 0 && k + kLanes + shift[KW - 1] <= width)
                sweep<KH, KW, true>(s, period, grad, x, image, b0, b1, k, lanes, shift, acc, bias);
            else
                sweep<KH, KW, false>(s, period, grad, x, image, b0, b1, k, lanes, shift, acc, bias);
        }
        b0 = b1;
    }
}

// ---- pointwise (1x1) conv backward ----

constexpr int kTile = 128;  // pixels per tile: its rows of g, x and gin stay in L1/L2 through all products

// The output channels may come in parts, each with its own gradient tensor: convs of one input whose
// gradients are summed (LKDB's refine and distillation convs) share one pass over the input.
struct Part {
    const float* g;  // pixels x co
    int co, row0;    // its output channels, and the weight row of its first
};
constexpr int kMaxParts = 4;

struct Pointwise {
    long pixels;
    int ci, co;          // input channels, output channels of all parts
    Part parts[kMaxParts];
    int count;
    const float* x;  // pixels x ci
    const float* w;  // co x wstride (the weights of all parts, rows zero-padded to whole vectors)
    int wstride;
};

// gin[p, v0*16 ...] for R pixels and V vectors of input channels: sum over o of g[p, o] * w[o, ...].
template <int R, int V>
void input_grad(const Pointwise& s, long p0, int v0, float* gin) {
    vf acc[R][V] = {};
    for (int part = 0; part < s.count; ++part) {
        const Part& pt = s.parts[part];
        for (int o = 0; o < pt.co; ++o) {
            vf wv[V];
            for (int v = 0; v < V; ++v) wv[v] = load(s.w + long(pt.row0 + o) * s.wstride + (v0 + v) * kLanes);
            for (int r = 0; r < R; ++r) {
                const vf gs = splat(pt.g[(p0 + r) * pt.co + o]);
                for (int v = 0; v < V; ++v) acc[r][v] += gs * wv[v];
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) {
            const int lane0 = (v0 + v) * kLanes, n = std::min(kLanes, s.ci - lane0);
            store_lanes(gin + (p0 + r) * s.ci + lane0, acc[r][v], 0, n);
        }
}

template <int R>
void input_grad_vectors(const Pointwise& s, long p0, int v0, int count, float* gin) {
    switch (count) {
        case 1: input_grad<R, 1>(s, p0, v0, gin); break;
        case 2: input_grad<R, 2>(s, p0, v0, gin); break;
        case 3: input_grad<R, 3>(s, p0, v0, gin); break;
        case 4: input_grad<R, 4>(s, p0, v0, gin); break;
        default: input_grad<R, 5>(s, p0, v0, gin); break;
    }
}

// Adds to sum (co x ci, double) the products g[p, o0 + o] * x[p, v0*16 ...] over the pixels [p0, p1), for O
// output channels of one part and V vectors of input channels, summed in registers over the tile. A pixel's last vector
// may read past its ci channels into the next pixels (those lanes are dropped), except near the end of x.
template <int O, int V>
void weight_grad(const Pointwise& s, const Part& pt, long p0, long p1, int o0, int v0, double* sum) {
    vf acc[O][V] = {};
    auto add = [&](long p, bool last) {
        vf xv[V];
        const float* xp = s.x + p * s.ci + v0 * kLanes;
        for (int v = 0; v < V; ++v)
            xv[v] = last ? load_lanes(xp + v * kLanes, std::min(kLanes, s.ci - (v0 + v) * kLanes)) : load(xp + v * kLanes);
        const float* gp = pt.g + p * pt.co + o0;
        for (int o = 0; o < O; ++o) {
            const vf gs = splat(gp[o]);
            for (int v = 0; v < V; ++v) acc[o][v] += gs * xv[v];
        }
    };
    // full loads while the furthest one ends inside x, then only the lanes of real channels
    const long room = s.pixels * s.ci - long(v0 + V) * kLanes;  // the last start offset of a full load
    const long safe_end = room < 0 ? p0 : std::clamp(room / s.ci + 1, p0, p1);
    for (long p = p0; p < safe_end; ++p) add(p, false);
    for (long p = safe_end; p < p1; ++p) add(p, true);
    for (int o = 0; o < O; ++o)
        for (int v = 0; v < V; ++v)
            for (int l = 0; l < std::min(kLanes, s.ci - (v0 + v) * kLanes); ++l)
                sum[long(pt.row0 + o0 + o) * s.ci + (v0 + v) * kLanes + l] += acc[o][v][l];
}

template <int V>
void weight_grad_rows(const Pointwise& s, const Part& pt, long p0, long p1, int o0, int count, int v0, double* sum) {
    switch (count) {
        case 1: weight_grad<1, V>(s, pt, p0, p1, o0, v0, sum); break;
        case 2: weight_grad<2, V>(s, pt, p0, p1, o0, v0, sum); break;
        case 3: weight_grad<3, V>(s, pt, p0, p1, o0, v0, sum); break;
        case 4: weight_grad<4, V>(s, pt, p0, p1, o0, v0, sum); break;
        case 5: weight_grad<5, V>(s, pt, p0, p1, o0, v0, sum); break;
        case 6: weight_grad<6, V>(s, pt, p0, p1, o0, v0, sum); break;
        case 7: weight_grad<7, V>(s, pt, p0, p1, o0, v0, sum); break;
        default: weight_grad<8, V>(s, pt, p0, p1, o0, v0, sum); break;
    }
}

// One tile of pixels [p0, p1): its input gradient (if gin), and its weight and bias sums (if wsum, bsum).
void pointwise_tile(const Pointwise& s, long p0, long p1, float* gin, double* wsum, double* bsum) {
    const int vectors = (s.ci + kLanes - 1) / kLanes;
    if (gin) {
        for (int v0 = 0; v0 < vectors; v0 += 5) {
            const int count = std::min(5, vectors - v0);
            long p = p0;
            if (count <= 3)  // 8 pixels x up to 3 vectors of sums in registers, else 4 x up to 5
                for (; p + 8 <= p1; p += 8) input_grad_vectors<8>(s, p, v0, count, gin);
            for (; p + 4 <= p1; p += 4) input_grad_vectors<4>(s, p, v0, count, gin);
            for (; p < p1; ++p) input_grad_vectors<1>(s, p, v0, count, gin);
        }
    }
    if (wsum) {
        for (int v0 = 0; v0 < vectors; v0 += 3) {
            const int count = std::min(3, vectors - v0);
            for (int part = 0; part < s.count; ++part) {
                const Part& pt = s.parts[part];
                for (int o0 = 0; o0 < pt.co; o0 += 8) {
                    const int rows = std::min(8, pt.co - o0);
                    if (count == 1) weight_grad_rows<1>(s, pt, p0, p1, o0, rows, v0, wsum);
                    else if (count == 2) weight_grad_rows<2>(s, pt, p0, p1, o0, rows, v0, wsum);
                    else weight_grad_rows<3>(s, pt, p0, p1, o0, rows, v0, wsum);
                }
            }
        }
    }
    if (bsum) {
        for (int part = 0; part < s.count; ++part) {
            const Part& pt = s.parts[part];
            for (int o0 = 0; o0 < pt.co; o0 += kLanes) {
                const int n = std::min(kLanes, pt.co - o0);
                vf acc{};
                for (long p = p0; p < p1; ++p) acc += load_lanes(pt.g + p * pt.co + o0, n);
                for (int l = 0; l < n; ++l) bsum[pt.row0 + o0 + l] += acc[l];
            }
        }
    }
}

}  // namespace

extern "C" {

// grad: n x ho x wo x c, x: n x h x w x c (both contiguous). Writes grad_w (c x kh x kw, the layout of a
// (c, 1, kh, kw) weight) and, unless null, grad_b (c). Returns 0, or -1 for a shape it cannot take.
int depthwise_weight_grad(const float* grad, const float* x, int n, int h, int w, int c, int ho, int wo, int kh,
                          int kw, int dh, int dw, int ph, int pw, float* grad_w, float* grad_b, int threads) {
    const Shape s{n, h, w, c, ho, wo, kh, kw, dh, dw, ph, pw};
    if (n < 1 || h < 1 || w < 1 || c < 1 || ho < 1 || wo < 1 || kh < 1 || kw < 1 || dh < 1 || dw < 1 || ph < 0 ||
        pw < 0)
        return -1;
    const int rows = n * ho, taps = kh * kw;
    const long period = std::lcm(long(c), long(kLanes));
    threads = std::max(1, std::min(threads, rows));
    // per thread: taps spans of weight sums, then one span of bias sums
    const long per_thread = (taps + 1) * period;
    // vectors of sums on 64-byte boundaries: a vector split across cache lines costs two accesses
    std::vector<float> buffer(size_t(threads) * per_thread + kLanes, 0.0f);
    float* sums = buffer.data() + (kLanes - reinterpret_cast<uintptr_t>(buffer.data()) / sizeof(float) % kLanes);
    in_parallel(threads, [&](int t, int workers) {
        const int r0 = int(long(rows) * t / workers), r1 = int(long(rows) * (t + 1) / workers);
        float* acc = sums + t * per_thread;
        float* bias = grad_b ? acc + taps * period : nullptr;
        if (kh == 5 && kw == 5)
            accumulate_rows_in_registers<5, 5>(s, period, grad, x, r0, r1, acc, bias);
        else if (kh == 3 && kw == 3)
            accumulate_rows_in_registers<3, 3>(s, period, grad, x, r0, r1, acc, bias);
        else
            accumulate_rows(s, period, grad, x, r0, r1, acc, bias);
    });
    for (int t = 1; t < threads; ++t) {
        const float* __restrict from = sums + t * per_thread;
        float* __restrict to = sums;
        for (long k = 0; k < per_thread; ++k) to[k] += from[k];
    }
    std::vector<double> total(size_t(taps + 1) * c, 0.0);
    for (int tap = 0; tap <= taps; ++tap)
        for (long k = 0; k < period; ++k) total[size_t(tap) * c + k % c] += sums[tap * period + k];
    for (int ch = 0; ch < c; ++ch) {
        for (int tap = 0; tap < taps; ++tap) grad_w[long(ch) * taps + tap] = float(total[size_t(tap) * c + ch]);
        if (grad_b) grad_b[ch] = float(total[size_t(taps) * c + ch]);
    }
    return 0;
}

// The gradients of `count` 1x1 convs (no stride, no groups) of one input over `pixels` pixels: part i has
// output gradient gs[i] (pixels x cos[i]); x is pixels x ci; weight holds the parts' (co, ci, 1, 1) weights one
// after the other (co = the sum of cos). Writes any of gin (pixels x ci, the sum over the parts), grad_w (co x
// ci) and grad_b (co) that is not null. Returns 0, or -1 for a shape it cannot take.
int pointwise_backward(const float* const* gs, const int* cos, int count, const float* x, const float* weight,
                       long pixels, int ci, float* gin, float* grad_w, float* grad_b, int threads) {
    if (pixels < 1 || ci < 1 || count < 1 || count > kMaxParts) return -1;
    Pointwise s{pixels, ci, 0, {}, count, x, nullptr, (ci + kLanes - 1) / kLanes * kLanes};
    for (int i = 0; i < count; ++i) {
        if (cos[i] < 1) return -1;
        s.parts[i] = {gs[i], cos[i], s.co};
        s.co += cos[i];
    }
    const int co = s.co, wstride = s.wstride;
    std::vector<float> padded(size_t(co) * wstride, 0.0f);
    for (int o = 0; o < co; ++o) std::copy(weight + long(o) * ci, weight + long(o + 1) * ci, &padded[size_t(o) * wstride]);
    s.w = padded.data();
    const long tiles = (pixels + kTile - 1) / kTile;
    threads = int(std::max(1L, std::min(long(threads), tiles)));
    const size_t per_thread = size_t(co) * ci + co;  // weight sums, then bias sums
    std::vector<double> sums(size_t(threads) * per_thread, 0.0);
    in_parallel(threads, [&](int t, int workers) {
        double* wsum = grad_w ? sums.data() + t * per_thread : nullptr;
        double* bsum = grad_b ? sums.data() + t * per_thread + size_t(co) * ci : nullptr;
        for (long tile = tiles * t / workers; tile < tiles * (t + 1) / workers; ++tile) {
            const long p0 = tile * kTile, p1 = std::min(pixels, p0 + kTile);
            pointwise_tile(s, p0, p1, gin, wsum, bsum);
        }
    });
    for (size_t k = 0; k < per_thread; ++k) {
        double total = 0.0;
        for (int t = 0; t < threads; ++t) total += sums[t * per_thread + k];
        if (k < size_t(co) * ci) {
            if (grad_w) grad_w[k] = float(total);
        } else if (grad_b) {
            grad_b[k - size_t(co) * ci] = float(total);
        }
    }
    return 0;
}

}  // extern "C"
