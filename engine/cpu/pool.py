"""Pooling on the CPU: Numba kernels, one (n, c) plane per parallel task.

Same ops, layouts and conventions as engine.reference.pool (the spec: -inf padding,
first maximum wins unless a NaN comes, argmax int32 flat h*W + w in its plane,
count_include_pad as PyTorch). float32 in, float32 out; window sums accumulate in float64.

Windows are walked over their in-bounds cells only, so padding costs nothing: a padded
max-pool cell is -inf and never wins, and a padded avg-pool cell adds zero.
"""
from __future__ import annotations

import numba as nb
import numpy as np


def _output_size(h, w, kernel, stride, padding):
    (r, s), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1


@nb.njit(cache=True, parallel=True)
def _max_pool_forward_kernel(x, r_, s_, sh, sw, ph, pw, y, argmax):
    # x (N, C, H, W) -> y, argmax (N, C, P, Q)
    n_, c_, h_, w_ = x.shape
    p_, q_ = y.shape[2], y.shape[3]
    for nc in nb.prange(n_ * c_):
        n, c = nc // c_, nc % c_
        plane = x[n, c]  # (H, W)
        for p in range(p_):
            h0 = max(p * sh - ph, 0)
            h1 = min(p * sh - ph + r_, h_)
            for q in range(q_):
                w0 = max(q * sw - pw, 0)
                w1 = min(q * sw - pw + s_, w_)
                best = -np.inf
                arg = h0 * w_ + w0  # the first in-bounds cell, if nothing beats -inf
                for hh in range(h0, h1):
                    for ww in range(w0, w1):
                        v = plane[hh, ww]
                        if v > best or v != v:  # strict: ties keep the first; NaN takes over
                            best = v
                            arg = hh * w_ + ww
                y[n, c, p, q] = best
                argmax[n, c, p, q] = arg


@nb.njit(cache=True, parallel=True)
def _max_pool_backward_kernel(dy, argmax, dx):
    # dy, argmax (N, C, P, Q) -> dx (N, C, H*W), dy added at each argmax
    n_, c_, p_, q_ = dy.shape
    for nc in nb.prange(n_ * c_):
        n, c = nc // c_, nc % c_
        plane = dx[n, c]  # (H*W,)
        plane[:] = 0.0
        for p in range(p_):
            for q in range(q_):
                plane[argmax[n, c, p, q]] += dy[n, c, p, q]


@nb.njit(cache=True, parallel=True)
def _avg_pool_forward_kernel(x, r_, s_, sh, sw, ph, pw, include_pad, y):
    # x (N, C, H, W) -> y (N, C, P, Q)
    n_, c_, h_, w_ = x.shape
    p_, q_ = y.shape[2], y.shape[3]
    for nc in nb.prange(n_ * c_):
        n, c = nc // c_, nc % c_
        plane = x[n, c]
        for p in range(p_):
            h0 = max(p * sh - ph, 0)
            h1 = min(p * sh - ph + r_, h_)
            for q in range(q_):
                w0 = max(q * sw - pw, 0)
                w1 = min(q * sw - pw + s_, w_)
                total = 0.0
                for hh in range(h0, h1):
                    for ww in range(w0, w1):
                        total += plane[hh, ww]
                count = r_ * s_ if include_pad else (h1 - h0) * (w1 - w0)
                y[n, c, p, q] = total / count


@nb.njit(cache=True, parallel=True)
def _avg_pool_backward_kernel(dy, r_, s_, sh, sw, ph, pw, include_pad, dx):
    # dy (N, C, P, Q) -> dx (N, C, H, W). Gathered per input cell (no scatter): cell h is in
    # window p when p*sh - ph <= h < p*sh - ph + R.
    n_, c_, h_, w_ = dx.shape
    p_, q_ = dy.shape[2], dy.shape[3]
    for nc in nb.prange(n_ * c_):
        n, c = nc // c_, nc % c_
        for hh in range(h_):
            p0 = max(0, (hh + ph - r_) // sh + 1)
            p1 = min(p_, (hh + ph) // sh + 1)
            for ww in range(w_):
                q0 = max(0, (ww + pw - s_) // sw + 1)
                q1 = min(q_, (ww + pw) // sw + 1)
                total = 0.0
                for p in range(p0, p1):
                    for q in range(q0, q1):
                        if include_pad:
                            count = r_ * s_
                        else:
                            count = ((min(p * sh - ph + r_, h_) - max(p * sh - ph, 0))
                                     * (min(q * sw - pw + s_, w_) - max(q * sw - pw, 0)))
                        total += dy[n, c, p, q] / count
                dx[n, c, hh, ww] = total


def max_pool2d_forward(x, kernel, stride, padding, out=None):
    """x (N, C, H, W) float32 -> (y (N, C, P, Q) float32, argmax (N, C, P, Q) int32)."""
    n, c, h, w = x.shape
    p, q = _output_size(h, w, kernel, stride, padding)
    if out is None:
        out = (np.empty((n, c, p, q), dtype=np.float32), np.empty((n, c, p, q), dtype=np.int32))
    _max_pool_forward_kernel(x, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                             out[0], out[1])
    return out


def max_pool2d_backward(dy, argmax, x_shape, out=None):
    """dy (N, C, P, Q), argmax (N, C, P, Q) -> dx (N, C, H, W): dy added where each max was."""
    n, c, h, w = x_shape
    dx = np.empty((n, c, h, w), dtype=np.float32) if out is None else out
    _max_pool_backward_kernel(dy, argmax, dx.reshape(n, c, h * w))
    return dx


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True, out=None):
    """x (N, C, H, W) float32 -> y (N, C, P, Q): each window's mean."""
    n, c, h, w = x.shape
    p, q = _output_size(h, w, kernel, stride, padding)
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
