"""Convolution on the CPU: Numba kernels move the data, BLAS (np.matmul) does the arithmetic.

Same ops and layouts as engine.reference.conv (the spec); float32 in, float32 out.

    cols (N, C*R*S, P*Q)   im2col layout: row c*R*S + r*S + s of sample n holds tap (r, s)
                           of channel c at every output cell p*Q + q

    forward          y[n]     (K, PQ)   = w2 @ cols[n]          + b
    backward data    dcols[n] (CRS, PQ) = w2.T @ dy[n]          then col2im into dx[n]
    backward weight  dw.T     (CRS, K)  = sum_n cols[n] @ dy[n].T

with w2 = w.reshape(K, C*R*S). y[n] and dy[n] are already (K, P*Q) blocks of the NCHW
arrays, so nothing is transposed, and im2col/col2im copy contiguous row segments.

How the work is split (measured at the LeNet shapes, batch 256, on 2 cores):

* The batch is walked in chunks of a few samples, so one chunk's cols (<= _CHUNK_BYTES)
  is still in cache when the GEMM reads it, and AlexNet-sized layers do not allocate
  hundreds of MiB of columns.
* The batch is split into up to _MAX_PARTS parts of consecutive samples, walked chunk by
  chunk, which the threads of engine.cpu.blas take in turn, with BLAS held to one thread;
  the Numba kernels on that path release the GIL (nogil) and run serially inside their part. Only a single sample
  (nothing to split) lets BLAS thread its GEMMs. Mixing both (parallel Numba loops between
  threaded GEMMs) was 1.3-2x slower, and collapsed on a busy machine, where spinning thread
  pools fight.
* The public im2col / col2im ops run alone, so they use parallel=True kernels.

Results are deterministic, whatever the thread count: every sample is computed by one
thread, and the weight gradient sums each part's products, then adds the parts' sums in
order in float64 -- the order one thread would add them in.

Other layouts, where they measured faster: 3x3 and 5x5 stride-1 layers with enough channels
go to Winograd (engine.cpu.winograd), strided ones whose kernel covers 3x3 blocks of the
stride as a 3x3 one on blocks of the input, other stride-1 layers from zero-padded planes
(below), with direct kernels where they have few output channels.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from engine.cpu import blas, winograd
from engine.shapes import window_output_hw

_CHUNK_BYTES = 2 << 20
# OpenBLAS runs a GEMM on one thread when M*N*K is at most 65536 * GEMM_MULTITHREAD_THRESHOLD (4)
_BLAS_SERIAL_MACS = 65536 * 4
# the batch in up to this many parts, which the threads take in turn: a thread the machine
# delays holds the others up by one part at most. The parts follow from the batch and the
# layer alone, so the results do not depend on the thread count.
_MAX_PARTS = 8
# an op of fewer multiply-adds than this runs its parts on the calling thread: handing parts
# to the helper thread costs 80-150 us on this 2-core guest (a pool's submit and result, two
# wake-ups), and the second thread gains only 1.3-1.5x on small ops. LeNet conv1 at batch 32
# (the CLI's default; 4.3 M) took 0.26 ms on one thread against 0.35-0.45 split (two runs,
# 2 and 8 parts); at batch 64 (8.6 M) 0.43 against 0.38-0.39
_SPLIT_MIN_MACS = 8 << 20
# the weight gradient sets a chunk's samples side by side when one sample's product (CRS, K)
# is bigger than this, with chunks of at least this many output cells (m*P*Q) to sum over
_WIDE_MIN_BYTES = 256 << 10
_WIDE_DEPTH = 512
# a stride-1 layer takes the padded-planes paths (below) when K * (Wp - Q) <= this * Q: the
# data gradient's full-width GEMM costs K multiply-adds for each extra cell, the col2im it
# saves about 10-20
_ROWS_MAX_WASTE = 8


def _empty(shape, out):
    return np.empty(shape, dtype=np.float32) if out is None else out


# ---------------------------------------------------------------- kernels
# They index flat arrays with computed offsets instead of slicing: rows are short (Q is
# 10..55 at LeNet/AlexNet sizes) and a view per row cost more than copying the row. The
# inner copies use unsigned indices: Numba then skips its negative-index wraparound, and
# LLVM vectorizes the loop (im2col went from 6 ms to 1.3 ms at LeNet conv1).


@nb.njit(cache=True, inline="always")
def _span(n_out, stride, offset, size):
    """Output indices i in [lo, hi) whose input index i*stride + offset lies in [0, size)."""
    lo = max(0, (-offset + stride - 1) // stride)
    hi = min(n_out, (size - offset + stride - 1) // stride)
    return lo, max(lo, hi)


@nb.njit(cache=True, inline="always")
def _im2col_taps(xf, cf, ncr, c_, h_, w_, r_, s_, sh, sw, ph, pw, p_, q_, n_step, row_step):
    # task ncr = (n*C + c)*R + r: the S taps (r, 0..S-1) of plane (n, c) into cols rows
    # crs = (c*R + r)*S + s of sample n, row (n, crs) starting at n*n_step + crs*row_step of
    # the flat cols: (N, CRS, PQ) has steps (CRS*PQ, PQ), the wide (CRS, N*PQ) (PQ, N*PQ)
    nc, r = ncr // r_, ncr % r_
    n, c = nc // c_, nc % c_
    xoff = nc * h_ * w_
    p_lo, p_hi = _span(p_, sh, r - ph, h_)
    for s in range(s_):
        q_lo, q_hi = _span(q_, sw, s - pw, w_)
        row = n * n_step + ((c * r_ + r) * s_ + s) * row_step
        for i in range(row, row + p_lo * q_):            # rows of padding above
            cf[i] = 0.0
        for i in range(row + p_hi * q_, row + p_ * q_):  # and below
            cf[i] = 0.0
        for p in range(p_lo, p_hi):
            d = row + p * q_
            for i in range(d, d + q_lo):                 # padding left
                cf[i] = 0.0
            for i in range(d + q_hi, d + q_):            # and right
                cf[i] = 0.0
            # in-bounds run: cols[d + q] = x[h, q*sw + s - pw] for q in [q_lo, q_hi)
            dq = np.uint64(d + q_lo)
            xq = np.uint64(xoff + (p * sh + r - ph) * w_ + q_lo * sw + s - pw)
            if sw == 1:
                for i in range(np.uint64(q_hi - q_lo)):
                    cf[dq + i] = xf[xq + i]
            else:
                step = np.uint64(sw)
                for i in range(np.uint64(q_hi - q_lo)):
                    cf[dq + i] = xf[xq + i * step]


@nb.njit(cache=True, inline="always")
def _col2im_plane(cf, xf, nc, h_, w_, r_, s_, sh, sw, ph, pw, p_, q_):
    # plane nc = n*C + c of x = the sum of its R*S cols rows put back where im2col read them
    hw, pq = h_ * w_, p_ * q_
    xoff = nc * hw
    for i in range(xoff, xoff + hw):
        xf[i] = 0.0
    for r in range(r_):
        p_lo, p_hi = _span(p_, sh, r - ph, h_)
        for s in range(s_):
            q_lo, q_hi = _span(q_, sw, s - pw, w_)
            row = ((nc * r_ + r) * s_ + s) * pq
            for p in range(p_lo, p_hi):
                # x[h, q*sw + s - pw] += cols[row + p*Q + q] for q in [q_lo, q_hi)
                dq = np.uint64(row + p * q_ + q_lo)
                xq = np.uint64(xoff + (p * sh + r - ph) * w_ + q_lo * sw + s - pw)
                if sw == 1:
                    for i in range(np.uint64(q_hi - q_lo)):
                        xf[xq + i] += cf[dq + i]
                else:
                    step = np.uint64(sw)
                    for i in range(np.uint64(q_hi - q_lo)):
                        xf[xq + i * step] += cf[dq + i]


@nb.njit(cache=True, parallel=True)
def _im2col_parallel(x, r_, s_, sh, sw, ph, pw, p_, q_, cols):
    # x (N, C, H, W) -> cols (N, C*R*S, P*Q); one (n, c, r) task per iteration
    n_, c_, h_, w_ = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    pq = p_ * q_
    for ncr in nb.prange(n_ * c_ * r_):
        _im2col_taps(xf, cf, ncr, c_, h_, w_, r_, s_, sh, sw, ph, pw, p_, q_, c_ * r_ * s_ * pq, pq)


@nb.njit(cache=True, nogil=True)
def _im2col_serial(x, r_, s_, sh, sw, ph, pw, p_, q_, cols, n_step, row_step):
    # as _im2col_parallel, on the calling thread, without the GIL, into a cols layout of the
    # caller's: row (n, crs) at n*n_step + crs*row_step. (N, CRS, PQ) is (CRS*PQ, PQ); the
    # chunk's samples side by side, (CRS, N*PQ), so one GEMM sums over all of them, (PQ, N*PQ)
    n_, c_, h_, w_ = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    for ncr in range(n_ * c_ * r_):
        _im2col_taps(xf, cf, ncr, c_, h_, w_, r_, s_, sh, sw, ph, pw, p_, q_, n_step, row_step)


@nb.njit(cache=True, parallel=True)
def _col2im_parallel(cols, r_, s_, sh, sw, ph, pw, p_, q_, x):
    # cols (N, C*R*S, P*Q) -> x (N, C, H, W), overlapping taps summed; one (n, c) plane per task
    n_, c_, h_, w_ = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    for nc in nb.prange(n_ * c_):
        _col2im_plane(cf, xf, nc, h_, w_, r_, s_, sh, sw, ph, pw, p_, q_)


@nb.njit(cache=True, nogil=True)
def _col2im_serial(cols, r_, s_, sh, sw, ph, pw, p_, q_, x):
    # as _col2im_parallel, on the calling thread, without the GIL
    n_, c_, h_, w_ = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    for nc in range(n_ * c_):
        _col2im_plane(cf, xf, nc, h_, w_, r_, s_, sh, sw, ph, pw, p_, q_)


@nb.njit(cache=True, nogil=True)
def _add_channel_bias(y, b):
    # y (N, K, L) += b (K,)
    n_, k_, l_ = y.shape
    yf = y.reshape(-1)
    for nk in range(n_ * k_):
        bias = b[nk % k_]
        start = np.uint64(nk * l_)
        for i in range(np.uint64(l_)):
            yf[start + i] += bias


# ---------------------------------------------------------------- padded planes (stride 1)
# With stride 1, the cols row of tap (c, r, s) is x[c, r:r+P, s:s+Q]: P runs of Q values,
# 10 at LeNet's conv2, so the generic im2col spends its time starting short copies and
# checking for padding. These paths copy a chunk's planes zero-padded first, then:
#
# * forward and weight gradient: _im2col_compact moves each run 8 cells at a time, as one
#   vector, into cols (C*R*S, m*P*Q), the chunk's m samples side by side, and each op is one
#   GEMM per chunk (the weight gradient sums over the chunk inside BLAS);
# * data gradient: over the whole padded width Wp. Output cell (p, q) sits at p*Wp + q of a
#   row of L = P*Wp cells, dy's rows are laid out so (zero in the Wp - Q extra cells), and
#   each row of dcols = w2.T @ dy's rows is added back to its plane from r*Wp + s as one run.
#   Compact, its GEMM took 0.85x the time, but col2im added runs of 10 at 5x the cost;
# * few output channels: the direct kernels (below), no cols at all.
#
# LeNet conv2 against full-width rows for all three ops (in-process A/B, AVX2): forward
# 0.79-0.85x, weight gradient 0.81x the time.
#
#     xp   (m, C, (Hp + 1) * Wp)   the zero-padded planes, one spare row: a full-width run
#                                  reads up to S - 2 cells past the padded plane
#     dcols (C*R*S, m*L)           dcols[(c, r, s), n*L : (n+1)*L] adds into
#                                  xp[n, c, r*Wp + s : r*Wp + s + L]


def _padded_planes(k, q, w, stride, padding) -> bool:
    """Whether a layer takes the padded-planes paths: stride 1, and few enough extra cells
    in a full-width row for K output channels (K * (Wp - Q) <= _ROWS_MAX_WASTE * Q)."""
    return tuple(stride) == (1, 1) and k * (w + 2 * padding[1] - q) <= _ROWS_MAX_WASTE * q


@nb.njit(cache=True, nogil=True)
def _pad_planes(x, ph, pw, xp):
    # x (m, C, H, W) -> xp (m, C, (H + 2ph + 1) * Wp), zero around
    m_, c_, h_, w_ = x.shape
    wp = w_ + 2 * pw
    for n in range(m_):
        for c in range(c_):
            plane = xp[n, c]
            plane[:] = 0.0
            for h in range(h_):
                d = np.uint64((h + ph) * wp + pw)
                for i in range(np.uint64(w_)):
                    plane[d + i] = x[n, c, h, i]


@nb.njit(cache=True, nogil=True)
def _crop_planes(xp, ph, pw, x):
    # xp (m, C, (H + 2ph + 1) * Wp) -> x (m, C, H, W), the padding dropped
    m_, c_, h_, w_ = x.shape
    wp = w_ + 2 * pw
    for n in range(m_):
        for c in range(c_):
            plane = xp[n, c]
            for h in range(h_):
                d = np.uint64((h + ph) * wp + pw)
                for i in range(np.uint64(w_)):
                    x[n, c, h, i] = plane[d + i]


@nb.njit(cache=True, inline="always")
def _copy8(src, i, dst, j):
    # dst[j:j+8] = src[i:i+8], the eight loads before the eight stores: LLVM then moves them as
    # one vector, which it would not for a loop (it cannot tell that the two do not overlap)
    a0, a1, a2, a3 = src[i], src[i + np.uint64(1)], src[i + np.uint64(2)], src[i + np.uint64(3)]
    a4, a5, a6, a7 = src[i + np.uint64(4)], src[i + np.uint64(5)], src[i + np.uint64(6)], src[i + np.uint64(7)]
    dst[j], dst[j + np.uint64(1)], dst[j + np.uint64(2)], dst[j + np.uint64(3)] = a0, a1, a2, a3
    dst[j + np.uint64(4)], dst[j + np.uint64(5)], dst[j + np.uint64(6)], dst[j + np.uint64(7)] = a4, a5, a6, a7


@nb.njit(cache=True, nogil=True)
def _im2col_compact(xf, plane_size, m_, c_, r_, s_, wp, p_, q_, cf):
    # the padded planes xf (m, C, plane_size), flat -> cols (C*R*S, m*P*Q), flat: row
    # (c*R + r)*S + s, sample n, cell p*Q + q = plane (n, c) at (p + r)*Wp + s + q. Each run
    # of Q goes 8 cells at a time, rounded up: the extra cells land where the next run starts,
    # and that run is written after it, since the loops walk cols in order. So both arrays
    # need 7 spare cells past their end. 4x faster than copying runs of 10 (LeNet conv2) cell
    # by cell
    pq = p_ * q_
    row_size = m_ * pq
    for c in range(c_):
        for r in range(r_):
            for s in range(s_):
                row = np.uint64(((c * r_ + r) * s_ + s) * row_size)
                for n in range(m_):
                    src = np.uint64((n * c_ + c) * plane_size + r * wp + s)
                    dst = row + np.uint64(n * pq)
                    for p in range(p_):
                        for j in range(0, q_, 8):
                            _copy8(xf, src + np.uint64(p * wp + j), cf, dst + np.uint64(p * q_ + j))


def _compact_buffers(chunk, c, plane, crs, pq):
    """A part's buffers for _compact_cols, chunk samples' worth: the padded planes and the
    cols, each with the 8 spare cells that _im2col_compact's runs overrun into."""
    return (np.empty(chunk * c * plane + 8, dtype=np.float32),
            np.empty(crs * chunk * pq + 8, dtype=np.float32))


