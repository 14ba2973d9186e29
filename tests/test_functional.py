"""The functional API computes what the reference backend computes.

Each test calls engine.functional (which dispatches through backend_for: Numba on the
CPU by default, or ENGINE_CPU_BACKEND) and calls the float64 reference backend directly
with the arguments spelled out as the contract wants them ((h, w) pairs, stride =
kernel for pooling, ...), then compares with the tolerance table. A wrong argument
order, a pair normalised wrongly or a gradient returned in the wrong slot shows up as
a mismatch. Inputs are float32 (the training dtype) and float64; the float32 bound of
each family is used for both, since a float64 computation is at least as close.
"""
from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.backend import backend_for, get_backend
from engine.tolerances import assert_close, tol

REF = get_backend("reference")
DTYPES = [np.float32, np.float64]



def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def test_float64_runs_on_the_reference_and_float32_on_numba():
    assert backend_for(np.zeros(1)).name == "reference"
    assert backend_for(np.zeros(1, np.float32)).name == get_backend("numba").name


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- convolution and dense --------------------------------------------------------------

CONV_CASES = [
    # (x shape, weight shape, stride, padding)
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1),
    ((2, 1, 12, 12), (6, 1, 5, 5), 1, 2),            # LeNet conv1, small
    ((1, 3, 17, 15), (4, 3, 3, 5), (2, 1), (1, 2)),  # pairs, uneven
    ((2, 3, 23, 23), (2, 3, 11, 11), 4, 2),          # AlexNet conv1 geometry, small
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONV_CASES)
def test_conv2d_forward_and_backward(rng, dtype, x_shape, w_shape, stride, padding):
    x, w = randn(rng, x_shape, dtype), randn(rng, w_shape, dtype)
    b = randn(rng, (w_shape[0],), dtype)
    s, p = pair(stride), pair(padding)

    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    assert_close(y, REF.conv2d_forward(x, w, b, s, p), **tol("conv"), what="conv2d y")
    assert_close(F.conv2d(x, w, None, stride, padding), REF.conv2d_forward(x, w, None, s, p),
                 **tol("conv"), what="conv2d y without bias")

    dy = randn(rng, y.shape, dtype)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride, padding)
    assert_close(dx, REF.conv2d_backward_data(dy, w, x.shape, s, p), **tol("conv"), what="conv2d dx")
    assert_close(dw, REF.conv2d_backward_weight(dy, x, w.shape, s, p), **tol("conv"), what="conv2d dw")
    assert_close(db, REF.bias_backward(dy), **tol("conv"), what="conv2d db")

    dx, dw_only, db = F.conv2d_backward(dy, x, w, stride, padding, need_input_grad=False,
                                        need_bias_grad=False)
    assert dx is None and db is None
    assert_close(dw_only, dw, **tol("conv"), what="conv2d dw alone")


def test_conv2d_int_and_pair_arguments_agree(rng):
    x, w = randn(rng, (1, 2, 10, 10), np.float32), randn(rng, (3, 2, 3, 3), np.float32)
    np.testing.assert_array_equal(F.conv2d(x, w, stride=2, padding=1),
                                  F.conv2d(x, w, stride=(2, 2), padding=[1, 1]))


