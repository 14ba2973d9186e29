"""fit / evaluate / predict: the training loop around an Executor.

    ex = Executor(lenet5(), (1, 28, 28), optimizer=Adam(1e-3))
    history = fit(ex, DataLoader(x, y, 64), epochs=15, val=(x_test, y_test))
    report = evaluate(ex, x_test, y_test)

Each epoch: one pass over the loader (learning rate from the schedule at every batch), then
the validation data in eval mode; the history keeps loss and accuracy per epoch for both,
and the loss of every batch (on_batch(step, loss, lr) sees each as it comes).
A checkpoint (weights, optimizer state, loader position, history, epoch) is written
atomically after every epoch when a path is given; ``resume=True`` continues from it and
reproduces the losses of an uninterrupted run exactly on the CPU.

Data parallel (an executor with a communicator, engine.distributed, and a loader with the
matching shard): every rank runs the same loop on its slice of each batch; the loss and
accuracy are summed over the ranks, so every rank sees the global batch's and takes the same
decisions (NaN stop, early stopping). Only rank 0 logs, shows the progress bar, evaluates
the validation data (its result is sent to every rank) and writes checkpoints; a resume
reads the checkpoint on rank 0 and gives its state to every rank.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings

import numpy as np

from engine import checks as C
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.metrics import classification_metrics
from engine.schedules import Constant


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or Inf."""


class History(dict):
    """Lists per epoch: loss, accuracy, val_loss, val_accuracy, lr, seconds; and per batch:
    batch_loss, the loss of every training step in order (a diverged run's last one
    included), for curves finer than an epoch (engine.plots.plot_batch_loss)."""

    KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "batch_loss")

    def __init__(self, data: dict | None = None):
        super().__init__({k: list((data or {}).get(k, [])) for k in self.KEYS})
        self.nonfinite: str | None = None  # where training stopped on a NaN/Inf (on_nonfinite="stop")

    @property
    def epochs(self) -> int:
        return len(self["loss"])


