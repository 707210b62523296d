// The core's peak rate of fused multiply-adds on the kernels' vectors (utils/native/vector.h: 16 floats with
// AVX-512, else 8): 12 independent accumulators, so that the FMA units, not their latency, set the pace.
// benchmarks/kernel_roofline.py compares the native kernels' rate with it.

#include "vector.h"

extern "C" {

int fma_lanes() { return kLanes; }

// Runs `n` rounds of 12 vector FMAs; returns a value that depends on all of them (so none is optimized away).
float fma_rounds(long n) {
    vf acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = vf{} + 1.0f + i * 1e-7f;
    const vf scale = vf{} + 0.999999f, add = vf{} + 1e-7f;
    for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) acc[i] = acc[i] * scale + add;
    }
    float sum = 0.0f;
    for (int i = 0; i < 12; ++i)
        for (int l = 0; l < kLanes; ++l) sum += acc[i][l];
    return sum;
}
}
