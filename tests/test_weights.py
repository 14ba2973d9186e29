"""Weights from elsewhere (engine.weights, Executor.load_weights) and arrays across libraries.

PyTorch state dicts load by torch's names into the engine's models and then predict as
torch does; safetensors, .npz and model files round-trip bit for bit; a file that does not
fit is refused naming every missing, unexpected and mis-shaped array, or with strict=False
loaded where it fits and reported; unreadable and foreign files are one clear error each.
Every file here is made by the test itself.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import engine.functional as F
from engine import nn
from engine.executor import Executor
from engine.models import lenet5, resnet8
from engine.optim import SGD
from engine.tolerances import assert_close, tol
from engine.weights import read_weights

X = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)


def lenet_executor(seed=0, classes=10, **kw):
    nn.manual_seed(seed)
    return Executor(lenet5(num_classes=classes, **kw), (1, 28, 28), optimizer=SGD(0.1))


def trained_resnet8(seed=0):
    """A small ResNet whose batch-norm running statistics are not 0 and 1."""
    nn.manual_seed(seed)
    ex = Executor(resnet8(), (1, 28, 28), optimizer=SGD(0.05))
    rng = np.random.default_rng(seed)
    for _ in range(2):
        ex.train_step(rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8))
    return ex


# ------------------------------------------------------------------ from torch


def test_a_torch_state_dict_loads_by_name_and_predicts_as_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from engine.models import torch_twin
    torch.manual_seed(0)
    twin = torch_twin("lenet")
    torch.save(twin.state_dict(), tmp_path / "lenet.pth")
    ex = lenet_executor(seed=5)
    report = ex.load_weights(tmp_path / "lenet.pth")
    assert report.complete and len(report.loaded) == 10 and "loaded 10 arrays" in str(report)
    assert_close(ex.predict(X), twin(torch.from_numpy(X)).detach().numpy(), **tol("training"), what="logits")


def test_batch_norm_running_statistics_come_along_and_num_batches_tracked_is_ignored(tmp_path):
    torch = pytest.importorskip("torch")
    source = trained_resnet8(seed=1)
    state = {k: torch.from_numpy(v) for k, v in source.weights().items()}
    for k in [k for k in state if k.endswith("running_var")]:
        state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(2)
    state = {f"module.{k}": v for k, v in state.items()}  # as DataParallel saves it
    torch.save({"model": state, "epoch": 3}, tmp_path / "resnet8.pt")  # as training scripts save it
    ex = trained_resnet8(seed=2)
    report = ex.load_weights(tmp_path / "resnet8.pt")
    norms = sum(k.endswith("running_var") for k in source.weights())  # 9 batch norms in a ResNet-8
    assert report.complete and len(report.ignored) == norms and f"ignored {norms} num_batches_tracked" in str(report)
    assert "layer1.0.bn1.running_mean" in report.loaded
    for name, value in source.weights().items():
        assert np.array_equal(ex.weights()[name], value), name
    assert np.array_equal(ex.predict(X), source.predict(X))


def test_torchvision_state_dicts_load_into_alexnet_and_resnet18():
    """torchvision's own AlexNet and ResNet-18 (where torchvision imports): every name fits."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from engine.models import alexnet, resnet18
    torch.manual_seed(0)
    for theirs, ours in ((torchvision.models.alexnet, alexnet), (torchvision.models.resnet18, resnet18)):
        model = theirs(weights=None, num_classes=10).eval()
        ex = Executor(ours(num_classes=10), (3, 64, 64))
        assert ex.load_weights(model.state_dict()).complete
        x = torch.randn(2, 3, 64, 64)
        assert_close(ex.predict(x.numpy()), model(x).detach().numpy(), **tol("training"), what=ours.__name__)


def test_tensors_that_require_grad_and_other_dtypes_are_taken(tmp_path):
    torch = pytest.importorskip("torch")
    source = lenet_executor(seed=3)
    given = {k: torch.from_numpy(v.astype(np.float64)).requires_grad_() for k, v in source.weights().items()}
    ex = lenet_executor(seed=4)
    assert ex.load_weights(given).complete
    assert all(np.array_equal(ex.weights()[k], v) for k, v in source.weights().items())


# ------------------------------------------------------------------ file formats


@pytest.mark.parametrize("kind", ["safetensors", "npz", "model file"])
def test_other_formats_round_trip_bit_for_bit(tmp_path, kind):
    source = trained_resnet8(seed=3)
    path = tmp_path / "w"
    if kind == "safetensors":
        safetensors_numpy = pytest.importorskip("safetensors.numpy")
        safetensors_numpy.save_file(source.weights(), str(path))
    elif kind == "npz":
        np.savez(path, **source.weights())
        path = tmp_path / "w.npz"
    else:
        from engine.modelfile import save_model
        save_model(path, source, "resnet8")
    assert set(read_weights(path)) == set(source.weights())
    ex = trained_resnet8(seed=4)
    assert ex.load_weights(path).complete
    assert np.array_equal(ex.predict(X), source.predict(X))


# ------------------------------------------------------------------ what does not fit


def test_strict_loading_names_every_problem_and_copies_nothing(tmp_path):
    weights = lenet_executor(seed=1).weights()
    weights["0.weight"] = weights["0.weight"][:3]          # another shape
    weights["conv9.weight"] = np.zeros(3, np.float32)      # unknown to the model
    del weights["7.bias"]                                  # missing
    np.savez(tmp_path / "w.npz", **weights)
    ex = lenet_executor(seed=2)
    before = ex.weights()
    with pytest.raises(ValueError) as info:
        ex.load_weights(tmp_path / "w.npz")
    message = str(info.value)
    for fragment in ("load_weights: ", "w.npz does not fit the model", "0.weight is (3, 1, 5, 5) in the source, "
                     "(6, 1, 5, 5) in the model", "1 of the model's not in the source: 7.bias",
                     "1 in the source unknown to the model: conv9.weight", "strict=False", "loads the 8 that fit"):
        assert fragment in message, (fragment, message)
    assert all(np.array_equal(before[k], v) for k, v in ex.weights().items()), "a refused load copied something"


