"""The architectures of the model zoo, each a flat sequence of named layers.

Every network here is an ``nn.Sequential`` whose children carry the names used in the papers
(``conv1``, ``relu2``, ``conv11`` ...). A split point is simply the name of a child: the head is
every layer up to and including it, the tail is the rest (see ``models.split``). Keeping the
networks flat is what makes split points exact and easy to list.

Each builder takes ``num_classes``, the input shape ``(C, H, W)`` and a ``dropout`` probability
(dropout layers are inserted before fully connected layers when ``dropout > 0``; they are the
identity in eval mode, so they never change what a deployed head computes).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Callable

import torch
from torch import nn

from .errors import SplitlabError


FEATURE_LAYOUTS = ("nchw", "nhwc", "tokens")  # see SplitNet.feature_layout


def channel_axis(layout: str) -> int:
    """The channel axis of a batch of features in ``layout`` (1 for ``nchw``, flat features
    included; the last axis for ``nhwc`` grids and ``tokens``)."""
    if layout not in FEATURE_LAYOUTS:
        raise SplitlabError(f"unknown feature layout {layout!r}; known: {', '.join(FEATURE_LAYOUTS)}")
    return 1 if layout == "nchw" else -1


def feature_channels(feature_shape, layout: str) -> int:
    """How many channels one example's features of ``feature_shape`` (no batch axis) have."""
    return int(feature_shape[0 if channel_axis(layout) == 1 else -1])


class SplitNet(nn.Sequential):
    """A flat network whose named children include its split points.

    ``feature_layouts`` (split point -> layout) says how the features at a split point are laid out
    for the consumers that need their channel axis (the black-box inverse network, the ``nonlinear``
    feature defence): ``nchw`` (the default: ``(C, H, W)`` maps, or flat vectors), ``nhwc``
    (channel-last ``(H, W, C)`` grids, the Swin's stages) or ``tokens`` (``(tokens, dim)``, the ViT).
    A deployment records it (``deployment.json``'s ``feature_layout``, written when not ``nchw``).
    """

    def __init__(self, layers: "OrderedDict[str, nn.Module]", split_points: list[str],
                 feature_layouts: dict[str, str] | None = None):
        super().__init__(layers)
        names = list(layers)
        missing = [p for p in split_points if p not in names]
        if missing:
            raise ValueError(f"split points {missing} are not layers of the network")
        self.split_points = list(split_points)
        layouts = dict(feature_layouts or {})
        for point, layout in layouts.items():
            if point not in self.split_points:
                raise ValueError(f"feature layout given for {point!r}, which is not a split point")
            channel_axis(layout)
        self.feature_layouts = layouts

    def feature_layout(self, point: str) -> str:
        """The layout of the features at split point ``point`` (``nchw`` unless declared)."""
        return self.feature_layouts.get(point, "nchw")


def _flat_size(layers: "OrderedDict[str, nn.Module]", input_shape: tuple[int, int, int]) -> int:
    """Number of features after running the convolutional part on a dummy input."""
    with torch.no_grad():
        out = nn.Sequential(layers)(torch.zeros(1, *input_shape))
    return int(out.numel())


def _fc_block(layers, name, in_f, out_f, dropout):
    if dropout > 0:
        layers[f"drop_{name}"] = nn.Dropout(dropout)
    layers[name] = nn.Linear(in_f, out_f)


def lenet5(num_classes: int = 10, input_shape=(1, 28, 28), dropout: float = 0.0) -> SplitNet:
    """He et al.'s MNIST LeNet: two 5x5 convs (8, 16 filters), three fully connected layers."""
    c = input_shape[0]
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(c, 8, 5), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(8, 16, 5), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
    )
    flat = _flat_size(layers, input_shape)
    _fc_block(layers, "fc1", flat, 120, dropout)
    layers["relu3"] = nn.ReLU()
    _fc_block(layers, "fc2", 120, 84, dropout)
    layers["relu4"] = nn.ReLU()
    _fc_block(layers, "fc3", 84, num_classes, dropout)
    points = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1", "fc2"]
    return SplitNet(layers, points)


def he_cifar_cnn(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0) -> SplitNet:
    """He et al.'s CIFAR-10 CNN: six 3x3 convs (64,64,128,128,128,128), fc1 with Sigmoid, fc2.

    The convolutions start from He (Kaiming) normal initialisation, fan-out mode as in torchvision's
    VGG. With PyTorch's default the signal shrinks at every layer of this batch-norm-free stack
    (relu32 carries ~1/70 of the energy) and training crawled: 62 % after 10 epochs, against the
    75 % target (benchmarks/results/training/report.md).
    """
    c = input_shape[0]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    widths = [("11", c, 64), ("12", 64, 64), ("21", 64, 128), ("22", 128, 128),
              ("31", 128, 128), ("32", 128, 128)]
    points = []
    for tag, cin, cout in widths:
        layers[f"conv{tag}"] = nn.Conv2d(cin, cout, 3, padding=1)
        layers[f"relu{tag}"] = nn.ReLU()
        points += [f"conv{tag}", f"relu{tag}"]
        if tag.endswith("2"):
            layers[f"pool{tag[0]}"] = nn.MaxPool2d(2)
            points.append(f"pool{tag[0]}")
    for module in layers.values():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    layers["flatten"] = nn.Flatten()
    flat = _flat_size(layers, input_shape)
    _fc_block(layers, "fc1", flat, 512, dropout)
    layers["sigmoid1"] = nn.Sigmoid()
    _fc_block(layers, "fc2", 512, num_classes, dropout)
    return SplitNet(layers, points + ["fc1", "fc2"])


