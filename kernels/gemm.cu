// gemm.cu -- hand-written tiled SGEMM with transposes, batching and a fused epilogue.
//
// Computes, for every output batch z (blockIdx.z):
//     C[z] = epilogue( sum over t in [z*T, min(z*T + T, batch)) of op(A[t]) @ op(B[t]) )
// where op(A) is M x K, op(B) is K x N and C[z] is M x N, all row-major float32:
//     A[t] = A + t * stride_a, stored M x K (lda >= K), or K x M when trans_a (lda >= M)
//     B[t] = B + t * stride_b, stored K x N (ldb >= N), or N x K when trans_b (ldb >= K)
//     C[z] = C + z * stride_c, ldc >= N
// A stride of 0 shares one operand across the batch (the conv weight). T = 1 is a
// batched GEMM (conv forward: y[n] = W @ cols[n]); T = batch sums every batch into one
// output (conv weight gradient: dW = sum_n dy[n] @ cols[n]^T, as split-K over batches
// whose partial outputs gemm_reduce_splits_kernel adds in a fixed order).
// Epilogue: bias_axis 0 adds bias[row], 1 adds bias[col], -1 none; then ReLU if relu.
//
// Tiling: a block of 256 threads computes a BM x BN tile of C, stepping through K in
// slices of BK = 8. Each slice of op(A) and op(B) is staged in shared memory k-major
// (As[k][m], Bs[k][n]) so that the inner product reads 4 consecutive floats at a time.
// Each thread accumulates TM x TN outputs in registers (register blocking), as TM/4 x TN/4
// groups of 4 x 4 spread BM/(TM/4) rows apart so that a quarter-warp's 16-byte shared
// reads hit distinct banks. Versions (grid = (ceil(N/BN), ceil(M/BM), outputs)):
//   gemm_<ta><tb>_128x128_kernel  BM = BN = 128, TM = TN = 8  (large matrices)
//   gemm_<ta><tb>_64x64_kernel    BM = BN = 64,  TM = TN = 4  (small ones: more blocks)
// with <ta><tb> in nn, nt, tn, tt (t = operand stored transposed).
// Global loads are 16-byte float4 loads when the host says the operand is aligned (bit 0
// of `vec` for A, bit 1 for B, bit 2 for C: base pointer 16-byte aligned and leading
// dimension and batch stride multiples of 4) and all 4 elements are in bounds; otherwise
// (edge tiles, unaligned views) scalar loads with bounds checks that fill zeros.
#include "common.cuh"

#define GEMM_BK 8
#define GEMM_THREADS 256

template <bool TA, bool TB, int BM, int BN, int TM, int TN>
__device__ __forceinline__ void gemm_tile(int M, int N, int K, const float* __restrict__ A, int lda,
                                          i64 stride_a, const float* __restrict__ B, int ldb, i64 stride_b,
                                          float* __restrict__ C, int ldc, i64 stride_c, int batch,
                                          int batches_per_output, const float* __restrict__ bias,
                                          int bias_axis, int relu, int vec) {
    static_assert((BM / TM) * (BN / TN) == GEMM_THREADS, "one thread per TM x TN sub-tile");
    static_assert(TM % 4 == 0 && TN % 4 == 0, "sub-tiles are made of 4 x 4 groups");
    constexpr int BK = GEMM_BK;
    constexpr int RM = TM / 4, RN = TN / 4;            // 4-row / 4-column groups per thread
    constexpr int ROW_GAP = BM / RM, COL_GAP = BN / RN;  // distance between a thread's groups
    __shared__ __align__(16) float As[BK][BM];
    __shared__ __align__(16) float Bs[BK][BN];

    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN), ty = tid / (BN / TN);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int z = blockIdx.z;
    const bool vec_a = vec & 1, vec_b = vec & 2, vec_c = vec & 4;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    const int t_begin = z * batches_per_output;
    const int t_end = min(t_begin + batches_per_output, batch);
    for (int t = t_begin; t < t_end; ++t) {
        const float* At = A + (i64)t * stride_a;
        const float* Bt = B + (i64)t * stride_b;
        for (int k0 = 0; k0 < K; k0 += BK) {
            // ---- stage op(A)[m0:m0+BM, k0:k0+BK] into As[k][m] ----
            if (!TA) {  // A is M x K: 4 consecutive k of one row per float4
                for (int v = tid; v < BM * BK / 4; v += GEMM_THREADS) {
                    const int row = v / (BK / 4), kk = (v % (BK / 4)) * 4;
                    const int gm = m0 + row, gk = k0 + kk;
                    const float* src = At + (i64)gm * lda + gk;
                    if (vec_a && gm < M && gk + 3 < K) {
                        const float4 f = *reinterpret_cast<const float4*>(src);
                        As[kk + 0][row] = f.x; As[kk + 1][row] = f.y;
                        As[kk + 2][row] = f.z; As[kk + 3][row] = f.w;
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j) As[kk + j][row] = (gm < M && gk + j < K) ? src[j] : 0.0f;
                    }
                }
            } else {  // A is K x M: 4 consecutive m of one k per float4
                for (int v = tid; v < BM * BK / 4; v += GEMM_THREADS) {
                    const int kk = v / (BM / 4), mm = (v % (BM / 4)) * 4;
                    const int gk = k0 + kk, gm = m0 + mm;
                    const float* src = At + (i64)gk * lda + gm;
                    if (vec_a && gk < K && gm + 3 < M) {
                        *reinterpret_cast<float4*>(&As[kk][mm]) = *reinterpret_cast<const float4*>(src);
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j) As[kk][mm + j] = (gk < K && gm + j < M) ? src[j] : 0.0f;
                    }
                }
            }
            // ---- stage op(B)[k0:k0+BK, n0:n0+BN] into Bs[k][n] ----
            if (!TB) {  // B is K x N: 4 consecutive n of one k per float4
                for (int v = tid; v < BN * BK / 4; v += GEMM_THREADS) {
                    const int kk = v / (BN / 4), nn = (v % (BN / 4)) * 4;
                    const int gk = k0 + kk, gn = n0 + nn;
                    const float* src = Bt + (i64)gk * ldb + gn;
                    if (vec_b && gk < K && gn + 3 < N) {
                        *reinterpret_cast<float4*>(&Bs[kk][nn]) = *reinterpret_cast<const float4*>(src);
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j) Bs[kk][nn + j] = (gk < K && gn + j < N) ? src[j] : 0.0f;
                    }
                }
            } else {  // B is N x K: 4 consecutive k of one column n per float4
                for (int v = tid; v < BN * BK / 4; v += GEMM_THREADS) {
                    const int col = v / (BK / 4), kk = (v % (BK / 4)) * 4;
                    const int gn = n0 + col, gk = k0 + kk;
                    const float* src = Bt + (i64)gn * ldb + gk;
                    if (vec_b && gn < N && gk + 3 < K) {
                        const float4 f = *reinterpret_cast<const float4*>(src);
                        Bs[kk + 0][col] = f.x; Bs[kk + 1][col] = f.y;
                        Bs[kk + 2][col] = f.z; Bs[kk + 3][col] = f.w;
                    } else {
#pragma unroll
                        for (int j = 0; j < 4; ++j) Bs[kk + j][col] = (gn < N && gk + j < K) ? src[j] : 0.0f;
                    }
                }
            }
            __syncthreads();  // the slice is staged before anyone reads it

