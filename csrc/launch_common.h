// launch_common.h -- what every host launcher in csrc/ shares: error checks and grid sizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace engine {

// Throws std::runtime_error naming what failed, where, and CUDA's own words for it.
inline void cuda_check(cudaError_t err, const char* what, const char* file, int line) {
    if (err == cudaSuccess) return;
    throw std::runtime_error(std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// Invalid arguments that reach a launcher despite the binding's checks.
inline void require(bool ok, const char* op, const std::string& message) {
    if (!ok) throw std::invalid_argument(std::string(op) + ": " + message);
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n elements: enough to fill any current GPU, capped so
// huge tensors loop instead of launching millions of blocks. Mirrored by
// engine/cuda/rtc.py:grid_1d; any value is correct for grid-stride kernels.
inline unsigned grid_1d(int64_t n, int block = 256) {
#ifdef ENGINE_EMULATED_CUDA
    const int64_t cap = 4;  // csrc/emulate_cuda.h: every block costs OS threads; loop instead
#else
    const int64_t cap = 65536;
#endif
    const int64_t blocks = cdiv(n, block);
    return (unsigned)(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// Output tiles of the GEMM: 128x128 when there are enough of them to fill the GPU, else
// 64x64 (four times the blocks). Mirrored by engine/cuda/rtc.py:gemm_tile. Every output is
// accumulated in the same k order either way, so the choice never changes the result.
inline int gemm_tile(int64_t m, int64_t n, int64_t outputs) {
    return cdiv(m, 128) * cdiv(n, 128) * outputs >= 128 ? 128 : 64;
}

// Blocks of the first MSE reduction stage; a function of n only, so the summation order
// (and the loss, bit for bit) is the same on every run. Mirrored by
// engine/cuda/rtc.py:mse_partial_blocks.
inline int mse_partial_blocks(int64_t n) {
    const int64_t blocks = cdiv(n, 256 * 4);
    return (int)(blocks < 1 ? 1 : (blocks > 256 ? 256 : blocks));
}

}  // namespace engine

#define CUDA_CHECK(call) ::engine::cuda_check((call), #call, __FILE__, __LINE__)
// After every <<<...>>>: a bad launch configuration is reported with the kernel's name
// (a string, so that a launcher choosing among versions names the one it launched).
#define CUDA_CHECK_LAUNCH(kernel_name) \
    ::engine::cuda_check(cudaGetLastError(), (std::string("launch of ") + (kernel_name)).c_str(), __FILE__, __LINE__)
