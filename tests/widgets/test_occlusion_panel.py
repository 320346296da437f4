"""OcclusionPanel without a browser: canvas events delivered as comm messages, numbers read back from what
the panel displays and recomputed independently with the plain API."""
import asyncio
import time

import numpy as np
import pytest
import torch

import zfwidgets
from zfwidgets.analysis.occlusion import occlude, occlusion
from zfwidgets.widgets import occlusion as occlusion_module

from .util import expected_box, idle, fire, open_widget_ids, png_pixels, png_rgb, read_box, read_top1


@pytest.fixture
def sample():
    return zfwidgets.samples()[9]          # a pullover


@pytest.fixture
def panel(zf_random, sample):
    p = zfwidgets.OcclusionPanel(zf_random, sample, size=8)
    yield p
    p.close()


def assert_shows_plain_api(panel, lens, image):
    """The displayed top class and probability (6 decimals) and the box equal the plain API's for that box."""
    box = read_box(panel.probs.value)
    assert box == panel.state["box"]
    probs = lens.predict(occlude(lens, image, box))            # independent: recorded forward via predict
    name, index, p = read_top1(panel.probs.value)
    assert index == int(probs.argmax()) and name == lens.class_name(index)
    assert p == pytest.approx(float(probs.max()), abs=1e-6)
    top5 = [(lens.class_name(int(i)), float(v)) for v, i in zip(*probs.topk(5))]
    assert [c for c, _ in panel.state["top5"]] == [c for c, _ in top5]
    assert np.allclose([v for _, v in panel.state["top5"]], [v for _, v in top5], atol=1e-6)


def test_drag_shows_plain_api_probabilities_for_the_final_box(panel, zf_random, sample):
    canvas = panel.occluder.canvas
    assert (canvas.width, canvas.height) == (224, 224) and panel.scale == 8
    fire(canvas, "mouse_down", 40, 50)
    assert panel.state["dragging"]
    assert panel.state["box"] == expected_box(40, 50, 8, 8, 28, 28)
    for x, y in [(60, 70), (90, 100), (130, 111)]:
        fire(canvas, "mouse_move", x, y)
    fire(canvas, "mouse_up", 131, 117)
    assert not panel.state["dragging"]
    assert panel.state["box"] == expected_box(131, 117, 8, 8, 28, 28) == (11, 12, 19, 20)
    assert_shows_plain_api(panel, zf_random, sample.image)
    # moves without the button held do not drag
    fire(canvas, "mouse_move", 10, 10)
    assert panel.state["box"] == (11, 12, 19, 20)


@pytest.mark.parametrize("incremental", [True, False])
def test_both_forward_paths_show_the_plain_api(panel, zf_random, sample, incremental, monkeypatch):
    """Every move asks the lens's occlusion engine, which runs its plan (``incremental``) or the model's
    forward; either way the panel must show the same numbers. (The engine's own choice on this small net is the
    forward: the test forces each way.)"""
    monkeypatch.setattr(panel.engine, "mode", "incremental" if incremental else "full")
    for x, y in [(20, 200), (112, 112), (223, 5)]:
        fire(panel.occluder.canvas, "mouse_down", x, y)
        fire(panel.occluder.canvas, "mouse_up", x, y)
        assert panel.state["box"] == expected_box(x, y, 8, 8, 28, 28)
        assert panel.state["forward"] == ("incremental" if incremental else "full")
        assert_shows_plain_api(panel, zf_random, sample.image)


def test_box_is_clamped_inside_the_image(panel, zf_random, sample):
    fire(panel.occluder.canvas, "mouse_down", 223, 0)
    fire(panel.occluder.canvas, "mouse_up", 223, 0)
    assert panel.state["box"] == (0, 20, 8, 28)
    assert_shows_plain_api(panel, zf_random, sample.image)


