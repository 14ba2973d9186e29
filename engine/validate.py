"""``python -m engine validate``: every op, through every exposure, against the float64 spec.

For each op (engine.ops.OPS: forward and backward are separate ops, so separate rows
here) and each exposure that can run on this machine -- Numba always, the CUDA extension
("cuda-ext") and the NVRTC path ("cuda-rtc") when a GPU works -- draw the op's inputs as
its card says (engine/reference/<family>.py) at the LeNet shapes (batch 256), the AlexNet
layer shapes (batch 8) and a set of odd shapes, run the op, and judge its outputs against
the NumPy float64 reference with the card's tolerance family (engine.tolerances), and
their shapes and dtypes against the card's shape rule. Each op is also run a second time
writing into ``out=`` buffers pre-filled with garbage (NaN / 0x7f..): the executor reuses
buffers every step, so a kernel that accumulates into ``out`` instead of overwriting it
fails here. Where both CUDA exposures run, their outputs must agree bit for bit: they
launch the same kernels from the same descriptions.

    python -m engine validate                      # all exposures that run here
    python -m engine validate --backend numba --quick
    python -m engine validate --json validate.json
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from engine.backend import get_backend
from engine.cards import dims
from engine.cli import ArgumentParser
from engine.files import write_json
from engine.ops import OPS, Case, cases
from engine.tolerances import errors, is_close, tol


# --------------------------------------------------------------------------------------
# Running a case on a backend.


def to_device(args, xp, dtype=None) -> list:
    """Fresh copies of the array args in module xp (numpy or cupy): ops update some in place.
    dtype, when given, replaces every floating dtype (the reference gets float64)."""
    moved = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = a.astype(dtype) if dtype is not None and a.dtype.kind == "f" else a.copy()
            a = xp.asarray(a)
        moved.append(a)
    return moved


def call(backend, case: Case, args: list, out=None) -> tuple:
    """Run case.op on backend with args (already on its device); returns the outputs then the
    in-place-updated args, in the order of the card's outputs."""
    fn = getattr(backend, case.op)
    result = fn(*args) if out is None else fn(*args, out=out)
    if result is None:
        result = ()
    elif not isinstance(result, tuple):
        result = (result,)
    return tuple(result) + tuple(args[i] for i in case.card.inplace)


def reference_outputs(case: Case, args=None) -> tuple:
    """The float64 spec's outputs for a case (its float32 inputs upcast, nothing else changed)."""
    args = case.inputs() if args is None else args
    return call(get_backend("reference"), case, to_device(args, np, np.float64))


def garbage_like(outputs: tuple, xp):
    """out= buffers for the returned outputs, filled with values no correct kernel leaves behind."""
    buffers = []
    for o in outputs:
        b = xp.empty(o.shape, dtype=o.dtype)
        b.fill(np.nan if b.dtype.kind == "f" else 0x7F)
        buffers.append(b)
    return buffers[0] if len(buffers) == 1 else tuple(buffers)


def compare(case: Case, got: tuple, expected: tuple) -> tuple[bool, float, float, str]:
    """(passed, max abs err, max rel err, the first failing output's name or '') over all outputs.
    Integer outputs (argmax, dropout mask) must match exactly; float ones within tol(family)."""
    names = case.card.outputs
    if len(got) != len(expected):
        return False, math.inf, math.inf, f"returned {len(got)} outputs, expected {len(expected)}"
    bounds = tol(case.card.family)
    passed, worst_abs, worst_rel, failing = True, 0.0, 0.0, ""
    for name, g, e in zip(names, got, expected):
        g_host = g.get() if hasattr(g, "get") and not isinstance(g, np.ndarray) else np.asarray(g)
        e = np.asarray(e)
        if g_host.shape != e.shape:
            ok, abs_err, rel_err = False, math.inf, math.inf
        else:
            abs_err, rel_err = errors(g_host, e)
            if e.dtype.kind in "iub":
                ok = g_host.dtype.kind in "iub" and bool(np.array_equal(g_host, e))
            else:
                ok = g_host.dtype == np.float32 and is_close(g_host, e, **bounds)
        worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
        if not ok and passed:
            passed = False
            failing = f"{name} {g_host.dtype}{dims(g_host.shape)}"
    return passed, worst_abs, worst_rel, failing


def _host(x) -> np.ndarray:
    return np.asarray(x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else x)


