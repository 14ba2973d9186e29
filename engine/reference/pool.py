"""Pooling, the spec: float64 NumPy.

x (N, C, H, W) -> y (N, C, P, Q), P = (H + 2*ph - R) // sh + 1 (floor mode, as PyTorch's
default; ceil_mode is not supported). Windows may overlap (3x3 stride 2, as AlexNet) or
leave gaps (stride > kernel); cells no window reaches get a zero gradient.

Conventions, fixed here for every backend (they are PyTorch's):

* max pooling pads with -inf, so a padded cell never wins;
* the winner is the FIRST cell in row-major window order among equal maxima (a strict
  '>' while scanning), except that a NaN always takes over, so NaN propagates;
* argmax is int32, the flat index h*W + w of the winner in its (n, c) plane; it starts
  at the window's first in-bounds cell, so even an all -inf window names a real cell;
* max-pool backward adds dy into dx at argmax, summing where overlapping windows share
  a winner;
* avg pooling with count_include_pad=True divides by R*S (padded zeros count); with
  False, by the number of in-bounds cells of the window.
* adaptive average pooling turns any (H, W) into the asked (oh, ow): output cell (i, j)
  averages rows floor(i*H/oh) to ceil((i+1)*H/oh) and the columns likewise (PyTorch's
  windows, engine.shapes.adaptive_window); windows overlap when oh does not divide H.

Every function accepts any float arrays, computes in float64 and returns float64
(argmax int32); ``out=`` receives the result when given.
"""
from __future__ import annotations

import numpy as np

from engine import shapes
from engine.cards import LIKE_INPUT, Adaptive, OpCard, Pool, normal, one_output
from engine.shapes import adaptive_window, window_output_hw


def _windows(h: int, w: int, kernel, stride, padding):
    """Yield (r, s, rows, cols): for kernel tap (r, s), the input row of each output row p
    and the input column of each output column q (unpadded coordinates, may be out of bounds)."""
    (r_, s_), (sh, sw), (ph, pw) = kernel, stride, padding
    p, q = window_output_hw(h, w, kernel, stride, padding)
    for r in range(r_):
        for s in range(s_):
            yield r, s, np.arange(p) * sh + r - ph, np.arange(q) * sw + s - pw


def _deliver(result, out):
    if out is None:
        return result
    out[...] = result
    return out


def max_pool2d_forward(x, kernel, stride, padding, out=None):
    """x (N, C, H, W) -> (y (N, C, P, Q) float64, argmax (N, C, P, Q) int32)."""
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    p, q = window_output_hw(h, w, kernel, stride, padding)
    (sh, sw), (ph, pw) = stride, padding
    y = np.full((n, c, p, q), -np.inf)
    # each window's first in-bounds cell: the argmax if nothing beats -inf
    first_h = np.maximum(np.arange(p) * sh - ph, 0)
    first_w = np.maximum(np.arange(q) * sw - pw, 0)
    arg = np.broadcast_to((first_h[:, None] * w + first_w[None, :]).astype(np.int64), (n, c, p, q)).copy()
    for _, _, rows, cols in _windows(h, w, kernel, stride, padding):  # row-major window order
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]  # (P, Q)
        v = x[:, :, np.clip(rows, 0, h - 1)][:, :, :, np.clip(cols, 0, w - 1)]  # (N, C, P, Q)
        v = np.where(inside, v, -np.inf)  # padding is -inf: never wins
        wins = (v > y) | np.isnan(v)  # strict '>': ties keep the earlier cell
        y = np.where(wins, v, y)
        arg = np.where(wins, rows[:, None] * w + cols[None, :], arg)
    if out is None:
        return y, arg.astype(np.int32)
    out[0][...] = y
    out[1][...] = arg
    return out


def max_pool2d_backward(dy, argmax, x_shape, out=None):
    """dy (N, C, P, Q), argmax (N, C, P, Q) -> dx (N, C, H, W), dy added at each argmax."""
    dy = np.asarray(dy, dtype=np.float64)
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w))
    planes = np.arange(n * c)[:, None]  # (N*C, 1): which plane each window belongs to
    np.add.at(dx, (planes, np.asarray(argmax).reshape(n * c, -1)), dy.reshape(n * c, -1))
    return _deliver(dx.reshape(n, c, h, w), out)


def _divisor(h, w, kernel, stride, padding, count_include_pad) -> np.ndarray:
    """(P, Q) count each window's sum is divided by."""
    p, q = window_output_hw(h, w, kernel, stride, padding)
    if count_include_pad:
        return np.full((p, q), float(kernel[0] * kernel[1]))
    count = np.zeros((p, q))
    for _, _, rows, cols in _windows(h, w, kernel, stride, padding):
        count += ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    return count


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True, out=None):
    """x (N, C, H, W) -> y (N, C, P, Q): mean over each window, padding counted as zeros."""
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    (ph, pw) = padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    p, q = window_output_hw(h, w, kernel, stride, padding)
    total = np.zeros((n, c, p, q))
    for _, _, rows, cols in _windows(h, w, kernel, stride, padding):
        total += xpad[:, :, rows + ph][:, :, :, cols + pw]
    return _deliver(total / _divisor(h, w, kernel, stride, padding, count_include_pad), out)


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad=True, out=None):
    """dy (N, C, P, Q) -> dx (N, C, H, W): each window's dy / divisor spread over its cells."""
    n, c, h, w = x_shape
    (ph, pw) = padding
    share = np.asarray(dy, dtype=np.float64) / _divisor(h, w, kernel, stride, padding, count_include_pad)
    dxpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for _, _, rows, cols in _windows(h, w, kernel, stride, padding):
        # within one tap every window meets a different cell, so a plain += sums correctly
        dxpad[:, :, (rows + ph)[:, None], (cols + pw)[None, :]] += share
    return _deliver(dxpad[:, :, ph:ph + h, pw:pw + w], out)


