"""The CUDA kernels, through both exposures (the pybind11 extension "cuda-ext" and NVRTC via
CuPy "cuda-rtc"), against the float64 reference: every op of engine.ops.OPS at odd
shapes, LeNet shapes and AlexNet layer shapes (small batches), with the inputs of
its card (engine/reference/<family>.py). Also: both exposures give bitwise the same result (they run one
source, kernels/*.cu); the dropout mask is bitwise the CPU's; two runs are bitwise equal;
writing into a reused (garbage-filled) out= buffer gives the same answer.

Skipped, with the reason, where there is no GPU or no CuPy.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from engine import validate
from engine.backend import get_backend
from engine.ops import Case, cases
from engine.tolerances import assert_close, tol

GPU, EXTENSION, WHY_NOT = validate.cuda_status()
NO_EXTENSION = "the compiled extension (cuda-ext) is not built" if GPU else f"no GPU/CuPy: {WHY_NOT}"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason=f"no GPU/CuPy: {WHY_NOT}")]

# small batches: the point is coverage of every shape family, not throughput
CASES = cases("odd") + cases("lenet", 8) + cases("alexnet", 2)
IDS = [f"{c.op}-{c.label}" for c in CASES]
EXPOSURES = [pytest.param("cuda-ext", marks=pytest.mark.skipif(not EXTENSION, reason=NO_EXTENSION)),
             "cuda-rtc"]


@functools.lru_cache(maxsize=None)
def _reference(case: Case) -> tuple:
    return validate.reference_outputs(case)


def _on_gpu(backend_name: str, case: Case, out_like=None) -> tuple:
    import cupy
    args = validate.to_device(case.inputs(), cupy)
    out = None if out_like is None else validate.garbage_like(out_like, cupy)
    result = validate.call(get_backend(backend_name), case, args, out=out)
    cupy.cuda.get_current_stream().synchronize()  # surface asynchronous launch errors here
    return result


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _assert_matches_reference(case: Case, got: tuple, what: str) -> None:
    expected = _reference(case)
    assert len(got) == len(expected), f"{what}: {len(got)} outputs, expected {len(expected)}"
    for name, g, e in zip(case.card.outputs, got, expected):
        g, e = _host(g), np.asarray(e)
        if e.dtype.kind in "iub":  # argmax, dropout mask: exact
            assert g.shape == e.shape and np.array_equal(g, e), f"{what}: {name} differs from the reference"
        else:
            assert g.dtype == np.float32, f"{what}: {name} is {g.dtype}, expected float32"
            assert_close(g, e, **tol(case.card.family), what=f"{what}: {name}")


@pytest.mark.parametrize("exposure", EXPOSURES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference(case, exposure):
    _assert_matches_reference(case, _on_gpu(exposure, case), f"{case.op} {exposure} {case.label}")


@pytest.mark.parametrize("exposure", EXPOSURES)
@pytest.mark.parametrize("case", [c for c in CASES if c.card.returns],
                         ids=[i for c, i in zip(CASES, IDS) if c.card.returns])
def test_writes_into_a_reused_out_buffer(case, exposure):
    # the executor hands every op last step's buffer: garbage in it must not leak through
    n_returned = case.card.returns
    shapes = _reference(case)[:n_returned]
    like = tuple(np.empty(e.shape, np.float32 if e.dtype.kind == "f" else e.dtype) for e in shapes)
    got = _on_gpu(exposure, case, out_like=like)
    _assert_matches_reference(case, got, f"{case.op} {exposure} {case.label} into out=")


@pytest.mark.parametrize("exposure", EXPOSURES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_two_runs_are_bitwise_equal(case, exposure):
    # a result that moves between runs on the same inputs is a race
    first, second = _on_gpu(exposure, case), _on_gpu(exposure, case)
    for name, a, b in zip(case.card.outputs, first, second):
        assert np.array_equal(_host(a), _host(b), equal_nan=True), \
            f"{case.op} {exposure} {case.label}: {name} differs between two runs"


@pytest.mark.skipif(not EXTENSION, reason=NO_EXTENSION)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_extension_and_nvrtc_agree_bitwise(case):
    # one source file, two compilers (nvcc, NVRTC): the same kernels must give the same bits
    ext, rtc = _on_gpu("cuda-ext", case), _on_gpu("cuda-rtc", case)
    for name, a, b in zip(case.card.outputs, ext, rtc):
        a, b = _host(a), _host(b)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), \
            f"{case.op} {case.label}: {name} from cuda-ext differs from cuda-rtc"


@pytest.mark.parametrize("exposure", EXPOSURES)
@pytest.mark.parametrize("shape, p, seed", [((256, 120), 0.5, 1234), ((3, 5, 7, 9), 0.3, 0),
                                            ((8, 4096), 0.5, -7), ((1000,), 0.9, 2**63 + 5),
                                            ((33, 17), 0.0, 99)])
def test_dropout_mask_is_bitwise_the_cpus(exposure, shape, p, seed):
    import cupy
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    y_cpu, mask_cpu = get_backend("numba").dropout_forward(x, p, seed)
    y_gpu, mask_gpu = get_backend(exposure).dropout_forward(cupy.asarray(x), p, seed)
    assert mask_gpu.dtype == np.uint8
    assert np.array_equal(mask_gpu.get(), mask_cpu), f"dropout mask on {exposure} differs from numba's"
    assert_close(y_gpu, y_cpu, **tol("dropout"), what=f"dropout y on {exposure} vs numba")
