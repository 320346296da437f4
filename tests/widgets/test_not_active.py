"""Panels on a unit that is not active (issue 27 item 1): its activation after the ReLU is 0, it projects to
nothing, and the panel says so instead of showing a grey picture."""
import numpy as np
import torch

import zfwidgets
from zfwidgets import Lens
from zfwidgets.zoo.models import build

from .util import png_rgb


def dead_channel_lens():
    """The bundled architecture, random weights, with conv1's map 0 dead on every image (bias -1000)."""
    torch.manual_seed(0)
    model = build("zfnet-fashion").eval()
    with torch.no_grad():
        model.conv1.bias[0] = -1000.0
    return Lens(model, input_size=(1, 28, 28), mean=[0.286], std=[0.353])


def test_explorer_says_not_active_and_shows_no_picture():
    lens = dead_channel_lens()
    images = zfwidgets.samples()[:2]
    ex = zfwidgets.Explorer(lens, images)
    try:
        ex.layer_dropdown.value = "conv1"
        ex.channel_slider.value = 0
        assert ex.state["active"] is False and ex.state["activation"] == 0.0
        assert "not active on this image" in ex.projection_info.value
        assert 'data-active="false"' in ex.projection_info.value
        rgb = png_rgb(ex.projection_image.value)
        # the crossed tile (light grey, dark diagonals), not the mid grey of an all-zero projection
        assert set(np.unique(rgb).tolist()) == {120, 225}
        ex.channel_slider.value = 1                       # a live map: a picture and no such note
        assert ex.state["active"] is True and ex.state["activation"] > 0
        assert "not active" not in ex.projection_info.value
    finally:
        ex.close()


def test_gallery_counts_hits_that_are_not_active():
    lens = dead_channel_lens()
    images = zfwidgets.samples()[:6]
    g = zfwidgets.TopGallery(lens, images, "conv1", channels=[0, 1], k=3)
    try:
        g.mine_button.click()
        assert g.error is None
        g.channel_slider.value = 0
        assert "3 of 3 not active" in g.info.value
        assert [h[2] for h in g.state["hits"]] == [0.0, 0.0, 0.0]
        g.channel_slider.value = 1
        assert "not active" not in g.info.value
    finally:
        g.close()
