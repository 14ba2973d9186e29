"""CUDA glue for activations (kernels/activation.cu): check, allocate, launch.

Every op takes the launcher set L (engine.cuda.ext or engine.cuda.rtc) first;
engine.cuda.make_backend binds it.
"""
from __future__ import annotations

from engine.cuda import common as c


def _unary(L, op, launcher, x, out, *scalars):
    x = c.array(op, "x", x)
    y = c.output(op, out, x.shape)
    getattr(L, launcher)(x, y, *scalars)
    return y


def _grad(L, op, launcher, dy, other_name, other, out, *scalars):
    dy = c.array(op, "dy", dy)
    other = c.array(op, other_name, other)
    c.same_shape(op, "dy", dy, **{other_name: other})
    dx = c.output(op, out, dy.shape)
    getattr(L, launcher)(dy, other, dx, *scalars)
    return dx


def _channels(op, x, name="x"):
    if x.ndim < 2:
        raise ValueError(f"{op}: expected {name} of shape (N, C, ...), got {x.shape}")
    return x.shape[1]


def relu_forward(L, x, out=None):
    return _unary(L, "relu_forward", "relu_forward", x, out)


def relu_backward(L, dy, y, out=None):
    return _grad(L, "relu_backward", "relu_backward", dy, "y", y, out)


def bias_relu_forward(L, x, b, out=None):
    op = "bias_relu_forward"
    x = c.array(op, "x", x)
    b = c.array(op, "b", b, shape=(_channels(op, x),))
    y = c.output(op, out, x.shape)
    L.bias_relu_forward(x, b, y)
    return y


def bias_relu_backward(L, dy, y, out=None):
    op = "bias_relu_backward"
    dy, y = c.array(op, "dy", dy), c.array(op, "y", y)
    c.same_shape(op, "dy", dy, y=y)
    dx, db = c.outputs(op, out, ((dy.shape, "float32"), ((_channels(op, dy, "dy"),), "float32")))
    L.bias_relu_backward(dy, y, dx, db)
    return dx, db


def leaky_relu_forward(L, x, negative_slope, out=None):
    return _unary(L, "leaky_relu_forward", "leaky_relu_forward", x, out, float(negative_slope))


def leaky_relu_backward(L, dy, x, negative_slope, out=None):
    return _grad(L, "leaky_relu_backward", "leaky_relu_backward", dy, "x", x, out, float(negative_slope))


def sigmoid_forward(L, x, out=None):
    return _unary(L, "sigmoid_forward", "sigmoid_forward", x, out)


def sigmoid_backward(L, dy, y, out=None):
    return _grad(L, "sigmoid_backward", "sigmoid_backward", dy, "y", y, out)


def tanh_forward(L, x, out=None):
    return _unary(L, "tanh_forward", "tanh_forward", x, out)


def tanh_backward(L, dy, y, out=None):
    return _grad(L, "tanh_backward", "tanh_backward", dy, "y", y, out)
