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
    Adadelta g = grad + wd p;  sq = rho sq + (1 - rho) g^2;
             d = sqrt(acc + eps) / sqrt(sq + eps) g;  acc = rho acc + (1 - rho) d^2;  p -= lr d

weight_penalty_update applies what an update kernel does not, to the part of the flat
arrays it is given (the optimizer decides which: weights only, or everything):

    grad += l1 sign(p) + l2 p;   then p *= shrink
    (an L1 penalty l1 |p|, an L2 one l2 p^2 / 2, and decoupled weight decay, shrink = 1 - lr wd)
"""
from __future__ import annotations

import numpy as np

from engine.cards import Flat, OpCard, normal


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
    assert step >= 1, f"adam_update: expected step >= 1 (it counts from 1), got {step}"
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


def adadelta_update(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay) -> None:
    p = _f64(param)
    g = _f64(grad) + weight_decay * p
    sq = rho * _f64(square_avg) + (1.0 - rho) * g * g
    delta = np.sqrt(_f64(acc_delta) + eps) / np.sqrt(sq + eps) * g
    square_avg[...] = sq
    acc_delta[...] = rho * _f64(acc_delta) + (1.0 - rho) * delta * delta
    param[...] = p - lr * delta


def weight_penalty_update(param, grad, l1, l2, shrink) -> None:
    p = _f64(param)
    grad[...] = _f64(grad) + l1 * np.sign(p) + l2 * p  # sign(0) = 0, as torch.sign
    param[...] = p * shrink


# --------------------------------------------------------------------------------------
# Cards (engine.cards): in place, nothing returned. variant 1 turns on the other switches.

def _sgd_inputs(rng, s: Flat):
    p, g, v = normal(rng, s.numel), normal(rng, s.numel), normal(rng, s.numel, 0.1)
    if s.variant:
        return p, g, v, 0.05, 0.9, 1e-4, True  # nesterov with weight decay
    return p, g, v, 0.01, 0.9, 0.0, False


def _adam_inputs(rng, s: Flat):
    p, g = normal(rng, s.numel), normal(rng, s.numel)
    m = normal(rng, s.numel, 0.1)
    v = rng.uniform(0.0, 0.1, s.numel).astype(np.float32)  # a second moment is never negative
    if s.variant:
        return p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 1e-2, True  # AdamW, first step
    return p, g, m, v, 7, 1e-3, 0.9, 0.999, 1e-8, 0.0, False


def _rmsprop_inputs(rng, s: Flat):
    p, g = normal(rng, s.numel), normal(rng, s.numel)
    sq = rng.uniform(0.0, 0.1, s.numel).astype(np.float32)
    return p, g, sq, 1e-3, 0.99, 1e-8, (1e-4 if s.variant else 0.0)


def _adagrad_inputs(rng, s: Flat):
    p, g = normal(rng, s.numel), normal(rng, s.numel)
    sum_sq = rng.uniform(0.0, 1.0, s.numel).astype(np.float32)
    return p, g, sum_sq, 1e-2, 1e-10, (1e-4 if s.variant else 0.0)


def _adadelta_inputs(rng, s: Flat):
    p, g = normal(rng, s.numel), normal(rng, s.numel)
    sq, acc = (rng.uniform(0.0, 0.1, s.numel).astype(np.float32) for _ in range(2))
    return p, g, sq, acc, 1.0, 0.9, 1e-6, (1e-2 if s.variant else 0.0)


def _penalty_inputs(rng, s: Flat):
    p, g = normal(rng, s.numel), normal(rng, s.numel)
    p[::7] = 0.0  # sign(0) = 0
    return (p, g, 0.0, 0.0, 1.0 - 0.1 * 0.01) if s.variant else (p, g, 1e-3, 5e-4, 1.0)


def _torch_penalty(T, param, grad, l1, l2, shrink):
    def step():  # what the L1 and L2 terms add to the gradient, and a decoupled decay
        grad.add_(param.sign(), alpha=l1).add_(param, alpha=l2)
        param.mul_(shrink)
    return step


def _torch_step(make_optimizer):
    """One torch.optim step over one flat parameter with our hyperparameters (PyTorch's default
    implementation for the device: foreach on CUDA)."""
    def counterpart(T, param, grad, *rest):
        param = param.clone().requires_grad_(False)
        param.grad = grad.clone()
        opt = make_optimizer(T.torch.optim, param, *rest)
        opt.step()  # creates the state (momentum buffers, moments) outside the timed calls
        return opt.step
    return counterpart


def _no_outputs(*args):
    return ()


CARDS = [
    OpCard("sgd_update", sgd_update, Flat, _sgd_inputs, ("param", "velocity"), _no_outputs, "optim", inplace=(0, 2),
           torch=_torch_step(lambda o, p, v, lr, momentum, wd, nesterov:
                             o.SGD([p], lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov))),
    OpCard("adam_update", adam_update, Flat, _adam_inputs, ("param", "m", "v"), _no_outputs, "optim",
           inplace=(0, 2, 3),
           torch=_torch_step(lambda o, p, m, v, step, lr, b1, b2, eps, wd, decoupled:
                             (o.AdamW if decoupled else o.Adam)([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))),
    OpCard("rmsprop_update", rmsprop_update, Flat, _rmsprop_inputs, ("param", "square_avg"), _no_outputs, "optim",
           inplace=(0, 2),
           torch=_torch_step(lambda o, p, sq, lr, alpha, eps, wd:
                             o.RMSprop([p], lr=lr, alpha=alpha, eps=eps, weight_decay=wd))),
    OpCard("adagrad_update", adagrad_update, Flat, _adagrad_inputs, ("param", "sum_sq"), _no_outputs, "optim",
           inplace=(0, 2),
           torch=_torch_step(lambda o, p, s, lr, eps, wd: o.Adagrad([p], lr=lr, eps=eps, weight_decay=wd))),
    OpCard("adadelta_update", adadelta_update, Flat, _adadelta_inputs, ("param", "square_avg", "acc_delta"),
           _no_outputs, "optim", inplace=(0, 2, 3),
           torch=_torch_step(lambda o, p, sq, acc, lr, rho, eps, wd:
                             o.Adadelta([p], lr=lr, rho=rho, eps=eps, weight_decay=wd))),
    OpCard("weight_penalty_update", weight_penalty_update, Flat, _penalty_inputs, ("param", "grad"), _no_outputs,
           "optim", inplace=(0, 1), torch=_torch_penalty),
]
