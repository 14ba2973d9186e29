"""The CUDA backend: our own kernels (kernels/*.cu) on CuPy arrays, two exposures.

* "ext": the pybind11 module engine._cuda_ext, compiled by nvcc at install time
  (setup.py), launchers in csrc/*.cu;
* "rtc": the same kernels/*.cu compiled at run time by NVRTC through cupy.RawModule,
  launchers mirrored in engine/cuda/rtc.py.

Both share the glue in engine/cuda/<family>.py (checks, output allocation with CuPy,
shapes), which takes the launcher set as its first argument; make_backend binds it and
returns the namespace of every op in engine.backend.OPS. engine.backend._load is the
only caller that matters. Nothing here needs CuPy or a GPU to import.

GEMM: the hand-written SGEMM by default; ENGINE_GEMM=cublas routes every GEMM (gemm,
conv2d, linear) through cupy.matmul / cuBLAS instead, to compare the two.
"""
from __future__ import annotations

import functools
import importlib
import types

EXPOSURES = ("ext", "rtc")


def is_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "not available"
        return False


def extension_available() -> bool:
    """True when the compiled extension engine._cuda_ext imports (no GPU needed for that) and,
    where CuPy sees a GPU, the extension's own CUDA runtime sees it too. It links its runtime
    statically, so a driver too old for the toolkit it was built with shows up here (as
    no device) and the "auto" exposure falls back to NVRTC instead of failing at a launch."""
    try:
        ext = importlib.import_module("engine._cuda_ext")
    except ImportError:
        return False
    return not is_available() or ext.device_count() > 0


def launchers(exposure: str):
    """The launcher set of an exposure: engine.cuda.ext.ExtLaunchers or rtc.RtcLaunchers."""
    if exposure not in EXPOSURES:
        raise ValueError(f"engine.cuda: expected exposure 'ext' or 'rtc', got {exposure!r}")
    try:
        import cupy  # noqa: F401
    except ImportError as err:
        raise RuntimeError("engine.cuda: the CUDA backend needs CuPy: pip install 'engine[cuda12]' "
                           "(or [cuda13])") from err
    if exposure == "ext":
        if not extension_available():
            raise RuntimeError("engine.cuda: the compiled extension engine._cuda_ext is not built "
                               "(reinstall with a CUDA toolkit, or use the 'rtc' exposure)")
        from engine.cuda.ext import ExtLaunchers
        return ExtLaunchers()
    from engine.cuda.rtc import RtcLaunchers
    return RtcLaunchers()


def _bind(fn, launcher_set):
    op = functools.partial(fn, launcher_set)
    op.__name__, op.__doc__ = fn.__name__, fn.__doc__  # inspect.signature drops the bound L
    return op


def make_backend(exposure: str) -> types.SimpleNamespace:
    """Namespace of every op in engine.backend.OPS, launching through `exposure`."""
    from engine.backend import FAMILIES, OPS
    launcher_set = launchers(exposure)
    ops = {}
    for family in FAMILIES:
        module = importlib.import_module(f"engine.cuda.{family}")
        ops.update({op: _bind(getattr(module, op), launcher_set) for op in OPS if hasattr(module, op)})
    missing = sorted(set(OPS) - set(ops))
    if missing:
        raise NotImplementedError(f"backend 'cuda-{exposure}' lacks ops {missing}")
    return types.SimpleNamespace(name="cuda-" + exposure, **ops)
