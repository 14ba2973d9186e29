"""The executor: plans a traced graph's memory once and runs training steps on it.

For each input shape and mode the model is traced (engine.graph) and *planned*, by passes
that each do one job and run in this order (Plan.__init__ reads as their list):

1. trace_step: the model, and its loss unless predicting, traced for (batch, mode);
2. fuse_relu: ReLUs fold into the conv/linear/batch-norm node before them;
3. values_needing_grad: what backward must differentiate: nothing upstream of the first
   trainable layer, so backward stops there (frozen layers: layer.trainable False);
4. lifetimes: every buffer the step uses (activations, gradients, the scratch that layers
   declare with saved() and scratch(), gradient accumulators) with the interval it lives on a
   timeline in which node i runs forward at time i and backward at 2n-1-i;
5. place: one byte arena, allocated once and reused every step; buffers whose lifetimes do
   not overlap share memory (greedy first-fit, largest first);
6. bind: each node's arrays (a Bound, engine.graph) as views into the arena, and where each
   gradient goes: backward runs in reverse topological order, iteratively, and a value used
   by several nodes gets every contribution: the first writes the gradient, the others write
   a scratch buffer that is then added (+=).

Only the graph inputs (fed by the caller) and the executor's flat arrays live outside the
arena: all parameters in one flat array, their gradients in another, and the optimizer's
state in flat arrays of the same layout, so one optimizer launch updates everything. Frozen
layers' parameters sit at the end of that layout, past `trainable_end`, where the optimizer
(its update, weight decay and L1 alike) never reaches.
Nothing is allocated inside a step, and on the GPU nothing leaves the device except the
loss, when the caller reads it.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import NamedTuple

import numpy as np

from engine.backend import get_backend, CPU_BACKEND
from engine.graph import Bound, Graph, layer_paths, trace  # Bound lived here once: engine.executor.Bound still works
from engine import checks as C, nn

ALIGN = 256  # bytes: every view starts 256-byte aligned, so kernels may use 16-byte vector loads
FLOAT32 = 4  # bytes; arena sizes are reported in float32 elements


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU and CuPy work, else 'cpu'."""
    C.choice("Executor", "device", device, ("auto", "cpu", "cuda"))
    if device == "cpu":
        return "cpu"
    from engine import cuda
    if cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise RuntimeError("Executor: device 'cuda' asked for, but no usable GPU was found "
                           "(CuPy must be installed, e.g. pip install -e '.[cuda12]', and see a device)")
    return "cpu"


class Buffer(NamedTuple):
    """One array of a plan: alive from time start to time stop, both included."""
    start: int
    stop: int
    shape: tuple
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class Plan:
    """One traced graph with every buffer in place, for one input shape and mode: `bound`
    (a Bound per node, in forward order), `inputs` (the arrays the caller's batch is copied
    into), `logits` and `loss` (views the caller reads), `fused` (node -> the ReLU layer folded
    into it), `arena` (every other buffer), and
    its size next to the size without sharing, in float32 elements (`arena_elements`,
    `naive_elements`)."""

    def __init__(self, ex: "Executor", batch: int, mode: str, fuse: bool | None = None):
        self.mode = mode                      # "train", "eval" (forward + loss) or "predict"
        training = mode == "train"
        self.graph = g = trace_step(ex, batch, mode)
        # fuse=False keeps every layer's own output (Executor.activations); None: the executor's choice
        self.fused = fused = fuse_relu(g) if (ex.fuse if fuse is None else fuse) else {}
        needs_grad = values_needing_grad(g, backward=training)
        buffers = lifetimes(g, fused, needs_grad)
        self.arena, views = place(buffers, ex.xp, share=ex.share_memory)
        self.arena_elements = self.arena.nbytes // FLOAT32
        self.naive_elements = sum(_aligned(b.nbytes) for b in buffers.values()) // FLOAT32
        self.inputs = [ex.xp.zeros(v.shape, v.dtype) for v in g.inputs]
        arrays = {("act", v.index): a for v, a in zip(g.inputs, self.inputs)} | views
        self.bound = bind(ex, g, arrays, fused, needs_grad, training)
        self.logits = arrays[("act", g.outputs[0].index)]
        self.loss = arrays[("act", g.outputs[1].index)] if len(g.outputs) > 1 else None


