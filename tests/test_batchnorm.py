"""batchnorm family: batch_norm and the fused batch_norm + ReLU, forward and backward.

The float64 reference (engine.reference.batchnorm) is the spec: biased batch variance
to normalise, unbiased in the running variance, running = (1 - momentum) * running +
momentum * batch, updated in place; eval mode uses the running statistics. It is pinned
to torch.nn.functional.batch_norm where torch imports, and its backward (training and
eval) is checked against central finite differences. The Numba float32 ops are checked
against it on 100 seeded random configurations: (N, C) and (N, C, H, W), batch 1, odd
sizes, many channels, training and eval, large means, through both compilations of the
kernels.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import parallel as cpu_parallel
from engine.cpu import batchnorm as fast
from engine.reference import batchnorm as ref
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

N_CONFIGS = 100
TOL = tol("batchnorm")
GRADCHECK = tol("gradcheck", "float64")


def bn_config(seed: int) -> dict:
    rng = rng_for(seed)
    n = int(rng.choice([1, 1, 2, 3, 7, 16]))
    c = int(rng.choice([1, 2, 3, 5, 16, 64]))
    if rng.random() < 0.4:
        shape = (max(n, 2), c)  # (N, C): training needs N > 1
    else:
        shape = (n, c, int(rng.integers(1, 8)), int(rng.integers(1, 8)))
        if n * shape[2] * shape[3] == 1:
            shape = (n, c, 1, 2)  # training needs N*H*W > 1
    return dict(shape=shape, training=bool(rng.random() < 0.7), relu=bool(rng.random() < 0.5),
                momentum=float(rng.choice([0.0, 0.1, 0.5, 1.0])), eps=float(rng.choice([1e-5, 1e-3])),
                offset=float(rng.choice([0.0, 0.0, 3.0, -50.0, 1000.0])),
                spread=float(rng.choice([0.01, 1.0, 10.0])), seed=seed)


def draw(cfg: dict):
    """float32 x, dy (shape), gamma, beta, running_mean, running_var (C,) for a config."""
    rng = rng_for(cfg["seed"] + 10_000)
    shape, c = cfg["shape"], cfg["shape"][1]
    x = (cfg["offset"] + cfg["spread"] * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    # in eval the running statistics normalise x: keep them near x's own
    running_mean = (cfg["offset"] + cfg["spread"] * rng.standard_normal(c)).astype(np.float32)
    running_var = (cfg["spread"] ** 2 * rng.uniform(0.5, 2.0, c)).astype(np.float32)
    return x, dy, gamma, beta, running_mean, running_var


def describe(cfg: dict) -> str:
    return (f"x {cfg['shape']} {'train' if cfg['training'] else 'eval'}{' +relu' if cfg['relu'] else ''} "
            f"momentum={cfg['momentum']} eps={cfg['eps']} offset={cfg['offset']} spread={cfg['spread']} "
            f"seed={cfg['seed']}")


CONFIGS = [bn_config(seed) for seed in range(N_CONFIGS)]


@pytest.fixture(params=["serial", "parallel"])
def configs(request, monkeypatch):
    """All configs on the kernels small arrays get; a quarter on the parallel kernels, forced
    (tiny parallel launches cost a scheduler slice each on a busy 2-core machine)."""
    if request.param == "parallel":
        monkeypatch.setattr(cpu_parallel, "PARALLEL_MIN", 0)
        return CONFIGS[::4]
    return CONFIGS


def test_configs_cover_the_hard_cases():
    shapes = [c["shape"] for c in CONFIGS]
    assert any(len(s) == 2 for s in shapes) and any(len(s) == 4 for s in shapes)
    assert any(len(s) == 4 and s[0] == 1 and c["training"] for s, c in zip(shapes, CONFIGS))
    assert any(s[1] >= 64 for s in shapes)
    assert any(len(s) == 4 and s[2] % 2 == 1 and s[2] != s[3] for s in shapes)
    assert any(not c["training"] for c in CONFIGS) and any(c["relu"] for c in CONFIGS)
    assert any(c["offset"] >= 1000 and c["spread"] <= 1 for c in CONFIGS)
    assert all(int(np.prod(s)) // s[1] > 1 for s in shapes)


# ------------------------------------------------------------------ Numba vs reference


def test_forward_and_running_stats_match_reference(configs):
    for cfg in configs:
        x, _, gamma, beta, rm, rv = draw(cfg)
        rm64, rv64 = rm.astype(np.float64), rv.astype(np.float64)
        name = "batch_norm_relu_forward" if cfg["relu"] else "batch_norm_forward"
        args = (cfg["training"], cfg["momentum"], cfg["eps"])
        got = getattr(fast, name)(x, gamma, beta, rm, rv, *args)
        expected = getattr(ref, name)(x, gamma, beta, rm64, rv64, *args)
        for label, a, e in zip(("y", "save_mean", "save_invstd"), got, expected):
            assert a.dtype == np.float32
            assert_close(a, e, **TOL, what=f"{name} {label} {describe(cfg)}")
        assert rm.dtype == rv.dtype == np.float32
        assert_close(rm, rm64, **TOL, what=f"{name} running_mean {describe(cfg)}")
        assert_close(rv, rv64, **TOL, what=f"{name} running_var {describe(cfg)}")


def test_backward_matches_reference(configs):
    for cfg in configs:
        x, dy, gamma, beta, rm, rv = draw(cfg)
        training = cfg["training"]
        # both backwards get the same float32 statistics (and y), so only backward is judged
        if cfg["relu"]:
            y, mean, invstd = fast.batch_norm_relu_forward(x, gamma, beta, rm, rv, training, 0.1, cfg["eps"])
            got = fast.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, training)
            expected = ref.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, training)
        else:
            y, mean, invstd = fast.batch_norm_forward(x, gamma, beta, rm, rv, training, 0.1, cfg["eps"])
            got = fast.batch_norm_backward(dy, x, gamma, mean, invstd, training)
            expected = ref.batch_norm_backward(dy, x, gamma, mean, invstd, training)
        for label, a, e in zip(("dx", "dgamma", "dbeta"), got, expected):
            assert a.dtype == np.float32 and a.shape == e.shape
            assert_close(a, e, **TOL, what=f"backward {label} {describe(cfg)}")


def test_lenet_sizes_take_the_parallel_kernels_and_match():
    rng = rng_for(11)
    for shape in [(64, 6, 14, 14), (512, 120)]:
        x = (2.0 + rng.standard_normal(shape)).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        c = shape[1]
        gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        assert x.size >= cpu_parallel.PARALLEL_MIN
        y, mean, invstd = fast.batch_norm_relu_forward(x, gamma, beta, None, None, True, 0.1, 1e-5)
        assert_close(y, ref.batch_norm_relu_forward(x, gamma, beta, None, None, True, 0.1, 1e-5)[0], **TOL,
                     what=f"bn+relu forward {shape}")
        got = fast.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, True)
        expected = ref.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, True)
        for label, a, e in zip(("dx", "dgamma", "dbeta"), got, expected):
            assert_close(a, e, **TOL, what=f"bn+relu backward {label} {shape}")


def test_eval_mode_uses_and_keeps_the_running_statistics():
    x, _, gamma, beta, rm, rv = draw(CONFIGS[0])
    before = rm.copy(), rv.copy()
    for module in (fast, ref):
        y, mean, invstd = module.batch_norm_forward(x, gamma, beta, rm, rv, False, 0.1, 1e-5)
        assert np.array_equal(rm, before[0]) and np.array_equal(rv, before[1])
        assert_close(mean, rm, **TOL, what=f"{module.__name__} eval save_mean")
        assert_close(invstd, 1 / np.sqrt(rv.astype(np.float64) + 1e-5), **TOL,
                     what=f"{module.__name__} eval save_invstd")


# ------------------------------------------------------------------ finite differences


def gradcheck_inputs(shape, seed):
    rng = rng_for(seed)
    c = shape[1]
    return (rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape), rng.standard_normal(c),
            rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2.0, c))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 3, 2), (1, 2, 2, 3)])
def test_reference_backward_matches_finite_differences(shape, training):
    x, dy, gamma, beta, rm, rv = gradcheck_inputs(shape, 1)
    eps = 1e-3

    def forward(x_=x, gamma_=gamma, beta_=beta):
        # running stats are not tracked in training here (None): f must be pure
        return ref.batch_norm_forward(x_, gamma_, beta_, None if training else rm, None if training else rv,
                                      training, 0.1, eps)[0]

    _, mean, invstd = ref.batch_norm_forward(x, gamma, beta, rm.copy(), rv.copy(), training, 0.1, eps)
    dx, dgamma, dbeta = ref.batch_norm_backward(dy, x, gamma, mean, invstd, training)
    what = f"{shape} {'train' if training else 'eval'}"
    assert_close(dx, numerical_grad(lambda v: forward(x_=v), x, dy), **GRADCHECK, what=f"dx {what}")
    assert_close(dgamma, numerical_grad(lambda v: forward(gamma_=v), gamma, dy), **GRADCHECK, what=f"dgamma {what}")
    assert_close(dbeta, numerical_grad(lambda v: forward(beta_=v), beta, dy), **GRADCHECK, what=f"dbeta {what}")


@pytest.mark.parametrize("training", [True, False])
def test_reference_bn_relu_backward_matches_finite_differences(training):
    shape = (3, 2, 2, 3)
    x, dy, gamma, beta, rm, rv = gradcheck_inputs(shape, 2)
    eps = 1e-3
    stats = (None, None) if training else (rm, rv)
    z = ref.batch_norm_forward(x, gamma, beta, *stats, training, 0.1, eps)[0]
    assert np.abs(z).min() > 1e-3 and (z > 0).any() and (z < 0).any()  # away from the kink, both sides

    def forward(v):
        return ref.batch_norm_relu_forward(v, gamma, beta, *stats, training, 0.1, eps)[0]

    y, mean, invstd = ref.batch_norm_relu_forward(x, gamma, beta, *stats, training, 0.1, eps)
    dx, _, _ = ref.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, training)
    assert_close(dx, numerical_grad(forward, x, dy), **GRADCHECK, what=f"bn+relu dx training={training}")


# ------------------------------------------------------------------ PyTorch conventions


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 3), (1, 3, 2, 2)])
def test_running_statistics_and_gradients_match_torch(shape):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x0, dy, gamma, beta, _, _ = gradcheck_inputs(shape, 3)
    c = shape[1]
    t_rm, t_rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    rm, rv = np.zeros(c), np.ones(c)  # reference, float64
    rm32, rv32 = np.zeros(c, np.float32), np.ones(c, np.float32)  # Numba, float32
    for step in range(3):  # running statistics accumulate over steps
        x = x0 * (step + 1) + step
        tx = torch.tensor(x, requires_grad=True)
        tg, tb = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
        ty = F.batch_norm(tx, t_rm, t_rv, tg, tb, training=True, momentum=0.1, eps=1e-5)
        ty.backward(torch.from_numpy(dy))
        y, mean, invstd = ref.batch_norm_forward(x, gamma, beta, rm, rv, True, 0.1, 1e-5)
        fast.batch_norm_forward(x.astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32),
                                rm32, rv32, True, 0.1, 1e-5)
        what = f"{shape} step {step}"
        assert_close(y, ty.detach().numpy(), **GRADCHECK, what=f"y vs torch {what}")
        assert_close(rm, t_rm.numpy(), **GRADCHECK, what=f"running_mean vs torch {what}")
        assert_close(rv, t_rv.numpy(), **GRADCHECK, what=f"running_var vs torch {what}")
        assert_close(rm32, t_rm.numpy(), **TOL, what=f"Numba running_mean vs torch {what}")
        assert_close(rv32, t_rv.numpy(), **TOL, what=f"Numba running_var vs torch {what}")
        for label, ours, theirs in zip(("dx", "dgamma", "dbeta"),
                                       ref.batch_norm_backward(dy, x, gamma, mean, invstd, True),
                                       (tx.grad, tg.grad, tb.grad)):
            assert_close(ours, theirs.numpy(), **GRADCHECK, what=f"{label} vs torch {what}")
    # eval: normalise with the running statistics, which stay put; statistics are constants
    tx = torch.tensor(x0, requires_grad=True)
    ty = F.batch_norm(tx, t_rm, t_rv, torch.from_numpy(gamma), torch.from_numpy(beta), training=False, eps=1e-5)
    ty.backward(torch.from_numpy(dy))
    y, mean, invstd = ref.batch_norm_forward(x0, gamma, beta, rm, rv, False, 0.1, 1e-5)
    assert_close(y, ty.detach().numpy(), **GRADCHECK, what=f"eval y vs torch {shape}")
    dx = ref.batch_norm_backward(dy, x0, gamma, mean, invstd, False)[0]
    assert_close(dx, tx.grad.numpy(), **GRADCHECK, what=f"eval dx vs torch {shape}")


# ------------------------------------------------------------------ out= and determinism


@pytest.mark.parametrize("relu", [False, True])
def test_out_is_written_and_returned(relu):
    x, dy, gamma, beta, rm, rv = draw(CONFIGS[5])
    c = x.shape[1]
    forward = fast.batch_norm_relu_forward if relu else fast.batch_norm_forward
    out = (np.full_like(x, np.nan), np.full(c, np.nan, np.float32), np.full(c, np.nan, np.float32))
    got = forward(x, gamma, beta, rm.copy(), rv.copy(), True, 0.1, 1e-5, out=out)
    assert all(g is o for g, o in zip(got, out))
    fresh = forward(x, gamma, beta, rm.copy(), rv.copy(), True, 0.1, 1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(out, fresh))
    grads = (np.full_like(x, np.nan), np.full(c, np.nan, np.float32), np.full(c, np.nan, np.float32))
    y, mean, invstd = fresh
    if relu:
        got = fast.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, True, out=grads)
        fresh = fast.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, True)
    else:
        got = fast.batch_norm_backward(dy, x, gamma, mean, invstd, True, out=grads)
        fresh = fast.batch_norm_backward(dy, x, gamma, mean, invstd, True)
    assert all(g is o for g, o in zip(got, grads))
    assert all(np.array_equal(a, b) for a, b in zip(grads, fresh))


def test_results_are_bitwise_deterministic():
    rng = rng_for(12)
    for shape in [(8, 16, 20, 20), (300, 130)]:  # above PARALLEL_MIN
        x = (1.0 + rng.standard_normal(shape)).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        c = shape[1]
        gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)

        def run():
            rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
            y, mean, invstd = fast.batch_norm_relu_forward(x, gamma, beta, rm, rv, True, 0.1, 1e-5)
            return (y, mean, invstd, rm, rv, *fast.batch_norm_relu_backward(dy, y, x, gamma, mean, invstd, True))

        first = run()
        for _ in range(3):
            assert all(np.array_equal(a, b) for a, b in zip(first, run()))
