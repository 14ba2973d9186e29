// activation.cu (host) -- launchers for kernels/activation.cu.
#include "../kernels/activation.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

// the elementwise launchers all look alike: nothing to do for an empty array
#define ELEMENTWISE_LAUNCH(kernel, n, ...)                                              \
    do {                                                                                \
        require((n) >= 0, #kernel, "negative size");                                    \
        if ((n) == 0) return;                                                           \
        kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(__VA_ARGS__);                   \
        CUDA_CHECK_LAUNCH(#kernel);                                                     \
    } while (0)

void relu_forward(const float* x, float* y, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(relu_forward_kernel, n, x, y, n);
}

void relu_backward(const float* dy, const float* y, float* dx, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(relu_backward_kernel, n, dy, y, dx, n);
}

void bias_relu_forward(const float* x, const float* b, float* y, int N, int C, int64_t HW, cudaStream_t stream) {
    require(N >= 0 && C >= 1 && HW >= 1, "bias_relu_forward", "expected C >= 1 and HW >= 1");
    const int64_t n = (int64_t)N * C * HW;
    ELEMENTWISE_LAUNCH(bias_relu_forward_kernel, n, x, b, y, n, C, HW);
}

void bias_relu_backward(const float* dy, const float* y, float* dx, float* db, int N, int C, int64_t HW,
                        cudaStream_t stream) {
    require(N >= 0 && C >= 1 && HW >= 1, "bias_relu_backward", "expected C >= 1 and HW >= 1");
    // one block per channel; with N == 0 the blocks write db = 0
    bias_relu_backward_kernel<<<C, ENGINE_REDUCE_THREADS, 0, stream>>>(dy, y, dx, db, N, C, HW);
    CUDA_CHECK_LAUNCH("bias_relu_backward_kernel");
}

void bias_backward(const float* dy, float* db, int N, int C, int64_t HW, cudaStream_t stream) {
    require(N >= 0 && C >= 1 && HW >= 1, "bias_backward", "expected C >= 1 and HW >= 1");
    bias_backward_kernel<<<C, ENGINE_REDUCE_THREADS, 0, stream>>>(dy, db, N, C, HW);
    CUDA_CHECK_LAUNCH("bias_backward_kernel");
}

void leaky_relu_forward(const float* x, float* y, float slope, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(leaky_relu_forward_kernel, n, x, y, slope, n);
}

void leaky_relu_backward(const float* dy, const float* x, float* dx, float slope, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(leaky_relu_backward_kernel, n, dy, x, dx, slope, n);
}

void sigmoid_forward(const float* x, float* y, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(sigmoid_forward_kernel, n, x, y, n);
}

void sigmoid_backward(const float* dy, const float* y, float* dx, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(sigmoid_backward_kernel, n, dy, y, dx, n);
}

void tanh_forward(const float* x, float* y, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(tanh_forward_kernel, n, x, y, n);
}

void tanh_backward(const float* dy, const float* y, float* dx, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(tanh_backward_kernel, n, dy, y, dx, n);
}

void add(const float* a, const float* b, float* c, int64_t n, cudaStream_t stream) {
    ELEMENTWISE_LAUNCH(add_forward_kernel, n, a, b, c, n);
}

}  // namespace engine
