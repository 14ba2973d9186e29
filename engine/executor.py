"""The executor: plans a traced graph's memory once and runs training steps on it.

For each input shape and mode the model is traced (engine.graph) and *planned*:

* every activation and gradient gets a place in one arena, allocated once and reused
  every step; buffers whose lifetimes do not overlap share memory (a greedy first-fit
  over a timeline in which node i runs forward at time i and backward at 2n-1-i);
* all parameters live in one flat array, their gradients in another, and the optimizer's
  state in flat arrays of the same layout, so one optimizer launch updates everything;
* backward runs in reverse topological order, iteratively; a value used by several nodes
  gets every contribution: the first writes the gradient, the others write a scratch
  buffer that is then added (+=).

Nothing is allocated inside a step, and on the GPU nothing leaves the device except the
loss, when the caller reads it.
"""
from __future__ import annotations

import numpy as np

from engine.backend import get_backend, CPU_BACKEND
from engine.graph import Graph, trace
from engine import nn

ALIGN = 64  # elements: 256-byte aligned views, so kernels may use 16-byte vector loads


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU and CuPy work, else 'cpu'."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"Executor: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    from engine import cuda
    if cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise RuntimeError("Executor: device 'cuda' asked for, but no usable GPU was found "
                           "(CuPy must be installed, e.g. pip install -e '.[cuda12]', and see a device)")
    return "cpu"


def fuse_relu(g: Graph) -> set:
    """Fusion pass: a ReLU whose input is made by a layer that can run it (relu_fusion set:
    conv/linear with a bias, batch norm) and read by nobody else is folded into that layer's
    node, which then makes the ReLU's output. Returns the fused nodes; renumbers the graph."""
    fused = set()
    for relu in [node for node in g.nodes if isinstance(node.layer, nn.ReLU)]:
        v = relu.inputs[0]
        a = v.producer
        if (a is None or a.layer.relu_fusion is None or v.consumers != [relu] or v in g.outputs
                or (a.layer.relu_fusion == "bias" and "bias" not in a.layer.params)):
            continue
        a.output, relu.output.producer = relu.output, a
        g.nodes.remove(relu)
        g.values.remove(v)
        fused.add(a)
    for i, node in enumerate(g.nodes):
        node.index = i
    for i, value in enumerate(g.values):
        value.index = i
    return fused


class Bound:
    """A node bound to real arrays (what a layer's forward/backward reads and writes)."""

    def __init__(self, node, training: bool):
        self.node, self.layer, self.training = node, node.layer, training
        self.x, self.dx, self.y, self.dy = [], [], None, None
        self.p, self.g, self.s, self.state = {}, {}, {}, {}
        self.seed = 0
        self.relu = False  # a following ReLU was fused into this node (fuse_relu)
        self.accumulate: list[tuple] = []  # (gradient, scratch) pairs to add after backward
        self.needs_backward = False


