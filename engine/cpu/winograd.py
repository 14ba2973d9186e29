"""3x3 and 5x5 stride-1 convolution on the CPU by Winograd's minimal filtering, F(2x2, 3x3)
and F(2x2, 5x5).

The same three ops as engine.cpu.conv (the spec is engine.reference.conv), for the layers
where most of a ResNet's and AlexNet's time goes. im2col + GEMM spends 9 multiply-adds on
each output per input channel; F(2x2, 3x3) computes a 2x2 output tile from a 4x4 input
tile with 16, so 2.25x fewer, the rest being additions (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016). Per tile, channel by channel:

    y = A^T [ (G g G^T) (.) (B^T d B) ] A         d 4x4 input tile, g 3x3 filter, (.) elementwise

    B^T = | 1  0 -1  0 |     G = | 1    0    0  |     A^T = | 1  1  1  0 |
          | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
          | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
          | 0  1  0 -1 |         | 0    0    1  |

Summing over the input channels turns the elementwise products into 16 GEMMs, one per
position of the 4x4 tile, over the tiles of a chunk of samples:

    U (16, K, C)  = G g G^T         the filters, transformed once per call (float64, then float32)
    V (16, C, T)  = B^T d B         every 4x4 input tile t of the chunk (T = m * TP * TQ tiles)
    M (16, K, T)  = U @ V           16 GEMMs (np.matmul, BLAS)
    y             = A^T M A (+ b)   each 2x2 output tile

backward data is the forward convolution of dy with the filters flipped and transposed
(C, K, 3, 3), padded 2 - padding. backward weight is the transpose of the forward map:

    dW (K, C, 3, 3) = G^T [ sum_t (A dy_t A^T) (.) (B^T d_t B) ] G     (.. the sum: 16 GEMMs Z @ V^T)

with dy_t a 2x2 output tile (zero past the output's edge). The transforms add and subtract
values of one magnitude and halve exactly, so float32 results stay within the conv
tolerance of the float64 spec (tests/test_conv.py checks every path against it).

F(2x2, 5x5) is the same with 6x6 input tiles (36 multiply-adds for 4 outputs instead of
100: 2.8x fewer), from the points 0, 1, -1, 2, -2 and infinity:

    B^T = | 4  0 -5  0  1  0 |   G = | 1/4   0     0     0     0    |   A^T = | 1 1  1 1  1 0 |
          | 0 -4 -4  1  1  0 |       | -1/6 -1/6  -1/6  -1/6  -1/6  |         | 0 1 -1 2 -2 1 |
          | 0  4 -4 -1  1  0 |       | -1/6  1/6  -1/6   1/6  -1/6  |
          | 0 -2 -1  2  1  0 |       | 1/24  1/12  1/6   1/3   2/3  |
          | 0  2 -1 -2  1  0 |       | 1/24 -1/12  1/6  -1/3   2/3  |
          | 0  4  0 -5  0  1 |       | 0     0     0     0     1    |

Its transforms scale values by up to 5 and by 1/24: at AlexNet conv2's shape (64 -> 192
channels, 27x27) the float32 forward is 5e-6 of the output's scale from the float64 spec,
a quarter of what the conv tolerance allows (2e-5).

Work is split as in engine.cpu.conv: the batch in chunks of consecutive samples, which
engine.cpu.blas's threads take in turn, BLAS on one thread; the weight gradient cuts the
batch in at most _MAX_PARTS parts, sums each part's chunks in place and adds the parts'
sums in order in float64, so no result depends on the thread count.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from engine.cpu import blas

# A forward chunk's transformed tiles (V and M: a^2 (C + K) floats per tile) fit
# _CHUNK_BYTES: at AlexNet conv2 (7 MB a sample), two samples a chunk took 1.35x the time of
# one. The weight gradient cuts the batch in at most _MAX_PARTS parts, walked in chunks of
# enough samples for _MIN_TILES tiles (the GEMMs' depth: at AlexNet conv4, 49 tiles a chunk
# took 1.5x the time of 256)
_CHUNK_BYTES = 1 << 20
_MIN_TILES = 256
_MAX_PARTS = 8
# below this many channels in or out the transforms cost more than the multiply-adds saved
# (at 8 in and out, 32x32, Winograd took 2.1x the time of im2col + GEMM; at 16, 0.8-1.07x)
_MIN_CHANNELS = 16


def applies_to_weight_gradient(c: int, k: int, kernel, stride, padding) -> bool:
    """Whether the weight gradient comes here too: 3x3 only. F(2x2, 5x5)'s weight gradient,
    its sums transformed back by G^T's 1/6 and 1/24, came within 1.3e-5 of the scale of
    AlexNet conv2's (the tolerance allows 2e-5) for 0.93x the time: im2col keeps it."""
    return tuple(kernel) == (3, 3) and applies(c, k, kernel, stride, padding)


