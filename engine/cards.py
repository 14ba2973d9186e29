"""Op cards: one declaration per op, next to its float64 reference.

engine/reference/<family>.py ends with ``CARDS = [...]``: for each op, its reference (whose
signature is the op's signature on every backend), the shapes and dtypes it returns, how
inputs are drawn for it at a shape, which arguments it updates in place, its PyTorch
counterpart and the tolerance family that judges it. Everything that lists ops is built
from the cards: ``engine.ops.OPS``, the backends (engine.backend), ``python -m engine validate``,
the benchmarks and the tests.

Also here: the shape records inputs are drawn at (a conv layer, a GEMM, a pooling window,
an activation tensor...) and the shape sets shared by validate, the tests and the
benchmarks: LeNet-5 (batch 256), one-tower AlexNet (batch 8) and odd sizes.

    from engine.ops import OPS, cases
    card = OPS["conv2d_forward"]        # card.reference, card.family, card.outputs ...
    for case in cases("odd"):           # every op at every odd shape of its kind
        args = case.inputs()            # float32 NumPy arrays and scalars, seeded by op and shape
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engine import shapes

# --------------------------------------------------------------------------------------
# Shape records: what a card draws its inputs at. One record type per kind of layer.


@dataclass(frozen=True)
class Conv:
    """x (N, C, H, W) convolved with w (K, C, R, S)."""
    name: str
    x: tuple
    w: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)

    @property
    def y(self) -> tuple:
        return shapes.conv2d_shape(self.x, self.w, self.stride, self.padding)

    @property
    def cols(self) -> tuple:
        return shapes.im2col_shape(self.x, self.w[2:], self.stride, self.padding)

    def describe(self) -> str:
        return f"x{dims(self.x)} w{dims(self.w)} s{pair(self.stride)} p{pair(self.padding)}"


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
        return shapes.pool2d_shape(self.x, self.kernel, self.stride, self.padding)

    def describe(self) -> str:
        cip = "" if self.count_include_pad else " excl-pad"
        return f"x{dims(self.x)} k{self.kernel[0]}x{self.kernel[1]} s{pair(self.stride)} p{pair(self.padding)}{cip}"


@dataclass(frozen=True)
class Adaptive:
    """x (N, C, H, W) pooled to an (oh, ow) output whatever H and W are."""
    name: str
    x: tuple
    out: tuple

    @property
    def y(self) -> tuple:
        return self.x[:2] + tuple(self.out)

    def describe(self) -> str:
        return f"x{dims(self.x)} -> {self.out[0]}x{self.out[1]}"


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
    p: float = 0.5         # dropout probability

    def describe(self) -> str:
        return dims(self.shape) + ("" if self.training else " eval")


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


def dims(shape) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def pair(v) -> str:
    return f"{v[0]},{v[1]}"


def conv_gemms(conv: Conv) -> list[Gemm]:
    """The three per-image GEMMs of conv by im2col: forward, backward-data, backward-weight."""
    k, crs = conv.w[0], conv.w[1] * conv.w[2] * conv.w[3]
    pq = conv.y[2] * conv.y[3]
    return [Gemm(f"{conv.name}-fwd", k, pq, crs),                       # w (K, CRS) @ cols (CRS, PQ)
            Gemm(f"{conv.name}-bwd-data", crs, pq, k, trans_a=True),    # w.T @ dy (K, PQ)
            Gemm(f"{conv.name}-bwd-weight", k, crs, pq, trans_b=True)]  # dy @ cols.T


def lenet_shapes(batch: int = 256) -> list:
    """LeNet-5 on MNIST: conv 1->6 5x5 pad 2, 2x2 pool, conv 6->16 5x5, 2x2 pool, 400-120-84-10."""
    b = batch
    convs = [Conv("conv1", (b, 1, 28, 28), (6, 1, 5, 5), (1, 1), (2, 2)),
             Conv("conv2", (b, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0))]
    return convs + [g for c in convs for g in conv_gemms(c)] + [
        Pool("pool1", (b, 6, 28, 28), (2, 2), (2, 2)),
        Pool("pool2", (b, 16, 10, 10), (2, 2), (2, 2)),
        Adaptive("gap2", (b, 16, 10, 10), (1, 1)),  # global average pooling, as a ResNet head
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
    return convs + [g for c in convs for g in conv_gemms(c)] + [
        Pool("pool1", (b, 64, 55, 55), (3, 3), (2, 2)),
        Pool("pool2", (b, 192, 27, 27), (3, 3), (2, 2)),
        Pool("pool5", (b, 256, 13, 13), (3, 3), (2, 2)),
        Adaptive("avgpool", (b, 256, 13, 13), (6, 6)),  # torchvision's head at 13x13: overlapping windows
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
        Adaptive("odd-adaptive", (3, 5, 7, 9), (3, 4)), Adaptive("odd-global", (2, 3, 5, 5), (1, 1)),
        Adaptive("odd-adaptive-up", (2, 2, 4, 6), (6, 4)),  # more outputs than inputs along H
        Dense("odd-fc", 7, 33, 19), Dense("odd-fc-1", 1, 5, 1),
        Tensor("odd-4d", (3, 5, 7, 9), p=0.3), Tensor("odd-2d", (33, 17)),
        Tensor("odd-eval", (4, 3, 5, 5), training=False),
        Loss("odd-loss", 13, 11), Loss("odd-loss-1", 1, 3),
        Flat("odd-flat", 1001), Flat("odd-flat-alt", 37, variant=1),
    ]


SHAPE_SETS: dict[str, Callable[..., list]] = {"lenet": lenet_shapes, "alexnet": alexnet_shapes,
                                              "odd": odd_shapes}


def normal(rng, shape, scale=1.0, shift=0.0) -> np.ndarray:
    """float32 draws from N(shift, scale^2): the input of most cards."""
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


# --------------------------------------------------------------------------------------
# The card.

LIKE_INPUT = "like input"  # an output dtype: the dtype of the op's first float array argument


@dataclass(frozen=True)
class OpCard:
    """One op. Its signature is its reference's; every backend implements exactly that."""
    name: str
    reference: Callable    # the float64 spec (engine/reference/<family>.py)
    kind: type             # the shape record its inputs are drawn at (Conv, Pool, Tensor, ...)
    make: Callable         # (rng, record) -> positional args: float32 NumPy arrays, ints, scalars
    outputs: tuple         # names of what it returns, then of the args it updates in place
    shapes: Callable       # (*args) -> ((shape, dtype), ...) of what it returns; dtype may be LIKE_INPUT
    family: str            # its row in engine.tolerances
    inplace: tuple = ()    # indices of args it updates in place (judged like outputs)
    flops: Callable | None = None  # (record) -> floating-point operations, for compute-bound ops
    torch: Callable | None = None  # (T, *args as torch tensors) -> zero-argument callable running it in PyTorch
    row: object = None     # the Elementwise row it was made from, if any
    module: str = ""       # the family file it lives in (reference/, cpu/, cuda/): filled in by collect()

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.reference)

    @property
    def direction(self) -> str:
        """forward / backward / backward-data / backward-weight / update, from the name."""
        if self.name.endswith("_update"):
            return "update"
        for tag in ("backward_data", "backward_weight"):
            if self.name.endswith(tag):
                return tag.replace("_", "-")
        if self.name.endswith("_backward") or self.name == "col2im":  # col2im is im2col's adjoint
            return "backward"
        return "forward"

    @property
    def returns(self) -> int:
        """How many arrays the op returns (in-place updates return nothing)."""
        return len(self.outputs) - len(self.inplace)

    def output_specs(self, args) -> tuple:
        """((shape, numpy dtype), ...) the op returns for these args."""
        like = next((a.dtype for a in args if hasattr(a, "dtype") and a.dtype.kind == "f"), np.dtype(np.float32))
        return tuple((tuple(shape), like if dtype == LIKE_INPUT else np.dtype(dtype))
                     for shape, dtype in self.shapes(*args))


