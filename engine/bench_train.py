"""The training suite of ``python -m engine bench`` (run by engine/bench.py): training
images/s on synthetic data, our executor next to the same model in PyTorch eager (and
torch.compile on a GPU). The step factories are shared with benchmarks/ and the dist suite."""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.measure import images_per_second, torch_or_none
from engine.models import torch_twin

# --------------------------------------------------------------------------------------
# End to end: training images/s on synthetic data.


INPUT_SHAPES = {"lenet": (1, 28, 28), "alexnet": (3, 224, 224)}


def _synthetic(name: str, batch: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + INPUT_SHAPES[name]).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int64)
    return x, y


def torch_train_step(name: str, batch: int, device: str, compile_model: bool = False, classes: int = 10):
    """A zero-argument SGD-with-momentum training step of the PyTorch model on fixed synthetic data."""
    import torch
    model = torch_twin(name, classes).to(device)
    if compile_model:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = (torch.as_tensor(a, device=device) for a in _synthetic(name, batch, classes))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def our_train_step(name: str, batch: int, device: str, classes: int = 10):
    """A zero-argument training step of our executor (SGD with momentum, as the PyTorch one)
    on the same synthetic data, data already on the device; NotImplementedError saying what
    is missing where the executor is not there."""
    try:
        from engine.executor import Executor
        from engine.models import MODELS
        from engine.optim import SGD
    except ImportError as exc:
        raise NotImplementedError(f"the executor is not importable ({exc})") from exc
    build, input_shape = MODELS[name]
    executor = Executor(build(num_classes=classes), input_shape, optimizer=SGD(lr=0.01, momentum=0.9),
                        device=device)
    x, y = _synthetic(name, batch, classes)
    sync = lambda: None  # noqa: E731
    if device == "cuda":
        import cupy
        x, y = cupy.asarray(x), cupy.asarray(y)
        sync = cupy.cuda.Device().synchronize

    def step():
        loss = executor.train_step(x, y)
        sync()
        return loss
    return step


def run_train(device: str, quick: bool = False, log=print) -> list[dict]:
    """Training images/s: ours, PyTorch eager, and torch.compile (GPU only)."""
    torch = torch_or_none()
    plans = [("lenet", 256)] + ([("alexnet", 128)] if device == "cuda" else [])
    seconds = 1.5 if quick else 4.0
    rows = []
    for name, batch in plans:
        contenders: list[tuple[str, Callable]] = [("ours", lambda: our_train_step(name, batch, device))]
        if torch is not None:
            contenders.append(("torch-eager", lambda: torch_train_step(name, batch, device)))
            if device == "cuda" and not quick:  # compiling takes longer than a quick run may
                contenders.append(("torch-compile", lambda: torch_train_step(name, batch, device, True)))
        sync = (lambda: torch.cuda.synchronize()) if device == "cuda" and torch is not None else (lambda: None)
        for label, make in contenders:
            row = {"suite": "train", "model": name, "batch": batch, "device": device, "impl": label}
            try:
                row["images_per_s"] = images_per_second(make(), batch, seconds, sync=sync)
            except Exception as exc:  # ours may not exist yet; torch.compile may lack a compiler
                row["images_per_s"], row["note"] = None, f"not run: {type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            rate = "-" if row["images_per_s"] is None else f"{row['images_per_s']:.0f} images/s"
            log(f"train {name} batch {batch} {device} {label:14} {rate} {row.get('note', '')}")
    return rows
