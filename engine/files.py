"""The files the engine writes: checked before work starts, written whole or not at all.

* ``check_output_file`` / ``check_output_dir``: an output path is of the right kind and
  writable *now*, so that a run does not end, after its last epoch, on a path it cannot
  write.
* ``atomic_write``: the bytes go to a temporary file in the destination's directory,
  flushed and fsynced, then ``os.replace`` moves it over the destination (atomic on POSIX
  and Windows within one file system): a crash or an error at any point leaves the old
  file (or none) and never half a file.
* ``write_json``: strict JSON (RFC 8259 has no NaN or Infinity): a non-finite float is
  written as null, and the document gets ``"nonfinite": [paths]`` naming where.
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile

__all__ = ["check_output_file", "check_output_dir", "atomic_write", "write_json", "strict_json"]


def _writable_dir(what: str, directory: str) -> None:
    if not os.path.exists(directory):
        raise FileNotFoundError(f"{what}: the directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{what}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}: the directory {directory} is not writable")


def check_output_file(what: str, path) -> str:
    """path as a str, once it is known that a file can be written there: its directory
    exists and is writable, and the path is not a directory. `what` names the option."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what}: expected a file name, got an empty string")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path} is a directory; expected a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"{what}: {path} exists and is not writable")
    _writable_dir(what, os.path.dirname(os.path.abspath(path)))
    return path


def check_output_dir(what: str, path) -> str:
    """path as a str, once it is known that files can be written in it: an existing
    writable directory, or a new one whose parent exists and is writable (not made yet)."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what}: expected a directory, got an empty string")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{what}: {path} is a file; expected a directory")
        _writable_dir(what, path)
    else:
        _writable_dir(what, os.path.dirname(os.path.abspath(path)))
    return path


def atomic_write(path, write) -> None:
    """Call write(f) on a binary file that becomes `path` only once write returned."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"the directory {directory} of {path} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, _mode_for(path))  # mkstemp makes it 0600: give it what open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave a half file behind our back
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)  # make the rename itself durable (POSIX; best effort)


def _mode_for(path: str) -> int:
    """The permissions a file written at path gets: the old file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: directories cannot be opened for fsync
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def strict_json(value, where: str = "$", nonfinite: list | None = None):
    """value with every non-finite float replaced by None (NumPy scalars and arrays become
    Python numbers and lists); the paths of the replaced ones are appended to nonfinite."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy array or scalar
        value = value.tolist()
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if nonfinite is not None:
            nonfinite.append(where)
        return None
    if isinstance(value, dict):
        return {str(k): strict_json(v, f"{where}.{k}", nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, f"{where}[{i}]", nonfinite) for i, v in enumerate(value)]
    return value


def write_json(path, document: dict, indent: int = 2) -> list:
    """Write document as strict JSON, atomically; returns the paths of the non-finite
    values written as null (also recorded in the document as "nonfinite")."""
    nonfinite: list = []
    clean = strict_json(document, "$", nonfinite)
    if nonfinite:
        clean["nonfinite"] = nonfinite
    text = json.dumps(clean, indent=indent, allow_nan=False, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return nonfinite