def applies(c: int, k: int, kernel, stride, padding) -> bool:
    """Whether engine.cpu.conv hands a convolution to this module: 3x3 or 5x5, stride 1,
    padding 0..R-1 (backward data pads R-1 - padding), at least _MIN_CHANNELS channels in
    and out."""
    r = kernel[0]
    return (tuple(kernel) in ((3, 3), (5, 5)) and tuple(stride) == (1, 1) and all(0 <= p < r for p in padding)
            and c >= _MIN_CHANNELS and k >= _MIN_CHANNELS)


# ---------------------------------------------------------------- F(2x2, 3x3) kernels
# Each works on one chunk, on the calling thread, without the GIL. The tile loops index a
# zero-padded copy of the chunk, so they need no bounds checks.


@nb.njit(cache=True, inline="always")
def _bt(d0, d1, d2, d3):
    # B^T applied to a column (d0, d1, d2, d3) of a 4x4 input tile
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@nb.njit(cache=True, inline="always")
def _at(m0, m1, m2, m3):
    # A^T applied to a column of a 4x4 product tile
    return m0 + m1 + m2, m1 - m2 - m3


@nb.njit(cache=True, inline="always")
def _a(e0, e1):
    # A applied to a column (e0, e1) of a 2x2 output-gradient tile
    return e0, e0 + e1, e0 - e1, -e1


@nb.njit(cache=True, inline="always")
def _g(g0, g1, g2):
    # G applied to a column (g0, g1, g2) of a 3x3 filter
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


@nb.njit(cache=True, inline="always")
def _gt(m0, m1, m2, m3):
    # G^T applied to a column of a 4x4 filter-gradient tile
    return m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3


@nb.njit(cache=True)
def _filter_tiles3(w, u):
    # w (K, C, 3, 3) -> u (16, K, C): u[4a + b, k, c] = (G g G^T)[a, b], in float64
    k_, c_ = w.shape[0], w.shape[1]
    for k in range(k_):
        for c in range(c_):
            # G g, column by column: rows f0..f3 of 3 values each (no view of w[k, c]: creating
            # one per pair cost more than its arithmetic)
            f00, f10, f20, f30 = _g(np.float64(w[k, c, 0, 0]), np.float64(w[k, c, 1, 0]), np.float64(w[k, c, 2, 0]))
            f01, f11, f21, f31 = _g(np.float64(w[k, c, 0, 1]), np.float64(w[k, c, 1, 1]), np.float64(w[k, c, 2, 1]))
            f02, f12, f22, f32 = _g(np.float64(w[k, c, 0, 2]), np.float64(w[k, c, 1, 2]), np.float64(w[k, c, 2, 2]))
            # (G g) G^T, row by row
            u[0, k, c], u[1, k, c], u[2, k, c], u[3, k, c] = _g(f00, f01, f02)
            u[4, k, c], u[5, k, c], u[6, k, c], u[7, k, c] = _g(f10, f11, f12)
            u[8, k, c], u[9, k, c], u[10, k, c], u[11, k, c] = _g(f20, f21, f22)
            u[12, k, c], u[13, k, c], u[14, k, c], u[15, k, c] = _g(f30, f31, f32)


@nb.njit(cache=True, nogil=True)
def _filter_gradient3(parts, k0, k1, dw):
    # parts (n_parts, 16, K, C) -> dw[k0:k1] (K, C, 3, 3) = G^T M G per (k, c), M the parts
    # added in order in float64
    n_parts, c_ = parts.shape[0], parts.shape[3]
    mt = np.empty(16)
    for k in range(k0, k1):
        for c in range(c_):
            for i in range(16):
                total = 0.0
                for part in range(n_parts):
                    total += parts[part, i, k, c]
                mt[i] = total
            # G^T M, column by column: rows f0..f2 of 4 values each
            f00, f10, f20 = _gt(mt[0], mt[4], mt[8], mt[12])
            f01, f11, f21 = _gt(mt[1], mt[5], mt[9], mt[13])
            f02, f12, f22 = _gt(mt[2], mt[6], mt[10], mt[14])
            f03, f13, f23 = _gt(mt[3], mt[7], mt[11], mt[15])
            # (G^T M) G, row by row
            dw[k, c, 0, 0], dw[k, c, 0, 1], dw[k, c, 0, 2] = _gt(f00, f01, f02, f03)
            dw[k, c, 1, 0], dw[k, c, 1, 1], dw[k, c, 1, 2] = _gt(f10, f11, f12, f13)
            dw[k, c, 2, 0], dw[k, c, 2, 1], dw[k, c, 2, 2] = _gt(f20, f21, f22, f23)


