"""The functional API: checked, documented ops on NumPy (CPU) or CuPy (GPU) arrays.

Names follow torch.nn.functional where one exists. Every function checks its inputs
(engine.checks: rank, dtype, shapes, ranges, device), normalises int-or-(h, w)
arguments to pairs, then asks ``engine.backend.backend_for(...)`` which implementation
to run and calls the op by name. Nothing here chooses a backend itself.

    import engine.functional as F
    y = F.conv2d(x, w, b, stride=1, padding=2)          # x (N, C, H, W), w (K, C, R, S)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride=1, padding=2)

Forward and backward, one rule for all ops
-------------------------------------------
* The plain name returns the output only: ``relu(x) -> y``, ``cross_entropy(logits,
  labels) -> loss``.
* Where the backward needs values the forward computes besides its output, a
  ``<name>_forward`` function returns ``(output, *saved)`` and ``<name>_backward``
  takes those saved values back:

      max_pool2d_forward(x, ...)      -> (y, indices)        max_pool2d_backward(dy, indices, x.shape)
      batch_norm_forward(x, ...)      -> (y, mean, invstd)   batch_norm_backward(dy, x, weight, mean, invstd, training)
      dropout_forward(x, p, ...)      -> (y, mask)           dropout_backward(dy, mask, p)
      cross_entropy_forward(logits, labels) -> (loss, dlogits)   cross_entropy_backward(dloss, dlogits)

  (``max_pool2d(..., return_indices=True)`` is kept as well, as in torch.)
* Every backward takes the gradient of the output first (``dy``, or ``dloss`` for a
  loss), then what it needs, and returns the gradients of the inputs in the order of
  the forward's arguments; a gradient that was not asked for is None.
* Backwards that need the forward's output take it as ``y`` (relu, bias_relu, sigmoid,
  tanh, softmax, log_softmax); the others take the input ``x``.

Conventions (see engine.checks for the reasons)
-----------------------------------------------
* Layout NCHW; conv weights (K, C, R, S), linear weights (out_features, in_features).
* Data float32 or float64, one dtype per call (never promoted silently); labels and
  indices of an integer dtype. Results come back in the dtype of the data, whichever
  backend ran (the reference backend computes in float64 and is rounded back, so that
  forward outputs and backward inputs always agree).
* Non-contiguous inputs are copied to C-contiguous ones before a kernel sees them;
  batch norm's running statistics, which are updated in place, must be contiguous.
* No broadcasting between arguments whose shapes should agree.
* Empty arrays are rejected.
* Pooling is floor mode; max pooling pads with -inf, ties go to the first cell.
"""
from __future__ import annotations

import numpy as np

from engine import checks as C
from engine.backend import array_module, backend_for
from engine.reference.activation import ROWS

__all__ = [
    "conv2d", "conv2d_backward",
    "linear", "linear_backward",
    "max_pool2d", "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "batch_norm", "batch_norm_forward", "batch_norm_backward",
    "relu", "relu_backward", "bias_relu", "bias_relu_backward",
    "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "gelu", "gelu_backward",
    "dropout", "dropout_forward", "dropout_backward",
    "flatten", "flatten_backward",
    "cross_entropy", "cross_entropy_forward", "cross_entropy_backward",
    "mse_loss", "mse_loss_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "add",
]

NCHW = "(N, C, H, W)"


def _backend(op: str, floats: dict, others: dict | None = None):
    """Check the arrays of one call share a device (and the float ones a dtype); the
    backend that runs them, its results cast back to that dtype. None entries (an
    absent bias) are skipped. Called after every other check of an op: nothing
    reaches a backend unchecked."""
    C.same_device(op, **floats, **(others or {}))
    C.same_dtype(op, **floats)
    present = [a for a in (*floats.values(), *(others or {}).values()) if a is not None]
    dtype = next(a.dtype for a in floats.values() if a is not None)
    return _InDtype(backend_for(*present), dtype)


