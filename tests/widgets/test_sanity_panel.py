"""SanityPanel: what it shows at each slider position equals zf.sanity_check / zf.randomize called here."""
import math
import re

import numpy as np
import pytest

import zfwidgets
from zfwidgets.analysis.sanity import METRICS, randomize, sanity_check
from zfwidgets.core.project import project, render
from zfwidgets.widgets import sanity as sanity_module
from zfwidgets.widgets.sanity import SanityPanel

from .util import assert_same_model_state, idle, model_state, open_widget_ids, png_rgb

METHODS = ("deconvnet", "guided", "gradient")


@pytest.fixture
def sample():
    return zfwidgets.samples()[36]


def shown_figures(panel) -> dict:
    """method -> metric -> the number in the figures HTML (``data-value``, a float's repr)."""
    out = {}
    for m in panel.methods:
        body = panel.figures[m].value
        assert f'data-method="{m}" data-step="{panel.step}"' in body, body
        out[m] = {mt: float(v) for mt, v in re.findall(r'data-metric="(\w+)" data-value="([^"]+)"', body)}
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6


def test_slider_shows_sanity_check_of_each_step(bundled, sample):
    before = model_state(bundled.model)
    panel = SanityPanel(bundled, sample.image)
    try:
        assert panel.error is None
        assert panel.state["steps"] == ["none"] + [f"cascade:{l}" for l in bundled.layers[::-1]]
        assert panel.state["step"] == "cascade:fc8" and panel.state["left_out"] == []
        trained = {m: panel.trained_images[m].value for m in METHODS}
        pngs, figures = {}, {}
        for step in ("cascade:fc8", "cascade:conv3", "cascade:conv1"):
            panel.slider.value = step
            assert panel.error is None and panel.state["randomised_from"] == step.split(":")[1]
            ref = sanity_check(bundled, [sample.image], steps=[step], progress=False)
            shown = shown_figures(panel)
            for m in METHODS:
                for mt in METRICS:
                    want = ref.similarity(m, step, mt)
                    assert same(shown[m][mt], want), (step, m, mt, shown[m][mt], want)
                    assert same(panel.state["figures"][m][mt], want)
            assert panel.state["unit"] == ref.units[0]
            assert {m: panel.trained_images[m].value for m in METHODS} == trained      # the trained row stays
            pngs[step] = {m: panel.randomised_images[m].value for m in METHODS}
            figures[step] = shown
        for m in METHODS:                     # each step shows other pictures and other figures
            assert len({pngs[s][m] for s in pngs}) == 3, m
            assert len({tuple(figures[s][m].values()) for s in figures}) == 3, m
        assert panel.state["computed"] == ["cascade:fc8", "cascade:conv3", "cascade:conv1"]
        # the randomised picture is the heat map of zf.randomize's model's projection of the top class score
        rlens = randomize(bundled, "conv3")
        x = bundled.to_input(sample.image)
        top = int(bundled.forward(x).logits[0].argmax())
        f = panel.factor
        for m in METHODS:
            p = project(rlens, x, "fc8", top, method=m).pixels
            assert (png_rgb(pngs["cascade:conv3"][m])[::f, ::f] == render(p, "abs")).all(), m
        # the trained model against itself: every figure 1
        panel.slider.value = "none"
        assert panel.state["randomised_from"] is None
        assert all(v == pytest.approx(1.0) for m in METHODS for v in panel.state["figures"][m].values())
        assert {m: panel.randomised_images[m].value for m in METHODS} == trained
    finally:
        panel.close()
    assert_same_model_state(bundled.model, before)


@pytest.fixture
def computed_steps(monkeypatch):
    """The steps the panel computes, in order (its one call into the plain API, counted by a wrapper)."""
    calls = []
    real = sanity_module._sanity_check

    def counting(lens, image, layer, methods, step, seed):
        calls.append(step)
        return real(lens, image, layer, methods, step, seed)

    monkeypatch.setattr(sanity_module, "_sanity_check", counting)
    return calls


