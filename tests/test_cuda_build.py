"""The CUDA sources and the structure around them, as far as a machine without a GPU can
check them (CI runs this). tests/test_cuda_emulated.py runs the kernels.

* every kernels/*.cu compiles with nvcc for sm_80 and sm_90, with the extension's kernel
  registry force-included as setup.py does, warnings as errors (skipped with a reason when
  nvcc is absent), and with NVRTC, with exactly the options the rtc exposure uses (libnvrtc
  loaded with ctypes from the CUDA toolkit or the nvidia-cuda-nvrtc wheel; skipped when
  absent);
* the structure: kernels/ holds only device code, every kernel is named <op>_<dir>_kernel and
  exported, csrc/ holds no launchers, the window formula exists once per language, the
  launch constants agree with common.cuh, every op's CUDA glue has the card's signature;
* the built extension imports without touching CUDA, holds exactly the kernels the launch
  descriptions name with the parameter types they give, and refuses a description that
  disagrees (skipped when the extension was not built);
* engine.cuda imports without CuPy, and without CuPy the backend says so clearly.
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

from tests.emulated_cuda import kernel_names

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FILES = sorted((ROOT / "kernels").glob("*.cu"))
ARCHS = (80, 90)


def launch_descriptions() -> dict:
    """kernel name -> its Kernel description, from every engine/cuda module (rows included)."""
    from engine.cuda import descriptions
    return descriptions()


# ---------------------------------------------------------------------------- nvcc

def find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    return "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None


@pytest.fixture(scope="module")
def nvcc_results():
    """Compile every file once, in parallel (one nvcc per core): path -> (returncode, output)."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit: set CUDA_HOME or put nvcc on PATH)")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    with tempfile.TemporaryDirectory() as out_dir, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        def run(source):
            command = [nvcc, "-std=c++17", "-Werror", "all-warnings", *gencode, "-Xcompiler",
                       "-Wall,-Wextra,-Werror,-fPIC", "-include", str(ROOT / "csrc" / "registry.h"), "-c",
                       str(source), "-o", os.path.join(out_dir, source.stem + ".o")]
            result = subprocess.run(command, capture_output=True, text=True)
            return source, (result.returncode, result.stdout + result.stderr)
        return dict(pool.map(run, KERNEL_FILES))


@pytest.mark.parametrize("source", KERNEL_FILES, ids=lambda p: p.name)
def test_compiles_with_nvcc_without_warnings(nvcc_results, source):
    returncode, output = nvcc_results[source]
    assert returncode == 0, f"nvcc failed on {source.relative_to(ROOT)}:\n{output}"
    assert "warning" not in output.lower(), f"nvcc warned on {source.relative_to(ROOT)}:\n{output}"


# ---------------------------------------------------------------------------- structure

def test_kernel_families_and_host_code_are_where_the_layout_says():
    assert {p.name for p in KERNEL_FILES} == {"im2col.cu", "gemm.cu", "pool.cu", "batchnorm.cu", "activation.cu",
                                              "dropout.cu", "softmax_xent.cu", "optim.cu"}
    # no launchers: how a kernel is launched is described once, in engine/cuda/
    assert sorted(p.name for p in (ROOT / "csrc").iterdir()) == ["emulate_cuda.h", "registry.h"]


def test_kernel_sources_need_no_host_headers():
    """NVRTC has no host standard library: kernels/ includes only its own headers."""
    for path in KERNEL_FILES + sorted((ROOT / "kernels").glob("*.cuh")):
        for include in re.findall(r"#include\s*([<\"].*?[>\"])", path.read_text()):
            assert include == '"common.cuh"', f"{path.name} includes {include}"


def test_every_kernel_follows_the_naming_rule_opens_with_a_comment_and_is_exported():
    for path in KERNEL_FILES:
        text = path.read_text()
        assert text.startswith(f"// {path.name} -- "), f"{path.name} lacks its opening comment"
        names = kernel_names(text)
        assert names, f"{path.name} defines no kernel"
        for name in names:
            assert name.endswith("_kernel"), f"{path.name}: kernel {name} is not named <op>_<dir>_kernel"
        # written-out kernels are followed by their export; the stamping macros export theirs
        plain = re.findall(r'^extern "C" __global__ void (\w+)\(', text, re.M)
        for name in plain:
            assert f"ENGINE_EXPORT_KERNEL({name})" in text, f"{path.name}: {name} is not exported"


