"""Activations, the spec: float64 NumPy, one line of math per op.

Every function computes in float64 whatever dtype it is given and returns float64,
or writes (cast) into ``out=`` and returns ``out``. Shapes: any; ``bias_relu`` takes
x of rank 2 (N, C) or 4 (N, C, H, W) with b (C,) broadcast along axis 1.
Backward ops that take ``y`` use the forward output, so the executor need not keep x.
"""
from __future__ import annotations

import numpy as np


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _into(out, value):
    """Return value, or copy it into the caller's buffer (the executor reuses buffers)."""
    if out is None:
        return value
    out[...] = value
    return out


def _along_axis1(b: np.ndarray, ndim: int) -> np.ndarray:
    # b (C,) -> (1, C) or (1, C, 1, 1) so it broadcasts against x (N, C[, H, W])
    return b.reshape((1, -1) + (1,) * (ndim - 2))


def relu_forward(x, out=None):
    return _into(out, np.maximum(_f64(x), 0.0))


def relu_backward(dy, y, out=None):
    # y > 0 exactly where x > 0; the subgradient at 0 is taken as 0 (as PyTorch)
    return _into(out, _f64(dy) * (_f64(y) > 0))


def bias_relu_forward(x, b, out=None):
    x = _f64(x)
    return _into(out, np.maximum(x + _along_axis1(_f64(b), x.ndim), 0.0))


def bias_relu_backward(dy, y, out=None):
    dx = _f64(dy) * (_f64(y) > 0)
    db = dx.sum(axis=tuple(a for a in range(dx.ndim) if a != 1))  # (C,)
    if out is None:
        return dx, db
    return _into(out[0], dx), _into(out[1], db)


def leaky_relu_forward(x, negative_slope, out=None):
    x = _f64(x)
    return _into(out, np.where(x > 0, x, negative_slope * x))


def leaky_relu_backward(dy, x, negative_slope, out=None):
    return _into(out, _f64(dy) * np.where(_f64(x) > 0, 1.0, negative_slope))


def sigmoid_forward(x, out=None):
    # 1 / (1 + e^-x) overflows e^-x for x << 0; with e = e^-|x| <= 1 both branches are safe:
    # x >= 0: 1 / (1 + e),   x < 0: e / (1 + e)  (= e^x / (1 + e^x))
    x = _f64(x)
    e = np.exp(-np.abs(x))
    return _into(out, np.where(x >= 0, 1.0, e) / (1.0 + e))


def sigmoid_backward(dy, y, out=None):
    y = _f64(y)
    return _into(out, _f64(dy) * y * (1.0 - y))


def tanh_forward(x, out=None):
    return _into(out, np.tanh(_f64(x)))


def tanh_backward(dy, y, out=None):
    y = _f64(y)
    return _into(out, _f64(dy) * (1.0 - y * y))