def test_occluding_changes_the_probabilities(bundled, sample):
    """With the trained model, covering the middle of the garment moves the probabilities away from the
    unoccluded ones, and covering a corner moves them differently."""
    panel = zfwidgets.OcclusionPanel(bundled, sample, size=10)
    try:
        unoccluded = float(bundled.predict(sample.image).max())
        fire(panel.occluder.canvas, "mouse_down", 112, 112)     # the middle of the pullover
        fire(panel.occluder.canvas, "mouse_up", 112, 112)
        middle = read_top1(panel.probs.value)[2]
        assert abs(middle - unoccluded) > 1e-3
        assert_shows_plain_api(panel, bundled, sample.image)
        fire(panel.occluder.canvas, "mouse_down", 0, 0)
        fire(panel.occluder.canvas, "mouse_up", 0, 0)
        assert panel.state["box"] == (0, 0, 10, 10)
        assert read_top1(panel.probs.value)[2] != middle
        assert_shows_plain_api(panel, bundled, sample.image)
    finally:
        panel.close()


def test_size_and_layer_controls(panel, zf_random, sample):
    fire(panel.occluder.canvas, "mouse_down", 100, 100)
    fire(panel.occluder.canvas, "mouse_up", 100, 100)
    panel.size_slider.value = 13
    y0, x0, y1, x1 = panel.state["box"]
    assert (y1 - y0, x1 - x0) == (13, 13)
    assert panel.state["box"] == expected_box(100, 100, 8, 13, 28, 28)
    assert_shows_plain_api(panel, zf_random, sample.image)

    # the mosaic shows the chosen layer's maps of the occluded image, on the unoccluded image's scale
    panel.layer_dropdown.value = "conv2"
    assert panel.state["layer"] == "conv2"
    x = occlude(zf_random, sample.image, panel.state["box"])
    _, acts = zf_random.run(x, ["conv2"])
    _, base = zf_random.run(zf_random.to_input(sample.image), ["conv2"])
    maps = acts["conv2"][0].clamp(min=0) / base["conv2"].max() * 255
    mosaic = png_rgb(panel.mosaic.value)[..., 0]                       # grey levels as displayed
    factor, gap = 2, 1                                  # 14x14 maps enlarged to 28 px
    cols = int(np.ceil(np.sqrt(64)))
    for k in (0, 9, 63):
        r, c = divmod(k, cols)
        y, x0 = gap + r * (14 * factor + gap), gap + c * (14 * factor + gap)
        tile = mosaic[y:y + 14 * factor:factor, x0:x0 + 14 * factor:factor]
        assert np.abs(tile.astype(float) - maps[k].clamp(max=255).numpy()).max() <= 1.5


def test_images_are_png_and_nearest_upscaled(panel, zf_random, sample):
    shown = png_pixels(panel.occluder.picture.value)
    assert shown.shape == (224, 224)
    original = zf_random.to_display(zf_random.to_input(sample.image))[..., 0]
    assert (shown == np.repeat(np.repeat(original, 8, 0), 8, 1)).all()
    assert panel.mosaic.format == "png" and panel.mosaic.value[:4] == b"\x89PNG"


def test_css_classes_for_the_browser_test(panel):
    assert "zf-occluder-canvas" in panel.occluder.canvas._dom_classes      # the element with the events
    assert "zf-probs" in panel.probs._dom_classes
    assert "zf-progress" in panel.progress._dom_classes
    assert "zf-error" in panel.error_area._dom_classes
    assert '<span class="zf-top1" data-class=' in panel.probs.value
    assert '<span class="zf-box" data-box="10,10,18,18">' in panel.probs.value


def test_occlusion_maps_button_and_clicking_a_cell(panel, zf_random, sample):
    panel.stride_slider.value = 4
    panel.compute_button.click()
    assert panel.error is None
    assert panel.progress.value == 1.0 and panel.state["maps"]["stride"] == (4, 4)
    occ = panel.maps["result"]
    ref = occlusion(zf_random, sample.image, size=8, stride=4, target=sample.label, layer="conv5", progress=False)
    assert torch.allclose(occ.probability, ref.probability, atol=1e-6)
    # the probability map as shown: one cell per position, matplotlib's magma on 0..1 (the figure's scale)
    from matplotlib import colormaps
    prob_canvas = panel._map_canvases[1]
    f = prob_canvas.width // occ.shape[1]
    shown = png_rgb(prob_canvas.picture.value)[::f, ::f]
    want = colormaps["magma"](np.clip(ref.probability.numpy().astype(np.float64), 0, 1), bytes=True)[..., :3]
    assert np.abs(shown.astype(int) - want.astype(int)).max() <= 1
    # clicking cell (2, 3) puts the occluder on that box; the panel then shows p(target) of the map
    fire(prob_canvas.canvas, "mouse_down", 3 * f + 1, 2 * f + 1)
    assert panel.state["box"] == tuple(int(v) for v in ref.boxes[2, 3])
    assert panel.state["target"][1] == pytest.approx(float(ref.probability[2, 3]), abs=1e-6)
    assert_shows_plain_api(panel, zf_random, sample.image)


