"""The CUDA backend as far as a machine without a GPU can check it (CI runs this).

* every kernels/*.cu and csrc/*.cu compiles with nvcc for sm_80 and sm_90, warnings as
  errors (skipped with a reason when nvcc is absent);
* every kernels/*.cu compiles with NVRTC, with exactly the options the rtc exposure
  uses (libnvrtc loaded with ctypes from the CUDA toolkit or the nvidia-cuda-nvrtc wheel;
  skipped when absent);
* the kernels, the C++ launchers and the Python rtc launchers name each other
  consistently (every kernel is launched by both exposures);
* the built extension imports, exposes the launchers with the rtc exposure's names and
  arguments, and rejects bad arrays with TypeError/ValueError before any CUDA call
  (skipped when the extension was not built);
* engine.cuda imports without CuPy, and without CuPy the backend says so clearly.

What runs the kernels (results against the reference, ext vs rtc) is tests/test_cuda_ops.py,
on a GPU.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import glob
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FILES = sorted((ROOT / "kernels").glob("*.cu"))
CSRC_FILES = sorted((ROOT / "csrc").glob("*.cu"))
ARCHS = (80, 90)
KERNEL_DEF = re.compile(r'extern "C" __global__ void(?: __launch_bounds__\(\w+\))? (\w+)\(')
GEMM_MACRO = re.compile(r"^GEMM_KERNEL\((\w+),", re.M)


def kernel_names(path: Path) -> list[str]:
    """extern "C" kernels defined in a file, including those stamped out by GEMM_KERNEL(...)."""
    # macro bodies (lines continued with a backslash) define no kernel themselves
    text = "\n".join(line for line in path.read_text().splitlines() if not line.rstrip().endswith("\\"))
    return KERNEL_DEF.findall(text) + GEMM_MACRO.findall(text)


# ---------------------------------------------------------------------------- nvcc

def find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    return "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None


def nvcc_command(nvcc: str, source: Path, out_dir: str) -> list[str]:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    common = [nvcc, "-std=c++17", "-Werror", "all-warnings", *gencode]
    target = os.path.join(out_dir, f"{source.parent.name}_{source.stem}")
    if source.parent.name == "kernels":  # device code only: a fatbin, no host pass needed
        return [*common, "-fatbin", str(source), "-o", target + ".fatbin"]
    return [*common, "-Xcompiler", "-Wall,-Wextra,-Werror,-fPIC", "-c", str(source), "-o", target + ".o"]


@pytest.fixture(scope="module")
def nvcc_results():
    """Compile every file once, in parallel (one nvcc per core): path -> (returncode, output)."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit: set CUDA_HOME or put nvcc on PATH)")
    with tempfile.TemporaryDirectory() as out_dir, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        def run(source):
            result = subprocess.run(nvcc_command(nvcc, source, out_dir), capture_output=True, text=True)
            return source, (result.returncode, result.stdout + result.stderr)
        return dict(pool.map(run, KERNEL_FILES + CSRC_FILES))


def test_there_is_one_kernel_file_per_family_and_a_launcher_file_for_each():
    assert [p.name for p in KERNEL_FILES] == [p.name for p in CSRC_FILES]
    expected = {"im2col.cu", "gemm.cu", "pool.cu", "batchnorm.cu", "activation.cu", "dropout.cu",
                "softmax_xent.cu", "optim.cu"}
    assert {p.name for p in KERNEL_FILES} == expected


@pytest.mark.parametrize("source", KERNEL_FILES + CSRC_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_compiles_with_nvcc_without_warnings(nvcc_results, source):
    returncode, output = nvcc_results[source]
    assert returncode == 0, f"nvcc failed on {source.relative_to(ROOT)}:\n{output}"
    assert "warning" not in output.lower(), f"nvcc warned on {source.relative_to(ROOT)}:\n{output}"


def test_csrc_includes_the_one_copy_of_its_kernels():
    for launcher in CSRC_FILES:
        assert f'#include "../kernels/{launcher.name}"' in launcher.read_text(), launcher.name
    assert not list((ROOT / "csrc").glob("*.cuh")), "kernels live in kernels/ only"


def test_kernel_sources_need_no_host_headers():
    """NVRTC has no host standard library: kernels/ includes only its own headers."""
    for path in KERNEL_FILES + sorted((ROOT / "kernels").glob("*.cuh")):
        for include in re.findall(r"#include\s*([<\"].*?[>\"])", path.read_text()):
            assert include == '"common.cuh"', f"{path.name} includes {include}"


def test_every_kernel_follows_the_naming_rule_and_opens_with_a_comment():
    for path in KERNEL_FILES:
        assert path.read_text().startswith(f"// {path.name} -- "), f"{path.name} lacks its opening comment"
        names = kernel_names(path)
        assert names, f"{path.name} defines no kernel"
        for name in names:
            assert name.endswith("_kernel"), f"{path.name}: kernel {name} is not named <op>_<dir>_kernel"


def test_every_kernel_is_launched_by_both_exposures():
    csrc = {p.name: p.read_text() for p in CSRC_FILES}
    rtc = (ROOT / "engine" / "cuda" / "rtc.py").read_text()
    for path in KERNEL_FILES:
        for name in kernel_names(path):
            if name.startswith("gemm_") and name != "gemm_reduce_splits_kernel":
                # chosen by name at run time: gemm_<ta><tb>_<tile>x<tile>_kernel
                assert f'"{name}"' in csrc[path.name], f"csrc/{path.name} never launches {name}"
                assert "gemm_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}_{tile}x{tile}_kernel" in rtc
                continue
            # ELEMENTWISE_LAUNCH(kernel, ...) launches and checks in one (csrc/activation.cu)
            checked_launch = (f"{name}<<<" in csrc[path.name] and f'CUDA_CHECK_LAUNCH("{name}")' in csrc[path.name]
                              or f"ELEMENTWISE_LAUNCH({name}," in csrc[path.name])
            assert checked_launch, f"csrc/{path.name} never launches {name}, or does not check the launch"
            assert f'"{path.name}", "{name}"' in rtc or f'_elementwise("{name}"' in rtc, \
                f"engine/cuda/rtc.py never launches {name}"


def test_every_cuda_runtime_call_in_csrc_is_checked():
    for path in CSRC_FILES:
        for line in path.read_text().splitlines():
            call = re.search(r"\b(cuda[A-Z]\w*)\(", line)
            if call and call.group(1) not in ("cudaGetLastError", "cudaGetErrorName", "cudaGetErrorString"):
                assert "CUDA_CHECK(" in line, f"{path.name}: unchecked {call.group(1)}: {line.strip()}"


# ---------------------------------------------------------------------------- NVRTC

def find_libnvrtc() -> str | None:
    """libnvrtc.so from $ENGINE_NVRTC_LIBRARY, the CUDA toolkit, or the nvidia-cuda-nvrtc wheel."""
    if os.environ.get("ENGINE_NVRTC_LIBRARY"):
        return os.environ["ENGINE_NVRTC_LIBRARY"]
    dirs = [os.path.join(os.environ[v], "lib64") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    dirs += ["/usr/local/cuda/lib64"]
    for entry in sys.path:  # pip wheels: nvidia/cu13/lib, nvidia/cuda_nvrtc/lib
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "lib"))
    for directory in dirs:
        found = sorted(glob.glob(os.path.join(directory, "libnvrtc.so*")))
        found = [f for f in found if "builtins" not in f and ".alt." not in f]
        if found:
            return found[0]
    return None


