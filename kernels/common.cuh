// common.cuh -- device helpers shared by every kernels/*.cu file.
//
// Included as "common.cuh": nvcc finds it next to the including file, NVRTC through the
// -I<kernels dir> option the rtc exposure passes (engine/cuda/launch.py, rtc_options).
// No host headers anywhere in kernels/: NVRTC compiles these sources without a host
// standard library, so only built-in types and CUDA device intrinsics are used.
//
// Every kernel is `extern "C"` (NVRTC finds it by that name) and is followed by
// ENGINE_EXPORT_KERNEL(name), which registers it in the compiled extension so that it can
// be launched by name (csrc/registry.h, force-included by that build only); under NVRTC
// it expands to nothing. How a kernel is launched -- grid, block, parameter types -- is
// described once, in Python, next to the glue that launches it (engine/cuda/<family>.py).
#pragma once

#ifndef ENGINE_EXPORT_KERNEL
#define ENGINE_EXPORT_KERNEL(kernel)
#endif

// Every block-level reduction in kernels/ is written for this many threads (a multiple of
// 32, at most 1024). The launch descriptions (engine/cuda/launch.py: BLOCK) launch exactly this.
#define ENGINE_REDUCE_THREADS 256

// Plain 1-D elementwise kernels use this block size; any grid is correct because the
// kernels loop with a grid stride.
#define ENGINE_BLOCK 256

typedef long long i64;

// NVRTC has no <cmath>, so no INFINITY / NAN macros: build them from their bit patterns.
#define ENGINE_INFINITY __int_as_float(0x7f800000)
#define ENGINE_NAN __int_as_float(0x7fc00000)

// Floor-mode cells of a window sliding over `size` cells with `padding` on both sides (conv
// and pooling). The one C++ copy of the formula; Python's is engine/shapes.py.
__device__ __forceinline__ int window_output_size(int size, int kernel, int stride, int padding) {
    return (size + 2 * padding - kernel) / stride + 1;
}

// [start, end) of output cell i of an adaptive pool turning `size` cells into `out`:
// floor(i*size/out) to ceil((i+1)*size/out), as PyTorch's (Python's twin: engine/shapes.py).
__device__ __forceinline__ int adaptive_start(int i, int size, int out) { return (i * size) / out; }
__device__ __forceinline__ int adaptive_end(int i, int size, int out) { return ((i + 1) * size + out - 1) / out; }

// max(v, 0) that lets NaN through, as np.maximum and torch.relu do: a NaN activation must
// reach the loss (where training stops on it), not turn silently into 0 as fmaxf would.
__device__ __forceinline__ float relu_value(float v) { return v < 0.0f ? 0.0f : v; }

// Sum of v over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum of v over the whole block; every thread gets the total. Every thread of the block
// must call it (it synchronises). `scratch` is __shared__ float[32]. The summation order
// depends only on blockDim, so the result is the same on every run.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (lane < warps) ? scratch[lane] : 0.0f;
    return warp_sum(v);  // every warp reduces the per-warp partials itself
}

// 1-D grid-stride loop over [0, n) with 64-bit indices (tensors may exceed 2^31 elements).
#define GRID_STRIDE_LOOP(i, n)                                                    \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n);             \
         i += (i64)blockDim.x * gridDim.x)
