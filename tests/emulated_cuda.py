"""The CUDA path without a GPU: the real kernels, launched through both real exposures.

build_emulated_extension() compiles kernels/*.cu and bindings/module.cpp with the host
compiler against csrc/emulate_cuda.h (blocks in turn, the threads of a block as OS threads
with real barriers for __syncthreads and warp shuffles) into a stand-in for engine._cuda_ext:
the same kernels, registered by ENGINE_EXPORT_KERNEL and launched by name by the same
module code as the nvcc build. emulated_cupy() stands in for CuPy: NumPy arrays wearing
CuPy's device attributes, and a RawModule that, instead of NVRTC, finds the kernel in the
emulated extension -- after checking that the kernel is defined in the file the launch
description names and that every argument has the NumPy scalar type of the kernel's
parameter, which is what CuPy would pass to the real kernel. With these, backends() makes
the engine's CUDA backend for both exposures, glue and launch descriptions unchanged.

Used by tests/test_cuda_emulated.py, and by the AddressSanitizer run there.
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DEF = re.compile(r'extern "C" __global__ void(?: __launch_bounds__\(\w+\))? (\w+)\(')
STAMPED = {re.compile(r"^GEMM_KERNEL\((\w+),", re.M): "{}",
           re.compile(r"^ELEMENTWISE_KERNELS\((\w+)\)", re.M): "{0}_forward_kernel {0}_backward_kernel"}


def kernel_names(text: str) -> list[str]:
    """extern "C" kernels defined in a kernels/*.cu text, including those stamped out by macros."""
    # macro bodies (lines continued with a backslash) define no kernel themselves
    body = "\n".join(line for line in text.splitlines() if not line.rstrip().endswith("\\"))
    names = KERNEL_DEF.findall(body)
    for pattern, template in STAMPED.items():
        names += [n for m in pattern.findall(body) for n in template.format(m).split()]
    return names


class BuildUnavailable(Exception):
    """No host compiler with what the emulation needs: the caller skips, with this reason."""


def build_emulated_extension(work: Path, extra_flags=()) -> Path:
    """g++ build of kernels/*.cu + bindings/module.cpp against csrc/emulate_cuda.h; the module path."""
    import pybind11
    gxx = shutil.which(os.environ.get("CXX", "g++"))
    if gxx is None:
        raise BuildUnavailable("no host C++ compiler (g++) to build the CPU emulation")
    probe = work / "probe.cpp"
    probe.write_text("#include <barrier>\n#include <atomic>\nint main() { float f = 0; "
                     "std::atomic_ref<float>(f).fetch_add(1.0f); std::barrier<> b(1); b.arrive_and_wait(); }\n")
    if subprocess.run([gxx, "-std=c++20", str(probe), "-o", str(work / "probe")], capture_output=True).returncode:
        raise BuildUnavailable(f"{gxx} lacks C++20 <barrier> / atomic_ref, which the emulation needs")
    (work / "include").mkdir()
    shutil.copy(ROOT / "csrc" / "emulate_cuda.h", work / "include" / "cuda_runtime.h")
    flags = ["-std=c++20", "-O1", "-fPIC", "-w", "-DENGINE_EMULATED_CUDA", "-include", "cuda_runtime.h",
             f"-I{work / 'include'}", *extra_flags]
    kernel_flags = ["-x", "c++", "-include", str(ROOT / "csrc" / "registry.h")]
    module_flags = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    jobs = [(src, kernel_flags) for src in sorted((ROOT / "kernels").glob("*.cu"))]
    jobs.append((ROOT / "bindings" / "module.cpp", module_flags))

    def compile_one(job):
        src, own = job
        obj = work / (src.name + ".o")
        result = subprocess.run([gxx, *flags, *own, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert result.returncode == 0, f"g++ failed on the emulated {src.name}:\n{result.stderr[-3000:]}"
        return str(obj)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, jobs))
    module = work / ("_cuda_ext" + sysconfig.get_config_var("EXT_SUFFIX"))
    result = subprocess.run([gxx, "-shared", *extra_flags, *objects, "-o", str(module), "-lpthread"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return module


def load_module(path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("_cuda_ext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- CuPy, emulated

class EmulatedArray(np.ndarray):
    """A NumPy array wearing CuPy's device attributes (its module name says "cupy", so the
    engine's checks and dispatch take it for a device array)."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def set(self, host):  # cupy.ndarray.set: host -> device copy
        np.copyto(self, host)

    def get(self):  # cupy.ndarray.get: device -> host copy
        return np.array(self)


EmulatedArray.__module__ = "cupy._emulated"

# the NumPy scalar type CuPy must be handed for each parameter type code (csrc/registry.h)
_SCALARS = {"i": np.int32, "l": np.int64, "Q": np.uint64, "f": np.float32, "d": np.float64}


class EmulatedRawModule:
    """cupy.RawModule over one kernels/*.cu source, its kernels run by the emulated extension."""
    extension = None  # set by emulated_cupy()

    def __init__(self, code: str, options=()):
        self.names = set(kernel_names(code))
        self.options = options

    def get_function(self, name: str):
        assert name in self.names, f"{name} is not defined in the file its launch description names"
        signature = self.extension.kernels()[name]

        def run(grid, block, args):
            assert len(args) == len(signature), f"{name}: {len(args)} arguments for {len(signature)} parameters"
            values = []
            for i, (code, a) in enumerate(zip(signature, args)):
                if code == "p":
                    assert isinstance(a, EmulatedArray) or (type(a) is np.uint64 and a == 0), \
                        f"{name}: argument {i} should be a device array or a null pointer, got {type(a).__name__}"
                    values.append(int(a) if type(a) is np.uint64 else a.data.ptr)
                else:
                    assert type(a) is _SCALARS[code], \
                        f"{name}: argument {i} is {type(a).__name__}, the kernel takes {_SCALARS[code].__name__}"
                    values.append(a.item())
            self.extension.launch(name, signature, grid, block, 0, values)
        return run


def emulated_cupy(extension=None) -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.ndarray = EmulatedArray
    wrap = (lambda f: lambda *a, **k: np.asarray(f(*a, **k)).view(EmulatedArray))
    for name in ("empty", "full", "empty_like", "ascontiguousarray", "asarray", "zeros", "zeros_like", "tensordot"):
        setattr(cp, name, wrap(getattr(np, name)))
    cp.matmul = lambda a, b, out=None: np.matmul(a, b, out=out)
    cp.maximum = lambda a, b, out=None: np.maximum(a, b, out=out)
    cp.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=0),
                                    get_current_stream=lambda: types.SimpleNamespace(ptr=0),
                                    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    cp.RawModule = type("RawModule", (EmulatedRawModule,), {"extension": extension})
    return cp


def install(monkeypatch, extension) -> types.ModuleType:
    """Make `import cupy` give the emulation, with fresh caches in engine.cuda.launch."""
    import sys
    from engine.cuda import launch
    cp = emulated_cupy(extension)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(launch, "GRID_STRIDE_CAP", 4)  # every emulated block is OS threads
    for cached in (launch.cupy, launch._module, launch._function):
        cached.cache_clear()
    return cp


def backends(extension) -> dict[str, types.SimpleNamespace]:
    """exposure -> the engine's CUDA backend launching through it: 'ext' through the emulated
    extension's launch(), 'rtc' through the emulated RawModule."""
    from engine.backend import namespace
    from engine.cuda.launch import Ext, Rtc
    return {"ext": namespace("cuda-ext-emulated", "engine.cuda", Ext(extension)),
            "rtc": namespace("cuda-rtc-emulated", "engine.cuda", Rtc())}


def run_cases_on(backend, cases, repeat_check=True, out=False) -> list[str]:
    """Failures of each case against the reference (and, optionally, of a second run vs the
    first, and of a run into garbage-filled out= buffers)."""
    import sys
    from engine import validate
    cp = sys.modules["cupy"]
    failures = []
    for case in cases:
        expected = validate.reference_outputs(case)
        first = validate.call(backend, case, validate.to_device(case.inputs(), cp))
        ok, abs_err, rel_err, name = validate.compare(case, first, expected)
        violation = validate.shape_rule_violation(case, case.inputs(), first)
        if not ok or violation:
            failures.append(f"{case.op} {case.label}: {name or violation} abs {abs_err:.3g} rel {rel_err:.3g}")
        if repeat_check:
            second = validate.call(backend, case, validate.to_device(case.inputs(), cp))
            if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(first, second)):
                failures.append(f"{case.op} {case.label}: two runs differ")
        if out and case.card.returns and "out" in case.card.signature.parameters:
            garbage = validate.garbage_like(first[:case.card.returns], cp)
            again = validate.call(backend, case, validate.to_device(case.inputs(), cp), out=garbage)
            if not validate.compare(case, again, expected)[0]:
                failures.append(f"{case.op} {case.label}: wrong with out=")
    return failures