def test_every_kernel_has_one_launch_description_in_the_file_it_names():
    defined = {name: path.name for path in KERNEL_FILES for name in kernel_names(path.read_text())}
    described = launch_descriptions()
    assert set(described) == set(defined), f"kernels without a description or descriptions without a kernel: " \
                                           f"{sorted(set(described) ^ set(defined))}"
    for name, kernel in described.items():
        assert kernel.file == defined[name], f"{name} is in {defined[name]}, its description says {kernel.file}"


def test_launch_constants_agree_with_common_cuh():
    from engine.cuda.launch import BLOCK
    header = (ROOT / "kernels" / "common.cuh").read_text()
    for macro in ("ENGINE_BLOCK", "ENGINE_REDUCE_THREADS"):
        assert re.search(rf"#define {macro} (\d+)", header).group(1) == str(BLOCK), macro


WINDOW_FORMULA = {".py": re.compile(r"\+ 2 \* \w+(\[\w+\])? - \w+(\[\w+\])?\) // \w+"),
                  ".cu": re.compile(r"\+ 2 \* \w+ - \w+\) / \w+ \+ 1"), ".cuh": re.compile(r"\+ 2 \* \w+ - \w+\) / \w+ \+ 1"),
                  ".cpp": re.compile(r"\+ 2 \* \w+ - \w+\) / \w+ \+ 1")}


def test_the_window_formula_is_written_once_per_language():
    """Output size of a conv/pool window: engine/shapes.py in Python, kernels/common.cuh in C++."""
    where = []
    for path in [*ROOT.glob("engine/**/*.py"), *ROOT.glob("kernels/*"), *ROOT.glob("bindings/*"), *ROOT.glob("csrc/*")]:
        pattern = WINDOW_FORMULA.get(path.suffix)
        if pattern and pattern.search(path.read_text()):
            where.append(str(path.relative_to(ROOT)))
    assert sorted(where) == ["engine/shapes.py", "kernels/common.cuh"], where


def test_every_op_has_cuda_glue_with_the_card_signature():
    from engine.ops import OPS
    for card in OPS.values():
        module = importlib.import_module(f"engine.cuda.{card.module}")
        if card.row is not None:
            fn = getattr(module, f"elementwise_{card.direction}")
            assert list(inspect.signature(fn).parameters)[:2] == ["L", "row"], card.name
            continue
        fn = getattr(module, card.name)
        params = list(inspect.signature(fn).parameters)
        assert params[1:] == list(card.signature.parameters), card.name  # the first is the exposure


def test_gemm_selection_reads_engine_gemm(monkeypatch):
    from engine.cuda.gemm import gemm_backend
    monkeypatch.delenv("ENGINE_GEMM", raising=False)
    assert gemm_backend() == "ours"
    monkeypatch.setenv("ENGINE_GEMM", "cuBLAS")
    assert gemm_backend() == "cublas"
    monkeypatch.setenv("ENGINE_GEMM", "cudnn")
    with pytest.raises(ValueError, match="ENGINE_GEMM"):
        gemm_backend()


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
    from engine.cuda.launch import rtc_options  # the options cupy.RawModule gets (CuPy adds -arch)
    result, log = nvrtc_compile(nvrtc, source, [*rtc_options(), f"--gpu-architecture=compute_{arch}"])
    assert result == 0, f"NVRTC failed on {source.name} (result {result}):\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warned on {source.name}:\n{log}"


def test_rtc_finds_the_kernel_sources_of_this_checkout():
    from engine.cuda.launch import kernels_dir, rtc_options
    assert Path(kernels_dir()) == ROOT / "kernels"
    assert f"-I{ROOT / 'kernels'}" in rtc_options()


def test_rtc_kernel_dir_can_be_overridden(monkeypatch, tmp_path):
    from engine.cuda import launch
    (tmp_path / "common.cuh").write_text("// empty\n")
    monkeypatch.setenv("ENGINE_KERNELS_DIR", str(tmp_path))
    assert launch.kernels_dir() == str(tmp_path)
    monkeypatch.setenv("ENGINE_KERNELS_DIR", str(tmp_path / "missing"))
    assert Path(launch.kernels_dir()) == ROOT / "kernels"  # falls through to the checkout


