// The fused LKDN-S / LKDN on a CPU, streamed row by row: `lkdn_forward` runs the shallow features, each LKDB
// (distillation block) and the tail (c1, c2, the upsampler, the pixel shuffle) on NHWC float32 images; a block
// and the tail are also exported alone (`lkdb_forward`, `lkdn_tail`) for tests.
//
// Why: a straightforward forward pass writes every intermediate (about 20 tensors per block) to memory and
// reads it back; here each image row goes through all the block's steps while its neighbourhood is still in
// cache. Rows flow through a fixed pipeline; every spatial step keeps a small ring of the rows it still needs:
//
//   step (lag)  computes row y = k - lag at pipeline step k (lags of a team; one thread: 0 1 2 3 4 6 12)
//   1 (0)   G1 = x @ [r1.pw | c1_d]             -> T1 ring (pre-depthwise), GELU(d1) -> dist ring
//   2 (2)   r1 = GELU(dw3(T1)); G2 = r1 @ [...]  -> T2 ring, GELU(d2) -> dist ring
//   3 (4)   r2 = GELU(dw3(T2)); G3               -> T3 ring, GELU(d3) -> dist ring
//   4 (6)   r3 = GELU(dw3(T3)); r3 @ c4.pw       -> T4 ring
//   5 (8)   r4 = GELU(dw3(T4)) -> dist ring; u = c5(dist) -> U ring; a0 = lka.pw(u) -> A0 ring
//   6 (11)  a1 = dw5(A0) -> A1 ring
//   7 (18)  att = dw5_dilated(A1) * u; out = LayerNorm(c6(att)) + x
//
// Each lag exceeds the previous step's by more than the rows its conv reaches, so a pipeline step reads only
// rows finished in earlier pipeline steps: the threads of a team share the rings, split every step's columns
// between them, and meet at one barrier per pipeline step. No thread recomputes another's rows, which is what
// small images need (bands of rows per thread would each recompute a 12-row halo per block).
// Wide rows are cut into column strips, so that the rings stay in cache; a strip takes the columns its steps read
// left of their own from the strip before, which kept them for every row (see Block::strip).
// Channels are padded to whole vectors inside; pad lanes may hold junk but are never read as channels
// (matrix products read only real input channels, depthwise steps are lane-wise, LayerNorm masks them).
// Bias, GELU, the attention product and LayerNorm are applied to a product's results before they are stored.
//
// Portable C++17 with GCC/Clang vector extensions (utils/native/vector.h): built with -march=native it uses what
// the CPU has (AVX-512 or AVX2, with a few intrinsics where they matter), and it is correct on any target (tests
// build it both ways).

#include "vector.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <type_traits>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

// The kernels' free choices. Each has a default per target and can be set when the library is built
// (-DLKDN_REGISTERS=28, ...): utils/runtime/native_tune.py builds such candidates and times them on the CPU that
// runs them, since what is fastest differs between CPUs of the same instruction set.
// kRegisters: vectors the matrix product may keep as accumulators: of a target's 32 AVX-512 or 16 AVX2
// registers, what the weights and the broadcast inputs leave (an 8-lane vector without AVX takes two of SSE's 16
// registers). kDepthwisePixels: output pixels a depthwise conv computes at once, per vector of channels: with
// the K weights and one input they fill the registers (AVX2: 8 + 5 + 1 of 16).
#if defined(__AVX512F__)
constexpr int kDefaultRegisters = 24, kDefaultDepthwisePixels = 16;
#elif defined(__AVX__)
constexpr int kDefaultRegisters = 12, kDefaultDepthwisePixels = 8;
#else
constexpr int kDefaultRegisters = 6, kDefaultDepthwisePixels = 4;
#endif
#ifndef LKDN_REGISTERS
#define LKDN_REGISTERS kDefaultRegisters
#endif
#ifndef LKDN_DEPTHWISE_PIXELS
#define LKDN_DEPTHWISE_PIXELS kDefaultDepthwisePixels
#endif
// LKDN_WIDE_TILES: a product's tile spans all its output vectors with the weights read from memory, for up to 8
// pixels (the kernels' schedule before the register-blocked tiles), instead of 2-3 vectors held in registers.
#ifndef LKDN_WIDE_TILES
#define LKDN_WIDE_TILES 0
#endif
// LKDN_WIDE_PIXELS: the most pixels in a wide tile.
#ifndef LKDN_WIDE_PIXELS
#define LKDN_WIDE_PIXELS 8
#endif
// LKDN_TEAM_COLUMNS: threads run a block on parts of the image's columns, each on its own (see Block::columns),
// instead of sharing every row's columns and meeting at a barrier per pipeline step.
#ifndef LKDN_TEAM_COLUMNS
#define LKDN_TEAM_COLUMNS 0
#endif
// LKDN_CALLER_SHARE: the calling thread's share of a team's columns, in percent of an equal share (see Team and
// Block::strip_edge).
#ifndef LKDN_CALLER_SHARE
#define LKDN_CALLER_SHARE 100
#endif
// LKDN_STRIP: the widest column strip, in pixels (see Block::run).
#ifndef LKDN_STRIP
#define LKDN_STRIP 256
#endif
// LKDN_GELU_TABLE: GELU from a table of quartics (AVX-512) instead of the rational erf (see gelu).
#ifndef LKDN_GELU_TABLE
#define LKDN_GELU_TABLE 0
#endif
// LKDN_WINOGRAD: the upsampler's 3x3 conv as Winograd F(2,3) along rows (see Tail::up_pairs) instead of 9 products.
#ifndef LKDN_WINOGRAD
#define LKDN_WINOGRAD 0
#endif
// LKDN_SKIP, for benchmarks/kernel_roofline.py --in_place only: a build that leaves out the arithmetic of some parts
// (its output is wrong): 1 the products' multiply-adds, 2 the depthwise convs', 4 GELU, 8 LayerNorm's statistics.
// The time a block saves without a part is what that part costs where it runs, overlapped with the others.
#ifndef LKDN_SKIP
#define LKDN_SKIP 0
#endif
constexpr int kSkip = LKDN_SKIP;
constexpr int kRegisters = LKDN_REGISTERS, kDepthwisePixels = LKDN_DEPTHWISE_PIXELS;
constexpr bool kWideTiles = LKDN_WIDE_TILES != 0;

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
// a / b: a division is ~10x an FMA's cost, so AVX-512 takes the reciprocal estimate (2^-14) and one Newton step
// (to float precision). AVX2's estimate (2^-12) with one or two Newton steps was no faster than its division in
// the whole network and tripled the output's difference from the reference (to 1.9e-5), so it divides.
inline vf divide(vf a, vf b) {
#if defined(__AVX512F__)
    vf r = vf(_mm512_rcp14_ps(__m512(b)));
    r = r * (2.0f - b * r);
    return a * r;
#else
    return a / b;
#endif
}

// x clamped to [lo, hi]
inline vf clamp(vf x, float lo, float hi) {
#if defined(__AVX512F__)
    return vf(_mm512_min_ps(_mm512_max_ps(__m512(x), _mm512_set1_ps(lo)), _mm512_set1_ps(hi)));
#elif defined(__AVX__)  // one instruction each, where the vector `?:` below takes a compare and a blend
    return vf(_mm256_min_ps(_mm256_max_ps(__m256(x), _mm256_set1_ps(lo)), _mm256_set1_ps(hi)));
#else
    x = x < lo ? splat(lo) : x;
    return x > hi ? splat(hi) : x;
#endif
}