def _compact_cols(x, padding, kernel, wp, plane, p, q, buffers):
    """x (m, C, H, W) -> cols (C*R*S, m*P*Q), the m samples side by side: x padded into the
    planes of `buffers` (from _compact_buffers), then _im2col_compact."""
    m, c = x.shape[:2]
    xf, cf = buffers
    _pad_planes(x, padding[0], padding[1], xf[:m * c * plane].reshape(m, c, plane))
    _im2col_compact(xf, plane, m, c, kernel[0], kernel[1], wp, p, q, cf)
    crs = c * kernel[0] * kernel[1]
    return cf[:crs * m * p * q].reshape(crs, m * p * q)


@nb.njit(cache=True, nogil=True)
def _col2im_rows(dcf, r_, s_, wp, l_, n_step, row_step, xp):
    # dcols (row (n, (c*R + r)*S + s) at n*n_step + row*row_step, L cells) -> xp
    # (m, C, (Hp + 1) * Wp): each row added to plane (n, c) from r*Wp + s
    m_, c_ = xp.shape[0], xp.shape[1]
    xf = xp.reshape(-1)
    plane_size = xp.shape[2]
    for n in range(m_):
        for c in range(c_):
            plane = np.uint64((n * c_ + c) * plane_size)
            for i in range(np.uint64(plane_size)):
                xf[plane + i] = 0.0
            for r in range(r_):
                for s in range(s_):
                    row = np.uint64(n * n_step + ((c * r_ + r) * s_ + s) * row_step)
                    start = plane + np.uint64(r * wp + s)
                    for i in range(np.uint64(l_)):
                        xf[start + i] += dcf[row + i]


