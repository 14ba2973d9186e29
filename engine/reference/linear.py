"""Dense layers and bias gradients, the spec: float64 NumPy.

x (N, I), w (O, I) as PyTorch stores it, b (O,), y (N, O) = x @ w.T + b.
Every function accepts any float arrays, computes in float64 and returns float64;
``out=`` receives the result when given.
"""
from __future__ import annotations

import numpy as np

from engine import shapes
from engine.cards import LIKE_INPUT, Dense, OpCard, Tensor, like_arg, normal, one_output


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


# --------------------------------------------------------------------------------------
# Cards (engine.cards).

def _dense_flops(s: Dense) -> float:
    return 2.0 * s.n * s.i * s.o


def _axes_but_1(t):
    return [a for a in range(t.ndim) if a != 1]


CARDS = [
    OpCard("linear_forward", linear_forward, Dense,
           lambda r, s: (normal(r, (s.n, s.i)), normal(r, (s.o, s.i), 0.1), normal(r, (s.o,))), ("y",),
           one_output(lambda x, w, b: shapes.linear_shape(x.shape, w.shape)), "linear", flops=_dense_flops,
           torch=lambda T, x, w, b: lambda: T.F.linear(x, w, b)),
    OpCard("linear_backward_data", linear_backward_data, Dense,
           lambda r, s: (normal(r, (s.n, s.o)), normal(r, (s.o, s.i), 0.1)), ("dx",),
           one_output(lambda dy, w: (dy.shape[0], w.shape[1])), "linear", flops=_dense_flops,
           torch=lambda T, dy, w: lambda: T.torch.mm(dy, w)),
    OpCard("linear_backward_weight", linear_backward_weight, Dense,
           lambda r, s: (normal(r, (s.n, s.o)), normal(r, (s.n, s.i))), ("dw",),
           one_output(lambda dy, x: (dy.shape[1], x.shape[1])), "linear", flops=_dense_flops,
           torch=lambda T, dy, x: lambda: T.torch.mm(dy.t(), x)),
    OpCard("bias_backward", bias_backward, Tensor, lambda r, s: (normal(r, s.shape),), ("db",),
           lambda dy: (((dy.shape[1],), LIKE_INPUT),), "linear",
           torch=lambda T, dy: lambda: dy.sum(dim=_axes_but_1(dy))),
    OpCard("add", add, Tensor, lambda r, s: (normal(r, s.shape), normal(r, s.shape)), ("y",), like_arg(0),
           "linear", torch=lambda T, a, b: lambda: T.torch.add(a, b)),
]
