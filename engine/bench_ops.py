"""The op suites of ``python -m engine bench`` (run by engine/bench.py): every op on the Numba
backend next to PyTorch CPU (cpu_ops), and on each CUDA exposure next to PyTorch/cuDNN with
our GEMM vs cuBLAS (gpu_ops). Inputs and the PyTorch counterparts come from the op cards
(engine/reference/<family>.py, engine.ops); every result is checked against the float64
reference before it is timed. Each suite returns a list of row dicts; its table is
``*_HEADER`` and one ``_*_line(row)`` per row."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import numpy as np

from engine import validate
from engine.backend import get_backend
from engine.cards import Conv, Gemm, TorchEnv
from engine.measure import GpuTimer, compare_cpu, gpu_ceilings, torch_or_none
from engine.ops import Case, cases

# --------------------------------------------------------------------------------------
# Work per op: FLOPs (compute-bound ops) and the fewest bytes it must move.


def min_bytes(case: Case, args: tuple, outputs: tuple) -> int:
    """Each array input read once, each output written once, in-place state read and written."""
    read = sum(a.nbytes for a in args if hasattr(a, "nbytes"))
    written = sum(o.nbytes for o in outputs)  # outputs include the in-place-updated args
    return int(read + written)


# --------------------------------------------------------------------------------------
# PyTorch counterparts: each card names what PyTorch eager runs for the same op (on a GPU:
# cuDNN for conv and, where PyTorch picks it, batch norm; cuBLAS for GEMMs; PyTorch's own
# kernels for the rest).


def torch_counterpart(case: Case, t: list, device: str) -> Callable | None:
    """A zero-argument callable running case.op in PyTorch on args t (ours, as torch tensors),
    or None if the card names no counterpart."""
    if case.card.torch is None:
        return None
    import torch
    return case.card.torch(TorchEnv(torch, device, case.shape), *t)


def to_torch(args, device: str) -> list:
    import torch
    return [torch.as_tensor(a, device=device).clone() if isinstance(a, np.ndarray) else a for a in args]


# --------------------------------------------------------------------------------------
# Checking before timing. Convolution-shaped references (im2col, col2im, conv) are checked at
# batch 2 of the same layer: NumPy float64 at AlexNet batch 128 would take minutes, and the
# kernels take the same path whatever the batch. Every other op is checked at its own shape.


def check_case(case: Case, backend, xp) -> str:
    """'ok', or what went wrong, for case on backend, against the float64 reference."""
    if isinstance(case.shape, Conv) and case.shape.x[0] > 2:
        case = dataclasses.replace(case, shape=dataclasses.replace(case.shape, x=(2,) + case.shape.x[1:]))
    args = case.inputs()
    expected = _reference(case)
    got = validate.call(backend, case, validate.to_device(args, xp))
    passed, abs_err, _, failing = validate.compare(case, got, expected)
    return "ok" if passed else f"WRONG ({failing}, max abs err {abs_err:.2e})"


@functools.lru_cache(maxsize=1)
def _reference(case: Case) -> tuple:
    """The reference outputs of the case checked last: every exposure is checked against them."""
    return validate.reference_outputs(case)


# --------------------------------------------------------------------------------------
# Suites.


def cpu_op_cases(quick: bool) -> list[Case]:
    if quick:
        return cases("lenet", 256)
    return cases("lenet", 256) + cases("alexnet", 32)


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
        row = {"suite": "cpu_ops", "op": case.op, "direction": case.card.direction,
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


def _bind(backend, case: Case, args: list) -> Callable:
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


def gpu_op_cases(quick: bool) -> list[Case]:
    """LeNet (batch 256) and AlexNet (batch 128) shapes, our GEMM at 4096^3; quick: of AlexNet
    only the convolutions, where cuDNN's lead is largest."""
    alexnet = cases("alexnet", 128)
    if quick:
        alexnet = [c for c in alexnet if c.op.startswith("conv2d")]
    return cases("lenet", 256) + alexnet + [Case("gemm", "square", Gemm("4096^3", 4096, 4096, 4096))]


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
            row = {"suite": "gpu_ops", "op": case.op, "direction": case.card.direction,
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
