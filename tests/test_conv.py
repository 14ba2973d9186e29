"""conv family: im2col, col2im, gemm, conv2d forward / backward data / backward weight.

The float64 reference (engine.reference.conv) is the spec. It is pinned to PyTorch's
conventions where torch is installed, its backward ops are checked against central finite
differences, and the Numba float32 ops (engine.cpu.conv) are checked against it on 100
seeded random configurations per op: batch 1, odd and non-square sizes and kernels,
strides larger than the kernel, padding up to kernel - 1, many channels.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import conv as fast
from engine.cpu import winograd
from engine.reference import conv as ref
from engine.shapes import window_output_hw
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

N_CONFIGS = 100


def conv_config(seed: int) -> dict:
    """One random convolution problem, small enough that 100 of them run in seconds."""
    rng = rng_for(seed)
    r, s = (int(v) for v in rng.integers(1, 6, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 5, size=2))      # up to 4: often > kernel
    ph, pw = int(rng.integers(0, r)), int(rng.integers(0, s))  # up to kernel - 1
    h = int(rng.integers(max(1, r - 2 * ph), r + 9))           # at least one output row
    w = int(rng.integers(max(1, s - 2 * pw), s + 9))
    return dict(n=int(rng.choice([1, 1, 2, 3])), c=int(rng.choice([1, 2, 3, 5, 16])),
                k=int(rng.choice([1, 2, 4, 7, 16])), h=h, w=w, kernel=(r, s),
                stride=(sh, sw), padding=(ph, pw), seed=seed)


def draw(cfg: dict):
    """float32 x (N, C, H, W), w (K, C, R, S), b (K,) and dy (N, K, P, Q) for a config."""
    rng = rng_for(cfg["seed"] + 10_000)
    (r, s) = cfg["kernel"]
    p, q = window_output_hw(cfg["h"], cfg["w"], cfg["kernel"], cfg["stride"], cfg["padding"])
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(np.float32)
    w = rng.standard_normal((cfg["k"], cfg["c"], r, s)).astype(np.float32)
    b = rng.standard_normal(cfg["k"]).astype(np.float32)
    dy = rng.standard_normal((cfg["n"], cfg["k"], p, q)).astype(np.float32)
    return x, w, b, dy


def describe(cfg: dict) -> str:
    return (f"x ({cfg['n']}, {cfg['c']}, {cfg['h']}, {cfg['w']}) k={cfg['k']} kernel={cfg['kernel']} "
            f"stride={cfg['stride']} padding={cfg['padding']} seed={cfg['seed']}")


CONFIGS = [conv_config(seed) for seed in range(N_CONFIGS)]


def test_configs_cover_the_hard_cases():
    # guards the generator itself: a silent change must not drop the cases the brief asks for
    assert any(c["n"] == 1 for c in CONFIGS)
    assert any(c["h"] != c["w"] for c in CONFIGS)
    assert any(c["kernel"][0] != c["kernel"][1] for c in CONFIGS)
    assert any(c["stride"][0] > c["kernel"][0] for c in CONFIGS)
    assert any(c["padding"][0] == c["kernel"][0] - 1 > 0 for c in CONFIGS)
    assert any(c["c"] >= 16 and c["k"] >= 16 for c in CONFIGS)
    assert any(c["h"] % 2 == 1 for c in CONFIGS)


# ------------------------------------------------------------------ Numba vs reference


def test_im2col_matches_reference():
    for cfg in CONFIGS:
        x, *_ = draw(cfg)
        args = (cfg["kernel"], cfg["stride"], cfg["padding"])
        cols = fast.im2col(x, *args)
        assert cols.dtype == np.float32
        assert_close(cols, ref.im2col(x, *args), **tol("conv"), what=f"im2col {describe(cfg)}")


def test_col2im_matches_reference():
    for cfg in CONFIGS:
        x, *_ = draw(cfg)
        args = (cfg["kernel"], cfg["stride"], cfg["padding"])
        cols = rng_for(cfg["seed"]).standard_normal(ref.im2col(x, *args).shape).astype(np.float32)
        dx = fast.col2im(cols, x.shape, *args)
        assert dx.dtype == np.float32
        assert_close(dx, ref.col2im(cols, x.shape, *args), **tol("conv"), what=f"col2im {describe(cfg)}")


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_matches_reference(trans_a, trans_b):
    for seed in range(N_CONFIGS // 4):  # 4 transpose cases x 25 shapes = 100 configurations
        rng = rng_for(seed)
        m, k, n = (int(v) for v in rng.integers(1, 70, size=3))
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        c = fast.gemm(a, b, trans_a, trans_b)
        assert c.shape == (m, n) and c.dtype == np.float32
        assert_close(c, ref.gemm(a, b, trans_a, trans_b), **tol("gemm"),
                     what=f"gemm m={m} k={k} n={n} trans_a={trans_a} trans_b={trans_b}")


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_forward_matches_reference(with_bias):
    for cfg in CONFIGS:
        x, w, b, _ = draw(cfg)
        b = b if with_bias else None
        y = fast.conv2d_forward(x, w, b, cfg["stride"], cfg["padding"])
        assert y.dtype == np.float32
        assert_close(y, ref.conv2d_forward(x, w, b, cfg["stride"], cfg["padding"]), **tol("conv"),
                     what=f"conv2d_forward bias={with_bias} {describe(cfg)}")


def test_conv2d_backward_data_matches_reference():
    for cfg in CONFIGS:
        x, w, _, dy = draw(cfg)
        dx = fast.conv2d_backward_data(dy, w, x.shape, cfg["stride"], cfg["padding"])
        assert dx.shape == x.shape and dx.dtype == np.float32
        assert_close(dx, ref.conv2d_backward_data(dy, w, x.shape, cfg["stride"], cfg["padding"]),
                     **tol("conv"), what=f"conv2d_backward_data {describe(cfg)}")


def test_conv2d_backward_weight_matches_reference():
    for cfg in CONFIGS:
        x, w, _, dy = draw(cfg)
        dw = fast.conv2d_backward_weight(dy, x, w.shape, cfg["stride"], cfg["padding"])
        assert dw.shape == w.shape and dw.dtype == np.float32
        assert_close(dw, ref.conv2d_backward_weight(dy, x, w.shape, cfg["stride"], cfg["padding"]),
                     **tol("conv"), what=f"conv2d_backward_weight {describe(cfg)}")


def assert_ops_match_reference(cfg: dict, path: str):
    """conv2d_forward (with and without bias), backward data and backward weight on a config
    against the reference; `path` names the path under test in the failure message."""
    x, w, b, dy = draw(cfg)
    st, pd, what = cfg["stride"], cfg["padding"], describe(cfg)
    for bias in (b, None):
        assert_close(fast.conv2d_forward(x, w, bias, st, pd), ref.conv2d_forward(x, w, bias, st, pd),
                     **tol("conv"), what=f"{path} conv2d_forward {what} bias={bias is not None}")
    assert_close(fast.conv2d_backward_data(dy, w, x.shape, st, pd), ref.conv2d_backward_data(dy, w, x.shape, st, pd),
                 **tol("conv"), what=f"{path} conv2d_backward_data {what}")
    assert_close(fast.conv2d_backward_weight(dy, x, w.shape, st, pd),
                 ref.conv2d_backward_weight(dy, x, w.shape, st, pd), **tol("conv"),
                 what=f"{path} conv2d_backward_weight {what}")


def test_padded_planes_match_reference(monkeypatch):
    # the paths LeNet's conv2 takes (the compact im2col moved 8 cells at a time, full-width
    # rows for the data gradient), forced on the stride-1 version of every random config with
    # the direct kernels off: all three ops, the weight gradient's dy both as a transposed view
    # (CRS < 64) and written out transposed
    monkeypatch.setattr(fast, "_DIRECT_MAX_K_WIDTH", 0)
    monkeypatch.setattr(fast, "_DIRECT_WEIGHT_MAX_TAPS", 0)
    monkeypatch.setattr(fast, "_ROWS_MAX_WASTE", 1 << 30)
    for cfg in (dict(c, stride=(1, 1)) for c in CONFIGS):
        assert_ops_match_reference(cfg, "padded-planes")


def test_direct_kernels_match_reference(monkeypatch):
    # the direct kernels (LeNet conv1's path), forced on the stride-1 version of every random
    # config: forward at any K, the data gradient at any padding it can take (R-1 - padding
    # >= 0), the weight gradient at any tap count, odd K (dy's rows padded to even) included
    monkeypatch.setattr(fast, "_ROWS_MAX_WASTE", 1 << 30)
    monkeypatch.setattr(fast, "_DIRECT_MAX_K_WIDTH", 1 << 30)
    monkeypatch.setattr(fast, "_DIRECT_WEIGHT_MAX_TAPS", 1 << 30)
    monkeypatch.setattr(fast, "_direct_data", lambda c, w, q, kernel, padding: all(p < r for r, p in zip(kernel, padding)))
    for cfg in (dict(c, stride=(1, 1)) for c in CONFIGS):
        assert_ops_match_reference(cfg, "direct")


def test_conv2d_backward_weight_side_by_side_matches_reference(monkeypatch):
    # the path AlexNet's big layers take (a chunk's samples side by side, one GEMM over them),
    # forced on every config, with chunks of several samples
    monkeypatch.setattr(fast, "_WIDE_MIN_BYTES", -1)
    monkeypatch.setattr(fast, "_WIDE_DEPTH", 8)
    monkeypatch.setattr(fast, "_MAX_PARTS", 1)
    for cfg in CONFIGS + [dict(cfg, n=5) for cfg in CONFIGS[:20]]:
        x, w, _, dy = draw(cfg)
        assert_close(fast.conv2d_backward_weight(dy, x, w.shape, cfg["stride"], cfg["padding"]),
                     ref.conv2d_backward_weight(dy, x, w.shape, cfg["stride"], cfg["padding"]),
                     **tol("conv"), what=f"conv2d_backward_weight side by side {describe(cfg)}")


def winograd_config(seed: int) -> dict:
    """A 3x3 or 5x5 stride-1 problem engine.cpu.conv hands to Winograd F(2x2, 3x3) or
    F(2x2, 5x5): odd and even, square and not, down to 1x1 outputs, every padding it takes."""
    rng = rng_for(seed + 20_000)
    r = 3 if seed % 3 else 5
    ph, pw = (int(v) for v in rng.integers(0, r, size=2))
    h, w = int(rng.integers(max(1, r - 2 * ph), 12)), int(rng.integers(max(1, r - 2 * pw), 12))
    return dict(n=int(rng.choice([1, 2, 5])), c=int(rng.choice([16, 17, 24])), k=int(rng.choice([16, 19, 32])),
                h=h, w=w, kernel=(r, r), stride=(1, 1), padding=(ph, pw), seed=seed)


WINOGRAD_CONFIGS = [winograd_config(seed) for seed in range(45)]


def test_the_models_layers_take_the_paths_measured_fastest_for_them():
    # engine.cpu.conv picks a layout per layer by shape; these are the picks the benchmarks
    # (benchmarks/results/2026-12-07-cpu-2core*.md) were measured with
    lenet = [(1, 6, (5, 5), (1, 1), (2, 2), 28, 28), (6, 16, (5, 5), (1, 1), (0, 0), 14, 10)]
    for c, k, kernel, stride, padding, w, q in lenet:
        assert not winograd.applies(c, k, kernel, stride, padding)          # too few channels
        assert fast._padded_planes(k, q, w, stride, padding)
    assert fast._direct_forward(6, 28, 32) and fast._direct_weight(1, (5, 5))   # LeNet conv1: direct
    assert fast._direct_data(1, 28, 28, (5, 5), (2, 2))
    assert not fast._direct_forward(16, 10, 14) and not fast._direct_weight(6, (5, 5))  # conv2: GEMM
    assert not fast._direct_data(6, 14, 10, (5, 5), (0, 0))  # dy padded by 4: the zeros cost more
    assert fast._direct_forward(16, 32, 34) and fast._direct_weight(3, (3, 3))  # a CIFAR stem
    assert fast._as_stride_1(3, 64, (11, 11), (4, 4))                        # AlexNet conv1
    for c, k, kernel in [(64, 192, (5, 5)), (192, 384, (3, 3)), (384, 256, (3, 3)), (256, 256, (3, 3))]:
        pad = (kernel[0] // 2,) * 2                                          # AlexNet conv2-5
        assert winograd.applies(c, k, kernel, (1, 1), pad)
        assert winograd.applies_to_weight_gradient(c, k, kernel, (1, 1), pad) == (kernel == (3, 3))
    assert not fast._padded_planes(192, 27, 27, (1, 1), (2, 2))                  # big K: compact im2col


def test_winograd_takes_3x3_stride_1_convolutions_with_enough_channels():
    assert all(winograd.applies(c["c"], c["k"], c["kernel"], c["stride"], c["padding"]) for c in WINOGRAD_CONFIGS)
    assert {c["padding"][0] for c in WINOGRAD_CONFIGS if c["kernel"] == (3, 3)} == {0, 1, 2}
    assert {c["padding"][0] for c in WINOGRAD_CONFIGS if c["kernel"] == (5, 5)} == {0, 1, 2, 3, 4}
    assert not winograd.applies(16, 16, (3, 3), (2, 2), (1, 1))     # stride 2: im2col
    assert not winograd.applies(16, 16, (3, 3), (1, 1), (3, 3))     # backward data would pad -1
    assert not winograd.applies(3, 64, (3, 3), (1, 1), (1, 1))      # an RGB input: too few channels
    assert not winograd.applies(16, 16, (7, 7), (1, 1), (3, 3))
    assert winograd.applies_to_weight_gradient(16, 16, (3, 3), (1, 1), (1, 1))
    assert not winograd.applies_to_weight_gradient(16, 16, (5, 5), (1, 1), (2, 2))  # im2col


@pytest.mark.parametrize("chunks", ["as-shipped", "per-sample", "whole-batch"])
def test_winograd_matches_reference(monkeypatch, chunks):
    if chunks != "as-shipped":
        monkeypatch.setattr(winograd, "_MIN_TILES", 1 if chunks == "per-sample" else 1 << 30)
        monkeypatch.setattr(winograd, "_CHUNK_BYTES", 1 if chunks == "per-sample" else 1 << 40)
        monkeypatch.setattr(winograd, "_MAX_PARTS", 1 if chunks == "whole-batch" else 1 << 30)
    for cfg in WINOGRAD_CONFIGS:
        assert_ops_match_reference(cfg, "Winograd")


def strided_config(seed: int) -> dict:
    """A strided layer engine.cpu.conv runs as a 3x3 stride-1 one on blocks of its input (space
    to depth), AlexNet's 11x11/4 first layer among them: kernels of 3 blocks or just over 2,
    any padding, inputs whose last cells no window reads."""
    rng = rng_for(seed + 30_000)
    sh, sw = (int(v) for v in rng.choice([2, 3, 4], size=2))
    r, s = (int(rng.integers(2 * st + 1, 3 * st + 1)) for st in (sh, sw))
    ph, pw = int(rng.integers(0, r)), int(rng.integers(0, s))
    h, w = int(rng.integers(max(1, r - 2 * ph), r + 12)), int(rng.integers(max(1, s - 2 * pw), s + 12))
    c = max(1, -(-16 // (sh * sw))) + int(rng.integers(0, 3))
    return dict(n=int(rng.choice([1, 2, 3])), c=c, k=int(rng.choice([16, 21])), h=h, w=w, kernel=(r, s),
                stride=(sh, sw), padding=(ph, pw), seed=seed)


STRIDED_CONFIGS = [strided_config(seed) for seed in range(30)] + [
    dict(n=2, c=3, h=63, w=59, k=16, kernel=(11, 11), stride=(4, 4), padding=(2, 2), seed=99)]


def test_strided_layers_as_stride_1_match_reference():
    assert all(fast._as_stride_1(c["c"], c["k"], c["kernel"], c["stride"]) for c in STRIDED_CONFIGS)
    for cfg in STRIDED_CONFIGS:
        x, w, b, dy = draw(cfg)
        st, pd, what = cfg["stride"], cfg["padding"], describe(cfg)
        assert_close(fast.conv2d_forward(x, w, b, st, pd), ref.conv2d_forward(x, w, b, st, pd),
                     **tol("conv"), what=f"space-to-depth conv2d_forward {what}")
        assert_close(fast.conv2d_backward_weight(dy, x, w.shape, st, pd),
                     ref.conv2d_backward_weight(dy, x, w.shape, st, pd), **tol("conv"),
                     what=f"space-to-depth conv2d_backward_weight {what}")


@pytest.mark.parametrize("n,c,h,k,pad", [
    (40, 6, 14, 16, 0),   # LeNet conv2: small per-sample GEMMs, the batch split over threads
    (80, 1, 28, 6, 2),    # LeNet conv1: the direct kernels, the batch split over threads
    (3, 16, 12, 32, 2),   # a per-sample GEMM big enough for BLAS to thread: one part
])
def test_conv2d_at_realistic_shapes_matches_reference(n, c, h, k, pad):
    rng = rng_for(7)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = rng.standard_normal((k, c, 5, 5)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    p = h + 2 * pad - 4
    dy = rng.standard_normal((n, k, p, p)).astype(np.float32)
    st, pd = (1, 1), (pad, pad)
    assert_close(fast.conv2d_forward(x, w, b, st, pd), ref.conv2d_forward(x, w, b, st, pd), **tol("conv"),
                 what="conv2d_forward")
    assert_close(fast.conv2d_backward_data(dy, w, x.shape, st, pd), ref.conv2d_backward_data(dy, w, x.shape, st, pd),
                 **tol("conv"), what="conv2d_backward_data")
    assert_close(fast.conv2d_backward_weight(dy, x, w.shape, st, pd),
                 ref.conv2d_backward_weight(dy, x, w.shape, st, pd), **tol("conv"),
                 what="conv2d_backward_weight")


# ------------------------------------------------------------------ reference vs calculus

GRAD_CONFIGS = [  # (n, c, h, w, k, kernel, stride, padding): small, so finite differences stay fast
    (1, 1, 5, 5, 1, (3, 3), (1, 1), (0, 0)),
    (2, 2, 5, 6, 3, (3, 2), (2, 1), (1, 1)),
    (1, 3, 6, 4, 2, (2, 3), (3, 2), (1, 2)),
    (2, 1, 7, 5, 2, (1, 1), (2, 3), (0, 0)),
    (1, 2, 4, 4, 2, (4, 4), (1, 1), (3, 3)),
]


@pytest.mark.parametrize("n,c,h,w,k,kernel,stride,padding", GRAD_CONFIGS)
def test_reference_backward_matches_finite_differences(n, c, h, w, k, kernel, stride, padding):
    rng = rng_for(h * 100 + w)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, *kernel))
    b = rng.standard_normal(k)
    dy = rng.standard_normal(ref.conv2d_forward(x, wt, b, stride, padding).shape)
    g = tol("gradcheck", "float64")

    num_dx = numerical_grad(lambda v: ref.conv2d_forward(v, wt, b, stride, padding), x, dy)
    assert_close(ref.conv2d_backward_data(dy, wt, x.shape, stride, padding), num_dx, **g, what="dx")
    num_dw = numerical_grad(lambda v: ref.conv2d_forward(x, v, b, stride, padding), wt, dy)
    assert_close(ref.conv2d_backward_weight(dy, x, wt.shape, stride, padding), num_dw, **g, what="dw")

    # col2im is the gradient of im2col (im2col is linear, col2im its adjoint)
    dcols = rng.standard_normal(ref.im2col(x, kernel, stride, padding).shape)
    num = numerical_grad(lambda v: ref.im2col(v, kernel, stride, padding), x, dcols)
    assert_close(ref.col2im(dcols, x.shape, kernel, stride, padding), num, **g, what="col2im")


def test_reference_conv_is_im2col_then_gemm():
    # the two halves of the spec (direct tap sums, im2col layout) must describe one convolution
    for cfg in CONFIGS[:20]:
        x, w, b, _ = draw(cfg)
        cols = ref.im2col(x, cfg["kernel"], cfg["stride"], cfg["padding"])  # (N, CRS, PQ)
        y = np.einsum("kj,njl->nkl", w.reshape(w.shape[0], -1).astype(np.float64), cols)
        expected = ref.conv2d_forward(x, w, None, cfg["stride"], cfg["padding"])
        assert_close(y.reshape(expected.shape), expected, **tol("gradcheck", "float64"), what=describe(cfg))


# ------------------------------------------------------------------ reference vs PyTorch

TORCH_CASES = [  # (n, c, h, w, k, kernel, stride, padding)
    (2, 3, 9, 8, 4, (3, 2), (2, 3), (1, 1)),
    (1, 1, 28, 28, 6, (5, 5), (1, 1), (2, 2)),
    (3, 6, 14, 14, 16, (5, 5), (1, 1), (0, 0)),
    (2, 3, 23, 19, 5, (11, 11), (4, 4), (2, 2)),
]


@pytest.mark.parametrize("n,c,h,w,k,kernel,stride,padding", TORCH_CASES)
def test_reference_matches_torch(n, c, h, w, k, kernel, stride, padding):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = rng_for(n + c + h)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, *kernel))
    b = rng.standard_normal(k)
    xt, wtt, bt = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    yt = F.conv2d(xt, wtt, bt, stride=stride, padding=padding)
    dy = rng.standard_normal(tuple(yt.shape))
    dxt, dwt, dbt = torch.autograd.grad(yt, (xt, wtt, bt), torch.tensor(dy))
    g = tol("gradcheck", "float64")
    assert_close(ref.conv2d_forward(x, wt, b, stride, padding), yt.detach().numpy(), **g, what="y")
    assert_close(ref.conv2d_backward_data(dy, wt, x.shape, stride, padding), dxt.numpy(), **g, what="dx")
    assert_close(ref.conv2d_backward_weight(dy, x, wt.shape, stride, padding), dwt.numpy(), **g, what="dw")
    # F.unfold's layout is ours: (N, C*R*S, P*Q), rows c-major then r then s; F.fold is col2im
    cols = F.unfold(torch.tensor(x), kernel, padding=padding, stride=stride).numpy()
    assert_close(ref.im2col(x, kernel, stride, padding), cols, **g, what="im2col")
    folded = F.fold(torch.tensor(cols), (h, w), kernel, padding=padding, stride=stride).numpy()
    assert_close(ref.col2im(cols, x.shape, kernel, stride, padding), folded, **g, what="col2im")


# ------------------------------------------------------------------ out= and determinism

OUT_CFG = dict(n=2, c=3, h=9, w=7, k=4, kernel=(3, 2), stride=(2, 1), padding=(1, 1), seed=3)
BIG_CFGS = [  # the batch split over threads (small per-sample GEMM), and BLAS threading (bigger one)
    dict(n=40, c=6, h=14, w=14, k=16, kernel=(5, 5), stride=(1, 1), padding=(0, 0), seed=5),
    dict(n=4, c=16, h=14, w=14, k=32, kernel=(5, 5), stride=(1, 1), padding=(2, 2), seed=6),
    # a weight gradient past L2 per sample: the samples of a chunk side by side
    dict(n=24, c=64, h=7, w=7, k=128, kernel=(3, 3), stride=(3, 3), padding=(1, 1), seed=8),
    # the direct kernels (LeNet conv1), the batch in several parts
    dict(n=80, c=1, h=28, w=28, k=6, kernel=(5, 5), stride=(1, 1), padding=(2, 2), seed=10),
    # Winograd, the batch in several chunks
    dict(n=40, c=16, h=9, w=9, k=24, kernel=(3, 3), stride=(1, 1), padding=(1, 1), seed=9),
]


def _calls(module, cfg):
    """(name, call(out)) for every conv op of a backend on the config's float32 data."""
    x, w, b, dy = draw(cfg)
    kernel, stride, padding = cfg["kernel"], cfg["stride"], cfg["padding"]
    cols = ref.im2col(x, kernel, stride, padding).astype(np.float32)
    a = rng_for(cfg["seed"]).standard_normal((48, 64)).astype(np.float32)
    return [
        ("im2col", lambda out: module.im2col(x, kernel, stride, padding, out=out)),
        ("col2im", lambda out: module.col2im(cols, x.shape, kernel, stride, padding, out=out)),
        ("gemm", lambda out: module.gemm(a, a, True, False, out=out)),
        ("conv2d_forward", lambda out: module.conv2d_forward(x, w, b, stride, padding, out=out)),
        ("conv2d_backward_data", lambda out: module.conv2d_backward_data(dy, w, x.shape, stride, padding, out=out)),
        ("conv2d_backward_weight",
         lambda out: module.conv2d_backward_weight(dy, x, w.shape, stride, padding, out=out)),
    ]


