"""activation family: relu, bias_relu, leaky_relu, sigmoid, tanh, forward and backward.

The float64 reference (engine.reference.activation) is the spec: its backward ops are
checked against central finite differences and its conventions against PyTorch where
torch imports. The Numba float32 ops (engine.cpu.activation) are checked against it on
100 seeded random configurations per op -- rank 2 and 4, batch 1, odd sizes, many
channels, exact zeros and saturating magnitudes -- through both compilations of every
kernel (the serial twin that small arrays use, and the parallel one, forced).
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import activation as fast
from engine.cpu import parallel
from engine.reference import activation as ref
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

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

# op -> (forward args from (x, b, cfg), backward args from (dy, x, y, cfg))
UNARY = {
    "relu": (lambda x, b, c: (x,), lambda dy, x, y, c: (dy, y)),
    "leaky_relu": (lambda x, b, c: (x, c["slope"]), lambda dy, x, y, c: (dy, x, c["slope"])),
    "sigmoid": (lambda x, b, c: (x,), lambda dy, x, y, c: (dy, y)),
    "tanh": (lambda x, b, c: (x,), lambda dy, x, y, c: (dy, y)),
}


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


def test_reference_agrees_with_torch():
    torch = pytest.importorskip("torch")
    x = rng_for(5).standard_normal((4, 3, 5, 5)) * 3
    x[0, 0, 0, :2] = 0.0  # the subgradient at 0
    dy = rng_for(6).standard_normal(x.shape)
    b = rng_for(8).standard_normal(3)
    cases = {
        "relu": (torch.relu, ref.relu_forward, lambda y: ref.relu_backward(dy, y)),
        "leaky_relu": (lambda t: torch.nn.functional.leaky_relu(t, 0.1), lambda v: ref.leaky_relu_forward(v, 0.1),
                       lambda y: ref.leaky_relu_backward(dy, x, 0.1)),
        "sigmoid": (torch.sigmoid, ref.sigmoid_forward, lambda y: ref.sigmoid_backward(dy, y)),
        "tanh": (torch.tanh, ref.tanh_forward, lambda y: ref.tanh_backward(dy, y)),
        "bias_relu": (lambda t: torch.relu(t + torch.from_numpy(b).reshape(1, -1, 1, 1)),
                      lambda v: ref.bias_relu_forward(v, b), lambda y: ref.bias_relu_backward(dy, y)[0]),
    }
    for name, (torch_fn, forward, backward) in cases.items():
        t = torch.tensor(x, requires_grad=True)
        out = torch_fn(t)
        out.backward(torch.from_numpy(dy))
        y = forward(x)
        assert_close(y, out.detach().numpy(), **tol("gradcheck", "float64"), what=f"{name} vs torch forward")
        assert_close(backward(y), t.grad.numpy(), **tol("gradcheck", "float64"), what=f"{name} vs torch backward")


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
    with pytest.raises(ValueError, match="C-contiguous"):
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
