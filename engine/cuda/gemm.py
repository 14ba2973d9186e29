"""Matrix products for the conv and linear glue: the hand-written SGEMM of kernels/gemm.cu.

matmul(L, a, b, trans_a, trans_b, out, bias, bias_axis, relu) computes
    out = epilogue(op(a) @ op(b))
for a, b 2-D, or 3-D (batch, rows, cols) with a 2-D operand shared by the batch; out 3-D
(batch, M, N), or 2-D where a batched product is summed over the batch (the conv weight
gradient). bias_axis 0 adds a bias per row of out, 1 per column; then ReLU if relu.
ENGINE_GEMM=cublas runs every product through cupy.matmul (cuBLAS) instead, to compare.
"""
from __future__ import annotations

import os

import numpy as np

from engine.cuda.common import cupy
from engine.cuda.launch import Kernel, cdiv, grid_1d

GEMM_PARAMS = ("int M, int N, int K, const float* A, int lda, i64 stride_a, const float* B, int ldb, i64 stride_b, "
               "float* C, int ldc, i64 stride_c, int batch, int batches_per_output, const float* bias, "
               "int bias_axis, int relu, int vec")


def _gemm_kernel(trans_a: bool, trans_b: bool, tile: int) -> Kernel:
    name = f"gemm_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}_{tile}x{tile}_kernel"
    return Kernel("gemm.cu", name, GEMM_PARAMS,
                  grid=lambda a: (cdiv(a.N, tile), cdiv(a.M, tile), cdiv(a.batch, a.batches_per_output)))


# (trans_a, trans_b, tile) -> the kernel: BM = BN = tile (gemm.cu's versions)
GEMM = {(ta, tb, tile): _gemm_kernel(ta, tb, tile) for ta in (False, True) for tb in (False, True)
        for tile in (64, 128)}
REDUCE_SPLITS = Kernel("gemm.cu", "gemm_reduce_splits_kernel", "const float* partial, float* out, int splits, i64 n",
                       grid=lambda a: grid_1d(a.n))


def gemm_backend() -> str:
    """'ours' (the hand-written SGEMM, default) or 'cublas' (cupy.matmul), from ENGINE_GEMM."""
    value = os.environ.get("ENGINE_GEMM", "ours").lower()
    if value not in ("ours", "cublas"):
        raise ValueError(f"ENGINE_GEMM: expected 'ours' or 'cublas', got {value!r}")
    return value


def tile_size(m: int, n: int, outputs: int) -> int:
    """128x128 tiles when there are enough of them to fill the GPU, else 64x64 (four times
    the blocks). Every output is summed in the same k order either way: the choice never
    changes the result."""
    return 128 if cdiv(m, 128) * cdiv(n, 128) * outputs >= 128 else 64


def _aligned(x, ld: int, stride: int) -> bool:
    """16-byte loads are safe: the base 16-byte aligned, every row and batch start too."""
    return x.data.ptr % 16 == 0 and ld % 4 == 0 and stride % 4 == 0


def launch_gemm(L, a, b, c, trans_a: bool, trans_b: bool, bias=None, bias_axis: int = -1, relu: bool = False):
    """c[z] = epilogue(sum over the batches of output z of op(a[t]) @ op(b[t]))."""
    m, k = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
    n = b.shape[-2] if trans_b else b.shape[-1]
    batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
    outputs = c.shape[0] if c.ndim == 3 else 1
    per_output = cdiv(batch, outputs)
    assert cdiv(batch, per_output) == outputs and (bias is None) == (bias_axis == -1)
    stride_a = a.shape[-2] * a.shape[-1] if a.ndim == 3 else 0
    stride_b = b.shape[-2] * b.shape[-1] if b.ndim == 3 else 0
    vec = (_aligned(a, a.shape[-1], stride_a) | _aligned(b, b.shape[-1], stride_b) << 1
           | _aligned(c, n, m * n) << 2)
    L.launch(GEMM[trans_a, trans_b, tile_size(m, n, outputs)], m, n, k, a, a.shape[-1], stride_a, b, b.shape[-1],
             stride_b, c, n, m * n, batch, per_output, bias, bias_axis, int(relu), vec)


def matmul(L, a, b, trans_a, trans_b, out, bias=None, bias_axis=-1, relu=False):
    """out = epilogue(op(a) @ op(b)); see the module docstring."""
    if bias is None:
        bias_axis = -1
    if gemm_backend() == "cublas":
        return _matmul_cublas(a, b, trans_a, trans_b, out, bias, bias_axis, relu)
    batched = a.ndim == 3 or b.ndim == 3
    if out.ndim == 3 or not batched:
        launch_gemm(L, a, b, out, trans_a, trans_b, bias, bias_axis, relu)
        return out
    # sum over the batch: split it into groups, one partial output each (split-K over n),
    # added by gemm_reduce_splits in a fixed order: deterministic, and enough blocks to fill
    # the GPU even when the output is a handful of tiles
    assert bias is None and not relu, "no epilogue on a split-K product"
    batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
    m, n = out.shape
    splits = min(batch, max(1, 256 // (cdiv(m, 64) * cdiv(n, 64))))
    splits = cdiv(batch, cdiv(batch, splits))  # every group non-empty
    if splits == 1:
        launch_gemm(L, a, b, out, trans_a, trans_b)
        return out
    partial = cupy().empty((splits, m, n), dtype=np.float32)
    launch_gemm(L, a, b, partial, trans_a, trans_b)
    L.launch(REDUCE_SPLITS, partial, out, splits, out.size)
    return out


def _matmul_cublas(a, b, trans_a, trans_b, out, bias, bias_axis, relu):
    cp = cupy()
    op_a = a.swapaxes(-1, -2) if trans_a else a
    op_b = b.swapaxes(-1, -2) if trans_b else b
    if out.ndim == 2 and (a.ndim == 3 or b.ndim == 3):
        out[...] = cp.tensordot(op_a, op_b, axes=([0, 2], [0, 1]))  # sum_n op(a)[n] @ op(b)[n]
    else:
        cp.matmul(op_a, op_b, out=out)
    if bias is not None:
        out += bias.reshape(-1, 1) if bias_axis == 0 else bias
    if relu:
        cp.maximum(out, 0, out=out)
    return out
