"""optim family: in-place SGD (momentum, Nesterov, weight decay), Adam / AdamW, RMSprop
and Adagrad updates of flat arrays.

The float64 reference (engine.reference.optim) is the spec, pinned to torch.optim over
several steps where torch imports; the Numba kernels are checked against it on 100
seeded random configurations per update (sizes from 1 up, random hyperparameters and
state, Adam steps far from 1), through both compilations of the kernels, and against
torch.optim directly.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import parallel as cpu_parallel
from engine.cpu import optim as fast
from engine.reference import optim as ref
from engine.tolerances import assert_close, tol
from tests.helpers import rng_for

N_CONFIGS = 100
TOL = tol("optim")
EXACT64 = tol("gradcheck", "float64")  # float64 reference vs float64 torch: rounding only


def optim_config(seed: int) -> dict:
    rng = rng_for(seed)
    return dict(size=int(rng.choice([1, 2, 7, 100, 1023, 5000])), lr=float(rng.choice([1e-3, 0.01, 0.1, 1.0])),
                momentum=float(rng.choice([0.0, 0.5, 0.9])), nesterov=bool(rng.random() < 0.5),
                weight_decay=float(rng.choice([0.0, 1e-4, 0.1])), step=int(rng.choice([1, 2, 10, 1000])),
                beta1=float(rng.choice([0.0, 0.9])), beta2=float(rng.choice([0.99, 0.999])),
                alpha=float(rng.choice([0.9, 0.99])), eps=float(rng.choice([1e-10, 1e-8, 1e-3])),
                decoupled=bool(rng.random() < 0.5), seed=seed)


def draw(cfg: dict, n_states: int):
    """float32 param, grad and n_states state arrays (non-negative: they may hold squares)."""
    rng = rng_for(cfg["seed"] + 10_000)
    param = rng.standard_normal(cfg["size"]).astype(np.float32)
    grad = rng.standard_normal(cfg["size"]).astype(np.float32)
    states = [np.abs(rng.standard_normal(cfg["size"])).astype(np.float32) for _ in range(n_states)]
    return param, grad, states


# update -> (number of state arrays, hyperparameters after the state, from a config)
UPDATES = {
    "sgd_update": (1, lambda c: (c["lr"], c["momentum"], c["weight_decay"], c["nesterov"])),
    "adam_update": (2, lambda c: (c["step"], c["lr"], c["beta1"], c["beta2"], c["eps"], c["weight_decay"],
                                  c["decoupled"])),
    "rmsprop_update": (1, lambda c: (c["lr"], c["alpha"], c["eps"], c["weight_decay"])),
    "adagrad_update": (1, lambda c: (c["lr"], c["eps"], c["weight_decay"])),
    "adadelta_update": (2, lambda c: (c["lr"], c["alpha"], c["eps"], c["weight_decay"])),  # alpha as rho
}
CONFIGS = [optim_config(seed) for seed in range(N_CONFIGS)]


@pytest.fixture(params=["serial", "parallel"])
def configs(request, monkeypatch):
    """All configs on the kernels small arrays get; a quarter on the parallel kernels, forced."""
    if request.param == "parallel":
        monkeypatch.setattr(cpu_parallel, "PARALLEL_MIN", 0)
        return CONFIGS[::4]
    return CONFIGS


def test_configs_cover_the_hard_cases():
    assert any(c["size"] == 1 for c in CONFIGS) and any(c["size"] % 2 == 1 and c["size"] > 1 for c in CONFIGS)
    assert any(c["momentum"] == 0 for c in CONFIGS) and any(c["momentum"] > 0 and c["nesterov"] for c in CONFIGS)
    assert any(c["step"] == 1 for c in CONFIGS) and any(c["step"] >= 1000 for c in CONFIGS)
    assert any(c["decoupled"] and c["weight_decay"] > 0 for c in CONFIGS)


# ------------------------------------------------------------------ Numba vs reference


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_update_matches_reference(update, configs):
    n_states, hyper = UPDATES[update]
    for cfg in configs:
        param, grad, states = draw(cfg, n_states)
        grad_before = grad.copy()
        ref_param, ref_states = param.astype(np.float64), [s.astype(np.float64) for s in states]
        assert getattr(fast, update)(param, grad, *states, *hyper(cfg)) is None
        getattr(ref, update)(ref_param, grad, *ref_states, *hyper(cfg))
        what = f"{update} size={cfg['size']} {hyper(cfg)} seed={cfg['seed']}"
        assert param.dtype == np.float32 and all(s.dtype == np.float32 for s in states)
        assert_close(param, ref_param, **TOL, what=f"{what} param")
        for i, (s, r) in enumerate(zip(states, ref_states)):
            assert_close(s, r, **TOL, what=f"{what} state {i}")
        assert np.array_equal(grad, grad_before), f"{what}: grad was modified"


def test_large_arrays_take_the_parallel_kernels_and_match():
    cfg = dict(optim_config(0), size=100_000, momentum=0.9, weight_decay=0.01)
    assert cfg["size"] >= cpu_parallel.PARALLEL_MIN
    for update, (n_states, hyper) in UPDATES.items():
        param, grad, states = draw(cfg, n_states)
        ref_param, ref_states = param.astype(np.float64), [s.astype(np.float64) for s in states]
        getattr(fast, update)(param, grad, *states, *hyper(cfg))
        getattr(ref, update)(ref_param, grad, *ref_states, *hyper(cfg))
        assert_close(param, ref_param, **TOL, what=f"{update} large")


def test_plain_sgd_leaves_velocity_untouched():
    param, grad, (velocity,) = draw(CONFIGS[0], 1)
    for module in (fast, ref):
        before = velocity.copy()
        module.sgd_update(param, grad, velocity, 0.1, 0.0, 0.01, False)
        assert np.array_equal(velocity, before), module.__name__


def test_adam_step_counts_from_one():
    param, grad, (m, v) = draw(CONFIGS[0], 2)
    for module in (fast, ref):
        with pytest.raises(AssertionError, match="adam_update: expected step >= 1"):  # below the gate
            module.adam_update(param, grad, m, v, 0, 0.1, 0.9, 0.999, 1e-8, 0.0, False)


# ------------------------------------------------------------------ torch.optim


def torch_cases(torch):
    """name -> (torch optimizer factory, our update name, state count, hyperparameters(step))."""
    o = torch.optim
    return {
        "SGD": (lambda p: o.SGD([p], lr=0.1), "sgd_update", 1, lambda t: (0.1, 0.0, 0.0, False)),
        "SGD weight decay": (lambda p: o.SGD([p], lr=0.05, weight_decay=0.1), "sgd_update", 1,
                             lambda t: (0.05, 0.0, 0.1, False)),
        "SGD momentum": (lambda p: o.SGD([p], lr=0.1, momentum=0.9), "sgd_update", 1,
                         lambda t: (0.1, 0.9, 0.0, False)),
        "SGD Nesterov + wd": (lambda p: o.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                              "sgd_update", 1, lambda t: (0.1, 0.9, 0.01, True)),
        "Adam": (lambda p: o.Adam([p], lr=0.01), "adam_update", 2,
                 lambda t: (t, 0.01, 0.9, 0.999, 1e-8, 0.0, False)),
        "Adam L2": (lambda p: o.Adam([p], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), "adam_update", 2,
                    lambda t: (t, 0.01, 0.8, 0.99, 1e-6, 0.1, False)),
        "AdamW": (lambda p: o.AdamW([p], lr=0.01, weight_decay=0.1), "adam_update", 2,
                  lambda t: (t, 0.01, 0.9, 0.999, 1e-8, 0.1, True)),
        "RMSprop": (lambda p: o.RMSprop([p], lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.05), "rmsprop_update", 1,
                    lambda t: (0.01, 0.9, 1e-8, 0.05)),
        "Adagrad": (lambda p: o.Adagrad([p], lr=0.1, eps=1e-10, weight_decay=0.05), "adagrad_update", 1,
                    lambda t: (0.1, 1e-10, 0.05)),
        "Adadelta": (lambda p: o.Adadelta([p]), "adadelta_update", 2, lambda t: (1.0, 0.9, 1e-6, 0.0)),
        "Adadelta wd": (lambda p: o.Adadelta([p], lr=0.5, rho=0.95, eps=1e-5, weight_decay=0.1), "adadelta_update",
                        2, lambda t: (0.5, 0.95, 1e-5, 0.1)),
    }


@pytest.mark.parametrize("name", ["SGD", "SGD weight decay", "SGD momentum", "SGD Nesterov + wd", "Adam",
                                  "Adam L2", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adadelta wd"])
def test_updates_agree_with_torch_optim_over_several_steps(name):
    torch = pytest.importorskip("torch")
    make, update, n_states, hyper = torch_cases(torch)[name]
    rng = rng_for(8)
    start = rng.standard_normal(257)
    tp = torch.tensor(start, requires_grad=True)
    optimizer = make(tp)
    p64, states64 = start.copy(), [np.zeros(257) for _ in range(n_states)]  # reference
    p32, states32 = start.astype(np.float32), [np.zeros(257, np.float32) for _ in range(n_states)]  # Numba
    for step in range(1, 7):
        grad = rng.standard_normal(257)
        tp.grad = torch.tensor(grad)
        optimizer.step()
        getattr(ref, update)(p64, grad, *states64, *hyper(step))
        getattr(fast, update)(p32, grad.astype(np.float32), *states32, *hyper(step))
        expected = tp.detach().numpy()
        assert_close(p64, expected, **EXACT64, what=f"reference {name} vs torch, step {step}")
        assert_close(p32, expected, **TOL, what=f"Numba {name} vs torch, step {step}")


# ------------------------------------------------------------------ determinism


def test_updates_are_bitwise_deterministic():
    cfg = dict(optim_config(3), size=70_001, momentum=0.9, weight_decay=0.01)  # above PARALLEL_MIN
    for update, (n_states, hyper) in UPDATES.items():
        results = []
        for _ in range(3):
            param, grad, states = draw(cfg, n_states)
            getattr(fast, update)(param, grad, *states, *hyper(cfg))
            results.append((param, *states))
        for again in results[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(results[0], again)), update


# ------------------------------------------------------------------ the weight penalty


@pytest.mark.parametrize("l1, l2, shrink", [(1e-3, 0.0, 1.0), (0.0, 5e-4, 1.0), (1e-2, 1e-3, 1.0),
                                            (0.0, 0.0, 1.0 - 0.1 * 0.05)])
def test_weight_penalty_matches_reference_and_torch(l1, l2, shrink):
    """grad gains what L1 (l1 |p|) and L2 (l2 p^2 / 2) add to a loss's gradient, as torch's
    autograd computes it, and p shrinks as decoupled weight decay does; sign(0) is 0."""
    rng = rng_for(11)
    param = rng.standard_normal(1001).astype(np.float32)
    param[::10] = 0.0
    grad = rng.standard_normal(1001).astype(np.float32)
    p32, g32 = param.copy(), grad.copy()
    p64, g64 = param.astype(np.float64), grad.astype(np.float64)
    assert fast.weight_penalty_update(p32, g32, l1, l2, shrink) is None
    ref.weight_penalty_update(p64, g64, l1, l2, shrink)
    assert_close(g32, g64, **TOL, what="penalty grad")
    assert_close(p32, p64, **TOL, what="penalty param")
    torch = pytest.importorskip("torch")
    t = torch.tensor(param.astype(np.float64), requires_grad=True)
    (l1 * t.abs().sum() + l2 / 2 * (t * t).sum()).backward()
    assert_close(g64 - grad, t.grad.numpy(), **EXACT64, what="penalty vs torch autograd")
    assert_close(p64, param * shrink, **EXACT64, what="decoupled decay")
