"""The one tolerance table: how far a fast implementation may stray from the float64 spec.

Used by the whole test suite and by ``python -m engine validate``; nothing else in the
project hard-codes a tolerance. An element passes when

    |actual - expected| <= atol * scale + rtol * |expected|,   scale = max(1, max|expected|)

so an op whose outputs are large sums (conv2d, gemm) is judged relative to its own size,
and near-zero outputs of a long reduction are not held to a relative bound they cannot meet.
"""
from __future__ import annotations

import numpy as np

# family -> dtype -> bounds. float32 rows judge Numba/CUDA float32 against the float64 spec;
# the "gradcheck" row judges the float64 reference against central finite differences.
TOLERANCES = {
    "conv":       {"float32": dict(rtol=1e-4, atol=2e-5)},
    "gemm":       {"float32": dict(rtol=1e-4, atol=2e-5)},
    "linear":     {"float32": dict(rtol=1e-4, atol=2e-5)},
    "pool":       {"float32": dict(rtol=1e-5, atol=1e-6)},
    "batchnorm":  {"float32": dict(rtol=1e-4, atol=1e-5)},
    "activation": {"float32": dict(rtol=1e-5, atol=1e-6)},
    "dropout":    {"float32": dict(rtol=1e-6, atol=1e-7)},
    "loss":       {"float32": dict(rtol=1e-4, atol=1e-6)},
    "optim":      {"float32": dict(rtol=1e-5, atol=1e-6)},
    "gradcheck":  {"float64": dict(rtol=1e-5, atol=1e-7)},
    "training":   {"float32": dict(rtol=1e-4, atol=1e-6)},
    # N ranks against one process on the same global batch: only the order of the sums over
    # the batch differs (tests/test_distributed.py: 3e-8 at most). Adam magnifies that order
    # where a gradient is near eps: on LeNet after 10 Adam steps 2 of 61,706 weights differ
    # by up to 4e-6 -- as one process does on 1 thread against 2 (2e-6, the same 2 weights)
    "data_parallel": {"float32": dict(rtol=1e-5, atol=1e-6)},
}


def tol(family: str, dtype="float32") -> dict:
    """Bounds for an op family at a dtype: ``assert_close(a, b, **tol("conv"))``."""
    return TOLERANCES[family][np.dtype(dtype).name]


def errors(actual, expected) -> tuple[float, float]:
    """(max abs error, max rel error) of actual against expected, both moved to the host."""
    a = np.asarray(_host(actual), dtype=np.float64)
    e = np.asarray(_host(expected), dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} differs from expected {e.shape}")
    if a.size == 0:
        return 0.0, 0.0
    diff = np.abs(a - e)
    return float(diff.max()), float((diff / np.maximum(np.abs(e), 1e-30)).max())


def is_close(actual, expected, rtol: float, atol: float) -> bool:
    a = np.asarray(_host(actual), dtype=np.float64)
    e = np.asarray(_host(expected), dtype=np.float64)
    if a.shape != e.shape:
        return False
    if a.size == 0:
        return True
    scale = max(1.0, float(np.abs(e).max()))
    return bool(np.all(np.abs(a - e) <= atol * scale + rtol * np.abs(e)))


def assert_close(actual, expected, rtol: float, atol: float, what: str = "") -> None:
    """Raise AssertionError with the worst element when actual strays from expected."""
    if is_close(actual, expected, rtol, atol):
        return
    a = np.asarray(_host(actual), dtype=np.float64)
    e = np.asarray(_host(expected), dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} differs from expected {e.shape}")
    scale = max(1.0, float(np.abs(e).max()))
    excess = np.abs(a - e) - (atol * scale + rtol * np.abs(e))
    i = np.unravel_index(int(np.argmax(excess)), a.shape)
    abs_err, rel_err = errors(a, e)
    raise AssertionError(
        f"{what}: {int((excess > 0).sum())} of {a.size} elements out of tolerance "
        f"(rtol={rtol}, atol={atol}, scale={scale:.3g}); worst at {i}: got {a[i]!r}, "
        f"expected {e[i]!r}; max abs err {abs_err:.3g}, max rel err {rel_err:.3g}")


def _host(x):
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return x
