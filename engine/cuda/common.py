"""Shared glue for engine/cuda/<family>.py: input checks, output allocation, grid rules.

Backend ops trust their hyperparameters (engine.functional checked them), but every array
that reaches a launcher is checked here first -- a CuPy array on the current device, of
the expected dtype, C-contiguous, with the shape the op needs -- so a bad array is a
TypeError/ValueError naming the op, never an out-of-bounds access in a kernel. The
compiled extension checks the same things again in C++ (bindings/module.cpp).

CuPy is imported lazily: engine.cuda imports on a machine without it.
"""
from __future__ import annotations

import functools
import os

import numpy as np

# Grid rules shared by both exposures. The C++ launchers (csrc/launch_common.h) use the
# same formulas; where a rule decides a summation order the two must agree bit for bit.
BLOCK = 256  # ENGINE_BLOCK and ENGINE_REDUCE_THREADS in kernels/common.cuh


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grid_1d(n: int, block: int = BLOCK) -> int:
    """Blocks for a grid-stride loop over n elements (csrc/launch_common.h: grid_1d)."""
    return max(1, min(cdiv(n, block), 65536))


def gemm_tile(m: int, n: int, outputs: int) -> int:
    """128x128 tiles when there are enough to fill the GPU, else 64x64 (launch_common.h)."""
    return 128 if cdiv(m, 128) * cdiv(n, 128) * outputs >= 128 else 64


def mse_partial_blocks(n: int) -> int:
    """Blocks of the first MSE reduction stage, a function of n only (launch_common.h)."""
    return max(1, min(cdiv(n, 256 * 4), 256))


def gemm_backend() -> str:
    """'ours' (the hand-written SGEMM, default) or 'cublas' (cupy.matmul), from ENGINE_GEMM."""
    value = os.environ.get("ENGINE_GEMM", "ours").lower()
    if value not in ("ours", "cublas"):
        raise ValueError(f"ENGINE_GEMM: expected 'ours' or 'cublas', got {value!r}")
    return value


@functools.lru_cache(maxsize=None)
def cupy():
    import cupy as cp  # noqa: the one place engine.cuda imports CuPy
    return cp


def stream_ptr() -> int:
    """Handle of CuPy's current stream: every launch goes there, in order."""
    return cupy().cuda.get_current_stream().ptr


def _name(dtype) -> str:
    return np.dtype(dtype).name


def array(op: str, name: str, a, dtype=np.float32, ndim=None, shape=None):
    """Check that `a` is a C-contiguous CuPy array of `dtype` on the current device."""
    cp = cupy()
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{op}: expected {name} to be a CuPy array, got {type(a).__module__}.{type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{op}: expected {name} of dtype {_name(dtype)}, got {a.dtype.name}")
    device = cp.cuda.Device().id
    if a.device.id != device:
        raise ValueError(f"{op}: {name} lives on GPU {a.device.id} but the current device is GPU {device}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: expected {name} to be C-contiguous, got strides {a.strides} for shape {a.shape}")
    if ndim is not None and a.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{op}: expected {name} of rank {ndim}, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: expected {name} of shape {tuple(shape)}, got {a.shape}")
    return a


def same_shape(op: str, ref_name: str, ref, **others) -> None:
    for name, a in others.items():
        if tuple(a.shape) != tuple(ref.shape):
            raise ValueError(f"{op}: expected {name} of the same shape as {ref_name} {ref.shape}, got {a.shape}")


def output(op: str, out, shape, dtype=np.float32, name: str = "out"):
    """`out` checked against (shape, dtype), or a new uninitialised array."""
    if out is None:
        return cupy().empty(tuple(shape), dtype=dtype)
    return array(op, name, out, dtype=dtype, shape=tuple(shape))


def outputs(op: str, out, specs):
    """A tuple of outputs for ops returning several: specs = ((shape, dtype), ...)."""
    if out is None:
        return tuple(cupy().empty(tuple(shape), dtype=dtype) for shape, dtype in specs)
    if not isinstance(out, (tuple, list)) or len(out) != len(specs):
        raise ValueError(f"{op}: expected out to be a tuple of {len(specs)} arrays, got {type(out).__name__}")
    return tuple(output(op, o, shape, dtype, name=f"out[{i}]") for i, (o, (shape, dtype)) in enumerate(zip(out, specs)))


def pair(op: str, name: str, v) -> tuple[int, int]:
    try:
        h, w = v
        return int(h), int(w)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: expected {name} as an (h, w) pair of ints, got {v!r}") from None


def window_output(op: str, h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    """(P, Q) of a sliding window, floor mode; an empty output is an error."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{op}: expected kernel >= 1, stride >= 1, padding >= 0, got kernel {kernel}, "
                         f"stride {stride}, padding {padding}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"{op}: kernel {kh}x{kw} with padding {ph}x{pw} does not fit a {h}x{w} input")
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
