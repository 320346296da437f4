"""Receptive-field boxes: by hand, and against the support of the gradient (an independent float64 reference)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zfwidgets
from zfwidgets import Lens
from zfwidgets.analysis.receptive import Box, FieldMap, receptive_field


def all_positions(shape):
    H, W = shape[-2:]
    return [(y, x) for y in range(H) for x in range(W)]


def test_by_hand(hand_lens):
    # conv 3x3 no padding: output (y, x) reads rows y..y+2
    assert receptive_field(hand_lens, "conv1", (0, 0)) == Box(0, 0, 3, 3)
    assert receptive_field(hand_lens, "conv1", (5, 2)).as_tuple() == (5, 2, 8, 5)
    # max pool 2x2 over the conv: pool (i, j) covers conv rows 2i..2i+1, input rows 2i..2i+3
    assert receptive_field(hand_lens, "2", (1, 2)).as_tuple() == (2, 4, 6, 8)
    # the fully connected layer sees everything
    assert receptive_field(hand_lens, "fc2").as_tuple() == (0, 0, 8, 8)


def test_unclipped_box_and_box_helpers(zf_random):
    b = receptive_field(zf_random, "conv1", (0, 0))  # 5x5, padding 2
    assert b.as_tuple() == (0, 0, 3, 3) and b.unclipped == (-2, -2, 3, 3) and b.clipped
    inner = receptive_field(zf_random, "conv1", (10, 12))
    assert inner.as_tuple() == inner.unclipped == (8, 10, 13, 15) and not inner.clipped
    assert (inner.height, inner.width) == (5, 5)
    img = torch.arange(28 * 28.0).view(1, 28, 28)
    assert torch.equal(inner.crop(img), img[:, 8:13, 10:15])
    assert inner.crop(img.numpy()[0]).shape == (5, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inner.y0 = 3


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "pool2", "conv3", "conv5", "pool5"])
def test_bundled_architecture_every_position(zf_random, support_box, layer):
    fields = FieldMap(zf_random, layer)
    assert fields.method == "chain"
    positions = all_positions(fields.out_shape)
    expected = support_box(zf_random.model, layer, positions, (1, 28, 28))
    got = [fields.box(p).as_tuple() for p in positions]
    assert got == expected
    # the library's own gradient-support path agrees too
    grad = FieldMap(zf_random, layer, method="gradient")
    assert [grad.box(p).as_tuple() for p in positions[:: max(1, len(positions) // 12)]] == \
        expected[:: max(1, len(positions) // 12)]


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return Lens.from_torchvision("alexnet")


@pytest.mark.parametrize("layer", ["conv1", "conv2", "features.5", "conv5", "features.12"])
def test_alexnet_equals_gradient_support(alexnet, support_box, layer):
    fields = FieldMap(alexnet, layer)
    assert fields.method == "chain"
    H, W = fields.out_shape[2:]
    positions = [(0, 0), (H - 1, W - 1), (0, W - 1), (H // 2, W // 3), (H - 2, 1)]
    path = alexnet.resolve(layer)[1]
    expected = support_box(alexnet.model.features, path.split(".", 1)[1], positions, (3, 224, 224))
    assert [fields.box(p).as_tuple() for p in positions] == expected


def test_alexnet_unclipped_arithmetic(alexnet):
    # conv1: 11x11, stride 4, padding 2: output 0 reads -2..8, output 54 reads 214..224
    assert receptive_field(alexnet, "conv1", (0, 54)).unclipped == (-2, 214, 9, 225)
    assert receptive_field(alexnet, "conv1", (0, 54)).as_tuple() == (0, 214, 9, 224)


class Residual(nn.Module):
    """Not a chain: a skip connection, a dilated conv and a stride-2 conv with functional ReLUs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.conv3 = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 2, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = h + F.relu(self.conv2(h))
        h = self.conv3(self.pool(h))
        return self.fc(h.flatten(1))


def test_non_sequential_model_uses_its_graph_and_equals_the_gradient_support(support_box):
    lens = Lens(Residual(), input_size=(2, 13, 11))
    for layer in ["conv2", "pool", "conv3"]:
        for method in ("auto", "gradient"):
            fields = FieldMap(lens, layer, method=method)
            assert fields.method == ("geometry" if method == "auto" else "gradient")
            positions = all_positions(fields.out_shape)
            assert [fields.box(p).as_tuple() for p in positions] == \
                support_box(lens.model, layer, positions, (2, 13, 11))
    with pytest.raises(ValueError, match="gradient"):
        FieldMap(lens, "conv2", method="chain")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes(support_box, mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode=mode), nn.ReLU(),
                          nn.Conv2d(2, 2, 3, stride=2, padding=2, padding_mode=mode, dilation=2))
    lens = Lens(model, input_size=(1, 9, 10))
    for layer in ["conv1", "conv2"]:
        fields = FieldMap(lens, layer)
        positions = all_positions(fields.out_shape)
        assert [fields.box(p).as_tuple() for p in positions] == \
            support_box(model, lens.resolve(layer)[1], positions, (1, 9, 10))


