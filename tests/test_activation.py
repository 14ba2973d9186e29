"""activation family: every row of the elementwise table (relu, leaky_relu, sigmoid, tanh,
...) and bias_relu, forward and backward.

The float64 reference (engine.reference.activation) is the spec: its backward ops are
checked against central finite differences and its conventions against PyTorch (each
row's own counterpart) where torch imports. The Numba float32 ops (engine.cpu.activation,
one generic kernel per direction compiled for each row) are checked against it on 100
seeded random configurations per op -- rank 2 and 4, batch 1, odd sizes, many channels,
exact zeros and saturating magnitudes -- through both compilations of every kernel (the
serial twin that small arrays use, and the parallel one, forced). A new row is covered
here without a line of test code.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.backend import get_backend
from engine.cards import TorchEnv
from engine.cpu import parallel
from engine.reference.activation import ELEMENTWISE
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

fast = get_backend("numba")
ref = get_backend("reference")

N_CONFIGS = 100
TOL = tol("activation")


def activation_config(seed: int) -> dict:
    rng = rng_for(seed)
    rank = int(rng.choice([2, 4]))
    n = int(rng.choice([1, 1, 2, 3, 8]))
    c = int(rng.choice([1, 3, 5, 16, 64]))
    shape = (n, c) if rank == 2 else (n, c, int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    return dict(shape=shape, scale=float(rng.choice([0.5, 1.0, 4.0, 40.0])),
                slope=float(rng.choice([0.0, 0.01, 0.2, 1.5])), seed=seed)


def draw(cfg: dict):
    """float32 x, dy of the config's shape and b (C,); about 1 in 10 x is exactly 0."""
    rng = rng_for(cfg["seed"] + 10_000)
    shape = cfg["shape"]
    x = (rng.standard_normal(shape) * cfg["scale"]).astype(np.float32)
    x[rng.random(shape) < 0.1] = 0.0  # the kink of relu and leaky relu
    dy = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    return x, dy, b


CONFIGS = [activation_config(seed) for seed in range(N_CONFIGS)]


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """The serial twins (what small arrays get) on all configs, or, forced, the parallel
    kernels on a quarter of them: the same source compiled with prange on, whose launches
    on tiny arrays cost a scheduler slice each on a busy 2-core machine."""
    if request.param == "parallel":
        monkeypatch.setattr(parallel, "PARALLEL_MIN", 0)
        return CONFIGS[::4]
    return CONFIGS


def test_configs_cover_the_hard_cases():
    shapes = [c["shape"] for c in CONFIGS]
    assert any(len(s) == 2 for s in shapes) and any(len(s) == 4 for s in shapes)
    assert any(s[0] == 1 for s in shapes)
    assert any(s[1] >= 64 for s in shapes)
    assert any(len(s) == 4 and s[2] % 2 == 1 and s[2] != s[3] for s in shapes)
    assert any(c["scale"] >= 40 for c in CONFIGS)


# ------------------------------------------------------------------ Numba vs reference

# a row's scalar parameters, drawn from the config where it varies them, else the row's example
PARAMS = {"negative_slope": lambda cfg: cfg["slope"]}


def params(row, cfg) -> tuple:
    return tuple(PARAMS[p](cfg) if p in PARAMS else v for p, v in zip(row.params, row.example))


def saved(row, x, y):
    """What the row's backward takes: the forward's output y or its input x."""
    return x if row.saves == "x" else y


UNARY = {row.name: (lambda x, b, c, row=row: (x, *params(row, c)),
                    lambda dy, x, y, c, row=row: (dy, saved(row, x, y), *params(row, c)))
         for row in ELEMENTWISE}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_matches_reference(op, path):  # path: the configs, see the fixture
    fwd_args, bwd_args = UNARY[op]
    for cfg in path:
        x, dy, b = draw(cfg)
        what = f"{op} x {cfg['shape']} scale={cfg['scale']} seed={cfg['seed']}"
        y = getattr(fast, f"{op}_forward")(*fwd_args(x, b, cfg))
        assert y.dtype == np.float32 and y.shape == x.shape
        assert_close(y, getattr(ref, f"{op}_forward")(*fwd_args(x, b, cfg)), **TOL, what=f"{what} forward")
        # the backward of both is given the same float32 y, so only the backward is judged
        dx = getattr(fast, f"{op}_backward")(*bwd_args(dy, x, y, cfg))
        assert dx.dtype == np.float32 and dx.shape == x.shape
        assert_close(dx, getattr(ref, f"{op}_backward")(*bwd_args(dy, x, y, cfg)), **TOL,
                     what=f"{what} backward")


