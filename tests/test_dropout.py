"""dropout family: inverted dropout with a counter-based mask.

The mask is a function of (seed, flat index) fixed in engine.reference.dropout, so every
backend must draw it bit for bit: the reference is checked against an independent
pure-Python evaluation of the spec (Python ints, mod 2**64), and the Numba mask against
the reference on 100 seeded random configurations (shapes, p, seeds beyond 2**63 and
negative ones), through both compilations of the kernel.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import parallel as cpu_parallel
from engine.cpu import dropout as fast
from engine.reference import dropout as ref
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

N_CONFIGS = 100
TOL = tol("dropout")
MASK64 = 2**64 - 1


def spec_mask_bit(i: int, p: float, seed: int) -> int:
    """The spec, line by line, in Python's unbounded ints: an implementation independent
    of NumPy's uint64 wrap-around."""
    z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z = z ^ (z >> 31)
    u = (z >> 40) * 2.0**-24
    return int(u >= p)


def dropout_config(seed: int) -> dict:
    rng = rng_for(seed)
    rank = int(rng.integers(1, 5))
    shape = tuple(int(v) for v in rng.choice([1, 2, 3, 7, 16, 33], size=rank))
    return dict(shape=shape, p=float(rng.choice([0.0, 0.1, 0.25, 0.5, 0.9, 0.999])),
                seed=int(rng.choice([0, 1, 12345, 2**63 + 7, 2**64 - 1, -5])), cfg_seed=seed)


CONFIGS = [dropout_config(seed) for seed in range(N_CONFIGS)]


@pytest.fixture(params=["serial", "parallel"])
def configs(request, monkeypatch):
    """All configs on the kernel small arrays get; a quarter on the parallel kernel, forced."""
    if request.param == "parallel":
        monkeypatch.setattr(cpu_parallel, "PARALLEL_MIN", 0)
        return CONFIGS[::4]
    return CONFIGS


def draw(cfg: dict):
    rng = rng_for(cfg["cfg_seed"] + 10_000)
    return (rng.standard_normal(cfg["shape"]).astype(np.float32),
            rng.standard_normal(cfg["shape"]).astype(np.float32))


def test_reference_mask_is_the_spec():
    for p, seed in [(0.5, 0), (0.3, 2**64 - 1), (0.9, 987654321), (0.1, -3)]:
        mask = ref.dropout_mask((257,), p, seed)
        expected = [spec_mask_bit(i, p, seed % 2**64) for i in range(257)]
        assert mask.dtype == np.uint8 and mask.tolist() == expected, f"p={p} seed={seed}"


def test_mask_follows_the_flat_c_order_index():
    # the same elements get the same bits whatever the shape: the counter is the flat index
    assert np.array_equal(ref.dropout_mask((6, 35), 0.4, 9).reshape(-1), ref.dropout_mask((210,), 0.4, 9))
    x = rng_for(1).standard_normal((6, 35)).astype(np.float32)
    assert np.array_equal(fast.dropout_forward(x, 0.4, 9)[1].reshape(-1), ref.dropout_mask((210,), 0.4, 9))


def test_numba_matches_reference_bitwise_mask(configs):
    for cfg in configs:
        x, dy = draw(cfg)
        what = f"dropout x {cfg['shape']} p={cfg['p']} seed={cfg['seed']}"
        y, mask = fast.dropout_forward(x, cfg["p"], cfg["seed"])
        ry, rmask = ref.dropout_forward(x, cfg["p"], cfg["seed"])
        assert mask.dtype == np.uint8 and np.array_equal(mask, rmask), what
        assert y.dtype == np.float32
        assert_close(y, ry, **TOL, what=f"{what} y")
        dx = fast.dropout_backward(dy, mask, cfg["p"])
        assert dx.dtype == np.float32
        assert_close(dx, ref.dropout_backward(dy, mask, cfg["p"]), **TOL, what=f"{what} dx")


def test_large_arrays_take_the_parallel_kernel_and_match():
    x = rng_for(2).standard_normal((64, 1000)).astype(np.float32)
    assert x.size >= cpu_parallel.PARALLEL_MIN
    y, mask = fast.dropout_forward(x, 0.3, 77)
    assert np.array_equal(mask, ref.dropout_mask(x.shape, 0.3, 77))
    assert_close(y, ref.dropout_forward(x, 0.3, 77)[0], **TOL, what="dropout large")


def test_same_seed_same_mask_different_seed_different_mask():
    x = np.ones((50, 40), dtype=np.float32)
    for module in (fast, ref):
        a = module.dropout_forward(x, 0.5, 3)[1]
        assert np.array_equal(a, module.dropout_forward(x, 0.5, 3)[1]), module.__name__
        b = module.dropout_forward(x, 0.5, 4)[1]
        # two independent masks at p = 0.5 agree on about half of 2000 elements
        assert 0.4 < np.mean(a == b) < 0.6, module.__name__


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_fraction_is_close_to_one_minus_p(p):
    n = 200_000
    mask = fast.dropout_forward(np.ones(n, dtype=np.float32), p, 2024)[1]
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(mask.mean() - (1 - p)) < 5 * sigma
    # the expectation is preserved: kept elements are scaled by 1 / (1 - p)
    y = fast.dropout_forward(np.ones(n, dtype=np.float32), p, 2024)[0]
    assert abs(y.mean() - 1.0) < 5 * sigma / (1 - p)


def test_p_zero_is_the_identity():
    x = rng_for(3).standard_normal((5, 7, 3)).astype(np.float32)
    for module in (fast, ref):
        y, mask = module.dropout_forward(x, 0.0, 11)
        assert np.all(mask == 1), module.__name__
        assert np.array_equal(np.asarray(y, dtype=np.float32), x), module.__name__


def test_reference_backward_matches_finite_differences():
    x = rng_for(4).standard_normal((4, 9))
    dy = rng_for(5).standard_normal((4, 9))
    p, seed = 0.3, 8
    _, mask = ref.dropout_forward(x, p, seed)
    assert 0 < mask.sum() < mask.size  # both kept and dropped elements are exercised
    expected = numerical_grad(lambda v: ref.dropout_forward(v, p, seed)[0], x, dy)
    assert_close(ref.dropout_backward(dy, mask, p), expected, **tol("gradcheck", "float64"),
                 what="dropout gradcheck")


def test_out_is_written_and_returned():
    x, dy = draw(CONFIGS[7])
    y, mask = np.full_like(x, np.nan), np.full(x.shape, 7, dtype=np.uint8)
    got = fast.dropout_forward(x, 0.4, 5, out=(y, mask))
    assert got[0] is y and got[1] is mask
    fresh = fast.dropout_forward(x, 0.4, 5)
    assert np.array_equal(y, fresh[0]) and np.array_equal(mask, fresh[1])
    dx = np.full_like(x, np.nan)
    assert fast.dropout_backward(dy, mask, 0.4, out=dx) is dx
    assert np.array_equal(dx, fast.dropout_backward(dy, mask, 0.4))


def test_results_are_bitwise_deterministic():
    x = rng_for(6).standard_normal((128, 512)).astype(np.float32)
    first = fast.dropout_forward(x, 0.5, 99)
    for _ in range(3):
        again = fast.dropout_forward(x, 0.5, 99)
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
