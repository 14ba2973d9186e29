// gemm.cu (host) -- launchers for kernels/gemm.cu: picks the tile version and the grid.
#include "../kernels/gemm.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

typedef void (*gemm_kernel_t)(int, int, int, const float*, int, i64, const float*, int, i64, float*, int, i64, int,
                              int, const float*, int, int, int);

static bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

void gemm(int M, int N, int K, const float* A, int lda, int64_t stride_a, bool trans_a, const float* B, int ldb,
          int64_t stride_b, bool trans_b, float* C, int ldc, int64_t stride_c, int batch, int outputs,
          const float* bias, int bias_axis, bool relu, cudaStream_t stream) {
    require(M >= 0 && N >= 0 && K >= 0, "gemm", "negative size");
    require(lda >= (trans_a ? M : K) && ldb >= (trans_b ? K : N) && ldc >= N, "gemm",
            "leading dimension smaller than the row length");
    require(batch >= 1 && outputs >= 1 && outputs <= batch, "gemm", "expected 1 <= outputs <= batch");
    require(outputs <= 65535, "gemm", "at most 65535 outputs per launch (grid z)");
    require(bias_axis >= -1 && bias_axis <= 1 && (bias_axis == -1 || bias != nullptr), "gemm",
            "bias_axis must be -1 (none), 0 (per row) or 1 (per column) with a bias");
    if (M == 0 || N == 0) return;
    const int per_output = (int)cdiv(batch, outputs);
    require(cdiv(batch, per_output) == outputs, "gemm", "outputs must split the batch into non-empty groups");

    // 16-byte loads/stores only where every row start of every batch is 16-byte aligned
    const int vec = (aligned16(A) && lda % 4 == 0 && stride_a % 4 == 0 ? 1 : 0) |
                    (aligned16(B) && ldb % 4 == 0 && stride_b % 4 == 0 ? 2 : 0) |
                    (aligned16(C) && ldc % 4 == 0 && stride_c % 4 == 0 ? 4 : 0);
    const int tile = gemm_tile(M, N, outputs);
    static const gemm_kernel_t kernels[2][4] = {
        {gemm_nn_64x64_kernel, gemm_nt_64x64_kernel, gemm_tn_64x64_kernel, gemm_tt_64x64_kernel},
        {gemm_nn_128x128_kernel, gemm_nt_128x128_kernel, gemm_tn_128x128_kernel, gemm_tt_128x128_kernel}};
    static const char* names[2][4] = {
        {"gemm_nn_64x64_kernel", "gemm_nt_64x64_kernel", "gemm_tn_64x64_kernel", "gemm_tt_64x64_kernel"},
        {"gemm_nn_128x128_kernel", "gemm_nt_128x128_kernel", "gemm_tn_128x128_kernel", "gemm_tt_128x128_kernel"}};
    const int version = (trans_a ? 2 : 0) + (trans_b ? 1 : 0);
    const gemm_kernel_t kernel = kernels[tile == 128][version];
    require(cdiv(M, tile) <= 65535, "gemm", "M too large for one launch (grid y)");
    const dim3 grid((unsigned)cdiv(N, tile), (unsigned)cdiv(M, tile), (unsigned)outputs);
    kernel<<<grid, GEMM_THREADS, 0, stream>>>(M, N, K, A, lda, stride_a, B, ldb, stride_b, C, ldc, stride_c, batch,
                                              per_output, bias, bias_axis, relu ? 1 : 0, vec);
    CUDA_CHECK_LAUNCH(names[tile == 128][version]);
}

void gemm_reduce_splits(const float* partial, float* out, int splits, int64_t n, cudaStream_t stream) {
    require(splits >= 1 && n >= 0, "gemm_reduce_splits", "expected splits >= 1 and n >= 0");
    if (n == 0) return;
    gemm_reduce_splits_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(partial, out, splits, n);
    CUDA_CHECK_LAUNCH("gemm_reduce_splits_kernel");
}

}  // namespace engine
