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

Every layer writes its own nodes (Layer.onnx, beside its forward and backward in
engine/nn.py; an activation's come from its row of the elementwise table); a layer kind
without one is refused, naming it.
"""
from __future__ import annotations

import os

import numpy as np

from engine.graph import layer_paths, trace

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

    def parameters(self, path: str, params: dict) -> list:
        """The initializers of a conv or dense layer: its weight, and its bias if it has one."""
        return [self.weight(f"{path}.weight")] + ([self.weight(f"{path}.bias")] if "bias" in params else [])

    @staticmethod
    def pads(padding) -> list:
        return [padding[0], padding[1], padding[0], padding[1]]  # begin H, begin W, end H, end W


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
        node.layer.onnx(writer, path, [names[v.index] for v in node.inputs], out, [v.shape for v in node.inputs])
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
