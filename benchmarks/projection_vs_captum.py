"""Projection from a deep layer, second click on the same image: zfwidgets against captum.

The lens keeps the recorded forward of the current image (activations with their autograd graph), so a
second projection of the same image is a backward pass only, started at the chosen layer; it runs on the
unit's receptive field only, node by node along the model's graph (the cropped backward of
``zfwidgets.project``: chains, ResNets, DenseNets, GoogLeNet, MobileNetV2), with no parameter gradient.
Captum's ``NeuronDeconvolution`` / ``NeuronGuidedBackprop`` run a forward and a backward on every call.
Captum overrides the ReLU modules' backward with module hooks, which is wrong for ``ReLU(inplace=True)``
(torchvision's default), so captum is measured on a copy of the model with every ReLU made non-inplace.

Both project the same unit: the strongest activation of the layer's strongest map (what
``zfwidgets.project`` picks by default), given to captum as ``neuron_selector=(channel, y, x)``. The
projections are checked equal first (max |difference| / max |reference|, target 1e-5): against captum where
its rule reaches every rectifier (all of them ``nn.ReLU`` modules), else (GoogLeNet's functional ``F.relu``)
against the full backward through the lens's recorded graph (autograd, the walk switched off).

A model is ``NAME`` (its last conv layer, or its last block on a branching model: ResNet-50's ``layer4.2``) or
``NAME:LAYER`` (``resnet50:layer2``: the output of the stage ``layer2``); torchvision models with seeded
random weights at 224x224.

Run: ``.venv/bin/python benchmarks/projection_vs_captum.py [--models alexnet resnet50 resnet50:layer2] [--runs 20]``
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import zfwidgets as zf  # noqa: E402

CAPTUM = {"deconvnet": "NeuronDeconvolution", "guided": "NeuronGuidedBackprop"}


DEFAULT = ["alexnet", "vgg16", "bundled", "resnet18", "resnet50", "resnet50:layer2", "densenet121", "googlenet",
           "mobilenet_v2"]


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


def captum_rule_applies(lens, x) -> bool:
    """Every rectification of the forward is an ``nn.ReLU`` module call (what captum's hooks override)."""
    from zfwidgets.core.graph import Graph, is_relu
    g = Graph.of(lens, tuple(x.shape[1:]))
    return g.traced and all(n.op == "call_module" for n in g.nodes if is_relu(n))


def full_backward(lens, x, layer, method, channel, position):
    """The same projection by autograd through the whole recorded graph (the cropped walk switched off)."""
    from unittest import mock
    # without the cropped walk, project() falls back to autograd over the recorded forward
    with mock.patch("zfwidgets.core.project._cropped_backward", lambda *a, **k: None):
        return zf.project(lens, x, layer, channel, position=position, method=method).pixels


def default_layer(lens) -> str:
    """The last conv layer of a chain; the last block (the last entry of the table) of a branching model."""
    convs = [i for i in lens.table if i.kind == "conv"]
    return convs[-1].name


def bench(name: str, runs: int, quick: bool = False) -> list:
    from zfwidgets.core import backward
    from zfwidgets.core.project import unit_seed
    arch, _, layer = name.partition(":")
    lens, what = lens_for(arch)
    x = C.seeded_image(lens)
    layer = layer or default_layer(lens)
    _, path, _ = lens.resolve(layer)
    model2 = non_inplace_copy(lens.model)
    layer2 = dict(model2.named_modules())[path]
    cropped = backward.plan(lens, tuple(x.shape[1:]), path) is not None
    vs_captum = captum_rule_applies(lens, x)
    print(f"\n== projection from {layer} ({path}), second click: {arch} ({what}), input {tuple(x.shape[1:])}; "
          f"cropped backward on the graph: {'yes' if cropped else 'no (' + str(backward.why_not(lens, tuple(x.shape[1:]), path)) + ')'}")
    out = []
    for method, cls_name in CAPTUM.items():
        import captum.attr as ca
        captum_method = getattr(ca, cls_name)(model2, layer2)
        first = zf.project(lens, x, layer, method=method)       # the first click records the forward
        selector = (first.channel,) + tuple(first.position)
        forwards = []
        counter = lens.model.register_forward_pre_hook(lambda m, a: forwards.append(1))

        def ours():
            return zf.project(lens, x, layer, method=method).pixels

        def theirs():
            return captum_method.attribute(x, neuron_selector=selector)[0]

        a = ours()
        # captum seeds the unit with 1; zfwidgets with the unit's activation (ZF's unit, a rectified layer)
        top = unit_seed(first.activation, lens.rectified(layer))
        ref = theirs() * top if vs_captum else full_backward(lens, x, layer, method, first.channel, first.position)
        d = C.rel_diff(a, ref)
        check = "captum" if vs_captum else "the full backward (captum's hooks miss functional relu)"
        assert d < 1e-5, f"{name} {method}: the projection differs from {check} by {d:.1e}"
        times = C.interleaved({"zfwidgets": ours, f"captum {cls_name}": theirs}, runs=runs, warmup=1)
        counter.remove()
        assert not forwards, "the second clicks ran a forward"
        ratio, line = C.summary(times, "zfwidgets", f"captum {cls_name}")
        print(f"   {method}: unit (channel, y, x) = {selector}; max|diff|/max|ref| = {d:.2e} against {check}; "
              f"forwards run by zfwidgets on second clicks: {len(forwards)}")
        print("   " + line)
        out.append({"model": name, "method": method, "peer": cls_name, "ratio": ratio, "diff": d,
                    "ours_s": C.median(times["zfwidgets"]), "peer_s": C.median(times[f"captum {cls_name}"]),
                    "weights": what, "layer": layer, "cropped": cropped})
    print(f"   machine: {C.machine()}")
    return out


def main():
    args = C.parse_args(__doc__.splitlines()[0], DEFAULT)
    print(f"projection vs captum ({C.machine()})")
    res = []
    for m in args.models:
        res.extend(bench(m, max(args.runs, 5), args.quick))
    return res


if __name__ == "__main__":
    main()
