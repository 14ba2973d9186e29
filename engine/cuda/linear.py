"""CUDA glue for dense layers (engine/cuda/gemm.py), bias gradients and add (kernels/activation.cu)."""
from __future__ import annotations

from engine import shapes
from engine.cuda.common import channels, output
from engine.cuda.gemm import matmul
from engine.cuda.launch import Kernel, grid_1d

# one block per channel, each summing its N*HW elements in a fixed order
BIAS_BACKWARD = Kernel("activation.cu", "bias_backward_kernel", "const float* dy, float* db, int batch, "
                       "int channels, i64 hw", grid=lambda a: a.channels)
ADD = Kernel("activation.cu", "add_forward_kernel", "const float* a, const float* b, float* c, i64 n",
             grid=lambda a: grid_1d(a.n))


def linear_forward(L, x, w, b, out=None):
    """y (N, O) = x (N, I) @ w (O, I).T + b: one NT GEMM with the bias in its epilogue."""
    y = output(out, shapes.linear_shape(x.shape, w.shape))
    return matmul(L, x, w, False, True, y, bias=b, bias_axis=1)


def linear_backward_data(L, dy, w, out=None):
    """dx (N, I) = dy (N, O) @ w (O, I)."""
    return matmul(L, dy, w, False, False, output(out, (dy.shape[0], w.shape[1])))


def linear_backward_weight(L, dy, x, out=None):
    """dw (O, I) = dy (N, O).T @ x (N, I)."""
    return matmul(L, dy, x, True, False, output(out, (dy.shape[1], x.shape[1])))


def bias_backward(L, dy, out=None):
    """db (C,) = dy summed over every axis but axis 1 (dense and conv biases alike)."""
    n, c, hw = channels(dy)
    db = output(out, (c,))
    L.launch(BIAS_BACKWARD, dy, db, n, c, hw)
    return db


def add(L, a, b, out=None):
    y = output(out, a.shape)  # may be a or b itself: accumulation in place
    L.launch(ADD, a, b, y, a.size)
    return y
