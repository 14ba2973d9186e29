// dropout.cu (host) -- launchers for kernels/dropout.cu.
#include "../kernels/dropout.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

void dropout_forward(const float* x, float* y, unsigned char* mask, uint64_t seed, double p, int64_t n,
                     cudaStream_t stream) {
    require(p >= 0.0 && p < 1.0, "dropout_forward", "expected 0 <= p < 1");
    require(n >= 0, "dropout_forward", "negative size");
    if (n == 0) return;
    const float scale = (float)(1.0 / (1.0 - p));
    dropout_forward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(x, y, mask, (unsigned long long)seed, p, scale, n);
    CUDA_CHECK_LAUNCH("dropout_forward_kernel");
}

void dropout_backward(const float* dy, const unsigned char* mask, float* dx, double p, int64_t n,
                      cudaStream_t stream) {
    require(p >= 0.0 && p < 1.0, "dropout_backward", "expected 0 <= p < 1");
    require(n >= 0, "dropout_backward", "negative size");
    if (n == 0) return;
    const float scale = (float)(1.0 / (1.0 - p));
    dropout_backward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(dy, mask, dx, scale, n);
    CUDA_CHECK_LAUNCH("dropout_backward_kernel");
}

}  // namespace engine
