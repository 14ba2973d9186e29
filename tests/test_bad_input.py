"""Every public function of engine.functional rejects bad input before any kernel runs.

Each case calls one function with one thing wrong and expects ValueError (a wrong
value or shape) or TypeError (a wrong type or dtype) whose message names the op and
the offending values. The backend is replaced by a tripwire: a check that is missing
reaches it and the test fails, instead of some kernel going out of bounds.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import engine.functional as F
from engine import checks


def _reached_backend(*arrays):
    raise AssertionError("bad input reached a backend: a check is missing")


@pytest.fixture(autouse=True)
def no_backend(monkeypatch):
    monkeypatch.setattr(F, "backend_for", _reached_backend)


def f32(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def f64(*shape):
    return np.random.default_rng(0).standard_normal(shape)


class FakeCupyArray:
    """Looks like a CuPy array to the device check (its type lives in a 'cupy' module)."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype, self.ndim, self.size = a.shape, a.dtype, a.ndim, a.size
        self.flags = a.flags

    def min(self):
        raise AssertionError("a GPU array was read before the device check")

    max = min


FakeCupyArray.__module__ = "cupy._core.core"


def message(*fragments):
    """A match= pattern: the fragments, in order, anywhere in the message."""
    return ".*".join(re.escape(f) for f in fragments)


X = f32(2, 3, 8, 8)    # an NCHW input
W = f32(4, 3, 3, 3)    # a conv weight for it
XL, WL = f32(5, 6), f32(7, 6)  # linear input and weight
LOGITS, LABELS = f32(4, 10), np.array([1, 0, 9, 3])
IDX = np.zeros((2, 3, 4, 4), dtype=np.int32)  # max-pool indices for X with a 2x2 kernel


def noncontiguous_stats(c):
    return np.zeros(2 * c, dtype=np.float32)[::2]


