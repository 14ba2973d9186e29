"""PNG plots of a training run: loss/accuracy curves and a confusion matrix.

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot, so
nothing needs a display and the caller's own matplotlib backend is left alone (no global
``matplotlib.use`` switch, no figures leaking into pyplot's registry).
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.files import atomic_write

__all__ = ["plot_history", "plot_confusion_matrix", "plot_folds", "plot_lr_find"]


def _save(fig: Figure, path) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"plots: the directory {directory} of {path} does not exist")
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))  # never half a PNG
    return path


def _series(history: dict, key: str, required: bool) -> list[float] | None:
    if key not in history or history[key] is None:
        if required:
            raise ValueError(f"plot_history: history needs a {key!r} list (one value per epoch); "
                             f"got keys {sorted(history)}")
        return None
    values = history[key]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise TypeError(f"plot_history: history[{key!r}] must be a list of numbers: {e}") from e
    if not values:
        raise ValueError(f"plot_history: history[{key!r}] is empty")
    return values


def plot_history(history: dict, path) -> str:
    """Loss (left) and accuracy (right) per epoch, train and, when present, validation.

    ``history`` maps "loss", "accuracy" and optionally "val_loss", "val_accuracy" to one
    number per epoch (epochs are numbered from 1). A NaN (a diverged epoch) leaves a gap.
    Returns the path written.
    """
    if not isinstance(history, dict):
        raise TypeError(f"plot_history: history must be a dict of lists, got {type(history).__name__}")
    train = {k: _series(history, k, required=True) for k in ("loss", "accuracy")}
    val = {k: _series(history, "val_" + k, required=False) for k in ("loss", "accuracy")}
    epochs = len(train["loss"])
    for name, values in [*train.items(), *(("val_" + k, v) for k, v in val.items())]:
        if values is not None and len(values) != epochs:
            raise ValueError(f"plot_history: every series needs one value per epoch; 'loss' has "
                             f"{epochs} but {name!r} has {len(values)}")

    fig = Figure(figsize=(10, 4), layout="constrained")
    x = np.arange(1, epochs + 1)
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        ax.plot(x, train[key], marker="o", markersize=3, label="train")
        if val[key] is not None:
            ax.plot(x, val[key], marker="s", markersize=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(True, alpha=0.3)
        ax.legend()
        if epochs <= 20:  # whole-number ticks for short runs
            ax.set_xticks(x)
    return _save(fig, path)


def plot_confusion_matrix(cm, class_names, path, normalize: bool = False) -> str:
    """A K x K heat map, rows = true class, columns = predicted class, counts in the cells.

    With ``normalize`` each row is divided by its total (rows of zeros stay zero), so the
    diagonal reads as per-class recall. Cell labels are drawn when K <= 30. Returns the path.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"plot_confusion_matrix: cm must be a square (K, K) matrix, got shape {cm.shape}")
    if not (np.issubdtype(cm.dtype, np.integer) or np.issubdtype(cm.dtype, np.floating)):
        raise TypeError(f"plot_confusion_matrix: cm must be numeric, got {cm.dtype}")
    names = [str(n) for n in class_names]
    k = cm.shape[0]
    if len(names) != k:
        raise ValueError(f"plot_confusion_matrix: cm is {k} x {k} but {len(names)} class names were given")

    values = cm.astype(np.float64)
    if normalize:
        totals = values.sum(axis=1, keepdims=True)  # (K, 1): samples per true class
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals != 0)

    side = max(4.0, 0.45 * k + 2.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    long_names = max(map(len, names)) > 2  # slant long names so neighbours do not overlap
    ax.set_xticks(np.arange(k), labels=names, rotation=45 if long_names else 0,
                  ha="right" if long_names else "center")
    ax.set_yticks(np.arange(k), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (" (rows normalised)" if normalize else ""))
    if k <= 30:
        top = values.max() if values.size else 0.0
        for t in range(k):
            for p in range(k):
                v = values[t, p]
                text = f"{v:.2f}" if normalize or not float(v).is_integer() else f"{int(v)}"
                ax.text(p, t, text, ha="center", va="center", fontsize=8,
                        color="white" if top > 0 and v > top / 2 else "black")
    return _save(fig, path)


def plot_folds(folds: list, path, metrics=("accuracy", "precision")) -> str:
    """A box plot per metric of its values over the folds of a cross-validation (the folds
    drawn as points over the boxes, the mean as a diamond). folds: a list of dicts with those
    keys, as engine.training.cross_validate returns. Returns the path written."""
    if not folds or not all(isinstance(f, dict) for f in folds):
        raise ValueError("plot_folds: folds must be a non-empty list of dicts, one per fold")
    missing = [m for m in metrics if any(m not in f for f in folds)]
    if missing:
        raise ValueError(f"plot_folds: every fold needs {list(metrics)}; missing {missing}")
    values = [[float(f[m]) for f in folds] for m in metrics]
    fig = Figure(figsize=(2.2 + 1.8 * len(metrics), 4), layout="constrained")
    ax = fig.subplots()
    ax.boxplot(values, tick_labels=[m.replace("precision", "macro precision") for m in metrics], widths=0.5)
    for i, v in enumerate(values, start=1):
        ax.scatter(np.full(len(v), i) + np.linspace(-0.08, 0.08, len(v)), v, s=14, color="tab:blue", zorder=3)
        ax.scatter([i], [np.mean(v)], marker="D", color="tab:red", zorder=4, label="mean" if i == 1 else None)
    ax.set_ylabel("score on the held-out fold")
    ax.set_title(f"{len(folds)}-fold cross-validation")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best")  # clear of the points, wherever the folds fall
    return _save(fig, path)


def plot_lr_find(result: dict, path) -> str:
    """The learning-rate range test: loss (raw, and smoothed) against the learning rate on a
    log scale, the suggested rate marked. result as engine.training.lr_find returns it."""
    lrs, losses, smoothed = (np.asarray(result.get(k, []), dtype=np.float64) for k in ("lr", "loss", "smoothed"))
    if lrs.size < 2 or not (lrs.size == losses.size == smoothed.size):
        raise ValueError("plot_lr_find: result needs lr, loss and smoothed lists of one length >= 2")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(lrs, losses, alpha=0.35, label="loss per batch")
    ax.plot(lrs, smoothed, label="smoothed")
    if result.get("suggested_lr"):
        ax.axvline(result["suggested_lr"], color="tab:red", linestyle="--",
                   label=f"steepest fall: {result['suggested_lr']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.set_ylim(top=min(float(np.nanmax(losses)), 3 * float(np.nanmin(smoothed))))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)
