"""The models: AlexNet and its variants, ResNet-18 and the small ResNet, in torchvision's
layout; residual joins written `a + b`; repr and summary; a user's model from a file."""
from __future__ import annotations

import numpy as np
import pytest

from engine import nn
from engine.executor import Executor
from engine.graph import Model, summary, trace
from engine.models import (AlexNet, alexnet, alexnet_flat, alexnet_narrow, alexnet_small, build_model, lenet5,
                           resnet18, resnet8)
from engine.optim import SGD
from engine.tolerances import assert_close, tol


def layer_paths(model):
    return [path for path, _ in model.named_layers()]


def test_parameter_counts_are_torchvisions():
    assert "Total params: 61,100,840" in summary(alexnet(), (3, 224, 224))
    assert "Total params: 11,689,512" in summary(resnet18(), (3, 224, 224))


def test_layer_paths_are_torchvisions_parameter_names():
    paths = layer_paths(alexnet())
    assert [p for p in paths if p.startswith("features")][:4] == ["features.0", "features.1", "features.2", "features.3"]
    assert {"features.10", "features.12", "avgpool", "classifier.1", "classifier.4", "classifier.6"} <= set(paths)
    paths = layer_paths(resnet18())
    assert paths[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert {"layer1.0.conv1", "layer1.1.bn2", "layer2.0.downsample.0", "layer2.0.downsample.1", "layer4.1.conv2",
            "avgpool", "fc"} <= set(paths)
    assert "layer1.0.downsample.0" not in paths  # stage 1 keeps the shape: no downsampling branch


def test_alexnet_takes_any_input_that_leaves_a_map_and_names_the_smallest():
    model = alexnet(num_classes=7)
    assert model.min_size == 63
    assert trace(model, (2, 3, 63, 63)).outputs[0].shape == (2, 7)
    assert trace(model, (2, 3, 100, 77)).outputs[0].shape == (2, 7)
    with pytest.raises(ValueError, match="alexnet: input 62x62 is too small: its convolutions and poolings need at "
                                         "least 63x63"):
        trace(model, (2, 3, 62, 62))
    with pytest.raises(ValueError, match="alexnet-small: input 14x14 is too small.*15x15"):
        trace(alexnet_small(), (1, 3, 14, 14))


def test_alexnet_variants_vary_what_they_say():
    def convs(model):
        return [layer for layer in model.features.layers if isinstance(layer, nn.Conv2d)]
    assert [c.out_channels for c in convs(alexnet_narrow())] == [32, 96, 192, 128, 128]
    flat = alexnet_flat()
    assert [c.out_channels for c in convs(flat)] == [64, 192, 256]
    assert sum(isinstance(layer, nn.MaxPool2d) for layer in flat.features.layers) == 3
    custom = AlexNet(num_classes=3, width=0.25, convs=(1, 3), kernels=(7, 5, 3, 3, 3), strides=(2, 1, 1, 1, 1),
                     hidden=(128,))
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs(custom)] == [((7, 7), (2, 2), 16),
                                                                                 ((3, 3), (1, 1), 96)]
    assert [layer.out_features for layer in custom.classifier.layers if isinstance(layer, nn.Linear)] == [128, 3]


@pytest.mark.parametrize("options, error, message", [
    (dict(convs=(0, 2)), ValueError, r"alexnet: convs must be distinct values from \[1, 2, 3, 4, 5\]"),
    (dict(convs=()), ValueError, "at least one"),
    (dict(kernels=(11, 5, 3)), ValueError, "kernels must have 5 entries, got 3"),
    (dict(strides=(4, 1, 0, 1, 1)), ValueError, "strides must all be >= 1"),
    (dict(width=0), ValueError, r"width must be in \[0.01, 64\]"),
    (dict(hidden="4096"), TypeError, "hidden must be a list of ints"),
])
def test_alexnet_refuses_bad_settings(options, error, message):
    with pytest.raises(error, match=message):
        alexnet(**options)


def test_lenet_regularisation_options_and_option_errors():
    plain = lenet5()
    regular = lenet5(dropout=0.5, batch_norm=True)
    kinds = [type(layer).__name__ for layer in regular.layers]
    assert kinds.count("Dropout") == 3 and kinds.count("BatchNorm2d") == 2
    assert kinds.index("BatchNorm2d") == kinds.index("Conv2d") + 1  # conv, batch norm, ReLU
    assert not any(isinstance(layer, (nn.Dropout, nn.BatchNorm2d)) for layer in plain.layers)
    assert "Total params: 61,706\n" in summary(plain, (1, 28, 28))  # the plain LeNet-5, no batch-norm parameters
    assert "bias" not in regular.layers[0].params  # batch norm's shift replaces the conv bias
    ex = Executor(regular, (1, 28, 28), optimizer=SGD(0.05, momentum=0.9))
    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = np.arange(16) % 10
    losses = [float(ex.train_step(x, y)) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match=r"lenet5: dropout must be in \[0, 1\), got 1.0"):
        lenet5(dropout=1.0)
    with pytest.raises(ValueError, match="model 'alexnet' takes no option batch_norm .it takes width, convs"):
        build_model("alexnet", 10, 3, batch_norm=True)