class _InDtype:
    """A backend whose float results come back in the caller's dtype.

    The reference backend computes in float64 whatever it is given; without this, the
    float64 output of a float32 forward would meet a float32 gradient in the backward
    and fail the one-dtype check. Numba and CUDA already return the input dtype, so
    for them this costs nothing (astype with copy=False). Integer results (pooling
    indices, dropout masks) pass through."""

    def __init__(self, backend, dtype):
        self._backend, self._dtype = backend, dtype

    def __getattr__(self, op):
        fn = getattr(self._backend, op)

        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            if isinstance(result, tuple):
                return tuple(self._cast(r) for r in result)
            return self._cast(result)
        return call

    def _cast(self, a):
        if a is None or a.dtype.kind != "f" or a.dtype == self._dtype:
            return a
        return a.astype(self._dtype, copy=False)


def _optional_bias(op: str, bias, channels: int):
    if bias is None:
        return None
    bias = C.float_array(op, "bias", bias, 1, "(C,)")
    C.bias_shape(op, bias.shape, channels)
    return bias


def _grad_output(op: str, dy, shape):
    """dy must be a float array of exactly the forward output's shape."""
    dy = C.float_array(op, "grad_output", dy)
    C.same_shape(op, "grad_output", dy.shape, "the forward output", shape)
    return dy


# ---------------------------------------------------------------------------------------
# convolution and dense layers


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation (as torch): x (N, C, H, W), weight (K, C, R, S), bias (K,) or
    None -> y (N, K, P, Q) with P = (H + 2*padding - R) // stride + 1.

    stride and padding are ints or (h, w) pairs."""
    op = "conv2d"
    x = C.float_array(op, "input", x, 4, NCHW)
    weight = C.float_array(op, "weight", weight, 4, "(K, C, R, S)")
    bias = _optional_bias(op, bias, weight.shape[0])
    C.conv2d_output_shape(op, x.shape, weight.shape, stride, padding)
    stride, padding = C.pair(op, "stride", stride), C.pair(op, "padding", padding)
    be = _backend(op, dict(input=x, weight=weight, bias=bias))
    return be.conv2d_forward(x, weight, bias, stride, padding)


def conv2d_backward(dy, x, weight, stride=1, padding=0, need_input_grad=True,
                    need_bias_grad=True):
    """Gradients of conv2d: dy (N, K, P, Q) -> (dx (N, C, H, W) or None, dw (K, C, R, S),
    db (K,) or None). dx is skipped for a first layer, db for a conv without bias."""
    op = "conv2d_backward"
    x = C.float_array(op, "input", x, 4, NCHW)
    weight = C.float_array(op, "weight", weight, 4, "(K, C, R, S)")
    y_shape = C.conv2d_output_shape(op, x.shape, weight.shape, stride, padding)
    dy = _grad_output(op, dy, y_shape)
    need_input_grad = C.boolean(op, "need_input_grad", need_input_grad)
    need_bias_grad = C.boolean(op, "need_bias_grad", need_bias_grad)
    be = _backend(op, dict(grad_output=dy, input=x, weight=weight))
    stride, padding = C.pair(op, "stride", stride), C.pair(op, "padding", padding)
    dx = be.conv2d_backward_data(dy, weight, x.shape, stride, padding) if need_input_grad else None
    dw = be.conv2d_backward_weight(dy, x, weight.shape, stride, padding)
    db = be.bias_backward(dy) if need_bias_grad else None
    return dx, dw, db


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias: x (N, in_features), weight (out_features, in_features),
    bias (out_features,) or None -> y (N, out_features)."""
    op = "linear"
    x = C.float_array(op, "input", x, 2, "(N, in_features)")
    weight = C.float_array(op, "weight", weight, 2, "(out_features, in_features)")
    C.linear_output_shape(op, x.shape, weight.shape)
    bias = _optional_bias(op, bias, weight.shape[0])
    be = _backend(op, dict(input=x, weight=weight, bias=bias))
    return be.linear_forward(x, weight, bias)


def linear_backward(dy, x, weight, need_input_grad=True, need_bias_grad=True):
    """Gradients of linear: dy (N, O) -> (dx (N, I) or None, dw (O, I), db (O,) or None)."""
    op = "linear_backward"
    x = C.float_array(op, "input", x, 2, "(N, in_features)")
    weight = C.float_array(op, "weight", weight, 2, "(out_features, in_features)")
    dy = _grad_output(op, dy, C.linear_output_shape(op, x.shape, weight.shape))
    need_input_grad = C.boolean(op, "need_input_grad", need_input_grad)
    need_bias_grad = C.boolean(op, "need_bias_grad", need_bias_grad)
    be = _backend(op, dict(grad_output=dy, input=x, weight=weight))
    dx = be.linear_backward_data(dy, weight) if need_input_grad else None
    dw = be.linear_backward_weight(dy, x)
    db = be.bias_backward(dy) if need_bias_grad else None
    return dx, dw, db


