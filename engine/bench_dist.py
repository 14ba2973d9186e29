"""The dist suite of ``python -m engine bench`` (run by engine/bench.py): weak scaling of
data-parallel training under mpiexec (engine.distributed) on this machine's CPU."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from engine.bench_train import INPUT_SHAPES, _synthetic

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
    code = f"from engine.bench_dist import dist_step_worker; dist_step_worker({batch}, {steps}, {reduce})"
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
