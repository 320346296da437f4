"""FilterPanel: two models' first-layer filters, dead marks, band shares, a clicked filter's spectrum and
top-9, compared with references written here (a hook, a float64 DFT by matrix products)."""
import numpy as np
import pytest
import torch

import zfwidgets
from zfwidgets.plot.colours import DEAD_COLOUR, rgb

from .util import assert_same_model_state, fire, model_state, open_widget_ids, png_rgb, rgb_images, small_torchvision


def dft_band_shares(w, n=64):
    """Low/mid/high energy shares of one filter C x k x k: zero-padded DFT as matrix products (float64)."""
    w = np.asarray(w, np.float64)
    k = w.shape[-1]
    E = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(k)) / n)       # n x k
    power = sum(np.abs(E @ c @ E.T) ** 2 for c in w) / (n * n)
    f = np.array([(i if i < n / 2 else i - n) / n for i in range(n)])
    r = np.hypot(f[:, None], f[None, :])
    e = np.array([power[r < 1 / 6].sum(), power[(r >= 1 / 6) & (r < 1 / 3)].sum(), power[r >= 1 / 3].sum()])
    return e / e.sum()


def first_conv_maxima(lens, images, layer):
    module = lens.resolve(layer)[2]
    got = {}
    h = module.register_forward_hook(lambda m, a, o: got.setdefault("o", o.detach()))
    try:
        with torch.no_grad():
            lens.model(torch.cat([lens.to_input(im) for im in images]))
    finally:
        h.remove()
    return got["o"].flatten(2).amax(2)                      # N x F


def click_filter(panel, m, i):
    f, cols, th, tw, count = panel._geom[m]
    r, q = divmod(i, cols)
    fire(panel._canvases[m].canvas, "mouse_down", (q * tw + 2) * f, (r * th + 2) * f)


def test_zfnet_pair_dead_marks_shares_and_top9(zf_random):
    from zfwidgets.zoo.models import build
    torch.manual_seed(1)
    other = zfwidgets.Lens(build("allconv-fashion").eval(), input_size=(1, 28, 28), mean=[0.286], std=[0.353],
                           name="allconv-random")
    with torch.no_grad():
        zf_random.resolve("conv1")[2].bias[3] = -1e3        # filter 3 can never fire
    images = [s.image for s in zfwidgets.samples()[::2]]
    states = model_state(zf_random.model), model_state(other.model)
    panel = zfwidgets.FilterPanel(zf_random, other, images=images, channels=4)
    try:
        assert panel.error is None
        never = (first_conv_maxima(zf_random, images, "conv1") <= 0).double().mean(0)
        assert panel.state["dead"][0] == np.flatnonzero(never.numpy() >= 0.99).tolist() and 3 in panel.state["dead"][0]
        # the grid shows filter 3 framed in the dead colour, filter 2 not
        f, cols, th, tw, _ = panel._geom[0]
        shown = png_rgb(panel._canvases[0].picture.value)
        for i, dead in ((3, True), (2, False)):
            r, q = divmod(i, cols)
            assert (tuple(shown[r * th * f, q * tw * f]) == rgb(DEAD_COLOUR)) == dead
        click_filter(panel, 0, 5)
        assert panel.state["selected"] == (0, 5) and panel.error is None
        w = zf_random.resolve("conv1")[2].weight.detach()[5].numpy()
        info = panel.info.value
        shares = [float(info.split(f'data-{b}="')[1].split('"')[0]) for b in ("low", "mid", "high")]
        assert np.allclose(shares, dft_band_shares(w), atol=1e-9)
        # top-9 of filter 5: the images with the largest maxima of its map
        maxima = first_conv_maxima(zf_random, images, "conv1")[:, 5]
        want = maxima.argsort(descending=True)[:9].tolist()
        got = panel.state["top"]
        assert [i for i, _ in got] == want
        assert np.allclose([a for _, a in got], maxima[want].numpy(), atol=1e-5)
        assert panel.spectrum.value[:8] == b"\x89PNG\r\n\x1a\n" and len(panel.second.children) == 2
        click_filter(panel, 1, 0)
        assert panel.state["selected"] == (1, 0)
        assert_same_model_state(zf_random.model, states[0])
        assert_same_model_state(other.model, states[1])
    finally:
        panel.close()
    assert_same_model_state(other.model, states[1])


