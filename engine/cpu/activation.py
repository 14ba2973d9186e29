"""Activations as Numba kernels (float32 on the CPU); the spec is engine.reference.activation.

Element-wise ops run on the flat C-order view of their arrays, one prange over all
elements. Every kernel is compiled twice by ``kernel_pair`` (engine.cpu.parallel): arrays under PARALLEL_MIN elements run the serial twin,
because waking the thread pool costs more than it saves there, and on a busy machine a
parallel region can wait a whole scheduler slice for a descheduled worker (PyTorch
applies the same grain size). bias_relu views x as (N, C, HW) -- HW = H*W, or 1 for x of rank 2 -- and
parallelises over the N*C planes; its db reduces each plane into an (N, C) float64
partial and then sums the partials over N in a fixed order, so the result is bitwise
the same on every run whatever the thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.cpu.arrays import column_sums, output, planes
from engine.cpu.parallel import kernel_pair

# ---- kernels: flat arrays in, flat arrays out ---------------------------------------

@kernel_pair()
def _relu_fwd(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = 0 if v <= 0 else v  # written so that NaN passes through, as np.maximum


@kernel_pair()
def _relu_bwd(dy, y, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else 0


@kernel_pair()
def _bias_relu_fwd(x, b, y):
    # x, y (N, C, HW); b (C,)
    n, c, hw = x.shape
    for p in prange(n * c):
        i, ch = p // c, p % c
        bias = b[ch]
        for j in range(hw):
            v = x[i, ch, j] + bias
            y[i, ch, j] = 0 if v <= 0 else v


@kernel_pair(fastmath={"reassoc"})  # vector lanes for the float64 sums; order still fixed
def _bias_relu_bwd(dy, y, dx, db):
    # dy, y, dx (N, C, HW); db (C,)
    n, c, hw = dy.shape
    partial = np.empty((n, c), dtype=np.float64)  # per-plane sums of dx
    for p in prange(n * c):
        i, ch = p // c, p % c
        s = 0.0
        for j in range(hw):
            g = dy[i, ch, j] if y[i, ch, j] > 0 else 0
            dx[i, ch, j] = g
            s += g
        partial[i, ch] = s
    for ch in range(c):  # fixed order over N: bitwise deterministic
        s = 0.0
        for i in range(n):
            s += partial[i, ch]
        db[ch] = s


@kernel_pair()
def _leaky_relu_fwd(x, slope, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else slope * v


@kernel_pair()
def _leaky_relu_bwd(dy, x, slope, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] if x[i] > 0 else slope * dy[i]


@kernel_pair()
def _sigmoid_fwd(x, y):
    for i in prange(x.size):
        v = x[i]
        e = np.exp(-abs(v))  # <= 1: no overflow for any |x|
        y[i] = (1 if v >= 0 else e) / (1 + e)


@kernel_pair()
def _sigmoid_bwd(dy, y, dx):
    for i in prange(dy.size):
        s = y[i]
        dx[i] = dy[i] * s * (1 - s)


@kernel_pair()
def _tanh_fwd(x, y):
    for i in prange(x.size):
        y[i] = np.tanh(x[i])


@kernel_pair()
def _tanh_bwd(dy, y, dx):
    for i in prange(dy.size):
        t = y[i]
        dx[i] = dy[i] * (1 - t * t)


# ---- the ops of engine.backend.OPS ----------------------------------------------------

def relu_forward(x, out=None):
    x = np.ascontiguousarray(x)
    y = output(out, x.shape, x.dtype)
    _relu_fwd(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y, out=None):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = output(out, dy.shape, dy.dtype)
    _relu_bwd(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


@kernel_pair()
def _bias_relu_rows_fwd(x, b, y):
    # x, y (N, C); b (C,): rows in parallel, each row a vector loop
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[i, j] + b[j]
            y[i, j] = 0 if v <= 0 else v


def bias_relu_forward(x, b, out=None):
    x, b = np.ascontiguousarray(x), np.ascontiguousarray(b)
    y = output(out, x.shape, x.dtype)
    if x.ndim == 2:
        _bias_relu_rows_fwd(x, b, y)
    else:
        _bias_relu_fwd(planes(x), b, planes(y))
    return y


def bias_relu_backward(dy, y, out=None):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = output(None if out is None else out[0], dy.shape, dy.dtype)
    db = output(None if out is None else out[1], (dy.shape[1],), dy.dtype)
    if dy.ndim == 2:  # dense: the ReLU mask elementwise, then the column sums
        _relu_bwd(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
        column_sums(dx, db)
    else:
        _bias_relu_bwd(planes(dy), planes(y), planes(dx), db)
    return dx, db


def leaky_relu_forward(x, negative_slope, out=None):
    x = np.ascontiguousarray(x)
    y = output(out, x.shape, x.dtype)
    _leaky_relu_fwd(x.reshape(-1), float(negative_slope), y.reshape(-1))
    return y


def leaky_relu_backward(dy, x, negative_slope, out=None):
    dy, x = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    dx = output(out, dy.shape, dy.dtype)
    _leaky_relu_bwd(dy.reshape(-1), x.reshape(-1), float(negative_slope), dx.reshape(-1))
    return dx


def sigmoid_forward(x, out=None):
    x = np.ascontiguousarray(x)
    y = output(out, x.shape, x.dtype)
    _sigmoid_fwd(x.reshape(-1), y.reshape(-1))
    return y


def sigmoid_backward(dy, y, out=None):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = output(out, dy.shape, dy.dtype)
    _sigmoid_bwd(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


def tanh_forward(x, out=None):
    x = np.ascontiguousarray(x)
    y = output(out, x.shape, x.dtype)
    _tanh_fwd(x.reshape(-1), y.reshape(-1))
    return y


def tanh_backward(dy, y, out=None):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = output(out, dy.shape, dy.dtype)
    _tanh_bwd(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx
