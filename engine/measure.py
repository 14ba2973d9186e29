"""How we measure, in one place (../shared/BENCHMARKING.md, benchmarks/README.md): what a
result was measured on; ours and PyTorch's alternating on the CPU, with the median ratio;
CUDA events with an L2 flush and the median of >= 50 repeats on the GPU; the measured
ceilings (copy bandwidth, cuBLAS SGEMM) that rates are quoted against; and the results
files, benchmarks/results/<date>-<device>.md and .json. engine/bench.py runs the suites."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from engine.files import write_json

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


# --------------------------------------------------------------------------------------
# What it ran on.


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def environment(command: str | None = None) -> dict:
    """Versions and hardware, GPU fields None where there is none."""
    env = {
        "date": datetime.date.today().isoformat(),
        "command": command if command is not None else " ".join([Path(sys.executable).name] + sys.argv),
        "python": platform.python_version(), "numpy": np.__version__, "numba": _version("numba"),
        "torch": _version("torch"), "cpu": _cpu_model(), "cpu_cores": os.cpu_count(),
        "gpu": None, "driver": None, "cuda_runtime": None, "cupy": _version("cupy"), "cudnn": None,
        # other processes competing for the cores make CPU times meaningless: say how busy it was
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # NumPy's BLAS and the kernels it picked: OPENBLAS_CORETYPE set in the environment forces them
        "blas": blas_kernels(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }
    try:
        import torch
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
    if gpu_available():
        import cupy
        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        env["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        env["driver"] = _cuda_version_string(runtime.driverGetVersion())
        env["cuda_runtime"] = _cuda_version_string(runtime.runtimeGetVersion())
        env["l2_bytes"] = int(props["l2CacheSize"])
    return env


def _cuda_version_string(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def gpu_available() -> bool:
    from engine.validate import cuda_status
    gpu, _, _ = cuda_status()
    return gpu


def torch_or_none():
    try:
        import torch
        return torch
    except ImportError:
        return None


# --------------------------------------------------------------------------------------
# Timing on the CPU: ours and PyTorch's alternate, each a median over repeats.


def _time_once(fn: Callable, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def compare_cpu(ours: Callable, theirs: Callable | None, repeats: int = 7,
                min_seconds: float = 0.02) -> dict:
    """Median seconds per call of ours and theirs, run alternately (which goes first flips
    every repeat, so drift from a noisy neighbour hits both), and the median of the
    per-repeat ratios ours/theirs. Both are called once first: Numba compiles, caches warm."""
    ours()
    if theirs is not None:
        theirs()
    # enough calls per measurement that one measurement is not dominated by timer noise
    inner = max(1, int(min_seconds / max(_time_once(ours, 1), 1e-7)))
    t_ours, t_theirs, ratios = [], [], []
    for i in range(repeats):
        pair = [(ours, t_ours), (theirs, t_theirs)] if i % 2 == 0 else [(theirs, t_theirs), (ours, t_ours)]
        for fn, sink in pair:
            if fn is not None:
                sink.append(_time_once(fn, inner))
        if theirs is not None:
            ratios.append(t_ours[-1] / t_theirs[-1])
    return {"ours_s": statistics.median(t_ours),
            "torch_s": statistics.median(t_theirs) if t_theirs else None,
            "ratio": statistics.median(ratios) if ratios else None,
            "repeats": repeats, "calls_per_repeat": inner}


# --------------------------------------------------------------------------------------
# Timing on the GPU: CUDA events, L2 flushed before every repeat, median.


class GpuTimer:
    """Times a callable that launches GPU work on the default stream (ours via CuPy, PyTorch's
    on its default stream, which is the same legacy default stream)."""

    def __init__(self, repeats: int = 50, warmup: int = 3):
        import cupy
        self.cupy, self.repeats, self.warmup = cupy, max(50, repeats), warmup
        l2 = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["l2CacheSize"]
        # writing twice the L2 size evicts whatever the timed op could have found there
        self.flush_buffer = cupy.empty(max(2 * int(l2), 1 << 22) // 4, dtype=cupy.float32)
        self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()

    def __call__(self, fn: Callable) -> float:
        """Median seconds of fn() over self.repeats, each after an L2 flush."""
        cupy = self.cupy
        for _ in range(self.warmup):  # module load, NVRTC compile, cuBLAS handles stay out
            fn()
        cupy.cuda.Device().synchronize()
        times = []
        for _ in range(self.repeats):
            self.flush_buffer.fill(0)
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(self.start, self.end) / 1e3)
        return statistics.median(times)


def _copy_seconds(timer: GpuTimer, nbytes: int) -> float:
    """Median seconds of one device-to-device copy of nbytes (its buffers freed on return)."""
    cupy = timer.cupy
    src = cupy.random.standard_normal(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    return timer(lambda: dst.data.copy_from_device_async(src.data, src.nbytes))


def gpu_ceilings(timer: GpuTimer) -> dict:
    """The measured roofs: device-to-device copy bandwidth (bytes read + written per second)
    over 1 GiB, and the cuBLAS SGEMM rate at 8192^3 (FP32, no TF32)."""
    cupy = timer.cupy
    copy = _copy_seconds(timer, 1 << 30)
    n = 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    c = cupy.empty((n, n), dtype=cupy.float32)
    sgemm = timer(lambda: cupy.matmul(a, b, out=c))
    return {"copy_GBps": 2 * (1 << 30) / copy / 1e9, "sgemm_TFLOPs": 2.0 * n ** 3 / sgemm / 1e12,
            "copy_bytes": 1 << 30, "sgemm_n": n}


def images_per_second(step: Callable, batch: int, seconds: float = 3.0, warmup: int = 3,
                      sync: Callable = lambda: None) -> float:
    """Steps run back to back for about `seconds` after a warm-up; images/s of the whole run."""
    for _ in range(warmup):
        step()
    sync()
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n % 5 == 0:
            sync()
            if time.perf_counter() - start >= seconds:
                break
    sync()
    return n * batch / (time.perf_counter() - start)


def cpu_sgemm_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """The CPU's measured arithmetic ceiling: SGEMM at n^3 on every core, NumPy's BLAS and
    (when installed) PyTorch's, in GFLOP/s -- the best of `repeats` (a roof: what the machine
    gave at its best), and `best_GFLOPs`, the higher of the two."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    rates = {"sgemm_n": n}
    contenders = {"numpy_sgemm_GFLOPs": lambda: np.dot(a, b, out=c)}
    torch = torch_or_none()
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        contenders["torch_sgemm_GFLOPs"] = lambda: torch.mm(ta, tb, out=tc)
    for key, fn in contenders.items():
        fn()
        rates[key] = 2.0 * n ** 3 / min(_time_once(fn, 1) for _ in range(repeats)) / 1e9
    rates["best_GFLOPs"] = max(v for k, v in rates.items() if k.endswith("_sgemm_GFLOPs"))
    return rates


