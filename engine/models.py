"""The models: LeNet-5, one-tower AlexNet and its variants, ResNet-18 and a small ResNet
for 28x28/32x32 images, by name (MODELS), or a user's own from a file ("file.py:Name").

AlexNet and ResNet-18 follow torchvision's layout, so their layer paths ("features.0",
"classifier.6", "layer1.0.conv1") are torchvision's parameter names.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import sys

from engine import checks as C
from engine.graph import Layer, Model
from engine.nn import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU,
                       Sequential)
from engine.shapes import window_output_size


def lenet5(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0, batch_norm: bool = False) -> Sequential:
    """LeNet-5 for 28x28 inputs: conv 6@5x5 pad 2, pool, conv 16@5x5, pool, 120, 84, classes
    (ReLU and max pooling, the modern form). The regularisation exercises' options: dropout
    before each of the three linear layers (when > 0), batch norm after each conv (and no conv
    bias then: batch norm's shift takes its place)."""
    num_classes = C.integer("lenet5", "num_classes", num_classes, minimum=2)
    dropout = C.real("lenet5", "dropout", dropout, low=0.0, high=1.0, high_open=True)

    def conv(c_in, c_out, **kw):
        if not batch_norm:
            return [Conv2d(c_in, c_out, 5, **kw), ReLU()]
        return [Conv2d(c_in, c_out, 5, bias=False, **kw), BatchNorm2d(c_out), ReLU()]

    def linear(f_in, f_out):
        return ([Dropout(dropout)] if dropout else []) + [Linear(f_in, f_out)]

    return Sequential(
        *conv(in_channels, 6, padding=2), MaxPool2d(2, 2),   # (N, 6, 14, 14)
        *conv(6, 16), MaxPool2d(2, 2),                         # (N, 16, 5, 5)
        Flatten(),                                             # (N, 400)
        *linear(400, 120), ReLU(),
        *linear(120, 84), ReLU(),
        *linear(84, num_classes))


# --------------------------------------------------------------------------- AlexNet

class AlexNet(Model):
    """One-tower AlexNet in torchvision's layout (features, avgpool, classifier), varied the
    way course projects vary it:

    width      multiplies the feature maps of every conv (64, 192, 384, 256, 256)
    convs      which of the five convs are kept (1-based); max pooling follows conv 1, conv 2
               and the last conv kept
    kernels, strides, paddings   per conv (all five given, whether kept or not)
    hidden     the classifier's hidden sizes (4096, 4096), each after dropout
    The feature map is average-pooled to 6x6 (as torchvision), so any input that leaves a map
    of at least 1x1 works; a smaller one is refused naming the smallest size."""
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 convs=(1, 2, 3, 4, 5), kernels=(11, 5, 3, 3, 3), strides=(4, 1, 1, 1, 1),
                 paddings=(2, 2, 1, 1, 1), hidden=(4096, 4096), dropout: float = 0.5, name: str = "alexnet"):
        op = name
        num_classes = C.integer(op, "num_classes", num_classes, minimum=2)
        width = C.real(op, "width", width, low=0.01, high=64.0)
        kept = C.subset(op, "convs", convs, range(1, 6))
        kernels, strides, paddings = (C.int_list(op, label, v, 5, minimum)
                                      for label, v, minimum in (("kernels", kernels, 1), ("strides", strides, 1),
                                                                ("paddings", paddings, 0)))
        hidden = C.int_list(op, "hidden", hidden, None, 1)
        self.name = name
        features, channels = [], in_channels
        for i in kept:
            out = max(1, round(self.CHANNELS[i - 1] * width))
            features += [Conv2d(channels, out, kernels[i - 1], strides[i - 1], paddings[i - 1]), ReLU()]
            if i in (1, 2) or i == kept[-1]:
                features.append(MaxPool2d(3, 2))
            channels = out
        self.features = Sequential(*features)
        self.avgpool = AdaptiveAvgPool2d(6)
        self.flatten = Flatten()
        classifier, size = [], channels * 36
        for h in hidden:
            classifier += [Dropout(dropout), Linear(size, h), ReLU()]
            size = h
        self.classifier = Sequential(*classifier, Linear(size, num_classes))
        self.min_size = smallest_input(self.features.layers)

    def forward(self, x):
        C.input_size(self.name, x.shape[2:], self.min_size)
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def smallest_input(layers) -> int:
    """The smallest square input whose map stays at least 1x1 through these layers' windows."""
    windows = [(layer.kernel_size[0], layer.stride[0], layer.padding[0]) for layer in layers
               if hasattr(layer, "kernel_size")]
    for size in range(1, 100_000):
        h = size
        for kernel, stride, padding in windows:
            h = window_output_size(h, kernel, stride, padding)
            if h < 1:
                break
        else:
            return size
    raise ValueError("no input size fits these layers")


