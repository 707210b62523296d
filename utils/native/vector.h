// Float vectors for the C++ kernels (lkdn_cpu.cpp, conv_grad.cpp): GCC/Clang vector extensions, so they compile
// for any target. A vector is one register of the target: 16 lanes with AVX-512, 8 otherwise (one AVX2 register,
// or two SSE registers). Wider than a register, the compiler splits every vector op and spills: on an AVX2-only
// CPU a 16-lane build of lkdn_cpu.cpp ran 7.5x slower than an 8-lane one, slower than PyTorch's reference.
// Partial vectors use masked moves where the target has them (through a stack copy they would stall on store
// forwarding).
#pragma once

#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));

inline vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
#if defined(__AVX2__) && !defined(__AVX512F__)
// all ones in lanes [from, to)
inline __m256i lane_mask(int from, int to) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(to), lane),
                            _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(from - 1)));
}
#endif
// Lanes [from, to) of p as a vector, the others zero; p + lane is read only for those lanes.
inline vf load_lanes(const float* p, int from, int to) {
#if defined(__AVX512F__)
    return vf(_mm512_maskz_loadu_ps(__mmask16(((1u << to) - 1) & ~((1u << from) - 1)), p));
#elif defined(__AVX2__)
    return vf(_mm256_maskload_ps(p, lane_mask(from, to)));
#else
    vf v{};
    std::memcpy(reinterpret_cast<float*>(&v) + from, p + from, (to - from) * sizeof(float));
    return v;
#endif
}
inline vf load_lanes(const float* p, int to) { return load_lanes(p, 0, to); }
// Lanes [from, to) of v to p[from, to); the rest of p is left as it is.
inline void store_lanes(float* p, vf v, int from, int to) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, __mmask16(((1u << to) - 1) & ~((1u << from) - 1)), __m512(v));
#elif defined(__AVX2__)
    _mm256_maskstore_ps(p, lane_mask(from, to), __m256(v));
#else
    std::memcpy(p + from, reinterpret_cast<const float*>(&v) + from, (to - from) * sizeof(float));
#endif
}
inline vf splat(float s) {  // `vf{} + s` would add 0 to s first (it may be -0): a wasted add per broadcast
#if defined(__AVX512F__)
    return vf(_mm512_set1_ps(s));
#elif defined(__AVX__)
    return vf(_mm256_set1_ps(s));
#else
    vf v;
    for (int l = 0; l < kLanes; ++l) v[l] = s;
    return v;
#endif
}
constexpr int round_up(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

}  // namespace
