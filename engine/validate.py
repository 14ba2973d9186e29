"""``python -m engine validate``: every op, through every exposure, against the float64 spec.

For each op in ``engine.backend.OPS`` (forward and backward are separate ops there, so
separate rows here) and each exposure that can run on this machine -- Numba always, the
CUDA extension ("cuda-ext") and the NVRTC path ("cuda-rtc") when a GPU works -- draw
random float32 inputs at the LeNet shapes (batch 256), the AlexNet layer shapes (batch 8)
and a set of odd shapes, run the op, and judge its outputs against the NumPy float64
reference with ``engine.tolerances``. Each op is also run a second time writing into
``out=`` buffers pre-filled with garbage (NaN / 0x7f..): the executor reuses buffers every
step, so a kernel that accumulates into ``out`` instead of overwriting it fails here.

This module also holds the one table of "op -> how to make its inputs": ``OP_TABLE`` and
``cases()``. tests/test_cuda_ops.py and the benchmarks (engine/bench.py, benchmarks/)
build their inputs from it, so a shape or convention is written down once.

    python -m engine validate                      # all exposures that run here
    python -m engine validate --backend numba --quick
    python -m engine validate --json validate.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.backend import OPS, get_backend
from engine.tolerances import errors, is_close, tol

# --------------------------------------------------------------------------------------
# Shapes. One record type per kind of layer; an op says which kind it takes.


@dataclass(frozen=True)
class Conv:
    """x (N, C, H, W) convolved with w (K, C, R, S)."""
    name: str
    x: tuple
    w: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)

    @property
    def out_hw(self) -> tuple[int, int]:
        (h, w), (r, s) = self.x[2:], self.w[2:]
        return ((h + 2 * self.padding[0] - r) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - s) // self.stride[1] + 1)

    @property
    def y(self) -> tuple:
        return (self.x[0], self.w[0]) + self.out_hw

    def describe(self) -> str:
        return (f"x{_dims(self.x)} w{_dims(self.w)} s{self.stride[0]},{self.stride[1]} "
                f"p{self.padding[0]},{self.padding[1]}")


@dataclass(frozen=True)
class Gemm:
    """op(a) (M, K) @ op(b) (K, N); a is stored (K, M) when trans_a, b (N, K) when trans_b."""
    name: str
    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False

    def describe(self) -> str:
        ta, tb = ("T" if self.trans_a else ""), ("T" if self.trans_b else "")
        return f"({self.m}x{self.k}){ta} @ ({self.k}x{self.n}){tb}"


@dataclass(frozen=True)
class Pool:
    name: str
    x: tuple
    kernel: tuple
    stride: tuple
    padding: tuple = (0, 0)
    count_include_pad: bool = True

    @property
    def y(self) -> tuple:
        (h, w), (r, s) = self.x[2:], self.kernel
        return self.x[:2] + ((h + 2 * self.padding[0] - r) // self.stride[0] + 1,
                             (w + 2 * self.padding[1] - s) // self.stride[1] + 1)

    def describe(self) -> str:
        cip = "" if self.count_include_pad else " excl-pad"
        return (f"x{_dims(self.x)} k{self.kernel[0]}x{self.kernel[1]} s{self.stride[0]},{self.stride[1]} "
                f"p{self.padding[0]},{self.padding[1]}{cip}")


@dataclass(frozen=True)
class Dense:
    """x (N, I) through w (O, I)."""
    name: str
    n: int
    i: int
    o: int

    def describe(self) -> str:
        return f"x({self.n},{self.i}) w({self.o},{self.i})"


@dataclass(frozen=True)
class Tensor:
    """An activation of any rank, (N, C) or (N, C, H, W): elementwise ops, batch norm, dropout."""
    name: str
    shape: tuple
    training: bool = True  # batch norm: batch statistics (True) or running ones (False)
    p: float = 0.5  # dropout probability

    def describe(self) -> str:
        extra = "" if self.training else " eval"
        return f"{_dims(self.shape)}{extra}"


@dataclass(frozen=True)
class Loss:
    """logits (N, classes)."""
    name: str
    n: int
    classes: int

    def describe(self) -> str:
        return f"({self.n},{self.classes})"


@dataclass(frozen=True)
class Flat:
    """A flat parameter vector for the optimizers; variant 1 turns on the other switches."""
    name: str
    numel: int
    variant: int = 0

    def describe(self) -> str:
        return f"({self.numel},)" + (" alt" if self.variant else "")


def _dims(shape) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def _conv_gemms(conv: Conv) -> list[Gemm]:
    """The three per-image GEMMs of conv by im2col: forward, backward-data, backward-weight."""
    k, crs = conv.w[0], conv.w[1] * conv.w[2] * conv.w[3]
    pq = conv.out_hw[0] * conv.out_hw[1]
    return [Gemm(f"{conv.name}-fwd", k, pq, crs),                 # w (K, CRS) @ cols (CRS, PQ)
            Gemm(f"{conv.name}-bwd-data", crs, pq, k, trans_a=True),   # w.T @ dy (K, PQ)
            Gemm(f"{conv.name}-bwd-weight", k, crs, pq, trans_b=True)]  # dy @ cols.T


def lenet_shapes(batch: int = 256) -> list:
    """LeNet-5 on MNIST: conv 1->6 5x5 pad 2, 2x2 pool, conv 6->16 5x5, 2x2 pool, 400-120-84-10."""
    b = batch
    convs = [Conv("conv1", (b, 1, 28, 28), (6, 1, 5, 5), (1, 1), (2, 2)),
             Conv("conv2", (b, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0))]
    return convs + [g for c in convs for g in _conv_gemms(c)] + [
        Pool("pool1", (b, 6, 28, 28), (2, 2), (2, 2)),
        Pool("pool2", (b, 16, 10, 10), (2, 2), (2, 2)),
        Dense("fc1", b, 400, 120), Dense("fc2", b, 120, 84), Dense("fc3", b, 84, 10),
        Tensor("act-conv1", (b, 6, 28, 28)), Tensor("act-fc1", (b, 120)),
        Loss("loss", b, 10),
        Flat("params", 61706),  # every LeNet-5 parameter in one flat array
    ]


def alexnet_shapes(batch: int = 8, classes: int = 1000) -> list:
    """One-tower AlexNet at 224x224: five convs, three 3x3/2 pools, 9216-4096-4096-classes."""
    b = batch
    convs = [Conv("conv1", (b, 3, 224, 224), (64, 3, 11, 11), (4, 4), (2, 2)),
             Conv("conv2", (b, 64, 27, 27), (192, 64, 5, 5), (1, 1), (2, 2)),
             Conv("conv3", (b, 192, 13, 13), (384, 192, 3, 3), (1, 1), (1, 1)),
             Conv("conv4", (b, 384, 13, 13), (256, 384, 3, 3), (1, 1), (1, 1)),
             Conv("conv5", (b, 256, 13, 13), (256, 256, 3, 3), (1, 1), (1, 1))]
    return convs + [g for c in convs for g in _conv_gemms(c)] + [
        Pool("pool1", (b, 64, 55, 55), (3, 3), (2, 2)),
        Pool("pool2", (b, 192, 27, 27), (3, 3), (2, 2)),
        Pool("pool5", (b, 256, 13, 13), (3, 3), (2, 2)),
        Dense("fc6", b, 9216, 4096), Dense("fc7", b, 4096, 4096), Dense("fc8", b, 4096, classes),
        Tensor("act-conv1", (b, 64, 55, 55)), Tensor("act-fc6", (b, 4096)),
        Loss("loss", b, classes),
        Flat("fc7-params", 4096 * 4096 + 4096),
    ]


def odd_shapes() -> list:
    """Sizes that are not multiples of anything: tails of thread blocks, strides that skip
    rows, padding wider than the stride, rank-2 batch norm, eval mode, the other switches."""
    return [
        Conv("odd-conv", (3, 5, 13, 11), (7, 5, 3, 2), (2, 1), (1, 0)),
        Conv("odd-1x1", (2, 6, 5, 7), (3, 6, 1, 1)),
        Conv("odd-gappy", (2, 3, 11, 10), (2, 3, 2, 2), (3, 3), (0, 1)),  # stride > kernel
        Gemm("odd-nn", 37, 29, 53), Gemm("odd-tn", 37, 29, 53, trans_a=True),
        Gemm("odd-nt", 37, 29, 53, trans_b=True), Gemm("odd-tt", 37, 29, 53, True, True),
        Gemm("odd-1", 1, 1, 1), Gemm("odd-vec", 65, 1, 33),
        Pool("odd-pool", (3, 5, 13, 11), (3, 3), (2, 2), (1, 1)),
        Pool("odd-pool-excl", (2, 3, 7, 9), (2, 3), (1, 2), (1, 1), count_include_pad=False),
        Pool("odd-pool-gappy", (2, 2, 10, 11), (2, 2), (3, 3)),
        Dense("odd-fc", 7, 33, 19), Dense("odd-fc-1", 1, 5, 1),
        Tensor("odd-4d", (3, 5, 7, 9), p=0.3), Tensor("odd-2d", (33, 17)),
        Tensor("odd-eval", (4, 3, 5, 5), training=False),
        Loss("odd-loss", 13, 11), Loss("odd-loss-1", 1, 3),
        Flat("odd-flat", 1001), Flat("odd-flat-alt", 37, variant=1),
    ]


SHAPE_SETS: dict[str, Callable[..., list]] = {"lenet": lenet_shapes, "alexnet": alexnet_shapes,
                                              "odd": odd_shapes}

# --------------------------------------------------------------------------------------
# The op table: for each op, the tolerance family, the kind of shape it takes, how to make
# its inputs and which of them it updates in place.


@dataclass(frozen=True)
class OpSpec:
    family: str                 # tolerance row in engine.tolerances
    kind: type                  # the shape record it takes (Conv, Pool, ...)
    make: Callable              # (rng, shape) -> tuple of positional args
    outputs: tuple              # names of what it returns, then of the args it updates in place
    inplace: tuple = ()         # indices of args the op updates in place (compared too)
    flops: Callable | None = None  # (shape) -> floating-point operations, for compute-bound ops


def _normal(rng, shape, scale=1.0, shift=0.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def _ref():
    return get_backend("reference")


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _conv_flops(s: Conv) -> float:
    n, k, p, q = s.y
    return 2.0 * n * k * p * q * s.w[1] * s.w[2] * s.w[3]


def _make_bn(rng, s: Tensor, relu: bool):
    c = s.shape[1]
    x = _normal(rng, s.shape, 2.0, 0.5)
    gamma, beta = _normal(rng, (c,), 0.5, 1.0), _normal(rng, (c,), 0.5)
    running_mean = _normal(rng, (c,), 0.1)
    running_var = rng.uniform(0.5, 1.5, c).astype(np.float32)
    return x, gamma, beta, running_mean, running_var, s.training, 0.1, 1e-5


def _make_bn_backward(rng, s: Tensor, relu: bool):
    x, gamma, beta, rm, rv, training, momentum, eps = _make_bn(rng, s, relu)
    forward = _ref().batch_norm_relu_forward if relu else _ref().batch_norm_forward
    y, mean, invstd = forward(x, gamma, beta, rm.copy(), rv.copy(), training, momentum, eps)
    dy = _normal(rng, s.shape)
    if relu:
        return dy, _f32(y), x, gamma, _f32(mean), _f32(invstd), training
    return dy, x, gamma, _f32(mean), _f32(invstd), training


def _make_sgd(rng, s: Flat):
    p, g, v = _normal(rng, s.numel), _normal(rng, s.numel), _normal(rng, s.numel, 0.1)
    if s.variant:
        return p, g, v, 0.05, 0.9, 1e-4, True  # nesterov with weight decay
    return p, g, v, 0.01, 0.9, 0.0, False


def _make_adam(rng, s: Flat):
    p, g = _normal(rng, s.numel), _normal(rng, s.numel)
    m = _normal(rng, s.numel, 0.1)
    v = rng.uniform(0.0, 0.1, s.numel).astype(np.float32)  # a second moment is never negative
    if s.variant:
        return p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 1e-2, True  # AdamW, first step
    return p, g, m, v, 7, 1e-3, 0.9, 0.999, 1e-8, 0.0, False


def _make_rmsprop(rng, s: Flat):
    p, g = _normal(rng, s.numel), _normal(rng, s.numel)
    sq = rng.uniform(0.0, 0.1, s.numel).astype(np.float32)
    return p, g, sq, 1e-3, 0.99, 1e-8, (1e-4 if s.variant else 0.0)


def _make_adagrad(rng, s: Flat):
    p, g = _normal(rng, s.numel), _normal(rng, s.numel)
    sum_sq = rng.uniform(0.0, 1.0, s.numel).astype(np.float32)
    return p, g, sum_sq, 1e-2, 1e-10, (1e-4 if s.variant else 0.0)


def _gemm_inputs(rng, s: Gemm):
    a = _normal(rng, (s.k, s.m) if s.trans_a else (s.m, s.k))
    b = _normal(rng, (s.n, s.k) if s.trans_b else (s.k, s.n))
    return a, b, s.trans_a, s.trans_b


def _max_pool_backward(rng, s: Pool):
    _, argmax = _ref().max_pool2d_forward(_normal(rng, s.x), s.kernel, s.stride, s.padding)
    return _normal(rng, s.y), argmax, s.x


def _dropout_backward(rng, s: Tensor):
    _, mask = _ref().dropout_forward(np.zeros(s.shape, np.float32), s.p, 1234)
    return _normal(rng, s.shape), mask, s.p


def _bias_relu_backward(rng, s: Tensor):
    y = _ref().bias_relu_forward(_normal(rng, s.shape), _normal(rng, (s.shape[1],)))
    return _normal(rng, s.shape), _f32(y)


OP_TABLE: dict[str, OpSpec] = {
    # conv.py
    "im2col": OpSpec("conv", Conv, lambda r, s: (_normal(r, s.x), s.w[2:], s.stride, s.padding), ("cols",)),
    "col2im": OpSpec("conv", Conv, lambda r, s: (
        _normal(r, (s.x[0], s.w[1] * s.w[2] * s.w[3], s.out_hw[0] * s.out_hw[1])),
        s.x, s.w[2:], s.stride, s.padding), ("x",)),
    "gemm": OpSpec("gemm", Gemm, _gemm_inputs, ("c",), flops=lambda s: 2.0 * s.m * s.n * s.k),
    "conv2d_forward": OpSpec("conv", Conv, lambda r, s: (
        _normal(r, s.x), _normal(r, s.w, 0.1), _normal(r, s.w[:1]), s.stride, s.padding), ("y",),
        flops=_conv_flops),
    "conv2d_backward_data": OpSpec("conv", Conv, lambda r, s: (
        _normal(r, s.y), _normal(r, s.w, 0.1), s.x, s.stride, s.padding), ("dx",), flops=_conv_flops),
    "conv2d_backward_weight": OpSpec("conv", Conv, lambda r, s: (
        _normal(r, s.y), _normal(r, s.x), s.w, s.stride, s.padding), ("dw",), flops=_conv_flops),
    # linear.py
    "linear_forward": OpSpec("linear", Dense, lambda r, s: (
        _normal(r, (s.n, s.i)), _normal(r, (s.o, s.i), 0.1), _normal(r, (s.o,))), ("y",),
        flops=lambda s: 2.0 * s.n * s.i * s.o),
    "linear_backward_data": OpSpec("linear", Dense, lambda r, s: (
        _normal(r, (s.n, s.o)), _normal(r, (s.o, s.i), 0.1)), ("dx",), flops=lambda s: 2.0 * s.n * s.i * s.o),
    "linear_backward_weight": OpSpec("linear", Dense, lambda r, s: (
        _normal(r, (s.n, s.o)), _normal(r, (s.n, s.i))), ("dw",), flops=lambda s: 2.0 * s.n * s.i * s.o),
    "bias_backward": OpSpec("linear", Tensor, lambda r, s: (_normal(r, s.shape),), ("db",)),
    "add": OpSpec("linear", Tensor, lambda r, s: (_normal(r, s.shape), _normal(r, s.shape)), ("y",)),
    # pool.py
    "max_pool2d_forward": OpSpec("pool", Pool, lambda r, s: (_normal(r, s.x), s.kernel, s.stride, s.padding),
                                 ("y", "argmax")),
    "max_pool2d_backward": OpSpec("pool", Pool, _max_pool_backward, ("dx",)),
    "avg_pool2d_forward": OpSpec("pool", Pool, lambda r, s: (
        _normal(r, s.x), s.kernel, s.stride, s.padding, s.count_include_pad), ("y",)),
    "avg_pool2d_backward": OpSpec("pool", Pool, lambda r, s: (
        _normal(r, s.y), s.x, s.kernel, s.stride, s.padding, s.count_include_pad), ("dx",)),
    # batchnorm.py (running_mean, running_var are args 3 and 4, updated in place in training)
    "batch_norm_forward": OpSpec("batchnorm", Tensor, lambda r, s: _make_bn(r, s, False),
                                 ("y", "save_mean", "save_invstd", "running_mean", "running_var"), (3, 4)),
    "batch_norm_backward": OpSpec("batchnorm", Tensor, lambda r, s: _make_bn_backward(r, s, False),
                                  ("dx", "dgamma", "dbeta")),
    "batch_norm_relu_forward": OpSpec("batchnorm", Tensor, lambda r, s: _make_bn(r, s, True),
                                      ("y", "save_mean", "save_invstd", "running_mean", "running_var"), (3, 4)),
    "batch_norm_relu_backward": OpSpec("batchnorm", Tensor, lambda r, s: _make_bn_backward(r, s, True),
                                       ("dx", "dgamma", "dbeta")),
    # activation.py
    "relu_forward": OpSpec("activation", Tensor, lambda r, s: (_normal(r, s.shape),), ("y",)),
    "relu_backward": OpSpec("activation", Tensor, lambda r, s: (
        _normal(r, s.shape), np.maximum(_normal(r, s.shape), 0)), ("dx",)),
    "bias_relu_forward": OpSpec("activation", Tensor, lambda r, s: (
        _normal(r, s.shape), _normal(r, (s.shape[1],))), ("y",)),
    "bias_relu_backward": OpSpec("activation", Tensor, _bias_relu_backward, ("dx", "db")),
    "leaky_relu_forward": OpSpec("activation", Tensor, lambda r, s: (_normal(r, s.shape), 0.01), ("y",)),
    "leaky_relu_backward": OpSpec("activation", Tensor, lambda r, s: (
        _normal(r, s.shape), _normal(r, s.shape), 0.01), ("dx",)),
    "sigmoid_forward": OpSpec("activation", Tensor, lambda r, s: (_normal(r, s.shape, 3.0),), ("y",)),
    "sigmoid_backward": OpSpec("activation", Tensor, lambda r, s: (
        _normal(r, s.shape), r.uniform(0.01, 0.99, s.shape).astype(np.float32)), ("dx",)),
    "tanh_forward": OpSpec("activation", Tensor, lambda r, s: (_normal(r, s.shape, 2.0),), ("y",)),
    "tanh_backward": OpSpec("activation", Tensor, lambda r, s: (
        _normal(r, s.shape), r.uniform(-0.99, 0.99, s.shape).astype(np.float32)), ("dx",)),
    # dropout.py
    "dropout_forward": OpSpec("dropout", Tensor, lambda r, s: (_normal(r, s.shape), s.p, 1234), ("y", "mask")),
    "dropout_backward": OpSpec("dropout", Tensor, _dropout_backward, ("dx",)),
    # loss.py (labels int64, as NumPy and PyTorch index with)
    "softmax_cross_entropy_forward": OpSpec("loss", Loss, lambda r, s: (
        _normal(r, (s.n, s.classes), 3.0), r.integers(0, s.classes, s.n).astype(np.int64)), ("loss", "dlogits")),
    "mse_loss_forward": OpSpec("loss", Loss, lambda r, s: (
        _normal(r, (s.n, s.classes)), _normal(r, (s.n, s.classes))), ("loss",)),
    "mse_loss_backward": OpSpec("loss", Loss, lambda r, s: (
        _normal(r, (s.n, s.classes)), _normal(r, (s.n, s.classes)), np.array(0.7, np.float32)), ("dpred",)),
    # optim.py: in place, return None
    "sgd_update": OpSpec("optim", Flat, _make_sgd, ("param", "velocity"), (0, 2)),
    "adam_update": OpSpec("optim", Flat, _make_adam, ("param", "m", "v"), (0, 2, 3)),
    "rmsprop_update": OpSpec("optim", Flat, _make_rmsprop, ("param", "square_avg"), (0, 2)),
    "adagrad_update": OpSpec("optim", Flat, _make_adagrad, ("param", "sum_sq"), (0, 2)),
}
assert set(OP_TABLE) == set(OPS), f"validate.OP_TABLE and backend.OPS differ: {set(OP_TABLE) ^ set(OPS)}"


def direction(op: str) -> str:
    """forward / backward / backward-data / backward-weight / update, from the op's name."""
    if op.endswith("_update"):
        return "update"
    for tag in ("backward_data", "backward_weight"):
        if op.endswith(tag):
            return tag.replace("_", "-")
    if op.endswith("_backward") or op == "col2im":  # col2im is the adjoint of im2col
        return "backward"
    return "forward"