def alexnet(num_classes: int = 1000, in_channels: int = 3, **options) -> AlexNet:
    """One-tower AlexNet (torchvision's): five convs, 224x224 by default, any size >= 63x63."""
    return AlexNet(num_classes, in_channels, **options)


def alexnet_narrow(num_classes: int = 1000, in_channels: int = 3, **options) -> AlexNet:
    """AlexNet with half the feature maps in every conv."""
    return AlexNet(num_classes, in_channels, **{"width": 0.5, "name": "alexnet-narrow", **options})


def alexnet_flat(num_classes: int = 1000, in_channels: int = 3, **options) -> AlexNet:
    """A shallower AlexNet: three convs (1, 2 and 5) instead of five."""
    return AlexNet(num_classes, in_channels, **{"convs": (1, 2, 5), "name": "alexnet-flat", **options})


def alexnet_small(num_classes: int = 10, in_channels: int = 3, **options) -> AlexNet:
    """AlexNet for small images (32x32 and up): 5x5 and 3x3 convs of stride 1, a 1024-512 classifier."""
    defaults = dict(kernels=(5, 5, 3, 3, 3), strides=(1, 1, 1, 1, 1), paddings=(2, 2, 1, 1, 1), hidden=(1024, 512),
                    name="alexnet-small")
    return AlexNet(num_classes, in_channels, **{**defaults, **options})


for _variant in (alexnet, alexnet_narrow, alexnet_flat, alexnet_small):
    _variant.__signature__ = inspect.signature(AlexNet)  # so build_model names the options they take

# --------------------------------------------------------------------------- ResNet

