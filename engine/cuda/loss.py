"""CUDA glue for the losses (kernels/softmax_xent.cu). Each loss is a 0-d device array
written by the kernels: no host synchronisation inside a training step."""
from __future__ import annotations

import numbers

import numpy as np

from engine.cuda import common as c


def softmax_cross_entropy_forward(L, logits, labels, out=None):
    """(loss 0-d, dlogits = (softmax - onehot) / N) in one fused pass over the logits."""
    op = "softmax_cross_entropy_forward"
    cp = c.cupy()
    logits = c.array(op, "logits", logits, ndim=2)
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(f"{op}: expected non-empty logits, got shape {logits.shape}")
    if not isinstance(labels, cp.ndarray):
        raise TypeError(f"{op}: expected labels to be a CuPy array, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: expected integer labels, got {labels.dtype.name}")
    if labels.shape != (n,):
        raise ValueError(f"{op}: expected labels of shape ({n},), got {labels.shape}")
    # the kernel reads int64; a label outside [0, K) gives a NaN loss, never a bad read
    labels = c.array(op, "labels", cp.ascontiguousarray(labels, dtype=np.int64), dtype=np.int64)
    loss, dlogits = c.outputs(op, out, (((), np.float32), ((n, k), np.float32)))
    row_loss = cp.empty((n,), dtype=np.float32)
    L.softmax_xent_forward(logits, labels, loss, dlogits, row_loss)
    return loss, dlogits


def mse_loss_forward(L, pred, target, out=None):
    op = "mse_loss_forward"
    pred, target = c.array(op, "pred", pred), c.array(op, "target", target)
    c.same_shape(op, "pred", pred, target=target)
    if pred.size == 0:
        raise ValueError(f"{op}: expected at least one element, got shape {pred.shape}")
    loss = c.output(op, out, ())
    partial = c.cupy().empty((c.mse_partial_blocks(pred.size),), dtype=np.float32)
    L.mse_loss_forward(pred, target, loss, partial)
    return loss


def mse_loss_backward(L, pred, target, dloss, out=None):
    """dpred = 2 (pred - target) / numel * dloss; dloss a number or a 1-element device array."""
    op = "mse_loss_backward"
    cp = c.cupy()
    pred, target = c.array(op, "pred", pred), c.array(op, "target", target)
    c.same_shape(op, "pred", pred, target=target)
    if isinstance(dloss, np.ndarray) and dloss.size == 1:  # a host scalar array
        dloss = dloss.reshape(()).item()
    if isinstance(dloss, (numbers.Real, np.number)):
        dloss = cp.full((), dloss, dtype=np.float32)
    elif isinstance(dloss, cp.ndarray):
        if dloss.size != 1:
            raise ValueError(f"{op}: expected dloss with one element, got shape {dloss.shape}")
        dloss = c.array(op, "dloss", cp.ascontiguousarray(dloss, dtype=np.float32))
    else:
        raise TypeError(f"{op}: expected dloss as a number or a CuPy array, got {type(dloss).__name__}")
    dpred = c.output(op, out, pred.shape)
    L.mse_loss_backward(pred, target, dloss, dpred)
    return dpred