@dataclass(frozen=True)
class Case:
    """One op at one shape. Inputs are drawn on demand (AlexNet's fc6 weight is 150 MB)
    from a seed fixed by op and shape, so every exposure and every rerun sees the same."""
    op: str
    shape_set: str
    shape: object

    @property
    def spec(self) -> OpSpec:
        return OP_TABLE[self.op]

    @property
    def label(self) -> str:
        return f"{self.shape_set}/{self.shape.name}"

    @property
    def seed(self) -> int:
        return sum(ord(ch) * 31 ** i for i, ch in enumerate(f"{self.op}|{self.label}")) % 2**32

    def inputs(self) -> tuple:
        """Positional args: float32 NumPy arrays (int for labels, argmax, masks) and scalars."""
        return self.spec.make(np.random.default_rng(self.seed), self.shape)

    def flops(self) -> float | None:
        return None if self.spec.flops is None else float(self.spec.flops(self.shape))


def cases(shape_set: str, batch: int | None = None, ops=None) -> list[Case]:
    """Every (op, shape) pair of a shape set; ops filters by name. batch overrides the set's default."""
    make_shapes = SHAPE_SETS[shape_set]
    shapes = make_shapes() if batch is None or shape_set == "odd" else make_shapes(batch)
    wanted = list(OP_TABLE) if ops is None else list(ops)
    return [Case(op, shape_set, s) for op in wanted for s in shapes if isinstance(s, OP_TABLE[op].kind)]


