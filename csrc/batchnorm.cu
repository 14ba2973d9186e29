// batchnorm.cu (host) -- launchers for kernels/batchnorm.cu. x is (N, C, HW).
#include "../kernels/batchnorm.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

static void check_bn(const char* op, int N, int C, int64_t HW) {
    require(N >= 1 && C >= 1 && HW >= 1, op, "expected N, C and H*W >= 1");
    require(C <= 2147483647, op, "too many channels");
}

void batch_norm_stats(const float* x, float* save_mean, float* save_invstd, float* running_mean,
                      float* running_var, int N, int C, int64_t HW, float momentum, float eps, cudaStream_t stream) {
    check_bn("batch_norm_stats", N, C, HW);
    batch_norm_stats_kernel<<<C, ENGINE_REDUCE_THREADS, 0, stream>>>(x, save_mean, save_invstd, running_mean,
                                                                     running_var, N, C, HW, momentum, eps);
    CUDA_CHECK_LAUNCH("batch_norm_stats_kernel");
}

void batch_norm_eval_stats(const float* running_mean, const float* running_var, float* save_mean,
                           float* save_invstd, int C, float eps, cudaStream_t stream) {
    require(C >= 1, "batch_norm_eval_stats", "expected C >= 1");
    batch_norm_eval_stats_kernel<<<grid_1d(C), ENGINE_BLOCK, 0, stream>>>(running_mean, running_var, save_mean,
                                                                          save_invstd, C, eps);
    CUDA_CHECK_LAUNCH("batch_norm_eval_stats_kernel");
}

void batch_norm_forward(const float* x, const float* mean, const float* invstd, const float* gamma,
                        const float* beta, float* y, int N, int C, int64_t HW, bool relu, cudaStream_t stream) {
    check_bn("batch_norm_forward", N, C, HW);
    const int64_t n = (int64_t)N * C * HW;
    batch_norm_forward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(x, mean, invstd, gamma, beta, y, C, HW, n,
                                                                       relu ? 1 : 0);
    CUDA_CHECK_LAUNCH("batch_norm_forward_kernel");
}

void batch_norm_backward_reduce(const float* dy, const float* y, const float* x, const float* mean,
                                const float* invstd, float* dgamma, float* dbeta, int N, int C, int64_t HW,
                                cudaStream_t stream) {
    check_bn("batch_norm_backward_reduce", N, C, HW);
    batch_norm_backward_reduce_kernel<<<C, ENGINE_REDUCE_THREADS, 0, stream>>>(dy, y, x, mean, invstd, dgamma, dbeta,
                                                                               N, C, HW);
    CUDA_CHECK_LAUNCH("batch_norm_backward_reduce_kernel");
}

void batch_norm_backward(const float* dy, const float* y, const float* x, const float* mean, const float* invstd,
                         const float* gamma, const float* dgamma, const float* dbeta, float* dx, int N, int C,
                         int64_t HW, bool training, cudaStream_t stream) {
    check_bn("batch_norm_backward", N, C, HW);
    const int64_t n = (int64_t)N * C * HW;
    batch_norm_backward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(dy, y, x, mean, invstd, gamma, dgamma, dbeta,
                                                                        dx, C, HW, n, (int64_t)N * HW,
                                                                        training ? 1 : 0);
    CUDA_CHECK_LAUNCH("batch_norm_backward_kernel");
}

}  // namespace engine
