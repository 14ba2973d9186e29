"""CUDA glue for 2-D max and average pooling (kernels/pool.cu)."""
from __future__ import annotations

import numpy as np

from engine.cuda import common as c


def _geometry(op, x_shape, kernel, stride, padding):
    n, ch, h, w = (int(v) for v in x_shape)
    kernel, stride, padding = (c.pair(op, "kernel", kernel), c.pair(op, "stride", stride),
                               c.pair(op, "padding", padding))
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"{op}: padding {padding} exceeds half the kernel {kernel}")
    p, q = c.window_output(op, h, w, kernel, stride, padding)
    return (n, ch, h, w), (n, ch, p, q), (*kernel, *stride, *padding)


def max_pool2d_forward(L, x, kernel, stride, padding, out=None):
    """x (N, C, H, W) -> (y (N, C, P, Q), argmax int32 flat h*W+w in the plane)."""
    op = "max_pool2d_forward"
    x = c.array(op, "x", x, ndim=4)
    _, y_shape, geometry = _geometry(op, x.shape, kernel, stride, padding)
    y, argmax = c.outputs(op, out, ((y_shape, np.float32), (y_shape, np.int32)))
    L.max_pool2d_forward(x, y, argmax, *geometry)
    return y, argmax


def max_pool2d_backward(L, dy, argmax, x_shape, out=None):
    """dx (N, C, H, W): dy added at each argmax, in the reference's order (deterministic)."""
    op = "max_pool2d_backward"
    dy = c.array(op, "dy", dy, ndim=4)
    argmax = c.array(op, "argmax", argmax, dtype=np.int32, shape=dy.shape)
    n, ch, h, w = (int(v) for v in x_shape)
    if (n, ch) != tuple(dy.shape[:2]):
        raise ValueError(f"{op}: dy {dy.shape} and x_shape {tuple(x_shape)} differ in N or C")
    dx = c.output(op, out, (n, ch, h, w))
    L.max_pool2d_backward(dy, argmax, dx)
    return dx


def avg_pool2d_forward(L, x, kernel, stride, padding, count_include_pad=True, out=None):
    op = "avg_pool2d_forward"
    x = c.array(op, "x", x, ndim=4)
    _, y_shape, geometry = _geometry(op, x.shape, kernel, stride, padding)
    y = c.output(op, out, y_shape)
    L.avg_pool2d_forward(x, y, *geometry, bool(count_include_pad))
    return y


def avg_pool2d_backward(L, dy, x_shape, kernel, stride, padding, count_include_pad=True, out=None):
    op = "avg_pool2d_backward"
    x_shape, y_shape, geometry = _geometry(op, x_shape, kernel, stride, padding)
    dy = c.array(op, "dy", dy, shape=y_shape)
    dx = c.output(op, out, x_shape)
    L.avg_pool2d_backward(dy, dx, *geometry, bool(count_include_pad))
    return dx
