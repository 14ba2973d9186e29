// dropout.cu -- inverted dropout with a counter-based mask.
//
// The mask is a pure function of (seed, flat C-order element index), defined in
// engine/reference/dropout.py; this file computes the same function bit for bit, so the
// GPU mask equals the CPU mask for a seed whatever the launch shape:
//   z = s + (i+1) * 0x9E3779B97F4A7C15           (uint64, wrapping)
//   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//   z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//   z ^= z >> 31
//   u = (z >> 40) * 2^-24  in [0, 1), exact in float64;   keep = u >= p
// Layout: flat arrays of n elements; x, y, dy, dx float32, mask uint8.
// Launch: 1-D grid-stride loop, ENGINE_BLOCK threads, any grid.
//   dropout_forward_kernel   mask = keep, y = keep ? x * scale : 0   (scale = 1 / (1 - p))
//   dropout_backward_kernel  dx = mask ? dy * scale : 0
#include "common.cuh"

__device__ __forceinline__ bool dropout_keep(unsigned long long seed, i64 i, double p) {
    unsigned long long z = seed + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    const double u = (double)(z >> 40) * 5.9604644775390625e-08;  // 2^-24
    return u >= p;
}

extern "C" __global__ void dropout_forward_kernel(const float* x, float* y, unsigned char* mask,
                                                  unsigned long long seed, double p, float scale, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const bool keep = dropout_keep(seed, i, p);
        mask[i] = keep ? 1 : 0;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
}
ENGINE_EXPORT_KERNEL(dropout_forward_kernel)

extern "C" __global__ void dropout_backward_kernel(const float* dy, const unsigned char* mask, float* dx,
                                                   float scale, i64 n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = mask[i] ? dy[i] * scale : 0.0f;
}
ENGINE_EXPORT_KERNEL(dropout_backward_kernel)
