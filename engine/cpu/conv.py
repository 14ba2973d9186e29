"""Convolution on the CPU: Numba kernels move the data, BLAS (np.matmul / np.dot) does the
arithmetic. Same ops and layouts as engine.reference.conv (the spec); float32 in, float32 out.

    cols (N, C*R*S, P*Q)   the contract's im2col layout; row c*R*S + r*S + s of sample n
                           holds tap (r, s) of channel c at every output cell p*Q + q
    wide (C*R*S, N*P*Q)    the same rows with the batch laid side by side, private to the
                           weight gradient so that one GEMM sums over the whole batch

    forward          y[n]  (K, P*Q)     = w2 @ cols[n]                 one batched matmul
    backward data    dcols[n] (CRS, PQ) = w2.T @ dy[n]                 then col2im
    backward weight  dw.T  (CRS, K)     = wide @ dy_t.T                one GEMM, inner dim N*P*Q

with w2 = w.reshape(K, C*R*S) and dy_t (K, N*P*Q) dy with its batch and channel axes
swapped. y[n] and dy[n] are already (K, P*Q) blocks of NCHW arrays, so forward and
backward data need no transposes at all. Both cols layouts are filled with contiguous
row segments (stride 1 along q), which is what makes im2col cheap. Timed against the
alternatives (one GEMM with the batch as rows, (N*P*Q, C*R*S)) at the LeNet shapes; this
mix was the fastest on 2 cores.

Every Numba kernel is parallel over (sample, channel) planes or samples, so no two
threads write one element, and results do not depend on the thread count.
"""
from __future__ import annotations

import numba as nb
import numpy as np


def _output_size(h, w, kernel, stride, padding):
    (r, s), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1


def _empty(shape, out):
    return np.empty(shape, dtype=np.float32) if out is None else out


