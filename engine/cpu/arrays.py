"""Small array helpers shared by the Numba families: output allocation, reshapes, and the
column sum that dense-layer bias gradients need."""
from __future__ import annotations

import numpy as np
from numba import njit


def output(out, shape, dtype) -> np.ndarray:
    """out if given (must be C-contiguous: kernels write through flat views), else new."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    assert out.flags.c_contiguous, "engine.cpu: expected a C-contiguous out= array, got a strided one"
    return out


def planes(a: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C, 1); (N, C, H, W) -> (N, C, H*W): one kernel serves both ranks."""
    return a.reshape(a.shape[0], a.shape[1], -1)


@njit(cache=True, fastmath={"reassoc"})
def column_sums(a, out):
    """a (N, K) -> out (K,) = a summed over rows, in float64, rows in a fixed order (so the
    bits never change). Serial on purpose: it is used for the small (N, K) tails of dense
    layers, where a parallel region costs more than the sum; rows are walked contiguously."""
    n, k = a.shape
    acc = np.zeros(k, dtype=np.float64)
    for i in range(n):
        for j in range(k):
            acc[j] += a[i, j]
    for j in range(k):
        out[j] = acc[j]
