"""Static graphs: a model is traced once, for one input shape, into a list of nodes.

Calling a layer on symbolic ``Value``s records a ``Node`` on the graph being traced and
returns the node's output value, whose shape the layer infers (and checks) right away:
a shape mismatch is reported at trace time, naming the layer and both shapes.

    x = graph.input((256, 1, 28, 28))
    y = model(x)            # layers record nodes; no data is touched
    graph.output(y)

Nodes are recorded in call order, which is a topological order: a value exists before
any node can take it as an input. The executor (engine.executor) plans memory for the
graph and runs it, handing each layer a ``Bound`` node: the node with its real arrays.
"""
from __future__ import annotations

import numpy as np

from engine import checks


class Value:
    """A symbolic array of a traced graph: its shape, dtype and the node that makes it."""

    def __init__(self, graph: "Graph", shape: tuple, dtype=np.float32, producer=None):
        self.graph, self.shape, self.dtype, self.producer = graph, tuple(shape), np.dtype(dtype), producer
        self.consumers: list[Node] = []
        self.index = len(graph.values)
        graph.values.append(self)

    def __repr__(self):
        return f"Value#{self.index}{self.shape}"

    def __add__(self, other: "Value") -> "Value":
        """a + b of two traced values of one shape: a residual join (an Add node)."""
        if not isinstance(other, Value):
            raise TypeError(f"+ on traced values joins two of them (a residual connection), got "
                            f"{type(other).__name__}; constants belong in a layer")
        return Add()(self, other)

    def _only_add(symbol):
        def refuse(self, *other):
            raise TypeError(f"{symbol} on a traced value: tracing records a + b of two traced values (a residual "
                            f"join, nn.Add) and layers; other arithmetic belongs in a layer (engine.nn)")
        return refuse

    __sub__ = __rsub__ = _only_add("-")
    __mul__ = __rmul__ = _only_add("*")
    __truediv__ = __rtruediv__ = _only_add("/")
    __matmul__ = __rmatmul__ = _only_add("@")
    __pow__ = _only_add("**")
    __neg__ = _only_add("unary -")
    __radd__ = _only_add("+ with a non-traced left operand")
    del _only_add


class Node:
    """One layer applied to input values, making one output value."""

    def __init__(self, graph: "Graph", layer: "Layer", inputs: list[Value], out_shape: tuple):
        self.layer, self.inputs, self.index = layer, inputs, len(graph.nodes)
        graph.nodes.append(self)
        self.output = Value(graph, out_shape, producer=self)
        for v in inputs:
            v.consumers.append(self)


