"""Input checks shared by the functional API (at call time) and the layers (at trace time).

Every helper takes the name of the op (or layer) first and raises an exception whose
message names that op, what it expected and what it got:

    conv2d: input has 3 channels but weight expects 1
    max_pool2d: expected a 4-D input (N, C, H, W), got shape (3, 28, 28)
    cross_entropy: label 12 out of range [0, 10)

TypeError means the wrong kind of thing (a list where an array belongs, int8 data, a
float stride); ValueError means the right kind with a wrong value (a shape, a range).

Policies, fixed here once for every op:

* Data is float32 or float64; every float array of one call has the same dtype. Nothing
  is promoted silently: mixing float32 and float64 is a TypeError.
* Labels and pooling indices have an integer dtype; their values are range-checked
  (which reads them back from the GPU: the functional API is the checked, convenient
  path; the executor checks labels once when a data set is loaded).
* No broadcasting: shapes that must agree must be equal (mse_loss with (N, 1) against
  (N,) is an error, not an (N, N) loss).
* Arrays are never empty: a zero-size batch has no mean, and a CUDA launch with an
  empty grid is an error rather than a no-op.
* Kernels need C-contiguous arrays in native byte order. An input that is not (a
  transposed view, a slice with a step) is copied into one, as torch does; the copy is
  the caller's cost, never a wrong result. Arrays an op updates in place (batch norm's
  running statistics) cannot be copied without losing the update, so those must
  already be contiguous (`inplace_array`).
* NumPy and CuPy arrays are never mixed in one call.

Shape-level helpers (``conv2d_output_shape``, ``pool2d_output_shape``, ...) take plain
shape tuples so that layers can run the same checks when a graph is traced, before any
array exists.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from engine import shapes
from engine.backend import is_cuda_array

FLOAT_DTYPES = ("float32", "float64")

# ---------------------------------------------------------------------------------------
# scalars and (h, w) pairs


def _is_int(v) -> bool:
    # bool is an int subclass, but stride=True is a bug, not a stride of 1
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def integer(op: str, name: str, v, minimum: int | None = None) -> int:
    """v as a Python int; TypeError unless it is an integer, ValueError below minimum."""
    if not _is_int(v):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")
    return v


def pair(op: str, name: str, v, minimum: int | None = None) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, normalised to a pair; each >= minimum."""
    if _is_int(v):
        h = w = int(v)
    elif isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or an (h, w) pair, got {v!r}")
        if not all(_is_int(e) for e in v):
            raise TypeError(f"{op}: {name} must hold ints, got {v!r}")
        h, w = int(v[0]), int(v[1])
    else:
        raise TypeError(f"{op}: {name} must be an int or an (h, w) pair of ints, "
                        f"got {type(v).__name__} {v!r}")
    if minimum is not None and (h < minimum or w < minimum):
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {_fmt_pair((h, w))}")
    return h, w


def real(op: str, name: str, v, low: float | None = None, high: float | None = None,
         high_open: bool = False) -> float:
    """v as a finite Python float in [low, high] (or [low, high) with high_open)."""
    if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a real number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{op}: {name} must be finite, got {v}")
    too_high = high is not None and (v >= high if high_open else v > high)
    if (low is not None and v < low) or too_high:
        interval = f"[{_num(low, '-inf')}, {_num(high, 'inf')}{')' if high_open else ']'}"
        raise ValueError(f"{op}: {name} must be in {interval}, got {v}")
    return v


def positive(op: str, name: str, v) -> float:
    """A finite real > 0 (batch norm's eps)."""
    v = real(op, name, v)
    if v <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {v}")
    return v


def probability(op: str, name: str, p) -> float:
    """A dropout probability: in [0, 1). p = 1 would drop everything and divide by zero."""
    return real(op, name, p, 0.0, 1.0, high_open=True)


