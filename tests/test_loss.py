"""loss family: fused softmax cross-entropy (loss and dlogits in one op) and MSE.

The float64 reference (engine.reference.loss) is the spec: checked against central
finite differences and against torch's cross_entropy / mse_loss where torch imports.
The Numba float32 ops are checked against it on 100 seeded random configurations per
op -- batch 1, one class, odd sizes, logits up to magnitude 1e4 -- through both
compilations of the kernels.
"""
from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.cpu import parallel as cpu_parallel
from engine.cpu import loss as fast
from engine.reference import loss as ref
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

N_CONFIGS = 100
TOL = tol("loss")
GRADCHECK = tol("gradcheck", "float64")


def xent_config(seed: int) -> dict:
    rng = rng_for(seed)
    return dict(n=int(rng.choice([1, 1, 2, 3, 7, 64, 257])), k=int(rng.choice([1, 2, 3, 10, 33, 200])),
                scale=float(rng.choice([0.1, 1.0, 10.0, 1e4])), offset=float(rng.choice([0.0, -300.0, 5e3])),
                label_dtype=str(rng.choice(["int64", "int32"])), seed=seed)


def draw_xent(cfg: dict):
    rng = rng_for(cfg["seed"] + 10_000)
    logits = (cfg["offset"] + cfg["scale"] * rng.standard_normal((cfg["n"], cfg["k"]))).astype(np.float32)
    labels = rng.integers(0, cfg["k"], cfg["n"]).astype(cfg["label_dtype"])
    return logits, labels


def mse_config(seed: int) -> dict:
    rng = rng_for(seed)
    rank = int(rng.integers(1, 5))
    return dict(shape=tuple(int(v) for v in rng.choice([1, 2, 3, 5, 16, 31], size=rank)),
                scale=float(rng.choice([0.01, 1.0, 100.0])), seed=seed)


def draw_mse(cfg: dict):
    rng = rng_for(cfg["seed"] + 10_000)
    pred = (cfg["scale"] * rng.standard_normal(cfg["shape"])).astype(np.float32)
    target = (cfg["scale"] * rng.standard_normal(cfg["shape"])).astype(np.float32)
    return pred, target, np.float32(rng.uniform(0.1, 3.0))


XENT = [xent_config(seed) for seed in range(N_CONFIGS)]
MSE = [mse_config(seed) for seed in range(N_CONFIGS)]


@pytest.fixture(params=["serial", "parallel"])
def parallel(request, monkeypatch):
    """False: all configs on the kernels small arrays get; True: a quarter of them on the
    parallel kernels, forced (tests slice the config list with it)."""
    if request.param == "parallel":
        monkeypatch.setattr(cpu_parallel, "PARALLEL_MIN", 0)
        return True
    return False


def test_configs_cover_the_hard_cases():
    assert any(c["n"] == 1 for c in XENT) and any(c["k"] == 1 for c in XENT)
    assert any(c["scale"] >= 1e4 for c in XENT) and any(c["offset"] >= 5e3 for c in XENT)
    assert {c["label_dtype"] for c in XENT} == {"int32", "int64"}
    assert any(c["n"] % 2 == 1 and c["k"] % 2 == 1 and c["n"] > 1 for c in XENT)


# ------------------------------------------------------------------ Numba vs reference


def test_softmax_cross_entropy_matches_reference(parallel):
    for cfg in XENT[::4] if parallel else XENT:
        logits, labels = draw_xent(cfg)
        what = f"softmax_xent ({cfg['n']}, {cfg['k']}) scale={cfg['scale']} offset={cfg['offset']} seed={cfg['seed']}"
        loss, dlogits = fast.softmax_cross_entropy_forward(logits, labels)
        rloss, rdlogits = ref.softmax_cross_entropy_forward(logits, labels)
        assert loss.shape == () and loss.dtype == np.float32 and dlogits.dtype == np.float32
        assert_close(loss, rloss, **TOL, what=f"{what} loss")
        assert_close(dlogits, rdlogits, **TOL, what=f"{what} dlogits")


