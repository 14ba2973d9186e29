"""Dense layers and bias gradients, the spec: float64 NumPy.

x (N, I), w (O, I) as PyTorch stores it, b (O,), y (N, O) = x @ w.T + b.
Every function accepts any float arrays, computes in float64 and returns float64;
``out=`` receives the result when given.
"""
from __future__ import annotations

import numpy as np


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _deliver(result: np.ndarray, out):
    if out is None:
        return result
    out[...] = result
    return out


def linear_forward(x, w, b, out=None):
    """x (N, I), w (O, I), b (O,) or None -> y (N, O) = x @ w.T + b."""
    y = _f64(x) @ _f64(w).T
    if b is not None:
        y = y + _f64(b)
    return _deliver(y, out)


def linear_backward_data(dy, w, out=None):
    """dy (N, O), w (O, I) -> dx (N, I) = dy @ w."""
    return _deliver(_f64(dy) @ _f64(w), out)


def linear_backward_weight(dy, x, out=None):
    """dy (N, O), x (N, I) -> dw (O, I) = dy.T @ x (summed over the batch)."""
    return _deliver(_f64(dy).T @ _f64(x), out)


def bias_backward(dy, out=None):
    """dy (N, O) or (N, K, P, Q) -> db (O,) or (K,): dy summed over every axis but axis 1."""
    dy = _f64(dy)
    axes = tuple(i for i in range(dy.ndim) if i != 1)
    return _deliver(dy.sum(axis=axes), out)


def add(a, b, out=None):
    """a + b, same shapes: residual joins and gradient accumulation."""
    return _deliver(_f64(a) + _f64(b), out)