class BasicBlock(nn.Module):
    """The two-convolution residual block of ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet(blocks: tuple[int, ...], num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0,
           width: int = 64) -> SplitNet:
    """ResNet of basic blocks, ``blocks[i]`` in stage ``i`` (channels ``width`` x 1, 2, 4, 8), with the
    CIFAR stem (3x3 conv, no max-pool); split at the stem and each stage."""
    c = input_shape[0]
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()))
    cin = width
    for i, (n, mult, stride) in enumerate(zip(blocks, (1, 2, 4, 8), (1, 2, 2, 2)), start=1):
        cout = width * mult
        layers[f"layer{i}"] = nn.Sequential(*(BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                                              for j in range(n)))
        cin = cout
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    _fc_block(layers, "fc", cin, num_classes, dropout)
    return SplitNet(layers, ["stem"] + [f"layer{i}" for i in range(1, len(blocks) + 1)])


def resnet18(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0,
             width: int = 64) -> SplitNet:
    """ResNet-18 (two basic blocks a stage) with the CIFAR stem; split at the stem and each stage."""
    return resnet((2, 2, 2, 2), num_classes, input_shape, dropout, width)


def resnet10(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0,
             width: int = 64) -> SplitNet:
    """ResNet-10 (one basic block a stage): the shallower depth of the architecture study."""
    return resnet((1, 1, 1, 1), num_classes, input_shape, dropout, width)


def mia_cnn(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0,
            widths: tuple[int, int, int] | None = None) -> SplitNet:
    """The membership-inference target CNN: two conv + batch norm + max-pool blocks and one FC.

    Widths follow the course project: (128, 256, 256) for 3-channel (CIFAR) inputs and
    (32, 64, 64) for 1-channel (MNIST) inputs, unless given.
    """
    c = input_shape[0]
    w1, w2, wf = widths or ((128, 256, 256) if c == 3 else (32, 64, 64))
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(c, w1, 3, padding=1), bn1=nn.BatchNorm2d(w1), relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(w1, w2, 3, padding=1), bn2=nn.BatchNorm2d(w2), relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2), flatten=nn.Flatten())
    flat = _flat_size(layers, input_shape)
    _fc_block(layers, "fc1", flat, wf, dropout)
    layers["relu3"] = nn.ReLU()
    _fc_block(layers, "fc2", wf, num_classes, dropout)
    return SplitNet(layers, ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1"])


def aia_lenet(num_classes: int = 2, input_shape=(3, 32, 32), dropout: float = 0.0) -> SplitNet:
    """The attribute-inference target: LeNet variant, 3x3 convs 16/32/64 with 2x2 pools, FC 128/64."""
    c = input_shape[0]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    points = []
    for i, (cin, cout) in enumerate([(c, 16), (16, 32), (32, 64)], start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        points += [f"conv{i}", f"relu{i}", f"pool{i}"]
    layers["flatten"] = nn.Flatten()
    flat = _flat_size(layers, input_shape)
    _fc_block(layers, "fc1", flat, 128, dropout)
    layers["relu4"] = nn.ReLU()
    _fc_block(layers, "fc2", 128, 64, dropout)
    layers["relu5"] = nn.ReLU()
    _fc_block(layers, "fc3", 64, num_classes, dropout)
    return SplitNet(layers, points + ["fc1", "fc2"])


def face_mlp(num_classes: int = 40, input_shape=(1, 112, 92), dropout: float = 0.0) -> SplitNet:
    """Fredrikson et al.'s face-recognition MLP: one hidden layer of 3000 units with Sigmoid."""
    flat = int(torch.tensor(input_shape).prod())
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    _fc_block(layers, "fc1", flat, 3000, dropout)
    layers["sigmoid1"] = nn.Sigmoid()
    _fc_block(layers, "fc2", 3000, num_classes, dropout)
    return SplitNet(layers, ["fc1", "sigmoid1"])


BUILDERS: dict[str, Callable[..., SplitNet]] = {
    "lenet5": lenet5,
    "he-cifar-cnn": he_cifar_cnn,
    "resnet18": resnet18,
    "resnet10": resnet10,
    # the CPU-scale ResNets of the architecture study (parameters matched to models.transformers')
    "resnet10-w16": partial(resnet10, width=16),
    "resnet18-w16": partial(resnet18, width=16),
    "mia-cnn": mia_cnn,
    "aia-lenet": aia_lenet,
    "face-mlp": face_mlp,
}

# The input shape each architecture is designed for (used when none is given).
DEFAULT_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "lenet5": (1, 28, 28),
    "he-cifar-cnn": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "resnet10": (3, 32, 32),
    "resnet10-w16": (3, 32, 32),
    "resnet18-w16": (3, 32, 32),
    "mia-cnn": (3, 32, 32),
    "aia-lenet": (3, 32, 32),
    "face-mlp": (1, 112, 92),
}