class Graph:
    """The nodes and values of one trace; `inputs` are fed by the executor."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.values: list[Value] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []

    def input(self, shape, dtype=np.float32) -> Value:
        v = Value(self, shape, dtype)
        self.inputs.append(v)
        return v

    def output(self, v: Value) -> None:
        if not isinstance(v, Value) or v.graph is not self:
            raise TypeError(f"graph output must be a Value of this trace, got {type(v).__name__}")
        self.outputs.append(v)

    def layers(self) -> list["Layer"]:
        """Distinct layers in order of first use (a layer called twice shares its parameters)."""
        seen, out = set(), []
        for node in self.nodes:
            if id(node.layer) not in seen:
                seen.add(id(node.layer))
                out.append(node.layer)
        return out


def trace(model, input_shape: tuple) -> Graph:
    """Trace `model` (a Layer or Model) for one input shape, batch included."""
    g = Graph()
    x = g.input(tuple(int(d) for d in input_shape))
    y = model(x)
    g.output(y)
    return g


class Layer:
    """Base of every layer. Subclasses set ``params`` (name -> initial float32 array) and
    ``buffers`` (non-trainable state) in __init__, and define infer / forward / backward
    (which receive a Bound node) and optionally saved() and scratch(), the buffers the
    executor's memory plan places for them."""

    _count: dict[str, int] = {}
    grad_in_forward = False       # True: forward also writes d(loss)/d(inputs) (fused losses)
    relu_fusion = None            # how a following ReLU can run inside this layer (engine.executor.fuse_relu)
    input_grads_required = False  # True: backward needs a dx buffer even if nobody reads it
    param_grads_required = False  # True: backward writes parameter gradients even when frozen (one-pass ops)
    trainable = True              # False: frozen, its parameters keep their values (see freeze())

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        kind = type(self).__name__
        Layer._count[kind] = Layer._count.get(kind, 0) + 1
        self.name = f"{kind}#{Layer._count[kind]}"

    def __call__(self, *inputs: Value) -> Value:
        for v in inputs:
            if not isinstance(v, Value):
                raise TypeError(f"{self.name}: layers are called on traced Values (see "
                                f"engine.graph.trace), got {type(v).__name__}")
        graph = inputs[0].graph
        out_shape = self.infer(*[v.shape for v in inputs])
        return Node(graph, self, list(inputs), out_shape).output

    def infer(self, *shapes) -> tuple:
        raise NotImplementedError

    def saved(self, *shapes) -> dict:
        """Arrays forward writes for backward to read (argmax, masks, statistics): name ->
        (shape, dtype), asked with the input shapes and bound to ``n.s[name]``."""
        return {}

    def scratch(self, out_shape, fused_relu: bool) -> dict:
        """Work arrays backward alone uses: name -> (shape, dtype), bound to ``n.s[name]``.
        Asked only of nodes that run backward; fused_relu: a following ReLU runs inside this
        node (engine.executor.fuse_relu)."""
        return {}

    def onnx(self, w, path: str, xs: list, out: str, shapes: list) -> None:
        """Write the ONNX nodes computing this layer's eval-mode forward (engine.export): w is
        the writer (w.node, w.step, w.weight, w.constant), path the layer's path, xs the
        names of its input values, out the name its last node must make, shapes the input
        shapes. A layer without one cannot be exported, and says so."""
        raise ValueError(f"export: no ONNX mapping for {type(self).__name__} (layer {path}); give it an "
                         f"onnx() method (see CONTRIBUTING.md)")

    def num_params(self) -> int:
        return sum(int(p.size) for p in self.params.values())

    def extra_repr(self) -> str:
        """The layer's settings, as repr shows them: Conv2d(1, 6, kernel_size=(5, 5), ...)."""
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Add(Layer):
    """a + b of equal shapes: the join of a residual (skip) connection. Written ``a + b`` on
    traced values in a model's forward, or called as a layer."""

    def infer(self, a_shape, b_shape):
        return checks.equal_shapes(self.name, "operands", a_shape, b_shape)

    def forward(self, bk, n):
        bk.add(n.x[0], n.x[1], out=n.y)

    def backward(self, bk, n):
        for dx in n.dx:
            if dx is not None:
                dx[...] = n.dy

    def onnx(self, w, path, xs, out, shapes):
        w.node("Add", xs, out)


class Bound:
    """A node bound to real arrays: what the executor passes to a layer's forward and
    backward (engine.nn lists how layers read it). Every array is the executor's: a
    layer writes into these and allocates nothing."""

    def __init__(self, node: Node, training: bool):
        self.node, self.layer, self.training = node, node.layer, training
        self.x, self.dx, self.y, self.dy = [], [], None, None  # dx[i] None: nobody reads it
        self.p, self.g, self.s, self.state = {}, {}, {}, {}   # s: saved() and scratch() arrays
        self.seed = 0  # set before every forward: dropout masks differ by step and node
        self.relu = False  # a following ReLU was fused into this node (engine.executor.fuse_relu)
        self.accumulate: list[tuple] = []  # (gradient, scratch) pairs to add after backward
        self.needs_backward = False


