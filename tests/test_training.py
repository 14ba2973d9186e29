"""fit / evaluate / predict, checkpoints and resume, NaN handling, schedules, the CLI."""
import json
import math

import numpy as np
import pytest

from engine import nn
from engine.__main__ import main as cli
from engine.data import DataLoader, synthetic
from engine.executor import Executor
from engine.optim import SGD, Adam, AdamW, make_optimizer
from engine.schedules import Cosine, OneCycle, StepLR, make_schedule
from engine.training import EarlyStopping, NonFiniteLoss, cross_validate, evaluate, fit, lr_find, predict


def small_data(n=96, seed=0):
    split = synthetic(n, (1, 28, 28), 10, seed=seed)
    return split.x, split.y


def make(seed=0, opt=None, dropout=False):
    nn.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(4 * 6 * 6, 10))
    return Executor(nn.Sequential(*layers), (1, 28, 28), optimizer=opt or Adam(1e-2), seed=seed)


def test_fit_learns_and_keeps_history():
    x, y = small_data()
    ex = make()
    h = fit(ex, DataLoader(x, y, 16, seed=1), epochs=6, val=(x, y), progress=False, log=lambda s: None)
    assert h.epochs == 6 and len(h["val_accuracy"]) == 6 and len(h["lr"]) == 6
    assert h["loss"][-1] < 0.5 * h["loss"][0]  # memorises 96 random images
    assert h["accuracy"][-1] > 0.5
    report = evaluate(ex, x, y, batch_size=40)  # 96 = 40 + 40 + 16: a partial last batch
    assert report["confusion_matrix"].sum() == 96
    assert math.isclose(report["accuracy"], h["val_accuracy"][-1], rel_tol=1e-9)
    assert predict(ex, x, batch_size=50).shape == (96, 10)


def test_resume_from_checkpoint_reproduces_an_uninterrupted_run(tmp_path):
    x, y = small_data()
    full = fit(make(dropout=True), DataLoader(x, y, 16, seed=2), epochs=4, val=(x, y),
               schedule=Cosine(4), progress=False, log=lambda s: None)
    path = str(tmp_path / "ckpt.npz")
    fit(make(dropout=True), DataLoader(x, y, 16, seed=2), epochs=2, val=(x, y), schedule=Cosine(4),
        checkpoint=path, progress=False, log=lambda s: None)
    # a new process would rebuild everything; a different init proves the weights come from the file
    resumed = fit(make(seed=99, dropout=True), DataLoader(x, y, 16, seed=2), epochs=4, val=(x, y),
                  schedule=Cosine(4), checkpoint=path, resume=True, progress=False, log=lambda s: None)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert resumed[key] == full[key], key  # exactly, not approximately
    said = []
    fit(make(), DataLoader(x, y, 16, seed=2), epochs=1, checkpoint=str(tmp_path / "new.npz"), resume=True,
        progress=False, log=said.append)  # --resume before the first checkpoint: a new run, and it says so
    assert said[0] == f"resume: no checkpoint at {tmp_path / 'new.npz'} yet; a new run starts (and writes it)"


def test_nonfinite_loss_stops_with_the_step_named():
    x, y = small_data(32)
    x[20] = np.nan
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, batch 2 \(step 2\)"):
        fit(make(), DataLoader(x, y, 16, shuffle=False), epochs=1, progress=False, log=lambda s: None)
    with pytest.warns(UserWarning, match="stopping"):
        h = fit(make(), DataLoader(x, y, 16, shuffle=False), epochs=2, on_nonfinite="stop",
                progress=False, log=lambda s: None)
    assert h.epochs == 0


def test_early_stopping_restores_best_weights():
    x, y = small_data(48)
    xv, yv = small_data(48, seed=7)  # unrelated labels: validation loss soon rises
    ex = make(opt=Adam(3e-2))
    stop = EarlyStopping("val_loss", patience=2)
    h = fit(ex, DataLoader(x, y, 16, seed=3), epochs=40, val=(xv, yv), early_stopping=stop,
            progress=False, log=lambda s: None)
    assert h.epochs < 40
    best = min(h["val_loss"])
    assert math.isclose(evaluate(ex, xv, yv)["loss"], best, rel_tol=1e-5)


