// softmax_xent.cu -- losses: softmax cross-entropy (loss and gradient fused) and MSE; and the
// softmax and log-softmax of rows, forward and backward.
//
// Layout: logits, dlogits, x, y, dy, dx (N, K) row-major float32; labels (N,) int64; pred,
// target flat.
// Every loss is a mean written to a device scalar (a 1-element array): nothing is copied
// to the host, so a training step never waits on the GPU.
//
//   softmax_xent_forward_kernel  one warp per row (blockDim.x = ENGINE_REDUCE_THREADS, so
//       8 rows per block): m = max_k x; s = sum_k exp(x - m);
//       dlogits = (exp(x - m) / s - onehot) / N.
//       Subtracting the max keeps exp <= 1, so logits of magnitude 1e4 stay finite.
//       row_loss = log s - (x[label] - m) (see the kernel for why not lse - x[label]).
//       A label outside [0, K) (never passed by engine.functional) gives a NaN row loss
//       instead of reading out of bounds.
//   mse_partial_forward_kernel   per-block partial sums of (pred - target)^2, grid-stride;
//       launched with a grid that depends only on n (engine/cuda: mse_partial_blocks).
//   mean_reduce_kernel           one block: out[0] = sum(values[0:count]) / divisor.
//       Sums in a fixed order (per-thread strided sums, then block_sum), so the loss is
//       bitwise the same on every run -- no atomics anywhere in this file.
//   mse_backward_kernel          dpred = (pred - target) * (2 / numel) * dloss[0]
//   softmax_forward_kernel, log_softmax_forward_kernel     one warp per row, as the
//       cross-entropy: y = exp(x - m) / s, or (x - m) - log s.
//   softmax_backward_kernel, log_softmax_backward_kernel   one warp per row, from the
//       forward's output y: dx = y * (dy - sum_k dy * y), or dy - exp(y) * sum_k dy.
#include "common.cuh"

// The warp of lanes 0..31 that owns row `row` of an (rows, K) array: one warp per row,
// blockDim.x / 32 rows per block (the launch descriptions use cdiv(rows, BLOCK / 32) blocks).
__device__ __forceinline__ int warp_row() { return blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); }

// m = max_k x[k] and s = sum_k exp(x[k] - m) over one row, every lane of the warp getting
// both. Subtracting the max keeps every exp in (0, 1].
__device__ __forceinline__ void row_max_and_exp_sum(const float* x, int classes, int lane, float& m, float& s) {
    m = -ENGINE_INFINITY;
    for (int k = lane; k < classes; k += 32) m = fmaxf(m, x[k]);
    m = warp_max(m);
    s = 0.0f;
    for (int k = lane; k < classes; k += 32) s += expf(x[k] - m);
    s = warp_sum(s);
}

extern "C" __global__ void softmax_xent_forward_kernel(const float* __restrict__ logits,
                                                       const long long* __restrict__ labels,
                                                       float* __restrict__ dlogits, float* __restrict__ row_loss,
                                                       int rows, int classes) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
    const float* x = logits + (i64)row * classes;
    float* dx = dlogits + (i64)row * classes;

    float m = -ENGINE_INFINITY;
    for (int k = lane; k < classes; k += 32) m = fmaxf(m, x[k]);
    m = warp_max(m);
    float s = 0.0f;
    for (int k = lane; k < classes; k += 32) s += expf(x[k] - m);
    s = warp_sum(s);

    const long long label = labels[row];
    const bool valid = label >= 0 && label < classes;
    const float inv_n = 1.0f / (float)rows;
    const float inv_s = 1.0f / s;
    for (int k = lane; k < classes; k += 32) {
        const float prob = expf(x[k] - m) * inv_s;
        dx[k] = (prob - (k == label ? 1.0f : 0.0f)) * inv_n;
    }
    // log(s) - (x[label] - m), not (m + log s) - x[label]: with logits near 1e4 the latter
    // cancels two large floats and loses ~1e-3 of the loss
    if (lane == 0) row_loss[row] = valid ? logf(s) - (x[label] - m) : ENGINE_NAN;
}
ENGINE_EXPORT_KERNEL(softmax_xent_forward_kernel)

