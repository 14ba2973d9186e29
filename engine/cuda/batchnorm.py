"""CUDA glue for batch normalisation and the fused BN+ReLU (kernels/batchnorm.cu).

x is (N, C) or (N, C, H, W), seen by the kernels as (N, C, HW); statistics per channel.
Forward: per-channel statistics (training: batch stats + in-place running-stat update;
eval: from the running stats), then one elementwise pass. Backward: per-channel dgamma
and dbeta, then one elementwise pass. Per-channel kernels run one block per channel.
"""
from __future__ import annotations

import numpy as np

from engine.cuda.common import channels, cupy, outputs
from engine.cuda.launch import Kernel, grid_1d

STATS = Kernel("batchnorm.cu", "batch_norm_stats_kernel",
               "const float* x, float* save_mean, float* save_invstd, float* running_mean, float* running_var, "
               "int batch, int channels, i64 hw, float momentum, float eps", grid=lambda a: a.channels)
EVAL_STATS = Kernel("batchnorm.cu", "batch_norm_eval_stats_kernel",
                    "const float* running_mean, const float* running_var, float* save_mean, float* save_invstd, "
                    "int channels, float eps", grid=lambda a: grid_1d(a.channels))
FORWARD = Kernel("batchnorm.cu", "batch_norm_forward_kernel",
                 "const float* x, const float* mean, const float* invstd, const float* gamma, const float* beta, "
                 "float* y, int channels, i64 hw, i64 n, int relu", grid=lambda a: grid_1d(a.n))
BACKWARD_REDUCE = Kernel("batchnorm.cu", "batch_norm_backward_reduce_kernel",
                         "const float* dy, const float* y, const float* x, const float* mean, const float* invstd, "
                         "float* dgamma, float* dbeta, int batch, int channels, i64 hw", grid=lambda a: a.channels)
BACKWARD = Kernel("batchnorm.cu", "batch_norm_backward_kernel",
                  "const float* dy, const float* y, const float* x, const float* mean, const float* invstd, "
                  "const float* gamma, const float* dgamma, const float* dbeta, float* dx, int channels, i64 hw, "
                  "i64 n, i64 m, int training", grid=lambda a: grid_1d(a.n))


def _vector(v, c: int, default: float):
    return cupy().full((c,), default, dtype=np.float32) if v is None else v


def _forward(L, relu, x, gamma, beta, running_mean, running_var, training, momentum, eps, out):
    n, c, hw = channels(x)
    gamma, beta = _vector(gamma, c, 1.0), _vector(beta, c, 0.0)
    y, mean, invstd = outputs(out, ((x.shape, np.float32), ((c,), np.float32), ((c,), np.float32)))
    if training:
        L.launch(STATS, x, mean, invstd, running_mean, running_var, n, c, hw, momentum, eps)
    else:
        L.launch(EVAL_STATS, running_mean, running_var, mean, invstd, c, eps)
    L.launch(FORWARD, x, mean, invstd, gamma, beta, y, c, hw, x.size, int(relu))
    return y, mean, invstd


def _backward(L, dy, y, x, gamma, save_mean, save_invstd, training, out):
    n, c, hw = channels(x)
    gamma = _vector(gamma, c, 1.0)
    dx, dgamma, dbeta = outputs(out, ((x.shape, np.float32), ((c,), np.float32), ((c,), np.float32)))
    L.launch(BACKWARD_REDUCE, dy, y, x, save_mean, save_invstd, dgamma, dbeta, n, c, hw)
    L.launch(BACKWARD, dy, y, x, save_mean, save_invstd, gamma, dgamma, dbeta, dx, c, hw, x.size, n * hw,
             int(training))
    return dx, dgamma, dbeta


def batch_norm_forward(L, x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    return _forward(L, False, x, gamma, beta, running_mean, running_var, training, momentum, eps, out)


def batch_norm_backward(L, dy, x, gamma, save_mean, save_invstd, training, out=None):
    return _backward(L, dy, None, x, gamma, save_mean, save_invstd, training, out)


def batch_norm_relu_forward(L, x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None):
    return _forward(L, True, x, gamma, beta, running_mean, running_var, training, momentum, eps, out)


def batch_norm_relu_backward(L, dy, y, x, gamma, save_mean, save_invstd, training, out=None):
    """y is the output of batch_norm_relu_forward: dy passes where y > 0."""
    return _backward(L, dy, y, x, gamma, save_mean, save_invstd, training, out)