# ----- coalescing the mouse-move flood ---------------------------------------------------------------
def _count_renders(panel):
    calls = []
    original = panel._render

    def counting(box, center):
        calls.append(box)
        original(box, center)
    panel._render = counting
    return calls


@pytest.mark.parametrize("n", [500, 1000])
def test_burst_of_moves_in_an_event_loop_renders_only_the_newest(panel, zf_random, sample, n):
    """Each move arrives as its own loop iteration, as queued comm messages are dispatched by ipykernel."""
    calls = _count_renders(panel)
    panel._moves.max_wait = 60.0            # only the loop's quietness decides here (max_wait: the next test)
    pushed = panel._moves.pushed
    rng = np.random.default_rng(n)
    events = [(float(rng.uniform(0, 224)), float(rng.uniform(0, 224))) for _ in range(n)]

    async def kernel():
        fire(panel.occluder.canvas, "mouse_down", 5, 5)
        for x, y in events:
            fire(panel.occluder.canvas, "mouse_move", x, y)
            await asyncio.sleep(0)                      # the next message: one loop iteration later
        await idle()                             # the kernel goes idle: the drain runs

    asyncio.run(kernel())
    assert panel._moves.pushed - pushed == n + 1
    assert len(calls) == 2, len(calls)                   # mouse down, then the newest of the burst
    last = expected_box(*events[-1], 8, 8, 28, 28)
    assert calls[-1] == last
    assert panel.state["box"] == last and not panel.state["pending"]
    assert panel._moves._scheduled is None               # nothing queued afterwards
    assert_shows_plain_api(panel, zf_random, sample.image)


def test_an_update_raising_during_a_flood_shows_the_error_and_the_panel_recovers(panel, zf_random, sample,
                                                                                  monkeypatch):
    real = occlusion_module._occluded_view
    state = {"broken": True}

    def flaky(*args, **kwargs):
        if state["broken"]:
            raise RuntimeError("update failed mid-drag")
        return real(*args, **kwargs)
    monkeypatch.setattr(occlusion_module, "_occluded_view", flaky)

    async def kernel():
        fire(panel.occluder.canvas, "mouse_down", 5, 5)
        for k in range(300):
            fire(panel.occluder.canvas, "mouse_move", 10 + k % 200, 50)
            await asyncio.sleep(0)
        await idle()
        assert "update failed mid-drag" in panel.error
        state["broken"] = False
        for k in range(300):
            fire(panel.occluder.canvas, "mouse_move", 200 - k % 150, 120)
            await asyncio.sleep(0)
        fire(panel.occluder.canvas, "mouse_up", 99, 131)
        await idle()

    asyncio.run(kernel())
    assert panel.error is None
    assert panel.state["box"] == expected_box(99, 131, 8, 8, 28, 28)
    assert not panel.state["pending"] and panel._moves._scheduled is None
    assert_shows_plain_api(panel, zf_random, sample.image)


def test_burst_while_the_kernel_is_busy_with_slow_updates(panel, zf_random, sample):
    """Moves arrive every 0.2 ms of wall time while each update takes 5 ms: the backlog that piles up during an
    update is read (one message per loop iteration), and only its newest move is rendered."""
    calls = _count_renders(panel)
    original = panel._render

    def slow(box, center):
        time.sleep(0.005)
        original(box, center)
    panel._render = slow
    rng = np.random.default_rng(2)
    events = [(float(rng.uniform(0, 224)), float(rng.uniform(0, 224))) for _ in range(500)]

    async def kernel():
        t0 = time.monotonic()
        arrival = [t0 + 0.0002 * i for i in range(len(events))]
        fire(panel.occluder.canvas, "mouse_down", 5, 5)
        i = 0
        while i < len(events):
            if time.monotonic() >= arrival[i]:          # a message waiting in the socket: dispatch it
                fire(panel.occluder.canvas, "mouse_move", *events[i])
                i += 1
            await asyncio.sleep(0)
        fire(panel.occluder.canvas, "mouse_up", *events[-1])
        await idle()

    asyncio.run(kernel())
    assert 2 <= len(calls) <= 60, len(calls)             # far fewer than 500, but it kept moving
    assert panel.state["box"] == expected_box(*events[-1], 8, 8, 28, 28)
    assert not panel.state["pending"]
    assert_shows_plain_api(panel, zf_random, sample.image)