def boolean(op: str, name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {type(v).__name__} {v!r}")
    return bool(v)


def axis(op: str, name: str, v, ndim: int) -> int:
    """An axis of an ndim-D array, -ndim..ndim-1 as NumPy and torch take them; returned >= 0."""
    v = integer(op, name, v)
    if not -ndim <= v < ndim:
        raise ValueError(f"{op}: {name} must be an axis of the {ndim}-D input, in [{-ndim}, {ndim - 1}], got {v}")
    return v % ndim


def choice(op: str, name: str, v, options) -> str:
    """One of a few named options (a device, a loss)."""
    if v not in options:
        raise ValueError(f"{op}: {name} must be one of {sorted(options)}, got {v!r}")
    return v


def layer_names(op: str, name: str, v, known) -> list:
    """Layers named by the user (Executor.activations/gradients): None or True for all of them,
    one name, or a list of names, each one of `known` (the model's, in forward order)."""
    if v is None or v is True:
        return list(known)
    asked = [v] if isinstance(v, str) else v
    if not isinstance(asked, (list, tuple)) or not asked or not all(isinstance(n, str) for n in asked):
        raise TypeError(f"{op}: {name} must be a layer's name or a non-empty list of names, got {v!r}")
    unknown = [n for n in asked if n not in known]
    if unknown:
        shown = ", ".join(known[:40]) + (f", ... ({len(known)} in all)" if len(known) > 40 else "")
        raise ValueError(f"{op}: {name}: no layer named {', '.join(map(repr, unknown))}; the model's layers "
                         f"are {shown}")
    return list(asked)


def int_list(op: str, name: str, v, length: int | None, minimum: int | None = None) -> tuple:
    """A tuple of ints (of a given length when length is not None), each >= minimum."""
    if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)) or not all(_is_int(e) for e in v):
        raise TypeError(f"{op}: {name} must be a list of ints, got {v!r}")
    if length is not None and len(v) != length:
        raise ValueError(f"{op}: {name} must have {length} entries, got {len(v)}: {tuple(v)}")
    if minimum is not None and any(e < minimum for e in v):
        raise ValueError(f"{op}: {name} must all be >= {minimum}, got {tuple(v)}")
    return tuple(int(e) for e in v)


def subset(op: str, name: str, v, allowed) -> tuple:
    """A non-empty, sorted selection without repeats from `allowed` (which convs to keep)."""
    chosen = int_list(op, name, v, None)
    allowed = tuple(allowed)
    if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= set(allowed):
        raise ValueError(f"{op}: {name} must be distinct values from {list(allowed)}, at least one, "
                         f"got {list(chosen)}")
    return tuple(sorted(chosen))


def input_size(op: str, hw, smallest: int) -> None:
    """An image of (h, w) big enough for a model whose maps must stay at least 1x1."""
    if hw[0] < smallest or hw[1] < smallest:
        raise ValueError(f"{op}: input {hw[0]}x{hw[1]} is too small: its convolutions and poolings need at "
                         f"least {smallest}x{smallest}")


def seed(op: str, v) -> int:
    """A dropout seed: an int in [0, 2**64) (the counter-based generator's key)."""
    v = integer(op, "seed", v, minimum=0)
    if v >= 2**64:
        raise ValueError(f"{op}: seed must be < 2**64, got {v}")
    return v


# ---------------------------------------------------------------------------------------
# arrays


def _device(a) -> str:
    return "the GPU (CuPy)" if is_cuda_array(a) else "the CPU (NumPy)"


def is_array(a) -> bool:
    """A NumPy ndarray or a CuPy ndarray (told apart by module, so CuPy need not import)."""
    return isinstance(a, np.ndarray) or (is_cuda_array(a) and hasattr(a, "shape")
                                         and hasattr(a, "dtype"))


