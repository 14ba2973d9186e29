"""The one dispatch point: which implementation of an op runs.

Every op has a card (engine.ops.OPS), declared next to its float64 reference in
engine/reference/<family>.py; the card's reference gives the op's signature. Each op
family lives in files of the same name:

    engine/reference/<family>.py   NumPy float64: the spec (short, obviously correct) + cards
    engine/cpu/<family>.py         Numba kernels for float32 on the CPU
    kernels/<family>.cu            CUDA C++ kernels (one source, two exposures)
    engine/cuda/<family>.py        CuPy glue: outputs, launch descriptions, launches

A *backend* is a namespace with one function per op, named as the card and called with
the card's signature. Nothing outside this file chooses between backends: the functional
API, the layers and the executor ask ``backend_for(array)`` (or ``get_backend(name)``)
and call the op by name. Elementwise ops (rows of the table in
engine/reference/activation.py) run through each backend's generic
``elementwise_forward`` / ``elementwise_backward``, bound here to the row.

Backend-level ops trust their inputs: shapes, dtypes and hyperparameters have already
been checked by ``engine.functional`` (or by the executor at trace time), through
engine.checks. Conventions shared by all ops:

* layout NCHW, C-contiguous; weights of conv2d are (K, C, R, S), of linear (O, I);
* ``stride``, ``padding`` and ``kernel`` arrive as (h, w) pairs of ints;
* every op but the optimizer updates accepts ``out=`` (an array, or a tuple for several
  outputs, in the order of the return value) and writes into it instead of allocating;
  it returns what it wrote. The executor uses this to reuse buffers every step.
"""
from __future__ import annotations

import functools
import importlib
import os
import types

from engine.ops import OPS

# backend names: the float64 spec, Numba, and the CUDA kernels through one of their two
# exposures -- the pybind11 extension ("cuda-ext") or CuPy's NVRTC ("cuda-rtc"); "cuda"
# picks CUDA_EXPOSURE.
NAMES = ("reference", "numba", "cuda", "cuda-ext", "cuda-rtc")
_cache: dict[str, types.SimpleNamespace] = {}

CPU_BACKEND = os.environ.get("ENGINE_CPU_BACKEND", "numba")
# "auto": the compiled extension when it imports, else NVRTC through CuPy
CUDA_EXPOSURE = os.environ.get("ENGINE_CUDA_EXPOSURE", "auto")


def namespace(name: str, package: str, *bound) -> types.SimpleNamespace:
    """The ops of every card, implemented in package.<card.module> (engine.cpu, engine.cuda),
    with `bound` passed first to each (the CUDA exposure)."""
    ops = {}
    for card in OPS.values():
        module = importlib.import_module(f"{package}.{card.module}")
        if card.row is not None:
            fn = getattr(module, f"elementwise_{card.direction}")
            bound_row = bound + (card.row,)
        else:
            fn, bound_row = getattr(module, card.name, None), bound
        if fn is None:
            raise NotImplementedError(f"backend {name!r} lacks {card.name} ({package}.{card.module})")
        ops[card.name] = _bind(fn, bound_row, card) if bound_row else fn
    return types.SimpleNamespace(name=name, **ops)


def _bind(fn, bound: tuple, card):
    op = functools.partial(fn, *bound)
    op.__name__, op.__doc__, op.__signature__ = card.name, fn.__doc__, card.signature
    return op


def _load(name: str) -> types.SimpleNamespace:
    if name == "reference":
        return types.SimpleNamespace(name=name, **{card.name: card.reference for card in OPS.values()})
    if name == "numba":
        return namespace(name, "engine.cpu")
    from engine import cuda  # CuPy is imported only when a CUDA backend is asked for
    exposure = name[5:] or CUDA_EXPOSURE
    if exposure == "auto":
        exposure = "ext" if cuda.extension_available() else "rtc"
    return namespace(f"cuda-{exposure}", "engine.cuda", cuda.exposure(exposure))


def get_backend(name: str) -> types.SimpleNamespace:
    """Backend by name: 'reference', 'numba', 'cuda', 'cuda-ext' or 'cuda-rtc'."""
    if name not in NAMES:
        raise ValueError(f"get_backend: expected one of {sorted(NAMES)}, got {name!r}")
    if name not in _cache:
        _cache[name] = _load(name)
    return _cache[name]


def is_cuda_array(a) -> bool:
    return type(a).__module__.startswith("cupy")


def backend_for(*arrays) -> types.SimpleNamespace:
    """The backend for arrays: CuPy arrays run on 'cuda'; NumPy float32 on CPU_BACKEND
    (Numba); NumPy float64 on the float64 'reference' (the fast kernels are float32 only)."""
    arrays = [a for a in arrays if a is not None and hasattr(a, "shape")]
    kinds = {is_cuda_array(a) for a in arrays}
    if len(kinds) > 1:
        raise ValueError("backend_for: expected all arrays on one device, got a mix of NumPy and CuPy arrays")
    if kinds == {True}:
        return get_backend("cuda")
    if any(a.dtype == "float64" for a in arrays):
        return get_backend("reference")
    return get_backend(CPU_BACKEND)


def array_module(a):
    """numpy or cupy, whichever holds `a`."""
    if is_cuda_array(a):
        import cupy
        return cupy
    import numpy
    return numpy