def test_mse_matches_reference(parallel):
    for cfg in MSE[::4] if parallel else MSE:
        pred, target, dloss = draw_mse(cfg)
        what = f"mse {cfg['shape']} scale={cfg['scale']} seed={cfg['seed']}"
        loss = fast.mse_loss_forward(pred, target)
        assert loss.shape == () and loss.dtype == np.float32
        assert_close(loss, ref.mse_loss_forward(pred, target), **TOL, what=f"{what} loss")
        dpred = fast.mse_loss_backward(pred, target, dloss)
        assert dpred.dtype == np.float32
        assert_close(dpred, ref.mse_loss_backward(pred, target, dloss), **TOL, what=f"{what} dpred")


def test_large_inputs_take_the_parallel_kernels_and_match():
    rng = rng_for(1)
    logits = rng.standard_normal((256, 1000)).astype(np.float32)
    labels = rng.integers(0, 1000, 256)
    assert logits.size >= cpu_parallel.PARALLEL_MIN
    for a, e in zip(fast.softmax_cross_entropy_forward(logits, labels),
                    ref.softmax_cross_entropy_forward(logits, labels)):
        assert_close(a, e, **TOL, what="softmax_xent (256, 1000)")
    pred, target = logits, rng.standard_normal(logits.shape).astype(np.float32)
    assert_close(fast.mse_loss_forward(pred, target), ref.mse_loss_forward(pred, target), **TOL, what="mse large")


def test_softmax_cross_entropy_is_stable_for_logits_of_magnitude_1e4():
    rng = rng_for(2)
    logits = (1e4 * rng.standard_normal((9, 6))).astype(np.float32)
    logits[0] = [1e4, -1e4, 1e4, 0.0, -1e4, 9999.0]  # ties at the max, and a near-tie
    labels = rng.integers(0, 6, 9)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        rloss, rd = ref.softmax_cross_entropy_forward(logits, labels)
    loss, d = fast.softmax_cross_entropy_forward(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(d)) and np.isfinite(rloss)
    assert_close(loss, rloss, **TOL, what="softmax_xent 1e4 loss")
    assert_close(d, rd, **TOL, what="softmax_xent 1e4 dlogits")
    # the naive log(sum(exp(x))) overflows here; the loss must still be of order 1e4
    assert rloss > 100
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.from_numpy(labels))
    assert_close(rloss, expected.numpy(), **GRADCHECK, what="softmax_xent 1e4 vs torch")


def test_bad_labels_are_refused_before_any_kernel_runs():
    # engine.checks refuses them with a ValueError (tests/test_bad_input.py); below the gate the
    # backends assert the invariant, so a caller that bypasses the gate never reads out of bounds
    logits = np.zeros((3, 4), dtype=np.float32)
    for module in (fast, ref):
        for labels in (np.array([0, 4, 1]), np.array([0, -1, 1])):
            with pytest.raises(AssertionError, match=r"softmax_cross_entropy_forward: expected labels in \[0, 4\)"):
                module.softmax_cross_entropy_forward(logits, labels)
    with pytest.raises(AssertionError, match="shape"):
        ref.softmax_cross_entropy_forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"cross_entropy: label 4 out of range \[0, 4\)"):
        F.cross_entropy(logits, np.array([0, 4, 1]))


# ------------------------------------------------------------------ finite differences


@pytest.mark.parametrize("shape", [(1, 3), (4, 5), (3, 1)])
def test_reference_softmax_cross_entropy_gradient_matches_finite_differences(shape):
    rng = rng_for(3)
    logits = 3 * rng.standard_normal(shape)
    labels = rng.integers(0, shape[1], shape[0])
    _, dlogits = ref.softmax_cross_entropy_forward(logits, labels)
    expected = numerical_grad(lambda v: ref.softmax_cross_entropy_forward(v, labels)[0], logits, np.array(1.0))
    assert_close(dlogits, expected, **GRADCHECK, what=f"softmax_xent gradcheck {shape}")


def test_reference_mse_backward_matches_finite_differences():
    rng = rng_for(4)
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    dloss = 1.7
    expected = numerical_grad(lambda v: ref.mse_loss_forward(v, target), pred, np.array(dloss))
    assert_close(ref.mse_loss_backward(pred, target, dloss), expected, **GRADCHECK, what="mse gradcheck")


# ------------------------------------------------------------------ PyTorch conventions