def test_residual_joins_are_written_with_plus():
    class Block(Model):
        def __init__(self):
            self.conv, self.relu = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x) + x)

    g = trace(Block(), (1, 2, 5, 5))
    assert [type(node.layer).__name__ for node in g.nodes] == ["Conv2d", "Add", "ReLU"]

    class Bad(Model):
        def __init__(self):
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + 1

    with pytest.raises(TypeError, match=r"\+ on traced values joins two of them .* got int"):
        trace(Bad(), (1, 2, 5, 5))

    for other in (lambda h: h * 2, lambda h: 2 * h, lambda h: h - h, lambda h: -h, lambda h: 1 + h):
        class Arithmetic(Model):
            def __init__(self):
                self.conv = nn.Conv2d(2, 2, 3, padding=1)

            def forward(self, x):
                return other(self.conv(x))

        with pytest.raises(TypeError, match=r"on a traced value: tracing records a \+ b of two traced values "
                                            r"\(a residual join, nn.Add\) and layers"):
            trace(Arithmetic(), (1, 2, 5, 5))


def _torch_resnet8(torch, model):
    """The same small ResNet in PyTorch, weights copied from ours (parameter order is the same)."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout)
            self.conv2, self.bn2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout)
            self.down = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else None)

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    net = tnn.Sequential(tnn.Conv2d(1, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU(),
                         Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2), tnn.AdaptiveAvgPool2d(1),
                         tnn.Flatten(), tnn.Linear(64, 10))
    return net


def test_small_resnet_trains_like_pytorch():
    """Residual joins, batch norm (fused with ReLU), convs without bias, global average
    pooling: the loss and every gradient of one step as PyTorch's."""
    torch = pytest.importorskip("torch")
    nn.manual_seed(3)
    ex = Executor(resnet8(), (1, 28, 28), optimizer=SGD(0.0))
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8)
    loss = float(ex.train_step(x, y))
    net = _torch_resnet8(torch, ex)
    ours = list(ex.state_dict()["params"].values())
    theirs = list(net.parameters())
    assert [tuple(p.shape) for p in theirs] == [o.shape for o in ours]
    with torch.no_grad():
        for t, o in zip(theirs, ours):
            t.copy_(torch.from_numpy(o))
    expected = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    expected.backward()
    assert abs(loss - expected.item()) <= tol("training")["rtol"] * 10 * abs(expected.item())
    grads = [ex.grad(layer, name) for layer in ex.layers for name in layer.params]
    for got, t in zip(grads, theirs):
        assert_close(got, t.grad.numpy(), rtol=1e-3, atol=1e-5, what=f"gradient {tuple(t.shape)}")


def test_repr_lists_layers_with_their_settings_as_torch_does():
    torch = pytest.importorskip("torch")
    ours = repr(lenet5()).splitlines()
    theirs = str(torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU())).splitlines()
    assert ours[0] == "Sequential(" and ours[-1] == ")"
    assert ours[1] == theirs[1]  # "  (0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))"
    assert "(7): Linear(in_features=400, out_features=120, bias=True)" in repr(lenet5())
    assert "(downsample): Sequential(" in repr(resnet8())
    assert "Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))" in summary(lenet5(), (1, 28, 28))


MODEL_FILE = '''
from engine import nn
from engine.graph import Model


class Flat(Model):
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10, in_channels=1, hidden=32):
        self.flatten, self.fc1, self.relu = nn.Flatten(), nn.Linear(in_channels * 28 * 28, hidden), nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def tiny(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))


not_a_model = 3
'''


def test_a_users_model_comes_from_a_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    model = build_model(f"{path}:Flat", num_classes=4, in_channels=1, hidden=16)
    assert trace(model, (2, 1, 28, 28)).outputs[0].shape == (2, 4)
    assert model.fc1.out_features == 16
    assert trace(build_model(f"{path}:tiny", 5, 1), (1, 1, 28, 28)).outputs[0].shape == (1, 5)
    with pytest.raises(ValueError, match="takes no option width"):
        build_model(f"{path}:Flat", 4, 1, width=2.0)
    with pytest.raises(ValueError, match="defines no model or function 'Missing'"):
        build_model(f"{path}:Missing", 4, 1)
    with pytest.raises(ValueError, match="no file"):
        build_model(f"{tmp_path}/none.py:Flat", 4, 1)
    with pytest.raises(ValueError, match=r"model must be one of \[.*\] or FILE.py:NAME, got 'vgg'"):
        build_model("vgg", 4, 1)
    with pytest.raises(ValueError, match="not_a_model"):
        build_model(f"{path}:not_a_model", 4, 1)
