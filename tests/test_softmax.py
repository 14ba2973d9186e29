"""softmax and log_softmax (loss family): forward and backward, on rows (N, K).

The float64 reference is checked against finite differences and torch; the Numba float32
kernels against the reference (serial and parallel, logits up to magnitude 1e4, one class,
one row); the functional API on any axis of any rank against the reference on the moved
axis; the layers inside the executor against torch autograd. The CUDA kernels are run
against the reference by tests/test_cuda_emulated.py (their cards are in the odd set).
"""
from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine import nn
from engine.cpu import loss as fast
from engine.cpu import parallel as cpu_parallel
from engine.reference import loss as ref
from engine.tolerances import assert_close, tol
from tests.helpers import numerical_grad, rng_for

TOL = tol("loss")
GRADCHECK = tol("gradcheck", "float64")
PAIRS = {"softmax": (ref.softmax_forward, ref.softmax_backward, fast.softmax_forward, fast.softmax_backward),
         "log_softmax": (ref.log_softmax_forward, ref.log_softmax_backward,
                         fast.log_softmax_forward, fast.log_softmax_backward)}
SHAPES = [(1, 1), (1, 7), (5, 1), (13, 11), (64, 10), (8, 1000)]


@pytest.fixture(params=["serial", "parallel"])
def parallel(request, monkeypatch):
    if request.param == "parallel":
        monkeypatch.setattr(cpu_parallel, "PARALLEL_MIN", 0)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("scale", [0.1, 3.0, 1e4])
def test_numba_matches_the_reference(parallel, name, scale):
    ref_fwd, ref_bwd, fwd, bwd = PAIRS[name]
    for i, shape in enumerate(SHAPES):
        rng = rng_for(i)
        x = (scale * rng.standard_normal(shape)).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        y = fwd(x)
        assert y.dtype == np.float32 and np.all(np.isfinite(y)), f"{name} {shape} scale {scale}"
        assert_close(y, ref_fwd(x), **TOL, what=f"{name} forward {shape} scale {scale}")
        assert_close(bwd(dy, y), ref_bwd(dy, y), **TOL, what=f"{name} backward {shape} scale {scale}")


def test_softmax_rows_sum_to_one_and_log_softmax_is_its_log():
    x = (50 * rng_for(1).standard_normal((9, 17))).astype(np.float32)
    p, logp = fast.softmax_forward(x), fast.log_softmax_forward(x)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
    # where softmax underflows to 0, log_softmax is still finite: why both exist
    assert np.all(np.isfinite(logp)) and logp.min() < -100
    assert_close(np.exp(logp.astype(np.float64)), p, **TOL, what="exp(log_softmax)")


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("shape", [(1, 3), (4, 5), (3, 1)])
def test_reference_backward_matches_finite_differences(name, shape):
    ref_fwd, ref_bwd, _, _ = PAIRS[name]
    rng = rng_for(2)
    x, dy = 2 * rng.standard_normal(shape), rng.standard_normal(shape)
    assert_close(ref_bwd(dy, ref_fwd(x)), numerical_grad(ref_fwd, x, dy), **GRADCHECK, what=f"{name} gradcheck")


@pytest.mark.parametrize("name", PAIRS)
def test_reference_agrees_with_torch(name):
    torch = pytest.importorskip("torch")
    ref_fwd, ref_bwd, _, _ = PAIRS[name]
    rng = rng_for(3)
    x, dy = 4 * rng.standard_normal((6, 9)), rng.standard_normal((6, 9))
    t = torch.tensor(x, requires_grad=True)
    y = getattr(torch, name)(t, dim=1)
    y.backward(torch.from_numpy(dy))
    assert_close(ref_fwd(x), y.detach().numpy(), **GRADCHECK, what=f"{name} vs torch")
    assert_close(ref_bwd(dy, ref_fwd(x)), t.grad.numpy(), **GRADCHECK, what=f"d{name} vs torch")


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("shape, dim", [((4, 10), -1), ((4, 10), 0), ((2, 3, 4, 5), 1), ((3, 5), 1)])
def test_functional_normalises_the_named_axis(name, shape, dim):
    ref_fwd, ref_bwd, _, _ = PAIRS[name]
    rng = rng_for(4)
    x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    y = getattr(F, name)(x, dim=dim)
    moved = np.moveaxis(x, dim, -1)
    expected = np.moveaxis(ref_fwd(moved.reshape(-1, shape[dim])).reshape(moved.shape), -1, dim)
    assert y.shape == x.shape and y.dtype == np.float32
    assert_close(y, expected, **TOL, what=f"F.{name} dim={dim}")
    dx = getattr(F, f"{name}_backward")(dy, y, dim=dim)
    dy_rows, y_rows = (np.moveaxis(a, dim, -1).reshape(-1, shape[dim]) for a in (dy, y))
    expected_dx = np.moveaxis(ref_bwd(dy_rows, y_rows).reshape(moved.shape), -1, dim)
    assert_close(dx, expected_dx, **TOL, what=f"F.{name}_backward dim={dim}")
    # float64 in, float64 out: the reference ran
    assert getattr(F, name)(x.astype(np.float64), dim=dim).dtype == np.float64


@pytest.mark.parametrize("layer, torch_name", [(nn.Softmax, "softmax"), (nn.LogSoftmax, "log_softmax")])
def test_layers_train_like_torch(layer, torch_name):
    """Linear -> (Log)Softmax under an MSE loss, one SGD step: the gradient that reaches the
    linear layer went through the layer's backward."""
    torch = pytest.importorskip("torch")
    from engine.executor import Executor
    from engine.optim import SGD
    rng = rng_for(5)
    x, target = rng.standard_normal((6, 4)).astype(np.float32), rng.random((6, 3)).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 3), layer())
    w0, b0 = (model.layers[0].params[k].copy() for k in ("weight", "bias"))
    ex = Executor(model, (4,), loss="mse", optimizer=SGD(0.5))
    loss = float(ex.train_step(x, target))
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    out = getattr(torch, torch_name)(torch.from_numpy(x) @ tw.T + tb, dim=1)
    tloss = torch.nn.functional.mse_loss(out, torch.from_numpy(target))
    tloss.backward()
    assert_close(loss, tloss.item(), **tol("training"), what="loss")
    trained = ex.param(model.layers[0], "weight")
    assert not np.array_equal(trained, w0)
    assert_close(trained, (tw - 0.5 * tw.grad).detach().numpy(), **tol("training"), what="weight after a step")


def test_layer_refuses_an_axis_other_than_the_last():
    from engine.graph import trace
    with pytest.raises(ValueError, match=r"Softmax#\d+: dim must be the input's last axis \(-1 or 3\)"):
        trace(nn.Softmax(dim=1), (2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"LogSoftmax#\d+: dim must be an axis of the 2-D input, in \[-2, 1\], got 5"):
        trace(nn.LogSoftmax(dim=5), (2, 3))
