"""Panels are views: they draw analysis results with the figures' colours, import no private analysis or core
name, and the canvas helpers do not import the panel base."""
import ast
from pathlib import Path

import numpy as np
import pytest

import zfwidgets
from zfwidgets.analysis.occlusion import unoccluded

from .util import png_rgb

WIDGETS = Path(zfwidgets.__file__).parent / "widgets"


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name, []


def test_no_widget_imports_a_private_name_of_analysis_or_core():
    bad = []
    for path in sorted(WIDGETS.glob("*.py")):
        for level, module, names in _imports(path):
            absolute = module if level == 0 else "zfwidgets." + module if level == 2 else "zfwidgets.widgets." + module
            parts = absolute.split(".")
            if len(parts) >= 2 and parts[:2] in (["zfwidgets", "analysis"], ["zfwidgets", "core"]):
                if any(p.startswith("_") for p in parts[2:]) or any(n.startswith("_") for n in names):
                    bad.append(f"{path.name}: from {'.' * level}{module} import {names}")
    assert not bad, bad


def test_canvas_module_does_not_import_the_panel_base():
    mods = {m for _, m, _ in _imports(WIDGETS / "_canvas.py")}
    assert "_common" not in mods and "zfwidgets.widgets._common" not in mods
    from zfwidgets.widgets import _canvas, _common
    assert _common.fit is _canvas.fit


def test_one_place_says_what_a_sample_is():
    s = zfwidgets.samples()[3]
    from zfwidgets.zoo import image_and_label
    assert image_and_label(s) == (s.image, s.label)
    assert image_and_label((s.image, 7)) == (s.image, 7)
    assert image_and_label(s.image) == (s.image, None)
    assert image_and_label((s.image, 7, "note")) == (s.image, 7)                 # a record: image first
    assert image_and_label((s.image, {"boxes": []})) == (s.image, None)
    assert image_and_label({"img": s.image}) == (s.image, None)
    for path in sorted(WIDGETS.glob("*.py")):
        assert 'hasattr(image, "label")' not in path.read_text() and 'hasattr(item, "label")' not in \
            path.read_text(), path.name


def test_occlusion_panel_colours_equal_the_figure(zf_random):
    """The (b), (d), (e) maps of the panel are the figure's, pixel for pixel (matplotlib's own colouring)."""
    sample = zfwidgets.samples()[9]
    panel = zfwidgets.OcclusionPanel(zf_random, sample, size=8, stride=4)
    try:
        occ = panel.compute_maps()
        fig = occ.plot()
        axes = fig.axes
        images = {}
        for ax in axes:
            title = ax.get_title()
            if ax.get_images() and title[:3] in ("(b)", "(d)", "(e)"):
                im = ax.get_images()[0]
                images[title[:3]] = np.asarray(im.to_rgba(im.get_array(), bytes=True))[..., :3]
        assert set(images) == {"(b)", "(d)", "(e)"}
        for pc, key in zip(panel._map_canvases, ("(b)", "(d)", "(e)")):
            f = pc.width // occ.shape[1]
            shown = png_rgb(pc.picture.value)[::f, ::f]
            assert shown.shape == images[key].shape
            assert (shown == images[key]).all(), key
        # a class has one colour wherever it is drawn: by its index
        top = png_rgb(panel._map_canvases[2].picture.value)
        from zfwidgets.plot.colours import class_colours
        k = int(occ.top_class[0, 0])
        assert tuple(top[0, 0]) == tuple(class_colours(10)[k])
    finally:
        panel.close()


def test_occlusion_panel_reference_comes_from_the_analysis(zf_random):
    """The unoccluded p(target) and the maps' scale the panel shows are :func:`unoccluded`'s, which equal a
    plain forward."""
    sample = zfwidgets.samples()[9]
    panel = zfwidgets.OcclusionPanel(zf_random, sample, size=8, layer="conv3")
    try:
        u = unoccluded(zf_random, sample.image, layer="conv3", target=sample.label)
        logits, acts = zf_random.run(zf_random.to_input(sample.image), ["conv3"])
        p = logits.double().softmax(1)[0]
        assert u.base_probability == pytest.approx(float(p[sample.label]), abs=1e-6)
        assert u.base_class == int(p.argmax()) and u.activation_max == pytest.approx(float(acts["conv3"].max()))
        assert f"unoccluded {u.base_probability * 100:.1f}%" in panel.probs.value
        assert panel._layer_scale == u.activation_max
    finally:
        panel.close()
