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
