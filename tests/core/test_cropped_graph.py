"""The cropped backward on graphs (zfwidgets.core.backward): project() on ResNets, DenseNet, GoogLeNet,
MobileNetV2 and on small branching nets of odd geometry, against the full backward through the lens's
recorded forward (autograd, every node of the graph) and against captum's NeuronDeconvolution /
NeuronGuidedBackprop where captum's rule applies (every ReLU a module); batches of seeds with their own
windows against one seed at a time."""
import importlib
import warnings

import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets.core import backward as crop

from .conftest import assert_same_state, model_state, non_inplace_copy, unit_value

project_mod = importlib.import_module("zfwidgets.core.project")


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def full_backward(lens, x, layer, channel, position, rule, monkeypatch):
    """The projection by autograd through the whole recorded graph (the cropped walk switched off)."""
    with monkeypatch.context() as m:
        m.setattr(project_mod, "_cropped_backward", lambda *a, **k: None)
        return zf.project(lens, x, layer, channel, position=position, method=rule).pixels


def assert_cropped(lens, x, layer):
    """The walk applies to ``layer`` and the recorded forward holds what it reads."""
    path = lens.resolve(layer)[1]
    p = crop.plan(lens, tuple(x.shape), path)
    assert p is not None, crop.why_not(lens, tuple(x.shape), path)
    assert crop.values_of_forward(p, lens.forward(x, extra_layers=(layer,)), "guided") is not None


