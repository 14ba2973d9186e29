"""Weights from elsewhere: PyTorch state dicts, safetensors files and .npz archives, loaded
into an executor by name.

Names are a layer's path in the model and the array's own name, as torch names them:
"features.0.weight", "layer1.0.bn1.running_mean", "11.bias" (Executor.named_parameters).
The engine's models lay their layers out as torchvision does -- AlexNet's features.N and
classifier.N, ResNet-18's conv1, bn1, layer1.0.conv1, layer1.0.downsample.0, fc; LeNet-5 as
the torch Sequential of engine.models.torch_twin -- so a state dict of the torch model
loads name for name, batch-norm running statistics included. num_batches_tracked, which
the engine does not keep, is ignored; a "module." prefix on every name (DataParallel's) is
dropped.

Reading never runs code from the file: torch files with torch.load(weights_only=True)
(tensors and plain containers only), safetensors with the safetensors package (no torch
needed), .npz with np.load(allow_pickle=False). Which one a file is, its first bytes say.

    report = ex.load_weights("resnet18.pth")                 # strict: everything must fit
    report = ex.load_weights("alexnet.pth", strict=False)    # a new head stays initialised
    print(report)                                            # what was loaded and skipped

strict=True refuses a file that does not fit -- missing or unexpected names, other shapes --
in one error naming each, before anything is copied. strict=False loads what fits and
lists in the report what it skipped. A file that cannot be read, or holds arrays that are
not numbers or not finite, is an error either way.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from engine.backend import array_module, is_cuda_array

IGNORED = ("num_batches_tracked",)  # torch's batch-norm step counter: the engine keeps none
CHECKPOINT_ENTRY, MODEL_ENTRY = "__checkpoint__", "__engine_model__"  # the engine's own .npz files
KINDS = "a PyTorch state dict (.pt/.pth), a safetensors file or an .npz archive"


# --------------------------------------------------------------------------- reading files


def read_weights(path) -> dict:
    """name -> NumPy array of every array in a weights file (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights: no file {path}")
    reader = {"torch": _read_torch, "safetensors": _read_safetensors, "npz": _read_npz}[file_format(path)]
    return reader(path)


def file_format(path: str) -> str:
    """"torch", "safetensors" or "npz", from the file's first bytes (an extension can lie)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):  # a zip archive: torch's format since 1.6, and .npz
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"weights: {path} is a damaged zip archive (truncated?): {e}; expected {KINDS}") from e
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        if names and all(name.endswith(".npy") for name in names):
            return "npz"
        raise ValueError(f"weights: {path} is a zip archive but neither a PyTorch file nor an .npz archive "
                         f"(it holds {', '.join(names[:3])}...); expected {KINDS}")
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: an 8-byte header size, then JSON
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle: torch's format before 1.6 (read safely, weights_only)
        return "torch"
    raise ValueError(f"weights: {path} is not a weights file: expected {KINDS}; it starts with "
                     f"bytes {head[:8].hex(' ') or '(none: the file is empty)'}")


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise ValueError(f"weights: {path} is a PyTorch file, and reading it needs PyTorch (pip install torch); "
                         f"or save it as safetensors or .npz where torch is installed") from None
    import pickle
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"weights: {path} holds more than tensors (a whole pickled model?), which is not "
                         f"loaded because unpickling it could run code; save model.state_dict() instead") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        raise ValueError(f"weights: {path} cannot be read as a PyTorch file (truncated or damaged?): "
                         f"{str(e).splitlines()[0]}") from e
    return {name: _host_array(value) for name, value in _state_dict_in(obj, path).items()}


def _state_dict_in(obj, path: str) -> dict:
    """The name -> tensor dict inside what torch.load returned: the state dict itself, or the
    one a training script saved beside other things ({"model": ..., "epoch": ...})."""
    if not isinstance(obj, dict):
        raise ValueError(f"weights: {path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    if obj and all(_is_tensor(v) for v in obj.values()):
        return obj
    inner = [k for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), dict)]
    if inner and all(_is_tensor(v) for v in obj[inner[0]].values()):
        return obj[inner[0]]
    raise ValueError(f"weights: {path} holds a dict with keys {', '.join(map(str, list(obj)[:6]))} but no state "
                     f"dict (a dict of tensors, itself or under 'state_dict' or 'model')")


def _is_tensor(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ValueError(f"weights: {path} is a safetensors file, and reading it needs the safetensors "
                         f"package (pip install safetensors)") from None
    try:
        return load_file(path)
    except TypeError as e:  # a dtype NumPy has not (bfloat16)
        raise ValueError(f"weights: {path} holds a dtype NumPy cannot read ({e}); convert it to float32") from e
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ValueError(f"weights: {path} cannot be read as a safetensors file (truncated or damaged?): {e}") from e


def _read_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"weights: {path} cannot be read as an .npz archive (truncated, or arrays of "
                         f"Python objects?): {e}") from e
    if CHECKPOINT_ENTRY in arrays:
        raise ValueError(f"weights: {path} is a training checkpoint (train --checkpoint; it resumes a run with "
                         f"--resume), not a weights file; give the model file that train --save writes")
    arrays.pop(MODEL_ENTRY, None)  # an engine model file: its arrays are named weights
    return arrays


# --------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What load_weights did: names loaded, and what it skipped (strict=False) or refused."""
    source: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)      # the model's, absent from the source
    unexpected: list = field(default_factory=list)   # the source's, unknown to the model
    mismatched: list = field(default_factory=list)   # (name, shape in the source, shape in the model)
    ignored: list = field(default_factory=list)      # num_batches_tracked

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> list[str]:
        out = []
        if self.mismatched:
            out.append(f"{len(self.mismatched)} of another shape: " + ", ".join(
                f"{name} is {_shape(got)} in the source, {_shape(want)} in the model" for name, got, want
                in self.mismatched))
        if self.missing:
            out.append(f"{len(self.missing)} of the model's not in the source: {_names(self.missing)}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} in the source unknown to the model: {_names(self.unexpected)}")
        return out

    def __str__(self):
        text = f"loaded {len(self.loaded)} arrays from {self.source}"
        if self.ignored:
            text += f" (ignored {len(self.ignored)} num_batches_tracked)"
        return text + "".join(f"; skipped {p}" for p in self.problems())


