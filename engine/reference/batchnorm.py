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
