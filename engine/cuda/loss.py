"""CUDA glue for the losses (kernels/softmax_xent.cu). Each loss is a 0-d device array
written by the kernels -- rows or partial sums first, then one block for the mean, on one
stream -- so a training step never waits on the GPU."""
from __future__ import annotations

import numbers

import numpy as np

from engine.cuda.common import cupy, output, outputs
from engine.cuda.launch import BLOCK, Kernel, cdiv, grid_1d

SOFTMAX_XENT = Kernel("softmax_xent.cu", "softmax_xent_forward_kernel",
                      "const float* logits, const long long* labels, float* dlogits, float* row_loss, int rows, "
                      "int classes", grid=lambda a: cdiv(a.rows, BLOCK // 32))  # one warp per row
MEAN = Kernel("softmax_xent.cu", "mean_reduce_kernel", "const float* values, float* out, i64 count, float divisor",
              grid=lambda a: 1)
MSE_PARTIAL = Kernel("softmax_xent.cu", "mse_partial_forward_kernel",
                     "const float* pred, const float* target, float* partial, i64 n",
                     grid=lambda a: mse_partial_blocks(a.n))
MSE_BACKWARD = Kernel("softmax_xent.cu", "mse_backward_kernel",
                      "const float* pred, const float* target, const float* dloss, float* dpred, float scale, i64 n",
                      grid=lambda a: grid_1d(a.n))


SOFTMAX_FORWARD, LOG_SOFTMAX_FORWARD = (
    Kernel("softmax_xent.cu", f"{name}_forward_kernel", "const float* x, float* y, int rows, int classes",
           grid=lambda a: cdiv(a.rows, BLOCK // 32)) for name in ("softmax", "log_softmax"))  # one warp per row
SOFTMAX_BACKWARD, LOG_SOFTMAX_BACKWARD = (
    Kernel("softmax_xent.cu", f"{name}_backward_kernel",
           "const float* dy, const float* y, float* dx, int rows, int classes",
           grid=lambda a: cdiv(a.rows, BLOCK // 32)) for name in ("softmax", "log_softmax"))


def mse_partial_blocks(n: int) -> int:
    """Blocks of the first MSE reduction stage: a function of n only, so the summation order
    (and the loss, bit for bit) is the same on every run."""
    return max(1, min(cdiv(n, BLOCK * 4), 256))


def softmax_cross_entropy_forward(L, logits, labels, out=None):
    """(loss 0-d, dlogits = (softmax - onehot) / N) in one fused pass over the logits."""
    n, k = logits.shape
    # the kernel reads int64 labels; one outside [0, K) gives a NaN loss, never a bad read
    labels = cupy().ascontiguousarray(labels, dtype=np.int64)
    loss, dlogits = outputs(out, (((), np.float32), ((n, k), np.float32)))
    row_loss = cupy().empty((n,), dtype=np.float32)
    L.launch(SOFTMAX_XENT, logits, labels, dlogits, row_loss, n, k)
    L.launch(MEAN, row_loss, loss, n, float(n))
    return loss, dlogits


def mse_loss_forward(L, pred, target, out=None):
    loss = output(out, ())
    partial = cupy().empty((mse_partial_blocks(pred.size),), dtype=np.float32)
    L.launch(MSE_PARTIAL, pred, target, partial, pred.size)
    L.launch(MEAN, partial, loss, partial.size, float(pred.size))
    return loss


def mse_loss_backward(L, pred, target, dloss, out=None):
    """dpred = 2 (pred - target) / numel * dloss; dloss a number or a one-element array."""
    cp = cupy()
    if isinstance(dloss, np.ndarray):  # a host scalar array
        dloss = dloss.reshape(()).item()
    if isinstance(dloss, numbers.Real):
        dloss = cp.full((), dloss, dtype=np.float32)
    dloss = cp.ascontiguousarray(dloss, dtype=np.float32)
    dpred = output(out, pred.shape)
    L.launch(MSE_BACKWARD, pred, target, dloss, dpred, 2.0 / pred.size, pred.size)
    return dpred


def _rows(L, kernel, x, out):
    y = output(out, x.shape)
    L.launch(kernel, x, y, *x.shape)
    return y


def _rows_backward(L, kernel, dy, y, out):
    dx = output(out, dy.shape)
    L.launch(kernel, dy, y, dx, *dy.shape)
    return dx


def softmax_forward(L, x, out=None):
    return _rows(L, SOFTMAX_FORWARD, x, out)


def log_softmax_forward(L, x, out=None):
    return _rows(L, LOG_SOFTMAX_FORWARD, x, out)


def softmax_backward(L, dy, y, out=None):
    return _rows_backward(L, SOFTMAX_BACKWARD, dy, y, out)


def log_softmax_backward(L, dy, y, out=None):
    return _rows_backward(L, LOG_SOFTMAX_BACKWARD, dy, y, out)
