"""Every backend honours the op contract in engine.backend.OPS.

The contract is text: "(x, kernel, stride, padding, out=None) -> cols ...". Its parameter
names, order and defaults are parsed out of that text and compared with
inspect.signature of each backend's function, so a renamed or reordered parameter (which
would make the functional API or the executor pass arguments to the wrong place) fails
here, naming the backend and the op. 'reference' and 'numba' must import on every
machine; the CUDA backends skip, with the reason, where CuPy or a GPU is absent.
"""
from __future__ import annotations

import ast
import importlib
import inspect

import pytest

from engine import backend
from engine.backend import FAMILIES, OPS

CPU_BACKENDS = ("reference", "numba")
CUDA_BACKENDS = ("cuda", "cuda-rtc", "cuda-ext")
NO_DEFAULT = inspect.Parameter.empty


def contract_parameters(op: str) -> list[tuple[str, object]]:
    """[(name, default or NO_DEFAULT), ...] from the text of OPS[op]."""
    text = OPS[op]
    inside = text[text.index("(") + 1:text.index(")")]
    params = []
    for item in inside.split(","):
        name, _, default = item.strip().partition("=")
        params.append((name.strip(), ast.literal_eval(default.strip()) if default else NO_DEFAULT))
    return params


def implementation_parameters(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]


def test_contract_text_parses():
    # guards the parser itself: a known entry comes out as written
    assert contract_parameters("avg_pool2d_forward") == [
        ("x", NO_DEFAULT), ("kernel", NO_DEFAULT), ("stride", NO_DEFAULT),
        ("padding", NO_DEFAULT), ("count_include_pad", True), ("out", None)]
    assert contract_parameters("gemm")[2:] == [("trans_a", False), ("trans_b", False), ("out", None)]
    assert all(contract_parameters(op) for op in OPS)


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
def test_backend_provides_every_op(name):
    be = _backend_or_skip(name)  # get_backend raises NotImplementedError listing what is missing
    missing = sorted(op for op in OPS if not callable(getattr(be, op, None)))
    assert not missing, f"backend {name!r} lacks {missing}"


def _op(name: str, op: str):
    """One op of a backend. CPU ops are looked up family by family (as get_backend does),
    so one missing op or family fails its own tests, not every op's."""
    if name in CUDA_BACKENDS:
        return getattr(_backend_or_skip(name), op)
    package = backend._PACKAGES[name]
    found = None
    for fam in FAMILIES:
        try:
            module = importlib.import_module(f"{package}.{fam}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{fam}":
                raise  # the family exists but imports something missing: a real error
            continue
        found = getattr(module, op, found)  # later families win, as in get_backend
    assert found is not None, f"backend {name!r} defines no {op} in {package}.<family>"
    return found


@pytest.mark.parametrize("name", CPU_BACKENDS + CUDA_BACKENDS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_signature_matches_the_contract(name, op):
    fn = _op(name, op)
    want = contract_parameters(op)
    got = implementation_parameters(fn)
    where = f"backend {name!r}, {op}: contract {OPS[op].split(' ->')[0]}, implementation {inspect.signature(fn)}"
    assert [n for n, _ in want] == [n for n, _, _ in got], f"parameter names differ; {where}"
    for (pname, default), (_, impl_default, kind) in zip(want, got):
        # callers pass everything positionally except out=
        assert kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f"{pname} is {kind}; {where}"
        if default is NO_DEFAULT:
            assert impl_default is NO_DEFAULT, f"{pname} has a default the contract lacks; {where}"
        else:
            assert impl_default == default and type(impl_default) is type(default), \
                f"{pname} defaults to {impl_default!r}, contract says {default!r}; {where}"


@pytest.mark.parametrize("op", sorted(OPS))
def test_numba_op_lives_in_the_same_family_file_as_its_reference(op):
    """The layout rule: engine/reference/<family>.py and engine/cpu/<family>.py pair up."""
    def family(package):
        for fam in FAMILIES:
            try:
                module = importlib.import_module(f"{package}.{fam}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{fam}":
                    raise
                continue
            fn = getattr(module, op, None)
            if fn is not None and getattr(fn, "__module__", None) == module.__name__:
                return fam
        return None

    ref, cpu = family("engine.reference"), family("engine.cpu")
    assert ref is not None, f"{op} is defined in no engine/reference/<family>.py"
    assert cpu == ref, f"{op} is defined in engine/reference/{ref}.py but engine/cpu/{cpu}.py"
