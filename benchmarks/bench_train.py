"""End-to-end training throughput on synthetic data: images/s of our executor, PyTorch
eager and (on a GPU) torch.compile, for LeNet batch 256 (CPU and GPU) and AlexNet
batch 128 (GPU).

    python benchmarks/bench_train.py [--quick] [--cpu-only] [--no-write]

Same as ``python -m engine bench --suite train``.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import bench  # noqa: E402

if __name__ == "__main__":
    argv = ["--suite", "train"] + sys.argv[1:]
    sys.exit(bench.main(argv, command=" ".join(["python benchmarks/bench_train.py"] + sys.argv[1:])))
