"""Losses, the spec: float64 NumPy.

softmax_cross_entropy_forward(logits (N, K), labels (N,) int in [0, K)) returns the mean
cross-entropy over the batch as a 0-d array AND its gradient with respect to the logits,
(softmax(logits) - onehot(labels)) / N, because the two share all their work.
log-sum-exp is taken after subtracting the row maximum, so logits of any magnitude
(1e4, say) neither overflow nor lose the loss.

mse_loss_forward(pred, target): mean of (pred - target)**2 over all elements, 0-d.
mse_loss_backward(pred, target, dloss): 2 * (pred - target) / numel * dloss.

Results are float64, or written (cast) into ``out=``.
"""
from __future__ import annotations

import numpy as np


def _check_labels(labels: np.ndarray, n: int, k: int) -> None:
    # NumPy would wrap a negative label around silently; a wrong class is never silent here
    if labels.shape != (n,):
        raise ValueError(f"softmax_cross_entropy_forward: expected labels of shape ({n},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"softmax_cross_entropy_forward: expected labels in [0, {k}), "
                         f"got values in [{labels.min()}, {labels.max()}]")


def softmax_cross_entropy_forward(logits, labels, out=None):
    x = np.asarray(logits, dtype=np.float64)  # (N, K)
    labels = np.asarray(labels)
    n, k = x.shape
    _check_labels(labels, n, k)
    shifted = x - x.max(axis=1, keepdims=True)  # (N, K), every row's max is 0
    log_sum_exp = np.log(np.exp(shifted).sum(axis=1))  # (N,)
    rows = np.arange(n)
    # -log softmax[label] = log_sum_exp - shifted[label]
    loss = np.array(np.mean(log_sum_exp - shifted[rows, labels]))
    dlogits = np.exp(shifted - log_sum_exp[:, None])  # softmax, (N, K)
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    if out is None:
        return loss, dlogits
    out[0][...] = loss
    out[1][...] = dlogits
    return out[0], out[1]


def mse_loss_forward(pred, target, out=None):
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    loss = np.array(np.mean(d * d))
    if out is None:
        return loss
    out[...] = loss
    return out


def mse_loss_backward(pred, target, dloss, out=None):
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    dpred = 2.0 * d / d.size * float(np.asarray(dloss))
    if out is None:
        return dpred
    out[...] = dpred
    return out