@nb.njit(cache=True, nogil=True)
def _input_tiles3(xp, tp_, tq_, v):
    # xp (m, C, 2TP+2, 2TQ+2) zero-padded -> v (16, C, m*TP*TQ): v[4a + b, c, t] = (B^T d B)[a, b]
    # for the 4x4 patch d at rows 2i.., cols 2j.. of tile t = (n*TP + i)*TQ + j
    m_, c_ = xp.shape[0], xp.shape[1]
    for n in range(m_):
        for c in range(c_):
            plane = xp[n, c]
            for i in range(tp_):
                r0, r1, r2, r3 = plane[2 * i], plane[2 * i + 1], plane[2 * i + 2], plane[2 * i + 3]
                t0 = (n * tp_ + i) * tq_
                for j in range(tq_):
                    q = 2 * j
                    # B^T d, column by column: rows u0..u3 of 4 values each
                    u00, u10, u20, u30 = _bt(r0[q], r1[q], r2[q], r3[q])
                    u01, u11, u21, u31 = _bt(r0[q + 1], r1[q + 1], r2[q + 1], r3[q + 1])
                    u02, u12, u22, u32 = _bt(r0[q + 2], r1[q + 2], r2[q + 2], r3[q + 2])
                    u03, u13, u23, u33 = _bt(r0[q + 3], r1[q + 3], r2[q + 3], r3[q + 3])
                    # (B^T d) B, row by row
                    v[0, c, t0 + j], v[1, c, t0 + j], v[2, c, t0 + j], v[3, c, t0 + j] = _bt(u00, u01, u02, u03)
                    v[4, c, t0 + j], v[5, c, t0 + j], v[6, c, t0 + j], v[7, c, t0 + j] = _bt(u10, u11, u12, u13)
                    v[8, c, t0 + j], v[9, c, t0 + j], v[10, c, t0 + j], v[11, c, t0 + j] = _bt(u20, u21, u22, u23)
                    v[12, c, t0 + j], v[13, c, t0 + j], v[14, c, t0 + j], v[15, c, t0 + j] = _bt(u30, u31, u32, u33)


@nb.njit(cache=True, nogil=True)
def _output_tiles3(mt, b, has_bias, tp_, tq_, yp):
    # mt (16, K, m*TP*TQ) -> yp (m, K, 2TP, 2TQ): each 2x2 tile = A^T M A (+ b[k]); the caller
    # crops the padded tiles to (P, Q)
    k_ = mt.shape[1]
    m_ = yp.shape[0]
    for n in range(m_):
        for k in range(k_):
            bias = b[k] if has_bias else np.float32(0.0)
            for i in range(tp_):
                y0, y1 = yp[n, k, 2 * i], yp[n, k, 2 * i + 1]
                t0 = (n * tp_ + i) * tq_
                for j in range(tq_):
                    t = t0 + j
                    # A^T M, column by column: rows w0 and w1 of 4 values each
                    w00, w10 = _at(mt[0, k, t], mt[4, k, t], mt[8, k, t], mt[12, k, t])
                    w01, w11 = _at(mt[1, k, t], mt[5, k, t], mt[9, k, t], mt[13, k, t])
                    w02, w12 = _at(mt[2, k, t], mt[6, k, t], mt[10, k, t], mt[14, k, t])
                    w03, w13 = _at(mt[3, k, t], mt[7, k, t], mt[11, k, t], mt[15, k, t])
                    a0, a1 = _at(w00, w01, w02, w03)
                    c0, c1 = _at(w10, w11, w12, w13)
                    y0[2 * j], y0[2 * j + 1] = a0 + bias, a1 + bias
                    y1[2 * j], y1[2 * j + 1] = c0 + bias, c1 + bias