def test_steps_are_computed_once_and_cached(zf_random, sample, computed_steps):
    calls = computed_steps
    panel = SanityPanel(zf_random, sample, methods=("gradient",))
    try:
        for step in ("cascade:fc6", "cascade:fc8", "cascade:fc6", "cascade:fc8"):
            panel.slider.value = step
        assert calls == ["cascade:fc8", "cascade:fc6"]
        assert set(panel.results) == {"cascade:fc8", "cascade:fc6"}
        assert panel.results["cascade:fc6"].steps == ["none", "cascade:fc6"]
        assert 'data-step="cascade:fc8"' in panel.status.value
    finally:
        panel.close()


def test_a_unit_of_a_hidden_layer_leaves_out_the_steps_above_it(zf_random, sample):
    panel = SanityPanel(zf_random, sample, "conv3", methods=("guided",), seed=3)
    try:
        assert panel.state["steps"] == ["none", "cascade:conv3", "cascade:conv2", "cascade:conv1"]
        assert panel.state["left_out"] == [f"cascade:{l}" for l in ("fc8", "fc7", "fc6", "conv5", "conv4")]
        assert panel.state["step"] == "cascade:conv3"
        panel.slider.value = "cascade:conv2"
        ref = sanity_check(zf_random, [sample], "conv3", methods=("guided",), steps=["cascade:conv2"], seed=3,
                           progress=False)
        assert panel.state["layer"] == "conv3" and panel.state["unit"] == ref.units[0]
        channel, position = ref.units[0]
        assert f'data-channel="{channel}" data-position="{position[0]},{position[1]}"' in panel.unit_info.value
        for mt in METRICS:
            assert same(panel.state["figures"]["guided"][mt], ref.similarity("guided", "cascade:conv2", mt))
    finally:
        panel.close()


def test_bad_arguments_give_clear_errors_and_leave_nothing_open(zf_random, sample):
    before = open_widget_ids()
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'; valid layer names are \['conv1'"):
        SanityPanel(zf_random, sample, "conv9")
    with pytest.raises(TypeError, match="expected a PIL image"):
        SanityPanel(zf_random, None)
    with pytest.raises(TypeError, match="uint8"):
        SanityPanel(zf_random, np.asarray(sample.image).astype(float))
    with pytest.raises(ValueError, match="method must be one of"):
        SanityPanel(zf_random, sample, methods=("lrp",))
    with pytest.raises(TypeError, match="expected a zfwidgets.Lens"):
        SanityPanel(zf_random.model, sample)
    assert open_widget_ids() <= before, "a failed constructor left widgets open"


def test_a_failing_step_shows_in_the_panel_which_keeps_working(zf_random, sample, monkeypatch):
    before = model_state(zf_random.model)
    panel = SanityPanel(zf_random, sample, methods=("deconvnet",))
    try:
        monkeypatch.setattr(sanity_module, "_sanity_check", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        panel.slider.value = "cascade:conv5"
        assert "boom" in panel.error and panel.state["step"] == "cascade:fc8"
        assert "zf-sanity-failed" in panel.status.value
        monkeypatch.undo()
        panel.slider.value = "cascade:conv4"
        assert panel.error is None and panel.state["step"] == "cascade:conv4"
    finally:
        panel.close()
    assert_same_model_state(zf_random.model, before)


def test_a_burst_of_slider_moves_in_a_kernel_computes_only_the_last(zf_random, sample, computed_steps):
    import asyncio
    calls = computed_steps
    panel = SanityPanel(zf_random, sample, methods=("gradient",))
    try:
        async def keys_then_idle():
            for step in ("cascade:fc7", "cascade:fc6", "cascade:conv5"):     # three key presses, one after another
                panel.slider.value = step
                await asyncio.sleep(0)
            await idle()
        asyncio.run(keys_then_idle())
        assert calls == ["cascade:fc8", "cascade:conv5"] and panel.state["step"] == "cascade:conv5"
    finally:
        panel.close()