def test_continuous_stream_still_updates_within_max_wait(panel):
    """A stream that never lets the loop go quiet still renders (at least every max_wait seconds)."""
    calls = _count_renders(panel)
    panel._moves.max_wait = 0.01

    async def kernel():
        fire(panel.occluder.canvas, "mouse_down", 5, 5)
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < 0.3:
            fire(panel.occluder.canvas, "mouse_move", 5 + k % 200, 100)
            k += 1
            await asyncio.sleep(0)
        fire(panel.occluder.canvas, "mouse_up", 77, 100)

    asyncio.run(kernel())
    assert len(calls) >= 3                              # down, at least one during the stream, up
    assert panel.state["box"] == expected_box(77, 100, 8, 8, 28, 28)


# ----- errors ----------------------------------------------------------------------------------------
def test_a_raising_update_shows_its_error_and_the_panel_keeps_working(panel, zf_random, sample, monkeypatch):
    real = occlusion_module._occluded_view

    def broken(*args, **kwargs):
        raise RuntimeError("occluder callback exploded")
    monkeypatch.setattr(occlusion_module, "_occluded_view", broken)
    fire(panel.occluder.canvas, "mouse_down", 50, 50)
    fire(panel.occluder.canvas, "mouse_up", 50, 50)
    assert "occluder callback exploded" in panel.error
    assert "occluder callback exploded" in panel.error_area.value and "Traceback" in panel.error_area.value
    assert panel.error_area.layout.display is None                     # visible
    assert panel.state["box"] == (10, 10, 18, 18)                      # the view did not pretend to move

    monkeypatch.setattr(occlusion_module, "_occluded_view", real)
    fire(panel.occluder.canvas, "mouse_down", 60, 180)
    fire(panel.occluder.canvas, "mouse_up", 60, 180)
    assert panel.error is None and panel.error_area.layout.display == "none"
    assert panel.state["box"] == expected_box(60, 180, 8, 8, 28, 28)
    assert_shows_plain_api(panel, zf_random, sample.image)


def test_errors_in_the_maps_button_show_in_the_panel(panel, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("maps failed")
    monkeypatch.setattr(occlusion_module, "_occlusion_maps", broken)
    panel.compute_button.click()
    assert "maps failed" in panel.error and panel.progress.bar_style == "danger"


def test_bad_arguments_raise_clearly_and_leave_nothing_open(zf_random, sample):
    before = open_widget_ids()
    with pytest.raises(ValueError, match="size must be an int in 1..28"):
        zfwidgets.OcclusionPanel(zf_random, sample, size=40)
    with pytest.raises(ValueError, match="not a conv layer"):
        zfwidgets.OcclusionPanel(zf_random, sample, layer="fc6")
    assert open_widget_ids() <= before


# ----- no leftovers -----------------------------------------------------------------------------------
def test_close_leaves_no_hooks_and_no_widgets(zf_random, sample, model_hooks):
    hooks = model_hooks(zf_random.model)
    training = [m.training for m in zf_random.model.modules()]
    before = open_widget_ids()
    panel = zfwidgets.OcclusionPanel(zf_random, sample, size=6)
    fire(panel.occluder.canvas, "mouse_down", 30, 30)
    fire(panel.occluder.canvas, "mouse_move", 90, 30)
    fire(panel.occluder.canvas, "mouse_up", 90, 30)
    panel.compute_button.click()
    renders = panel.renders
    assert model_hooks(zf_random.model) == hooks
    panel.close()
    panel.close()                                       # twice is fine
    assert model_hooks(zf_random.model) == hooks
    assert [m.training for m in zf_random.model.modules()] == training
    assert open_widget_ids() <= before, "the panel left widgets open"
    fire(panel.occluder.canvas, "mouse_down", 30, 30)   # a late event after close does nothing
    assert panel.renders == renders


# ----- the approximate live move and the progressive maps (issue 29 item 5) ------------------------------
@pytest.fixture
def resnet_panel():
    import torchvision
    torch.manual_seed(0)
    lens = zfwidgets.Lens(torchvision.models.resnet18().eval(), input_size=(3, 64, 64))
    x = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8), size=64, mode="bilinear")[0]
    panels = []

    def make(**kw):
        p = zfwidgets.OcclusionPanel(lens, x, size=16, layer="layer3.1", **kw)
        p.engine.mode = "incremental"           # the plan, whatever this machine's clock says
        panels.append(p)
        return p
    yield lens, x, make
    for p in panels:
        p.close()