@nb.njit(cache=True, nogil=True)
def _gradient_tiles3(dyp, tp_, tq_, z):
    # dyp (m, K, 2TP, 2TQ), zero past the output -> z (16, K, m*TP*TQ): z[4a + b, k, t] =
    # (A e A^T)[a, b] for the 2x2 tile e of tile t
    m_, k_ = dyp.shape[0], dyp.shape[1]
    for n in range(m_):
        for k in range(k_):
            for i in range(tp_):
                e0, e1 = dyp[n, k, 2 * i], dyp[n, k, 2 * i + 1]
                t0 = (n * tp_ + i) * tq_
                for j in range(tq_):
                    t = t0 + j
                    # A e, column by column: rows s0..s3 of 2 values each
                    s00, s10, s20, s30 = _a(e0[2 * j], e1[2 * j])
                    s01, s11, s21, s31 = _a(e0[2 * j + 1], e1[2 * j + 1])
                    # (A e) A^T, row by row
                    z[0, k, t], z[1, k, t], z[2, k, t], z[3, k, t] = _a(s00, s01)
                    z[4, k, t], z[5, k, t], z[6, k, t], z[7, k, t] = _a(s10, s11)
                    z[8, k, t], z[9, k, t], z[10, k, t], z[11, k, t] = _a(s20, s21)
                    z[12, k, t], z[13, k, t], z[14, k, t], z[15, k, t] = _a(s30, s31)


# ---------------------------------------------------------------- F(2x2, 5x5) kernels
# As the F(2x2, 3x3) ones, with 6x6 tiles; a small scratch array holds the tile between the
# column and the row pass instead of 36 named values.


# float32 constants: an integer one would make Numba compute the tile transforms in float64
_2, _4, _5 = np.float32(2.0), np.float32(4.0), np.float32(5.0)


@nb.njit(cache=True, inline="always")
def _bt6(d0, d1, d2, d3, d4, d5):
    # B^T applied to a column of a 6x6 input tile
    return (_4 * d0 - _5 * d2 + d4, d3 + d4 - _4 * (d1 + d2), _4 * (d1 - d2) - d3 + d4,
            _2 * (d3 - d1) - d2 + d4, _2 * (d1 - d3) - d2 + d4, _4 * d1 - _5 * d3 + d5)


@nb.njit(cache=True, inline="always")
def _at6(m0, m1, m2, m3, m4, m5):
    # A^T applied to a column of a 6x6 product tile
    return m0 + m1 + m2 + m3 + m4, m1 - m2 + _2 * (m3 - m4) + m5


@nb.njit(cache=True, inline="always")
def _a6(e0, e1):
    # A applied to a column (e0, e1) of a 2x2 output-gradient tile
    return e0, e0 + e1, e0 - e1, e0 + _2 * e1, e0 - _2 * e1, e1


@nb.njit(cache=True, inline="always")
def _g6(g0, g1, g2, g3, g4):
    # G applied to a column of a 5x5 filter
    return (g0 / 4, -(g0 + g1 + g2 + g3 + g4) / 6, -(g0 - g1 + g2 - g3 + g4) / 6,
            (g0 + 2 * g1 + 4 * g2 + 8 * g3 + 16 * g4) / 24, (g0 - 2 * g1 + 4 * g2 - 8 * g3 + 16 * g4) / 24, g4)


@nb.njit(cache=True, inline="always")
def _gt6(m0, m1, m2, m3, m4, m5):
    # G^T applied to a column of a 6x6 filter-gradient tile
    return (m0 / 4 - (m1 + m2) / 6 + (m3 + m4) / 24, (m2 - m1) / 6 + (m3 - m4) / 12,
            (m3 + m4 - m1 - m2) / 6, (m2 - m1) / 6 + (m3 - m4) / 3, -(m1 + m2) / 6 + 2 * (m3 + m4) / 3 + m5)


