"""Convolution, the spec: float64 NumPy, written to be read, not to be fast.

Layout NCHW. x (N, C, H, W), w (K, C, R, S), y (N, K, P, Q) with

    P = (H + 2*ph - R) // sh + 1,   Q = (W + 2*pw - S) // sw + 1
    y[n, k, p, q] = b[k] + sum_{c, r, s} xpad[n, c, p*sh + r, q*sw + s] * w[k, c, r, s]

where xpad is x with ph zero rows above and below and pw zero columns left and right.
Rows of the input that no window reaches (when the stride does not divide evenly) get a
zero gradient.

conv2d_* below are written directly from that sum (one (r, s) kernel tap at a time) and
do not go through im2col, so the tests of im2col/col2im and of the convolutions check
each other. Every function accepts any float arrays, computes in float64 and returns
float64; ``out=`` receives the result when given.
"""
from __future__ import annotations

import numpy as np

from engine import shapes
from engine.cards import LIKE_INPUT, Conv, Gemm, OpCard, normal, one_output
from engine.shapes import window_output_hw


def _pad(x: np.ndarray, padding) -> np.ndarray:
    ph, pw = padding
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _tap(xpad: np.ndarray, r: int, s: int, p: int, q: int, stride) -> np.ndarray:
    """The (N, C, P, Q) view of xpad that kernel tap (r, s) meets at every output cell."""
    sh, sw = stride
    return xpad[:, :, r:r + sh * (p - 1) + 1:sh, s:s + sw * (q - 1) + 1:sw]


def _deliver(result: np.ndarray, out):
    if out is None:
        return result
    out[...] = result
    return out


def im2col(x, kernel, stride, padding, out=None):
    """x (N, C, H, W) -> cols (N, C*R*S, P*Q); row c*R*S + r*S + s holds tap (r, s) of channel c."""
    n, c, h, w_ = x.shape
    r_, s_ = kernel
    p, q = window_output_hw(h, w_, kernel, stride, padding)
    xpad = _pad(x, padding)
    cols = np.zeros((n, c, r_, s_, p, q))
    for r in range(r_):
        for s in range(s_):
            cols[:, :, r, s] = _tap(xpad, r, s, p, q, stride)
    return _deliver(cols.reshape(n, c * r_ * s_, p * q), out)


def col2im(cols, x_shape, kernel, stride, padding, out=None):
    """cols (N, C*R*S, P*Q) -> x (N, C, H, W): every column entry added back where im2col read it."""
    n, c, h, w_ = x_shape
    r_, s_ = kernel
    ph, pw = padding
    p, q = window_output_hw(h, w_, kernel, stride, padding)
    cols = np.asarray(cols, dtype=np.float64).reshape(n, c, r_, s_, p, q)
    xpad = np.zeros((n, c, h + 2 * ph, w_ + 2 * pw))
    for r in range(r_):
        for s in range(s_):
            _tap(xpad, r, s, p, q, stride)[...] += cols[:, :, r, s]
    return _deliver(xpad[:, :, ph:ph + h, pw:pw + w_], out)


def gemm(a, b, trans_a=False, trans_b=False, out=None):
    """op(a) @ op(b) for 2-D a, b, where op transposes when asked."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return _deliver((a.T if trans_a else a) @ (b.T if trans_b else b), out)


def conv2d_forward(x, w, b, stride, padding, out=None):
    """x (N, C, H, W), w (K, C, R, S), b (K,) or None -> y (N, K, P, Q)."""
    w = np.asarray(w, dtype=np.float64)
    k, _, r_, s_ = w.shape
    p, q = window_output_hw(x.shape[2], x.shape[3], (r_, s_), stride, padding)
    xpad = _pad(x, padding)
    y = np.zeros((x.shape[0], k, p, q))
    for r in range(r_):
        for s in range(s_):
            y += np.einsum("ncpq,kc->nkpq", _tap(xpad, r, s, p, q, stride), w[:, :, r, s])
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape(1, k, 1, 1)
    return _deliver(y, out)


def conv2d_backward_data(dy, w, x_shape, stride, padding, out=None):
    """dy (N, K, P, Q), w (K, C, R, S) -> dx (N, C, H, W): each tap sends dy back where it read x."""
    dy = np.asarray(dy, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, h, w_ = x_shape
    _, _, r_, s_ = w.shape
    (ph, pw) = padding
    p, q = dy.shape[2], dy.shape[3]
    dxpad = np.zeros((n, c, h + 2 * ph, w_ + 2 * pw))
    for r in range(r_):
        for s in range(s_):
            _tap(dxpad, r, s, p, q, stride)[...] += np.einsum("nkpq,kc->ncpq", dy, w[:, :, r, s])
    return _deliver(dxpad[:, :, ph:ph + h, pw:pw + w_], out)


def conv2d_backward_weight(dy, x, w_shape, stride, padding, out=None):
    """dy (N, K, P, Q), x (N, C, H, W) -> dw (K, C, R, S) = sum over n, p, q of dy * the tap's input."""
    dy = np.asarray(dy, dtype=np.float64)
    k, c, r_, s_ = w_shape
    p, q = dy.shape[2], dy.shape[3]
    xpad = _pad(x, padding)
    dw = np.zeros((k, c, r_, s_))
    for r in range(r_):
        for s in range(s_):
            dw[:, :, r, s] = np.einsum("nkpq,ncpq->kc", dy, _tap(xpad, r, s, p, q, stride))
    return _deliver(dw, out)