@pytest.fixture(scope="module")
def nvrtc():
    path = find_libnvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (CUDA toolkit lib64 or pip nvidia-cuda-nvrtc; "
                    "or set ENGINE_NVRTC_LIBRARY)")
    # libnvrtc dlopens its builtins by soname: load them first from the same directory
    for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*"))):
        if ".alt." not in builtins:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            break
    return ctypes.CDLL(path)


def nvrtc_compile(lib, source: Path, options: list[str]) -> tuple[int, str]:
    prog = ctypes.c_void_p()
    result = lib.nvrtcCreateProgram(ctypes.byref(prog), source.read_bytes(), source.name.encode(), 0, None, None)
    assert result == 0, f"nvrtcCreateProgram failed ({result})"
    try:
        argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        result = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        return result, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", KERNEL_FILES, ids=lambda p: p.name)
def test_compiles_with_nvrtc_using_the_rtc_options(nvrtc, source, arch):
    from engine.cuda.rtc import rtc_options  # the options cupy.RawModule gets (CuPy adds -arch)
    result, log = nvrtc_compile(nvrtc, source, [*rtc_options(), f"--gpu-architecture=compute_{arch}"])
    assert result == 0, f"NVRTC failed on {source.name} (result {result}):\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warned on {source.name}:\n{log}"


def test_rtc_finds_the_kernel_sources_of_this_checkout():
    from engine.cuda.rtc import kernels_dir, rtc_options
    assert Path(kernels_dir()) == ROOT / "kernels"
    assert f"-I{ROOT / 'kernels'}" in rtc_options()


def test_rtc_kernel_dir_can_be_overridden(monkeypatch, tmp_path):
    from engine.cuda import rtc
    (tmp_path / "common.cuh").write_text("// empty\n")
    monkeypatch.setenv("ENGINE_KERNELS_DIR", str(tmp_path))
    assert rtc.kernels_dir() == str(tmp_path)
    monkeypatch.setenv("ENGINE_KERNELS_DIR", str(tmp_path / "missing"))
    assert Path(rtc.kernels_dir()) == ROOT / "kernels"  # falls through to the checkout


# ---------------------------------------------------------------------------- the extension

@pytest.fixture(scope="module")
def ext():
    try:
        return importlib.import_module("engine._cuda_ext")
    except ImportError as err:
        pytest.skip(f"engine._cuda_ext was not built (no CUDA toolkit at install time?): {err}")


def pybind_parameters(fn) -> list[str]:
    """Parameter names from a pybind11 docstring's first line: name(a: T, b: T = 0) -> R."""
    head = fn.__doc__.splitlines()[0]
    inside = head[head.index("(") + 1:head.rindex(")")]
    return re.findall(r"(?:^|, )(\w+):", inside)


def test_extension_exposes_the_launchers_of_the_rtc_exposure(ext):
    from engine.cuda.rtc import LAUNCHERS, RtcLaunchers
    exported = {name for name in dir(ext) if not name.startswith("_")} - {"device_count"}
    assert exported == set(LAUNCHERS)
    for name in LAUNCHERS:
        rtc_params = list(inspect.signature(getattr(RtcLaunchers, name)).parameters)[1:]  # minus self
        expected = rtc_params if name == "mse_partial_blocks" else rtc_params + ["stream"]
        assert pybind_parameters(getattr(ext, name)) == expected, name


def test_extension_and_rtc_agree_on_the_mse_workspace_rule(ext):
    from engine.cuda.common import mse_partial_blocks
    for n in (1, 255, 1024, 1025, 10**5, 10**6, 10**8):
        assert ext.mse_partial_blocks(n) == mse_partial_blocks(n)


def test_extension_imported_without_touching_cuda():
    """A fresh interpreter imports the module with no GPU and no libcudart on the path."""
    code = "import engine._cuda_ext as e; print(len([n for n in dir(e) if not n.startswith('_')]))"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if "No module named 'engine._cuda_ext'" in result.stderr:
        pytest.skip("engine._cuda_ext was not built")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 30


