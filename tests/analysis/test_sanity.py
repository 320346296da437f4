"""Sanity checks (METHODS.md §13): randomize copies and re-initialises exactly the asked layers, leaving the
user's model and the global random state alone; sanity_check's figures equal a recomputation written here
(zf.project on randomize's lenses, scipy's Spearman, scikit-image's SSIM and HOG); steps above a hidden unit's
layer are left out; selectivity on a hand-made net whose units draw the same picture; bad input."""
import copy

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity
from torch import nn

import zfwidgets as zf
from zfwidgets.analysis.sanity import (METRICS, SanityCheck, _layer_seed, randomised_layers, randomize,
                                       sanity_check, selectivity)


@pytest.fixture(scope="module")
def lens():
    return zf.load("zfnet-fashion")


@pytest.fixture(scope="module")
def images():
    return [s.image for s in zf.samples()[:2]]


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    after = model.state_dict()
    assert set(after) == set(before)
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


def keys_of(lens, layers):
    return sorted(k for k in lens.model.state_dict() if k.split(".")[0] in layers)


def test_randomize_changes_exactly_the_asked_layers_of_a_copy(lens):
    before = state(lens.model)
    rng = torch.get_rng_state()
    name = lens.name
    top = ["conv4", "conv5", "fc6", "fc7", "fc8"]
    cases = [("conv4", True, top), ("conv4", False, ["conv4"]), (["conv2", "fc6"], False, ["conv2", "fc6"]),
             (["fc6", "conv2"], True, ["conv2", "conv3"] + top), ("fc8", True, ["fc8"])]
    for layer, cascade, expected in cases:
        r = randomize(lens, layer, cascade=cascade)
        assert r.model is not lens.model
        assert changed(before, r.model) == keys_of(lens, expected), (layer, cascade)
        assert randomised_layers(lens, layer, cascade=cascade) == [l for l in lens.layers if l in expected]
        # the user's model bit-identical, the global RNG state as it was
        assert changed(before, lens.model) == []
        assert torch.equal(torch.get_rng_state(), rng)
    assert lens.name == name
    r = randomize(lens, "conv4")
    assert r.name == "zfnet-fashion (randomised from conv4)"
    assert (r.transform, r.class_names, r.input_size, r.mean, r.std) == \
        (lens.transform, lens.class_names, lens.input_size, lens.mean, lens.std)
    assert r.layers == lens.layers


def test_randomize_uses_each_modules_reset_parameters_under_a_per_layer_seed(lens):
    r = randomize(lens, "conv4", seed=3)
    for path in ("conv4", "fc8"):
        m = copy.deepcopy(lens.model.get_submodule(path))
        torch.manual_seed(_layer_seed(3, path))
        m.reset_parameters()
        got = r.model.get_submodule(path)
        assert torch.equal(got.weight, m.weight) and torch.equal(got.bias, m.bias)
    # a layer gets the same weights alone as in a cascade; another seed gives others
    alone = randomize(lens, "fc8", cascade=False, seed=3)
    assert torch.equal(alone.model.fc8.weight, r.model.fc8.weight)
    assert not torch.equal(randomize(lens, "fc8", seed=4).model.fc8.weight, r.model.fc8.weight)


