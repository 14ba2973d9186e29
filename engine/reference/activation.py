"""Activations, the spec: float64 NumPy.

Elementwise activations are rows of one table, ELEMENTWISE. A row gives an activation's
float64 formulas forward and backward (the spec), the same math for one element (compiled
by Numba for the CPU path, exp/tanh/erf through engine.cpu.vecmath so that the loops
vectorise; the CUDA pair of __device__ functions of the same name lives in
kernels/activation.cu), what its backward takes (the forward's output y, which the
executor keeps anyway, or its input x), its scalar parameters and its PyTorch counterpart.
Every row becomes two ops, <name>_forward(x, *params) and <name>_backward(dy, y or x,
*params), served by one generic kernel per backend; see CONTRIBUTING.md to add one.

Shapes: any. The ops compute in float64 whatever dtype they are given and return float64,
or write (cast) into ``out=`` and return ``out``. bias_relu is not elementwise (the bias
is added along axis 1: x (N, C) or (N, C, H, W), b (C,)) and has functions of its own.
"""
from __future__ import annotations

import math

import numpy as np

from engine.cards import LIKE_INPUT, Elementwise, OpCard, Tensor, like_arg, normal
from engine.cpu import vecmath

_SQRT_HALF = 0.7071067811865476      # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327   # 1 / sqrt(2 pi)
_TANH_K = 0.7978845608028654         # sqrt(2 / pi): GELU's tanh approximation
_TANH_C = 0.044715
_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; math's is exact to float64


def _sigmoid(x):
    # 1 / (1 + e^-x) overflows e^-x for x << 0; with e = e^-|x| <= 1 both branches are safe:
    # x >= 0: 1 / (1 + e),   x < 0: e / (1 + e)  (= e^x / (1 + e^x))
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def _gelu_tanh_inner(x):
    return _TANH_K * (x + _TANH_C * x * x * x)


