"""Optimizer updates, the spec: float64 NumPy, in place, PyTorch semantics.

Every update takes flat arrays of one length -- the parameters, their gradient and the
optimizer state -- modifies param and the state IN PLACE and returns None. The math is
done in float64 and stored back in whatever dtype the arrays have. ``grad`` is never
modified. Weight decay ``wd`` is L2 (g = grad + wd * p) except in AdamW.

    SGD      g = grad + wd p;  if momentum: v = momentum v + g;
             g = g + momentum v (nesterov) or v;  p -= lr g
             (momentum == 0 is plain SGD and leaves velocity untouched; dampening 0)
    Adam     g = grad + wd p (decoupled=False)  or  p *= 1 - lr wd (decoupled=True: AdamW)
             m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  step t counts from 1
             p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    RMSprop  g = grad + wd p;  sq = alpha sq + (1 - alpha) g^2;  p -= lr g / (sqrt(sq) + eps)
    Adagrad  g = grad + wd p;  sum += g^2;  p -= lr g / (sqrt(sum) + eps)
"""
from __future__ import annotations

import numpy as np


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
    p = _f64(param)
    g = _f64(grad) + weight_decay * p
    if momentum != 0:
        v = momentum * _f64(velocity) + g
        velocity[...] = v
        g = g + momentum * v if nesterov else v
    param[...] = p - lr * g


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled) -> None:
    if step < 1:
        raise ValueError(f"adam_update: expected step >= 1 (it counts from 1), got {step}")
    p, g = _f64(param), _f64(grad)
    if decoupled:
        p = p * (1.0 - lr * weight_decay)  # AdamW: decay the weights, not the gradient
    else:
        g = g + weight_decay * p
    m_new = beta1 * _f64(m) + (1.0 - beta1) * g
    v_new = beta2 * _f64(v) + (1.0 - beta2) * g * g
    m_hat = m_new / (1.0 - beta1 ** step)  # bias correction: m and v start at zero
    v_hat = v_new / (1.0 - beta2 ** step)
    m[...] = m_new
    v[...] = v_new
    param[...] = p - lr * m_hat / (np.sqrt(v_hat) + eps)


def rmsprop_update(param, grad, square_avg, lr, alpha, eps, weight_decay) -> None:
    p = _f64(param)
    g = _f64(grad) + weight_decay * p
    sq = alpha * _f64(square_avg) + (1.0 - alpha) * g * g
    square_avg[...] = sq
    param[...] = p - lr * g / (np.sqrt(sq) + eps)


def adagrad_update(param, grad, sum_sq, lr, eps, weight_decay) -> None:
    p = _f64(param)
    g = _f64(grad) + weight_decay * p
    s = _f64(sum_sq) + g * g
    sum_sq[...] = s
    param[...] = p - lr * g / (np.sqrt(s) + eps)