#if LKDN_GELU_TABLE && defined(__AVX512F__) && defined(__AVX512DQ__)
// GELU(x) = x / 2 + |x| h(|x|), h(a) = erf(a / sqrt 2) / 2, with h a quartic on each of 32 intervals of |x|: s =
// |x| 31 / 6, at most 31, is rounded to an interval j and the quartic's coefficients in u = s - j come from 32-entry
// tables, one two-register permute each: 16 vector operations where the rational below takes 22. Interval 31 is
// h = 1/2 exactly, so GELU is exactly 0 and x for |x| >= 6. Within 5e-7 max(1, |x|) of torch's exact GELU, as the
// rational is; the coefficients are scripts/gelu_table.py's fit.
alignas(64) constexpr float kGeluTable[5][32] = {
    {// u^0
     2.072761518e-09f, 7.673524320e-02f, 1.506577134e-01f, 2.192601860e-01f, 2.805918157e-01f, 3.334133625e-01f,
     3.772380650e-01f, 4.122655392e-01f, 4.392354488e-01f, 4.592401385e-01f, 4.735345244e-01f, 4.833742082e-01f,
     4.898991585e-01f, 4.940674007e-01f, 4.966325760e-01f, 4.981532991e-01f, 4.990217984e-01f, 4.994996488e-01f,
     4.997528791e-01f, 4.998821914e-01f, 4.999457896e-01f, 4.999759197e-01f, 4.999896884e-01f, 4.999957383e-01f,
     4.999983013e-01f, 4.999993443e-01f, 4.999997616e-01f, 4.999999106e-01f, 4.999999702e-01f, 5.000000000e-01f,
     5.000000000e-01f, 5.000000000e-01f},
    {// u^1
     7.721457630e-02f, 7.578178495e-02f, 7.164093107e-02f, 6.523618847e-02f, 5.721987039e-02f, 4.834327847e-02f,
     3.934197873e-02f, 3.083949350e-02f, 2.328568883e-02f, 1.693564840e-02f, 1.186438836e-02f, 8.006075397e-03f,
     5.203849636e-03f, 3.258070676e-03f, 1.964838943e-03f, 1.141363522e-03f, 6.386333844e-04f, 3.441991284e-04f,
     1.786892244e-04f, 8.935469668e-05f, 4.303945025e-05f, 1.996854189e-05f, 8.923931091e-06f, 3.841458692e-06f,
     1.592818080e-06f, 6.361597684e-07f, 2.447349914e-07f, 9.068924101e-08f, 3.237018120e-08f, 1.112920511e-08f,
     3.685638239e-09f, 6.361584326e-08f},
    {// u^2
     5.417050488e-07f, -1.419505803e-03f, -2.683761530e-03f, -3.665718250e-03f, -4.287015647e-03f, -4.527453799e-03f,
     -4.421360791e-03f, -4.043467343e-03f, -3.489216557e-03f, -2.854916267e-03f, -2.222258830e-03f, -1.649536542e-03f,
     -1.169649768e-03f, -7.933305460e-04f, -5.152354715e-04f, -3.206760739e-04f, -1.913918677e-04f, -1.096001652e-04f,
     -6.024543836e-05f, -3.179985288e-05f, -1.612322012e-05f, -7.854559044e-06f, -3.677360382e-06f, -1.654941343e-06f,
     -7.160403470e-07f, -2.978981684e-07f, -1.191880799e-07f, -4.586536662e-08f, -1.697737950e-08f, -6.045496548e-09f,
     -2.071123495e-09f, 6.220995488e-07f},
    {// u^3
     -4.842679482e-04f, -4.546834389e-04f, -3.797158715e-04f, -2.697214659e-04f, -1.431721466e-04f, -1.946439079e-05f,
     8.515609079e-05f, 1.603663986e-04f, 2.026951552e-04f, 2.147348860e-04f, 2.031816402e-04f, 1.764820190e-04f,
     1.427693205e-04f, 1.085005060e-04f, 7.789694064e-05f, 5.303587386e-05f, 3.433859092e-05f, 2.118636803e-05f,
     1.247618184e-05f, 7.021028068e-06f, 3.779628059e-06f, 1.947969167e-06f, 9.618199783e-07f, 4.552298094e-07f,
     2.066338993e-07f, 8.998808454e-08f, 3.761273959e-08f, 1.509334169e-08f, 5.816390480e-09f, 2.152992451e-09f,
     7.656715817e-10f, 1.990749979e-06f},
    {// u^4
     3.979939720e-06f, 1.342061751e-05f, 2.392933675e-05f, 3.043374636e-05f, 3.205477697e-05f, 2.909626892e-05f,
     2.276819760e-05f, 1.469788094e-05f, 6.581820799e-06f, -2.762205327e-07f, -5.144022452e-06f, -7.865441148e-06f,
     -8.723708561e-06f, -8.238098417e-06f, -6.980407306e-06f, -5.435477306e-06f, -3.940991519e-06f, -2.682177637e-06f,
     -1.722689717e-06f, -1.048080890e-06f, -6.056834536e-07f, -3.331699645e-07f, -1.747274325e-07f, -8.747704072e-08f,
     -4.185250901e-08f, -1.915225134e-08f, -8.388898465e-09f, -3.519193825e-09f, -1.414690587e-09f, -5.451995522e-10f,
     -2.015190237e-10f, 1.988998974e-06f},
};

