"""Explorer without a browser: set widget values, click canvases, compare what is displayed with the plain API."""
import datetime
import io

import numpy as np
import pytest
import torch
from PIL import Image

import zfwidgets
from zfwidgets import project
from zfwidgets.widgets import explorer as explorer_module

from .util import fire, open_widget_ids, png_pixels, png_rgb, read_top1


@pytest.fixture
def images():
    return zfwidgets.samples()[::5]            # 8 samples, one per class pair


@pytest.fixture
def ex(zf_random, images):
    e = zfwidgets.Explorer(zf_random, images)
    yield e
    e.close()


def shown_projection(ex) -> np.ndarray:
    """The projection PNG, shrunk back to input pixels (it is enlarged nearest-neighbour)."""
    rgb = png_rgb(ex.projection_image.value)
    f = rgb.shape[0] // 28
    return rgb[::f, ::f]


def test_projection_equals_the_plain_api_for_layer_channel_method(ex, zf_random, images):
    for layer, channel, method in [("conv1", 0, "deconvnet"), ("conv3", 17, "guided"), ("conv5", 3, "gradient"),
                                   ("fc6", 5, "deconvnet")]:
        ex.layer_dropdown.value = layer
        ex.channel_slider.value = channel
        ex.method_toggle.value = method
        assert (ex.state["layer"], ex.state["channel"], ex.state["method"]) == (layer, channel, method)
        ref = project(zf_random, images[0].image, layer, channel, method=method)
        assert torch.allclose(ex.projection.pixels, ref.pixels, atol=1e-6)
        assert ex.state["projected"] == ref.position
        assert (shown_projection(ex) == ref.to_image()).all()
        assert ex.error is None


def test_projection_png_changes_with_layer_and_channel(ex):
    first = ex.projection_image.value
    ex.channel_slider.value = 4
    second = ex.projection_image.value
    ex.layer_dropdown.value = "conv2"
    third = ex.projection_image.value
    assert len({first, second, third}) == 3
    assert "zf-projection" in ex.projection_image._dom_classes
    assert "zf-layer" in ex.layer_dropdown._dom_classes and "zf-channel" in ex.channel_slider._dom_classes
    assert "zf-method" in ex.method_toggle._dom_classes


def test_probabilities_always_visible_and_right(ex, zf_random, images):
    for k in (0, 3):
        ex.image_picker.value = k
        name, index, p = read_top1(ex.probs.value)
        probs = zf_random.predict(images[k].image)
        assert index == int(probs.argmax()) and p == pytest.approx(float(probs.max()), abs=1e-6)
        assert name == zf_random.class_name(index)
        assert "zf-probs" in ex.probs._dom_classes


def test_clicking_the_mosaic_selects_a_channel(ex):
    ex.layer_dropdown.value = "conv2"
    m = ex._mosaic
    assert m.count == 64
    x, y = m.origin(13)
    fire(ex.mosaic_canvas.canvas, "mouse_down", x + 2, y + 2)
    assert ex.state["channel"] == 13 and ex.channel_slider.value == 13
    fire(ex.mosaic_canvas.canvas, "mouse_down", 0, 0)          # a separator: nothing changes
    assert ex.state["channel"] == 13


def test_mosaic_shows_every_map_on_one_scale(ex, zf_random, images):
    ex.layer_dropdown.value = "conv3"
    act = zf_random.forward(images[0].image).activations["conv3"][0].detach().clamp(min=0)
    pixels = png_rgb(ex.mosaic_canvas.picture.value)[..., 0]              # grey levels as displayed
    m = ex._mosaic
    f = m.tile_w // act.shape[-1]
    for k in (0, 50, 95):
        x, y = m.origin(k)
        tile = pixels[y:y + m.tile_h:f, x:x + m.tile_w:f].astype(float)
        assert np.abs(tile - (act[k] / act.max() * 255).numpy()).max() <= 1.5