class BasicBlock(Model):
    """Two 3x3 convs with batch norm and a skip connection (a 1x1 conv when the shape changes):
    torchvision's BasicBlock, its attribute names included."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.relu = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = Sequential(Conv2d(in_channels, out_channels, 1, stride, 0, bias=False),
                                         BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(Model):
    """A residual network of BasicBlocks in torchvision's layout (conv1, bn1, relu, maxpool,
    layer1.., avgpool, fc). stem "imagenet": a 7x7/2 conv and 3x3/2 max pooling (224x224
    images); "small": a 3x3/1 conv and no pooling (28x28 and 32x32 images)."""

    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes: int = 1000,
                 in_channels: int = 3, stem: str = "imagenet"):
        C.choice("ResNet", "stem", stem, ("imagenet", "small"))
        num_classes = C.integer("ResNet", "num_classes", num_classes, minimum=2)
        if stem == "imagenet":
            self.conv1 = Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        else:
            self.conv1 = Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = BatchNorm2d(widths[0])
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, 2, 1) if stem == "imagenet" else None
        channels = widths[0]
        for i, (count, width) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", Sequential(*stage))
            channels = width
        self.avgpool = AdaptiveAvgPool2d(1)
        self.flatten = Flatten()
        self.fc = Linear(channels, num_classes)
        self.stages = len(blocks)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 (torchvision's): 224x224 images, 11.7 M parameters at 1000 classes."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels)


def resnet8(num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """A small ResNet for 28x28/32x32 images: a 3x3 stem, three stages of one block (16, 32, 64
    maps, the last two halving the map), global average pooling: 78 k parameters."""
    return ResNet((1, 1, 1), (16, 32, 64), num_classes, in_channels, stem="small")


# --------------------------------------------------------------------------- by name

MODELS = {"lenet": (lenet5, (1, 28, 28)), "lenet5": (lenet5, (1, 28, 28)),
          "alexnet": (alexnet, (3, 224, 224)), "alexnet-narrow": (alexnet_narrow, (3, 224, 224)),
          "alexnet-flat": (alexnet_flat, (3, 224, 224)), "alexnet-small": (alexnet_small, (3, 32, 32)),
          "resnet18": (resnet18, (3, 224, 224)), "resnet8": (resnet8, (1, 28, 28))}


def find_model(spec: str):
    """(builder, default input shape or None) for a name in MODELS or "path/to/file.py:Name",
    Name being a Model or Layer subclass, or a function returning a model."""
    if spec in MODELS:
        return MODELS[spec]
    path, _, name = spec.rpartition(":")
    if not path:
        raise ValueError(f"model must be one of {sorted(MODELS)} or FILE.py:NAME, got {spec!r}")
    if not os.path.isfile(path):
        raise ValueError(f"model {spec!r}: no file {path}")
    module_name = "engine_user_models_" + os.path.splitext(os.path.basename(path))[0]
    loader = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module  # so that dataclasses and pickling-free reprs resolve it
    try:
        loader.loader.exec_module(module)
    except Exception as err:
        raise ValueError(f"model {spec!r}: {path} does not import: {type(err).__name__}: {err}") from err
    builder = getattr(module, name, None)
    if not callable(builder):
        raise ValueError(f"model {spec!r}: {path} defines no model or function {name!r}")
    return builder, getattr(builder, "input_shape", None)


def model_spec(spec: str) -> str:
    """spec as a model file records it: a built-in name as it is, FILE.py:NAME with FILE made
    absolute (so that the model can be rebuilt from another directory)."""
    if spec in MODELS:
        return spec
    find_model(spec)  # the file exists and defines NAME
    path, _, name = spec.rpartition(":")
    return f"{os.path.abspath(path)}:{name}"


def build_model(spec: str, num_classes: int, in_channels: int, **options):
    """The model a spec names, built with num_classes and in_channels where it takes them and
    with options (width=..., convs=...) that it must take: an option it does not take is an
    error naming it. The model records how it was built in model.architecture (a model file
    rebuilds it from that: engine.modelfile)."""
    builder, _ = find_model(spec)
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    refused = sorted(k for k in options if k not in params and not takes_any)
    if refused:
        raise ValueError(f"model {spec!r} takes no option {', '.join(refused)} "
                         f"(it takes {', '.join(p for p in params if p not in ('num_classes', 'in_channels')) or 'none'})")
    wanted = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if k in params}
    try:
        model = builder(**wanted, **options)
    except TypeError as err:  # a user's builder with other arguments: say whose
        raise ValueError(f"model {spec!r}: {err}") from err
    if not isinstance(model, (Model, Layer)):
        raise ValueError(f"model {spec!r}: {getattr(builder, '__name__', spec)} gave a {type(model).__name__}, "
                         f"not a model (a Sequential, a Model or a Layer)")
    model.architecture = {"model": model_spec(spec), "num_classes": num_classes, "in_channels": in_channels,
                          "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    return model


def torch_twin(name: str, classes: int = 10):
    """The same LeNet-5 (28x28x1) or one-tower AlexNet (224x224x3) in PyTorch, layer for layer
    (its parameters in the order of ours): what the benchmarks race and the tests agree with."""
    import torch.nn as nn
    if name == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes))