def _shown_p(panel):
    return read_top1(panel.probs.value)[2]


def test_dragging_shows_the_approximation_and_dropping_the_exact_view(resnet_panel):
    """live="approximate": while the button is held each move runs with the projective-field threshold and the
    panel says so (state and span.zf-approx); mouse up shows the exact view, equal to the plain API's forward
    of the occluded image. live="exact" never approximates."""
    lens, x, make = resnet_panel
    panel = make(live="approximate", tau=0.5)
    s = panel.scale
    fire(panel.occluder.canvas, "mouse_down", 20 * s, 24 * s)
    fire(panel.occluder.canvas, "mouse_move", 30 * s, 34 * s)
    panel._moves.flush()
    assert panel.state["dragging"] and panel.state["shown"] == "approximate"
    assert 'class="zf-approx"' in panel.probs.value
    box = panel.state["box"]
    exact = lens.predict(occlude(lens, x, box))
    approx_p = _shown_p(panel)
    fire(panel.occluder.canvas, "mouse_up", 30 * s, 34 * s)
    assert panel.state["shown"] == "exact" and 'zf-approx' not in panel.probs.value
    assert panel.state["box"] == box
    assert _shown_p(panel) == pytest.approx(float(exact.max()), abs=1e-5)
    assert approx_p == pytest.approx(float(exact.max()), abs=0.05)      # an approximation of the same view

    plain = make(live="exact")
    fire(plain.occluder.canvas, "mouse_down", 20 * s, 24 * s)
    assert plain.state["dragging"] and plain.state["shown"] == "exact"
    with pytest.raises(ValueError, match="live"):
        make(live="fast")


def test_auto_approximates_only_where_an_exact_move_is_slow(resnet_panel, monkeypatch):
    lens, x, make = resnet_panel
    panel = make()
    s = panel.scale
    monkeypatch.setattr(occlusion_module, "LIVE_BUDGET", 1e9)       # every move fast enough: exact
    fire(panel.occluder.canvas, "mouse_down", 20 * s, 24 * s)
    assert panel.state["shown"] == "exact"
    fire(panel.occluder.canvas, "mouse_up", 20 * s, 24 * s)
    monkeypatch.setattr(occlusion_module, "LIVE_BUDGET", 0.0)       # every move too slow: approximate
    fire(panel.occluder.canvas, "mouse_down", 40 * s, 24 * s)
    assert panel.state["shown"] == "approximate"


def test_progressive_maps_show_the_coarse_map_then_the_exact_one(zf_random, sample, monkeypatch):
    """Where a move is slow the maps button shows a coarse map first (every second position computed, the
    rest interpolated: said in the legend), then the exact map, equal to zf.occlusion's."""
    monkeypatch.setattr(occlusion_module, "LIVE_BUDGET", 0.0)
    panel = zfwidgets.OcclusionPanel(zf_random, sample, size=8, stride=4)
    try:
        shown = []
        real = panel._show_maps

        def spy(occ):
            real(occ)
            shown.append((occ.mode, int(occ.exact.sum()), "coarse map" in panel.maps_box.children[-1].value))
        panel._show_maps = spy
        occ = panel.compute_maps()
        assert shown == [("drilldown", 16, True), ("exact", 36, False)]
        assert panel.state["maps"]["mode"] == "exact"
        ref = occlusion(zf_random, sample.image, size=8, stride=4, target=sample.label, progress=False)
        assert torch.allclose(occ.probability, ref.probability, atol=1e-6)
    finally:
        panel.close()
