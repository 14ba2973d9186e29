"""Dense layers and bias gradients on the CPU: BLAS (np.dot) for the products, Numba for
the rest. Same ops and layouts as engine.reference.linear (the spec). float32 in, float32 out.

x (N, I), w (O, I), b (O,), y (N, O) = x @ w.T + b. Transposed operands are handed to
BLAS as they are (np.dot passes the transpose flag instead of copying).

A product big enough to split (_n_parts) is cut into slices of the weight's rows (forward,
weight gradient) or columns (data gradient), which engine.cpu.blas's threads take in turn,
so that each thread reads its share of the weight once -- at AlexNet's classifier the
weight is by far the largest operand. The data gradient of a weight with many rows sums
over blocks of _DATA_GRAD_ROWS of them instead. The slices follow from the shapes, so the
results do not depend on the thread count.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from engine.cpu import blas
from engine.cpu.arrays import column_sums
from engine.cpu.parallel import kernel_pair


def _dot(a, b, shape, out, split_columns: bool = False):
    """a @ b into out (allocated when None); returns it. Split over threads (engine.cpu.blas)
    by rows of the result, or by its columns when split_columns (each part then writes a
    temporary, copied into its columns), from _SPLIT_MIN_MACS multiply-adds."""
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    count = shape[1] if split_columns else shape[0]
    n_parts = _n_parts(count, float(shape[0]) * shape[1] * a.shape[1])
    if n_parts == 1:
        blas.run_parts(lambda i0, i1: np.dot(a, b, out=out), [0, count])
    elif split_columns:
        def columns(j0, j1):
            out[:, j0:j1] = np.dot(a, b[:, j0:j1])
        blas.run_parts(columns, blas.bounds(count, n_parts))
    else:
        blas.run_parts(lambda i0, i1: np.dot(a[i0:i1], b, out=out[i0:i1]), blas.bounds(count, n_parts))
    return out


# a product smaller than this (in multiply-adds) runs whole, on the calling thread. Handing
# half of it to a helper thread costs about 0.13 ms on this 2-core KVM guest (a thread pool's
# submit and result: two wake-ups), and two threads ran a big product only 1.5x as fast as one,
# so splitting gained from about 16 M on. Measured N x I x O whole on one thread against split
# in two (2026-12-08, AVX2): 2.6 M (LeNet's fc2 at batch 256) 0.11 against 0.21-0.25 ms;
# 12 M (its fc1) even; 25 M 0.66-0.76 against 0.52-0.60 ms; 134 M 3.1-3.6 against 2.2-2.3 ms.
_SPLIT_MIN_MACS = 16 << 20
# at most this many slices: enough for 8 threads
_MAX_PARTS = 8
# dx = dy @ w sums over w's rows. Where there are many (AlexNet's 4096 x 9216 fc6), a slice
# of w's columns per thread reads rows of 18 KB with a stride, and took 2.2x the time of
# blocks of whole rows, each a product of its own, added in order (the blocks follow from
# the shape, so the sum does not depend on the thread count)
_DATA_GRAD_ROWS = 1024
# the forward product of a weight this big (in elements) runs as y.T = w @ x.T, a block of
# w's rows per thread: BLAS reads w in its own layout instead of transposed, and AlexNet's
# fc6-8 at batch 16 took 0.5-0.65x the time (LeNet's small weights keep x @ w.T)
_BIG_WEIGHT = 1 << 20


def _n_parts(count: int, macs: float) -> int:
    """Into how many slices to cut a product of `count` rows or columns: 1 below
    _SPLIT_MIN_MACS, then 2, 4 or 8 (a slice per _SPLIT_MIN_MACS or more; a power of two, so
    that 2, 4 or 8 threads share them evenly), never more than `count`. From the shape alone,
    not the thread count: OpenBLAS's Haswell kernels give a slice's elements other bits than
    the whole product's (measured at 33 x 1200 x 1000 and 256 x 800 x 200)."""
    n_parts = 1 if macs < _SPLIT_MIN_MACS else 2
    while n_parts < _MAX_PARTS and macs >= 2 * n_parts * _SPLIT_MIN_MACS:
        n_parts *= 2
    return min(n_parts, count)


