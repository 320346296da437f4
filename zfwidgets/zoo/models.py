"""The bundled architectures: a mini-ZFNet, its all-convolutional twin and two relatives, for 1x28x28 input.

All mirror ZF's eight-layer layout at Fashion-MNIST scale: conv1..conv5, fc6, fc7, fc8. In
``zfnet-fashion`` conv1, conv2 and conv5 are followed by overlapping 3x3 stride-2 max pooling (as in ZF
and AlexNet); in ``allconv-fashion`` each of those poolings is a learned 3x3 stride-2 convolution
(Springenberg et al.), so the deconvnet finds no switches there. ``zfnet-fashion-coarse`` is
``zfnet-fashion`` with an AlexNet-like first layer (9x9 filters at stride 3 instead of 5x5 at stride 1:
ZF Fig. 6's comparison at 28x28 scale). ``zfnet-fashion-half`` is ``zfnet-fashion`` with five outputs,
trained on five of the ten classes only (the source of the within-domain transfer, ZF Sec. 5.2).
``zfnet-fashion-randomlabels`` is ``zfnet-fashion`` trained to memorise randomly permuted labels of a training
subset (the data randomisation test of Adebayo et al., 2018: its projections should differ from the real model's
if they depend on what the model learned).

Modules carry the friendly names directly (``model.conv1``, ``model.fc6``...), so a layer name is also
its module path.

Example:
    >>> from zfwidgets.zoo.models import build
    >>> net = build("zfnet-fashion")
    >>> net(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 10])
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["build", "ARCHITECTURES", "VARIANTS", "HALF_CLASSES"]

# channel widths: conv1..conv5, fc6/fc7
BASE = dict(c1=32, c2=64, c3=96, c4=96, c5=64, fc=256)

# ZF Table 3 at small scale: (description, overrides)
VARIANTS = {
    "base": "the full model",
    "no-fc6-fc7": "fully connected layers 6 and 7 removed",
    "no-conv3-conv4": "conv layers 3 and 4 removed",
    "no-conv3-conv4-fc6-fc7": "both groups removed",
    "wide-conv3-5": "conv3, conv4, conv5 twice as wide",
    "wide-fc6-fc7": "fc6 and fc7 four times as wide",
}


def _pool(kind: str, channels: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


# per architecture: the pooling kind, the first layer (kernel, stride, padding) and the number of classes
SPECS = {
    "zfnet-fashion": dict(pool="max", conv1=(5, 1, 2), classes=10),
    "allconv-fashion": dict(pool="conv", conv1=(5, 1, 2), classes=10),
    "zfnet-fashion-coarse": dict(pool="max", conv1=(9, 3, 4), classes=10),
    "zfnet-fashion-half": dict(pool="max", conv1=(5, 1, 2), classes=5),
    # zfnet-fashion trained on randomly permuted labels (Adebayo et al.'s data randomisation test)
    "zfnet-fashion-randomlabels": dict(pool="max", conv1=(5, 1, 2), classes=10, labels="permuted"),
}
# the Fashion-MNIST classes zfnet-fashion-half is trained on (T-shirt/top, Trouser, Coat, Sandal, Bag); the
# other five (Pullover, Dress, Shirt, Sneaker, Ankle boot) are the transfer targets: each has a relative
# among the five it knows, as Caltech-101's classes have among ImageNet's
HALF_CLASSES = (0, 1, 4, 5, 8)


def _side(arch: str) -> int:
    """The side of pool5's output map: 28 through conv1 and three 3x3 stride-2 poolings (padding 1)."""
    k, st, p = SPECS[arch]["conv1"]
    n = (28 + 2 * p - k) // st + 1
    for _ in range(3):
        n = (n + 2 - 3) // 2 + 1
    return n


def _layers(arch: str, variant: str) -> "OrderedDict[str, nn.Module]":
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    w = dict(BASE)
    if variant == "wide-conv3-5":
        w.update(c3=192, c4=192, c5=128)
    if variant == "wide-fc6-fc7":
        w.update(fc=1024)
    keep_conv34 = variant not in ("no-conv3-conv4", "no-conv3-conv4-fc6-fc7")
    keep_fc67 = variant not in ("no-fc6-fc7", "no-conv3-conv4-fc6-fc7")
    spec = SPECS[arch]
    kind = spec["pool"]
    k1, s1, p1 = spec["conv1"]
    L: "OrderedDict[str, nn.Module]" = OrderedDict()
    L["conv1"] = nn.Conv2d(1, w["c1"], k1, stride=s1, padding=p1)
    L["relu1"] = nn.ReLU()
    L["pool1"] = _pool(kind, w["c1"])  # 28 -> 14
    if kind == "conv":
        L["relu1p"] = nn.ReLU()
    L["conv2"] = nn.Conv2d(w["c1"], w["c2"], 3, padding=1)
    L["relu2"] = nn.ReLU()
    L["pool2"] = _pool(kind, w["c2"])  # 14 -> 7
    if kind == "conv":
        L["relu2p"] = nn.ReLU()
    c_in = w["c2"]
    if keep_conv34:
        L["conv3"] = nn.Conv2d(c_in, w["c3"], 3, padding=1)
        L["relu3"] = nn.ReLU()
        L["conv4"] = nn.Conv2d(w["c3"], w["c4"], 3, padding=1)
        L["relu4"] = nn.ReLU()
        c_in = w["c4"]
    L["conv5"] = nn.Conv2d(c_in, w["c5"], 3, padding=1)
    L["relu5"] = nn.ReLU()
    L["pool5"] = _pool(kind, w["c5"])  # 7 -> 4
    if kind == "conv":
        L["relu5p"] = nn.ReLU()
    L["flatten"] = nn.Flatten()
    f_in = w["c5"] * _side(arch) ** 2
    if keep_fc67:
        L["drop6"] = nn.Dropout(0.5)
        L["fc6"] = nn.Linear(f_in, w["fc"])
        L["relu6"] = nn.ReLU()
        L["drop7"] = nn.Dropout(0.5)
        L["fc7"] = nn.Linear(w["fc"], w["fc"])
        L["relu7"] = nn.ReLU()
        f_in = w["fc"]
    L["fc8"] = nn.Linear(f_in, spec["classes"])
    return L


ARCHITECTURES = tuple(SPECS)


def build(arch: str = "zfnet-fashion", variant: str = "base") -> nn.Sequential:
    """Build an untrained bundled architecture (one of :data:`ARCHITECTURES`), optionally a Table 3 variant."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list(ARCHITECTURES)}")
    return nn.Sequential(_layers(arch, variant))
