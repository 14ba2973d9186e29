"""``python -m engine bench``: our kernels side by side with PyTorch (and cuDNN on a GPU).

The method is benchmarks/README.md (and the project's BENCHMARKING.md): same process,
same shapes, same dtype; a result is checked against the float64 reference before it is
timed; CPU timings alternate ours and PyTorch's and quote the median ratio; GPU timings
use CUDA events, a warm-up, an L2 flush before every repeat and the median of >= 50
repeats, with the copy bandwidth and cuBLAS SGEMM rate measured in the same run as the
ceilings (engine/measure.py). Inputs and the PyTorch counterparts come from the op cards
(engine/reference/<family>.py, engine.ops).

Suites (each returns a list of row dicts):

    cpu_ops      every op on the Numba backend at LeNet (batch 256) and AlexNet (batch 32)
                 shapes, next to PyTorch CPU
    gpu_ops      every op on each CUDA exposure at LeNet (256) and AlexNet (128) shapes
                 (quick: AlexNet's convolutions only), next to PyTorch/cuDNN (FP32 and
                 TF32), plus our GEMM vs cuBLAS
    train        training images/s: ours vs PyTorch eager (vs torch.compile on a GPU, unless quick)
    dist         weak scaling of data-parallel training on this machine's CPU: a LeNet step at
                 batch 128 per rank, 1 rank vs 2 (mpiexec, one thread each; and 2 that do not
                 communicate), alternating; the efficiency t(1 rank) / t(2 ranks) and the share
                 of a step in the all-reduce

``main(argv)`` runs the CPU suite always and the GPU suites where a GPU works, and writes
benchmarks/results/<date>-<device>.md and .json with what it ran on and the command.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from engine import validate
from engine.backend import get_backend
from engine.cards import Conv, Gemm, TorchEnv
from engine.cli import ArgumentParser
from engine.measure import (RESULTS_DIR, GpuTimer, compare_cpu, environment, gpu_available, gpu_ceilings,
                            images_per_second, torch_or_none, write_results)
from engine.models import torch_twin
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


# --------------------------------------------------------------------------------------
# End to end: training images/s on synthetic data.


INPUT_SHAPES = {"lenet": (1, 28, 28), "alexnet": (3, 224, 224)}


def _synthetic(name: str, batch: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + INPUT_SHAPES[name]).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int64)
    return x, y


def torch_train_step(name: str, batch: int, device: str, compile_model: bool = False, classes: int = 10):
    """A zero-argument SGD-with-momentum training step of the PyTorch model on fixed synthetic data."""
    import torch
    model = torch_twin(name, classes).to(device)
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
            if device == "cuda" and not quick:  # compiling takes longer than a quick run may
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
# Data parallel: weak scaling under mpiexec (engine.distributed).

DIST_MARK = "dist-result:"


def dist_step_worker(batch: int, steps: int, reduce: bool = True) -> None:
    """One rank of the dist suite (run under mpiexec): LeNet training steps on this rank's own
    synthetic batch (weak scaling: the work per rank is fixed); rank 0 prints every rank's
    step times, time in the gradient all-reduce, and a bare all-reduce of the same gradient
    timed after a barrier (the transfer alone, without waiting for a slower rank). With
    reduce=False the ranks train side by side without talking (the executor has no
    communicator): what the machine gives two processes at once, communication aside."""
    import json
    import time

    from engine import distributed
    from engine.executor import Executor
    from engine.models import lenet5
    from engine.optim import SGD
    comm = distributed.world()
    ex = Executor(lenet5(), INPUT_SHAPES["lenet"], optimizer=SGD(lr=0.01, momentum=0.9),
                  comm=comm if reduce else None)
    x, y = _synthetic("lenet", batch, 10, seed=comm.rank)
    for _ in range(5):
        ex.train_step(x, y)
    comm.mpi.Barrier()
    comm.allreduce_seconds, times = 0.0, []
    for _ in range(steps):
        start = time.perf_counter()
        ex.train_step(x, y)
        times.append(time.perf_counter() - start)
    in_allreduce = comm.allreduce_seconds
    bare, g = [], ex.grads_flat.copy()
    for _ in range(30):
        comm.mpi.Barrier()
        start = time.perf_counter()
        comm.mpi.Allreduce(comm.MPI.IN_PLACE, g)
        bare.append(time.perf_counter() - start)
    every = comm.mpi.gather({"step_s": times, "allreduce_s": in_allreduce, "bare_allreduce_s": float(np.median(bare)),
                             "threads": int(os.environ.get("NUMBA_NUM_THREADS", 0))}, root=0)
    if comm.rank == 0:
        print(DIST_MARK, json.dumps({"ranks": every, "gradient_floats": int(ex.grads_flat.size)}), flush=True)


def _dist_launch(ranks: int, batch: int, steps: int, reduce: bool = True) -> dict:
    import json
    import subprocess
    from engine.distributed import mpiexec
    code = f"from engine.bench import dist_step_worker; dist_step_worker({batch}, {steps}, {reduce})"
    env = dict(os.environ, ENGINE_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=600)
    lines = [line for line in p.stdout.splitlines() if line.startswith(DIST_MARK)]
    if p.returncode or not lines:
        raise RuntimeError(f"mpiexec -n {ranks} exited {p.returncode}: {p.stderr.strip()[-500:]}")
    result = json.loads(lines[-1][len(DIST_MARK):])
    per_rank = result["ranks"]
    return {"step_s": max(float(np.median(r["step_s"])) for r in per_rank),
            "allreduce_share": max(r["allreduce_s"] / sum(r["step_s"]) for r in per_rank),
            "bare_allreduce_s": max(r["bare_allreduce_s"] for r in per_rank),
            "threads_per_rank": per_rank[0]["threads"], "gradient_floats": result["gradient_floats"]}


# the arms of the dist suite: (ranks, all-reduce); 2 ranks without one train side by side
# without talking, the most 2 processes get from this machine (shared caches, memory, clock)
DIST_ARMS = ((1, True), (2, True), (2, False))


def run_dist(quick: bool = False, log=print) -> list[dict]:
    """Weak scaling: a LeNet step at batch 128 per rank, one thread per rank, on 1 rank, on 2
    ranks, and on 2 that do not communicate; the arms alternate, repeats 5 (1 quick). The
    efficiency is the median over repeats of t(1) / t(2), ideal 100%; the same against the
    2 silent ranks separates what the machine loses from what communication costs."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        log("dist: mpi4py is not installed (pip install -e '.[dist]'): suite skipped")
        return [{"suite": "dist", "note": "not run: mpi4py is not installed"}]
    batch, steps, repeats = 128, 30 if quick else 60, 1 if quick else 5
    runs: dict = {arm: [] for arm in DIST_ARMS}
    for r in range(repeats):
        for arm in (DIST_ARMS if r % 2 == 0 else DIST_ARMS[::-1]):
            runs[arm].append(_dist_launch(*arm[:1], batch, steps, reduce=arm[1]))
    one = [x["step_s"] for x in runs[(1, True)]]
    rows = []
    for (ranks, reduce), results in runs.items():
        times = [x["step_s"] for x in results]
        row = {"suite": "dist", "model": "lenet", "batch_per_rank": batch, "ranks": ranks, "allreduce": reduce,
               "threads_per_rank": results[0]["threads_per_rank"], "steps_timed": steps, "repeats": repeats,
               "gradient_floats": results[0]["gradient_floats"], "step_s": float(np.median(times)),
               "step_s_per_repeat": times}
        if reduce:
            row["allreduce_share"] = float(np.median([x["allreduce_share"] for x in results]))
            row["bare_allreduce_s"] = float(np.median([x["bare_allreduce_s"] for x in results]))
        if ranks > 1:
            row["efficiency"] = float(np.median([a / b for a, b in zip(one, times)]))
        rows.append(row)
        log(_dist_line(row))
    return rows