@nb.njit(cache=True, inline="always")
def _span(n_out, stride, offset, size):
    """Output indices i in [lo, hi) whose input index i*stride + offset lies in [0, size)."""
    lo = max(0, (-offset + stride - 1) // stride)
    hi = min(n_out, (size - offset + stride - 1) // stride)
    return lo, max(lo, hi)


# ---------------------------------------------------------------- contract layout


# The kernels below index flat arrays with computed offsets instead of slicing: rows are
# short (Q is 10..55 at LeNet/AlexNet sizes), and building a view per row cost more than
# copying it. The inner copies use unsigned indices: Numba then skips its negative-index
# wraparound, and LLVM vectorizes the loop (im2col went from 6 ms to 1.3 ms at LeNet conv1).


@nb.njit(cache=True, inline="always")
def _taps_to_cols(xf, xoff, h_, w_, r, s_, sh, sw, ph, pw, p_, q_, dst, doff, dstride):
    # the S taps (r, 0..S-1) of the plane at xf[xoff:xoff + H*W] -> S rows of dst:
    # tap (r, s) at dst[doff + s*dstride + p*Q + q]
    p_lo, p_hi = _span(p_, sh, r - ph, h_)
    for s in range(s_):
        q_lo, q_hi = _span(q_, sw, s - pw, w_)
        row = doff + s * dstride
        for i in range(row, row + p_lo * q_):            # rows of padding above
            dst[i] = 0.0
        for i in range(row + p_hi * q_, row + p_ * q_):  # and below
            dst[i] = 0.0
        for p in range(p_lo, p_hi):
            d = row + p * q_
            for i in range(d, d + q_lo):                 # padding left
                dst[i] = 0.0
            for i in range(d + q_hi, d + q_):            # and right
                dst[i] = 0.0
            # in-bounds run: dst[d + q] = x[h, q*sw + s - pw] for q in [q_lo, q_hi)
            dq = np.uint64(d + q_lo)
            xq = np.uint64(xoff + (p * sh + r - ph) * w_ + q_lo * sw + s - pw)
            if sw == 1:
                for i in range(np.uint64(q_hi - q_lo)):
                    dst[dq + i] = xf[xq + i]
            else:
                step = np.uint64(sw)
                for i in range(np.uint64(q_hi - q_lo)):
                    dst[dq + i] = xf[xq + i * step]


@nb.njit(cache=True, parallel=True)
def _im2col_kernel(x, r_, s_, sh, sw, ph, pw, p_, q_, cols):
    # x (N, C, H, W) -> cols (N, C*R*S, P*Q); one (n, c, r) task: S rows of cols
    n_, c_, h_, w_ = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    pq = p_ * q_
    for ncr in nb.prange(n_ * c_ * r_):
        nc, r = ncr // r_, ncr % r_
        _taps_to_cols(xf, nc * h_ * w_, h_, w_, r, s_, sh, sw, ph, pw, p_, q_, cf, (ncr * s_) * pq, pq)


@nb.njit(cache=True, parallel=True)
def _im2col_wide_kernel(x, r_, s_, sh, sw, ph, pw, p_, q_, wide):
    # x (N, C, H, W) -> wide (C*R*S, N*P*Q); one (n, c, r) task: S row segments of wide
    n_, c_, h_, w_ = x.shape
    xf, wf = x.reshape(-1), wide.reshape(-1)
    pq = p_ * q_
    for ncr in nb.prange(n_ * c_ * r_):
        nc, r = ncr // r_, ncr % r_
        n, cr = nc // c_, ncr % (c_ * r_)
        _taps_to_cols(xf, nc * h_ * w_, h_, w_, r, s_, sh, sw, ph, pw, p_, q_,
                      wf, (cr * s_) * (n_ * pq) + n * pq, n_ * pq)


@nb.njit(cache=True, parallel=True)
def _col2im_kernel(cols, r_, s_, sh, sw, ph, pw, p_, q_, x):
    # cols (N, C*R*S, P*Q) -> x (N, C, H, W), overlapping taps summed; one (n, c) plane per task
    n_, c_, h_, w_ = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    rs, pq, hw = r_ * s_, p_ * q_, h_ * w_
    for nc in nb.prange(n_ * c_):
        xoff = nc * hw
        for i in range(xoff, xoff + hw):
            xf[i] = 0.0
        for r in range(r_):
            p_lo, p_hi = _span(p_, sh, r - ph, h_)
            for s in range(s_):
                q_lo, q_hi = _span(q_, sw, s - pw, w_)
                row = (nc * rs + r * s_ + s) * pq
                for p in range(p_lo, p_hi):
                    # x[h, q*sw + s - pw] += cols[row + p*Q + q] for q in [q_lo, q_hi)
                    dq = np.uint64(row + p * q_ + q_lo)
                    xq = np.uint64(xoff + (p * sh + r - ph) * w_ + q_lo * sw + s - pw)
                    if sw == 1:
                        for i in range(np.uint64(q_hi - q_lo)):
                            xf[xq + i] += cf[dq + i]
                    else:
                        step = np.uint64(sw)
                        for i in range(np.uint64(q_hi - q_lo)):
                            xf[xq + i * step] += cf[dq + i]


def im2col(x, kernel, stride, padding, out=None):
    """x (N, C, H, W) float32 -> cols (N, C*R*S, P*Q); rows ordered c, then r, then s."""
    n, c, h, w = x.shape
    p, q = _output_size(h, w, kernel, stride, padding)
    cols = _empty((n, c * kernel[0] * kernel[1], p * q), out)
    _im2col_kernel(x, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], p, q, cols)
    return cols


def col2im(cols, x_shape, kernel, stride, padding, out=None):
    """cols (N, C*R*S, P*Q) float32 -> x (N, C, H, W), overlapping contributions summed."""
    n, c, h, w = x_shape
    p, q = _output_size(h, w, kernel, stride, padding)
    x = _empty((n, c, h, w), out)
    _col2im_kernel(cols, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], p, q, x)
    return x


def gemm(a, b, trans_a=False, trans_b=False, out=None):
    """op(a) @ op(b) for 2-D float32 arrays, by BLAS (transposes are free: BLAS reads them in place)."""
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    if out is None:
        return np.dot(a, b)
    np.dot(a, b, out=out)
    return out


# ---------------------------------------------------------------- convolutions


@nb.njit(cache=True, parallel=True)
def _add_channel_bias(y, b):
    # y (N, K, L) += b (K,)
    n_, k_, _ = y.shape
    for nk in nb.prange(n_ * k_):
        n, k = nk // k_, nk % k_
        y[n, k] += b[k]


