"""``python -m engine bench``: our kernels side by side with PyTorch (and cuDNN on a GPU).

The method is benchmarks/README.md (and the project's BENCHMARKING.md): same process,
same shapes, same dtype; a result is checked against the float64 reference before it is
timed; CPU timings alternate ours and PyTorch's and quote the median ratio; GPU timings
use CUDA events, a warm-up, an L2 flush before every repeat and the median of >= 50
repeats, with the copy bandwidth and cuBLAS SGEMM rate measured in the same run as the
ceilings (engine/measure.py). Inputs and the PyTorch counterparts come from the op cards
(engine/reference/<family>.py, engine.ops).

This module is the runner (the command line, the tables, the results files). Each suite
lives in its own module, ``run_<suite>(..., log)`` returning a list of row dicts, with its
table's ``*_HEADER`` and line:

    cpu_ops   engine/bench_ops.py    every op on the Numba backend at LeNet (batch 256) and
                                     AlexNet (batch 32) shapes, next to PyTorch CPU
    gpu_ops   engine/bench_ops.py    every op on each CUDA exposure at LeNet (256) and AlexNet
                                     (128) shapes (quick: AlexNet's convolutions only), next
                                     to PyTorch/cuDNN (FP32 and TF32), plus our GEMM vs cuBLAS
    train     engine/bench_train.py  training images/s: ours vs PyTorch eager (vs torch.compile
                                     on a GPU, unless quick)
    dist      engine/bench_dist.py   weak scaling of data-parallel training on this machine's
                                     CPU: a LeNet step at batch 128 per rank, 1 rank vs 2
                                     (mpiexec, one thread each; and 2 that do not communicate),
                                     alternating; the efficiency t(1 rank) / t(2 ranks) and
                                     the share of a step in the all-reduce

``main(argv)`` runs the CPU suite always and the GPU suites where a GPU works, and writes
benchmarks/results/<date>-<device>.md and .json with what it ran on and the command.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from engine import validate
from engine.bench_dist import DIST_HEADER, run_dist
from engine.bench_ops import CPU_HEADER, GPU_HEADER, run_cpu_ops, run_gpu_ops
from engine.bench_train import run_train
from engine.cli import ArgumentParser
from engine.measure import RESULTS_DIR, environment, gpu_available, write_results


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
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.ops import OPS
    unknown = sorted(set(args.op or ()) - set(OPS))
    if unknown:
        parser.error(f"--op: no op named {', '.join(map(repr, unknown))} (python -m engine validate --help lists "
                     f"them; e.g. conv2d_forward, relu_backward)")
    out_dir = Path(args.out_dir)
    if not args.no_write and out_dir.exists() and not out_dir.is_dir():
        parser.error(f"--out-dir: {out_dir} exists and is not a directory")
    command = command or " ".join(["python -m engine bench"] + argv)
    env = environment(command)
    if args.date:
        env["date"] = args.date
    gpu = gpu_available() and not args.cpu_only
    # --op names ops: without --suite, only the op suites run
    suites = args.suite or (["cpu_ops", "gpu_ops"] if args.op else ["cpu_ops", "gpu_ops", "train", "dist"])
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
        sections.append(("Training throughput (synthetic data)", "model batch device impl images/s (CPU: GEMM GFLOP/s, share of the SGEMM ceiling, speedup vs PyTorch)", body))
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
        md, js = write_results(env, device, sections, rows, extra, out_dir)
        print(f"bench: wrote {md} and {js}")
    wrong = [r for r in rows if r.get("check", "ok") != "ok"]
    if wrong:
        print(f"bench: {len(wrong)} kernel(s) gave wrong results and were not timed", file=sys.stderr)
    return 1 if wrong else 0


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


if __name__ == "__main__":
    sys.exit(main())