class Scale(nn.Module):
    """A module with a parameter and no reset_parameters()."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.s


def bn_net(extra=None):
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    if extra is not None:
        layers.append(extra)
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return zf.Lens(model.eval(), input_size=(1, 8, 8))


def test_a_layer_takes_its_batch_norm_along_and_uncovered_parameters_are_refused():
    lens = bn_net()
    assert lens.layers == ["conv1", "conv2", "fc3"]
    assert randomised_layers(lens, "conv2", cascade=False) == ["4", "5"]
    before = state(lens.model)
    r = randomize(lens, "conv2")
    assert changed(before, r.model) == sorted(k for k in before if k.split(".")[0] in ("4", "5", "8")
                                              and not k.endswith("num_batches_tracked"))
    lens = bn_net(Scale())
    before = state(lens.model)
    with pytest.raises(ValueError, match="reset_parameters"):
        randomize(lens, "conv2")
    assert changed(before, lens.model) == []


# ----- sanity_check against a recomputation --------------------------------------------------------------
def metrics_by_hand(a, b):
    """The four similarities written out: sum over channels (|x| or x), Spearman; max-scaled |x| for SSIM/HOG."""
    a, b = a.double().numpy(), b.double().numpy()
    ha, hb, sa, sb = np.abs(a).sum(0), np.abs(b).sum(0), a.sum(0), b.sum(0)
    na, nb = ha / ha.max(), hb / hb.max()
    fa, fb = (hog(m, orientations=9, pixels_per_cell=(7, 7), cells_per_block=(2, 2)) for m in (na, nb))
    return {"spearman_abs": spearmanr(ha.ravel(), hb.ravel()).statistic,
            "spearman": spearmanr(sa.ravel(), sb.ravel()).statistic,
            "ssim": structural_similarity(na, nb, data_range=1.0, win_size=7),
            "hog": np.corrcoef(fa, fb)[0, 1]}


def test_sanity_check_equals_a_recomputation(lens, images):
    before = state(lens.model)
    steps = ["cascade:fc8", "cascade:conv3", "independent:conv5"]
    sc = sanity_check(lens, images, methods=("deconvnet", "guided", "gradient"), steps=steps, seed=2, keep=2,
                      progress=False)
    assert isinstance(sc, SanityCheck)
    assert sc.steps == ["none", *steps] and sc.skipped == [] and sc.layer == "fc8"
    assert sc.unit.startswith("class score")
    tops = [int(lens.predict(im).argmax()) for im in images]
    assert [u for u, _ in sc.units] == tops
    rlenses = {s: randomize(lens, s.split(":")[1], cascade=s.startswith("cascade"), seed=2) for s in steps}
    for m in sc.methods:
        for i, im in enumerate(images):
            trained = zf.project(lens, im, "fc8", tops[i], method=m).pixels
            for s in sc.steps:
                for metric in METRICS:
                    assert sc.per_image(m, "none", metric)[i] == pytest.approx(1.0, abs=1e-9)
                if s == "none":
                    continue
                q = zf.project(rlenses[s], im, "fc8", tops[i], method=m).pixels
                assert torch.allclose(sc.projections[m][s][i], q, atol=1e-6)
                expected = metrics_by_hand(trained, q)
                for metric in METRICS:
                    assert sc.per_image(m, s, metric)[i] == pytest.approx(expected[metric], abs=1e-6), (m, s, metric)
            for s in steps:
                for metric in METRICS:
                    assert sc.similarity(m, s, metric) == pytest.approx(np.mean(sc.per_image(m, s, metric)), abs=1e-12)
    assert changed(before, lens.model) == []
    assert sc.similarity("gradient", "none", "ssim") == 1.0
    fig = sc.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * (1 + 3) + 4   # image, trained, 2 cascade steps; 4 curves


def test_steps_above_a_hidden_unit_are_left_out(lens, images):
    calls = []
    sc = sanity_check(lens, images[:1], "conv3", methods=("guided",), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (7, 7)                      # one update per step run
    assert "values" not in repr(sc) and "conv3" in repr(sc)
    above = ["fc8", "fc7", "fc6", "conv5", "conv4"]
    assert sc.skipped == [f"cascade:{l}" for l in above] + [f"independent:{l}" for l in above]
    assert sc.steps == ["none", "cascade:conv3", "cascade:conv2", "cascade:conv1", "independent:conv3",
                        "independent:conv2", "independent:conv1"]
    assert "conv3" in sc.note and "left out" in sc.note
    with pytest.raises(ValueError, match="left out"):
        sc.similarity("guided", "cascade:fc8")
    p = zf.project(lens, images[0], "conv3", method="guided")
    assert sc.units == [(p.channel, p.position)]
    q = zf.project(randomize(lens, "conv2"), images[0], "conv3", p.channel, position=p.position, method="guided")
    expected = metrics_by_hand(p.pixels, q.pixels)
    for metric in METRICS:
        assert sc.per_image("guided", "cascade:conv2", metric)[0] == pytest.approx(expected[metric], abs=1e-6)


# ----- selectivity ----------------------------------------------------------------------------------
def test_selectivity_of_units_that_draw_the_same_picture_is_one():
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(1, 1, 3, 3).expand(3, 1, 3, 3))
        conv.bias.fill_(0.1)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    lens = zf.Lens(model, input_size=(1, 8, 8))
    x = torch.rand(2, 1, 8, 8)
    sel = selectivity(lens, x, "conv1", progress=False)
    assert sorted(sel.units[0]) == [0, 1, 2]
    for m in sel.methods:
        for metric in METRICS:
            assert sel.similarity(m, metric) == pytest.approx(1.0, abs=1e-9)


def test_selectivity_equals_a_recomputation(lens, images):
    sel = selectivity(lens, images[:1], "output", methods=("gradient", "guided"), n_units=3, progress=False)
    assert sel.layer == "fc8"
    scores = lens.forward(images[0]).logits[0]
    top3 = [int(c) for c in scores.argsort(descending=True)[:3]]
    assert sel.units == [top3]
    for m in ("gradient", "guided"):
        maps = [zf.project(lens, images[0], "fc8", c, method=m).pixels for c in top3]
        pairs = [metrics_by_hand(maps[a], maps[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
        for metric in METRICS:
            assert sel.similarity(m, metric) == pytest.approx(np.mean([p[metric] for p in pairs]), abs=1e-6)
    chosen = selectivity(lens, images[:1], "conv5", methods=("deconvnet",), channels=[3, 7], progress=False)
    assert chosen.units == [[3, 7]]


# ----- bad input -----------------------------------------------------------------------------------
def test_bad_input_names_what_is_valid_and_changes_nothing(lens, images):
    before = state(lens.model)
    with pytest.raises(ValueError, match="conv1"):
        randomize(lens, "conv9")
    with pytest.raises(ValueError, match="conv1"):
        randomize(lens, ["conv2", "nope"])
    with pytest.raises(ValueError, match="conv1"):
        sanity_check(lens, images, "nope", progress=False)
    with pytest.raises(ValueError, match="cascade:fc8"):
        sanity_check(lens, images, steps=["cascade:fc9"], progress=False)
    with pytest.raises(ValueError, match="deconvnet"):
        sanity_check(lens, images, methods=("lrp",), progress=False)
    with pytest.raises(ValueError, match="at least two"):
        selectivity(lens, images, "conv5", channels=[3], progress=False)
    with pytest.raises(ValueError, match="conv1"):
        selectivity(lens, images, "conv9", progress=False)
    with pytest.raises(TypeError):
        randomize(lens, "conv2", seed=1.5)
    assert changed(before, lens.model) == []


def test_a_convolution_inside_a_block_is_reset_alone_not_cascaded():
    lens = zf.Lens.from_torchvision("resnet18")          # random weights, offline
    assert randomised_layers(lens, "conv1", cascade=False) == ["conv1", "bn1"]
    assert randomised_layers(lens, ["fc", "conv5"], cascade=False) == ["layer1.1.conv2", "fc"]
    before = state(lens.model)
    with pytest.raises(ValueError, match="'conv5'.*cascade=False"):
        randomize(lens, "conv5")
    r = randomize(lens, "conv5", cascade=False)
    assert changed(before, r.model) == ["layer1.1.conv2.weight"]
    assert r.name == "resnet18 (conv5 randomised)"
    assert changed(before, lens.model) == []


def test_data_randomization_equals_a_recomputation(lens, images):
    """The data randomisation test's figures: the other model's projections of the trained model's unit,
    compared by the similarities written out above. The other model here is the same architecture with weights
    made by hand (its own reset_parameters under a seed): the test needs the comparison, not the training."""
    torch.manual_seed(7)
    other_model = copy.deepcopy(lens.model)
    for m in other_model.modules():
        if hasattr(m, "reset_parameters") and m is not other_model:
            m.reset_parameters()
    other = zf.Lens(other_model, transform=lens.transform, class_names=lens.class_names,
                    input_size=lens.input_size, mean=lens.mean, std=lens.std, name="other")
    before = state(lens.model)
    dr = zf.data_randomization(lens, other, images, methods=("guided", "gradient"), keep=2, progress=False)
    assert dr.steps == ["none", "random labels"] and dr.layer == "fc8"
    tops = [int(lens.predict(im).argmax()) for im in images]
    for m in dr.methods:
        for i, im in enumerate(images):
            a = zf.project(lens, im, "fc8", tops[i], method=m).pixels
            b = zf.project(other, im, "fc8", tops[i], method=m).pixels
            assert torch.allclose(dr.projections[m]["random labels"][i], b, atol=1e-6)
            expected = metrics_by_hand(a, b)
            for metric in METRICS:
                assert dr.per_image(m, "random labels", metric)[i] == pytest.approx(expected[metric], abs=1e-6)
    assert changed(before, lens.model) == []
    assert dr.kind_steps()[0] == "labels" and len(dr.plot().axes) == 2 * 3 + 4
    with pytest.raises(ValueError, match="same architecture"):
        zf.data_randomization(lens, zf.load("allconv-fashion"), images, progress=False)
