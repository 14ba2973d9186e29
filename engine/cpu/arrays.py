"""Small array helpers shared by the Numba families: output allocation, reshapes, and the
column sum that dense-layer bias gradients need."""
from __future__ import annotations

import numpy as np
from numba import njit


def output(out, shape, dtype) -> np.ndarray:
    """out if given (must be C-contiguous: kernels write through flat views), else new."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not out.flags.c_contiguous:
        raise ValueError("engine.cpu: expected a C-contiguous out= array, got a strided one")
    return out


def planes(a: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C, 1); (N, C, H, W) -> (N, C, H*W): one kernel serves both ranks."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def window_output_size(h, w, kernel, stride, padding) -> tuple[int, int]:
    """Floor-mode output size of a sliding window (conv and pooling)."""
    (r, s), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1


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
