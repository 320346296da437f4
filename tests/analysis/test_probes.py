"""Linear probes and feature generalisation against scikit-learn and hand-computed features; the papers'
findings on the bundled model."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

import zfwidgets
from zfwidgets import Lens
from zfwidgets.analysis.probes import feature_generalisation, fit_softmax, layer_features, layer_probes


def _standardise(train, other):
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return (train - mean) / std, (other - mean) / std


def _sklearn(train, ytr, l2):
    return LogisticRegression(C=1.0 / (l2 * len(ytr)), tol=1e-10, max_iter=5000).fit(train, ytr)


def test_fit_softmax_matches_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6)) * [1, 2, 3, 0.5, 1, 4] + [0, 1, 0, 0, 5, 0]
    y = (X[:, 0] + 0.5 * X[:, 1] - 0.3 * X[:, 2] + rng.normal(size=120) > [[-1], [1]]).sum(0)  # 3 classes
    Xt = rng.normal(size=(50, 6)) * [1, 2, 3, 0.5, 1, 4] + [0, 1, 0, 0, 5, 0]
    clf = fit_softmax(torch.from_numpy(X), torch.from_numpy(y), l2=0.05)
    Z, Zt = _standardise(X, Xt)
    ref = _sklearn(Z, y, 0.05)
    probs = clf.logits(torch.from_numpy(Xt)).softmax(1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(Zt), atol=2e-4)
    np.testing.assert_allclose(clf.weight.numpy(), ref.coef_, atol=2e-3)


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 3, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    x = torch.randn(90, 1, 8, 8, generator=g)
    x[:, :, :4] += torch.arange(90).remainder(3).view(-1, 1, 1, 1).float()  # the class brightens the top half
    y = torch.arange(90).remainder(3)
    return Lens(model, input_size=(1, 8, 8)), x, y


def _by_hand(model, x):
    """Every layer's rectified output with functional ops (no hooks)."""
    with torch.no_grad():
        c1 = F.conv2d(x, model[0].weight, model[0].bias, padding=1)
        c2 = F.conv2d(c1.relu(), model[2].weight, model[2].bias, stride=2, padding=1)
        f3 = F.linear(c2.relu().flatten(1), model[5].weight, model[5].bias)
        f4 = F.linear(f3.relu(), model[7].weight, model[7].bias)
    return {"conv1": c1.relu(), "conv2": c2.relu(), "fc3": f3.relu(), "fc4": f4}


