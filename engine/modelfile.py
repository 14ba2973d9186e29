"""The model file: one .npz holding everything needed to use a trained model later.

    python -m engine train lenet --save lenet.npz
    python -m engine predict lenet.npz digit.png          # top-k classes and probabilities
    python -m engine export lenet.npz lenet.onnx

    from engine.modelfile import save_model, load_model
    save_model("lenet.npz", ex, "lenet", class_names=ds.class_names, mean=ds.mean, std=ds.std)
    saved = load_model("lenet.npz")
    probabilities = saved.predict(x)                       # x normalised as at training time
    saved.classify(["digit.png"])                          # files: decoded as at training time

A checkpoint (engine.checkpoint, train --checkpoint) is for resuming a run: weights,
optimizer state, loader position, history. A model file is for using a model: weights,
architecture, class names, input shape, normalisation, and nothing about training. Each
command names the other's file when given one.

Layout: an ordinary np.savez archive, read with np.load(allow_pickle=False), so loading a
model file cannot run code:

    "__engine_model__"   uint8 bytes of a UTF-8 JSON document:
        {"kind": "engine-model", "version": 1, "engine_version": "0.1.0",
         "architecture": {"model": "lenet" or "/abs/path/models.py:Name",
                          "num_classes": 10, "in_channels": 1, "options": {"dropout": 0.3}},
         "input_shape": [1, 28, 28], "class_names": ["0", ...], "mean": [...], "std": [...],
         "preprocess": {"resize": 28, "crop": 28}, "weights": ["0.weight", ...]}
    "0.weight", ...      every parameter and buffer, by its torch name (Executor.weights)

so a model file is also a weights file (--weights, Executor.load_weights) that any NumPy
reads. The architecture is what engine.models.build_model was given: a built-in model is
rebuilt from its name and options; a user's model from its FILE.py:NAME (importing that
file runs it, as training did; pass model= to load_model to point elsewhere).

preprocess says how an image file becomes an input: its shorter side resized to `resize`
(bilinear), centre-cropped to `crop` x `crop`, converted to the input's channels (grey or
RGB), scaled to [0, 1], normalised per channel by mean and std.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

KIND, VERSION = "engine-model", 1
ENTRY = "__engine_model__"
CHECKPOINT_ENTRY = "__checkpoint__"

__all__ = ["save_model", "load_model", "SavedModel"]


def save_model(path, ex, architecture=None, class_names=None, mean=None, std=None, preprocess=None) -> None:
    """Write the model of the executor `ex` (its weights as they are now) to `path`.

    architecture: how to rebuild it -- a model spec ("lenet", "FILE.py:NAME", built with the
    executor's class count and input channels), or the dict build_model records on the models
    it builds (model.architecture), which is the default. class_names default to "0", "1",
    ...; mean/std (per channel, of pixels in [0, 1]) to 0 and 1; preprocess ({"resize": int,
    "crop": int}) to resizing the shorter side to the input's height."""
    from engine.version import __version__
    from engine.executor import Executor
    from engine.files import atomic_write, check_output_file
    if not isinstance(ex, Executor):
        raise TypeError(f"save_model: expected the Executor that trained the model, got {type(ex).__name__}")
    path = check_output_file("save_model", path)
    images = len(ex.input_shape) == 3  # (C, H, W); other inputs have no channels to normalise nor files
    channels = ex.input_shape[0] if images else 1
    classes = int(ex.output_shape[0]) if len(ex.output_shape) == 1 else None
    meta = {"kind": KIND, "version": VERSION, "engine_version": __version__,
            "architecture": _architecture(ex, architecture, classes),
            "input_shape": list(ex.input_shape),
            "class_names": _class_names(class_names, classes),
            "mean": _per_channel("mean", 0.0 if mean is None else mean, channels),
            "std": _per_channel("std", 1.0 if std is None else std, channels),
            "preprocess": _preprocess(preprocess, ex.input_shape[1]) if images else None}
    if any(s <= 0 for s in meta["std"]):
        raise ValueError(f"save_model: std must be > 0 in every channel, got {meta['std']}")
    weights = ex.weights()
    meta["weights"] = list(weights)
    _check_rebuilds(meta, weights)  # a file that cannot be loaded is refused now, not at predict time
    arrays = {**weights, ENTRY: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    atomic_write(path, lambda f: np.savez(f, **arrays))  # the old file or the whole new one, never half


def _architecture(ex, given, classes) -> dict:
    if given is None:
        recorded = getattr(ex.model, "architecture", None)
        if recorded is None:
            raise ValueError("save_model: the model does not say how to rebuild it; pass architecture='lenet' "
                             "(a model name or FILE.py:NAME), or build it with engine.models.build_model")
        return json.loads(json.dumps(recorded))
    if isinstance(given, str):
        from engine.models import model_spec
        return {"model": model_spec(given), "num_classes": classes, "in_channels": ex.input_shape[0],
                "options": {}}
    if isinstance(given, dict) and "model" in given:
        return {"num_classes": classes, "in_channels": ex.input_shape[0], "options": {},
                **json.loads(json.dumps(given))}
    raise TypeError(f"save_model: architecture must be a model spec (str) or a dict with 'model', "
                    f"got {type(given).__name__}")


def _class_names(names, classes) -> list:
    if names is None:
        return [str(i) for i in range(classes or 0)]
    names = [str(n) for n in names]
    if classes is not None and len(names) != classes:
        raise ValueError(f"save_model: {len(names)} class names for a model with {classes} outputs")
    return names


def _per_channel(what: str, value, channels: int) -> list:
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, channels)
    if values.size != channels or not np.all(np.isfinite(values)):
        raise ValueError(f"save_model: {what} must be one finite number or {channels} (one per channel), got {value!r}")
    return [float(v) for v in values]


def _preprocess(given, height: int) -> dict:
    recipe = {"resize": height, "crop": height, **(given or {})}
    if set(recipe) != {"resize", "crop"} or not all(isinstance(v, int) and v >= 1 for v in recipe.values()) \
            or recipe["crop"] > recipe["resize"]:
        raise ValueError(f"save_model: preprocess must be {{'resize': int, 'crop': int}} with crop <= resize, "
                         f"got {given!r}")
    return recipe


# --------------------------------------------------------------------------- reading


def read_model_file(path) -> tuple[dict, dict]:
    """(metadata, weights by name) of a model file, checked to be one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: no model file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single .npy array, not an .npz archive")
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"load_model: {path} is not a readable model file (truncated, or not an .npz "
                         f"archive?): {e}") from e
    if CHECKPOINT_ENTRY in arrays:
        raise ValueError(f"load_model: {path} is a training checkpoint (train --checkpoint, for --resume), "
                         f"not a model file; write one with train --save (engine.modelfile.save_model)")
    if ENTRY not in arrays:
        raise ValueError(f"load_model: {path} is an .npz archive but not an engine model file (no {ENTRY!r} "
                         f"entry; if it holds weights, give it to train --weights or Executor.load_weights)")
    try:
        meta = json.loads(arrays.pop(ENTRY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"load_model: {path} is corrupt: its metadata is not JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ValueError(f"load_model: {path} is not an {KIND} file")
    if meta.get("version") != VERSION:
        raise ValueError(f"load_model: {path} has model file version {meta.get('version')!r}; this engine "
                         f"(version {_engine_version()}) reads version {VERSION}")
    missing = [k for k in ("architecture", "input_shape", "class_names", "mean", "std", "preprocess") if k not in meta]
    if missing:
        raise ValueError(f"load_model: {path} is corrupt: its metadata lacks {missing}")
    return meta, arrays


def _engine_version() -> str:
    from engine.version import __version__
    return __version__


def _rebuild(meta: dict, model=None):
    """The model the architecture describes (model: another spec for it, e.g. a moved file)."""
    from engine.models import build_model
    arch = meta["architecture"]
    return build_model(model or arch["model"], arch.get("num_classes"), arch.get("in_channels"),
                       **arch.get("options", {}))


def _check_rebuilds(meta: dict, weights: dict) -> None:
    from engine.executor import Executor
    try:
        rebuilt = Executor(_rebuild(meta), meta["input_shape"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"save_model: the architecture {meta['architecture']} does not rebuild the model: {e}") from e
    shapes = {k: tuple(v.shape) for k, v in rebuilt.weights().items()}
    if shapes != {k: tuple(v.shape) for k, v in weights.items()}:
        raise ValueError(f"save_model: the architecture {meta['architecture']} rebuilds another model than the "
                         f"executor's (other names or shapes); pass the architecture it was built with")


class SavedModel:
    """A model read from a model file: its executor (eval mode, weights loaded) and what
    it was trained with: class_names, input_shape, mean, std, preprocess, architecture."""

    def __init__(self, path, meta: dict, executor):
        self.path, self.meta, self.executor = path, meta, executor
        self.class_names = list(meta["class_names"])
        self.input_shape = tuple(meta["input_shape"])
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
        self.preprocess, self.architecture = meta["preprocess"], dict(meta["architecture"])
        self.engine_version = meta.get("engine_version")

    def __repr__(self):
        return (f"SavedModel({self.path!r}: {self.architecture['model']}, input {self.input_shape}, "
                f"{len(self.class_names)} classes)")

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, classes) for inputs x (N, *input_shape), normalised as at
        training time (load_images does that for image files)."""
        import engine.functional as F
        from engine.training import predict
        return F.softmax(predict(self.executor, x, batch_size), dim=1)

    def load_images(self, paths) -> np.ndarray:
        """Image files -> float32 (N, *input_shape): decoded, resized, cropped and normalised
        as the training images were."""
        from engine.data import _decode
        channels = self.input_shape[0]
        x = np.empty((len(paths), *self.input_shape), np.float32)
        for i, p in enumerate(paths):  # _decode refuses, naming the file, what has no 8-bit meaning
            x[i] = _decode("predict", os.fspath(p), self.preprocess["resize"], self.preprocess["crop"], channels)
        mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in (self.mean, self.std))
        return (x / np.float32(255.0) - mean) / std

    def classify(self, paths, top: int = 5) -> list[dict]:
        """For each image file: {"image": path, "top": [{"class", "index", "probability"}, ...]},
        the `top` most probable classes first."""
        from engine import checks as C
        top = min(C.integer("predict", "top", top, minimum=1), len(self.class_names))
        if self.preprocess is None:
            raise ValueError(f"predict: {self.path} is a model of inputs of shape {self.input_shape}, not images")
        probabilities = self.predict(self.load_images(paths))
        results = []
        for p, row in zip(paths, probabilities):
            best = np.argsort(-row, kind="stable")[:top]
            results.append({"image": os.fspath(p), "top": [
                {"class": self.class_names[i], "index": int(i), "probability": float(row[i])} for i in best]})
        return results


def load_model(path, device: str = "cpu", model: str | None = None) -> SavedModel:
    """The model saved at `path` (save_model, train --save), rebuilt and ready to predict on
    `device`. model: another FILE.py:NAME for a user's model whose file has moved."""
    meta, weights = read_model_file(path)
    from engine.executor import Executor
    try:
        built = _rebuild(meta, model)
        ex = Executor(built, meta["input_shape"], device=device)
    except (ValueError, TypeError) as e:
        raise ValueError(f"load_model: {path} describes the model {meta['architecture']}, which cannot be "
                         f"rebuilt here: {e}") from e
    try:
        ex.load_weights(weights, strict=True)
    except ValueError as e:
        raise ValueError(f"load_model: the weights in {path} do not fit its architecture: {e}") from e
    return SavedModel(os.fspath(path), meta, ex)