# --------------------------------------------------------------------------------------
# Running a case on a backend.


def to_device(args, xp, dtype=None) -> list:
    """Fresh copies of the array args in module xp (numpy or cupy): ops update some in place.
    dtype, when given, replaces every floating dtype (the reference gets float64)."""
    moved = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = a.astype(dtype) if dtype is not None and a.dtype.kind == "f" else a.copy()
            a = xp.asarray(a)
        moved.append(a)
    return moved


def call(backend, case: Case, args: list, out=None) -> tuple:
    """Run case.op on backend with args (already on its device); returns the outputs then the
    in-place-updated args, in the order of OpSpec.outputs."""
    fn = getattr(backend, case.op)
    result = fn(*args) if out is None else fn(*args, out=out)
    if result is None:
        result = ()
    elif not isinstance(result, tuple):
        result = (result,)
    return tuple(result) + tuple(args[i] for i in case.spec.inplace)


def reference_outputs(case: Case, args=None) -> tuple:
    """The float64 spec's outputs for a case (its float32 inputs upcast, nothing else changed)."""
    args = case.inputs() if args is None else args
    return call(_ref(), case, to_device(args, np, np.float64))


def garbage_like(outputs: tuple, xp):
    """out= buffers for the returned outputs, filled with values no correct kernel leaves behind."""
    buffers = []
    for o in outputs:
        b = xp.empty(o.shape, dtype=o.dtype)
        b.fill(np.nan if b.dtype.kind == "f" else 0x7F)
        buffers.append(b)
    return buffers[0] if len(buffers) == 1 else tuple(buffers)