def test_layer_features_pool_and_rectify(tiny):
    lens, x, _ = tiny
    feats = layer_features(lens, x, ["conv1", "conv2", "fc3", "fc4"], grid=4, batch_size=16, show_progress=False)
    ref = _by_hand(lens.model, x)
    # conv1 is 8x8: 2x2 blocks averaged to 4x4, computed with numpy reshapes
    c1 = ref["conv1"].numpy().reshape(90, 2, 4, 2, 4, 2).mean((3, 5)).reshape(90, -1)
    np.testing.assert_allclose(feats["conv1"].numpy(), c1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["conv2"].numpy(), ref["conv2"].flatten(1).numpy(), rtol=1e-5, atol=1e-6)  # 4x4
    np.testing.assert_allclose(feats["fc3"].numpy(), ref["fc3"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["fc4"].numpy(), ref["fc4"].numpy(), rtol=1e-5, atol=1e-6)  # output: not rectified
    assert (feats["fc4"] < 0).any()
    full = layer_features(lens, x[:5], ["conv1"], grid=None, show_progress=False)
    assert full["conv1"].shape == (5, 2 * 8 * 8)


def test_layer_probes_against_sklearn(tiny):
    lens, x, y = tiny
    model = lens.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = layer_probes(lens, x[:60], y[:60], x[60:], y[60:], grid=4, l2=0.01, show_progress=False)
    assert res.layers == ["conv1", "conv2", "fc3"]  # every layer but the output
    assert res.feature_dim.tolist() == [32, 48, 4]
    ref = _by_hand(model, x)
    for k, l in enumerate(res.layers):
        f = ref[l].flatten(1).numpy().astype(float)
        if l == "conv1":
            f = ref[l].numpy().reshape(90, 2, 4, 2, 4, 2).mean((3, 5)).reshape(90, -1)
        Z, Zt = _standardise(f[:60], f[60:])
        clf = _sklearn(Z, y[:60].numpy(), 0.01)
        # the same convex problem: at most one borderline test image may fall the other way
        assert abs(res.test_accuracy[k] - clf.score(Zt, y[60:].numpy())) <= 1 / 30 + 1e-9
        assert abs(res.train_accuracy[k] - clf.score(Z, y[:60].numpy())) <= 1 / 60 + 1e-9
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert "conv2" in res.table() and len(res.plot().axes) == 1


def test_feature_generalisation_on_given_data(tiny):
    lens, x, y = tiny
    model = lens.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = (x[:60], y[:60], x[60:], y[60:])
    g = feature_generalisation(lens, (3, 5), data=data, repeats=2, scratch_steps=20, l2=0.01, show_progress=False)
    assert g.frozen_accuracy.shape == (2, 2) and g.scratch_accuracy.shape == (2, 2)
    assert g.layer == "fc3"  # the last hidden layer
    ref = _by_hand(model, x)["fc3"].numpy().astype(float)
    for r in range(2):
        for k, n in enumerate((3, 5)):
            idx = g.train_indices[r][k]
            assert len(idx) == 3 * n and np.bincount(y[:60].numpy()[idx]).tolist() == [n] * 3
            Z, Zt = _standardise(ref[idx], ref[60:])
            clf = _sklearn(Z, y[idx].numpy(), 0.01)
            assert abs(g.frozen_accuracy[r, k] - clf.score(Zt, y[60:].numpy())) <= 1 / 30 + 1e-9
    assert ((g.scratch_accuracy >= 0) & (g.scratch_accuracy <= 1)).all()
    assert (g.scratch_steps <= 20).all() and (g.scratch_steps > 0).all()
    again = feature_generalisation(lens, (3, 5), data=data, repeats=2, scratch_steps=20, l2=0.01, show_progress=False)
    np.testing.assert_array_equal(again.scratch_accuracy, g.scratch_accuracy)  # seeded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "from scratch" in g.table() and len(g.plot().axes) == 1


def test_bad_input(tiny):
    lens, x, y = tiny
    with pytest.raises(ValueError, match="labels"):
        layer_probes(lens, x[:10], y[:9], x[10:], y[10:])
    with pytest.raises(ValueError, match="grid"):
        layer_probes(lens, x[:10], y[:10], x[10:], y[10:], grid=0)
    with pytest.raises(ValueError, match="unknown layer"):
        layer_probes(lens, x[:10], y[:10], x[10:], y[10:], layers=["fc9"])
    with pytest.raises(TypeError):
        layer_probes(lens, "images", y[:10], x[10:], y[10:])
    data = (x[:60], y[:60], x[60:], y[60:])
    with pytest.raises(ValueError, match="smallest class"):
        feature_generalisation(lens, (30,), data=data)
    with pytest.raises(TypeError):
        feature_generalisation(lens, (2.5,), data=data)
    with pytest.raises(ValueError):
        feature_generalisation(lens, (0,), data=data)
    with pytest.raises(TypeError):
        feature_generalisation(lens, 3, data=(x, y))
    with pytest.raises(ValueError, match="l2"):
        fit_softmax(torch.zeros(3, 2), torch.tensor([0, 1, 0]), l2=-1)


# ----- the papers' findings on the bundled model ----------------------------------------------------
def _weights():
    try:
        zfwidgets.model_card("zfnet-fashion")
        return True
    except FileNotFoundError:
        return False


def _fashion():
    from zfwidgets.zoo.data import find_fashion_mnist, load_fashion_mnist
    try:
        find_fashion_mnist()
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Fashion-MNIST is not installed")
    return load_fashion_mnist("train"), load_fashion_mnist("test")


@pytest.mark.slow
@pytest.mark.skipif(not _weights(), reason="the bundled weights are not installed")
def test_bundled_probe_accuracy_rises_with_depth():
    (xtr, ytr), (xte, yte) = _fashion()
    lens = zfwidgets.load("zfnet-fashion")
    res = layer_probes(lens, xtr[:1500], ytr[:1500], xte[:1000], yte[:1000], show_progress=False)
    acc = dict(zip(res.layers, res.test_accuracy))
    print(res.table())
    # ZF Table 7: deeper features are more discriminative
    assert acc["conv1"] < acc["conv3"] < acc["fc7"]
    assert acc["conv1"] < acc["conv2"] and acc["conv5"] < acc["fc7"]
    assert max(acc.values()) == pytest.approx(max(acc["fc6"], acc["fc7"]), abs=0.01)


@pytest.mark.slow
@pytest.mark.skipif(not _weights(), reason="the bundled weights are not installed")
@pytest.mark.xfail(strict=True, reason=(
    "ZF §5.2 does not reproduce with the bundled model's fc7 (ZF's layer): on the digits, frozen fc7 + softmax "
    "58.8% / 69.8% vs from scratch (BatchNorm recipe, 100 steps, every draw converging) about 87% / 91% at "
    "N = 5 / 10 per class (notebooks/09, 3 draws, shipped weights). Clothes features are too specific to transfer "
    "to digits, another domain. strict: an XPASS after retraining means this finding now holds."))
def test_bundled_frozen_features_beat_scratch_at_small_n():
    g = feature_generalisation(zfwidgets.load("zfnet-fashion"), (5, 10), show_progress=False)
    print(g.table())
    assert (g.scratch_train_accuracy > 0.9).all()  # the scratch nets did fit their training sets
    assert (g.frozen_accuracy > g.scratch_accuracy).all()
