// The fused LKDN-S / LKDN on a CPU, streamed row by row: one LKDB (distillation block) per `lkdb_forward` call,
// then `lkdn_tail` (c1, c2, the upsampler, the pixel shuffle), on NHWC float32 images.
//
// Why: a straightforward forward pass writes every intermediate (about 20 tensors per block) to memory and
// reads it back; here each image row goes through all the block's steps while its neighbourhood is still in
// cache. Rows flow through a fixed pipeline; every spatial step keeps a small ring of the rows it still needs:
//
//   step (lag)  computes row y = k - lag at pipeline step k
//   1 (0)   G1 = x @ [r1.pw | c1_d]             -> T1 ring (pre-depthwise), GELU(d1) -> dist ring
//   2 (1)   r1 = GELU(dw3(T1)); G2 = r1 @ [...]  -> T2 ring, GELU(d2) -> dist ring
//   3 (2)   r2 = GELU(dw3(T2)); G3               -> T3 ring, GELU(d3) -> dist ring
//   4 (3)   r3 = GELU(dw3(T3)); r3 @ c4.pw       -> T4 ring
//   5 (4)   r4 = GELU(dw3(T4)) -> dist ring; u = c5(dist) -> U ring; a0 = lka.pw(u) -> A0 ring
//   6 (6)   a1 = dw5(A0) -> A1 ring
//   7 (12)  att = dw5_dilated(A1) * u; out = LayerNorm(c6(att)) + x
//
// A band of output rows [r0, r1) needs each step over its rows widened by the remaining receptive field (its
// "halo": 12 rows for step 1 down to 0 for step 7), so bands are independent: threads take one band each.
// Wide rows are cut the same way into column strips, so that the rings stay in a core's cache.
// Channels are padded to whole vectors inside; pad lanes may hold junk but are never read as channels
// (matrix products read only real input channels, depthwise steps are lane-wise, LayerNorm masks them).
// Bias, GELU, the attention product and LayerNorm are applied to results still in registers.
//
// Portable C++17 with GCC/Clang vector extensions (utils/native/vector.h): built with -march=native it uses what
// the CPU has (AVX-512 or AVX2, with a few intrinsics where they matter), and it is correct on any target (tests
// build it both ways).

#include "vector.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// vectors the matrix product may keep as accumulators: of a target's 32 AVX-512 or 16 AVX2 registers, what the
// weights and the broadcast inputs leave (an 8-lane vector without AVX takes two of SSE's 16 registers)
#if defined(__AVX512F__)
constexpr int kRegisters = 24;
#elif defined(__AVX__)
constexpr int kRegisters = 12;
#else
constexpr int kRegisters = 6;
#endif

