// Float vectors of 16 lanes for the C++ kernels (lkdn_cpu.cpp, conv_grad.cpp): GCC/Clang vector extensions,
// so they compile for any target; built with -march=native they are AVX-512 registers here, and partial
// vectors use masked moves (through a stack copy they would stall on store forwarding).
#pragma once

#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));

inline vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// Lanes [from, to) of p as a vector, the others zero; p + lane is read only for those lanes.
inline vf load_lanes(const float* p, int from, int to) {
#if defined(__AVX512F__)
    return vf(_mm512_maskz_loadu_ps(__mmask16(((1u << to) - 1) & ~((1u << from) - 1)), p));
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
#else
    std::memcpy(p + from, reinterpret_cast<const float*>(&v) + from, (to - from) * sizeof(float));
#endif
}
inline vf splat(float s) { return vf{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
constexpr int round_up(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

}  // namespace
