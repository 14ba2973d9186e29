"""CUDA glue for the optimizer updates (kernels/optim.cu): in place, one launch over a
flat float32 parameter array and its gradient and state arrays of the same size."""
from __future__ import annotations

import numpy as np

from engine.cuda.launch import Kernel, grid_1d

_FLAT = dict(grid=lambda a: grid_1d(a.n))
SGD = Kernel("optim.cu", "sgd_update_kernel", "float* param, const float* grad, float* velocity, float lr, "
             "float momentum, float weight_decay, int nesterov, i64 n", **_FLAT)
ADAM = Kernel("optim.cu", "adam_update_kernel", "float* param, const float* grad, float* m, float* v, float lr, "
              "float beta1, float beta2, float eps, float weight_decay, int decoupled, float bias_correction1, "
              "float bias_correction2, i64 n", **_FLAT)
RMSPROP = Kernel("optim.cu", "rmsprop_update_kernel", "float* param, const float* grad, float* square_avg, "
                 "float lr, float alpha, float eps, float weight_decay, i64 n", **_FLAT)
ADAGRAD = Kernel("optim.cu", "adagrad_update_kernel", "float* param, const float* grad, float* sum_sq, float lr, "
                 "float eps, float weight_decay, i64 n", **_FLAT)
ADADELTA = Kernel("optim.cu", "adadelta_update_kernel", "float* param, const float* grad, float* square_avg, "
                  "float* acc_delta, float lr, float rho, float eps, float weight_decay, i64 n", **_FLAT)
PENALTY = Kernel("optim.cu", "weight_penalty_update_kernel", "float* param, float* grad, float l1, float l2, "
                 "float shrink, i64 n", **_FLAT)


def sgd_update(L, param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
    assert momentum == 0 or velocity is not None, "momentum needs a velocity array"
    L.launch(SGD, param, grad, velocity, lr, momentum, weight_decay, int(nesterov), param.size)


def adam_update(L, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled) -> None:
    # step-dependent scalars in double from the float32 betas, rounded once
    bias_correction1 = 1.0 - float(np.float32(beta1)) ** int(step)
    bias_correction2 = 1.0 - float(np.float32(beta2)) ** int(step)
    L.launch(ADAM, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, int(decoupled), bias_correction1,
             bias_correction2, param.size)


def rmsprop_update(L, param, grad, square_avg, lr, alpha, eps, weight_decay) -> None:
    L.launch(RMSPROP, param, grad, square_avg, lr, alpha, eps, weight_decay, param.size)


def adagrad_update(L, param, grad, sum_sq, lr, eps, weight_decay) -> None:
    L.launch(ADAGRAD, param, grad, sum_sq, lr, eps, weight_decay, param.size)


def adadelta_update(L, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay) -> None:
    L.launch(ADADELTA, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay, param.size)


def weight_penalty_update(L, param, grad, l1, l2, shrink) -> None:
    L.launch(PENALTY, param, grad, l1, l2, shrink, param.size)
