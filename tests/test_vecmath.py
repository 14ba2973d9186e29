"""engine.cpu.vecmath over the whole float32 range, and the activations built on it.

The sweep: every 4099th float32 bit pattern (both signs, every exponent: zeros, denormals,
the largest finite values, +-inf and NaN payloads), the specials by name, and a dense grid
over [-20, 20] where the functions bend. Each function is compiled the way the kernels
compile it (engine.cpu.parallel.specialize: inlined, vectorised, fused multiply-adds) and
judged against float64 NumPy/math; every activation row is judged against its float64
reference, forward and backward, element by element with the table's float32 bounds at
scale 1 (|got - want| <= atol + rtol |want|, stricter than the table's scale for large
values). NaN must come out exactly where the reference gives NaN, infinities must match.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.backend import get_backend
from engine.cpu import activation, vecmath
from engine.cpu.parallel import specialize
from engine.reference.activation import ELEMENTWISE
from engine.tolerances import tol

fast = get_backend("numba")
ref = get_backend("reference")
TOL = tol("activation")


def sweep() -> np.ndarray:
    patterns = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754944e-38, 3.4028235e38,
                         -3.4028235e38, 88.72, 88.73, -87.33, -103.9, -104.0, 0.625, -0.625, 1e-30], np.float32)
    return np.concatenate([patterns, specials, np.linspace(-20, 20, 400_001, dtype=np.float32)])


X = sweep()


def _ulps(got: np.ndarray, want: np.ndarray, flushed: bool = False) -> float:
    """Worst |got - want| in float32 ulps of want, over the finite results (both being finite);
    flushed: over the normal ones, and got must be within the least normal where want is denormal."""
    want32 = want.astype(np.float32)
    finite = np.isfinite(want32) & np.isfinite(got)
    if flushed:
        tiny = finite & (np.abs(want) < np.finfo(np.float32).tiny)
        assert np.all(np.abs(got[tiny] - want[tiny]) <= np.finfo(np.float32).tiny), "a denormal result"
        finite &= ~tiny
    ulp = np.spacing(np.abs(want32[finite])).astype(np.float64)
    return float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]) / ulp))


def _assert_same_specials(got, want, what):
    with np.errstate(invalid="ignore"):
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN where the reference has none, or not"
        inf = np.isinf(want.astype(np.float32))
        assert np.array_equal(got[inf], want[inf].astype(np.float32)), f"{what}: infinities differ"


def _assert_within_table(got, want, what):
    _assert_same_specials(got, want, what)
    ok = np.isfinite(want)
    err = np.abs(got[ok].astype(np.float64) - want[ok])
    bound = TOL["atol"] + TOL["rtol"] * np.abs(want[ok])
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (f"{what}: {int((err > bound).sum())} elements out of bounds; worst at "
                                  f"x={X[ok][worst]!r}: got {got[ok][worst]!r}, want {want[ok][worst]!r}")


_COMPILED = {}


def compiled(name: str):
    """vecmath.<name> inlined into the elementwise kernel template, as the rows get it."""
    if name not in _COMPILED:
        fn = getattr(vecmath, name)
        _COMPILED[name] = specialize(activation._forward, f"vecmath_{name}", scalar=lambda x, a, b: fn(x))
    return _COMPILED[name]


def run(name: str, x: np.ndarray, kernel: str = "parallel") -> np.ndarray:
    y = np.empty_like(x)
    getattr(compiled(name), kernel)(x, 0.0, 0.0, y)
    return y


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _exact(name: str, x64: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return {"exp": lambda: np.exp(x64),
                "exp64": lambda: np.exp(x64),
                "tanh": lambda: np.tanh(x64),
                "sigmoid": lambda: np.exp(-np.logaddexp(0.0, -x64)),
                "normal_cdf": lambda: 0.5 * _erfc(-x64 / math.sqrt(2.0)),
                "normal_pdf": lambda: np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)}[name]()


# measured (with fused multiply-adds): exp 0.99, exp64 0.5001, tanh 1.20, sigmoid 2.25 float32 ulps. normal_cdf
# and normal_pdf are bounded in absolute terms, measured 2.7e-7 (A&S 7.1.26 in float32, worst
# near 0) and 5.2e-8 (the pdf's e^(-z^2) takes the rounding of z^2 along, and both are 0
# where they would be below 1e-38).
ULPS = {"exp": 1.5, "exp64": 0.51, "tanh": 2.0, "sigmoid": 3.0}  # exp64: correctly rounded but for near-ties
FLUSHED = {"sigmoid"}  # results below 1e-38 are 0 (vecmath._exp_negative)
ABS = {"normal_cdf": 3e-7, "normal_pdf": 1e-7}


@pytest.mark.parametrize("name", sorted(ULPS) + sorted(ABS))
def test_vecmath_over_the_float32_range(name):
    got = run(name, X)
    with np.errstate(all="ignore"):  # NaN and overflow in the casts are part of the sweep
        want = _exact(name, X.astype(np.float64))
        _assert_same_specials(got, want, name)
        if name in ULPS:
            ulps = _ulps(got, want, flushed=name in FLUSHED)
            assert ulps <= ULPS[name], f"{name}: {ulps:.2f} ulps"
        else:
            ok = np.isfinite(want)
            assert np.max(np.abs(got[ok] - want[ok])) <= ABS[name]


def test_vecmath_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 89.0, -105.0], np.float32)
    assert list(run("exp", x)[[0, 2, 3, 5, 6]]) == [1.0, np.inf, 0.0, np.inf, 0.0]
    t = run("tanh", x)
    assert t[0] == 0.0 and np.signbit(t[1]) and t[2] == 1.0 and t[3] == -1.0
    s = run("sigmoid", x)
    assert s[0] == 0.5 and s[2] == 1.0 and s[3] == 0.0
    assert run("normal_cdf", x)[[2, 3]].tolist() == [1.0, 0.0]
    for name in ULPS | ABS:
        assert np.isnan(run(name, x)[4]), f"{name} must pass NaN through"
    assert run("exp", np.array([-100.0], np.float32))[0] > 0  # a denormal result, not flushed to 0
    assert run("sigmoid", np.array([-87.0, -88.0], np.float32)).tolist()[1] == 0.0  # flushed, as documented


@pytest.mark.parametrize("name", sorted(ULPS) + sorted(ABS))
def test_vecmath_bits_do_not_depend_on_the_split(name):
    """The vector body and the scalar remainder give the same bits, so any split of the array
    (over threads, or by an offset) does: serial against parallel, and shifted by 1..15."""
    x = X[:100_003]
    whole = run(name, x)
    assert np.array_equal(whole.view(np.uint32), run(name, x, "serial").view(np.uint32))
    for shift in (1, 7, 15):
        assert np.array_equal(whole[shift:].view(np.uint32), run(name, x[shift:].copy()).view(np.uint32))


def test_python_gives_the_kernels_results_within_their_bounds():
    """Plain Python (no fused multiply-adds): within an ulp, or the absolute bound."""
    x = X[::997]
    for name in ULPS | ABS:
        with np.errstate(all="ignore"):
            py = np.array([getattr(vecmath, name)(v) for v in x], np.float32)
        got = run(name, x)
        _assert_same_specials(got, py.astype(np.float64), name)
        ok = np.isfinite(py)
        bound = np.spacing(np.abs(py[ok])) + 1e-38 if name in ULPS else ABS[name]
        assert np.all(np.abs(got[ok] - py[ok]) <= bound), name


# ------------------------------------------------------------------ the rows over the range


def _saved(row, x):
    if row.saves == "x":
        return x
    with np.errstate(all="ignore"):
        return getattr(ref, f"{row.name}_forward")(x, *row.example).astype(np.float32)


@pytest.mark.parametrize("row", ELEMENTWISE, ids=lambda r: r.name)
def test_rows_over_the_float32_range(row):
    params = row.example
    with np.errstate(all="ignore"):
        want = getattr(ref, f"{row.name}_forward")(X, *params)
        got = getattr(fast, f"{row.name}_forward")(X, *params)
    _assert_within_table(got, want, f"{row.name} forward")
    saved = _saved(row, X)
    dy = np.ones_like(X)
    with np.errstate(all="ignore"):
        want = getattr(ref, f"{row.name}_backward")(dy, saved, *params)
        got = getattr(fast, f"{row.name}_backward")(dy, saved, *params)
    _assert_within_table(got, want, f"{row.name} backward")