inline float sum_lanes(vf v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps(__m512(v));
#elif defined(__AVX2__)
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(__m256(v)), _mm256_extractf128_ps(__m256(v), 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
#else
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += v[l];
    return s;
#endif
}
// a / b: a division is ~10x an FMA's cost, so AVX-512 takes the reciprocal estimate (2^-14) and one Newton
// step (to float precision)
inline vf divide(vf a, vf b) {
#if defined(__AVX512F__)
    vf r = vf(_mm512_rcp14_ps(__m512(b)));
    r = r * (2.0f - b * r);
    return a * r;
#else
    return a / b;
#endif
}

// erf(x) ~ x P(x^2) / Q(x^2), clamped to [-4, 4]; the GELU built on it stays within 5e-7 max(1, |x|) of torch's
// exact GELU (tests/test_native_inference.py checks it through `lkdn_gelu`).
inline vf clamp(vf x, float lo, float hi) {
#if defined(__AVX512F__)
    return vf(_mm512_min_ps(_mm512_max_ps(__m512(x), _mm512_set1_ps(lo)), _mm512_set1_ps(hi)));
#else
    x = x < lo ? splat(lo) : x;
    return x > hi ? splat(hi) : x;
#endif
}

inline vf erf(vf x) {
    x = clamp(x, -4.0f, 4.0f);
    const vf x2 = x * x;
    vf p = splat(-2.72614225801306e-10f);
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    vf q = splat(-1.45660718464996e-05f);
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return divide(x * p, q);
}
inline vf gelu(vf x) { return 0.5f * x * (1.0f + erf(x * 0.70710678118654752f)); }

// Widths of a block with C channels: padded channels, the fused [refine | distill] product, distilled.
template <int C>
struct Widths {
    static constexpr int c = C, d = C / 2, cp = round_up(C), gp = round_up(C + C / 2), dp = round_up(C / 2);
    static constexpr int dist = 4 * d;  // the concatenated distilled features, c5's input (unpadded)
};

// Weights of one block, in the layout `lkdb_params_size` describes (Python packs it the same way).
struct Params {
    const float *g_w[3], *g_b[3], *dw_w[3], *dw_b[3];  // the three distillation steps
    const float *c4_w, *dw4_w, *dw4_b, *c5_w, *c5_b, *lka_w, *lka_b, *lka_dw, *lka_db, *lka_ddw, *lka_ddb;
    const float *c6_w, *c6_b, *ln_w, *ln_b;
    size_t size;

    template <int C>
    Params(Widths<C> s, const float* base) {
        size_t at = 0;
        auto take = [&](size_t n) {
            const float* p = base ? base + at : nullptr;
            at += n;
            return p;
        };
        for (int i = 0; i < 3; ++i) {
            g_w[i] = take(size_t(s.c) * s.gp);
            g_b[i] = take(s.gp);
            dw_w[i] = take(9 * size_t(s.cp));
            dw_b[i] = take(s.cp);
        }
        c4_w = take(size_t(s.c) * s.dp);
        dw4_w = take(9 * size_t(s.dp));
        dw4_b = take(s.dp);
        c5_w = take(size_t(s.dist) * s.cp);
        c5_b = take(s.cp);
        lka_w = take(size_t(s.c) * s.cp);
        lka_b = take(s.cp);
        lka_dw = take(25 * size_t(s.cp));
        lka_db = take(s.cp);
        lka_ddw = take(25 * size_t(s.cp));
        lka_ddb = take(s.cp);
        c6_w = take(size_t(s.c) * s.cp);
        c6_b = take(s.cp);
        ln_w = take(s.cp);
        ln_b = take(s.cp);
        size = at;
    }
};

// Inputs of a matrix product: pixel p's CIN channels are at base + p * stride, and their weights at w
// (CIN x NV vectors). A product may sum several (the taps of a 3x3 conv, the inputs of a concatenation).
struct Source {
    const float* base;
    int stride;
    const float* w;
};

// Pixels p0.. p0 + P - 1 through a 1x1 conv with NV vectors of outputs (bias optional), summed over
// `count` sources; each pixel's result goes to epi(pixel, vf[NV]) while in registers. COUNT > 0 fixes the
// number of sources at compile time (the common single-source case is measurably faster so).
template <int NV, int CIN, int P, int COUNT, class Epi>
inline void matmul_pixels(const Source* sources, int count, int p0, const float* bias, Epi& epi) {
    vf acc[P][NV];
    for (int v = 0; v < NV; ++v) {
        const vf b = bias ? load(bias + v * kLanes) : vf{};
        for (int p = 0; p < P; ++p) acc[p][v] = b;
    }
    for (int s = 0; s < (COUNT > 0 ? COUNT : count); ++s) {
        const Source src = sources[s];
        const float* in = src.base + size_t(p0) * src.stride;
        // the next pixels' inputs, which may come from memory: one cache line of 16 floats at a time
        for (int f = P * src.stride; f < 2 * P * src.stride; f += 16) __builtin_prefetch(in + f);
        for (int i = 0; i < CIN; ++i) {
            vf wv[NV];
            for (int v = 0; v < NV; ++v) wv[v] = load(src.w + (size_t(i) * NV + v) * kLanes);
            for (int p = 0; p < P; ++p) {
                const vf x = splat(in[size_t(p) * src.stride + i]);
                for (int v = 0; v < NV; ++v) acc[p][v] += x * wv[v];
            }
        }
    }
    for (int p = 0; p < P; ++p) epi(p0 + p, acc[p]);
}

template <int NV, int CIN, int COUNT = 0, class Epi>
void matmul_row(const Source* sources, int count, int n, const float* bias, Epi epi) {
    constexpr int P = std::max(1, std::min(8, kRegisters / NV));
    int p = 0;
    for (; p + P <= n; p += P) matmul_pixels<NV, CIN, P, COUNT>(sources, count, p, bias, epi);
    for (; p < n; ++p) matmul_pixels<NV, CIN, 1, COUNT>(sources, count, p, bias, epi);
}

template <int NV, int CIN, class Epi>
void matmul_row(const float* in, int stride, int n, const float* w, const float* bias, Epi epi) {
    const Source source{in, stride, w};
    matmul_row<NV, CIN, 1>(&source, 1, n, bias, epi);
}

constexpr int kPadX = 6;  // zero columns left and right of every ring row: the dilated 5x5's reach

// The last `rows` rows of one step's output, each W pixels of `lanes` floats, with zero side columns.
struct Ring {
    int rows, width, lanes;
    float* data;
    float* row(int y) const { return data + (size_t(y % rows) * (width + 2 * kPadX) + kPadX) * lanes; }
    size_t floats() const { return size_t(rows) * (width + 2 * kPadX) * lanes; }
};

// Places `rings` in `memory`, zeroed (columns a step never computes, outside the image, stay zero: the
// depthwise convs' padding), followed by `scratch` floats, whose start is returned.
float* place_rings(std::vector<float>& memory, std::initializer_list<Ring*> rings, size_t scratch) {
    size_t total = scratch;
    for (Ring* r : rings) total += r->floats();
    memory.assign(total, 0.0f);
    float* at = memory.data();
    for (Ring* r : rings) {
        r->data = at;
        at += r->floats();
    }
    return at;
}

// Whether a step whose halo is `halo` rows computes row y, for output rows [r0, r1) of an h-row image.
inline bool in_halo(int y, int halo, int r0, int r1, int h) {
    return y >= std::max(0, r0 - halo) && y < std::min(h, r1 + halo);
}

// bias + depthwise KxK conv (dilation DIL) of `src` around row y, columns [x0, x1), rows outside [0, h) being
// zero; the result of column x goes to epi(x - x0, vf[NV]).
template <int NV, int K, int DIL, class Epi>
void depthwise_row(const Ring& src, int y, int h, int x0, int x1, const float* w, const float* bias, Epi epi) {
    constexpr int L = NV * kLanes, P = std::max(1, std::min(8, kRegisters / NV)), R = K / 2 * DIL;
    const float* rows[K];
    int taps = 0, first = 0;
    for (int ky = 0; ky < K; ++ky) {
        const int yy = y + (ky - K / 2) * DIL;
        if (yy < 0 || yy >= h) continue;
        if (taps == 0) first = ky;
        rows[taps++] = src.row(yy) - R * L;
    }
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(bias + v * kLanes);
    // Q output pixels at once: each input vector is loaded once and used by every tap that reaches it
    auto run = [&](int x, auto pixels) {
        constexpr int Q = decltype(pixels)::value;
        vf acc[Q][NV];
        for (int q = 0; q < Q; ++q)
            for (int v = 0; v < NV; ++v) acc[q][v] = b[v];
        for (int t = 0; t < taps; ++t) {
            const float* wt = w + size_t(first + t) * K * L;  // valid rows are contiguous in ky
            const float* px = rows[t] + size_t(x) * L;
            for (int v = 0; v < NV; ++v) {
                vf wk[K];
                for (int kx = 0; kx < K; ++kx) wk[kx] = load(wt + kx * L + v * kLanes);
#pragma GCC unroll 32
                for (int j = 0; j < Q + (K - 1) * DIL; ++j) {
                    const vf in = load(px + j * L + v * kLanes);
#pragma GCC unroll 8
                    for (int kx = 0; kx < K; ++kx) {
                        const int q = j - kx * DIL;
                        if (q >= 0 && q < Q) acc[q][v] += wk[kx] * in;
                    }
                }
            }
        }
        for (int q = 0; q < Q; ++q) epi(x + q - x0, acc[q]);
    };
    int x = x0;
    for (; x + P <= x1; x += P) run(x, std::integral_constant<int, P>{});
    for (; x < x1; ++x) run(x, std::integral_constant<int, 1>{});
}

template <int NV>
struct Store {  // the plain epilogue: the result as it is, `lanes` floats per pixel
    float* dst;
    int lanes;
    void operator()(int p, const vf* a) const {
        for (int v = 0; v < NV; ++v) store(dst + size_t(p) * lanes + v * kLanes, a[v]);
    }
};

template <int NV>
struct StoreGelu {
    float* dst;
    void operator()(int p, const vf* a) const {
        for (int v = 0; v < NV; ++v) store(dst + (size_t(p) * NV + v) * kLanes, gelu(a[v]));
    }
};

// Runs fn(image, r0, r1) over bands of output rows: enough bands for every thread, each at least 16 rows (a
// band recomputes its halo rows).
template <class Fn>
void in_bands(int n, int h, int threads, Fn fn) {
    const int per_image = std::max(1, std::min((threads + n - 1) / n, h / 16));
    const int jobs = n * per_image;
    auto work = [&](int job) {
        const int i = job / per_image, b = job % per_image;
        fn(i, h * b / per_image, h * (b + 1) / per_image);
    };
    const int workers = std::max(1, std::min(threads, jobs));
    std::vector<std::thread> pool;
    for (int t = 1; t < workers; ++t)
        pool.emplace_back([&, t] {
            for (int j = t; j < jobs; j += workers) work(j);
        });
    for (int j = 0; j < jobs; j += workers) work(j);
    for (auto& th : pool) th.join();
}

constexpr int kStrip = 256;

template <int C>
struct Block {
    using S = Widths<C>;
    static constexpr int NC = S::cp / kLanes, NG = S::gp / kLanes, ND = S::dp / kLanes;

    // The distillation step's product: lanes [0, c) are the refine branch before its depthwise conv, lanes
    // [c, c + d) the distilled features, which get GELU and go to their slot of the dist row.
    struct Distill {
        float* t;
        float* dist;
        void operator()(int p, const vf* a) const {
            for (int v = 0; v < NC; ++v) store(t + (size_t(p) * NC + v) * kLanes, a[v]);
            float* to = dist + size_t(p) * S::dist - S::c;  // lane c of `a` goes to to[c]
            for (int v = S::c / kLanes; v < NG; ++v)
                store_lanes(to + v * kLanes, gelu(a[v]), std::max(0, S::c - v * kLanes),
                            std::min(kLanes, S::c + S::d - v * kLanes));
        }
    };

    struct Times {  // the attention product: a * u
        const float* u;
        float* dst;
        void operator()(int p, const vf* a) const {
            for (int v = 0; v < NC; ++v)
                store(dst + (size_t(p) * NC + v) * kLanes, a[v] * load(u + (size_t(p) * NC + v) * kLanes));
        }
    };

    struct NormResidual {  // LayerNorm over the channels, then + x
        const float *x, *gamma, *beta, *real;  // real: 1 in the lanes of real channels, else 0
        float* out;
        void operator()(int p, const vf* a) const {  // pad lanes of `a` are exactly zero (zero weights)
            vf sum{};
            for (int v = 0; v < NC; ++v) sum += a[v];
            const float mean = sum_lanes(sum) / S::c;
            vf centred[NC], sq{};
            for (int v = 0; v < NC; ++v) {
                centred[v] = (a[v] - mean) * load(real + v * kLanes);  // only real channels count
                sq += centred[v] * centred[v];
            }
            const float rstd = 1.0f / __builtin_sqrtf(sum_lanes(sq) / S::c + eps);
            for (int v = 0; v < NC; ++v) {
                const int n = std::min(kLanes, S::c - v * kLanes);
                const size_t at = size_t(p) * S::c + v * kLanes;
                const vf y = centred[v] * rstd * load(gamma + v * kLanes) + load(beta + v * kLanes);
                store_lanes(out + at, y + load_lanes(x + at, n), 0, n);
            }
        }
        float eps;
    };

    // Runs the block over output rows [r0, r1), columns [c0, c1), of one h x w image. Columns get the same
    // halos as rows; ring rows hold the strip's columns and 12 more on each side (local column 0 is c0 - 12).
    static void band(const Params& pr, const float* x, float* out, int h, int w, int r0, int r1, int c0, int c1,
                     float eps) {
        const int lw = c1 - c0 + 24, base = c0 - 12;
        Ring t[3] = {{3, lw, S::cp, nullptr}, {3, lw, S::cp, nullptr}, {3, lw, S::cp, nullptr}};
        Ring t4{3, lw, S::dp, nullptr}, dist{5, lw, S::dist, nullptr}, u{9, lw, S::cp, nullptr};
        Ring a0{5, lw, S::cp, nullptr}, a1{13, lw, S::cp, nullptr};
        std::vector<float> memory;
        // then one row of a depthwise step's output, by local column
        float* scratch = place_rings(memory, {&t[0], &t[1], &t[2], &t4, &dist, &u, &a0, &a1}, size_t(lw) * S::cp);
        float real[S::cp] = {};
        std::fill(real, real + S::c, 1.0f);

        constexpr int halo[7] = {12, 11, 10, 9, 8, 6, 0};
        auto active = [&](int step, int y) { return in_halo(y, halo[step], r0, r1, h); };
        int xa[7], xb[7], n[7];  // each step's local columns
        for (int step = 0; step < 7; ++step) {
            xa[step] = std::max(0, c0 - halo[step]) - base;
            xb[step] = std::min(w, c1 + halo[step]) - base;
            n[step] = xb[step] - xa[step];
        }
        auto image_row = [&](auto* image, int y, int step) {
            return image + (size_t(y) * w + base + xa[step]) * S::c;
        };
        for (int k = r0 - 12; k < r1 + 12; ++k) {
            // steps 1-3: a distillation step on the input (step 1) or on the previous refined features
            for (int i = 0; i < 3; ++i) {
                const int y = k - i;
                if (!active(i, y)) continue;
                const Distill epi{t[i].row(y) + xa[i] * S::cp, dist.row(y) + xa[i] * S::dist + i * S::d};
                if (i == 0) {
                    matmul_row<NG, S::c>(image_row(x, y, 0), S::c, n[0], pr.g_w[0], pr.g_b[0], epi);
                } else {
                    float* r = scratch + xa[i] * S::cp;
                    depthwise_row<NC, 3, 1>(t[i - 1], y, h, xa[i], xb[i], pr.dw_w[i - 1], pr.dw_b[i - 1], StoreGelu<NC>{r});
                    matmul_row<NG, S::c>(r, S::cp, n[i], pr.g_w[i], pr.g_b[i], epi);
                }
            }
            // step 4: r3, then c4's pointwise half
            if (int y = k - 3; active(3, y)) {
                float* r = scratch + xa[3] * S::cp;
                depthwise_row<NC, 3, 1>(t[2], y, h, xa[3], xb[3], pr.dw_w[2], pr.dw_b[2], StoreGelu<NC>{r});
                matmul_row<ND, S::c>(r, S::cp, n[3], pr.c4_w, nullptr, Store<ND>{t4.row(y) + xa[3] * S::dp, S::dp});
            }
            // step 5: r4 completes the distilled features; c5, then LKA's pointwise conv
            if (int y = k - 4; active(4, y)) {
                float* d = dist.row(y) + xa[4] * S::dist;
                depthwise_row<ND, 3, 1>(t4, y, h, xa[4], xb[4], pr.dw4_w, pr.dw4_b, [d](int p, const vf* a) {
                    for (int v = 0; v < ND; ++v)
                        store_lanes(d + size_t(p) * S::dist + 3 * S::d + v * kLanes, gelu(a[v]), 0,
                                    std::min(kLanes, S::d - v * kLanes));
                });
                float* uy = u.row(y) + xa[4] * S::cp;
                matmul_row<NC, S::dist>(d, S::dist, n[4], pr.c5_w, pr.c5_b, Store<NC>{uy, S::cp});
                matmul_row<NC, S::c>(uy, S::cp, n[4], pr.lka_w, pr.lka_b, Store<NC>{a0.row(y) + xa[4] * S::cp, S::cp});
            }
            // step 6: LKA's 5x5 depthwise
            if (int y = k - 6; active(5, y))
                depthwise_row<NC, 5, 1>(a0, y, h, xa[5], xb[5], pr.lka_dw, pr.lka_db,
                                        Store<NC>{a1.row(y) + xa[5] * S::cp, S::cp});
            // step 7: LKA's dilated 5x5 times u, c6, LayerNorm over channels, residual
            if (int y = k - 12; active(6, y)) {
                float* att = scratch + xa[6] * S::cp;
                depthwise_row<NC, 5, 3>(a1, y, h, xa[6], xb[6], pr.lka_ddw, pr.lka_ddb,
                                        Times{u.row(y) + xa[6] * S::cp, att});
                const NormResidual epi{image_row(x, y, 6), pr.ln_w, pr.ln_b, real, image_row(out, y, 6), eps};
                matmul_row<NC, S::c>(att, S::cp, n[6], pr.c6_w, pr.c6_b, epi);
            }
        }
    }

    static void run(const float* x, float* out, int n, int h, int w, const float* params, float eps, int threads) {
        const Params pr(S{}, params);
        // column strips of at most kStrip pixels keep the rings in a core's cache (2 MB L2 here; measured)
        const int strips = (w + kStrip - 1) / kStrip;
        in_bands(n, h, threads, [&](int i, int r0, int r1) {
            const size_t offset = size_t(i) * h * w * S::c;
            for (int s = 0; s < strips; ++s)
                band(pr, x + offset, out + offset, h, w, r0, r1, w * s / strips, w * (s + 1) / strips, eps);
        });
    }
};

// After the blocks: trunk = GELU(c1(concat(blocks)) + b); z = c2(trunk) + features; out = pixel_shuffle(up(z)),
// streamed like a block: c1 and c2's pointwise half (lag 0), c2's depthwise (lag 1), the upsampler's 3x3 conv
// (lag 2), written straight to the NCHW output in pixel-shuffle order. For 3 output channels at scale 4:
// the upsampler's output 16 colour + 4i + j goes to that colour's sub-pixel (i, j).
template <int C>
struct Tail {
    using S = Widths<C>;
    static constexpr int NC = S::cp / kLanes, kUp = 3 * 16, NU = kUp / kLanes;

    struct TailParams {
        const float *c1_w, *c1_b, *c2_w, *c2_dw, *c2_db, *up_w, *up_b;
        size_t size;
        TailParams(int blocks, const float* base) {
            size_t at = 0;
            auto take = [&](size_t n) {
                const float* p = base ? base + at : nullptr;
                at += n;
                return p;
            };
            c1_w = take(size_t(blocks) * S::c * S::cp);
            c1_b = take(S::cp);
            c2_w = take(size_t(S::c) * S::cp);
            c2_dw = take(9 * size_t(S::cp));
            c2_db = take(S::cp);
            up_w = take(9 * size_t(S::c) * kUp);
            up_b = take(kUp);
            size = at;
        }
    };

    struct AddFeatures {  // c2's depthwise result + the shallow features
        const float* feat;
        float* dst;
        void operator()(int p, const vf* a) const {
            for (int v = 0; v < NC; ++v) {
                const int n = std::min(kLanes, S::c - v * kLanes);
                store(dst + (size_t(p) * NC + v) * kLanes, a[v] + load_lanes(feat + size_t(p) * S::c + v * kLanes, n));
            }
        }
    };

    struct PixelShuffle {  // the output row 4y.. 4y + 3 of every colour plane
        float* out;  // colour 0, row 4y, column 0
        size_t plane;
        int width;  // of the output
        void operator()(int p, const vf* a) const {
            // output o = 16 colour + 4 i + j of the upsampler goes to (colour, row 4y + i, column 4p + j)
            for (int o = 0; o < kUp; o += 4) {
                const int v = o / kLanes, lane = o % kLanes, colour = o / 16, i = o % 16 / 4;
                store_lanes(out + colour * plane + size_t(i) * width + 4 * p - lane, a[v], lane, lane + 4);
            }
        }
    };

    static void band(const TailParams& pr, const float* const* hidden, int blocks, const float* feat, float* out, int h,
                     int w, int r0, int r1) {
        Ring t{3, w, S::cp, nullptr}, z{3, w, S::cp, nullptr};
        std::vector<float> memory;
        float* scratch = place_rings(memory, {&t, &z}, size_t(w) * S::cp);
        std::vector<Source> sources(std::max(blocks, 9));
        constexpr int halo[3] = {2, 1, 0};
        auto active = [&](int step, int y) { return in_halo(y, halo[step], r0, r1, h); };
        for (int k = r0 - 2; k < r1 + 2; ++k) {
            if (int y = k; active(0, y)) {
                for (int b = 0; b < blocks; ++b)
                    sources[b] = {hidden[b] + size_t(y) * w * S::c, S::c, pr.c1_w + size_t(b) * S::c * S::cp};
                matmul_row<NC, S::c>(sources.data(), blocks, w, pr.c1_b, StoreGelu<NC>{scratch});
                matmul_row<NC, S::c>(scratch, S::cp, w, pr.c2_w, nullptr, Store<NC>{t.row(y), S::cp});
            }
            if (int y = k - 1; active(1, y))
                depthwise_row<NC, 3, 1>(t, y, h, 0, w, pr.c2_dw, pr.c2_db, AddFeatures{feat + size_t(y) * w * S::c, z.row(y)});
            if (int y = k - 2; active(2, y)) {
                int count = 0;
                for (int ky = 0; ky < 3; ++ky) {
                    if (y + ky - 1 < 0 || y + ky - 1 >= h) continue;  // zero padding: the tap adds nothing
                    for (int kx = 0; kx < 3; ++kx)
                        sources[count++] = {z.row(y + ky - 1) + (kx - 1) * S::cp, S::cp,
                                            pr.up_w + size_t(ky * 3 + kx) * S::c * kUp};
                }
                const PixelShuffle epi{out + size_t(4 * y) * 4 * w, size_t(16) * h * w, 4 * w};
                matmul_row<NU, S::c>(sources.data(), count, w, pr.up_b, epi);
            }
        }
    }

    static void run(const float* const* hidden, int blocks, const float* feat, float* out, int n, int h, int w,
                    const float* params, int threads) {
        const TailParams pr(blocks, params);
        in_bands(n, h, threads, [&](int i, int r0, int r1) {
            std::vector<const float*> image_hidden(blocks);
            for (int b = 0; b < blocks; ++b) image_hidden[b] = hidden[b] + size_t(i) * h * w * S::c;
            band(pr, image_hidden.data(), blocks, feat + size_t(i) * h * w * S::c, out + size_t(i) * 48 * h * w, h, w,
                 r0, r1);
        });
    }
};

}  // namespace

