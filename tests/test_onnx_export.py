"""ONNX export (engine.export): every layer kind the engine has, checked by onnx.checker and run
by onnxruntime against the engine's own predictions.

"Relative" below is max |onnxruntime - engine| / max |engine|: the two sum in different
orders, so an element near zero has no meaningful relative error of its own.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine import nn
from engine.executor import Executor
from engine.export import export_onnx, to_onnx
from engine.models import build_model, resnet8
from engine.optim import SGD

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
RELATIVE = 1e-5


def run_both(ex, x):
    model = to_onnx(ex)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": x})[0]
    ours = np.array(ex.predict(x))
    return model, theirs, ours


def relative(theirs, ours) -> float:
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


def trained(model, shape, classes, steps=3):
    """An executor whose weights and batch-norm statistics have moved from their initial values."""
    ex = Executor(model, shape, optimizer=SGD(0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        ex.train_step(rng.standard_normal((6, *shape)).astype(np.float32), rng.integers(0, classes, 6))
    return ex


@pytest.mark.parametrize("name, build, shape", [
    ("lenet", lambda: build_model("lenet", 10, 1), (1, 28, 28)),
    ("lenet-bn-dropout", lambda: build_model("lenet", 10, 1, batch_norm=True, dropout=0.3), (1, 28, 28)),
    ("alexnet-64", lambda: build_model("alexnet", 10, 3, hidden=(256, 256)), (3, 64, 64)),  # 1x1 map -> 6x6
    ("resnet8", lambda: resnet8(), (1, 28, 28)),
])
def test_onnxruntime_predicts_what_the_engine_predicts(name, build, shape):
    nn.manual_seed(0)
    ex = trained(build(), shape, 10)
    x = np.random.default_rng(1).standard_normal((5, *shape)).astype(np.float32)
    model, theirs, ours = run_both(ex, x)
    assert theirs.shape == ours.shape == (5, 10)
    assert relative(theirs, ours) <= RELATIVE, (name, relative(theirs, ours))
    assert model.opset_import[0].version >= 17
    newest = to_onnx(ex, opset=onnx.defs.onnx_opset_version())  # the newest opset the installed onnx knows runs too
    session = ort.InferenceSession(newest.SerializeToString(), providers=["CPUExecutionProvider"])
    assert relative(session.run(None, {"input": x})[0], ours) <= RELATIVE
    assert {init.name for init in model.graph.initializer} >= set(ex.named_parameters())  # torch's names
    # the batch is free: any other batch size runs through the same file
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x[:2]})[0].shape == (2, 10)


def test_every_layer_kind_is_written_and_agrees():
    """The rest of the layer zoo: activations, GELU both ways, average pooling with and without
    padding counted, adaptive pooling to uneven, even and global windows, batch norm on
    features, (log-)softmax, and a residual join."""

    class Zoo(nn.Model):
        def __init__(self):
            self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.act = [nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.GELU("tanh")]
            self.avg = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
            self.avg_pad = nn.AvgPool2d(2, 1, 1)
            self.uneven = nn.AdaptiveAvgPool2d((3, 4))  # 7x7 -> 3x4: overlapping windows
            self.flat = nn.Flatten()
            self.fc = nn.Linear(4 * 3 * 4, 6)
            self.bn1d = nn.BatchNorm1d(6)
            self.drop = nn.Dropout(0.5)
            self.fc2 = nn.Linear(6, 6, bias=False)
            self.log_softmax = nn.LogSoftmax()

        def forward(self, x):
            h = self.bn(self.conv(x))
            for act in self.act:
                h = act(h)
            h = self.uneven(self.avg_pad(self.avg(h)))                  # 11x11 -> 6x6 -> 7x7 -> 3x4
            z = self.bn1d(self.fc(self.flat(h)))
            return self.log_softmax(self.fc2(self.drop(z)) + z)         # a residual join

    nn.manual_seed(2)
    ex = trained(Zoo(), (2, 11, 11), 6)
    x = np.random.default_rng(3).standard_normal((4, 2, 11, 11)).astype(np.float32)
    model, theirs, ours = run_both(ex, x)
    assert relative(theirs, ours) <= RELATIVE
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", "BatchNormalization", "LeakyRelu", "Sigmoid", "Tanh", "Erf", "AveragePool", "MatMul", "Gemm",
            "Identity", "Add", "LogSoftmax"} <= ops

    pools = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Softmax())
    ex = Executor(pools, (3, 6, 6))
    model, theirs, ours = run_both(ex, np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype(np.float32))
    assert relative(theirs, ours) <= RELATIVE
    assert [n.op_type for n in model.graph.node] == ["AveragePool", "GlobalAveragePool", "Flatten", "Softmax"]


def test_every_layer_of_engine_nn_has_a_row():
    """A layer kind added without its ONNX mapping fails here (CONTRIBUTING.md says where)."""
    from engine.graph import Layer
    layers = {v for v in vars(nn).values() if isinstance(v, type) and issubclass(v, Layer)
              and not v.__name__.startswith("_") and v not in (Layer, nn.Elementwise)}
    losses = set(nn.LOSSES.values())
    missing = {cls.__name__ for cls in layers - losses if cls.onnx is Layer.onnx}
    assert not missing, f"no onnx() method for {sorted(missing)}"
    # an activation is a row of the elementwise table, which names its ONNX nodes itself
    from engine.reference.activation import ELEMENTWISE
    assert not [row.name for row in ELEMENTWISE if row.onnx is None], "elementwise rows without onnx="


def test_a_layer_without_a_mapping_is_refused_by_name(tmp_path):
    class Square(nn.Layer):
        def infer(self, shape):
            return shape

        def forward(self, bk, n):
            n.y[...] = n.x[0] * n.x[0]

    ex = Executor(nn.Sequential(nn.Flatten(), Square()), (4,))
    with pytest.raises(ValueError, match=r"export: no ONNX mapping for Square \(layer 1\); give it an onnx\(\) "
                                         r"method \(see CONTRIBUTING.md\)"):
        export_onnx(ex, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    newest = onnx.defs.onnx_opset_version()
    for opset in (13, newest + 1):  # below the ops written; beyond any released opset (runtimes refuse it)
        with pytest.raises(ValueError, match=rf"export: opset must be an int in \[17, {newest}\] .* got {opset}"):
            to_onnx(ex, opset=opset)
    with pytest.raises(TypeError, match="export: expected an Executor, a SavedModel or a model file path, got int"):
        to_onnx(3)


def test_export_from_a_model_file_path(tmp_path):
    from engine.modelfile import save_model
    nn.manual_seed(0)
    ex = trained(build_model("lenet", 10, 1), (1, 28, 28), 10, steps=1)
    save_model(tmp_path / "lenet.npz", ex)
    export_onnx(tmp_path / "lenet.npz", tmp_path / "lenet.onnx")
    loaded = onnx.load(str(tmp_path / "lenet.onnx"))
    onnx.checker.check_model(loaded, full_check=True)
    x = np.random.default_rng(5).standard_normal((3, 1, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "lenet.onnx"), providers=["CPUExecutionProvider"])
    assert relative(session.run(None, {"input": x})[0], ex.predict(x)) <= RELATIVE