@nb.njit(cache=True, nogil=True)
def _rows_to_planes(yf, n_step, k_step, b, has_bias, wp, y):
    # output rows (row (n, k) at n*n_step + k*k_step of the flat yf) -> y (m, K, P, Q)
    # (+ b[k]): the Q first cells of each of its P output rows of Wp
    m_, k_, p_, q_ = y.shape
    for n in range(m_):
        for k in range(k_):
            bias = b[k] if has_bias else np.float32(0.0)
            row = n * n_step + k * k_step
            for p in range(p_):
                start = np.uint64(row + p * wp)
                for i in range(np.uint64(q_)):
                    y[n, k, p, i] = yf[start + i] + bias


@nb.njit(cache=True, nogil=True)
def _planes_to_rows_transposed(dy, wp, dyt):
    # dy (m, K, P, Q) -> dyt (m, P*Wp, Kp >= K), zero in the Wp - Q extra cells of each row
    # and in the columns past K
    m_, k_, p_, q_ = dy.shape
    for n in range(m_):
        dyt[n] = 0.0
        for k in range(k_):
            for p in range(p_):
                for i in range(q_):
                    dyt[n, p * wp + i, k] = dy[n, k, p, i]


@nb.njit(cache=True, nogil=True)
def _planes_to_rows(dy, wp, l_, dyf, n_step, k_step):
    # dy (m, K, P, Q) -> rows of L = P*Wp (row (n, k) at n*n_step + k*k_step of the flat
    # dyf), zero in the Wp - Q extra cells of each output row
    m_, k_, p_, q_ = dy.shape
    for n in range(m_):
        for k in range(k_):
            row = np.uint64(n * n_step + k * k_step)
            for i in range(np.uint64(l_)):
                dyf[row + i] = 0.0
            for p in range(p_):
                start = row + np.uint64(p * wp)
                for i in range(np.uint64(q_)):
                    dyf[start + i] = dy[n, k, p, i]