def trace_step(ex: "Executor", batch: int, mode: str) -> Graph:
    """The graph of one step: the model on a (batch, *input_shape) input; its loss on the
    logits and a target input too, unless mode is "predict"."""
    g = Graph()
    logits = ex.model(g.input((batch, *ex.input_shape)))
    g.output(logits)
    if mode != "predict":
        target = g.input((batch, *ex.target_shape(logits.shape)), ex.loss_layer.target_dtype)
        g.output(ex.loss_layer(logits, target))
    for layer in g.layers():
        if layer.params and id(layer) not in ex.layer_index:
            raise ValueError(f"{layer.name}: a layer with parameters must be created once (in the "
                             f"model's __init__), not inside forward()")
    return g


def fuse_relu(g: Graph) -> set:
    """Fusion pass: a ReLU whose input is made by a layer that can run it (relu_fusion set:
    conv/linear with a bias, batch norm) and read by nobody else is folded into that layer's
    node, which then makes the ReLU's output. Returns the fused nodes, each with the ReLU layer
    folded into it (node -> layer); renumbers the graph."""
    fused = {}
    for relu in [node for node in g.nodes if isinstance(node.layer, nn.ReLU)]:
        v = relu.inputs[0]
        a = v.producer
        if (a is None or a.layer.relu_fusion is None or v.consumers != [relu] or v in g.outputs
                or (a.layer.relu_fusion == "bias" and "bias" not in a.layer.params)):
            continue
        a.output, relu.output.producer = relu.output, a
        g.nodes.remove(relu)
        g.values.remove(v)
        fused[a] = relu.layer
    for i, node in enumerate(g.nodes):
        node.index = i
    for i, value in enumerate(g.values):
        value.index = i
    return fused


def values_needing_grad(g: Graph, backward: bool) -> set:
    """The values whose gradient backward computes: outputs of nodes with trainable
    parameters, and everything downstream of them. Empty without a backward pass. A node
    runs backward when its output is one of them, so nothing upstream of the first trainable
    layer runs backward (frozen layers there cost a forward only); a frozen layer downstream
    of a trainable one runs backward for its input's gradient alone."""
    needs_grad = set()
    if backward:
        for node in g.nodes:
            if (node.layer.params and node.layer.trainable) or any(v in needs_grad for v in node.inputs):
                needs_grad.add(node.output)
    return needs_grad


def lifetimes(g: Graph, fused: set, needs_grad: set) -> dict:
    """Every buffer of the arena, key -> Buffer: per value its activation ("act"), gradient
    ("grad") and, for a value read twice by one node or by several, the accumulator ("acc");
    then each node's own buffers (node_lifetimes)."""
    last, buffers = 2 * len(g.nodes) - 1, {}  # node i runs backward at time last - i
    for v in g.values:
        if v.producer is None:
            continue  # a graph input: the caller's array
        p = v.producer.index
        # with a backward pass, the producer's backward is the last to read an activation
        stop = last - p if needs_grad else max([c.index for c in v.consumers], default=last + 1)
        if v in g.outputs:
            stop = last + 1  # the caller reads outputs after the step
        buffers[("act", v.index)] = Buffer(p, stop, v.shape, v.dtype)
        if v in needs_grad and v.consumers:
            # a loss writes d(loss)/d(logits) in its forward pass, the others in backward
            start = min(c.index if c.layer.grad_in_forward else last - c.index for c in v.consumers)
            buffers[("grad", v.index)] = Buffer(start, last - p, v.shape, np.float32)
            if sum(1 for c in v.consumers for u in c.inputs if u is v) > 1:
                buffers[("acc", v.index)] = Buffer(start, last - p, v.shape, np.float32)
    for node in g.nodes:
        buffers.update(node_lifetimes(g, node, node in fused, needs_grad))
    return buffers