def no_autograd(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the cropped backward ran autograd")
    monkeypatch.setattr(torch.autograd, "grad", refuse)


ARCHS = {"resnet18": ["layer4.1", "layer2.0", "layer3.1.conv1"],
         "resnet50": ["layer4.2", "layer2.3", "layer3.0.downsample.0"],
         "densenet121": ["features.denseblock3", "features.transition1", "features.denseblock2.denselayer3.conv2"],
         "googlenet": ["inception4e", "inception3b", "inception4a.branch2.1.conv"],
         "mobilenet_v2": ["features.17", "features.5", "features.2.conv.1.0"]}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_graph_models_equal_full_backward(arch, monkeypatch):
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision(arch)
    lens.input_size = (3, 64, 64)
    torch.manual_seed(1)
    x = torch.randn(3, 64, 64)
    before = model_state(lens.model)
    for layer in ARCHS[arch]:
        assert_cropped(lens, x, layer)
        act = lens.forward(x, extra_layers=(layer,)).activations[lens.resolve(layer)[1]]
        H, W = act.shape[2:]
        for k, rule in enumerate(["deconvnet", "guided", "gradient"]):
            # the strongest unit, then a corner and an edge unit of another map
            for channel, pos in [(None, "max"), (k, (0, 0)), (k + 1, (H - 1, W // 2))]:
                ref = full_backward(lens, x, layer, channel, pos, rule, monkeypatch)
                with monkeypatch.context() as m:
                    no_autograd(m)
                    got = zf.project(lens, x, layer, channel, position=pos, method=rule).pixels
                assert rel_err(got, ref) < 1e-5, (arch, layer, rule, channel, pos)
    assert_same_state(before, model_state(lens.model))


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer3.1"), ("resnet50", "layer4.2"),
                                        ("densenet121", "features.denseblock2"), ("mobilenet_v2", "features.13")])
def test_graph_models_equal_captum(arch, layer):
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision(arch)
    lens.input_size = (3, 64, 64)
    torch.manual_seed(2)
    x = torch.randn(3, 64, 64)
    assert_cropped(lens, x, layer)
    path = lens.resolve(layer)[1]
    m = non_inplace_copy(lens.model).eval()
    for rule, cls in [("deconvnet", captum_attr.NeuronDeconvolution), ("guided", captum_attr.NeuronGuidedBackprop)]:
        p = zf.project(lens, x, layer, method=rule)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = cls(m, dict(m.named_modules())[path]).attribute(x[None], neuron_selector=(p.channel, *p.position))
        # captum seeds with 1, ZF with the activation where the map is rectified: a ResNet block ends with its ReLU
        # (DenseNet's block ends in a concatenation, MobileNetV2's in an add: not rectified, seed 1)
        ref = ref * unit_value(lens.model, x, path, p.channel, p.position, rectified=arch.startswith("resnet"))
        assert rel_err(p.pixels, ref[0]) < 1e-5, (arch, rule)


class Odd(nn.Module):
    """Branches of different strides and paddings united by an add, a concatenation of a conv, a ceil-mode max
    pooling and an average pooling, batch norm with random statistics, ReLU6, functional relu, dilation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, (5, 3), stride=(2, 1), padding=(2, 0))
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 8, 1, stride=2)
        self.c = nn.Conv2d(8, 6, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        self.avg = nn.AvgPool2d(1)
        self.act = nn.ReLU6()
        self.head = nn.Conv2d(22, 5, 3, stride=2)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = self.act(self.a(x) + self.b(x))
        z = torch.cat([self.c(y), self.pool(y), self.avg(y)], 1)
        return self.fc(torch.relu(self.head(z)).mean((2, 3)))


def odd_lens(seed):
    torch.manual_seed(seed)
    model = Odd().eval()
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    model.bn.weight.data.normal_()
    return zf.Lens(model, input_size=(3, 23, 18))


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_odd_branching_geometry_every_unit_position(rule, monkeypatch):
    for seed in range(2):
        lens = odd_lens(seed)
        x = torch.randn(3, 23, 18)
        for layer in ["head", "c", "a", "stem"]:
            assert_cropped(lens, x, layer)
            act = lens.forward(x, extra_layers=(layer,)).activations[lens.resolve(layer)[1]]
            H, W = act.shape[2:]
            for pos in [(0, 0), (H - 1, W - 1), (0, W - 1), (H // 2, W // 3)]:
                ref = full_backward(lens, x, layer, 1, pos, rule, monkeypatch)
                got = zf.project(lens, x, layer, 1, position=pos, method=rule).pixels
                assert rel_err(got, ref) < 1e-5, (seed, layer, pos, rule)
            ref = full_backward(lens, x, layer, 2, "map", rule, monkeypatch)
            got = zf.project(lens, x, layer, 2, position="map", method=rule).pixels
            assert rel_err(got, ref) < 1e-5, (seed, layer, "map", rule)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_batched_seeds_with_their_own_windows_equal_one_at_a_time(rule, monkeypatch):
    """Several images and seeds in one walk (windows of one size at different offsets, partly outside the
    maps, whole maps once as large): each equals its own full backward."""
    lens = odd_lens(3)
    xs = torch.randn(3, 3, 23, 18)
    path = lens.resolve("head")[1]
    p = crop.plan(lens, (3, 23, 18), path)
    H, W = p.shapes[p.target][2:]
    seeds = [(0, 1, 0, 0), (1, 4, H - 1, W - 1), (2, 0, H // 2, 1), (1, 2, 0, W - 1), (0, 3, 1, 2)]
    with torch.inference_mode():
        rec = crop.record([p], xs, rule)
        g = torch.zeros(len(seeds), p.shapes[p.target][1], 1, 1)
        for j, s in enumerate(seeds):      # ZF's seed: the unit's activation after head's relu
            g[j, s[1]] = unit_value(lens.model, xs[s[0]], path, s[1], (s[2], s[3]))
        sig = crop.walk(p, rec, g, [s[2] for s in seeds], [s[3] for s in seeds], rule, rows=[s[0] for s in seeds])
    for j, (r, c, y, x0) in enumerate(seeds):
        ref = full_backward(lens, xs[r], "head", c, (y, x0), rule, monkeypatch)
        got = torch.zeros_like(ref)
        oy, ox = sig.oy[j], sig.ox[j]
        a0, b0, a1, b1 = max(oy, 0), max(ox, 0), min(oy + sig.h, 23), min(ox + sig.w, 18)
        got[:, a0:a1, b0:b1] = sig.g[j, :, a0 - oy:a1 - oy, b0 - ox:b1 - ox]
        assert rel_err(got, ref) < 1e-5, seeds[j]


def test_unknown_node_falls_back_to_the_full_backward(monkeypatch):
    """A node the walk does not know (a multiply by a gate) below the layer: plan() says why; project() is
    still exact (autograd)."""
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            a = self.conv1(x)
            return self.conv2(a * torch.sigmoid(a)).mean((2, 3))

    torch.manual_seed(0)
    lens = zf.Lens(Gated().eval(), input_size=(3, 12, 12))
    assert crop.plan(lens, (3, 12, 12), "conv2") is None
    assert "mul" in crop.why_not(lens, (3, 12, 12), "conv2")
    x = torch.randn(3, 12, 12)
    got = zf.project(lens, x, "conv2", 1, position=(2, 3), method="gradient").pixels
    xd = x[None].requires_grad_(True)
    a = lens.model.conv1(xd)
    out = lens.model.conv2(a * torch.sigmoid(a))
    (ref,) = torch.autograd.grad(out[0, 1, 2, 3], xd)
    assert rel_err(got, ref[0]) < 1e-5


def test_weights_changed_after_the_plan_are_read_afresh(monkeypatch):
    lens = odd_lens(4)
    x = torch.randn(3, 23, 18)
    zf.project(lens, x, "head", 1, position=(1, 1))
    with torch.no_grad():
        lens.model.a.weight.mul_(-2.0)
        lens.model.bn.weight.mul_(3.0)
    ref = full_backward(lens, x, "head", 1, (1, 1), "guided", monkeypatch)
    got = zf.project(lens, x, "head", 1, position=(1, 1), method="guided").pixels
    assert rel_err(got, ref) < 1e-5
