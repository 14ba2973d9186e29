// pool.cu -- 2-D max and average pooling, forward and backward.
//
// Layout: x, dx (N, C, H, W); y, dy, argmax (N, C, P, Q); all C-contiguous, float32 except
// argmax (int32). P = window_output_size(H, kh, sh, ph) (floor, common.cuh), likewise Q. Conventions are those of
// engine/reference/pool.py:
//   * max: padded cells are -inf and never win; scanning the window in row-major order a
//     cell takes over only when strictly greater (ties keep the first) or when it is NaN
//     (NaN propagates); argmax starts at the window's first in-bounds cell and is stored as
//     the flat index h * W + w inside the (n, c) plane.
//   * avg: count_include_pad divides by kh * kw, otherwise by the in-bounds cell count.
// Launch: 1-D grid-stride loops, ENGINE_BLOCK threads, one thread per output (forward),
// per input cell (avg backward) or per (n, c) plane (max backward).
//
//   max_pool2d_forward_kernel    one thread per (n, c, p, q)
//   max_pool2d_backward_kernel   one thread per (n, c) plane, adding each dy of the plane
//       into dx at its argmax in row-major output order (dx zeroed first by the glue).
//       The contract's max_pool2d_backward gets no window geometry, so it cannot gather per
//       input cell; scattering with float atomics would make a cell that is the max of 3 or
//       more overlapping windows differ in the last bit between runs. A sequential scan per
//       plane is deterministic and sums in the reference's order; the parallelism is N*C
//       planes (1,536 at LeNet batch 256, 8,192 at AlexNet batch 128), enough for a
//       memory-latency-bound pass over P*Q <= a few thousand outputs per plane.
//       An argmax outside [0, H*W) is skipped, never written out of bounds.
//   avg_pool2d_forward_kernel    one thread per output
//   avg_pool2d_backward_kernel   one thread per input cell, gathering dy / divisor from
//       every window that covers it (no atomics, deterministic)
//   adaptive_avg_pool2d_forward_kernel    one thread per output (oh, ow): the mean of its
//       window, rows adaptive_start(i, H, oh) to adaptive_end(i, H, oh), columns likewise
//   adaptive_avg_pool2d_backward_kernel   one thread per input cell, gathering dy / count
//       from every window that covers it (windows overlap when oh does not divide H)
#include "common.cuh"

extern "C" __global__ void max_pool2d_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                     int* __restrict__ argmax, int planes, int H, int W,
                                                     int kh, int kw, int sh, int sw, int ph, int pw) {
    const int P = window_output_size(H, kh, sh, ph), Q = window_output_size(W, kw, sw, pw);
    const i64 n = (i64)planes * P * Q;
    GRID_STRIDE_LOOP(i, n) {
        const int q = (int)(i % Q);
        const int p = (int)((i / Q) % P);
        const i64 plane = i / ((i64)P * Q);
        const float* xp = x + plane * H * W;
        const int h0 = p * sh - ph, w0 = q * sw - pw;
        // first in-bounds cell of the window (padding <= kernel / 2 keeps one inside)
        const int hf = h0 < 0 ? 0 : h0, wf = w0 < 0 ? 0 : w0;
        float best = -ENGINE_INFINITY;
        int arg = hf * W + wf;
        for (int r = 0; r < kh; ++r) {
            const int h = h0 + r;
            if (h < 0 || h >= H) continue;
            for (int s = 0; s < kw; ++s) {
                const int w = w0 + s;
                if (w < 0 || w >= W) continue;
                const float v = xp[h * W + w];
                if (v > best || isnan(v)) {
                    best = v;
                    arg = h * W + w;
                }
            }
        }
        y[i] = best;
        argmax[i] = arg;
    }
}
ENGINE_EXPORT_KERNEL(max_pool2d_forward_kernel)

// dy, argmax (planes, P*Q) -> dx (planes, H*W), dx zeroed before the launch
extern "C" __global__ void max_pool2d_backward_kernel(const float* __restrict__ dy, const int* __restrict__ argmax,
                                                      float* __restrict__ dx, int planes, int HW, int PQ) {
    GRID_STRIDE_LOOP(plane, planes) {
        const float* g = dy + plane * PQ;
        const int* a = argmax + plane * PQ;
        float* d = dx + plane * HW;  // this thread alone writes this plane: no race, fixed order
        for (int j = 0; j < PQ; ++j) {
            const int k = a[j];
            if (k >= 0 && k < HW) d[k] += g[j];
        }
    }
}
ENGINE_EXPORT_KERNEL(max_pool2d_backward_kernel)