def _bitwise_equal(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(np.array_equal(_host(x), _host(y), equal_nan=True) for x, y in zip(a, b))


def exposures_agree(case_rows: list) -> bool | None:
    """Whether cuda-ext and cuda-rtc gave the same bits for one case (None unless both ran):
    one source, one launch description, so they must. Differing rows fail."""
    pair = {row.exposure: row for row in case_rows if row.exposure in ("cuda-ext", "cuda-rtc") and row.outputs}
    if len(pair) < 2:
        return None
    if _bitwise_equal(pair["cuda-ext"].outputs, pair["cuda-rtc"].outputs):
        return True
    for row in pair.values():
        row.passed, row.note = False, row.note or "cuda-ext and cuda-rtc differ bitwise"
    return False


@dataclass
class Row:
    op: str
    direction: str
    exposure: str
    shape_set: str
    shape: str
    max_abs: float
    max_rel: float
    rerun: str      # second run into garbage-filled out=: "bitwise", "close", "-" (no out=), or "FAIL"
    passed: bool
    note: str = ""
    outputs: tuple = field(default=(), repr=False)  # host copies, to compare exposures

    def as_dict(self) -> dict:
        # strict JSON has no NaN or Infinity: an error that could not be measured is null
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items() if k != "outputs"}


def shape_rule_violation(case: Case, args, got) -> str:
    """'' when the returned outputs have the shapes and dtypes the card's shape rule gives."""
    for name, (shape, dtype), g in zip(case.card.outputs, case.card.output_specs(args), got):
        if tuple(g.shape) != shape or g.dtype != dtype:
            return f"{name} is {g.dtype}{tuple(g.shape)}, the card's shape rule says {dtype}{shape}"
    return ""


def check_case(case: Case, exposure: str, backend, xp, args, expected) -> Row:
    """Run one case on one exposure twice (fresh, then into garbage out=) and judge both."""
    row = Row(case.op, case.card.direction, exposure, case.label, case.shape.describe(),
              math.nan, math.nan, "-", False)
    try:
        got = call(backend, case, to_device(args, xp))
        row.outputs = tuple(_host(g) for g in got)
        row.passed, row.max_abs, row.max_rel, failing = compare(case, got, expected)
        if failing:
            row.note = f"wrong {failing}"
        violation = shape_rule_violation(case, args, got)
        if violation:
            row.passed, row.note = False, row.note or violation
        if "out" in case.card.signature.parameters:  # in-place optimizer updates have no out=
            again = call(backend, case, to_device(args, xp), out=garbage_like(got[:case.card.returns], xp))
            if _bitwise_equal(got, again):
                row.rerun = "bitwise"
            elif compare(case, again, expected)[0]:
                row.rerun = "close"
            else:
                row.rerun, row.passed = "FAIL", False
                row.note = row.note or "wrong when writing into out="
    except Exception as exc:  # one broken op must not hide the rest of the table
        row.passed, row.note = False, f"{type(exc).__name__}: {exc}"[:160]
    return row


# --------------------------------------------------------------------------------------
# Which exposures run here.


def cuda_status() -> tuple[bool, bool, str]:
    """(GPU usable through CuPy, compiled extension importable, why not)."""
    try:
        import engine.cuda as cuda
    except Exception as exc:  # the CUDA glue is optional: no CuPy, no toolkit, not built yet
        return False, False, f"engine.cuda does not import ({type(exc).__name__}: {exc})"
    try:
        if not cuda.is_available():
            return False, False, "engine.cuda.is_available() is False"
        return True, bool(cuda.extension_available()), ""
    except Exception as exc:
        return False, False, f"engine.cuda availability check failed ({type(exc).__name__}: {exc})"


EXPOSURES = ("numba", "cuda-ext", "cuda-rtc")


def exposures_to_run(requested: str) -> tuple[list[str], list[str]]:
    """(exposures to run, messages about those left out)."""
    gpu, ext, why = cuda_status()
    wanted = list(EXPOSURES) if requested == "all" else [requested]
    run, notes = [], []
    for name in wanted:
        if name == "numba":
            run.append(name)
        elif not gpu:
            notes.append(f"no GPU: CUDA exposures not checked ({why})" if requested == "all"
                         else f"{name}: no GPU ({why})")
        elif name == "cuda-ext" and not ext:
            notes.append("cuda-ext: the compiled extension is not built or does not import; not checked")
        else:
            run.append(name)
    return run, list(dict.fromkeys(notes))


# --------------------------------------------------------------------------------------
# The command.

COLUMNS = ("op", "direction", "exposure", "shapes", "shape", "max abs", "max rel", "rerun", "result")
WIDTHS = (30, 15, 8, 22, 38, 9, 9, 7, 6)