def test_bias_relu_matches_reference(path):
    for cfg in path:
        x, dy, b = draw(cfg)
        what = f"bias_relu x {cfg['shape']} seed={cfg['seed']}"
        y = fast.bias_relu_forward(x, b)
        assert y.dtype == np.float32
        assert_close(y, ref.bias_relu_forward(x, b), **TOL, what=f"{what} forward")
        dx, db = fast.bias_relu_backward(dy, y)
        rdx, rdb = ref.bias_relu_backward(dy, y)
        assert dx.dtype == db.dtype == np.float32 and db.shape == b.shape
        assert_close(dx, rdx, **TOL, what=f"{what} dx")
        assert_close(db, rdb, **TOL, what=f"{what} db")


def test_large_arrays_take_the_parallel_kernels_and_match():
    # above PARALLEL_MIN without forcing: the dispatch the executor gets at LeNet sizes
    rng = rng_for(7)
    x = rng.standard_normal((16, 6, 28, 28)).astype(np.float32)
    assert x.size >= parallel.PARALLEL_MIN
    b = rng.standard_normal(6).astype(np.float32)
    assert_close(fast.relu_forward(x), ref.relu_forward(x), **TOL, what="relu large")
    y = fast.bias_relu_forward(x, b)
    assert_close(y, ref.bias_relu_forward(x, b), **TOL, what="bias_relu large")
    assert_close(fast.bias_relu_backward(x, y)[1], ref.bias_relu_backward(x, y)[1], **TOL,
                 what="bias_relu large db")


def test_relu_passes_nan_through_like_the_reference():
    x = np.array([np.nan, -1.0, 2.0], dtype=np.float32)
    assert np.isnan(fast.relu_forward(x)[0]) and np.isnan(ref.relu_forward(x)[0])


def test_sigmoid_is_stable_for_large_magnitudes():
    x = np.array([-1e4, -200.0, -30.0, 0.0, 30.0, 200.0, 1e4], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        expected = ref.sigmoid_forward(x)
    y = fast.sigmoid_forward(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(expected))
    assert_close(y, expected, **TOL, what="sigmoid large |x|")
    assert expected[0] >= 0 and expected[-1] == 1.0 and expected[3] == 0.5
    assert expected[2] > 0  # e^-30 is not flushed to zero by the stable form


# ------------------------------------------------------------------ finite differences


def smooth_x(seed, shape):
    """float64 x whose elements are at least 0.1 from the kink at 0."""
    rng = rng_for(seed)
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.1, np.sign(x + 1e-12) * 0.1, x) + 0.0


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 3)])
@pytest.mark.parametrize("op", sorted(UNARY))
def test_reference_backward_matches_finite_differences(op, shape):
    x = smooth_x(1, shape)
    dy = rng_for(2).standard_normal(shape)
    cfg = dict(slope=0.2)
    fwd_args, bwd_args = UNARY[op]
    forward = getattr(ref, f"{op}_forward")
    expected = numerical_grad(lambda v: forward(*fwd_args(v, None, cfg)), x, dy)
    y = forward(*fwd_args(x, None, cfg))
    got = getattr(ref, f"{op}_backward")(*bwd_args(dy, x, y, cfg))
    assert_close(got, expected, **tol("gradcheck", "float64"), what=f"{op} gradcheck {shape}")


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 3)])
def test_reference_bias_relu_backward_matches_finite_differences(shape):
    x = smooth_x(3, shape)
    b = np.zeros(shape[1])  # keeps x + b at least 0.1 from the kink
    dy = rng_for(4).standard_normal(shape)
    y = ref.bias_relu_forward(x, b)
    dx, db = ref.bias_relu_backward(dy, y)
    gt = tol("gradcheck", "float64")
    assert_close(dx, numerical_grad(lambda v: ref.bias_relu_forward(v, b), x, dy), **gt, what="bias_relu dx")
    assert_close(db, numerical_grad(lambda v: ref.bias_relu_forward(x, v), b, dy), **gt, what="bias_relu db")


# ------------------------------------------------------------------ PyTorch conventions


