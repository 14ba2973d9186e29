"""pytest-benchmark: every Numba op at the LeNet shapes (batch 256) next to PyTorch CPU, one
benchmark group per (op, shape) so the two sit side by side; the LeNet training step too.

    python -m pytest benchmarks/ --benchmark-only
    python -m pytest benchmarks/test_bench_cpu_ops.py --benchmark-only -k conv2d

Not part of the default test run (testpaths is tests/). Each kernel is checked against the
float64 reference before it is timed. The fuller comparison (AlexNet shapes, ratios,
results files) is benchmarks/bench_cpu_ops.py.
"""
import os

import numpy as np
import pytest

from engine import bench_ops, bench_train, validate
from engine.backend import get_backend
from engine.measure import torch_or_none
from engine.ops import cases
from engine.tolerances import assert_close, tol

CASES = cases("lenet", 256)
IDS = [f"{c.op}-{c.label}" for c in CASES]
ROUNDS = dict(rounds=5, warmup_rounds=1, iterations=1)  # bounded: 2-core CI machines are slow


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_numba(benchmark, case):
    numba = get_backend("numba")
    assert bench_ops.check_case(case, numba, np) == "ok"  # a fast wrong kernel is a bug, not a result
    benchmark.group = f"{case.op} {case.label}"
    benchmark.pedantic(bench_ops._bind(numba, case, validate.to_device(case.inputs(), np)), **ROUNDS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch(benchmark, case):
    pytest.importorskip("torch", reason="PyTorch is not installed: nothing to compare against")
    fn = bench_ops.torch_counterpart(case, bench_ops.to_torch(case.inputs(), "cpu"), "cpu")
    if fn is None:
        pytest.skip(f"PyTorch has no counterpart of {case.op}")
    benchmark.group = f"{case.op} {case.label}"
    benchmark.pedantic(fn, **ROUNDS)


def test_lenet_train_step_torch(benchmark):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    benchmark.group = "train lenet batch 256 cpu"
    benchmark.pedantic(bench_train.torch_train_step("lenet", 256, "cpu"), rounds=5, warmup_rounds=2)


def test_lenet_train_step_ours(benchmark):
    try:
        step = bench_train.our_train_step("lenet", 256, "cpu")
    except NotImplementedError as exc:
        pytest.skip(f"our executor is not usable from bench yet: {exc}")
    benchmark.group = "train lenet batch 256 cpu"
    benchmark.pedantic(step, rounds=5, warmup_rounds=2)


# A ratio means something only if PyTorch computes the same thing: check each counterpart
# against the float64 reference on small shapes (plain test; --benchmark-only skips it).
SAME_OP = [c for c in cases("odd") + cases("lenet", 4)
           if not c.op.startswith("dropout") and not c.op.endswith("_update")  # other RNG / stateful
           and not (c.op.startswith("batch_norm") and not c.shape.training)]


@pytest.mark.parametrize("case", SAME_OP, ids=[f"{c.op}-{c.label}" for c in SAME_OP])
def test_torch_counterpart_computes_the_same_op(case):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    args = case.inputs()
    expected = validate.reference_outputs(case, args)
    got = bench_ops.torch_counterpart(case, bench_ops.to_torch(args, "cpu"), "cpu")()
    got = got if isinstance(got, tuple) else (got,)
    returned = case.card.returns
    for name, g, e in zip(case.card.outputs[:returned], got, expected[:returned]):
        # PyTorch is float32 too, and sums in its own order: ten times our float32 bounds
        bounds = {k: 10 * v for k, v in tol(case.card.family).items()}
        assert_close(g.numpy(), e, **bounds, what=f"torch counterpart of {case.op} {case.label}: {name}")
