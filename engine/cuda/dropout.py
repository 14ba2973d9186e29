"""CUDA glue for dropout (kernels/dropout.cu): the counter-based mask of
engine/reference/dropout.py, bit for bit, so a seed gives the same mask on every backend."""
from __future__ import annotations

import numpy as np

from engine.cuda.common import output, outputs
from engine.cuda.launch import Kernel, grid_1d

FORWARD = Kernel("dropout.cu", "dropout_forward_kernel", "const float* x, float* y, unsigned char* mask, "
                 "unsigned long long seed, double p, float scale, i64 n", grid=lambda a: grid_1d(a.n))
BACKWARD = Kernel("dropout.cu", "dropout_backward_kernel",
                  "const float* dy, const unsigned char* mask, float* dx, float scale, i64 n",
                  grid=lambda a: grid_1d(a.n))


def dropout_forward(L, x, p, seed, out=None):
    """x -> (y = x * mask / (1 - p), mask uint8)."""
    y, mask = outputs(out, ((x.shape, np.float32), (x.shape, np.uint8)))
    # the seed wraps to uint64, as in the reference
    L.launch(FORWARD, x, y, mask, int(seed) % 2**64, float(p), 1.0 / (1.0 - p), x.size)
    return y, mask


def dropout_backward(L, dy, mask, p, out=None):
    dx = output(out, dy.shape)
    L.launch(BACKWARD, dy, mask, dx, 1.0 / (1.0 - p), dy.size)
    return dx
