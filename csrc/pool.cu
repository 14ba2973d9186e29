// pool.cu (host) -- launchers for kernels/pool.cu. planes = N*C.
#include "../kernels/pool.cu"
#include "launch_common.h"
#include "launchers.h"

namespace engine {

static void check_pool_geometry(const char* op, int planes, int H, int W, int P, int Q, int kh, int kw, int sh,
                                int sw, int ph, int pw) {
    require(planes >= 0 && H >= 1 && W >= 1, op, "expected a non-empty plane");
    require(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1, op, "expected kernel >= 1 and stride >= 1");
    require(ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw, op, "expected 0 <= padding <= kernel / 2");
    require(P == (H + 2 * ph - kh) / sh + 1 && Q == (W + 2 * pw - kw) / sw + 1 && P >= 1 && Q >= 1, op,
            "output size does not match the input size and window geometry");
}

void max_pool2d_forward(const float* x, float* y, int* argmax, int planes, int H, int W, int P, int Q, int kh,
                        int kw, int sh, int sw, int ph, int pw, cudaStream_t stream) {
    check_pool_geometry("max_pool2d_forward", planes, H, W, P, Q, kh, kw, sh, sw, ph, pw);
    const int64_t n = (int64_t)planes * P * Q;
    if (n == 0) return;
    max_pool2d_forward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(x, y, argmax, planes, H, W, P, Q, kh, kw, sh,
                                                                       sw, ph, pw);
    CUDA_CHECK_LAUNCH("max_pool2d_forward_kernel");
}

void max_pool2d_backward(const float* dy, const int* argmax, float* dx, int planes, int HW, int PQ,
                         cudaStream_t stream) {
    require(planes >= 0 && HW >= 1 && PQ >= 1, "max_pool2d_backward", "expected non-empty planes");
    if (planes == 0) return;
    // the kernel adds into dx: start from zero (cells that no window chose stay zero)
    CUDA_CHECK(cudaMemsetAsync(dx, 0, sizeof(float) * (size_t)planes * HW, stream));
    max_pool2d_backward_kernel<<<grid_1d(planes), ENGINE_BLOCK, 0, stream>>>(dy, argmax, dx, planes, HW, PQ);
    CUDA_CHECK_LAUNCH("max_pool2d_backward_kernel");
}

void avg_pool2d_forward(const float* x, float* y, int planes, int H, int W, int P, int Q, int kh, int kw, int sh,
                        int sw, int ph, int pw, bool count_include_pad, cudaStream_t stream) {
    check_pool_geometry("avg_pool2d_forward", planes, H, W, P, Q, kh, kw, sh, sw, ph, pw);
    const int64_t n = (int64_t)planes * P * Q;
    if (n == 0) return;
    avg_pool2d_forward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(x, y, planes, H, W, P, Q, kh, kw, sh, sw, ph,
                                                                       pw, count_include_pad ? 1 : 0);
    CUDA_CHECK_LAUNCH("avg_pool2d_forward_kernel");
}

void avg_pool2d_backward(const float* dy, float* dx, int planes, int H, int W, int P, int Q, int kh, int kw,
                         int sh, int sw, int ph, int pw, bool count_include_pad, cudaStream_t stream) {
    check_pool_geometry("avg_pool2d_backward", planes, H, W, P, Q, kh, kw, sh, sw, ph, pw);
    const int64_t n = (int64_t)planes * H * W;
    if (n == 0) return;
    avg_pool2d_backward_kernel<<<grid_1d(n), ENGINE_BLOCK, 0, stream>>>(dy, dx, planes, H, W, P, Q, kh, kw, sh, sw,
                                                                        ph, pw, count_include_pad ? 1 : 0);
    CUDA_CHECK_LAUNCH("avg_pool2d_backward_kernel");
}

}  // namespace engine