__attribute__((always_inline)) inline vf gelu(vf x) {
    if constexpr ((kSkip & 4) != 0) return x;
    const __m512 v = __m512(x), a = _mm512_abs_ps(v);
    const __m512 s = _mm512_min_ps(_mm512_mul_ps(a, _mm512_set1_ps(31.0f / 6.0f)), _mm512_set1_ps(31.0f));
    const __m512i j = _mm512_cvt_roundps_epi32(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 u = _mm512_reduce_ps(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // s - round(s)
    auto coefficient = [&](int d) {
        return _mm512_permutex2var_ps(_mm512_load_ps(kGeluTable[d]), j, _mm512_load_ps(kGeluTable[d] + 16));
    };
    constexpr int terms = sizeof(kGeluTable) / sizeof(kGeluTable[0]);
    __m512 h = coefficient(terms - 1);
    for (int d = terms - 2; d >= 0; --d) h = _mm512_fmadd_ps(h, u, coefficient(d));
    return vf(_mm512_fmadd_ps(a, h, _mm512_mul_ps(v, _mm512_set1_ps(0.5f))));
}
#else
// GELU(x) = x (1/2 + erf(x / sqrt 2) / 2), with erf(s) ~ s P(s^2) / Q(s^2), a rational that is within float
// precision of erf for |s| <= 4 and exceeds 1 beyond (erf is 1 there, to float precision). The scaling by
// 1 / sqrt 2 and the halving are folded into P and Q made monic: 12 multiplies and FMAs, 2 additions, 2 clamps
// and one division per vector. x is clamped at |s| = 4.2, where the rational is still finite; its result, at
// +-1/2, so that GELU is exactly 0 and x far out. Within 5e-7 max(1, |x|) of torch's exact GELU
// (tests/test_native_inference.py checks it through `lkdn_gelu`). Always inlined: GCC had left a call per vector
// where GELU feeds a masked store.
__attribute__((always_inline)) inline vf gelu(vf x) {
    if constexpr ((kSkip & 4) != 0) return x;
    const vf t = clamp(x, -5.93969696196699f, 5.93969696196699f), z = t * t;
    vf p = splat(1.654249767399956e-06f);
    p = p * z - 3.362553138454656e-04f;
    p = p * z + 5.099687644745001e-02f;
    p = p * z + 2.763414814923722e+00f;
    p = p * z + 7.135991972160816e+01f;
    p = p * z + 5.737216134392058e+02f;
    p = p * z + 6.251027420505364e+03f;
    vf q = z + 2.929740530288285e+01f;
    q = q * z + 4.621223874538099e+02f;
    q = q * z + 4.049590991946990e+03f;
    q = q * z + 1.566900309348331e+04f;
    return x * (0.5f + clamp(divide(t * p, q), -0.5f, 0.5f));
}
#endif

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

constexpr int kLineFloats = 16;  // floats in a cache line (64 bytes)

// Inputs of a matrix product: pixel p's CIN channels are at base + p * stride, and their weights at w
// (CIN x NV vectors). A product may sum several (the taps of a 3x3 conv, the inputs of a concatenation).
struct Source {
    const float* base;
    int stride;
    const float* w;
};

// Holds v in a register from here on. GCC otherwise folds a load into every FMA that uses the value (one load per
// FMA: the loads, not the FMAs, then set the pace), and spills what it cannot fold.
inline void in_register(vf& v) {
#if defined(__AVX__)
    asm("" : "+v"(v));
#else
    (void)v;
#endif
}

// Hides how p was computed: GCC otherwise keeps one register per offset it can hoist out of a loop (and spills
// them) where one base register and constant offsets from it would do.
template <class T>
inline void opaque(T*& p) {
    asm("" : "+r"(p));
}

// Vectors [V0, V0 + VT) of pixels p0.. p0 + P - 1 through a 1x1 conv (see matmul_pixels) into res: each output
// is summed in the same order whatever the tile, so results do not depend on P or VT. PREFETCH: the first vectors'
// pass also fetches the next P pixels' inputs, which may come from L3 or memory, a cache line per input channel, so
// that the fetches overlap the FMAs. Issued in one burst before the tile (16-105 lines: the tail's c1 reads five
// images), they stalled once the core's line fill buffers were taken: the network took 1.00x-1.05x the time (one
// and two threads, LR 80x120 to 339x510, 2-core Intel Xeon; docs/speed.md).
template <int NV, int CIN, int P, int COUNT, int V0, int VT, bool PREFETCH = false>
inline void matmul_tile(const Source* sources, int count, int p0, const float* bias, vf (&res)[P][NV]) {
    vf acc[P][VT];
    for (int v = 0; v < VT; ++v) {
        const vf b = bias ? load(bias + (V0 + v) * kLanes) : vf{};
        for (int p = 0; p < P; ++p) acc[p][v] = b;
    }
    for (int s = 0; s < ((kSkip & 1) != 0 ? 0 : COUNT > 0 ? COUNT : count); ++s) {
        const Source src = sources[s];
        const float* in = src.base + size_t(p0) * src.stride;
        const float* next = in + size_t(P) * src.stride;
        const int lines = PREFETCH && V0 == 0 ? (P * src.stride + kLineFloats - 1) / kLineFloats : 0;
        for (int i = CIN; i < lines; ++i) __builtin_prefetch(next + i * kLineFloats);  // more lines than channels
        for (int i = 0; i < CIN; ++i) {
            if (i < lines) __builtin_prefetch(next + i * kLineFloats);
            vf wv[VT];
            for (int v = 0; v < VT; ++v) {
                wv[v] = load(src.w + (size_t(i) * NV + V0 + v) * kLanes);
                if constexpr (!kWideTiles) in_register(wv[v]);
            }
            for (int p = 0; p < P; ++p) {
                const vf x = splat(in[size_t(p) * src.stride + i]);
                for (int v = 0; v < VT; ++v) acc[p][v] += x * wv[v];
            }
        }
    }
    for (int p = 0; p < P; ++p)
        for (int v = 0; v < VT; ++v) res[p][V0 + v] = acc[p][v];
}

// Output vectors of one tile of a product: P = kRegisters / VT pixels of them fill the registers with the VT weight
// vectors and one broadcast input beside them (AVX2: 2 x 6 + 2 + 1 of 16). A tile as wide as the output (the
// product's 6-8 vectors for 1-2 pixels) left GCC too few registers: it folded the weights' loads into the FMAs,
// and the loads, not the FMAs, set the pace.
template <int NV>
constexpr int kTileVectors = kWideTiles ? NV : NV % 2 == 0 || NV == 1 ? std::min(NV, 2) : 3;

// Pixels in a tile of a product with NV output vectors.
template <int NV>
constexpr int kTilePixels = kWideTiles ? std::max(1, std::min(LKDN_WIDE_PIXELS, kRegisters / NV)) : std::max(1, kRegisters / kTileVectors<NV>);

template <int NV, int CIN, int P, int COUNT, bool PREFETCH = false, int V0 = 0>
inline void matmul_tiles(const Source* sources, int count, int p0, const float* bias, vf (&res)[P][NV]) {
    if constexpr (V0 < NV) {
        constexpr int VT = std::min(kTileVectors<NV>, NV - V0);
        matmul_tile<NV, CIN, P, COUNT, V0, VT, PREFETCH>(sources, count, p0, bias, res);
        matmul_tiles<NV, CIN, P, COUNT, PREFETCH, V0 + VT>(sources, count, p0, bias, res);
    }
}

// Pixels p0.. p0 + P - 1 through a 1x1 conv with NV vectors of outputs (bias optional), summed over
// `count` sources; each pixel's result goes to epi(pixel, vf[NV]); the next pixels' inputs are fetched meanwhile.
// COUNT > 0 fixes the number of sources at compile time (the common single-source case is measurably faster so).
template <int NV, int CIN, int P, int COUNT, class Epi>
inline void matmul_pixels(const Source* sources, int count, int p0, const float* bias, Epi& epi) {
    vf res[P][NV];
    matmul_tiles<NV, CIN, P, COUNT, true>(sources, count, p0, bias, res);
    for (int p = 0; p < P; ++p) epi(p0 + p, res[p]);
}

// group(x) for whole groups of G columns from `from` on; the columns left before `to` go as one more group,
// group(to - G), overlapping the one before it, where [floor, to) holds G columns (every epilogue stores a function
// of its own column's inputs, so a column computed twice is stored twice the same), else single(x) for each (one
// at a time, each would be a chain of dependent FMAs).
template <int G, class Group, class Single>
inline void in_groups(int floor, int from, int to, Group group, Single single) {
    int x = from;
    for (; x + G <= to; x += G) group(x);
    if (x < to && to - floor >= G)
        group(to - G);
    else
        for (; x < to; ++x) single(x);
}

template <int NV, int CIN, int COUNT = 0, class Epi>
void matmul_row(const Source* sources, int count, int n, const float* bias, Epi epi) {
    constexpr int P = kTilePixels<NV>;
    in_groups<P>(
        0, 0, n, [&](int p) { matmul_pixels<NV, CIN, P, COUNT>(sources, count, p, bias, epi); },
        [&](int p) { matmul_pixels<NV, CIN, 1, COUNT>(sources, count, p, bias, epi); });
}

template <int NV, int CIN, class Epi>
void matmul_row(const float* in, int stride, int n, const float* w, const float* bias, Epi epi) {
    const Source source{in, stride, w};
    matmul_row<NV, CIN, 1>(&source, 1, n, bias, epi);
}

constexpr int kPadX = 6;  // zero columns left and right of every ring row: the dilated 5x5's reach
// Rings start on a cache line, and their rows of whole vectors are whole lines then (AVX-512): a vector that
// straddles two lines costs two loads, and the depthwise convs, which load every input vector, ran 1.1x-1.9x
// slower on rings 16 bytes off a line, where std::vector placed them (benchmarks/kernel_roofline.py --ring_offset 4).

// The first place from p on that starts a cache line (at most kLineFloats - 1 floats on).
inline float* on_line(float* p) {
    const uintptr_t at = reinterpret_cast<uintptr_t>(p), line = kLineFloats * sizeof(float);
    return reinterpret_cast<float*>((at + line - 1) / line * line);
}

// The last `rows` rows of one step's output, each W pixels of `lanes` floats, with zero side columns.
struct Ring {
    int rows, width, lanes;
    float* data;
    float* row(int y) const { return data + (size_t(y % rows) * (width + 2 * kPadX) + kPadX) * lanes; }
    // its memory, rounded up to whole cache lines, so that the next ring starts on one too
    size_t floats() const { return (size_t(rows) * (width + 2 * kPadX) * lanes + kLineFloats - 1) / kLineFloats * kLineFloats; }
    // Zeroes every row's columns left of `from` and from `to` on, side columns included: the columns outside
    // the image, which no step writes and the depthwise convs read as their zero padding.
    void zero_outside(int from, int to) const {
        for (int r = 0; r < rows; ++r) {
            float* at = data + size_t(r) * (width + 2 * kPadX) * lanes;  // column -kPadX
            std::fill(at, at + size_t(kPadX + from) * lanes, 0.0f);
            std::fill(at + size_t(kPadX + to) * lanes, at + size_t(width + 2 * kPadX) * lanes, 0.0f);
        }
    }
};

// The calling thread's memory for rings, at least `floats` of it, kept between calls: allocating and zeroing
// it for every block cost more than a block of a small image takes to run. Its old contents are never read
// (a step reads only rows and columns written before in the same call, or those `zero_outside` zeroes).
inline float* ring_memory(size_t floats) {
    static thread_local std::vector<float> memory;
    if (memory.size() < floats + kLineFloats) memory.resize(floats + kLineFloats);
    return on_line(memory.data());
}

// Places `rings` one after another from `at`; returns where the next data may go.
float* lay_out(float* at, std::initializer_list<Ring*> rings) {
    for (Ring* r : rings) {
        r->data = at;
        at += r->floats();
    }
    return at;
}

size_t floats(std::initializer_list<Ring*> rings) {
    size_t total = 0;
    for (const Ring* r : rings) total += r->floats();
    return total;
}

// LKDN_PROFILE_WAITS=1: the barrier counts the time each member waits at it (benchmarks/barrier_waits.py reads
// it through lkdn_barrier_wait_ns); the build the network runs leaves it out.
#ifndef LKDN_PROFILE_WAITS
#define LKDN_PROFILE_WAITS 0
#endif
constexpr int kProfiledMembers = 64;
std::atomic<long> g_wait_ns[kProfiledMembers];
thread_local int t_member = 0;  // the calling thread's member number in the team it runs in

// Returns once done() holds, spinning (what other threads do takes microseconds, too short to sleep) and yielding
// the core when it is late (a busy machine may have descheduled the thread it waits for).
template <class Done>
inline void spin_until(Done done) {
    for (int spins = 0; !done(); ++spins) {
        if (spins < 4000) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            std::this_thread::yield();
        }
    }
}

// Threads that work on one image together: `run` starts them, `wait` is the barrier between pipeline steps.
class Team {
  public:
    explicit Team(int size) : size_(std::max(1, size)) {}
    int size() const { return size_; }

    // Runs fn(member) on every member at once. Built with OpenMP (loaded beside torch, that is torch's own
    // runtime), the members are the threads of torch's pool: its workers spin for a while after each torch op,
    // and threads of our own would compete with them for the cores. The runtime may grant fewer threads than
    // asked (say, when called from inside a parallel region): the team is then that size.
    template <class Fn>
    void run(Fn fn) {
#if defined(_OPENMP)
        if (size_ > 1) {
#pragma omp parallel num_threads(size_)
            {
#pragma omp single
                size_ = omp_get_num_threads();  // the end of `single` is a barrier: every member sees it
                t_member = omp_get_thread_num();
                fn(t_member);
            }
            return;
        }
#endif
        std::vector<std::thread> others;
        for (int m = 1; m < size_; ++m) others.emplace_back([&fn, m] {
            t_member = m;
            fn(m);
        });
        t_member = 0;
        fn(0);
        for (auto& t : others) t.join();
    }

    // Returns once every member has called it: a spinning barrier (a pipeline step takes microseconds, too
    // short to sleep), yielding the core when a member is late (a busy machine may have descheduled it).
    void wait() {
        if (size_ == 1) return;
        if constexpr (LKDN_PROFILE_WAITS != 0) {
            const auto start = std::chrono::steady_clock::now();
            spin();
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
            g_wait_ns[std::min(t_member, kProfiledMembers - 1)] += long(ns.count());
        } else {
            spin();
        }
    }

    // Lays out the team's shared `rings` and, after them, a row of `row` floats per member, and returns member
    // m's row once every member may use them: member 0 takes the memory from its `ring_memory` (`memory` hands it
    // to the others) and zeroes the rings' columns outside [from, to), the image.
    float* share_rings(std::initializer_list<Ring*> rings, size_t row, int from, int to, int m, float*& memory) {
        if (m == 0) {
            memory = ring_memory(floats(rings) + size_t(size_) * row);
            lay_out(memory, rings);
            for (const Ring* r : rings) r->zero_outside(from, to);
        }
        wait();
        return lay_out(memory, rings) + size_t(m) * row;
    }

    // Member m's share [lo, hi) of the columns [a, b): equal shares, except that member 0 (the calling thread)
    // takes LKDN_CALLER_SHARE percent of an equal share's columns (100: an equal share).
    void share(int m, int a, int b, int& lo, int& hi) const {
        lo = a + cut(b - a, m);
        hi = a + cut(b - a, m + 1);
    }

  private:
    void spin() {
        const int generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
            return;
        }
        spin_until([&] { return generation_.load(std::memory_order_acquire) != generation; });
    }

    // The first column of member m's share of n columns.
    int cut(int n, int m) const {
        if (m == 0) return 0;
        const int64_t total = 100 * int64_t(size_ - 1) + LKDN_CALLER_SHARE;  // member 0 weighs LKDN_CALLER_SHARE
        return int((int64_t(n) * (LKDN_CALLER_SHARE + 100 * int64_t(m - 1))) / total);
    }
    int size_;
    std::atomic<int> arrived_{0}, generation_{0};
};

