// softmax_xent.cu (host) -- launchers for kernels/softmax_xent.cu. Each loss is two
// launches on the same stream (rows or partial sums, then one block for the mean), so the
// loss lands in device memory without a host sync.
#include "../kernels/softmax_xent.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

void softmax_xent_forward(const float* logits, const int64_t* labels, float* loss, float* dlogits,
                          float* row_loss, int N, int K, cudaStream_t stream) {
    require(N >= 1 && K >= 1, "softmax_xent_forward", "expected N >= 1 and K >= 1");
    const int rows_per_block = ENGINE_REDUCE_THREADS / 32;  // one warp per row
    softmax_xent_forward_kernel<<<(unsigned)cdiv(N, rows_per_block), ENGINE_REDUCE_THREADS, 0, stream>>>(
        logits, reinterpret_cast<const long long*>(labels), dlogits, row_loss, N, K);
    CUDA_CHECK_LAUNCH("softmax_xent_forward_kernel");
    mean_reduce_kernel<<<1, ENGINE_REDUCE_THREADS, 0, stream>>>(row_loss, loss, N, (float)N);
    CUDA_CHECK_LAUNCH("mean_reduce_kernel");
}

void mse_loss_forward(const float* pred, const float* target, float* loss, float* partial, int64_t n,
                      cudaStream_t stream) {
    require(n >= 1, "mse_loss_forward", "expected at least one element");
    const int blocks = mse_partial_blocks(n);
    mse_partial_forward_kernel<<<blocks, ENGINE_REDUCE_THREADS, 0, stream>>>(pred, target, partial, n);
    CUDA_CHECK_LAUNCH("mse_partial_forward_kernel");
    mean_reduce_kernel<<<1, ENGINE_REDUCE_THREADS, 0, stream>>>(partial, loss, blocks, (float)n);
    CUDA_CHECK_LAUNCH("mean_reduce_kernel");
}

void mse_loss_backward(const float* pred, const float* target, const float* dloss, float* dpred, int64_t n,
                       cudaStream_t stream) {
    require(n >= 0, "mse_loss_backward", "negative size");
    if (n == 0) return;
    mse_backward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(pred, target, dloss, dpred, (float)(2.0 / n), n);
    CUDA_CHECK_LAUNCH("mse_backward_kernel");
}

}  // namespace engine
