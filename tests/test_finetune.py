"""Transfer learning end to end, as a course does it: a LeNet trained on digits 0-4, saved as a
PyTorch state dict, loaded into a LeNet with a new 10-way head (strict=False: the old 5-way
head does not fit and is listed as skipped), its conv trunk frozen, fine-tuned on digits
5-9 of the bundled data. Nothing is downloaded: the test trains the base network itself."""
from __future__ import annotations

import numpy as np
import pytest

from engine import nn
from engine.data import DataLoader, load_bundled_mnist
from engine.executor import Executor
from engine.models import lenet5
from engine.optim import Adam
from engine.training import evaluate, fit

pytestmark = pytest.mark.slow


def quiet(line):
    pass


def test_a_frozen_pretrained_trunk_with_a_new_head_learns_digits_5_to_9(tmp_path):
    torch = pytest.importorskip("torch")
    (x, y), (x_test, y_test) = load_bundled_mnist()
    low, high, test_high = y < 5, y >= 5, y_test >= 5

    nn.manual_seed(0)
    base = Executor(lenet5(num_classes=5), (1, 28, 28), optimizer=Adam(2e-3))
    fit(base, DataLoader(x[low], y[low], 32, seed=0), 3, progress=False, log=quiet)
    assert evaluate(base, x_test[~test_high], y_test[~test_high])["accuracy"] >= 0.95
    torch.save({name: torch.from_numpy(a) for name, a in base.weights().items()}, tmp_path / "digits0-4.pt")

    def fine_tuned(weights):
        nn.manual_seed(1)
        model = lenet5(num_classes=10)
        nn.freeze(model, "5")  # conv, ReLU, pool, conv, ReLU, pool: the convolutional trunk
        ex = Executor(model, (1, 28, 28), optimizer=Adam(2e-3))
        report = ex.load_weights(weights, strict=False) if weights else None
        fit(ex, DataLoader(x[high], y[high], 32, seed=0), 2, progress=False, log=quiet)
        return ex, report, evaluate(ex, x_test[test_high], y_test[test_high])["accuracy"]

    ex, report, accuracy = fine_tuned(tmp_path / "digits0-4.pt")
    assert [name for name, _, _ in report.mismatched] == ["11.weight", "11.bias"]  # the old head, skipped
    assert "11.weight is (5, 84) in the source, (10, 84) in the model" in str(report)
    assert sorted(report.loaded) == sorted(k for k in base.weights() if not k.startswith("11."))
    assert accuracy >= 0.90, accuracy
    trunk = [k for k in base.weights() if int(k.split(".")[0]) <= 5]
    assert all(np.array_equal(ex.named_parameters()[k], base.weights()[k]) for k in trunk), "the trunk moved"

    # the pretrained trunk is what does it: a random frozen trunk, trained the same way, does worse
    _, _, control = fine_tuned(None)
    print(f"digits 5-9: fine-tuned {accuracy:.3f}, random frozen trunk {control:.3f} (2 epochs each)")
    assert accuracy >= control + 0.03, (accuracy, control)
