"""Losses as Numba kernels (float32 on the CPU); the spec is engine.reference.loss.

softmax_cross_entropy_forward is fused: one prange over the rows of the logits, each
row read from cache four times (max; exp; its sum; scale), writing dlogits and the
row's loss. Subtracting the row maximum first keeps exp() in (0, 1], so logits of
magnitude 1e4 neither overflow nor lose the loss. The row losses are summed in row
order after the parallel loop, so the loss is bitwise the same on every run.

softmax and log_softmax (forward and backward) are one prange over rows each, the row's
sum in float64, in a fixed order (vector lanes, see _row_sum): the same bits on every run.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.cpu import vecmath
from engine.cpu.arrays import output
from engine.cpu.parallel import VECTOR_MATH, kernel_pair

_CHUNK = 4096  # elements per partial sum of the MSE: fixed, so the sum order is too


@njit(cache=True)
def _first_bad_label(labels, k):
    for i in range(labels.size):
        if labels[i] < 0 or labels[i] >= k:
            return i
    return -1


# Row reductions: their own functions, compiled with fastmath "reassoc" so that LLVM sums in
# vector lanes (one chain of float64 adds waits out each add's latency: a 1000-class row took
# longer to sum than to exponentiate). The flag stays on their own instructions when they are
# inlined, away from vecmath's; the lane order is fixed by the compiled code, not by the
# threads, so the bits are the same on every run. a, b: one row (K,).


@njit(fastmath={"reassoc"}, cache=True)
def _row_sum(a):
    s = 0.0
    for j in range(a.size):
        s += a[j]
    return s


@njit(fastmath={"reassoc"}, cache=True)
def _row_dot(a, b):
    s = 0.0
    for j in range(a.size):
        s += np.float64(a[j]) * b[j]
    return s


@njit(cache=True)
def _row_max(a):
    # LLVM does not vectorise a float max chain; sixteen running maxima, one per lane, it does
    # (three times faster at K = 1000). NaN loses every comparison: it reaches the loss via exp.
    m = a[0]
    start = 1
    if a.size >= 64:
        lanes = a[:16].copy()
        blocks = a.size // 16
        for b in range(1, blocks):
            for lane in range(16):
                v = a[b * 16 + lane]
                lanes[lane] = v if v > lanes[lane] else lanes[lane]
        for lane in range(16):
            m = lanes[lane] if lanes[lane] > m else m
        start = blocks * 16
    for j in range(start, a.size):
        m = a[j] if a[j] > m else m
    return m


@kernel_pair(**VECTOR_MATH)
def _softmax_xent(x, labels, dx, row_loss):
    # x, dx (N, K); labels (N,) int; row_loss (N,) float64
    n, k = x.shape
    inv_n = 1.0 / n
    for i in prange(n):
        m = _row_max(x[i])
        for j in range(k):  # a loop of its own, so that it vectorises
            dx[i, j] = vecmath.exp64(x[i, j] - m)  # exp of a value <= 0 (see exp64)
        total = _row_sum(dx[i])  # float64: the sum of up to K terms in (0, 1]
        scale = inv_n / total  # softmax / N
        for j in range(k):
            dx[i, j] = dx[i, j] * scale
        label = labels[i]
        dx[i, label] -= inv_n
        # -log softmax[label] = log(sum exp(x - m)) - (x[label] - m)
        row_loss[i] = np.log(total) - (np.float64(x[i, label]) - m)


@kernel_pair(fastmath={"reassoc"})  # vector lanes for the sums, as _row_sum's
def _squared_error_sums(pred, target, partial):
    # pred, target (numel,); partial (ceil(numel / _CHUNK),) float64
    for c in prange(partial.size):
        p, t = pred[c * _CHUNK:(c + 1) * _CHUNK], target[c * _CHUNK:(c + 1) * _CHUNK]
        s = 0.0
        for i in range(p.size):  # from 0, on a slice: no negative-index wraparound to keep it scalar
            d = np.float64(p[i]) - np.float64(t[i])
            s += d * d
        partial[c] = s


@kernel_pair()
def _mse_bwd(pred, target, scale, dpred):
    for i in prange(pred.size):
        dpred[i] = scale * (np.float64(pred[i]) - np.float64(target[i]))


def softmax_cross_entropy_forward(logits, labels, out=None):
    logits, labels = np.ascontiguousarray(logits), np.ascontiguousarray(labels)
    n, k = logits.shape
    bad = _first_bad_label(labels, k)  # asserted here too: a bad label would index out of bounds
    assert bad < 0, f"softmax_cross_entropy_forward: expected labels in [0, {k}), got {labels[bad]} at row {bad}"
    loss = output(None if out is None else out[0], (), logits.dtype)
    dlogits = output(None if out is None else out[1], (n, k), logits.dtype)
    row_loss = np.empty(n)
    _softmax_xent(logits, labels, dlogits, row_loss)
    loss[...] = row_loss.sum() / n  # NumPy's pairwise sum: fixed order for a given n
    return loss, dlogits


def mse_loss_forward(pred, target, out=None):
    pred, target = np.ascontiguousarray(pred), np.ascontiguousarray(target)
    loss = output(out, (), pred.dtype)
    partial = np.empty(-(-pred.size // _CHUNK))
    _squared_error_sums(pred.reshape(-1), target.reshape(-1), partial)
    loss[...] = partial.sum() / pred.size
    return loss


def mse_loss_backward(pred, target, dloss, out=None):
    pred, target = np.ascontiguousarray(pred), np.ascontiguousarray(target)
    dpred = output(out, pred.shape, pred.dtype)
    _mse_bwd(pred.reshape(-1), target.reshape(-1), 2.0 * float(np.asarray(dloss)) / pred.size,
             dpred.reshape(-1))
    return dpred


@kernel_pair(**VECTOR_MATH)
def _softmax_rows(x, y, log):
    # x, y (N, K); log: write log_softmax instead of softmax
    n, k = x.shape
    for i in prange(n):
        m = _row_max(x[i])
        for j in range(k):  # a loop of its own, so that it vectorises; y is overwritten below if log
            y[i, j] = vecmath.exp64(x[i, j] - m)  # exp of a value <= 0 (see exp64)
        total = _row_sum(y[i])  # float64: the sum of K terms in (0, 1]
        if log:
            log_total = np.log(total)
            for j in range(k):
                y[i, j] = (np.float64(x[i, j]) - m) - log_total
        else:
            scale = 1.0 / total
            for j in range(k):
                y[i, j] = y[i, j] * scale


@kernel_pair(**VECTOR_MATH)
def _softmax_rows_backward(dy, y, dx, log):
    # dy, y, dx (N, K); y is the forward's output (softmax, or log_softmax when log)
    n, k = dy.shape
    for i in prange(n):
        s = _row_sum(dy[i]) if log else _row_dot(dy[i], y[i])  # float64: sum_k dy, or sum_k dy * y
        for j in range(k):
            if log:
                dx[i, j] = dy[i, j] - vecmath.exp64(y[i, j]) * s  # exp(log softmax) = softmax
            else:
                dx[i, j] = y[i, j] * (dy[i, j] - s)


def softmax_forward(x, out=None):
    x = np.ascontiguousarray(x)
    y = output(out, x.shape, x.dtype)
    _softmax_rows(x, y, False)
    return y


def softmax_backward(dy, y, out=None):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = output(out, dy.shape, dy.dtype)
    _softmax_rows_backward(dy, y, dx, False)
    return dx


def log_softmax_forward(x, out=None):
    x = np.ascontiguousarray(x)
    y = output(out, x.shape, x.dtype)
    _softmax_rows(x, y, True)
    return y


def log_softmax_backward(dy, y, out=None):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = output(out, dy.shape, dy.dtype)
    _softmax_rows_backward(dy, y, dx, True)
    return dx