# ---------------------------------------------------------------------------------------
# pooling


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    """Max over each window: x (N, C, H, W) -> y (N, C, P, Q); stride defaults to the
    kernel. With return_indices=True, (y, indices) as max_pool2d_forward."""
    return_indices = C.boolean("max_pool2d", "return_indices", return_indices)
    y, indices = max_pool2d_forward(x, kernel_size, stride, padding)
    return (y, indices) if return_indices else y


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """(y (N, C, P, Q), indices int32 (N, C, P, Q)): indices hold h*W + w of each window's
    winner in its (n, c) plane, which max_pool2d_backward needs."""
    op = "max_pool2d"
    x = C.float_array(op, "input", x, 4, NCHW)
    kernel, stride, padding = _pool_args(op, x.shape, kernel_size, stride, padding)
    return _backend(op, dict(input=x)).max_pool2d_forward(x, kernel, stride, padding)


def max_pool2d_backward(dy, indices, x_shape):
    """dy (N, C, P, Q) added into dx (N, C, H, W) = zeros(x_shape) at each window's winner."""
    op = "max_pool2d_backward"
    x_shape = C.shape_tuple(op, "x_shape", x_shape, 4, NCHW)
    dy = C.float_array(op, "grad_output", dy, 4, "(N, C, P, Q)")
    indices = C.int_array(op, "indices", indices, 4, "(N, C, P, Q)")
    C.same_shape(op, "indices", indices.shape, "grad_output", dy.shape)
    if dy.shape[:2] != x_shape[:2]:
        raise ValueError(f"{op}: grad_output has (N, C) = {dy.shape[:2]} but x_shape has "
                         f"{x_shape[:2]}")
    C.same_device(op, grad_output=dy, indices=indices)
    C.index_range(op, "index", indices, x_shape[2] * x_shape[3])  # a bad one writes out of bounds
    be = _backend(op, dict(grad_output=dy), dict(indices=indices))
    if indices.dtype != np.int32:  # the kernels' index type; the range check made this safe
        indices = indices.astype(np.int32)
    return be.max_pool2d_backward(dy, indices, x_shape)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Mean over each window: x (N, C, H, W) -> y (N, C, P, Q); padded zeros count in the
    divisor when count_include_pad (as torch), else only in-bounds cells do."""
    op = "avg_pool2d"
    x = C.float_array(op, "input", x, 4, NCHW)
    kernel, stride, padding = _pool_args(op, x.shape, kernel_size, stride, padding)
    count_include_pad = C.boolean(op, "count_include_pad", count_include_pad)
    be = _backend(op, dict(input=x))
    return be.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0,
                        count_include_pad=True):
    """dy (N, C, P, Q) -> dx (N, C, H, W): each window's gradient shared over its cells."""
    op = "avg_pool2d_backward"
    x_shape = C.shape_tuple(op, "x_shape", x_shape, 4, NCHW)
    kernel, stride, padding = _pool_args(op, x_shape, kernel_size, stride, padding)
    dy = _grad_output(op, dy, C.pool2d_output_shape(op, x_shape, kernel, stride, padding))
    count_include_pad = C.boolean(op, "count_include_pad", count_include_pad)
    be = _backend(op, dict(grad_output=dy))
    return be.avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad)


def adaptive_avg_pool2d(x, output_size):
    """x (N, C, H, W) -> y (N, C, oh, ow) for any H, W: output cell (i, j) is the mean of rows
    floor(i*H/oh) to ceil((i+1)*H/oh) and the columns likewise (as torch). output_size is an
    int or an (oh, ow) pair; 1 is global average pooling."""
    op = "adaptive_avg_pool2d"
    x = C.float_array(op, "input", x, 4, NCHW)
    output_size = C.adaptive_pool2d_output_shape(op, x.shape, output_size)[2:]
    return _backend(op, dict(input=x)).adaptive_avg_pool2d_forward(x, output_size)


