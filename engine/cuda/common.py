"""What the glue of every family shares: CuPy, output allocation, the channel view.

The glue trusts its inputs: engine.checks (through engine.functional, or the executor at
trace time) has already checked every shape, dtype and range. What it asserts are its own
invariants, so a caller that bypasses the gate fails here rather than in a kernel.
"""
from __future__ import annotations

import numpy as np

from engine.cuda.launch import cupy  # noqa: F401  (re-exported for the glue)


def output(out, shape, dtype=np.float32):
    """`out` (the caller's buffer, which must fit exactly) or a new uninitialised array."""
    if out is None:
        return cupy().empty(tuple(shape), dtype=dtype)
    assert tuple(out.shape) == tuple(shape) and out.dtype == dtype and out.flags.c_contiguous, \
        f"out= must be a C-contiguous {np.dtype(dtype).name} array of shape {tuple(shape)}, got {out.shape} {out.dtype}"
    return out


def outputs(out, specs):
    """A tuple of outputs for ops returning several: specs = ((shape, dtype), ...)."""
    if out is None:
        return tuple(output(None, shape, dtype) for shape, dtype in specs)
    return tuple(output(o, shape, dtype) for o, (shape, dtype) in zip(out, specs))


def channels(x) -> tuple[int, int, int]:
    """(N, C, HW) of an (N, C, ...) array, HW the product of the trailing dims (1 for (N, C))."""
    n, c = x.shape[:2]
    return n, c, x.size // max(1, n * c)
