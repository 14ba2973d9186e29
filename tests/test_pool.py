"""pool family: max and average pooling, forward and backward.

The float64 reference (engine.reference.pool) fixes the conventions (-inf padding, the
first maximum wins ties, NaN propagates, argmax int32 flat in the (n, c) plane,
count_include_pad) and is pinned to PyTorch's where torch is installed; its backward ops
are checked against finite differences. The Numba float32 ops (engine.cpu.pool) are
checked against it on 100 seeded random configurations per op: batch 1, odd and
non-square sizes and windows, overlapping windows, stride larger than the window,
padding up to kernel // 2, many channels.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import pool as fast
from engine.reference import pool as ref
from engine.shapes import window_output_hw
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

N_CONFIGS = 100


def pool_config(seed: int) -> dict:
    rng = rng_for(seed)
    r, s = (int(v) for v in rng.integers(1, 5, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 6, size=2))            # up to 5: often > window
    ph, pw = int(rng.integers(0, r // 2 + 1)), int(rng.integers(0, s // 2 + 1))  # up to kernel // 2
    h = int(rng.integers(max(1, r - 2 * ph), r + 10))
    w = int(rng.integers(max(1, s - 2 * pw), s + 10))
    return dict(n=int(rng.choice([1, 1, 2, 3])), c=int(rng.choice([1, 2, 3, 16])), h=h, w=w,
                kernel=(r, s), stride=(sh, sw), padding=(ph, pw), seed=seed)


def draw(cfg: dict, ties: bool = False):
    """float32 x (N, C, H, W) and dy (N, C, P, Q); with ties, x holds few distinct values."""
    rng = rng_for(cfg["seed"] + 10_000)
    shape = (cfg["n"], cfg["c"], cfg["h"], cfg["w"])
    x = rng.integers(-2, 3, size=shape) if ties else rng.standard_normal(shape)
    p, q = window_output_hw(cfg["h"], cfg["w"], cfg["kernel"], cfg["stride"], cfg["padding"])
    dy = rng.standard_normal((cfg["n"], cfg["c"], p, q))
    return x.astype(np.float32), dy.astype(np.float32)


def describe(cfg: dict) -> str:
    return (f"x ({cfg['n']}, {cfg['c']}, {cfg['h']}, {cfg['w']}) kernel={cfg['kernel']} "
            f"stride={cfg['stride']} padding={cfg['padding']} seed={cfg['seed']}")


CONFIGS = [pool_config(seed) for seed in range(N_CONFIGS)]


def args(cfg):
    return cfg["kernel"], cfg["stride"], cfg["padding"]


def test_configs_cover_the_hard_cases():
    assert any(c["n"] == 1 for c in CONFIGS)
    assert any(c["h"] != c["w"] and c["h"] % 2 == 1 for c in CONFIGS)
    assert any(c["kernel"][0] != c["kernel"][1] for c in CONFIGS)
    assert any(c["stride"][0] > c["kernel"][0] for c in CONFIGS)             # gaps between windows
    assert any(1 < c["stride"][0] < c["kernel"][0] for c in CONFIGS)         # overlapping windows
    assert any(c["padding"][0] == c["kernel"][0] // 2 > 0 for c in CONFIGS)
    assert any(c["c"] >= 16 for c in CONFIGS)


# ------------------------------------------------------------------ Numba vs reference


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_max_pool2d_forward_matches_reference(ties):
    for cfg in CONFIGS:
        x, _ = draw(cfg, ties)
        y, arg = fast.max_pool2d_forward(x, *args(cfg))
        y_ref, arg_ref = ref.max_pool2d_forward(x, *args(cfg))
        assert y.dtype == np.float32 and arg.dtype == np.int32
        assert_close(y, y_ref, **tol("pool"), what=f"max_pool2d_forward {describe(cfg)}")
        np.testing.assert_array_equal(arg, arg_ref, err_msg=f"argmax {describe(cfg)}")


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_max_pool2d_backward_matches_reference(ties):
    for cfg in CONFIGS:
        x, dy = draw(cfg, ties)
        _, arg = ref.max_pool2d_forward(x, *args(cfg))
        dx = fast.max_pool2d_backward(dy, arg, x.shape)
        assert dx.shape == x.shape and dx.dtype == np.float32
        assert_close(dx, ref.max_pool2d_backward(dy, arg, x.shape), **tol("pool"),
                     what=f"max_pool2d_backward {describe(cfg)}")


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_forward_matches_reference(count_include_pad):
    for cfg in CONFIGS:
        x, _ = draw(cfg)
        y = fast.avg_pool2d_forward(x, *args(cfg), count_include_pad)
        assert y.dtype == np.float32
        assert_close(y, ref.avg_pool2d_forward(x, *args(cfg), count_include_pad), **tol("pool"),
                     what=f"avg_pool2d_forward count_include_pad={count_include_pad} {describe(cfg)}")


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_backward_matches_reference(count_include_pad):
    for cfg in CONFIGS:
        x, dy = draw(cfg)
        dx = fast.avg_pool2d_backward(dy, x.shape, *args(cfg), count_include_pad)
        assert dx.shape == x.shape and dx.dtype == np.float32
        assert_close(dx, ref.avg_pool2d_backward(dy, x.shape, *args(cfg), count_include_pad), **tol("pool"),
                     what=f"avg_pool2d_backward count_include_pad={count_include_pad} {describe(cfg)}")


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("shape", [(3, 6, 28, 28), (2, 3, 9, 7), (1, 1, 2, 2), (2, 16, 10, 11)])
def test_max_pool2d_2x2_fast_path_matches_reference(shape, ties):
    # 2x2 windows at stride 2 without padding take their own kernel (the random configs
    # above rarely draw it): the same values and argmax, ties, NaN and -inf included
    rng = rng_for(sum(shape) + ties)
    x = (rng.integers(-2, 3, size=shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    x.reshape(-1)[::7] = np.nan
    x.reshape(-1)[3::11] = -np.inf
    y, arg = fast.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    y_ref, arg_ref = ref.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    # a maximum is one of the inputs: exactly equal (NaN where the reference has NaN)
    np.testing.assert_array_equal(y, y_ref, err_msg=f"max_pool2d_forward 2x2/2 x {shape}")
    np.testing.assert_array_equal(arg, arg_ref, err_msg=f"argmax 2x2/2 x {shape}")


def test_max_pool2d_2x2_fast_path_reads_an_input_4_bytes_off_alignment():
    # the even-width kernel reads cell pairs as uint64: an array starting at an odd float
    # (a contiguous slice of a bigger buffer) must give the same results
    rng = rng_for(5)
    buffer = rng.standard_normal(1 + 2 * 3 * 8 * 6).astype(np.float32)
    x = buffer[1:].reshape(2, 3, 8, 6)
    assert x.ctypes.data % 8 == 4
    y, arg = fast.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    y_ref, arg_ref = ref.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)


@pytest.mark.parametrize("module", [fast, ref], ids=["numba", "reference"])
def test_max_pool2d_conventions(module):
    # ties: the first cell in row-major window order wins
    x = np.array([[[[1, 3, 3], [3, 0, 3], [3, 3, 3]]]], dtype=np.float32)
    y, arg = module.max_pool2d_forward(x, (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(arg[0, 0], [[1, 1], [3, 5]])
    # padding is -inf: with every value negative, a padded cell still never wins
    x = -1.0 - np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    y, arg = module.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])  # zero padding would give 0s
    np.testing.assert_array_equal(arg[0, 0], [[0, 1], [3, 4]])
    # NaN propagates, and an all -inf window still names a real cell of its window
    x = np.array([[[[1, np.nan, -np.inf, -np.inf], [5, 2, -np.inf, -np.inf]]]], dtype=np.float32)
    y, arg = module.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    assert np.isnan(y[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 1
    assert y[0, 0, 0, 1] == -np.inf and arg[0, 0, 0, 1] == 2
    # ... also when the window's first cells are padding: it names its first in-bounds cell
    x = np.full((1, 1, 3, 4), -np.inf, dtype=np.float32)
    _, arg = module.max_pool2d_forward(x, (2, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(arg[0, 0], [[0, 1], [4, 5]])
    # overlapping windows that share a maximum add their gradients into it
    x = np.zeros((1, 1, 3, 3), dtype=np.float32)
    x[0, 0, 1, 1] = 5
    _, arg = module.max_pool2d_forward(x, (2, 2), (1, 1), (0, 0))
    dx = module.max_pool2d_backward(np.ones((1, 1, 2, 2), dtype=np.float32), arg, x.shape)
    assert dx[0, 0, 1, 1] == 4 and dx.sum() == 4


@pytest.mark.parametrize("module", [fast, ref], ids=["numba", "reference"])
def test_avg_pool2d_divisor(module):
    x = np.ones((1, 1, 2, 2), dtype=np.float32)
    # a 3x3 window at padding 1 over a 2x2 plane sees 4 real cells (at every window position)
    y_in = module.avg_pool2d_forward(x, (3, 3), (1, 1), (1, 1), count_include_pad=True)
    y_ex = module.avg_pool2d_forward(x, (3, 3), (1, 1), (1, 1), count_include_pad=False)
    np.testing.assert_allclose(y_in, np.full((1, 1, 2, 2), 4 / 9), rtol=1e-6)
    np.testing.assert_allclose(y_ex, np.ones((1, 1, 2, 2)), rtol=1e-6)


# ------------------------------------------------------------------ reference vs calculus

GRAD_CASES = [  # (n, c, h, w, kernel, stride, padding)
    (1, 1, 4, 4, (2, 2), (2, 2), (0, 0)),
    (2, 2, 7, 5, (3, 3), (2, 2), (1, 1)),   # overlapping, as AlexNet
    (1, 2, 6, 7, (2, 3), (3, 4), (1, 1)),   # stride > kernel, non-square
    (1, 1, 5, 5, (3, 1), (1, 2), (1, 0)),
]


@pytest.mark.parametrize("n,c,h,w,kernel,stride,padding", GRAD_CASES)
def test_reference_backward_matches_finite_differences(n, c, h, w, kernel, stride, padding):
    rng = rng_for(h * 10 + w)
    # distinct values 0.01 apart: eps = 1e-6 never swaps a maximum, so max is smooth here
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 0.01
    dy = rng.standard_normal(ref.avg_pool2d_forward(x, kernel, stride, padding).shape)
    g = tol("gradcheck", "float64")
    _, arg = ref.max_pool2d_forward(x, kernel, stride, padding)
    num = numerical_grad(lambda v: ref.max_pool2d_forward(v, kernel, stride, padding)[0], x, dy)
    assert_close(ref.max_pool2d_backward(dy, arg, x.shape), num, **g, what="max_pool2d dx")
    for cip in (True, False):
        num = numerical_grad(lambda v: ref.avg_pool2d_forward(v, kernel, stride, padding, cip), x, dy)
        assert_close(ref.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, cip), num, **g,
                     what=f"avg_pool2d dx count_include_pad={cip}")


# ------------------------------------------------------------------ reference vs PyTorch

TORCH_CASES = [  # (n, c, h, w, kernel, stride, padding)
    (2, 3, 28, 28, (2, 2), (2, 2), (0, 0)),
    (2, 2, 27, 27, (3, 3), (2, 2), (0, 0)),
    (1, 3, 9, 8, (3, 2), (2, 3), (1, 1)),
    (2, 1, 11, 7, (2, 2), (3, 3), (1, 0)),
]


@pytest.mark.parametrize("n,c,h,w,kernel,stride,padding", TORCH_CASES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_reference_matches_torch(n, c, h, w, kernel, stride, padding, ties):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = rng_for(h + w)
    x = rng.integers(-2, 3, size=(n, c, h, w)).astype(np.float64) if ties else rng.standard_normal((n, c, h, w))
    g = tol("gradcheck", "float64")
    xt = torch.tensor(x, requires_grad=True)
    yt, idx = F.max_pool2d(xt, kernel, stride, padding, return_indices=True)
    dy = rng.standard_normal(tuple(yt.shape))
    (dxt,) = torch.autograd.grad(yt, xt, torch.tensor(dy))
    y, arg = ref.max_pool2d_forward(x, kernel, stride, padding)
    assert_close(y, yt.detach().numpy(), **g, what="max y")
    np.testing.assert_array_equal(arg, idx.numpy(), err_msg="argmax differs from torch's indices")
    assert_close(ref.max_pool2d_backward(dy, arg, x.shape), dxt.numpy(), **g, what="max dx")
    for cip in (True, False):
        yt = F.avg_pool2d(xt, kernel, stride, padding, count_include_pad=cip)
        (dxt,) = torch.autograd.grad(yt, xt, torch.tensor(dy))
        assert_close(ref.avg_pool2d_forward(x, kernel, stride, padding, cip), yt.detach().numpy(), **g,
                     what=f"avg y count_include_pad={cip}")
        assert_close(ref.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, cip), dxt.numpy(), **g,
                     what=f"avg dx count_include_pad={cip}")


# ------------------------------------------------------------------ out= and determinism


def _calls(module, cfg):
    x, dy = draw(cfg)
    _, arg = ref.max_pool2d_forward(x, *args(cfg))
    return [
        ("max_pool2d_backward", lambda out: module.max_pool2d_backward(dy, arg, x.shape, out=out)),
        ("avg_pool2d_forward", lambda out: module.avg_pool2d_forward(x, *args(cfg), False, out=out)),
        ("avg_pool2d_backward", lambda out: module.avg_pool2d_backward(dy, x.shape, *args(cfg), False, out=out)),
    ]


OUT_CFG = dict(n=2, c=3, h=9, w=8, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=1)


@pytest.mark.parametrize("module,dtype", [(fast, np.float32), (ref, np.float64)], ids=["numba", "reference"])
def test_out_is_written_in_place(module, dtype):
    x, _ = draw(OUT_CFG)
    y_expected, arg_expected = module.max_pool2d_forward(x, *args(OUT_CFG))
    out = (np.full(y_expected.shape, np.nan, dtype=dtype), np.full(arg_expected.shape, -7, dtype=np.int32))
    result = module.max_pool2d_forward(x, *args(OUT_CFG), out=out)
    assert result[0] is out[0] and result[1] is out[1], "max_pool2d_forward: did not write into out"
    np.testing.assert_array_equal(out[0], y_expected)
    np.testing.assert_array_equal(out[1], arg_expected)
    for name, call in _calls(module, OUT_CFG):
        expected = call(None)
        assert expected.dtype == dtype, f"{name}: dtype {expected.dtype}, expected {dtype}"
        out = np.full(expected.shape, np.nan, dtype=dtype)
        assert call(out) is out, f"{name}: returned a new array instead of out"
        np.testing.assert_array_equal(out, expected, err_msg=f"{name}: out= differs from the allocated result")


def test_numba_is_deterministic():
    cfg = dict(n=8, c=16, h=27, w=27, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=2)
    x, _ = draw(cfg)
    calls = [("max_pool2d_forward y", lambda out: fast.max_pool2d_forward(x, *args(cfg))[0]),
             ("max_pool2d_forward argmax", lambda out: fast.max_pool2d_forward(x, *args(cfg))[1])]
    for name, call in calls + _calls(fast, cfg):
        first = call(None)
        for _ in range(3):
            np.testing.assert_array_equal(call(None), first, err_msg=f"{name}: differs between runs")


# ------------------------------------------------------------------ adaptive average pooling

def adaptive_config(seed: int) -> dict:
    """Any input size to any output size: divisible, overlapping windows, more outputs than inputs."""
    rng = rng_for(seed + 20_000)
    h, w = (int(v) for v in rng.integers(1, 14, size=2))
    oh, ow = (int(v) for v in rng.integers(1, 9, size=2))
    return dict(n=int(rng.choice([1, 2, 3])), c=int(rng.choice([1, 3, 16])), h=h, w=w, out=(oh, ow), seed=seed)


ADAPTIVE_CONFIGS = [adaptive_config(seed) for seed in range(N_CONFIGS)]


def test_adaptive_configs_cover_the_hard_cases():
    assert any(c["out"][0] > c["h"] for c in ADAPTIVE_CONFIGS)           # cells repeated
    assert any(c["h"] % c["out"][0] and c["out"][0] < c["h"] for c in ADAPTIVE_CONFIGS)  # windows overlap
    assert any(c["out"] == (1, 1) or c["h"] == c["out"][0] for c in ADAPTIVE_CONFIGS)


@pytest.mark.parametrize("shape", [(2, 16, 10, 10), (3, 5, 1, 7), (1, 1, 13, 3), (64, 64, 7, 7)])
def test_global_average_pooling_matches_reference(shape):
    # the 1x1 output (a ResNet's head) has kernels of its own that sum whole planes
    rng = rng_for(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape[:2] + (1, 1)).astype(np.float32)
    assert_close(fast.adaptive_avg_pool2d_forward(x, (1, 1)), ref.adaptive_avg_pool2d_forward(x, (1, 1)),
                 **tol("pool"), what=f"global average pooling forward {shape}")
    assert_close(fast.adaptive_avg_pool2d_backward(dy, shape), ref.adaptive_avg_pool2d_backward(dy, shape),
                 **tol("pool"), what=f"global average pooling backward {shape}")


@pytest.mark.parametrize("parallel", [False, True], ids=["serial-sized", "parallel"])
def test_adaptive_avg_pool2d_matches_reference(parallel):
    for cfg in ADAPTIVE_CONFIGS[::4] if parallel else ADAPTIVE_CONFIGS:
        n = cfg["n"] * (64 if parallel else 1)  # a bigger batch: many planes per thread
        rng = rng_for(cfg["seed"])
        x = rng.standard_normal((n, cfg["c"], cfg["h"], cfg["w"])).astype(np.float32)
        dy = rng.standard_normal((n, cfg["c"], *cfg["out"])).astype(np.float32)
        what = f"adaptive x {x.shape} -> {cfg['out']}"
        y = fast.adaptive_avg_pool2d_forward(x, cfg["out"])
        assert y.dtype == np.float32 and y.shape == dy.shape
        assert_close(y, ref.adaptive_avg_pool2d_forward(x, cfg["out"]), **tol("pool"), what=f"{what} forward")
        assert_close(fast.adaptive_avg_pool2d_backward(dy, x.shape), ref.adaptive_avg_pool2d_backward(dy, x.shape),
                     **tol("pool"), what=f"{what} backward")


@pytest.mark.parametrize("shape, out", [((2, 3, 5, 7), (2, 3)), ((1, 2, 3, 4), (5, 6)), ((2, 1, 6, 6), (1, 1))])
def test_adaptive_reference_backward_matches_finite_differences(shape, out):
    x = rng_for(3).standard_normal(shape)
    dy = rng_for(4).standard_normal(shape[:2] + out)
    num = numerical_grad(lambda v: ref.adaptive_avg_pool2d_forward(v, out), x, dy)
    assert_close(ref.adaptive_avg_pool2d_backward(dy, shape), num, **tol("gradcheck", "float64"),
                 what=f"adaptive dx {shape} -> {out}")


@pytest.mark.parametrize("shape, out", [((2, 3, 13, 13), (6, 6)), ((1, 2, 7, 9), (3, 4)), ((2, 2, 4, 6), (6, 4)),
                                        ((3, 4, 5, 5), (1, 1))])
def test_adaptive_reference_matches_torch(shape, out):
    torch = pytest.importorskip("torch")
    x = rng_for(5).standard_normal(shape)
    dy = rng_for(6).standard_normal(shape[:2] + out)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, out)
    (dxt,) = torch.autograd.grad(yt, xt, torch.tensor(dy))
    g = tol("gradcheck", "float64")
    assert_close(ref.adaptive_avg_pool2d_forward(x, out), yt.detach().numpy(), **g, what=f"adaptive y {shape}->{out}")
    assert_close(ref.adaptive_avg_pool2d_backward(dy, shape), dxt.numpy(), **g, what=f"adaptive dx {shape}->{out}")


def test_adaptive_numba_is_deterministic_and_writes_out():
    x = rng_for(7).standard_normal((16, 8, 13, 13)).astype(np.float32)
    dy = rng_for(8).standard_normal((16, 8, 6, 6)).astype(np.float32)
    first = fast.adaptive_avg_pool2d_backward(dy, x.shape)
    out = np.full(x.shape, np.nan, np.float32)
    assert fast.adaptive_avg_pool2d_backward(dy, x.shape, out=out) is out
    np.testing.assert_array_equal(out, first)
    y = np.full(dy.shape, np.nan, np.float32)
    assert fast.adaptive_avg_pool2d_forward(x, (6, 6), out=y) is y
    np.testing.assert_array_equal(y, fast.adaptive_avg_pool2d_forward(x, (6, 6)))
