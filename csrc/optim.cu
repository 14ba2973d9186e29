// optim.cu (host) -- launchers for kernels/optim.cu. Step-dependent scalars are computed
// here in double (Adam's bias corrections).
#include <cmath>

#include "../kernels/optim.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

void sgd_update(float* param, const float* grad, float* velocity, float lr, float momentum, float weight_decay,
                bool nesterov, int64_t n, cudaStream_t stream) {
    require(n >= 0, "sgd_update", "negative size");
    require(momentum == 0.0f || velocity != nullptr, "sgd_update", "momentum != 0 needs a velocity buffer");
    if (n == 0) return;
    sgd_update_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(param, grad, velocity, lr, momentum, weight_decay,
                                                               nesterov ? 1 : 0, n);
    CUDA_CHECK_LAUNCH("sgd_update_kernel");
}

void adam_update(float* param, const float* grad, float* m, float* v, int64_t step, float lr, float beta1,
                 float beta2, float eps, float weight_decay, bool decoupled, int64_t n, cudaStream_t stream) {
    require(n >= 0, "adam_update", "negative size");
    require(step >= 1, "adam_update", "expected step >= 1 (it counts from 1)");
    if (n == 0) return;
    const float bc1 = (float)(1.0 - std::pow((double)beta1, (double)step));
    const float bc2 = (float)(1.0 - std::pow((double)beta2, (double)step));
    adam_update_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(param, grad, m, v, lr, beta1, beta2, eps,
                                                                weight_decay, decoupled ? 1 : 0, bc1, bc2, n);
    CUDA_CHECK_LAUNCH("adam_update_kernel");
}

void rmsprop_update(float* param, const float* grad, float* square_avg, float lr, float alpha, float eps,
                    float weight_decay, int64_t n, cudaStream_t stream) {
    require(n >= 0, "rmsprop_update", "negative size");
    if (n == 0) return;
    rmsprop_update_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(param, grad, square_avg, lr, alpha, eps,
                                                                   weight_decay, n);
    CUDA_CHECK_LAUNCH("rmsprop_update_kernel");
}

void adagrad_update(float* param, const float* grad, float* sum_sq, float lr, float eps, float weight_decay,
                    int64_t n, cudaStream_t stream) {
    require(n >= 0, "adagrad_update", "negative size");
    if (n == 0) return;
    adagrad_update_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(param, grad, sum_sq, lr, eps, weight_decay, n);
    CUDA_CHECK_LAUNCH("adagrad_update_kernel");
}

}  // namespace engine
