"""pytest-benchmark: every op on each CUDA exposure at the LeNet shapes (batch 256) next to
PyTorch/cuDNN on the GPU. Skipped, with the reason, where there is no GPU.

pytest-benchmark times with the host clock, so every call here ends with a device
synchronise; the figures to quote come from benchmarks/bench_gpu_ops.py (CUDA events, L2
flush, median of >= 50).
"""
import pytest

from engine import bench_ops, validate
from engine.backend import get_backend
from engine.ops import cases

GPU, EXTENSION, WHY_NOT = validate.cuda_status()
pytestmark = pytest.mark.skipif(not GPU, reason=f"no GPU/CuPy: {WHY_NOT}")

CASES = cases("lenet", 256)
IDS = [f"{c.op}-{c.label}" for c in CASES]
ROUNDS = dict(rounds=50, warmup_rounds=3, iterations=1)
NO_EXTENSION = "the compiled extension (cuda-ext) is not built" if GPU else f"no GPU/CuPy: {WHY_NOT}"
EXPOSURES = [pytest.param("cuda-ext", marks=pytest.mark.skipif(not EXTENSION, reason=NO_EXTENSION)), "cuda-rtc"]


def _synced(fn, synchronize):
    def run():
        result = fn()
        synchronize()
        return result
    return run


@pytest.mark.parametrize("exposure", EXPOSURES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ours(benchmark, case, exposure):
    import cupy
    backend = get_backend(exposure)
    assert bench_ops.check_case(case, backend, cupy) == "ok"
    benchmark.group = f"{case.op} {case.label}"
    fn = bench_ops._bind(backend, case, validate.to_device(case.inputs(), cupy))
    benchmark.pedantic(_synced(fn, cupy.cuda.Device().synchronize), **ROUNDS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_cudnn(benchmark, case):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 column
    fn = bench_ops.torch_counterpart(case, bench_ops.to_torch(case.inputs(), "cuda"), "cuda")
    if fn is None:
        pytest.skip(f"PyTorch has no counterpart of {case.op}")
    benchmark.group = f"{case.op} {case.label}"
    benchmark.pedantic(_synced(fn, torch.cuda.synchronize), **ROUNDS)