# ---------------------------------------------------------------------------- the extension

@pytest.fixture(scope="module")
def ext():
    try:
        return importlib.import_module("engine._cuda_ext")
    except ImportError as err:
        pytest.skip(f"engine._cuda_ext was not built (no CUDA toolkit at install time?): {err}")


def test_extension_holds_the_described_kernels_with_their_parameter_types(ext):
    described = {name: kernel.signature for name, kernel in launch_descriptions().items()}
    assert ext.kernels() == described


def test_extension_refuses_a_description_that_disagrees_with_its_kernel(ext):
    with pytest.raises(ValueError, match="no kernel conv3d_forward_kernel"):
        ext.launch("conv3d_forward_kernel", "ppl", (1, 1, 1), (256, 1, 1), 0, [0, 0, 1])
    with pytest.raises(ValueError, match=r"relu_forward_kernel: the launch description gives parameter types "
                                         r"\(ppl\) but the kernel takes \(ppffl\)"):
        ext.launch("relu_forward_kernel", "ppl", (1, 1, 1), (256, 1, 1), 0, [0, 0, 1])
    with pytest.raises(ValueError, match="relu_forward_kernel: expected 5 arguments, got 4"):
        ext.launch("relu_forward_kernel", "ppffl", (1, 1, 1), (256, 1, 1), 0, [0, 0, 0.0, 1])
    with pytest.raises(ValueError, match="does not fit the kernel's int"):
        ext.launch("max_pool2d_backward_kernel", "pppiii", (1, 1, 1), (256, 1, 1), 0, [0, 0, 0, 2**31, 1, 1])


def test_extension_imported_without_touching_cuda():
    """A fresh interpreter imports the module with no GPU and no libcudart on the path."""
    code = "import engine._cuda_ext as e; print(len(e.kernels()))"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if "No module named 'engine._cuda_ext'" in result.stderr:
        pytest.skip("engine._cuda_ext was not built")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(launch_descriptions())


def test_failed_launch_raises_with_kernel_name_file_and_line(ext):
    """Without a GPU the launch itself fails: the error says which kernel and where."""
    if ext.device_count() > 0:
        pytest.skip("a GPU is present: this test launches on null pointers, so it runs only without one")
    with pytest.raises(RuntimeError, match=r"launch of relu_forward_kernel failed at .*module\.cpp:\d+: cuda"):
        ext.launch("relu_forward_kernel", "ppffl", (1, 1, 1), (256, 1, 1), 0, [0, 0, 0.0, 0.0, 3])


# ---------------------------------------------------------------------------- engine.cuda without CuPy

def test_engine_cuda_imports_and_reports_unavailable_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    import engine.cuda as cuda
    assert cuda.is_available() is False
    assert isinstance(cuda.extension_available(), bool)
    with pytest.raises(RuntimeError, match="needs CuPy"):
        cuda.exposure("rtc")
    with pytest.raises(ValueError, match="expected exposure 'ext' or 'rtc', got 'nvcc'"):
        cuda.exposure("nvcc")


def test_is_available_is_false_on_this_machine_when_no_gpu():
    import engine.cuda as cuda
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert cuda.is_available() is False
        return
    pytest.skip("CuPy is installed: is_available() depends on the GPU here")


def test_an_extension_built_from_other_kernels_is_not_used(monkeypatch):
    """After kernels/ changes, an extension built before does not hold what the descriptions
    name: "auto" uses NVRTC and says why, instead of failing at the first launch."""
    import types
    import engine.cuda as cuda
    current = {name: kernel.signature for name, kernel in cuda.descriptions().items()}
    fake = types.SimpleNamespace(kernels=lambda: current, device_count=lambda: 1)
    monkeypatch.setitem(sys.modules, "engine._cuda_ext", fake)
    assert cuda.extension_available() is True
    stale = dict(current, relu_forward_kernel="ppl")
    fake.kernels = lambda: {k: v for k, v in stale.items() if k != "gelu_forward_kernel"}
    with pytest.warns(UserWarning, match=r"other kernels than kernels/\*.cu \(gelu_forward_kernel, "
                                         r"relu_forward_kernel\): rebuild it"):
        assert cuda.extension_available() is False
