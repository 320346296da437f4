"""One model of every torchvision classification family, random weights, small inputs: the whole public API.

For each family (the smallest of ``torchvision.models.list_models(module=torchvision.models)``): the Lens is
built (or the vision transformers refused with a clear message), ``predict`` of one image, the three
projections at two layers (the gradient one against plain autograd on the model), the receptive field of the
lower layer's centre unit from the graph's geometry (against the support of an independent float64 gradient),
top-k, occlusion (against plain forwards of the occluded images) and one occluder-panel move. Every call leaves
the model as it was (hooks, flags, in-place switches, weights).
"""
import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import zfwidgets as zf
from zfwidgets.analysis.occlusion import occlude
from zfwidgets.analysis.receptive import FieldMap

from ..core.conftest import assert_same_state, model_state

# (arch, input side): the smallest of each family; 64 px where the architecture allows it
FAMILIES = [("alexnet", 64), ("convnext_tiny", 64), ("densenet121", 64), ("efficientnet_b0", 64),
            ("efficientnet_v2_s", 64), ("googlenet", 64), ("inception_v3", 96), ("mnasnet0_5", 64),
            ("mobilenet_v2", 64), ("mobilenet_v3_small", 64), ("regnet_x_400mf", 64), ("regnet_y_400mf", 64),
            ("resnet18", 64), ("resnext50_32x4d", 64), ("shufflenet_v2_x0_5", 64), ("squeezenet1_1", 64),
            ("vgg11", 64), ("wide_resnet50_2", 64)]
TRANSFORMERS = ["maxvit_t", "swin_t", "vit_b_16"]
HEAVY = {"convnext_tiny", "efficientnet_v2_s", "inception_v3", "resnext50_32x4d", "wide_resnet50_2", "vgg11",
         "densenet121", "regnet_y_400mf"}


PREFIXES = ["alexnet", "convnext", "densenet", "efficientnet_b", "efficientnet_v2", "googlenet", "inception", "maxvit",
            "mnasnet", "mobilenet_v2", "mobilenet_v3", "regnet_x", "regnet_y", "resnet", "resnext", "shufflenet",
            "squeezenet", "swin", "vgg", "vit", "wide_resnet"]


def test_every_family_is_covered():
    """Every classification model torchvision lists belongs to a family tested here (supported or refused)."""
    for name in torchvision.models.list_models(module=torchvision.models):
        assert any(name.startswith(p) for p in PREFIXES), name
    covered = [a for a, _ in FAMILIES] + TRANSFORMERS
    for p in PREFIXES:
        assert any(a.startswith(p) for a in covered), p


@pytest.mark.parametrize("arch", TRANSFORMERS)
def test_transformers_are_refused_at_construction(arch):
    with pytest.raises(ValueError, match="vision transformer"):
        zf.Lens.from_torchvision(arch)


def _saturation_free(model):
    """A copy with the activations that saturate (ReLU6, Hardtanh, Hardswish, Hardsigmoid) and the smooth ones
    as the identity, for the gradient-support reference (which removes only ReLUs): the support is structural."""
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.GELU)):
                setattr(parent, name, nn.Identity())
    return m


def _autograd_reference(model, x, path, channel, position):
    """The plain input gradient of one unit (a forward hook on the module, no library code)."""
    out = {}
    h = model.get_submodule(path).register_forward_hook(lambda m, a, o: out.__setitem__("o", o))
    xi = x[None].clone().requires_grad_(True)
    try:
        was = model.training
        model.eval()
        with torch.enable_grad():
            model(xi)
        model.train(was)
    finally:
        h.remove()
    o = out["o"]
    unit = o[0, channel] if position is None else o[0, channel, position[0], position[1]]
    (g,) = torch.autograd.grad(unit, xi)
    return g[0], float(unit.detach())


@pytest.mark.parametrize("arch,side", [pytest.param(a, s, marks=pytest.mark.slow if a in HEAVY else ())
                                       for a, s in FAMILIES])
