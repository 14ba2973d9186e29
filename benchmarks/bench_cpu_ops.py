"""CPU benchmark: every Numba op, forward and backward, at the LeNet shapes (batch 256) and
the AlexNet layer shapes (batch 32), next to PyTorch CPU in the same process (alternating,
median ratio), then the LeNet training step (ours vs the same model in PyTorch eager).

    python benchmarks/bench_cpu_ops.py                       # full run, writes results/
    python benchmarks/bench_cpu_ops.py --quick --no-write    # LeNet shapes only, print only
    python benchmarks/bench_cpu_ops.py --date 2026-11-22 --device-name cpu-2core

Same as ``python -m engine bench --cpu-only``; the runner is engine/bench.py, the suite
engine/bench_ops.py.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import bench  # noqa: E402

if __name__ == "__main__":
    argv = ["--cpu-only"] + sys.argv[1:]
    sys.exit(bench.main(argv, command=" ".join(["python benchmarks/bench_cpu_ops.py"] + sys.argv[1:])))