class FakeDeviceArray:
    """Something that looks like a CuPy array through __cuda_array_interface__ only."""

    def __init__(self, shape, typestr="<f4", ptr=1 << 20, strides=None, readonly=False):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (ptr, readonly),
                                         "strides": strides, "version": 3}


BAD_CALLS = [
    # (launcher, args, exception, message fragment)
    ("relu_forward", lambda np: (np.zeros(3, np.float32), FakeDeviceArray((3,))), TypeError,
     "relu_forward: x must be a CUDA array"),
    ("relu_forward", lambda np: (FakeDeviceArray((3,), "<f8"), FakeDeviceArray((3,))), TypeError,
     "relu_forward: x must be float32, got float64"),
    ("relu_forward", lambda np: (FakeDeviceArray((3, 4), strides=(4, 12)), FakeDeviceArray((3, 4))), ValueError,
     "must be C-contiguous"),
    ("relu_backward", lambda np: (FakeDeviceArray((3,)), FakeDeviceArray((4,)), FakeDeviceArray((3,))), ValueError,
     "relu_backward: expected y of shape (3,), got (4,)"),
    ("relu_forward", lambda np: (FakeDeviceArray((3,)), FakeDeviceArray((3,), readonly=True)), ValueError,
     "read-only"),
    ("gemm", lambda np: (FakeDeviceArray((3, 4)), FakeDeviceArray((5, 6)), FakeDeviceArray((3, 6)), False, False,
                         None, -1, False), ValueError, "gemm: inner dimensions differ"),
    ("gemm", lambda np: (FakeDeviceArray((3, 4)), FakeDeviceArray((4, 6)), FakeDeviceArray((3, 6)), False, False,
                         FakeDeviceArray((6,)), 0, False), ValueError, "gemm: expected bias of shape (3,)"),
    ("im2col", lambda np: (FakeDeviceArray((2, 3, 8, 8)), FakeDeviceArray((2, 27, 35)), 3, 3, 1, 1, 0, 0),
     ValueError, "im2col: expected cols of shape (2, 27, 36)"),
    ("max_pool2d_forward", lambda np: (FakeDeviceArray((2, 3, 8, 8)), FakeDeviceArray((2, 3, 4, 4)),
                                       FakeDeviceArray((2, 3, 4, 4), "<f4"), 2, 2, 2, 2, 0, 0),
     TypeError, "max_pool2d_forward: argmax must be int32, got float32"),
    ("softmax_xent_forward", lambda np: (FakeDeviceArray((4, 10)), FakeDeviceArray((4,), "<i4"),
                                         FakeDeviceArray(()), FakeDeviceArray((4, 10)), FakeDeviceArray((4,))),
     TypeError, "softmax_xent_forward: labels must be int64, got int32"),
    ("dropout_forward", lambda np: (FakeDeviceArray((5,)), FakeDeviceArray((5,)), FakeDeviceArray((5,), "|u1"), 1,
                                    1.0), ValueError, "dropout_forward: expected 0 <= p < 1"),
    ("batch_norm_forward", lambda np: (FakeDeviceArray((4, 3)), FakeDeviceArray((3,)), FakeDeviceArray((3,)),
                                       FakeDeviceArray((2,)), FakeDeviceArray((3,)), FakeDeviceArray((4, 3)), False),
     ValueError, "batch_norm_forward: expected gamma of shape (3,), got (2,)"),
    ("adam_update", lambda np: (FakeDeviceArray((5,)), FakeDeviceArray((5,)), FakeDeviceArray((5,)),
                                FakeDeviceArray((5,)), 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, False),
     ValueError, "adam_update: expected step >= 1"),
]


@pytest.mark.parametrize("name, make_args, exception, message", BAD_CALLS,
                         ids=[f"{c[0]}-{c[3][:30]}" for c in BAD_CALLS])
def test_extension_rejects_bad_arrays_before_any_launch(ext, name, make_args, exception, message):
    import numpy
    with pytest.raises(exception) as info:
        getattr(ext, name)(*make_args(numpy))
    assert message in str(info.value)


def test_failed_launch_raises_with_kernel_name_file_and_line(ext):
    """Without a GPU the launch itself fails: CUDA_CHECK reports which kernel and where."""
    if ext.device_count() > 0:
        pytest.skip("a GPU is present: this test launches on fake pointers, so it runs only without one")
    with pytest.raises(RuntimeError, match=r"launch of relu_forward_kernel failed at .*activation\.cu:\d+: cuda"):
        ext.relu_forward(FakeDeviceArray((3,)), FakeDeviceArray((3,)))
    with pytest.raises(RuntimeError, match=r"cudaMemsetAsync.* failed at .*pool\.cu:\d+"):
        ext.max_pool2d_backward(FakeDeviceArray((1, 1, 2, 2)), FakeDeviceArray((1, 1, 2, 2), "<i4"),
                                FakeDeviceArray((1, 1, 4, 4)))


# ---------------------------------------------------------------------------- engine.cuda without CuPy

def test_engine_cuda_imports_and_reports_unavailable_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    import engine.cuda as cuda
    assert cuda.is_available() is False
    assert isinstance(cuda.extension_available(), bool)
    with pytest.raises(RuntimeError, match="needs CuPy"):
        cuda.make_backend("rtc")
    with pytest.raises(ValueError, match="expected exposure 'ext' or 'rtc', got 'nvcc'"):
        cuda.make_backend("nvcc")


def test_is_available_is_false_on_this_machine_when_no_gpu():
    import engine.cuda as cuda
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert cuda.is_available() is False
        return
    pytest.skip("CuPy is installed: is_available() depends on the GPU here")