# (id, call, exception, fragments of the message after the op name; the op name is the
#  first fragment)
CASES = [
    # --- conv2d ---------------------------------------------------------------------
    ("conv2d-rank", lambda: F.conv2d(f32(3, 28, 28), W), ValueError,
     ["conv2d: expected a 4-D input (N, C, H, W), got shape (3, 28, 28)"]),
    ("conv2d-weight-rank", lambda: F.conv2d(X, f32(4, 3, 3)), ValueError,
     ["conv2d", "4-D weight", "(4, 3, 3)"]),
    ("conv2d-not-array", lambda: F.conv2d(X.tolist(), W), TypeError,
     ["conv2d", "input", "NumPy or CuPy array", "list"]),
    ("conv2d-int-dtype", lambda: F.conv2d(X.astype(np.int32), W), TypeError,
     ["conv2d", "input", "float32 or float64", "int32"]),
    ("conv2d-float16", lambda: F.conv2d(X, W.astype(np.float16)), TypeError,
     ["conv2d", "weight", "float16"]),
    ("conv2d-mixed-dtype", lambda: F.conv2d(X, W.astype(np.float64)), TypeError,
     ["conv2d", "weight has dtype float64 but input has float32"]),
    ("conv2d-channels", lambda: F.conv2d(X, f32(4, 1, 3, 3)), ValueError,
     ["conv2d: input has 3 channels but weight expects 1"]),
    ("conv2d-bias-shape", lambda: F.conv2d(X, W, f32(3)), ValueError,
     ["conv2d", "bias must have shape (4,), got (3,)"]),
    ("conv2d-bias-rank", lambda: F.conv2d(X, W, f32(4, 1)), ValueError,
     ["conv2d", "1-D bias", "(4, 1)"]),
    ("conv2d-stride-0", lambda: F.conv2d(X, W, stride=0), ValueError,
     ["conv2d", "stride must be >= 1, got 0"]),
    ("conv2d-stride-pair-0", lambda: F.conv2d(X, W, stride=(1, 0)), ValueError,
     ["conv2d", "stride must be >= 1, got (1, 0)"]),
    ("conv2d-stride-float", lambda: F.conv2d(X, W, stride=1.5), TypeError,
     ["conv2d", "stride", "float", "1.5"]),
    ("conv2d-stride-bool", lambda: F.conv2d(X, W, stride=True), TypeError,
     ["conv2d", "stride", "bool"]),
    ("conv2d-stride-triple", lambda: F.conv2d(X, W, stride=(1, 1, 1)), ValueError,
     ["conv2d", "stride", "(h, w) pair", "(1, 1, 1)"]),
    ("conv2d-padding-negative", lambda: F.conv2d(X, W, padding=-1), ValueError,
     ["conv2d", "padding must be >= 0, got -1"]),
    ("conv2d-empty-output", lambda: F.conv2d(f32(1, 3, 3, 3), f32(1, 3, 5, 5)), ValueError,
     ["conv2d: kernel 5x5 with stride 1 and padding 0 on a 3x3 input gives an empty "
      "output (-1x-1)"]),
    ("conv2d-empty-input", lambda: F.conv2d(f32(0, 3, 8, 8), W), ValueError,
     ["conv2d", "input must not be empty", "(0, 3, 8, 8)"]),
    ("conv2d-mixed-device", lambda: F.conv2d(X, FakeCupyArray(W)), ValueError,
     ["conv2d", "one device", "input on the CPU (NumPy)", "weight on the GPU (CuPy)"]),
    # --- conv2d_backward --------------------------------------------------------------
    ("conv2d_backward-dy-shape", lambda: F.conv2d_backward(f32(2, 4, 7, 7), X, W, 1, 1),
     ValueError, ["conv2d_backward", "grad_output has shape (2, 4, 7, 7)", "(2, 4, 8, 8)"]),
    ("conv2d_backward-channels", lambda: F.conv2d_backward(f32(2, 4, 6, 6), X, f32(4, 2, 3, 3)),
     ValueError, ["conv2d_backward: input has 3 channels but weight expects 2"]),
    ("conv2d_backward-flag", lambda: F.conv2d_backward(f32(2, 4, 6, 6), X, W, need_input_grad=1),
     TypeError, ["conv2d_backward", "need_input_grad must be True or False", "1"]),
    ("conv2d_backward-dy-dtype", lambda: F.conv2d_backward(f64(2, 4, 6, 6), X, W), TypeError,
     ["conv2d_backward", "input has dtype float32 but grad_output has float64"]),
    # --- linear -----------------------------------------------------------------------
    ("linear-features", lambda: F.linear(XL, f32(7, 5)), ValueError,
     ["linear: input has 6 features but weight expects 5"]),
    ("linear-rank", lambda: F.linear(f32(5, 6, 1), WL), ValueError,
     ["linear", "2-D input", "(5, 6, 1)"]),
    ("linear-bias-shape", lambda: F.linear(XL, WL, f32(6)), ValueError,
     ["linear", "bias must have shape (7,), got (6,)"]),
    ("linear-int", lambda: F.linear(XL, WL.astype(np.int64)), TypeError,
     ["linear", "weight", "int64"]),
    ("linear_backward-dy-shape", lambda: F.linear_backward(f32(5, 6), XL, WL), ValueError,
     ["linear_backward", "grad_output has shape (5, 6)", "(5, 7)"]),
    ("linear_backward-dy-rank", lambda: F.linear_backward(f32(35), XL, WL), ValueError,
     ["linear_backward", "grad_output has shape (35,)", "forward output has shape (5, 7)"]),
    # --- max_pool2d -------------------------------------------------------------------
    ("max_pool2d-rank", lambda: F.max_pool2d(f32(3, 28, 28), 2), ValueError,
     ["max_pool2d: expected a 4-D input (N, C, H, W), got shape (3, 28, 28)"]),
    ("max_pool2d-kernel-0", lambda: F.max_pool2d(X, 0), ValueError,
     ["max_pool2d", "kernel_size must be >= 1, got 0"]),
    ("max_pool2d-stride-0", lambda: F.max_pool2d(X, 2, stride=0), ValueError,
     ["max_pool2d", "stride must be >= 1, got 0"]),
    ("max_pool2d-padding", lambda: F.max_pool2d(X, 3, padding=2), ValueError,
     ["max_pool2d", "at most half the kernel", "padding <= 1", "got padding 2"]),
    ("max_pool2d-padding-pair", lambda: F.max_pool2d(X, (2, 4), padding=(1, 3)), ValueError,
     ["max_pool2d", "padding <= (1, 2)", "got padding (1, 3)"]),
    ("max_pool2d-empty-output", lambda: F.max_pool2d(f32(1, 1, 3, 3), 4), ValueError,
     ["max_pool2d: kernel 4x4 with stride 4 and padding 0 on a 3x3 input gives an empty "
      "output (0x0)"]),
    ("max_pool2d-return-indices", lambda: F.max_pool2d(X, 2, return_indices="yes"), TypeError,
     ["max_pool2d", "return_indices", "'yes'"]),
    ("max_pool2d-int", lambda: F.max_pool2d(X.astype(np.uint8), 2), TypeError,
     ["max_pool2d", "uint8"]),
    ("max_pool2d_forward-stride", lambda: F.max_pool2d_forward(X, 2, stride=(2,)), ValueError,
     ["max_pool2d", "stride must be an int or an (h, w) pair, got (2,)"]),
    ("max_pool2d_backward-indices-dtype",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), IDX.astype(np.float32), X.shape),
     TypeError, ["max_pool2d_backward", "indices", "integer dtype", "float32"]),
    ("max_pool2d_backward-indices-shape",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), IDX[:, :, :3], X.shape), ValueError,
     ["max_pool2d_backward", "indices has shape (2, 3, 3, 4)", "(2, 3, 4, 4)"]),
    ("max_pool2d_backward-index-range",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), IDX + 64, X.shape), ValueError,
     ["max_pool2d_backward: index 64 out of range [0, 64)"]),
    ("max_pool2d_backward-index-negative",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), IDX - 1, X.shape), ValueError,
     ["max_pool2d_backward: index -1 out of range [0, 64)"]),
    ("max_pool2d_backward-x-shape",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), IDX, (2, 3, 8)), ValueError,
     ["max_pool2d_backward", "x_shape", "4 entries", "(2, 3, 8)"]),
    ("max_pool2d_backward-x-shape-type",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), IDX, (2, 3, 8.0, 8)), TypeError,
     ["max_pool2d_backward", "x_shape", "tuple of ints"]),
    ("max_pool2d_backward-batch",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), IDX, (1, 3, 8, 8)), ValueError,
     ["max_pool2d_backward", "(2, 3)", "(1, 3)"]),
    ("max_pool2d_backward-mixed-device",
     lambda: F.max_pool2d_backward(f32(2, 3, 4, 4), FakeCupyArray(IDX), X.shape), ValueError,
     ["max_pool2d_backward", "one device", "indices on the GPU"]),
    # --- adaptive_avg_pool2d ----------------------------------------------------------
    ("adaptive_avg_pool2d-rank", lambda: F.adaptive_avg_pool2d(f32(3, 8, 8), 2), ValueError,
     ["adaptive_avg_pool2d", "4-D input", "(3, 8, 8)"]),
    ("adaptive_avg_pool2d-zero", lambda: F.adaptive_avg_pool2d(X, (0, 2)), ValueError,
     ["adaptive_avg_pool2d", "output_size must be >= 1", "(0, 2)"]),
    ("adaptive_avg_pool2d-float", lambda: F.adaptive_avg_pool2d(X, 2.5), TypeError,
     ["adaptive_avg_pool2d", "output_size must be an int or an (h, w) pair", "2.5"]),
    ("adaptive_avg_pool2d_backward-nc", lambda: F.adaptive_avg_pool2d_backward(f32(2, 4, 1, 1), X.shape),
     ValueError, ["adaptive_avg_pool2d_backward", "(2, 4)", "(2, 3)"]),
    ("adaptive_avg_pool2d_backward-x_shape", lambda: F.adaptive_avg_pool2d_backward(f32(2, 3, 1, 1), (2, 3, 8)),
     ValueError, ["adaptive_avg_pool2d_backward", "x_shape", "4 entries"]),
    # --- avg_pool2d -------------------------------------------------------------------
    ("avg_pool2d-rank", lambda: F.avg_pool2d(f32(8, 8), 2), ValueError,
     ["avg_pool2d", "4-D input", "(8, 8)"]),
    ("avg_pool2d-padding", lambda: F.avg_pool2d(X, 2, padding=2), ValueError,
     ["avg_pool2d", "at most half the kernel", "got padding 2"]),
    ("avg_pool2d-empty-output", lambda: F.avg_pool2d(f32(1, 1, 5, 5), (2, 6)), ValueError,
     ["avg_pool2d: kernel 2x6 with stride (2, 6) and padding 0 on a 5x5 input gives an "
      "empty output (2x0)"]),
    ("avg_pool2d-count-include-pad", lambda: F.avg_pool2d(X, 2, count_include_pad=0),
     TypeError, ["avg_pool2d", "count_include_pad", "True or False"]),
    ("avg_pool2d_backward-dy-shape",
     lambda: F.avg_pool2d_backward(f32(2, 3, 3, 3), X.shape, 2), ValueError,
     ["avg_pool2d_backward", "grad_output has shape (2, 3, 3, 3)", "(2, 3, 4, 4)"]),
    ("avg_pool2d_backward-x-shape",
     lambda: F.avg_pool2d_backward(f32(2, 3, 4, 4), (2, 3, 0, 8), 2), ValueError,
     ["avg_pool2d_backward", "x_shape", "positive", "(2, 3, 0, 8)"]),
    # --- batch_norm -------------------------------------------------------------------
    ("batch_norm-rank", lambda: F.batch_norm(f32(2, 3, 8), f32(3), f32(3)), ValueError,
     ["batch_norm", "2-D or 4-D input", "(2, 3, 8)"]),
    ("batch_norm-weight-shape",
     lambda: F.batch_norm(X, np.zeros(3, np.float32), np.ones(3, np.float32), f32(4)),
     ValueError, ["batch_norm", "weight must have shape (3,), got (4,)"]),
    ("batch_norm-running-shape",
     lambda: F.batch_norm(X, np.zeros(4, np.float32), np.ones(3, np.float32)),
     ValueError, ["batch_norm", "running_mean must have shape (3,), got (4,)"]),
    ("batch_norm-running-dtype",
     lambda: F.batch_norm(X, np.zeros(3), np.ones(3, np.float32)),
     TypeError, ["batch_norm", "running_mean", "float32", "float64"]),
    ("batch_norm-running-noncontiguous",
     lambda: F.batch_norm(X, noncontiguous_stats(3), np.ones(3, np.float32), training=True),
     ValueError, ["batch_norm", "running_mean", "in place", "C-contiguous"]),
    ("batch_norm-eval-needs-stats", lambda: F.batch_norm(X, None, None, training=False),
     ValueError, ["batch_norm", "running_mean", "eval mode", "None"]),
    ("batch_norm-momentum", lambda: F.batch_norm(X, None, None, training=True, momentum=1.5),
     ValueError, ["batch_norm", "momentum must be in [0, 1], got 1.5"]),
    ("batch_norm-eps", lambda: F.batch_norm(X, None, None, training=True, eps=0),
     ValueError, ["batch_norm", "eps must be > 0, got 0"]),
    ("batch_norm-training-flag", lambda: F.batch_norm(X, None, None, training="yes"),
     TypeError, ["batch_norm", "training must be True or False", "'yes'"]),
    ("batch_norm-one-value", lambda: F.batch_norm(f32(1, 3), None, None, training=True),
     ValueError, ["batch_norm", "more than 1 value per channel", "(1, 3)"]),
    ("batch_norm-weight-dtype",
     lambda: F.batch_norm(X, None, None, f64(3), training=True),
     TypeError, ["batch_norm", "weight has dtype float64 but input has float32"]),
    ("batch_norm_forward-eval-needs-var",
     lambda: F.batch_norm_forward(X, np.zeros(3, np.float32), None), ValueError,
     ["batch_norm", "running_var is needed in eval mode"]),
    ("batch_norm_backward-dy-shape",
     lambda: F.batch_norm_backward(f32(2, 3, 8, 7), X, f32(3), f32(3), f32(3), True),
     ValueError, ["batch_norm_backward", "grad_output has shape (2, 3, 8, 7)", "(2, 3, 8, 8)"]),
    ("batch_norm_backward-save-shape",
     lambda: F.batch_norm_backward(X, X, f32(3), f32(2), f32(3), True),
     ValueError, ["batch_norm_backward", "save_mean must have shape (3,), got (2,)"]),
    ("batch_norm_backward-save-missing",
     lambda: F.batch_norm_backward(X, X, None, None, f32(3), True),
     TypeError, ["batch_norm_backward", "save_mean", "NoneType"]),
    # --- activations --------------------------------------------------------------------
    ("relu-int", lambda: F.relu(np.arange(6)), TypeError, ["relu", "input", "int64"]),
    ("relu-not-array", lambda: F.relu(3.0), TypeError, ["relu", "array", "float"]),
    ("relu_backward-shape", lambda: F.relu_backward(f32(2, 3), f32(3, 2)), ValueError,
     ["relu_backward", "grad_output has shape (2, 3)", "(3, 2)", "no broadcasting"]),
    ("relu_backward-dtype", lambda: F.relu_backward(f64(2, 3), f32(2, 3)), TypeError,
     ["relu_backward", "output has dtype float32 but grad_output has float64"]),
    ("bias_relu-bias-shape", lambda: F.bias_relu(X, f32(4)), ValueError,
     ["bias_relu", "bias must have shape (3,), got (4,)"]),
    ("bias_relu-rank", lambda: F.bias_relu(f32(2, 3, 4), f32(3)), ValueError,
     ["bias_relu", "2-D or 4-D input", "(2, 3, 4)"]),
    ("bias_relu_backward-shape", lambda: F.bias_relu_backward(f32(2, 3), f32(2, 4)),
     ValueError, ["bias_relu_backward", "(2, 3)", "(2, 4)"]),
    ("leaky_relu-slope-type", lambda: F.leaky_relu(X, "0.1"), TypeError,
     ["leaky_relu", "negative_slope must be a real number", "'0.1'"]),
    ("leaky_relu-slope-nan", lambda: F.leaky_relu(X, float("nan")), ValueError,
     ["leaky_relu", "negative_slope must be finite", "nan"]),
    ("leaky_relu_backward-shape", lambda: F.leaky_relu_backward(f32(4), f32(5)), ValueError,
     ["leaky_relu_backward", "(4,)", "(5,)"]),
    ("sigmoid-int", lambda: F.sigmoid(np.ones(3, dtype=np.int8)), TypeError,
     ["sigmoid", "int8"]),
    ("sigmoid_backward-shape", lambda: F.sigmoid_backward(f32(4, 1), f32(4)), ValueError,
     ["sigmoid_backward", "grad_output has shape (4, 1)", "output has shape (4,)"]),
    ("tanh-bool", lambda: F.tanh(np.ones(3, dtype=bool)), TypeError, ["tanh", "bool"]),
    ("gelu-approximate", lambda: F.gelu(X, approximate="exact"), ValueError,
     ["gelu", "approximate must be one of ['none', 'tanh'], got 'exact'"]),
    ("gelu-approximate-type", lambda: F.gelu(X, approximate=True), ValueError,
     ["gelu", "approximate must be one of", "got True"]),
    ("gelu-int", lambda: F.gelu(np.ones(3, dtype=np.int32)), TypeError, ["gelu", "int32"]),
    ("gelu_backward-shape", lambda: F.gelu_backward(f32(4, 1), f32(4)), ValueError,
     ["gelu_backward", "grad_output has shape (4, 1)", "the forward output has shape (4,)"]),
    ("gelu_backward-approximate", lambda: F.gelu_backward(f32(4), f32(4), "fast"), ValueError,
     ["gelu_backward", "approximate must be one of ['none', 'tanh'], got 'fast'"]),
    ("tanh_backward-dtype", lambda: F.tanh_backward(f32(4), f64(4)), TypeError,
     ["tanh_backward", "output has dtype float64 but grad_output has float32"]),
    # --- dropout ------------------------------------------------------------------------
    ("dropout-p-1", lambda: F.dropout(X, 1.0), ValueError,
     ["dropout", "p must be in [0, 1), got 1.0"]),
    ("dropout-p-negative", lambda: F.dropout(X, -0.1), ValueError,
     ["dropout", "p must be in [0, 1), got -0.1"]),
    ("dropout-p-type", lambda: F.dropout(X, "0.5"), TypeError,
     ["dropout", "p must be a real number", "'0.5'"]),
    ("dropout-seed-type", lambda: F.dropout(X, 0.5, seed=1.5), TypeError,
     ["dropout", "seed must be an int", "1.5"]),
    ("dropout-training-flag", lambda: F.dropout(X, 0.5, training=None), TypeError,
     ["dropout", "training must be True or False", "None"]),
    ("dropout-int", lambda: F.dropout(np.ones(4, dtype=np.int32)), TypeError,
     ["dropout", "int32"]),
    ("dropout_forward-p", lambda: F.dropout_forward(X, 1.5, seed=0), ValueError,
     ["dropout", "p must be in [0, 1), got 1.5"]),
    ("dropout_backward-mask-dtype",
     lambda: F.dropout_backward(f32(4), np.ones(4, dtype=bool), 0.5), TypeError,
     ["dropout_backward", "mask must have dtype uint8", "bool"]),
    ("dropout_backward-mask-shape",
     lambda: F.dropout_backward(f32(4), np.ones(5, dtype=np.uint8), 0.5), ValueError,
     ["dropout_backward", "mask has shape (5,)", "(4,)"]),
    ("dropout_backward-p", lambda: F.dropout_backward(f32(4), np.ones(4, np.uint8), 1),
     ValueError, ["dropout_backward", "p must be in [0, 1)", "1"]),
    # --- flatten ------------------------------------------------------------------------
    ("flatten-start-dim", lambda: F.flatten(f32(4), start_dim=1), ValueError,
     ["flatten", "start_dim must be < the input's rank 1, got 1"]),
    ("flatten-not-array", lambda: F.flatten([[1.0]]), TypeError, ["flatten", "list"]),
    ("flatten_backward-size", lambda: F.flatten_backward(f32(2, 10), (2, 3, 2, 2)), ValueError,
     ["flatten_backward", "20 elements", "(2, 3, 2, 2)", "24"]),
    # --- cross_entropy ------------------------------------------------------------------
    ("cross_entropy-label-range",
     lambda: F.cross_entropy(LOGITS, np.array([1, 12, 3, 4])), ValueError,
     ["cross_entropy: label 12 out of range [0, 10)"]),
    ("cross_entropy-label-negative",
     lambda: F.cross_entropy(LOGITS, np.array([1, -1, 3, 4])), ValueError,
     ["cross_entropy: label -1 out of range [0, 10)"]),
    ("cross_entropy-label-dtype",
     lambda: F.cross_entropy(LOGITS, LABELS.astype(np.float32)), TypeError,
     ["cross_entropy", "labels must have an integer dtype, got float32"]),
    ("cross_entropy-label-rank",
     lambda: F.cross_entropy(LOGITS, LABELS.reshape(4, 1)), ValueError,
     ["cross_entropy", "1-D labels (N,)", "(4, 1)"]),
    ("cross_entropy-batch",
     lambda: F.cross_entropy(LOGITS, LABELS[:3]), ValueError,
     ["cross_entropy: logits has batch size 4 but labels has 3"]),
    ("cross_entropy-logits-rank", lambda: F.cross_entropy(f32(10), LABELS), ValueError,
     ["cross_entropy", "2-D logits (N, classes)", "(10,)"]),
    ("cross_entropy-logits-dtype",
     lambda: F.cross_entropy(LOGITS.astype(np.int32), LABELS), TypeError,
     ["cross_entropy", "logits", "int32"]),
    ("cross_entropy-mixed-device",
     lambda: F.cross_entropy(LOGITS, FakeCupyArray(LABELS)), ValueError,
     ["cross_entropy", "one device", "labels on the GPU"]),
    ("cross_entropy_forward-label-range",
     lambda: F.cross_entropy_forward(LOGITS, np.array([10, 0, 0, 0])), ValueError,
     ["cross_entropy: label 10 out of range [0, 10)"]),
    ("cross_entropy_backward-dloss-shape",
     lambda: F.cross_entropy_backward(f32(2), LOGITS), ValueError,
     ["cross_entropy_backward", "dloss must be a scalar", "(2,)"]),
    ("cross_entropy_backward-dloss-type",
     lambda: F.cross_entropy_backward("1", LOGITS), TypeError,
     ["cross_entropy_backward", "dloss must be a real number", "'1'"]),
    # --- mse_loss -----------------------------------------------------------------------
    ("mse_loss-no-broadcast", lambda: F.mse_loss(f32(4, 1), f32(4)), ValueError,
     ["mse_loss", "target has shape (4,) but input has shape (4, 1)", "no broadcasting"]),
    ("mse_loss-dtype", lambda: F.mse_loss(f32(4), f64(4)), TypeError,
     ["mse_loss", "target has dtype float64 but input has float32"]),
    ("mse_loss-empty", lambda: F.mse_loss(f32(0), f32(0)), ValueError,
     ["mse_loss", "must not be empty", "(0,)"]),
    ("mse_loss_backward-no-broadcast", lambda: F.mse_loss_backward(1.0, f32(4), f32(1, 4)),
     ValueError, ["mse_loss_backward", "(1, 4)", "(4,)"]),
    ("mse_loss_backward-dloss-inf", lambda: F.mse_loss_backward(float("inf"), f32(4), f32(4)),
     ValueError, ["mse_loss_backward", "dloss must be finite", "inf"]),
    # --- softmax and log_softmax --------------------------------------------------------
    ("softmax-dim", lambda: F.softmax(LOGITS, dim=2), ValueError,
     ["softmax", "dim must be an axis of the 2-D input, in [-2, 1], got 2"]),
    ("softmax-dim-type", lambda: F.softmax(LOGITS, dim=1.0), TypeError, ["softmax", "dim must be an int", "1.0"]),
    ("softmax-int-dtype", lambda: F.softmax(LABELS, dim=0), TypeError,
     ["softmax", "input must be float32 or float64", "int64"]),
    ("softmax-empty", lambda: F.softmax(f32(0, 3)), ValueError, ["softmax", "must not be empty", "(0, 3)"]),
    ("log_softmax-dim", lambda: F.log_softmax(LOGITS, dim=-3), ValueError,
     ["log_softmax", "dim must be an axis", "got -3"]),
    ("log_softmax-not-array", lambda: F.log_softmax([1.0, 2.0]), TypeError,
     ["log_softmax", "NumPy or CuPy array", "list"]),
    ("softmax_backward-shape", lambda: F.softmax_backward(f32(4, 9), LOGITS), ValueError,
     ["softmax_backward", "grad_output has shape (4, 9)", "(4, 10)"]),
    ("softmax_backward-dtype", lambda: F.softmax_backward(f64(4, 10), LOGITS), TypeError,
     ["softmax_backward", "output has dtype float32 but grad_output has float64"]),
    ("softmax_backward-mixed-device", lambda: F.softmax_backward(FakeCupyArray(LOGITS), LOGITS), ValueError,
     ["softmax_backward", "one device", "on the GPU"]),
    ("log_softmax_backward-dim", lambda: F.log_softmax_backward(LOGITS, LOGITS, dim=2), ValueError,
     ["log_softmax_backward", "dim must be an axis of the 2-D input"]),
    # --- add ----------------------------------------------------------------------------
    ("add-shape", lambda: F.add(f32(2, 3), f32(3)), ValueError,
     ["add", "b has shape (3,) but a has shape (2, 3)"]),
    ("add-dtype", lambda: F.add(f32(3), f64(3)), TypeError,
     ["add", "b has dtype float64 but a has float32"]),
    ("add-mixed-device", lambda: F.add(f32(3), FakeCupyArray(f32(3))), ValueError,
     ["add", "one device", "b on the GPU"]),
]


