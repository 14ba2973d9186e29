"""The model file (engine.modelfile; train --save, predict, export) and the line between it
and the checkpoint: each names the other when given it.

A model file is rebuilt without the user's code for built-in models, from FILE.py:NAME for
a user's model, predicts exactly what the executor that saved it predicted, and decodes
image files as the training data was read. Every user mistake on the command line is one
`error:` line and exit code 2.
"""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import engine
from engine import nn
from engine.__main__ import main as cli
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.executor import Executor
from engine.modelfile import load_model, save_model
from engine.models import build_model, lenet5
from engine.optim import SGD

X = np.random.default_rng(0).standard_normal((6, 1, 28, 28)).astype(np.float32)


def trained(spec="lenet", classes=10, channels=1, shape=(1, 28, 28), **options):
    nn.manual_seed(0)
    ex = Executor(build_model(spec, classes, channels, **options), shape, optimizer=SGD(0.05, momentum=0.9))
    rng = np.random.default_rng(1)
    for _ in range(2):
        ex.train_step(rng.standard_normal((8, *shape)).astype(np.float32), rng.integers(0, classes, 8))
    return ex


def test_a_model_file_holds_what_prediction_needs_and_rebuilds_the_model(tmp_path):
    ex = trained(batch_norm=True, dropout=0.2)
    path = tmp_path / "lenet.npz"
    save_model(path, ex, class_names=[f"digit {i}" for i in range(10)], mean=0.13, std=0.31)
    with np.load(path, allow_pickle=False) as archive:  # no pickle needed to read any of it
        meta = json.loads(archive["__engine_model__"].tobytes())
        assert set(archive.files) == {"__engine_model__", *ex.weights()}
    assert meta["kind"] == "engine-model" and meta["engine_version"] == engine.__version__
    assert meta["architecture"] == {"model": "lenet", "num_classes": 10, "in_channels": 1,
                                    "options": {"batch_norm": True, "dropout": 0.2}}
    assert meta["input_shape"] == [1, 28, 28] and meta["mean"] == [0.13] and meta["std"] == [0.31]
    assert meta["preprocess"] == {"resize": 28, "crop": 28}
    saved = load_model(path)
    assert saved.class_names[3] == "digit 3" and saved.input_shape == (1, 28, 28)
    assert np.array_equal(saved.executor.predict(X), ex.predict(X))  # the same bits, running stats included
    probabilities = saved.predict(X)
    assert probabilities.shape == (6, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    assert np.array_equal(probabilities.argmax(1), ex.predict(X).argmax(1))


def test_a_users_model_is_rebuilt_from_its_file_wherever_predict_runs(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.py").write_text(
        "from engine import nn\n"
        "def tiny(num_classes=10, in_channels=1, hidden=16):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, hidden), nn.ReLU(),\n"
        "                         nn.Linear(hidden, num_classes))\n")
    monkeypatch.chdir(tmp_path / "models")
    ex = trained("mine.py:tiny", hidden=8)
    save_model(tmp_path / "tiny.npz", ex)
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded path is absolute
    saved = load_model(tmp_path / "tiny.npz")
    assert saved.architecture["model"] == f"{tmp_path / 'models' / 'mine.py'}:tiny"
    assert np.array_equal(saved.executor.predict(X), ex.predict(X))
    (tmp_path / "models" / "mine.py").rename(tmp_path / "moved.py")
    with pytest.raises(ValueError, match=r"load_model: .*tiny.npz describes the model .*mine.py:tiny.*no file"):
        load_model(tmp_path / "tiny.npz")
    assert load_model(tmp_path / "tiny.npz", model=str(tmp_path / "moved.py") + ":tiny").class_names


def test_save_model_needs_to_know_the_architecture_and_checks_it(tmp_path):
    nn.manual_seed(0)
    ex = Executor(lenet5(), (1, 28, 28))  # built directly, not through build_model: no record
    with pytest.raises(ValueError, match="save_model: the model does not say how to rebuild it; pass architecture="):
        save_model(tmp_path / "m.npz", ex)
    with pytest.raises(ValueError, match="save_model: the architecture .*resnet8.* rebuilds another model"):
        save_model(tmp_path / "m.npz", ex, "resnet8")
    with pytest.raises(ValueError, match="save_model: 3 class names for a model with 10 outputs"):
        save_model(tmp_path / "m.npz", ex, "lenet", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"save_model: std must be one finite number or 1"):
        save_model(tmp_path / "m.npz", ex, "lenet", std=[1, 2])
    with pytest.raises(TypeError, match="save_model: expected the Executor that trained the model, got Sequential"):
        save_model(tmp_path / "m.npz", lenet5())
    with pytest.raises(FileNotFoundError, match="save_model: the directory .*no.* does not exist"):
        save_model(tmp_path / "no" / "m.npz", ex, "lenet")
    assert not (tmp_path / "m.npz").exists()
    save_model(tmp_path / "m.npz", ex, "lenet")
    assert np.array_equal(load_model(tmp_path / "m.npz").executor.predict(X), ex.predict(X))


def test_model_files_and_checkpoints_name_each_other(tmp_path):
    ex = trained()
    save_model(tmp_path / "model.npz", ex)
    save_checkpoint(tmp_path / "ck.npz", {"executor": ex.state_dict()})
    with pytest.raises(ValueError, match=r"load_model: .*ck.npz is a training checkpoint \(train --checkpoint, for "
                                         r"--resume\), not a model file; write one with train --save"):
        load_model(tmp_path / "ck.npz")
    with pytest.raises(ValueError, match=r"load_checkpoint: .*model.npz is an engine model file \(train --save: for "
                                         r"predict, export and --weights\), not a training checkpoint"):
        load_checkpoint(tmp_path / "model.npz")
    np.savez(tmp_path / "weights.npz", **ex.weights())
    with pytest.raises(ValueError, match=r"weights.npz is an .npz archive but not an engine model file .* give it "
                                         r"to train --weights"):
        load_model(tmp_path / "weights.npz")


def test_damaged_model_files_are_refused_naming_the_file(tmp_path):
    ex = trained()
    good = tmp_path / "good.npz"
    save_model(good, ex)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"load_model: .*truncated.npz is not a readable model file"):
        load_model(truncated)
    with pytest.raises(FileNotFoundError, match="load_model: no model file at .*absent.npz"):
        load_model(tmp_path / "absent.npz")
    newer = tmp_path / "newer.npz"
    with zipfile.ZipFile(good) as z:
        arrays = {name[:-4]: np.load(z.open(name)) for name in z.namelist()}
    meta = json.loads(arrays["__engine_model__"].tobytes())
    meta["version"] = 99
    arrays["__engine_model__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(newer, **arrays)
    with pytest.raises(ValueError, match=r"newer.npz has model file version 99; this engine .* reads version 1"):
        load_model(newer)
    arrays["__engine_model__"] = np.frombuffer(json.dumps({**meta, "version": 1}).encode(), np.uint8)
    arrays["11.weight"] = arrays["11.weight"][:5]
    np.savez(tmp_path / "other_head.npz", **arrays)
    with pytest.raises(ValueError, match=r"the weights in .*other_head.npz do not fit its architecture: .*11.weight "
                                         r"is \(5, 84\) in the source, \(10, 84\) in the model"):
        load_model(tmp_path / "other_head.npz")


# ------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A LeNet trained for an epoch by the CLI with --save, and PNG files of bundled test digits."""
    Image = pytest.importorskip("PIL.Image")
    from engine.data import load_bundled_mnist
    root = tmp_path_factory.mktemp("predict")
    model = root / "lenet.npz"
    assert cli(["train", "lenet", "--epochs", "1", "--device", "cpu", "--no-progress", "--val-split", "0",
                "--save", str(model)]) == 0
    ds = load_bundled_mnist()
    pixels = np.rint((ds.test.x[:8, 0] * ds.std[0] + ds.mean[0]) * 255).astype(np.uint8)  # back to the bytes
    paths = []
    for i, image in enumerate(pixels):
        paths.append(str(root / f"digit{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return model, paths, ds.test.x[:8], ds.test.y[:8]


def test_predict_decodes_images_as_training_read_them(digits, capsys):
    model, paths, x, y = digits
    capsys.readouterr()
    assert cli(["predict", str(model), *paths, "--json", "--top", "3", "--device", "cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    saved = load_model(model)
    expected = saved.predict(x)  # the very images, as the data set holds them
    for result, row in zip(results, expected):
        assert [g["index"] for g in result["top"]] == list(np.argsort(-row)[:3])
        assert abs(result["top"][0]["probability"] - row.max()) < 1e-4
        assert result["top"][0]["class"] == saved.class_names[result["top"][0]["index"]]
    assert sum(r["top"][0]["index"] == label for r, label in zip(results, y)) >= 6  # it learned something
    assert cli(["predict", str(model), paths[0], "--top", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and len(lines) == 3 and lines[1].split()[0] == results[0]["top"][0]["class"]


def test_predict_and_export_errors_are_one_line_each(digits, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    model, paths, _, _ = digits
    save_checkpoint(tmp_path / "ck.npz", {"step": 1})
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((28, 28), np.float32), mode="F").save(tmp_path / "float.tiff")
    cases = [
        (["predict", str(tmp_path / "ck.npz"), paths[0]], "is a training checkpoint"),
        (["predict", str(model), str(tmp_path / "broken.png")], "predict: cannot decode image"),
        (["predict", str(model), str(tmp_path / "float.tiff")], "float.tiff is a floating-point image (mode F)"),
        (["predict", str(model), str(tmp_path / "none.png")], "predict: no image file"),
        (["predict", str(model), paths[0], "--top", "0"], "predict: argument --top: expected an integer >= 1, got 0"),
        (["export", str(model), str(tmp_path / "no" / "x.onnx")], "export: the directory"),
        (["export", str(tmp_path / "ck.npz"), str(tmp_path / "x.onnx")], "is a training checkpoint"),
        (["train", "lenet", "--epochs", "1", "--no-progress", "--checkpoint", str(model), "--resume"],
         "is an engine model file"),
    ]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)


def test_train_starts_from_weights_freezes_and_saves(digits, tmp_path, capsys):
    model, _, _, _ = digits
    base = ["train", "lenet", "--data", "synthetic", "--synthetic-size", "64", "--epochs", "1", "--device", "cpu",
            "--no-progress", "--image-size", "28"]
    capsys.readouterr()
    assert cli([*base, "--weights", str(model), "--freeze", "5", "--save", str(tmp_path / "tuned.npz")]) == 0
    out = capsys.readouterr().out
    assert f"loaded 10 arrays from {model}" in out and "frozen: 0 to 5 (6 layers, 2,572 parameters)" in out
    tuned, start = load_model(tmp_path / "tuned.npz"), load_model(model)
    trunk, head = tuned.executor.weights(), start.executor.weights()
    assert np.array_equal(trunk["3.weight"], head["3.weight"]) and not np.array_equal(trunk["7.weight"],
                                                                                      head["7.weight"])
    assert cli([*base, "--weights", str(tmp_path / "ck.npz")]) == 2
    assert "weights: no file" in capsys.readouterr().err
    assert cli(["train", "resnet8", *base[2:], "--weights", str(model)]) == 2
    assert "a state dict for another model?" in capsys.readouterr().err
    assert cli([*base, "--freeze", "features"]) == 2
    assert "freeze: the model has no layer or block 'features'; its layers are 0, 1, 2" in capsys.readouterr().err
    assert cli(["summary", "resnet8", "--freeze", "layer2"]) == 0
    assert "Frozen params: " in capsys.readouterr().out


def test_export_writes_a_checked_onnx_file(digits, tmp_path, capsys):
    pytest.importorskip("onnx")
    model, _, _, _ = digits
    capsys.readouterr()
    assert cli(["export", str(model), str(tmp_path / "lenet.onnx")]) == 0
    assert "ONNX opset 17, 12 nodes, checked with onnx.checker" in capsys.readouterr().out
    import onnx
    assert onnx.load(str(tmp_path / "lenet.onnx")).opset_import[0].version == 17