@nb.njit(cache=True)
def _filter_tiles5(w, u):
    # w (K, C, 5, 5) -> u (36, K, C): u[6a + b, k, c] = (G g G^T)[a, b], in float64
    k_, c_ = w.shape[0], w.shape[1]
    f = np.empty((6, 5))
    for k in range(k_):
        for c in range(c_):
            for s in range(5):                                   # G g, column by column
                f[0, s], f[1, s], f[2, s], f[3, s], f[4, s], f[5, s] = _g6(
                    np.float64(w[k, c, 0, s]), np.float64(w[k, c, 1, s]), np.float64(w[k, c, 2, s]),
                    np.float64(w[k, c, 3, s]), np.float64(w[k, c, 4, s]))
            for a in range(6):                                   # (G g) G^T, row by row
                (u[6 * a, k, c], u[6 * a + 1, k, c], u[6 * a + 2, k, c], u[6 * a + 3, k, c], u[6 * a + 4, k, c],
                 u[6 * a + 5, k, c]) = _g6(f[a, 0], f[a, 1], f[a, 2], f[a, 3], f[a, 4])


@nb.njit(cache=True, nogil=True)
def _filter_gradient5(parts, k0, k1, dw):
    # parts (n_parts, 36, K, C) -> dw[k0:k1] (K, C, 5, 5) = G^T M G per (k, c), M the parts
    # added in order in float64
    n_parts, c_ = parts.shape[0], parts.shape[3]
    mt = np.empty(36)
    f = np.empty((5, 6))
    for k in range(k0, k1):
        for c in range(c_):
            for i in range(36):
                total = 0.0
                for part in range(n_parts):
                    total += parts[part, i, k, c]
                mt[i] = total
            for b in range(6):                                   # G^T M, column by column
                f[0, b], f[1, b], f[2, b], f[3, b], f[4, b] = _gt6(mt[b], mt[6 + b], mt[12 + b], mt[18 + b],
                                                                    mt[24 + b], mt[30 + b])
            for r in range(5):                                   # (G^T M) G, row by row
                dw[k, c, r, 0], dw[k, c, r, 1], dw[k, c, r, 2], dw[k, c, r, 3], dw[k, c, r, 4] = _gt6(
                    f[r, 0], f[r, 1], f[r, 2], f[r, 3], f[r, 4], f[r, 5])


@nb.njit(cache=True, nogil=True)
def _input_tiles5(xp, tp_, tq_, v):
    # xp (m, C, 2TP+4, 2TQ+4) zero-padded -> v (36, C, m*TP*TQ): v[6a + b, c, t] = (B^T d B)[a, b]
    # for the 6x6 patch d at rows 2i.., cols 2j.. of tile t = (n*TP + i)*TQ + j. B^T runs down
    # whole rows first, then B across each row's tiles: both loops go along a row, and LLVM
    # vectorizes them (a tile at a time through a scratch tile took 2.5x as long)
    m_, c_, wp = xp.shape[0], xp.shape[1], xp.shape[3]
    u = np.empty((6, wp), dtype=np.float32)
    for n in range(m_):
        for c in range(c_):
            plane = xp[n, c]
            for i in range(tp_):
                r0, r1, r2 = plane[2 * i], plane[2 * i + 1], plane[2 * i + 2]
                r3, r4, r5 = plane[2 * i + 3], plane[2 * i + 4], plane[2 * i + 5]
                for x in range(wp):                              # B^T d, down every column of the rows
                    u[0, x], u[1, x], u[2, x], u[3, x], u[4, x], u[5, x] = _bt6(r0[x], r1[x], r2[x], r3[x], r4[x], r5[x])
                t0 = (n * tp_ + i) * tq_
                for a in range(6):                               # (B^T d) B, across each tile
                    ua = u[a]
                    v0, v1, v2, v3, v4, v5 = (v[6 * a, c], v[6 * a + 1, c], v[6 * a + 2, c], v[6 * a + 3, c],
                                              v[6 * a + 4, c], v[6 * a + 5, c])
                    for j in range(tq_):
                        q = 2 * j
                        v0[t0 + j], v1[t0 + j], v2[t0 + j], v3[t0 + j], v4[t0 + j], v5[t0 + j] = _bt6(
                            ua[q], ua[q + 1], ua[q + 2], ua[q + 3], ua[q + 4], ua[q + 5])


