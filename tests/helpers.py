"""Shared test utilities: central finite differences and seeded random draws."""
from __future__ import annotations

import numpy as np


def numerical_grad(f, x: np.ndarray, dy: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d(sum(f(x) * dy))/dx by central differences in float64; f must be float64 pure."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = np.sum(np.asarray(f(x), dtype=np.float64) * dy)
        flat[i] = old - eps
        down = np.sum(np.asarray(f(x), dtype=np.float64) * dy)
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
