"""Build script: the pure-Python engine package, plus the optional CUDA extension.

pyproject.toml holds the package metadata; this file adds what setuptools cannot say
declaratively:

* engine._cuda_ext, the pybind11 module (bindings/module.cpp) holding every kernel of
  kernels/*.cu -- the one copy of each, compiled by nvcc with csrc/registry.h force-included
  so that each kernel registers itself to be launched by name -- built when a CUDA toolkit
  is found (CUDA_HOME or CUDA_PATH, else nvcc on PATH, else /usr/local/cuda). Target
  architectures: sm_70, 80, 86, 89, 90 plus PTX for the newest, restricted to what
  `nvcc --list-gpu-arch` reports (CUDA 13 dropped sm_70); ENGINE_CUDA_ARCHS="80;90"
  overrides. The .cu files compile in parallel (one nvcc per core; ENGINE_BUILD_JOBS
  overrides). cudart is linked statically, so the module imports without libcudart and
  makes no CUDA call at import.
* Without a toolkit, or when the build fails, the package installs WITHOUT the extension
  (it never blocks an install): the GPU path then runs through CuPy + NVRTC.
  Either way the build prints which paths it built (pip shows it with -v).
  ENGINE_BUILD_CUDA=0 skips the extension on purpose (a quick CPU-only install).
* kernels/*.cu and *.cuh ship as package data under engine/cuda/kernels/ in a wheel or
  regular install (copied by build_py into the build tree only; the repository keeps one
  copy). An editable install reads them from the checkout's kernels/ directly.
  engine/cuda/launch.py:kernels_dir() looks in that order: $ENGINE_KERNELS_DIR,
  engine/cuda/kernels/, <checkout>/kernels/.
"""
from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
WANTED_ARCHS = (70, 80, 86, 89, 90)
BUILD_TIME = "about a minute on 2 cores (86 s measured on a busy 2-core machine, 4 architectures);"


def log(message: str, terminal: bool = False) -> None:
    """To the build log (pip shows it with -v); with terminal, to the user's terminal as well:
    pip hides a build's output, and a minute of nvcc must not look like a hang."""
    print(f"[engine build] {message}", file=sys.stderr, flush=True)
    if terminal:
        try:
            with open("/dev/tty", "w") as tty:
                tty.write(f"[engine build] {message}\n")
        except OSError:
            pass  # no terminal (CI, a pipe): the build log has it


def find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        # /usr/local/bin/nvcc may be a wrapper script: ask nvcc itself where it lives
        try:
            with tempfile.TemporaryDirectory() as tmp:
                probe = os.path.join(tmp, "probe.cu")
                open(probe, "w").close()
                out = subprocess.run([nvcc, "--dryrun", "-c", probe, "-o", probe + ".o"], capture_output=True,
                                     text=True, timeout=60)
            m = re.search(r"^#\$ TOP=(.+)$", out.stderr + out.stdout, re.M)
            if m and os.path.exists(os.path.join(m.group(1).strip(), "bin", "nvcc")):
                return os.path.realpath(m.group(1).strip())
        except (OSError, subprocess.SubprocessError):
            pass
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def supported_archs(nvcc: str) -> set[int]:
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60, check=True)
    return {int(m) for m in re.findall(r"compute_(\d+)", out.stdout)}


def choose_archs(nvcc: str) -> list[int]:
    override = os.environ.get("ENGINE_CUDA_ARCHS")
    if override:
        archs = sorted({int(a) for a in re.findall(r"\d+", override)})
        log(f"ENGINE_CUDA_ARCHS={override!r}: building sm_{', sm_'.join(map(str, archs))}")
        return archs
    supported = supported_archs(nvcc)
    archs = [a for a in WANTED_ARCHS if a in supported]
    dropped = [a for a in WANTED_ARCHS if a not in supported]
    if dropped:
        log(f"this nvcc does not support sm_{', sm_'.join(map(str, dropped))}: skipped")
    if not archs:
        raise RuntimeError(f"nvcc supports none of sm_{WANTED_ARCHS}")
    log(f"building for sm_{', sm_'.join(map(str, archs))} + PTX compute_{archs[-1]}")
    return archs


def gencode_flags(archs: list[int]) -> list[str]:
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    # PTX of the newest: GPUs newer than any listed arch JIT-compile it at load time
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


