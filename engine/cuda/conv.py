"""CUDA glue for convolution: im2col / col2im (kernels/im2col.cu) and GEMM (kernels/gemm.cu).

conv2d runs as a batched GEMM over im2col columns, one launch each per chunk of images:
    forward        y[n] (K, P*Q)   = W (K, C*R*S) @ cols[n] (C*R*S, P*Q)  + b   (NN, bias per row)
    backward data  dcols[n]        = W.T @ dy[n]                               (TN), then col2im
    backward weight dW (K, C*R*S)  = sum_n dy[n] (K, P*Q) @ cols[n].T          (NT, split-K over n)
The weight gradient splits the batch into groups whose partial sums land in a workspace
and are added by gemm_reduce_splits in a fixed order: deterministic, and enough blocks to
fill the GPU even when K x C*R*S is a handful of tiles. ENGINE_GEMM=cublas runs every GEMM
through cupy.matmul (cuBLAS) instead, for comparison.
"""
from __future__ import annotations

import numpy as np

from engine.cuda import common as c

# At most this many float32 column elements per launch (512 MiB); larger batches run in chunks.
CHUNK_ELEMENTS = 1 << 27


def matmul(L, a, b, trans_a, trans_b, out, bias=None, bias_axis=-1, relu=False):
    """out = epilogue(op(a) @ op(b)) for checked arrays. a, b: 2-D, or 3-D (batch, rows, cols)
    with 2-D operands shared by the batch; out: 3-D (batch, M, N), or 2-D where a batched
    product is summed over the batch. bias_axis 0: bias per row of out, 1: per column."""
    if bias is None:
        bias_axis = -1
    if c.gemm_backend() == "cublas":
        return _matmul_cublas(a, b, trans_a, trans_b, out, bias, bias_axis, relu)
    batched = a.ndim == 3 or b.ndim == 3
    if out.ndim == 3 or not batched:
        L.gemm(a, b, out, trans_a, trans_b, bias, bias_axis, relu)
        return out
    # sum over the batch: split it into groups, one partial output each (split-K over n)
    assert bias is None and not relu, "no epilogue on a split-K product"
    batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
    m, n = out.shape
    splits = min(batch, max(1, 256 // (c.cdiv(m, 64) * c.cdiv(n, 64))))
    splits = c.cdiv(batch, c.cdiv(batch, splits))  # every group non-empty
    if splits == 1:
        L.gemm(a, b, out, trans_a, trans_b, None, -1, False)
        return out
    partial = c.cupy().empty((splits, m, n), dtype=np.float32)
    L.gemm(a, b, partial, trans_a, trans_b, None, -1, False)
    L.gemm_reduce_splits(partial, out)
    return out


def _matmul_cublas(a, b, trans_a, trans_b, out, bias, bias_axis, relu):
    cp = c.cupy()
    op_a = a.swapaxes(-1, -2) if trans_a else a
    op_b = b.swapaxes(-1, -2) if trans_b else b
    if out.ndim == 2 and (a.ndim == 3 or b.ndim == 3):
        out[...] = cp.tensordot(op_a, op_b, axes=([0, 2], [0, 1]))  # sum_n op(a)[n] @ op(b)[n]
    else:
        cp.matmul(op_a, op_b, out=out)
    if bias is not None:
        out += bias.reshape(-1, 1) if bias_axis == 0 else bias
    if relu:
        cp.maximum(out, 0, out=out)
    return out


def _chunks(n: int, elements_per_image: int):
    step = max(1, min(n, CHUNK_ELEMENTS // max(1, elements_per_image)))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _geometry(op, x_shape, w_shape, stride, padding):
    n, ch, h, w = (int(v) for v in x_shape)
    k, cw, r, s = (int(v) for v in w_shape)
    if ch != cw:
        raise ValueError(f"{op}: input has {ch} channels but weight expects {cw}")
    stride, padding = c.pair(op, "stride", stride), c.pair(op, "padding", padding)
    p, q = c.window_output(op, h, w, (r, s), stride, padding)
    return n, ch, h, w, k, r, s, p, q, stride, padding


def _columns(L, x, r, s, stride, padding, p, q):
    """cols (n, C*R*S, P*Q) of the images x (n, C, H, W); a 1x1/1/0 conv needs no copy."""
    n, ch, h, w = x.shape
    if (r, s, stride, padding) == (1, 1, (1, 1), (0, 0)):
        return x.reshape(n, ch, h * w)
    cols = c.cupy().empty((n, ch * r * s, p * q), dtype=np.float32)
    L.im2col(x, cols, r, s, *stride, *padding)
    return cols


def im2col(L, x, kernel, stride, padding, out=None):
    op = "im2col"
    x = c.array(op, "x", x, ndim=4)
    n, ch, h, w = x.shape
    (r, s), stride, padding = c.pair(op, "kernel", kernel), c.pair(op, "stride", stride), c.pair(op, "padding", padding)
    p, q = c.window_output(op, h, w, (r, s), stride, padding)
    cols = c.output(op, out, (n, ch * r * s, p * q))
    L.im2col(x, cols, r, s, *stride, *padding)
    return cols


def col2im(L, cols, x_shape, kernel, stride, padding, out=None):
    op = "col2im"
    n, ch, h, w = (int(v) for v in x_shape)
    (r, s), stride, padding = c.pair(op, "kernel", kernel), c.pair(op, "stride", stride), c.pair(op, "padding", padding)
    p, q = c.window_output(op, h, w, (r, s), stride, padding)
    cols = c.array(op, "cols", cols, shape=(n, ch * r * s, p * q))
    x = c.output(op, out, (n, ch, h, w))
    L.col2im(cols, x, r, s, *stride, *padding)
    return x


def gemm(L, a, b, trans_a=False, trans_b=False, out=None):
    op = "gemm"
    a, b = c.array(op, "a", a, ndim=2), c.array(op, "b", b, ndim=2)
    m, k = a.shape[::-1] if trans_a else a.shape
    kb, n = b.shape[::-1] if trans_b else b.shape
    if k != kb:
        raise ValueError(f"{op}: op(a) is {m}x{k} but op(b) is {kb}x{n}")
    y = c.output(op, out, (m, n))
    matmul(L, a, b, bool(trans_a), bool(trans_b), y)
    return y


def conv2d_forward(L, x, w, b, stride, padding, out=None):
    """y (N, K, P, Q) = conv(x (N, C, H, W), w (K, C, R, S)) + b (K,)."""
    op = "conv2d_forward"
    x, w = c.array(op, "x", x, ndim=4), c.array(op, "w", w, ndim=4)
    n, ch, h, wd, k, r, s, p, q, stride, padding = _geometry(op, x.shape, w.shape, stride, padding)
    if b is not None:
        b = c.array(op, "b", b, shape=(k,))
    y = c.output(op, out, (n, k, p, q))
    w2 = w.reshape(k, ch * r * s)
    for n0, n1 in _chunks(n, ch * r * s * p * q):
        cols = _columns(L, x[n0:n1], r, s, stride, padding, p, q)  # (nb, C*R*S, P*Q)
        matmul(L, w2, cols, False, False, y[n0:n1].reshape(n1 - n0, k, p * q),
               bias=b, bias_axis=-1 if b is None else 0)
    return y


def conv2d_backward_data(L, dy, w, x_shape, stride, padding, out=None):
    """dx (N, C, H, W) from dy (N, K, P, Q): W.T @ dy[n], folded back by col2im."""
    op = "conv2d_backward_data"
    w = c.array(op, "w", w, ndim=4)
    n, ch, h, wd, k, r, s, p, q, stride, padding = _geometry(op, x_shape, w.shape, stride, padding)
    dy = c.array(op, "dy", dy, shape=(n, k, p, q))
    dx = c.output(op, out, (n, ch, h, wd))
    w2 = w.reshape(k, ch * r * s)
    one_by_one = (r, s, stride, padding) == (1, 1, (1, 1), (0, 0))
    for n0, n1 in _chunks(n, ch * r * s * p * q):
        dy3 = dy[n0:n1].reshape(n1 - n0, k, p * q)
        if one_by_one:  # the columns are the image itself
            matmul(L, w2, dy3, True, False, dx[n0:n1].reshape(n1 - n0, ch, h * wd))
            continue
        dcols = c.cupy().empty((n1 - n0, ch * r * s, p * q), dtype=np.float32)
        matmul(L, w2, dy3, True, False, dcols)
        L.col2im(dcols, dx[n0:n1], r, s, *stride, *padding)
    return dx


def conv2d_backward_weight(L, dy, x, w_shape, stride, padding, out=None):
    """dw (K, C, R, S) = sum_n dy[n] (K, P*Q) @ cols[n].T (P*Q, C*R*S)."""
    op = "conv2d_backward_weight"
    x = c.array(op, "x", x, ndim=4)
    n, ch, h, wd, k, r, s, p, q, stride, padding = _geometry(op, x.shape, w_shape, stride, padding)
    dy = c.array(op, "dy", dy, shape=(n, k, p, q))
    dw = c.output(op, out, (k, ch, r, s))
    dw2 = dw.reshape(k, ch * r * s)
    partial = None
    for n0, n1 in _chunks(n, ch * r * s * p * q):
        cols = _columns(L, x[n0:n1], r, s, stride, padding, p, q)
        dy3 = dy[n0:n1].reshape(n1 - n0, k, p * q)
        if n0 == 0:
            matmul(L, dy3, cols, False, True, dw2)
        else:  # later chunks add into dw, in chunk order
            partial = c.cupy().empty_like(dw2) if partial is None else partial
            matmul(L, dy3, cols, False, True, partial)
            L.add(dw2, partial, dw2)
    return dw