class Plan:
    """One traced graph with every buffer in place, for one input shape and mode."""

    def __init__(self, ex: "Executor", batch: int, mode: str):
        self.mode = mode                      # "train", "eval" (forward + loss) or "predict"
        training = mode == "train"
        g = Graph()
        x = g.input((batch, *ex.input_shape))
        logits = ex.model(x)
        g.output(logits)
        if mode != "predict":
            target = g.input((batch, *ex.target_shape(logits.shape)), ex.loss_layer.target_dtype)
            g.output(ex.loss_layer(logits, target))
        fused = fuse_relu(g) if ex.fuse else set()
        self.graph = g
        for layer in g.layers():
            if layer.params and id(layer) not in ex.layer_index:
                raise ValueError(f"{layer.name}: a layer with parameters must be created once (in the "
                                 f"model's __init__), not inside forward()")
        xp, n = ex.xp, len(g.nodes)
        backward = training

        # which values need a gradient: outputs of nodes with parameters, and downstream
        needs_grad = {}
        for v in g.inputs:
            needs_grad[v.index] = False
        for node in g.nodes:
            needs_grad[node.output.index] = backward and (
                bool(node.layer.params) or any(needs_grad[v.index] for v in node.inputs))

        # lifetimes on the timeline: forward of node i at i, backward at 2n-1-i
        end = 2 * n
        intervals = {}  # key -> (start, stop, shape)

        def bwd(i):
            return 2 * n - 1 - i

        for v in g.values:
            if v.producer is None:
                continue
            p = v.producer.index
            stop = bwd(p) if backward else max([c.index for c in v.consumers], default=end)
            if v in g.outputs:
                stop = end  # the caller reads outputs after the step
            intervals[("act", v.index)] = (p, stop, v.shape)
            if needs_grad[v.index] and v.consumers:
                # a loss writes d(loss)/d(logits) in its forward pass, the others in backward
                start = min(c.index if c.layer.grad_in_forward else bwd(c.index) for c in v.consumers)
                intervals[("grad", v.index)] = (start, bwd(p), v.shape)
                if sum(1 for c in v.consumers for u in c.inputs if u is v) > 1:
                    intervals[("acc", v.index)] = (start, bwd(p), v.shape)
        views = _arena(intervals, xp, share=ex.share_memory)
        self.arena_elements = views.pop("__size__")
        self.naive_elements = sum(_align(int(np.prod(s))) for _, _, s in intervals.values())

        inputs = {v.index: xp.zeros(v.shape, v.dtype) for v in g.inputs}
        self.inputs = [inputs[v.index] for v in g.inputs]
        act = lambda v: inputs[v.index] if v.index in inputs else views[("act", v.index)]  # noqa: E731

        self.bound: list[Bound] = []
        contributed: set = set()  # (kind, key) already written once in backward order
        for node in g.nodes:
            b = Bound(node, training)
            b.x = [act(v) for v in node.inputs]
            b.y = act(node.output)
            b.dy = views.get(("grad", node.output.index))
            b.needs_backward = backward and needs_grad[node.output.index]
            shapes = [v.shape for v in node.inputs]
            b.s = {k: xp.zeros(shape, dtype) for k, (shape, dtype) in node.layer.saved(*shapes).items()}
            b.relu = node in fused
            if b.relu and node.layer.relu_fusion == "bias" and b.needs_backward:
                b.s["pre_relu_grad"] = xp.zeros(node.output.shape, np.float32)
            if node.layer.params:
                for name in node.layer.params:
                    b.p[name] = ex.param(node.layer, name)
                b.state = ex.buffers_of(node.layer)
            self.bound.append(b)
        # gradient destinations, assigned in backward order: first writer direct, others accumulate
        for b in reversed(self.bound):
            node = b.node
            for v in node.inputs:
                if not (b.needs_backward and needs_grad[v.index]):
                    b.dx.append(None)
                elif ("grad", v.index) not in contributed:
                    contributed.add(("grad", v.index))
                    b.dx.append(views[("grad", v.index)])
                else:
                    b.dx.append(views[("acc", v.index)])
                    b.accumulate.append((views[("grad", v.index)], views[("acc", v.index)]))
            if b.needs_backward and getattr(node.layer, "input_grads_required", False):
                b.dx = [d if d is not None else xp.zeros(v.shape, np.float32) for d, v in zip(b.dx, node.inputs)]
            if b.needs_backward:
                for name in node.layer.params:
                    key = ("param", id(node.layer), name)
                    if key not in contributed:
                        contributed.add(key)
                        b.g[name] = ex.grad(node.layer, name)
                    else:
                        scratch = xp.zeros(node.layer.params[name].shape, np.float32)
                        b.g[name] = scratch
                        b.accumulate.append((ex.grad(node.layer, name), scratch))
        self.logits = act(g.outputs[0])
        self.loss = act(g.outputs[1]) if len(g.outputs) > 1 else None


def _arena(intervals: dict, xp, share: bool = True) -> dict:
    """Place every buffer at an offset of one flat float32 arena so that buffers alive at
    the same time never overlap: greedy, largest first, lowest free offset. share=False
    gives every buffer its own place (to test that sharing changes nothing)."""
    placed = []  # (offset, size, start, stop)
    offsets = {}
    for key, (start, stop, shape) in sorted(intervals.items(), key=lambda kv: -int(np.prod(kv[1][2]))):
        size = _align(int(np.prod(shape)))
        clashes = sorted((o, s) for o, s, a, z in placed if not share or (a <= stop and start <= z))
        offset = 0
        for o, s in clashes:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, start, stop))
        offsets[key] = offset
    total = max([o + s for o, s, _, _ in placed], default=0)
    arena = xp.zeros(max(total, 1), np.float32)
    views = {key: arena[o:o + int(np.prod(intervals[key][2]))].reshape(intervals[key][2])
             for key, o in offsets.items()}
    views["__size__"] = total
    return views