def _gelu_tanh_grad(x):
    t = np.tanh(_gelu_tanh_inner(x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _TANH_K * (1.0 + 3.0 * _TANH_C * x * x)


# The scalar forms, for Numba: float32 throughout (a Python float would make Numba compute in
# float64, at half the vector width), exp/tanh/erf from engine.cpu.vecmath. GELU-tanh as
# x * s, s = sigmoid(2u) = (1 + tanh u) / 2, u its inner term: then 1 - tanh^2 u = 4 s (1 - s),
# and neither direction subtracts nearly equal numbers.
_F0, _F1, _F2K, _F3C, _FC = (np.float32(v) for v in (0.0, 1.0, 2.0 * _TANH_K, 3.0 * _TANH_C, _TANH_C))
_FX2 = np.float32(1e8)  # x^2 past which s (1 - s) is 0 in float32: the cap keeps inf out of finite x


def _gelu_tanh_forward_scalar(x, a, b):
    return x * vecmath.sigmoid(_F2K * (x + _FC * x * x * x))


def _gelu_tanh_backward_scalar(dy, x, a, b):
    s = vecmath.sigmoid(_F2K * (x + _FC * x * x * x))
    x2 = x * x
    x2 = _FX2 if x2 > _FX2 else x2
    return dy * (s + x * s * (_F1 - s) * _F2K * (_F1 + _F3C * x2))


def _onnx_node(op: str):
    """The row's ONNX form when it is one ONNX op on x (its parameters as that op's attributes)."""
    def write(w, x, out, path, *params):
        w.node(op, [x], out)
    return write


def _gelu_onnx(w, x, out, path, tanh: bool = False):
    # ONNX has Gelu only from opset 20: written out, exact or as the tanh approximation
    if tanh:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = w.step("Mul", [w.step("Mul", [x, x], f"{path}.x2"), x], f"{path}.x3")
        inner = w.step("Add", [x, w.step("Mul", [cube, w.constant(f"{path}.c", _TANH_C)], f"{path}.cx3")],
                       f"{path}.inner")
        core = w.step("Tanh", [w.step("Mul", [inner, w.constant(f"{path}.k", _TANH_K)], f"{path}.scaled")],
                      f"{path}.tanh")
    else:  # 0.5 x (1 + erf(x / sqrt 2))
        core = w.step("Erf", [w.step("Div", [x, w.constant(f"{path}.sqrt2", math.sqrt(2))], f"{path}.scaled")],
                      f"{path}.erf")
    one_plus = w.step("Add", [core, w.constant(f"{path}.one", 1.0)], f"{path}.one_plus")
    w.node("Mul", [w.step("Mul", [x, one_plus], f"{path}.x_one_plus"), w.constant(f"{path}.half", 0.5)], out)


# The rows. NaN passes through relu (as np.maximum and torch.relu): a NaN activation must
# reach the loss, where training stops on it. The subgradient at 0 is 0, as PyTorch's.
ELEMENTWISE = [
    Elementwise("relu",
                forward=lambda x: np.maximum(x, 0.0),
                backward=lambda dy, y: dy * (y > 0),   # y > 0 exactly where x > 0
                scalar_forward=lambda x, a, b: _F0 if x <= 0 else x,
                scalar_backward=lambda dy, y, a, b: dy if y > 0 else _F0,
                torch_forward=lambda T, x: T.F.relu(x),
                torch_backward=lambda T, dy, y: T.aten.threshold_backward(dy, y, 0),
                onnx=_onnx_node("Relu")),
    Elementwise("leaky_relu", saves="x", params=("negative_slope",), example=(0.01,),
                forward=lambda x, slope: np.where(x > 0, x, slope * x),
                backward=lambda dy, x, slope: dy * np.where(x > 0, 1.0, slope),
                scalar_forward=lambda x, slope, b: x if x > 0 else np.float32(slope) * x,
                scalar_backward=lambda dy, x, slope, b: dy if x > 0 else np.float32(slope) * dy,
                torch_forward=lambda T, x, slope: T.F.leaky_relu(x, slope),
                torch_backward=lambda T, dy, x, slope: T.aten.leaky_relu_backward(dy, x, slope, False),
                onnx=lambda w, x, out, path, slope: w.node("LeakyRelu", [x], out, alpha=slope)),
    Elementwise("sigmoid", scale=3.0,
                forward=_sigmoid,
                backward=lambda dy, y: dy * y * (1.0 - y),
                scalar_forward=lambda x, a, b: vecmath.sigmoid(x),
                scalar_backward=lambda dy, y, a, b: dy * y * (_F1 - y),
                torch_forward=lambda T, x: T.torch.sigmoid(x),
                torch_backward=lambda T, dy, y: T.aten.sigmoid_backward(dy, y),
                onnx=_onnx_node("Sigmoid")),
    Elementwise("tanh", scale=2.0,
                forward=np.tanh,
                backward=lambda dy, y: dy * (1.0 - y * y),
                scalar_forward=lambda x, a, b: vecmath.tanh(x),
                scalar_backward=lambda dy, y, a, b: dy * (_F1 - y * y),
                torch_forward=lambda T, x: T.torch.tanh(x),
                torch_backward=lambda T, dy, y: T.aten.tanh_backward(dy, y),
                onnx=_onnx_node("Tanh")),
    # GELU, exact: x * Phi(x), Phi the standard normal CDF (torch's approximate='none')
    Elementwise("gelu", saves="x", scale=2.0,
                forward=lambda x: 0.5 * x * (1.0 + _erf(x * _SQRT_HALF)),
                backward=lambda dy, x: dy * (0.5 * (1.0 + _erf(x * _SQRT_HALF))
                                             + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)),
                scalar_forward=lambda x, a, b: x * vecmath.normal_cdf(x),
                scalar_backward=lambda dy, x, a, b: dy * (vecmath.normal_cdf(x) + x * vecmath.normal_pdf(x)),
                torch_forward=lambda T, x: T.F.gelu(x),
                torch_backward=lambda T, dy, x: T.aten.gelu_backward(dy, x),
                onnx=_gelu_onnx),
    # GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (approximate='tanh')
    Elementwise("gelu_tanh", saves="x", scale=2.0,
                forward=lambda x: 0.5 * x * (1.0 + np.tanh(_gelu_tanh_inner(x))),
                backward=lambda dy, x: dy * _gelu_tanh_grad(x),
                scalar_forward=_gelu_tanh_forward_scalar,
                scalar_backward=_gelu_tanh_backward_scalar,
                torch_forward=lambda T, x: T.F.gelu(x, approximate="tanh"),
                torch_backward=lambda T, dy, x: T.aten.gelu_backward(dy, x, approximate="tanh"),
                onnx=lambda w, x, out, path: _gelu_onnx(w, x, out, path, tanh=True)),
]
ROWS = {row.name: row for row in ELEMENTWISE}


# --------------------------------------------------------------------------------------
# bias_relu: relu(x + b), b along axis 1 -- the fused tail of a conv or dense layer.

def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _into(out, value):
    """Return value, or copy it into the caller's buffer (the executor reuses buffers)."""
    if out is None:
        return value
    out[...] = value
    return out


def _along_axis1(b: np.ndarray, ndim: int) -> np.ndarray:
    # b (C,) -> (1, C) or (1, C, 1, 1) so it broadcasts against x (N, C[, H, W])
    return b.reshape((1, -1) + (1,) * (ndim - 2))


def bias_relu_forward(x, b, out=None):
    x = _f64(x)
    return _into(out, np.maximum(x + _along_axis1(_f64(b), x.ndim), 0.0))


def bias_relu_backward(dy, y, out=None):
    dx = _f64(dy) * (_f64(y) > 0)
    db = dx.sum(axis=tuple(a for a in range(dx.ndim) if a != 1))  # (C,)
    if out is None:
        return dx, db
    return _into(out[0], dx), _into(out[1], db)


# --------------------------------------------------------------------------------------
# Cards (engine.cards): the rows' two each, and bias_relu's.

def _bias_relu_backward_inputs(rng, s: Tensor):
    y = bias_relu_forward(normal(rng, s.shape), normal(rng, (s.shape[1],)))
    return normal(rng, s.shape), y.astype(np.float32)


def _torch_bias_relu_backward(T, dy, y):
    def bias_relu_backward():
        dx = T.aten.threshold_backward(dy, y, 0)
        return dx, dx.sum(dim=[a for a in range(dx.ndim) if a != 1])
    return bias_relu_backward


CARDS = [card for row in ELEMENTWISE for card in row.cards()] + [
    OpCard("bias_relu_forward", bias_relu_forward, Tensor,
           lambda r, s: (normal(r, s.shape), normal(r, (s.shape[1],))), ("y",), like_arg(0), "activation",
           torch=lambda T, x, b: lambda: T.F.relu(x + b.view((1, -1) + (1,) * (x.ndim - 2)))),
    OpCard("bias_relu_backward", bias_relu_backward, Tensor, _bias_relu_backward_inputs, ("dx", "db"),
           lambda dy, y: ((dy.shape, LIKE_INPUT), ((dy.shape[1],), LIKE_INPUT)), "activation",
           torch=_torch_bias_relu_backward),
]
