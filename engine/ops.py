"""Every op of the engine: its card, collected from engine/reference/<family>.py, and the
cases (an op at a shape) that validate, the tests and the benchmarks run.

    from engine.ops import OPS, cases
    OPS["conv2d_forward"].signature      # (x, w, b, stride, padding, out=None)
    for case in cases("odd"):            # every op at every odd shape of its kind
        args = case.inputs()             # float32 NumPy arrays and scalars, seeded by op and shape

A family is a module of engine/reference/ (conv, linear, pool, ...); the Numba and CUDA
implementations of its ops live in the module of the same name in engine/cpu/ and
engine/cuda/, and its kernels in kernels/.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass

import numpy as np

from engine.cards import SHAPE_SETS, OpCard


def family_modules() -> list[str]:
    """The op families: the modules of engine/reference/ (conv, linear, pool, ...)."""
    path = importlib.import_module("engine.reference").__path__
    return sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))


def collect() -> dict[str, OpCard]:
    """name -> card, from CARDS of every engine/reference/<family>.py, with card.module set."""
    found: dict[str, OpCard] = {}
    for family in family_modules():
        module = importlib.import_module(f"engine.reference.{family}")
        for card in getattr(module, "CARDS", ()):
            if card.name in found:
                raise ValueError(f"op {card.name!r} has a card in {found[card.name].module} and in {family}")
            found[card.name] = dataclasses.replace(card, module=family)
    return found


OPS: dict[str, OpCard] = collect()


@dataclass(frozen=True)
class Case:
    """One op at one shape. Inputs are drawn on demand (AlexNet's fc6 weight is 150 MB)
    from a seed fixed by op and shape, so every exposure and every rerun sees the same."""
    op: str
    shape_set: str
    shape: object

    @property
    def card(self) -> OpCard:
        return OPS[self.op]

    @property
    def label(self) -> str:
        return f"{self.shape_set}/{self.shape.name}"

    @property
    def seed(self) -> int:
        return sum(ord(ch) * 31 ** i for i, ch in enumerate(f"{self.op}|{self.label}")) % 2**32

    def inputs(self) -> tuple:
        """Positional args: float32 NumPy arrays (int for labels, argmax, masks) and scalars."""
        return tuple(self.card.make(np.random.default_rng(self.seed), self.shape))

    def flops(self) -> float | None:
        return None if self.card.flops is None else float(self.card.flops(self.shape))


def cases(shape_set: str, batch: int | None = None, ops=None) -> list[Case]:
    """Every (op, shape) pair of a shape set; ops filters by name. batch overrides the set's default."""
    make_shapes = SHAPE_SETS[shape_set]
    records = make_shapes() if batch is None or shape_set == "odd" else make_shapes(batch)
    wanted = list(OPS) if ops is None else list(ops)
    return [Case(op, shape_set, s) for op in wanted for s in records if isinstance(s, OPS[op].kind)]
