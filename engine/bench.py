"""``python -m engine bench``: our kernels side by side with PyTorch (and cuDNN on a GPU).

The method is benchmarks/README.md (and the project's BENCHMARKING.md): same process,
same shapes, same dtype; a result is checked against the float64 reference before it is
timed; CPU timings alternate ours and PyTorch's and quote the median ratio; GPU timings
use CUDA events, a warm-up, an L2 flush before every repeat and the median of >= 50
repeats, with the copy bandwidth and cuBLAS SGEMM rate measured in the same run as the
ceilings. Inputs come from engine.validate.OP_TABLE, the one table of op inputs.

Suites (each returns a list of row dicts):

    cpu_ops      every op on the Numba backend at LeNet (batch 256) and AlexNet (batch 32)
                 shapes, next to PyTorch CPU
    gpu_ops      every op on each CUDA exposure at LeNet (256) and AlexNet (128) shapes,
                 next to PyTorch/cuDNN (FP32 and TF32), plus our GEMM vs cuBLAS
    train        training images/s: ours vs PyTorch eager (vs torch.compile on a GPU)

``main(argv)`` runs the CPU suite always and the GPU suites where a GPU works, and writes
benchmarks/results/<date>-<device>.md and .json with what it ran on and the command.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from engine import validate
from engine.backend import get_backend

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
    gpu, _, _ = validate.cuda_status()
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


def gpu_ceilings(timer: GpuTimer) -> dict:
    """The measured roofs: device-to-device copy bandwidth (bytes read + written per second)
    over 1 GiB, and the cuBLAS SGEMM rate at 8192^3 (FP32, no TF32)."""
    cupy = timer.cupy
    src = cupy.random.standard_normal(1 << 28, dtype=cupy.float32)  # 1 GiB
    dst = cupy.empty_like(src)
    copy = timer(lambda: dst.data.copy_from_device_async(src.data, src.nbytes))
    del src, dst
    n = 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    c = cupy.empty((n, n), dtype=cupy.float32)
    sgemm = timer(lambda: cupy.matmul(a, b, out=c))
    return {"copy_GBps": 2 * (1 << 30) / copy / 1e9, "sgemm_TFLOPs": 2.0 * n ** 3 / sgemm / 1e12,
            "copy_bytes": 1 << 30, "sgemm_n": n}


# --------------------------------------------------------------------------------------
# Work per op: FLOPs (compute-bound ops) and the fewest bytes it must move.


def min_bytes(case: validate.Case, args: tuple, outputs: tuple) -> int:
    """Each array input read once, each output written once, in-place state read and written."""
    read = sum(a.nbytes for a in args if hasattr(a, "nbytes"))
    written = sum(o.nbytes for o in outputs)  # outputs include the in-place-updated args
    return int(read + written)


# --------------------------------------------------------------------------------------
# PyTorch counterparts, one per op, taking our positional args as torch tensors. They are
# what PyTorch eager runs for the same layer (on a GPU: cuDNN for conv and, where PyTorch
# picks it, batch norm; cuBLAS for GEMMs; PyTorch's own kernels for the rest).


def torch_counterpart(case: validate.Case, t: list, device: str) -> Callable | None:
    """A zero-argument callable running case.op in PyTorch on args t (ours, as torch tensors),
    or None if PyTorch has no counterpart."""
    import torch
    import torch.nn.functional as F
    aten = torch.ops.aten
    op = case.op

    def empty(shape):
        return torch.empty(tuple(shape), device=device)

    def axes_but_1(ndim):
        return [a for a in range(ndim) if a != 1]

    if op == "im2col":
        x, kernel, stride, padding = t
        return lambda: F.unfold(x, kernel, padding=padding, stride=stride)
    if op == "col2im":
        cols, x_shape, kernel, stride, padding = t
        return lambda: F.fold(cols, tuple(x_shape[2:]), kernel, padding=padding, stride=stride)
    if op == "gemm":
        a, b, ta, tb = t
        return lambda: torch.mm(a.t() if ta else a, b.t() if tb else b)
    if op == "conv2d_forward":
        x, w, b, stride, padding = t
        return lambda: F.conv2d(x, w, b, stride, padding)
    if op == "conv2d_backward_data":
        dy, w, x_shape, stride, padding = t
        x = empty(x_shape)
        return lambda: aten.convolution_backward(dy, x, w, None, stride, padding, (1, 1), False, (0, 0), 1,
                                                 (True, False, False))[0]
    if op == "conv2d_backward_weight":
        dy, x, w_shape, stride, padding = t
        w = empty(w_shape)
        return lambda: aten.convolution_backward(dy, x, w, None, stride, padding, (1, 1), False, (0, 0), 1,
                                                 (False, True, False))[1]
    if op == "linear_forward":
        x, w, b = t
        return lambda: F.linear(x, w, b)
    if op == "linear_backward_data":
        dy, w = t
        return lambda: torch.mm(dy, w)
    if op == "linear_backward_weight":
        dy, x = t
        return lambda: torch.mm(dy.t(), x)
    if op == "bias_backward":
        (dy,) = t
        return lambda: dy.sum(dim=axes_but_1(dy.ndim))
    if op == "add":
        a, b = t
        return lambda: torch.add(a, b)
    if op == "max_pool2d_forward":
        x, kernel, stride, padding = t
        return lambda: F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    if op == "max_pool2d_backward":
        dy, argmax, x_shape = t
        x, idx, pool = empty(x_shape), argmax.long(), case.shape  # torch wants int64 indices
        return lambda: aten.max_pool2d_with_indices_backward(dy, x, pool.kernel, pool.stride, pool.padding,
                                                             (1, 1), False, idx)
    if op == "avg_pool2d_forward":
        x, kernel, stride, padding, cip = t
        return lambda: F.avg_pool2d(x, kernel, stride, padding, count_include_pad=cip)
    if op == "avg_pool2d_backward":
        dy, x_shape, kernel, stride, padding, cip = t
        x = empty(x_shape)
        return lambda: aten.avg_pool2d_backward(dy, x, kernel, stride, padding, False, cip, None)
    if op in ("batch_norm_forward", "batch_norm_relu_forward"):
        x, gamma, beta, rm, rv, training, momentum, eps = t
        relu = op == "batch_norm_relu_forward"
        return lambda: (F.relu(F.batch_norm(x, rm, rv, gamma, beta, training, momentum, eps)) if relu
                        else F.batch_norm(x, rm, rv, gamma, beta, training, momentum, eps))
    if op == "batch_norm_backward":
        dy, x, gamma, mean, invstd, training = t
        return lambda: aten.native_batch_norm_backward(dy, x, gamma, None, None, mean, invstd, training, 1e-5,
                                                       (True, True, True))
    if op == "batch_norm_relu_backward":
        dy, y, x, gamma, mean, invstd, training = t
        return lambda: aten.native_batch_norm_backward(aten.threshold_backward(dy, y, 0), x, gamma, None, None,
                                                       mean, invstd, training, 1e-5, (True, True, True))
    if op == "relu_forward":
        return lambda: F.relu(t[0])
    if op == "relu_backward":
        dy, y = t
        return lambda: aten.threshold_backward(dy, y, 0)
    if op == "bias_relu_forward":
        x, b = t
        b = b.view((1, -1) + (1,) * (x.ndim - 2))
        return lambda: F.relu(x + b)
    if op == "bias_relu_backward":
        dy, y = t

        def bias_relu_backward():
            dx = aten.threshold_backward(dy, y, 0)
            return dx, dx.sum(dim=axes_but_1(dx.ndim))
        return bias_relu_backward
    if op == "leaky_relu_forward":
        x, slope = t
        return lambda: F.leaky_relu(x, slope)
    if op == "leaky_relu_backward":
        dy, x, slope = t
        return lambda: aten.leaky_relu_backward(dy, x, slope, False)
    if op == "sigmoid_forward":
        return lambda: torch.sigmoid(t[0])
    if op == "sigmoid_backward":
        dy, y = t
        return lambda: aten.sigmoid_backward(dy, y)
    if op == "tanh_forward":
        return lambda: torch.tanh(t[0])
    if op == "tanh_backward":
        dy, y = t
        return lambda: aten.tanh_backward(dy, y)
    if op == "dropout_forward":
        x, p, _seed = t
        return lambda: aten.native_dropout(x, p, True)
    if op == "dropout_backward":
        dy, mask, p = t
        keep = mask.bool()
        return lambda: aten.native_dropout_backward(dy, keep, 1.0 / (1.0 - p))
    if op == "softmax_cross_entropy_forward":
        logits, labels = t
        one = torch.ones((), device=device)

        def cross_entropy_forward_backward():  # the kernels eager autograd runs for F.cross_entropy
            logp = aten._log_softmax(logits, 1, False)
            loss, total_weight = aten.nll_loss_forward(logp, labels, None, 1, -100)
            dlogp = aten.nll_loss_backward(one, logp, labels, None, 1, -100, total_weight)
            return loss, aten._log_softmax_backward_data(dlogp, logp, 1, logits.dtype)
        return cross_entropy_forward_backward
    if op == "mse_loss_forward":
        pred, target = t
        return lambda: F.mse_loss(pred, target)
    if op == "mse_loss_backward":
        pred, target, dloss = t
        return lambda: aten.mse_loss_backward(dloss, pred, target, 1)
    if op.endswith("_update"):
        return _torch_optimizer_step(op, t)
    return None


def _torch_optimizer_step(op: str, t: list) -> Callable:
    """One torch.optim step over one flat parameter, hyperparameters as ours (PyTorch's default
    implementation for the device: foreach on CUDA)."""
    import torch
    param = t[0].clone().requires_grad_(False)
    param.grad = t[1].clone()
    if op == "sgd_update":
        _, _, _, lr, momentum, wd, nesterov = t
        opt = torch.optim.SGD([param], lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    elif op == "adam_update":
        _, _, _, _, _, lr, b1, b2, eps, wd, decoupled = t
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        opt = cls([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    elif op == "rmsprop_update":
        _, _, _, lr, alpha, eps, wd = t
        opt = torch.optim.RMSprop([param], lr=lr, alpha=alpha, eps=eps, weight_decay=wd)
    else:
        _, _, _, lr, eps, wd = t
        opt = torch.optim.Adagrad([param], lr=lr, eps=eps, weight_decay=wd)
    opt.step()  # creates the state (momentum buffers, moments) outside the timed calls
    return opt.step


def to_torch(args, device: str) -> list:
    import torch
    return [torch.as_tensor(a, device=device).clone() if isinstance(a, np.ndarray) else a for a in args]


# --------------------------------------------------------------------------------------
# Checking before timing. Convolution-shaped references (im2col, col2im, conv) are checked at
# batch 2 of the same layer: NumPy float64 at AlexNet batch 128 would take minutes, and the
# kernels take the same path whatever the batch. Every other op is checked at its own shape.


def check_case(case: validate.Case, backend, xp) -> str:
    """'ok', or what went wrong, for case on backend, against the float64 reference."""
    if isinstance(case.shape, validate.Conv) and case.shape.x[0] > 2:
        case = dataclasses.replace(case, shape=dataclasses.replace(case.shape, x=(2,) + case.shape.x[1:]))
    args = case.inputs()
    expected = validate.reference_outputs(case, args)
    got = validate.call(backend, case, validate.to_device(args, xp))
    passed, abs_err, _, failing = validate.compare(case, got, expected)
    return "ok" if passed else f"WRONG ({failing}, max abs err {abs_err:.2e})"


# --------------------------------------------------------------------------------------
# Suites.


def cpu_op_cases(quick: bool) -> list[validate.Case]:
    if quick:
        return validate.cases("lenet", 256)
    return validate.cases("lenet", 256) + validate.cases("alexnet", 32)


def run_cpu_ops(quick: bool = False, ops=None, repeats: int | None = None, log=print) -> list[dict]:
    """Every op on the Numba backend next to PyTorch CPU (same process, alternating)."""
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    numba = get_backend("numba")
    repeats = repeats or (3 if quick else 7)
    rows = []
    for case in cpu_op_cases(quick):
        if ops and case.op not in ops:
            continue
        row = {"suite": "cpu_ops", "op": case.op, "direction": validate.direction(case.op),
               "shapes": case.label, "shape": case.shape.describe(), "exposure": "numba"}
        row["check"] = check_case(case, numba, np)
        if row["check"] != "ok":
            log(_cpu_line(row))
            rows.append(row)  # a wrong kernel is not timed
            continue
        args = case.inputs()
        ours_args = validate.to_device(args, np)
        ours = _bind(numba, case, ours_args)
        theirs = None
        if torch is not None:
            theirs = torch_counterpart(case, to_torch(args, "cpu"), "cpu")
        timing = compare_cpu(ours, theirs, repeats=repeats)
        outputs = validate.call(numba, case, validate.to_device(args, np))
        row.update(timing)
        row["bytes"] = min_bytes(case, args, outputs)
        row["flops"] = case.flops()
        row["ours_GFLOPs"] = row["flops"] / row["ours_s"] / 1e9 if row["flops"] else None
        row["ours_GBps"] = row["bytes"] / row["ours_s"] / 1e9
        rows.append(row)
        log(_cpu_line(row))
    return rows


def _bind(backend, case: validate.Case, args: list) -> Callable:
    fn = getattr(backend, case.op)
    return lambda: fn(*args)


CPU_HEADER = f"{'op':30} {'shapes':22} {'shape':38} {'numba ms':>9} {'torch ms':>9} {'ours/torch':>10} {'GFLOP/s':>8} {'GB/s':>6}"


def _cpu_line(row: dict) -> str:
    if row.get("check", "ok") != "ok":
        return f"{row['op'][:30]:30} {row['shapes'][:22]:22} {row['shape'][:38]:38} {row['check']}"
    ms = lambda s: "-" if s is None else f"{s * 1e3:9.3f}"  # noqa: E731
    ratio = "-" if row.get("ratio") is None else f"{row['ratio']:10.2f}"
    gflops = "-" if not row.get("ours_GFLOPs") else f"{row['ours_GFLOPs']:8.1f}"
    return (f"{row['op'][:30]:30} {row['shapes'][:22]:22} {row['shape'][:38]:38} {ms(row['ours_s']):>9} "
            f"{ms(row['torch_s']):>9} {ratio:>10} {gflops:>8} {row['ours_GBps']:6.1f}")


def gpu_op_cases(quick: bool) -> list[validate.Case]:
    cases = validate.cases("lenet", 256) + ([] if quick else validate.cases("alexnet", 128))
    big = validate.Gemm("4096^3", 4096, 4096, 4096)
    return cases + [validate.Case("gemm", "square", big)]


def run_gpu_ops(quick: bool = False, ops=None, log=print) -> tuple[list[dict], dict]:
    """Every op on each CUDA exposure next to PyTorch/cuDNN at FP32 and TF32. Returns (rows, ceilings)."""
    import cupy
    torch = torch_or_none()
    _, extension, _ = validate.cuda_status()
    exposures = (["cuda-ext"] if extension else []) + ["cuda-rtc"]
    timer = GpuTimer(repeats=50)
    ceilings = gpu_ceilings(timer)
    log(f"ceilings: copy {ceilings['copy_GBps']:.0f} GB/s, cuBLAS SGEMM {ceilings['sgemm_TFLOPs']:.1f} TFLOP/s")
    rows = []
    for case in gpu_op_cases(quick):
        if ops and case.op not in ops:
            continue
        args = case.inputs()
        flops = case.flops()
        torch_times = {}
        if torch is not None and torch.cuda.is_available():
            targs = to_torch(args, "cuda")
            fn = torch_counterpart(case, targs, "cuda")
            if fn is not None:
                torch.backends.cudnn.enabled = True
                torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithm (warm-up tunes)
                for label, tf32 in (("fp32", False), ("tf32", True)):
                    if label == "tf32" and flops is None:
                        continue  # TF32 only changes matrix products
                    torch.backends.cuda.matmul.allow_tf32 = tf32
                    torch.backends.cudnn.allow_tf32 = tf32
                    torch_times[label] = timer(fn)
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
            del targs
        for exposure in exposures:
            backend = get_backend(exposure)
            row = {"suite": "gpu_ops", "op": case.op, "direction": validate.direction(case.op),
                   "shapes": case.label, "shape": case.shape.describe(), "exposure": exposure,
                   "check": check_case(case, backend, cupy)}
            if row["check"] == "ok":
                dev_args = validate.to_device(args, cupy)
                outputs = validate.call(backend, case, validate.to_device(args, cupy))
                row["ours_s"] = timer(_bind(backend, case, dev_args))
                row["torch_fp32_s"] = torch_times.get("fp32")
                row["torch_tf32_s"] = torch_times.get("tf32")
                row["ratio"] = row["ours_s"] / row["torch_fp32_s"] if row["torch_fp32_s"] else None
                row["bytes"] = min_bytes(case, args, outputs)
                row["flops"] = flops
                if flops:
                    row["TFLOPs"] = flops / row["ours_s"] / 1e12
                    row["fraction_of_ceiling"] = row["TFLOPs"] / ceilings["sgemm_TFLOPs"]
                else:
                    row["GBps"] = row["bytes"] / row["ours_s"] / 1e9
                    row["fraction_of_ceiling"] = row["GBps"] / ceilings["copy_GBps"]
                del dev_args, outputs
            rows.append(row)
            log(_gpu_line(row))
        cupy.get_default_memory_pool().free_all_blocks()
    return rows, ceilings


GPU_HEADER = (f"{'op':30} {'shapes':20} {'exposure':8} {'ours us':>9} {'cuDNN fp32':>10} {'tf32':>9} "
              f"{'ours/fp32':>9} {'rate':>14} {'of roof':>7}")


def _gpu_line(row: dict) -> str:
    head = f"{row['op'][:30]:30} {row['shapes'][:20]:20} {row['exposure']:8}"
    if row["check"] != "ok":
        return f"{head} {row['check']}"
    us = lambda s: "-" if s is None else f"{s * 1e6:.1f}"  # noqa: E731
    rate = f"{row['TFLOPs']:.2f} TFLOP/s" if row.get("TFLOPs") else f"{row['GBps']:.0f} GB/s"
    ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
    return (f"{head} {us(row['ours_s']):>9} {us(row['torch_fp32_s']):>10} {us(row['torch_tf32_s']):>9} "
            f"{ratio:>9} {rate:>14} {row['fraction_of_ceiling']:7.0%}")


# --------------------------------------------------------------------------------------
# End to end: training images/s on synthetic data.


def torch_model(name: str, classes: int = 10):
    """LeNet-5 (28x28x1) or one-tower AlexNet (224x224x3), the architectures of the shape tables."""
    import torch.nn as nn
    if name == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes))


INPUT_SHAPES = {"lenet": (1, 28, 28), "alexnet": (3, 224, 224)}


def _synthetic(name: str, batch: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + INPUT_SHAPES[name]).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int64)
    return x, y


def torch_train_step(name: str, batch: int, device: str, compile_model: bool = False, classes: int = 10):
    """A zero-argument SGD-with-momentum training step of the PyTorch model on fixed synthetic data."""
    import torch
    model = torch_model(name, classes).to(device)
    if compile_model:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = (torch.as_tensor(a, device=device) for a in _synthetic(name, batch, classes))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def our_train_step(name: str, batch: int, device: str, classes: int = 10):
    """A zero-argument training step of our executor (SGD with momentum, as the PyTorch one)
    on the same synthetic data, data already on the device; NotImplementedError saying what
    is missing where the executor is not there."""
    try:
        from engine.executor import Executor
        from engine.models import MODELS
        from engine.optim import SGD
    except ImportError as exc:
        raise NotImplementedError(f"the executor is not importable ({exc})") from exc
    build, input_shape = MODELS[name]
    executor = Executor(build(num_classes=classes), input_shape, optimizer=SGD(lr=0.01, momentum=0.9),
                        device=device)
    x, y = _synthetic(name, batch, classes)
    sync = lambda: None  # noqa: E731
    if device == "cuda":
        import cupy
        x, y = cupy.asarray(x), cupy.asarray(y)
        sync = cupy.cuda.Device().synchronize

    def step():
        loss = executor.train_step(x, y)
        sync()
        return loss
    return step


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


def run_train(device: str, quick: bool = False, log=print) -> list[dict]:
    """Training images/s: ours, PyTorch eager, and torch.compile (GPU only)."""
    torch = torch_or_none()
    plans = [("lenet", 256)] + ([("alexnet", 128)] if device == "cuda" else [])
    seconds = 1.5 if quick else 4.0
    rows = []
    for name, batch in plans:
        contenders: list[tuple[str, Callable]] = [("ours", lambda: our_train_step(name, batch, device))]
        if torch is not None:
            contenders.append(("torch-eager", lambda: torch_train_step(name, batch, device)))
            if device == "cuda":
                contenders.append(("torch-compile", lambda: torch_train_step(name, batch, device, True)))
        sync = (lambda: torch.cuda.synchronize()) if device == "cuda" and torch is not None else (lambda: None)
        for label, make in contenders:
            row = {"suite": "train", "model": name, "batch": batch, "device": device, "impl": label}
            try:
                row["images_per_s"] = images_per_second(make(), batch, seconds, sync=sync)
            except Exception as exc:  # ours may not exist yet; torch.compile may lack a compiler
                row["images_per_s"], row["note"] = None, f"not run: {type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            rate = "-" if row["images_per_s"] is None else f"{row['images_per_s']:.0f} images/s"
            log(f"train {name} batch {batch} {device} {label:14} {rate} {row.get('note', '')}")
    return rows


# --------------------------------------------------------------------------------------
# Results files.


def results_markdown(env: dict, sections: list[tuple[str, str, list[str]]]) -> str:
    lines = [f"# Benchmark results {env['date']} on {env.get('gpu') or env['cpu']}", "",
             f"Command: `{env['command']}`", "", "| what | version |", "| --- | --- |"]
    for key in ("cpu", "cpu_cores", "torch_threads", "gpu", "driver", "cuda_runtime", "cupy", "cudnn",
                "torch", "numpy", "numba", "python", "load_average_at_start", "load_average_at_end"):
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
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    js.write_text(json.dumps({"environment": env, **(extra or {}), "rows": clean}, indent=1, default=str) + "\n")
    return md, js


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine bench",
        description="Time our kernels next to PyTorch (CPU) and cuDNN/cuBLAS (GPU); write benchmarks/results/.")
    parser.add_argument("--quick", action="store_true", help="LeNet shapes only, fewer repeats")
    parser.add_argument("--suite", action="append", choices=("cpu_ops", "gpu_ops", "train"),
                        help="run only these suites (repeatable); default: all that can run here")
    parser.add_argument("--op", action="append", metavar="NAME", help="only this op (repeatable)")
    parser.add_argument("--device-name", help="the <device> part of the results file name "
                                              "(default: 'cpu-<cores>core', or the GPU's name)")
    parser.add_argument("--date", help="the <date> part of the results file name (default: today)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where results go (default: %(default)s)")
    parser.add_argument("--cpu-only", action="store_true", help="leave the GPU out even where there is one")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def main(argv=None, command: str | None = None) -> int:
    """Run the suites, print their tables, write benchmarks/results/<date>-<device>.md/.json.
    command is what the results file records as the way to rerun it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = command or " ".join(["python -m engine bench"] + argv)
    env = environment(command)
    if args.date:
        env["date"] = args.date
    gpu = gpu_available() and not args.cpu_only
    suites = args.suite or ["cpu_ops", "gpu_ops", "train"]
    sections, rows, extra = [], [], {}
    if not gpu:
        why = "--cpu-only" if args.cpu_only else validate.cuda_status()[2]
        print(f"bench: no GPU ({why}): GPU suites skipped; CPU suites only")
        extra["gpu_skipped"] = why

    if "cpu_ops" in suites:
        print(CPU_HEADER)
        body = []
        cpu_rows = run_cpu_ops(args.quick, args.op, log=lambda line: (print(line), body.append(line)))
        sections.append(("CPU ops: Numba vs PyTorch CPU (median, alternating)", CPU_HEADER, body))
        rows += cpu_rows
    if "gpu_ops" in suites and gpu:
        print(GPU_HEADER)
        body = []
        gpu_rows, ceilings = run_gpu_ops(args.quick, args.op, log=lambda line: (print(line), body.append(line)))
        extra["ceilings"] = ceilings
        sections.append(("GPU ops: ours vs PyTorch/cuDNN (CUDA events, L2 flushed, median of 50)", GPU_HEADER, body))
        rows += gpu_rows
    if "train" in suites:
        body = []
        for device in ["cpu"] + (["cuda"] if gpu else []):
            rows += run_train(device, args.quick, log=lambda line: (print(line), body.append(line)))
        sections.append(("Training throughput (synthetic data)", "model batch device impl images/s", body))

    if hasattr(os, "getloadavg"):
        env["load_average_at_end"] = os.getloadavg()[0]
    if not args.no_write:
        device = args.device_name or (_slug(env["gpu"]) if gpu else f"cpu-{os.cpu_count()}core")
        md, js = write_results(env, device, sections, rows, extra, Path(args.out_dir))
        print(f"bench: wrote {md} and {js}")
    wrong = [r for r in rows if r.get("check", "ok") != "ok"]
    if wrong:
        print(f"bench: {len(wrong)} kernel(s) gave wrong results and were not timed", file=sys.stderr)
    return 1 if wrong else 0


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


if __name__ == "__main__":
    sys.exit(main())