# --------------------------------------------------------------------------------------
# Cards: how each op is exercised and what PyTorch runs for it (engine.cards).

def _conv_flops(s: Conv) -> float:
    n, k, p, q = s.y
    return 2.0 * n * k * p * q * s.w[1] * s.w[2] * s.w[3]


def _gemm_inputs(rng, s: Gemm):
    a = normal(rng, (s.k, s.m) if s.trans_a else (s.m, s.k))
    b = normal(rng, (s.n, s.k) if s.trans_b else (s.k, s.n))
    return a, b, s.trans_a, s.trans_b


def _gemm_shape(a, b, trans_a=False, trans_b=False):
    return (a.shape[1] if trans_a else a.shape[0], b.shape[0] if trans_b else b.shape[1])


def _torch_conv_backward(T, dy, x, w, stride, padding, which):
    """aten's conv backward computing only dx (which 0) or only dw (which 1), as autograd does;
    the tensor whose gradient is asked for is only read for its shape."""
    mask = (which == 0, which == 1, False)
    return lambda: T.aten.convolution_backward(dy, x, w, None, stride, padding, (1, 1), False, (0, 0), 1,
                                               mask)[which]


CARDS = [
    OpCard("im2col", im2col, Conv, lambda r, s: (normal(r, s.x), s.w[2:], s.stride, s.padding), ("cols",),
           one_output(lambda x, kernel, stride, padding: shapes.im2col_shape(x.shape, kernel, stride, padding)),
           "conv", torch=lambda T, x, kernel, stride, padding:
           lambda: T.F.unfold(x, kernel, padding=padding, stride=stride)),
    OpCard("col2im", col2im, Conv, lambda r, s: (normal(r, s.cols), s.x, s.w[2:], s.stride, s.padding), ("x",),
           lambda cols, x_shape, *_: ((x_shape, LIKE_INPUT),), "conv",
           torch=lambda T, cols, x_shape, kernel, stride, padding:
           lambda: T.F.fold(cols, tuple(x_shape[2:]), kernel, padding=padding, stride=stride)),
    OpCard("gemm", gemm, Gemm, _gemm_inputs, ("c",), one_output(_gemm_shape), "gemm",
           flops=lambda s: 2.0 * s.m * s.n * s.k,
           torch=lambda T, a, b, ta, tb: lambda: T.torch.mm(a.t() if ta else a, b.t() if tb else b)),
    OpCard("conv2d_forward", conv2d_forward, Conv,
           lambda r, s: (normal(r, s.x), normal(r, s.w, 0.1), normal(r, s.w[:1]), s.stride, s.padding), ("y",),
           one_output(lambda x, w, b, stride, padding: shapes.conv2d_shape(x.shape, w.shape, stride, padding)),
           "conv", flops=_conv_flops,
           torch=lambda T, x, w, b, stride, padding: lambda: T.F.conv2d(x, w, b, stride, padding)),
    OpCard("conv2d_backward_data", conv2d_backward_data, Conv,
           lambda r, s: (normal(r, s.y), normal(r, s.w, 0.1), s.x, s.stride, s.padding), ("dx",),
           lambda dy, w, x_shape, *_: ((x_shape, LIKE_INPUT),), "conv", flops=_conv_flops,
           torch=lambda T, dy, w, x_shape, stride, padding:
           _torch_conv_backward(T, dy, T.empty(x_shape), w, stride, padding, 0)),
    OpCard("conv2d_backward_weight", conv2d_backward_weight, Conv,
           lambda r, s: (normal(r, s.y), normal(r, s.x), s.w, s.stride, s.padding), ("dw",),
           lambda dy, x, w_shape, *_: ((w_shape, LIKE_INPUT),), "conv", flops=_conv_flops,
           torch=lambda T, dy, x, w_shape, stride, padding:
           _torch_conv_backward(T, dy, x, T.empty(w_shape), stride, padding, 1)),
]
