"""engine.plots: PNG files are written, hold a real picture of what was asked, and bad input is refused."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from engine import plots  # noqa: E402
from engine.plots import (choose_samples, plot_batch_loss, plot_confusion_matrix, plot_feature_maps,  # noqa: E402
                          plot_filters, plot_folds, plot_history, plot_lr_find, plot_per_class, plot_prediction,
                          plot_predictions, plot_runs, rolling_mean_std)

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
    # fit's History without validation data has empty val_ lists: the same picture as none
    plot_history({**history, "val_loss": [], "val_accuracy": []}, tmp_path / "empty_val.png")
    assert np.array_equal(read_png(tmp_path / "empty_val.png"), b)
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


# --------------------------------------------------------------------------- seeing inside, runs side by side
# Each picture is drawn through the public function; the figure it saves is caught on its
# way to the file (figures fixture), so what was drawn is checked against hand computations.


@pytest.fixture
def figures(monkeypatch):
    drawn = []
    save = plots._save

    def keep(fig, path):
        drawn.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def test_rolling_mean_and_std_by_hand():
    values = [4.0, 2.0, float("nan"), 6.0, 1.0, 3.0]
    mean, std = rolling_mean_std(values, 3)
    windows = [[4], [4, 2], [4, 2], [2, 6], [6, 1], [6, 1, 3]]  # NaN left out, fewer at the start
    assert np.allclose(mean, [np.mean(w) for w in windows], rtol=0, atol=1e-12)
    assert np.allclose(std, [np.std(w) for w in windows], rtol=0, atol=1e-12)
    mean, _ = rolling_mean_std([float("inf"), 1.0], 1)
    assert np.isnan(mean[0]) and mean[1] == 1.0
    with pytest.raises(ValueError, match="rolling_mean_std: window must be an int >= 1, got 0"):
        rolling_mean_std(values, 0)


def test_plot_batch_loss_draws_the_losses_their_rolling_mean_and_band(tmp_path, figures):
    rng = np.random.default_rng(0)
    losses = list(2.3 * np.exp(-np.arange(60) / 20) + rng.uniform(0, 0.3, 60))
    path = tmp_path / "batch.png"
    assert plot_batch_loss(losses, path, window=10, batches_per_epoch=20) == str(path)
    read_png(path)
    ax = figures[-1].axes[0]
    raw, mean = ax.lines[0], ax.lines[1]
    assert np.array_equal(raw.get_xdata(), np.arange(1, 61)) and np.allclose(raw.get_ydata(), losses)
    assert np.allclose(mean.get_ydata()[9:], [np.mean(losses[i - 9:i + 1]) for i in range(9, 60)])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # the +- 1 std polygon
    assert math.isclose(band.max(), max(m + s for m, s in zip(*rolling_mean_std(losses, 10))), rel_tol=1e-9)
    assert ax.get_xlabel() == "batch (training step)" and ax.get_ylabel() == "training loss"
    assert [line.get_xdata()[0] for line in ax.lines[2:]] == [20.5, 40.5]  # epoch ends
    with pytest.raises(ValueError, match="plot_batch_loss: batch_loss is empty"):
        plot_batch_loss([], path)
    with pytest.raises(ValueError, match=r"batch_loss must be one number per batch, got shape \(2, 2\)"):
        plot_batch_loss([[1, 2], [3, 4]], path)


def test_plot_per_class_bars_are_precision_and_recall(tmp_path, figures):
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])  # rows: true class
    plot_per_class(cm, ["cat", "dog", "eel"], tmp_path / "pc.png")
    read_png(tmp_path / "pc.png")
    ax = figures[-1].axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert np.allclose(heights[:3], [5 / 7, 3 / 4, 4 / 5])  # precision: of the predictions of each class
    assert np.allclose(heights[3:], [5 / 6, 3 / 6, 4 / 4])  # recall: of the members of each class
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "eel"]
    assert ax.get_xlabel() == "class" and ax.get_ylabel() == "score"
    assert "macro 0.755" in ax.get_legend().get_texts()[0].get_text()  # (5/7 + 3/4 + 4/5) / 3
    with pytest.raises(ValueError, match=r"plot_per_class: cm must be a square integer \(K, K\) matrix"):
        plot_per_class(np.zeros((2, 3), np.int64), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="cm is 3 x 3 but 2 class names"):
        plot_per_class(cm, ["a", "b"], tmp_path / "x.png")


def test_choose_samples_takes_some_mistakes_and_fills_with_right_ones():
    y = np.arange(40) % 10
    pred = y.copy()
    pred[[3, 7, 11, 30]] += 1  # four mistakes, 36 right
    chosen = choose_samples(y, pred, count=10, mistakes=2, seed=1)
    assert len(chosen) == 10 and np.all(np.diff(chosen) > 0)
    assert (pred[chosen] != y[chosen]).sum() == 2
    assert np.array_equal(chosen, choose_samples(y, pred, count=10, mistakes=2, seed=1))
    filled = choose_samples(y, pred, count=38, mistakes=0)  # 36 right ones cannot fill 38 places
    assert (pred[filled] != y[filled]).sum() == 2
    assert len(choose_samples(y[:5], pred[:5], count=24)) == 5


def test_plot_predictions_titles_each_image_and_marks_mistakes(tmp_path, figures):
    rng = np.random.default_rng(1)
    mean, std = 0.2, 0.3
    x = ((rng.uniform(0, 1, (5, 1, 6, 6)) - mean) / std).astype(np.float32)
    y_true, y_pred = np.array([0, 1, 2, 1, 0]), np.array([0, 2, 2, 1, 1])
    plot_predictions(x, y_true, y_pred, ["zero", "one", "two"], tmp_path / "p.png", mean=[mean], std=[std])
    read_png(tmp_path / "p.png")
    fig = figures[-1]
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == 5
    assert tiles[1].get_title() == "pred two\ntrue one" and tiles[1].title.get_color() == "red"
    assert tiles[0].get_title() == "pred zero\ntrue zero" and tiles[0].title.get_color() == "black"
    assert [t.title.get_color() == "red" for t in tiles] == list(y_true != y_pred)
    assert np.allclose(tiles[2].images[0].get_array(), np.clip(x[2, 0] * std + mean, 0, 1), atol=1e-6)
    assert "2 of 5 wrong" in fig.get_suptitle()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        plot_predictions(x, y_true, y_pred + 1, ["zero", "one", "two"], tmp_path / "p.png")
    with pytest.raises(ValueError, match="5 images, 4 true and 5 predicted labels"):
        plot_predictions(x, y_true[:4], y_pred, ["zero", "one", "two"], tmp_path / "p.png")
    with pytest.raises(ValueError, match="images must have 1 or 3 channels, got 2"):
        plot_predictions(np.zeros((1, 2, 4, 4)), [0], [0], ["a"], tmp_path / "p.png")


def test_plot_filters_shows_each_filter_on_one_scale(tmp_path, figures):
    rng = np.random.default_rng(2)
    grey = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    plot_filters(grey, tmp_path / "f1.png", title="conv1")
    read_png(tmp_path / "f1.png")
    tiles = [ax for ax in figures[-1].axes if ax.images]
    assert len(tiles) == 6 and figures[-1].get_suptitle() == "conv1: 6 filters of 1x5x5"
    bound = np.abs(grey).max()
    for i, ax in enumerate(tiles):
        assert np.allclose(ax.images[0].get_array(), grey[i, 0]) and ax.images[0].get_clim() == (-bound, bound)
    colour = rng.standard_normal((4, 3, 3, 3))
    plot_filters(colour, tmp_path / "f3.png")
    tiles = [ax for ax in figures[-1].axes if ax.images]
    assert np.allclose(tiles[2].images[0].get_array(), 0.5 + colour[2].transpose(1, 2, 0) / (2 * np.abs(colour).max()))
    deep = rng.standard_normal((20, 6, 3, 3))  # a filter per row, a channel per column, at most 16 rows
    plot_filters(deep, tmp_path / "f6.png")
    read_png(tmp_path / "f6.png")
    tiles = [ax for ax in figures[-1].axes if ax.images]
    assert len(tiles) == 16 * 6 and np.allclose(tiles[6 * 3 + 4].images[0].get_array(), deep[3, 4])
    assert figures[-1].get_suptitle().endswith("first 16 filters shown")
    with pytest.raises(ValueError, match=r"plot_filters: weights must be conv weights \(K, C, R, S\), got shape"):
        plot_filters(np.zeros((3, 3, 3)), tmp_path / "f.png")


def test_plot_feature_maps_and_a_layer_of_units(tmp_path, figures):
    rng = np.random.default_rng(3)
    maps = rng.standard_normal((5, 7, 7))
    image = rng.uniform(0, 1, (1, 14, 14))
    plot_feature_maps(maps, tmp_path / "m.png", title="conv1 output", image=image)
    read_png(tmp_path / "m.png")
    tiles = [ax for ax in figures[-1].axes if ax.images]
    assert tiles[0].get_title() == "input" and np.allclose(tiles[0].images[0].get_array(), image[0])
    for c in range(5):  # one colour scale for every map
        assert np.allclose(tiles[c + 1].images[0].get_array(), maps[c])
        assert tiles[c + 1].images[0].get_clim() == (maps.min(), maps.max())
    assert figures[-1].get_suptitle() == "conv1 output: 5 maps of 7x7"
    units = rng.standard_normal(12)
    plot_feature_maps(units, tmp_path / "u.png", title="fc1 output")
    ax = figures[-1].axes[0]
    assert np.allclose([p.get_height() for p in ax.patches], units) and ax.get_xlabel() == "unit"
    with pytest.raises(ValueError, match=r"plot_feature_maps: maps must be \(C, H, W\) maps of one input"):
        plot_feature_maps(np.zeros((2, 3, 4, 4)), tmp_path / "m.png")


def test_plot_prediction_ranks_the_classes(tmp_path, figures):
    p = np.array([0.1, 0.6, 0.05, 0.25])
    plot_prediction(np.zeros((3, 8, 8)), p, ["a", "b", "c", "d"], tmp_path / "pred.png", top=3)
    read_png(tmp_path / "pred.png")
    bars = figures[-1].axes[1]
    assert np.allclose([r.get_width() for r in bars.patches], [0.6, 0.25, 0.1])
    assert [t.get_text() for t in bars.get_yticklabels()] == ["b", "d", "a"]
    assert figures[-1].get_suptitle() == "predicted: b (probability 0.600)"
    with pytest.raises(ValueError, match="plot_prediction: 4 probabilities but 3 class names"):
        plot_prediction(np.zeros((1, 8, 8)), p, ["a", "b", "c"], tmp_path / "pred.png")


def test_plot_runs_draws_every_run_in_its_colour(tmp_path, figures):
    a = {"loss": [2.0, 1.0, 0.5], "accuracy": [0.3, 0.6, 0.8], "val_loss": [1.5, 1.1, 0.9],
         "val_accuracy": [0.4, 0.6, 0.7], "batch_loss": list(np.linspace(2.3, 0.4, 30))}
    b = {"loss": [2.1, 1.5], "accuracy": [0.2, 0.4], "val_loss": [], "val_accuracy": [],
         "batch_loss": list(np.linspace(2.3, 1.0, 10))}
    plot_runs([a, b], ["lr=0.1", "lr=0.01"], tmp_path / "runs.png", title="2 runs, differing in lr")
    read_png(tmp_path / "runs.png")
    fig = figures[-1]
    loss_ax, acc_ax, batch_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["lr=0.1", "lr=0.01"]
    solid = [line for line in loss_ax.lines if line.get_linestyle() == "-" and len(line.get_xdata())]
    assert len(solid) == 1 and np.allclose(solid[0].get_ydata(), a["val_loss"])  # b has no validation
    assert solid[0].get_color() == "C0"
    dashed = [line for line in acc_ax.lines if line.get_linestyle() == "--"]
    assert np.allclose(dashed[1].get_ydata(), b["accuracy"]) and dashed[1].get_color() == "C1"
    assert np.allclose(batch_ax.lines[0].get_xdata(), np.arange(1, 31) / 10)  # 30 batches, 3 epochs
    assert np.allclose(batch_ax.lines[1].get_xdata(), np.arange(1, 11) / 5)   # 10 batches, 2 epochs
    assert fig.get_suptitle() == "2 runs, differing in lr"
    plot_runs([{k: v for k, v in a.items() if k != "batch_loss"}, b], ["a", "b"], tmp_path / "two.png")
    assert len(figures[-1].axes) == 2  # not every run kept its batches: no third panel
    with pytest.raises(ValueError, match="plot_runs: 2 runs but 1 labels"):
        plot_runs([a, b], ["a"], tmp_path / "r.png")
    with pytest.raises(ValueError, match=r"plot_runs: run 2 \(b\) has no per-epoch 'loss' list"):
        plot_runs([a, {"loss": []}], ["a", "b"], tmp_path / "r.png")
