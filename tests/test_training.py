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
from engine.training import EarlyStopping, NonFiniteLoss, evaluate, fit, predict


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
    assert "held-out accuracy" in capsys.readouterr().out


def test_cli_summary_and_errors(capsys):
    assert cli(["summary", "lenet"]) == 0
    assert "Total params: 61,706" in capsys.readouterr().out
    assert cli(["train", "lenet", "--data", "nowhere", "--no-progress"]) == 2
    assert "--data must be" in capsys.readouterr().err


@pytest.mark.slow
def test_lenet_with_cli_defaults_reaches_97_percent_held_out(tmp_path):
    # the acceptance run: `python -m engine train lenet` on the bundled split, CPU
    out = tmp_path / "lenet.json"
    assert cli(["train", "lenet", "--device", "cpu", "--no-progress", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["epochs"] == 20
    assert summary["held_out_accuracy"] >= 0.97, summary["held_out_accuracy"]
