"""Data parallel, checked as a user runs it: `python -m engine train` alone and under mpiexec,
the parameters each run ends with compared (stage 7 of benchmarks/gpu_acceptance.sh).

    python benchmarks/dist_check.py WORK            # on a GPU: --device cuda
    python benchmarks/dist_check.py WORK --dry-run  # no GPU: the CPU runs alone

Every run trains LeNet for one epoch of 8 steps (synthetic data, global batch 128, SGD
with momentum, constant learning rate) with a checkpoint; each data-parallel run must end
where the single process does, within the data-parallel tolerance (engine.tolerances).
On a GPU:

    nccl-1   mpiexec -n 1, ENGINE_GPU_REDUCE=nccl: one NCCL communicator, allReduce on
             CuPy's stream (NCCL refuses two ranks on one GPU, so world size 1 is what one
             GPU can check; it must match bitwise: a one-rank sum changes nothing)
    host-1   mpiexec -n 1, ENGINE_GPU_REDUCE=mpi: staged through pinned host memory
    auto-2   mpiexec -n 2, the default: NCCL with a GPU per rank; on one GPU the ranks
             share it, NCCL is refused and the run must say it stages through the host
The dry run: cpu-2 (mpiexec -n 2 on the CPU). Writes WORK/distributed.json; exits 1 when
a run fails or strays.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.distributed import mpiexec  # noqa: E402
from engine.tolerances import is_close, tol  # noqa: E402

TRAIN = ["-m", "engine", "train", "lenet", "--data", "synthetic", "--synthetic-size", "1024", "--epochs", "1",
         "--batch-size", "128", "--optimizer", "sgd", "--schedule", "constant", "--val-split", "0", "--no-progress"]


def run(work: Path, name: str, device: str, ranks: int | None, env: dict, timeout: float) -> dict:
    command = ([mpiexec(), "-n", str(ranks)] if ranks else []) + [sys.executable, *TRAIN, "--device", device,
                                                                     "--checkpoint", str(work / f"dist-{name}.npz")]
    start = time.perf_counter()
    try:
        p = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=dict(os.environ, **env))
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        out, err = (s.decode() if isinstance(s, bytes) else s for s in (out, err))
    print(f"$ {' '.join(command)}  [{' '.join(f'{k}={v}' for k, v in env.items())}]\n{out}{err}", flush=True)
    said = [line for line in (out + err).splitlines() if line.startswith(("data parallel:", "distributed:", "error:"))]
    return {"ranks": ranks, "env": env, "exit": rc, "seconds": round(time.perf_counter() - start, 1), "said": said}


def params(path: Path) -> dict:
    return load_checkpoint(path)["executor"]["params"]


def compare(work: Path, name: str, reference: str) -> dict:
    mine, theirs = params(work / f"dist-{name}.npz"), params(work / f"dist-{reference}.npz")
    diff = max(float(np.abs(mine[k].astype(np.float64) - theirs[k]).max()) for k in theirs)
    return {"max_abs_diff": diff, "bitwise": all(np.array_equal(mine[k], theirs[k]) for k in theirs),
            "within_tolerance": all(is_close(mine[k], theirs[k], **tol("data_parallel")) for k in theirs)}


def write(work: Path, report: dict) -> None:
    (work / "distributed.json").write_text(json.dumps(report, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the CPU runs only")
    parser.add_argument("--timeout", type=float, default=40.0, help="seconds per run (default 40)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"mode": "dry-run" if args.dry_run else "gpu", "runs": {}}
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        report["skipped"] = "mpi4py is not installed (carry the mpi4py and mpich wheels with --wheels)"
    if "skipped" not in report and mpiexec() is None:
        report["skipped"] = "no mpiexec beside python or on PATH (carry the mpich wheel with --wheels)"
    if "skipped" not in report:
        device, gpus = "cpu", 0
        if not args.dry_run:
            import cupy
            device, gpus = "cuda", cupy.cuda.runtime.getDeviceCount()
            report["gpus"] = gpus
        # name, ranks, environment, what the run must say, whether it must match bitwise
        plan = [("single", None, {}, "", True)] + ([("cpu-2", 2, {}, "averaged by MPI", False)] if args.dry_run else [
            ("nccl-1", 1, {"ENGINE_GPU_REDUCE": "nccl"}, "averaged by NCCL", True),
            ("host-1", 1, {"ENGINE_GPU_REDUCE": "mpi"}, "averaged by MPI through host memory", True),
            ("auto-2", 2, {}, "averaged by NCCL" if gpus >= 2 else "share the GPU", False)])
        for name, ranks, env, says, bitwise in plan:
            report["runs"][name] = result = run(args.work, name, device, ranks, env, args.timeout)
            result["ok"] = result["exit"] == 0 and (not says or any(says in line for line in result["said"]))
            if result["ok"] and name != "single" and report["runs"]["single"]["exit"] == 0:
                result.update(compare(args.work, name, "single"))
                result["ok"] = result["within_tolerance"] and (result["bitwise"] or not bitwise)
            write(args.work, report)  # after every run: the stage's timeout may cut the next
    write(args.work, report)
    print(json.dumps(report, indent=1))
    if "skipped" in report:
        print(f"dist_check: skipped: {report['skipped']}")
        return 0 if args.dry_run else 3
    failed = [name for name, r in report["runs"].items() if not r["ok"]]
    print(f"dist_check: {'failed: ' + ', '.join(failed) if failed else 'every run ended where one process does'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