def compare(case: Case, got: tuple, expected: tuple) -> tuple[bool, float, float, str]:
    """(passed, max abs err, max rel err, the first failing output's name or '') over all outputs.
    Integer outputs (argmax, dropout mask) must match exactly; float ones within tol(family)."""
    names = case.spec.outputs
    if len(got) != len(expected):
        return False, math.inf, math.inf, f"returned {len(got)} outputs, expected {len(expected)}"
    bounds = tol(case.spec.family)
    passed, worst_abs, worst_rel, failing = True, 0.0, 0.0, ""
    for name, g, e in zip(names, got, expected):
        g_host = g.get() if hasattr(g, "get") and not isinstance(g, np.ndarray) else np.asarray(g)
        e = np.asarray(e)
        if g_host.shape != e.shape:
            ok, abs_err, rel_err = False, math.inf, math.inf
        else:
            abs_err, rel_err = errors(g_host, e)
            if e.dtype.kind in "iub":
                ok = g_host.dtype.kind in "iub" and bool(np.array_equal(g_host, e))
            else:
                ok = g_host.dtype == np.float32 and is_close(g_host, e, **bounds)
        worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
        if not ok and passed:
            passed = False
            failing = f"{name} {g_host.dtype}{_dims(g_host.shape)}"
    return passed, worst_abs, worst_rel, failing


