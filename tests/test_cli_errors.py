"""The command line's error matrix: each mistake a user can make, run as a user runs it (a
subprocess), ends with one `error:` line naming the problem, a non-zero exit code of the
right kind, no traceback, and no output file half written. Plus the exit codes of a
diverged run, of an internal error, and --debug."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.__main__ import main as cli
from tests.helpers import write_idx, write_mnist_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = ["--data", "synthetic", "--synthetic-size", "64", "--epochs", "1", "--no-progress", "--device", "cpu"]
USER, NONFINITE, INTERNAL = 2, 3, 70


def engine(*argv, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ENGINE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "engine", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A directory holding everything the rows refer to: image folders good and bad, model
    files, a checkpoint of a real run, a file that is not a checkpoint."""
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path_factory.mktemp("cli_errors")

    def folder(name, splits=("train", "test"), classes=("a", "b"), image=None):
        for split in splits:
            for c in classes:
                d = root / name / split / c
                d.mkdir(parents=True)
                if image is None:
                    Image.new("L", (28, 28), 40 if c == "a" else 200).save(d / "0.png")
                else:
                    image(d / "0.png")
        return root / name

    folder("no_test", splits=("train",))
    (root / "no_test" / "test").mkdir()
    folder("broken", image=lambda p: p.write_bytes(b"\x89PNG but not really"))
    folder("float", image=lambda p: Image.fromarray(np.ones((28, 28), np.float32)).save(p.with_suffix(".tif")))
    (root / "no_classes" / "train").mkdir(parents=True)
    (root / "no_classes" / "test").mkdir(parents=True)
    (root / "empty_idx").mkdir()
    (root / "a_file").write_text("not a directory")
    (root / "nets.py").write_text("from engine import nn\n"
                                  "def Flat(num_classes=10, in_channels=1):\n"
                                  "    return nn.Sequential(nn.Flatten(), nn.Linear(784 * in_channels, num_classes))\n"
                                  "def NotAModel(num_classes=10, in_channels=1):\n"
                                  "    return 42\n")
    (root / "broken_nets.py").write_text("def Net(:\n")
    (root / "other.npz").write_bytes(b"")
    np.savez(root / "other.npz", weights=np.ones(3))
    (root / "notrun.json").write_text('{"folds": [], "summary": {}}')
    assert cli(["train", "lenet", *SYN, "--checkpoint", str(root / "run.ckpt"), "--save", str(root / "model.npz"),
                "--json", str(root / "run.json")]) == 0
    Image.new("L", (28, 28), 100).save(root / "digit.png")
    (root / "junk.png").write_text("junk")
    data = (root / "run.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    data = (root / "model.npz").read_bytes()
    (root / "truncated.npz").write_bytes(data[: len(data) // 2])
    for name in ("idx_counts", "idx_truncated"):
        (root / name).mkdir()
        write_mnist_dir(root / name, gz=False)
    write_idx(root / "idx_counts" / "t10k-labels-idx1-ubyte", [1, 2])  # 5 test images, 2 labels
    data = (root / "idx_truncated" / "train-images-idx3-ubyte").read_bytes()
    (root / "idx_truncated" / "train-images-idx3-ubyte").write_bytes(data[:-7])
    return root


ROWS = [
    # option values: argparse, before anything is imported
    ("epochs zero", ["train", "lenet", "--epochs", "0"], USER, "--epochs: expected an integer >= 1, got 0"),
    ("epochs text", ["train", "lenet", "--epochs", "ten"], USER, "--epochs: expected an integer, got 'ten'"),
    ("batch zero", ["train", "lenet", "--batch-size", "0"], USER, "--batch-size: expected an integer >= 1"),
    ("batch negative", ["train", "lenet", "--batch-size", "-4"], USER, "--batch-size"),
    ("lr zero", ["train", "lenet", "--lr", "0"], USER, "--lr: expected a finite number in (0, inf), got 0"),
    ("lr negative", ["train", "lenet", "--lr", "-0.1"], USER, "--lr"),
    ("lr nan", ["train", "lenet", "--lr", "nan"], USER, "--lr: expected a finite number"),
    ("lr inf", ["train", "lenet", "--lr", "inf"], USER, "--lr: expected a finite number"),
    ("momentum one", ["train", "lenet", "--optimizer", "sgd", "--momentum", "1"], USER, "--momentum"),
    ("weight decay negative", ["train", "lenet", "--weight-decay", "-1e-4"], USER, "--weight-decay"),
    ("l1 nan", ["train", "lenet", "--l1", "nan"], USER, "--l1"),
    ("val split one", ["train", "lenet", "--val-split", "1"], USER, "--val-split: expected a finite number in [0, 1)"),
    ("val split negative", ["train", "lenet", "--val-split", "-0.1"], USER, "--val-split"),
    ("val split in cv", ["cv", "lenet", "--val-split", "0.2"], USER,  # the folds are its validation
     "unrecognized arguments: --val-split 0.2"),
    ("seed negative", ["train", "lenet", "--seed", "-1"], USER, "--seed"),
    ("synthetic size one", ["train", "lenet", "--synthetic-size", "1"], USER, "--synthetic-size"),
    ("image size zero", ["train", "lenet", "--image-size", "0"], USER, "--image-size"),
    ("dropout one", ["train", "lenet", "--dropout", "1"], USER, "--dropout"),
    ("width zero", ["train", "alexnet", "--width", "0"], USER, "--width"),
    ("convs not numbers", ["train", "alexnet", "--convs", "1,x"], USER, "--convs: expected comma-separated integers"),
    ("patience negative", ["train", "lenet", "--patience", "-1"], USER, "--patience"),
    ("unknown optimizer", ["train", "lenet", "--optimizer", "lbfgs"], USER, "invalid choice: 'lbfgs'"),
    ("unknown schedule", ["train", "lenet", "--schedule", "exp"], USER, "--schedule"),
    ("unknown device", ["train", "lenet", "--device", "tpu"], USER, "--device"),
    ("misspelt option", ["train", "lenet", "--lrr", "0.1"], USER, "unrecognized arguments: --lrr"),
    ("no model", ["train"], USER, "the following arguments are required: model"),
    ("unknown command", ["fit", "lenet"], USER, "invalid choice: 'fit'"),
    ("folds one", ["cv", "lenet", "--folds", "1"], USER, "--folds: expected an integer >= 2"),
    ("lr-find steps", ["lr-find", "lenet", "--steps", "2"], USER, "--steps: expected an integer >= 3"),
    ("lr-find range", ["lr-find", "lenet", "--min-lr", "1", "--max-lr", "0.1"], USER,
     "--min-lr (1) must be below --max-lr (0.1)"),
    ("input shape short", ["summary", "lenet", "--input-shape", "1,28"], USER, "--input-shape: expected 3"),
    ("classes one", ["summary", "lenet", "--num-classes", "1"], USER, "--num-classes"),
    ("validate option", ["validate", "--bogus"], USER, "unrecognized arguments: --bogus"),
    ("bench suite", ["bench", "--suite", "nosuch"], USER, "--suite"),
    ("bench op", ["bench", "--op", "nosuch", "--no-write"], USER, "--op: no op named 'nosuch'"),
    ("bench out-dir a file", ["bench", "--op", "relu_forward", "--out-dir", "{p}/a_file"], USER,
     "--out-dir: {p}/a_file exists and is not a directory"),
    # meaning: caught before the first epoch
    ("momentum for adam", ["train", "lenet", "--optimizer", "adam", "--momentum", "0.9"], USER,
     "--momentum and --nesterov are SGD's; --optimizer is adam"),
    ("data kind", ["train", "lenet", "--data", "nowhere"], USER, "--data must be bundled, idx:PATH"),
    ("data folder missing", ["train", "lenet", "--data", "folder:{p}/missing"], USER, "no directory {p}/missing"),
    ("data folder empty path", ["train", "lenet", "--data", "folder:"], USER, "needs a path after the colon"),
    ("data folder is a file", ["train", "lenet", "--data", "folder:{p}/a_file"], USER, "no directory"),
    ("idx files missing", ["train", "lenet", "--data", "idx:{p}/empty_idx"], USER, "load_mnist_idx"),
    ("folder without classes", ["train", "lenet", "--data", "folder:{p}/no_classes"], USER, "load_image_folder"),
    ("folder without test images", ["train", "lenet", "--data", "folder:{p}/no_test"], USER, "load_image_folder"),
    ("image not decodable", ["train", "lenet", "--data", "folder:{p}/broken"], USER, "cannot decode image {p}/broken"),
    ("image of floats", ["train", "lenet", "--data", "folder:{p}/float"], USER, "floating-point image (mode F)"),
    ("unknown model", ["train", "lenet6"], USER, "model must be one of"),
    ("model file missing", ["train", "{p}/missing.py:Net"], USER, "no file {p}/missing.py"),
    ("model file broken", ["train", "{p}/broken_nets.py:Net", *SYN, "--image-size", "28"], USER, "does not import"),
    ("model name missing", ["train", "{p}/nets.py:Nope", *SYN, "--image-size", "28"], USER, "defines no model"),
    ("model is not a model", ["train", "{p}/nets.py:NotAModel", *SYN, "--image-size", "28"], USER, "not a model"),
    ("model option not taken", ["train", "lenet", "--width", "0.5"], USER, "model 'lenet' takes no option width"),
    ("model does not fit", ["train", "lenet", *SYN, "--image-size", "64"], USER,
     "model lenet (it is made for 1x28x28) does not fit the data's 1x64x64 images"),
    ("image too small", ["train", "alexnet", *SYN, "--image-size", "32"], USER, "63"),
    ("folds above images", ["cv", "lenet", *SYN[:3], "2", *SYN[4:], "--folds", "3"], USER,
     "--folds 3: the training split holds only 2 images"),
    ("no gpu", ["train", "lenet", *SYN[:-2], "--device", "cuda"], USER, "no usable GPU"),
    # output paths: checked before the data loads
    ("resume without checkpoint", ["train", "lenet", "--resume"], USER, "--resume needs --checkpoint"),
    ("checkpoint dir missing", ["train", "lenet", "--checkpoint", "{p}/nodir/c.ckpt"], USER,
     "--checkpoint: the directory {p}/nodir does not exist"),
    ("checkpoint is a directory", ["train", "lenet", "--checkpoint", "{p}"], USER, "--checkpoint: {p} is a directory"),
    ("json dir missing", ["train", "lenet", "--json", "{p}/nodir/run.json"], USER, "--json: the directory"),
    ("json is a directory", ["train", "lenet", "--json", "{p}"], USER, "--json: {p} is a directory"),
    ("plots is a file", ["train", "lenet", "--plots", "{p}/a_file"], USER, "--plots: {p}/a_file is a file"),
    ("plots parent missing", ["train", "lenet", "--plots", "{p}/nodir/plots"], USER, "--plots: the directory"),
    ("cv json is a directory", ["cv", "lenet", "--json", "{p}"], USER, "--json: {p} is a directory"),
    ("lr-find out missing dir", ["lr-find", "lenet", "--out", "{p}/nodir/lr.png"], USER, "--out: the directory"),
    # checkpoints of the wrong kind or of another run
    ("resume from a foreign npz", ["train", "lenet", *SYN, "--checkpoint", "{p}/other.npz", "--resume"], USER,
     "is an .npz archive but not a checkpoint"),
    ("resume from a truncated file", ["train", "lenet", *SYN, "--checkpoint", "{p}/truncated.ckpt", "--resume"],
     USER, "not a readable checkpoint"),
    ("resume with another lr", ["train", "lenet", *SYN, "--checkpoint", "{p}/run.ckpt", "--resume", "--lr", "0.1"],
     USER, "lr was 0.002, now 0.1 (--resume-anyway allows"),
    ("resume with another batch", ["train", "lenet", *SYN, "--checkpoint", "{p}/run.ckpt", "--resume-anyway",
                                   "--batch-size", "16"], USER, "batch_size was 32, now 16"),
    ("resume with another model", ["train", "lenet", *SYN, "--checkpoint", "{p}/run.ckpt", "--resume",
                                   "--batch-norm"], USER, "model_options was {}, now {'batch_norm': True}"),
    # model files, weights and freezing (issue 13's commands)
    ("predict a checkpoint", ["predict", "{p}/run.ckpt", "{p}/digit.png"], USER,
     "run.ckpt is a training checkpoint (train --checkpoint, for --resume), not a model file"),
    ("predict without model file", ["predict", "{p}/none.npz", "{p}/digit.png"], USER, "no model file at"),
    ("predict a missing image", ["predict", "{p}/model.npz", "{p}/none.png"], USER, "predict: no image file"),
    ("predict a broken image", ["predict", "{p}/model.npz", "{p}/junk.png"], USER, "cannot decode image"),
    ("predict top zero", ["predict", "{p}/model.npz", "{p}/digit.png", "--top", "0"], USER, "--top"),
    ("export to a missing dir", ["export", "{p}/model.npz", "{p}/nodir/m.onnx"], USER, "does not exist"),
    ("export onto a directory", ["export", "{p}/model.npz", "{p}"], USER, "is a directory"),
    ("export a checkpoint", ["export", "{p}/run.ckpt", "{p}/m.onnx"], USER, "not a model file"),
    ("resume from a model file", ["train", "lenet", *SYN, "--checkpoint", "{p}/model.npz", "--resume"], USER,
     "model.npz is an engine model file"),
    ("weights missing", ["train", "lenet", *SYN, "--weights", "{p}/none.pt"], USER, "no file"),
    ("weights not a weights file", ["train", "lenet", *SYN, "--weights", "{p}/junk.png"], USER,
     "is not a weights file"),
    ("weights of another model", ["train", "alexnet-small", *SYN, "--weights", "{p}/model.npz"], USER,
     "a state dict for another model?"),
    ("freeze an unknown layer", ["train", "lenet", *SYN, "--freeze", "nosuch"], USER, "has no layer or block 'nosuch'"),
    ("freeze every layer", ["train", "lenet", *SYN, "--freeze", "11"], USER,
     "--freeze 11: that freezes every layer with parameters, and nothing would train"),
    ("save into a missing dir", ["train", "lenet", *SYN, "--save", "{p}/nodir/m.npz"], USER, "--save: the directory"),
    ("patience without validation", ["train", "lenet", "--patience", "2", "--val-split", "0"], USER,
     "--patience needs a validation split"),
    # compare: run summaries of train --json
    ("compare without runs", ["compare"], USER, "the following arguments are required: runs"),
    ("compare run missing", ["compare", "{p}/run.json", "{p}/missing.json"], USER,
     "compare: no run file {p}/missing.json"),
    ("compare not json", ["compare", "{p}/nets.py"], USER, "compare: {p}/nets.py is not JSON"),
    ("compare not a run", ["compare", "{p}/run.json", "{p}/notrun.json"], USER,
     "compare: {p}/notrun.json is not a run summary of train --json"),
    ("compare out dir missing", ["compare", "{p}/run.json", "--out", "{p}/nodir/c.png"], USER,
     "--out: the directory {p}/nodir does not exist"),
    ("compare out is a directory", ["compare", "{p}/run.json", "--out", "{p}"], USER, "--out: {p} is a directory"),
    # inspect: a trained model and an image
    ("inspect image missing", ["inspect", "lenet", "{p}/missing.png", "--checkpoint", "{p}/run.ckpt", "--out",
                               "{p}/inside"], USER, "inspect: no image file {p}/missing.png"),
    ("inspect image not decodable", ["inspect", "lenet", "{p}/broken/train/a/0.png", "--checkpoint", "{p}/run.ckpt",
                                     "--out", "{p}/inside"], USER,
     "inspect: cannot decode image {p}/broken/train/a/0.png"),
    ("inspect unknown layer", ["inspect", "lenet", "{p}/digit.png", "--checkpoint", "{p}/run.ckpt", "--out",
                               "{p}/inside", "--layers", "3,conv9"], USER,
     "inspect: --layers: no layer named 'conv9'; the model's layers are 0, 1, 2, 3"),
    ("inspect out parent missing", ["inspect", "lenet", "{p}/digit.png", "--checkpoint", "{p}/run.ckpt", "--out",
                                    "{p}/nodir/inside"], USER, "--out: the directory {p}/nodir does not exist"),
    ("inspect out is a file", ["inspect", "lenet", "{p}/digit.png", "--checkpoint", "{p}/run.ckpt", "--out",
                               "{p}/a_file"], USER, "--out: {p}/a_file is a file"),
    ("inspect checkpoint of another model", ["inspect", "alexnet", "{p}/digit.png", "--checkpoint", "{p}/run.ckpt",
                                             "--out", "{p}/inside"], USER,
     "inspect: {p}/run.ckpt is a checkpoint of lenet, not of alexnet"),
    ("inspect foreign checkpoint", ["inspect", "lenet", "{p}/digit.png", "--checkpoint", "{p}/other.npz", "--out",
                                    "{p}/inside"], USER, "is an .npz archive but not a checkpoint"),
    ("inspect checkpoint missing", ["inspect", "lenet", "{p}/digit.png", "--checkpoint", "{p}/none.ckpt", "--out",
                                    "{p}/inside"], USER, "no checkpoint file at {p}/none.ckpt"),
    ("inspect no model file", ["inspect", "lenet", "{p}/digit.png", "--out", "{p}/inside"], USER,
     "inspect: no model file lenet; give a model file (train --save), or the model's name"),
    ("inspect top zero", ["inspect", "lenet", "{p}/digit.png", "--top", "0"], USER, "--top: expected an integer >= 1"),
    ("inspect a checkpoint as a model file", ["inspect", "{p}/run.ckpt", "{p}/digit.png", "--out", "{p}/inside"], USER,
     "run.ckpt is a training checkpoint (train --checkpoint, for --resume), not a model file"),
    # found by trying a dozen more mistakes by hand
    ("image size beyond memory", ["train", "lenet", *SYN, "--image-size", "100000"], USER,
     "error: out of memory: Unable to allocate"),
    ("validate unknown op", ["validate", "--op", "nosuch"], USER, "validate: --op: unknown op(s) ['nosuch']"),
    ("export opset beyond onnx", ["export", "{p}/model.npz", "{p}/m.onnx", "--opset", "99"], USER,
     "export: opset must be an int in [17, "),
    ("idx counts differ", ["train", "lenet", "--data", "idx:{p}/idx_counts"], USER,
     "count mismatch: {p}/idx_counts/t10k-images-idx3-ubyte holds 5 images but"),
    ("idx file truncated", ["train", "lenet", "--data", "idx:{p}/idx_truncated"], USER,
     "read_idx: {p}/idx_truncated/train-images-idx3-ubyte declares shape (12, 5, 4)"),
    ("idx path is a file", ["train", "lenet", "--data", "idx:{p}/idx_counts/train-images-idx3-ubyte"], USER,
     "no directory {p}/idx_counts/train-images-idx3-ubyte"),
    ("predict a truncated model file", ["predict", "{p}/truncated.npz", "{p}/digit.png"], USER,
     "truncated.npz is not a readable model file (truncated"),
    ("weights truncated", ["train", "lenet", *SYN, "--weights", "{p}/truncated.npz"], USER,
     "truncated.npz is a damaged zip archive"),
    ("resume with another schedule", ["train", "lenet", *SYN, "--checkpoint", "{p}/run.ckpt", "--resume",
                                      "--schedule", "step"], USER,
     "schedule was 'cosine over 1 epochs', now 'step over 1 epochs'"),
    ("resume with another data set", ["train", "lenet", *SYN, "--synthetic-size", "128", "--checkpoint",
                                      "{p}/run.ckpt", "--resume"], USER,
     "data was 'synthetic (64 images)', now 'synthetic (128 images)'"),
    ("resume with another epoch count", ["train", "lenet", *SYN, "--epochs", "3", "--checkpoint", "{p}/run.ckpt",
                                         "--resume"], USER,
     "schedule was 'cosine over 1 epochs', now 'cosine over 3 epochs'"),
    ("json under a file", ["train", "lenet", "--json", "{p}/a_file/run.json"], USER, "--json: {p}/a_file is not a"),
    ("val split leaves nothing to train", ["train", "lenet", *SYN, "--val-split", "0.99"], USER,
     "--val-split 0.99 of 64 training images leaves 0 to train on"),
    ("lr-find min-lr nan", ["lr-find", "lenet", "--min-lr", "nan"], USER, "--min-lr: expected a finite number"),
    ("summary input too small", ["summary", "lenet", "--input-shape", "1,2,2"], USER, "gives an empty output"),
    ("predict top not a number", ["predict", "{p}/model.npz", "{p}/digit.png", "--top", "two"], USER,
     "--top: expected an integer, got 'two'"),
    ("inspect a model file with a checkpoint", ["inspect", "{p}/model.npz", "{p}/digit.png", "--checkpoint",
                                                "{p}/run.ckpt", "--out", "{p}/inside"], USER,
     "is a checkpoint of lenet, not of {p}/model.npz"),
]


@pytest.mark.parametrize("argv, code, message", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_a_mistake_is_one_error_line(place, argv, code, message):
    p = str(place)
    argv = [a.replace("{p}", p) for a in argv]
    before = sorted(os.listdir(place))
    mtime = os.path.getmtime(place / "run.ckpt")
    result = engine(*argv, cwd=place)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert message.replace("{p}", p) in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    # nothing written, nothing half written: the directory is as it was, the checkpoint untouched
    assert sorted(os.listdir(place)) == before
    assert os.path.getmtime(place / "run.ckpt") == mtime


def test_the_matrix_is_large_enough():
    assert len(ROWS) >= 40 and len({r[0] for r in ROWS}) == len(ROWS)


def test_a_diverged_run_exits_3_and_writes_strict_json(tmp_path):
    diverge = ["train", "lenet", *SYN, "--optimizer", "sgd", "--lr", "1e9", "--json", str(tmp_path / "run.json")]
    result = engine(*diverge, cwd=tmp_path)
    assert result.returncode == NONFINITE, result.stderr[-2000:]
    assert result.stderr.strip().startswith("error: fit: loss became nan") and "Traceback" not in result.stderr
    assert not (tmp_path / "run.json").exists()  # raised before anything was written

    result = engine(*diverge, "--on-nonfinite", "stop", cwd=tmp_path)
    assert result.returncode == NONFINITE
    assert "--on-nonfinite stop" in result.stderr.splitlines()[-1]
    text = (tmp_path / "run.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert summary["stopped_nonfinite"].startswith("epoch 1")
    assert summary["nonfinite"] and summary["test"]["loss"] is None  # null, and a flag saying where

    result = engine(*diverge, "--on-nonfinite", "ignore", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["nonfinite"] and summary["stopped_nonfinite"] is None


def test_an_internal_error_keeps_its_traceback_and_debug_shows_any(monkeypatch, capsys):
    import engine.__main__ as main_module

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(main_module, "cmd_summary", broken)
    assert cli(["summary", "lenet"]) == INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err and "internal error: this is a bug" in err
    assert cli(["train", "lenet", "--data", "nowhere", "--debug"]) == USER
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: --data must be")


def test_resume_anyway_says_what_it_reset(tmp_path, capsys):
    ckpt = str(tmp_path / "c.ckpt")
    assert cli(["train", "lenet", *SYN, "--epochs", "1", "--checkpoint", ckpt]) == 0
    capsys.readouterr()
    assert cli(["train", "lenet", *SYN, "--epochs", "1", "--checkpoint", ckpt, "--resume-anyway",
                "--optimizer", "sgd"]) == 0
    out = capsys.readouterr().out
    assert "resume anyway: optimizer was {'kind': 'adamw'" in out
    assert "resume anyway: another kind of optimizer: its state (momentum, moments) starts from zero" in out
    assert "resume anyway: lr was 0.002, now 0.01" in out


def test_a_reader_that_goes_away_is_no_error():
    # python -m engine ... | head: the pipe closes early; no error line, no traceback
    import subprocess
    import sys
    code = ("import sys; from engine import cli; "
            "sys.exit(cli.run(lambda argv: [print('x' * 100) for _ in range(100000)] and 0, []))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err
    assert err == "", err
