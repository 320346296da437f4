"""Projections in bulk against zfwidgets.project (the per-hit projection, the graph's backward) and the
boxes against zfwidgets.receptive_field, on the bundled model and on chains of odd geometry (strides,
paddings, dilation, overlapping pools, border units), every rule; the general path on a non-chain model."""
import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets.mine import mine


def _check(lens, g, data, rule, per_map=3, tol=2e-3):
    n = 0
    for layer in g.layers:
        for c in range(0, g.channels(layer), max(1, g.channels(layer) // 5)):
            for h in g.hits(layer, c)[:per_map]:
                x = data[h.index]
                p = zf.project(lens, x, layer, c, position=h.position if h.position else "max", method=rule)
                box = zf.receptive_field(lens, layer, h.position)
                assert h.box == box, (layer, c, h.position, h.box, box)
                ref = box.crop(p.pixels)
                assert h.projection.shape == ref.shape
                scale = float(ref.abs().max())
                assert float((h.projection - ref).abs().max()) <= tol * max(scale, 1e-30), (layer, c, h.index)
                assert h.patch.shape == (box.height, box.width, 3)
                assert (h.patch == lens.to_display(lens.to_input(x))[box.slices]).all()
                n += 1
    assert n > 10


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_bundled_every_rule(lens, rule):
    data = [s.image for s in zf.samples()]
    g = mine(lens, data, k=4, rule=rule, batch_size=16, chunk=8, progress=False)
    _check(lens, g, data, rule)


class Odd(nn.Sequential):
    pass


def _odd_lens(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 12, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Dropout(0.3),
        nn.Conv2d(12, 10, 3, stride=1, padding=0), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(), nn.LazyLinear(5))
    model(torch.zeros(1, 3, 45, 41))
    return zf.Lens(model.eval(), input_size=(3, 45, 41))


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_odd_geometry_border_units(rule):
    lens = _odd_lens()
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(3, 45, 41, generator=gen) for _ in range(24)]
    g = mine(lens, data, k=5, rule=rule, batch_size=7, chunk=5, progress=False)
    assert g.layers == ["conv1", "conv2", "conv3"]
    _check(lens, g, data, rule, per_map=5)
    boxes = g.tensors("conv1")["boxes"]
    assert (boxes[..., 4] < 0).any() or (boxes[..., 6] > 45).any()   # some winners sit at the border


class Branchy(nn.Module):
    """Not a chain: the general path (zfwidgets.project per hit, receptive_field)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = torch.relu(self.conv2(a)) + a
        return self.fc(b.mean((2, 3)))


def test_general_path_on_a_non_chain_model():
    torch.manual_seed(0)
    lens = zf.Lens(Branchy().eval(), input_size=(1, 12, 12))
    gen = torch.Generator().manual_seed(2)
    data = [torch.randn(1, 12, 12, generator=gen) for _ in range(10)]
    g = mine(lens, data, ["conv1", "conv2", "fc"], k=3, rule="guided", progress=False)
    _check(lens, g, data, "guided")
    assert g.hits("fc", 0)[0].position is None and g.hits("fc", 0)[0].box.as_tuple() == (0, 0, 12, 12)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_branching_model_walks_the_graph_in_bulk(rule, monkeypatch):
    """ResNet-18 (random weights, 40 x 40): the winners' projections come from the cropped backward on the graph,
    batched (no per-hit zfwidgets.project), and equal the full backward through each image's recorded graph."""
    import importlib
    project_mod = importlib.import_module("zfwidgets.core.project")
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision("resnet18")
    lens.input_size = (3, 40, 40)
    gen = torch.Generator().manual_seed(3)
    data = [torch.randn(3, 40, 40, generator=gen) for _ in range(9)]

    def refuse(*a, **k):
        raise AssertionError("a per-hit projection on a model the graph walk handles")
    with monkeypatch.context() as m:
        m.setattr(project_mod, "project", refuse)
        g = mine(lens, data, ["layer1.0", "layer2.1", "layer3.0.conv1", "layer4.1"], k=3, rule=rule, batch_size=4,
                 chunk=4, progress=False)
    # the reference: autograd through the whole graph (the cropped walk switched off)
    monkeypatch.setattr(project_mod, "_cropped_backward", lambda *a, **k: None)
    _check(lens, g, data, rule, per_map=3, tol=2e-3)
