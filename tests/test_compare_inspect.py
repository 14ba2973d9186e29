"""Runs side by side (engine.runs, `compare`) and a trained model looked into (`inspect`)."""
import json
import os

import numpy as np
import pytest

from engine.__main__ import main as cli
from engine.runs import differences, load_run, run_config, run_labels

SYN = ["--data", "synthetic", "--synthetic-size", "64", "--epochs", "2", "--no-progress", "--device", "cpu"]


def run(optimizer="sgd", lr=0.01, momentum=0.9, options=None, batch=32, history=None):
    """A summary as train --json writes it (the parts compare reads)."""
    settings = {"kind": optimizer, "weight_decay": 0.01 if optimizer == "adamw" else 0.0, "l1": 0.0,
                "decoupled": optimizer == "adamw", "decay_all": True}
    settings.update({"momentum": momentum, "nesterov": False} if optimizer == "sgd" else
                    {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8})
    config = {"model": "lenet", "model_options": options or {}, "image_size": None, "data": "bundled",
              "val_split": 0.1, "augment": False, "seed": 0, "batch_size": batch,
              "schedule": "cosine over 2 epochs", "optimizer": settings, "lr": lr}
    return {"config": config, "history": history or {"loss": [1.0, 0.5], "accuracy": [0.5, 0.8]}}


def test_runs_are_labelled_by_what_differs_between_them():
    sgd, adamw = run("sgd", 0.01), run("adamw", 0.002)
    # momentum comes with SGD, weight decay 0.01 with AdamW: neither is a difference of its own
    assert differences([sgd, adamw]) == ["optimizer", "lr"]
    assert run_labels([sgd, adamw]) == ["optimizer=sgd, lr=0.01", "optimizer=adamw, lr=0.002"]
    assert run_labels([run(momentum=0.9), run(momentum=0.5)]) == ["momentum=0.9", "momentum=0.5"]
    assert run_labels([run(options={"dropout": 0.3}), run()]) == ["dropout=0.3", "dropout=default"]
    assert run_labels([run(batch=32), run(batch=64, lr=0.02)]) == ["batch_size=32, lr=0.01", "batch_size=64, lr=0.02"]
    assert run_labels([run(), run()], ["a.json", "b.json"]) == ["a.json", "b.json"]  # nothing differs
    assert run_labels([run(lr=0.1), run(lr=0.1), run(lr=0.2)], ["a", "b", "c"]) == [
        "lr=0.1 (a)", "lr=0.1 (b)", "lr=0.2 (c)"]
    adamw_decay = run("adamw")
    adamw_decay["config"]["optimizer"]["weight_decay"] = 0.05  # a setting given, not the kind's default
    assert "weight_decay" in differences([sgd, adamw_decay])
    assert run_config(sgd)["optimizer"] == "sgd" and run_config(sgd)["momentum"] == 0.9
    old = {"model": "lenet", "optimizer": "adam", "lr": 0.001, "batch_size": 32, "history": {"loss": [1.0]}}
    assert run_labels([old, {**old, "optimizer": "sgd", "lr": 0.01}]) == ["optimizer=adam, lr=0.001",
                                                                            "optimizer=sgd, lr=0.01"]