def test_schedules_match_pytorch_formulas():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    for ours, make_theirs in ((StepLR(3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
                              (Cosine(10, 0.01), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 0.01))):
        opt = torch.optim.SGD([p], lr=0.1)
        theirs = make_theirs(opt)
        for epoch in range(10):
            assert math.isclose(ours(0.1, epoch), opt.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12)
            opt.step()
            theirs.step()
    one = OneCycle(10)
    lrs = [one(1.0, e / 10) for e in range(101)]
    peak = int(np.argmax(lrs))
    assert math.isclose(lrs[peak], 1.0) and 25 <= peak <= 35
    assert math.isclose(lrs[0], 1 / 25) and lrs[-1] < 1e-4
    with pytest.raises(ValueError, match="make_schedule: expected one of"):
        make_schedule("exp", 10)


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="SGD: nesterov=True needs momentum > 0"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        Adam(-1.0)
    with pytest.raises(ValueError, match="make_optimizer: expected one of"):
        make_optimizer("lbfgs")
    assert isinstance(make_optimizer("adamw", 0.5), AdamW) and make_optimizer("adamw", 0.5).lr == 0.5


def test_cli_trains_and_writes_json_and_plots(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = cli(["train", "lenet", "--data", "synthetic", "--synthetic-size", "128", "--epochs", "2",
              "--batch-size", "32", "--device", "cpu", "--no-progress", "--json", str(out),
              "--plots", str(tmp_path / "plots"), "--checkpoint", str(tmp_path / "c.npz")])
    assert rc == 0
    summary = json.loads(out.read_text())
    for key in ("held_out_accuracy", "final_train_loss", "final_val_loss", "epochs", "seconds",
                "device", "images_per_second"):
        assert key in summary
    assert summary["epochs"] == 2 and summary["device"] == "cpu" and summary["images_per_second"] > 0
    assert (tmp_path / "plots" / "learning_curves.png").stat().st_size > 1000
    out_text = capsys.readouterr().out
    assert "test accuracy" in out_text and "validation accuracy" in out_text
    # the test split is reported apart, with the metrics a course report quotes
    test = summary["test"]
    assert test["accuracy"] == summary["held_out_accuracy"]
    for key in ("precision", "recall", "f1"):
        assert 0.0 <= test[key] <= 1.0
    cm = np.array(test["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 32  # the synthetic test split: 128 // 4 images
    # validation (not test) drove the curves: 10% of the 128 training images, stratified
    assert summary["val_split"] == 0.1 and len(summary["history"]["val_loss"]) == 2


def test_cli_early_stopping_uses_validation_and_the_test_split_is_evaluated_once_at_the_end(tmp_path, monkeypatch):
    # random labels and a high lr: the validation loss soon rises and --patience stops the run
    import engine.training as training
    from engine.data import stratified_split
    train = synthetic(128, (1, 28, 28), 10, seed=0)  # what --data synthetic --synthetic-size 128 trains on
    _, val_idx = stratified_split(train.y, 0.1, seed=0)
    x_val, y_val = train.x[val_idx], train.y[val_idx]
    real, calls = training.evaluate, []

    def spy(ex, x, y, *args, **kwargs):
        report = real(ex, x, y, *args, **kwargs)
        calls.append((len(x), report["loss"], real(ex, x_val, y_val)["loss"]))  # and the validation loss now
        return report

    monkeypatch.setattr(training, "evaluate", spy)
    out = tmp_path / "run.json"
    assert cli(["train", "lenet", "--data", "synthetic", "--synthetic-size", "128", "--epochs", "30",
                "--optimizer", "adam", "--lr", "0.03", "--patience", "1", "--device", "cpu", "--no-progress",
                "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    epochs, val_loss = summary["epochs"], summary["history"]["val_loss"]
    assert epochs < 30  # stopped early
    sizes = [n for n, _, _ in calls]
    assert sizes == [len(val_idx)] * epochs + [32]  # validation after each epoch; the 32 test images once, last
    assert all(math.isclose(loss, v, rel_tol=1e-6) for (_, loss, _), v in zip(calls, val_loss))
    # the test split was scored with the weights restored from the best validation epoch
    assert math.isclose(calls[-1][2], min(val_loss), rel_tol=1e-5)
    assert math.isclose(summary["test"]["loss"], calls[-1][1], rel_tol=1e-9)


def test_cli_summary_and_errors(capsys):
    assert cli(["summary", "lenet"]) == 0
    assert "Total params: 61,706" in capsys.readouterr().out
    assert cli(["train", "lenet", "--data", "nowhere", "--no-progress"]) == 2
    assert "--data must be" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_lenet_with_cli_defaults_reaches_97_percent_held_out(tmp_path, optimizer):
    # the acceptance runs: `python -m engine train lenet [--optimizer sgd]` on the bundled
    # split, CPU; SGD with its CLI defaults (lr 0.01, momentum 0.9) must learn too
    out = tmp_path / "lenet.json"
    assert cli(["train", "lenet", "--optimizer", optimizer, "--device", "cpu", "--no-progress",
                "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["epochs"] == 20
    assert summary["held_out_accuracy"] >= 0.97, summary["held_out_accuracy"]
    if optimizer == "sgd":
        assert "momentum=0.9" in summary["optimizer_settings"] and summary["lr"] == 0.01


def test_cross_validate_trains_one_model_per_fold():
    x, y = small_data(100)
    made = []

    def make_fold(k):
        made.append(k)
        return make(seed=k)

    lines = []
    result = cross_validate(make_fold, x, y, folds=4, epochs=2, batch_size=16, log=lines.append)
    assert made == [0, 1, 2, 3] and len(lines) == 4
    folds = result["folds"]
    assert [f["held"] for f in folds] == [25, 25, 25, 25] and all(f["train"] == 75 for f in folds)
    accuracy = [f["accuracy"] for f in folds]
    assert math.isclose(result["summary"]["accuracy"]["mean"], np.mean(accuracy))
    assert math.isclose(result["summary"]["accuracy"]["std"], np.std(accuracy))
    assert set(result["summary"]) == {"accuracy", "precision", "recall", "f1"}


def test_lr_find_sweeps_and_puts_the_executor_back():
    x, y = small_data(128)
    ex = make(opt=SGD(0.01, momentum=0.9))
    probe = x[:16]
    out_before = predict(ex, probe)
    result = lr_find(ex, DataLoader(x, y, 16, seed=0), min_lr=1e-4, max_lr=10.0, steps=30)
    lrs = result["lr"]
    assert 3 <= len(lrs) <= 30 and lrs[0] == pytest.approx(1e-4)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # geometric, rising
    assert len(result["loss"]) == len(result["smoothed"]) == len(lrs)
    assert result["suggested_lr"] in lrs
    np.testing.assert_array_equal(predict(ex, probe), out_before)  # weights restored
    assert ex.step == 0
    with pytest.raises(ValueError, match="lr_find: need 0 < min_lr < max_lr"):
        lr_find(ex, DataLoader(x, y, 16), min_lr=1.0, max_lr=0.1)


def test_cli_optimizer_defaults_and_option_errors(capsys):
    from engine.__main__ import _optimizer, build_parser
    sgd = _optimizer(build_parser().parse_args(["train", "lenet", "--optimizer", "sgd"]))
    assert sgd.lr == 0.01 and sgd.momentum == 0.9 and not sgd.nesterov
    nag = _optimizer(build_parser().parse_args(["train", "lenet", "--optimizer", "sgd", "--nesterov",
                                                "--momentum", "0.8", "--lr", "0.05"]))
    assert nag.lr == 0.05 and nag.momentum == 0.8 and nag.nesterov
    adam = _optimizer(build_parser().parse_args(["train", "lenet", "--optimizer", "adam", "--l1", "1e-4",
                                                 "--weight-decay", "1e-3", "--decoupled", "--no-decay-bias"]))
    assert adam.l1 == 1e-4 and adam.weight_decay == 1e-3 and adam.decoupled and not adam.decay_all
    ada = _optimizer(build_parser().parse_args(["train", "lenet", "--optimizer", "adadelta"]))
    assert type(ada).__name__ == "Adadelta"
    base = ["train", "lenet", "--data", "synthetic", "--synthetic-size", "64", "--epochs", "1", "--no-progress",
            "--device", "cpu"]
    for extra, message in ((["--optimizer", "adam", "--momentum", "0.9"], "--momentum and --nesterov are SGD's"),
                           (["--val-split", "1.5"], "--val-split"),
                           (["--val-split", "0", "--patience", "2"], "--patience needs a validation split"),
                           (["--width", "0.5"], "model 'lenet' takes no option width")):
        assert cli(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_cli_cv_and_lr_find_write_their_plots(tmp_path, capsys):
    base = ["lenet", "--data", "synthetic", "--synthetic-size", "96", "--no-progress", "--device", "cpu",
            "--batch-size", "16"]
    assert cli(["cv", *base, "--folds", "3", "--epochs", "1", "--plots", str(tmp_path / "cv"),
                "--json", str(tmp_path / "cv.json")]) == 0
    out = capsys.readouterr().out
    assert "accuracy:" in out and "over 3 folds" in out and "fold 3/3" in out
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert len(cv["folds"]) == 3 and sum(f["held"] for f in cv["folds"]) == 96
    assert (tmp_path / "cv" / "cross_validation.png").stat().st_size > 1000
    assert cli(["lr-find", *base, "--steps", "12", "--out", str(tmp_path / "find.png")]) == 0
    assert "plot written to" in capsys.readouterr().out
    assert (tmp_path / "find.png").stat().st_size > 1000


def test_cli_trains_a_users_model_from_a_file(tmp_path, capsys, monkeypatch):
    from engine.modelfile import load_model
    (tmp_path / "my_models.py").write_text(
        "from engine import nn\n"
        "class Tiny(nn.Model):\n"
        "    input_shape = (1, 28, 28)\n"
        "    def __init__(self, num_classes=10, in_channels=1):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(in_channels, 4, 5, stride=2)\n"
        "        self.relu, self.flat = nn.ReLU(), nn.Flatten()\n"
        "        self.head = nn.Linear(4 * 12 * 12, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.flat(self.relu(self.conv(x))))\n"
        "def flat(num_classes=10, in_channels=1):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    spec = "my_models.py"  # as a user types it, relative to where they are
    assert cli(["summary", f"{spec}:Tiny"]) == 0
    assert "conv" in capsys.readouterr().out
    for name in ("Tiny", "flat"):
        saved = tmp_path / f"{name}.npz"
        assert cli(["train", f"{spec}:{name}", "--data", "synthetic", "--synthetic-size", "64", "--epochs", "1",
                    "--device", "cpu", "--no-progress", "--image-size", "28", "--save", str(saved)]) == 0
        assert "test accuracy" in capsys.readouterr().out
        # the model file names the user's file by its absolute path: it loads from another directory
        monkeypatch.chdir(tmp_path.parent)
        loaded = load_model(saved)
        probabilities = loaded.predict(synthetic(3, loaded.input_shape, 10, seed=5).x)
        assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        monkeypatch.chdir(tmp_path)
    assert cli(["train", f"{spec}:Nothing", "--no-progress"]) == 2
    assert "Nothing" in capsys.readouterr().err


def test_cli_trains_alexnet_variants_on_an_image_folder(tmp_path, capsys):
    # the course project: AlexNet varied (narrower, shallower) on a user's own images
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for name, channel in (("red", 0), ("blue", 2)):
            folder = tmp_path / "imgs" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (40, 48, 3), dtype=np.uint8)
                pixels[..., channel] += 150
                Image.fromarray(pixels).save(folder / f"{i}.png")
    data = f"folder:{tmp_path / 'imgs'}"
    for variant in (["alexnet-small", "--width", "0.25", "--hidden", "64"],
                    ["alexnet-small", "--convs", "1,2,5", "--width", "0.25", "--hidden", "32,32", "--dropout", "0.2"]):
        out = tmp_path / "run.json"
        assert cli(["train", *variant, "--data", data, "--epochs", "8", "--device", "cpu", "--no-progress",
                    "--val-split", "0", "--batch-size", "8", "--augment", "--json", str(out)]) == 0, variant
        text = capsys.readouterr().out
        assert "load_image_folder: resized 32 of 32 images" in text  # said once, not per image
        assert text.count("load_image_folder: resized") == 1
        summary = json.loads(out.read_text())
        assert summary["augment"] == "Augment(shift=2, flip=True)"  # natural images are mirrored
        assert summary["held_out_accuracy"] >= 0.75, (variant, summary["held_out_accuracy"])


def test_fit_refuses_arguments_in_the_wrong_place():
    x, y = small_data(32)
    ex = make()
    with pytest.raises(TypeError, match=r"fit: train must be a DataLoader .*got tuple"):
        fit(ex, (x, y), epochs=1, progress=False, log=lambda s: None)
    with pytest.raises(TypeError, match=r"fit: the first argument must be an Executor .*got DataLoader"):
        fit(DataLoader(x, y, 16), ex, epochs=1, progress=False, log=lambda s: None)
    with pytest.raises(TypeError, match=r"fit: val must be an \(x, y\) pair of arrays, got DataLoader \(pass"):
        fit(ex, DataLoader(x, y, 16), epochs=1, val=DataLoader(x, y, 16), progress=False, log=lambda s: None)
    with pytest.raises(TypeError, match="Executor: the input must be float images, .*got dtype uint8"):
        ex.train_step((x[:16] * 10).astype(np.uint8), y[:16])


def test_weights_that_turn_nonfinite_on_the_last_step_are_caught(monkeypatch):
    x, y = small_data(32)
    ex = make(opt=SGD(0.01))
    real_step = ex.optimizer.step

    def poisoned_last_step(bk, params, grads, state, step, lr, weights_end):
        real_step(bk, params, grads, state, step, lr, weights_end)
        if step == 2:  # the last step of the epoch: its loss was finite, its update is not
            params[0] = np.nan

    monkeypatch.setattr(ex.optimizer, "step", poisoned_last_step)
    with pytest.raises(NonFiniteLoss, match=r"weights became NaN/Inf by the end of epoch 1 \(step 2\)"):
        fit(ex, DataLoader(x, y, 16, shuffle=False), epochs=1, progress=False, log=lambda s: None)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    from engine.training import resume_state
    x, y = small_data(32)
    path = str(tmp_path / "c.npz")
    config = {"model": "m", "lr": 0.01, "optimizer": {"kind": "sgd", "momentum": 0.9}, "sizes": (1, 2)}
    fit(make(opt=SGD(0.01, momentum=0.9)), DataLoader(x, y, 16), epochs=1, checkpoint=path, config=config,
        progress=False, log=lambda s: None)
    assert resume_state(path, config)["epoch"] == 1  # tuples compare as the file keeps them
    assert resume_state(str(tmp_path / "none.npz"), config) is None
    with pytest.raises(ValueError, match=r"lr was 0.01, now 0.1 \(--resume-anyway allows"):
        resume_state(path, {**config, "lr": 0.1})
    with pytest.raises(ValueError, match=r"model was 'm', now 'n'; start a new run"):
        resume_state(path, {**config, "model": "n", "lr": 0.1}, anyway=True)
    said = []
    state = resume_state(path, {**config, "optimizer": {"kind": "adam"}}, anyway=True, log=said.append)
    assert "optimizer" not in state["executor"] and len(said) == 2 and "starts from zero" in said[1]
