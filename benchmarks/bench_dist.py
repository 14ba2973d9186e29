"""Data-parallel weak scaling on this machine's CPU: a LeNet training step at batch 128 per
rank on 1 rank and on 2 (mpiexec, one thread each), alternating; the efficiency t(1)/t(2)
and the share of a step spent in the gradient all-reduce.

    python benchmarks/bench_dist.py [--quick] [--no-write]

Same as ``python -m engine bench --suite dist``. Needs mpi4py and the mpich wheel
(pip install -e '.[dist]').
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import bench  # noqa: E402

if __name__ == "__main__":
    argv = ["--suite", "dist"] + sys.argv[1:]
    sys.exit(bench.main(argv, command=" ".join(["python benchmarks/bench_dist.py"] + sys.argv[1:])))