def node_lifetimes(g: Graph, node, fused_relu: bool, needs_grad: set) -> dict:
    """One node's own buffers: what forward saves for backward ("s", from its forward to its
    backward, or forward alone when it runs none); and, when it runs backward, that pass's
    scratch ("s"), a dx for an unread input the layer must still write ("dx"), a parameter
    gradient to add to one written by a later use of the layer ("param_acc"), and, for a
    frozen layer whose backward writes parameter gradients anyway, where they go and are
    dropped ("frozen_grad")."""
    i, layer, runs_backward = node.index, node.layer, node.output in needs_grad
    back = 2 * len(g.nodes) - 1 - i
    saved = layer.saved(*[v.shape for v in node.inputs])
    buffers = {("s", i, name): Buffer(i, back if runs_backward else i, shape, dtype)
               for name, (shape, dtype) in saved.items()}
    if not runs_backward:
        return buffers
    for name, (shape, dtype) in layer.scratch(node.output.shape, fused_relu).items():
        buffers[("s", i, name)] = Buffer(back, back, shape, dtype)
    for k, v in enumerate(node.inputs):
        if layer.input_grads_required and v not in needs_grad:
            buffers[("dx", i, k)] = Buffer(back, back, v.shape, np.float32)
    if not layer.trainable:
        if layer.param_grads_required:
            for name, value in layer.params.items():
                buffers[("frozen_grad", i, name)] = Buffer(back, back, value.shape, np.float32)
    elif any(later.layer is layer for later in g.nodes[i + 1:]):  # whose backward runs first
        for name, value in layer.params.items():
            buffers[("param_acc", i, name)] = Buffer(back, back, value.shape, np.float32)
    return buffers


def place(buffers: dict, xp, share: bool = True) -> tuple:
    """Place every buffer at an offset of one byte arena so that buffers alive at the same
    time never overlap: greedy, largest first, lowest free offset. share=False gives every
    buffer its own place (to test that sharing changes nothing). Returns the arena and a
    view of it per buffer, of the buffer's shape and dtype."""
    placed, offsets = [], {}  # placed: (offset, size, start, stop)
    for key, buf in sorted(buffers.items(), key=lambda kv: -kv[1].nbytes):
        size = _aligned(buf.nbytes)
        clashes = sorted((o, s) for o, s, a, z in placed if not share or (a <= buf.stop and buf.start <= z))
        offset = 0
        for o, s in clashes:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, buf.start, buf.stop))
        offsets[key] = offset
    arena = xp.zeros(max([o + s for o, s, _, _ in placed], default=0), np.uint8)
    views = {key: arena[offsets[key]:offsets[key] + buf.nbytes].view(buf.dtype).reshape(buf.shape)
             for key, buf in buffers.items()}
    return arena, views


def bind(ex: "Executor", g: Graph, arrays: dict, fused: set, needs_grad: set, training: bool) -> list:
    """Each node bound to its arrays (arrays: key -> array, the arena's views and the graph
    inputs): inputs, output, its gradient, saved and scratch buffers, parameters, state;
    then where its backward writes (bind_gradients)."""
    bound = []
    for node in g.nodes:
        b = Bound(node, training)
        b.x = [arrays[("act", v.index)] for v in node.inputs]
        b.y = arrays[("act", node.output.index)]
        b.dy = arrays.get(("grad", node.output.index))
        b.needs_backward = node.output in needs_grad
        b.s = {key[2]: a for key, a in arrays.items() if key[:2] == ("s", node.index)}
        b.relu = node in fused
        if node.layer.params:
            b.p = {name: ex.param(node.layer, name) for name in node.layer.params}
            b.state = ex.buffers_of(node.layer)
        bound.append(b)
    bind_gradients(ex, bound, arrays, needs_grad)
    return bound


def bind_gradients(ex: "Executor", bound: list, arrays: dict, needs_grad: set) -> None:
    """Where each backward writes, assigned in backward order: the first writer of a gradient
    writes it in place, later ones write their accumulator, added after their backward."""
    written = set()  # values whose gradient backward has already met a writer of
    for b in reversed(bound):
        i = b.node.index
        for k, v in enumerate(b.node.inputs):
            if not (b.needs_backward and v in needs_grad):
                b.dx.append(arrays.get(("dx", i, k)))  # None, or a buffer nobody reads
            elif v not in written:
                written.add(v)
                b.dx.append(arrays[("grad", v.index)])
            else:
                b.dx.append(arrays[("acc", v.index)])
                b.accumulate.append((arrays[("grad", v.index)], arrays[("acc", v.index)]))
        if not b.needs_backward:
            continue
        for name in b.layer.params:
            if not b.layer.trainable:  # no gradient, or one written to scratch and dropped
                b.g[name] = arrays.get(("frozen_grad", i, name))
            elif ("param_acc", i, name) in arrays:
                b.g[name] = arrays[("param_acc", i, name)]
                b.accumulate.append((ex.grad(b.layer, name), b.g[name]))
            else:
                b.g[name] = ex.grad(b.layer, name)