def _bitwise_equal(a: tuple, b: tuple) -> bool:
    host = [np.asarray(x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else x) for x in a + b]
    half = len(a)
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(host[:half], host[half:]))


@dataclass
class Row:
    op: str
    direction: str
    exposure: str
    shape_set: str
    shape: str
    max_abs: float
    max_rel: float
    rerun: str      # second run into garbage-filled out=: "bitwise", "close", "-" (no out=), or "FAIL"
    passed: bool
    note: str = ""

    def as_dict(self) -> dict:
        # strict JSON has no NaN or Infinity: an error that could not be measured is null
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items()}


def check_case(case: Case, exposure: str, backend, xp, args, expected) -> Row:
    """Run one case on one exposure twice (fresh, then into garbage out=) and judge both."""
    row = Row(case.op, direction(case.op), exposure, case.label, case.shape.describe(),
              math.nan, math.nan, "-", False)
    try:
        got = call(backend, case, to_device(args, xp))
        row.passed, row.max_abs, row.max_rel, failing = compare(case, got, expected)
        if failing:
            row.note = f"wrong {failing}"
        if "out=None" in OPS[case.op]:  # in-place optimizer updates have no out=
            n_returned = len(case.spec.outputs) - len(case.spec.inplace)
            again = call(backend, case, to_device(args, xp), out=garbage_like(got[:n_returned], xp))
            if _bitwise_equal(got, again):
                row.rerun = "bitwise"
            elif compare(case, again, expected)[0]:
                row.rerun = "close"
            else:
                row.rerun, row.passed = "FAIL", False
                row.note = row.note or "wrong when writing into out="
    except Exception as exc:  # one broken op must not hide the rest of the table
        row.passed, row.note = False, f"{type(exc).__name__}: {exc}"[:160]
    return row


