"""Optimizers: hyperparameters and state layout; the update itself is an op of the backend
(ops sgd_update, adam_update, ... of engine.ops), one launch over the executor's flat
parameter array. Semantics follow torch.optim (see engine/reference/optim.py, the spec)."""
from __future__ import annotations

from engine import checks as C


class Optimizer:
    state_names: tuple = ()  # flat arrays, shaped like the parameters, zero at the start

    def __init__(self, lr: float, weight_decay: float = 0.0):
        op = type(self).__name__
        self.lr = C.real(op, "lr", lr, low=0.0)
        self.weight_decay = C.real(op, "weight_decay", weight_decay, low=0.0)

    def update(self, bk, params, grads, state: dict, step: int, lr: float) -> None:
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "state_names")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """SGD with optional momentum (PyTorch's form, dampening 0), Nesterov and weight decay."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.momentum = C.real("SGD", "momentum", momentum, low=0.0)
        self.nesterov = C.boolean("SGD", "nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0, got momentum 0")
        self.state_names = ("velocity",)

    def update(self, bk, params, grads, state, step, lr):
        bk.sgd_update(params, grads, state["velocity"], lr, self.momentum, self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam with bias correction; weight_decay is an L2 term added to the gradient."""
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        op = type(self).__name__
        self.beta1 = C.real(op, "betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
        self.beta2 = C.real(op, "betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
        self.eps = C.positive(op, "eps", eps)
        self.state_names = ("m", "v")

    def update(self, bk, params, grads, state, step, lr):
        bk.adam_update(params, grads, state["m"], state["v"], step, lr, self.beta1, self.beta2,
                       self.eps, self.weight_decay, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay)."""
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.alpha = C.real("RMSprop", "alpha", alpha, low=0.0, high=1.0)
        self.eps = C.positive("RMSprop", "eps", eps)
        self.state_names = ("square_avg",)

    def update(self, bk, params, grads, state, step, lr):
        bk.rmsprop_update(params, grads, state["square_avg"], lr, self.alpha, self.eps, self.weight_decay)


class Adagrad(Optimizer):
    def __init__(self, lr=0.01, eps=1e-10, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.eps = C.positive("Adagrad", "eps", eps)
        self.state_names = ("sum_sq",)

    def update(self, bk, params, grads, state, step, lr):
        bk.adagrad_update(params, grads, state["sum_sq"], lr, self.eps, self.weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def make_optimizer(name: str, lr: float | None = None, **kwargs) -> Optimizer:
    """An optimizer by name ('sgd', 'adam', ...); lr None keeps the optimizer's default."""
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    if lr is not None:
        kwargs["lr"] = lr
    return OPTIMIZERS[name](**kwargs)
