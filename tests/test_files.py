"""engine.files: output paths checked before work, whole files or none, strict JSON."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from engine.files import atomic_write, check_output_dir, check_output_file, strict_json, write_json


def test_output_paths_are_checked_for_kind_and_place(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output_file("--json", tmp_path / "new.json") == str(tmp_path / "new.json")
    assert check_output_file("--json", tmp_path / "file") == str(tmp_path / "file")  # overwriting is fine
    with pytest.raises(IsADirectoryError, match="--json: .* is a directory; expected a file name"):
        check_output_file("--json", tmp_path)
    with pytest.raises(FileNotFoundError, match="--json: the directory .*nodir does not exist"):
        check_output_file("--json", tmp_path / "nodir" / "a.json")
    with pytest.raises(NotADirectoryError, match="--json: .*file is not a directory"):
        check_output_file("--json", tmp_path / "file" / "a.json")
    assert check_output_dir("--plots", tmp_path / "plots") == str(tmp_path / "plots")
    assert not (tmp_path / "plots").exists()  # checked, not made
    with pytest.raises(NotADirectoryError, match="--plots: .*file is a file; expected a directory"):
        check_output_dir("--plots", tmp_path / "file")
    with pytest.raises(ValueError, match="expected a file name, got an empty string"):
        check_output_file("--save", "")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any directory: no unwritable one to test with")
def test_an_unwritable_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="not writable"):
        check_output_file("--json", locked / "a.json")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    assert path.read_bytes() == b"first"

    def half_then_fail(f):
        f.write(b"half of the second")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]  # no temporary file left behind


def test_a_written_file_gets_the_permissions_open_would_give_or_keeps_its_own(tmp_path):
    """mkstemp makes its file 0600; a plot, a model file or a JSON summary must not end up
    unreadable to the group and others when the umask allows it."""
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.bin", lambda f: f.write(b"x"))
        assert os.stat(tmp_path / "new.bin").st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "private.bin", lambda f: f.write(b"x"))
        assert os.stat(tmp_path / "private.bin").st_mode & 0o777 == 0o600
        os.chmod(tmp_path / "new.bin", 0o640)  # a file written again keeps what its owner gave it
        atomic_write(tmp_path / "new.bin", lambda f: f.write(b"y"))
        assert os.stat(tmp_path / "new.bin").st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


def test_json_is_strict_and_says_where_it_was_not_finite(tmp_path):
    doc = {"loss": [0.5, float("nan")], "best": np.float32(np.inf), "arr": np.array([1.0, -np.inf]),
           "n": np.int64(3), "ok": 1.5, "name": "run"}
    nonfinite = write_json(tmp_path / "r.json", doc)
    assert nonfinite == ["$.loss[1]", "$.best", "$.arr[1]"]
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back["loss"] == [0.5, None] and back["best"] is None and back["arr"] == [1.0, None]
    assert back["n"] == 3 and back["ok"] == 1.5 and back["nonfinite"] == nonfinite
    assert strict_json({"a": (1.0, math.nan)}) == {"a": [1.0, None]}
    write_json(tmp_path / "clean.json", {"a": 1.0})
    assert json.loads((tmp_path / "clean.json").read_text()) == {"a": 1.0}  # no flag when all is finite
