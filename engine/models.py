"""The models: LeNet-5 and one-tower AlexNet, as in ../shared/BENCHMARKING.md."""
from __future__ import annotations

from engine import checks as C
from engine.nn import (Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential)


def lenet5(num_classes: int = 10, in_channels: int = 1) -> Sequential:
    """LeNet-5 for 28x28 inputs: conv 6@5x5 pad 2, pool, conv 16@5x5, pool, 120, 84, classes
    (ReLU and max pooling, the modern form)."""
    num_classes = C.integer("lenet5", "num_classes", num_classes, minimum=2)
    return Sequential(
        Conv2d(in_channels, 6, 5, padding=2), ReLU(), MaxPool2d(2, 2),   # (N, 6, 14, 14)
        Conv2d(6, 16, 5), ReLU(), MaxPool2d(2, 2),                         # (N, 16, 5, 5)
        Flatten(),                                                         # (N, 400)
        Linear(400, 120), ReLU(),
        Linear(120, 84), ReLU(),
        Linear(84, num_classes))


def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> Sequential:
    """One-tower AlexNet for 224x224 inputs (the torchvision layout, without adaptive pooling:
    the 6x6 map that 224x224 gives feeds the classifier directly)."""
    num_classes = C.integer("alexnet", "num_classes", num_classes, minimum=2)
    return Sequential(
        Conv2d(in_channels, 64, 11, stride=4, padding=2), ReLU(), MaxPool2d(3, 2),  # (N, 64, 27, 27)
        Conv2d(64, 192, 5, padding=2), ReLU(), MaxPool2d(3, 2),                      # (N, 192, 13, 13)
        Conv2d(192, 384, 3, padding=1), ReLU(),
        Conv2d(384, 256, 3, padding=1), ReLU(),
        Conv2d(256, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2),                     # (N, 256, 6, 6)
        Flatten(),                                                                   # (N, 9216)
        Dropout(dropout), Linear(256 * 6 * 6, 4096), ReLU(),
        Dropout(dropout), Linear(4096, 4096), ReLU(),
        Linear(4096, num_classes))


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
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes))


MODELS = {"lenet": (lenet5, (1, 28, 28)), "lenet5": (lenet5, (1, 28, 28)),
          "alexnet": (alexnet, (3, 224, 224))}