extern "C" __global__ void mse_partial_forward_kernel(const float* __restrict__ pred,
                                                      const float* __restrict__ target,
                                                      float* __restrict__ partial, i64 n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    GRID_STRIDE_LOOP(i, n) {
        const float d = pred[i] - target[i];
        acc += d * d;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
ENGINE_EXPORT_KERNEL(mse_partial_forward_kernel)

// launched as one block of ENGINE_REDUCE_THREADS threads
extern "C" __global__ void mean_reduce_kernel(const float* __restrict__ values, float* __restrict__ out,
                                              i64 count, float divisor) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) acc += values[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = acc / divisor;
}
ENGINE_EXPORT_KERNEL(mean_reduce_kernel)

extern "C" __global__ void mse_backward_kernel(const float* pred, const float* target, const float* dloss,
                                               float* dpred, float scale, i64 n) {
    const float g = scale * dloss[0];  // scale = 2 / numel
    GRID_STRIDE_LOOP(i, n) dpred[i] = (pred[i] - target[i]) * g;
}
ENGINE_EXPORT_KERNEL(mse_backward_kernel)

extern "C" __global__ void softmax_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int rows,
                                                  int classes) {
    const int lane = threadIdx.x & 31, row = warp_row();
    if (row >= rows) return;  // whole warps leave together: the shuffles stay full-warp
    const float* xr = x + (i64)row * classes;
    float* yr = y + (i64)row * classes;
    float m, s;
    row_max_and_exp_sum(xr, classes, lane, m, s);
    const float inv_s = 1.0f / s;
    for (int k = lane; k < classes; k += 32) yr[k] = expf(xr[k] - m) * inv_s;
}
ENGINE_EXPORT_KERNEL(softmax_forward_kernel)

extern "C" __global__ void log_softmax_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int rows,
                                                      int classes) {
    const int lane = threadIdx.x & 31, row = warp_row();
    if (row >= rows) return;
    const float* xr = x + (i64)row * classes;
    float* yr = y + (i64)row * classes;
    float m, s;
    row_max_and_exp_sum(xr, classes, lane, m, s);
    const float log_s = logf(s);
    // (x - m) - log s, not x - (m + log s): the large m must not swallow log s
    for (int k = lane; k < classes; k += 32) yr[k] = (xr[k] - m) - log_s;
}
ENGINE_EXPORT_KERNEL(log_softmax_forward_kernel)

extern "C" __global__ void softmax_backward_kernel(const float* __restrict__ dy, const float* __restrict__ y,
                                                   float* __restrict__ dx, int rows, int classes) {
    const int lane = threadIdx.x & 31, row = warp_row();
    if (row >= rows) return;
    const i64 start = (i64)row * classes;
    float s = 0.0f;
    for (int k = lane; k < classes; k += 32) s += dy[start + k] * y[start + k];
    s = warp_sum(s);
    for (int k = lane; k < classes; k += 32) dx[start + k] = y[start + k] * (dy[start + k] - s);
}
ENGINE_EXPORT_KERNEL(softmax_backward_kernel)

extern "C" __global__ void log_softmax_backward_kernel(const float* __restrict__ dy, const float* __restrict__ y,
                                                       float* __restrict__ dx, int rows, int classes) {
    const int lane = threadIdx.x & 31, row = warp_row();
    if (row >= rows) return;
    const i64 start = (i64)row * classes;
    float s = 0.0f;
    for (int k = lane; k < classes; k += 32) s += dy[start + k];
    s = warp_sum(s);
    for (int k = lane; k < classes; k += 32) dx[start + k] = dy[start + k] - expf(y[start + k]) * s;
}
ENGINE_EXPORT_KERNEL(log_softmax_backward_kernel)
