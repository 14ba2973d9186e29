"""The optimizers with the executor, against torch.optim: every optimizer, weight decay
coupled or decoupled, on everything or on the weights only (no decay on biases and
batch-norm parameters), and an L1 penalty on the weights -- the parameters after a few steps
as PyTorch's, where PyTorch's loss carries the L1 term and its parameter groups the decay."""
from __future__ import annotations

import numpy as np
import pytest

from engine import nn
from engine.executor import Executor, parameter_layout
from engine.optim import OPTIMIZERS, make_optimizer
from engine.tolerances import assert_close


def model():
    # no bias before batch norm: its gradient would be rounding noise, which an adaptive
    # optimizer turns into a full step in float32 and float64 alike, but not the same one
    nn.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def torch_model(torch, ex):
    net = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for t, p in zip(net.parameters(), ex.state_dict()["params"].values()):
            t.copy_(torch.from_numpy(p.astype(np.float64)))
    return net


TORCH = {  # name -> (our kwargs, torch class, its kwargs)
    "sgd": (dict(lr=0.05, momentum=0.9), "SGD", dict(lr=0.05, momentum=0.9)),
    "adam": (dict(lr=0.01), "Adam", dict(lr=0.01)),
    "adamw": (dict(lr=0.01), "AdamW", dict(lr=0.01)),
    "rmsprop": (dict(lr=0.01), "RMSprop", dict(lr=0.01)),
    "adagrad": (dict(lr=0.05), "Adagrad", dict(lr=0.05)),
    "adadelta": (dict(lr=1.0), "Adadelta", dict(lr=1.0)),
}


def test_every_optimizer_is_tested_here():
    assert set(TORCH) == set(OPTIMIZERS)


@pytest.mark.parametrize("decay_all", [True, False], ids=["decay-all", "weights-only"])
@pytest.mark.parametrize("l1", [0.0, 1e-2], ids=["no-l1", "l1"])
@pytest.mark.parametrize("name", sorted(TORCH))
def test_optimizer_steps_as_torch_optim(name, l1, decay_all):
    torch = pytest.importorskip("torch")
    ours, torch_name, theirs = TORCH[name]
    wd = 0.05
    ex = Executor(model(), (6,), optimizer=make_optimizer(name, weight_decay=wd, l1=l1, decay_all=decay_all, **ours))
    net = torch_model(torch, ex)
    weights = [p for p in net.parameters() if p.ndim >= 2]
    others = [p for p in net.parameters() if p.ndim < 2]
    groups = [{"params": weights, "weight_decay": wd}, {"params": others, "weight_decay": wd if decay_all else 0.0}]
    opt = getattr(torch.optim, torch_name)(groups, **theirs)
    rng = np.random.default_rng(6)
    for _ in range(3):
        x, y = rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 3, 10)
        ex.train_step(x, y)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x.astype(np.float64))), torch.from_numpy(y))
        (loss + l1 * sum(w.abs().sum() for w in weights)).backward()
        opt.step()
    for got, t in zip(ex.state_dict()["params"].values(), net.parameters()):
        assert_close(got, t.detach().numpy(), rtol=2e-4, atol=2e-5, what=f"{name} l1={l1} decay_all={decay_all}")


def test_decoupled_decay_shrinks_the_weights_for_any_optimizer():
    """SGD with decoupled=True: p <- p (1 - lr wd) - lr g (AdamW's rule, without Adam)."""
    lr, wd = 0.1, 0.5
    ex = Executor(model(), (6,), optimizer=make_optimizer("sgd", lr=lr, weight_decay=wd, decoupled=True))
    before = {k: v.astype(np.float64) for k, v in ex.state_dict()["params"].items()}
    rng = np.random.default_rng(7)
    ex.train_step(rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 3, 10))
    grads = {k: np.array(ex.grad(layer, name), np.float64) for k, layer, name in ex._keys()}
    for k, after in ex.state_dict()["params"].items():
        assert_close(after, before[k] * (1 - lr * wd) - lr * grads[k], rtol=1e-5, atol=1e-6, what=k)


def test_weights_come_first_in_the_flat_layout():
    layers = [layer for _, layer in model().named_layers()]
    offsets, total, weights_end, trainable_end = parameter_layout(layers)
    assert trainable_end == total  # nothing frozen
    ranks = {key: len(shape) for key, (_, shape) in offsets.items()}
    assert all((offset < weights_end) == (ranks[key] >= 2) for key, (offset, _) in offsets.items())
    assert 0 < weights_end < total


def test_the_optimizer_state_follows_the_parameters_through_a_checkpoint():
    ex = Executor(model(), (6,), optimizer=make_optimizer("adam"))
    rng = np.random.default_rng(8)
    ex.train_step(rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 3, 10))
    state = ex.state_dict()
    assert set(state["optimizer"]) == {"m", "v"} and set(state["optimizer"]["m"]) == set(state["params"])
    again = Executor(model(), (6,), optimizer=make_optimizer("adam"))
    again.load_state_dict(state)
    assert all(np.array_equal(again.opt_state[k], ex.opt_state[k]) for k in ("m", "v"))
    state["optimizer"]["m"] = np.zeros(10)
    with pytest.raises(ValueError, match="optimizer state 'm' is one flat array, as an older engine wrote it"):
        again.load_state_dict(state)


@pytest.mark.parametrize("kwargs, message", [
    (dict(l1=-1.0), r"SGD: l1 must be in \[0, inf\]"),
    (dict(decay_all="no"), "SGD: decay_all must be True or False"),
    (dict(decoupled=1), "SGD: decoupled must be True or False"),
])
def test_bad_regularisation_settings(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_optimizer("sgd", **kwargs)
