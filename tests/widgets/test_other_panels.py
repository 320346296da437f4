"""TopGallery, EvolutionPanel and InvariancePanel: what they show equals the plain API's results."""
import numpy as np
import pytest
import torch

import zfwidgets
from zfwidgets import project
from zfwidgets.analysis.evolution import feature_evolution
from zfwidgets.analysis.invariance import invariance, transform_input
from zfwidgets.analysis.topk import top_activations
from zfwidgets.core.project import render
from zfwidgets.widgets import topk as topk_module
from zfwidgets.zoo.models import build

from .util import fire, open_widget_ids, png_rgb


@pytest.fixture
def images():
    return zfwidgets.samples()[::2]                     # 20 samples


def snapshot_lenses(n=3):
    lenses = []
    for seed in range(n):
        torch.manual_seed(seed)
        lens = zfwidgets.Lens(build("zfnet-fashion").eval(), input_size=(1, 28, 28), mean=[0.286], std=[0.353])
        lens.epoch = seed + 1
        lenses.append(lens)
    return lenses


# ----- TopGallery ------------------------------------------------------------------------------------
def test_gallery_mines_with_progress_and_shows_the_plain_api_hits(zf_random, images):
    g = zfwidgets.TopGallery(zf_random, images, "conv3", channels=[4, 9, 30], k=4)
    try:
        assert not g.state["mined"]
        seen = []
        g.progress.observe(lambda c: seen.append(c["new"]), names="value")
        g.mine_button.click()
        assert g.error is None and g.state["mined"] and g.progress.value == 1.0
        assert len(seen) >= 3 and seen == sorted(seen)                   # it moved forward as it mined
        ref = top_activations(zf_random, images, "conv3", channels=[4, 9, 30], k=4, progress=False)
        for c in (4, 30):
            g.channel_slider.value = c
            want = [(h.index, h.position, pytest.approx(h.activation, abs=1e-5)) for h in ref.hits_of(c)]
            assert g.state["channel"] == c and g.state["hits"] == want
        # the projections grid shows the hits' projections on one scale per map
        hits = ref.hits_of(30)
        scale = max(float(h.projection.abs().max()) for h in hits)
        grid, th, tw, gap, n = g._geometry
        shown = png_rgb(g.proj_canvas.picture.value)
        f = th // max(h.box.unclipped[2] - h.box.unclipped[0] for h in hits)
        h0 = hits[0]
        tile = shown[gap:gap + th:f, gap:gap + tw:f]
        oy, ox = h0.box.y0 - h0.box.unclipped[0], h0.box.x0 - h0.box.unclipped[1]
        crop = render(h0.projection, "signed", scale)
        assert (tile[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] == crop).all()
    finally:
        g.close()


def test_clicking_a_tile_opens_it_in_the_explorer(zf_random, images):
    g = zfwidgets.TopGallery(zf_random, images, "conv2", channels=[5, 6], k=4)
    try:
        g.mine()
        g.channel_slider.value = 6
        grid, th, tw, gap, n = g._geometry
        fire(g.patch_canvas.canvas, "mouse_down", gap + (tw + gap) + 2, gap + 2)     # rank 1
        hit = g.result.hits_of(6)[1]
        assert g.state["opened"] == {"channel": 6, "rank": 1, "index": hit.index, "position": hit.position}
        ex = g.explorer
        assert ex in g.explorer_box.children
        s = ex.state
        assert (s["layer"], s["channel"], s["position"]) == ("conv2", 6, hit.position)
        ref = project(zf_random, images[hit.index].image, "conv2", 6, position=hit.position)
        assert torch.allclose(ex.projection.pixels, ref.pixels, atol=1e-6)
        assert ex.projection.activation == pytest.approx(hit.activation, abs=1e-5)
    finally:
        g.close()


def test_gallery_errors_show_in_the_panel(zf_random, images, monkeypatch):
    g = zfwidgets.TopGallery(zf_random, images, "conv2", channels=[0], k=2)
    try:
        g.mine_button.click()
        fire(g.proj_canvas.canvas, "mouse_down", 2, 2)
        assert g.error is None
        monkeypatch.setattr(topk_module, "_image_at", lambda *a: (_ for _ in ()).throw(KeyError("gone")))
        fire(g.proj_canvas.canvas, "mouse_down", 2, 2)
        assert "gone" in g.error
        monkeypatch.undo()
        fire(g.proj_canvas.canvas, "mouse_down", 2, 2)
        assert g.error is None
    finally:
        g.close()


def test_gallery_autostarts_after_display_in_a_kernel_loop(zf_random, images):
    import asyncio
    g = zfwidgets.TopGallery(zf_random, images, "conv1", channels=[0, 1], k=2)
    try:
        async def display_then_idle():
            g._repr_mimebundle_()                   # what IPython's display() calls
            assert not g.state["mined"]             # not inside the display call itself
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        asyncio.run(display_then_idle())
        assert g.state["mined"] and g.state["channel"] == 0
    finally:
        g.close()


