// im2col.cu -- unfold image patches into columns (and fold them back) for convolution.
//
// Layout: x (N, C, H, W); cols (N, C*R*S, P*Q) with rows ordered c, then r, then s -- the
// order of w.reshape(K, C*R*S) -- and columns ordered p, then q. Zero padding (ph, pw),
// stride (sh, sw); P = window_output_size(H, R, sh, ph), Q likewise (common.cuh).
// Launch: 1-D grid-stride loops, ENGINE_BLOCK threads, any grid.
//   im2col_forward_kernel   one thread per cols element (consecutive threads write
//                           consecutive columns: coalesced stores)
//   col2im_forward_kernel   one thread per x element, gathering every (r, s) tap that read
//                           it: overlapping patches are summed without atomics, in a fixed
//                           order, so the result is deterministic
#include "common.cuh"

extern "C" __global__ void im2col_forward_kernel(const float* __restrict__ x, float* __restrict__ cols, int N,
                                                 int C, int H, int W, int R, int S, int sh, int sw, int ph,
                                                 int pw) {
    const int P = window_output_size(H, R, sh, ph), Q = window_output_size(W, S, sw, pw);
    const i64 pq = (i64)P * Q;
    const i64 rows = (i64)C * R * S;
    const i64 n_total = (i64)N * rows * pq;
    GRID_STRIDE_LOOP(i, n_total) {
        const int q = (int)(i % Q);
        const int p = (int)((i / Q) % P);
        const i64 row = (i / pq) % rows;
        const i64 n = i / (pq * rows);
        const int s = (int)(row % S);
        const int r = (int)((row / S) % R);
        const int c = (int)(row / ((i64)R * S));
        const int h = p * sh - ph + r;
        const int w = q * sw - pw + s;
        cols[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * C + c) * H + h) * W + w] : 0.0f;
    }
}
ENGINE_EXPORT_KERNEL(im2col_forward_kernel)

// cols (N, C*R*S, P*Q) -> x (N, C, H, W)
extern "C" __global__ void col2im_forward_kernel(const float* __restrict__ cols, float* __restrict__ x, int N,
                                                 int C, int H, int W, int R, int S, int sh, int sw, int ph,
                                                 int pw) {
    const int P = window_output_size(H, R, sh, ph), Q = window_output_size(W, S, sw, pw);
    const i64 pq = (i64)P * Q;
    const i64 n_total = (i64)N * C * H * W;
    GRID_STRIDE_LOOP(i, n_total) {
        const int w = (int)(i % W);
        const int h = (int)((i / W) % H);
        const int c = (int)((i / ((i64)H * W)) % C);
        const i64 n = i / ((i64)C * H * W);
        const float* col = cols + (n * C + c) * (i64)R * S * pq;  // rows of channel c
        float acc = 0.0f;
        for (int r = 0; r < R; ++r) {
            // the output row p whose tap r lands on h: p * sh = h + ph - r
            const int hp = h + ph - r;
            if (hp < 0 || hp % sh != 0) continue;
            const int p = hp / sh;
            if (p >= P) continue;
            for (int s = 0; s < S; ++s) {
                const int wq = w + pw - s;
                if (wq < 0 || wq % sw != 0) continue;
                const int q = wq / sw;
                if (q >= Q) continue;
                acc += col[((i64)r * S + s) * pq + (i64)p * Q + q];
            }
        }
        x[i] = acc;
    }
}
ENGINE_EXPORT_KERNEL(col2im_forward_kernel)