def array(op: str, name: str, a, ndim=None, layout: str = ""):
    """Check that `a` is a NumPy or CuPy array of an allowed rank and not empty.

    ndim is an int or a tuple of allowed ranks; layout, e.g. "(N, C, H, W)", goes into
    the message. Returns `a` unchanged (see `usable` for the contiguous copy).
    """
    if not is_array(a):
        raise TypeError(f"{op}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            ranks = " or ".join(f"{r}-D" for r in allowed)
            layout = f" {layout}" if layout else ""
            raise ValueError(f"{op}: expected a {ranks} {name}{layout}, "
                             f"got shape {tuple(a.shape)}")
    if a.size == 0:
        raise ValueError(f"{op}: {name} must not be empty, got shape {tuple(a.shape)}")
    return a


def usable(a):
    """`a` as a kernel wants it: C-contiguous, native byte order (a copy only if needed)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.c_contiguous:
        a = _xp(a).ascontiguousarray(a)
    return a


def float_array(op: str, name: str, a, ndim=None, layout: str = ""):
    """A non-empty float32/float64 array of an allowed rank, made C-contiguous."""
    array(op, name, a, ndim, layout)
    if a.dtype.name not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64, got dtype {a.dtype.name}")
    return usable(a)


def int_array(op: str, name: str, a, ndim=None, layout: str = ""):
    """A non-empty array of an integer dtype (labels, pooling indices), C-contiguous."""
    array(op, name, a, ndim, layout)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must have an integer dtype, got {a.dtype.name}")
    return usable(a)


def inplace_array(op: str, name: str, a, shape: tuple, dtype):
    """An array the op writes into: exact shape and dtype, already C-contiguous."""
    array(op, name, a)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if a.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {np.dtype(dtype).name} like the input, "
                        f"got {a.dtype.name}")
    if not a.flags.c_contiguous or not a.dtype.isnative:
        raise ValueError(f"{op}: {name} is updated in place, so it must be a C-contiguous "
                         f"array in native byte order, got a non-contiguous view")
    if not a.flags.writeable:
        raise ValueError(f"{op}: {name} is updated in place, so it must be writeable")
    return a


def same_device(op: str, **arrays) -> None:
    """All given arrays (None skipped) live on one device: never NumPy mixed with CuPy."""
    named = [(n, a) for n, a in arrays.items() if a is not None]
    for n, a in named[1:]:
        if is_cuda_array(a) != is_cuda_array(named[0][1]):
            first, a0 = named[0]
            raise ValueError(f"{op}: expected all arrays on one device, got {first} on "
                             f"{_device(a0)} and {n} on {_device(a)}")


def same_dtype(op: str, **arrays) -> None:
    """All given float arrays (None skipped) share one dtype: no silent promotion."""
    named = [(n, a) for n, a in arrays.items() if a is not None]
    first, a0 = named[0]
    for n, a in named[1:]:
        if a.dtype != a0.dtype:
            raise TypeError(f"{op}: {n} has dtype {a.dtype.name} but {first} has "
                            f"{a0.dtype.name}; convert one of them explicitly")


def same_shape(op: str, name: str, shape, other_name: str, other_shape) -> None:
    """Two shapes that must be equal; no broadcasting."""
    if tuple(shape) != tuple(other_shape):
        raise ValueError(f"{op}: {name} has shape {tuple(shape)} but {other_name} has shape "
                         f"{tuple(other_shape)}; they must match exactly (no broadcasting)")


def exact_shape(op: str, name: str, shape, expected) -> None:
    """An array whose shape is fixed in advance (a batch for a planned graph)."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{op}: expected {name} of shape {tuple(expected)}, got {tuple(shape)}")


def class_labels(op: str, labels, classes: int) -> None:
    """Integer class labels in [0, classes), as a host array (read back once from a GPU)."""
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: cross_entropy labels must be integers, got {labels.dtype}")
    if labels.size:
        index_range(op, "label", labels, classes)


def index_range(op: str, what: str, a, high: int) -> None:
    """Every value of integer array `a` lies in [0, high); names the first offender."""
    lo, hi = int(a.min()), int(a.max())  # one read-back of two scalars on the GPU
    if lo < 0 or hi >= high:
        bad = hi if hi >= high else lo
        raise ValueError(f"{op}: {what} {bad} out of range [0, {high})")


def shape_tuple(op: str, name: str, s, ndim: int | tuple | None, layout: str = "") -> tuple:
    """A shape argument (e.g. x_shape of a backward): a tuple of positive ints of a rank
    (ndim an int, a tuple of allowed ranks, or None for any)."""
    if not isinstance(s, (tuple, list)) or not all(_is_int(e) for e in s):
        raise TypeError(f"{op}: {name} must be a tuple of ints, got {s!r}")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and len(s) not in allowed:
        ranks = " or ".join(str(r) for r in allowed)
        layout = f" {layout}" if layout else ""
        raise ValueError(f"{op}: {name} must have {ranks} entries{layout}, got {tuple(s)}")
    if any(e < 1 for e in s):
        raise ValueError(f"{op}: {name} must have positive entries, got {tuple(s)}")
    return tuple(int(e) for e in s)


# ---------------------------------------------------------------------------------------
# shape rules: usable with plain tuples at trace time


def conv2d_output_shape(op: str, x_shape, w_shape, stride, padding) -> tuple:
    """(N, C, H, W) conv (K, C, R, S) -> (N, K, P, Q), after checking everything that
    could make the convolution meaningless; stride and padding are ints or pairs."""
    x_shape = _rank(op, "input", x_shape, 4, "(N, C, H, W)")
    w_shape = _rank(op, "weight", w_shape, 4, "(K, C, R, S)")
    stride = pair(op, "stride", stride, minimum=1)
    padding = pair(op, "padding", padding, minimum=0)
    n, c, h, w = x_shape
    k, wc, r, s = w_shape
    if c != wc:
        raise ValueError(f"{op}: input has {c} channels but weight expects {wc}")
    if r < 1 or s < 1 or k < 1:
        raise ValueError(f"{op}: weight must have positive sizes, got shape {w_shape}")
    p, q = _window_output(op, (h, w), (r, s), stride, padding)
    return (n, k, p, q)


