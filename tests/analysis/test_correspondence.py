"""correspondence: Delta against a direct pairwise Hamming count on a tiny hand-built model."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch import nn

from zfwidgets import Lens
from zfwidgets.analysis.correspondence import correspondence, hamming_consistency

H = W = 6


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(1, 2, 3)
    fc = nn.Linear(2 * 4 * 4, 5)
    out = nn.Linear(5, 3)
    with torch.no_grad():
        for p in (*conv.parameters(), *fc.parameters(), *out.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc, nn.ReLU(), out)
    lens = Lens(model, input_size=(1, H, W), mean=[0.5], std=[0.25])  # fill "mean" -> 0 in input space
    images = torch.randn(4, 1, H, W, generator=g)
    return lens, images


def _features(model, x, layer):
    """The rectified features by hand, with the functional ops (no hooks, no lens)."""
    with torch.no_grad():
        return _features_nograd(model, x, layer)


def _features_nograd(model, x, layer):
    conv, fc = model[0], model[3]
    c = F.relu(F.conv2d(x, conv.weight, conv.bias)).flatten(1)
    if layer == "conv1":
        return c.double().numpy()
    return F.relu(F.linear(c, fc.weight, fc.bias)).double().numpy()


def _direct_delta(model, images, boxes, layer, fill=0.0):
    orig = _features(model, images, layer)
    masked = images.clone()
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        masked[i, :, y0:y1, x0:x1] = fill
    eps = orig - _features(model, masked, layer)
    s = np.sign(eps)  # numpy's sign: sign(0) = 0
    total = 0
    for i, j in itertools.permutations(range(len(boxes)), 2):
        total += int(np.sum(s[i] != s[j]))
    return total, eps


def test_hamming_consistency_by_hand():
    s = np.array([[1, 0, -1, 1], [1, 1, -1, -1], [0, 1, -1, 1]])
    # pairs (0,1): 2 differ; (0,2): 2; (1,2): 2 -> 6 unordered, 12 ordered
    assert hamming_consistency(s) == 12
    assert hamming_consistency(np.zeros((3, 5))) == 0
    with pytest.raises(ValueError):
        hamming_consistency(np.array([[2, 0]]))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(1, 12), st.integers(0, 2 ** 31 - 1))
def test_hamming_consistency_equals_pairwise_count(n, d, seed):
    s = np.random.default_rng(seed).integers(-1, 2, size=(n, d))
    brute = sum(int(np.sum(s[i] != s[j])) for i in range(n) for j in range(n) if i != j)
    assert hamming_consistency(s) == brute


def test_delta_equals_direct_hamming_count(tiny):
    lens, images = tiny
    parts = {"a": [(0, 0, 2, 2), (1, 1, 3, 3), (0, 3, 2, 5), (2, 2, 4, 4)],
             "b": [(3, 3, 6, 6), (3, 0, 6, 3), (0, 0, 3, 3), (2, 2, 5, 5)]}
    res = correspondence(lens, images, parts, layers=["conv1", "fc2"], random_controls=4, seed=5, tol=0)
    assert res.layers == ["conv1", "fc2"] and res.parts == ["a", "b"]
    for p, part in enumerate(res.parts):
        for k, layer in enumerate(res.layers):
            ref, eps = _direct_delta(lens.model, images, parts[part], layer)
            assert res.delta[p, k] == ref
            D = eps.shape[1]
            assert res.delta_normalised[p, k] == pytest.approx(ref / (4 * 3 * D))
    # the random controls: one group per set of box sizes (a: 2x2, b: 3x3), each box the size of the
    # part's box in that image, inside the image, and Delta counted the same way
    assert res.controls == ["random (a size)", "random (b size)"] and res.control_boxes.shape == (2, 4, 4, 4)
    assert res.control_of == {"a": "random (a size)", "b": "random (b size)"}
    for g, size in enumerate((2, 3)):
        for r in range(4):
            boxes = res.control_boxes[g, r]
            assert ((boxes[:, 2] - boxes[:, 0]) == size).all() and ((boxes[:, 3] - boxes[:, 1]) == size).all()
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= H).all() and (boxes[:, 3] <= W).all()
            for k, layer in enumerate(res.layers):
                assert res.control_delta[g, r, k] == _direct_delta(lens.model, images, boxes.tolist(), layer)[0]
    assert len({tuple(b) for b in res.control_boxes[1].reshape(-1, 4).tolist()}) > 4  # positions vary
    np.testing.assert_allclose(res.control_std[0], res.control_delta_normalised[0].std(0))


def test_zero_differences_agree(tiny):
    # boxes in a corner: the conv1 positions the 3x3 filters never see from there have eps == 0 in every
    # image; with sign(0) = 0 those entries agree, so Delta only counts the reachable ones
    lens, images = tiny
    boxes = [(0, 0, 1, 1)] * 4
    res = correspondence(lens, images, boxes, layers=["conv1"], random_controls=1, tol=0)
    ref, eps = _direct_delta(lens.model, images, boxes, "conv1")
    assert (eps == 0).any(axis=0).sum() > 0
    assert res.delta[0, 0] == ref
    # an identical mask on identical images changes every representation identically: Delta = 0
    same = images[:1].repeat(3, 1, 1, 1)
    res = correspondence(lens, same, [(1, 1, 4, 4)] * 3, layers=["conv1", "fc2"], random_controls=1)
    assert res.delta.tolist() == [[0.0, 0.0]]


def test_fill_default_layers_table_and_plot(tiny):
    lens, images = tiny
    res = correspondence(lens, images, [(1, 1, 3, 3)] * 4, random_controls=3, fill=1.5, tol=0)
    assert res.layers == ["conv1", "fc2"]  # last conv and last hidden fc layer
    ref, _ = _direct_delta(lens.model, images, [(1, 1, 3, 3)] * 4, "fc2", fill=1.5)
    assert res.delta[0, 1] == ref
    text = res.table()
    assert "random" in text and "±" in text and "part" in text
    assert len(res.plot().axes) >= 5


def test_model_left_unchanged_and_bad_input(tiny):
    lens, images = tiny
    model = lens.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    correspondence(lens, images, [(0, 0, 2, 2)] * 4, random_controls=2)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="one box per image"):
        correspondence(lens, images, [(0, 0, 2, 2)] * 3)
    with pytest.raises(ValueError, match="outside"):
        correspondence(lens, images, [(0, 0, 7, 2)] * 4)
    with pytest.raises(ValueError, match="outside"):
        correspondence(lens, images, [(2, 2, 2, 4)] * 4)
    with pytest.raises(TypeError):
        correspondence(lens, images, [(0, 0, 2.5, 2)] * 4)
    with pytest.raises(TypeError):
        correspondence(lens, images, "eyes")
    with pytest.raises(ValueError, match="at least 2"):
        correspondence(lens, images[:1], [(0, 0, 2, 2)])
    with pytest.raises(ValueError, match="random_controls"):
        correspondence(lens, images, [(0, 0, 2, 2)] * 4, random_controls=0)
    with pytest.raises(ValueError, match="unknown layer"):
        correspondence(lens, images, [(0, 0, 2, 2)] * 4, layers=["conv7"])
    with pytest.raises(ValueError, match="fill"):
        correspondence(lens, images, [(0, 0, 2, 2)] * 4, fill="grey")