# --------------------------------------------------------------------------------------
# Which exposures run here.


def cuda_status() -> tuple[bool, bool, str]:
    """(GPU usable through CuPy, compiled extension importable, why not)."""
    try:
        import engine.cuda as cuda
    except Exception as exc:  # the CUDA glue is optional: no CuPy, no toolkit, not built yet
        return False, False, f"engine.cuda does not import ({type(exc).__name__}: {exc})"
    try:
        if not cuda.is_available():
            return False, False, "engine.cuda.is_available() is False"
        return True, bool(cuda.extension_available()), ""
    except Exception as exc:
        return False, False, f"engine.cuda availability check failed ({type(exc).__name__}: {exc})"


EXPOSURES = ("numba", "cuda-ext", "cuda-rtc")


def exposures_to_run(requested: str) -> tuple[list[str], list[str]]:
    """(exposures to run, messages about those left out)."""
    gpu, ext, why = cuda_status()
    wanted = list(EXPOSURES) if requested == "all" else [requested]
    run, notes = [], []
    for name in wanted:
        if name == "numba":
            run.append(name)
        elif not gpu:
            notes.append(f"no GPU: CUDA exposures not checked ({why})" if requested == "all"
                         else f"{name}: no GPU ({why})")
        elif name == "cuda-ext" and not ext:
            notes.append("cuda-ext: the compiled extension is not built or does not import; not checked")
        else:
            run.append(name)
    return run, list(dict.fromkeys(notes))


