"""linear family: linear forward / backward data / backward weight, bias_backward, add.

Numba float32 (engine.cpu.linear) against the float64 reference (engine.reference.linear)
on 100 seeded random configurations per op; the reference against finite differences and,
where torch is installed, against torch.nn.functional.linear.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu import linear as fast
from engine.reference import linear as ref
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

N_CONFIGS = 100


def draw(seed: int):
    """x (N, I), w (O, I), b (O,), dy (N, O) in float32, sizes from 1 (batch 1, one unit) up."""
    rng = rng_for(seed)
    n, i, o = (int(rng.choice([1, 2, 3, 7, 16, 33, 64])) for _ in range(3))
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = rng.standard_normal((o, i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    dy = rng.standard_normal((n, o)).astype(np.float32)
    return x, w, b, dy


def bias_grad_input(seed: int) -> np.ndarray:
    """dy of a dense layer (N, O) or of a conv layer (N, K, P, Q), to sum over all axes but 1."""
    rng = rng_for(seed)
    shape = [int(v) for v in rng.integers(1, 9, size=int(rng.integers(2, 5)))]
    return (rng.standard_normal(shape) * 10).astype(np.float32)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward_matches_reference(with_bias):
    for seed in range(N_CONFIGS):
        x, w, b, _ = draw(seed)
        b = b if with_bias else None
        y = fast.linear_forward(x, w, b)
        assert y.dtype == np.float32
        assert_close(y, ref.linear_forward(x, w, b), **tol("linear"), what=f"linear_forward {x.shape}x{w.shape}")


def test_linear_backward_data_matches_reference():
    for seed in range(N_CONFIGS):
        x, w, _, dy = draw(seed)
        dx = fast.linear_backward_data(dy, w)
        assert dx.shape == x.shape and dx.dtype == np.float32
        assert_close(dx, ref.linear_backward_data(dy, w), **tol("linear"), what=f"linear_backward_data {dy.shape}")


def test_linear_backward_weight_matches_reference():
    for seed in range(N_CONFIGS):
        x, w, _, dy = draw(seed)
        dw = fast.linear_backward_weight(dy, x)
        assert dw.shape == w.shape and dw.dtype == np.float32
        assert_close(dw, ref.linear_backward_weight(dy, x), **tol("linear"), what=f"linear_backward_weight {dy.shape}")


def test_bias_backward_matches_reference():
    shapes = set()
    for seed in range(N_CONFIGS):
        dy = bias_grad_input(seed)
        shapes.add(dy.ndim)
        db = fast.bias_backward(dy)
        assert db.shape == (dy.shape[1],) and db.dtype == np.float32
        assert_close(db, ref.bias_backward(dy), **tol("linear"), what=f"bias_backward {dy.shape}")
    assert shapes == {2, 3, 4}


def test_bias_backward_at_conv_size_matches_reference():
    # LeNet conv1's gradient: 200k terms per channel, where float32 accumulation would drift
    dy = (rng_for(1).standard_normal((256, 6, 28, 28)) + 0.5).astype(np.float32)
    assert_close(fast.bias_backward(dy), ref.bias_backward(dy), **tol("linear"), what="bias_backward (256,6,28,28)")


def test_add_matches_reference():
    for seed in range(N_CONFIGS):
        a = bias_grad_input(seed)
        b = rng_for(seed + 1).standard_normal(a.shape).astype(np.float32)
        s = fast.add(a, b)
        assert s.shape == a.shape and s.dtype == np.float32
        assert_close(s, ref.add(a, b), **tol("linear"), what=f"add {a.shape}")


def test_reference_backward_matches_finite_differences():
    g = tol("gradcheck", "float64")
    for seed in range(3):
        rng = rng_for(seed)
        x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
        dy = rng.standard_normal((3, 4))
        assert_close(ref.linear_backward_data(dy, w), numerical_grad(lambda v: ref.linear_forward(v, w, b), x, dy),
                     **g, what="dx")
        assert_close(ref.linear_backward_weight(dy, x), numerical_grad(lambda v: ref.linear_forward(x, v, b), w, dy),
                     **g, what="dw")
        assert_close(ref.bias_backward(dy), numerical_grad(lambda v: ref.linear_forward(x, w, v), b, dy),
                     **g, what="db")
        # bias of a conv layer: y = x + b broadcast along axis 1 of (N, K, P, Q)
        x4, b4 = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal(3)
        dy4 = rng.standard_normal(x4.shape)
        num = numerical_grad(lambda v: x4 + v.reshape(1, 3, 1, 1), b4, dy4)
        assert_close(ref.bias_backward(dy4), num, **g, what="db conv")


@pytest.mark.parametrize("n,i,o", [(1, 1, 1), (4, 7, 3), (32, 400, 120)])
def test_reference_matches_torch(n, i, o):
    torch = pytest.importorskip("torch")
    rng = rng_for(n + i + o)
    x, w, b = rng.standard_normal((n, i)), rng.standard_normal((o, i)), rng.standard_normal(o)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    dy = rng.standard_normal((n, o))
    dxt, dwt, dbt = torch.autograd.grad(yt, (xt, wt, bt), torch.tensor(dy))
    g = tol("gradcheck", "float64")
    assert_close(ref.linear_forward(x, w, b), yt.detach().numpy(), **g, what="y")
    assert_close(ref.linear_backward_data(dy, w), dxt.numpy(), **g, what="dx")
    assert_close(ref.linear_backward_weight(dy, x), dwt.numpy(), **g, what="dw")
    assert_close(ref.bias_backward(dy), dbt.numpy(), **g, what="db")


def _calls(module, seed):
    x, w, b, dy = draw(seed)
    dy4 = bias_grad_input(seed)
    return [
        ("linear_forward", lambda out: module.linear_forward(x, w, b, out=out)),
        ("linear_backward_data", lambda out: module.linear_backward_data(dy, w, out=out)),
        ("linear_backward_weight", lambda out: module.linear_backward_weight(dy, x, out=out)),
        ("bias_backward", lambda out: module.bias_backward(dy4, out=out)),
        ("add", lambda out: module.add(dy4, dy4 * 3, out=out)),
    ]


@pytest.mark.parametrize("module,dtype", [(fast, np.float32), (ref, np.float64)], ids=["numba", "reference"])
def test_out_is_written_in_place(module, dtype):
    for name, call in _calls(module, 5):
        expected = call(None)
        assert expected.dtype == dtype, f"{name}: dtype {expected.dtype}, expected {dtype}"
        out = np.full(expected.shape, np.nan, dtype=dtype)
        assert call(out) is out, f"{name}: returned a new array instead of out"
        np.testing.assert_array_equal(out, expected, err_msg=f"{name}: out= differs from the allocated result")


def test_numba_is_deterministic():
    for seed in (4, 11):
        for name, call in _calls(fast, seed):
            first = call(None)
            for _ in range(3):
                np.testing.assert_array_equal(call(None), first, err_msg=f"{name}: differs between runs")


@pytest.mark.parametrize("n,i,o", [(256, 800, 200), (33, 1200, 1000), (2, 4096, 4100)])
def test_products_split_over_threads_match_reference(n, i, o):
    # big enough to split (the random configs above stay whole): each thread takes a slice
    # of the weight's rows (forward, dw) or columns (dx)
    assert n * i * o >= fast._SPLIT_MIN_MACS
    rng = rng_for(n + i + o)
    x, w, b, dy = (rng.standard_normal(s).astype(np.float32) for s in ((n, i), (o, i), (o,), (n, o)))
    what = f"x ({n}, {i}) w ({o}, {i})"
    assert_close(fast.linear_forward(x, w, b), ref.linear_forward(x, w, b), **tol("linear", "float32"),
                 what=f"linear_forward {what}")
    assert_close(fast.linear_backward_data(dy, w), ref.linear_backward_data(dy, w), **tol("linear", "float32"),
                 what=f"linear_backward_data {what}")
    assert_close(fast.linear_backward_weight(dy, x), ref.linear_backward_weight(dy, x),
                 **tol("linear", "float32"), what=f"linear_backward_weight {what}")


def test_split_products_do_not_depend_on_the_thread_count():
    # the parts follow from the shapes (the data gradient's row blocks included): one thread
    # or two give the same bits
    import numba
    rng = rng_for(3)
    shapes = [(33, 1200, 1000), (2, 4096, 4100)]
    data = [tuple(rng.standard_normal(s).astype(np.float32) for s in ((n, i), (o, i), (o,), (n, o)))
            for n, i, o in shapes]
    threads = numba.get_num_threads()
    try:
        results = []
        for count in (1, threads):
            numba.set_num_threads(count)
            results.append([(fast.linear_forward(x, w, b), fast.linear_backward_data(dy, w),
                             fast.linear_backward_weight(dy, x)) for x, w, b, dy in data])
    finally:
        numba.set_num_threads(threads)
    for one, many in zip(*results):
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b, err_msg=f"1 thread vs {threads}")


def test_split_ops_leave_blas_threads_as_they_were():
    # the CPU ops hold BLAS to one thread while they run their own threads, then restore it
    from engine.cpu import blas
    before, seen = blas.blas_threads(), []

    def work(i0, i1):
        seen.append(blas.blas_threads())
        return i1 - i0

    assert blas.run_parts(work, [0, 3, 7]) == [3, 4]
    assert all(counts == [1] * len(before) for counts in seen), f"BLAS threads inside the parts: {seen}"
    assert blas.blas_threads() == before
    fast.linear_backward_weight(np.ones((256, 120), np.float32), np.ones((256, 400), np.float32))
    assert blas.blas_threads() == before
