// activation.cu -- elementwise activations and their gradients, bias + ReLU, bias gradient, add.
//
// Layout: every tensor is C-contiguous float32. "Channel" tensors are (N, C, ...) with
// HW = product of the trailing dims (1 for (N, C)); element i belongs to channel
// (i / HW) % C. Elementwise kernels: 1-D grid-stride loop, ENGINE_BLOCK threads, any grid.
// No __restrict__: outputs may alias inputs (in-place updates, gradient accumulation);
// each element is read before it is written by the same thread, so that is safe.
// Bias gradient: one block of ENGINE_REDUCE_THREADS per channel, summing its N*HW
// elements in a fixed order (deterministic, no atomics).
//
// The elementwise activations are one table (engine/reference/activation.py, ELEMENTWISE):
// for a row <name> this file holds the pair of __device__ functions
//     float <name>_forward(float x, float a, float b)               y  = f(x)
//     float <name>_backward(float dy, float saved, float a, float b) dx = dy * f'(x)
// (saved is the forward's output y or its input x, as the row says; a, b are the row's
// scalar parameters, 0 when it has fewer) and one line ELEMENTWISE_KERNELS(<name>), which
// makes the two kernels <name>_forward_kernel and <name>_backward_kernel. One launch
// description serves them all (engine/cuda/activation.py).
//
//   <name>_forward_kernel        y = f(x)                     (x, y, a, b, n)
//   <name>_backward_kernel       dx = dy * f'(x)              (dy, saved, dx, a, b, n)
//   bias_relu_forward_kernel     y = max(x + b[c], 0)
//   bias_relu_backward_kernel    dx = dy * (y > 0), db[c] = sum of dx over channel c
//   bias_backward_kernel         db[c] = sum of dy over channel c
//   add_forward_kernel           c = a + b
#include "common.cuh"

#define ELEMENTWISE_KERNELS(name)                                                                  \
    extern "C" __global__ void name##_forward_kernel(const float* x, float* y, float a, float b,   \
                                                     i64 n) {                                      \
        GRID_STRIDE_LOOP(i, n) y[i] = name##_forward(x[i], a, b);                                  \
    }                                                                                              \
    ENGINE_EXPORT_KERNEL(name##_forward_kernel)                                                    \
    extern "C" __global__ void name##_backward_kernel(const float* dy, const float* saved, float* dx, \
                                                      float a, float b, i64 n) {                   \
        GRID_STRIDE_LOOP(i, n) dx[i] = name##_backward(dy[i], saved[i], a, b);                     \
    }                                                                                              \
    ENGINE_EXPORT_KERNEL(name##_backward_kernel)

// ---- the elementwise table: one pair per row -----------------------------------------

// relu: saves y; y > 0 exactly where x > 0, and the subgradient at 0 is 0 (as PyTorch)
__device__ __forceinline__ float relu_forward(float x, float, float) { return relu_value(x); }
__device__ __forceinline__ float relu_backward(float dy, float y, float, float) { return y > 0.0f ? dy : 0.0f; }
ELEMENTWISE_KERNELS(relu)

// leaky_relu: saves x; a = negative_slope
__device__ __forceinline__ float leaky_relu_forward(float x, float a, float) { return x > 0.0f ? x : a * x; }
__device__ __forceinline__ float leaky_relu_backward(float dy, float x, float a, float) {
    return x > 0.0f ? dy : a * dy;
}
ELEMENTWISE_KERNELS(leaky_relu)

// sigmoid: saves y. exp of a non-positive number only: never overflows, so large |x| gives 0 or 1
__device__ __forceinline__ float sigmoid_forward(float x, float, float) {
    const float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}
__device__ __forceinline__ float sigmoid_backward(float dy, float y, float, float) { return dy * y * (1.0f - y); }
ELEMENTWISE_KERNELS(sigmoid)

// tanh: saves y
__device__ __forceinline__ float tanh_forward(float x, float, float) { return tanhf(x); }
__device__ __forceinline__ float tanh_backward(float dy, float y, float, float) { return dy * (1.0f - y * y); }
ELEMENTWISE_KERNELS(tanh)

// gelu: saves x; exact, x Phi(x) with Phi the standard normal CDF (torch's approximate='none')
__device__ __forceinline__ float gelu_forward(float x, float, float) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}
__device__ __forceinline__ float gelu_backward(float dy, float x, float, float) {
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);  // 1 / sqrt(2 pi) e^(-x^2 / 2)
    return dy * (cdf + x * pdf);
}
ELEMENTWISE_KERNELS(gelu)

// gelu_tanh: saves x; 0.5 x (1 + tanh(k (x + c x^3))), k = sqrt(2 / pi), c = 0.044715 (approximate='tanh')
__device__ __forceinline__ float gelu_tanh_forward(float x, float, float) {
    return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu_tanh_backward(float dy, float x, float, float) {
    const float t = tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x));
    const float inner_grad = 0.79788456080286536f * (1.0f + 3.0f * 0.044715f * x * x);
    return dy * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * inner_grad);
}
ELEMENTWISE_KERNELS(gelu_tanh)

// ---- bias + ReLU, bias gradient, add ---------------------------------------------------

// x, y (N, C, HW); b (C,)
extern "C" __global__ void bias_relu_forward_kernel(const float* x, const float* b,
                                                    float* y, i64 n, int channels, i64 hw) {
    GRID_STRIDE_LOOP(i, n) {
        const int c = (int)((i / hw) % channels);
        y[i] = relu_value(x[i] + b[c]);
    }
}
ENGINE_EXPORT_KERNEL(bias_relu_forward_kernel)

// Sum over channel c of g(e) for every element e of (N, C, HW) in channel c, where g is
// dy masked by y > 0 when y is given; writes the masked dy to dx when dx is given.
// Launched with one block per channel; every thread must reach block_sum.
__device__ __forceinline__ void channel_grad_sum(const float* dy, const float* y,
                                                 float* dx, float* db,
                                                 int batch, int channels, i64 hw) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    const i64 count = (i64)batch * hw;
    float acc = 0.0f;
    for (i64 j = threadIdx.x; j < count; j += blockDim.x) {
        const i64 nb = j / hw, k = j % hw;
        const i64 i = (nb * channels + c) * hw + k;
        float g = dy[i];
        if (y != nullptr) g = y[i] > 0.0f ? g : 0.0f;
        if (dx != nullptr) dx[i] = g;
        acc += g;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) db[c] = acc;
}

// dy, y, dx (N, C, HW); db (C,); grid = C blocks
extern "C" __global__ void bias_relu_backward_kernel(const float* dy, const float* y,
                                                     float* dx, float* db,
                                                     int batch, int channels, i64 hw) {
    channel_grad_sum(dy, y, dx, db, batch, channels, hw);
}
ENGINE_EXPORT_KERNEL(bias_relu_backward_kernel)

// dy (N, C, HW); db (C,); grid = C blocks
extern "C" __global__ void bias_backward_kernel(const float* dy, float* db,
                                                int batch, int channels, i64 hw) {
    channel_grad_sum(dy, nullptr, nullptr, db, batch, channels, hw);
}
ENGINE_EXPORT_KERNEL(bias_backward_kernel)

// c may alias a or b (in-place gradient accumulation): each element is read before it is
// written by the same thread, so aliasing is safe; hence no __restrict__ here.
extern "C" __global__ void add_forward_kernel(const float* a, const float* b, float* c, i64 n) {
    GRID_STRIDE_LOOP(i, n) c[i] = a[i] + b[i];
}
ENGINE_EXPORT_KERNEL(add_forward_kernel)