# --------------------------------------------------------------------------------------
# The command.

COLUMNS = ("op", "direction", "exposure", "shapes", "shape", "max abs", "max rel", "rerun", "result")
WIDTHS = (30, 15, 8, 22, 38, 9, 9, 7, 6)


def _format_row(values) -> str:
    return "  ".join(str(v)[:w].ljust(w) for v, w in zip(values, WIDTHS)).rstrip()


def _fmt_err(x: float) -> str:
    return "-" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2e}")


def print_row(row: Row, file=None) -> None:
    file = file or sys.stdout  # looked up per call: pytest's capsys swaps it
    print(_format_row((row.op, row.direction, row.exposure, row.shape_set, row.shape, _fmt_err(row.max_abs),
                       _fmt_err(row.max_rel), row.rerun, "pass" if row.passed else "FAIL")), file=file)
    if row.note and not row.passed:
        print(f"    ^ {row.note}", file=file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine validate",
        description="Check every op, forward and backward, through every available exposure "
                    "against the float64 NumPy reference.")
    parser.add_argument("--backend", default="all", choices=("all",) + EXPOSURES,
                        help="which exposure to check (default: every one that runs here)")
    parser.add_argument("--quick", action="store_true",
                        help="odd shapes and LeNet shapes at batch 16 only (seconds, not minutes)")
    parser.add_argument("--json", metavar="PATH", help="also write every row and the summary as JSON")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help="only this op (repeatable); default: every op in engine.backend.OPS")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.op:
        unknown = sorted(set(args.op) - set(OPS))
        if unknown:
            print(f"validate: unknown op(s) {unknown}; expected names from engine.backend.OPS", file=sys.stderr)
            return 2
    exposures, notes = exposures_to_run(args.backend)
    for note in notes:
        print(note)
    if not exposures:
        print(f"validate: nothing to check: {args.backend} cannot run here")
        return 2

    backends = {}
    for name in exposures:
        try:
            backends[name] = get_backend(name)
        except Exception as exc:
            print(f"validate: backend {name!r} failed to load: {type(exc).__name__}: {exc}")
            return 1
    modules = {name: (np if name == "numba" else _cupy()) for name in backends}

    plan = ([("odd", None), ("lenet", 16)] if args.quick
            else [("lenet", 256), ("alexnet", 8), ("odd", None)])
    todo = [c for shape_set, batch in plan for c in cases(shape_set, batch, args.op)]
    print(f"validate: {len(todo)} cases x {len(backends)} exposure(s) ({', '.join(backends)}); "
          f"shape sets: {', '.join(f'{s}' + (f' batch {b}' if b else '') for s, b in plan)}")
    print(_format_row(COLUMNS))
    print(_format_row(["-" * w for w in WIDTHS]))

    rows, start = [], time.perf_counter()
    for case in todo:
        inputs = case.inputs()
        try:
            expected = reference_outputs(case, inputs)
        except Exception as exc:
            row = Row(case.op, direction(case.op), "reference", case.label, case.shape.describe(),
                      math.nan, math.nan, "-", False, f"reference failed: {type(exc).__name__}: {exc}"[:160])
            rows.append(row)
            print_row(row)
            continue
        for name, backend in backends.items():
            row = check_case(case, name, backend, modules[name], inputs, expected)
            rows.append(row)
            print_row(row)

    failed = [r for r in rows if not r.passed]
    seconds = time.perf_counter() - start
    print(f"\nvalidate: {len(rows) - len(failed)} of {len(rows)} rows pass in {seconds:.1f} s"
          + (f"; {len(failed)} FAIL: " + ", ".join(sorted({f'{r.op} ({r.exposure})' for r in failed}))
             if failed else ""))
    for note in notes:
        print(note)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"exposures": list(backends), "notes": notes, "quick": args.quick,
                       "passed": not failed, "seconds": seconds,
                       "rows": [r.as_dict() for r in rows]}, fh, indent=1, default=str)
        print(f"validate: rows written to {args.json}")
    return 1 if failed else 0


def _cupy():
    import cupy
    return cupy


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
