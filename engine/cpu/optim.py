"""Optimizer updates as Numba kernels, in place on flat arrays; the spec (PyTorch
semantics) is engine.reference.optim.

Each update is one prange over the elements of param: read param, grad and the
state, write param and the state, nothing else -- the fewest bytes an update can
move. The arithmetic of each element is float64 (as the spec), stored back in the
arrays' dtype; bias corrections and other per-step scalars are computed once here.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from engine.cpu.parallel import kernel_pair


@kernel_pair()
def _sgd(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    for i in prange(param.size):
        p = np.float64(param[i])
        g = np.float64(grad[i]) + weight_decay * p
        if momentum != 0.0:
            v = momentum * np.float64(velocity[i]) + g
            velocity[i] = v
            g = g + momentum * v if nesterov else v
        param[i] = p - lr * g


@kernel_pair()
def _adam(param, grad, m, v, lr, beta1, beta2, correction1, correction2, eps, weight_decay, decoupled):
    for i in prange(param.size):
        p = np.float64(param[i])
        g = np.float64(grad[i])
        if decoupled:
            p = p * (1.0 - lr * weight_decay)  # AdamW
        else:
            g = g + weight_decay * p  # Adam with L2
        m_new = beta1 * np.float64(m[i]) + (1.0 - beta1) * g
        v_new = beta2 * np.float64(v[i]) + (1.0 - beta2) * g * g
        m[i] = m_new
        v[i] = v_new
        param[i] = p - lr * (m_new / correction1) / (np.sqrt(v_new / correction2) + eps)


@kernel_pair()
def _rmsprop(param, grad, square_avg, lr, alpha, eps, weight_decay):
    for i in prange(param.size):
        p = np.float64(param[i])
        g = np.float64(grad[i]) + weight_decay * p
        sq = alpha * np.float64(square_avg[i]) + (1.0 - alpha) * g * g
        square_avg[i] = sq
        param[i] = p - lr * g / (np.sqrt(sq) + eps)


@kernel_pair()
def _adagrad(param, grad, sum_sq, lr, eps, weight_decay):
    for i in prange(param.size):
        p = np.float64(param[i])
        g = np.float64(grad[i]) + weight_decay * p
        s = np.float64(sum_sq[i]) + g * g
        sum_sq[i] = s
        param[i] = p - lr * g / (np.sqrt(s) + eps)


@kernel_pair()
def _adadelta(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay):
    for i in prange(param.size):
        p = np.float64(param[i])
        g = np.float64(grad[i]) + weight_decay * p
        sq = rho * np.float64(square_avg[i]) + (1.0 - rho) * g * g
        acc = np.float64(acc_delta[i])
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        square_avg[i] = sq
        acc_delta[i] = rho * acc + (1.0 - rho) * delta * delta
        param[i] = p - lr * delta


@kernel_pair()
def _weight_penalty(param, grad, l1, l2, shrink):
    for i in prange(param.size):
        p = np.float64(param[i])
        sign = 1.0 if p > 0 else (-1.0 if p < 0 else 0.0)
        grad[i] = np.float64(grad[i]) + l1 * sign + l2 * p
        param[i] = p * shrink


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
    _sgd(param, grad, velocity, float(lr), float(momentum), float(weight_decay), bool(nesterov))


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled) -> None:
    assert step >= 1, f"adam_update: expected step >= 1 (it counts from 1), got {step}"
    _adam(param, grad, m, v, float(lr), float(beta1), float(beta2),
          1.0 - float(beta1) ** int(step), 1.0 - float(beta2) ** int(step),
          float(eps), float(weight_decay), bool(decoupled))


def rmsprop_update(param, grad, square_avg, lr, alpha, eps, weight_decay) -> None:
    _rmsprop(param, grad, square_avg, float(lr), float(alpha), float(eps), float(weight_decay))


def adagrad_update(param, grad, sum_sq, lr, eps, weight_decay) -> None:
    _adagrad(param, grad, sum_sq, float(lr), float(eps), float(weight_decay))


def adadelta_update(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay) -> None:
    _adadelta(param, grad, square_avg, acc_delta, float(lr), float(rho), float(eps), float(weight_decay))


def weight_penalty_update(param, grad, l1, l2, shrink) -> None:
    _weight_penalty(param, grad, float(l1), float(l2), float(shrink))
