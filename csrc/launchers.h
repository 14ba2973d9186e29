// launchers.h -- the host launchers of every kernel in kernels/, one per operation.
//
// Each takes device pointers, sizes, hyperparameters and the stream to launch on; it checks
// the sizes, picks the grid, launches, and checks the launch (CUDA_CHECK with the kernel
// name, file and line). Nothing here allocates or synchronises. The pybind11 module
// (bindings/module.cpp) checks the arrays and calls these; engine/cuda/rtc.py mirrors them
// in Python for the NVRTC exposure. Layouts are documented in the kernel files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace engine {

// im2col.cu: x (N, C, H, W) <-> cols (N, C*R*S, P*Q)
void im2col(const float* x, float* cols, int N, int C, int H, int W, int R, int S, int sh, int sw, int ph, int pw,
            cudaStream_t stream);
void col2im(const float* cols, float* x, int N, int C, int H, int W, int R, int S, int sh, int sw, int ph, int pw,
            cudaStream_t stream);

// gemm.cu: C[z] = epilogue(sum over the batches of output z of op(A[t]) @ op(B[t]))
void gemm(int M, int N, int K, const float* A, int lda, int64_t stride_a, bool trans_a, const float* B, int ldb,
          int64_t stride_b, bool trans_b, float* C, int ldc, int64_t stride_c, int batch, int outputs,
          const float* bias, int bias_axis, bool relu, cudaStream_t stream);
void gemm_reduce_splits(const float* partial, float* out, int splits, int64_t n, cudaStream_t stream);

// pool.cu: planes = N*C
void max_pool2d_forward(const float* x, float* y, int* argmax, int planes, int H, int W, int P, int Q, int kh,
                        int kw, int sh, int sw, int ph, int pw, cudaStream_t stream);
void max_pool2d_backward(const float* dy, const int* argmax, float* dx, int planes, int HW, int PQ,
                         cudaStream_t stream);
void avg_pool2d_forward(const float* x, float* y, int planes, int H, int W, int P, int Q, int kh, int kw, int sh,
                        int sw, int ph, int pw, bool count_include_pad, cudaStream_t stream);
void avg_pool2d_backward(const float* dy, float* dx, int planes, int H, int W, int P, int Q, int kh, int kw,
                         int sh, int sw, int ph, int pw, bool count_include_pad, cudaStream_t stream);

// batchnorm.cu: x (N, C, HW)
void batch_norm_stats(const float* x, float* save_mean, float* save_invstd, float* running_mean,
                      float* running_var, int N, int C, int64_t HW, float momentum, float eps, cudaStream_t stream);
void batch_norm_eval_stats(const float* running_mean, const float* running_var, float* save_mean,
                           float* save_invstd, int C, float eps, cudaStream_t stream);
void batch_norm_forward(const float* x, const float* mean, const float* invstd, const float* gamma,
                        const float* beta, float* y, int N, int C, int64_t HW, bool relu, cudaStream_t stream);
void batch_norm_backward_reduce(const float* dy, const float* y, const float* x, const float* mean,
                                const float* invstd, float* dgamma, float* dbeta, int N, int C, int64_t HW,
                                cudaStream_t stream);
void batch_norm_backward(const float* dy, const float* y, const float* x, const float* mean, const float* invstd,
                         const float* gamma, const float* dgamma, const float* dbeta, float* dx, int N, int C,
                         int64_t HW, bool training, cudaStream_t stream);

// activation.cu: n elements; channel ops see (N, C, HW)
void relu_forward(const float* x, float* y, int64_t n, cudaStream_t stream);
void relu_backward(const float* dy, const float* y, float* dx, int64_t n, cudaStream_t stream);
void bias_relu_forward(const float* x, const float* b, float* y, int N, int C, int64_t HW, cudaStream_t stream);
void bias_relu_backward(const float* dy, const float* y, float* dx, float* db, int N, int C, int64_t HW,
                        cudaStream_t stream);
void bias_backward(const float* dy, float* db, int N, int C, int64_t HW, cudaStream_t stream);
void leaky_relu_forward(const float* x, float* y, float slope, int64_t n, cudaStream_t stream);
void leaky_relu_backward(const float* dy, const float* x, float* dx, float slope, int64_t n, cudaStream_t stream);
void sigmoid_forward(const float* x, float* y, int64_t n, cudaStream_t stream);
void sigmoid_backward(const float* dy, const float* y, float* dx, int64_t n, cudaStream_t stream);
void tanh_forward(const float* x, float* y, int64_t n, cudaStream_t stream);
void tanh_backward(const float* dy, const float* y, float* dx, int64_t n, cudaStream_t stream);
void add(const float* a, const float* b, float* c, int64_t n, cudaStream_t stream);

// dropout.cu
void dropout_forward(const float* x, float* y, unsigned char* mask, uint64_t seed, double p, int64_t n,
                     cudaStream_t stream);
void dropout_backward(const float* dy, const unsigned char* mask, float* dx, double p, int64_t n,
                      cudaStream_t stream);

// softmax_xent.cu: logits (N, K); row_loss (N,) and partial (mse_partial_blocks(n),) are workspaces
void softmax_xent_forward(const float* logits, const int64_t* labels, float* loss, float* dlogits,
                          float* row_loss, int N, int K, cudaStream_t stream);
void mse_loss_forward(const float* pred, const float* target, float* loss, float* partial, int64_t n,
                      cudaStream_t stream);
void mse_loss_backward(const float* pred, const float* target, const float* dloss, float* dpred, int64_t n,
                       cudaStream_t stream);

// optim.cu: flat arrays of n parameters, updated in place
void sgd_update(float* param, const float* grad, float* velocity, float lr, float momentum, float weight_decay,
                bool nesterov, int64_t n, cudaStream_t stream);
void adam_update(float* param, const float* grad, float* m, float* v, int64_t step, float lr, float beta1,
                 float beta2, float eps, float weight_decay, bool decoupled, int64_t n, cudaStream_t stream);
void rmsprop_update(float* param, const float* grad, float* square_avg, float lr, float alpha, float eps,
                    float weight_decay, int64_t n, cudaStream_t stream);
void adagrad_update(float* param, const float* grad, float* sum_sq, float lr, float eps, float weight_decay,
                    int64_t n, cudaStream_t stream);

}  // namespace engine
