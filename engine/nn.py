"""Layers: what each node of a traced graph computes, forward and backward.

A layer is called on symbolic values (engine.graph.Value) to build a graph; it never
touches data then. The executor later calls ``forward(bk, n)`` and ``backward(bk, n)``
with ``n`` a bound node (engine.graph.Bound) holding the real arrays:

    n.x[i]   inputs                      n.y    output
    n.dx[i]  where to write d(loss)/d(x[i]) (None when nobody needs it)
    n.dy     d(loss)/d(y)
    n.p[k]   parameters, n.g[k] where to write their gradients (None when the layer is
             frozen: layer.trainable False; a scratch buffer instead if param_grads_required)
    n.s[k]   what forward saves for backward (saved(): argmax, masks, statistics) and
             backward's own work buffers (scratch()), both placed by the memory plan
    n.state  persistent non-trainable buffers (batch-norm running statistics)
    n.training, n.seed

Every write goes through an op of the backend ``bk`` with ``out=``: a layer allocates
nothing while training. Parameter initialisation follows PyTorch's defaults.
"""
from __future__ import annotations

import math

import numpy as np

from engine import checks as C
from engine.graph import Add, Layer, Value, Model, Sequential, freeze, unfreeze  # noqa: F401  (re-exported)
from engine.reference.activation import ROWS
from engine.shapes import adaptive_window

_init_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the generator that initialises parameters of layers created afterwards."""
    global _init_rng
    _init_rng = np.random.default_rng(seed)


def _uniform(bound: float, shape) -> np.ndarray:
    return _init_rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _kaiming_uniform(shape, fan_in: int) -> np.ndarray:
    # PyTorch's default for conv and linear: kaiming_uniform_(a=sqrt(5)), which works out
    # to U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias uses the same bound.
    return _uniform(1.0 / math.sqrt(fan_in), shape)


# --------------------------------------------------------------------------- parameters


class _Weighted(Layer):
    """Conv2d and Linear: y = product(x, weight) + bias. When the executor fuses the ReLU that
    follows (n.relu), bias and ReLU become one pass: relu(y + b) forward, and
    (dy * (y > 0), its bias sums) backward, instead of two passes each."""
    relu_fusion = "bias"

    def scratch(self, out_shape, fused_relu):
        # the fused backward writes dy * (y > 0) first: the product's gradients read it, not dy
        return {"pre_relu_grad": (tuple(out_shape), np.float32)} if fused_relu else {}

    def forward(self, bk, n):
        if n.relu:
            self.product(bk, n, None)
            bk.bias_relu_forward(n.y, n.p["bias"], out=n.y)  # in place: elementwise
        else:
            self.product(bk, n, n.p.get("bias"))

    def backward(self, bk, n):
        dy = n.dy
        if n.relu:
            dy = n.s["pre_relu_grad"]
            if n.g.get("bias") is None:  # frozen: only the ReLU's mask is needed, for dx
                bk.relu_backward(n.dy, n.y, out=dy)
            else:
                bk.bias_relu_backward(n.dy, n.y, out=(dy, n.g["bias"]))
        elif n.g.get("bias") is not None:
            bk.bias_backward(dy, out=n.g["bias"])
        self.product_grads(bk, n, dy)


class Conv2d(_Weighted):
    """2-D convolution. x (N, C, H, W), weight (K, C, R, S) -> (N, K, P, Q). im2col + GEMM on
    the GPU; on the CPU, im2col + GEMM or Winograd, chosen by shape (engine.cpu.conv)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        op = "Conv2d"
        self.in_channels = C.integer(op, "in_channels", in_channels, minimum=1)
        self.out_channels = C.integer(op, "out_channels", out_channels, minimum=1)
        self.kernel_size = C.pair(op, "kernel_size", kernel_size, minimum=1)
        self.stride = C.pair(op, "stride", stride, minimum=1)
        self.padding = C.pair(op, "padding", padding, minimum=0)
        r, s = self.kernel_size
        fan_in = self.in_channels * r * s
        self.params["weight"] = _kaiming_uniform((self.out_channels, self.in_channels, r, s), fan_in)
        if bias:
            self.params["bias"] = _kaiming_uniform((self.out_channels,), fan_in)

    def infer(self, x_shape):
        return C.conv2d_output_shape(self.name, x_shape, self.params["weight"].shape,
                                     self.stride, self.padding)

    def extra_repr(self):
        bias = "" if "bias" in self.params else ", bias=False"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}{bias}")

    def product(self, bk, n, bias):
        bk.conv2d_forward(n.x[0], n.p["weight"], bias, self.stride, self.padding, out=n.y)

    def product_grads(self, bk, n, dy):
        if n.dx[0] is not None:
            bk.conv2d_backward_data(dy, n.p["weight"], n.x[0].shape, self.stride, self.padding, out=n.dx[0])
        if n.g.get("weight") is not None:
            bk.conv2d_backward_weight(dy, n.x[0], n.p["weight"].shape, self.stride, self.padding, out=n.g["weight"])

    def onnx(self, w, path, xs, out, shapes):
        w.node("Conv", [xs[0]] + w.parameters(path, self.params), out, kernel_shape=list(self.kernel_size),
               strides=list(self.stride), pads=w.pads(self.padding))