def adaptive_avg_pool2d_backward(dy, x_shape):
    """dy (N, C, oh, ow) -> dx (N, C, H, W): each window's gradient shared over its cells."""
    op = "adaptive_avg_pool2d_backward"
    x_shape = C.shape_tuple(op, "x_shape", x_shape, 4, NCHW)
    dy = C.float_array(op, "grad_output", dy, 4, "(N, C, oh, ow)")
    if dy.shape[:2] != x_shape[:2]:
        raise ValueError(f"{op}: grad_output has (N, C) = {dy.shape[:2]} but x_shape has {x_shape[:2]}")
    return _backend(op, dict(grad_output=dy)).adaptive_avg_pool2d_backward(dy, x_shape)


def _pool_args(op, x_shape, kernel_size, stride, padding):
    """Checked (kernel, stride, padding) pairs; stride None means the kernel size."""
    C.pool2d_output_shape(op, x_shape, kernel_size, kernel_size if stride is None else stride,
                          padding)
    kernel = C.pair(op, "kernel_size", kernel_size)
    stride = kernel if stride is None else C.pair(op, "stride", stride)
    return kernel, stride, C.pair(op, "padding", padding)


# ---------------------------------------------------------------------------------------
# batch normalisation


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Normalise per channel: x (N, C) or (N, C, H, W) -> y of x's shape. See
    batch_norm_forward."""
    return batch_norm_forward(x, running_mean, running_var, weight, bias, training,
                              momentum, eps)[0]


def batch_norm_forward(x, running_mean, running_var, weight=None, bias=None,
                       training=False, momentum=0.1, eps=1e-5):
    """(y, save_mean (C,), save_invstd (C,)), as torch's batch_norm.

    training: normalise with the batch mean and biased variance, and update
    running_mean / running_var (C,) IN PLACE with momentum (running_var tracks the
    unbiased variance); either may be None, and is then not tracked. Eval: normalise
    with the running statistics, which must then be given. weight (gamma) and bias
    (beta) are (C,); None means 1 and 0. save_mean and save_invstd = 1/sqrt(var + eps)
    are the statistics used, for batch_norm_backward."""
    op = "batch_norm"
    x = C.float_array(op, "input", x, (2, 4), "(N, C) or (N, C, H, W)")
    channels = x.shape[1]
    training = C.boolean(op, "training", training)
    momentum = C.real(op, "momentum", momentum, 0.0, 1.0)
    eps = C.positive(op, "eps", eps)
    xp = array_module(x)
    weight = _per_channel(op, "weight", weight, channels, xp.ones, x)
    bias = _per_channel(op, "bias", bias, channels, xp.zeros, x)
    stats = {}
    for name, value, blank in (("running_mean", running_mean, xp.zeros),
                               ("running_var", running_var, xp.ones)):
        if value is None:
            if not training:
                raise ValueError(f"{op}: {name} is needed in eval mode (training=False), got None")
            value = blank(channels, dtype=x.dtype)  # scratch the kernel may update; dropped
        else:
            value = C.inplace_array(op, name, value, (channels,), x.dtype)
        stats[name] = value
    if training and x.size // channels < 2:
        raise ValueError(f"{op}: training needs more than 1 value per channel, got input "
                         f"shape {tuple(x.shape)}")
    be = _backend(op, dict(input=x, weight=weight, bias=bias, **stats))
    return be.batch_norm_forward(x, weight, bias, stats["running_mean"], stats["running_var"],
                                 training, momentum, eps)


def batch_norm_backward(dy, x, weight, save_mean, save_invstd, training):
    """(dx, dweight (C,), dbias (C,)) from what batch_norm_forward saved. training must be
    what the forward ran with; weight None means 1 (dweight, dbias are still returned)."""
    op = "batch_norm_backward"
    x = C.float_array(op, "input", x, (2, 4), "(N, C) or (N, C, H, W)")
    dy = _grad_output(op, dy, x.shape)
    channels = x.shape[1]
    training = C.boolean(op, "training", training)
    weight = _per_channel(op, "weight", weight, channels, array_module(x).ones, x)
    save_mean = _per_channel(op, "save_mean", save_mean, channels, None, x)
    save_invstd = _per_channel(op, "save_invstd", save_invstd, channels, None, x)
    be = _backend(op, dict(grad_output=dy, input=x, weight=weight, save_mean=save_mean,
                           save_invstd=save_invstd))
    return be.batch_norm_backward(dy, x, weight, save_mean, save_invstd, training)


def _per_channel(op, name, v, channels, default, like):
    """A (C,) float vector, or default(C) of like's dtype when v is None and default given."""
    if v is None and default is not None:
        return default(channels, dtype=like.dtype)
    v = C.float_array(op, name, v, 1, "(C,)")
    C.bias_shape(op, v.shape, channels, name=name)
    return v