def pool2d_output_shape(op: str, x_shape, kernel, stride, padding) -> tuple:
    """(N, C, H, W) pooled by kernel/stride/padding -> (N, C, P, Q). Padding is at most
    half the kernel (as in torch): beyond that a window could hold only padding."""
    x_shape = _rank(op, "input", x_shape, 4, "(N, C, H, W)")
    kernel = pair(op, "kernel_size", kernel, minimum=1)
    stride = pair(op, "stride", stride, minimum=1)
    padding = pair(op, "padding", padding, minimum=0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding must be at most half the kernel (kernel "
                         f"{kernel[0]}x{kernel[1]} allows padding <= "
                         f"{_fmt_pair((kernel[0] // 2, kernel[1] // 2))}), "
                         f"got padding {_fmt_pair(padding)}")
    n, c, h, w = x_shape
    p, q = _window_output(op, (h, w), kernel, stride, padding)
    return (n, c, p, q)


def adaptive_pool2d_output_shape(op: str, x_shape, output_size) -> tuple:
    """(N, C, H, W) pooled to output_size (an int or an (oh, ow) pair, each >= 1) -> (N, C, oh, ow).
    Any H, W >= 1 will do: windows overlap, or repeat cells when the output is larger."""
    x_shape = _rank(op, "input", x_shape, 4, "(N, C, H, W)")
    oh, ow = pair(op, "output_size", output_size, minimum=1)
    return x_shape[:2] + (oh, ow)


def linear_output_shape(op: str, x_shape, w_shape) -> tuple:
    """(N, I) @ (O, I).T -> (N, O)."""
    x_shape = _rank(op, "input", x_shape, 2, "(N, in_features)")
    w_shape = _rank(op, "weight", w_shape, 2, "(out_features, in_features)")
    if x_shape[1] != w_shape[1]:
        raise ValueError(f"{op}: input has {x_shape[1]} features but weight expects "
                         f"{w_shape[1]} (weight shape {w_shape})")
    return (x_shape[0], w_shape[0])


def batch_norm_shape(op: str, x_shape, ndim: int, channels: int) -> tuple:
    """A batch norm layer's input: rank ndim ((N, C) or (N, C, H, W)) with its C channels."""
    layout = "(N, C, H, W)" if ndim == 4 else "(N, C)"
    x_shape = _rank(op, "input", x_shape, ndim, layout)
    if x_shape[1] != channels:
        raise ValueError(f"{op}: input has {x_shape[1]} channels but the layer expects {channels}")
    return x_shape


def equal_shapes(op: str, what: str, a_shape, b_shape) -> tuple:
    """Two operands (what: "operands", "predictions and targets") of exactly one shape."""
    if tuple(a_shape) != tuple(b_shape):
        raise ValueError(f"{op}: {what} must have equal shapes (no broadcasting), got {tuple(a_shape)} "
                         f"and {tuple(b_shape)}")
    return tuple(a_shape)


def logits_and_labels_shape(op: str, logits_shape, labels_shape) -> tuple:
    """logits (N, classes) and labels (N,)."""
    logits_shape = _rank(op, "logits", logits_shape, 2, "(N, classes)")
    if tuple(labels_shape) != (logits_shape[0],):
        raise ValueError(f"{op}: labels must have shape ({logits_shape[0]},), got {tuple(labels_shape)}")
    return logits_shape


def bias_shape(op: str, b_shape, channels: int, name: str = "bias") -> None:
    """A per-channel vector: shape exactly (channels,)."""
    if tuple(b_shape) != (channels,):
        raise ValueError(f"{op}: {name} must have shape ({channels},), got {tuple(b_shape)}")


def _rank(op, name, shape, ndim, layout) -> tuple:
    shape = tuple(int(e) for e in shape)
    if len(shape) != ndim:
        raise ValueError(f"{op}: expected a {ndim}-D {name} {layout}, got shape {shape}")
    return shape


def _window_output(op, hw, kernel, stride, padding) -> tuple[int, int]:
    """Floor-mode output size of a sliding window; ValueError when it is empty."""
    out = shapes.window_output_hw(hw[0], hw[1], kernel, stride, padding)
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{op}: kernel {kernel[0]}x{kernel[1]} with stride "
                         f"{_fmt_pair(stride)} and padding {_fmt_pair(padding)} on a "
                         f"{hw[0]}x{hw[1]} input gives an empty output ({out[0]}x{out[1]})")
    return out


def _fmt_pair(v) -> str:
    return str(v[0]) if v[0] == v[1] else f"({v[0]}, {v[1]})"


def _num(v, unbounded: str) -> str:
    return unbounded if v is None else f"{v:g}"


def _xp(a):
    if is_cuda_array(a):
        import cupy
        return cupy
    return np
