"""Convolution on the CPU: Numba kernels move the data, BLAS (np.dot) does the arithmetic.

Same ops and layouts as engine.reference.conv (the spec). float32 in, float32 out.

The contract's im2col/col2im use the layout cols (N, C*R*S, P*Q). The convolutions
themselves use a different, private layout that lets one GEMM cover the whole batch
with the batch on the long side, which is where BLAS is fast for these shapes:

    rows (N*P*Q, C*R*S): row n*P*Q + p*Q + q is the receptive field of output cell
                         (n, p, q), in the same c, r, s order as w.reshape(K, C*R*S)

    forward        t  (N*P*Q, K)     = rows @ w2.T          then y[n, k, l] = t[n*PQ + l, k] + b[k]
    backward data  dr (N*P*Q, C*R*S) = dy_t @ w2            then summed back into dx (row2im)
    backward weight dw (K, C*R*S)    = dy_t.T @ rows        one GEMM, the batch is its inner dimension

with w2 = w.reshape(K, C*R*S) and dy_t (N*P*Q, K) the transpose of dy per sample. Every
Numba kernel is parallel over samples (or sample-channel planes), so no two threads
write one element and results do not depend on the thread count.
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


@nb.njit(cache=True, parallel=True)
def _im2col_kernel(x, r_, s_, sh, sw, ph, pw, p_, q_, cols):
    # x (N, C, H, W) -> cols (N, C*R*S, P*Q); one (n, c) plane per task
    n_, c_, h_, w_ = x.shape
    for nc in nb.prange(n_ * c_):
        n, c = nc // c_, nc % c_
        for r in range(r_):
            p_lo, p_hi = _span(p_, sh, r - ph, h_)
            for s in range(s_):
                q_lo, q_hi = _span(q_, sw, s - pw, w_)
                dst = cols[n, (c * r_ + r) * s_ + s]  # (P*Q,)
                dst[:] = 0.0
                for p in range(p_lo, p_hi):
                    hrow = p * sh + r - ph
                    for q in range(q_lo, q_hi):
                        dst[p * q_ + q] = x[n, c, hrow, q * sw + s - pw]


@nb.njit(cache=True, parallel=True)
def _col2im_kernel(cols, r_, s_, sh, sw, ph, pw, p_, q_, x):
    # cols (N, C*R*S, P*Q) -> x (N, C, H, W), overlapping taps summed; one (n, c) plane per task
    n_, c_, h_, w_ = x.shape
    for nc in nb.prange(n_ * c_):
        n, c = nc // c_, nc % c_
        x[n, c] = 0.0
        for r in range(r_):
            p_lo, p_hi = _span(p_, sh, r - ph, h_)
            for s in range(s_):
                q_lo, q_hi = _span(q_, sw, s - pw, w_)
                src = cols[n, (c * r_ + r) * s_ + s]  # (P*Q,)
                for p in range(p_lo, p_hi):
                    hrow = p * sh + r - ph
                    for q in range(q_lo, q_hi):
                        x[n, c, hrow, q * sw + s - pw] += src[p * q_ + q]


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


# ---------------------------------------------------------------- private rows layout


@nb.njit(cache=True, parallel=True)
def _im2row_kernel(x, r_, s_, sh, sw, ph, pw, p_, q_, rows):
    # x (N, C, H, W) -> rows (N*P*Q, C*R*S); one sample per task
    n_, c_, h_, w_ = x.shape
    pq = p_ * q_
    for n in nb.prange(n_):
        block = rows[n * pq:(n + 1) * pq]  # (P*Q, C*R*S)
        block[:] = 0.0
        for c in range(c_):
            for r in range(r_):
                p_lo, p_hi = _span(p_, sh, r - ph, h_)
                for p in range(p_lo, p_hi):
                    xrow = x[n, c, p * sh + r - ph]  # (W,)
                    for s in range(s_):
                        q_lo, q_hi = _span(q_, sw, s - pw, w_)
                        j = (c * r_ + r) * s_ + s
                        for q in range(q_lo, q_hi):
                            block[p * q_ + q, j] = xrow[q * sw + s - pw]


@nb.njit(cache=True, parallel=True)
def _row2im_kernel(rows, r_, s_, sh, sw, ph, pw, p_, q_, x):
    # rows (N*P*Q, C*R*S) -> x (N, C, H, W), overlapping taps summed; one sample per task
    n_, c_, h_, w_ = x.shape
    pq = p_ * q_
    for n in nb.prange(n_):
        block = rows[n * pq:(n + 1) * pq]  # (P*Q, C*R*S)
        x[n] = 0.0
        for c in range(c_):
            for r in range(r_):
                p_lo, p_hi = _span(p_, sh, r - ph, h_)
                for p in range(p_lo, p_hi):
                    xrow = x[n, c, p * sh + r - ph]  # (W,)
                    for s in range(s_):
                        q_lo, q_hi = _span(q_, sw, s - pw, w_)
                        j = (c * r_ + r) * s_ + s
                        for q in range(q_lo, q_hi):
                            xrow[q * sw + s - pw] += block[p * q_ + q, j]


@nb.njit(cache=True, parallel=True)
def _rows_to_nchw(t, b, has_bias, y):
    # t (N*P*Q, K) -> y (N, K, P*Q) = t per sample transposed, plus b[k]
    n_, k_, pq = y.shape
    for n in nb.prange(n_):
        block = t[n * pq:(n + 1) * pq]  # (P*Q, K)
        for k in range(k_):
            bias = b[k] if has_bias else np.float32(0.0)
            for l in range(pq):
                y[n, k, l] = block[l, k] + bias


@nb.njit(cache=True, parallel=True)
def _nchw_to_rows(dy, t):
    # dy (N, K, P*Q) -> t (N*P*Q, K)
    n_, k_, pq = dy.shape
    for n in nb.prange(n_):
        block = t[n * pq:(n + 1) * pq]  # (P*Q, K)
        for l in range(pq):
            for k in range(k_):
                block[l, k] = dy[n, k, l]


_NO_BIAS = np.zeros(1, dtype=np.float32)


def _rows(x, kernel, stride, padding):
    n, c, h, w = x.shape
    p, q = _output_size(h, w, kernel, stride, padding)
    rows = np.empty((n * p * q, c * kernel[0] * kernel[1]), dtype=np.float32)
    _im2row_kernel(x, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], p, q, rows)
    return rows


def conv2d_forward(x, w, b, stride, padding, out=None):
    """x (N, C, H, W), w (K, C, R, S), b (K,) or None -> y (N, K, P, Q), float32."""
    n = x.shape[0]
    k, c, r, s = w.shape
    p, q = _output_size(x.shape[2], x.shape[3], (r, s), stride, padding)
    rows = _rows(x, (r, s), stride, padding)             # (N*P*Q, C*R*S)
    t = np.dot(rows, w.reshape(k, c * r * s).T)          # (N*P*Q, K)
    y = _empty((n, k, p, q), out)
    _rows_to_nchw(t, _NO_BIAS if b is None else b, b is not None, y.reshape(n, k, p * q))
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, out=None):
    """dy (N, K, P, Q), w (K, C, R, S) -> dx (N, C, H, W), float32."""
    n, k, p, q = dy.shape
    _, c, r, s = w.shape
    dy_t = np.empty((n * p * q, k), dtype=np.float32)
    _nchw_to_rows(dy.reshape(n, k, p * q), dy_t)
    drows = np.dot(dy_t, w.reshape(k, c * r * s))         # (N*P*Q, C*R*S)
    dx = _empty(tuple(x_shape), out)
    _row2im_kernel(drows, r, s, stride[0], stride[1], padding[0], padding[1], p, q, dx)
    return dx


def conv2d_backward_weight(dy, x, w_shape, stride, padding, out=None):
    """dy (N, K, P, Q), x (N, C, H, W) -> dw (K, C, R, S), float32."""
    n, k, p, q = dy.shape
    _, c, r, s = w_shape
    rows = _rows(x, (r, s), stride, padding)              # (N*P*Q, C*R*S)
    dy_t = np.empty((n * p * q, k), dtype=np.float32)
    _nchw_to_rows(dy.reshape(n, k, p * q), dy_t)
    dw = _empty(tuple(w_shape), out)
    np.dot(dy_t.T, rows, out=dw.reshape(k, c * r * s))    # (K, C*R*S), summed over the batch by BLAS
    return dw
