"""LesionPanel: clicks on the mosaic and the "n strongest" slider; what it shows equals a lesion recomputed
independently (a forward hook written here, float64 softmax) and zf.lesion; the model is left exactly as it was."""
import re

import numpy as np
import pytest
import torch

import zfwidgets
from zfwidgets.widgets import lesion as lesion_module

from .util import (assert_same_model_state, fire, model_state, open_widget_ids, rgb_images, small_torchvision)


def reference(lens, images, layer, channels):
    """N x K float64 probabilities with ``channels`` of ``layer`` zeroed: a hook of our own, not zf.lesion."""
    module = lens.resolve(layer)[2]

    def zero(m, a, out):
        out = out.clone()
        out[:, channels] = 0
        return out
    x = torch.cat([lens.to_input(im) for im in images])
    h = module.register_forward_hook(zero) if channels else None
    try:
        with torch.no_grad():
            return lens.model(x).double().softmax(1).numpy()
    finally:
        if h is not None:
            h.remove()


def shown_probabilities(panel):
    rows = re.findall(r'<tr class="zf-class" data-index="(\d+)" data-before="([0-9.e-]+)" data-after="([0-9.e-]+)"',
                      panel.probs.value)
    return {int(k): (float(b), float(a)) for k, b, a in rows}


def shown_accuracy(panel):
    m = re.search(r'data-before="([0-9.]+)" data-after="([0-9.]+)" data-n="(\d+)"', panel.accuracy.value)
    return float(m.group(1)), float(m.group(2)), int(m.group(3))


def click_map(panel, k):
    x, y = panel._mosaic.origin(k)
    fire(panel.mosaic_canvas.canvas, "mouse_down", x + 1, y + 1)


def cases():
    yield "zfnet-random", None
    yield "alexnet", ("alexnet", 64)
    yield "resnet18", ("resnet18", 32)


@pytest.fixture(params=[c[0] for c in cases()])
def setup(request, zf_random):
    spec = dict(cases())[request.param]
    if spec is None:
        s = zfwidgets.samples()
        return zf_random, s[9].image, 2, [x.image for x in s[::3]], [x.label for x in s[::3]]
    lens = small_torchvision(*spec)
    imgs = rgb_images(9, spec[1])
    return lens, imgs[0], 1, imgs[1:], [k % 5 for k in range(8)]


def test_clicks_show_the_lesion_recomputed_independently(setup):
    lens, image, label, held, labels = setup
    state = model_state(lens.model)
    panel = zfwidgets.LesionPanel(lens, image, held, labels, label=label)
    try:
        assert_same_model_state(lens.model, state)
        layer = panel.layer
        intact = reference(lens, [image], layer, [])[0]
        shown = shown_probabilities(panel)
        for k, (b, a) in shown.items():
            assert b == pytest.approx(intact[k], abs=2e-6) and a == pytest.approx(intact[k], abs=2e-6)
        click_map(panel, 1)
        assert_same_model_state(lens.model, state)
        click_map(panel, 4)
        assert_same_model_state(lens.model, state)
        assert panel.state["channels"] == [1, 4] and panel.error is None
        want = reference(lens, [image], layer, [1, 4])[0]
        for k, (b, a) in shown_probabilities(panel).items():
            assert b == pytest.approx(intact[k], abs=2e-6) and a == pytest.approx(want[k], abs=2e-6)
        # the held-out accuracy before/after and per class
        p_before = reference(lens, held, layer, []).argmax(1)
        p_after = reference(lens, held, layer, [1, 4]).argmax(1)
        y = np.asarray(labels)
        b, a, n = shown_accuracy(panel)
        assert n == len(held) and b == pytest.approx((p_before == y).mean(), abs=1e-6)
        assert a == pytest.approx((p_after == y).mean(), abs=1e-6)
        ca = panel.state["class_accuracy"]["after"]
        for c in set(labels):
            assert ca[c] == pytest.approx((p_after[y == c] == c).mean(), abs=1e-9)
        # and zf.lesion itself agrees
        r = zfwidgets.lesion(lens, held, labels, layer, channels=[1, 4], progress=False)
        assert panel.state["accuracy"] == (r.accuracy_before, r.accuracy_after)
        click_map(panel, 1)                                   # switching a map back on
        assert panel.state["channels"] == [4]
        assert_same_model_state(lens.model, state)
    finally:
        panel.close()
    assert_same_model_state(lens.model, state)