# ----- EvolutionPanel --------------------------------------------------------------------------------
def test_evolution_slider_shows_each_snapshots_projections(images):
    lenses = snapshot_lenses()
    panel = zfwidgets.EvolutionPanel(lenses, images, ["conv1", "conv4"], channels=2)
    try:
        panel.compute()
        assert panel.error is None and panel.state["epochs"] == [1, 2, 3] and panel.state["epoch"] == 3
        ref = feature_evolution(lenses, images, ["conv1", "conv4"], channels=2, show_progress=False)
        assert panel.state["channels"] == ref.channels
        pngs = set()
        for s in (0, 1, 2):
            panel.epoch_slider.value = s
            assert panel.state["epoch"] == s + 1
            shown = png_rgb(panel.layer_images["conv4"].value)
            pngs.add(panel.layer_images["conv4"].value)
            f = 3                                       # 28 px enlarged to 84
            proj = render(torch.from_numpy(ref.projections["conv4"][1, s]), "signed")
            x0 = 3 + (28 * f + 3)                       # second tile of the top row
            assert (shown[3:3 + 28 * f:f, x0:x0 + 28 * f:f] == proj).all()
            assert np.allclose(panel.state["similarity"]["conv4"], ref.similarity["conv4"][:, s], equal_nan=True)
            assert f'data-epoch="{s + 1}"' in panel.info.value
        assert len(pngs) == 3
    finally:
        panel.close()


def test_evolution_over_the_bundled_snapshots(bundled):
    epochs = zfwidgets.snapshot_epochs("zfnet-fashion")
    images = zfwidgets.samples()[::8]
    panel = zfwidgets.EvolutionPanel("zfnet-fashion", images, ["conv1"], channels=1)
    try:
        panel.compute()
        assert panel.error is None and panel.state["epochs"] == epochs
        assert panel.state["epoch"] == epochs[-1]                  # starts at the final model
        panel.epoch_slider.value = 0
        assert panel.state["epoch"] == epochs[0] and f'data-epoch="{epochs[0]}"' in panel.info.value
    finally:
        panel.close()


# ----- InvariancePanel -------------------------------------------------------------------------------
def test_invariance_slider_updates_image_distances_and_probability(zf_random):
    sample = zfwidgets.samples()[12]
    panel = zfwidgets.InvariancePanel(zf_random, sample, transform="rotate", values=[0, 30, 60, 90])
    try:
        ref = invariance(zf_random, [sample], transform="rotate", values=[0, 30, 60, 90], progress=False)
        assert panel.state["value"] == 0.0 and panel.progress.value == 1.0
        curves = {panel.curves.value}
        for k, v in enumerate([0.0, 30.0, 60.0, 90.0]):
            panel.value_slider.value = k
            s = panel.state
            assert s["value"] == v and s["label"] == sample.label
            for layer in ref.layers:
                assert s["distance"][layer] == pytest.approx(float(ref.distance[layer][0, k]), rel=1e-6, abs=1e-9)
            assert s["p_true"] == pytest.approx(float(ref.probability[0, k]), abs=1e-9)
            x = zf_random.to_input(sample.image)
            want = zf_random.to_display(transform_input(x, "rotate", v, zf_random.fill_value))
            assert (png_rgb(panel.picture.value)[::6, ::6] == want).all()
            curves.add(panel.curves.value)
            assert f'data-value="{v:g}"' in panel.readout.value
        assert len(curves) == 4                            # the marker moved on the curves
        panel.transform_dropdown.value = "translate"
        assert panel.state["transform"] == "translate" and panel.state["value"] == 0.0
    finally:
        panel.close()


# ----- every panel: closing leaves nothing behind -------------------------------------------------------
def test_all_panels_close_without_hooks_or_widgets_left(zf_random, images, model_hooks):
    lenses = snapshot_lenses(2)
    hooks = [model_hooks(l.model) for l in [zf_random, *lenses]]
    before = open_widget_ids()
    panels = [zfwidgets.Explorer(zf_random, images[:3]),
              zfwidgets.OcclusionPanel(zf_random, images[0]),
              zfwidgets.TopGallery(zf_random, images, "conv2", channels=[1], k=2, autostart=False),
              zfwidgets.EvolutionPanel(lenses, images[:4], ["conv1"], channels=1, autostart=False),
              zfwidgets.InvariancePanel(zf_random, images[1], transform="scale", values=[0.8, 1.0])]
    panels[2].mine()
    panels[2].open_tile(1, 0)
    panels[3].compute()
    for p in panels:
        assert "zf-error" in p.error_area._dom_classes and p.state["error"] is None
        p.close()
    assert [model_hooks(l.model) for l in [zf_random, *lenses]] == hooks
    assert open_widget_ids() <= before, "a panel left widgets open"