def blas_kernels() -> str:
    """Which BLAS and which of its kernels NumPy runs (OPENBLAS_CORETYPE can force older ones)."""
    try:
        from threadpoolctl import threadpool_info
        libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
        return ", ".join(f"{lib.get('internal_api')} {lib.get('architecture') or ''}".strip() for lib in libs) or "?"
    except Exception as e:  # only a label in a results file
        return f"? ({type(e).__name__})"


def step_flops(executor, batch: int) -> float:
    """Floating-point operations of one training step: 2 per multiply-add of every conv and
    linear product, forward, weight gradient and (where backward needs it) data gradient."""
    from engine import nn
    total = 0.0
    for b in executor.plan(batch, "train").bound:
        if not isinstance(b.layer, (nn.Conv2d, nn.Linear)):
            continue
        w = b.layer.params["weight"]
        per_pass = 2.0 * np.prod(b.y.shape) * np.prod(w.shape[1:])  # every output: one dot of len C*R*S or I
        passes = 1 + (b.needs_backward and b.g.get("weight") is not None) + (b.needs_backward and b.dx[0] is not None)
        total += per_pass * passes
    return total


def step_profile(executor, x, y, steps: int = 20) -> list[dict]:
    """Where a training step's time goes: the median milliseconds of every node's forward and
    backward and of the optimizer update over `steps` steps (after one untimed step), in
    execution order. The layers' own forward/backward are wrapped for the measurement only."""
    executor.train_step(x, y)
    plan, times = executor.plan(len(x), "train"), {}
    layers = {id(b.layer): b.layer for b in plan.bound}

    def timed(method, kind):
        def run(bk, n):
            start = time.perf_counter()
            method(bk, n)
            times.setdefault((kind, n.node.index), []).append(time.perf_counter() - start)
        return run

    optimizer_step = executor.optimizer.step

    def timed_update(*args, **kwargs):
        start = time.perf_counter()
        optimizer_step(*args, **kwargs)
        times.setdefault(("update", len(plan.bound)), []).append(time.perf_counter() - start)

    for layer in layers.values():
        layer.forward, layer.backward = timed(layer.forward, "forward"), timed(layer.backward, "backward")
    executor.optimizer.step = timed_update
    try:
        for _ in range(steps):
            executor.train_step(x, y)
    finally:
        for layer in layers.values():
            del layer.forward, layer.backward  # the class's methods again
        del executor.optimizer.step
    order = {"forward": 0, "backward": 1, "update": 2}
    rows = []
    for (kind, i), ts in sorted(times.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] * (-1 if kv[0][0] == "backward" else 1))):
        name = plan.bound[i].layer.name if i < len(plan.bound) else type(executor.optimizer).__name__
        if i < len(plan.bound) and plan.bound[i].relu:
            name += "+ReLU"
        rows.append({"node": name, "pass": kind, "ms": 1e3 * statistics.median(ts)})
    return rows


# --------------------------------------------------------------------------------------
# Results files.


def results_markdown(env: dict, sections: list[tuple[str, str, list[str]]]) -> str:
    lines = [f"# Benchmark results {env['date']} on {env.get('gpu') or env['cpu']}", "",
             f"Command: `{env['command']}`", "", "| what | version |", "| --- | --- |"]
    for key in ("cpu", "cpu_cores", "torch_threads", "gpu", "driver", "cuda_runtime", "cupy", "cudnn",
                "torch", "numpy", "numba", "python", "blas", "openblas_coretype", "load_average_at_start",
                "load_average_at_end"):
        if env.get(key) is not None:
            lines.append(f"| {key} | {env[key]} |")
    load, cores = env.get("load_average_at_start"), env.get("cpu_cores") or 1
    if load is not None and load > cores:
        lines += ["", f"**Caution:** the machine was busy (1-minute load average {load:.1f} on {cores} cores "
                      "at the start): CPU times include waiting for other processes; rerun on an idle "
                      "machine before quoting them."]
    for title, header, body in sections:
        lines += ["", f"## {title}", "", "```", header] + body + ["```"]
    return "\n".join(lines) + "\n"


def write_results(env: dict, device: str, sections, rows: list[dict], extra: dict | None = None,
                  directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """benchmarks/results/<date>-<device>.md and .json."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{env['date']}-{device}"
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(results_markdown(env, sections))
    write_json(js, {"environment": env, **(extra or {}), "rows": rows}, indent=1)  # NaN (not measured) -> null
    return md, js
