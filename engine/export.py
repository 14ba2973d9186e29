"""ONNX export: a model traced once, each layer written as the ONNX nodes that compute it.

    python -m engine export lenet.npz lenet.onnx
    from engine.export import export_onnx
    export_onnx(ex, "lenet.onnx")                 # an Executor, a SavedModel or a model file path

The graph is built with onnx.helper from the engine's own trace (engine.graph.trace), in
eval form: batch norm with its running statistics, dropout as Identity. Opset 17, IR
version 8 (onnxruntime 1.13 and later read it). One input "input" (N, *input_shape) with
the batch N free, one output "output"; weights are initializers under their torch names
("features.0.weight"). The model is checked with onnx.checker (full_check: shape
inference too) before it is written.

ONNX_NODES maps each layer class to the function writing its nodes; a layer kind without
a row is refused, naming it. A new layer kind adds its row here (CONTRIBUTING.md).
"""
from __future__ import annotations

import os

import numpy as np

from engine import nn
from engine.graph import Add, layer_paths, trace
from engine.reference.activation import ROWS
from engine.shapes import adaptive_window

OPSET, IR_VERSION = 17, 8


class _Writer:
    """The nodes and initializers of the graph being written."""

    def __init__(self, helper, numpy_helper, weights: dict):
        self.helper, self.numpy_helper, self.weights = helper, numpy_helper, weights
        self.nodes, self.initializers, self._taken = [], [], set()

    def name(self, hint: str) -> str:
        """A value name not used yet, from hint."""
        name, i = hint, 1
        while name in self._taken:
            i += 1
            name = f"{hint}_{i}"
        self._taken.add(name)
        return name

    def weight(self, name: str) -> str:
        """An initializer holding the model's array `name` (float32)."""
        if name not in self._taken:
            self._taken.add(name)
            self.initializers.append(self.numpy_helper.from_array(np.asarray(self.weights[name], np.float32), name))
        return name

    def constant(self, hint: str, value, dtype=np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list, output: str, **attributes) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def step(self, op: str, inputs: list, hint: str, **attributes) -> str:
        """One intermediate node (a step of a layer written as several), its output named from hint."""
        return self.node(op, inputs, self.name(hint), **attributes)


# --------------------------------------------------------------------------- one row per layer kind
# Each: (writer, layer, its path, input value names, output name, input shapes) -> None, writing
# nodes whose last one makes `out`.

def _pads(padding) -> list:
    return [padding[0], padding[1], padding[0], padding[1]]  # begin H, begin W, end H, end W


def _conv(w, layer, path, xs, out, shapes):
    inputs = [xs[0], w.weight(f"{path}.weight")] + ([w.weight(f"{path}.bias")] if "bias" in layer.params else [])
    w.node("Conv", inputs, out, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
           pads=_pads(layer.padding))


def _linear(w, layer, path, xs, out, shapes):
    inputs = [xs[0], w.weight(f"{path}.weight")] + ([w.weight(f"{path}.bias")] if "bias" in layer.params else [])
    w.node("Gemm", inputs, out, transB=1)  # x (N, I) @ weight (O, I).T + bias


def _max_pool(w, layer, path, xs, out, shapes):
    # floor mode (ceil_mode 0); ONNX never lets a padded cell win a max, as ours
    w.node("MaxPool", xs, out, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
           pads=_pads(layer.padding))


def _avg_pool(w, layer, path, xs, out, shapes):
    w.node("AveragePool", xs, out, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
           pads=_pads(layer.padding), count_include_pad=int(layer.count_include_pad))