def test_every_op_has_cuda_glue_with_the_contract_signature():
    from engine.backend import FAMILIES, OPS
    glue = {}
    for family in FAMILIES:
        module = importlib.import_module(f"engine.cuda.{family}")
        glue.update({op: getattr(module, op) for op in OPS if op in vars(module)})
    assert sorted(glue) == sorted(OPS)
    for op, text in OPS.items():
        expected = [p.strip().split("=")[0] for p in text[1:text.index(")")].split(",")]
        assert list(inspect.signature(glue[op]).parameters)[1:] == expected, op  # first is the launcher set


def test_gemm_selection_reads_engine_gemm(monkeypatch):
    from engine.cuda.common import gemm_backend
    monkeypatch.delenv("ENGINE_GEMM", raising=False)
    assert gemm_backend() == "ours"
    monkeypatch.setenv("ENGINE_GEMM", "cuBLAS")
    assert gemm_backend() == "cublas"
    monkeypatch.setenv("ENGINE_GEMM", "cudnn")
    with pytest.raises(ValueError, match="ENGINE_GEMM"):
        gemm_backend()


# ---------------------------------------------------------------------------- the glue, emulated
# The glue of engine/cuda/<family>.py (checks, allocation, chunking, split-K, out=) runs here
# against a stand-in for CuPy (NumPy arrays that answer .device and .data.ptr) and a
# launcher set that computes in NumPy what each kernel computes, with the signatures of the
# real launchers. It checks the Python side end to end without a GPU; the kernels
# themselves are checked on a GPU by tests/test_cuda_ops.py.

import types  # noqa: E402

import numpy as np  # noqa: E402