// Returns once `counter` reaches `value` (another thread's progress).
inline void wait_until(const std::atomic<long>& counter, long value) {
    spin_until([&] { return counter.load(std::memory_order_acquire) >= value; });
}

// Threads for an image w columns wide: each takes at least 16 columns of every row (fewer are not worth a barrier).
inline int team_size(int threads, int w) { return std::max(1, std::min(threads, w / 16)); }

// bias + depthwise KxK conv (dilation DIL) of `src` around row y, columns [x0, x1), rows outside [0, h) being
// zero; vector v of column x's result goes to epi(x - x0, v, vf). Channels are independent, so one vector of
// them at a time, over a chunk of columns small enough to stay in L1: its accumulators and weights fit the
// registers, and each input vector is loaded once for every tap that reaches it.
template <int NV, int K, int DIL, class Epi>
void depthwise_row(const Ring& src, int y, int h, int x0, int x1, const float* w, const float* bias, Epi epi) {
    constexpr int L = NV * kLanes, Q = kDepthwisePixels, R = K / 2 * DIL, kChunk = 4 * Q;
    const float* rows[K];
    int taps = 0, first = 0;
    for (int ky = 0; ky < K; ++ky) {
        const int yy = y + (ky - K / 2) * DIL;
        if (yy < 0 || yy >= h) continue;
        if (taps == 0) first = ky;
        rows[taps++] = src.row(yy) - R * L;
    }
    if constexpr ((kSkip & 2) != 0) taps = 0;
    auto run = [&](int x, int v, auto pixels) {
        constexpr int N = decltype(pixels)::value;
        vf acc[N];
        const vf b = load(bias + v * kLanes);
        for (int q = 0; q < N; ++q) acc[q] = b;
        for (int t = 0; t < taps; ++t) {
            const float* wt = w + size_t(first + t) * K * L + v * kLanes;  // valid rows are contiguous in ky
            const float* px = rows[t] + size_t(x) * L + v * kLanes;
            opaque(px);  // one base register per tap, its inputs at constant offsets from it
            vf wk[K];
            for (int kx = 0; kx < K; ++kx) wk[kx] = load(wt + kx * L);
#pragma GCC unroll 32
            for (int j = 0; j < N + (K - 1) * DIL; ++j) {
                vf in = load(px + j * L);
                in_register(in);
#pragma GCC unroll 8
                for (int kx = 0; kx < K; ++kx) {
                    const int q = j - kx * DIL;
                    if (q >= 0 && q < N) acc[q] += wk[kx] * in;
                }
            }
        }
        for (int q = 0; q < N; ++q) epi(x + q - x0, v, acc[q]);
    };
    for (int c0 = x0; c0 < x1; c0 += kChunk) {
        const int c1 = std::min(x1, c0 + kChunk);
        for (int v = 0; v < NV; ++v)
            in_groups<Q>(
                x0, c0, c1, [&](int x) { run(x, v, std::integral_constant<int, Q>{}); },
                [&](int x) { run(x, v, std::integral_constant<int, 1>{}); });
    }
}

// Vector v of pixel p's C channels into rows of C floats (unpadded): stored whole, spilling its pad lanes into
// pixel p + 1, which is stored after it (pixels come in order), except at the row's `last` pixel, stored masked
// (a masked store costs ~10 plain ones on some CPUs: AMD's AVX2).
template <int C>
inline void store_channels(float* row, int p, int v, vf a, int last) {
    const int n = std::min(kLanes, C - v * kLanes);
    float* to = row + size_t(p) * C + v * kLanes;
    if (n == kLanes || p < last)
        store(to, a);
    else
        store_lanes(to, a, 0, n);
}

// The lags of a pipeline of N row steps (step i computes row k - lag[i] at pipeline step k) where step i reads
// the rows up to reach[i] around its own of step i - 1's output: a step's lag is its input's plus that reach, plus
// one pipeline step in a team, so that a step reads only rows finished before the team's last barrier.
template <int N>
struct Lags {
    const int (&reach)[N];
    int lag[N] = {0};
    Lags(const int (&reach_)[N], bool team) : reach(reach_) {
        for (int i = 1; i < N; ++i) lag[i] = lag[i - 1] + reach[i] + team;
    }
    // ring rows for step i's output: from the oldest row step i + 1 reads to the newest step i writes
    int ring(int i) const { return lag[i + 1] - lag[i] + reach[i + 1] + 1; }
};

template <int NV>
struct Store {  // the plain epilogue: the result as it is, `lanes` floats per pixel
    float* dst;
    int lanes;
    void operator()(int p, int v, vf a) const { store(dst + size_t(p) * lanes + v * kLanes, a); }
    void operator()(int p, const vf* a) const {
        for (int v = 0; v < NV; ++v) (*this)(p, v, a[v]);
    }
};

template <int NV>
struct StoreGelu {
    float* dst;
    void operator()(int p, int v, vf a) const { store(dst + (size_t(p) * NV + v) * kLanes, gelu(a)); }
    void operator()(int p, const vf* a) const {
        for (int v = 0; v < NV; ++v) (*this)(p, v, a[v]);
    }
};

