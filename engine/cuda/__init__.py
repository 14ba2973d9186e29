"""The CUDA backend: our own kernels (kernels/*.cu) on CuPy arrays, through two exposures.

* "ext": the pybind11 module engine._cuda_ext, every kernel compiled by nvcc at install
  time (setup.py) and launched by name;
* "rtc": the same kernels/*.cu compiled at run time by NVRTC through cupy.RawModule.

Both launch from the same descriptions (engine/cuda/launch.py: Kernel), declared by the
glue of each family in engine/cuda/<family>.py next to the ops that launch them; the glue
allocates outputs with CuPy and takes the exposure as its first argument, which
engine.backend binds. Nothing here needs CuPy or a GPU to import.

GEMM: the hand-written SGEMM by default; ENGINE_GEMM=cublas routes every GEMM (gemm,
conv2d, linear) through cupy.matmul / cuBLAS instead, to compare the two.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import warnings

from engine.cuda.launch import Ext, Kernel, Rtc

EXPOSURES = ("ext", "rtc")


def is_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "not available"
        return False


def extension_available() -> bool:
    """True when the compiled extension engine._cuda_ext imports (no GPU needed for that),
    holds the kernels the launch descriptions name (an extension built before kernels/ was
    edited does not: rebuild with pip install -e .) and, where CuPy sees a GPU, its own CUDA
    runtime sees it too. It links its runtime statically, so a driver too old for the
    toolkit it was built with shows up here (as no device). Where it is False the "auto"
    exposure is NVRTC."""
    try:
        ext = importlib.import_module("engine._cuda_ext")
    except ImportError:
        return False
    stale = stale_kernels(ext)
    if stale:
        warnings.warn(f"engine._cuda_ext was built from other kernels than kernels/*.cu ({', '.join(stale[:3])}"
                      f"{'...' if len(stale) > 3 else ''}): rebuild it with pip install -e . ; "
                      f"the GPU path uses NVRTC meanwhile", stacklevel=2)
        return False
    return not is_available() or ext.device_count() > 0


@functools.lru_cache(maxsize=None)
def descriptions() -> dict[str, Kernel]:
    """Every kernel's launch description, by kernel name: those the glue of every family
    declares, and the two of every elementwise row."""
    from engine.reference.activation import ELEMENTWISE
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            for kernel in (value.values() if isinstance(value, dict) else [value]):
                if isinstance(kernel, Kernel):
                    found[kernel.name] = kernel
    activation = importlib.import_module(f"{__name__}.activation")
    for row in ELEMENTWISE:
        found.update({kernel.name: kernel for kernel in activation.kernels(row)})
    return found


def stale_kernels(ext) -> list[str]:
    """Kernels the descriptions name that the extension lacks, or holds with other parameters."""
    held = ext.kernels()
    return sorted(name for name, kernel in descriptions().items() if held.get(name) != kernel.signature)


def exposure(name: str) -> Ext | Rtc:
    """The exposure the CUDA backend launches through: 'ext' or 'rtc'."""
    if name not in EXPOSURES:
        raise ValueError(f"engine.cuda: expected exposure 'ext' or 'rtc', got {name!r}")
    try:
        import cupy  # noqa: F401
    except ImportError as err:
        raise RuntimeError("engine.cuda: the CUDA backend needs CuPy: pip install 'engine[cuda12]' "
                           "(or [cuda13])") from err
    if name == "rtc":
        return Rtc()
    if not extension_available():
        raise RuntimeError("engine.cuda: the compiled extension engine._cuda_ext is not built "
                           "(reinstall with a CUDA toolkit, or use the 'rtc' exposure)")
    return Ext()