# ---------------------------------------------------------------- direct (stride 1, padded planes)
# With few output channels (LeNet's conv1: 6) the GEMM above multiplies each cols value by
# K weights only, so it runs at the speed of writing and reading cols. These kernels read the
# padded planes in place instead: output row (n, k) is the sum over taps t = (c, r, s) of
# w[k, t] * the run of L = P*Wp cells of plane (n, c) from r*Wp + s, four taps a pass (the
# taps padded with zero-weight ones to a multiple of 4), the runs read from L1. The weight
# gradient is the same sum turned around: dw[k, t] = sum over the cells of dy's row (n, k)
# times that run. In-process A/B against the GEMM paths, batch 256, 2 threads: LeNet conv1
# forward 0.55-0.67x, weight gradient 0.46-0.53x; a CIFAR stem (3 -> 16, 3x3, 32x32)
# forward 0.82x, weight gradient 0.62x; LeNet conv2 forward 1.2x, weight gradient 1.0x
# (so they stay on the GEMM).
_TAPS_A_PASS = 4
# the forward pass (and the data gradient, a forward pass with C output channels) goes direct
# where K * Wp <= this * Q: its cost over the GEMM's grows with K, and with the Wp - Q extra
# cells of each full-width row that it computes and drops. LeNet conv1: 6 * 32 / 28 = 6.9,
# the CIFAR stem 16 * 34 / 32 = 17 (both faster direct); LeNet conv2: 16 * 14 / 10 = 22.4
_DIRECT_MAX_K_WIDTH = 18
# the weight gradient goes direct below this many taps C*R*S (LeNet conv1 25, the stem 27;
# LeNet conv2's 150 ran even)
_DIRECT_WEIGHT_MAX_TAPS = 64


def _direct_forward(k, q, wp) -> bool:
    """Whether a stride-1 forward pass to K channels of width Q, over padded width Wp, runs
    direct (K * Wp <= _DIRECT_MAX_K_WIDTH * Q)."""
    return k * wp <= _DIRECT_MAX_K_WIDTH * q


def _direct_data(c, w, q, kernel, padding) -> bool:
    """Whether a stride-1 layer's data gradient runs direct: as the forward pass of dy
    (width Q) padded by R-1 - padding, to C channels of width W, where that padding is no
    wider than the layer's (wider, its zeros cost more multiply-adds than the GEMM's: LeNet
    conv2's padding 0 made it 1.7x slower)."""
    return (all(r - 1 - p in range(0, p + 1) for r, p in zip(kernel, padding))
            and _direct_forward(c, w, q + 2 * (kernel[1] - 1 - padding[1])))


def _direct_weight(c, kernel) -> bool:
    """Whether a padded-planes layer's weight gradient runs direct."""
    return c * kernel[0] * kernel[1] < _DIRECT_WEIGHT_MAX_TAPS