constexpr int kStrip = LKDN_STRIP;

template <int C>
struct Block {
    using S = Widths<C>;
    static constexpr int NC = S::cp / kLanes, NG = S::gp / kLanes, ND = S::dp / kLanes;

    // The distillation step's product: lanes [0, c) are the refine branch before its depthwise conv, lanes
    // [c, c + d) the distilled features, which get GELU and go to their slot of the dist row. Only a vector
    // that starts before the slot is stored masked (a masked store costs ~10 plain ones on some CPUs: AMD's
    // AVX2); the last one spills its pad lanes (fewer than d) into the next slot, which a later step writes.
    struct Distill {
        float* t;
        float* dist;
        void operator()(int p, const vf* a) const {
            for (int v = 0; v < NC; ++v) store(t + (size_t(p) * NC + v) * kLanes, a[v]);
            float* to = dist + size_t(p) * S::dist - S::c;  // lane c of `a` goes to to[c]
            for (int v = S::c / kLanes; v < NG; ++v) {
                if (v * kLanes < S::c)
                    store_lanes(to + v * kLanes, gelu(a[v]), S::c - v * kLanes, kLanes);
                else
                    store(to + v * kLanes, gelu(a[v]));
            }
        }
    };

    struct Times {  // the attention product: a * u
        const float* u;
        float* dst;
        void operator()(int p, int v, vf a) const {
            store(dst + (size_t(p) * NC + v) * kLanes, a * load(u + (size_t(p) * NC + v) * kLanes));
        }
    };

    // LayerNorm over the channels, then + x, stored by `store_channels` (`last`: the row's last pixel)
    struct NormResidual {
        const float *x, *gamma, *beta, *real;  // real: 1 in the lanes of real channels, else 0
        float* out;
        int last;
        void operator()(int p, const vf* a) const {  // pad lanes of `a` are exactly zero (zero weights)
            vf sum{};
            for (int v = 0; v < NC; ++v) sum += a[v];
            const float mean = (kSkip & 8) != 0 ? 0.0f : sum_lanes(sum) / S::c;
            vf centred[NC], sq{};
            for (int v = 0; v < NC; ++v) {
                centred[v] = (a[v] - mean) * load(real + v * kLanes);  // only real channels count
                sq += centred[v] * centred[v];
            }
            const float rstd = (kSkip & 8) != 0 ? 1.0f : 1.0f / __builtin_sqrtf(sum_lanes(sq) / S::c + eps);
            for (int v = 0; v < NC; ++v) {
                const int n = std::min(kLanes, S::c - v * kLanes);
                const size_t at = size_t(p) * S::c + v * kLanes;
                const vf y = centred[v] * rstd * load(gamma + v * kLanes) + load(beta + v * kLanes);
                store_channels<S::c>(out, p, v, y + load_lanes(x + at, n), last);
            }
        }
        float eps;
    };

    // Columns a step reads left of its strip, computed by the strip before: `ring`, step `step`'s output, hands on
    // its `cols` columns that the strip after reads, once step `ready` has run; `side_in` holds the strip before's
    // for every row, `side_out` this one's. The distilled features' 4 carried columns are ready after step 3:
    // what the strip before computes of them, d1-d3, is done (step 5 computes r4 there in the strip after, as steps
    // 2 and 3 its last columns of d2 and d3, after the copy), so with team=columns the strip after runs 3 pipeline
    // steps behind the strip before instead of 5.
    struct Carried {
        Ring* ring;
        int step, ready, cols;
        const float* side_in;
        float* side_out;
    };
    // Where a strip's carried columns come from and go (`in` may be `out`: a row is read before it is written),
    // and, for strips run by different threads at once (see columns), the counts of pipeline steps whose
    // columns are out: `ready` the strip before's (wait for it), `done` this one's (publish it), from `base` on.
    struct Hand {
        const float* in;
        float* out;
        const std::atomic<long>* ready;
        std::atomic<long>* done;
        long base;
    };
    // the columns each ring hands on (strip's `carried` order): the next step reads its reach and the offsets'
    // difference left of its own columns (2 for a 3x3 conv's input, 4 and 12 for the 5x5 ones'); step 7 reads u
    // and step 5 the distilled features at their own columns (8 and 4 left of those who wrote them)
    static constexpr int kCarriedColumns[8] = {2, 2, 2, 2, 4, 4, 8, 12};
    // where carried ring i's columns start in a strip's side buffer (all rows of ring 0, then of ring 1, ...)
    static constexpr size_t side_offset(int i, int h) {
        constexpr int lanes[8] = {S::cp, S::cp, S::cp, S::dp, S::dist, S::cp, S::cp, S::cp};
        size_t row = 0;
        for (int j = 0; j < i; ++j) row += size_t(kCarriedColumns[j]) * lanes[j];
        return size_t(h) * row;
    }
    static constexpr size_t side_floats(int h) { return side_offset(8, h); }  // what every row of a strip hands on

