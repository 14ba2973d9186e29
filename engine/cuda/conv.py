"""CUDA glue for convolution: im2col / col2im (kernels/im2col.cu) and GEMM (engine/cuda/gemm.py).

conv2d runs as a batched GEMM over im2col columns, one launch each per chunk of images:
    forward        y[n] (K, P*Q)   = W (K, C*R*S) @ cols[n] (C*R*S, P*Q)  + b   (NN, bias per row)
    backward data  dcols[n]        = W.T @ dy[n]                               (TN), then col2im
    backward weight dW (K, C*R*S)  = sum_n dy[n] (K, P*Q) @ cols[n].T          (NT, split-K over n)
Every op takes the exposure L first (engine.backend binds it).
"""
from __future__ import annotations

import numpy as np

from engine import shapes
from engine.cuda.common import cupy, output
from engine.cuda.gemm import matmul
from engine.cuda.launch import Kernel, grid_1d
from engine.cuda.linear import add

# At most this many float32 column elements per launch (512 MiB); larger batches run in chunks.
CHUNK_ELEMENTS = 1 << 27

_GEOMETRY = "int N, int C, int H, int W, int R, int S, int sh, int sw, int ph, int pw"
IM2COL = Kernel("im2col.cu", "im2col_forward_kernel", "const float* x, float* cols, " + _GEOMETRY,
                grid=lambda a: grid_1d(a.N * a.C * a.R * a.S * _pq(a)))
COL2IM = Kernel("im2col.cu", "col2im_forward_kernel", "const float* cols, float* x, " + _GEOMETRY,
                grid=lambda a: grid_1d(a.N * a.C * a.H * a.W))


def _pq(a) -> int:
    p, q = shapes.window_output_hw(a.H, a.W, (a.R, a.S), (a.sh, a.sw), (a.ph, a.pw))
    return p * q


def _im2col(L, x, cols, kernel, stride, padding):
    L.launch(IM2COL, x, cols, *x.shape, *kernel, *stride, *padding)


def _col2im(L, cols, x, kernel, stride, padding):
    L.launch(COL2IM, cols, x, *x.shape, *kernel, *stride, *padding)


def _chunks(n: int, elements_per_image: int):
    step = max(1, min(n, CHUNK_ELEMENTS // max(1, elements_per_image)))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _columns(L, x, kernel, stride, padding):
    """cols (n, C*R*S, P*Q) of the images x (n, C, H, W); a 1x1/1/0 conv needs no copy."""
    n, ch, h, w = x.shape
    if (tuple(kernel), tuple(stride), tuple(padding)) == ((1, 1), (1, 1), (0, 0)):
        return x.reshape(n, ch, h * w)
    cols = cupy().empty(shapes.im2col_shape(x.shape, kernel, stride, padding), dtype=np.float32)
    _im2col(L, x, cols, kernel, stride, padding)
    return cols


def im2col(L, x, kernel, stride, padding, out=None):
    cols = output(out, shapes.im2col_shape(x.shape, kernel, stride, padding))
    _im2col(L, x, cols, kernel, stride, padding)
    return cols


def col2im(L, cols, x_shape, kernel, stride, padding, out=None):
    x = output(out, x_shape)
    _col2im(L, cols, x, kernel, stride, padding)
    return x


def gemm(L, a, b, trans_a=False, trans_b=False, out=None):
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    return matmul(L, a, b, bool(trans_a), bool(trans_b), output(out, (m, n)))


def conv2d_forward(L, x, w, b, stride, padding, out=None):
    """y (N, K, P, Q) = conv(x (N, C, H, W), w (K, C, R, S)) + b (K,)."""
    y = output(out, shapes.conv2d_shape(x.shape, w.shape, stride, padding))
    n, k, p, q = y.shape
    w2 = w.reshape(k, -1)
    for n0, n1 in _chunks(n, w2.shape[1] * p * q):
        cols = _columns(L, x[n0:n1], w.shape[2:], stride, padding)  # (nb, C*R*S, P*Q)
        matmul(L, w2, cols, False, False, y[n0:n1].reshape(n1 - n0, k, p * q),
               bias=b, bias_axis=-1 if b is None else 0)
    return y


def conv2d_backward_data(L, dy, w, x_shape, stride, padding, out=None):
    """dx (N, C, H, W) from dy (N, K, P, Q): W.T @ dy[n], folded back by col2im."""
    dx = output(out, x_shape)
    n, k, p, q = dy.shape
    w2 = w.reshape(k, -1)
    one_by_one = (tuple(w.shape[2:]), tuple(stride), tuple(padding)) == ((1, 1), (1, 1), (0, 0))
    for n0, n1 in _chunks(n, w2.shape[1] * p * q):
        dy3 = dy[n0:n1].reshape(n1 - n0, k, p * q)
        if one_by_one:  # the columns are the image itself
            matmul(L, w2, dy3, True, False, dx[n0:n1].reshape(n1 - n0, x_shape[1], -1))
            continue
        dcols = cupy().empty((n1 - n0, w2.shape[1], p * q), dtype=np.float32)
        matmul(L, w2, dy3, True, False, dcols)
        _col2im(L, dcols, dx[n0:n1], w.shape[2:], stride, padding)
    return dx


def conv2d_backward_weight(L, dy, x, w_shape, stride, padding, out=None):
    """dw (K, C, R, S) = sum_n dy[n] (K, P*Q) @ cols[n].T (P*Q, C*R*S)."""
    dw = output(out, w_shape)
    n, k, p, q = dy.shape
    dw2 = dw.reshape(k, -1)
    partial = None
    for n0, n1 in _chunks(n, dw2.shape[1] * p * q):
        cols = _columns(L, x[n0:n1], w_shape[2:], stride, padding)
        dy3 = dy[n0:n1].reshape(n1 - n0, k, p * q)
        if n0 == 0:
            matmul(L, dy3, cols, False, True, dw2)
        else:  # later chunks add into dw, in chunk order
            partial = cupy().empty_like(dw2) if partial is None else partial
            matmul(L, dy3, cols, False, True, partial)
            add(L, dw2, partial, out=dw2)
    return dw
