"""Checkpoints: one .npz file per save, written atomically, read without pickle.

A state is a tree of dicts (string keys), lists and tuples whose leaves are NumPy arrays,
NumPy scalars, ints (any size: PCG64 states are 128-bit), floats (NaN/inf included),
bools, strings and None. That covers weights, optimizer buffers, step counters, the
loader's ``get_state()`` and ``np.random.Generator.bit_generator.state``.

File layout (an ordinary ``np.savez`` archive, readable with ``np.load``):

    "__checkpoint__"   uint8 bytes of a UTF-8 JSON document
                       {"format": "engine-checkpoint", "version": 1, "state": <tree>}
    "a0", "a1", ...    the arrays, in the order they occur in the tree

In the JSON tree an array is ``{"__array__": "a3"}``, a NumPy scalar is
``{"__array__": "a4", "scalar": true}`` and a tuple is ``{"__tuple__": [...]}``; a user dict
may not use those two keys. Loading uses ``allow_pickle=False``, so a checkpoint can never
run code, and object arrays are refused when saving.

Atomicity: engine.files.atomic_write (a temporary file in the destination's directory,
fsynced, then ``os.replace``): a crash at any point before the rename leaves the previous
checkpoint untouched.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from engine.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata"]

FORMAT, VERSION = "engine-checkpoint", 1
_META = "__checkpoint__"
_ARRAY, _TUPLE = "__array__", "__tuple__"


def _encode(value, arrays: dict, where: str):
    """The JSON-able form of value; arrays are moved into `arrays` (name -> ndarray)."""
    if type(value).__module__.startswith("cupy"):  # a device array: store its host copy
        value = value.get()
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"save_checkpoint: {where} is an object array, which cannot be stored "
                            "without pickle; convert it to a numeric or string dtype")
        name = f"a{len(arrays)}"
        arrays[name] = array
        return {_ARRAY: name, "scalar": True} if isinstance(value, np.generic) else {_ARRAY: name}
    if isinstance(value, dict):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"save_checkpoint: {where} has a key {key!r} of type "
                                f"{type(key).__name__}; keys must be strings")
            if key in (_ARRAY, _TUPLE):
                raise ValueError(f"save_checkpoint: {where} uses the reserved key {key!r}")
            encoded[key] = _encode(item, arrays, f"{where}[{key!r}]")
        return encoded
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_checkpoint: {where} is a {type(value).__name__}; a checkpoint holds dicts, "
                    "lists, tuples, NumPy arrays and scalars, int, float, bool, str and None")


def _decode(node, arrays, path: str):
    if isinstance(node, list):
        return [_decode(v, arrays, path) for v in node]
    if not isinstance(node, dict):
        return node
    if _TUPLE in node:
        return tuple(_decode(v, arrays, path) for v in node[_TUPLE])
    if _ARRAY in node:
        name = node[_ARRAY]
        if name not in arrays:
            raise ValueError(f"load_checkpoint: {path} is corrupt: it refers to array {name!r}, "
                             "which the file does not hold")
        array = arrays[name]
        return array[()] if node.get("scalar") else array
    return {key: _decode(v, arrays, path) for key, v in node.items()}


def save_checkpoint(path, state: dict) -> None:
    """Write `state` to `path` (the exact name given; no extension added) atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save_checkpoint: the directory {directory} of {path} does not exist")
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays, "state")  # fails before anything touches the disk
    meta = json.dumps({"format": FORMAT, "version": VERSION, "state": tree})
    arrays[_META] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)

    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path) -> dict:
    """The state dict saved at `path`: arrays come back as NumPy arrays, tuples as tuples."""
    path = os.fspath(path)
    arrays, names = _read(path)
    document = _document(path, arrays.pop(_META, None), names)
    return _decode(document["state"], arrays, path)


def read_metadata(path) -> dict:
    """The state saved at `path` without its arrays (each left as ``{"__array__": name}``):
    its plain entries (the epoch, the world size of the run that wrote it) for the cost of
    reading one small entry of the archive."""
    path = os.fspath(path)
    arrays, names = _read(path, only=_META)
    return _document(path, arrays.get(_META), names)["state"]


def _read(path: str, only: str | None = None) -> tuple[dict, list]:
    """The archive's arrays by name (only the one named `only`, when given), and every name."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with archive:
            names = sorted(archive.files)
            return {name: archive[name] for name in names if only is None or name == only}, names
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"load_checkpoint: {path} is not a readable checkpoint (corrupt or "
                         f"truncated?): {e}") from e


def _document(path: str, meta, names: list) -> dict:
    """The checkpoint's JSON document from its metadata entry (None when it has none)."""
    if meta is None and "__engine_model__" in names:  # engine.modelfile's entry
        raise ValueError(f"load_checkpoint: {path} is an engine model file (train --save: for predict, export "
                         f"and --weights), not a training checkpoint (train --checkpoint, for --resume)")
    if meta is None:
        raise ValueError(f"load_checkpoint: {path} is an .npz archive but not a checkpoint "
                         f"(no {_META!r} entry; it holds {names[:5]})")
    try:
        document = json.loads(meta.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"load_checkpoint: {path} is corrupt: its metadata is not JSON: {e}") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"load_checkpoint: {path} is not an {FORMAT} file")
    if document.get("version") != VERSION:
        raise ValueError(f"load_checkpoint: {path} has format version {document.get('version')!r}; "
                         f"this engine reads version {VERSION}")
    return document