class BuildPy(build_py):
    """Ship kernels/ as engine/cuda/kernels/ in the build tree (not in an editable install)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's kernels/ is found directly
        target = os.path.join(self.build_lib, "engine", "cuda", "kernels")
        os.makedirs(target, exist_ok=True)
        for path in glob.glob(os.path.join(ROOT, "kernels", "*.cu")) + glob.glob(os.path.join(ROOT, "kernels", "*.cuh")):
            self.copy_file(path, os.path.join(target, os.path.basename(path)))


class BuildCudaExt(build_ext):
    """nvcc compiles kernels/*.cu in parallel, the host compiler compiles bindings/, then link."""

    def build_extensions(self):
        built = []
        for ext in list(self.extensions):
            if ext.name != "engine._cuda_ext":
                self.build_extension(ext)
                continue
            start = time.time()
            try:
                self.build_cuda_extension(ext)
                built.append(ext.name)
                log(f"built engine._cuda_ext in {time.time() - start:.0f} s", terminal=True)
            except Exception as err:  # never block the install
                log(f"engine._cuda_ext NOT built ({type(err).__name__}: {err}); the GPU path will compile "
                    f"the kernels at run time with NVRTC instead", terminal=True)
                self.extensions.remove(ext)
        paths = ["cpu (numpy reference + numba)", "cuda-rtc (CuPy + NVRTC, when CuPy and a GPU are present)"]
        if built:
            paths.append("cuda-ext (compiled extension engine._cuda_ext)")
        log("GPU/CPU paths available after this install: " + "; ".join(paths))

    def build_cuda_extension(self, ext):
        if os.environ.get("ENGINE_BUILD_CUDA", "1") == "0":
            raise RuntimeError("ENGINE_BUILD_CUDA=0")
        home = find_cuda_home()
        if home is None:
            raise RuntimeError("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
        nvcc = os.path.join(home, "bin", "nvcc")
        archs = choose_archs(nvcc)
        log(f"CUDA toolkit: {home}")
        obj_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(obj_dir, exist_ok=True)
        cu_sources = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu")))
        nvcc_flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-Werror", "all-warnings",
                      "-include", os.path.join(ROOT, "csrc", "registry.h"), *gencode_flags(archs)]

        def compile_cu(src: str) -> str:
            obj = os.path.join(obj_dir, os.path.basename(src) + ".o")  # kernels/<family>.cu.o
            cmd = [nvcc, *nvcc_flags, "-c", src, "-o", obj]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"nvcc failed on {os.path.relpath(src, ROOT)}:\n{result.stderr[-4000:]}")
            return obj

        jobs = int(os.environ.get("ENGINE_BUILD_JOBS", 0)) or os.cpu_count() or 1
        log(f"building the CUDA extension engine._cuda_ext: {len(cu_sources)} kernel files x {len(archs)} "
            f"architectures (sm_{', sm_'.join(map(str, archs))}) with nvcc, {jobs} at a time; {BUILD_TIME} "
            f"ENGINE_BUILD_CUDA=0 skips it, ENGINE_CUDA_ARCHS=\"90\" builds one architecture", terminal=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            cu_futures = [pool.submit(compile_cu, src) for src in cu_sources]
            # the bindings compile with the host compiler on this thread meanwhile
            include_dirs = [*ext.include_dirs, os.path.join(home, "include")]
            host_objects = self.compiler.compile(ext.sources, output_dir=self.build_temp, include_dirs=include_dirs,
                                                 extra_postargs=ext.extra_compile_args, depends=ext.depends)
            cu_objects = [f.result() for f in cu_futures]

        lib_dirs = [d for d in (os.path.join(home, "lib64"), os.path.join(home, "lib"),
                                os.path.join(home, "targets", "x86_64-linux", "lib")) if os.path.isdir(d)]
        self.compiler.link_shared_object(
            host_objects + cu_objects, self.get_ext_fullpath(ext.name), library_dirs=lib_dirs,
            libraries=["cudart_static", "rt", "pthread", "dl"], extra_postargs=ext.extra_link_args,
            target_lang="c++")


def cuda_extension() -> list[Extension]:
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        log("pybind11 is not importable: engine._cuda_ext NOT built")
        return []
    return [Pybind11Extension("engine._cuda_ext", ["bindings/module.cpp"], cxx_std=17,
                              depends=glob.glob("csrc/*.h") + glob.glob("kernels/*"))]


setup(ext_modules=cuda_extension(), cmdclass={"build_ext": BuildCudaExt, "build_py": BuildPy})
