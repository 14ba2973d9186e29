// activation.cu -- elementwise activations, their gradients, bias gradient, add.
//
// Layout: every tensor is C-contiguous float32. "Channel" tensors are (N, C, ...) with
// HW = product of the trailing dims (1 for (N, C)); element i belongs to channel
// (i / HW) % C. Elementwise kernels: 1-D grid-stride loop, ENGINE_BLOCK threads, any grid.
// No __restrict__: outputs may alias inputs (in-place updates, gradient accumulation);
// each element is read before it is written by the same thread, so that is safe.
// Bias gradient: one block of ENGINE_REDUCE_THREADS per channel, summing its N*HW
// elements in a fixed order (deterministic, no atomics).
//
//   relu_forward_kernel          y = max(x, 0)
//   relu_backward_kernel         dx = dy * (y > 0)
//   bias_relu_forward_kernel     y = max(x + b[c], 0)
//   bias_relu_backward_kernel    dx = dy * (y > 0), db[c] = sum of dx over channel c
//   bias_backward_kernel         db[c] = sum of dy over channel c
//   leaky_relu_forward_kernel    y = x > 0 ? x : slope * x
//   leaky_relu_backward_kernel   dx = x > 0 ? dy : slope * dy
//   sigmoid_forward_kernel       y = 1 / (1 + exp(-x)), stable for large |x|
//   sigmoid_backward_kernel      dx = dy * y * (1 - y)
//   tanh_forward_kernel          y = tanh(x)
//   tanh_backward_kernel         dx = dy * (1 - y^2)
//   add_forward_kernel           c = a + b
#include "common.cuh"

extern "C" __global__ void relu_forward_kernel(const float* x, float* y, i64 n) {
    GRID_STRIDE_LOOP(i, n) y[i] = relu_value(x[i]);
}

extern "C" __global__ void relu_backward_kernel(const float* dy, const float* y,
                                                float* dx, i64 n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// x, y (N, C, HW); b (C,)
extern "C" __global__ void bias_relu_forward_kernel(const float* x, const float* b,
                                                    float* y, i64 n, int channels, i64 hw) {
    GRID_STRIDE_LOOP(i, n) {
        const int c = (int)((i / hw) % channels);
        y[i] = relu_value(x[i] + b[c]);
    }
}

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

// dy (N, C, HW); db (C,); grid = C blocks
extern "C" __global__ void bias_backward_kernel(const float* dy, float* db,
                                                int batch, int channels, i64 hw) {
    channel_grad_sum(dy, nullptr, nullptr, db, batch, channels, hw);
}

extern "C" __global__ void leaky_relu_forward_kernel(const float* x, float* y,
                                                     float slope, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        y[i] = v > 0.0f ? v : slope * v;
    }
}

extern "C" __global__ void leaky_relu_backward_kernel(const float* dy, const float* x,
                                                      float* dx, float slope, i64 n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = x[i] > 0.0f ? dy[i] : slope * dy[i];
}

extern "C" __global__ void sigmoid_forward_kernel(const float* x, float* y, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        // exp of a non-positive number only: never overflows, so large |x| gives 0 or 1
        const float e = expf(-fabsf(v));
        y[i] = v >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    }
}

extern "C" __global__ void sigmoid_backward_kernel(const float* dy, const float* y,
                                                   float* dx, i64 n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

extern "C" __global__ void tanh_forward_kernel(const float* x, float* y, i64 n) {
    GRID_STRIDE_LOOP(i, n) y[i] = tanhf(x[i]);
}

extern "C" __global__ void tanh_backward_kernel(const float* dy, const float* y,
                                                float* dx, i64 n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

// c may alias a or b (in-place gradient accumulation): each element is read before written
// by the same thread, so aliasing is safe; hence no here.
extern "C" __global__ void add_forward_kernel(const float* a, const float* b, float* c, i64 n) {
    GRID_STRIDE_LOOP(i, n) c[i] = a[i] + b[i];
}
