"""CUDA glue for the optimizer updates (kernels/optim.cu): in place, one launch over a
flat float32 parameter array and its gradient and state arrays of the same size."""
from __future__ import annotations

from engine.cuda import common as c


def _flat(op, param, grad, **state):
    param = c.array(op, "param", param)
    grad = c.array(op, "grad", grad)
    for name, a in [("grad", grad)] + [(k, c.array(op, k, v)) for k, v in state.items() if v is not None]:
        if a.size != param.size:
            raise ValueError(f"{op}: expected {name} with {param.size} elements like param, got shape {a.shape}")
    return param, grad


def sgd_update(L, param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
    op = "sgd_update"
    param, grad = _flat(op, param, grad, velocity=velocity)
    if momentum != 0 and velocity is None:
        raise ValueError(f"{op}: momentum {momentum} needs a velocity array, got None")
    L.sgd_update(param, grad, velocity, float(lr), float(momentum), float(weight_decay), bool(nesterov))


def adam_update(L, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled) -> None:
    op = "adam_update"
    if int(step) < 1:
        raise ValueError(f"{op}: expected step >= 1 (it counts from 1), got {step}")
    param, grad = _flat(op, param, grad, m=m, v=v)
    L.adam_update(param, grad, m, v, int(step), float(lr), float(beta1), float(beta2), float(eps),
                  float(weight_decay), bool(decoupled))


def rmsprop_update(L, param, grad, square_avg, lr, alpha, eps, weight_decay) -> None:
    op = "rmsprop_update"
    param, grad = _flat(op, param, grad, square_avg=square_avg)
    L.rmsprop_update(param, grad, square_avg, float(lr), float(alpha), float(eps), float(weight_decay))


def adagrad_update(L, param, grad, sum_sq, lr, eps, weight_decay) -> None:
    op = "adagrad_update"
    param, grad = _flat(op, param, grad, sum_sq=sum_sq)
    L.adagrad_update(param, grad, sum_sq, float(lr), float(eps), float(weight_decay))