#pragma unroll
            for (int k = 0; k < BK; ++k) {
                float a[TM], b[TN];
#pragma unroll
                for (int h = 0; h < RM; ++h) {
                    const float4 f = *reinterpret_cast<const float4*>(&As[k][h * ROW_GAP + ty * 4]);
                    a[h * 4 + 0] = f.x; a[h * 4 + 1] = f.y; a[h * 4 + 2] = f.z; a[h * 4 + 3] = f.w;
                }
#pragma unroll
                for (int g = 0; g < RN; ++g) {
                    const float4 f = *reinterpret_cast<const float4*>(&Bs[k][g * COL_GAP + tx * 4]);
                    b[g * 4 + 0] = f.x; b[g * 4 + 1] = f.y; b[g * 4 + 2] = f.z; b[g * 4 + 3] = f.w;
                }
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            __syncthreads();  // everyone is done reading before the next slice overwrites it
        }
    }

    // ---- epilogue: bias, ReLU, store ----
    float* Cz = C + (i64)z * stride_c;
#pragma unroll
    for (int h = 0; h < RM; ++h) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int gm = m0 + h * ROW_GAP + ty * 4 + i;
            if (gm >= M) continue;
#pragma unroll
            for (int g = 0; g < RN; ++g) {
                const int gn = n0 + g * COL_GAP + tx * 4;
                float v[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float r = acc[h * 4 + i][g * 4 + j];
                    if (bias_axis == 0) r += bias[gm];
                    else if (bias_axis == 1 && gn + j < N) r += bias[gn + j];
                    if (relu) r = relu_value(r);
                    v[j] = r;
                }
                float* dst = Cz + (i64)gm * ldc + gn;
                if (vec_c && gn + 3 < N) {
                    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (gn + j < N) dst[j] = v[j];
                }
            }
        }
    }
}

#define GEMM_KERNEL(name, TA, TB, BM, BN, TM, TN)                                                    \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) name(                                 \
        int M, int N, int K, const float* A, int lda, i64 stride_a, const float* B, int ldb,        \
        i64 stride_b, float* C, int ldc, i64 stride_c, int batch, int batches_per_output,           \
        const float* bias, int bias_axis, int relu, int vec) {                                      \
        gemm_tile<TA, TB, BM, BN, TM, TN>(M, N, K, A, lda, stride_a, B, ldb, stride_b, C, ldc,      \
                                          stride_c, batch, batches_per_output, bias, bias_axis, relu, \
                                          vec);                                                     \
    }                                                                                               \
    ENGINE_EXPORT_KERNEL(name)

GEMM_KERNEL(gemm_nn_128x128_kernel, false, false, 128, 128, 8, 8)
GEMM_KERNEL(gemm_nt_128x128_kernel, false, true, 128, 128, 8, 8)
GEMM_KERNEL(gemm_tn_128x128_kernel, true, false, 128, 128, 8, 8)
GEMM_KERNEL(gemm_tt_128x128_kernel, true, true, 128, 128, 8, 8)
GEMM_KERNEL(gemm_nn_64x64_kernel, false, false, 64, 64, 4, 4)
GEMM_KERNEL(gemm_nt_64x64_kernel, false, true, 64, 64, 4, 4)
GEMM_KERNEL(gemm_tn_64x64_kernel, true, false, 64, 64, 4, 4)
GEMM_KERNEL(gemm_tt_64x64_kernel, true, true, 64, 64, 4, 4)

// out (n,) = sum over s < splits of partial[s * n + i], added in increasing s (deterministic)
extern "C" __global__ void gemm_reduce_splits_kernel(const float* __restrict__ partial, float* __restrict__ out,
                                                     int splits, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float acc = 0.0f;
        for (int s = 0; s < splits; ++s) acc += partial[(i64)s * n + i];
        out[i] = acc;
    }
}
ENGINE_EXPORT_KERNEL(gemm_reduce_splits_kernel)