# ---------------------------------------------------------------------------------------
# activations


def _elementwise(op, row, x, *params):
    """A row of the elementwise table forward: checked x, then <row>_forward."""
    x = C.float_array(op, "input", x)
    return getattr(_backend(op, dict(input=x)), row + "_forward")(x, *params)


def _elementwise_backward(op, row, dy, saved, *params):
    """A row backward: dy and what the row's backward takes (the forward's output y, or its
    input x), checked, then <row>_backward."""
    name = "output" if ROWS[row].saves == "y" else "input"
    saved = C.float_array(op, name, saved)
    dy = _grad_output(op, dy, saved.shape)
    return getattr(_backend(op, {"grad_output": dy, name: saved}), row + "_backward")(dy, saved, *params)


def relu(x):
    """max(x, 0), element-wise, any shape."""
    return _elementwise("relu", "relu", x)


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0, else 0."""
    return _elementwise_backward("relu_backward", "relu", dy, y)


def bias_relu(x, bias):
    """relu(x + bias), bias (C,) added along axis 1 of x (N, C) or (N, C, H, W): the
    fused tail of a conv or dense layer."""
    op = "bias_relu"
    x = C.float_array(op, "input", x, (2, 4), "(N, C) or (N, C, H, W)")
    bias = C.float_array(op, "bias", bias, 1, "(C,)")
    C.bias_shape(op, bias.shape, x.shape[1])
    return _backend(op, dict(input=x, bias=bias)).bias_relu_forward(x, bias)


def bias_relu_backward(dy, y):
    """(dx, dbias (C,)) of bias_relu, from the forward output y."""
    op = "bias_relu_backward"
    y = C.float_array(op, "output", y, (2, 4), "(N, C) or (N, C, H, W)")
    dy = _grad_output(op, dy, y.shape)
    return _backend(op, dict(grad_output=dy, output=y)).bias_relu_backward(dy, y)


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x."""
    negative_slope = C.real("leaky_relu", "negative_slope", negative_slope)
    return _elementwise("leaky_relu", "leaky_relu", x, negative_slope)


def leaky_relu_backward(dy, x, negative_slope=0.01):
    """dx = dy where x > 0, else negative_slope * dy (takes the forward INPUT x)."""
    negative_slope = C.real("leaky_relu_backward", "negative_slope", negative_slope)
    return _elementwise_backward("leaky_relu_backward", "leaky_relu", dy, x, negative_slope)


def sigmoid(x):
    """1 / (1 + exp(-x)), element-wise."""
    return _elementwise("sigmoid", "sigmoid", x)


def sigmoid_backward(dy, y):
    """dx = dy * y * (1 - y), from the forward output y."""
    return _elementwise_backward("sigmoid_backward", "sigmoid", dy, y)


def tanh(x):
    """tanh(x), element-wise."""
    return _elementwise("tanh", "tanh", x)


def tanh_backward(dy, y):
    """dx = dy * (1 - y**2), from the forward output y."""
    return _elementwise_backward("tanh_backward", "tanh", dy, y)


def gelu(x, approximate="none"):
    """x * Phi(x), Phi the standard normal CDF; approximate="tanh" uses
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch.nn.functional.gelu."""
    return _elementwise("gelu", _gelu_row("gelu", approximate), x)


def gelu_backward(dy, x, approximate="none"):
    """dx = dy * GELU'(x), from the forward INPUT x; approximate as the forward's."""
    return _elementwise_backward("gelu_backward", _gelu_row("gelu_backward", approximate), dy, x)


