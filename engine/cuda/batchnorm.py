"""CUDA glue for batch normalisation and the fused BN+ReLU (kernels/batchnorm.cu).

x is (N, C) or (N, C, H, W); statistics per channel. Forward: per-channel statistics
(training: batch stats + in-place running-stat update; eval: from the running stats),
then one elementwise pass. Backward: per-channel dgamma/dbeta, then one elementwise pass.
"""
from __future__ import annotations

import numpy as np

from engine.cuda import common as c


def _channel_vector(op, name, v, ch, default):
    if v is None:
        return c.cupy().full((ch,), default, dtype=np.float32)
    return c.array(op, name, v, shape=(ch,))


def _forward(L, op, relu, x, gamma, beta, running_mean, running_var, training, momentum, eps, out):
    x = c.array(op, "x", x, ndim=(2, 4))
    ch = x.shape[1]
    gamma = _channel_vector(op, "gamma", gamma, ch, 1.0)
    beta = _channel_vector(op, "beta", beta, ch, 0.0)
    y, mean, invstd = c.outputs(op, out, ((x.shape, np.float32), ((ch,), np.float32), ((ch,), np.float32)))
    if training:
        if x.size // ch < 2:
            raise ValueError(f"{op}: training needs more than one value per channel, got input shape {x.shape}")
        rm = None if running_mean is None else c.array(op, "running_mean", running_mean, shape=(ch,))
        rv = None if running_var is None else c.array(op, "running_var", running_var, shape=(ch,))
        L.batch_norm_stats(x, mean, invstd, rm, rv, float(momentum), float(eps))
    else:
        rm = c.array(op, "running_mean", running_mean, shape=(ch,))
        rv = c.array(op, "running_var", running_var, shape=(ch,))
        L.batch_norm_eval_stats(rm, rv, mean, invstd, float(eps))
    L.batch_norm_forward(x, mean, invstd, gamma, beta, y, relu)
    return y, mean, invstd


def _backward(L, op, dy, y, x, gamma, save_mean, save_invstd, training, out):
    x = c.array(op, "x", x, ndim=(2, 4))
    dy = c.array(op, "dy", dy, shape=x.shape)
    if y is not None:
        y = c.array(op, "y", y, shape=x.shape)
    ch = x.shape[1]
    gamma = _channel_vector(op, "gamma", gamma, ch, 1.0)
    mean = c.array(op, "save_mean", save_mean, shape=(ch,))
    invstd = c.array(op, "save_invstd", save_invstd, shape=(ch,))
    dx, dgamma, dbeta = c.outputs(op, out, ((x.shape, np.float32), ((ch,), np.float32), ((ch,), np.float32)))
    L.batch_norm_backward_reduce(dy, y, x, mean, invstd, dgamma, dbeta)
    L.batch_norm_backward(dy, y, x, mean, invstd, gamma, dgamma, dbeta, dx, bool(training))
    return dx, dgamma, dbeta


def batch_norm_forward(L, x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    return _forward(L, "batch_norm_forward", False, x, gamma, beta, running_mean, running_var, training,
                    momentum, eps, out)


def batch_norm_backward(L, dy, x, gamma, save_mean, save_invstd, training, out=None):
    return _backward(L, "batch_norm_backward", dy, None, x, gamma, save_mean, save_invstd, training, out)


def batch_norm_relu_forward(L, x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    return _forward(L, "batch_norm_relu_forward", True, x, gamma, beta, running_mean, running_var, training,
                    momentum, eps, out)


def batch_norm_relu_backward(L, dy, y, x, gamma, save_mean, save_invstd, training, out=None):
    """y is the output of batch_norm_relu_forward: dy passes where y > 0."""
    return _backward(L, "batch_norm_relu_backward", dy, y, x, gamma, save_mean, save_invstd, training, out)