class Model:
    """A model made of layers, written like torch.nn.Module: set layers (and models) as
    attributes in __init__ and combine them in forward(x) on traced values. Any wiring works,
    e.g. a residual block ``return self.relu(self.body(x) + x)``. The attribute names are the
    layers' paths ("layer1.0.conv1"), as torch names them."""

    def __call__(self, x: Value) -> Value:
        return self.forward(x)

    def forward(self, x: Value) -> Value:
        raise NotImplementedError

    def children(self):
        """(name, layer or model) of every attribute that is one (or a list of them), in order."""
        for name, value in vars(self).items():
            if isinstance(value, (Layer, Model)):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (Layer, Model)) for v in value):
                yield from ((f"{name}.{i}", v) for i, v in enumerate(value))

    def named_layers(self, prefix: str = ""):
        """(dotted path, layer) of every layer inside, depth first in attribute order."""
        for name, child in self.children():
            path = f"{prefix}{name}"
            if isinstance(child, Model):
                yield from child.named_layers(path + ".")
            else:
                yield path, child

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, child in self.children():
            text = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {text}")
        return "\n".join(lines) + "\n)" if len(lines) > 1 else f"{type(self).__name__}()"


class Sequential(Model):
    """Layers applied one after the other; their paths are their positions ("0", "1", ...)."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Sequential: item {i} must be a layer, got {type(layer).__name__}")
        self.layers = list(layers)

    def children(self):
        return ((str(i), layer) for i, layer in enumerate(self.layers))

    def forward(self, x: Value) -> Value:
        for layer in self.layers:
            x = layer(x)
        return x


def layer_paths(model) -> dict[int, str]:
    """id(layer) -> its dotted path in the model ("features.0"); "" for a model that is one layer."""
    if isinstance(model, Model):
        return {id(layer): path for path, layer in model.named_layers()}
    return {id(model): ""}


def freeze(model: Model, upto: str) -> list[str]:
    """Freeze every layer of `model` up to and including `upto` -- a layer's path, or a
    sub-model's ("features", "layer3"): all of its layers -- in the order named_layers()
    gives (the attributes' order, as torch's named_modules). Returns the frozen paths.

    A frozen layer's parameters keep their values: no gradient, no update, no weight decay;
    a frozen batch norm normalises with its running statistics and leaves them as they
    are. One layer alone: ``layer.trainable = False``; undo with unfreeze(model)."""
    if not isinstance(model, Model):
        raise TypeError(f"freeze: expected a Model (set layer.trainable = False on a single layer), "
                        f"got {type(model).__name__}")
    if not isinstance(upto, str):
        raise TypeError(f"freeze: upto must be a layer's path (a str such as 'features'), got {type(upto).__name__}")
    named = list(model.named_layers())
    hits = [i for i, (path, _) in enumerate(named) if path == upto or path.startswith(upto + ".")]
    if not hits:
        raise ValueError(f"freeze: the model has no layer or block {upto!r}; its layers are "
                         f"{', '.join(path for path, _ in named)}")
    for _, layer in named[:hits[-1] + 1]:
        layer.trainable = False
    return [path for path, _ in named[:hits[-1] + 1]]


def unfreeze(model) -> None:
    """Make every layer of `model` trainable again."""
    for layer in (layer for _, layer in model.named_layers()) if isinstance(model, Model) else [model]:
        layer.trainable = True


def summary(model, input_shape: tuple) -> str:
    """A table like Keras's: each layer call in order, with its path in the model, its
    settings, output shape and parameter count (marked when frozen); then the totals,
    trainable and frozen. input_shape excludes the batch."""
    g = trace(model, (1, *input_shape))
    paths = layer_paths(model)
    rows = [("Layer", "Settings", "Output shape", "Params")]
    seen = set()
    for node in g.nodes:
        count = 0 if id(node.layer) in seen else node.layer.num_params()
        seen.add(id(node.layer))
        frozen = " (frozen)" if count and not node.layer.trainable else ""
        rows.append((paths.get(id(node.layer)) or node.layer.name, repr(node.layer),
                     str(("N", *node.output.shape[1:])).replace("'", ""), f"{count:,}{frozen}"))
    total = sum(layer.num_params() for layer in g.layers())
    frozen_total = sum(layer.num_params() for layer in g.layers() if not layer.trainable)
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "-" * (sum(w) + 6)
    fmt = lambda r: f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}"  # noqa: E731
    body = [fmt(rows[0]), line, *[fmt(r) for r in rows[1:]], line,
            f"Total params: {total:,}", f"Trainable params: {total - frozen_total:,}",
            f"Frozen params: {frozen_total:,}", f"Input shape: (N, {', '.join(map(str, input_shape))})"]
    return "\n".join(body)