def _format_row(values) -> str:
    return "  ".join(str(v)[:w].ljust(w) for v, w in zip(values, WIDTHS)).rstrip()


def _fmt_err(x: float) -> str:
    return "-" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2e}")


def print_row(row: Row, file=None) -> None:
    file = file or sys.stdout  # looked up per call: pytest's capsys swaps it
    print(_format_row((row.op, row.direction, row.exposure, row.shape_set, row.shape, _fmt_err(row.max_abs),
                       _fmt_err(row.max_rel), row.rerun, "pass" if row.passed else "FAIL")), file=file)
    if row.note and not row.passed:
        print(f"    ^ {row.note}", file=file)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m engine validate",
        description="Check every op, forward and backward, through every available exposure "
                    "against the float64 NumPy reference.")
    parser.add_argument("--backend", default="all", choices=("all",) + EXPOSURES,
                        help="which exposure to check (default: every one that runs here)")
    parser.add_argument("--quick", action="store_true",
                        help="odd shapes and LeNet shapes at batch 16 only (seconds, not minutes)")
    parser.add_argument("--json", metavar="PATH", help="also write every row and the summary as JSON")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help="only this op (repeatable); default: every op in engine.ops.OPS")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.op:
        unknown = sorted(set(args.op) - set(OPS))
        if unknown:
            print(f"error: validate: --op: unknown op(s) {unknown}; expected names from engine.ops.OPS "
                  f"(e.g. {sorted(OPS)[0]})", file=sys.stderr)  # the CLI's one-line policy (engine.cli)
            return 2
    exposures, notes = exposures_to_run(args.backend)
    for note in notes:
        print(note)
    if not exposures:
        print(f"error: validate: --backend {args.backend}: nothing to check, it cannot run here", file=sys.stderr)
        return 2

    backends = {}
    for name in exposures:
        try:
            backends[name] = get_backend(name)
        except Exception as exc:
            print(f"validate: backend {name!r} failed to load: {type(exc).__name__}: {exc}")
            return 1
    modules = {name: (np if name == "numba" else _cupy()) for name in backends}

    plan = ([("odd", None), ("lenet", 16)] if args.quick
            else [("lenet", 256), ("alexnet", 8), ("odd", None)])
    todo = [c for shape_set, batch in plan for c in cases(shape_set, batch, args.op)]
    print(f"validate: {len(todo)} cases x {len(backends)} exposure(s) ({', '.join(backends)}); "
          f"shape sets: {', '.join(f'{s}' + (f' batch {b}' if b else '') for s, b in plan)}")
    print(_format_row(COLUMNS))
    print(_format_row(["-" * w for w in WIDTHS]))

    rows, start, compared, differ = [], time.perf_counter(), 0, []
    for case in todo:
        inputs = case.inputs()
        try:
            expected = reference_outputs(case, inputs)
        except Exception as exc:
            row = Row(case.op, case.card.direction, "reference", case.label, case.shape.describe(),
                      math.nan, math.nan, "-", False, f"reference failed: {type(exc).__name__}: {exc}"[:160])
            rows.append(row)
            print_row(row)
            continue
        case_rows = [check_case(case, name, backend, modules[name], inputs, expected)
                     for name, backend in backends.items()]
        agree = exposures_agree(case_rows)
        compared += agree is not None
        differ += [f"{case.op} {case.label}"] if agree is False else []
        for row in case_rows:
            row.outputs = ()  # compared: no need to hold AlexNet-sized outputs any longer
            rows.append(row)
            print_row(row)

    if compared:
        print(f"validate: cuda-ext and cuda-rtc agree bitwise on {compared - len(differ)} of {compared} cases"
              + (": " + ", ".join(differ) + " DIFFER" if differ else ""))
    failed = [r for r in rows if not r.passed]
    seconds = time.perf_counter() - start
    print(f"\nvalidate: {len(rows) - len(failed)} of {len(rows)} rows pass in {seconds:.1f} s"
          + (f"; {len(failed)} FAIL: " + ", ".join(sorted({f'{r.op} ({r.exposure})' for r in failed}))
             if failed else ""))
    for note in notes:
        print(note)
    if args.json:
        write_json(args.json, {"exposures": list(backends), "notes": notes, "quick": args.quick,
                               "passed": not failed, "seconds": seconds, "exposures_compared": compared,
                               "exposures_differ": differ, "rows": [r.as_dict() for r in rows]}, indent=1)
        print(f"validate: rows written to {args.json}")
    return 1 if failed else 0


def _cupy():
    import cupy
    return cupy


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