@nb.njit(cache=True, nogil=True)
def _output_tiles5(mt, b, has_bias, tp_, tq_, yp):
    # mt (36, K, m*TP*TQ) -> yp (m, K, 2TP, 2TQ): each 2x2 tile = A^T M A (+ b[k]), a tile at a
    # time (a row of tiles at once, as _input_tiles5 does, ran 1.4x slower here)
    k_ = mt.shape[1]
    m_ = yp.shape[0]
    w = np.empty((2, 6), dtype=np.float32)
    for n in range(m_):
        for k in range(k_):
            bias = b[k] if has_bias else np.float32(0.0)
            for i in range(tp_):
                y0, y1 = yp[n, k, 2 * i], yp[n, k, 2 * i + 1]
                t0 = (n * tp_ + i) * tq_
                for j in range(tq_):
                    t = t0 + j
                    for c in range(6):                           # A^T M, column by column
                        w[0, c], w[1, c] = _at6(mt[c, k, t], mt[6 + c, k, t], mt[12 + c, k, t], mt[18 + c, k, t],
                                                mt[24 + c, k, t], mt[30 + c, k, t])
                    a0, a1 = _at6(w[0, 0], w[0, 1], w[0, 2], w[0, 3], w[0, 4], w[0, 5])
                    c0, c1 = _at6(w[1, 0], w[1, 1], w[1, 2], w[1, 3], w[1, 4], w[1, 5])
                    y0[2 * j], y0[2 * j + 1] = a0 + bias, a1 + bias
                    y1[2 * j], y1[2 * j + 1] = c0 + bias, c1 + bias


@nb.njit(cache=True, nogil=True)
def _gradient_tiles5(dyp, tp_, tq_, z):
    # dyp (m, K, 2TP, 2TQ), zero past the output -> z (36, K, m*TP*TQ): z[6a + b, k, t] = (A e A^T)[a, b]
    m_, k_ = dyp.shape[0], dyp.shape[1]
    s = np.empty((6, 2), dtype=np.float32)
    for n in range(m_):
        for k in range(k_):
            for i in range(tp_):
                e0, e1 = dyp[n, k, 2 * i], dyp[n, k, 2 * i + 1]
                t0 = (n * tp_ + i) * tq_
                for j in range(tq_):
                    t = t0 + j
                    for b in range(2):                           # A e, column by column
                        s[0, b], s[1, b], s[2, b], s[3, b], s[4, b], s[5, b] = _a6(e0[2 * j + b], e1[2 * j + b])
                    for a in range(6):                           # (A e) A^T, row by row
                        (z[6 * a, k, t], z[6 * a + 1, k, t], z[6 * a + 2, k, t], z[6 * a + 3, k, t],
                         z[6 * a + 4, k, t], z[6 * a + 5, k, t]) = _a6(s[a, 0], s[a, 1])


# ---------------------------------------------------------------- the three ops

# per kernel size R: the tile side R + 1 and the five kernels
_KERNELS = {
    3: (4, _filter_tiles3, _filter_gradient3, _input_tiles3, _output_tiles3, _gradient_tiles3),
    5: (6, _filter_tiles5, _filter_gradient5, _input_tiles5, _output_tiles5, _gradient_tiles5),
}