def _adaptive_avg_pool(w, layer, path, xs, out, shapes):
    _, c, h, wd = shapes[0]
    oh, ow = layer.output_size
    if (oh, ow) == (1, 1):
        w.node("GlobalAveragePool", xs, out)
    elif h % oh == 0 and wd % ow == 0:  # equal, disjoint windows: a plain average pool
        w.node("AveragePool", xs, out, kernel_shape=[h // oh, wd // ow], strides=[h // oh, wd // ow])
    else:
        # torch's windows overlap or repeat here, which no ONNX pooling op does: the average is
        # linear, so it is one product with the (H*W, oh*ow) matrix of window weights
        weights = np.zeros((h * wd, oh * ow), np.float32)
        for i in range(oh):
            h0, h1 = adaptive_window(i, h, oh)
            for j in range(ow):
                w0, w1 = adaptive_window(j, wd, ow)
                cells = [r * wd + s for r in range(h0, h1) for s in range(w0, w1)]
                weights[cells, i * ow + j] = 1.0 / len(cells)
        flat = w.step("Reshape", [xs[0], w.constant(f"{path}.flat_shape", [0, c, h * wd], np.int64)], f"{path}.flat")
        pooled = w.step("MatMul", [flat, w.constant(f"{path}.windows", weights)], f"{path}.pooled")
        w.node("Reshape", [pooled, w.constant(f"{path}.out_shape", [0, c, oh, ow], np.int64)], out)


def _batch_norm(w, layer, path, xs, out, shapes):
    # the eval form: normalised with the running statistics
    names = [w.weight(f"{path}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]
    w.node("BatchNormalization", [xs[0], *names], out, epsilon=float(layer.eps))


def _elementwise(w, layer, path, xs, out, shapes):
    # an activation of the elementwise table: its row says which ONNX nodes compute it
    row = ROWS[layer.op]
    if row.onnx is None:
        raise ValueError(f"export: no ONNX nodes for the elementwise row {row.name!r} (layer {path}); give "
                         f"its row an onnx= (engine/reference/activation.py, see CONTRIBUTING.md)")
    row.onnx(w, xs[0], out, path, *layer.args)


def _simple(op: str, **attributes):
    def write(w, layer, path, xs, out, shapes):
        w.node(op, xs, out, **attributes)
    return write


ONNX_NODES = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.MaxPool2d: _max_pool,
    nn.AvgPool2d: _avg_pool,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool,
    nn.BatchNorm2d: _batch_norm,
    nn.BatchNorm1d: _batch_norm,
    nn.Elementwise: _elementwise,  # ReLU, LeakyReLU, Sigmoid, Tanh, GELU: each row names its nodes
    nn.Dropout: _simple("Identity"),  # eval mode
    nn.Flatten: _simple("Flatten", axis=1),
    Add: _simple("Add"),
    nn.Softmax: _simple("Softmax", axis=-1),
    nn.LogSoftmax: _simple("LogSoftmax", axis=-1),
}


def _row(layer, path):
    for cls in type(layer).__mro__:  # a subclass of a mapped layer is written as its base
        if cls in ONNX_NODES:
            return ONNX_NODES[cls]
    raise ValueError(f"export: no ONNX mapping for {type(layer).__name__} (layer {path}); add one to "
                     f"ONNX_NODES in engine/export.py (see CONTRIBUTING.md)")


# --------------------------------------------------------------------------- the model


def _executor_of(source):
    from engine.executor import Executor
    from engine.modelfile import SavedModel, load_model
    if isinstance(source, Executor):
        return source
    if isinstance(source, SavedModel):
        return source.executor
    if isinstance(source, (str, os.PathLike)):
        return load_model(source).executor
    raise TypeError(f"export: expected an Executor, a SavedModel or a model file path, got {type(source).__name__}")


def to_onnx(source, opset: int = OPSET):
    """The onnx.ModelProto of a model (an Executor, a SavedModel or a model file path), checked."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ValueError("export: writing ONNX needs the onnx package (pip install onnx, or the engine's "
                         "extra: pip install -e '.[onnx]')") from None
    newest = onnx.defs.onnx_opset_version()  # a later one is not a released opset: runtimes refuse it
    if not isinstance(opset, int) or not OPSET <= opset <= newest:
        raise ValueError(f"export: opset must be an int in [{OPSET}, {newest}] (the ops written here are those of "
                         f"opset {OPSET}; the installed onnx {onnx.__version__} knows up to {newest}), got {opset!r}")
    ex = _executor_of(source)
    g = trace(ex.model, (1, *ex.input_shape))  # batch 1: the shapes fix the adaptive windows; N stays free
    paths = layer_paths(ex.model)
    writer = _Writer(helper, numpy_helper, ex.weights())
    names = {g.inputs[0].index: writer.name("input")}
    output = g.outputs[0]
    for node in g.nodes:
        path = paths.get(id(node.layer)) or node.layer.name
        out = writer.name("output" if node.output is output else path)
        _row(node.layer, path)(writer, node.layer, path, [names[v.index] for v in node.inputs], out,
                               [v.shape for v in node.inputs])
        names[node.output.index] = out
    if output.producer is None:
        raise ValueError("export: the model computes nothing (its output is its input)")
    batch = lambda shape: ["N", *shape[1:]]  # noqa: E731
    graph = helper.make_graph(
        writer.nodes, type(ex.model).__name__,
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, batch(g.inputs[0].shape))],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, batch(output.shape))],
        initializer=writer.initializers)
    from engine.version import __version__
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="engine",
                              producer_version=__version__)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(source, path, opset: int = OPSET):
    """Write the ONNX form of a model to path (atomically: the old file or the whole new one)."""
    from engine.files import atomic_write, check_output_file
    path = check_output_file("export", path)  # before the model is loaded and converted
    model = to_onnx(source, opset)
    atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return model