class EmulatedArray(np.ndarray):
    """A NumPy array wearing CuPy's device attributes."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    @property
    def __cuda_array_interface__(self):  # host memory, read by the CPU-emulated extension below
        if not self.flags.c_contiguous:
            raise ValueError("the emulation hands only C-contiguous arrays to kernels")
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.__array_interface__["data"][0], False),
                "strides": None, "version": 3}

    def set(self, host):  # cupy.ndarray.set: host -> device copy
        np.copyto(self, host)

    def get(self):  # cupy.ndarray.get: device -> host copy
        return np.array(self)


def _emulated_cupy() -> types.ModuleType:
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
    return cp


def _channels(x):
    n, c = x.shape[:2]
    return n, c, x.size // max(1, n * c)


class EmulatedLaunchers:
    """What each kernel computes, in NumPy (float64 inside, float32 stores)."""

    exposure = "emulated"

    def __init__(self):
        from engine.reference import conv, pool
        self.conv, self.pool = conv, pool
        self.gemm_calls = []

    def im2col(self, x, cols, kh, kw, sh, sw, ph, pw):
        cols[...] = self.conv.im2col(x, (kh, kw), (sh, sw), (ph, pw))

    def col2im(self, cols, x, kh, kw, sh, sw, ph, pw):
        x[...] = self.conv.col2im(cols, x.shape, (kh, kw), (sh, sw), (ph, pw))

    def gemm(self, a, b, c, trans_a, trans_b, bias, bias_axis, relu):
        op_a = a.swapaxes(-1, -2) if trans_a else a
        op_b = b.swapaxes(-1, -2) if trans_b else b
        batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
        outputs = c.shape[0] if c.ndim == 3 else 1
        per_output = -(-batch // outputs)
        assert -(-batch // per_output) == outputs, "the launcher would reject this split"
        assert (bias is None) == (bias_axis == -1), "the launcher rejects a bias_axis without a bias and vice versa"
        self.gemm_calls.append((a.shape, b.shape, c.shape, trans_a, trans_b))
        prod = np.matmul(np.asarray(op_a, np.float64), np.asarray(op_b, np.float64))
        prod = np.broadcast_to(prod, (batch,) + prod.shape[-2:])
        result = np.stack([prod[z * per_output:(z + 1) * per_output].sum(axis=0) for z in range(outputs)])
        if bias is not None and bias_axis == 0:
            result += np.asarray(bias)[:, None]
        elif bias is not None and bias_axis == 1:
            result += np.asarray(bias)
        c[...] = np.maximum(result, 0) if relu else result.reshape(c.shape)

    def gemm_reduce_splits(self, partial, out):
        out[...] = np.asarray(partial, np.float64).sum(axis=0).reshape(out.shape)

    def max_pool2d_forward(self, x, y, argmax, kh, kw, sh, sw, ph, pw):
        y[...], argmax[...] = self.pool.max_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw))

    def max_pool2d_backward(self, dy, argmax, dx):
        dx[...] = self.pool.max_pool2d_backward(dy, argmax, dx.shape)

    def avg_pool2d_forward(self, x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
        y[...] = self.pool.avg_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw), count_include_pad)

    def avg_pool2d_backward(self, dy, dx, kh, kw, sh, sw, ph, pw, count_include_pad):
        dx[...] = self.pool.avg_pool2d_backward(dy, dx.shape, (kh, kw), (sh, sw), (ph, pw), count_include_pad)

    @staticmethod
    def _per_channel(x):
        n, c, hw = _channels(x)
        return np.asarray(x, np.float64).reshape(n, c, hw).transpose(1, 0, 2).reshape(c, -1)  # (C, N*HW)

    @staticmethod
    def _bcast(v, x):
        n, c, hw = _channels(x)
        return np.asarray(v, np.float64).reshape(1, c, 1)

    def batch_norm_stats(self, x, save_mean, save_invstd, running_mean, running_var, momentum, eps):
        per = self._per_channel(x)
        mean, var = per.mean(axis=1), per.var(axis=1)
        save_mean[...], save_invstd[...] = mean, 1 / np.sqrt(var + eps)
        m = per.shape[1]
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)

    def batch_norm_eval_stats(self, running_mean, running_var, save_mean, save_invstd, eps):
        save_mean[...], save_invstd[...] = running_mean, 1 / np.sqrt(np.asarray(running_var, np.float64) + eps)

    def batch_norm_forward(self, x, mean, invstd, gamma, beta, y, relu):
        n, c, hw = _channels(x)
        x3 = np.asarray(x, np.float64).reshape(n, c, hw)
        out = (x3 - self._bcast(mean, x)) * self._bcast(invstd, x) * self._bcast(gamma, x) + self._bcast(beta, x)
        y[...] = (np.maximum(out, 0) if relu else out).reshape(x.shape)

    def _masked(self, dy, y):
        g = np.asarray(dy, np.float64)
        return g if y is None else g * (np.asarray(y) > 0)

    def batch_norm_backward_reduce(self, dy, y, x, mean, invstd, dgamma, dbeta):
        n, c, hw = _channels(x)
        g = self._masked(dy, y).reshape(n, c, hw)
        xhat = (np.asarray(x, np.float64).reshape(n, c, hw) - self._bcast(mean, x)) * self._bcast(invstd, x)
        dbeta[...], dgamma[...] = g.sum(axis=(0, 2)), (g * xhat).sum(axis=(0, 2))

    def batch_norm_backward(self, dy, y, x, mean, invstd, gamma, dgamma, dbeta, dx, training):
        n, c, hw = _channels(x)
        g = self._masked(dy, y).reshape(n, c, hw)
        if training:
            xhat = (np.asarray(x, np.float64).reshape(n, c, hw) - self._bcast(mean, x)) * self._bcast(invstd, x)
            g = g - self._bcast(dbeta, x) / (n * hw) - xhat * self._bcast(dgamma, x) / (n * hw)
        dx[...] = (self._bcast(gamma, x) * self._bcast(invstd, x) * g).reshape(x.shape)

    def relu_forward(self, x, y):
        y[...] = np.maximum(x, 0)

    def relu_backward(self, dy, y, dx):
        dx[...] = self._masked(dy, y)

    def bias_relu_forward(self, x, b, y):
        n, c, hw = _channels(x)
        y[...] = np.maximum(np.asarray(x, np.float64).reshape(n, c, hw) + self._bcast(b, x), 0).reshape(x.shape)

    def bias_relu_backward(self, dy, y, dx, db):
        dx[...] = self._masked(dy, y)
        self.bias_backward(dx, db)

    def bias_backward(self, dy, db):
        db[...] = self._per_channel(dy).sum(axis=1)

    def leaky_relu_forward(self, x, y, negative_slope):
        y[...] = np.where(x > 0, x, negative_slope * np.asarray(x, np.float64))

    def leaky_relu_backward(self, dy, x, dx, negative_slope):
        dx[...] = np.where(x > 0, dy, negative_slope * np.asarray(dy, np.float64))

    def sigmoid_forward(self, x, y):
        y[...] = 1 / (1 + np.exp(-np.asarray(x, np.float64)))

    def sigmoid_backward(self, dy, y, dx):
        dx[...] = np.asarray(dy, np.float64) * y * (1 - np.asarray(y, np.float64))

    def tanh_forward(self, x, y):
        y[...] = np.tanh(np.asarray(x, np.float64))

    def tanh_backward(self, dy, y, dx):
        dx[...] = np.asarray(dy, np.float64) * (1 - np.asarray(y, np.float64) ** 2)

    def add(self, a, b, out):
        out[...] = np.asarray(a, np.float64) + b

    def dropout_forward(self, x, y, mask, seed, p):
        from engine.reference.dropout import dropout_mask
        assert 0 <= seed < 2**64
        mask[...] = dropout_mask(x.shape, p, seed)
        y[...] = np.asarray(x, np.float64) * mask / (1 - p)

    def dropout_backward(self, dy, mask, dx, p):
        dx[...] = np.asarray(dy, np.float64) * mask / (1 - p)

    def softmax_xent_forward(self, logits, labels, loss, dlogits, row_loss):
        assert labels.dtype == np.int64
        x = np.asarray(logits, np.float64)
        shifted = x - x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=1))
        rows = np.arange(x.shape[0])
        row_loss[...] = lse - shifted[rows, labels]
        loss[...] = row_loss.mean()
        probs = np.exp(shifted - lse[:, None])
        probs[rows, labels] -= 1
        dlogits[...] = probs / x.shape[0]

    def mse_loss_forward(self, pred, target, loss, partial):
        from engine.cuda.common import mse_partial_blocks
        assert partial.shape == (mse_partial_blocks(pred.size),)
        loss[...] = np.mean((np.asarray(pred, np.float64) - target) ** 2)

    def mse_loss_backward(self, pred, target, dloss, dpred):
        assert dloss.size == 1 and dloss.dtype == np.float32
        dpred[...] = 2 * (np.asarray(pred, np.float64) - target) / pred.size * float(dloss.reshape(-1)[0])

    def mse_partial_blocks(self, n):
        from engine.cuda.common import mse_partial_blocks
        return mse_partial_blocks(n)

    def sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        from engine.reference.optim import sgd_update
        sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov)

    def adam_update(self, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
        from engine.reference.optim import adam_update
        adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled)

    def rmsprop_update(self, param, grad, square_avg, lr, alpha, eps, weight_decay):
        from engine.reference.optim import rmsprop_update
        rmsprop_update(param, grad, square_avg, lr, alpha, eps, weight_decay)

    def adagrad_update(self, param, grad, sum_sq, lr, eps, weight_decay):
        from engine.reference.optim import adagrad_update
        adagrad_update(param, grad, sum_sq, lr, eps, weight_decay)


def test_emulated_launchers_have_the_real_signatures():
    from engine.cuda.rtc import LAUNCHERS, RtcLaunchers
    for name in LAUNCHERS:
        assert inspect.signature(getattr(EmulatedLaunchers, name)) == inspect.signature(getattr(RtcLaunchers, name))


@pytest.fixture
def emulated_backend(monkeypatch):
    """make_backend's namespace, over the emulated CuPy and launchers."""
    import engine.cuda as cuda
    from engine.backend import FAMILIES, OPS
    from engine.cuda import common
    monkeypatch.setitem(sys.modules, "cupy", _emulated_cupy())
    common.cupy.cache_clear()
    launchers = EmulatedLaunchers()
    ops = {}
    for family in FAMILIES:
        module = importlib.import_module(f"engine.cuda.{family}")
        ops.update({op: cuda._bind(getattr(module, op), launchers) for op in OPS if op in vars(module)})
    yield types.SimpleNamespace(name="cuda-emulated", launchers=launchers, **ops)
    common.cupy.cache_clear()


