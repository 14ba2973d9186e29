"""The training suite of ``python -m engine bench`` (run by engine/bench.py): training
images/s on synthetic data, our executor next to the same model in PyTorch eager (and
torch.compile on a GPU). The step factories are shared with benchmarks/ and the dist suite."""
from __future__ import annotations

import statistics
from typing import Callable

import numpy as np

from engine.measure import blas_kernels, cpu_sgemm_gflops, images_per_second, step_flops, step_profile, torch_or_none
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


def our_train_step(name: str, batch: int, device: str, classes: int = 10, with_executor: bool = False):
    """A zero-argument training step of our executor (SGD with momentum, as the PyTorch one)
    on the same synthetic data, data already on the device (and the executor, with_executor);
    NotImplementedError saying what is missing where the executor is not there."""
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
    return (step, executor) if with_executor else step


CPU_PLANS = [("lenet", 64), ("lenet", 256), ("alexnet", 16)]
GPU_PLANS = [("lenet", 256), ("alexnet", 128)]


def run_train(device: str, quick: bool = False, log=print) -> list[dict]:
    """Training images/s: ours, PyTorch eager, and torch.compile (GPU only)."""
    if device == "cpu":
        return run_train_cpu(quick, log)
    torch = torch_or_none()
    seconds = 1.5 if quick else 4.0
    rows = []
    for name, batch in GPU_PLANS:
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


def run_train_cpu(quick: bool = False, log=print) -> list[dict]:
    """On the CPU (2 shared cores): ours and PyTorch eager alternate, each repeat a run of
    steps (>= 0.5 s, 0.25 s quick) of one then of the other, which goes first flipping every
    repeat; we quote the median images/s of each and the median of the per-repeat ratios
    ours/PyTorch (the speedup: above 1, ours is faster). The rate against the machine's SGEMM
    ceiling (measured in the same run: the better of NumPy's BLAS and PyTorch's) is the
    step's GEMM FLOPs (engine.measure.step_flops) over its time. Then where our LeNet
    batch-256 step's time goes, node by node."""
    torch = torch_or_none()
    ceiling = cpu_sgemm_gflops()
    log(f"train: CPU SGEMM ceiling at {ceiling['sgemm_n']}^3 (best of 5): NumPy {ceiling['numpy_sgemm_GFLOPs']:.1f} "
        f"GFLOP/s" + (f", PyTorch {ceiling['torch_sgemm_GFLOPs']:.1f} GFLOP/s" if "torch_sgemm_GFLOPs" in ceiling else "")
        + f"; BLAS kernels: {blas_kernels()}")
    rows = [{"suite": "train", "device": "cpu", "ceiling": ceiling}]
    repeats, seconds = (3, 0.25) if quick else (7, 0.5)
    for name, batch in CPU_PLANS[:2] if quick else CPU_PLANS:
        ours, executor = our_train_step(name, batch, "cpu", with_executor=True)
        theirs = torch_train_step(name, batch, "cpu") if torch is not None else None
        rates, ratios = {"ours": [], "torch-eager": []}, []
        for r in range(repeats):
            pair = [("ours", ours), ("torch-eager", theirs)]
            for label, step in (pair if r % 2 == 0 else pair[::-1]):
                if step is not None:
                    rates[label].append(images_per_second(step, batch, seconds, warmup=3 if r == 0 else 1))
            if theirs is not None:
                ratios.append(rates["ours"][-1] / rates["torch-eager"][-1])
        gflop = step_flops(executor, batch) / 1e9
        for label, measured in rates.items():
            if not measured:
                continue
            ips = statistics.median(measured)
            row = {"suite": "train", "model": name, "batch": batch, "device": "cpu", "impl": label,
                   "images_per_s": ips, "repeats": repeats, "step_gflop": gflop,
                   "gflops": gflop * ips / batch,
                   "of_sgemm_ceiling": gflop * ips / batch / ceiling["best_GFLOPs"]}
            if label == "ours" and ratios:
                row["speedup_vs_torch"] = statistics.median(ratios)
            rows.append(row)
            speedup = f"  x{row['speedup_vs_torch']:.2f} vs PyTorch (median of {repeats} ratios)" \
                if "speedup_vs_torch" in row else ""
            log(f"train {name} batch {batch} cpu {label:14} {ips:7.0f} images/s  {row['gflops']:5.1f} GFLOP/s "
                f"= {100 * row['of_sgemm_ceiling']:3.0f}% of the SGEMM ceiling{speedup}")
        if (name, batch) == ("lenet", 256):
            x, y = _synthetic(name, batch, 10)
            profile = step_profile(executor, x, y, steps=10 if quick else 30)
            rows.append({"suite": "train", "model": name, "batch": batch, "device": "cpu", "profile": profile})
            log(f"train {name} batch {batch} cpu: where a step's time goes (median ms per node, "
                f"sum {sum(p['ms'] for p in profile):.2f} ms)")
            for p in profile:
                log(f"    {p['pass']:8} {p['node']:28} {p['ms']:7.3f}")
    return rows
