"""`python -m engine validate` (engine.validate.main): passes on the Numba backend, and
fails -- with the broken op named in the table -- when an op is off by 1e-2 or when it
accumulates into the caller's out= buffer instead of overwriting it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine import cards, validate
from engine.backend import get_backend
from engine.ops import OPS, cases


def test_every_shape_set_covers_every_op_with_a_shape_of_its_kind():
    for shape_set in cards.SHAPE_SETS:
        covered = {c.op for c in cases(shape_set, batch=2 if shape_set != "odd" else None)}
        assert covered == set(OPS), f"{shape_set} leaves out {set(OPS) - covered}"


def test_cases_draw_the_same_inputs_every_time_and_different_ones_per_shape():
    first, second = cases("odd", ops=["conv2d_forward"])[:2]
    again = cases("odd", ops=["conv2d_forward"])[0]
    assert all(np.array_equal(a, b) for a, b in zip(first.inputs()[:3], again.inputs()[:3]))
    assert first.seed != second.seed


def test_lenet_shapes_are_lenet5():
    shapes = {s.name: s for s in cards.lenet_shapes(256)}
    assert shapes["conv1"].y == (256, 6, 28, 28)   # 5x5 pad 2 keeps 28x28
    assert shapes["conv2"].y == (256, 16, 10, 10)
    assert shapes["pool2"].y == (256, 16, 5, 5)    # 16*5*5 = 400 = fc1's input
    assert shapes["fc1"].i == 16 * 5 * 5


def test_alexnet_shapes_chain():
    shapes = {s.name: s for s in cards.alexnet_shapes(2)}
    assert shapes["conv1"].y == (2, 64, 55, 55)
    assert shapes["pool1"].y == shapes["conv2"].x == (2, 64, 27, 27)
    assert shapes["pool2"].y == shapes["conv3"].x == (2, 192, 13, 13)
    assert shapes["pool5"].x == shapes["conv5"].y
    assert shapes["pool5"].y == (2, 256, 6, 6)
    assert shapes["fc6"].i == 256 * 6 * 6


def test_quick_validate_passes_on_numba_and_prints_the_table(capsys, tmp_path):
    report = tmp_path / "validate.json"
    assert validate.main(["--backend", "numba", "--quick", "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "max abs" in text and "max rel" in text
    for op in OPS:  # every op has a row
        assert f"\n{op} " in text, f"no row for {op}"
    assert "FAIL" not in text
    rows = json.loads(report.read_text())["rows"]
    assert {r["op"] for r in rows} == set(OPS) and all(r["passed"] for r in rows)
    assert {r["exposure"] for r in rows} == {"numba"}


def test_says_when_cuda_is_not_checked(capsys):
    gpu, _, _ = validate.cuda_status()
    if gpu:
        pytest.skip("a GPU is present here: the CUDA exposures are checked")
    assert validate.main(["--quick", "--op", "relu_forward"]) == 0
    assert "no GPU: CUDA exposures not checked" in capsys.readouterr().out


def test_an_op_off_by_1e_2_fails(monkeypatch, capsys):
    numba = get_backend("numba")
    good = numba.relu_forward

    def off_by_a_little(x, out=None):
        y = good(x, out=out)
        y += np.float32(1e-2)
        return y

    monkeypatch.setattr(numba, "relu_forward", off_by_a_little)
    code = validate.main(["--backend", "numba", "--quick", "--op", "relu_forward", "--op", "tanh_forward"])
    text = capsys.readouterr().out
    assert code != 0
    relu_rows = [line for line in text.splitlines() if line.startswith("relu_forward ")]
    tanh_rows = [line for line in text.splitlines() if line.startswith("tanh_forward ")]
    assert relu_rows and all(line.rstrip().endswith("FAIL") for line in relu_rows)
    assert tanh_rows and all(line.rstrip().endswith("pass") for line in tanh_rows)


def test_an_op_that_accumulates_into_out_fails(monkeypatch, capsys):
    # right when it allocates, wrong when the executor hands it last step's buffer
    numba = get_backend("numba")
    good = numba.bias_backward

    def accumulates(dy, out=None):
        db = good(dy)
        if out is None:
            return db
        out += db
        return out

    monkeypatch.setattr(numba, "bias_backward", accumulates)
    code = validate.main(["--backend", "numba", "--quick", "--op", "bias_backward"])
    text = capsys.readouterr().out
    assert code != 0
    assert "wrong when writing into out=" in text


def test_an_op_that_raises_is_a_failing_row_not_a_crash(monkeypatch, capsys):
    numba = get_backend("numba")

    def broken(*args, **kwargs):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(numba, "sigmoid_forward", broken)
    assert validate.main(["--backend", "numba", "--quick", "--op", "sigmoid_forward"]) != 0
    assert "RuntimeError: kernel launch failed" in capsys.readouterr().out


def test_unknown_op_is_rejected(capsys):
    assert validate.main(["--backend", "numba", "--op", "conv3d_forward"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: validate: --op: unknown op(s) ['conv3d_forward']; expected names from "
                          "engine.ops.OPS") and err.count("\n") == 1
