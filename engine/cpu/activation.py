"""Activations as Numba kernels (float32 on the CPU); the spec is engine.reference.activation.

Every row of the elementwise table (engine.reference.activation.ELEMENTWISE) runs through
two generic kernels, one prange over the flat C-order arrays each, in which the row's
scalar functions are compiled in place (engine.cpu.parallel.specialize): adding a row
adds no code here. Every kernel is compiled twice by ``kernel_pair``: arrays under
PARALLEL_MIN elements run the serial twin, because waking the thread pool costs more than
it saves there, and on a busy machine a parallel region can wait a whole scheduler slice
for a descheduled worker (PyTorch applies the same grain size).

bias_relu views x as (N, C, HW) -- HW = H*W, or 1 for x of rank 2 -- and parallelises over
the N*C planes; its db reduces each plane into an (N, C) float64 partial and then sums the
partials over N in a fixed order, so the result is bitwise the same on every run whatever
the thread count.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from engine.cpu.arrays import column_sums, output, planes
from engine.cpu.parallel import kernel_pair, specialize

# ---- the generic elementwise kernels: flat arrays in, flat arrays out -------------------
# `scalar` is bound to a row's scalar function by specialize() and inlined by Numba (a call
# per element cost 15% on sigmoid); a, b are the row's parameters, 0.0 when it has fewer.


def _forward(x, a, b, y):
    for i in prange(x.size):
        y[i] = scalar(x[i], a, b)  # noqa: F821 (bound by specialize)


def _backward(dy, saved, a, b, dx):
    for i in prange(dy.size):
        dx[i] = scalar(dy[i], saved[i], a, b)  # noqa: F821 (bound by specialize)


_KERNELS: dict[str, tuple] = {}  # row name -> (forward, backward), compiled on first use


def _kernels(row) -> tuple:
    if row.name not in _KERNELS:
        _KERNELS[row.name] = (specialize(_forward, row.name, scalar=row.scalar_forward),
                              specialize(_backward, row.name, scalar=row.scalar_backward))
    return _KERNELS[row.name]


def _ab(params) -> tuple[float, float]:
    """The kernels' a, b: the row's parameters, 0.0 where it has fewer."""
    if not params:
        return 0.0, 0.0
    return float(params[0]), float(params[1]) if len(params) > 1 else 0.0


def elementwise_forward(row, x, *params, out=None):
    """y = row's forward of x, element by element; params as the row names them."""
    x = np.ascontiguousarray(x)
    y = output(out, x.shape, x.dtype)
    _kernels(row)[0](x.reshape(-1), *_ab(params), y.reshape(-1))
    return y


def elementwise_backward(row, dy, saved, *params, out=None):
    """dx = row's backward of (dy, saved), saved being the forward's y or x (row.saves)."""
    dy, saved = np.ascontiguousarray(dy), np.ascontiguousarray(saved)
    dx = output(out, dy.shape, dy.dtype)
    _kernels(row)[1](dy.reshape(-1), saved.reshape(-1), *_ab(params), dx.reshape(-1))
    return dx


# ---- bias_relu --------------------------------------------------------------------------

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


@kernel_pair()
def _bias_relu_rows_fwd(x, b, y):
    # x, y (N, C); b (C,): rows in parallel, each row a vector loop
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[i, j] + b[j]
            y[i, j] = 0 if v <= 0 else v


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