    // Member `m` of `team` runs its share of the block over the strip of columns [c0, c1) of one h x w image (all
    // rows). The rings live in member 0's `ring_memory`, shared by the team through `memory`. A step reads a few
    // columns beside those it computes (the dilated conv 6 on each side), so step k computes columns [c0 - off[k],
    // c1 - off[k]) of the image (off: the reaches of the steps before it, added up; the first and last strips
    // reach the image's edges): what it reads left of those, the strip before computed and copied to `side` for
    // every row, and this strip copies it back into its rings' rows as each row starts, and its own columns for
    // the next strip out as each row is done. So no column is computed twice (strips of 128 columns that
    // recomputed them took about 1.02x the time, measured on a 2-core Intel Xeon: docs/speed.md), and the result
    // is the same as one strip's. Ring rows hold the columns from c0 - 12 on.
    static void strip(const Params& pr, const float* x, float* out, int h, int w, int c0, int c1, float eps,
                      Team& team, int m, float*& memory, const Hand& hand) {
        const int lw = c1 - c0 + 12, base = c0 - 12;
        // one thread's lags: 0 1 2 3 4 6 12, which are also the steps' column offsets `off`
        static constexpr int reach[7] = {0, 1, 1, 1, 1, 2, 6};
        const bool in_team = team.size() > 1;
        const Lags<7> lags(reach, in_team), offsets(reach, false);
        const int(&lag)[7] = lags.lag;
        const int(&off)[7] = offsets.lag;
        Ring t[3] = {{lags.ring(0), lw, S::cp, nullptr}, {lags.ring(1), lw, S::cp, nullptr},
                     {lags.ring(2), lw, S::cp, nullptr}};
        // dist: written from step 1 on, read by step 5 (in a team one row longer: its rows are copied out in the
        // pipeline step after step 5 read them); u: written by step 5, read by step 7
        Ring t4{lags.ring(3), lw, S::dp, nullptr}, dist{lag[4] + 1 + in_team, lw, S::dist, nullptr};
        Ring u{lag[6] - lag[4] + 1, lw, S::cp, nullptr}, a0{lags.ring(4), lw, S::cp, nullptr};
        Ring a1{lags.ring(5), lw, S::cp, nullptr};
        const auto rings = {&t[0], &t[1], &t[2], &t4, &dist, &u, &a0, &a1};
        // this member's row of a depthwise step's output, by local column (members' shares of different steps
        // overlap)
        float* scratch =
            team.share_rings(rings, size_t(lw) * S::cp, std::max(0, -base), std::min(lw, w - base), m, memory);
        float real[S::cp] = {};
        std::fill(real, real + S::c, 1.0f);

        int lo[7], hi[7], n[7];  // this member's local columns of each step
        for (int step = 0; step < 7; ++step) {
            const int a = c0 == 0 ? 0 : c0 - off[step], b = c1 == w ? w : c1 - off[step];
            team.share(m, a - base, b - base, lo[step], hi[step]);
            n[step] = hi[step] - lo[step];
        }
        Ring* const carried_rings[8] = {&t[0], &t[1], &t[2], &t4, &dist, &a0, &u, &a1};
        static constexpr int steps[8] = {0, 1, 2, 3, 0, 4, 4, 5}, ready[8] = {0, 1, 2, 3, 2, 4, 4, 5};
        Carried carried[8];
        for (int i = 0; i < 8; ++i) {
            const size_t at = side_offset(i, h);
            carried[i] = {carried_rings[i], steps[i], ready[i], kCarriedColumns[i], hand.in + at, hand.out + at};
        }
        // The members take the rings in turn. A ring's row is copied into when pipeline step k starts it (columns
        // no member computes, read in a later pipeline step, or later in this one by one thread) ...
        auto carry_in = [&](int k) {
            for (int i = m; i < 8; i += team.size()) {
                const Carried& c = carried[i];
                const int y = k - lag[c.step];
                if (y < 0 || y >= h) continue;
                if (hand.ready) wait_until(*hand.ready, hand.base + y + lag[c.ready] + 1);
                const size_t n = size_t(c.cols) * c.ring->lanes;
                std::memcpy(c.ring->row(y) + (c0 - off[c.step] - c.cols - base) * c.ring->lanes, c.side_in + y * n,
                            n * sizeof(float));
            }
        };
        // ... and out of when pipeline step k ends, once the row is complete (a team completes it at the barrier
        // before: one pipeline step later)
        auto carry_out = [&](int k) {
            for (int i = m; i < 8; i += team.size()) {
                const Carried& c = carried[i];
                const int y = k - lag[c.ready] - in_team;
                if (y < 0 || y >= h) continue;
                const size_t n = size_t(c.cols) * c.ring->lanes;
                std::memcpy(c.side_out + y * n, c.ring->row(y) + (c1 - off[c.step] - c.cols - base) * c.ring->lanes,
                            n * sizeof(float));
            }
        };
        const bool carries_in = c0 > 0, carries_out = c1 < w;
        auto image_row = [&](auto* image, int y, int step) {
            return image + (size_t(y) * w + base + lo[step]) * S::c;
        };
        for (int k = 0; k < h + lag[6]; ++k) {
            if (carries_in) carry_in(k);
            auto active = [&](int step) { return k - lag[step] >= 0 && k - lag[step] < h; };
            // steps 1-3: a distillation step on the input (step 1) or on the previous refined features
            for (int i = 0; i < 3; ++i) {
                const int y = k - lag[i];
                if (!active(i)) continue;
                const Distill epi{t[i].row(y) + lo[i] * S::cp, dist.row(y) + lo[i] * S::dist + i * S::d};
                if (i == 0) {
                    matmul_row<NG, S::c>(image_row(x, y, 0), S::c, n[0], pr.g_w[0], pr.g_b[0], epi);
                } else {
                    float* r = scratch + lo[i] * S::cp;
                    depthwise_row<NC, 3, 1>(t[i - 1], y, h, lo[i], hi[i], pr.dw_w[i - 1], pr.dw_b[i - 1], StoreGelu<NC>{r});
                    matmul_row<NG, S::c>(r, S::cp, n[i], pr.g_w[i], pr.g_b[i], epi);
                }
            }
            // step 4: r3, then c4's pointwise half
            if (const int y = k - lag[3]; active(3)) {
                float* r = scratch + lo[3] * S::cp;
                depthwise_row<NC, 3, 1>(t[2], y, h, lo[3], hi[3], pr.dw_w[2], pr.dw_b[2], StoreGelu<NC>{r});
                matmul_row<ND, S::c>(r, S::cp, n[3], pr.c4_w, nullptr, Store<ND>{t4.row(y) + lo[3] * S::dp, S::dp});
            }
            // step 5: r4 completes the distilled features; c5, then LKA's pointwise conv
            if (const int y = k - lag[4]; active(4)) {
                float* d = dist.row(y) + lo[4] * S::dist;
                depthwise_row<ND, 3, 1>(t4, y, h, lo[4], hi[4], pr.dw4_w, pr.dw4_b, [d](int p, int v, vf a) {
                    // the last slot: only its last vector, which would spill into the next pixel, is masked
                    float* to = d + size_t(p) * S::dist + 3 * S::d + v * kLanes;
                    if (v < ND - 1)
                        store(to, gelu(a));
                    else
                        store_lanes(to, gelu(a), 0, S::d - v * kLanes);
                });
                float* uy = u.row(y) + lo[4] * S::cp;
                matmul_row<NC, S::dist>(d, S::dist, n[4], pr.c5_w, pr.c5_b, Store<NC>{uy, S::cp});
                matmul_row<NC, S::c>(uy, S::cp, n[4], pr.lka_w, pr.lka_b, Store<NC>{a0.row(y) + lo[4] * S::cp, S::cp});
            }
            // step 6: LKA's 5x5 depthwise
            if (const int y = k - lag[5]; active(5))
                depthwise_row<NC, 5, 1>(a0, y, h, lo[5], hi[5], pr.lka_dw, pr.lka_db,
                                        Store<NC>{a1.row(y) + lo[5] * S::cp, S::cp});
            // step 7: LKA's dilated 5x5 times u, c6, LayerNorm over channels, residual
            if (const int y = k - lag[6]; active(6)) {
                float* att = scratch + lo[6] * S::cp;
                depthwise_row<NC, 5, 3>(a1, y, h, lo[6], hi[6], pr.lka_ddw, pr.lka_ddb, Times{u.row(y) + lo[6] * S::cp, att});
                const NormResidual epi{image_row(x, y, 6), pr.ln_w, pr.ln_b, real, image_row(out, y, 6), n[6] - 1, eps};
                matmul_row<NC, S::c>(att, S::cp, n[6], pr.c6_w, pr.c6_b, epi);
            }
            if (carries_out) carry_out(k);
            if (hand.done) hand.done->store(hand.base + k + 1, std::memory_order_release);
            team.wait();  // the next pipeline step reads what every member wrote in this one
        }
    }

    // Column strips of at most kStrip pixels keep the rings in cache (measured), and at least 32 (the first strip's
    // last step computes 12 columns fewer than it has); at least `least` of them where w allows (least <= w / 32).
    static int strip_count(int w, int least) { return std::max(least, std::min((w + kStrip - 1) / kStrip, w / 32)); }

    static void run(const float* x, float* out, int n, int h, int w, const float* params, float eps, int threads) {
        const Params pr(S{}, params);
        if (LKDN_TEAM_COLUMNS && threads > 1 && w >= 64) return columns(pr, x, out, n, h, w, eps, threads);
        const int strips = strip_count(w, 1);
        // the columns strips hand on, for every row (see Carried), kept between calls by the calling thread
        static thread_local std::vector<float> side;
        if (strips > 1 && side.size() < side_floats(h)) side.resize(side_floats(h));
        const Hand hand{side.data(), side.data(), nullptr, nullptr, 0};  // (`side` names each thread's own)
        Team team(team_size(threads, w));
        float* memory = nullptr;
        team.run([&](int m) {
            for (int i = 0; i < n; ++i) {
                const size_t offset = size_t(i) * h * w * S::c;
                for (int s = 0; s < strips; ++s)
                    strip(pr, x + offset, out + offset, h, w, w * s / strips, w * (s + 1) / strips, eps, team, m,
                          memory, hand);
            }
        });
    }

    // The first column of strip j of an image w columns wide cut into `strips` that `members` take in turn: the
    // calling thread's strips (j % members == 0) weigh LKDN_CALLER_SHARE and the others 100, as in Team::share,
    // where every strip keeps at least 32 columns; else equal strips. The first strip has the least work (its steps
    // compute fewer columns than it has and it takes none from a strip before): a share above 100 evens out the
    // work of two strips, but the second waits for the first one's rows (on a 2-core Xeon, 110 was no faster).
    static int strip_edge(int j, int strips, int members, int w) {
        constexpr int64_t least = std::min(100, LKDN_CALLER_SHARE);  // the lightest strip's weight
        int64_t before = 0, total = 0;
        for (int i = 0; i < strips; ++i) {
            const int64_t weight = i % members == 0 ? LKDN_CALLER_SHARE : 100;
            before += i < j ? weight : 0;
            total += weight;
        }
        if (w * least < 33 * total) return int(int64_t(w) * j / strips);  // a strip of the split would be narrower
        return int(w * before / total);
    }

