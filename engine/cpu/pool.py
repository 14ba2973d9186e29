"""Pooling on the CPU: Numba kernels, one (n, c) plane per parallel task.

Same ops, layouts and conventions as engine.reference.pool (the spec: -inf padding,
first maximum wins unless a NaN comes, argmax int32 flat h*W + w in its plane,
count_include_pad as PyTorch, PyTorch's adaptive windows). float32 in, float32 out;
avg-pool window sums accumulate in float64.

Windows are walked over their in-bounds cells only, so padding costs nothing: a padded
max-pool cell is -inf and never wins, and a padded avg-pool cell adds zero.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from engine.shapes import window_output_hw


# Kernels index flat arrays with unsigned offsets: Numba then skips its negative-index
# wraparound on every load, which made these loops 2-4x faster.


@nb.njit(cache=True, parallel=True)
def _max_pool_forward_kernel(x, r_, s_, sh, sw, ph, pw, y, argmax):
    # x (N, C, H, W) -> y, argmax (N, C, P, Q); one (n, c) plane per task
    n_, c_, h_, w_ = x.shape
    p_, q_ = y.shape[2], y.shape[3]
    xf, yf, af = x.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    for nc in nb.prange(n_ * c_):
        xoff = nc * h_ * w_
        for p in range(p_):
            h0 = max(p * sh - ph, 0)
            h1 = min(p * sh - ph + r_, h_)
            for q in range(q_):
                w0 = max(q * sw - pw, 0)
                w1 = min(q * sw - pw + s_, w_)
                best = np.float32(-np.inf)
                arg = h0 * w_ + w0  # the first in-bounds cell, if nothing beats -inf
                for hh in range(h0, h1):
                    row = np.uint64(xoff + hh * w_)
                    for ww in range(w0, w1):
                        v = xf[row + np.uint64(ww)]
                        # strict '>': ties keep the first; NaN takes over. Written as selects,
                        # not a branch: on random data a branch mispredicts half the time.
                        take = (v > best) | (v != v)
                        best = v if take else best
                        arg = hh * w_ + ww if take else arg
                out = np.uint64((nc * p_ + p) * q_ + q)
                yf[out] = best
                af[out] = arg


@nb.njit(cache=True, parallel=True)
def _max_pool_forward_2x2_kernel(x, y, argmax):
    # as _max_pool_forward_kernel for a 2x2 window, stride 2, no padding (LeNet's, and the
    # commonest), on planes of even width: the four cells of a window are compared in the
    # same order (so ties and NaNs resolve alike), branch-free. A row's cells 2q and 2q+1 are
    # read as one uint64 (W even: every row starts at an even cell), so the loads have unit
    # stride and LLVM vectorises the loop over a row of outputs on AVX2 too. Reading the two
    # cells as floats at stride 2 it did not there (AVX-512 did): 4.9 ms against 1.2 ms at
    # LeNet's first pooling, batch 256, one thread. One (n, c) plane per task.
    n_, c_, h_, w_ = x.shape
    p_, q_ = y.shape[2], y.shape[3]
    xu, yf, af = x.reshape(-1).view(np.uint64), y.reshape(-1), argmax.reshape(-1)
    low, shift = np.uint64(0xFFFFFFFF), np.uint64(32)     # little-endian: cell 2q is the low half
    below = np.int32(w_)
    for nc in nb.prange(n_ * c_):
        for p in range(p_):
            top = np.uint64((nc * h_ * w_ + 2 * p * w_) // 2)
            bottom = top + np.uint64(w_ // 2)
            out = np.uint64((nc * p_ + p) * q_)
            cell = np.int32(2 * p * w_)
            for q in range(np.uint64(q_)):
                upper, lower = xu[top + q], xu[bottom + q]
                a = np.uint32(upper & low).view(np.float32)
                b = np.uint32(upper >> shift).view(np.float32)
                c = np.uint32(lower & low).view(np.float32)
                d = np.uint32(lower >> shift).view(np.float32)
                take = (b > a) | (b != b)
                best, arg = (b, np.int32(1)) if take else (a, np.int32(0))
                take = (c > best) | (c != c)
                best, arg = (c, below) if take else (best, arg)
                take = (d > best) | (d != d)
                best, arg = (d, below + np.int32(1)) if take else (best, arg)
                yf[out + q] = best
                af[out + q] = cell + np.int32(2 * q) + arg


@nb.njit(cache=True, parallel=True)
def _max_pool_backward_kernel(dy, argmax, dx):
    # dy, argmax (N, C, P, Q) -> dx (N, C, H, W), dy added at each argmax; one plane per task
    n_, c_, p_, q_ = dy.shape
    hw, pq = dx.shape[2] * dx.shape[3], p_ * q_
    dyf, af, dxf = dy.reshape(-1), argmax.reshape(-1), dx.reshape(-1)
    for nc in nb.prange(n_ * c_):
        xoff, yoff = np.uint64(nc * hw), np.uint64(nc * pq)
        for i in range(np.uint64(hw)):
            dxf[xoff + i] = 0.0
        for i in range(np.uint64(pq)):
            dxf[xoff + np.uint64(af[yoff + i])] += dyf[yoff + i]


@nb.njit(cache=True, parallel=True)
def _avg_pool_forward_kernel(x, r_, s_, sh, sw, ph, pw, include_pad, y):
    # x (N, C, H, W) -> y (N, C, P, Q); one (n, c) plane per task
    n_, c_, h_, w_ = x.shape
    p_, q_ = y.shape[2], y.shape[3]
    xf, yf = x.reshape(-1), y.reshape(-1)
    for nc in nb.prange(n_ * c_):
        xoff = nc * h_ * w_
        for p in range(p_):
            h0 = max(p * sh - ph, 0)
            h1 = min(p * sh - ph + r_, h_)
            for q in range(q_):
                w0 = max(q * sw - pw, 0)
                w1 = min(q * sw - pw + s_, w_)
                total = 0.0  # float64
                for hh in range(h0, h1):
                    row = np.uint64(xoff + hh * w_)
                    for ww in range(w0, w1):
                        total += xf[row + np.uint64(ww)]
                count = r_ * s_ if include_pad else (h1 - h0) * (w1 - w0)
                yf[np.uint64((nc * p_ + p) * q_ + q)] = total / count


@nb.njit(cache=True, parallel=True)
def _avg_pool_backward_kernel(dy, r_, s_, sh, sw, ph, pw, include_pad, dx):
    # dy (N, C, P, Q) -> dx (N, C, H, W): each window's dy / count added over its in-bounds
    # cells; one (n, c) plane per task, so overlapping windows add up without races
    n_, c_, h_, w_ = dx.shape
    p_, q_ = dy.shape[2], dy.shape[3]
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    for nc in nb.prange(n_ * c_):
        xoff = nc * h_ * w_
        for i in range(np.uint64(xoff), np.uint64(xoff + h_ * w_)):
            dxf[i] = 0.0
        for p in range(p_):
            h0 = max(p * sh - ph, 0)
            h1 = min(p * sh - ph + r_, h_)
            for q in range(q_):
                w0 = max(q * sw - pw, 0)
                w1 = min(q * sw - pw + s_, w_)
                count = r_ * s_ if include_pad else (h1 - h0) * (w1 - w0)
                share = np.float32(dyf[np.uint64((nc * p_ + p) * q_ + q)] / count)
                for hh in range(h0, h1):
                    row = np.uint64(xoff + hh * w_)
                    for ww in range(w0, w1):
                        dxf[row + np.uint64(ww)] += share


@nb.njit(cache=True, inline="always")
def _adaptive_window(i, size, out):
    # engine.shapes.adaptive_window: [floor(i*size/out), ceil((i+1)*size/out))
    return (i * size) // out, ((i + 1) * size + out - 1) // out


@nb.njit(cache=True, parallel=True)
def _adaptive_avg_forward_kernel(x, y):
    # x (N, C, H, W) -> y (N, C, oh, ow); one (n, c) plane per task
    n_, c_, h_, w_ = x.shape
    oh, ow = y.shape[2], y.shape[3]
    xf, yf = x.reshape(-1), y.reshape(-1)
    for nc in nb.prange(n_ * c_):
        xoff = nc * h_ * w_
        for i in range(oh):
            h0, h1 = _adaptive_window(i, h_, oh)
            for j in range(ow):
                w0, w1 = _adaptive_window(j, w_, ow)
                total = 0.0  # float64
                for hh in range(h0, h1):
                    for ww in range(w0, w1):
                        total += xf[xoff + hh * w_ + ww]
                yf[(nc * oh + i) * ow + j] = total / ((h1 - h0) * (w1 - w0))


@nb.njit(cache=True, parallel=True)
def _adaptive_avg_backward_kernel(dy, dx):
    # dy (N, C, oh, ow) -> dx (N, C, H, W): each window's share added over its cells, one
    # plane per task in window order, so overlapping windows add up without races
    n_, c_, h_, w_ = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    for nc in nb.prange(n_ * c_):
        xoff = nc * h_ * w_
        for k in range(h_ * w_):
            dxf[xoff + k] = 0.0
        for i in range(oh):
            h0, h1 = _adaptive_window(i, h_, oh)
            for j in range(ow):
                w0, w1 = _adaptive_window(j, w_, ow)
                share = np.float32(dyf[(nc * oh + i) * ow + j] / ((h1 - h0) * (w1 - w0)))
                for hh in range(h0, h1):
                    for ww in range(w0, w1):
                        dxf[xoff + hh * w_ + ww] += share


# Global average pooling (1x1 output: the ResNets' head) walks whole planes. "reassoc" lets
# LLVM sum a plane in vector lanes; the general kernel's one float64 sum per window was
# bound by the add's latency (2.1x PyTorch's time at LeNet's 16 x 10x10 planes). The order
# is still fixed by the compiled code, so results are the same on every run.


@nb.njit(cache=True, parallel=True, fastmath={"reassoc"})
def _global_avg_forward_kernel(x, y):
    # x (N*C, H*W) -> y (N*C,): each plane's mean, summed in float64
    hw = x.shape[1]
    for nc in nb.prange(x.shape[0]):
        total = 0.0
        for i in range(np.uint64(hw)):
            total += x[nc, i]
        y[nc] = total / hw


@nb.njit(cache=True, parallel=True)
def _global_avg_backward_kernel(dy, dx):
    # dy (N*C,) -> dx (N*C, H*W): each plane's share of its dy
    hw = dx.shape[1]
    for nc in nb.prange(dx.shape[0]):
        share = np.float32(dy[nc] / hw)
        for i in range(np.uint64(hw)):
            dx[nc, i] = share


def adaptive_avg_pool2d_forward(x, output_size, out=None):
    """x (N, C, H, W) float32 -> y (N, C, oh, ow): the mean of each adaptive window."""
    n, c, h, w = x.shape
    y = np.empty((n, c) + tuple(output_size), dtype=np.float32) if out is None else out
    if tuple(output_size) == (1, 1):
        _global_avg_forward_kernel(x.reshape(n * c, h * w), y.reshape(n * c))
    else:
        _adaptive_avg_forward_kernel(x, y)
    return y


def adaptive_avg_pool2d_backward(dy, x_shape, out=None):
    """dy (N, C, oh, ow) -> dx (N, C, H, W): each window's dy shared out over its cells."""
    n, c, h, w = x_shape
    dx = np.empty(tuple(x_shape), dtype=np.float32) if out is None else out
    if dy.shape[2:] == (1, 1):
        _global_avg_backward_kernel(dy.reshape(n * c), dx.reshape(n * c, h * w))
    else:
        _adaptive_avg_backward_kernel(dy, dx)
    return dx