def _validate_cases():
    try:
        from engine import validate
    except ImportError as err:  # engine/validate.py is someone else's and may not be there yet
        pytest.skip(f"engine.validate does not import: {err}")
    return validate, validate.cases("odd")


@pytest.mark.parametrize("gemm", ["ours", "cublas"])
def test_glue_matches_the_reference_on_every_op(emulated_backend, monkeypatch, gemm):
    """Every op through the glue (argument order to the launchers, shapes, out=, dtypes)."""
    validate, cases = _validate_cases()
    monkeypatch.setenv("ENGINE_GEMM", gemm)
    cp = sys.modules["cupy"]
    failures, seen = [], set()
    for case in cases:
        seen.add(case.op)
        got = validate.call(emulated_backend, case, validate.to_device(case.inputs(), cp))
        ok, abs_err, rel_err, name = validate.compare(case, got, validate.reference_outputs(case))
        if not ok:
            failures.append(f"{case.op} {case.label}: {name} abs {abs_err:.3g} rel {rel_err:.3g}")
        # and again into garbage-filled out= buffers of the returned outputs
        outputs = got[:len(got) - len(case.spec.inplace)]
        if outputs:
            out = validate.garbage_like(outputs, cp)
            got = validate.call(emulated_backend, case, validate.to_device(case.inputs(), cp), out=out)
            ok, *_ = validate.compare(case, got, validate.reference_outputs(case))
            if not ok:
                failures.append(f"{case.op} {case.label}: wrong with out=")
    from engine.backend import OPS
    assert seen == set(OPS), f"the odd shape set misses {set(OPS) - seen}"
    assert not failures, "\n".join(failures)


def test_conv_glue_chunks_the_batch_and_splits_the_weight_gradient(emulated_backend, monkeypatch):
    """A tiny chunk size forces several im2col chunks; small outputs force split-K over n."""
    from engine.cuda import conv
    from engine.reference import conv as ref
    monkeypatch.setattr(conv, "CHUNK_ELEMENTS", 3 * 5 * 5 * 8 * 8 * 2)  # two images per chunk
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    dy = rng.standard_normal((7, 4, 8, 8)).astype(np.float32)
    cp = sys.modules["cupy"]
    xd, wd, bd, dyd = (cp.asarray(a) for a in (x, w, b, dy))
    y = emulated_backend.conv2d_forward(xd, wd, bd, (1, 1), (1, 1))
    assert_close = importlib.import_module("engine.tolerances").assert_close
    tol = importlib.import_module("engine.tolerances").tol
    assert_close(y, ref.conv2d_forward(x, w, b, (1, 1), (1, 1)), **tol("conv"), what="forward")
    calls = emulated_backend.launchers.gemm_calls
    assert [c[1][0] for c in calls] == [2, 2, 2, 1], "batch of 7 in chunks of 2"
    calls.clear()
    dw = emulated_backend.conv2d_backward_weight(dyd, xd, w.shape, (1, 1), (1, 1))
    assert_close(dw, ref.conv2d_backward_weight(dy, x, w.shape, (1, 1), (1, 1)), **tol("conv"), what="dw")
    assert any(len(c[2]) == 3 for c in calls), "the weight gradient went through split-K partials"
    dx = emulated_backend.conv2d_backward_data(dyd, wd, x.shape, (1, 1), (1, 1))
    assert_close(dx, ref.conv2d_backward_data(dy, w, x.shape, (1, 1), (1, 1)), **tol("conv"), what="dx")


def test_glue_rejects_what_must_not_reach_a_kernel(emulated_backend):
    cp = sys.modules["cupy"]
    x = cp.asarray(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="relu_forward: expected x to be a CuPy array, got numpy.ndarray"):
        emulated_backend.relu_forward(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="relu_forward: expected x of dtype float32, got float64"):
        emulated_backend.relu_forward(cp.asarray(np.zeros(3)))
    with pytest.raises(ValueError, match="relu_forward: expected x to be C-contiguous"):
        emulated_backend.relu_forward(x[:, :, :, ::2])
    with pytest.raises(ValueError, match="conv2d_forward: input has 3 channels but weight expects 2"):
        emulated_backend.conv2d_forward(x, cp.asarray(np.zeros((4, 2, 3, 3), np.float32)), None, (1, 1), (0, 0))
    with pytest.raises(ValueError, match=r"relu_forward: expected out of shape \(2, 3, 8, 8\)"):
        emulated_backend.relu_forward(x, out=cp.asarray(np.zeros((2, 3, 8, 7), np.float32)))
    with pytest.raises(ValueError, match="max_pool2d_forward: padding"):
        emulated_backend.max_pool2d_forward(x, (2, 2), (2, 2), (2, 2))
    with pytest.raises(TypeError, match="softmax_cross_entropy_forward: expected integer labels"):
        emulated_backend.softmax_cross_entropy_forward(cp.asarray(np.zeros((2, 5), np.float32)),
                                                       cp.asarray(np.zeros(2, np.float32)))
    with pytest.raises(TypeError, match="dropout_forward: expected an integer seed"):
        emulated_backend.dropout_forward(x, 0.5, 1.5)