def _stack(positions: int, rows: int, cols: int, stacks: int | None = None):
    """An empty float32 (positions, rows, cols) array, or (stacks, positions, rows, cols),
    whose matrices start an odd number of 64-byte cache lines apart. The transforms read or
    write all 16 (or 36) at once: matrices a multiple of 4 KiB apart (AlexNet conv4's
    filters: 256 x 384 floats, 96 x 4 KiB) fall into the same cache sets, more than L1 has
    ways for, and the filter transform ran 7x slower."""
    lines = -(-rows * cols // 16)
    lines += 1 - lines % 2
    flat = np.empty(((stacks or 1) * positions, lines * 16), dtype=np.float32)
    stack = flat[:, :rows * cols].reshape(stacks or 1, positions, rows, cols)
    return stack[0] if stacks is None else stack


def _tiles(p: int, q: int) -> tuple[int, int]:
    return -(-p // 2), -(-q // 2)


def _padded(x, ph, pw, rows, cols):
    """x (m, C, H, W) at rows ph.., cols pw.. of a zeroed (m, C, rows, cols) float32 array."""
    m, c, h, w = x.shape
    xp = np.zeros((m, c, rows, cols), dtype=np.float32)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def _chunks(n: int, per_sample: int, per_chunk: int) -> list[int]:
    """Bounds of the forward's chunks of consecutive samples: as many samples as
    per_chunk // per_sample (at least one), and no more than an eighth of the batch (1 /
    _MAX_PARTS), so both threads have chunks to take. They follow from the shapes alone."""
    chunk = max(1, min(-(-n // _MAX_PARTS), per_chunk // per_sample))
    return list(range(0, n, chunk)) + [n]


def _run(work, bounds, macs):
    """work(b[0], b[1]), work(b[1], b[2]), ... on engine.cpu.blas's threads, or on the calling
    thread alone when the whole op is too small to wake a thread for."""
    if macs < blas.SPLIT_MIN_MACS:
        for a, b in zip(bounds, bounds[1:]):
            work(a, b)
    else:
        blas.run_parts(work, bounds)


def conv2d_forward(x, w, b, padding, out):
    """x (N, C, H, W), w (K, C, R, R), b (K,) or None, stride 1 -> y (N, K, P, Q) written into out."""
    n, c, h, wd = x.shape
    k, r = w.shape[0], w.shape[2]
    alpha, filter_tiles, _, input_tiles, output_tiles, _ = _KERNELS[r]
    ph, pw = padding
    p, q = h + 2 * ph - r + 1, wd + 2 * pw - r + 1
    tp, tq = _tiles(p, q)
    u = _stack(alpha * alpha, k, c)
    filter_tiles(w, u)                                        # U = G w G^T, once per call
    bias = np.zeros(1, dtype=np.float32) if b is None else b

    def work(n0, n1):
        m = n1 - n0
        v = _stack(alpha * alpha, c, m * tp * tq)
        input_tiles(_padded(x[n0:n1], ph, pw, 2 * tp + r - 1, 2 * tq + r - 1), tp, tq, v)
        # (a^2, K, C) @ (a^2, C, T) -> (a^2, K, T)
        mt = np.matmul(u, v, out=_stack(alpha * alpha, k, m * tp * tq))
        yp = np.empty((m, k, 2 * tp, 2 * tq), dtype=np.float32)
        output_tiles(mt, bias, b is not None, tp, tq, yp)
        out[n0:n1] = yp[:, :, :p, :q]

    _run(work, _chunks(n, alpha * alpha * (c + k) * tp * tq * 4, _CHUNK_BYTES), k * c * r * r * p * q * n)
    return out


def conv2d_backward_data(dy, w, x_shape, padding, out):
    """dy (N, K, P, Q), w (K, C, R, R), stride 1 -> dx (N, C, H, W) written into out: the forward
    convolution of dy with w flipped and transposed, padded R-1 - padding."""
    r = w.shape[2]
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (C, K, R, R)
    return conv2d_forward(dy, flipped, None, (r - 1 - padding[0], r - 1 - padding[1]), out)


def conv2d_backward_weight(dy, x, w_shape, padding, out):
    """dy (N, K, P, Q), x (N, C, H, W), stride 1 -> dw (K, C, R, R) written into out."""
    n, k, p, q = dy.shape
    c, r = x.shape[1], w_shape[2]
    alpha, _, filter_gradient, input_tiles, _, gradient_tiles = _KERNELS[r]
    ph, pw = padding
    tp, tq = _tiles(p, q)
    # at most _MAX_PARTS parts, each summing its chunks' products in place: the partial sums
    # (a^2 K C floats each) stay few whatever the batch
    part = -(-n // _MAX_PARTS)
    chunk = max(1, min(part, -(-_MIN_TILES // (tp * tq))))
    bounds = list(range(0, n, part)) + [n]
    sums = _stack(alpha * alpha, k, c, stacks=len(bounds) - 1)   # each part's (a^2, K, C)

    def work(n0, n1):
        total = sums[bounds.index(n0)]
        product = _stack(alpha * alpha, k, c) if n1 - n0 > chunk else total
        for a in range(n0, n1, chunk):
            m = min(n1, a + chunk) - a
            v = _stack(alpha * alpha, c, m * tp * tq)
            input_tiles(_padded(x[a:a + m], ph, pw, 2 * tp + r - 1, 2 * tq + r - 1), tp, tq, v)
            z = _stack(alpha * alpha, k, m * tp * tq)
            gradient_tiles(_padded(dy[a:a + m], 0, 0, 2 * tp, 2 * tq), tp, tq, z)
            # (a^2, K, T) @ (a^2, T, C) -> (a^2, K, C)
            np.matmul(z, v.transpose(0, 2, 1), out=total if a == n0 else product)
            if a != n0:
                total += product

    _run(work, bounds, k * c * r * r * p * q * n)
    # the parts' sums added in order and transformed back, a block of filters per thread
    macs = k * c * alpha * alpha * len(sums)
    _run(lambda k0, k1: filter_gradient(sums, k0, k1, out), blas.bounds(k, blas.parts(k, macs)), macs)
    return out