def test_alexnet_against_resnet18_random_weights():
    """ZF's comparison on the real architectures: AlexNet's 11x11/4 filters beside ResNet-18's 7x7/2."""
    a, b = small_torchvision("alexnet", 64), small_torchvision("resnet18", 64)
    images = rgb_images(6, 64)
    states = model_state(a.model), model_state(b.model)
    before = open_widget_ids()
    panel = zfwidgets.FilterPanel(a, b, images=images, channels=2, k=4)
    try:
        assert panel.state["filters"] == [64, 64] and panel.error is None
        assert panel.state["second_layers"] == ["conv2", "layer1.0"]     # ResNet: its first block
        click_filter(panel, 1, 10)
        w = b.resolve("conv1")[2].weight.detach()[10].numpy()
        info = panel.info.value
        shares = [float(info.split(f'data-{k}="')[1].split('"')[0]) for k in ("low", "mid", "high")]
        assert np.allclose(shares, dft_band_shares(w), atol=1e-9)
        maxima = first_conv_maxima(b, images, "conv1")[:, 10]
        assert [i for i, _ in panel.state["top"]] == maxima.argsort(descending=True)[:4].tolist()
    finally:
        panel.close()
    assert open_widget_ids() <= before
    assert_same_model_state(a.model, states[0])
    assert_same_model_state(b.model, states[1])


def test_weights_only_and_errors(zf_random):
    panel = zfwidgets.FilterPanel(zf_random)
    try:
        assert panel.state["dead"] == [[]] and panel.state["second_layers"] == []
        panel.select(0, 1)
        assert panel.state["top"] is None
        with pytest.raises(ValueError, match="out of range"):
            panel.select(0, 99)
        fire(panel._canvases[0].canvas, "mouse_down", 10_000, 10_000)      # outside: nothing happens
        assert panel.state["selected"] == (0, 1) and panel.error is None
    finally:
        panel.close()
    with pytest.raises(TypeError):
        zfwidgets.FilterPanel("not a lens")


def test_coarse_twin_pair_scores_the_second_layers_aliasing():
    """With a stride-3 first layer beside the bundled model, the second row scores both models' conv2 projections
    at the stride's alias frequencies (the analysis is tested against a direct DFT in tests/analysis)."""
    from zfwidgets.analysis.filters import alias_energy
    from zfwidgets.core.project import project
    coarse = zfwidgets.load("zfnet-fashion-coarse")
    assert coarse.resolve("conv1")[2].stride == (3, 3) and coarse.resolve("conv1")[2].kernel_size == (9, 9)
    images = [s.image for s in zfwidgets.samples()[::4]]
    base = zfwidgets.load("zfnet-fashion")
    before = model_state(base.model)
    panel = zfwidgets.FilterPanel(base, coarse, images=images, channels=2)
    try:
        assert panel.state["second_layers"] == ["conv2", "conv2"] and len(panel.state["aliasing"]) == 2
        for (mean, rel), lens in zip(panel.state["aliasing"], (base, coarse)):
            x = torch.cat([lens.to_input(im) for im in images])
            acts = {}
            h = lens.resolve("conv2")[2].register_forward_hook(lambda m, a, o: acts.setdefault("o", o.detach()))
            try:
                with torch.no_grad():
                    lens.model(x)
            finally:
                h.remove()
            best = acts["o"].clamp(min=0).flatten(2).amax(2).argmax(0)          # each map's strongest image
            proj = np.stack([project(lens, x[int(i)], "conv2", c).pixels.numpy() for c, i in enumerate(best)])
            assert mean == pytest.approx(np.nanmean(alias_energy(proj, 3)), rel=1e-6)
            assert rel == pytest.approx(np.nanmedian(alias_energy(proj, 3, relative=True)), rel=1e-6)
        assert "alias frequencies" in panel.second.children[1].children[0].value
    finally:
        panel.close()
    assert_same_model_state(base.model, before)
    plain = zfwidgets.FilterPanel(base, zfwidgets.load("allconv-fashion"), images=images, channels=2)
    try:
        assert plain.state["aliasing"] == []                 # both first layers stride 1: nothing to score
    finally:
        plain.close()
    with pytest.raises(ValueError, match="alias_period"):
        zfwidgets.FilterPanel(base, coarse, images=images, alias_period=0)
