"""GPU benchmark: every op and direction on each CUDA exposure (cuda-ext, cuda-rtc) at the
LeNet (batch 256) and AlexNet (batch 128) shapes, next to PyTorch/cuDNN with TF32 off (the
FP32 column) and on (the TF32 column); our GEMM vs cuBLAS at the conv GEMM shapes and 4096^3;
the copy-bandwidth and SGEMM ceilings measured in the same run; then training images/s
(ours, PyTorch eager, torch.compile) for LeNet batch 256 and AlexNet batch 128.

CUDA events, warm-up, L2 flushed before each of >= 50 repeats, median; every kernel's
result is checked against the float64 reference before it is timed (a wrong one is
reported, not timed). Exits with a message where there is no GPU.

    python benchmarks/bench_gpu_ops.py [--quick] [--op NAME] [--no-write]

Same as ``python -m engine bench --suite gpu_ops --suite train``.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import bench, validate  # noqa: E402

if __name__ == "__main__":
    gpu, _, why = validate.cuda_status()
    if not gpu:
        print(f"bench_gpu_ops: no GPU ({why}); nothing measured")
        sys.exit(0)
    argv = ["--suite", "gpu_ops", "--suite", "train"] + sys.argv[1:]
    sys.exit(bench.main(argv, command=" ".join(["python benchmarks/bench_gpu_ops.py"] + sys.argv[1:])))