__device__ __forceinline__ float avg_pool_divisor(int h0, int w0, int H, int W, int kh, int kw,
                                                  int count_include_pad) {
    if (count_include_pad) return (float)(kh * kw);
    const int rows = min(h0 + kh, H) - max(h0, 0);
    const int cols = min(w0 + kw, W) - max(w0, 0);
    return (float)(rows * cols);
}

extern "C" __global__ void avg_pool2d_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                     int planes, int H, int W, int kh, int kw, int sh, int sw,
                                                     int ph, int pw, int count_include_pad) {
    const int P = window_output_size(H, kh, sh, ph), Q = window_output_size(W, kw, sw, pw);
    const i64 n = (i64)planes * P * Q;
    GRID_STRIDE_LOOP(i, n) {
        const int q = (int)(i % Q);
        const int p = (int)((i / Q) % P);
        const float* xp = x + (i / ((i64)P * Q)) * H * W;
        const int h0 = p * sh - ph, w0 = q * sw - pw;
        float acc = 0.0f;
        for (int h = max(h0, 0); h < min(h0 + kh, H); ++h)
            for (int w = max(w0, 0); w < min(w0 + kw, W); ++w) acc += xp[h * W + w];
        y[i] = acc / avg_pool_divisor(h0, w0, H, W, kh, kw, count_include_pad);
    }
}
ENGINE_EXPORT_KERNEL(avg_pool2d_forward_kernel)

extern "C" __global__ void avg_pool2d_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx,
                                                      int planes, int H, int W, int kh, int kw, int sh, int sw,
                                                      int ph, int pw, int count_include_pad) {
    const int P = window_output_size(H, kh, sh, ph), Q = window_output_size(W, kw, sw, pw);
    const i64 n = (i64)planes * H * W;
    GRID_STRIDE_LOOP(i, n) {
        const int w = (int)(i % W);
        const int h = (int)((i / W) % H);
        const float* dyp = dy + (i / ((i64)H * W)) * P * Q;
        // windows p with p*sh - ph <= h < p*sh - ph + kh, i.e. p in [p_lo, p_hi)
        const int hp = h + ph, wp = w + pw;
        const int p_lo = hp < kh ? 0 : (hp - kh) / sh + 1;
        const int p_hi = min(hp / sh + 1, P);
        const int q_lo = wp < kw ? 0 : (wp - kw) / sw + 1;
        const int q_hi = min(wp / sw + 1, Q);
        float acc = 0.0f;
        for (int p = p_lo; p < p_hi; ++p)
            for (int q = q_lo; q < q_hi; ++q)
                acc += dyp[p * Q + q] / avg_pool_divisor(p * sh - ph, q * sw - pw, H, W, kh, kw,
                                                         count_include_pad);
        dx[i] = acc;
    }
}
ENGINE_EXPORT_KERNEL(avg_pool2d_backward_kernel)

extern "C" __global__ void adaptive_avg_pool2d_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                              int planes, int H, int W, int oh, int ow) {
    const i64 n = (i64)planes * oh * ow;
    GRID_STRIDE_LOOP(k, n) {
        const int j = (int)(k % ow), i = (int)((k / ow) % oh);
        const float* xp = x + (k / ((i64)oh * ow)) * H * W;
        const int h0 = adaptive_start(i, H, oh), h1 = adaptive_end(i, H, oh);
        const int w0 = adaptive_start(j, W, ow), w1 = adaptive_end(j, W, ow);
        float acc = 0.0f;
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) acc += xp[h * W + w];
        y[k] = acc / (float)((h1 - h0) * (w1 - w0));
    }
}
ENGINE_EXPORT_KERNEL(adaptive_avg_pool2d_forward_kernel)

extern "C" __global__ void adaptive_avg_pool2d_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx,
                                                               int planes, int H, int W, int oh, int ow) {
    const i64 n = (i64)planes * H * W;
    GRID_STRIDE_LOOP(k, n) {
        const int w = (int)(k % W), h = (int)((k / W) % H);
        const float* dyp = dy + (k / ((i64)H * W)) * oh * ow;
        // the windows covering row h start at or before it: i from the last start <= h down
        const int i_hi = min(oh - 1, ((h + 1) * oh - 1) / H), j_hi = min(ow - 1, ((w + 1) * ow - 1) / W);
        float acc = 0.0f;
        for (int i = i_hi; i >= 0 && adaptive_end(i, H, oh) > h; --i) {
            const int rows = adaptive_end(i, H, oh) - adaptive_start(i, H, oh);
            for (int j = j_hi; j >= 0 && adaptive_end(j, W, ow) > w; --j)
                acc += dyp[i * ow + j] / (float)(rows * (adaptive_end(j, W, ow) - adaptive_start(j, W, ow)));
        }
        dx[k] = acc;
    }
}
ENGINE_EXPORT_KERNEL(adaptive_avg_pool2d_backward_kernel)
