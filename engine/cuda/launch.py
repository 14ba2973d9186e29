"""Launching our kernels: one description per kernel, two exposures that launch from it.

A ``Kernel`` says how one kernel of kernels/*.cu is launched: its file and name, its
parameters as the kernel declares them, and how its grid (and block) follow from its
arguments. The glue in engine/cuda/<family>.py declares the kernels it launches and calls
``L.launch(KERNEL, *args)``, where L is the exposure its backend was made with:

* ``Rtc``: CuPy compiles kernels/<file> with NVRTC at run time (cupy.RawModule) and
  launches the kernel by name on CuPy's current stream;
* ``Ext``: engine._cuda_ext, built by nvcc at install time (setup.py), holds every kernel
  of kernels/*.cu and launches it by name on the same stream (bindings/module.cpp); it
  refuses a description whose parameter types differ from the kernel's own.

Grids and blocks are computed here once, for both: the two exposures launch the same
kernel with the same grid, so their results agree bit for bit.

    RELU = Kernel("activation.cu", "relu_forward_kernel", "const float* x, float* y, i64 n",
                  grid=lambda a: grid_1d(a.n))
    L.launch(RELU, x, y, x.size)

Where the .cu files are found (kernels_dir): $ENGINE_KERNELS_DIR, else engine/cuda/kernels/
(package data in a wheel or regular install, copied there by setup.py's build_py), else
the checkout's kernels/ (editable install, source tree). Nothing here needs CuPy to import.
"""
from __future__ import annotations

import collections
import functools
import glob
import hashlib
import os
import re

import numpy as np

# Block size of every kernel (ENGINE_BLOCK and ENGINE_REDUCE_THREADS in kernels/common.cuh;
# tests/test_cuda_build.py checks that they agree).
BLOCK = 256
# Grid-stride loops get at most this many blocks; any grid is correct for them. The tests
# lower it when the kernels run on the CPU emulation of CUDA, where a block is OS threads.
GRID_STRIDE_CAP = 65536

_HERE = os.path.dirname(os.path.abspath(__file__))

# Options for NVRTC, here and in tests/test_cuda_build.py (which compiles every file with
# them). CuPy adds the target architecture itself. No fast math: the same numerics as the
# nvcc build, so both exposures agree.
RTC_BASE_OPTIONS = ("-std=c++17",)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grid_1d(n: int) -> int:
    """Blocks for a grid-stride loop over n elements: enough to fill any current GPU, capped
    so that huge tensors loop instead of launching millions of blocks."""
    return max(1, min(cdiv(n, BLOCK), GRID_STRIDE_CAP))


# ---------------------------------------------------------------------------------------
# The description.

# parameter type -> the code the extension's registry gives it (csrc/registry.h)
_TYPE_CODES = {"int": "i", "i64": "l", "long long": "l", "unsigned long long": "Q", "float": "f",
               "double": "d"}
# code -> the NumPy scalar CuPy must be handed (it would pass a Python int as long long)
_RTC_SCALARS = {"i": np.int32, "l": np.int64, "Q": np.uint64, "f": np.float32, "d": np.float64}
_NULL = np.uint64(0)


class Kernel:
    """How to launch one kernel: file and name in kernels/, the parameters as the kernel
    declares them ("const float* x, float* y, i64 n"), and grid(a) -> blocks (an int, or an
    (x, y, z) tuple), where a holds the launch's arguments by parameter name."""

    def __init__(self, file: str, name: str, params: str, grid, block: int = BLOCK):
        self.file, self.name, self.grid, self.block = file, name, grid, block
        names, codes = [], []
        for param in params.split(","):
            match = re.fullmatch(r"\s*(.+?)\s*(\w+)\s*", param)
            ctype = " ".join(match.group(1).replace("const", "").split())
            names.append(match.group(2))
            codes.append("p" if ctype.endswith("*") else _TYPE_CODES[ctype])
        self.names, self.signature = tuple(names), "".join(codes)
        self._arguments = collections.namedtuple(f"{name}_arguments", names)

    def launch_shape(self, args) -> tuple[tuple, tuple]:
        """(grid, block) as 3-tuples for these arguments."""
        grid = self.grid(self._arguments(*args))
        grid = tuple(grid) if isinstance(grid, tuple) else (grid,)
        return grid + (1,) * (3 - len(grid)), (self.block, 1, 1)

    def __repr__(self):
        return f"Kernel({self.file}: {self.name}({', '.join(self.names)}))"


# ---------------------------------------------------------------------------------------
# The exposures.

@functools.lru_cache(maxsize=None)
def cupy():
    import cupy as cp  # the one place engine.cuda imports CuPy
    return cp


def stream_ptr() -> int:
    """Handle of CuPy's current stream: every launch goes there, in order."""
    return cupy().cuda.get_current_stream().ptr


class Rtc:
    """kernels/*.cu compiled at run time by NVRTC through cupy.RawModule."""
    name = "rtc"

    def launch(self, kernel: Kernel, *args) -> None:
        grid, block = kernel.launch_shape(args)
        values = tuple((_NULL if a is None else a) if code == "p" else _RTC_SCALARS[code](a)
                       for code, a in zip(kernel.signature, args))
        _function(kernel.file, kernel.name)(grid, block, values)


class Ext:
    """engine._cuda_ext: the kernels compiled by nvcc into the pybind11 module."""
    name = "ext"

    def __init__(self, module=None):
        if module is None:
            from engine import _cuda_ext as module
        self.module = module

    def launch(self, kernel: Kernel, *args) -> None:
        grid, block = kernel.launch_shape(args)
        values = [(0 if a is None else a.data.ptr) if code == "p" else a for code, a in zip(kernel.signature, args)]
        self.module.launch(kernel.name, kernel.signature, grid, block, stream_ptr(), values)


def kernels_dir() -> str:
    """The directory holding kernels/*.cu (see the module docstring for the search order)."""
    candidates = [os.environ.get("ENGINE_KERNELS_DIR"), os.path.join(_HERE, "kernels"),
                  os.path.join(os.path.dirname(os.path.dirname(_HERE)), "kernels")]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "common.cuh")):
            return path
    raise FileNotFoundError("engine.cuda: kernel sources not found; looked in "
                            + ", ".join(p for p in candidates if p) + " (set ENGINE_KERNELS_DIR)")


@functools.lru_cache(maxsize=None)
def rtc_options() -> tuple[str, ...]:
    """RTC_BASE_OPTIONS plus the include path of common.cuh. CuPy's compile cache is keyed
    on the source and the options but not on included headers, so a digest of the headers
    is passed as a macro: editing common.cuh recompiles every kernel file."""
    directory = kernels_dir()
    digest = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(directory, "*.cuh"))):
        with open(path, "rb") as f:
            digest.update(f.read())
    return RTC_BASE_OPTIONS + (f"-I{directory}", f"-DENGINE_HEADERS_SHA1={digest.hexdigest()[:16]}")


@functools.lru_cache(maxsize=None)
def _module(filename: str):
    with open(os.path.join(kernels_dir(), filename)) as f:
        source = f.read()
    return cupy().RawModule(code=source, options=rtc_options())


@functools.lru_cache(maxsize=None)
def _function(filename: str, name: str):
    return _module(filename).get_function(name)