    // LKDN_TEAM_COLUMNS: the members take the image's column strips in turn (strip j: member j % members) and run
    // each alone, with rings of their own and no barrier but one per image. Strip j takes the columns it reads left
    // of its own from strip j - 1, run at the same time by another member: it waits for each row's (Hand::ready),
    // a few pipeline steps behind. Every strip is behind the one before, so a member's next strip writes its carried
    // rows only after they were read. The result is the same as one thread's.
    static void columns(const Params& pr, const float* x, float* out, int n, int h, int w, float eps, int threads) {
        const int size = std::min({threads, w / 32, kProfiledMembers});
        const int strips = strip_count(w, size);
        static thread_local std::vector<float> side;  // each member's strips' carried columns
        if (side.size() < size * side_floats(h)) side.resize(size * side_floats(h));
        float* const sides = side.data();  // (`side` names each thread's own)
        std::vector<std::atomic<long>> done(strips);
        Team team(size);
        team.run([&](int m) {
            const int members = team.size();
            auto side_of = [&](int j) { return sides + (j % members) * side_floats(h); };  // strip j's side_out
            float* memory = nullptr;
            Team alone(1);
            for (int i = 0; i < n; ++i) {
                const size_t offset = size_t(i) * h * w * S::c;
                const long base = long(i) * (h + 64);  // more pipeline steps than an image has
                for (int j = m; j < strips; j += members) {
                    const Hand hand{side_of(j > 0 ? j - 1 : j), side_of(j), j > 0 ? &done[j - 1] : nullptr,
                                    j < strips - 1 ? &done[j] : nullptr, base};
                    strip(pr, x + offset, out + offset, h, w, strip_edge(j, strips, members, w),
                          strip_edge(j + 1, strips, members, w), eps, alone, 0, memory, hand);
                }
                team.wait();  // an image's carried columns are read before the next image's are written
            }
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
        void operator()(int p, int v, vf a) const {
            const int n = std::min(kLanes, S::c - v * kLanes);
            store(dst + (size_t(p) * NC + v) * kLanes, a + load_lanes(feat + size_t(p) * S::c + v * kLanes, n));
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
                float* to = out + colour * plane + size_t(i) * width + 4 * p;
#if defined(__AVX__) && !defined(__AVX512F__)  // a 128-bit half: a plain store, where a masked one is slow
                const __m256 both = __m256(a[v]);
                _mm_storeu_ps(to, lane == 0 ? _mm256_castps256_ps128(both) : _mm256_extractf128_ps(both, 1));
#else
                store_lanes(to - lane, a[v], lane, lane + 4);
#endif
            }
        }
    };

    // The upsampler's weights for Winograd F(2,3) along rows: for each kernel row ky, with g0, g1, g2 its taps'
    // C x kUp matrices, G0 = g0, G1 = (g0 + g1 + g2) / 2, G2 = (g0 - g1 + g2) / 2, G3 = g2, stored [ky][k][C][kUp].
    static std::vector<float> winograd_weights(const float* up_w) {
        constexpr size_t n = size_t(S::c) * kUp;
        std::vector<float> g(12 * n);
        for (int ky = 0; ky < 3; ++ky) {
            const float *g0 = up_w + (3 * ky) * n, *g1 = g0 + n, *g2 = g1 + n;
            float* to = g.data() + 4 * ky * n;
            for (size_t i = 0; i < n; ++i) {
                to[i] = g0[i];
                to[n + i] = (g0[i] + g1[i] + g2[i]) * 0.5f;
                to[2 * n + i] = (g0[i] - g1[i] + g2[i]) * 0.5f;
                to[3 * n + i] = g2[i];
            }
        }
        return g;
    }

    // Winograd F(2,3) along rows for the upsampler's 3x3 conv: with d0..d3 the input columns x - 1.. x + 2 of a
    // kernel row, m0 = (d0 - d2) G0, m1 = (d1 + d2) G1, m2 = (d2 - d1) G2, m3 = (d1 - d3) G3 summed over the
    // kernel rows give column x as m0 + m1 + m2 and column x + 1 as m1 - m2 - m3 (plus bias): 4 products per pair
    // of columns where the direct conv takes 6. Pairs start on even columns, whichever member computes them, so
    // that a team's result is the same as one thread's.
    // The transformed inputs (d0 - d2, d1 + d2, d2 - d1, d1 - d3) of z's row y for pairs [p0, p1), at
    // to + pair * 4 * cp: computed once per row, read by three output rows.
    static void transform_row(const Ring& z, int y, int p0, int p1, float* to) {
        const float* row = z.row(y);
        for (int pair = p0; pair < p1; ++pair) {
            const float* at = row + size_t(2 * pair - 1) * S::cp;
            float* d = to + size_t(pair) * 4 * S::cp;
            for (int v = 0; v < NC; ++v) {
                const vf d0 = load(at + v * kLanes), d1 = load(at + S::cp + v * kLanes),
                         d2 = load(at + 2 * S::cp + v * kLanes), d3 = load(at + 3 * S::cp + v * kLanes);
                store(d + v * kLanes, d0 - d2);
                store(d + S::cp + v * kLanes, d1 + d2);
                store(d + 2 * S::cp + v * kLanes, d2 - d1);
                store(d + 3 * S::cp + v * kLanes, d1 - d3);
            }
        }
    }

    // Output columns 2 pair.. 2 pair + 2 P - 1 of one row through the upsampler from the transformed inputs of the
    // `count` kernel rows `rows[i]` (kernel row ky[i]); columns from w on are not stored.
    template <int P, class Epi>
    static void up_pairs(const float* const* rows, const int* ky, int count, int pair, int w, const float* g,
                         const float* bias, Epi& epi) {
        vf m[4][P][NU];
        for (int k = 0; k < 4; ++k) {
            Source sources[3];
            for (int i = 0; i < count; ++i)
                sources[i] = {rows[i] + (size_t(pair) * 4 + k) * S::cp, 4 * S::cp, g + size_t(4 * ky[i] + k) * S::c * kUp};
            matmul_tiles<NU, S::c, P, 0>(sources, count, 0, k == 1 ? bias : nullptr, m[k]);
        }
        for (int j = 0; j < P; ++j) {
            vf left[NU], right[NU];
            for (int v = 0; v < NU; ++v) {
                left[v] = m[0][j][v] + m[1][j][v] + m[2][j][v];
                right[v] = m[1][j][v] - m[2][j][v] - m[3][j][v];
            }
            const int x = 2 * (pair + j);
            epi(x, left);
            if (x + 1 < w) epi(x + 1, right);
        }
    }

    // Member `m` of `team` runs its share of the tail on output rows [y0, y1) of one image (from the rows of c1 and c2
    // they read: 2 and 1 more on each side, within the image); the rings live in member 0's `ring_memory`, shared by the team through
    // `memory`. `winograd`: the upsampler's weights for up_pairs, if it is used.
    static void image(const TailParams& pr, const float* const* hidden, int blocks, const float* feat, float* out, int h,
                      int w, Team& team, int m, float*& memory, const float* winograd, int y0, int y1) {
        static constexpr int reach[3] = {0, 1, 1};  // c2's depthwise 3x3, then the upsampler's 3x3
        const Lags<3> lags(reach, team.size() > 1);
        const int(&lag)[3] = lags.lag;
        Ring t{lags.ring(0), w, S::cp, nullptr}, z{lags.ring(1), w, S::cp, nullptr};
        const auto rings = {&t, &z};
        // this member's c1 output row, and for Winograd the transformed rows of z it reads (3, for all pairs)
        const int pairs = (w + 1) / 2;
        const size_t transformed = size_t(pairs) * 4 * S::cp;
        float* scratch =
            team.share_rings(rings, size_t(w) * S::cp + (LKDN_WINOGRAD ? 3 * transformed : 0), 0, w, m, memory);
        int lo, hi;
        team.share(m, 0, w, lo, hi);
        const int cols = hi - lo;
        const int p0 = (lo + 1) / 2, p1 = (hi + 1) / 2;  // this member's pairs: from its first even column on
        int transformed_to = -1;  // the last row of z transformed
        std::vector<Source> sources(std::max(blocks, 9));
        // the upsampler's output row y: 9 products, one per tap
        auto direct_row = [&](int y) {
            int count = 0;
            for (int ky = 0; ky < 3; ++ky) {
                if (y + ky - 1 < 0 || y + ky - 1 >= h) continue;  // zero padding: the tap adds nothing
                for (int kx = 0; kx < 3; ++kx)
                    sources[count++] = {z.row(y + ky - 1) + (lo + kx - 1) * S::cp, S::cp,
                                        pr.up_w + size_t(ky * 3 + kx) * S::c * kUp};
            }
            const PixelShuffle epi{out + size_t(4 * y) * 4 * w + 4 * lo, size_t(16) * h * w, 4 * w};
            matmul_row<NU, S::c>(sources.data(), count, cols, pr.up_b, epi);
        };
        // the same from pairs of columns (see up_pairs)
        auto winograd_row = [&](int y) {
            const float* rows[3];
            int ky[3], count = 0;
            for (int r = 0; r < 3; ++r) {
                const int yy = y + r - 1;
                if (yy < 0 || yy >= h) continue;  // zero padding: the row adds nothing
                float* at = scratch + size_t(w) * S::cp + size_t(yy % 3) * transformed;
                if (yy > transformed_to) {
                    transform_row(z, yy, p0, p1, at);
                    transformed_to = yy;
                }
                rows[count] = at;
                ky[count++] = r;
            }
            constexpr int P = kTilePixels<NU>;
            const PixelShuffle epi{out + size_t(4 * y) * 4 * w, size_t(16) * h * w, 4 * w};
            in_groups<P>(
                p0, p0, p1, [&](int pair) { up_pairs<P>(rows, ky, count, pair, w, winograd, pr.up_b, epi); },
                [&](int pair) { up_pairs<1>(rows, ky, count, pair, w, winograd, pr.up_b, epi); });
        };
        // the rows of z the upsampler's rows [y0, y1) read, and of t those read
        const int z0 = std::max(0, y0 - reach[2]), z1 = std::min(h, y1 + reach[2]);
        const int t0 = std::max(0, z0 - reach[1]), t1 = std::min(h, z1 + reach[1]);
        for (int k = t0 + lag[0]; k < y1 + lag[2]; ++k) {
            if (const int y = k - lag[0]; y < t1) {
                for (int b = 0; b < blocks; ++b)
                    sources[b] = {hidden[b] + (size_t(y) * w + lo) * S::c, S::c, pr.c1_w + size_t(b) * S::c * S::cp};
                float* trunk = scratch + lo * S::cp;
                matmul_row<NC, S::c>(sources.data(), blocks, cols, pr.c1_b, StoreGelu<NC>{trunk});
                matmul_row<NC, S::c>(trunk, S::cp, cols, pr.c2_w, nullptr, Store<NC>{t.row(y) + lo * S::cp, S::cp});
            }
            if (const int y = k - lag[1]; y >= z0 && y < z1)
                depthwise_row<NC, 3, 1>(t, y, h, lo, hi, pr.c2_dw, pr.c2_db,
                                        AddFeatures{feat + (size_t(y) * w + lo) * S::c, z.row(y) + lo * S::cp});
            if (const int y = k - lag[2]; y >= y0 && y < y1) {
                if constexpr (LKDN_WINOGRAD != 0)
                    winograd_row(y);
                else
                    direct_row(y);
            }
            team.wait();
        }
    }

    static constexpr int kBandRows = 16;  // the fewest rows a member's band of the tail has (a 2-row halo each side)

    static void run(const float* const* hidden, int blocks, const float* feat, float* out, int n, int h, int w,
                    const float* params, int threads) {
        const TailParams pr(blocks, params);
        const std::vector<float> winograd = LKDN_WINOGRAD ? winograd_weights(pr.up_w) : std::vector<float>();
        // LKDN_TEAM_COLUMNS: each member runs a band of rows alone (recomputing the 2 rows of c1 and 1 of c2 each
        // side of it that its neighbours also compute) instead of sharing every row with a barrier per row
        const bool bands = LKDN_TEAM_COLUMNS && threads > 1 && h >= 2 * kBandRows;
        Team team(bands ? std::min(threads, h / kBandRows) : team_size(threads, w));
        float* memory = nullptr;
        team.run([&](int m) {
            std::vector<const float*> image_hidden(blocks);
            Team alone(1);
            float* own = nullptr;
            const int members = team.size();
            for (int i = 0; i < n; ++i) {
                for (int b = 0; b < blocks; ++b) image_hidden[b] = hidden[b] + size_t(i) * h * w * S::c;
                const float* f = feat + size_t(i) * h * w * S::c;
                float* o = out + size_t(i) * 48 * h * w;
                if (bands)
                    image(pr, image_hidden.data(), blocks, f, o, h, w, alone, 0, own, winograd.data(),
                          h * m / members, h * (m + 1) / members);
                else
                    image(pr, image_hidden.data(), blocks, f, o, h, w, team, m, memory, winograd.data(), 0, h);
            }
        });
    }
};

// The shallow features: a 3x3 conv from the 3-channel NCHW input to C channels, NHWC (the 4x repetition of
// the input is folded into its weights by Python). Each row's 27 inputs per pixel are gathered (zero
// outside the image) and go through one matrix product. Rows are independent: members take rows in turn.
template <int C>
struct Features {
    using S = Widths<C>;
    static constexpr int NC = S::cp / kLanes, kTaps = 27;
    static constexpr size_t params_size() { return size_t(kTaps + 1) * S::cp; }  // (27, cp) weights, bias