def _taps(c, r, s, plane, wp):
    """Tap t = (c*R + r)*S + s's offset into a sample's padded planes, c*plane + r*Wp + s,
    for C*R*S taps padded to a multiple of _TAPS_A_PASS (the extra ones at offset 0)."""
    t = c * r * s
    offsets = np.zeros(-(-t // _TAPS_A_PASS) * _TAPS_A_PASS, dtype=np.int64)
    offsets[:t] = (np.arange(c)[:, None, None] * plane + np.arange(r)[None, :, None] * wp
                   + np.arange(s)[None, None, :]).reshape(-1)
    return offsets


@nb.njit(cache=True, nogil=True, fastmath={"contract"})
def _direct_rows_forward(xp, wt, offsets, l_, yr):
    # xp (m, C, plane), wt (K, T) the tap weights (zero past C*R*S), K even -> yr (m, K, L):
    # yr[n, k, i] = sum_t wt[k, t] * xp[n].flat[offsets[t] + i]. Two output channels and four
    # taps a pass over the rows, so each run read serves both: 0.73x the time of one channel
    # a pass at LeNet conv1
    m_ = xp.shape[0]
    size = xp.shape[1] * xp.shape[2]
    k_, t_ = wt.shape
    xf, yf = xp.reshape(-1), yr.reshape(-1)
    n_cells = np.uint64(l_)
    for n in range(m_):
        base = np.uint64(n * size)
        for k in range(0, k_, 2):
            y = np.uint64((n * k_ + k) * l_)
            z = y + n_cells
            for i in range(n_cells + n_cells):
                yf[y + i] = 0.0
            for t in range(0, t_, 4):
                a0, a1, a2, a3 = wt[k, t], wt[k, t + 1], wt[k, t + 2], wt[k, t + 3]
                b0, b1, b2, b3 = wt[k + 1, t], wt[k + 1, t + 1], wt[k + 1, t + 2], wt[k + 1, t + 3]
                o0, o1 = base + np.uint64(offsets[t]), base + np.uint64(offsets[t + 1])
                o2, o3 = base + np.uint64(offsets[t + 2]), base + np.uint64(offsets[t + 3])
                for i in range(n_cells):
                    x0, x1, x2, x3 = xf[o0 + i], xf[o1 + i], xf[o2 + i], xf[o3 + i]
                    yf[y + i] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                    yf[z + i] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3


@nb.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _direct_rows_weight(xp, dyr, offsets, l_, total):
    # total (K, T) float64 += sum over the chunk's samples n and cells i of
    # dyr[n, k, i] * xp[n].flat[offsets[t] + i], K even: two output channels and four taps a
    # pass, so each run read serves 2 channels (1.1-1.2x faster than one). One sample's sum
    # over its row is float32, reassociated so that LLVM vectorizes it, then added in float64
    m_ = xp.shape[0]
    size = xp.shape[1] * xp.shape[2]
    k_, t_ = total.shape
    xf, df = xp.reshape(-1), dyr.reshape(-1)
    n_cells = np.uint64(l_)
    for n in range(m_):
        base = np.uint64(n * size)
        for k in range(0, k_, 2):
            d = np.uint64((n * k_ + k) * l_)
            e = d + n_cells
            for t in range(0, t_, 4):
                o0, o1 = base + np.uint64(offsets[t]), base + np.uint64(offsets[t + 1])
                o2, o3 = base + np.uint64(offsets[t + 2]), base + np.uint64(offsets[t + 3])
                s0 = s1 = s2 = s3 = u0 = u1 = u2 = u3 = np.float32(0.0)
                for i in range(n_cells):
                    g, h = df[d + i], df[e + i]
                    x0, x1, x2, x3 = xf[o0 + i], xf[o1 + i], xf[o2 + i], xf[o3 + i]
                    s0 += g * x0
                    s1 += g * x1
                    s2 += g * x2
                    s3 += g * x3
                    u0 += h * x0
                    u1 += h * x1
                    u2 += h * x2
                    u3 += h * x3
                total[k, t] += s0
                total[k, t + 1] += s1
                total[k, t + 2] += s2
                total[k, t + 3] += s3
                total[k + 1, t] += u0
                total[k + 1, t + 1] += u1
                total[k + 1, t + 2] += u2
                total[k + 1, t + 3] += u3


# ---------------------------------------------------------------- strided layers as 3x3 stride 1
# A stride-(sh, sw) convolution is a stride-1 one on the input cut into sh x sw blocks, each
# block's cells made channels (space to depth): C*sh*sw channels, a kernel of
# ceil(R/sh) x ceil(S/sw) blocks (the filter zero-padded to whole blocks). Where that kernel
# is 3x3 (AlexNet's 11x11/4 first layer: 48 channels, 3x3), Winograd takes it:
# 48 * 16 / 4 = 192 multiply-adds per output instead of 3 * 121 = 363, for a copy of the
# input: AlexNet conv1's forward took 0.78x, its weight gradient 0.94x the time of im2col +
# GEMM (its data gradient, which training never asks of a first layer, gained nothing and
# stays on im2col). The weight gradient maps back through the same reshuffle.
#
#     xs (N, C*sh*sw, Hb, Wb)   xs[n, (c*sh + i)*sw + j, hb, wb] = x padded [n, c, hb*sh + i, wb*sw + j]
#     ws (K, C*sh*sw, 3, 3)     ws[k, (c*sh + i)*sw + j, rb, sb] = w[k, c, rb*sh + i, sb*sw + j] (0 past R, S)
#
# with Hb = P + 2, Wb = Q + 2 blocks: just what a 3x3 stride-1 convolution to (P, Q) reads.


def _as_stride_1(c, k, kernel, stride) -> bool:
    """Whether a strided layer runs as a 3x3 stride-1 convolution on its space-to-depth
    input, and that one by Winograd."""
    (r, s), (sh, sw) = kernel, stride
    return ((sh, sw) != (1, 1) and -(-r // sh) == 3 and -(-s // sw) == 3
            and winograd.applies(c * sh * sw, k, (3, 3), (1, 1), (0, 0)))


@nb.njit(cache=True, nogil=True)
def _to_blocks_kernel(x, sh, sw, ph, pw, xs):
    # x (m, C, H, W) -> xs (m, C*sh*sw, Hb, Wb): xs[n, (c*sh + i)*sw + j, hb, wb] =
    # x[n, c, hb*sh + i - ph, wb*sw + j - pw], 0 outside x
    m_, c_, h_, w_ = x.shape
    hb_, wb_ = xs.shape[2], xs.shape[3]
    for n in range(m_):
        for c in range(c_):
            for i in range(sh):
                for j in range(sw):
                    plane = xs[n, (c * sh + i) * sw + j]
                    for hb in range(hb_):
                        h = hb * sh + i - ph
                        for wb in range(wb_):
                            col = wb * sw + j - pw
                            inside = 0 <= h < h_ and 0 <= col < w_
                            plane[hb, wb] = x[n, c, h, col] if inside else np.float32(0.0)


def _to_blocks(x, stride, padding, p, q):
    """x (N, C, H, W) -> xs (N, C*sh*sw, P + 2, Q + 2), its padded cells cut into blocks."""
    n, c = x.shape[:2]
    xs = np.empty((n, c * stride[0] * stride[1], p + 2, q + 2), dtype=np.float32)
    blas.run_parts(lambda n0, n1: _to_blocks_kernel(x[n0:n1], *stride, *padding, xs[n0:n1]),
                   blas.bounds(n, blas.parts(n, xs.size)))
    return xs


def _filters_to_blocks(w, stride):
    """w (K, C, R, S) -> ws (K, C*sh*sw, 3, 3), zero-padded to whole blocks."""
    k, c, r, s = w.shape
    sh, sw = stride
    wp = np.zeros((k, c, 3 * sh, 3 * sw), dtype=np.float32)
    wp[:, :, :r, :s] = w
    ws = wp.reshape(k, c, 3, sh, 3, sw).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(ws).reshape(k, c * sh * sw, 3, 3)


# ---------------------------------------------------------------- public ops


def im2col(x, kernel, stride, padding, out=None):
    """x (N, C, H, W) float32 -> cols (N, C*R*S, P*Q); rows ordered c, then r, then s."""
    n, c, h, w = x.shape
    p, q = window_output_hw(h, w, kernel, stride, padding)
    cols = _empty((n, c * kernel[0] * kernel[1], p * q), out)
    _im2col_parallel(x, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], p, q, cols)
    return cols


def col2im(cols, x_shape, kernel, stride, padding, out=None):
    """cols (N, C*R*S, P*Q) float32 -> x (N, C, H, W), overlapping contributions summed."""
    n, c, h, w = x_shape
    p, q = window_output_hw(h, w, kernel, stride, padding)
    x = _empty((n, c, h, w), out)
    _col2im_parallel(cols, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], p, q, x)
    return x


def gemm(a, b, trans_a=False, trans_b=False, out=None):
    """op(a) @ op(b) for 2-D float32 arrays, by BLAS (transposes are free: BLAS reads them in place)."""
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    if out is None:
        return np.dot(a, b)
    np.dot(a, b, out=out)
    return out


def _split_batch(work, n, per_sample_macs, per_sample_bytes, min_chunk=1):
    """Run work(n0, n1, chunk) over up to _MAX_PARTS parts of consecutive samples of range(n),
    on engine.cpu.blas's threads; return the results in order. A part walks its samples in
    chunks of `chunk` (the last may be shorter): what fits _CHUNK_BYTES, but at least
    min_chunk samples. The parts follow from the batch alone, never from the thread count."""
    part = -(-n // _MAX_PARTS)
    chunk = max(1, min(part, max(min_chunk, _CHUNK_BYTES // max(1, per_sample_bytes))))
    bounds = list(range(0, n, part)) + [n]
    if n * per_sample_macs < _SPLIT_MIN_MACS:  # too little to wake a thread for
        return [work(a, b, chunk) for a, b in zip(bounds, bounds[1:])]
    return blas.run_parts(lambda n0, n1: work(n0, n1, chunk), bounds,
                          blas_threads=n == 1 and per_sample_macs > _BLAS_SERIAL_MACS)


def _padded_planes_forward(x, w, b, padding, y, direct):
    """y (N, K, P, Q) = the stride-1 convolution of x with w (+ b) from padded planes: by
    the direct kernel, or by the compact im2col and one GEMM a chunk."""
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    crs = c * r * s
    wp = wd + 2 * padding[1]
    plane, lr = (h + 2 * padding[0] + 1) * wp, y.shape[2] * wp
    bias = np.zeros(1, dtype=np.float32) if b is None else b
    if direct:
        offsets = _taps(c, r, s, plane, wp)
        k2 = k + k % 2                                           # an even K: a zero filter added
        wt = np.zeros((k2, offsets.size), dtype=np.float32)
        wt[:k, :crs] = w.reshape(k, crs)

        def rows(n0, n1, chunk):
            xp = np.empty((chunk, c, plane), dtype=np.float32)
            yr = np.empty(chunk * k2 * lr, dtype=np.float32)
            for a in range(n0, n1, chunk):
                m = min(n1, a + chunk) - a
                _pad_planes(x[a:a + m], padding[0], padding[1], xp[:m])
                _direct_rows_forward(xp[:m], wt, offsets, lr, yr[:m * k2 * lr])   # (m, K2, L)
                _rows_to_planes(yr, k2 * lr, lr, bias, b is not None, wp, y[a:a + m])

        _split_batch(rows, n, k * crs * lr, (c * plane + k2 * lr) * 4)
        return y
    w2 = w.reshape(k, crs)
    p, q = y.shape[2], y.shape[3]
    pq = p * q

    def compact(n0, n1, chunk):
        buffers = _compact_buffers(chunk, c, plane, crs, pq)
        yr = np.empty(k * chunk * pq, dtype=np.float32)
        for a in range(n0, n1, chunk):
            m = min(n1, a + chunk) - a
            cols = _compact_cols(x[a:a + m], padding, (r, s), wp, plane, p, q, buffers)  # (CRS, m*PQ)
            np.matmul(w2, cols, out=yr[:k * m * pq].reshape(k, m * pq))  # (K, CRS) @ (CRS, m*PQ)
            _rows_to_planes(yr, pq, m * pq, bias, b is not None, q, y[a:a + m])

    _split_batch(compact, n, k * crs * pq, crs * pq * 4)
    return y


def conv2d_forward(x, w, b, stride, padding, out=None):
    """x (N, C, H, W), w (K, C, R, S), b (K,) or None -> y (N, K, P, Q), float32."""
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    crs = c * r * s
    p, q = window_output_hw(h, wd, (r, s), stride, padding)
    y = _empty((n, k, p, q), out)
    if winograd.applies(c, k, (r, s), stride, padding):
        return winograd.conv2d_forward(x, w, b, padding, y)
    if _as_stride_1(c, k, (r, s), stride):
        xs = _to_blocks(x, stride, padding, p, q)
        return winograd.conv2d_forward(xs, _filters_to_blocks(w, stride), b, (0, 0), y)
    if _padded_planes(k, q, wd, stride, padding):
        return _padded_planes_forward(x, w, b, padding, y, direct=_direct_forward(k, q, wd + 2 * padding[1]))
    w2 = w.reshape(k, crs)
    y3 = y.reshape(n, k, p * q)                              # a view: matmul writes straight into y

    def work(n0, n1, chunk):
        cols = np.empty((chunk, crs, p * q), dtype=np.float32)
        for a in range(n0, n1, chunk):
            e = min(n1, a + chunk)
            _im2col_serial(x[a:e], r, s, stride[0], stride[1], padding[0], padding[1], p, q, cols[:e - a],
                           crs * p * q, p * q)
            np.matmul(w2, cols[:e - a], out=y3[a:e])         # (K, CRS) @ (m, CRS, PQ) -> (m, K, PQ)
            if b is not None:
                _add_channel_bias(y3[a:e], b)

    _split_batch(work, n, k * crs * p * q, crs * p * q * 4)
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, out=None):
    """dy (N, K, P, Q), w (K, C, R, S) -> dx (N, C, H, W), float32."""
    n, k, p, q = dy.shape
    _, c, r, s = w.shape
    crs = c * r * s
    dx = _empty(tuple(x_shape), out)
    if winograd.applies(c, k, (r, s), stride, padding):
        return winograd.conv2d_backward_data(dy, w, x_shape, padding, dx)
    h, wd = x_shape[2], x_shape[3]
    if tuple(stride) == (1, 1) and _direct_data(c, wd, q, (r, s), padding):
        # dx is the forward convolution of dy, padded by R-1 - padding, with the filters
        # flipped and their channels swapped
        flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        return _padded_planes_forward(dy, flipped, None, (r - 1 - padding[0], s - 1 - padding[1]), dx, direct=True)
    w2t = w.reshape(k, crs).T                                # (CRS, K): BLAS reads it transposed
    dy3 = dy.reshape(n, k, p * q)
    if _padded_planes(k, q, wd, stride, padding):
        wp, lr = wd + 2 * padding[1], p * (wd + 2 * padding[1])

        def rows(n0, n1, chunk):
            dyr = np.empty(k * chunk * lr, dtype=np.float32)
            dcols = np.empty(crs * chunk * lr, dtype=np.float32)
            xp = np.empty((chunk, c, (h + 2 * padding[0] + 1) * wp), dtype=np.float32)
            for a in range(n0, n1, chunk):
                m = min(n1, a + chunk) - a
                _planes_to_rows(dy[a:a + m], wp, lr, dyr, lr, m * lr)     # (K, m*L)
                np.matmul(w2t, dyr[:k * m * lr].reshape(k, m * lr),
                          out=dcols[:crs * m * lr].reshape(crs, m * lr))  # (CRS, K) @ (K, m*L)
                _col2im_rows(dcols, r, s, wp, lr, lr, m * lr, xp[:m])
                _crop_planes(xp[:m], padding[0], padding[1], dx[a:a + m])

        _split_batch(rows, n, k * crs * lr, crs * lr * 4)
        return dx

    def work(n0, n1, chunk):
        dcols = np.empty((chunk, crs, p * q), dtype=np.float32)
        for a in range(n0, n1, chunk):
            e = min(n1, a + chunk)
            np.matmul(w2t, dy3[a:e], out=dcols[:e - a])      # (CRS, K) @ (m, K, PQ) -> (m, CRS, PQ)
            _col2im_serial(dcols[:e - a], r, s, stride[0], stride[1], padding[0], padding[1], p, q, dx[a:e])

    _split_batch(work, n, k * crs * p * q, crs * p * q * 4)
    return dx


def conv2d_backward_weight(dy, x, w_shape, stride, padding, out=None):
    """dy (N, K, P, Q), x (N, C, H, W) -> dw (K, C, R, S), float32."""
    n, k, p, q = dy.shape
    _, c, r, s = w_shape
    crs, pq = c * r * s, p * q
    if winograd.applies_to_weight_gradient(c, k, (r, s), stride, padding):
        return winograd.conv2d_backward_weight(dy, x, w_shape, padding, _empty(tuple(w_shape), out))
    if _as_stride_1(c, k, (r, s), stride):
        sh, sw = stride
        xs = _to_blocks(x, stride, padding, p, q)
        dws = winograd.conv2d_backward_weight(dy, xs, (k, xs.shape[1], 3, 3), (0, 0),
                                              np.empty((k, xs.shape[1], 3, 3), dtype=np.float32))
        dw = _empty(tuple(w_shape), out)
        # the blocks' filter cells back in place (the inverse of _filters_to_blocks), the zero
        # padding dropped
        padded = dws.reshape(k, c, sh, sw, 3, 3).transpose(0, 1, 4, 2, 5, 3).reshape(k, c, 3 * sh, 3 * sw)
        dw[...] = padded[:, :, :r, :s]
        return dw
    dy3 = dy.reshape(n, k, pq)
    # Two ways to sum over the batch, by where one sample's product (CRS, K) lives. Small
    # (LeNet: <= 10 KB, in L1): a product per sample, summed in float64. Large (AlexNet's
    # 13x13 layers: 2.6 MB, past L2): that sum runs from memory and took as long as the
    # GEMMs, so the chunk's samples are set side by side, (CRS, m*PQ), and one GEMM sums
    # over all of them, the chunk made deep enough (m*PQ >= _WIDE_DEPTH) to keep BLAS busy.
    wide = crs * k * 4 > _WIDE_MIN_BYTES

    def per_sample(n0, n1, chunk):
        cols = np.empty((chunk, crs, pq), dtype=np.float32)
        total = np.zeros((crs, k), dtype=np.float64)            # dw transposed
        for a in range(n0, n1, chunk):
            e = min(n1, a + chunk)
            _im2col_serial(x[a:e], r, s, stride[0], stride[1], padding[0], padding[1], p, q, cols[:e - a],
                           crs * pq, pq)
            # (m, CRS, PQ) @ (m, PQ, K) -> (m, CRS, K), the samples summed in order in float64;
            # this orientation ran 1.5x faster than dy[n] @ cols[n].T at LeNet conv2
            total += np.matmul(cols[:e - a], dy3[a:e].transpose(0, 2, 1)).sum(axis=0, dtype=np.float64)
        return total

    wd = x.shape[3]
    wp, lr = wd + 2 * padding[1], p * (wd + 2 * padding[1])
    plane = (x.shape[2] + 2 * padding[0] + 1) * wp

    def side_by_side(n0, n1, chunk):
        total = np.zeros((crs, k), dtype=np.float32)           # this part's sum, in place
        stride_1 = tuple(stride) == (1, 1)
        if stride_1:  # the planes padded, then the compact im2col: 0.4x the time at AlexNet conv2
            buffers = _compact_buffers(chunk, c, plane, crs, pq)
        for a in range(n0, n1, chunk):
            e = min(n1, a + chunk)
            if stride_1:
                cols = _compact_cols(x[a:e], padding, (r, s), wp, plane, p, q, buffers)
            else:
                cols = np.empty((crs, (e - a) * pq), dtype=np.float32)
                _im2col_serial(x[a:e], r, s, stride[0], stride[1], padding[0], padding[1], p, q, cols,
                               pq, (e - a) * pq)
            dyw = np.ascontiguousarray(dy3[a:e].transpose(1, 0, 2)).reshape(k, (e - a) * pq)
            total += np.dot(cols, dyw.T)                        # (CRS, m*PQ) @ (m*PQ, K) -> (CRS, K)
        return total

    # dy in the GEMM as a transposed view, or written out transposed: LeNet conv2's products
    # (CRS 150) ran 1.7x faster on the copy, which at CRS 25-27 (LeNet conv1, a ResNet stem)
    # cost more than it saved (1.5x the op's time)
    copy_transposed = crs >= 64
    # dy's K rows padded with zero rows to a multiple of 4 (the extra columns of the product
    # are zero and dropped): OpenBLAS's Haswell kernels ran (25, m*L) @ (m*L, N) at N = 6
    # (LeNet conv1) in 0.31 ms and at N = 8 in 0.18 ms; N = 4, 8, 12, 16 ran fast, 5-7 and
    # 9-11 as slow as the next multiple of 4 up
    kp = -(-k // 4) * 4

    def compact(n0, n1, chunk):
        buffers = _compact_buffers(chunk, c, plane, crs, pq)
        dyr = np.empty(chunk * pq * kp, dtype=np.float32)
        total = np.zeros((crs, k), dtype=np.float64)            # dw transposed
        for a in range(n0, n1, chunk):
            m = min(n1, a + chunk) - a
            cols = _compact_cols(x[a:a + m], padding, (r, s), wp, plane, p, q, buffers)  # (CRS, m*PQ)
            if copy_transposed:
                dyt = dyr[:m * pq * kp].reshape(m, pq, kp)
                _planes_to_rows_transposed(dy[a:a + m], q, dyt)     # columns K.. zeroed too
                dyt = dyt.reshape(m * pq, kp)
            else:
                _planes_to_rows(dy[a:a + m], q, pq, dyr, pq, m * pq)  # (Kp, m*PQ), K rows written
                dyr[k * m * pq:kp * m * pq] = 0.0                # the padding rows
                dyt = dyr[:kp * m * pq].reshape(kp, m * pq).T
            # (CRS, m*PQ) @ (m*PQ, Kp) -> (CRS, Kp): one GEMM sums over the chunk's samples,
            # the chunks added in order in float64
            total += np.dot(cols, dyt)[:, :k]
        return total

    def direct(n0, n1, chunk):
        k2 = k + k % 2                                           # dy's rows padded to an even K
        xp = np.empty((chunk, c, plane), dtype=np.float32)
        dyr = np.zeros((chunk, k2, lr), dtype=np.float32)        # the padding row stays zero
        total = np.zeros((k2, offsets.size), dtype=np.float64)
        for a in range(n0, n1, chunk):
            m = min(n1, a + chunk) - a
            _pad_planes(x[a:a + m], padding[0], padding[1], xp[:m])
            _planes_to_rows(dy[a:a + m], wp, lr, dyr.reshape(-1), k2 * lr, lr)   # (m, K2, L)
            _direct_rows_weight(xp[:m], dyr[:m], offsets, lr, total)
        return total[:k, :crs].T                                 # (CRS, K), as the others

    if wide:
        parts = _split_batch(side_by_side, n, k * crs * pq, crs * pq * 4, min_chunk=-(-_WIDE_DEPTH // pq))
    elif _padded_planes(k, q, wd, stride, padding) and _direct_weight(c, (r, s)):
        offsets = _taps(c, r, s, plane, wp)                     # read by direct()
        parts = _split_batch(direct, n, k * crs * lr, (c * plane + k * lr) * 4)
    elif _padded_planes(k, q, wd, stride, padding):
        parts = _split_batch(compact, n, k * crs * pq, crs * pq * 4)
    else:
        parts = _split_batch(per_sample, n, k * crs * pq, crs * pq * 4)
    total = parts[0].astype(np.float64)                          # the parts added in order in float64
    for part in parts[1:]:
        total += part
    dw = _empty(tuple(w_shape), out)
    dw.reshape(k, crs)[...] = total.T
    return dw