def test_noncontiguous_input_gives_the_contiguous_result(rng):
    x = randn(rng, (2, 3, 8, 8), np.float32)
    w = randn(rng, (4, 3, 3, 3), np.float32)
    x_view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, strided
    assert not x_view.flags.c_contiguous
    np.testing.assert_array_equal(F.conv2d(x_view, w, padding=1), F.conv2d(x, w, padding=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward_and_backward(rng, dtype, with_bias):
    x, w = randn(rng, (5, 7), dtype), randn(rng, (3, 7), dtype)
    b = randn(rng, (3,), dtype) if with_bias else None
    y = F.linear(x, w, b)
    assert_close(y, REF.linear_forward(x, w, b), **tol("linear"), what="linear y")
    dy = randn(rng, y.shape, dtype)
    dx, dw, db = F.linear_backward(dy, x, w, need_bias_grad=with_bias)
    assert_close(dx, REF.linear_backward_data(dy, w), **tol("linear"), what="linear dx")
    assert_close(dw, REF.linear_backward_weight(dy, x), **tol("linear"), what="linear dw")
    if with_bias:
        assert_close(db, REF.bias_backward(dy), **tol("linear"), what="linear db")
    else:
        assert db is None
    assert F.linear_backward(dy, x, w, need_input_grad=False)[0] is None


# --- pooling ------------------------------------------------------------------------------

POOL_CASES = [
    # (x shape, kernel_size, stride (None = kernel), padding)
    ((2, 3, 8, 8), 2, None, 0),                 # LeNet 2x2/2
    ((1, 2, 13, 13), 3, 2, 0),                  # AlexNet 3x3/2 overlapping
    ((2, 2, 9, 7), 3, 2, 1),
    ((1, 3, 10, 11), (2, 3), (1, 2), (1, 1)),   # pairs
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, kernel, stride, padding", POOL_CASES)
def test_max_pool2d_forward_and_backward(rng, dtype, x_shape, kernel, stride, padding):
    x = randn(rng, x_shape, dtype)
    k, p = pair(kernel), pair(padding)
    s = k if stride is None else pair(stride)
    y_ref, idx_ref = REF.max_pool2d_forward(x, k, s, p)

    y, idx = F.max_pool2d_forward(x, kernel, stride, padding)
    assert_close(y, y_ref, **tol("pool"), what="max_pool2d y")
    np.testing.assert_array_equal(idx, idx_ref)
    y2, idx2 = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_array_equal(F.max_pool2d(x, kernel, stride, padding), y)

    dy = randn(rng, y.shape, dtype)
    assert_close(F.max_pool2d_backward(dy, idx, x.shape),
                 REF.max_pool2d_backward(dy, idx_ref, x.shape), **tol("pool"), what="max_pool2d dx")
    # indices of another integer type (say, from another library) are accepted
    assert_close(F.max_pool2d_backward(dy, idx.astype(np.int64), x.shape),
                 REF.max_pool2d_backward(dy, idx_ref, x.shape), **tol("pool"), what="max_pool2d dx int64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("x_shape, kernel, stride, padding", POOL_CASES)
def test_avg_pool2d_forward_and_backward(rng, dtype, count_include_pad, x_shape, kernel, stride,
                                         padding):
    x = randn(rng, x_shape, dtype)
    k, p = pair(kernel), pair(padding)
    s = k if stride is None else pair(stride)
    y = F.avg_pool2d(x, kernel, stride, padding, count_include_pad)
    assert_close(y, REF.avg_pool2d_forward(x, k, s, p, count_include_pad), **tol("pool"),
                 what="avg_pool2d y")
    dy = randn(rng, y.shape, dtype)
    assert_close(F.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, count_include_pad),
                 REF.avg_pool2d_backward(dy, x.shape, k, s, p, count_include_pad),
                 **tol("pool"), what="avg_pool2d dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, output_size", [((2, 3, 13, 13), 6), ((1, 2, 7, 9), (3, 4)), ((2, 4, 5, 5), 1),
                                                  ((1, 1, 3, 4), (5, 6))])
def test_adaptive_avg_pool2d_forward_and_backward(rng, dtype, x_shape, output_size):
    x = randn(rng, x_shape, dtype)
    y = F.adaptive_avg_pool2d(x, output_size)
    assert y.shape == x_shape[:2] + pair(output_size)
    assert_close(y, REF.adaptive_avg_pool2d_forward(x, pair(output_size)), **tol("pool"), what="adaptive y")
    dy = randn(rng, y.shape, dtype)
    assert_close(F.adaptive_avg_pool2d_backward(dy, x.shape), REF.adaptive_avg_pool2d_backward(dy, x.shape),
                 **tol("pool"), what="adaptive dx")


# --- batch norm ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape", [(6, 4), (3, 4, 5, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_forward_and_backward(rng, dtype, x_shape, training):
    c = x_shape[1]
    x = randn(rng, x_shape, dtype) * 3 + 1
    gamma, beta = randn(rng, (c,), dtype), randn(rng, (c,), dtype)
    mean0 = randn(rng, (c,), dtype)
    var0 = (rng.random(c) + 0.5).astype(dtype)
    mean, var = mean0.copy(), var0.copy()
    mean_ref, var_ref = mean0.copy(), var0.copy()

    y, save_mean, save_invstd = F.batch_norm_forward(x, mean, var, gamma, beta, training,
                                                     momentum=0.2, eps=1e-3)
    y_ref, sm_ref, si_ref = REF.batch_norm_forward(x, gamma, beta, mean_ref, var_ref, training,
                                                   0.2, 1e-3)
    assert_close(y, y_ref, **tol("batchnorm"), what="batch_norm y")
    assert_close(save_mean, sm_ref, **tol("batchnorm"), what="batch_norm save_mean")
    assert_close(save_invstd, si_ref, **tol("batchnorm"), what="batch_norm save_invstd")
    # running statistics: updated in place in training, untouched in eval
    assert_close(mean, mean_ref, **tol("batchnorm"), what="running_mean")
    assert_close(var, var_ref, **tol("batchnorm"), what="running_var")
    if not training:
        np.testing.assert_array_equal(mean, mean0)

    dy = randn(rng, x_shape, dtype)
    grads = F.batch_norm_backward(dy, x, gamma, save_mean, save_invstd, training)
    grads_ref = REF.batch_norm_backward(dy, x, gamma, sm_ref, si_ref, training)
    for name, got, want in zip(("dx", "dgamma", "dbeta"), grads, grads_ref):
        assert_close(got, want, **tol("batchnorm"), what=f"batch_norm {name}")


def test_batch_norm_defaults_mean_unit_scale_and_untracked_stats(rng):
    x = randn(rng, (8, 3, 4, 4), np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    y_plain = F.batch_norm(x, None, None, training=True)  # no weight, no bias, no running stats
    y_full = F.batch_norm(x, zeros.copy(), ones.copy(), ones, zeros, training=True)
    np.testing.assert_array_equal(y_plain, y_full)
    # and the result is normalised: per-channel mean ~0, variance ~1
    assert_close(y_plain.mean(axis=(0, 2, 3)), np.zeros(3), **tol("batchnorm"), what="mean")
    dy = randn(rng, x.shape, np.float32)
    _, sm, si = F.batch_norm_forward(x, None, None, training=True)
    dx_none = F.batch_norm_backward(dy, x, None, sm, si, True)[0]
    dx_ones = F.batch_norm_backward(dy, x, ones, sm, si, True)[0]
    np.testing.assert_array_equal(dx_none, dx_ones)


# --- activations --------------------------------------------------------------------------

ACT_SHAPES = [(7,), (4, 6), (2, 3, 5, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ACT_SHAPES)
def test_elementwise_activations(rng, dtype, shape):
    x = randn(rng, shape, dtype) * 3
    dy = randn(rng, shape, dtype)
    act = tol("activation")
    y = F.relu(x)
    assert_close(y, REF.relu_forward(x), **act, what="relu")
    assert_close(F.relu_backward(dy, y), REF.relu_backward(dy, REF.relu_forward(x)), **act,
                 what="relu dx")
    assert_close(F.leaky_relu(x), REF.leaky_relu_forward(x, 0.01), **act, what="leaky_relu default")
    assert_close(F.leaky_relu(x, 0.2), REF.leaky_relu_forward(x, 0.2), **act, what="leaky_relu")
    assert_close(F.leaky_relu_backward(dy, x, 0.2), REF.leaky_relu_backward(dy, x, 0.2), **act,
                 what="leaky_relu dx")
    y = F.sigmoid(x)
    assert_close(y, REF.sigmoid_forward(x), **act, what="sigmoid")
    assert_close(F.sigmoid_backward(dy, y), REF.sigmoid_backward(dy, REF.sigmoid_forward(x)), **act,
                 what="sigmoid dx")
    y = F.tanh(x)
    assert_close(y, REF.tanh_forward(x), **act, what="tanh")
    assert_close(F.tanh_backward(dy, y), REF.tanh_backward(dy, REF.tanh_forward(x)), **act,
                 what="tanh dx")
    for approximate, row in (("none", "gelu"), ("tanh", "gelu_tanh")):
        assert_close(F.gelu(x, approximate), getattr(REF, f"{row}_forward")(x), **act, what=f"gelu {approximate}")
        assert_close(F.gelu_backward(dy, x, approximate), getattr(REF, f"{row}_backward")(dy, x), **act,
                     what=f"gelu {approximate} dx")
    assert_close(F.gelu(x), REF.gelu_forward(x), **act, what="gelu is exact by default")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_torchs(rng, approximate):
    """float32 through the engine (Numba) against torch.nn.functional.gelu, forward and autograd."""
    torch = pytest.importorskip("torch")
    x = randn(rng, (3, 4, 5, 5), np.float32) * 3
    dy = randn(rng, x.shape, np.float32)
    t = torch.tensor(x, requires_grad=True)
    out = torch.nn.functional.gelu(t, approximate=approximate)
    out.backward(torch.from_numpy(dy))
    act = tol("activation")
    assert_close(F.gelu(x, approximate), out.detach().numpy(), **act, what=f"gelu {approximate} vs torch")
    assert_close(F.gelu_backward(dy, x, approximate), t.grad.numpy(), **act, what=f"gelu {approximate} dx vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5, 5)])
def test_bias_relu(rng, dtype, shape):
    x, b = randn(rng, shape, dtype), randn(rng, (shape[1],), dtype)
    y = F.bias_relu(x, b)
    y_ref = REF.bias_relu_forward(x, b)
    assert_close(y, y_ref, **tol("activation"), what="bias_relu y")
    dy = randn(rng, shape, dtype)
    dx, db = F.bias_relu_backward(dy, y)
    dx_ref, db_ref = REF.bias_relu_backward(dy, y_ref)
    assert_close(dx, dx_ref, **tol("activation"), what="bias_relu dx")
    assert_close(db, db_ref, **tol("activation"), what="bias_relu db")


# --- dropout ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.75])
def test_dropout_matches_the_reference_mask(rng, dtype, p):
    x = randn(rng, (3, 4, 5, 6), dtype)
    y, mask = F.dropout_forward(x, p, seed=2024)
    y_ref, mask_ref = REF.dropout_forward(x, p, 2024)
    np.testing.assert_array_equal(mask, mask_ref)  # one mask on every backend for a seed
    assert_close(y, y_ref, **tol("dropout"), what="dropout y")
    np.testing.assert_array_equal(F.dropout(x, p, seed=2024), y)
    dy = randn(rng, x.shape, dtype)
    assert_close(F.dropout_backward(dy, mask, p), REF.dropout_backward(dy, mask_ref, p),
                 **tol("dropout"), what="dropout dx")


def test_dropout_seeds(rng):
    x = randn(rng, (64, 64), np.float32)
    # a negative seed is the same key as its value mod 2**64
    np.testing.assert_array_equal(F.dropout_forward(x, 0.5, seed=-1)[1],
                                  REF.dropout_forward(x, 0.5, 2**64 - 1)[1])
    # no seed: drawn from NumPy's global generator, so np.random.seed repeats a run
    np.random.seed(7)
    first = F.dropout_forward(x, 0.5)[1]
    np.random.seed(7)
    again = F.dropout_forward(x, 0.5)[1]
    np.random.seed(8)
    other = F.dropout_forward(x, 0.5)[1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_dropout_in_eval_mode_is_the_identity(rng):
    x = randn(rng, (4, 5), np.float32)
    y, mask = F.dropout_forward(x, 0.5, training=False)
    assert y is x and mask is None
    dy = randn(rng, x.shape, np.float32)
    assert F.dropout_backward(dy, None, 0.5) is dy


# --- reshapes, joins, losses ------------------------------------------------------------


def test_flatten_round_trip_is_a_view(rng):
    x = randn(rng, (2, 3, 4, 5), np.float32)
    flat = F.flatten(x)
    assert flat.shape == (2, 60)
    assert np.shares_memory(flat, x)  # a reshape, no copy
    np.testing.assert_array_equal(flat, x.reshape(2, -1))
    back = F.flatten_backward(flat, x.shape)
    assert back.shape == x.shape and np.shares_memory(back, x)
    np.testing.assert_array_equal(back, x)
    assert F.flatten(x, start_dim=2).shape == (2, 3, 20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add(rng, dtype):
    a, b = randn(rng, (3, 4), dtype), randn(rng, (3, 4), dtype)
    assert_close(F.add(a, b), REF.add(a, b), **tol("activation"), what="add")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_cross_entropy(rng, dtype, label_dtype):
    logits = randn(rng, (6, 10), dtype) * 4
    labels = rng.integers(0, 10, 6).astype(label_dtype)
    loss, dlogits = F.cross_entropy_forward(logits, labels)
    loss_ref, dlogits_ref = REF.softmax_cross_entropy_forward(logits, labels.astype(np.int64))
    assert_close(loss, loss_ref, **tol("loss"), what="cross_entropy loss")
    assert_close(dlogits, dlogits_ref, **tol("loss"), what="cross_entropy dlogits")
    assert_close(F.cross_entropy(logits, labels), loss_ref, **tol("loss"), what="cross_entropy")
    assert_close(F.cross_entropy_backward(1.0, dlogits), dlogits_ref, **tol("loss"), what="dloss 1")
    assert_close(F.cross_entropy_backward(0.5, dlogits), 0.5 * dlogits_ref, **tol("loss"),
                 what="dloss 0.5")
    # a float64 0-d dloss scales without promoting a float32 gradient
    scaled = F.cross_entropy_backward(np.array(2.0), dlogits)
    assert scaled.dtype == dlogits.dtype
    assert_close(scaled, 2.0 * dlogits_ref, **tol("loss"), what="dloss 0-d array")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8,), (8, 1), (2, 3, 4)])
def test_mse_loss(rng, dtype, shape):
    x, target = randn(rng, shape, dtype), randn(rng, shape, dtype)
    assert_close(F.mse_loss(x, target), REF.mse_loss_forward(x, target), **tol("loss"),
                 what="mse_loss")
    for dloss in (1.0, 0.25, np.array(3.0)):
        assert_close(F.mse_loss_backward(dloss, x, target),
                     REF.mse_loss_backward(x, target, float(dloss)), **tol("loss"),
                     what=f"mse_loss dx, dloss {dloss}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_keep_the_input_dtype(rng, dtype):
    """Whichever backend runs, float32 in is float32 out (and float64 is float64), so a
    forward's outputs can be fed to its backward without a dtype error."""
    x, w = randn(rng, (2, 3, 8, 8), dtype), randn(rng, (4, 3, 3, 3), dtype)
    y = F.conv2d(x, w, padding=1)
    results = {
        "conv2d": y,
        "conv2d_backward": F.conv2d_backward(y, x, w, padding=1),
        "max_pool2d": F.max_pool2d_forward(x, 2)[0],
        "avg_pool2d": F.avg_pool2d(x, 2),
        "batch_norm": F.batch_norm_forward(x, None, None, training=True),
        "relu": F.relu(x),
        "sigmoid": F.sigmoid(x),
        "dropout": F.dropout(x, 0.5, seed=1),
        "cross_entropy": F.cross_entropy_forward(x.reshape(2, -1), np.array([0, 5])),
        "mse_loss": F.mse_loss(x, y[:, :3]),
    }
    for name, result in results.items():
        for a in (result if isinstance(result, tuple) else (result,)):
            assert a is None or a.dtype == dtype, f"{name} returned {a.dtype} for {np.dtype(dtype).name}"
    assert F.max_pool2d_forward(x, 2)[1].dtype == np.int32
    assert F.dropout_forward(x, 0.5, seed=1)[1].dtype == np.uint8