def test_load_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="compare: no run file .*missing.json"):
        load_run(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("epoch 1: loss 2.3")
    with pytest.raises(ValueError, match="text.json is not JSON .*expected the summary of train --json"):
        load_run(tmp_path / "text.json")
    (tmp_path / "cv.json").write_text(json.dumps({"folds": [], "summary": {}}))
    with pytest.raises(ValueError, match=r"cv.json is not a run summary of train --json .*\['folds', 'summary'\]"):
        load_run(tmp_path / "cv.json")
    (tmp_path / "empty.json").write_text(json.dumps({"history": {"loss": []}}))
    with pytest.raises(ValueError, match="records no finished epoch"):
        load_run(tmp_path / "empty.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two short runs of lenet on synthetic data that differ in their learning rate, with the
    summary, the plots, the checkpoint and the model file of the first."""
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("a", "0.01"), ("b", "0.05")):
        extra = (["--checkpoint", str(root / "a.ckpt"), "--plots", str(root / "plots"), "--save", str(root / "a.npz")]
                 if name == "a" else [])
        assert cli(["train", "lenet", *SYN, "--optimizer", "sgd", "--lr", lr, "--json", str(root / f"{name}.json"),
                    *extra]) == 0
    return root


def test_train_json_keeps_the_losses_of_every_batch_and_plots_every_picture(trained):
    summary = json.loads((trained / "a.json").read_text())
    history = summary["history"]
    assert summary["batches_per_epoch"] == 2  # 58 training images (64 less 10% validation), batch 32
    assert len(history["batch_loss"]) == 2 * 2 and all(np.isfinite(history["batch_loss"]))
    assert summary["config"]["optimizer"]["kind"] == "sgd" and summary["config"]["lr"] == 0.01
    plots = sorted(os.listdir(trained / "plots"))
    assert plots == ["batch_loss.png", "confusion_matrix.png", "filters.png", "learning_curves.png",
                     "per_class.png", "predictions.png"]


def test_a_run_without_validation_draws_every_picture_and_compares(trained, capsys, tmp_path):
    """--val-split 0: the History's validation lists are empty; the curves are drawn without them."""
    assert cli(["train", "lenet", *SYN, "--val-split", "0", "--plots", str(tmp_path / "plots"),
                "--json", str(tmp_path / "c.json")]) == 0
    assert sorted(os.listdir(tmp_path / "plots")) == sorted(os.listdir(trained / "plots"))
    capsys.readouterr()
    assert cli(["compare", str(trained / "a.json"), str(tmp_path / "c.json"), "--out", str(tmp_path / "c.png")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "val_split=0," in line)
    assert row.split()[-3:-1] == ["-", "-"]  # no validation loss nor accuracy to show


def test_compare_draws_the_runs_labelled_by_their_learning_rate(trained, capsys):
    out = trained / "compare.png"
    assert cli(["compare", str(trained / "a.json"), str(trained / "b.json"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lr=0.01" in text and "lr=0.05" in text and f"plot written to {out}" in text
    a = json.loads((trained / "a.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("lr=0.01"))
    assert f"{a['history']['val_loss'][-1]:.4f}" in row and f"{a['held_out_accuracy']:.4f}" in row
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000


def test_inspect_draws_filters_and_maps_and_predicts_as_the_executor_does(trained, capsys, tmp_path):
    from PIL import Image
    from engine.checkpoint import load_checkpoint
    from engine.executor import Executor
    from engine.models import lenet5
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    out = tmp_path / "inside"
    assert cli(["inspect", "lenet", str(tmp_path / "digit.png"), "--checkpoint", str(trained / "a.ckpt"),
                "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["filters_0.png", "filters_3.png", "maps_0.png", "maps_3.png", "prediction.png"]
    # the prediction is that of the trained weights on the image scaled as the synthetic data is (mean 0, std 1)
    ex = Executor(lenet5(), (1, 28, 28))
    ex.load_state_dict(load_checkpoint(trained / "a.ckpt")["executor"])
    logits = ex.predict((pixels / np.float32(255))[None, None].astype(np.float32))[0]
    assert text.startswith(f"{tmp_path / 'digit.png'}: predicted {int(np.argmax(logits))} (probability")
    assert "5 pictures written" in text
    assert cli(["inspect", "lenet", str(tmp_path / "digit.png"), "--checkpoint", str(trained / "a.ckpt"),
                "--out", str(out), "--layers", "1,9"]) == 0  # a ReLU's maps, a linear layer's units
    assert {"maps_1.png", "maps_9.png"} <= set(os.listdir(out))


def test_inspect_reads_a_model_file_as_it_reads_the_checkpoint(trained, capsys, tmp_path):
    from PIL import Image
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28)).astype(np.uint8)).save(tmp_path / "d.png")
    printed = {}
    ways = (("file", [str(trained / "a.npz")]), ("checkpoint", ["lenet", "--checkpoint", str(trained / "a.ckpt")]))
    for how, args in ways:
        out = tmp_path / how
        assert cli(["inspect", args[0], str(tmp_path / "d.png"), *args[1:], "--out", str(out), "--layers", "4"]) == 0
        printed[how] = capsys.readouterr().out.splitlines()[0]
        assert sorted(os.listdir(out)) == ["filters_0.png", "filters_3.png", "maps_4.png", "prediction.png"]
    assert printed["file"] == printed["checkpoint"]  # the same weights, image reading and classes