def test_clicking_the_enlarged_map_projects_that_position(ex, zf_random, images):
    ex.layer_dropdown.value = "conv2"                          # 14 x 14 maps, enlarged 16x
    ex.channel_slider.value = 9
    fire(ex.map_canvas.canvas, "mouse_down", 5 * 16 + 3, 11 * 16 + 8)
    assert ex.state["position"] == (11, 5) and ex.state["projected"] == (11, 5)
    ref = project(zf_random, images[0].image, "conv2", 9, position=(11, 5), method="deconvnet")
    assert torch.allclose(ex.projection.pixels, ref.pixels, atol=1e-6)
    ex.channel_slider.value = 10                               # a new channel projects its strongest again
    assert ex.state["position"] == "max"


def test_side_by_side_shows_all_three_methods(ex, zf_random, images):
    ex.layer_dropdown.value = "conv4"
    ex.side_checkbox.value = True
    assert ex.side_box.layout.display is None
    for method in ("deconvnet", "guided", "gradient"):
        ref = project(zf_random, images[0].image, "conv4", 0, method=method)
        rgb = png_rgb(ex.side_images[method].value)
        assert (rgb[::8, ::8] == ref.to_image()).all()
    ex.side_checkbox.value = False
    assert ex.side_box.layout.display == "none"


def test_show_sets_everything_in_one_update(ex, zf_random, images):
    renders = ex.renders
    ex.show(image=2, layer="conv3", channel=7, position=(3, 4), method="guided")
    assert ex.renders == renders + 1
    s = ex.state
    assert (s["image"], s["layer"], s["channel"], s["position"], s["method"]) == (2, "conv3", 7, (3, 4), "guided")
    ref = project(zf_random, images[2].image, "conv3", 7, position=(3, 4), method="guided")
    assert torch.allclose(ex.projection.pixels, ref.pixels, atol=1e-6)
    with pytest.raises(ValueError, match="channel 999 is out of range"):
        ex.show(channel=999)
    assert ex.state["channel"] == 7


def _upload(data: bytes, name: str) -> tuple:
    return ({"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def test_upload_goes_through_load_image_bytes_and_errors_show_in_the_panel(ex, zf_random):
    buf = io.BytesIO()
    Image.fromarray((np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)).save(buf, format="PNG")
    ex.upload.value = _upload(buf.getvalue(), "mine.png")
    assert ex.state["image_name"] == "upload: mine.png" and ex.state["images"] == 9
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert read_top1(ex.probs.value)[2] == pytest.approx(float(zf_random.predict(img).max()), abs=1e-6)

    ex.upload.value = _upload(b"this is not a png", "notes.txt")
    assert "notes.txt: not a readable image file" in ex.error
    assert ex.state["images"] == 9
    ex.channel_slider.value = 2                                # still works, error cleared
    assert ex.error is None and ex.state["channel"] == 2


def test_a_raising_callback_shows_its_error_and_the_panel_keeps_working(ex, zf_random, images, monkeypatch):
    real = explorer_module._project

    def broken(*a, **k):
        raise RuntimeError("projection exploded")
    monkeypatch.setattr(explorer_module, "_project", broken)
    ex.channel_slider.value = 3
    assert "projection exploded" in ex.error and "zf-error" in ex.error_area._dom_classes
    monkeypatch.setattr(explorer_module, "_project", real)
    ex.channel_slider.value = 5
    assert ex.error is None
    ref = project(zf_random, images[0].image, "conv1", 5)
    assert torch.allclose(ex.projection.pixels, ref.pixels, atol=1e-6)


def test_default_images_are_the_bundled_samples(zf_random):
    e = zfwidgets.Explorer(zf_random)
    try:
        assert e.state["images"] == 40 and e.state["image_name"].startswith("0: T-shirt/top")
    finally:
        e.close()


def test_close_leaves_no_hooks_and_no_widgets(zf_random, images, model_hooks):
    hooks = model_hooks(zf_random.model)
    before = open_widget_ids()
    e = zfwidgets.Explorer(zf_random, images)
    e.side_checkbox.value = True
    e.layer_dropdown.value = "conv5"
    e.close()
    assert model_hooks(zf_random.model) == hooks
    assert open_widget_ids() <= before
