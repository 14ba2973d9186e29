"""Optimizers: hyperparameters and state layout; the update itself is an op of the backend
(ops sgd_update, adam_update, ... of engine.ops), one launch over the executor's flat
parameter array. Semantics follow torch.optim (see engine/reference/optim.py, the spec).

Regularisation, for every optimizer:

    weight_decay   L2, added to the gradient inside the update (torch's weight_decay); with
                   decoupled=True the weights shrink by 1 - lr * weight_decay instead
                   (AdamW's rule, for any optimizer)
    l1             an L1 penalty l1 * |w| on the weights: l1 * sign(w) joins the gradient
                   just before the update, a pass over the flat weights, none over the graph
    decay_all      False: no weight decay on biases and batch-norm parameters

The executor lays the flat array out as [weights | biases and batch-norm parameters], so
"the weights" (conv and dense weights) are its first `weights_end` elements and each part
is one slice: the update runs once per part that is treated differently.
"""
from __future__ import annotations

from engine import checks as C


class Optimizer:
    state_names: tuple = ()  # flat arrays, shaped like the parameters, zero at the start
    native_decoupled = False  # the update kernel applies decoupled weight decay itself (AdamW)

    def __init__(self, lr: float, weight_decay: float = 0.0, l1: float = 0.0, decoupled: bool = False,
                 decay_all: bool = True):
        op = type(self).__name__
        self.lr = C.real(op, "lr", lr, low=0.0)
        self.weight_decay = C.real(op, "weight_decay", weight_decay, low=0.0)
        self.l1 = C.real(op, "l1", l1, low=0.0)
        self.decoupled = C.boolean(op, "decoupled", decoupled)
        self.decay_all = C.boolean(op, "decay_all", decay_all)

    def update(self, bk, params, grads, state: dict, step: int, lr: float, weight_decay: float) -> None:
        """The optimizer's own kernel over one part of the flat arrays."""
        raise NotImplementedError

    def step(self, bk, params, grads, state: dict, step: int, lr: float, weights_end: int) -> None:
        """One update of every parameter, with the penalties where they apply."""
        decayed = params.size if self.decay_all else weights_end
        kernel_decay = self.weight_decay
        if self.l1 and weights_end:
            bk.weight_penalty_update(params[:weights_end], grads[:weights_end], self.l1, 0.0, 1.0)
        if self.decoupled and self.weight_decay and not self.native_decoupled:
            bk.weight_penalty_update(params[:decayed], grads[:decayed], 0.0, 0.0, 1.0 - lr * self.weight_decay)
            kernel_decay = 0.0
        if decayed == params.size or kernel_decay == 0.0:
            self.update(bk, params, grads, state, step, lr, kernel_decay)
            return
        parts = ((slice(0, decayed), kernel_decay), (slice(decayed, params.size), 0.0))
        for part, decay in parts:
            if part.stop > part.start:
                self.update(bk, params[part], grads[part], {k: v[part] for k, v in state.items()}, step, lr, decay)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "state_names")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """SGD with optional momentum (PyTorch's form, dampening 0), Nesterov and weight decay."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, **regularisation):
        super().__init__(lr, weight_decay, **regularisation)
        self.momentum = C.real("SGD", "momentum", momentum, low=0.0)
        self.nesterov = C.boolean("SGD", "nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0, got momentum 0")
        self.state_names = ("velocity",)

    def update(self, bk, params, grads, state, step, lr, weight_decay):
        bk.sgd_update(params, grads, state["velocity"], lr, self.momentum, weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam with bias correction; weight_decay is an L2 term added to the gradient, or with
    decoupled=True AdamW's decay (as the class AdamW)."""
    native_decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **regularisation):
        super().__init__(lr, weight_decay, **regularisation)
        op = type(self).__name__
        self.beta1 = C.real(op, "betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
        self.beta2 = C.real(op, "betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
        self.eps = C.positive(op, "eps", eps)
        self.state_names = ("m", "v")

    def update(self, bk, params, grads, state, step, lr, weight_decay):
        bk.adam_update(params, grads, state["m"], state["v"], step, lr, self.beta1, self.beta2,
                       self.eps, weight_decay, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **regularisation):
        super().__init__(lr, betas, eps, weight_decay, **{"decoupled": True, **regularisation})


class RMSprop(Optimizer):
    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, **regularisation):
        super().__init__(lr, weight_decay, **regularisation)
        self.alpha = C.real("RMSprop", "alpha", alpha, low=0.0, high=1.0)
        self.eps = C.positive("RMSprop", "eps", eps)
        self.state_names = ("square_avg",)

    def update(self, bk, params, grads, state, step, lr, weight_decay):
        bk.rmsprop_update(params, grads, state["square_avg"], lr, self.alpha, self.eps, weight_decay)


class Adagrad(Optimizer):
    def __init__(self, lr=0.01, eps=1e-10, weight_decay=0.0, **regularisation):
        super().__init__(lr, weight_decay, **regularisation)
        self.eps = C.positive("Adagrad", "eps", eps)
        self.state_names = ("sum_sq",)

    def update(self, bk, params, grads, state, step, lr, weight_decay):
        bk.adagrad_update(params, grads, state["sum_sq"], lr, self.eps, weight_decay)


class Adadelta(Optimizer):
    """Adadelta (torch's): steps scaled by the running RMS of past steps over that of the
    gradients; lr 1.0 applies them as they are."""

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, **regularisation):
        super().__init__(lr, weight_decay, **regularisation)
        self.rho = C.real("Adadelta", "rho", rho, low=0.0, high=1.0)
        self.eps = C.positive("Adadelta", "eps", eps)
        self.state_names = ("square_avg", "acc_delta")

    def update(self, bk, params, grads, state, step, lr, weight_decay):
        bk.adadelta_update(params, grads, state["square_avg"], state["acc_delta"], lr, self.rho, self.eps,
                           weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad,
              "adadelta": Adadelta}
# learning rates that train the engine's models from scratch (the CLI's defaults): SGD with
# momentum 0.9, the adaptive ones a few times 1e-3 (AdamW 2e-3 with cosine decay: 97.1-97.5%
# held out on LeNet over seeds 0-2), Adadelta its own scale
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 2e-3, "rmsprop": 1e-3, "adagrad": 1e-2, "adadelta": 1.0}


def make_optimizer(name: str, lr: float | None = None, **kwargs) -> Optimizer:
    """An optimizer by name ('sgd', 'adam', ...); lr None keeps the optimizer's default."""
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    if lr is not None:
        kwargs["lr"] = lr
    return OPTIMIZERS[name](**kwargs)