def one_output(shape_of: Callable) -> Callable:
    """A shapes rule for an op returning one float array of the shape shape_of(*args) gives."""
    return lambda *args: ((shape_of(*args), LIKE_INPUT),)


def like_arg(i: int = 0) -> Callable:
    """A shapes rule for an op returning one float array shaped like its argument i."""
    return lambda *args: ((args[i].shape, LIKE_INPUT),)


# --------------------------------------------------------------------------------------
# Elementwise rows: one row makes the forward and backward cards of an activation.


@dataclass(frozen=True)
class Elementwise:
    """One row of the elementwise table (engine/reference/activation.py, ELEMENTWISE).

    forward(x, *params) and backward(dy, saved, *params) are the float64 NumPy formulas (the
    spec); scalar_forward(x, a, b) and scalar_backward(dy, saved, a, b) compute one element
    and are compiled by Numba (write them with the math module and plain arithmetic), with
    the arguments of the CUDA pair <name>_forward / <name>_backward in kernels/activation.cu:
    a, b are the row's parameters, 0.0 when it has fewer. `saves` says which value backward
    takes: the forward's output "y" (the executor keeps it anyway) or its input "x". Its
    counterparts elsewhere: what PyTorch runs for it, and the ONNX nodes that compute it."""
    name: str
    forward: Callable
    backward: Callable
    scalar_forward: Callable
    scalar_backward: Callable
    saves: str = "y"
    params: tuple = ()          # names of scalar parameters after x (e.g. negative_slope), at most two
    example: tuple = ()         # their values when validate and the benchmarks draw inputs
    scale: float = 1.0          # x ~ N(0, scale^2) when inputs are drawn
    torch_forward: Callable | None = None   # (T, x, *params) -> result
    torch_backward: Callable | None = None  # (T, dy, saved, *params) -> dx
    # (w, x, out, path, *params): writes the ONNX nodes computing the forward from value x into
    # value out, with engine/export.py's writer w (w.node, w.step, w.constant)
    onnx: Callable | None = None

    def cards(self) -> list[OpCard]:
        return [OpCard(f"{self.name}_forward", self._reference("forward"), Tensor, self._make_forward, ("y",),
                       like_arg(0), "activation", torch=self._torch(self.torch_forward), row=self),
                OpCard(f"{self.name}_backward", self._reference("backward"), Tensor, self._make_backward,
                       ("dx",), like_arg(0), "activation", torch=self._torch(self.torch_backward), row=self)]

    def _reference(self, direction: str) -> Callable:
        """The reference function of one direction, named and signed as the op."""
        formula = self.forward if direction == "forward" else self.backward
        first = ["x"] if direction == "forward" else ["dy", self.saves]

        def reference(*args, out=None):
            value = formula(*(np.asarray(a, np.float64) if hasattr(a, "dtype") else a for a in args))
            if out is None:
                return value
            out[...] = value
            return out
        reference.__name__ = reference.__qualname__ = f"{self.name}_{direction}"
        reference.__doc__ = f"{self.name} {direction}, float64 (engine/reference/activation.py, ELEMENTWISE)."
        reference.__signature__ = signature_of(first + list(self.params))
        return reference

    def _make_forward(self, rng, s: Tensor):
        return (normal(rng, s.shape, self.scale),) + self.example

    def _make_backward(self, rng, s: Tensor):
        dy, x = normal(rng, s.shape), normal(rng, s.shape, self.scale)
        saved = x if self.saves == "x" else self.forward(x.astype(np.float64), *self.example).astype(np.float32)
        return (dy, saved) + self.example

    @staticmethod
    def _torch(fn):
        return None if fn is None else (lambda T, *args: (lambda: fn(T, *args)))


def signature_of(names, out: bool = True) -> inspect.Signature:
    """(name, ..., out=None): the signature every backend gives an op with these arguments."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in names]
    if out:
        params.append(inspect.Parameter("out", kind, default=None))
    return inspect.Signature(params)


@dataclass
class TorchEnv:
    """What a card's torch counterpart may use: torch itself, torch.nn.functional, the aten
    ops, the device, the shape record, and empty(shape) for the tensors backward ops take
    only for their shape."""
    torch: types.ModuleType
    device: str
    record: object = None
    F: types.ModuleType = field(init=False)
    aten: object = field(init=False)

    def __post_init__(self):
        self.F = self.torch.nn.functional
        self.aten = self.torch.ops.aten

    def empty(self, shape):
        return self.torch.empty(tuple(shape), device=self.device)