def _gelu_row(op, approximate) -> str:
    return {"none": "gelu", "tanh": "gelu_tanh"}[C.choice(op, "approximate", approximate, ("none", "tanh"))]


# ---------------------------------------------------------------------------------------
# dropout


def dropout(x, p=0.5, training=True, seed=None):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).
    See dropout_forward."""
    return dropout_forward(x, p, training, seed)[0]


def dropout_forward(x, p=0.5, training=True, seed=None):
    """(y, mask uint8 of x's shape), or (x, None) when not training (x itself, no copy).

    The mask is a pure function of (seed, element index), the same on every backend.
    seed=None draws one from NumPy's global generator, so np.random.seed(...) makes a
    run repeatable; pass a seed to choose the mask yourself (any int, taken mod 2**64)."""
    op = "dropout"
    checked = C.float_array(op, "input", x)
    p = C.probability(op, "p", p)
    if not C.boolean(op, "training", training):
        return x, None  # the caller's own array, even a strided one: nothing to compute
    x = checked
    seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64)) if seed is None else seed
    seed = C.integer(op, "seed", seed) % 2**64
    return _backend(op, dict(input=x)).dropout_forward(x, p, seed)


def dropout_backward(dy, mask, p):
    """dx = dy * mask / (1 - p); mask None (the forward ran in eval mode) gives dy."""
    op = "dropout_backward"
    dy = C.float_array(op, "grad_output", dy)
    p = C.probability(op, "p", p)
    if mask is None:
        return dy
    mask = C.array(op, "mask", mask)
    if mask.dtype != np.uint8:
        raise TypeError(f"{op}: mask must have dtype uint8 (from dropout_forward), got "
                        f"{mask.dtype.name}")
    mask = C.usable(mask)
    C.same_shape(op, "mask", mask.shape, "grad_output", dy.shape)
    return _backend(op, dict(grad_output=dy), dict(mask=mask)).dropout_backward(dy, mask, p)


# ---------------------------------------------------------------------------------------
# reshapes and joins


def flatten(x, start_dim=1):
    """Merge the axes from start_dim on: (N, C, H, W) -> (N, C*H*W). A view, no copy
    (a non-contiguous input is first made contiguous, as everywhere)."""
    op = "flatten"
    x = C.array(op, "input", x)
    start_dim = C.integer(op, "start_dim", start_dim, minimum=0)
    if start_dim >= x.ndim:
        raise ValueError(f"{op}: start_dim must be < the input's rank {x.ndim}, got {start_dim}")
    x = C.usable(x)
    return x.reshape(x.shape[:start_dim] + (-1,))


def flatten_backward(dy, x_shape):
    """dy reshaped back to x_shape (a view)."""
    op = "flatten_backward"
    dy = C.array(op, "grad_output", dy)
    x_shape = C.shape_tuple(op, "x_shape", x_shape, None)
    if int(np.prod(x_shape)) != dy.size:
        raise ValueError(f"{op}: grad_output has {dy.size} elements but x_shape {x_shape} "
                         f"has {int(np.prod(x_shape))}")
    return C.usable(dy).reshape(x_shape)


def add(a, b):
    """a + b for arrays of one shape (no broadcasting): residual joins, gradient sums."""
    op = "add"
    a = C.float_array(op, "a", a)
    b = C.float_array(op, "b", b)
    C.same_shape(op, "b", b.shape, "a", a.shape)
    return _backend(op, dict(a=a, b=b)).add(a, b)


# ---------------------------------------------------------------------------------------
# losses


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy over the batch: logits (N, classes), labels (N,) integer
    in [0, classes) -> loss, a 0-d array."""
    return cross_entropy_forward(logits, labels)[0]


def cross_entropy_forward(logits, labels):
    """(loss 0-d, dlogits (N, classes)) in one pass: dlogits = (softmax - onehot) / N is
    the gradient of the mean loss, which cross_entropy_backward scales by dloss."""
    op = "cross_entropy"
    logits = C.float_array(op, "logits", logits, 2, "(N, classes)")
    labels = C.int_array(op, "labels", labels, 1, "(N,)")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{op}: logits has batch size {logits.shape[0]} but labels has "
                         f"{labels.shape[0]}")
    C.same_device(op, logits=logits, labels=labels)
    C.index_range(op, "label", labels, logits.shape[1])
    be = _backend(op, dict(logits=logits), dict(labels=labels))
    return be.softmax_cross_entropy_forward(logits, labels)