@kernel_pair()
def _add_bias_rows(y, b):
    # y (N, O) += b (O,) broadcast over rows
    for i in nb.prange(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] += b[j]


@kernel_pair(fastmath={"reassoc"})
def _sum_but_axis1(dy, db):
    # dy (A, K, B) -> db (K,), one channel per task. Each contiguous run of B is summed in
    # float32, the runs in float64. "reassoc" lets LLVM sum a run in vector lanes (5x faster
    # at LeNet conv1); the order is still fixed by the compiled code, so results are the same
    # on every run. Summing the runs' cells in float64 took 1.4x as long at AlexNet conv1's
    # (32, 64, 55, 55), for 4e-8 of scale against 2e-7 (the tolerance allows 1e-4).
    a_, k_, b_ = dy.shape
    dyf = dy.reshape(-1)
    for k in nb.prange(k_):
        acc = 0.0
        for a in range(a_):
            start = np.uint64((a * k_ + k) * b_)
            run = np.float32(0.0)
            for i in range(np.uint64(b_)):
                run += dyf[start + i]
            acc += run
        db[k] = acc


@kernel_pair()
def _add_kernel(a, b, out):
    for i in nb.prange(a.size):
        out[i] = a[i] + b[i]


def linear_forward(x, w, b, out=None):
    """x (N, I), w (O, I), b (O,) or None -> y (N, O) = x @ w.T + b."""
    n, o = x.shape[0], w.shape[0]
    if w.size >= _BIG_WEIGHT:
        y = np.empty((n, o), dtype=np.float32) if out is None else out

        def rows(o0, o1):
            y[:, o0:o1] = np.dot(w[o0:o1], x.T).T               # (block, I) @ (I, N) -> (block, N)

        blas.run_parts(rows, blas.bounds(o, _n_parts(o, float(n) * o * x.shape[1])))
    else:
        y = _dot(x, w.T, (n, o), out, split_columns=True)
    if b is not None:
        _add_bias_rows(y, b)
    return y


def linear_backward_data(dy, w, out=None):
    """dy (N, O), w (O, I) -> dx (N, I) = dy @ w."""
    o = w.shape[0]
    if o < 2 * _DATA_GRAD_ROWS:
        return _dot(dy, w, (dy.shape[0], w.shape[1]), out, split_columns=True)
    bounds = list(range(0, o, _DATA_GRAD_ROWS)) + [o]
    parts = blas.run_parts(lambda o0, o1: np.dot(dy[:, o0:o1], w[o0:o1]), bounds)  # (N, block) @ (block, I)
    dx = np.empty((dy.shape[0], w.shape[1]), dtype=np.float32) if out is None else out
    dx[...] = parts[0]
    for part in parts[1:]:
        dx += part
    return dx


def linear_backward_weight(dy, x, out=None):
    """dy (N, O), x (N, I) -> dw (O, I) = dy.T @ x."""
    return _dot(dy.T, x, (dy.shape[1], x.shape[1]), out)


def bias_backward(dy, out=None):
    """dy (N, O) or (N, K, ...) -> db (O,) or (K,): dy summed over every axis but axis 1."""
    n, k = dy.shape[0], dy.shape[1]
    db = np.empty(k, dtype=np.float32) if out is None else out
    if dy.ndim == 2:
        column_sums(dy, db)  # dense layers: rows walked contiguously
    else:
        _sum_but_axis1(dy.reshape(n, k, -1), db)
    return db


def add(a, b, out=None):
    """a + b for two arrays of one shape."""
    result = np.empty(a.shape, dtype=np.float32) if out is None else out
    _add_kernel(a.reshape(-1), b.reshape(-1), result.reshape(-1))
    return result
