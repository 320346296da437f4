"""Units as ZF define them (issue 27, item 1): a projection starts from the unit's activation in the rectified
map; a unit at or below 0 there projects to nothing. References are float64 loops written out here."""
import numpy as np
import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets.core import deconvnet_steps, select_activation

METHODS = ("deconvnet", "guided", "gradient")


def issue_net(bias=-100.0):
    """The issue's reproduction: conv1 (1->1, 2x2, weights 1) -> ReLU -> MaxPool2d(2) -> Linear(4, 2)."""
    conv = nn.Conv2d(1, 1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(bias)
    torch.manual_seed(0)
    m = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 2)).eval()
    return zf.Lens(m, input_size=(1, 5, 5), mean=[0.0], std=[1.0])


def image(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, 5, 5, generator=g) * 10


def test_a_unit_at_zero_projects_to_nothing():
    lens, x = issue_net(), image()
    for layer in ("conv1", "2"):                 # the convolution (read after its ReLU) and the pooled map
        for method in METHODS:
            p = zf.project(lens, x, layer, 0, method=method)
            assert not p.active and p.activation == 0.0, (layer, method)
            assert float(p.pixels.abs().max()) == 0.0, (layer, method)
    steps = deconvnet_steps(lens, x, "2", 0)
    assert float(steps[-1][1].abs().max()) == 0.0
    assert all(not g.requires_grad for _, g in steps)
    steps[-1][1].numpy()                          # detached: numpy works (issue item 1, point 4)


def test_a_negative_pre_activation_projects_to_nothing():
    lens, x = issue_net(bias=-22.0), image()      # some units fire, some do not
    conv = lens.model[0]
    with torch.no_grad():
        pre = conv(x)[0, 0].double()
    neg = (pre <= 0).nonzero()[0].tolist()
    for method in METHODS:
        p = zf.project(lens, x, "conv1", 0, position=tuple(neg), method=method)
        assert not p.active and p.activation == 0.0
        assert float(p.pixels.abs().max()) == 0.0


def hand_projection(x, w, b, pool_unit, method):
    """float64 loop: conv (one 2x2 filter) -> ReLU -> 2x2 max pool; project pool unit (i, j) seeded with its
    activation. On this path every rule passes the (positive) signal: the switch's forward value is > 0."""
    x, w = x[0, 0].double(), w[0, 0].double()
    H = x.shape[0] - 1
    conv = torch.zeros(H, H, dtype=torch.float64)
    for y in range(H):
        for z in range(H):
            conv[y, z] = sum(x[y + a, z + c] * w[a, c] for a in range(2) for c in range(2)) + float(b)
    i, j = pool_unit
    window = [(2 * i + a, 2 * j + c) for a in range(2) for c in range(2)]
    sy, sx = max(window, key=lambda yx: (conv[yx], -yx[0], -yx[1]))     # the first maximum in row-major order
    value = max(float(conv[sy, sx]), 0.0)
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    if value > 0:
        for a in range(2):
            for c in range(2):
                out[sy + a, sx + c] += value * w[a, c]
    return value, out


def test_an_active_unit_projects_its_activation():
    torch.manual_seed(3)
    lens, x = issue_net(bias=-12.0), image()
    conv = lens.model[0]
    with torch.no_grad():
        conv.weight.copy_(torch.rand(1, 1, 2, 2) + 0.2)
        conv.bias.zero_()
        pooled = nn.functional.max_pool2d(conv(x), 2).flatten().sort().values
        conv.bias.fill_(-float(pooled[1] + pooled[2]) / 2)        # two pooled units fire, two do not
    lens.clear_cache()
    fired = 0
    for i in range(2):
        for j in range(2):
            for method in METHODS:
                value, ref = hand_projection(x, conv.weight.detach(), conv.bias.detach(), (i, j), method)
                p = zf.project(lens, x, "2", 0, position=(i, j), method=method)
                assert p.active == (value > 0)
                assert p.activation == pytest.approx(value, rel=1e-5, abs=1e-5)
                np.testing.assert_allclose(p.pixels[0].double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
            fired += value > 0
    assert fired == 2
    d = deconvnet_steps(lens, x, "2", 0, position=(0, 0), dtype=torch.float64)[-1][1]
    _, ref = hand_projection(x, conv.weight.detach(), conv.bias.detach(), (0, 0), "deconvnet")
    np.testing.assert_allclose(d[0, 0].numpy(), ref.numpy(), rtol=1e-9, atol=1e-9)


def test_class_scores_keep_a_seed_of_one():
    lens, x = issue_net(bias=-12.0), image()
    fc = lens.model[4]
    p = zf.project(lens, x, "fc2", 1, method="gradient")
    assert p.active
    # the gradient of score 1 by hand: through the pool's switches and the ReLU's mask
    xx = x.clone().double().requires_grad_(True)
    m64 = lens.model.double()
    (g,) = torch.autograd.grad(m64(xx)[0, 1], xx)
    lens.model.float()
    np.testing.assert_allclose(p.pixels.double().numpy(), g[0].numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert p.activation == pytest.approx(float(lens.model(x)[0, 1]), rel=1e-5)
    assert fc is lens.model[4]


def test_which_map_each_layer_denotes():
    lens = issue_net()
    assert lens.rectified("conv1") and lens.rectified("2") and not lens.rectified("fc2")
    assert "after its ReLU" in lens.summary().splitlines()[1]
    torch.manual_seed(0)
    import torchvision
    r = zf.Lens(torchvision.models.resnet18(num_classes=3).eval(), input_size=(3, 32, 32))
    # conv1 is followed by batch norm, not a ReLU; a basic block ends with its ReLU
    assert not r.rectified("conv1") and r.rectified("layer1.0") and not r.rectified("fc")


def test_select_activation_ties_and_inactive_maps():
    a = torch.tensor([[[[-1.0, -3.0], [-2.0, -0.5]], [[1.0, 4.0], [4.0, 0.0]]]])
    seed, c, pos, value, active = select_activation(a, "l", rectified=True)
    assert (c, pos, value, active) == (1, (0, 1), 4.0, True)           # the first maximum in row-major order
    assert float(seed.sum()) == 4.0
    seed, c, pos, value, active = select_activation(a, "l", 0, rectified=True)
    assert (pos, value, active) == ((0, 0), 0.0, False) and float(seed.abs().sum()) == 0.0
    seed, c, pos, value, active = select_activation(a, "l", 0)          # not rectified: the raw maximum, seed 1
    assert (pos, value, active) == ((1, 1), -0.5, True) and float(seed.sum()) == 1.0


def test_top_activations_rank_the_rectified_map():
    lens = issue_net(bias=-30.0)
    xs = torch.cat([image(s) for s in range(6)])
    with torch.no_grad():
        pre = lens.model[0](xs).flatten(1).amax(1)
    top = zf.top_activations(lens, list(xs), "conv1", k=6, progress=False)
    vals = top.values[0].tolist()
    assert vals == sorted(pre.clamp(min=0).tolist(), reverse=True)
    for h in top.hits[0]:
        assert h.active == (h.activation > 0)
        if not h.active:
            assert float(h.projection.abs().max()) == 0.0
    # inactive images tie at 0: the earlier image first
    zeros = [h.index for h in top.hits[0] if not h.active]
    assert zeros == sorted(zeros)
