// im2col.cu (host) -- launchers for kernels/im2col.cu. Layouts and launch shapes are
// documented there; this file checks sizes, picks the grid and checks the launch.
#include "../kernels/im2col.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

static void check_conv_geometry(const char* op, int N, int C, int H, int W, int R, int S, int sh, int sw, int ph,
                                int pw) {
    require(N >= 0 && C >= 0 && H >= 0 && W >= 0, op, "negative size");
    require(R >= 1 && S >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0, op,
            "expected kernel >= 1, stride >= 1, padding >= 0");
    require(H + 2 * ph >= R && W + 2 * pw >= S, op, "kernel larger than the padded input");
}

void im2col(const float* x, float* cols, int N, int C, int H, int W, int R, int S, int sh, int sw, int ph, int pw,
            cudaStream_t stream) {
    check_conv_geometry("im2col", N, C, H, W, R, S, sh, sw, ph, pw);
    const int P = (H + 2 * ph - R) / sh + 1, Q = (W + 2 * pw - S) / sw + 1;
    const int64_t n = (int64_t)N * C * R * S * P * Q;
    if (n == 0) return;
    im2col_forward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(x, cols, N, C, H, W, R, S, P, Q, sh, sw, ph, pw);
    CUDA_CHECK_LAUNCH("im2col_forward_kernel");
}

void col2im(const float* cols, float* x, int N, int C, int H, int W, int R, int S, int sh, int sw, int ph, int pw,
            cudaStream_t stream) {
    check_conv_geometry("col2im", N, C, H, W, R, S, sh, sw, ph, pw);
    const int P = (H + 2 * ph - R) / sh + 1, Q = (W + 2 * pw - S) / sw + 1;
    const int64_t n = (int64_t)N * C * H * W;
    if (n == 0) return;
    col2im_forward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(cols, x, N, C, H, W, R, S, P, Q, sh, sw, ph, pw);
    CUDA_CHECK_LAUNCH("col2im_forward_kernel");
}

}  // namespace engine