def parameter_layout(layers) -> tuple[dict, int, int, int]:
    """Where each parameter lives in the flat arrays: (id(layer), name) -> (offset, shape),
    the total size, where the trainable weights end and where the trainable parameters end.
    Trainable weights (conv and dense, rank >= 2) come first and trainable biases and
    batch-norm parameters after them, so that an optimizer can treat each part as one slice
    (engine.optim: L1 and weight decay on the weights only); frozen layers' parameters come
    last, past the optimizer's reach. Every parameter starts ALIGN-aligned."""
    offsets, total, weights_end = {}, 0, 0
    for trainable, weights in ((True, True), (True, False), (False, None)):
        for layer in layers:
            for name, value in layer.params.items():
                if layer.trainable == trainable and weights in (None, value.ndim >= 2):
                    offsets[(id(layer), name)] = (total, value.shape)
                    total += _aligned(value.size * FLOAT32) // FLOAT32
        if weights:
            weights_end = total
        elif trainable:
            trainable_end = total
    return offsets, total, weights_end, trainable_end


def to_host(a) -> np.ndarray:
    """A NumPy copy of a host or device array."""
    return a.get() if type(a).__module__.startswith("cupy") else np.array(a)


class LiveArrays(MutableMapping):
    """A layer's ``params`` (or ``buffers``) once an executor runs it: each entry read is the
    executor's live array -- a view of its flat parameter array, or its running statistics;
    a CuPy array on the GPU -- so a layer always shows its weights as trained, never the
    initial ones it was built with, and a model built into another executor starts from them.
    Assigning an entry copies into the live array (same shape); entries cannot be added or
    removed. The executor built last on a layer is the one it shows."""

    def __init__(self, ex: "Executor", layer, kind: str, names):
        self._ex, self._layer, self._kind, self._names = ex, layer, kind, tuple(names)

    def __getitem__(self, name):
        if name not in self._names:
            raise KeyError(name)
        if self._kind == "params":
            return self._ex.param(self._layer, name)
        return self._ex.buffers_of(self._layer)[name]

    def __setitem__(self, name, value):
        if name not in self._names:
            raise KeyError(f"{self._layer.name}: {self._kind}[{name!r}]: an executor runs this layer with "
                           f"{self._kind} {list(self._names)} only; build a new layer for others")
        live = self[name]
        if tuple(np.shape(value)) != tuple(live.shape):
            raise ValueError(f"{self._layer.name}: {self._kind}[{name!r}] has shape {tuple(live.shape)}, "
                             f"got an array of shape {tuple(np.shape(value))}")
        self._ex._copy_in(live, value)

    def __delitem__(self, name):
        raise TypeError(f"{self._layer.name}: an executor runs this layer with {self._kind} {list(self._names)}; "
                        f"they cannot be removed")

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __repr__(self):
        return f"LiveArrays({self._kind} of {self._layer.name}: {dict((k, tuple(self[k].shape)) for k in self)})"


