"""Projection from the last conv layer, second click on the same image: zfwidgets against captum.

The lens keeps the recorded forward of the current image (activations with their autograd graph), so a
second projection of the same image is a backward pass only, started at the chosen layer; on these
sequential nets it runs on the unit's receptive field only (the cropped backward of ``zfwidgets.project``).
Captum's ``NeuronDeconvolution`` / ``NeuronGuidedBackprop`` run a forward and a backward on every call.
Captum overrides the ReLU modules' backward with module hooks, which is wrong for ``ReLU(inplace=True)``
(torchvision's default), so captum is measured on a copy of the model with every ReLU made non-inplace.

Both project the same unit: the strongest activation of the layer's strongest map (what
``zfwidgets.project`` picks by default), given to captum as ``neuron_selector=(channel, y, x)``. The
projections are checked equal (max |difference| / max |captum|, target 1e-5) before timing.

Run: ``.venv/bin/python benchmarks/projection_vs_captum.py [--models alexnet vgg16 bundled] [--runs 20]``
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import zfwidgets as zf  # noqa: E402

CAPTUM = {"deconvnet": "NeuronDeconvolution", "guided": "NeuronGuidedBackprop"}


def lens_for(name: str):
    if name == "bundled":
        return C.bundled()
    return C.seeded_torchvision(name), "random weights"


def non_inplace_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    return m


def bench(name: str, runs: int, quick: bool = False) -> list:
    lens, what = lens_for(name)
    x = C.seeded_image(lens)
    layer = [i.name for i in lens.table if i.kind == "conv"][-1]
    _, path, _ = lens.resolve(layer)
    model2 = non_inplace_copy(lens.model)
    layer2 = dict(model2.named_modules())[path]
    print(f"\n== projection from {layer} ({path}), second click: {name} ({what}), input {tuple(x.shape[1:])}")
    out = []
    for method, cls_name in CAPTUM.items():
        import captum.attr as ca
        captum_method = getattr(ca, cls_name)(model2, layer2)
        first = zf.project(lens, x, layer, method=method)       # the first click records the forward
        selector = (first.channel,) + tuple(first.position)
        forwards = lens.forward_count

        def ours():
            return zf.project(lens, x, layer, method=method).pixels

        def theirs():
            return captum_method.attribute(x, neuron_selector=selector)[0]

        a, b = ours(), theirs()
        d = C.rel_diff(a, b)
        times = C.interleaved({"zfwidgets": ours, f"captum {cls_name}": theirs}, runs=runs, warmup=1)
        assert lens.forward_count == forwards, "the second clicks ran a forward"
        ratio, line = C.summary(times, "zfwidgets", f"captum {cls_name}")
        print(f"   {method}: unit (channel, y, x) = {selector}; max|diff|/max|captum| = {d:.2e}; "
              f"forwards run by zfwidgets on second clicks: {lens.forward_count - forwards}")
        print("   " + line)
        out.append({"model": name, "method": method, "peer": cls_name, "ratio": ratio, "diff": d,
                    "ours_s": C.median(times["zfwidgets"]), "peer_s": C.median(times[f"captum {cls_name}"]),
                    "weights": what})
    print(f"   machine: {C.machine()}")
    return out


def main():
    args = C.parse_args(__doc__.splitlines()[0], ["alexnet", "vgg16", "bundled"])
    print(f"projection vs captum ({C.machine()})")
    res = []
    for m in args.models:
        res.extend(bench(m, max(args.runs, 5), args.quick))
    return res


if __name__ == "__main__":
    main()