@pytest.mark.parametrize("shape", [(1, 10), (7, 3), (64, 10)])
def test_softmax_cross_entropy_agrees_with_torch(shape):
    torch = pytest.importorskip("torch")
    rng = rng_for(5)
    logits = 4 * rng.standard_normal(shape)
    labels = rng.integers(0, shape[1], shape[0])
    t = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(t, torch.from_numpy(labels))
    loss.backward()
    rloss, rd = ref.softmax_cross_entropy_forward(logits, labels)
    assert_close(rloss, loss.detach().numpy(), **GRADCHECK, what=f"softmax_xent loss vs torch {shape}")
    assert_close(rd, t.grad.numpy(), **GRADCHECK, what=f"softmax_xent dlogits vs torch {shape}")
    floss, fd = fast.softmax_cross_entropy_forward(logits.astype(np.float32), labels)
    assert_close(floss, loss.detach().numpy(), **TOL, what=f"Numba softmax_xent loss vs torch {shape}")
    assert_close(fd, t.grad.numpy(), **TOL, what=f"Numba softmax_xent dlogits vs torch {shape}")


def test_mse_agrees_with_torch():
    torch = pytest.importorskip("torch")
    rng = rng_for(6)
    pred, target = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    t = torch.tensor(pred, requires_grad=True)
    loss = torch.nn.functional.mse_loss(t, torch.from_numpy(target))
    loss.backward(torch.tensor(2.5, dtype=torch.float64))
    assert_close(ref.mse_loss_forward(pred, target), loss.detach().numpy(), **GRADCHECK, what="mse vs torch")
    assert_close(ref.mse_loss_backward(pred, target, 2.5), t.grad.numpy(), **GRADCHECK, what="dmse vs torch")


# ------------------------------------------------------------------ out= and determinism


def test_out_is_written_and_returned():
    logits, labels = draw_xent(XENT[4])
    loss, d = np.full((), np.nan, np.float32), np.full_like(logits, np.nan)
    got = fast.softmax_cross_entropy_forward(logits, labels, out=(loss, d))
    assert got[0] is loss and got[1] is d
    fresh = fast.softmax_cross_entropy_forward(logits, labels)
    assert np.array_equal(loss, fresh[0]) and np.array_equal(d, fresh[1])
    pred, target, dloss = draw_mse(MSE[4])
    loss = np.full((), np.nan, np.float32)
    assert fast.mse_loss_forward(pred, target, out=loss) is loss
    assert np.array_equal(loss, fast.mse_loss_forward(pred, target))
    dpred = np.full_like(pred, np.nan)
    assert fast.mse_loss_backward(pred, target, dloss, out=dpred) is dpred
    assert np.array_equal(dpred, fast.mse_loss_backward(pred, target, dloss))


def test_results_are_bitwise_deterministic():
    rng = rng_for(7)
    logits = (5 * rng.standard_normal((512, 100))).astype(np.float32)  # above PARALLEL_MIN
    labels = rng.integers(0, 100, 512)
    target = rng.standard_normal(logits.shape).astype(np.float32)
    first = (*fast.softmax_cross_entropy_forward(logits, labels), fast.mse_loss_forward(logits, target))
    for _ in range(3):
        again = (*fast.softmax_cross_entropy_forward(logits, labels), fast.mse_loss_forward(logits, target))
        assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_serial_and_parallel_kernels_give_the_same_bits():
    """The row sums and the MSE chunk sums run in vector lanes (fastmath reassoc on the
    reductions alone): their order is fixed by the code, so the serial twin that small
    arrays get and the parallel kernel agree bitwise, at a 1000-class row and an odd size."""
    rng = rng_for(8)
    x = (3 * rng.standard_normal((37, 1003))).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    labels = rng.integers(0, x.shape[1], x.shape[0])

    def run(kind: str) -> list:  # kind: "serial" or "parallel", the twin of every kernel
        out = [np.empty_like(x) for _ in range(4)] + [np.empty(x.shape[0]), np.empty(10)]  # 10 MSE chunks
        getattr(fast._softmax_rows, kind)(x, out[0], False)
        getattr(fast._softmax_rows, kind)(x, out[1], True)
        getattr(fast._softmax_rows_backward, kind)(target, x, out[2], False)
        getattr(fast._softmax_xent, kind)(x, labels, out[3], out[4])
        getattr(fast._squared_error_sums, kind)(x.ravel(), target.ravel(), out[5])
        return out

    for serial, parallel in zip(run("serial"), run("parallel")):
        assert np.array_equal(serial, parallel)