def _adaptive_windows(h: int, w: int, output_size):
    """Yield (i, j, rows, cols): output cell (i, j) and the slices of the input it averages."""
    oh, ow = output_size
    for i in range(oh):
        h0, h1 = adaptive_window(i, h, oh)
        for j in range(ow):
            w0, w1 = adaptive_window(j, w, ow)
            yield i, j, slice(h0, h1), slice(w0, w1)


def adaptive_avg_pool2d_forward(x, output_size, out=None):
    """x (N, C, H, W) -> y (N, C, oh, ow): the mean of each adaptive window."""
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros(x.shape[:2] + tuple(output_size))
    for i, j, rows, cols in _adaptive_windows(x.shape[2], x.shape[3], output_size):
        y[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return _deliver(y, out)


def adaptive_avg_pool2d_backward(dy, x_shape, out=None):
    """dy (N, C, oh, ow) -> dx (N, C, H, W): each window's dy / its cell count over its cells."""
    dy = np.asarray(dy, dtype=np.float64)
    dx = np.zeros(tuple(x_shape))
    for i, j, rows, cols in _adaptive_windows(x_shape[2], x_shape[3], dy.shape[2:]):
        count = (rows.stop - rows.start) * (cols.stop - cols.start)
        dx[:, :, rows, cols] += dy[:, :, i, j, None, None] / count
    return _deliver(dx, out)


# --------------------------------------------------------------------------------------
# Cards (engine.cards).

def _max_pool_backward_inputs(rng, s: Pool):
    _, argmax = max_pool2d_forward(normal(rng, s.x), s.kernel, s.stride, s.padding)
    return normal(rng, s.y), argmax, s.x


def _pooled(x, kernel, stride, padding, *_):
    return shapes.pool2d_shape(x.shape, kernel, stride, padding)


def _torch_max_pool_backward(T, dy, argmax, x_shape):
    x, indices, pool = T.empty(x_shape), argmax.long(), T.record  # aten wants int64 indices
    return lambda: T.aten.max_pool2d_with_indices_backward(dy, x, pool.kernel, pool.stride, pool.padding,
                                                           (1, 1), False, indices)


def _torch_avg_pool_backward(T, dy, x_shape, kernel, stride, padding, count_include_pad):
    x = T.empty(x_shape)
    return lambda: T.aten.avg_pool2d_backward(dy, x, kernel, stride, padding, False, count_include_pad, None)


CARDS = [
    OpCard("max_pool2d_forward", max_pool2d_forward, Pool,
           lambda r, s: (normal(r, s.x), s.kernel, s.stride, s.padding), ("y", "argmax"),
           lambda *args: ((_pooled(*args), LIKE_INPUT), (_pooled(*args), np.int32)), "pool",
           torch=lambda T, x, kernel, stride, padding:
           lambda: T.F.max_pool2d(x, kernel, stride, padding, return_indices=True)),
    OpCard("max_pool2d_backward", max_pool2d_backward, Pool, _max_pool_backward_inputs, ("dx",),
           lambda dy, argmax, x_shape: ((x_shape, LIKE_INPUT),), "pool", torch=_torch_max_pool_backward),
    OpCard("avg_pool2d_forward", avg_pool2d_forward, Pool,
           lambda r, s: (normal(r, s.x), s.kernel, s.stride, s.padding, s.count_include_pad), ("y",),
           one_output(_pooled), "pool",
           torch=lambda T, x, kernel, stride, padding, cip:
           lambda: T.F.avg_pool2d(x, kernel, stride, padding, count_include_pad=cip)),
    OpCard("avg_pool2d_backward", avg_pool2d_backward, Pool,
           lambda r, s: (normal(r, s.y), s.x, s.kernel, s.stride, s.padding, s.count_include_pad), ("dx",),
           lambda dy, x_shape, *_: ((x_shape, LIKE_INPUT),), "pool", torch=_torch_avg_pool_backward),
    OpCard("adaptive_avg_pool2d_forward", adaptive_avg_pool2d_forward, Adaptive,
           lambda r, s: (normal(r, s.x), s.out), ("y",),
           one_output(lambda x, output_size: x.shape[:2] + tuple(output_size)), "pool",
           torch=lambda T, x, output_size: lambda: T.F.adaptive_avg_pool2d(x, output_size)),
    OpCard("adaptive_avg_pool2d_backward", adaptive_avg_pool2d_backward, Adaptive,
           lambda r, s: (normal(r, s.y), s.x), ("dx",), lambda dy, x_shape: ((x_shape, LIKE_INPUT),), "pool",
           torch=lambda T, dy, x_shape: (lambda x: lambda: T.aten._adaptive_avg_pool2d_backward(dy, x))(
               T.empty(x_shape))),
]