class EarlyStopping:
    """Stop when `monitor` has not improved by min_delta for `patience` epochs; the weights
    of the best epoch are kept when restore_best is set."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True):
        if monitor not in History.KEYS[:4]:
            raise ValueError(f"EarlyStopping: monitor must be one of {History.KEYS[:4]}, got {monitor!r}")
        self.monitor, self.restore_best = monitor, bool(restore_best)
        self.patience = C.integer("EarlyStopping", "patience", patience, minimum=1)
        self.min_delta = C.real("EarlyStopping", "min_delta", min_delta, low=0.0)
        self.sign = -1.0 if "loss" in monitor else 1.0  # losses fall, accuracies rise
        self.best, self.best_epoch, self.best_state = -math.inf, -1, None

    def should_stop(self, history: History, ex) -> bool:
        value = self.sign * history[self.monitor][-1]
        epoch = history.epochs - 1
        if value > self.best + self.min_delta:
            self.best, self.best_epoch = value, epoch
            if self.restore_best:
                self.best_state = ex.state_dict()
            return False
        return epoch - self.best_epoch >= self.patience

    def restore(self, ex) -> None:
        if self.restore_best and self.best_state is not None:
            ex.load_state_dict(self.best_state)


# what a resumed run may change with resume_anyway; the rest of its config must match
RESUME_MAY_CHANGE = ("optimizer", "lr")


def resume_state(checkpoint, config: dict | None = None, anyway: bool = False, log=print) -> dict | None:
    """The state saved at `checkpoint` to resume from, or None when there is no file yet.

    When both the run that wrote it and this one give a config (model, data, batch size,
    schedule, optimizer, lr...), every difference is refused in one error listing them;
    with anyway=True the optimizer and lr may differ: then each change is logged, and a
    change of optimizer kind drops the saved optimizer state (it restarts from zero)."""
    if not os.path.exists(checkpoint):
        return None
    state = load_checkpoint(checkpoint)
    missing = [k for k in ("executor", "loader", "history", "epoch") if k not in state]
    if missing:
        raise ValueError(f"resume: {checkpoint} is a checkpoint but not of a training run (it lacks {missing})")
    saved = state.get("config")
    if config is None or saved is None:
        return state
    config = json.loads(json.dumps(config))  # the form it takes in the file: lists, not tuples
    differ = [k for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    refused = [k for k in differ if not (anyway and k in RESUME_MAY_CHANGE)]
    if refused:
        hint = (" (--resume-anyway allows a change of optimizer or lr)"
                if set(refused) <= set(RESUME_MAY_CHANGE) else "; start a new run or give another --checkpoint")
        raise ValueError(f"resume: {checkpoint} was written by a different run: "
                         + "; ".join(f"{k} was {saved.get(k)!r}, now {config.get(k)!r}" for k in refused) + hint)
    for k in differ:
        log(f"resume anyway: {k} was {saved.get(k)!r}, now {config.get(k)!r}")
    if "optimizer" in differ and (saved["optimizer"] or {}).get("kind") != (config["optimizer"] or {}).get("kind"):
        state["executor"].pop("optimizer", None)
        log("resume anyway: another kind of optimizer: its state (momentum, moments) starts from zero")
    return state


def fit(ex, train, epochs: int, val=None, schedule=None, early_stopping: EarlyStopping | None = None,
        checkpoint: str | None = None, resume: bool = False, on_nonfinite: str = "raise",
        eval_batch_size: int = 500, progress: bool = True, log=print, config: dict | None = None,
        resume_anyway: bool = False, on_batch=None) -> History:
    """Train `ex` on the DataLoader `train` for `epochs` epochs; returns the History.

    val: (x, y) held-out data evaluated after each epoch. schedule: callable
    (base_lr, epoch_progress) -> lr (engine.schedules). on_nonfinite: what a NaN/Inf loss, or
    weights that became NaN/Inf by the end of an epoch, do: "raise" (NonFiniteLoss naming the
    step), "stop" (end training, keep the history; History.nonfinite says where) or "ignore".
    config: what defines this run (JSON-able), stored in the checkpoint; resume refuses a
    checkpoint of another config (see resume_state). on_batch: called after every training step
    as on_batch(step, loss, lr) -- the executor's step count after it, the batch's loss (a
    float) and the learning rate it was taken with -- before a NaN/Inf loss is acted on."""
    if not hasattr(ex, "train_step"):
        raise TypeError(f"fit: the first argument must be an Executor (fit(ex, loader, epochs)), got "
                        f"{type(ex).__name__}")
    epochs = C.integer("fit", "epochs", epochs, minimum=1)
    if on_nonfinite not in ("raise", "stop", "ignore"):
        raise ValueError(f"fit: on_nonfinite must be 'raise', 'stop' or 'ignore', got {on_nonfinite!r}")
    if ex.optimizer is None:
        raise ValueError("fit: the executor has no optimizer")
    if isinstance(train, (tuple, list, np.ndarray)) or not hasattr(train, "__iter__") or not hasattr(train, "__len__"):
        raise TypeError(f"fit: train must be a DataLoader (engine.data.DataLoader(x, y, batch_size)), "
                        f"got {type(train).__name__}")
    if checkpoint and not (hasattr(train, "get_state") and hasattr(train, "set_state")):
        raise TypeError(f"fit: checkpoints need a loader with get_state/set_state (a DataLoader), "
                        f"got {type(train).__name__}")
    if val is not None and not (isinstance(val, (tuple, list)) and len(val) == 2):
        raise TypeError(f"fit: val must be an (x, y) pair of arrays, got {type(val).__name__}"
                        + (" (pass the loader's arrays: val=(x_val, y_val))" if hasattr(val, "get_state") else ""))
    if on_batch is not None and not callable(on_batch):
        raise TypeError(f"fit: on_batch must be a function on_batch(step, loss, lr), got {type(on_batch).__name__}")
    if config is not None:
        config = json.loads(json.dumps(config))  # JSON-able, in the form the checkpoint keeps it
    schedule = schedule or Constant()
    base_lr = ex.optimizer.lr
    comm = getattr(ex, "comm", None)  # data parallel (engine.distributed): None in one process
    root = comm is None or comm.rank == 0
    if not root:
        progress, log = False, lambda line: None
    history, start = History(), 0
    if resume and checkpoint:
        resumed = _resume(ex, train, checkpoint, comm, config, resume_anyway, log)
        if resumed is not None:
            history, start = History(resumed["history"]), int(resumed["epoch"])
            log(f"resumed from {checkpoint} at epoch {start}")
        else:
            log(f"resume: no checkpoint at {checkpoint} yet; a new run starts (and writes it)")

    from tqdm.auto import tqdm
    xp = ex.xp
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        total_loss, seen, correct = 0.0, 0, xp.zeros((), np.int64)
        bar = tqdm(train, total=len(train), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, unit="batch")
        stop = False
        for i, (xb, yb) in enumerate(bar):
            ex.lr = schedule(base_lr, epoch + i / len(train))
            loss = float(ex.train_step(xb, yb, getattr(train, "share", None)))  # the one host read of the step
            rows = len(xb)
            if comm is not None:  # the global batch's mean loss, the same on every rank
                loss_sum, rows = comm.sum([loss * len(xb), len(xb)])
                loss, rows = float(loss_sum / rows), int(rows)
            history["batch_loss"].append(loss)
            if on_batch is not None:
                on_batch(ex.step, loss, ex.lr)
            if not math.isfinite(loss):
                where = f"epoch {epoch + 1}, batch {i + 1} (step {ex.step})"
                if on_nonfinite == "raise":
                    raise NonFiniteLoss(f"fit: loss became {loss} at {where}; lower the learning "
                                        f"rate or pass on_nonfinite='ignore'")
                if on_nonfinite == "stop":
                    warnings.warn(f"fit: loss became {loss} at {where}; stopping")
                    history.nonfinite, stop = where, True
                    break
            if len(xb):
                plan = ex.plan(len(xb), "train")
                correct += (plan.logits.argmax(axis=1) == plan.inputs[1]).sum()
            total_loss += loss * rows
            seen += rows
            bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        if not stop and on_nonfinite != "ignore" and not bool(xp.isfinite(ex.params_flat).all()):
            where = f"epoch {epoch + 1} (step {ex.step})"  # the loss was finite: the last update broke them
            if on_nonfinite == "raise":
                raise NonFiniteLoss(f"fit: the weights became NaN/Inf by the end of {where}; lower the "
                                    f"learning rate or pass on_nonfinite='ignore'")
            warnings.warn(f"fit: the weights became NaN/Inf by the end of {where}; stopping")
            history.nonfinite, stop = where, True
        if stop:
            break
        correct = float(correct) if comm is None else float(comm.sum([float(correct)])[0])
        history["loss"].append(total_loss / max(seen, 1))
        history["accuracy"].append(correct / max(seen, 1))
        history["lr"].append(ex.lr)
        if val is not None:
            report = evaluate(ex, val[0], val[1], batch_size=eval_batch_size, with_metrics=False) if root else None
            if comm is not None:
                report = comm.bcast(report)  # rank 0's evaluation, so that every rank decides alike
            history["val_loss"].append(report["loss"])
            history["val_accuracy"].append(report["accuracy"])
        history["seconds"].append(time.perf_counter() - t0)
        line = f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f} acc {history['accuracy'][-1]:.4f}"
        if val is not None:
            line += f" | val_loss {history['val_loss'][-1]:.4f} val_acc {history['val_accuracy'][-1]:.4f}"
        log(f"{line} | lr {ex.lr:.3g} | {history['seconds'][-1]:.1f}s")
        if checkpoint and root:
            save_checkpoint(checkpoint, {"executor": ex.state_dict(), "loader": train.get_state(),
                                         "history": dict(history), "epoch": epoch + 1, "config": config,
                                         "world_size": 1 if comm is None else comm.size})
        if early_stopping is not None and early_stopping.should_stop(history, ex):
            log(f"early stopping: {early_stopping.monitor} has not improved for "
                f"{early_stopping.patience} epochs")
            early_stopping.restore(ex)
            break
    return history


def _resume(ex, train, checkpoint: str, comm, config, anyway: bool, log) -> dict | None:
    """Load the checkpoint into the executor and the loader (resume_state checks it):
    {"history", "epoch"}, or None when there is none yet. Data parallel: rank 0 reads it
    (the file need only be on its machine) and every rank gets its state; a checkpoint of
    another world size is refused."""
    from engine.distributed import check_resume
    resumed = None
    if comm is None or comm.rank == 0:
        check_resume("fit: resume", checkpoint, 1 if comm is None else comm.size)
        state = resume_state(checkpoint, config, anyway, log)
        if state is not None:
            ex.load_state_dict(state["executor"])
            resumed = {"loader": state["loader"], "history": state["history"], "epoch": state["epoch"]}
    if comm is not None:
        resumed = comm.bcast(resumed)
        comm.broadcast_state(ex)
    if resumed is not None:
        train.set_state(resumed["loader"])
    return resumed


def _batches(n: int, batch_size: int):
    for lo in range(0, n, batch_size):
        yield lo, min(lo + batch_size, n)


def predict(ex, x, batch_size: int = 500) -> np.ndarray:
    """Logits (N, classes) for x in eval mode, on the host."""
    batch_size = C.integer("predict", "batch_size", batch_size, minimum=1)
    out = [_host(ex.predict(np.ascontiguousarray(x[lo:hi], dtype=np.float32)))
           for lo, hi in _batches(len(x), batch_size)]
    return np.concatenate(out)


def evaluate(ex, x, y, batch_size: int = 500, with_metrics: bool = True) -> dict:
    """Mean loss and accuracy of (x, y) in eval mode; with_metrics adds macro precision,
    recall, F1 and the confusion matrix."""
    batch_size = C.integer("evaluate", "batch_size", batch_size, minimum=1)
    if len(x) != len(y):
        raise ValueError(f"evaluate: x has {len(x)} samples but y has {len(y)}")
    total, logits = 0.0, []
    for lo, hi in _batches(len(x), batch_size):
        loss, out = ex.eval_step(np.ascontiguousarray(x[lo:hi], dtype=np.float32), y[lo:hi])
        total += float(loss) * (hi - lo)
        logits.append(_host(out))
    logits = np.concatenate(logits)
    y = np.asarray(y)
    report = {"loss": total / len(x)}
    if ex.loss_name == "cross_entropy":
        pred = logits.argmax(axis=1)
        if with_metrics:
            report.update(classification_metrics(y, pred, logits.shape[1]))
        else:
            report["accuracy"] = float((pred == y).mean())
    return report


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.array(a)


def cross_validate(make_executor, x, y, folds: int, epochs: int, batch_size: int, seed: int = 0,
                   schedule=None, augment=None, progress: bool = False, log=print) -> dict:
    """k-fold cross-validation on (x, y): for each of `folds` stratified folds, a fresh
    executor (make_executor(fold)) trained on the other folds and scored on this one.
    Returns the per-fold scores (accuracy, macro precision, recall, F1) and their mean and
    standard deviation: the spread of a metric over folds, as course projects estimate it."""
    from engine.data import DataLoader, stratified_folds
    parts = stratified_folds(y, folds, seed)
    scores = []
    for k, held in enumerate(parts):
        train_idx = np.sort(np.concatenate([p for j, p in enumerate(parts) if j != k]))
        ex = make_executor(k)
        loader = DataLoader(x[train_idx], y[train_idx], batch_size, seed=seed + k, augment=augment)
        fit(ex, loader, epochs, schedule=schedule, progress=progress, log=lambda line: None)
        report = evaluate(ex, x[held], y[held])
        scores.append({"fold": k + 1, "train": int(train_idx.size), "held": int(held.size),
                       **{m: float(report[m]) for m in ("accuracy", "precision", "recall", "f1")}})
        log(f"fold {k + 1}/{folds}: accuracy {scores[-1]['accuracy']:.4f}, macro precision "
            f"{scores[-1]['precision']:.4f} ({held.size} held out)")
    summary = {m: {"mean": float(np.mean([s[m] for s in scores])), "std": float(np.std([s[m] for s in scores]))}
               for m in ("accuracy", "precision", "recall", "f1")}
    return {"folds": scores, "summary": summary}


def lr_find(ex, loader, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100,
            stop_factor: float = 4.0) -> dict:
    """The learning-rate range test (Smith's, for one-cycle): train with a learning rate rising
    geometrically from min_lr to max_lr, one batch each, until the smoothed loss exceeds
    stop_factor times its lowest; then put the executor back as it was. Returns the learning
    rates, the raw and smoothed losses, and a suggestion: the rate where the smoothed loss
    falls fastest."""
    min_lr = C.real("lr_find", "min_lr", min_lr, low=0.0)
    max_lr = C.real("lr_find", "max_lr", max_lr, low=0.0)
    if not 0 < min_lr < max_lr:
        raise ValueError(f"lr_find: need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    steps = C.integer("lr_find", "steps", steps, minimum=3)
    saved = ex.state_dict()
    lrs, losses, smoothed, average, best = [], [], [], 0.0, math.inf
    batches = iter(())
    for i in range(steps):
        xb_yb = next(batches, None)
        if xb_yb is None:
            batches = iter(loader)
            xb_yb = next(batches)
        ex.lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        loss = float(ex.train_step(*xb_yb))
        if not math.isfinite(loss):
            break
        average = 0.9 * average + 0.1 * loss
        value = average / (1 - 0.9 ** (i + 1))  # bias-corrected moving average
        lrs.append(ex.lr), losses.append(loss), smoothed.append(value)
        best = min(best, value)
        if value > stop_factor * best:
            break
    ex.load_state_dict(saved)
    # the steepest fall of the smoothed loss, past the first tenth of the sweep, where the
    # moving average is still settling and its first steps look like falls
    skip = max(1, len(lrs) // 10)
    suggested = None
    if len(lrs) - skip > 2:
        slopes = np.diff(smoothed[skip:]) / np.diff(np.log(lrs[skip:]))
        suggested = lrs[skip + int(np.argmin(slopes))]
    return {"lr": lrs, "loss": losses, "smoothed": smoothed, "suggested_lr": suggested}