@pytest.mark.parametrize("call, exc, fragments", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_clear_message(call, exc, fragments):
    with pytest.raises(exc, match=message(*fragments)):
        call()


def test_every_public_function_has_a_bad_input_case():
    """A new function in engine.functional cannot land without a case above."""
    covered = {c[0].split("-")[0] for c in CASES}
    missing = sorted(set(F.__all__) - covered)
    assert not missing, f"no bad-input case for {missing}"


def test_each_message_starts_with_the_op_name():
    for name, call, exc, fragments in CASES:
        with pytest.raises(exc) as info:
            call()
        op = name.split("-")[0]
        # the _forward variants share their plain op's checks and name
        op = op.removesuffix("_forward")
        assert str(info.value).startswith(f"{op}: "), (name, str(info.value))


# --- the shape-level helpers that layers call at trace time ---------------------------


@pytest.mark.parametrize("h, k, s, p", [(28, 5, 1, 2), (14, 5, 1, 0), (224, 11, 4, 2),
                                        (7, 3, 2, 1), (9, (3, 1), (2, 1), (1, 0))])
def test_conv2d_output_shape_is_the_floor_formula(h, k, s, p):
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (s, s) if isinstance(s, int) else s
    ph, pw = (p, p) if isinstance(p, int) else p
    shape = checks.conv2d_output_shape("conv2d", (2, 3, h, h + 1), (5, 3, kh, kw), s, p)
    # the floor formula, written out against a direct count of window positions
    positions_h = len(range(-ph, h + ph - kh + 1, sh))
    positions_w = len(range(-pw, h + 1 + pw - kw + 1, sw))
    assert shape == (2, 5, positions_h, positions_w)


def test_pool2d_output_shape_alexnet_overlapping():
    # 3x3/2 overlapping pooling on AlexNet's 55x55 conv1 output: 27x27
    assert checks.pool2d_output_shape("max_pool2d", (1, 64, 55, 55), 3, 2, 0) == (1, 64, 27, 27)


def test_linear_output_shape_and_names_the_layer():
    assert checks.linear_output_shape("Linear(400, 120)", (8, 400), (120, 400)) == (8, 120)
    with pytest.raises(ValueError, match=message("Linear(84, 10): input has 120 features")):
        checks.linear_output_shape("Linear(84, 10)", (8, 120), (10, 84))


def test_pair_normalises_ints_and_pairs():
    assert checks.pair("op", "stride", 2) == (2, 2)
    assert checks.pair("op", "stride", (2, 3)) == (2, 3)
    assert checks.pair("op", "stride", [1, 4]) == (1, 4)
    assert checks.pair("op", "stride", np.int64(3)) == (3, 3)
    assert all(type(v) is int for v in checks.pair("op", "stride", (np.int32(2), 3)))


def test_noncontiguous_input_is_copied_not_refused():
    base = f32(4, 6)
    for view in (base.T, base[:, ::2], base[::-1]):
        fixed = checks.float_array("relu", "input", view)
        assert fixed.flags.c_contiguous
        np.testing.assert_array_equal(fixed, view)
    swapped = base.astype(base.dtype.newbyteorder(">"))
    fixed = checks.float_array("relu", "input", swapped)
    assert fixed.dtype.isnative
    np.testing.assert_array_equal(fixed, base)