@nb.njit(cache=True, parallel=True)
def _batch_to_channel_major(dy, t):
    # dy (N, K, L) -> t (K, N*L)
    n_, k_, l_ = dy.shape
    for n in nb.prange(n_):
        for k in range(k_):
            t[k, n * l_:(n + 1) * l_] = dy[n, k]


# The convolutions walk the batch in chunks so that the im2col buffer stays a few MiB:
# it is then still in cache when the GEMM reads it, and AlexNet-sized layers do not
# allocate hundreds of MiB for it.
_CHUNK_BYTES = 4 << 20


def _chunks(n, bytes_per_sample):
    """[start, stop) ranges covering range(n), each holding about _CHUNK_BYTES of columns."""
    size = max(1, min(n, _CHUNK_BYTES // max(1, bytes_per_sample)))
    return [(i, min(n, i + size)) for i in range(0, n, size)], size


def conv2d_forward(x, w, b, stride, padding, out=None):
    """x (N, C, H, W), w (K, C, R, S), b (K,) or None -> y (N, K, P, Q), float32."""
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    p, q = _output_size(h, wd, (r, s), stride, padding)
    w2 = w.reshape(k, c * r * s)
    y = _empty((n, k, p, q), out)
    y3 = y.reshape(n, k, p * q)                                # a view: matmul writes straight into y
    chunks, size = _chunks(n, c * r * s * p * q * 4)
    cols = np.empty((size, c * r * s, p * q), dtype=np.float32)
    for n0, n1 in chunks:
        m = n1 - n0
        _im2col_kernel(x[n0:n1], r, s, stride[0], stride[1], padding[0], padding[1], p, q, cols[:m])
        np.matmul(w2, cols[:m], out=y3[n0:n1])               # (K, CRS) @ (m, CRS, PQ) -> (m, K, PQ)
        if b is not None:
            _add_channel_bias(y3[n0:n1], b)
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, out=None):
    """dy (N, K, P, Q), w (K, C, R, S) -> dx (N, C, H, W), float32."""
    n, k, p, q = dy.shape
    _, c, r, s = w.shape
    w2t = w.reshape(k, c * r * s).T                           # (CRS, K), BLAS reads it transposed
    dy3 = dy.reshape(n, k, p * q)
    dx = _empty(tuple(x_shape), out)
    chunks, size = _chunks(n, c * r * s * p * q * 4)
    dcols = np.empty((size, c * r * s, p * q), dtype=np.float32)
    for n0, n1 in chunks:
        m = n1 - n0
        np.matmul(w2t, dy3[n0:n1], out=dcols[:m])           # (CRS, K) @ (m, K, PQ) -> (m, CRS, PQ)
        _col2im_kernel(dcols[:m], r, s, stride[0], stride[1], padding[0], padding[1], p, q, dx[n0:n1])
    return dx


def conv2d_backward_weight(dy, x, w_shape, stride, padding, out=None):
    """dy (N, K, P, Q), x (N, C, H, W) -> dw (K, C, R, S), float32."""
    n, k, p, q = dy.shape
    _, c, r, s = w_shape
    dy3 = dy.reshape(n, k, p * q)
    chunks, size = _chunks(n, c * r * s * p * q * 4)
    wide = np.empty(c * r * s * size * p * q, dtype=np.float32)
    dy_t = np.empty(k * size * p * q, dtype=np.float32)
    dw_t = np.zeros((c * r * s, k), dtype=np.float32)        # dw transposed, summed chunk by chunk
    for n0, n1 in chunks:
        m = n1 - n0
        wide_m = wide[:c * r * s * m * p * q].reshape(c * r * s, m * p * q)
        dy_m = dy_t[:k * m * p * q].reshape(k, m * p * q)
        _im2col_wide_kernel(x[n0:n1], r, s, stride[0], stride[1], padding[0], padding[1], p, q, wide_m)
        _batch_to_channel_major(dy3[n0:n1], dy_m)
        # (CRS, mPQ) @ (mPQ, K): BLAS sums over the chunk; this orientation beat dy_t @ wide.T
        dw_t += np.dot(wide_m, dy_m.T)
    dw = _empty(tuple(w_shape), out)
    dw.reshape(k, c * r * s)[...] = dw_t.T
    return dw