class Executor:
    """Runs a model: training steps, evaluation and prediction, on the CPU or the GPU.

        ex = Executor(lenet5(), (1, 28, 28), optimizer=Adam(1e-3), device="cpu")
        loss = ex.train_step(x, y)          # x (N, 1, 28, 28) float32, y (N,) int
        logits = ex.predict(x)
    """

    def __init__(self, model, input_shape, loss="cross_entropy", optimizer=None, device="cpu",
                 backend=None, seed: int = 0, share_memory: bool = True, fuse: bool = True, comm=None):
        C.choice("Executor", "loss", loss, nn.LOSSES)
        self.model, self.input_shape = model, tuple(int(d) for d in input_shape)
        self.device = resolve_device(device)
        # data parallel across processes (engine.distributed.Communicator): None in one process
        self.comm = comm
        if comm is not None:
            comm.use_device(self.device)  # this rank's own GPU, before anything is allocated
        if backend is None or isinstance(backend, str):
            self.bk = get_backend(backend or ("cuda" if self.device == "cuda" else CPU_BACKEND))
        else:
            self.bk = backend  # a backend namespace built elsewhere (tests: an emulated GPU)
        if self.device == "cuda":
            import cupy
            self.xp = cupy
        else:
            self.xp = np
        self.loss_name, self.loss_layer = loss, nn.LOSSES[loss]()
        self.optimizer = optimizer
        self.seed, self.step = int(seed), 0
        self.share_memory = bool(share_memory)
        self.fuse = bool(fuse)  # fold ReLUs into conv/linear (bias+ReLU) and batch norm
        self.lr = optimizer.lr if optimizer is not None else 0.0

        # one trace (batch 2, so batch norm's shape checks pass) finds the layers and parameters
        probe = trace(model, (2, *self.input_shape))
        self.layers = probe.layers()
        self.layer_index = {id(layer): i for i, layer in enumerate(self.layers)}
        self.output_shape = probe.outputs[0].shape[1:]
        self._paths = layer_paths(model)
        self._lay_out_parameters()
        for layer in self.layers:
            for name, value in layer.params.items():
                self._copy_in(self.param(layer, name), value)
        self._buffers = {id(layer): {k: self._device_copy(v) for k, v in layer.buffers.items()}
                         for layer in self.layers}
        self._plans: dict = {}
        self._show_in_layers()
        if comm is not None:
            comm.attach(self)  # every rank starts from rank 0's parameters and state

    def _lay_out_parameters(self) -> None:
        """The flat parameter, gradient and optimizer-state arrays (zeros), laid out for the
        layers' trainable flags as they are now (parameter_layout)."""
        self._trainable = tuple(layer.trainable for layer in self.layers)
        self._offsets, total, self.weights_end, self.trainable_end = parameter_layout(self.layers)
        xp = self.xp
        self.params_flat = xp.zeros(max(total, 1), np.float32)
        self.grads_flat = xp.zeros(max(total, 1), np.float32)
        self._views = {key: (self.params_flat[o:o + int(np.prod(s))].reshape(s),
                             self.grads_flat[o:o + int(np.prod(s))].reshape(s))
                       for key, (o, s) in self._offsets.items()}
        self.opt_state = {k: xp.zeros_like(self.params_flat) for k in
                          (self.optimizer.state_names if self.optimizer is not None else ())}

    def _follow_freezing(self) -> None:
        """When a layer was frozen or unfrozen since the parameters were laid out: lay them
        out again (values and optimizer state move with them, through state_dict) and drop
        the plans, which are bound to the old arrays."""
        if tuple(layer.trainable for layer in self.layers) == self._trainable:
            return
        state = self.state_dict()
        self._lay_out_parameters()
        self._plans.clear()
        self.load_state_dict(state)

    def _show_in_layers(self) -> None:
        """From now on the layers' params and buffers are this executor's live arrays (LiveArrays):
        reading them never gives stale weights, and a model reused in another executor, or a
        sub-model built from its layers, starts from the weights trained here. LiveArrays read
        through param() and buffers_of(), so a new layout after freezing changes nothing."""
        for layer in self.layers:
            layer.params = LiveArrays(self, layer, "params", layer.params)
            layer.buffers = LiveArrays(self, layer, "buffers", layer.buffers)

    # --- parameters ---------------------------------------------------------------
    def param(self, layer, name):
        return self._views[(id(layer), name)][0]

    def grad(self, layer, name):
        return self._views[(id(layer), name)][1]

    def _state_view(self, state_name: str, layer, name: str):
        """The slice of one optimizer state array that belongs to a parameter."""
        offset, shape = self._offsets[(id(layer), name)]
        return self.opt_state[state_name][offset:offset + int(np.prod(shape))].reshape(shape)

    def buffers_of(self, layer) -> dict:
        return self._buffers[id(layer)]

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def num_trainable_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers if layer.trainable)

    # --- parameters by name, as torch names them -------------------------------------
    def _named(self):
        """(name, layer, key): every parameter's and buffer's name is the layer's path in the
        model and the array's own name ("features.0.weight", "layer1.0.bn1.running_mean")."""
        for layer in self.layers:
            path = self._paths.get(id(layer), layer.name)
            for key in (*layer.params, *layer.buffers):
                yield (f"{path}.{key}" if path else key), layer, key

    def named_parameters(self) -> dict:
        """name -> the live parameter (a view of the flat array, on the executor's device):
        writes change the model, and torch.from_dlpack / cupy.from_dlpack share it uncopied."""
        return {name: self.param(layer, key) for name, layer, key in self._named() if key in layer.params}

    def named_buffers(self) -> dict:
        """name -> the live non-trainable state (batch norm's running statistics)."""
        return {name: self.buffers_of(layer)[key] for name, layer, key in self._named() if key in layer.buffers}

    def weights(self) -> dict:
        """Host copies of every parameter and buffer by name: a state dict torch can load."""
        host = (lambda a: np.array(a)) if self.xp is np else (lambda a: a.get())
        return {name: host(a) for name, a in {**self.named_parameters(), **self.named_buffers()}.items()}

    def load_weights(self, source, strict: bool = True):
        """Parameters and buffers by name from a file (.pt/.pth, .safetensors, .npz, an engine
        model file) or a dict of arrays (NumPy, CuPy, torch tensors); see engine.weights."""
        from engine.weights import load_weights
        return load_weights(self, source, strict=strict)

    def target_shape(self, logits_shape) -> tuple:
        return () if self.loss_name == "cross_entropy" else tuple(logits_shape[1:])

    def _device_copy(self, a):
        """A copy of a (NumPy or CuPy) on this executor's device."""
        return to_host(a) if self.xp is np else self.xp.asarray(a).copy()

    def _copy_in(self, dst, src):
        if self.xp is np:  # a CuPy source (a layer last trained on the GPU) is fetched: NumPy never reads one
            np.copyto(dst, src.get() if type(src).__module__.startswith("cupy") else np.asarray(src),
                      casting="same_kind")
        elif isinstance(src, np.ndarray):
            dst.set(np.ascontiguousarray(src, dtype=dst.dtype))
        else:
            dst[...] = src

    def plan(self, batch: int, mode: str, fuse: bool | None = None) -> Plan:
        self._follow_freezing()
        key = (int(batch), mode) if fuse is None else (int(batch), mode, bool(fuse))
        if key not in self._plans:
            self._plans[key] = Plan(self, int(batch), mode, fuse)
        return self._plans[key]

    def _feed(self, plan: Plan, x, y=None):
        C.array("Executor", "input", x)
        if x.dtype.kind != "f":  # uint8 pixels would train, silently, on an unnormalised 0..255 scale
            raise TypeError(f"Executor: the input must be float images, normalised as the model was trained, "
                            f"got dtype {x.dtype.name}; e.g. (x.astype(np.float32) / 255 - mean) / std")
        C.exact_shape("Executor", "input", x.shape, plan.inputs[0].shape)
        self._copy_in(plan.inputs[0], x)
        if y is not None:
            C.exact_shape("Executor", "targets", y.shape, plan.inputs[1].shape)
            if self.loss_name == "cross_entropy":  # a bad label would read out of bounds
                C.class_labels("Executor", y.get() if hasattr(y, "get") else np.asarray(y), self.output_shape[0])
            self._copy_in(plan.inputs[1], y)

    def _forward(self, plan: Plan, after=None):
        # a fresh dropout mask every step and node, reproducible from (seed, step), and
        # another on every rank of a data-parallel run
        rank = 0 if self.comm is None else self.comm.rank
        for b in plan.bound:
            b.seed = (self.seed * 0x9E3779B1 + self.step * 0x85EBCA77 + b.node.index + rank * 0xC2B2AE3D) % 2**63
            b.layer.forward(self.bk, b)
            if after is not None:
                after(b)  # Executor.activations reads the output before the arena reuses its memory

    # --- steps ----------------------------------------------------------------------
    def train_step(self, x, y, share: float | None = None):
        """One forward, backward and optimizer update on a batch; returns the loss as a
        0-d array on the device (reading it is the only host transfer of the step).

        Data parallel (self.comm): x is this rank's slice of a global batch, and share its
        rows' share of that batch (None: an equal share, 1 / world size); between backward
        and the update one all-reduce turns the slice's gradient into the global batch's."""
        loss = self.compute_gradients(x, y)
        if self.comm is not None:  # the trainable head of the flat gradient: frozen layers have none
            self.comm.average_gradients(self.grads_flat[:self.trainable_end],
                                        1.0 / self.comm.size if share is None else share)
        self.apply_gradients()
        return loss

    def compute_gradients(self, x, y):
        """Forward and backward on a batch: the gradient of its mean loss in grads_flat (an
        empty batch -- a rank's share of a short last batch can be none -- gives zeros).
        Returns the loss as a 0-d device array."""
        if self.optimizer is None:
            raise ValueError("Executor.train_step: no optimizer was given")
        self._follow_freezing()  # before an empty batch too: every rank lays its parameters out alike
        if self.trainable_end == 0:
            raise ValueError("Executor.train_step: nothing to train: every layer with parameters is frozen "
                             "(unfreeze one: layer.trainable = True, or engine.nn.unfreeze(model))")
        if len(x) == 0:
            self.grads_flat.fill(0)
            return self.xp.zeros((), np.float32)
        plan = self.plan(len(x), "train")
        self._feed(plan, x, y)
        self._forward(plan)
        bk = self.bk
        for b in reversed(plan.bound):
            if b.needs_backward:
                b.layer.backward(bk, b)
                for total, part in b.accumulate:
                    bk.add(total, part, out=total)
        return plan.loss

    def apply_gradients(self):
        """The optimizer's update of the trainable parameters from grads_flat; the step count advances."""
        self.step += 1
        self.optimizer.step(self.bk, *self._trainable_part(), self.step, self.lr, self.weights_end)

    def _trainable_part(self) -> tuple:
        """(parameters, gradients, optimizer state) of the trainable layers: the whole flat
        arrays when nothing is frozen, else their head, before the frozen parameters."""
        end = self.trainable_end
        if end == self.params_flat.size:
            return self.params_flat, self.grads_flat, self.opt_state
        return self.params_flat[:end], self.grads_flat[:end], {k: v[:end] for k, v in self.opt_state.items()}

    def eval_step(self, x, y):
        """Forward in eval mode with the loss: (loss 0-d array, logits), both device views
        that the next call overwrites."""
        plan = self.plan(len(x), "eval")
        self._feed(plan, x, y)
        self._forward(plan)
        return plan.loss, plan.logits

    def predict(self, x):
        """Logits (N, classes) in eval mode, as a device array the next call overwrites."""
        plan = self.plan(len(x), "predict")
        self._feed(plan, x)
        self._forward(plan)
        return plan.logits

    # --- looking inside -------------------------------------------------------------------
    def activations(self, x, layers=None) -> dict:
        """The output of every layer (or of those named in `layers`) for the batch x, in eval
        mode as predict runs it: {name: host array (N, ...)} in forward order. Names are the
        layers' paths in the model (see output_names). The graph runs unfused here, so that a
        conv followed by a ReLU shows both outputs; the logits then agree with predict's to
        rounding. Changes nothing: no step, no running statistics, no weights."""
        plan = self.plan(len(x), "predict", fuse=False)
        names = self.output_names(plan)
        wanted = C.layer_names("Executor.activations", "layers", layers, [n for n, _ in names])
        self._feed(plan, x)
        name_of, out = {id(b): name for b, (name, _) in zip(plan.bound, names)}, {}

        def keep(b):  # right after the node's forward: later nodes may reuse its memory
            if name_of[id(b)] in wanted:
                out[name_of[id(b)]] = to_host(b.y)

        self._forward(plan, after=keep)
        return out

    def gradients(self, x, y, activations=False) -> dict:
        """What a train step on (x, y) computes before its update, without the update:
        {"loss": float, "params": {"features.0.weight": d(loss)/d(weight), ...}} and, when
        `activations` is True or names layers, "activations": {name: d(loss)/d(that layer's
        output)}; host arrays. It runs as train_step does -- train mode, batch norm on the
        batch's statistics, the dropout masks of the current step, ReLUs fused -- and then puts
        back what a step would change: the batch-norm running statistics. The step counter,
        the weights and the optimizer state are not touched, so the next train_step(x, y)
        computes exactly these gradients (before any L1 penalty its optimizer adds) and then
        updates. Frozen layers have no parameter gradients (a step computes none). Activation
        gradients exist from the first trainable layer on, where backward runs (True asks
        for all of those); a fused ReLU's input gets d(output) *
        (output > 0), as its backward computes it."""
        plan = self.plan(len(x), "train")
        names = [(None, None) if b.layer is self.loss_layer else pair
                 for b, pair in zip(plan.bound, self.output_names(plan))]
        known = [n for pair in names for n in pair if n is not None]
        wanted = [] if activations is False else C.layer_names("Executor.gradients", "activations", activations, known)
        self._feed(plan, x, y)
        running = {id(layer): {k: v.copy() for k, v in self.buffers_of(layer).items()} for layer in self.layers}
        self._forward(plan)
        bk, dy = self.bk, {}
        for b, (name, relu) in zip(reversed(plan.bound), reversed(names)):
            if not b.needs_backward:
                continue
            if b.dy is not None and (name in wanted or relu in wanted):  # complete now: every reader ran backward
                grad = to_host(b.dy)
                dy.update({relu: grad, name: grad * (to_host(b.y) > 0)} if relu else {name: grad})
            b.layer.backward(bk, b)
            for total, part in b.accumulate:
                bk.add(total, part, out=total)
        for layer in self.layers:
            for k, v in self.buffers_of(layer).items():
                v[...] = running[id(layer)][k]
        result = {"loss": float(plan.loss), "params": {name: to_host(self.grad(layer, key)) for name, layer, key
                                                       in self._named() if key in layer.params and layer.trainable}}
        if wanted:
            missing = [n for n in wanted if n not in dy]
            if missing and activations is not True:  # True: every layer that has one
                raise ValueError(f"Executor.gradients: no gradient reaches {missing}: backward runs back to the "
                                 f"first trainable layer only, and these come before it")
            result["activations"] = {n: dy[n] for n in known if n in dy}
        return result

    def output_names(self, plan: Plan | None = None) -> list:
        """Per node of a plan (by default an unfused eval one, for batch 1): its output's name
        and, when a ReLU was fused into it, that ReLU's (else None). A name is the layer's path
        in the model ("features.0", "layer1.0.conv1"), with ":2", ":3" on the second and third
        call of a layer used more than once; a layer that is no attribute of the model (the
        Add that `a + b` makes while tracing, or a model that is one layer) is named by its
        kind and its number among those of its kind ("Add@1")."""
        plan = plan or self.plan(1, "predict", fuse=False)
        paths, anonymous, calls = self._paths, {}, {}

        def name(layer):
            if id(layer) not in paths and id(layer) not in anonymous:
                kind = type(layer).__name__
                anonymous[id(layer)] = f"{kind}@{1 + sum(v.startswith(kind + '@') for v in anonymous.values())}"
            base = paths.get(id(layer)) or anonymous[id(layer)]
            calls[base] = calls.get(base, 0) + 1
            return base if calls[base] == 1 else f"{base}:{calls[base]}"

        return [(name(b.layer), name(plan.fused[b.node]) if b.node in plan.fused else None) for b in plan.bound]

    # --- state ------------------------------------------------------------------------
    def _keys(self):
        for i, layer in enumerate(self.layers):
            kind = type(layer).__name__
            for name in layer.params:
                yield f"{i}.{kind}.{name}", layer, name

    def state_dict(self) -> dict:
        """Host copies of every parameter, buffer and optimizer state, and the step."""
        host = (lambda a: np.array(a)) if self.xp is np else (lambda a: a.get())
        state = {"params": {k: host(self.param(layer, name)) for k, layer, name in self._keys()},
                 "buffers": {f"{i}.{type(layer).__name__}.{k}": host(v)
                             for i, layer in enumerate(self.layers)
                             for k, v in self.buffers_of(layer).items()},
                 # optimizer state per parameter, as the parameters: whatever the flat layout
                 "optimizer": {s: {k: host(self._state_view(s, layer, name)) for k, layer, name in self._keys()}
                               for s in self.opt_state},
                 "step": self.step, "lr": self.lr, "seed": self.seed}  # (seed, step) key dropout masks
        return state

    def load_state_dict(self, state: dict) -> None:
        params = state["params"]
        for k, layer, name in self._keys():
            if k not in params:
                raise ValueError(f"Executor.load_state_dict: parameter {k} missing from the state")
            dst = self.param(layer, name)
            if tuple(params[k].shape) != tuple(dst.shape):
                raise ValueError(f"Executor.load_state_dict: {k} has shape {tuple(params[k].shape)}, "
                                 f"the model expects {tuple(dst.shape)}")
            self._copy_in(dst, params[k])
        for i, layer in enumerate(self.layers):
            for k, v in self.buffers_of(layer).items():
                key = f"{i}.{type(layer).__name__}.{k}"
                if key in state.get("buffers", {}):
                    self._copy_in(v, state["buffers"][key])
        for s, per_param in state.get("optimizer", {}).items():
            if s not in self.opt_state:
                continue
            if not isinstance(per_param, dict):
                raise ValueError(f"Executor.load_state_dict: optimizer state {s!r} is one flat array, as an older "
                                 f"engine wrote it; this one keeps it per parameter")
            for k, layer, name in self._keys():
                if k in per_param:
                    self._copy_in(self._state_view(s, layer, name), per_param[k])
        self.step = int(state.get("step", 0))
        self.seed = int(state.get("seed", self.seed))
        self.lr = float(state.get("lr", self.lr))