class Linear(_Weighted):
    """Dense layer. x (N, in_features), weight (out_features, in_features) -> (N, out_features)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = C.integer("Linear", "in_features", in_features, minimum=1)
        self.out_features = C.integer("Linear", "out_features", out_features, minimum=1)
        self.params["weight"] = _kaiming_uniform((self.out_features, self.in_features), self.in_features)
        if bias:
            self.params["bias"] = _kaiming_uniform((self.out_features,), self.in_features)

    def infer(self, x_shape):
        return C.linear_output_shape(self.name, x_shape, self.params["weight"].shape)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={'bias' in self.params}"

    def product(self, bk, n, bias):
        bk.linear_forward(n.x[0], n.p["weight"], bias, out=n.y)

    def product_grads(self, bk, n, dy):
        if n.dx[0] is not None:
            bk.linear_backward_data(dy, n.p["weight"], out=n.dx[0])
        if n.g.get("weight") is not None:
            bk.linear_backward_weight(dy, n.x[0], out=n.g["weight"])

    def onnx(self, w, path, xs, out, shapes):
        w.node("Gemm", [xs[0]] + w.parameters(path, self.params), out, transB=1)  # x @ weight.T + bias


class _BatchNorm(Layer):
    """Frozen (trainable False), it normalises with its running statistics in training too
    and leaves them alone (Keras's rule; in torch, .eval() on the frozen part): the
    statistics it was trained with stay the ones it applies."""
    ndim = 4
    input_grads_required = True  # the backward op computes dx with dgamma/dbeta in one pass
    param_grads_required = True  # ... so a frozen one still needs somewhere to write dgamma/dbeta
    relu_fusion = "batchnorm"    # a following ReLU runs inside batch_norm_relu_forward/backward

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        op = type(self).__name__
        self.num_features = C.integer(op, "num_features", num_features, minimum=1)
        self.eps = C.positive(op, "eps", eps)
        self.momentum = C.real(op, "momentum", momentum, low=0.0, high=1.0)
        self.params["weight"] = np.ones(self.num_features, np.float32)
        self.params["bias"] = np.zeros(self.num_features, np.float32)
        self.buffers["running_mean"] = np.zeros(self.num_features, np.float32)
        self.buffers["running_var"] = np.ones(self.num_features, np.float32)

    def infer(self, x_shape):
        return C.batch_norm_shape(self.name, x_shape, self.ndim, self.num_features)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def saved(self, x_shape):
        c = (self.num_features,)
        return {"mean": (c, np.float32), "invstd": (c, np.float32)}

    def forward(self, bk, n):
        op = bk.batch_norm_relu_forward if n.relu else bk.batch_norm_forward
        op(n.x[0], n.p["weight"], n.p["bias"], n.state["running_mean"], n.state["running_var"],
           self.batch_statistics(n), self.momentum, self.eps, out=(n.y, n.s["mean"], n.s["invstd"]))

    def backward(self, bk, n):
        out = (n.dx[0], n.g["weight"], n.g["bias"])
        training = self.batch_statistics(n)
        if n.relu:
            bk.batch_norm_relu_backward(n.dy, n.y, n.x[0], n.p["weight"], n.s["mean"], n.s["invstd"],
                                        training, out=out)
        else:
            bk.batch_norm_backward(n.dy, n.x[0], n.p["weight"], n.s["mean"], n.s["invstd"], training, out=out)

    def batch_statistics(self, n) -> bool:
        """Normalise with the batch's statistics (and update the running ones): training, unfrozen."""
        return n.training and self.trainable

    def onnx(self, w, path, xs, out, shapes):
        # the eval form: normalised with the running statistics
        names = [w.weight(f"{path}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]
        w.node("BatchNormalization", [xs[0], *names], out, epsilon=float(self.eps))


class BatchNorm2d(_BatchNorm):
    """Batch norm per channel over (N, H, W) of an (N, C, H, W) input."""
    ndim = 4


class BatchNorm1d(_BatchNorm):
    """Batch norm per feature over N of an (N, C) input."""
    ndim = 2


# --------------------------------------------------------------------------- pooling


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        op = type(self).__name__
        self.kernel_size = C.pair(op, "kernel_size", kernel_size, minimum=1)
        self.stride = C.pair(op, "stride", stride if stride is not None else kernel_size, minimum=1)
        self.padding = C.pair(op, "padding", padding, minimum=0)

    def infer(self, x_shape):
        return C.pool2d_output_shape(self.name, x_shape, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max pooling; padded cells never win, ties go to the first cell of the window."""

    def saved(self, x_shape):
        return {"argmax": (self.infer(x_shape), np.int32)}

    def forward(self, bk, n):
        bk.max_pool2d_forward(n.x[0], self.kernel_size, self.stride, self.padding, out=(n.y, n.s["argmax"]))

    def backward(self, bk, n):
        bk.max_pool2d_backward(n.dy, n.s["argmax"], n.x[0].shape, out=n.dx[0])

    def onnx(self, w, path, xs, out, shapes):
        # floor mode (ceil_mode 0); ONNX never lets a padded cell win a max, as ours
        w.node("MaxPool", xs, out, kernel_shape=list(self.kernel_size), strides=list(self.stride),
               pads=w.pads(self.padding))


class AvgPool2d(_Pool2d):
    """Average pooling; count_include_pad=True (PyTorch's default) divides by the window size."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = C.boolean("AvgPool2d", "count_include_pad", count_include_pad)

    def extra_repr(self):
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")

    def forward(self, bk, n):
        bk.avg_pool2d_forward(n.x[0], self.kernel_size, self.stride, self.padding,
                              self.count_include_pad, out=n.y)

    def backward(self, bk, n):
        bk.avg_pool2d_backward(n.dy, n.x[0].shape, self.kernel_size, self.stride, self.padding,
                               self.count_include_pad, out=n.dx[0])

    def onnx(self, w, path, xs, out, shapes):
        w.node("AveragePool", xs, out, kernel_shape=list(self.kernel_size), strides=list(self.stride),
               pads=w.pads(self.padding), count_include_pad=int(self.count_include_pad))


class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed (oh, ow) whatever the input's H and W (PyTorch's windows);
    output_size 1 is global average pooling (a ResNet's head)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = C.pair("AdaptiveAvgPool2d", "output_size", output_size, minimum=1)

    def infer(self, x_shape):
        return C.adaptive_pool2d_output_shape(self.name, x_shape, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def forward(self, bk, n):
        bk.adaptive_avg_pool2d_forward(n.x[0], self.output_size, out=n.y)

    def backward(self, bk, n):
        bk.adaptive_avg_pool2d_backward(n.dy, n.x[0].shape, out=n.dx[0])

    def onnx(self, w, path, xs, out, shapes):
        _, c, h, wd = shapes[0]
        oh, ow = self.output_size
        if (oh, ow) == (1, 1):
            w.node("GlobalAveragePool", xs, out)
        elif h % oh == 0 and wd % ow == 0:  # equal, disjoint windows: a plain average pool
            w.node("AveragePool", xs, out, kernel_shape=[h // oh, wd // ow], strides=[h // oh, wd // ow])
        else:
            # torch's windows overlap or repeat here, which no ONNX pooling op does: the average
            # is linear, so it is one product with the (H*W, oh*ow) matrix of window weights
            weights = np.zeros((h * wd, oh * ow), np.float32)
            for i in range(oh):
                h0, h1 = adaptive_window(i, h, oh)
                for j in range(ow):
                    w0, w1 = adaptive_window(j, wd, ow)
                    cells = [r * wd + s for r in range(h0, h1) for s in range(w0, w1)]
                    weights[cells, i * ow + j] = 1.0 / len(cells)
            flat = w.step("Reshape", [xs[0], w.constant(f"{path}.flat_shape", [0, c, h * wd], np.int64)],
                          f"{path}.flat")
            pooled = w.step("MatMul", [flat, w.constant(f"{path}.windows", weights)], f"{path}.pooled")
            w.node("Reshape", [pooled, w.constant(f"{path}.out_shape", [0, c, oh, ow], np.int64)], out)


# --------------------------------------------------------------------------- elementwise


class _SameShape(Layer):
    def infer(self, x_shape):
        return tuple(x_shape)


class Elementwise(_SameShape):
    """An activation of the elementwise table (engine/reference/activation.py, ELEMENTWISE):
    runs <op>_forward(x, *args) and <op>_backward(dy, y or x, *args), whichever the row's
    backward takes. A subclass names its row in `op` and passes the row's parameters."""
    op = ""

    def __init__(self, *args):
        super().__init__()
        self.args = args
        self.saves = ROWS[self.op].saves

    def forward(self, bk, n):
        getattr(bk, self.op + "_forward")(n.x[0], *self.args, out=n.y)

    def backward(self, bk, n):
        saved = n.x[0] if self.saves == "x" else n.y
        getattr(bk, self.op + "_backward")(n.dy, saved, *self.args, out=n.dx[0])

    def onnx(self, w, path, xs, out, shapes):
        row = ROWS[self.op]  # the row names its ONNX nodes
        if row.onnx is None:
            raise ValueError(f"export: no ONNX nodes for the elementwise row {row.name!r} (layer {path}); give "
                             f"its row an onnx= (engine/reference/activation.py, see CONTRIBUTING.md)")
        row.onnx(w, xs[0], out, path, *self.args)


class ReLU(Elementwise):
    op = "relu"


class LeakyReLU(Elementwise):
    op = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        self.negative_slope = C.real("LeakyReLU", "negative_slope", negative_slope)
        super().__init__(self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Elementwise):
    op = "sigmoid"


class Tanh(Elementwise):
    op = "tanh"


class GELU(Elementwise):
    """x * Phi(x); approximate="tanh" for the tanh approximation, as torch.nn.GELU."""

    def __init__(self, approximate="none"):
        self.approximate = C.choice("GELU", "approximate", approximate, ("none", "tanh"))
        self.op = {"none": "gelu", "tanh": "gelu_tanh"}[self.approximate]
        super().__init__()

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Dropout(_SameShape):
    """Inverted dropout: a mask from the counter-based generator keyed by the executor's
    per-step, per-node seed; identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = C.probability("Dropout", "p", p)

    def extra_repr(self):
        return f"p={self.p}"

    def saved(self, x_shape):
        return {"mask": (tuple(x_shape), np.uint8)}

    def forward(self, bk, n):
        if n.training and self.p > 0:
            bk.dropout_forward(n.x[0], self.p, n.seed, out=(n.y, n.s["mask"]))
        else:
            n.y[...] = n.x[0]

    def backward(self, bk, n):
        # backward runs in training mode only
        if self.p > 0:
            bk.dropout_backward(n.dy, n.s["mask"], self.p, out=n.dx[0])
        else:
            n.dx[0][...] = n.dy

    def onnx(self, w, path, xs, out, shapes):
        w.node("Identity", xs, out)  # eval mode


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)): a copy into the planned buffer (the layout is unchanged)."""

    def infer(self, x_shape):
        return (x_shape[0], int(np.prod(x_shape[1:])))

    def forward(self, bk, n):
        n.y[...] = n.x[0].reshape(n.y.shape)

    def backward(self, bk, n):
        n.dx[0][...] = n.dy.reshape(n.dx[0].shape)

    def onnx(self, w, path, xs, out, shapes):
        w.node("Flatten", xs, out, axis=1)


class _SoftmaxRows(_SameShape):
    """Softmax or log-softmax over the last axis of (N, ..., K): rows of K values, as a
    model's last layer for probabilities (the loss takes logits: keep it off when training)."""
    op = ""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = C.integer(type(self).__name__, "dim", dim)

    def infer(self, x_shape):
        if C.axis(self.name, "dim", self.dim, len(x_shape)) != len(x_shape) - 1:
            raise ValueError(f"{self.name}: dim must be the input's last axis (-1 or {len(x_shape) - 1}), whose "
                             f"rows the kernels normalise; got dim={self.dim} for an input of shape {tuple(x_shape)}")
        return tuple(x_shape)

    def extra_repr(self):
        return f"dim={self.dim}"

    def forward(self, bk, n):
        k = n.y.shape[-1]  # the planned buffers are contiguous: these reshapes are views
        getattr(bk, self.op + "_forward")(n.x[0].reshape(-1, k), out=n.y.reshape(-1, k))

    def backward(self, bk, n):
        k = n.y.shape[-1]
        getattr(bk, self.op + "_backward")(n.dy.reshape(-1, k), n.y.reshape(-1, k), out=n.dx[0].reshape(-1, k))

    def onnx(self, w, path, xs, out, shapes):
        w.node({"softmax": "Softmax", "log_softmax": "LogSoftmax"}[self.op], xs, out, axis=-1)


class Softmax(_SoftmaxRows):
    op = "softmax"


class LogSoftmax(_SoftmaxRows):
    op = "log_softmax"


# --------------------------------------------------------------------------- losses


class SoftmaxCrossEntropy(Layer):
    """Mean softmax cross-entropy of logits (N, K) and integer labels (N,). Forward writes the
    gradient (softmax - onehot) / N straight into d(loss)/d(logits): one fused pass."""
    target_dtype = np.int32
    grad_in_forward = True

    def infer(self, logits_shape, labels_shape):
        C.logits_and_labels_shape(self.name, logits_shape, labels_shape)
        return ()

    def saved(self, logits_shape, labels_shape):
        return {"dlogits": (tuple(logits_shape), np.float32)}

    def forward(self, bk, n):
        dlogits = n.dx[0] if n.dx[0] is not None else n.s["dlogits"]
        bk.softmax_cross_entropy_forward(n.x[0], n.x[1], out=(n.y, dlogits))

    def backward(self, bk, n):
        pass  # d(loss)/d(logits) was written by forward; d(loss) is 1


class MSELoss(Layer):
    """Mean squared error of predictions and targets of equal shapes."""
    target_dtype = np.float32

    def infer(self, pred_shape, target_shape):
        C.equal_shapes(self.name, "predictions and targets", pred_shape, target_shape)
        return ()

    def forward(self, bk, n):
        bk.mse_loss_forward(n.x[0], n.x[1], out=n.y)

    def backward(self, bk, n):
        bk.mse_loss_backward(n.x[0], n.x[1], 1.0, out=n.dx[0])


LOSSES = {"cross_entropy": SoftmaxCrossEntropy, "mse": MSELoss}
