"""The data-parallel runs of tests/test_distributed.py, as a user's script runs them:

    mpiexec -n 2 python tests/dist_worker.py OUT_DIR

Each scenario trains a small model with fit() on this rank's shard of every global batch
and writes what this rank ends with to OUT_DIR/<scenario>-rank<R>.npz: the history's
losses and accuracies, the parameters and the batch-norm buffers. The test builds the same
scenarios in one process (SCENARIOS, make_executor, make_loader) and compares.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import distributed, nn  # noqa: E402
from engine.data import Augment, DataLoader, synthetic  # noqa: E402
from engine.executor import Executor  # noqa: E402
from engine.optim import SGD, Adam  # noqa: E402
from engine.training import fit  # noqa: E402

BATCH = 64
# name -> (samples, epochs, optimizer, batch norm, augmentation). 64 samples make one step
# an epoch, so the history holds the loss of every step; 97 = 64 + 33 ends each epoch with
# a batch split 16/17; 65 = 64 + 1 with one the first rank has no row of.
SCENARIOS = {
    "sgd": (64, 10, lambda: SGD(0.05, momentum=0.9), False, False),
    "adam": (64, 10, lambda: Adam(1e-3), False, False),
    "uneven": (97, 3, lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), False, True),
    "empty": (65, 3, lambda: Adam(1e-3, weight_decay=1e-3), False, False),
    "batchnorm": (64, 10, lambda: SGD(0.05, momentum=0.9), True, False),
    "frozen": (64, 5, lambda: Adam(1e-3), False, False),  # the first conv frozen: only the rest is reduced
}


def make_executor(name: str, comm=None) -> Executor:
    _, _, optimizer, batch_norm, _ = SCENARIOS[name]
    nn.manual_seed(1)
    layers = [nn.Conv2d(1, 6, 5, stride=2)] + ([nn.BatchNorm2d(6)] if batch_norm else [])
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 10)]
    layers[0].trainable = name != "frozen"
    return Executor(nn.Sequential(*layers), (1, 28, 28), optimizer=optimizer(), seed=3, comm=comm)


def make_loader(name: str, shard=None) -> DataLoader:
    samples, _, _, _, augment = SCENARIOS[name]
    x, y = synthetic(samples, (1, 28, 28), 10, seed=5)
    return DataLoader(x, y, BATCH, seed=7, shard=shard,
                      augment=Augment(shift=2, flip=True, seed=11) if augment else None)


def outcome(ex: Executor, history=None) -> dict:
    """What a run ends with, as flat arrays: history, parameters, buffers."""
    state = ex.state_dict()
    out = {f"param/{k}": v for k, v in state["params"].items()}
    out.update({f"buffer/{k}": v for k, v in state["buffers"].items()})
    if history is not None:
        out.update(loss=np.array(history["loss"]), accuracy=np.array(history["accuracy"]))
    return out


def main(out_dir: str) -> None:
    comm = distributed.world()
    assert comm is not None and comm.size > 1, "run under mpiexec -n 2 (or more)"
    for name, (_, epochs, _, _, _) in SCENARIOS.items():
        ex = make_executor(name, comm)
        history = fit(ex, make_loader(name, (comm.rank, comm.size)), epochs, progress=False, log=lambda line: None)
        np.savez(os.path.join(out_dir, f"{name}-rank{comm.rank}.npz"), **outcome(ex, history))


if __name__ == "__main__":
    main(sys.argv[1])