def test_glue_handles_optional_bias_and_host_scalar_dloss(emulated_backend):
    from engine.reference import linear as ref_linear, loss as ref_loss
    from engine.tolerances import assert_close, tol
    cp = sys.modules["cupy"]
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((3, 7)).astype(np.float32)
    y = emulated_backend.linear_forward(cp.asarray(x), cp.asarray(w), None)
    assert_close(y, ref_linear.linear_forward(x, w, None), **tol("linear"), what="linear without bias")
    pred, target = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    expected = ref_loss.mse_loss_backward(pred, target, 0.5)
    for dloss in (0.5, np.float32(0.5), np.array(0.5), cp.asarray(np.array([0.5], np.float32))):
        got = emulated_backend.mse_loss_backward(cp.asarray(pred), cp.asarray(target), dloss)
        assert_close(got, expected, **tol("loss"), what=f"mse backward with dloss {type(dloss).__name__}")


# ---------------------------------------------------------------------------- the kernels, CPU-emulated
# The real thing minus the GPU: kernels/*.cu, csrc/*.cu and bindings/module.cpp compiled by
# the host compiler against csrc/emulate_cuda.h (blocks in turn, the threads of a block as OS
# threads with real barriers for __syncthreads and warp shuffles), then driven through the
# real glue. Catches indexing, tiling, reduction and launch-argument mistakes in the one
# copy of each kernel. Slow-ish (a g++ build of the extension), hence marked slow.

def _rewrite_launches(source: str) -> str:
    """`k<<<grid, block, smem, stream>>>(args)` -> `emu::config(k, grid, block, smem, stream)(args)`."""
    return re.sub(r"(\w+)<<<(.+?)>>>", r"emu::config(\1, \2)", source, flags=re.S)