@pytest.mark.parametrize("row", ELEMENTWISE, ids=lambda r: r.name)
def test_reference_agrees_with_torch(row):
    """Forward against the row's torch counterpart, backward against torch's autograd of it
    and against the row's torch backward counterpart (what the benchmarks time)."""
    torch = pytest.importorskip("torch")
    T = TorchEnv(torch, "cpu")
    x = rng_for(5).standard_normal((4, 3, 5, 5)) * row.scale
    x[0, 0, 0, :2] = 0.0  # the subgradient at 0
    dy = rng_for(6).standard_normal(x.shape)
    p = (0.1,) * len(row.params)
    t = torch.tensor(x, requires_grad=True)
    out = row.torch_forward(T, t, *p)
    out.backward(torch.from_numpy(dy))
    y = getattr(ref, f"{row.name}_forward")(x, *p)
    dx = getattr(ref, f"{row.name}_backward")(dy, saved(row, x, y), *p)
    gt = tol("gradcheck", "float64")
    assert_close(y, out.detach().numpy(), **gt, what=f"{row.name} vs torch forward")
    assert_close(dx, t.grad.numpy(), **gt, what=f"{row.name} vs torch autograd")
    counterpart = row.torch_backward(T, torch.from_numpy(dy), torch.from_numpy(saved(row, x, y)), *p)
    assert_close(dx, counterpart.numpy(), **gt, what=f"{row.name} vs its torch backward counterpart")


def test_reference_bias_relu_agrees_with_torch():
    torch = pytest.importorskip("torch")
    x = rng_for(5).standard_normal((4, 3, 5, 5)) * 3
    dy = rng_for(6).standard_normal(x.shape)
    b = rng_for(8).standard_normal(3)
    t = torch.tensor(x, requires_grad=True)
    out = torch.relu(t + torch.from_numpy(b).reshape(1, -1, 1, 1))
    out.backward(torch.from_numpy(dy))
    y = ref.bias_relu_forward(x, b)
    gt = tol("gradcheck", "float64")
    assert_close(y, out.detach().numpy(), **gt, what="bias_relu vs torch forward")
    assert_close(ref.bias_relu_backward(dy, y)[0], t.grad.numpy(), **gt, what="bias_relu vs torch backward")


# ------------------------------------------------------------------ out= and determinism


def test_out_is_written_and_returned():
    x, dy, b = draw(CONFIGS[3])
    y = np.full_like(x, np.nan)
    assert fast.relu_forward(x, out=y) is y
    assert_close(y, ref.relu_forward(x), **TOL, what="relu out=")
    for op in ("sigmoid", "tanh"):
        y = np.full_like(x, np.nan)
        assert getattr(fast, f"{op}_forward")(x, out=y) is y
        dx = np.full_like(x, np.nan)
        assert getattr(fast, f"{op}_backward")(dy, y, out=dx) is dx
        assert_close(dx, getattr(ref, f"{op}_backward")(dy, y), **TOL, what=f"{op} out=")
    y = np.full_like(x, np.nan)
    assert fast.leaky_relu_forward(x, 0.1, out=y) is y
    dx = np.full_like(x, np.nan)
    assert fast.leaky_relu_backward(dy, x, 0.1, out=dx) is dx
    assert_close(dx, ref.leaky_relu_backward(dy, x, 0.1), **TOL, what="leaky_relu out=")
    y = np.full_like(x, np.nan)
    assert fast.bias_relu_forward(x, b, out=y) is y
    dx, db = np.full_like(x, np.nan), np.full_like(b, np.nan)
    got = fast.bias_relu_backward(dy, y, out=(dx, db))
    assert got[0] is dx and got[1] is db
    assert_close(db, ref.bias_relu_backward(dy, y)[1], **TOL, what="bias_relu db out=")
    dx = np.full_like(x, np.nan)
    assert fast.relu_backward(dy, y, out=dx) is dx
    assert_close(dx, ref.relu_backward(dy, y), **TOL, what="relu_backward out=")


def test_strided_out_is_refused():
    x = np.ones((4, 6), dtype=np.float32)
    with pytest.raises(AssertionError, match="C-contiguous"):  # below the gate: an asserted invariant
        fast.relu_forward(x, out=np.empty((6, 4), dtype=np.float32).T)


def test_results_are_bitwise_deterministic():
    rng = rng_for(9)
    x = rng.standard_normal((64, 16, 9, 9)).astype(np.float32)  # above PARALLEL_MIN
    dy = rng.standard_normal(x.shape).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    y = fast.bias_relu_forward(x, b)
    first = [fast.sigmoid_forward(x), fast.tanh_forward(x), *fast.bias_relu_backward(dy, y)]
    for _ in range(3):
        again = [fast.sigmoid_forward(x), fast.tanh_forward(x), *fast.bias_relu_backward(dy, y)]
        for a, b_ in zip(first, again):
            assert np.array_equal(a, b_)