def _shape(s) -> str:
    return str(tuple(int(d) for d in s))


def _names(names, shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def load_weights(ex, source, strict: bool = True, name: str | None = None) -> LoadReport:
    """Copy parameters and buffers by name into the executor `ex` from `source`: a file path
    (read_weights) or a dict name -> array (NumPy, CuPy, torch tensors or anything DLPack
    exports; `name` says where it came from, for the messages). Returns a LoadReport; see the
    module docstring for strict."""
    if not isinstance(strict, bool):
        raise TypeError(f"load_weights: strict must be True or False, got {type(strict).__name__}")
    if isinstance(source, (str, os.PathLike)):
        name, given = os.fspath(source), read_weights(source)
    elif isinstance(source, dict):
        name, given = name or "the given dict", dict(source)
    else:
        raise TypeError(f"load_weights: expected a file path or a dict of arrays, got {type(source).__name__}")
    if given and all(k.startswith("module.") for k in given):  # saved from torch.nn.DataParallel
        given = {k[len("module."):]: v for k, v in given.items()}
    targets = {**ex.named_parameters(), **ex.named_buffers()}
    report = LoadReport(name, ignored=sorted(k for k in given if k.rsplit(".", 1)[-1] in IGNORED))
    report.unexpected = sorted(k for k in given if k not in targets and k not in report.ignored)
    report.missing = [k for k in targets if k not in given]
    arrays = {}
    for key in (k for k in targets if k in given):
        value = _host_or_device_array(given[key], ex.xp)
        if value.dtype.kind not in "fiu":
            raise ValueError(f"load_weights: {key} in {name} has dtype {value.dtype}; expected numbers")
        if tuple(value.shape) != tuple(targets[key].shape):
            report.mismatched.append((key, value.shape, targets[key].shape))
            continue
        if value.dtype.kind == "f" and not bool(array_module(value).isfinite(value).all()):
            raise ValueError(f"load_weights: {key} in {name} holds NaN or infinite values")
        arrays[key] = value
    if not arrays and targets:
        raise ValueError(f"load_weights: none of the {len(given)} arrays in {name} fits the model"
                         f"{_diagnosis(report, targets)}: " + "; ".join(report.problems()))
    if strict and not report.complete:
        raise ValueError(f"load_weights: {name} does not fit the model{_diagnosis(report, targets)}: "
                         + "; ".join(report.problems())
                         + f" (strict=False, --no-strict on the command line, loads the {len(arrays)} that fit)")
    for key, value in arrays.items():
        ex._copy_in(targets[key], value)
        report.loaded.append(key)
    return report


def _diagnosis(report: LoadReport, targets: dict) -> str:
    """A hint at the usual causes: a state dict of another model, or another class count."""
    if not report.loaded and not any(k in targets for k in report.unexpected) and report.unexpected \
            and len(report.missing) == len(targets):
        return (f" (no name in common: a state dict for another model? the source has "
                f"{_names(report.unexpected, 3)}; the model has {_names(list(targets), 3)})")
    head = list(targets)[-1].rsplit(".", 1)[0]  # the last layer's path: the classifier
    for key, got, want in report.mismatched:
        if key.rsplit(".", 1)[0] == head and len(got) == len(want) and got[1:] == want[1:]:
            return f" (a head for {got[0]} classes; the model has {want[0]})"
    return ""


def _host_array(value) -> np.ndarray:
    """A NumPy view (or copy, where it must convert) of a torch tensor or array-like."""
    if hasattr(value, "detach"):  # torch: a tensor that requires grad is not exported
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()  # NumPy has no bfloat16; the engine computes in float32
        return value.numpy()
    return np.asarray(value)


def _host_or_device_array(value, xp):
    """value as an array the executor can copy from: CuPy and NumPy arrays as they are; a
    GPU tensor onto an executor on the GPU through DLPack (no copy); anything else on the host."""
    if isinstance(value, np.ndarray):
        return value
    if is_cuda_array(value):
        return value if xp is not np else value.get()  # a device array for a CPU executor: its host copy
    if xp is not np and hasattr(value, "__dlpack__") and hasattr(xp, "from_dlpack"):
        try:
            return xp.from_dlpack(value.detach() if hasattr(value, "detach") else value)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass  # a host tensor, or a dtype DLPack does not carry: through the host below
    return _host_array(value)
