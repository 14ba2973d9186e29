// batchnorm.cu -- batch normalisation (and BN followed by ReLU), forward and backward.
//
// Layout: x, y, dy, dx (N, C, HW) C-contiguous float32 with HW = H*W (1 for (N, C) input);
// per-channel vectors (C,) float32. Statistics are per channel over the m = N*HW elements
// of that channel. Conventions are those of engine/reference/batchnorm.py (PyTorch's):
// training normalises with the biased batch variance and updates the running stats in
// place, running = (1 - momentum) running + momentum batch, with the unbiased variance
// (m / (m - 1)); eval normalises with the running stats. save_mean / save_invstd are the
// statistics actually used.
// Launch: per-channel reductions use one block of ENGINE_REDUCE_THREADS per channel
// (grid = C), reducing in a fixed order with warp shuffles (deterministic, no atomics);
// elementwise kernels use a 1-D grid-stride loop, ENGINE_BLOCK threads, any grid.
//
//   batch_norm_stats_kernel            per channel: two-pass mean and biased variance
//                                      (mean first, then squared deviations: no
//                                      cancellation), invstd, running-stat update
//   batch_norm_eval_stats_kernel       per channel: mean = running_mean,
//                                      invstd = 1 / sqrt(running_var + eps)
//   batch_norm_forward_kernel          y = (x - mean) invstd gamma + beta, then ReLU if asked
//   batch_norm_backward_reduce_kernel  per channel: dbeta = sum g, dgamma = sum g xhat,
//                                      g = dy, or dy * (y > 0) after a fused ReLU
//   batch_norm_backward_kernel         training: dx = gamma invstd (g - dbeta/m - xhat dgamma/m)
//                                      eval:     dx = gamma invstd g
#include "common.cuh"

// element j in [0, N*HW) of channel c -> flat index in (N, C, HW)
__device__ __forceinline__ i64 channel_index(i64 j, int c, int channels, i64 hw) {
    return ((j / hw) * channels + c) * hw + j % hw;
}

// grid = C blocks; running_mean / running_var may be null (no update)
extern "C" __global__ void batch_norm_stats_kernel(const float* __restrict__ x, float* __restrict__ save_mean,
                                                   float* __restrict__ save_invstd, float* running_mean,
                                                   float* running_var, int batch, int channels, i64 hw,
                                                   float momentum, float eps) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    const i64 m = (i64)batch * hw;
    float acc = 0.0f;
    for (i64 j = threadIdx.x; j < m; j += blockDim.x) acc += x[channel_index(j, c, channels, hw)];
    const float mean = block_sum(acc, scratch) / (float)m;
    acc = 0.0f;
    for (i64 j = threadIdx.x; j < m; j += blockDim.x) {
        const float d = x[channel_index(j, c, channels, hw)] - mean;
        acc += d * d;
    }
    const float var = block_sum(acc, scratch) / (float)m;  // biased
    if (threadIdx.x == 0) {
        save_mean[c] = mean;
        save_invstd[c] = 1.0f / sqrtf(var + eps);
        if (running_mean != nullptr) running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mean;
        if (running_var != nullptr && m > 1) {
            const float unbiased = var * ((float)m / (float)(m - 1));
            running_var[c] = (1.0f - momentum) * running_var[c] + momentum * unbiased;
        }
    }
}
ENGINE_EXPORT_KERNEL(batch_norm_stats_kernel)

extern "C" __global__ void batch_norm_eval_stats_kernel(const float* __restrict__ running_mean,
                                                        const float* __restrict__ running_var,
                                                        float* __restrict__ save_mean, float* __restrict__ save_invstd,
                                                        int channels, float eps) {
    GRID_STRIDE_LOOP(c, channels) {
        save_mean[c] = running_mean[c];
        save_invstd[c] = 1.0f / sqrtf(running_var[c] + eps);
    }
}
ENGINE_EXPORT_KERNEL(batch_norm_eval_stats_kernel)

extern "C" __global__ void batch_norm_forward_kernel(const float* x, const float* __restrict__ mean,
                                                     const float* __restrict__ invstd,
                                                     const float* __restrict__ gamma,
                                                     const float* __restrict__ beta, float* y, int channels,
                                                     i64 hw, i64 n, int relu) {
    GRID_STRIDE_LOOP(i, n) {
        const int c = (int)((i / hw) % channels);
        float v = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c];
        if (relu) v = relu_value(v);
        y[i] = v;
    }
}
ENGINE_EXPORT_KERNEL(batch_norm_forward_kernel)

// grid = C blocks; y is null for plain BN, the BN+ReLU output for the fused op
extern "C" __global__ void batch_norm_backward_reduce_kernel(const float* __restrict__ dy,
                                                             const float* __restrict__ y,
                                                             const float* __restrict__ x,
                                                             const float* __restrict__ mean,
                                                             const float* __restrict__ invstd,
                                                             float* __restrict__ dgamma,
                                                             float* __restrict__ dbeta, int batch, int channels,
                                                             i64 hw) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    const i64 m = (i64)batch * hw;
    const float mu = mean[c], is = invstd[c];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (i64 j = threadIdx.x; j < m; j += blockDim.x) {
        const i64 i = channel_index(j, c, channels, hw);
        float g = dy[i];
        if (y != nullptr && !(y[i] > 0.0f)) g = 0.0f;
        sum_g += g;
        sum_gx += g * (x[i] - mu) * is;
    }
    sum_g = block_sum(sum_g, scratch);
    sum_gx = block_sum(sum_gx, scratch);
    if (threadIdx.x == 0) {
        dbeta[c] = sum_g;
        dgamma[c] = sum_gx;
    }
}
ENGINE_EXPORT_KERNEL(batch_norm_backward_reduce_kernel)

// dx may alias dy (read before written by the same thread)
extern "C" __global__ void batch_norm_backward_kernel(const float* dy, const float* __restrict__ y,
                                                      const float* __restrict__ x,
                                                      const float* __restrict__ mean,
                                                      const float* __restrict__ invstd,
                                                      const float* __restrict__ gamma,
                                                      const float* __restrict__ dgamma,
                                                      const float* __restrict__ dbeta, float* dx, int channels,
                                                      i64 hw, i64 n, i64 m, int training) {
    const float inv_m = 1.0f / (float)m;
    GRID_STRIDE_LOOP(i, n) {
        const int c = (int)((i / hw) % channels);
        float g = dy[i];
        if (y != nullptr && !(y[i] > 0.0f)) g = 0.0f;
        const float scale = gamma[c] * invstd[c];
        if (training) {
            const float xhat = (x[i] - mean[c]) * invstd[c];
            g = g - dbeta[c] * inv_m - xhat * dgamma[c] * inv_m;
        }
        dx[i] = scale * g;
    }
}
ENGINE_EXPORT_KERNEL(batch_norm_backward_kernel)
