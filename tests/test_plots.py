"""engine.plots: PNG files are written, hold a real picture, and bad input is refused."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from engine.plots import plot_confusion_matrix, plot_folds, plot_history, plot_lr_find  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    from PIL import Image
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    rgb = pixels.astype(np.int32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert colours.size > 10  # not a blank canvas
    return pixels


def test_plot_history_with_and_without_validation(tmp_path):
    history = {"loss": [2.3, 1.1, 0.6, 0.4], "accuracy": [0.2, 0.6, 0.8, 0.9],
               "val_loss": [2.0, 1.0, 0.7, 0.65], "val_accuracy": [0.3, 0.65, 0.78, 0.85]}
    full = tmp_path / "history.png"
    assert plot_history(history, full) == str(full)
    train_only = tmp_path / "train_only.png"
    plot_history({"loss": history["loss"], "accuracy": history["accuracy"]}, train_only)
    a, b = read_png(full), read_png(train_only)
    assert a.shape != b.shape or not np.array_equal(a, b)  # the validation curves were drawn
    # a diverged epoch (NaN) still plots
    plot_history({"loss": [1.0, float("nan")], "accuracy": [0.5, 0.1]}, tmp_path / "nan.png")
    read_png(tmp_path / "nan.png")


def test_plot_history_errors(tmp_path):
    path = tmp_path / "h.png"
    with pytest.raises(ValueError, match="plot_history: history needs a 'accuracy' list"):
        plot_history({"loss": [1.0]}, path)
    with pytest.raises(ValueError, match="'loss' has 2 but 'val_loss' has 1"):
        plot_history({"loss": [1.0, 0.5], "accuracy": [0.1, 0.2], "val_loss": [1.0]}, path)
    with pytest.raises(ValueError, match=r"history\['loss'\] is empty"):
        plot_history({"loss": [], "accuracy": []}, path)
    with pytest.raises(TypeError, match=r"history\['accuracy'\] must be a list of numbers"):
        plot_history({"loss": [1.0], "accuracy": ["high"]}, path)
    with pytest.raises(TypeError, match="history must be a dict"):
        plot_history([1.0], path)
    with pytest.raises(FileNotFoundError, match="plots: the directory"):
        plot_history({"loss": [1.0], "accuracy": [0.5]}, tmp_path / "missing" / "h.png")
    assert not path.exists()


@pytest.mark.parametrize("normalize", [False, True])
def test_plot_confusion_matrix(tmp_path, normalize):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, (10, 10)) + np.diag(rng.integers(50, 100, 10))
    cm[3] = 0  # a class with no samples must not break normalisation
    path = tmp_path / "cm.png"
    assert plot_confusion_matrix(cm, [str(d) for d in range(10)], path, normalize=normalize) == str(path)
    read_png(path)
    names = ["airplane", "automobile", "bird"]
    plot_confusion_matrix(np.eye(3, dtype=np.int64) * 7, names, tmp_path / "named.png")
    read_png(tmp_path / "named.png")


def test_plot_confusion_matrix_errors(tmp_path):
    path = tmp_path / "cm.png"
    with pytest.raises(ValueError, match=r"square \(K, K\) matrix, got shape \(2, 3\)"):
        plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"], path)
    with pytest.raises(ValueError, match="cm is 2 x 2 but 3 class names"):
        plot_confusion_matrix(np.zeros((2, 2)), ["a", "b", "c"], path)
    with pytest.raises(TypeError, match="cm must be numeric"):
        plot_confusion_matrix(np.array([["a", "b"], ["c", "d"]]), ["a", "b"], path)
    assert not path.exists()


def test_plot_folds_and_its_errors(tmp_path):
    folds = [{"accuracy": a, "precision": a - 0.01} for a in (0.95, 0.97, 0.96, 0.98, 0.94)]
    path = tmp_path / "cv.png"
    assert plot_folds(folds, path) == str(path)
    read_png(path)
    with pytest.raises(ValueError, match="plot_folds: folds must be a non-empty list"):
        plot_folds([], path)
    with pytest.raises(ValueError, match=r"missing \['precision'\]"):
        plot_folds([{"accuracy": 0.9}], path)


def test_plot_lr_find_and_its_errors(tmp_path):
    lrs = list(np.geomspace(1e-5, 1.0, 40))
    loss = [2.3 - 2 / (1 + np.exp(-3 * (np.log10(lr) + 2.5))) + (3.0 if lr > 0.3 else 0) for lr in lrs]
    path = tmp_path / "lr.png"
    assert plot_lr_find({"lr": lrs, "loss": loss, "smoothed": loss, "suggested_lr": 3e-3}, path) == str(path)
    read_png(path)
    with pytest.raises(ValueError, match="plot_lr_find: result needs lr, loss and smoothed"):
        plot_lr_find({"lr": lrs, "loss": loss[:-1], "smoothed": loss}, path)
