"""The CUDA path run without a GPU (CI runs this): the one copy of every kernel in kernels/,
compiled by the host compiler against csrc/emulate_cuda.h and launched through BOTH real
exposures -- the extension's launch-by-name (bindings/module.cpp) and the NVRTC path's
cupy.RawModule call, emulated -- from the same launch descriptions and glue the GPU runs.

* every op at the odd shapes matches the float64 reference, run twice bitwise equal (a
  race would show), and into garbage-filled out= buffers; the two exposures agree bitwise;
* the ENGINE_GEMM=cublas path, the conv glue's chunking and split-K, optional bias and
  host-scalar dloss;
* the gate (engine.functional + engine.checks) rejects, on device arrays, what must not
  reach a kernel;
* the executor trains on the emulated GPU path like on Numba;
* the 128x128 GEMM tiles at ragged and misaligned shapes;
* opt-in: the same runs built with AddressSanitizer (ENGINE_TEST_ASAN=1).

What the emulation does not model (memory spaces, streams, warp-synchronous execution
outside shuffles, atomics' ordering) is checked on a GPU by tests/test_cuda_ops.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import emulated_cuda as emu

pytestmark = pytest.mark.slow  # a g++ build of the extension, then kernels on OS threads


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    pytest.importorskip("pybind11", reason="pybind11 is not importable (pip install -e '.[test]')")
    try:
        return emu.load_module(emu.build_emulated_extension(tmp_path_factory.mktemp("emulated_cuda")))
    except emu.BuildUnavailable as why:
        pytest.skip(str(why))


@pytest.fixture
def cupy(extension, monkeypatch):
    return emu.install(monkeypatch, extension)


@pytest.fixture
def backends(extension, cupy):
    return emu.backends(extension)


@pytest.mark.parametrize("exposure", ["ext", "rtc"])
def test_every_op_matches_the_reference(backends, exposure):
    """Every op through the real glue and launch path of one exposure, odd shapes; twice
    (bitwise equal), and again into garbage-filled out= buffers."""
    from engine.ops import OPS, cases
    odd = cases("odd")
    assert {c.op for c in odd} == set(OPS), "the odd shape set leaves an op out"
    failures = emu.run_cases_on(backends[exposure], odd, out=True)
    assert not failures, "\n".join(failures)


def test_both_exposures_agree_bitwise(backends, cupy):
    """One description, one grid rule: the extension and the NVRTC path launch the same kernel
    the same way, so they give the same bits (on a GPU too: tests/test_cuda_ops.py)."""
    from engine import validate
    from engine.ops import cases
    for case in cases("odd"):
        ext, rtc = (validate.call(backends[e], case, validate.to_device(case.inputs(), cupy)) for e in ("ext", "rtc"))
        for name, a, b in zip(case.card.outputs, ext, rtc):
            assert np.array_equal(a, b, equal_nan=True), f"{case.op} {case.label}: {name} differs"


def test_the_cublas_path_matches_the_reference(backends, monkeypatch):
    """ENGINE_GEMM=cublas routes every product through cupy.matmul (NumPy's, here)."""
    from engine.ops import cases
    monkeypatch.setenv("ENGINE_GEMM", "cublas")
    products = [c for c in cases("odd") if c.card.module in ("conv", "linear") and c.op != "add"]
    failures = emu.run_cases_on(backends["ext"], products, repeat_check=False, out=True)
    assert not failures, "\n".join(failures)


class CountingExposure:
    """An exposure that counts the kernels it launches, then launches them."""

    def __init__(self, inner):
        self.inner, self.launched = inner, []

    def launch(self, kernel, *args):
        self.launched.append((kernel.name, args))
        self.inner.launch(kernel, *args)


def test_conv_glue_chunks_the_batch_and_splits_the_weight_gradient(extension, cupy, monkeypatch):
    """A tiny chunk size forces several im2col chunks; small outputs force split-K over n."""
    from engine.backend import namespace
    from engine.cuda import conv
    from engine.cuda.launch import Ext
    from engine.reference import conv as ref
    from engine.tolerances import assert_close, tol
    counting = CountingExposure(Ext(extension))
    backend = namespace("cuda-counting", "engine.cuda", counting)
    monkeypatch.setattr(conv, "CHUNK_ELEMENTS", 3 * 5 * 5 * 8 * 8 * 2)  # two images per chunk
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    dy = rng.standard_normal((7, 4, 8, 8)).astype(np.float32)
    xd, wd, bd, dyd = (cupy.asarray(a) for a in (x, w, b, dy))
    y = backend.conv2d_forward(xd, wd, bd, (1, 1), (1, 1))
    assert_close(y, ref.conv2d_forward(x, w, b, (1, 1), (1, 1)), **tol("conv"), what="forward")
    gemms = [args for name, args in counting.launched if name.startswith("gemm_") and "reduce" not in name]
    assert [args[12] for args in gemms] == [2, 2, 2, 1], "a batch of 7 in chunks of 2 (the GEMM's batch argument)"
    counting.launched.clear()
    dw = backend.conv2d_backward_weight(dyd, xd, w.shape, (1, 1), (1, 1))
    assert_close(dw, ref.conv2d_backward_weight(dy, x, w.shape, (1, 1), (1, 1)), **tol("conv"), what="dw")
    assert any(name == "gemm_reduce_splits_kernel" for name, _ in counting.launched), "no split-K partials"
    dx = backend.conv2d_backward_data(dyd, wd, x.shape, (1, 1), (1, 1))
    assert_close(dx, ref.conv2d_backward_data(dy, w, x.shape, (1, 1), (1, 1)), **tol("conv"), what="dx")


def test_glue_handles_optional_bias_and_host_scalar_dloss(backends, cupy):
    from engine.reference import linear as ref_linear, loss as ref_loss
    from engine.tolerances import assert_close, tol
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((3, 7)).astype(np.float32)
    y = backends["ext"].linear_forward(cupy.asarray(x), cupy.asarray(w), None)
    assert_close(y, ref_linear.linear_forward(x, w, None), **tol("linear"), what="linear without bias")
    pred, target = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    expected = ref_loss.mse_loss_backward(pred, target, 0.5)
    for dloss in (0.5, np.float32(0.5), np.array(0.5), cupy.asarray(np.array([0.5], np.float32))):
        got = backends["rtc"].mse_loss_backward(cupy.asarray(pred), cupy.asarray(target), dloss)
        assert_close(got, expected, **tol("loss"), what=f"mse backward with dloss {type(dloss).__name__}")


def test_the_gate_rejects_what_must_not_reach_a_kernel(backends, cupy, monkeypatch):
    """engine.functional on device arrays: every bad input is an error naming the op before any
    launch; what can be made right (a strided view) is, and then runs the kernels."""
    import engine.functional as F
    from engine import backend
    from engine.reference.activation import ROWS
    monkeypatch.setitem(backend._cache, "cuda", backends["ext"])
    x = cupy.asarray(np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32))
    with pytest.raises(ValueError, match="add: expected all arrays on one device"):
        F.add(x, np.zeros(x.shape, np.float32))
    with pytest.raises(TypeError, match="relu: input must be float32 or float64, got dtype float16"):
        F.relu(cupy.asarray(np.zeros(3, np.float16)))
    with pytest.raises(ValueError, match="conv2d: input has 3 channels but weight expects 2"):
        F.conv2d(x, cupy.asarray(np.zeros((4, 2, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="max_pool2d: padding must be at most half the kernel"):
        F.max_pool2d(x, 2, 2, padding=2)
    with pytest.raises(TypeError, match="cross_entropy: labels must have an integer dtype"):
        F.cross_entropy(cupy.asarray(np.zeros((2, 5), np.float32)), cupy.asarray(np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match="cross_entropy: label 5 out of range"):
        F.cross_entropy(cupy.asarray(np.zeros((2, 5), np.float32)), cupy.asarray(np.array([0, 5])))
    with pytest.raises(TypeError, match="dropout: seed must be an int"):
        F.dropout(x, 0.5, seed=1.5)
    strided = x[:, :, :, ::2]  # not C-contiguous: copied before the kernel sees it
    expected = ROWS["relu"].forward(np.asarray(strided, np.float64))
    assert np.array_equal(F.relu(strided), expected.astype(np.float32))


def test_executor_trains_on_emulated_cuda_like_on_numba(backends):
    """The GPU path end to end: the executor on (stand-in) device arrays, the real kernels,
    launch path and glue, a small CNN with fused conv+ReLU and BN+ReLU, pooling and dropout,
    SGD with momentum: the losses follow the Numba executor's step for step (dropout masks
    are the same bits)."""
    from engine import nn
    from engine.executor import Executor
    from engine.optim import SGD
    from engine.tolerances import tol

    def model():
        nn.manual_seed(7)
        # conv+ReLU and BN+ReLU run fused (bias_relu, batch_norm_relu kernels)
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(3),
                             nn.ReLU(), nn.Flatten(), nn.Dropout(0.25), nn.Linear(3 * 4 * 4, 5))

    rng = np.random.default_rng(8)
    batches = [(rng.standard_normal((4, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, 4)) for _ in range(3)]
    losses = {}
    for name, kwargs in (("numba", dict(device="cpu")), ("emulated", dict(device="cuda", backend=backends["rtc"]))):
        ex = Executor(model(), (1, 8, 8), optimizer=SGD(0.1, momentum=0.9), seed=3, **kwargs)
        losses[name] = [float(ex.train_step(x, y)) for x, y in batches]
        losses[name].append(float(ex.predict(batches[0][0]).sum()))
    assert np.allclose(losses["emulated"], losses["numba"], rtol=tol("training")["rtol"] * 10), losses


def test_frozen_layers_weights_and_softmax_layers_run_on_emulated_cuda_like_on_numba(backends):
    """Freezing on the GPU path: the optimizer on the head of the flat device arrays, a frozen
    conv+ReLU (ReLU mask only, no weight gradient) and a frozen batch norm (eval form, scratch
    gradients), a LogSoftmax layer before the loss; weights loaded by name from host arrays."""
    from engine import nn
    from engine.executor import Executor
    from engine.optim import AdamW
    from engine.tolerances import tol

    def model():
        nn.manual_seed(11)
        m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                          nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 5),
                          nn.LogSoftmax())
        m.layers[2].trainable = m.layers[4].trainable = False  # frozen, downstream of the trainable first conv
        return m

    rng = np.random.default_rng(9)
    batches = [(rng.standard_normal((4, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, 4)) for _ in range(3)]
    start = {k: v.astype(np.float32) * 0.5 for k, v in Executor(model(), (1, 8, 8)).weights().items()}
    losses, frozen = {}, {}
    for name, kwargs in (("numba", dict(device="cpu")), ("emulated", dict(device="cuda", backend=backends["rtc"]))):
        ex = Executor(model(), (1, 8, 8), optimizer=AdamW(1e-2), seed=3, **kwargs)
        assert ex.load_weights(start).complete
        losses[name] = [float(ex.train_step(x, y)) for x, y in batches]
        losses[name].append(float(ex.predict(batches[0][0]).sum()))
        frozen[name] = {k: v for k, v in ex.weights().items() if k.startswith(("2.", "4."))}
    assert np.allclose(losses["emulated"], losses["numba"], rtol=tol("training")["rtol"] * 10), losses
    for k, v in frozen["emulated"].items():
        assert np.array_equal(v, start[k]), f"{k} moved on the emulated GPU"


def test_seeing_inside_on_emulated_cuda_like_on_numba(backends):
    """activations(), gradients() and the layers' live weights on (stand-in) device arrays: the
    values Numba gives, as host arrays, nothing on the device moved by gradients(); and the
    model trained on the device, put in a CPU executor, starts from its weights (fetched)."""
    from engine import nn
    from engine.executor import Executor
    from engine.optim import SGD
    from engine.tolerances import assert_close, tol

    def model():
        nn.manual_seed(7)
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(3),
                             nn.ReLU(), nn.Flatten(), nn.Dropout(0.25), nn.Linear(3 * 4 * 4, 5))

    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((4, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, 4)
    ex, seen = {}, {}
    for name, kwargs in (("numba", dict(device="cpu")), ("emulated", dict(device="cuda", backend=backends["rtc"]))):
        ex[name] = Executor(model(), (1, 8, 8), optimizer=SGD(0.1, momentum=0.9), seed=3, **kwargs)
        ex[name].train_step(x, y)
        before = ex[name].state_dict()
        seen[name] = (ex[name].activations(x), ex[name].gradients(x, y, activations=True))
        after = ex[name].state_dict()
        assert after["step"] == 1 and all(np.array_equal(after[part][k], before[part][k])
                                          for part in ("params", "buffers") for k in before[part])
    (acts, grads), (ref_acts, ref_grads) = seen["emulated"], seen["numba"]
    for k in ref_acts:
        assert type(acts[k]) is np.ndarray
        assert_close(acts[k], ref_acts[k], **tol("training"), what=f"activation {k}")
    for part in ("params", "activations"):
        for k in ref_grads[part]:
            assert type(grads[part][k]) is np.ndarray
            assert_close(grads[part][k], ref_grads[part][k], **tol("training"), what=f"gradient {k}")
    device = ex["emulated"]
    conv, norm = device.model.layers[0], device.model.layers[3]
    assert type(conv.params["weight"]).__module__.startswith("cupy")  # the device's live array
    host = Executor(device.model, (1, 8, 8))
    assert np.array_equal(host.params_flat, device.params_flat.get())
    assert np.array_equal(host.buffers_of(norm)["running_var"], device.buffers_of(norm)["running_var"].get())
    assert_close(host.predict(x), device.predict(x).get(), **tol("training"))


@pytest.mark.parametrize("trans_a, trans_b, bias_axis, offset", [
    (False, False, 1, 0), (False, True, 1, 0), (True, False, 0, 0), (True, True, 0, 0),
    (False, False, -1, 1),  # B one float off 16-byte alignment: the scalar load path
])
def test_gemm_128x128_tiles(extension, cupy, trans_a, trans_b, bias_axis, offset):
    """Shapes big enough for the 128x128 version (>= 128 tiles), ragged edges in M, N and K."""
    from engine.cuda.gemm import launch_gemm, tile_size
    from engine.cuda.launch import Ext
    from engine.tolerances import assert_close, tol
    rng = np.random.default_rng(7)
    m, n, k, batch = 131, 259, 21, 22
    assert tile_size(m, n, batch) == 128
    a = rng.standard_normal((batch,) + ((k, m) if trans_a else (m, k))).astype(np.float32)
    b_shape = (batch,) + ((n, k) if trans_b else (k, n))
    buffer = np.empty(offset + int(np.prod(b_shape)), np.float32)
    b = buffer[offset:].reshape(b_shape)
    b[...] = rng.standard_normal(b_shape)
    c = np.full((batch, m, n), np.nan, np.float32)
    bias = None if bias_axis < 0 else rng.standard_normal(m if bias_axis == 0 else n).astype(np.float32)
    device = [None if v is None else v.view(emu.EmulatedArray) for v in (a, b, c, bias)]
    launch_gemm(Ext(extension), device[0], device[1], device[2], trans_a, trans_b, device[3], bias_axis, True)
    op_a = a.swapaxes(1, 2) if trans_a else a
    op_b = b.swapaxes(1, 2) if trans_b else b
    expected = np.matmul(op_a.astype(np.float64), op_b.astype(np.float64))
    if bias is not None:
        expected += bias[:, None] if bias_axis == 0 else bias
    assert_close(c, np.maximum(expected, 0), **tol("gemm"), what=f"gemm ta={trans_a} tb={trans_b}")


ASAN_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
from tests import emulated_cuda as emu
from engine.cuda import launch
from engine.ops import cases
extension = emu.load_module(sys.argv[1])
sys.modules["cupy"] = emu.emulated_cupy(extension)
launch.GRID_STRIDE_CAP = 4
failures = []
for exposure, backend in emu.backends(extension).items():
    failures += [f"{exposure}: {f}" for f in emu.run_cases_on(backend, cases("odd"), repeat_check=False)]
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    """The emulated build with -fsanitize=address,undefined: any out-of-bounds or misaligned
    access by a kernel (into NumPy's heap buffers, which ASan guards) aborts the run."""
    if os.environ.get("ENGINE_TEST_ASAN") != "1":
        pytest.skip("opt-in (a sanitizer build takes minutes): ENGINE_TEST_ASAN=1")
    gxx = shutil.which(os.environ.get("CXX", "g++")) or "g++"
    runtimes = [subprocess.run([gxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    if not all(os.path.isabs(r) and os.path.exists(r) for r in runtimes):
        pytest.skip("the ASan/UBSan runtimes of g++ are not installed")
    try:
        module = emu.build_emulated_extension(tmp_path, ["-g", "-fsanitize=address,undefined",
                                                         "-fno-sanitize-recover=all"])
    except emu.BuildUnavailable as why:
        pytest.skip(str(why))
    env = dict(os.environ, LD_PRELOAD=":".join(runtimes), ASAN_OPTIONS="detect_leaks=0")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", ASAN_SCRIPT, str(module), str(root)],
                            capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    assert "Sanitizer" not in result.stderr, result.stderr[-6000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_validate_runs_both_exposures_and_requires_them_to_agree(backends, cupy, monkeypatch, capsys):
    """`python -m engine validate` as a GPU machine runs it: both exposures, the table, and
    the bitwise agreement between them -- which fails the rows where they differ."""
    from engine import backend, validate
    monkeypatch.setattr(validate, "exposures_to_run", lambda requested: (["cuda-ext", "cuda-rtc"], []))
    monkeypatch.setattr(validate, "_cupy", lambda: cupy)
    monkeypatch.setitem(backend._cache, "cuda-ext", backends["ext"])
    monkeypatch.setitem(backend._cache, "cuda-rtc", backends["rtc"])
    ops = ["relu_forward", "conv2d_forward"]
    assert validate.main(["--quick", *[a for op in ops for a in ("--op", op)]]) == 0
    out = capsys.readouterr().out
    assert "cuda-ext and cuda-rtc agree bitwise on 10 of 10 cases" in out
    rtc = backends["rtc"]
    good = rtc.relu_forward

    def one_ulp_off(x, out=None):  # right within tolerance, but not the same bits as cuda-ext
        y = good(x, out=out)
        y[...] = np.nextafter(y, np.float32(np.inf))
        return y
    monkeypatch.setattr(rtc, "relu_forward", one_ulp_off)
    assert validate.main(["--quick", "--op", "relu_forward"]) == 1
    out = capsys.readouterr().out
    assert "agree bitwise on 0 of 5 cases" in out and "differ bitwise" in out