class Executor:
    """Runs a model: training steps, evaluation and prediction, on the CPU or the GPU.

        ex = Executor(lenet5(), (1, 28, 28), optimizer=Adam(1e-3), device="cpu")
        loss = ex.train_step(x, y)          # x (N, 1, 28, 28) float32, y (N,) int
        logits = ex.predict(x)
    """

    def __init__(self, model, input_shape, loss="cross_entropy", optimizer=None, device="cpu",
                 backend=None, seed: int = 0, share_memory: bool = True, fuse: bool = True):
        if loss not in nn.LOSSES:
            raise ValueError(f"Executor: loss must be one of {sorted(nn.LOSSES)}, got {loss!r}")
        self.model, self.input_shape = model, tuple(int(d) for d in input_shape)
        self.device = resolve_device(device)
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
        offsets, total = {}, 0
        for layer in self.layers:
            for name, value in layer.params.items():
                offsets[(id(layer), name)] = (total, value.shape)
                total += _align(value.size)
        xp = self.xp
        self.params_flat = xp.zeros(max(total, 1), np.float32)
        self.grads_flat = xp.zeros(max(total, 1), np.float32)
        self._views = {key: (self.params_flat[o:o + int(np.prod(s))].reshape(s),
                             self.grads_flat[o:o + int(np.prod(s))].reshape(s))
                       for key, (o, s) in offsets.items()}
        for layer in self.layers:
            for name, value in layer.params.items():
                self._copy_in(self.param(layer, name), value)
        self._buffers = {id(layer): {k: xp.asarray(v).copy() for k, v in layer.buffers.items()}
                         for layer in self.layers}
        self.opt_state = {k: xp.zeros_like(self.params_flat) for k in
                          (optimizer.state_names if optimizer is not None else ())}
        self._plans: dict = {}

    # --- parameters ---------------------------------------------------------------
    def param(self, layer, name):
        return self._views[(id(layer), name)][0]

    def grad(self, layer, name):
        return self._views[(id(layer), name)][1]

    def buffers_of(self, layer) -> dict:
        return self._buffers[id(layer)]

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def target_shape(self, logits_shape) -> tuple:
        return () if self.loss_name == "cross_entropy" else tuple(logits_shape[1:])

    def _copy_in(self, dst, src):
        src = np.asarray(src) if self.xp is np else src
        if self.xp is np:
            np.copyto(dst, src, casting="same_kind")
        elif isinstance(src, np.ndarray):
            dst.set(np.ascontiguousarray(src, dtype=dst.dtype))
        else:
            dst[...] = src

    def plan(self, batch: int, mode: str) -> Plan:
        key = (int(batch), mode)
        if key not in self._plans:
            self._plans[key] = Plan(self, int(batch), mode)
        return self._plans[key]

    def _feed(self, plan: Plan, x, y=None):
        want = (len(plan.inputs[0]), *self.input_shape)
        if tuple(x.shape) != want:
            raise ValueError(f"Executor: expected input of shape {want}, got {tuple(x.shape)}")
        self._copy_in(plan.inputs[0], x)
        if y is not None:
            if tuple(y.shape) != tuple(plan.inputs[1].shape):
                raise ValueError(f"Executor: expected targets of shape {tuple(plan.inputs[1].shape)}, "
                                 f"got {tuple(y.shape)}")
            if self.loss_name == "cross_entropy":
                yh = y.get() if hasattr(y, "get") else np.asarray(y)
                if yh.dtype.kind not in "iu":
                    raise TypeError(f"Executor: cross_entropy labels must be integers, got {yh.dtype}")
                k = self.output_shape[0]
                if yh.size and (yh.min() < 0 or yh.max() >= k):
                    bad = yh[(yh < 0) | (yh >= k)][0]
                    raise ValueError(f"Executor: label {bad} out of range [0, {k})")
            self._copy_in(plan.inputs[1], y)

    def _forward(self, plan: Plan):
        for b in plan.bound:
            # a fresh dropout mask every step and node, reproducible from (seed, step)
            b.seed = (self.seed * 0x9E3779B1 + self.step * 0x85EBCA77 + b.node.index) % 2**63
            b.layer.forward(self.bk, b)

    # --- steps ----------------------------------------------------------------------
    def train_step(self, x, y):
        """One forward, backward and optimizer update on a batch; returns the loss as a
        0-d array on the device (reading it is the only host transfer of the step)."""
        if self.optimizer is None:
            raise ValueError("Executor.train_step: no optimizer was given")
        plan = self.plan(len(x), "train")
        self._feed(plan, x, y)
        self._forward(plan)
        bk = self.bk
        for b in reversed(plan.bound):
            if b.needs_backward:
                b.layer.backward(bk, b)
                for total, part in b.accumulate:
                    bk.add(total, part, out=total)
        self.step += 1
        self.optimizer.update(bk, self.params_flat, self.grads_flat, self.opt_state, self.step, self.lr)
        return plan.loss

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
                 "optimizer": {k: host(v) for k, v in self.opt_state.items()},
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
        for k, v in state.get("optimizer", {}).items():
            if k in self.opt_state:
                self._copy_in(self.opt_state[k], v)
        self.step = int(state.get("step", 0))
        self.seed = int(state.get("seed", self.seed))
        self.lr = float(state.get("lr", self.lr))