def test_non_strict_loading_keeps_the_new_head_and_lists_what_it_skipped():
    source = lenet_executor(seed=1, classes=5).weights()
    ex = lenet_executor(seed=2, classes=10)
    head = ex.weights()["11.weight"]
    with pytest.raises(ValueError, match=r"\(a head for 5 classes; the model has 10\)"):
        ex.load_weights(source)
    report = ex.load_weights(source, strict=False)
    assert not report.complete and len(report.loaded) == 8
    assert [m[0] for m in report.mismatched] == ["11.weight", "11.bias"]
    assert "skipped 2 of another shape: 11.weight is (5, 84) in the source, (10, 84) in the model" in str(report)
    assert np.array_equal(ex.weights()["11.weight"], head)
    assert np.array_equal(ex.weights()["0.weight"], source["0.weight"])


def test_a_state_dict_for_another_model_is_refused_even_when_not_strict():
    source = trained_resnet8().weights()
    ex = lenet_executor()
    for strict in (True, False):
        with pytest.raises(ValueError, match=rf"load_weights: none of the {len(source)} arrays in the given dict "
                                             r"fits the model \(no name in common: a state dict for another model\? "
                                             r"the source has bn1.bias, .* the model has 0.weight, 0.bias"):
            ex.load_weights(source, strict=strict)


def test_arrays_that_are_not_finite_numbers_are_refused():
    weights = lenet_executor().weights()
    bad = dict(weights, **{"3.bias": np.full(16, np.nan, np.float32)})
    with pytest.raises(ValueError, match="load_weights: 3.bias in the given dict holds NaN or infinite values"):
        lenet_executor().load_weights(bad)
    text = dict(weights, **{"3.bias": np.array(["a"] * 16)})
    with pytest.raises(ValueError, match="load_weights: 3.bias in the given dict has dtype <U1; expected numbers"):
        lenet_executor().load_weights(text)
    with pytest.raises(TypeError, match="load_weights: expected a file path or a dict of arrays, got list"):
        lenet_executor().load_weights([1, 2])


# ------------------------------------------------------------------ unreadable and foreign files


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_files_are_one_clear_error_each(tmp_path):
    weights = lenet_executor().weights()
    np.savez(tmp_path / "w.npz", **weights)
    with pytest.raises(ValueError, match=r"weights: .*w.npz is a damaged zip archive \(truncated\?\)"):
        read_weights(_truncated(tmp_path / "w.npz"))
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file(weights, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"weights: .*w.safetensors cannot be read as a safetensors file "
                                         r"\(truncated or damaged\?\)"):
        read_weights(_truncated(tmp_path / "w.safetensors"))
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"weights: .*w.pt is a damaged zip archive"):
        read_weights(_truncated(tmp_path / "w.pt"))


def test_foreign_files_are_named_with_what_was_expected(tmp_path):
    png = tmp_path / "photo.pt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    expected = "expected a PyTorch state dict (.pt/.pth), a safetensors file or an .npz archive"
    with pytest.raises(ValueError, match=rf"weights: .*photo.pt is not a weights file: {re.escape(expected)}; it "
                                         r"starts with bytes 89 50 4e 47"):
        read_weights(png)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pth is not a weights file.*\(none: the file is empty\)"):
        read_weights(tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match="weights: no file .*missing.pt"):
        read_weights(tmp_path / "missing.pt")
    from engine.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "ck.npz", {"executor": lenet_executor().state_dict()})
    with pytest.raises(ValueError, match=r"ck.npz is a training checkpoint \(train --checkpoint; it resumes a run "
                                         r"with --resume\), not a weights file"):
        read_weights(tmp_path / "ck.npz")


def test_a_pickled_module_is_not_unpickled(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ValueError, match=r"module.pt holds more than tensors \(a whole pickled model\?\), which is "
                                         r"not loaded because unpickling it could run code; save model.state_dict"):
        read_weights(tmp_path / "module.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list.pt holds a list, not a state dict"):
        read_weights(tmp_path / "list.pt")


# ------------------------------------------------------------------ DLPack: no copies across libraries


def test_parameters_predictions_and_activations_cross_to_torch_without_copies():
    torch = pytest.importorskip("torch")
    ex = lenet_executor()
    weight = torch.from_dlpack(ex.named_parameters()["0.weight"])  # the engine's own memory
    weight[0, 0, 0, 0] = 42.0
    assert ex.named_parameters()["0.weight"][0, 0, 0, 0] == 42.0
    logits = ex.predict(X)
    shared = torch.from_dlpack(logits)
    assert shared.data_ptr() == logits.__array_interface__["data"][0]
    assert_close(F.softmax(logits, dim=1), torch.softmax(shared, 1).numpy(), **tol("loss"), what="probabilities")
    # and back: a torch tensor as the engine's input, an activation of the engine as torch's
    t = torch.randn(2, 3, 8, 8)
    x = np.from_dlpack(t)
    assert x.__array_interface__["data"][0] == t.data_ptr()
    y = F.relu(x)
    assert torch.equal(torch.from_dlpack(y), torch.relu(t))
