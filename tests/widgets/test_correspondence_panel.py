"""CorrespondencePanel: boxes drawn and moved by mouse; the Δ it shows equals ZF's formula recomputed here
(hooks, explicit ordered pairs) and zf.correspondence's random controls; the model is left as it was."""
import re

import numpy as np
import pytest
import torch

import zfwidgets

from .util import assert_same_model_state, fire, model_state, open_widget_ids, rgb_images, small_torchvision


def reference_delta(lens, images, boxes, layer, tol=1e-4):
    """Σ_{i≠j} H(sign ε_i, sign ε_j) / (n(n-1)D) for one part, from scratch (mask = the lens's fill value)."""
    module = lens.resolve(layer)[2]
    x = torch.cat([lens.to_input(im) for im in images])
    masked = x.clone()
    fill = lens.fill_value.view(-1, 1, 1)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        masked[i, :, y0:y1, x0:x1] = fill
    got = []
    h = module.register_forward_hook(lambda m, a, o: got.append(o.detach().double().flatten(1).clamp(min=0)))
    try:
        with torch.no_grad():
            lens.model(x)
            lens.model(masked)
    finally:
        h.remove()
    orig, mask = got
    eps = orig - mask
    thresh = tol * float(orig.abs().max())
    s = torch.where(eps.abs() <= thresh, torch.zeros_like(eps), eps.sign())
    n, D = s.shape
    total = sum(int((s[i] != s[j]).sum()) for i in range(n) for j in range(n) if i != j)
    return total / (n * (n - 1) * D), total


def shown(panel):
    cells = re.findall(r'data-mask="([^"]*)" data-layer="([^"]*)" data-value="([^"]*)" data-std="([^"]*)"',
                       panel.table.value)
    return {(m, l): (float(v), float(s)) for m, l, v, s in cells}


def drag(canvas, points):
    fire(canvas, "mouse_down", *points[0])
    for p in points[1:]:
        fire(canvas, "mouse_move", *p)
    fire(canvas, "mouse_up", *points[-1])


@pytest.mark.parametrize("which", ["zfnet", "alexnet", "resnet18"])
def test_drawn_and_moved_boxes_show_zf_delta(which, zf_random):
    if which == "zfnet":
        lens, images, side = zf_random, [s.image for s in zfwidgets.samples(label=9)] + [zfwidgets.samples()[1].image], 28
        layers = ["conv5", "fc7"]
    else:
        side = 64 if which == "alexnet" else 32
        lens, images = small_torchvision(which, side), rgb_images(5, side)
        layers = ["conv3", "conv5"] if which == "alexnet" else ["conv10", "conv20"]
    state = model_state(lens.model)
    boxes = [(2, 2, 10, 10)] * 5
    panel = zfwidgets.CorrespondencePanel(lens, images, {"eye": boxes}, layers=layers, random_controls=3)
    try:
        assert panel.error is None
        f = panel.scale
        # draw a new box on image 1: from input pixel (y 12, x 4) to (y 19, x 13)
        drag(panel.canvases[1].canvas, [(4 * f + 1, 12 * f + 1), (8 * f, 15 * f), (13 * f + 1, 19 * f + 1)])
        want = [boxes[0], (12, 4, 20, 14)] + boxes[2:]
        assert panel.state["boxes"]["eye"] == want and not panel.state["dragging"]
        # move image 3's box by (+5, +7) pixels: press inside, drag
        drag(panel.canvases[3].canvas, [(3 * f, 3 * f), (10 * f, 8 * f)])
        want[3] = (7, 9, 15, 17)
        assert panel.state["boxes"]["eye"] == want and panel.error is None
        cells = shown(panel)
        for layer in layers:
            ref, raw = reference_delta(lens, images, want, layer)
            assert cells[("eye", layer)][0] == pytest.approx(ref, rel=1e-7)
            assert panel.state["raw"]["eye"][layers.index(layer)] == raw
        c = zfwidgets.correspondence(lens, images, {"eye": want}, layers=layers, random_controls=3, progress=False)
        for k, layer in enumerate(layers):
            m, s = cells[(c.controls[0], layer)]
            assert m == pytest.approx(float(c.control_mean[0, k]), rel=1e-7)
            assert s == pytest.approx(float(c.control_std[0, k]), rel=1e-6, abs=1e-12)
        panel.normalised.value = False
        assert shown(panel)[("eye", layers[0])][0] == panel.state["raw"]["eye"][0]
        assert_same_model_state(lens.model, state)
    finally:
        panel.close()
    assert_same_model_state(lens.model, state)


def test_bundled_parts_and_coalesced_drag(bundled):
    import asyncio
    from .util import idle
    boots = zfwidgets.samples(label=9)
    parts = {"toe": [(14, 0, 22, 8)] * 4, "heel": [(14, 20, 22, 28)] * 4}
    panel = zfwidgets.CorrespondencePanel(bundled, boots, parts)
    try:
        panel.part_dropdown.value = "heel"
        f = panel.scale
        renders = panel.renders

        async def flood():
            c = panel.canvases[0].canvas
            fire(c, "mouse_down", 22 * f, 16 * f)
            for k in range(200):
                fire(c, "mouse_move", 22 * f - (k % 12) * f, 16 * f)
                await asyncio.sleep(0)
            await idle()
            fire(c, "mouse_up", 12 * f, 16 * f)
        asyncio.run(flood())
        assert panel.renders - renders < 40                       # coalesced: far fewer updates than moves
        assert panel.state["boxes"]["heel"][0] == (14, 10, 22, 18)       # moved left by 10 pixels
        assert panel.state["boxes"]["toe"] == parts["toe"]
        ref, _ = reference_delta(bundled, [b.image for b in boots], panel.state["boxes"]["heel"],
                                 panel.state["layers"][0])
        assert panel.state["delta"]["heel"][0] == pytest.approx(ref, rel=1e-7)
    finally:
        panel.close()


def test_errors_and_close(zf_random, monkeypatch):
    from zfwidgets.widgets import correspondence as module
    s = zfwidgets.samples(label=9)
    before = open_widget_ids()
    with pytest.raises(ValueError, match="at least 2 images"):
        zfwidgets.CorrespondencePanel(zf_random, s[:1])
    with pytest.raises(ValueError):
        zfwidgets.CorrespondencePanel(zf_random, s, {"p": [(0, 0, 40, 40)] * 4})
    assert open_widget_ids() <= before
    panel = zfwidgets.CorrespondencePanel(zf_random, s, random_controls=2)
    state = model_state(zf_random.model)
    monkeypatch.setattr(module, "_correspondence", lambda *a: 1 / 0)
    old = panel.state["boxes"]["part"][0]
    f = panel.scale
    drag(panel.canvases[0].canvas, [(1, 1), (5 * f, 5 * f)])
    assert "ZeroDivisionError" in panel.error and panel.state["boxes"]["part"][0] == old
    monkeypatch.undo()
    drag(panel.canvases[0].canvas, [(1, 1), (5 * f, 5 * f)])
    assert panel.error is None and panel.state["boxes"]["part"][0] == (0, 0, 6, 6)
    assert_same_model_state(zf_random.model, state)
    panel.close()
    assert open_widget_ids() <= before
