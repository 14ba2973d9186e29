"""Learning-rate schedules: the rate as a function of training progress in epochs
(a float: epoch 2.5 is half-way through the third epoch), so one rule serves schedules
stepped per epoch (step) and per batch (cosine, one-cycle)."""
from __future__ import annotations

import math

from engine import checks as C


class Constant:
    def __call__(self, base_lr: float, epoch: float) -> float:
        return base_lr


class StepLR:
    """Multiply the rate by gamma every step_size epochs (as torch.optim.lr_scheduler.StepLR)."""

    def __init__(self, step_size: int = 10, gamma: float = 0.1):
        self.step_size = C.integer("StepLR", "step_size", step_size, minimum=1)
        self.gamma = C.real("StepLR", "gamma", gamma, low=0.0)

    def __call__(self, base_lr, epoch):
        return base_lr * self.gamma ** (int(epoch) // self.step_size)


class Cosine:
    """Cosine annealing from the base rate to min_lr over total_epochs, updated every batch."""

    def __init__(self, total_epochs: float, min_lr: float = 0.0):
        self.total = C.real("Cosine", "total_epochs", total_epochs, low=1e-9)
        self.min_lr = C.real("Cosine", "min_lr", min_lr, low=0.0)

    def __call__(self, base_lr, epoch):
        t = min(epoch / self.total, 1.0)
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


class OneCycle:
    """One-cycle (Smith): warm up from max_lr/div_factor to max_lr over pct_start of the run
    (cosine), then anneal to max_lr/(div_factor*final_div_factor). base_lr is max_lr."""

    def __init__(self, total_epochs: float, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        self.total = C.real("OneCycle", "total_epochs", total_epochs, low=1e-9)
        self.pct = C.real("OneCycle", "pct_start", pct_start, low=0.0, high=1.0)
        self.div = C.positive("OneCycle", "div_factor", div_factor)
        self.final_div = C.positive("OneCycle", "final_div_factor", final_div_factor)

    def __call__(self, base_lr, epoch):
        t = min(epoch / self.total, 1.0)
        start, low = base_lr / self.div, base_lr / (self.div * self.final_div)
        if t < self.pct:
            a, b, u = start, base_lr, t / self.pct
        else:
            a, b, u = base_lr, low, (t - self.pct) / max(1.0 - self.pct, 1e-12)
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * u))


def make_schedule(name: str, epochs: int):
    """'constant', 'step', 'cosine' or 'onecycle' for a run of `epochs` epochs."""
    table = {"constant": lambda: Constant(), "step": lambda: StepLR(max(1, epochs // 3), 0.1),
             "cosine": lambda: Cosine(epochs), "onecycle": lambda: OneCycle(epochs)}
    if name not in table:
        raise ValueError(f"make_schedule: expected one of {sorted(table)}, got {name!r}")
    return table[name]()
