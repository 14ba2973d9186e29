"""CUDA glue for dense layers, bias gradients and add (kernels/gemm.cu, activation.cu)."""
from __future__ import annotations

from engine.cuda import common as c
from engine.cuda.conv import matmul


def linear_forward(L, x, w, b, out=None):
    """y (N, O) = x (N, I) @ w (O, I).T + b: one NT GEMM with the bias in its epilogue."""
    op = "linear_forward"
    x, w = c.array(op, "x", x, ndim=2), c.array(op, "w", w, ndim=2)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{op}: input has {x.shape[1]} features but weight {w.shape} expects {w.shape[1]}")
    if b is not None:
        b = c.array(op, "b", b, shape=(w.shape[0],))
    y = c.output(op, out, (x.shape[0], w.shape[0]))
    matmul(L, x, w, False, True, y, bias=b, bias_axis=1)
    return y


def linear_backward_data(L, dy, w, out=None):
    """dx (N, I) = dy (N, O) @ w (O, I)."""
    op = "linear_backward_data"
    dy, w = c.array(op, "dy", dy, ndim=2), c.array(op, "w", w, ndim=2)
    if dy.shape[1] != w.shape[0]:
        raise ValueError(f"{op}: dy has {dy.shape[1]} features but weight {w.shape} has {w.shape[0]} outputs")
    dx = c.output(op, out, (dy.shape[0], w.shape[1]))
    matmul(L, dy, w, False, False, dx)
    return dx


def linear_backward_weight(L, dy, x, out=None):
    """dw (O, I) = dy (N, O).T @ x (N, I)."""
    op = "linear_backward_weight"
    dy, x = c.array(op, "dy", dy, ndim=2), c.array(op, "x", x, ndim=2)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: dy has batch {dy.shape[0]} but x has batch {x.shape[0]}")
    dw = c.output(op, out, (dy.shape[1], x.shape[1]))
    matmul(L, dy, x, True, False, dw)
    return dw


def bias_backward(L, dy, out=None):
    """db (C,) = dy summed over every axis but axis 1 (dense and conv biases alike)."""
    op = "bias_backward"
    dy = c.array(op, "dy", dy)
    if dy.ndim < 2:
        raise ValueError(f"{op}: expected dy of shape (N, C, ...), got {dy.shape}")
    db = c.output(op, out, (dy.shape[1],))
    L.bias_backward(dy, db)
    return db


def add(L, a, b, out=None):
    op = "add"
    a, b = c.array(op, "a", a), c.array(op, "b", b)
    c.same_shape(op, "a", a, b=b)
    y = c.output(op, out, a.shape)  # may be a or b itself: accumulation in place
    L.add(a, b, y)
    return y
