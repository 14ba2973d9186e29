"""Small array helpers shared by the Numba families: output allocation and reshapes."""
from __future__ import annotations

import numpy as np


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
