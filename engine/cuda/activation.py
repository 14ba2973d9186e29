"""CUDA glue for activations (kernels/activation.cu).

Every row of the elementwise table (engine/reference/activation.py, ELEMENTWISE) has the
kernels <row>_forward_kernel and <row>_backward_kernel, stamped out by one macro over the
row's __device__ pair, with one launch description each for all rows: a row adds no code
here. A row's scalar parameters travel as the kernels' a and b (0 when it has fewer).
"""
from __future__ import annotations

import functools

from engine.cuda.common import channels, output, outputs
from engine.cuda.launch import Kernel, grid_1d

BIAS_RELU_FORWARD = Kernel("activation.cu", "bias_relu_forward_kernel",
                           "const float* x, const float* b, float* y, i64 n, int channels, i64 hw",
                           grid=lambda a: grid_1d(a.n))
BIAS_RELU_BACKWARD = Kernel("activation.cu", "bias_relu_backward_kernel",
                            "const float* dy, const float* y, float* dx, float* db, int batch, int channels, i64 hw",
                            grid=lambda a: a.channels)  # one block per channel


@functools.lru_cache(maxsize=None)
def kernels(row) -> tuple[Kernel, Kernel]:
    return (Kernel("activation.cu", f"{row.name}_forward_kernel", "const float* x, float* y, float a, float b, i64 n",
                   grid=lambda a: grid_1d(a.n)),
            Kernel("activation.cu", f"{row.name}_backward_kernel",
                   "const float* dy, const float* saved, float* dx, float a, float b, i64 n",
                   grid=lambda a: grid_1d(a.n)))


def _ab(params) -> tuple[float, float]:
    assert len(params) <= 2, "the elementwise kernels take at most two scalar parameters"
    a, b = (tuple(float(p) for p in params) + (0.0, 0.0))[:2]
    return a, b


def elementwise_forward(L, row, x, *params, out=None):
    y = output(out, x.shape)
    L.launch(kernels(row)[0], x, y, *_ab(params), x.size)
    return y


def elementwise_backward(L, row, dy, saved, *params, out=None):
    dx = output(out, dy.shape)
    L.launch(kernels(row)[1], dy, saved, dx, *_ab(params), dy.size)
    return dx


def bias_relu_forward(L, x, b, out=None):
    _, c, hw = channels(x)
    y = output(out, x.shape)
    L.launch(BIAS_RELU_FORWARD, x, b, y, x.size, c, hw)
    return y


def bias_relu_backward(L, dy, y, out=None):
    n, c, hw = channels(dy)
    dx, db = outputs(out, ((dy.shape, "float32"), ((c,), "float32")))
    L.launch(BIAS_RELU_BACKWARD, dy, y, dx, db, n, c, hw)
    return dx, db
