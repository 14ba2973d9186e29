// emulate_cuda.h -- a CPU emulation of the CUDA execution model, for tests only.
//
// tests/test_cuda_build.py compiles kernels/*.cu and bindings/module.cpp with g++ against this
// header (force-included, standing in for <cuda_runtime.h>, with ENGINE_EMULATED_CUDA
// defined, under which csrc/registry.h launches a kernel as emu::config(k, grid, block)(args)),
// which runs the one copy of every kernel in kernels/ on the host, launched by name through
// the real extension module, without a GPU. Not part of any build of the extension. The
// tests lower the grid-stride cap (engine/cuda/launch.py: GRID_STRIDE_CAP) to a few blocks:
// every block here costs OS threads.
//
// Model: the blocks of a launch run one after another; the threads of a block run as OS
// threads, so __syncthreads (a std::barrier over the block) and warp shuffles (a barrier per
// warp around an exchange buffer) really synchronise, and a kernel that forgets a
// __syncthreads can really race. __shared__ is `static`: one block runs at a time. Threads
// that return early drop out of the barriers, as exited threads do on a GPU.
// Not modelled: memory spaces (host pointers stand for device ones), streams (launches run
// synchronously), warp-synchronous execution outside shuffles, float atomics' ordering.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// 16-byte aligned as on the GPU, so -fsanitize=alignment flags a misaligned vector load
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(n)
#define __restrict__ __restrict

namespace emu {
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float shuffle_buffer[32][32];
inline std::atomic<long> launches{0};
}

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    emu::shuffle_buffer[warp][lane] = v;
    emu::warp_barriers[warp]->arrive_and_wait();
    const float r = emu::shuffle_buffer[warp][lane ^ offset];
    emu::warp_barriers[warp]->arrive_and_wait();
    return r;
}

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
using std::isnan; using std::min; using std::max;
inline float fmaxf(float a, float b) { return std::fmax(a, b); }

typedef int cudaError_t;
typedef struct CUstream_st* cudaStream_t;
enum { cudaSuccess = 0 };
inline thread_local cudaError_t emu_last_error = 0;
inline cudaError_t cudaGetLastError() { cudaError_t e = emu_last_error; emu_last_error = 0; return e; }
inline const char* cudaGetErrorName(cudaError_t) { return "emulatedError"; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return 0; }

namespace emu {
template <typename... Params>
struct Config {
    void (*kernel)(Params...);
    dim3 grid, block;
    template <typename... Args>
    void operator()(Args... args) const {
        if (grid.x == 0 || block.x == 0 || block.x > 1024 || grid.y > 65535 || grid.z > 65535) {
            emu_last_error = 9;  // cudaErrorInvalidConfiguration
            return;
        }
        launches++;
        gridDim = grid;
        blockDim = block;
        const unsigned threads = block.x;
        for (unsigned bz = 0; bz < grid.z; ++bz)
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    std::barrier<> bar(threads);
                    block_barrier = &bar;
                    warp_barriers.clear();
                    for (unsigned w = 0; w < (threads + 31) / 32; ++w)
                        warp_barriers.emplace_back(new std::barrier<>(std::min(32u, threads - 32 * w)));
                    std::vector<std::thread> pool;
                    for (unsigned t = 0; t < threads; ++t)
                        pool.emplace_back([=, this] {
                            threadIdx = dim3(t, 0, 0);
                            blockIdx = dim3(bx, by, bz);
                            kernel(args...);
                            // a finished thread no longer takes part in barriers
                            block_barrier->arrive_and_drop();
                            warp_barriers[t >> 5]->arrive_and_drop();
                        });
                    for (auto& th : pool) th.join();
                }
    }
};
template <typename... Params>
Config<Params...> config(void (*kernel)(Params...), dim3 grid, dim3 block, size_t = 0, cudaStream_t = nullptr) {
    return {kernel, grid, block};
}
}  // namespace emu
