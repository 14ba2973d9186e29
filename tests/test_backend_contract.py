"""Every backend honours the op cards (engine.ops.OPS, declared in engine/reference/<family>.py).

A card's reference gives the op's signature; every backend's function must have exactly
those parameter names, order and defaults, so that the functional API and the executor,
which pass arguments by position, reach the right parameter on every backend. Each op
returns what the card's shape rule says, in shape and dtype. 'reference' and 'numba' must
load on every machine; the CUDA backends skip, with the reason, where CuPy or a GPU is
absent (tests/test_cuda_emulated.py runs them on an emulated GPU).
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from engine import backend
from engine.ops import OPS, cases, family_modules

CPU_BACKENDS = ("reference", "numba")
CUDA_BACKENDS = ("cuda", "cuda-rtc", "cuda-ext")
KIND = inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_every_family_declares_cards_and_every_card_a_usable_signature():
    assert family_modules() == ["activation", "batchnorm", "conv", "dropout", "linear", "loss", "optim", "pool"]
    assert {card.module for card in OPS.values()} == set(family_modules())
    for name, card in OPS.items():
        params = list(card.signature.parameters.values())
        assert all(p.kind is KIND for p in params), f"{name}: every parameter positional-or-keyword"
        if card.direction == "update":
            assert "out" not in card.signature.parameters and card.returns == 0, name
        else:
            assert params[-1].name == "out" and params[-1].default is None, f"{name}: out=None comes last"
        assert len(card.outputs) == card.returns + len(card.inplace), name


def _cuda_skip_reason(name: str) -> str | None:
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA GPU"
    except Exception as e:  # no driver, no device: CuPy raises its own runtime errors
        return f"CuPy cannot reach a GPU ({type(e).__name__}: {e})"
    if name == "cuda-ext":
        from engine.cuda import extension_available
        if not extension_available():
            return "the compiled CUDA extension is not built"
    return None


def _backend_or_skip(name: str):
    if name in CUDA_BACKENDS:
        reason = _cuda_skip_reason(name)
        if reason:
            pytest.skip(f"backend {name!r}: {reason}")
    return backend.get_backend(name)


@pytest.mark.parametrize("name", CPU_BACKENDS + CUDA_BACKENDS)
def test_backend_provides_every_op_with_the_card_signature(name):
    be = _backend_or_skip(name)  # get_backend raises NotImplementedError naming what is missing
    for op, card in OPS.items():
        fn = getattr(be, op)
        assert inspect.signature(fn) == card.signature, \
            f"backend {name!r}, {op}: card {card.signature}, implementation {inspect.signature(fn)}"


@pytest.mark.parametrize("op", [op for op, card in OPS.items() if card.row is None])
def test_numba_op_lives_in_the_family_file_of_its_reference(op):
    """The layout rule: engine/reference/<family>.py and engine/cpu/<family>.py pair up."""
    card = OPS[op]
    fn = getattr(backend.get_backend("numba"), op)
    assert fn.__module__ == f"engine.cpu.{card.module}", f"{op}: reference in {card.module}, Numba in {fn.__module__}"


def test_a_missing_implementation_is_named(monkeypatch):
    from engine.cpu import pool
    monkeypatch.delattr(pool, "avg_pool2d_backward")
    with pytest.raises(NotImplementedError, match=r"backend 'numba' lacks avg_pool2d_backward \(engine.cpu.pool\)"):
        backend.namespace("numba", "engine.cpu")


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_outputs_follow_the_card_shape_rule(name):
    be = backend.get_backend(name)
    dtype = np.float64 if name == "reference" else np.float32
    for case in cases("odd"):
        args = [a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in case.inputs()]
        specs = case.card.output_specs(args)
        result = getattr(be, case.op)(*args)
        got = () if result is None else result if isinstance(result, tuple) else (result,)
        assert [(tuple(g.shape), g.dtype) for g in got] == list(specs), f"{name}: {case.op} at {case.label}"


def test_engine_modules_import_each_other_without_a_circle():
    """The imports inside engine/, at module level or in a function, form no cycle
    (engine.cuda once imported engine.backend, which imports engine.cuda): a reader
    follows them one way."""
    import ast
    from pathlib import Path
    root = Path(backend.__file__).resolve().parent
    graph = {}
    for path in root.rglob("*.py"):
        name = ".".join(("engine",) + path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
                # `from engine import checks` imports the module engine.checks; only a name that
                # is no module (`from engine import save_model`) depends on the package itself
                package = root.joinpath(*node.module.split(".")[1:])
                submodules = {a.name for a in node.names
                              if (package / f"{a.name}.py").exists() or (package / a.name).is_dir()
                              or a.name == "_cuda_ext"}  # the compiled extension, built or not
                deps |= {f"{node.module}.{name}" for name in submodules}
                if len(submodules) < len(node.names):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("engine")}
        graph[name] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for d in graph[m]:
            assert state.get(d) != "open", "import circle: " + " -> ".join(path[path.index(d):] + [d])
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)
    assert "engine.backend" in graph and "engine.cuda" in graph
