"""CUDA glue for 2-D max and average pooling (kernels/pool.cu). planes = N*C."""
from __future__ import annotations

import numpy as np

from engine import shapes
from engine.cuda.common import output, outputs
from engine.cuda.launch import Kernel, grid_1d

_WINDOW = "int planes, int H, int W, int kh, int kw, int sh, int sw, int ph, int pw"


def _outputs_per_plane(a) -> int:
    p, q = shapes.window_output_hw(a.H, a.W, (a.kh, a.kw), (a.sh, a.sw), (a.ph, a.pw))
    return p * q


MAX_FORWARD = Kernel("pool.cu", "max_pool2d_forward_kernel", "const float* x, float* y, int* argmax, " + _WINDOW,
                     grid=lambda a: grid_1d(a.planes * _outputs_per_plane(a)))
MAX_BACKWARD = Kernel("pool.cu", "max_pool2d_backward_kernel",
                      "const float* dy, const int* argmax, float* dx, int planes, int HW, int PQ",
                      grid=lambda a: grid_1d(a.planes))  # one thread per plane
AVG_FORWARD = Kernel("pool.cu", "avg_pool2d_forward_kernel",
                     "const float* x, float* y, " + _WINDOW + ", int count_include_pad",
                     grid=lambda a: grid_1d(a.planes * _outputs_per_plane(a)))
AVG_BACKWARD = Kernel("pool.cu", "avg_pool2d_backward_kernel",
                      "const float* dy, float* dx, " + _WINDOW + ", int count_include_pad",
                      grid=lambda a: grid_1d(a.planes * a.H * a.W))


ADAPTIVE_FORWARD = Kernel("pool.cu", "adaptive_avg_pool2d_forward_kernel",
                          "const float* x, float* y, int planes, int H, int W, int oh, int ow",
                          grid=lambda a: grid_1d(a.planes * a.oh * a.ow))
ADAPTIVE_BACKWARD = Kernel("pool.cu", "adaptive_avg_pool2d_backward_kernel",
                           "const float* dy, float* dx, int planes, int H, int W, int oh, int ow",
                           grid=lambda a: grid_1d(a.planes * a.H * a.W))


def _window(x_shape, kernel, stride, padding) -> tuple:
    n, c, h, w = x_shape
    return (n * c, h, w, *kernel, *stride, *padding)


def max_pool2d_forward(L, x, kernel, stride, padding, out=None):
    """x (N, C, H, W) -> (y (N, C, P, Q), argmax int32 flat h*W+w in the plane)."""
    y_shape = shapes.pool2d_shape(x.shape, kernel, stride, padding)
    y, argmax = outputs(out, ((y_shape, np.float32), (y_shape, np.int32)))
    L.launch(MAX_FORWARD, x, y, argmax, *_window(x.shape, kernel, stride, padding))
    return y, argmax


def max_pool2d_backward(L, dy, argmax, x_shape, out=None):
    """dx (N, C, H, W): dy added at each argmax, in the reference's order (deterministic)."""
    dx = output(out, x_shape)
    dx.fill(0)  # the kernel adds into dx: cells that no window chose stay zero
    n, c, h, w = x_shape
    L.launch(MAX_BACKWARD, dy, argmax, dx, n * c, h * w, dy.shape[2] * dy.shape[3])
    return dx


def avg_pool2d_forward(L, x, kernel, stride, padding, count_include_pad=True, out=None):
    y = output(out, shapes.pool2d_shape(x.shape, kernel, stride, padding))
    L.launch(AVG_FORWARD, x, y, *_window(x.shape, kernel, stride, padding), int(count_include_pad))
    return y


def avg_pool2d_backward(L, dy, x_shape, kernel, stride, padding, count_include_pad=True, out=None):
    dx = output(out, x_shape)
    L.launch(AVG_BACKWARD, dy, dx, *_window(x_shape, kernel, stride, padding), int(count_include_pad))
    return dx


def adaptive_avg_pool2d_forward(L, x, output_size, out=None):
    n, c, h, w = x.shape
    y = output(out, (n, c, *output_size))
    L.launch(ADAPTIVE_FORWARD, x, y, n * c, h, w, *output_size)
    return y


def adaptive_avg_pool2d_backward(L, dy, x_shape, out=None):
    n, c, h, w = x_shape
    dx = output(out, x_shape)
    L.launch(ADAPTIVE_BACKWARD, dy, dx, n * c, h, w, dy.shape[2], dy.shape[3])
    return dx
