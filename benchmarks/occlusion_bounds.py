"""The geometric bounds of exact incremental occlusion, per model: what no exact engine can beat.

For each torchvision model (random weights, 224x224) the engine's own estimate
(:meth:`zfwidgets.inference.GraphOcclusion.estimate`) of three workloads: the occlusion map (32-px occluder,
stride 8, all 625 positions), one 32-px occluder, and one 56-px occluder (the occlusion panel's default size).
``bound`` is the multiply-adds of plain forwards over those of each box's own changed region (grown at every
convolution and pooling, united at adds and concatenations, the whole map after a global pool, fc layers in
full unless they read a changed window): the speed-up an engine would reach if it recomputed nothing else and
ran every multiply-add at the forward's rate. ``planned`` is the same for the engine's batched plan, fixed costs
included. No timing: the figures are the same on every machine.

Worked by hand for ResNet-18 and one 32-px box at (96, 96): conv1 recomputes 19x19 of 112x112, layer1 13..19 of
56, layer2 11..17 of 28, layer3 10..14 of 14 and layer4 all of it: 0.50 of the forward's 1.81 G multiply-adds,
a bound of 2.0x (the script prints 2.07x).

Run: ``.venv/bin/python benchmarks/occlusion_bounds.py [--models resnet18 densenet121]`` (about a minute).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from zfwidgets.analysis.occlusion import occluder_grid  # noqa: E402
from zfwidgets.inference import GraphOcclusion  # noqa: E402

MODELS = ["alexnet", "vgg16", "resnet18", "resnet50", "densenet121", "googlenet", "mobilenet_v2"]


def bounds(arch: str) -> dict:
    lens = C.seeded_torchvision(arch, input_size=(3, 224, 224))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    e = GraphOcclusion(lens, x)
    _, _, grid = occluder_grid(224, 224, 32, 8)
    m = e.estimate(grid.view(-1, 4))
    one = e.estimate([(96, 96, 128, 128)])
    panel = e.estimate([(84, 84, 140, 140)])
    return {"map": m.bound, "map_planned": 1 / m.fraction, "one32": one.bound, "one56": panel.bound}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    a = ap.parse_args()
    print(C.machine())
    print(f"{'model':<13} {'map 32 px / 8':>14} {'planned':>8} {'one 32 px':>10} {'one 56 px':>10}")
    for arch in a.models:
        b = bounds(arch)
        print(f"{arch:<13} {b['map']:>13.2f}x {b['map_planned']:>7.2f}x {b['one32']:>9.2f}x {b['one56']:>9.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
