"""Batch normalisation as Numba kernels (float32 on the CPU); the spec, with its
conventions (biased variance to normalise, unbiased in the running variance, momentum
as PyTorch), is engine.reference.batchnorm.

x of shape (N, C, H, W) is viewed as (N, C, HW) and every pass runs one prange over
the N*C planes; reductions go in two levels: each plane sums into an (N, C) float64
partial, then the partials are summed over N in a fixed order, so statistics and
gradients are bitwise the same on every run whatever the thread count. x of shape
(N, C) has its own "rows" kernels: reductions walk the rows in order with one
accumulator per feature (vectorised across C), element-wise passes prange over rows.
Small arrays run serially (see engine.cpu.parallel.kernel_pair).

The batch variance comes from sums of (x - K) and (x - K)^2 with K = one sample of the
channel: one read of x, and no catastrophic cancellation when the mean is large next
to the spread. Per-element arithmetic is float64 (free: these passes are bound
by memory, not by arithmetic).

    forward, training   pass 1 reads x (statistics); pass 2 reads x, writes y
    forward, eval       pass 2 only
    backward            pass 1 reads dy, x (sum dy, sum dy * (x - mean)), pass 2 reads
                        dy, x, writes dx = k1 * dy + k2 * (x - mean) + k3 per channel
The fused BN+ReLU variants read y as well and zero dy where y <= 0 in both passes.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.cpu.arrays import output, planes
from engine.cpu.parallel import kernel_pair

# Reassociating the float64 sums lets LLVM keep several vector accumulators in flight;
# the order is still fixed by the compiled code, so results stay bitwise reproducible.
_SUMS = {"reassoc", "contract"}


# ---- kernels ----------------------------------------------------------------------------

@kernel_pair(fastmath=_SUMS)
def _batch_stats(x, mean, var):
    """mean, biased var (C,) float64 of x (N, C, HW)."""
    n, c, hw = x.shape
    s1 = np.empty((n, c), dtype=np.float64)  # per-plane sum of (x - K)
    s2 = np.empty((n, c), dtype=np.float64)  # per-plane sum of (x - K)^2
    for p in prange(n * c):
        i, ch = p // c, p % c
        k = np.float64(x[0, ch, 0])
        a = 0.0
        b = 0.0
        for j in range(hw):
            d = np.float64(x[i, ch, j]) - k
            a += d
            b += d * d
        s1[i, ch] = a
        s2[i, ch] = b
    count = n * hw
    for ch in range(c):
        a = 0.0
        b = 0.0
        for i in range(n):
            a += s1[i, ch]
            b += s2[i, ch]
        shift_mean = a / count  # mean of (x - K)
        mean[ch] = np.float64(x[0, ch, 0]) + shift_mean
        var[ch] = max(b / count - shift_mean * shift_mean, 0.0)


@kernel_pair()
def _normalize(x, mean, scale, beta, relu, y):
    """y = (x - mean) * scale + beta per channel, then max(., 0) when relu; x, y (N, C, HW)."""
    n, c, hw = x.shape
    for p in prange(n * c):
        i, ch = p // c, p % c
        m, s, b = mean[ch], scale[ch], beta[ch]
        if relu:
            for j in range(hw):
                v = (np.float64(x[i, ch, j]) - m) * s + b
                y[i, ch, j] = 0.0 if v <= 0 else v  # NaN passes through, as np.maximum
        else:
            for j in range(hw):
                y[i, ch, j] = (np.float64(x[i, ch, j]) - m) * s + b


@kernel_pair(fastmath=_SUMS)
def _grad_sums(dy, x, y, relu, mean, sum_dy, sum_dy_xc):
    """Per channel: sum of g and of g * (x - mean), g = dy (or dy * (y > 0) when relu)."""
    n, c, hw = x.shape
    s1 = np.empty((n, c), dtype=np.float64)
    s2 = np.empty((n, c), dtype=np.float64)
    for p in prange(n * c):
        i, ch = p // c, p % c
        m = mean[ch]
        a = 0.0
        b = 0.0
        if relu:
            for j in range(hw):
                g = np.float64(dy[i, ch, j]) if y[i, ch, j] > 0 else 0.0
                a += g
                b += g * (np.float64(x[i, ch, j]) - m)
        else:
            for j in range(hw):
                g = np.float64(dy[i, ch, j])
                a += g
                b += g * (np.float64(x[i, ch, j]) - m)
        s1[i, ch] = a
        s2[i, ch] = b
    for ch in range(c):
        a = 0.0
        b = 0.0
        for i in range(n):
            a += s1[i, ch]
            b += s2[i, ch]
        sum_dy[ch] = a
        sum_dy_xc[ch] = b


@kernel_pair()
def _input_grad(dy, x, y, relu, mean, k1, k2, k3, dx):
    """dx = k1 * g + k2 * (x - mean) + k3 per channel, g = dy (or dy * (y > 0) when relu)."""
    n, c, hw = x.shape
    for p in prange(n * c):
        i, ch = p // c, p % c
        m, a, b, d = mean[ch], k1[ch], k2[ch], k3[ch]
        if relu:
            for j in range(hw):
                g = np.float64(dy[i, ch, j]) if y[i, ch, j] > 0 else 0.0
                dx[i, ch, j] = a * g + b * (np.float64(x[i, ch, j]) - m) + d
        else:
            for j in range(hw):
                dx[i, ch, j] = a * np.float64(dy[i, ch, j]) + b * (np.float64(x[i, ch, j]) - m) + d


# (N, C) inputs: the same four passes over rows

@njit(cache=True)
def _rows_stats(x, mean, var):
    n, c = x.shape
    k = x[0].astype(np.float64)  # the shift K, one sample per feature
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    for i in range(n):
        for ch in range(c):
            d = np.float64(x[i, ch]) - k[ch]
            s1[ch] += d
            s2[ch] += d * d
    for ch in range(c):
        shift_mean = s1[ch] / n
        mean[ch] = k[ch] + shift_mean
        var[ch] = max(s2[ch] / n - shift_mean * shift_mean, 0.0)


@kernel_pair()
def _rows_normalize(x, mean, scale, beta, relu, y):
    n, c = x.shape
    for i in prange(n):
        for ch in range(c):
            v = (np.float64(x[i, ch]) - mean[ch]) * scale[ch] + beta[ch]
            y[i, ch] = 0.0 if (relu and v <= 0) else v


@njit(cache=True)
def _rows_grad_sums(dy, x, y, relu, mean, sum_dy, sum_dy_xc):
    n, c = x.shape
    sum_dy[:] = 0.0
    sum_dy_xc[:] = 0.0
    for i in range(n):
        for ch in range(c):
            g = np.float64(dy[i, ch]) if (y[i, ch] > 0 or not relu) else 0.0
            sum_dy[ch] += g
            sum_dy_xc[ch] += g * (np.float64(x[i, ch]) - mean[ch])


@kernel_pair()
def _rows_input_grad(dy, x, y, relu, mean, k1, k2, k3, dx):
    n, c = x.shape
    for i in prange(n):
        for ch in range(c):
            g = np.float64(dy[i, ch]) if (y[i, ch] > 0 or not relu) else 0.0
            dx[i, ch] = k1[ch] * g + k2[ch] * (np.float64(x[i, ch]) - mean[ch]) + k3[ch]


# ---- shared drivers ---------------------------------------------------------------------

def _forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, relu, out):
    x = np.ascontiguousarray(x)
    c = x.shape[1]
    y = output(None if out is None else out[0], x.shape, x.dtype)
    save_mean = output(None if out is None else out[1], (c,), x.dtype)
    save_invstd = output(None if out is None else out[2], (c,), x.dtype)
    if training:
        mean, var = np.empty(c), np.empty(c)
        if x.ndim == 2:
            _rows_stats(x, mean, var)
        else:
            _batch_stats(planes(x), mean, var)
        n = x.size // c
        # the running statistics are (C,): plain NumPy, in place on the caller's arrays
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * mean
        if running_var is not None:
            running_var[...] = ((1 - momentum) * running_var.astype(np.float64)
                                + momentum * var * (n / (n - 1)))
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    scale, shift = gamma.astype(np.float64) * invstd, beta.astype(np.float64)
    if x.ndim == 2:
        _rows_normalize(x, mean, scale, shift, relu, y)
    else:
        _normalize(planes(x), mean, scale, shift, relu, planes(y))
    save_mean[...] = mean
    save_invstd[...] = invstd
    return y, save_mean, save_invstd


def _backward(dy, y, x, gamma, save_mean, save_invstd, training, relu, out):
    dy, x = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    y = dy if y is None else np.ascontiguousarray(y)  # y is only read when relu
    c = x.shape[1]
    dx = output(None if out is None else out[0], x.shape, x.dtype)
    dgamma = output(None if out is None else out[1], (c,), x.dtype)
    dbeta = output(None if out is None else out[2], (c,), x.dtype)
    mean, invstd = save_mean.astype(np.float64), save_invstd.astype(np.float64)
    gamma = gamma.astype(np.float64)
    sum_dy, sum_dy_xc = np.empty(c), np.empty(c)
    if x.ndim == 2:
        _rows_grad_sums(dy, x, y, relu, mean, sum_dy, sum_dy_xc)
    else:
        _grad_sums(planes(dy), planes(x), planes(y), relu, mean, sum_dy, sum_dy_xc)
    k1 = gamma * invstd  # dy/dx with the statistics held fixed
    if training:
        # dx = gamma invstd (g - mean(g) - xhat mean(g xhat)), xhat = (x - mean) invstd
        n = x.size // c
        k2 = -k1 * invstd * invstd * sum_dy_xc / n
        k3 = -k1 * sum_dy / n
    else:
        k2, k3 = np.zeros(c), np.zeros(c)
    if x.ndim == 2:
        _rows_input_grad(dy, x, y, relu, mean, k1, k2, k3, dx)
    else:
        _input_grad(planes(dy), planes(x), planes(y), relu, mean, k1, k2, k3, planes(dx))
    dgamma[...] = sum_dy_xc * invstd
    dbeta[...] = sum_dy
    return dx, dgamma, dbeta


# ---- the ops (engine.ops.OPS) ---------------------------------------------------------

def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    return _forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, False, out)


def batch_norm_backward(dy, x, gamma, save_mean, save_invstd, training, out=None):
    return _backward(dy, None, x, gamma, save_mean, save_invstd, training, False, out)


def batch_norm_relu_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    return _forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, True, out)


def batch_norm_relu_backward(dy, y, x, gamma, save_mean, save_invstd, training, out=None):
    return _backward(dy, y, x, gamma, save_mean, save_invstd, training, True, out)
