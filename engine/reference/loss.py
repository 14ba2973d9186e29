"""Losses, the spec: float64 NumPy.

softmax_cross_entropy_forward(logits (N, K), labels (N,) int in [0, K)) returns the mean
cross-entropy over the batch as a 0-d array AND its gradient with respect to the logits,
(softmax(logits) - onehot(labels)) / N, because the two share all their work.
log-sum-exp is taken after subtracting the row maximum, so logits of any magnitude
(1e4, say) neither overflow nor lose the loss.

mse_loss_forward(pred, target): mean of (pred - target)**2 over all elements, 0-d.
mse_loss_backward(pred, target, dloss): 2 * (pred - target) / numel * dloss.

softmax_forward(x (N, K)) -> exp(x) / sum_k exp(x), per row; log_softmax_forward(x) ->
x - log sum_k exp(x), per row: class probabilities and their logs from logits (the
functional API moves any axis last and flattens the others into rows). Both subtract the
row maximum first, as the cross-entropy does. Their backwards take the forward's OUTPUT y:
    softmax_backward(dy, y)     = y * (dy - sum_k dy * y)
    log_softmax_backward(dy, y) = dy - exp(y) * sum_k dy

Results are float64, or written (cast) into ``out=``.
"""
from __future__ import annotations

import numpy as np

from engine.cards import LIKE_INPUT, Loss, OpCard, like_arg, normal


def _check_labels(labels: np.ndarray, n: int, k: int) -> None:
    # NumPy would wrap a negative label around silently: asserted, though engine.checks has
    # refused such labels before any backend runs
    assert labels.shape == (n,), f"softmax_cross_entropy_forward: expected labels of shape ({n},), got {labels.shape}"
    assert not labels.size or (labels.min() >= 0 and labels.max() < k), \
        f"softmax_cross_entropy_forward: expected labels in [0, {k}), got values in [{labels.min()}, {labels.max()}]"


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


def _rows_into(out, value):
    if out is None:
        return value
    out[...] = value
    return out


def softmax_forward(x, out=None):
    x = np.asarray(x, dtype=np.float64)  # (N, K)
    e = np.exp(x - x.max(axis=1, keepdims=True))  # every row's max is exp(0) = 1: no overflow
    return _rows_into(out, e / e.sum(axis=1, keepdims=True))


def softmax_backward(dy, y, out=None):
    dy, y = np.asarray(dy, dtype=np.float64), np.asarray(y, dtype=np.float64)  # (N, K)
    # d softmax_j / d x_k = y_j (delta_jk - y_k)
    return _rows_into(out, y * (dy - (dy * y).sum(axis=1, keepdims=True)))


def log_softmax_forward(x, out=None):
    x = np.asarray(x, dtype=np.float64)  # (N, K)
    shifted = x - x.max(axis=1, keepdims=True)
    return _rows_into(out, shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))


def log_softmax_backward(dy, y, out=None):
    dy, y = np.asarray(dy, dtype=np.float64), np.asarray(y, dtype=np.float64)  # (N, K)
    # d log_softmax_j / d x_k = delta_jk - softmax_k, and softmax = exp(y)
    return _rows_into(out, dy - np.exp(y) * dy.sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------------------
# Cards (engine.cards). Labels are int64, as NumPy and PyTorch index with.

def _torch_cross_entropy(T, logits, labels):
    one = T.torch.ones((), device=T.device)

    def forward_and_backward():  # the kernels eager autograd runs for F.cross_entropy
        logp = T.aten._log_softmax(logits, 1, False)
        loss, total_weight = T.aten.nll_loss_forward(logp, labels, None, 1, -100)
        dlogp = T.aten.nll_loss_backward(one, logp, labels, None, 1, -100, total_weight)
        return loss, T.aten._log_softmax_backward_data(dlogp, logp, 1, logits.dtype)
    return forward_and_backward


def _dy_and_output(rng, s: Loss, forward):
    """(dy, y) for a backward that takes the forward's output y, of logits drawn as the forward's."""
    dy, x = normal(rng, (s.n, s.classes)), normal(rng, (s.n, s.classes), 3.0)
    return dy, forward(x).astype(np.float32)


CARDS = [
    OpCard("softmax_cross_entropy_forward", softmax_cross_entropy_forward, Loss,
           lambda r, s: (normal(r, (s.n, s.classes), 3.0), r.integers(0, s.classes, s.n).astype(np.int64)),
           ("loss", "dlogits"), lambda logits, labels: (((), LIKE_INPUT), (logits.shape, LIKE_INPUT)), "loss",
           torch=_torch_cross_entropy),
    OpCard("mse_loss_forward", mse_loss_forward, Loss,
           lambda r, s: (normal(r, (s.n, s.classes)), normal(r, (s.n, s.classes))), ("loss",),
           lambda pred, target: (((), LIKE_INPUT),), "loss",
           torch=lambda T, pred, target: lambda: T.F.mse_loss(pred, target)),
    OpCard("mse_loss_backward", mse_loss_backward, Loss,
           lambda r, s: (normal(r, (s.n, s.classes)), normal(r, (s.n, s.classes)), np.array(0.7, np.float32)),
           ("dpred",), like_arg(0), "loss",
           torch=lambda T, pred, target, dloss: lambda: T.aten.mse_loss_backward(dloss, pred, target, 1)),
    OpCard("softmax_forward", softmax_forward, Loss, lambda r, s: (normal(r, (s.n, s.classes), 3.0),),
           ("y",), like_arg(0), "loss", torch=lambda T, x: lambda: T.aten._softmax(x, 1, False)),
    OpCard("softmax_backward", softmax_backward, Loss, lambda r, s: _dy_and_output(r, s, softmax_forward),
           ("dx",), like_arg(0), "loss",
           torch=lambda T, dy, y: lambda: T.aten._softmax_backward_data(dy, y, 1, y.dtype)),
    OpCard("log_softmax_forward", log_softmax_forward, Loss, lambda r, s: (normal(r, (s.n, s.classes), 3.0),),
           ("y",), like_arg(0), "loss", torch=lambda T, x: lambda: T.aten._log_softmax(x, 1, False)),
    OpCard("log_softmax_backward", log_softmax_backward, Loss,
           lambda r, s: _dy_and_output(r, s, log_softmax_forward), ("dx",), like_arg(0), "loss",
           torch=lambda T, dy, y: lambda: T.aten._log_softmax_backward_data(dy, y, 1, y.dtype)),
]