def max_pool2d_forward(x, kernel, stride, padding, out=None):
    """x (N, C, H, W) float32 -> (y (N, C, P, Q) float32, argmax (N, C, P, Q) int32)."""
    n, c, h, w = x.shape
    p, q = window_output_hw(h, w, kernel, stride, padding)
    if out is None:
        out = (np.empty((n, c, p, q), dtype=np.float32), np.empty((n, c, p, q), dtype=np.int32))
    if tuple(kernel) == (2, 2) and tuple(stride) == (2, 2) and tuple(padding) == (0, 0) and w % 2 == 0:
        _max_pool_forward_2x2_kernel(x, out[0], out[1])
    else:
        _max_pool_forward_kernel(x, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                                 out[0], out[1])
    return out


def max_pool2d_backward(dy, argmax, x_shape, out=None):
    """dy (N, C, P, Q), argmax (N, C, P, Q) -> dx (N, C, H, W): dy added where each max was."""
    dx = np.empty(tuple(x_shape), dtype=np.float32) if out is None else out
    _max_pool_backward_kernel(dy, argmax, dx)
    return dx


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True, out=None):
    """x (N, C, H, W) float32 -> y (N, C, P, Q): each window's mean."""
    n, c, h, w = x.shape
    p, q = window_output_hw(h, w, kernel, stride, padding)
    y = np.empty((n, c, p, q), dtype=np.float32) if out is None else out
    _avg_pool_forward_kernel(x, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                             bool(count_include_pad), y)
    return y


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad=True, out=None):
    """dy (N, C, P, Q) -> dx (N, C, H, W): each window's dy shared out over it."""
    dx = np.empty(tuple(x_shape), dtype=np.float32) if out is None else out
    _avg_pool_backward_kernel(dy, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                              bool(count_include_pad), dx)
    return dx
