"""engine.checkpoint: faithful round trips, atomic replacement, clear errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from engine import checkpoint
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.data import DataLoader

REPO = Path(__file__).resolve().parents[1]


def make_state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model": {"conv1.weight": rng.standard_normal((6, 1, 5, 5)).astype(np.float32),
                  "conv1.bias": np.zeros(6, np.float32),
                  "fc.weight": rng.standard_normal((4, 3)).T,  # non-contiguous float64
                  "empty": np.zeros((0, 3), np.float32)},
        "optimizer": {"name": "adam", "step": 1234, "lr": 1e-3, "betas": (0.9, 0.999),
                      "m": [rng.standard_normal(5).astype(np.float32), np.arange(3, dtype=np.int64)]},
        "mask": rng.random((2, 2)) > 0.5,
        "bytes": np.arange(7, dtype=np.uint8),
        "scalar": np.float32(0.25), "count": np.int64(-3), "zero_d": np.array(2.5),
        "epoch": 3, "huge": 2**100 + 1, "best": float("inf"), "missing": float("nan"),
        "flag": True, "note": "héllo ✓", "nothing": None,
        "rng": rng.bit_generator.state,
        "nested": [{"a": [1, 2, (3, "x")]}, []],
    }


def assert_same(got, expected, where="state"):
    assert type(got) is type(expected), f"{where}: {type(got)} != {type(expected)}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), where
        for k in expected:
            assert_same(got[k], expected[k], f"{where}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, f"{where}[{i}]")
    elif isinstance(expected, (np.ndarray, np.generic)):
        assert got.dtype == expected.dtype and got.shape == expected.shape, where
        np.testing.assert_array_equal(got, expected, err_msg=where)
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(got), where
    else:
        assert got == expected, where


def test_round_trip(tmp_path):
    state = make_state()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, state)
    assert_same(load_checkpoint(path), state)
    assert_same(load_checkpoint(str(path)), state)  # str and Path both work
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as archive:  # a plain npz, nothing pickled
        assert "__checkpoint__" in archive.files


def test_exact_name_and_overwrite(tmp_path):
    path = tmp_path / "run" / "latest"  # no extension added
    path.parent.mkdir()
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2, "w": np.ones(3)})
    assert load_checkpoint(path)["step"] == 2
    assert os.listdir(path.parent) == ["latest"]


def test_rng_and_loader_resume_through_a_checkpoint(tmp_path):
    x, y = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32), np.arange(20)
    gen = np.random.default_rng(42)
    gen.random(5)
    loader = DataLoader(x, y, 6, seed=1)
    batches = iter([b for _ in range(3) for b in loader])  # the run that never stopped...
    replay = DataLoader(x, y, 6, seed=1)
    stream = (b for _ in range(3) for b in replay)
    for _ in range(5):  # ...and one that checkpoints after 5 batches
        next(stream), next(batches)
    save_checkpoint(tmp_path / "c", {"loader": replay.get_state(), "gen": gen.bit_generator.state})
    expected_draws = gen.random(4)

    state = load_checkpoint(tmp_path / "c")
    restored_gen = np.random.default_rng()
    restored_gen.bit_generator.state = state["gen"]
    np.testing.assert_array_equal(restored_gen.random(4), expected_draws)
    resumed = DataLoader(x, y, 6, seed=0)
    resumed.set_state(state["loader"])
    for (_, yb), (_, ye) in zip((b for _ in range(2) for b in resumed), batches):
        np.testing.assert_array_equal(yb, ye)


def half_writer(file, **arrays):
    """Stands in for np.savez: writes part of an archive, then the disk 'fills up'."""
    file.write(b"PK\x03\x04 half an archive")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failure", ["savez", "fsync", "replace"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt.npz"
    old = make_state(seed=1)
    save_checkpoint(path, old)
    if failure == "savez":
        monkeypatch.setattr(checkpoint.np, "savez", half_writer)
    else:
        def boom(*args, **kwargs):
            raise OSError(5, f"{failure} failed")
        monkeypatch.setattr(checkpoint.os, failure, boom)
    with pytest.raises(OSError):
        save_checkpoint(path, make_state(seed=2))
    monkeypatch.undo()
    assert_same(load_checkpoint(path), old)
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the temporary file was removed


def test_process_killed_while_saving_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"step": 1, "w": np.arange(4.0)})
    # a child process dies (no cleanup, no finally) in the middle of writing the archive
    script = textwrap.dedent(f"""
        import os, numpy as np
        from engine import checkpoint
        def dying_savez(file, **arrays):
            file.write(b"PK\\x03\\x04 partial")
            file.flush()
            os._exit(9)
        checkpoint.np.savez = dying_savez
        checkpoint.save_checkpoint({str(path)!r}, {{"step": 2, "w": np.zeros(4)}})
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr.decode()
    state = load_checkpoint(path)
    assert state["step"] == 1
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    leftovers = [p for p in os.listdir(tmp_path) if p != "ckpt.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt.npz.")  # the dead write, aside


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_checkpoint: no checkpoint file at .*nope"):
        load_checkpoint(tmp_path / "nope")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ValueError, match="load_checkpoint: .*garbage is not a readable checkpoint"):
        load_checkpoint(garbage)
    good = tmp_path / "good"
    save_checkpoint(good, make_state())
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated is not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, w=np.ones(2))
    with pytest.raises(ValueError, match="not a checkpoint .*no '__checkpoint__' entry"):
        load_checkpoint(foreign)
    single = tmp_path / "single.npy"
    np.save(single, np.ones(2))
    with pytest.raises(ValueError, match="single .npy array"):
        load_checkpoint(single)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __checkpoint__=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz is not a readable checkpoint"):
        load_checkpoint(pickled)


def test_bad_state(tmp_path):
    path = tmp_path / "c"
    with pytest.raises(TypeError, match="save_checkpoint: state must be a dict, got list"):
        save_checkpoint(path, [1])
    with pytest.raises(TypeError, match=r"state\['x'\] is an object array"):
        save_checkpoint(path, {"x": np.array([{}, 1], dtype=object)})
    with pytest.raises(TypeError, match=r"state\['m'\] has a key 3 of type int"):
        save_checkpoint(path, {"m": {3: np.ones(1)}})
    with pytest.raises(TypeError, match=r"state\['s'\]\[1\] is a set"):
        save_checkpoint(path, {"s": [1, {2}]})
    with pytest.raises(ValueError, match="reserved key '__array__'"):
        save_checkpoint(path, {"__array__": "a0"})
    with pytest.raises(FileNotFoundError, match="save_checkpoint: the directory"):
        save_checkpoint(tmp_path / "no" / "dir" / "c", {})
    assert not path.exists()  # nothing was written by any of the rejected saves
