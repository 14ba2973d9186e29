"""CUDA glue for dropout (kernels/dropout.cu): the counter-based mask of
engine/reference/dropout.py, bit for bit, so a seed gives the same mask on every backend."""
from __future__ import annotations

import numbers

import numpy as np

from engine.cuda import common as c


def _p(op, p) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: expected 0 <= p < 1, got {p}")
    return p


def dropout_forward(L, x, p, seed, out=None):
    """x -> (y = x * mask / (1 - p), mask uint8)."""
    op = "dropout_forward"
    x = c.array(op, "x", x)
    if not isinstance(seed, (numbers.Integral, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"{op}: expected an integer seed, got {type(seed).__name__}")
    y, mask = c.outputs(op, out, ((x.shape, np.float32), (x.shape, np.uint8)))
    L.dropout_forward(x, y, mask, int(seed) % 2**64, _p(op, p))  # uint64 wrap, as the reference
    return y, mask


def dropout_backward(L, dy, mask, p, out=None):
    op = "dropout_backward"
    dy = c.array(op, "dy", dy)
    mask = c.array(op, "mask", mask, dtype=np.uint8, shape=dy.shape)
    dx = c.output(op, out, dy.shape)
    L.dropout_backward(dy, mask, dx, _p(op, p))
    return dx