def test_family_whole_api(arch, side, support_box):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torchvision's init-weights notices
        lens = zf.Lens.from_torchvision(arch, **({"init_weights": True} if arch in ("googlenet", "inception_v3")
                                                 else {}))
    lens.input_size = (3, side, side)
    model = lens.model
    inplace = [(p, m.inplace) for p, m in model.named_modules() if hasattr(m, "inplace")]
    before = model_state(model)
    torch.manual_seed(1)
    x = torch.randn(3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "the guided rule applies to ReLUs only" on Hardswish / SiLU nets
        probs = lens.predict(x)
        assert probs.shape == (1000,) and abs(float(probs.sum()) - 1) < 1e-4

        # two layers: a block in the middle and the last conv-like layer
        convs = [i for i in lens.table if i.kind == "conv"]
        low, high = convs[len(convs) // 2], convs[-1]
        assert len(set(lens.layers)) == len(lens.layers)
        for info in (low, high):
            for method in ("deconvnet", "guided", "gradient"):
                p = zf.project(lens, x, info.name, method=method)
                assert p.pixels.shape == x.shape and torch.isfinite(p.pixels).all()
                if method == "gradient":
                    ref, value = _autograd_reference(model, x, info.path, p.channel, p.position)
                    # ZF's seed: the unit's activation (read by the hook above) where the layer is rectified
                    # (which layers are is tested on hand-made nets in tests/core/test_units.py), else 1
                    ref = ref * (max(value, 0.0) if lens.rectified(info.name) else 1.0)
                    scale = float(ref.abs().max())
                    assert float((p.pixels - ref).abs().max()) <= 1e-4 * scale + 1e-9, (info.name, method)

        # the receptive field of the lower layer's centre unit: the graph's geometry, under a second
        fields = FieldMap(lens, low.name)
        assert fields.method in ("geometry", "chain")
        H, W = fields.out_shape[2:]
        plain = _saturation_free(model)
        for pos in [(H // 2, W // 2), (0, W - 1)]:
            assert fields.box(pos).as_tuple() == support_box(plain, low.path, [pos], (3, side, side))[0], pos

        # top-k over a few images
        images = torch.randn(5, 3, side, side)
        top = zf.top_activations(lens, images, high.name, channels=[0, 1], k=2, progress=False)
        acts = lens.run(images, [high.name])[1][high.name]
        strongest = acts[:, 0].flatten(1).max(1).values
        assert set(top.indices[0][:2].tolist()) == set(strongest.topk(2).indices.tolist())

        # occlusion against plain forwards of the occluded images
        size = side // 4
        occ = zf.occlusion(lens, x, size=size, stride=size, progress=False)
        boxes = occ.boxes.view(-1, 4)
        batch = torch.cat([occlude(lens, x, tuple(b.tolist())) for b in boxes])
        with torch.no_grad():
            was = model.training
            model.eval()
            ref = model(batch).softmax(1)[:, occ.target]
            model.train(was)
        assert torch.allclose(occ.probability.flatten(), ref, atol=1e-5), arch

        # one occluder move in the panel shows the plain API's probabilities
        from ..widgets.util import fire, read_top1
        panel = zf.OcclusionPanel(lens, x, size=size)
        try:
            canvas = panel.occluder.canvas
            fire(canvas, "mouse_down", canvas.width // 2, canvas.height // 2)
            fire(canvas, "mouse_up", canvas.width // 2, canvas.height // 2)
            box = panel.state["box"]
            expect = lens.predict(occlude(lens, x, box))
            _, index, shown = read_top1(panel.probs.value)
            # (random weights can leave near-ties: the shown class is the top one to rounding)
            assert shown == pytest.approx(float(expect[index]), abs=1e-6)
            assert shown == pytest.approx(float(expect.max()), abs=1e-6)
        finally:
            panel.close()
    assert_same_state(before, model_state(model))
    assert [(p, m.inplace) for p, m in model.named_modules() if hasattr(m, "inplace")] == inplace