def _build_emulated(work: Path, extra_flags=()) -> Path:
    """g++ build of kernels + launchers + bindings against csrc/emulate_cuda.h; the module path."""
    import sysconfig
    gxx = shutil.which(os.environ.get("CXX", "g++"))
    if gxx is None:
        pytest.skip("no host C++ compiler (g++) to build the CPU emulation")
    try:
        import pybind11
    except ImportError:
        pytest.skip("pybind11 is not importable")
    probe = work / "probe.cpp"
    probe.write_text("#include <barrier>\n#include <atomic>\nint main() { float f = 0; "
                     "std::atomic_ref<float>(f).fetch_add(1.0f); std::barrier<> b(1); b.arrive_and_wait(); }\n")
    if subprocess.run([gxx, "-std=c++20", str(probe), "-o", str(work / "probe")], capture_output=True).returncode:
        pytest.skip(f"{gxx} lacks C++20 <barrier> / atomic_ref, which the emulation needs")
    for sub in ("include", "csrc", "bindings"):
        (work / sub).mkdir()
    shutil.copy(ROOT / "csrc" / "emulate_cuda.h", work / "include" / "cuda_runtime.h")
    shutil.copytree(ROOT / "kernels", work / "kernels")
    for header in (ROOT / "csrc").glob("*.h"):
        shutil.copy(header, work / "csrc" / header.name)
    sources = []
    for launcher in CSRC_FILES:
        target = work / "csrc" / (launcher.stem + ".cpp")
        target.write_text(_rewrite_launches(launcher.read_text()))
        sources.append(target)
    shutil.copy(ROOT / "bindings" / "module.cpp", work / "bindings" / "module.cpp")
    sources.append(work / "bindings" / "module.cpp")
    flags = ["-std=c++20", "-O1", "-fPIC", "-w", "-DENGINE_EMULATED_CUDA", "-include", "cuda_runtime.h",
             f"-I{work / 'include'}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
             *extra_flags]

    def compile_one(src):
        obj = src.with_suffix(".o")
        result = subprocess.run([gxx, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert result.returncode == 0, f"g++ failed on the emulated {src.name}:\n{result.stderr[-3000:]}"
        return str(obj)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, sources))
    module = work / ("_cuda_ext" + sysconfig.get_config_var("EXT_SUFFIX"))
    result = subprocess.run([gxx, "-shared", *extra_flags, *objects, "-o", str(module), "-lpthread"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return module


def _load_module(path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("_cuda_ext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _emulated_backend_namespace(ext_module) -> types.SimpleNamespace:
    """The ops of make_backend('ext'), their launchers calling ext_module (CuPy stubbed first)."""
    import engine.cuda as cuda
    from engine.backend import FAMILIES, OPS
    from engine.cuda.ext import ExtLaunchers
    launchers = ExtLaunchers.__new__(ExtLaunchers)
    launchers._ext = ext_module
    ops = {}
    for family in FAMILIES:
        module = importlib.import_module(f"engine.cuda.{family}")
        ops.update({op: cuda._bind(getattr(module, op), launchers) for op in OPS if op in vars(module)})
    return types.SimpleNamespace(name="cuda-ext-emulated", **ops)


def run_cases_on(backend, cases, validate, repeat_check=True) -> list[str]:
    """Failures of each case against the reference (and, optionally, of a second run vs the first)."""
    cp = sys.modules["cupy"]
    failures = []
    for case in cases:
        expected = validate.reference_outputs(case)
        first = validate.call(backend, case, validate.to_device(case.inputs(), cp))
        ok, abs_err, rel_err, name = validate.compare(case, first, expected)
        if not ok:
            failures.append(f"{case.op} {case.label}: {name} abs {abs_err:.3g} rel {rel_err:.3g}")
        if repeat_check:
            second = validate.call(backend, case, validate.to_device(case.inputs(), cp))
            if not all(np.array_equal(a, b) for a, b in zip(first, second)):
                failures.append(f"{case.op} {case.label}: two runs differ")
    return failures


@pytest.fixture(scope="module")
def emulated_ext(tmp_path_factory):
    return _load_module(_build_emulated(tmp_path_factory.mktemp("emulated_cuda")))


@pytest.fixture
def emulated_gpu_backend(emulated_ext, monkeypatch):
    """make_backend('ext')'s namespace, its extension being the CPU-emulated build."""
    from engine.cuda import common
    monkeypatch.setitem(sys.modules, "cupy", _emulated_cupy())
    common.cupy.cache_clear()
    yield _emulated_backend_namespace(emulated_ext)
    common.cupy.cache_clear()


@pytest.mark.slow
def test_kernels_match_the_reference_on_emulated_cuda(emulated_gpu_backend):
    """Every op, the real kernels behind the real launchers and glue, odd shapes; run twice:
    bitwise equal (a race would show)."""
    validate, cases = _validate_cases()
    failures = run_cases_on(emulated_gpu_backend, cases, validate)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_executor_trains_on_emulated_cuda_like_on_numba(emulated_gpu_backend):
    """The GPU path end to end: the executor on (stand-in) device arrays, the real kernels,
    launchers and glue, a small CNN with fused conv+ReLU and BN+ReLU, pooling and dropout, SGD with momentum:
    the losses follow the Numba executor's step for step (dropout masks are the same bits)."""
    from engine import nn
    from engine.executor import Executor
    from engine.optim import SGD
    from engine.tolerances import tol

    def model():
        nn.manual_seed(7)
        # conv+ReLU and BN+ReLU run fused (bias_relu, batch_norm_relu kernels)
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(3),
                             nn.ReLU(), nn.Flatten(), nn.Dropout(0.25), nn.Linear(3 * 4 * 4, 5))

    rng = np.random.default_rng(8)
    batches = [(rng.standard_normal((4, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, 4)) for _ in range(3)]
    losses = {}
    for name, kwargs in (("numba", dict(device="cpu")), ("emulated", dict(device="cuda", backend=emulated_gpu_backend))):
        ex = Executor(model(), (1, 8, 8), optimizer=SGD(0.1, momentum=0.9), seed=3, **kwargs)
        losses[name] = [float(ex.train_step(x, y)) for x, y in batches]
        losses[name].append(float(ex.predict(batches[0][0]).sum()))
    assert np.allclose(losses["emulated"], losses["numba"], rtol=tol("training")["rtol"] * 10), losses


ASAN_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
import test_cuda_build as t
from engine import validate
from engine.cuda import common
sys.modules["cupy"] = t._emulated_cupy()
common.cupy.cache_clear()
backend = t._emulated_backend_namespace(t._load_module(sys.argv[1]))
failures = t.run_cases_on(backend, validate.cases("odd"), validate, repeat_check=False)
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


@pytest.mark.slow
def test_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    """The emulated build with -fsanitize=address,undefined: any out-of-bounds or misaligned
    access by a kernel (into NumPy's heap buffers, which ASan guards) aborts the run."""
    if os.environ.get("ENGINE_TEST_ASAN") != "1":
        pytest.skip("opt-in (a sanitizer build takes minutes): ENGINE_TEST_ASAN=1")
    gxx = shutil.which(os.environ.get("CXX", "g++")) or "g++"
    runtimes = [subprocess.run([gxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    if not all(os.path.isabs(r) and os.path.exists(r) for r in runtimes):
        pytest.skip("the ASan/UBSan runtimes of g++ are not installed")
    module = _build_emulated(tmp_path, ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
    env = dict(os.environ, LD_PRELOAD=":".join(runtimes), ASAN_OPTIONS="detect_leaks=0")
    result = subprocess.run([sys.executable, "-c", ASAN_SCRIPT, str(module), str(Path(__file__).parent)],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert "Sanitizer" not in result.stderr, result.stderr[-6000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


class _HostArray:
    def __init__(self, a):
        self.a = a

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.a.ctypes.data, False),
                "strides": None, "version": 3}


@pytest.mark.slow
@pytest.mark.parametrize("trans_a, trans_b, bias_axis, offset", [
    (False, False, 1, 0), (False, True, 1, 0), (True, False, 0, 0), (True, True, 0, 0),
    (False, False, -1, 1),  # B one float off 16-byte alignment: the scalar load path
])
def test_gemm_128x128_tiles_on_emulated_cuda(emulated_ext, trans_a, trans_b, bias_axis, offset):
    """Shapes big enough for the 128x128 version (>= 128 tiles), ragged edges in M, N and K."""
    rng = np.random.default_rng(7)
    m, n, k, batch = 131, 259, 21, 22
    a = rng.standard_normal((batch,) + ((k, m) if trans_a else (m, k))).astype(np.float32)
    b_shape = (batch,) + ((n, k) if trans_b else (k, n))
    buffer = np.empty(offset + int(np.prod(b_shape)), np.float32)
    b = buffer[offset:].reshape(b_shape)
    b[...] = rng.standard_normal(b_shape)
    c = np.full((batch, m, n), np.nan, np.float32)
    bias = None if bias_axis < 0 else rng.standard_normal(m if bias_axis == 0 else n).astype(np.float32)
    emulated_ext.gemm(_HostArray(a), _HostArray(b), _HostArray(c), trans_a, trans_b,
                      None if bias is None else _HostArray(bias), bias_axis, True)
    op_a = a.swapaxes(1, 2) if trans_a else a
    op_b = b.swapaxes(1, 2) if trans_b else b
    expected = np.matmul(op_a.astype(np.float64), op_b.astype(np.float64))
    if bias is not None:
        expected += bias[:, None] if bias_axis == 0 else bias
    from engine.tolerances import assert_close, tol
    assert_close(c, np.maximum(expected, 0), **tol("gemm"), what=f"gemm ta={trans_a} tb={trans_b}")