DIST_HEADER = (f"{'model':6} {'batch/rank':>10} {'ranks':>5} {'allreduce':>9} {'threads':>7} {'step ms':>8} "
               f"{'in allreduce':>12} {'bare allreduce us':>17} {'efficiency':>10}")


def _dist_line(row: dict) -> str:
    if "step_s" not in row:
        return row.get("note", "")
    efficiency = f"{row['efficiency']:10.0%}" if "efficiency" in row else f"{'-':>10}"
    share = f"{row['allreduce_share']:12.1%}" if "allreduce_share" in row else f"{'-':>12}"
    bare = f"{row['bare_allreduce_s'] * 1e6:17.0f}" if "bare_allreduce_s" in row else f"{'-':>17}"
    return (f"{row['model']:6} {row['batch_per_rank']:10d} {row['ranks']:5d} {'yes' if row['allreduce'] else 'no':>9} "
            f"{row['threads_per_rank']:7d} {row['step_s'] * 1e3:8.1f} {share} {bare} {efficiency}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m engine bench",
        description="Time our kernels next to PyTorch (CPU) and cuDNN/cuBLAS (GPU); write benchmarks/results/.")
    parser.add_argument("--quick", action="store_true", help="LeNet shapes only, fewer repeats")
    parser.add_argument("--suite", action="append", choices=("cpu_ops", "gpu_ops", "train", "dist"),
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
    suites = args.suite or ["cpu_ops", "gpu_ops", "train", "dist"]
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
    if "dist" in suites:
        print(DIST_HEADER)
        body = []
        rows += run_dist(args.quick, log=lambda line: (print(line), body.append(line)))
        sections.append(("Data parallel, weak scaling (CPU, mpiexec, LeNet batch 128 per rank, one thread per rank; "
                         "efficiency t(1 rank) / t(this); 'allreduce no': 2 ranks side by side without talking; "
                         "'in allreduce': share of a step, waiting for the other rank included; 'bare': the "
                         "all-reduce alone after a barrier)", DIST_HEADER, body))

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