def test_n_strongest_for_this_class(zf_random):
    s = zfwidgets.samples()
    held = s[::2]
    state = model_state(zf_random.model)
    panel = zfwidgets.LesionPanel(zf_random, s[9], held, layer="conv4")
    try:
        panel.strongest.value = 6
        # independent ranking: mean rectified activation per map over the held-out images of the class
        module = zf_random.resolve("conv4")[2]
        got = {}
        h = module.register_forward_hook(lambda m, a, o: got.setdefault("o", o.detach()))
        try:
            with torch.no_grad():
                zf_random.model(torch.cat([zf_random.to_input(x.image) for x in held if x.label == s[9].label]))
        finally:
            h.remove()
        score = got["o"].clamp(min=0).double().mean((2, 3)).mean(0)
        want = sorted(score.argsort(descending=True)[:6].tolist())
        assert panel.state["channels"] == want and panel.error is None
        probs = reference(zf_random, [s[9].image], "conv4", want)[0]
        assert np.allclose(panel.state["probabilities"]["after"], probs, atol=2e-6)
        panel.reset_button.click()
        assert panel.state["channels"] == [] and panel.strongest.value == 0
        panel.layer_dropdown.value = "fc6"
        assert panel.state["n_maps"] == zf_random.resolve("fc6")[2].out_features and panel.error is None
        click_map(panel, 7)
        assert panel.state["channels"] == [7]
        assert np.allclose(panel.state["probabilities"]["after"], reference(zf_random, [s[9].image], "fc6", [7])[0],
                           atol=2e-6)
    finally:
        panel.close()
    assert_same_model_state(zf_random.model, state)


def test_bundled_model(bundled):
    s = zfwidgets.samples()
    panel = zfwidgets.LesionPanel(bundled, s[9], s)
    try:
        panel.set_strongest(16)
        r = zfwidgets.lesion(bundled, [x.image for x in s], [x.label for x in s], panel.layer,
                             channels=panel.state["channels"], progress=False)
        assert panel.state["accuracy"] == (r.accuracy_before, r.accuracy_after)
        assert np.allclose(panel.state["class_accuracy"]["after"], r.class_accuracy(), equal_nan=True)
    finally:
        panel.close()


def test_an_error_mid_lesion_shows_in_the_panel_and_restores_the_model(zf_random, monkeypatch):
    s = zfwidgets.samples()
    state = model_state(zf_random.model)
    panel = zfwidgets.LesionPanel(zf_random, s[9], s[::4])
    real = lesion_module._lesion

    def failing(lens, images, labels, layer, channels, mode):
        from zfwidgets.analysis.lesion import lesion

        def boom(done, total):       # runs inside the lesioned forward loop, with the hook on the model
            if lens.resolve(layer)[2]._forward_hooks:
                raise RuntimeError("disk on fire")
        return lesion(lens, images, labels, layer, channels=channels, mode=mode, progress=boom)
    try:
        monkeypatch.setattr(lesion_module, "_lesion", failing)
        click_map(panel, 2)
        assert "disk on fire" in panel.error and "zf-error" in panel.error_area._dom_classes
        assert_same_model_state(zf_random.model, state)
        monkeypatch.setattr(lesion_module, "_lesion", real)
        click_map(panel, 3)
        assert panel.error is None and panel.state["channels"] == [2, 3]
    finally:
        panel.close()
    assert_same_model_state(zf_random.model, state)


def test_bad_arguments_and_close(zf_random):
    s = zfwidgets.samples()
    before = open_widget_ids()
    with pytest.raises(ValueError, match="cannot be lesioned"):
        zfwidgets.LesionPanel(zf_random, s[0], s, layer="fc8")
    with pytest.raises(TypeError, match="labels must be given"):
        zfwidgets.LesionPanel(zf_random, s[0], [x.image for x in s])
    with pytest.raises(ValueError, match="mode='zero'"):
        zfwidgets.LesionPanel(zf_random, s[0], s, mode="skip")
    assert open_widget_ids() <= before
    panel = zfwidgets.LesionPanel(zf_random, s[0], s[::4])
    click_map(panel, 0)
    renders = panel.renders
    panel.close()
    panel.close()
    assert open_widget_ids() <= before
    fire(panel.mosaic_canvas.canvas, "mouse_down", 3, 3)
    assert panel.renders == renders
