"""Inverted dropout with a counter-based mask, the spec: NumPy.

The mask is a pure function of (seed, element index), not of a random-number stream,
so every backend -- this reference, the Numba kernel and the CUDA kernel -- draws the
same mask for the same seed, whatever the thread layout. For element i (flat C-order
index, 0-based) and integer seed s, in uint64 arithmetic that wraps modulo 2**64
(a splitmix64 finaliser of s + (i + 1) * golden ratio):

    z = s + (i + 1) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z = z ^ (z >> 31)
    u = (z >> 40) * 2**-24              # uniform in [0, 1) with 24 bits, exact in float32
    keep = u >= p                       # compared in float64: u is exact, p as given
    mask = uint8(keep)
    y = x * mask / (1 - p)

s is taken modulo 2**64 (so a negative seed is allowed). p == 0 keeps every element;
p must be in [0, 1). Backward: dx = dy * mask / (1 - p).
"""
from __future__ import annotations

import numpy as np

from engine.cards import LIKE_INPUT, OpCard, Tensor, like_arg, normal

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


def dropout_mask(shape, p: float, seed: int) -> np.ndarray:
    """The uint8 keep-mask of the spec above, for an array of `shape`."""
    size = int(np.prod(shape, dtype=np.int64))
    i = np.arange(size, dtype=np.uint64)
    # array arithmetic on uint64 wraps modulo 2**64 silently, as the spec wants
    z = np.uint64(int(seed) % 2**64) + (i + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) * 2.0**-24
    return (u >= float(p)).astype(np.uint8).reshape(shape)


def dropout_forward(x, p, seed, out=None):
    x = np.asarray(x, dtype=np.float64)
    mask = dropout_mask(x.shape, p, seed)
    y = x * mask / (1.0 - p)
    if out is None:
        return y, mask
    out[0][...] = y
    out[1][...] = mask
    return out[0], out[1]


def dropout_backward(dy, mask, p, out=None):
    dx = np.asarray(dy, dtype=np.float64) * np.asarray(mask) / (1.0 - p)
    if out is None:
        return dx
    out[...] = dx
    return out


# --------------------------------------------------------------------------------------
# Cards (engine.cards). PyTorch draws its masks from another generator: its counterparts
# time the same work, not the same bits.

def _backward_inputs(rng, s: Tensor):
    _, mask = dropout_forward(np.zeros(s.shape, np.float32), s.p, 1234)
    return normal(rng, s.shape), mask, s.p


CARDS = [
    OpCard("dropout_forward", dropout_forward, Tensor, lambda r, s: (normal(r, s.shape), s.p, 1234), ("y", "mask"),
           lambda x, p, seed: ((x.shape, LIKE_INPUT), (x.shape, np.uint8)), "dropout",
           torch=lambda T, x, p, seed: lambda: T.aten.native_dropout(x, p, True)),
    OpCard("dropout_backward", dropout_backward, Tensor, _backward_inputs, ("dx",), like_arg(0), "dropout",
           torch=lambda T, dy, mask, p: (lambda keep: lambda: T.aten.native_dropout_backward(dy, keep, 1 / (1 - p)))(
               mask.bool())),
]
