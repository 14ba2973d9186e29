"""Inverted dropout as Numba kernels (float32 on the CPU).

The mask is the counter-based function of (seed, flat index) written out in
engine.reference.dropout -- a splitmix64 finaliser in wrapping uint64 arithmetic -- so
this kernel draws bit for bit the mask of the reference and of the CUDA kernel, in any
thread layout. Forward computes the mask and y in one pass over the flat arrays.
Every integer here is uint64: Numba would turn uint64 mixed with int64 into float64.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from engine.cpu.arrays import output
from engine.cpu.parallel import kernel_pair

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ONE = np.uint64(1)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)
_TO_UNIT = 2.0 ** -24  # 24-bit integer -> [0, 1), exact


@kernel_pair()
def _dropout_fwd(x, p, seed, y, mask):
    # x, y float (numel,); mask uint8 (numel,); seed uint64; p float64 in [0, 1)
    q = 1.0 - p
    for i in prange(x.size):
        z = seed + (np.uint64(i) + _ONE) * _GOLDEN
        z = (z ^ (z >> _S30)) * _MIX1
        z = (z ^ (z >> _S27)) * _MIX2
        z = z ^ (z >> _S31)
        u = np.float64(z >> _S40) * _TO_UNIT
        if u >= p:
            mask[i] = 1
            y[i] = np.float64(x[i]) / q
        else:
            mask[i] = 0
            y[i] = 0.0


@kernel_pair()
def _dropout_bwd(dy, mask, p, dx):
    q = 1.0 - p
    for i in prange(dy.size):
        dx[i] = np.float64(dy[i]) / q if mask[i] else 0.0


def dropout_forward(x, p, seed, out=None):
    x = np.ascontiguousarray(x)
    y = output(None if out is None else out[0], x.shape, x.dtype)
    mask = output(None if out is None else out[1], x.shape, np.uint8)
    _dropout_fwd(x.reshape(-1), float(p), np.uint64(int(seed) % 2**64), y.reshape(-1), mask.reshape(-1))
    return y, mask


def dropout_backward(dy, mask, p, out=None):
    dy, mask = np.ascontiguousarray(dy), np.ascontiguousarray(mask)
    dx = output(out, dy.shape, dy.dtype)
    _dropout_bwd(dy.reshape(-1), mask.reshape(-1), float(p), dx.reshape(-1))
    return dx
