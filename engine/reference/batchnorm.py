"""Batch normalisation, the spec: float64 NumPy.

x is (N, C) -- statistics per feature over N -- or (N, C, H, W) -- statistics per
channel over N, H and W. gamma, beta, running_mean, running_var, save_mean and
save_invstd are all (C,). Conventions (those of PyTorch):

* training normalises with the batch mean and the BIASED batch variance (divide by n,
  n = N*H*W elements per channel), and updates the running statistics IN PLACE:
      running_mean = (1 - momentum) * running_mean + momentum * mean
      running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)
  (the running variance tracks the UNBIASED estimate; n must be > 1). Either running
  array may be None, and is then not tracked.
* eval mode normalises with running_mean and running_var.
* save_mean and save_invstd = 1 / sqrt(var + eps) are the statistics actually used
  (the batch ones in training, the running ones in eval); backward takes them back.
* backward in training differentiates through the batch statistics; in eval the
  statistics are constants, so dx = dy * gamma * invstd.

Every op computes in float64 and returns float64, or writes (cast) into ``out=``.
"""
from __future__ import annotations

import numpy as np

from engine.cards import LIKE_INPUT, OpCard, Tensor, normal


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _into(out, values: tuple) -> tuple:
    """Return values, or copy them into the caller's buffers (the executor reuses them)."""
    if out is None:
        return values
    for buffer, value in zip(out, values):
        buffer[...] = value
    return tuple(out)


def _reduce_axes(ndim: int) -> tuple:
    return (0,) if ndim == 2 else (0, 2, 3)


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    # (C,) -> (1, C) or (1, C, 1, 1), to broadcast against x
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    x = _f64(x)
    axes = _reduce_axes(x.ndim)
    if training:
        n = x.size // x.shape[1]  # elements per channel
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)  # biased: this is what normalises the batch
        # in place on the caller's arrays (whatever their dtype)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * _f64(running_mean) + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * _f64(running_var) + momentum * var * n / (n - 1)
    else:
        mean, var = _f64(running_mean).copy(), _f64(running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(invstd, x.ndim)
    y = xhat * _per_channel(_f64(gamma), x.ndim) + _per_channel(_f64(beta), x.ndim)
    return _into(out, (y, mean, invstd))


def batch_norm_backward(dy, x, gamma, save_mean, save_invstd, training, out=None):
    dy, x = _f64(dy), _f64(x)
    axes = _reduce_axes(x.ndim)
    mean, invstd = _per_channel(_f64(save_mean), x.ndim), _per_channel(_f64(save_invstd), x.ndim)
    xhat = (x - mean) * invstd
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    scale = _per_channel(_f64(gamma), x.ndim) * invstd  # dy/dx with the statistics held fixed
    if training:
        # y depends on x also through mean and var; their contribution, per channel:
        # dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
        n = x.size // x.shape[1]
        dx = scale * (dy - _per_channel(dbeta, x.ndim) / n - xhat * _per_channel(dgamma, x.ndim) / n)
    else:
        dx = scale * dy
    return _into(out, (dx, dgamma, dbeta))


def batch_norm_relu_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    """relu(batch_norm(x)): same statistics and running-stat update as batch_norm_forward."""
    y, mean, invstd = batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    return _into(out, (np.maximum(y, 0.0), mean, invstd))


def batch_norm_relu_backward(dy, y, x, gamma, save_mean, save_invstd, training, out=None):
    """y is the output of batch_norm_relu_forward: the ReLU passes dy where y > 0."""
    dz = _f64(dy) * (_f64(y) > 0)
    return batch_norm_backward(dz, x, gamma, save_mean, save_invstd, training, out=out)


# --------------------------------------------------------------------------------------
# Cards (engine.cards). running_mean and running_var (args 3 and 4) are updated in place.

def _forward_inputs(rng, s: Tensor):
    c = s.shape[1]
    x = normal(rng, s.shape, 2.0, 0.5)
    gamma, beta = normal(rng, (c,), 0.5, 1.0), normal(rng, (c,), 0.5)
    running_mean = normal(rng, (c,), 0.1)
    running_var = rng.uniform(0.5, 1.5, c).astype(np.float32)
    return x, gamma, beta, running_mean, running_var, s.training, 0.1, 1e-5


def _backward_inputs(relu: bool):
    def make(rng, s: Tensor):
        x, gamma, beta, rm, rv, training, momentum, eps = _forward_inputs(rng, s)
        forward = batch_norm_relu_forward if relu else batch_norm_forward
        y, mean, invstd = (a.astype(np.float32) for a in forward(x, gamma, beta, rm, rv, training, momentum, eps))
        dy = normal(rng, s.shape)
        return (dy, y, x, gamma, mean, invstd, training) if relu else (dy, x, gamma, mean, invstd, training)
    return make


def _forward_shapes(x, *_):
    c = (x.shape[1],)
    return (x.shape, LIKE_INPUT), (c, LIKE_INPUT), (c, LIKE_INPUT)


def _backward_shapes(dy, *_):
    c = (dy.shape[1],)
    return (dy.shape, LIKE_INPUT), (c, LIKE_INPUT), (c, LIKE_INPUT)


def _torch_forward(relu: bool):
    def counterpart(T, x, gamma, beta, rm, rv, training, momentum, eps):
        if relu:
            return lambda: T.F.relu(T.F.batch_norm(x, rm, rv, gamma, beta, training, momentum, eps))
        return lambda: T.F.batch_norm(x, rm, rv, gamma, beta, training, momentum, eps)
    return counterpart


def _torch_backward(T, dy, x, gamma, mean, invstd, training):
    return lambda: T.aten.native_batch_norm_backward(dy, x, gamma, None, None, mean, invstd, training, 1e-5,
                                                     (True, True, True))


def _torch_relu_backward(T, dy, y, x, gamma, mean, invstd, training):
    return lambda: T.aten.native_batch_norm_backward(T.aten.threshold_backward(dy, y, 0), x, gamma, None, None,
                                                     mean, invstd, training, 1e-5, (True, True, True))


_STATS = ("y", "save_mean", "save_invstd", "running_mean", "running_var")
CARDS = [
    OpCard("batch_norm_forward", batch_norm_forward, Tensor, _forward_inputs, _STATS, _forward_shapes,
           "batchnorm", inplace=(3, 4), torch=_torch_forward(False)),
    OpCard("batch_norm_backward", batch_norm_backward, Tensor, _backward_inputs(False), ("dx", "dgamma", "dbeta"),
           _backward_shapes, "batchnorm", torch=_torch_backward),
    OpCard("batch_norm_relu_forward", batch_norm_relu_forward, Tensor, _forward_inputs, _STATS, _forward_shapes,
           "batchnorm", inplace=(3, 4), torch=_torch_forward(True)),
    OpCard("batch_norm_relu_backward", batch_norm_relu_backward, Tensor, _backward_inputs(True),
           ("dx", "dgamma", "dbeta"), _backward_shapes, "batchnorm", torch=_torch_relu_backward),
]