extern "C" {

// Floats in the packed weights of one block with `channels` channels (0: a width the kernel was not built
// for). Python checks its packing against it.
long lkdb_params_size(int channels) {
    switch (channels) {
        case 42: return long(Params(Widths<42>{}, nullptr).size);
        case 56: return long(Params(Widths<56>{}, nullptr).size);
        default: return 0;
    }
}

// Floats in one vector: channel counts are padded to a multiple of it inside the packed weights.
int lkdn_lanes() { return kLanes; }

// GELU as the kernels compute it, on n floats (n a multiple of lkdn_lanes()), for tests.
void lkdn_gelu(const float* x, float* y, long n) {
    for (long i = 0; i < n; i += kLanes) store(y + i, gelu(load(x + i)));
}

// Floats in the packed weights of the tail (c1, c2, upsampler) after `blocks` blocks; 0 as above.
long lkdn_tail_params_size(int channels, int blocks) {
    switch (channels) {
        case 42: return long(Tail<42>::TailParams(blocks, nullptr).size);
        case 56: return long(Tail<56>::TailParams(blocks, nullptr).size);
        default: return 0;
    }
}

// The tail on n images: `hidden` holds the blocks' outputs and `feat` the shallow features (NHWC, h x w x
// channels each), `out` is n x 3 x 4h x 4w (NCHW). Returns 0, or -1 for an unsupported channel count.
int lkdn_tail(const float* const* hidden, int blocks, const float* feat, float* out, int n, int h, int w, int channels,
              const float* params, int threads) {
    switch (channels) {
        case 42: Tail<42>::run(hidden, blocks, feat, out, n, h, w, params, threads); return 0;
        case 56: Tail<56>::run(hidden, blocks, feat, out, n, h, w, params, threads); return 0;
        default: return -1;
    }
}

// One block on n images of h x w x channels (NHWC, contiguous, float32), into `out` (same shape, not x).
// The dilated conv's dilation is LKDN's 3. Returns 0, or -1 for a channel count it was not built for.
int lkdb_forward(const float* x, float* out, int n, int h, int w, int channels, const float* params, float eps,
                 int threads) {
    switch (channels) {
        case 42: Block<42>::run(x, out, n, h, w, params, eps, threads); return 0;
        case 56: Block<56>::run(x, out, n, h, w, params, eps, threads); return 0;
        default: return -1;
    }
}
}