    struct StorePixel {  // C channels per pixel, unpadded (`last`: the row's last pixel)
        float* dst;
        int last;
        void operator()(int p, const vf* a) const {
            for (int v = 0; v < NC; ++v) store_channels<S::c>(dst, p, v, a[v], last);
        }
    };

    static void run(const float* x, float* out, int n, int h, int w, const float* params, int threads) {
        const float* weights = params;
        const float* bias = params + size_t(kTaps) * S::cp;
        Team team(std::min(threads, std::max(1, h * w / 1024)));
        team.run([&](int m) {
            std::vector<float> gathered(size_t(w) * kTaps);
            for (int row = m; row < n * h; row += team.size()) {
                const int i = row / h, y = row % h;
                const float* image = x + size_t(i) * 3 * h * w;
                for (int px = 0; px < w; ++px)
                    for (int ci = 0; ci < 3; ++ci)
                        for (int ky = 0; ky < 3; ++ky)
                            for (int kx = 0; kx < 3; ++kx) {
                                const int yy = y + ky - 1, xx = px + kx - 1;
                                const bool inside = yy >= 0 && yy < h && xx >= 0 && xx < w;
                                gathered[size_t(px) * kTaps + ci * 9 + ky * 3 + kx] =
                                    inside ? image[(size_t(ci) * h + yy) * w + xx] : 0.0f;
                            }
                matmul_row<NC, kTaps>(gathered.data(), kTaps, w, weights, bias,
                                      StorePixel{out + size_t(row) * w * S::c, w - 1});
            }
        });
    }
};

// The whole network, one stage after another (see lkdn_forward).
template <int C>
void network(const float* x, float* feat, float* const* hidden, float* out, int n, int h, int w, int blocks,
             const float* features_params, const float* const* block_params, const float* eps,
             const float* tail_params, int threads) {
    Features<C>::run(x, feat, n, h, w, features_params, threads);
    const float* previous = feat;
    for (int i = 0; i < blocks; ++i) {
        Block<C>::run(previous, hidden[i], n, h, w, block_params[i], eps[i], threads);
        previous = hidden[i];
    }
    Tail<C>::run(hidden, blocks, feat, out, n, h, w, tail_params, threads);
}

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

// Nanoseconds team member `member` waited at the barriers since the last call (and resets it); -1 in a build
// without LKDN_PROFILE_WAITS.
long lkdn_barrier_wait_ns(int member) {
    if (!LKDN_PROFILE_WAITS || member < 0 || member >= kProfiledMembers) return -1;
    return g_wait_ns[member].exchange(0);
}

// Floats in one vector: channel counts are padded to a multiple of it inside the packed weights.
int lkdn_lanes() { return kLanes; }

// GELU as the kernels compute it, on n floats (n a multiple of lkdn_lanes()), for tests.
void lkdn_gelu(const float* x, float* y, long n) {
    for (long i = 0; i < n; i += kLanes) store(y + i, gelu(load(x + i)));
}

// Floats in the packed weights of the shallow features' conv (3 -> channels); 0 as above.
long lkdn_features_params_size(int channels) {
    switch (channels) {
        case 42: return long(Features<42>::params_size());
        case 56: return long(Features<56>::params_size());
        default: return 0;
    }
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

// The whole network on n images in one call (a call per stage from Python costs most on small images):
// the shallow features of x (n x 3 x h x w, NCHW) into feat, block i (weights block_params[i], LayerNorm eps[i])
// from the previous stage's output into hidden[i], the tail into out (n x 3 x 4h x 4w, NCHW); feat and hidden
// are n x h x w x channels (NHWC). Returns 0, or -1 for a channel count it was not built for.
int lkdn_forward(const float* x, float* feat, float* const* hidden, float* out, int n, int h, int w, int channels,
                 int blocks, const float* features_params, const float* const* block_params, const float* eps,
                 const float* tail_params, int threads) {
    switch (channels) {
        case 42:
            network<42>(x, feat, hidden, out, n, h, w, blocks, features_params, block_params, eps, tail_params, threads);
            return 0;
        case 56:
            network<56>(x, feat, hidden, out, n, h, w, blocks, features_params, block_params, eps, tail_params, threads);
            return 0;
        default:
            return -1;
    }
}
}
