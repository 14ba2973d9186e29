"""PNG plots of a training run and of what happens inside a model.

A run: loss/accuracy curves per epoch (plot_history), the loss of every batch with its
rolling mean and spread (plot_batch_loss), the confusion matrix, per-class precision and
recall (plot_per_class), a grid of test images with predicted and true labels
(plot_predictions), cross-validation folds, the learning-rate range test, and several runs
on one figure (plot_runs). Inside: a conv layer's filters (plot_filters), a layer's output
for one image (plot_feature_maps) and what the model predicts for it (plot_prediction).

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot, so
nothing needs a display and the caller's own matplotlib backend is left alone (no global
``matplotlib.use`` switch, no figures leaking into pyplot's registry).
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engine.files import atomic_write

__all__ = ["plot_history", "plot_confusion_matrix", "plot_folds", "plot_lr_find", "plot_batch_loss",
           "rolling_mean_std", "plot_per_class", "plot_predictions", "choose_samples", "plot_filters",
           "plot_feature_maps", "plot_prediction", "plot_runs"]


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
        if required:
            raise ValueError(f"plot_history: history[{key!r}] is empty")
        return None  # fit's History without validation data keeps empty val_ lists
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
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="share of the true class" if normalize else "images")
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


# --------------------------------------------------------------------------- per-batch curves

def _numbers(fn: str, name: str, a, ndims: tuple, shape: str) -> np.ndarray:
    """a as a float64 host array (a CuPy array is fetched) of one of the ranks `ndims`."""
    if type(a).__module__.startswith("cupy"):
        a = a.get()
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: {name} must be numbers, {shape}: {e}") from e
    if a.ndim not in ndims:
        raise ValueError(f"{fn}: {name} must be {shape}, got shape {a.shape}")
    return a


def rolling_mean_std(values, window: int) -> tuple[np.ndarray, np.ndarray]:
    """At each point, the mean and (population) standard deviation of the last `window`
    values -- of fewer at the start, where fewer exist -- leaving out NaN/Inf (a diverged
    batch); NaN where a window holds no finite value."""
    v = _numbers("rolling_mean_std", "values", values, (1,), "a list of numbers")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"rolling_mean_std: window must be an int >= 1, got {window!r}")
    padded = np.concatenate([np.full(int(window) - 1, np.nan), np.where(np.isfinite(v), v, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, int(window))  # (n, window), row i ends at i
    with warnings.catch_warnings():  # an all-NaN window is NaN, said once here rather than warned
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(windows, axis=1), np.nanstd(windows, axis=1)


def plot_batch_loss(batch_loss, path, window: int | None = None, batches_per_epoch: int | None = None) -> str:
    """The training loss of every batch (faint), its rolling mean over `window` batches and a
    band of +- 1 rolling standard deviation around it; epochs marked when batches_per_epoch
    is given. window defaults to a tenth of the batches, at most 50. Returns the path."""
    losses = _numbers("plot_batch_loss", "batch_loss", batch_loss, (1,), "one number per batch")
    if losses.size == 0:
        raise ValueError("plot_batch_loss: batch_loss is empty")
    window = max(1, min(50, losses.size // 10)) if window is None else window
    mean, std = rolling_mean_std(losses, window)
    steps = np.arange(1, losses.size + 1)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss of each batch")
    ax.fill_between(steps, mean - std, mean + std, color="tab:orange", alpha=0.3, linewidth=0,
                    label=f"$\\pm$ 1 std over {window} batches")
    ax.plot(steps, mean, color="tab:orange", linewidth=2, label=f"rolling mean over {window} batches")
    if batches_per_epoch:
        per = int(batches_per_epoch)
        for end in range(per, losses.size, per):
            ax.axvline(end + 0.5, color="grey", linewidth=0.6, linestyle=":")
        top = ax.secondary_xaxis("top", functions=(lambda b: b / per, lambda e: e * per))
        top.set_xlabel("epoch")
    ax.set_xlabel("batch (training step)")
    ax.set_ylabel("training loss")
    ax.set_title("training loss per batch")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return _save(fig, path)


# --------------------------------------------------------------------------- per-class scores, samples

def plot_per_class(cm, class_names, path, title: str = "per-class precision and recall") -> str:
    """Precision and recall of every class as pairs of bars, from a confusion matrix (rows =
    true class); dashed lines at their macro averages over the classes that occur."""
    from engine.metrics import per_class
    cm = np.asarray(cm.get() if type(cm).__module__.startswith("cupy") else cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0 or not np.issubdtype(cm.dtype, np.integer):
        raise ValueError(f"plot_per_class: cm must be a square integer (K, K) matrix of counts, got {cm.dtype} "
                         f"{cm.shape}")
    names = [str(n) for n in class_names]
    if len(names) != cm.shape[0]:
        raise ValueError(f"plot_per_class: cm is {cm.shape[0]} x {cm.shape[0]} but {len(names)} class names were given")
    scores = per_class(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0  # the classes macro averages count (engine.metrics)
    k, width = len(names), 0.4
    x = np.arange(k)
    fig = Figure(figsize=(max(6.0, 0.55 * k + 2.5), 4.5), layout="constrained")
    ax = fig.subplots()
    for offset, key, colour in ((-width / 2, "precision", "tab:blue"), (width / 2, "recall", "tab:orange")):
        macro = float(scores[key][present].mean()) if present.any() else 0.0
        bars = ax.bar(x + offset, scores[key], width, color=colour, label=f"{key} (macro {macro:.3f})")
        ax.axhline(macro, color=colour, linestyle="--", linewidth=1)
        if k <= 20:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    long_names = max(map(len, names)) > 2
    ax.set_xticks(x, labels=names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("class")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2)  # below: the bars reach 1
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def choose_samples(y_true, y_pred, count: int = 24, mistakes: int = 8, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of `count` samples to show: up to `mistakes` wrongly predicted ones,
    the rest right ones, each drawn at random (seed); fewer when fewer exist."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"choose_samples: {y_true.size} true labels but {y_pred.size} predicted ones")
    rng = np.random.default_rng(seed)
    wrong = rng.permutation(np.flatnonzero(y_true != y_pred))
    right = rng.permutation(np.flatnonzero(y_true == y_pred))
    take = min(len(wrong), mistakes, count)
    take += max(0, count - take - len(right))  # too few right ones: more mistakes fill the grid
    return np.sort(np.concatenate([wrong[:take], right[:count - take]])).astype(np.int64)


def _pixels(fn: str, images, mean, std) -> np.ndarray:
    """Normalised images (N, C, H, W), C 1 or 3, back to pixels in [0, 1] for display:
    x * std + mean per channel (the inverse of engine.data's normalisation)."""
    x = _numbers(fn, "images", images, (4,), "(N, C, H, W) images")
    c = x.shape[1]
    if c not in (1, 3):
        raise ValueError(f"{fn}: images must have 1 or 3 channels, got {c}")
    mean = np.broadcast_to(np.asarray(0.0 if mean is None else mean, np.float64), (c,)).reshape(1, c, 1, 1)
    std = np.broadcast_to(np.asarray(1.0 if std is None else std, np.float64), (c,)).reshape(1, c, 1, 1)
    return np.clip(x * std + mean, 0.0, 1.0)


def _show_image(ax, pixels) -> None:
    """One (C, H, W) image in [0, 1] on ax, grey or RGB, without ticks."""
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(pixels.transpose(1, 2, 0))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_predictions(images, y_true, y_pred, class_names, path, mean=None, std=None,
                     title: str = "test images") -> str:
    """A grid of images, each titled with its predicted and true class; a mistake in red,
    framed red. images are normalised (N, C, H, W) as the model saw them; mean/std (per
    channel, of pixels in [0, 1]) undo that for display. Returns the path."""
    fn = "plot_predictions"
    pixels = _pixels(fn, images, mean, std)
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    n, names = len(pixels), [str(c) for c in class_names]
    if n == 0 or y_true.size != n or y_pred.size != n:
        raise ValueError(f"{fn}: need one true and one predicted label per image: {n} images, {y_true.size} true "
                         f"and {y_pred.size} predicted labels")
    if min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= len(names):
        raise ValueError(f"{fn}: labels must be in [0, {len(names)}) to name a class, got "
                         f"{min(y_true.min(), y_pred.min())}..{max(y_true.max(), y_pred.max())}")
    cols = min(n, 8)
    rows = -(-n // cols)
    fig = Figure(figsize=(1.45 * cols, 1.75 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        _show_image(ax, pixels[i])
        wrong = y_pred[i] != y_true[i]
        ax.set_title(f"pred {names[y_pred[i]]}\ntrue {names[y_true[i]]}", fontsize=8,
                     color="red" if wrong else "black")
        for spine in ax.spines.values():
            spine.set_edgecolor("red" if wrong else "lightgrey")
            spine.set_linewidth(3 if wrong else 1)
    fig.suptitle(f"{title}: predicted and true class; {int((y_pred != y_true).sum())} of {n} wrong, in red")
    return _save(fig, path)


# --------------------------------------------------------------------------- inside a model

def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return -(-n // cols), cols


def plot_filters(weights, path, title: str = "conv layer", max_filters: int = 64, max_channels: int = 16) -> str:
    """A conv layer's filters, weights (K, C, R, S), as images. One tile per filter when C is
    1 (grey, one scale for all: black most negative, white most positive) or 3 (colour: each
    channel 0.5 + w / (2 max|w|), so a zero weight is grey); otherwise a filter per row and an
    input channel per column, in grey. At most max_filters filters and max_channels channels
    are drawn; the title says so. Returns the path."""
    w = _numbers("plot_filters", "weights", weights, (4,), "conv weights (K, C, R, S)")
    k, c, r, s = w.shape
    bound = float(np.abs(w).max()) or 1.0
    shown_k = min(k, max_filters if c in (1, 3) else min(max_filters, 16))
    shown_c = c if c in (1, 3) else min(c, max_channels)
    heading = (f"{title}: {k} filters of {c}x{r}x{s}" + (f", first {shown_c} channels" if shown_c < c else "")
               + (f", first {shown_k} filters shown" if shown_k < k else ""))
    if c in (1, 3):
        rows, cols = _grid(shown_k)
        fig = Figure(figsize=(max(1.1 * cols + 1.2, 0.12 * len(heading) + 1.0), 1.1 * rows + 0.7),
                     layout="constrained")  # wide enough for the title
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= shown_k:
                ax.set_axis_off()
                continue
            if c == 3:
                image = ax.imshow(0.5 + w[i].transpose(1, 2, 0) / (2 * bound))
            else:
                image = ax.imshow(w[i, 0], cmap="gray", vmin=-bound, vmax=bound)
            ax.set_title(str(i), fontsize=7)
        fig.supxlabel("filter (numbered row by row)" + ("; RGB, a zero weight is grey" if c == 3 else ""))
        if c == 1:
            fig.colorbar(image, ax=axes, label="weight", shrink=0.7)
    else:
        fig = Figure(figsize=(max(0.8 * shown_c + 1.8, 0.12 * len(heading) + 1.0), 0.8 * shown_k + 0.9),
                     layout="constrained")
        axes = fig.subplots(shown_k, shown_c, squeeze=False)
        for i in range(shown_k):
            for j in range(shown_c):
                ax = axes[i, j]
                image = ax.imshow(w[i, j], cmap="gray", vmin=-bound, vmax=bound)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(str(j), fontsize=7)
                if j == 0:
                    ax.set_ylabel(str(i), fontsize=7, rotation=0, ha="right", va="center")
        fig.supxlabel("input channel")
        fig.supylabel("filter")
        fig.colorbar(image, ax=axes, label="weight", shrink=0.7)
    fig.suptitle(heading)
    return _save(fig, path)


def plot_feature_maps(maps, path, title: str = "feature maps", image=None, max_maps: int = 64) -> str:
    """A layer's output for one input: maps (C, H, W) as a grid of images on one colour scale
    (so a map that stays dark is a filter this input barely excites), at most max_maps of
    them, after the input image when `image` ((C, H, W) pixels in [0, 1]) is given; or a
    layer's (features,) output as a bar per unit. Returns the path."""
    a = _numbers("plot_feature_maps", "maps", maps, (1, 3), "(C, H, W) maps of one input, or (features,)")
    if a.ndim == 1:
        fig = Figure(figsize=(max(6.0, min(16.0, 0.08 * a.size + 3)), 3.5), layout="constrained")
        ax = fig.subplots()
        ax.bar(np.arange(a.size), a, width=0.9, color="tab:blue")
        ax.set_xlabel("unit")
        ax.set_ylabel("activation")
        ax.set_title(f"{title}: {a.size} units")
        ax.grid(True, axis="y", alpha=0.3)
        return _save(fig, path)
    c, h, w = a.shape
    shown = min(c, max_maps)
    extra = image is not None
    rows, cols = _grid(shown + extra)
    low, high = float(np.nanmin(a[:shown])), float(np.nanmax(a[:shown]))
    high = high if high > low else low + 1.0
    fig = Figure(figsize=(1.2 * cols + 1.2, 1.25 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if extra and i == 0:
            _show_image(ax, np.asarray(image, np.float64))
            ax.set_title("input", fontsize=7)
        elif i - extra < shown:
            mapped = ax.imshow(a[i - extra], cmap="viridis", vmin=low, vmax=high)
            ax.set_title(str(i - extra), fontsize=7)
        else:
            ax.set_axis_off()
    fig.colorbar(mapped, ax=axes, label="activation", shrink=0.7)
    fig.supxlabel("channel (numbered row by row), one colour scale")
    fig.suptitle(f"{title}: {c} maps of {h}x{w}" + (f", first {shown} shown" if shown < c else ""))
    return _save(fig, path)


def plot_prediction(image, probabilities, class_names, path, top: int = 10) -> str:
    """One input image (C, H, W pixels in [0, 1]) beside the model's probabilities of its `top`
    most likely classes, the predicted one highlighted. Returns the path."""
    p = _numbers("plot_prediction", "probabilities", probabilities, (1,), "one probability per class")
    names = [str(n) for n in class_names]
    if p.size != len(names):
        raise ValueError(f"plot_prediction: {p.size} probabilities but {len(names)} class names")
    order = np.argsort(-p, kind="stable")[:top]
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.5))
    _show_image(left, np.asarray(image, np.float64))
    left.set_title("input")
    colours = ["tab:red" if i == order[0] else "tab:blue" for i in order]
    bars = right.barh(np.arange(len(order)), p[order], color=colours)
    right.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    right.set_yticks(np.arange(len(order)), labels=[names[i] for i in order])
    right.invert_yaxis()  # the most likely class on top
    right.set_xlim(0, 1.15)  # room for the value of a bar that reaches 1
    right.set_xlabel("probability")
    right.set_ylabel("class")
    right.set_title(f"top {len(order)} of {len(names)} classes")
    fig.suptitle(f"predicted: {names[order[0]]} (probability {p[order[0]]:.3f})")
    return _save(fig, path)


# --------------------------------------------------------------------------- several runs

def plot_runs(histories, labels, path, title: str | None = None, batches_per_epoch=None) -> str:
    """Several runs on one figure, a colour each, labelled: loss and accuracy per epoch
    (validation solid, training dashed), and, when every run kept them, the rolling mean of
    the per-batch training loss against epochs (so runs of other batch sizes line up).
    histories: dicts as fit returns (loss, accuracy, val_loss, val_accuracy, batch_loss);
    batches_per_epoch: one per run (None: batch_loss length / epochs). Returns the path."""
    if not isinstance(histories, (list, tuple)) or not histories:
        raise ValueError("plot_runs: histories must be a non-empty list of run histories")
    if len(labels) != len(histories):
        raise ValueError(f"plot_runs: {len(histories)} runs but {len(labels)} labels")
    series = []
    for i, h in enumerate(histories):
        if not isinstance(h, dict) or not h.get("loss"):
            raise ValueError(f"plot_runs: run {i + 1} ({labels[i]}) has no per-epoch 'loss' list")
        series.append({k: (_numbers("plot_runs", k, h[k], (1,), "a list of numbers") if h.get(k) else None)
                       for k in ("loss", "accuracy", "val_loss", "val_accuracy", "batch_loss")})
    per_batch = all(s["batch_loss"] is not None for s in series)
    fig = Figure(figsize=(15 if per_batch else 10.5, 4.6), layout="constrained")
    axes = fig.subplots(1, 3 if per_batch else 2)
    for i, (s, label) in enumerate(zip(series, labels)):
        colour = f"C{i % 10}"
        for ax, key in zip(axes, ("loss", "accuracy")):
            if s[key] is not None:
                ax.plot(np.arange(1, s[key].size + 1), s[key], color=colour, linestyle="--", alpha=0.7)
            if s["val_" + key] is not None:
                ax.plot(np.arange(1, s["val_" + key].size + 1), s["val_" + key], color=colour, marker="o",
                        markersize=3)
        if per_batch:
            losses = s["batch_loss"]
            per = (batches_per_epoch[i] if batches_per_epoch and batches_per_epoch[i]
                   else max(1, round(losses.size / s["loss"].size)))
            mean, _ = rolling_mean_std(losses, max(1, per // 5))
            axes[2].plot(np.arange(1, losses.size + 1) / per, mean, color=colour, linewidth=1.2)
        axes[0].plot([], [], color=colour, label=label)  # one legend entry per run, in its colour
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(f"{key} per epoch (validation solid, training dashed)", fontsize=10)
        ax.grid(True, alpha=0.3)
    if per_batch:
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("training loss")
        axes[2].set_title("training loss per batch, rolling mean over 1/5 epoch", fontsize=10)
        axes[2].grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"{len(series)} runs")
    return _save(fig, path)