@pytest.mark.parametrize("module,dtype", [(fast, np.float32), (ref, np.float64)], ids=["numba", "reference"])
def test_out_is_written_in_place(module, dtype):
    for name, call in _calls(module, OUT_CFG):
        expected = call(None)
        assert expected.dtype == dtype, f"{name}: dtype {expected.dtype}, expected {dtype}"
        out = np.full(expected.shape, np.nan, dtype=dtype)  # NaN: any cell left unwritten shows
        result = call(out)
        assert result is out, f"{name}: returned a new array instead of out"
        np.testing.assert_array_equal(out, expected, err_msg=f"{name}: out= differs from the allocated result")


def test_numba_is_deterministic():
    # bitwise equal on repeated runs, at a size where the parallel loops and BLAS split work
    for cfg in BIG_CFGS:
        for name, call in _calls(fast, cfg):
            first = call(None)
            for _ in range(3):
                np.testing.assert_array_equal(call(None), first, err_msg=f"{name}: differs between runs")


def test_big_configs_are_split_over_threads():
    # guards BIG_CFGS: the im2col, padded-planes and direct ones must stay above the size
    # from which engine.cpu.conv hands parts to the helper thread
    for cfg in (BIG_CFGS[0], BIG_CFGS[2], BIG_CFGS[3]):
        p, q = window_output_hw(cfg["h"], cfg["w"], cfg["kernel"], cfg["stride"], cfg["padding"])
        macs = cfg["n"] * cfg["k"] * cfg["c"] * cfg["kernel"][0] * cfg["kernel"][1] * p * q
        assert macs >= fast._SPLIT_MIN_MACS, f"{describe(cfg)}: {macs} multiply-adds, run on one thread"


def test_numba_conv_does_not_depend_on_the_thread_count():
    # the batch is split in parts that follow from the shapes alone, and the weight gradient
    # adds the parts in order in float64: one thread or two give the same bits
    import numba
    threads = numba.get_num_threads()
    try:
        results = []
        for count in (1, threads):
            numba.set_num_threads(count)
            results.append([call(None) for cfg in BIG_CFGS for _, call in _calls(fast, cfg)])
    finally:
        numba.set_num_threads(threads)
    for one, many in zip(*results):
        np.testing.assert_array_equal(one, many, err_msg=f"1 thread vs {threads}")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_numba_conv_works_in_a_forked_child():
    # data loaders fork; the child must not wait forever on the parent's (threadless) helper pool
    import os
    cfg = BIG_CFGS[0]
    x, w, b, _ = draw(cfg)
    y = fast.conv2d_forward(x, w, b, cfg["stride"], cfg["padding"])  # the pool now exists
    pid = os.fork()
    if pid == 0:  # child: exit code says whether it computed the same result
        same = np.array_equal(fast.conv2d_forward(x, w, b, cfg["stride"], cfg["padding"]), y)
        os._exit(0 if same else 1)
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the child computed a different result"
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("conv2d_forward hung in a forked child")