def cross_entropy_backward(dloss, dlogits):
    """dlogits * dloss: the gradient of the logits when the loss's own gradient is dloss
    (1.0 for the loss being minimised); dlogits from cross_entropy_forward."""
    op = "cross_entropy_backward"
    dlogits = C.float_array(op, "dlogits", dlogits, 2, "(N, classes)")
    dloss = _dloss(op, dloss, dlogits)
    return dlogits * dloss


def mse_loss(x, target):
    """Mean of (x - target)**2 over all elements, a 0-d array. Shapes must be equal."""
    op = "mse_loss"
    x = C.float_array(op, "input", x)
    target = C.float_array(op, "target", target)
    C.same_shape(op, "target", target.shape, "input", x.shape)
    return _backend(op, dict(input=x, target=target)).mse_loss_forward(x, target)


def mse_loss_backward(dloss, x, target):
    """dx = 2 (x - target) / numel * dloss."""
    op = "mse_loss_backward"
    x = C.float_array(op, "input", x)
    target = C.float_array(op, "target", target)
    C.same_shape(op, "target", target.shape, "input", x.shape)
    dloss = _dloss(op, dloss, x)
    return _backend(op, dict(input=x, target=target)).mse_loss_backward(x, target, dloss)


# ---------------------------------------------------------------------------------------
# softmax


def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) along axis dim (any rank; default the last): class probabilities
    from logits (N, classes). The row maximum is subtracted first, so no logit overflows."""
    return _softmax_rows("softmax", "softmax_forward", x, dim)


def log_softmax(x, dim=-1):
    """x - log(sum(exp(x))) along axis dim: log-probabilities, accurate where softmax
    underflows to 0."""
    return _softmax_rows("log_softmax", "log_softmax_forward", x, dim)


def softmax_backward(dy, y, dim=-1):
    """dx = y * (dy - sum(dy * y)) along dim, from the forward OUTPUT y."""
    return _softmax_rows_backward("softmax_backward", "softmax_backward", dy, y, dim)


def log_softmax_backward(dy, y, dim=-1):
    """dx = dy - exp(y) * sum(dy) along dim, from the forward OUTPUT y."""
    return _softmax_rows_backward("log_softmax_backward", "log_softmax_backward", dy, y, dim)


def _as_rows(x, axis: int):
    """x with `axis` moved last and the other axes merged: (rows, K), C-contiguous, for the
    row kernels; and how to put a result of that shape back."""
    moved = array_module(x).moveaxis(x, axis, -1)
    rows = C.usable(moved).reshape(-1, x.shape[axis])
    return rows, lambda r: array_module(r).moveaxis(r.reshape(moved.shape), -1, axis)


def _softmax_rows(op, kernel, x, dim):
    x = C.float_array(op, "input", x)
    axis = C.axis(op, "dim", dim, x.ndim)
    be = _backend(op, dict(input=x))
    rows, back = _as_rows(x, axis)
    return back(getattr(be, kernel)(rows))


def _softmax_rows_backward(op, kernel, dy, y, dim):
    y = C.float_array(op, "output", y)
    dy = _grad_output(op, dy, y.shape)
    axis = C.axis(op, "dim", dim, y.ndim)
    be = _backend(op, dict(grad_output=dy, output=y))
    (dy_rows, back), (y_rows, _) = _as_rows(dy, axis), _as_rows(y, axis)
    return back(getattr(be, kernel)(dy_rows, y_rows))


def _dloss(op, dloss, like):
    """The gradient of a scalar loss: a real number, or a one-element float array on
    like's device, cast to like's dtype (a float64 0-d array must not promote float32)."""
    if C.is_array(dloss):
        dloss = C.float_array(op, "dloss", dloss)
        if dloss.size != 1:
            raise ValueError(f"{op}: dloss must be a scalar (one element), got shape "
                             f"{tuple(dloss.shape)}")
        C.same_device(op, dloss=dloss, **{"input": like})
        return dloss.reshape(()).astype(like.dtype, copy=False)
    return C.real(op, "dloss", dloss)