def test_dilated_ceil_mode_pool_and_adaptive_pool():
    """Chain walk vs the library's gradient path (the reference cannot pool with dilation); both must
    contain the support of the real model's gradient."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True),
                          nn.Conv2d(3, 3, 2), nn.AdaptiveAvgPool2d((3, 2)))
    lens = Lens(model, input_size=(1, 15, 12))
    for layer in ["2", "conv2", "4"]:
        chain, grad = FieldMap(lens, layer), FieldMap(lens, layer, method="gradient")
        assert chain.method == "chain"
        for p in all_positions(chain.out_shape):
            box = chain.box(p)
            assert box == Box(*grad.box(p).as_tuple(), unclipped=box.unclipped)
            x = torch.randn(1, 1, 15, 12, requires_grad=True)
            out = model[: int(lens.resolve(layer)[1]) + 1](x)
            (g,) = torch.autograd.grad(out[0, :, p[0], p[1]].sum(), x)
            ys, xs = torch.nonzero(g[0, 0] != 0, as_tuple=True)
            if ys.numel():
                assert box.y0 <= ys.min() and ys.max() < box.y1 and box.x0 <= xs.min() and xs.max() < box.x1


def test_model_left_untouched(small_lens, model_hooks):
    before = model_hooks(small_lens.model)
    weights = [p.detach().clone() for p in small_lens.model.parameters()]
    for method in ("chain", "gradient"):
        receptive_field(small_lens, "conv2", (3, 4), method=method)
    assert model_hooks(small_lens.model) == before
    assert all(torch.equal(a, b) for a, b in zip(weights, small_lens.model.parameters()))
    assert all(p.grad is None for p in small_lens.model.parameters())


def test_bad_input(small_lens):
    with pytest.raises(ValueError, match="outside"):
        receptive_field(small_lens, "conv2", (8, 0))
    with pytest.raises(TypeError, match="Lens"):
        receptive_field(small_lens.model, "conv2", (0, 0))
    with pytest.raises(TypeError, match="position"):
        receptive_field(small_lens, "conv2", (1.0, 2))
    with pytest.raises(TypeError, match="position"):
        receptive_field(small_lens, "conv2")
    with pytest.raises(ValueError, match="no positions"):
        receptive_field(small_lens, "fc3", (0, 0))
    with pytest.raises(ValueError, match="unknown layer"):
        receptive_field(small_lens, "conv9", (0, 0))
    with pytest.raises(ValueError, match="method"):
        receptive_field(small_lens, "conv1", (0, 0), method="magic")
    lens = Lens(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(ValueError, match="input_size"):
        receptive_field(lens, "conv1", (0, 0))
    assert receptive_field(lens, "conv1", (0, 0), input_size=(1, 5, 5)).as_tuple() == (0, 0, 3, 3)


def test_public_name():
    assert zfwidgets.receptive_field is receptive_field


@pytest.mark.parametrize("arch,layers", [
    ("resnet50", ["conv1", "layer1.0", "layer2.3.conv2", "layer3.5", "layer4.2"]),
    ("densenet121", ["features.denseblock1", "features.transition2", "features.denseblock3.denselayer5.conv2",
                     "features.denseblock4"]),
])
def test_dag_receptive_fields_equal_the_gradient_support(support_box, arch, layers):
    """ResNet-50 and DenseNet-121 (adds, concatenations): the graph's geometry at the centre and the borders
    equals the support of an independent float64 gradient."""
    torch.manual_seed(0)
    lens = Lens.from_torchvision(arch)
    lens.input_size = (3, 112, 112)
    for layer in layers:
        fields = FieldMap(lens, layer)
        assert fields.method == "geometry"
        H, W = fields.out_shape[2:]
        positions = [(H // 2, W // 2), (0, 0), (H - 1, W - 1), (0, W // 2), (H // 2, W - 1)]
        got = [fields.box(p).as_tuple() for p in positions]
        assert got == support_box(lens.model, lens.resolve(layer)[1], positions, (3, 112, 112)), layer
    assert receptive_field(lens, lens.layers[-1]).as_tuple() == (0, 0, 112, 112)


class _FunctionalPools(nn.Module):
    """conv 3x3 -> F.relu -> F.max_pool2d(2) -> conv 3x3 -> F.adaptive_max_pool2d(1) -> fc: pooling as
    functions."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.conv2 = nn.Conv2d(2, 2, 3)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return self.fc(F.adaptive_max_pool2d(self.conv2(h), 1).flatten(1))


@pytest.mark.parametrize("pos,box", [((0, 0), (0, 0, 8, 8)), ((2, 3), (4, 6, 12, 14))])
def test_gradient_method_follows_functional_max_pooling(pos, box):
    """Issue 28 item 7: F.max_pool2d called in forward is summed like nn.MaxPool2d, so the gradient support
    is the whole receptive field, by hand: conv2's unit (r, c) reads pooled rows r..r+2, which read conv1 rows
    2r..2r+5, which read input rows 2r..2r+7 (the same for columns). Max pooling's own gradient reaches one
    pixel per window: without the sum the box would be smaller."""
    model = _FunctionalPools().eval()
    lens = Lens(model, input_size=(1, 16, 16))
    got = receptive_field(lens, "conv2", pos, method="gradient")
    assert (got.y0, got.x0, got.y1, got.x1) == box
    for p in model.parameters():       # the model itself untouched
        assert p.dtype == torch.float32
    whole = receptive_field(lens, "fc", method="gradient")    # through the adaptive pooling: every pixel
    assert (whole.y0, whole.x0, whole.y1, whole.x1) == (0, 0, 16, 16)
