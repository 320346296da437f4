"""The occlusion panel: drag a grey square over the image and watch the class probabilities and the feature
maps of a layer change (ZF §4.2, Fig. 7), then compute the full occlusion maps.

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")
    >>> panel = zfwidgets.OcclusionPanel(lens, zfwidgets.samples()[0], size=8)
    >>> panel        # displays the live panel, needs a notebook: drag the square  # doctest: +SKIP
    >>> panel.state["box"], panel.state["top5"][0]
    ((10, 10, 18, 18), ('T-shirt/top', 1.000))
"""
from __future__ import annotations

import html
import math
import time

import ipywidgets as W
import numpy as np
import torch

from ..core.inputs import as_input, image_of, label_of
from ._common import (Panel, conv_layers, display_factor, fit, image_widget, mosaic, png_bytes, probs_html,
                      show_png, to_uint8_map, upscale)
from ..plot.colours import FEATURE_CMAP, PROBABILITY_CMAP, class_colour_image, class_colours, colourise
from ._events import Coalescer

__all__ = ["OcclusionPanel"]


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _occlude(lens, image, box, fill):
    from ..analysis.occlusion import occlude
    return occlude(lens, image, box, fill=fill)


def _check_tau(tau):
    from ..inference import check_tau
    return check_tau(tau)


def _engine(lens, x):
    """The lens's occlusion engine for ``x``: it decides how each move runs (its plan or the model's forward)."""
    from ..inference import occlusion_engine
    return occlusion_engine(lens, x)


def _occluded_view(engine, box, fill, layer, tau=None):
    """``(probabilities K, the layer's activations C x h x w)`` of the engine's image occluded by ``box``: the
    numbers of ``lens.run(occlude(lens, x, box, fill), [layer])``, computed the way the engine finds faster;
    with ``tau``, the engine's projective-field threshold (an approximation; ``engine.last_exact`` says whether
    it cut anything)."""
    out = engine.evaluate_box(box, [layer], fill=fill, tau=tau)
    return out.probs, out.activations[layer]


# A live move is approximated while the square is dragged (live="auto") where an exact move took longer than
# this, in seconds: past it the view lags the mouse.
LIVE_BUDGET = 0.05
# the projective-field threshold of the approximate live move (the engine's tau)
LIVE_TAU = 0.5


def _occlusion_maps(lens, image, *, size, stride, fill, target, layer, progress, **mode):
    from ..analysis.occlusion import occlusion
    return occlusion(lens, image, size=size, stride=stride, fill=fill, target=target, layer=layer,
                     progress=progress, **mode)


def _unoccluded(lens, x, layer, target):
    from ..analysis.occlusion import unoccluded
    return unoccluded(lens, x, layer=layer, target=target)


class OcclusionPanel(Panel):
    """Drag a grey occluder over ``image``; the top-5 probabilities and the feature maps of ``layer`` follow.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: a PIL image, uint8 array, float tensor (model input) or a ``zfwidgets.samples()`` item.
        size: the occluder's side in input pixels (default a quarter of the shorter side).
        stride: the step of the full occlusion maps (default ``max(1, size // 4)``).
        layer: a conv layer whose feature maps are shown (default the last conv layer).
        target: the class whose probability the maps follow (default the sample's label, else the prediction).
        fill: the occluder's fill, as in :func:`zfwidgets.occlude` (default the data set's mean pixel).
        display_size: the canvas's longer side in screen pixels (small images are enlarged, nearest neighbour).
        live: how a move is computed while the square is dragged: ``"auto"`` (approximately where the last
            exact move took longer than :data:`LIVE_BUDGET`, 50 ms), ``"exact"`` or ``"approximate"``. The
            approximation is Krypton's projective-field threshold (``tau``, default :data:`LIVE_TAU`;
            :meth:`~zfwidgets.inference.GraphOcclusion.run`); dropping the square (mouse up) shows the exact
            view, and the panel says which it shows.
        tau: the live approximation's projective-field threshold, in (0, 1].

    The occluder: ``mouse_down`` on the canvas puts its centre under the mouse, ``mouse_move`` with the button
    held drags it, ``mouse_up`` (or leaving the canvas) drops it. The box, in input pixels, is
    ``(y0, x0, y0 + size, x0 + size)`` with ``y0 = floor(y / scale - size / 2 + 1/2)`` clamped to
    ``[0, H - size]`` (the same for x), ``scale`` the display enlargement. Mouse moves are coalesced
    (:class:`~zfwidgets.widgets._events.Coalescer`): handlers only record the newest position; the update
    (occluded forward, probabilities, feature-map mosaic, PNG) runs for the newest one when the kernel is free.

    CSS classes (for browser tests): ``zf-occlusion`` (the panel), ``zf-occluder-canvas`` (the ``<canvas>``
    that receives the mouse), ``zf-probs`` (probabilities; inside, ``span.zf-top1[data-class][data-index][data-p]``
    and ``span.zf-box[data-box="y0,x0,y1,x1"]``), ``zf-size``, ``zf-layer``, ``zf-stride``, ``zf-mosaic``,
    ``zf-compute``, ``zf-progress``, ``zf-maps``, ``zf-map-feature``/``zf-map-probability``/``zf-map-class``
    (clickable map canvases), ``zf-error``.

    ``state``: ``box``, ``center``, ``size``, ``layer``, ``top5`` ``[(class, p)]``, ``top1`` ``(index, class, p)``,
    ``target`` ``(index, p)``, ``dragging``, ``renders``, ``pending``, ``forward`` (how the lens's occlusion engine,
    ``engine``, ran the last move: ``"incremental"`` or ``"full"``), ``shown`` (``"exact"``, or
    ``"approximate"`` while a dragged move is approximated: ``span.zf-approx`` in the probabilities),
    ``maps`` (size/stride/layer/channel of the computed maps or ``None``), ``error``.

    Example:
        >>> panel = zfwidgets.OcclusionPanel(lens, zfwidgets.samples()[36].image, size=8, stride=4)
        >>> panel.state["box"]
        (10, 10, 18, 18)
    """

    def __init__(self, lens, image, *, size: int | None = None, stride: int | None = None, layer=None,
                 target: int | None = None, fill="mean", display_size: int = 224, live: str = "auto",
                 tau: float = LIVE_TAU):
        super().__init__(lens)
        self.add_class("zf-occlusion")
        try:
            if live not in ("auto", "exact", "approximate"):
                raise ValueError(f"live must be 'auto', 'exact' or 'approximate', got {live!r}")
            if tau is None:
                raise ValueError("tau must be a number in (0, 1], got None")
            self.live, self.tau = live, _check_tau(tau)
            self.shown = "exact"
            self._exact_seconds = 0.0          # the last exact move's engine time
            self._build(image, size, stride, layer, target, fill, display_size)
        except BaseException:
            self.close()                     # nothing half-wired stays behind
            raise

    def _build(self, image, size, stride, layer, target, fill, display_size):
        lens = self.lens
        image, label = image_of(image), label_of(image)
        self.image = image
        self.x = as_input(lens, image).detach()             # validated model input, 1 x C x H x W
        self.H, self.W = (int(v) for v in self.x.shape[-2:])
        self.fill = fill
        self.target = target if target is not None else label
        self.scale = display_factor(self.H, self.W, display_size)
        layers = conv_layers(lens)
        self.layer = lens.resolve(layer)[0] if layer is not None else layers[-1]
        if self.layer not in layers:
            raise ValueError(f"layer {self.layer!r} is not a conv layer; choose one of {layers}")
        size = size if size is not None else max(1, round(min(self.H, self.W) / 4))
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= min(self.H, self.W):
            raise ValueError(f"size must be an int in 1..{min(self.H, self.W)} (the image is {self.H}x{self.W}), "
                             f"got {size!r}")
        self.size = int(size)
        self.box = self._box_at(self.H / 2, self.W / 2)
        self.center = (self.H / 2, self.W / 2)
        self.dragging = False
        self.renders = 0
        self.maps = None
        self._top5: list = []
        self._top1 = None
        self._target_p = None
        self._layer_scale = 1.0

        # the image under the grey square
        self.occluder = self._picture_canvas(self.W * self.scale, self.H * self.scale, css_class="zf-occluder-canvas",
                                      overlay=self._draw_occluder)
        self._own(self.occluder.canvas)
        self._fill_rgb = self._fill_colour()
        self.occluder.set_picture(png_bytes(self._display(self.x)))

        # controls
        side = min(self.H, self.W)
        self.size_slider = self._own(W.IntSlider(value=self.size, min=1, max=side, description="occluder",
                                                 continuous_update=True))
        self.size_slider.add_class("zf-size")
        self.layer_dropdown = self._own(W.Dropdown(options=layers, value=self.layer, description="layer"))
        self.layer_dropdown.add_class("zf-layer")
        self.stride_slider = self._own(W.IntSlider(value=int(stride) if stride else max(1, self.size // 4),
                                                   min=1, max=side, description="stride", continuous_update=False))
        self.stride_slider.add_class("zf-stride")
        self.compute_button = self._own(W.Button(description="compute occlusion maps", icon="th",
                                                 layout=W.Layout(width="auto")))
        self.compute_button.add_class("zf-compute")
        self.progress = self._own(W.FloatProgress(value=0.0, min=0.0, max=1.0, description="maps",
                                                  layout=W.Layout(visibility="hidden")))
        self.progress.add_class("zf-progress")

        # views
        self.probs = self._own(W.HTML())
        self.probs.add_class("zf-probs")
        self.mosaic = self._own(image_widget("zf-mosaic"))
        self.mosaic_caption = self._own(W.HTML())
        self.maps_box = self._own(W.HBox())
        self.maps_box.add_class("zf-maps")
        self._map_canvases: list = []

        # wiring: every callback guarded (errors show in the panel), moves coalesced
        self._moves = Coalescer(self._guard(self._render_request, "occluder update"),
                                on_error=lambda e: self.show_error("occluder update", e))
        self._on_canvas(self.occluder.canvas, "mouse_down", self._on_mouse_down, "mouse down", clears=False)
        self._on_canvas(self.occluder.canvas, "mouse_move", self._on_mouse_move, "mouse move", clears=False)
        self._on_canvas(self.occluder.canvas, "mouse_up", self._on_mouse_up, "mouse up", clears=False)
        self._on_canvas(self.occluder.canvas, "mouse_out", self._on_mouse_up, "mouse out", clears=False)
        self._observe(self.size_slider, self._set_size, "occluder size")
        self._observe(self.layer_dropdown, self._set_layer, "layer")
        self._on_click(self.compute_button, self.compute_maps, "occlusion maps")

        # the lens's engine for the image (its cached forward built here): every move asks it, and it runs
        # its plan or the model's forward, whichever it measured faster for the occluder's size and the layer
        self.engine = _engine(lens, self.x)
        self._set_layer(self.layer)
        left = W.VBox([self.occluder.canvas, self.size_slider, self.layer_dropdown])
        right = W.VBox([W.HTML("<b>top-5 classes</b>"), self.probs, self.mosaic_caption, self.mosaic])
        self._own(left), self._own(right)
        controls = self._own(W.HBox([self.stride_slider, self.compute_button, self.progress]))
        self.children = [self._own(W.HBox([left, right])), controls, self.maps_box, self.error_area]

    # ----- geometry --------------------------------------------------------------------------------
    def _box_at(self, cy: float, cx: float) -> tuple:
        """The occluder box (y0, x0, y1, x1) centred near input pixel (cy, cx), kept inside the image."""
        s = self.size
        y0 = min(max(int(math.floor(cy - s / 2 + 0.5)), 0), self.H - s)
        x0 = min(max(int(math.floor(cx - s / 2 + 0.5)), 0), self.W - s)
        return (y0, x0, y0 + s, x0 + s)

    def _display(self, x: torch.Tensor) -> np.ndarray:
        rgb = self.lens.to_display(x)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            rgb = rgb[..., 0]                    # grey: a third of the bytes
        return upscale(rgb, self.scale)

    def _fill_colour(self) -> str:
        """The occluder's colour: a pixel that :func:`zfwidgets.occlude` filled, as displayed."""
        filled = _occlude(self.lens, self.x, (0, 0, 1, 1), self.fill)
        r, g, b = (int(v) for v in self.lens.to_display(filled)[0, 0])
        return f"rgb({r},{g},{b})"

    def _draw_occluder(self, layer) -> None:
        y0, x0, y1, x1 = self.box
        s = self.scale
        layer.fill_style = self._fill_rgb
        layer.fill_rect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s)
        layer.stroke_style = "#ff3b30"
        layer.line_width = 2
        layer.stroke_rect(x0 * s + 1, y0 * s + 1, (x1 - x0) * s - 2, (y1 - y0) * s - 2)

    # ----- mouse: handlers only record; the Coalescer renders the newest -----------------------------
    def _on_mouse_down(self, x: float, y: float) -> None:
        self.dragging = True
        self._moves.push(("center", y / self.scale, x / self.scale))
        self._moves.flush()

    def _on_mouse_move(self, x: float, y: float) -> None:
        if self.dragging:
            self._moves.push(("center", y / self.scale, x / self.scale))

    def _on_mouse_up(self, x: float, y: float) -> None:
        if self.dragging:
            self.dragging = False
            self._moves.push(("center", y / self.scale, x / self.scale))
            self._moves.flush()

    # ----- public moves --------------------------------------------------------------------------
    def move_to(self, y: float, x: float) -> None:
        """Centre the occluder at input pixel ``(y, x)`` (clamped so that it stays inside the image)."""
        self._moves.push(("center", float(y), float(x)))
        self._moves.flush()

    def set_box(self, box) -> None:
        """Put the occluder exactly on ``box = (y0, x0, y1, x1)`` (half-open, input pixels, inside the image)."""
        y0, x0, y1, x1 = (int(v) for v in box)
        if not (0 <= y0 < y1 <= self.H and 0 <= x0 < x1 <= self.W):
            raise ValueError(f"box {tuple(box)} is not a non-empty box inside the {self.H}x{self.W} image")
        self._moves.push(("box", (y0, x0, y1, x1)))
        self._moves.flush()

    # ----- the update (runs for the newest request only) -------------------------------------------
    def _render_request(self, request) -> None:
        if request[0] == "center":
            _, cy, cx = request
            self._render(self._box_at(cy, cx), (cy, cx))
        else:
            y0, x0, y1, x1 = box = request[1]
            self._render(box, ((y0 + y1) / 2, (x0 + x1) / 2))

    def _render(self, box: tuple, center: tuple) -> None:
        """Occluded forward, top-5 probabilities, feature-map mosaic, PNG: one occluder position's view.

        The panel's ``box`` changes only once the view for it is ready, so state and display always agree.
        """
        approximate = self.dragging and (self.live == "approximate" or
                                         (self.live == "auto" and self._exact_seconds > LIVE_BUDGET))
        t0 = time.perf_counter()
        probs, act = _occluded_view(self.engine, box, self.fill, self.layer, self.tau if approximate else None)
        if not approximate:
            self._exact_seconds = time.perf_counter() - t0
        shown = "approximate" if approximate and not bool(self.engine.last_exact.all()) else "exact"
        target = self.target if self.target is not None else self._base_class
        target_p = (int(target), float(probs[target]))
        name = html.escape(self.lens.class_name(int(target)))
        note = (f'p(<span class="zf-target" data-index="{int(target)}" data-p="{target_p[1]:.6f}">{name}'
                f'</span>) = {target_p[1] * 100:.1f}% (unoccluded {self._base_target_p * 100:.1f}%)')
        if shown == "approximate":
            note += (f'<br><span class="zf-approx">approximate while dragging (projective-field threshold '
                     f'&tau; = {self.tau:g}); the exact view replaces it when the square is dropped</span>')
        probs_value, top5 = probs_html(self.lens, probs, box=box, note=note)
        maps = to_uint8_map(act, scale=self._layer_scale)
        tiled = mosaic(maps, factor=self._map_factor).pixels
        mosaic_png = png_bytes(tiled, palette=True)
        k, p = int(probs.argmax()), float(probs.max())
        self.box, self.center, self.shown = tuple(box), tuple(center), shown
        self._top5, self._top1, self._target_p = top5, (k, self.lens.class_name(k), p), target_p
        self.probs.value = probs_value
        self.mosaic.value = mosaic_png
        fit(self.mosaic, tiled.shape[1], tiled.shape[0])
        self.occluder.redraw_overlay()
        self.renders += 1

    # ----- controls --------------------------------------------------------------------------------
    def _set_size(self, size: int) -> None:
        self.size = int(size)
        self._moves.push(("center",) + tuple(self.center))
        self._moves.flush()

    def _set_layer(self, layer: str) -> None:
        """A new layer: its maps are shown on the scale of the unoccluded image's strongest activation."""
        base = _unoccluded(self.lens, self.x, layer, self.target)
        self.layer = base.layer
        self._base_class = base.base_class
        self._base_target_p = base.base_probability
        self._layer_scale = base.activation_max if base.activation_max > 0 else 1.0
        c, h, w = base.shape
        self._map_factor = max(1, int(round(28 / max(h, w))))
        self.mosaic_caption.value = (f"<b>{html.escape(self.layer)}</b>: {c} feature maps "
                                     f"({h}x{w}), scale of the unoccluded image's strongest activation")
        self._moves.push(("box", self.box))
        self._moves.flush()

    # ----- the full occlusion maps (Fig. 7) --------------------------------------------------------
    def compute_maps(self):
        """Run :func:`zfwidgets.occlusion` for the current size, stride and layer (progress bar), show the maps.

        Progressive where a move is slow (``live`` not ``"exact"`` and the last exact move took longer than
        :data:`LIVE_BUDGET`): a coarse map first (every second position, ``mode="drilldown"`` with nothing
        refined; the others interpolated), shown at once, then the exact map replaces it."""
        self.progress.value = 0.0
        self.progress.layout.visibility = "visible"
        self.progress.bar_style = ""
        stride = int(self.stride_slider.value)
        passes = [{}]
        if self.live != "exact" and self._exact_seconds > LIVE_BUDGET:
            passes.insert(0, {"mode": "drilldown", "coarse_stride": 2 * stride, "refine": 0.0})

        def step(done, total):
            self.progress.value = done / total if total else 1.0

        try:
            for mode in passes:
                occ = _occlusion_maps(self.lens, self.x, size=self.size, stride=stride, fill=self.fill,
                                      target=self.target, layer=self.layer, progress=step, **mode)
                if mode:
                    self._show_maps(occ)
        except Exception:
            self.progress.bar_style = "danger"
            raise
        self.progress.value = 1.0
        self.progress.bar_style = "success"
        self._show_maps(occ)
        return occ

    def _show_maps(self, occ) -> None:
        for pc in self._map_canvases:
            pc.close()
        self._map_canvases = []
        ny, nx = occ.shape
        f = display_factor(ny, nx, max(self.H, self.W) * self.scale)
        K = len(occ.class_names)
        feature = colourise(occ.feature_map.numpy(), FEATURE_CMAP)            # the figure's colours and ranges
        prob = colourise(occ.probability.numpy(), PROBABILITY_CMAP, 0.0, 1.0)
        top = class_colour_image(occ.top_class.numpy(), K)
        colours = class_colours(K)
        views = [("zf-map-feature", upscale(feature, f), False,
                  f"(b) total activation of {html.escape(occ.layer)} map {occ.channel} (unoccluded "
                  f"{occ.base_feature_map:.3g})"),
                 ("zf-map-probability", upscale(prob, f), False,
                  f"(d) p({html.escape(occ.class_name(occ.target))}), 0..1 (unoccluded {occ.base_probability:.3f})"),
                 ("zf-map-class", upscale(top, f), False,
                  f"(e) most probable class (unoccluded: {html.escape(occ.class_name(occ.base_class))})")]
        boxes = []
        for css, pixels, pal, caption in views:
            pc = self._picture_canvas(pixels.shape[1], pixels.shape[0], css_class=css)
            pc.set_picture(png_bytes(pixels, palette=pal))
            self._on_canvas(pc.canvas, "mouse_down",
                            lambda x, y, f=f, occ=occ: self._map_clicked(occ, int(y // f), int(x // f)), "map click")
            self._map_canvases.append(pc)
            boxes.append(W.VBox([W.HTML(f'<div style="max-width:{pixels.shape[1]}px">{caption}</div>'), pc.canvas]))
        proj = upscale(occ.projection.to_image(), self.scale)
        proj_img = image_widget("zf-map-projection")
        show_png(proj_img, proj)
        boxes.append(W.VBox([W.HTML(f"(c) projection of map {occ.channel}"), proj_img]))
        present = sorted(set(occ.top_class.flatten().tolist()))
        legend = " ".join(f'<span style="display:inline-block;width:10px;height:10px;background:rgb'
                          f'{tuple(int(c) for c in colours[k])}"></span> {html.escape(occ.class_name(k))}'
                          for k in present)
        coarse = "" if occ.mode == "exact" else (
            f'<br><span class="zf-approx">coarse map ({int(occ.exact.sum())} of {ny * nx} positions computed, '
            'the others interpolated): the exact map follows</span>')
        boxes.append(W.HTML(f'<div class="zf-legend" style="max-width:160px">{legend}<br>'
                            f'click a map cell to move the occluder there{coarse}</div>'))
        old = self.maps_box.children
        self.maps_box.children = boxes
        for w in old:
            self._close_tree(w, set())
        self._owned = [w for w in self._owned if not any(w is o for o in old)] + list(boxes)
        self.maps = {"size": occ.size, "stride": occ.stride, "layer": occ.layer, "channel": occ.channel,
                     "target": occ.target, "shape": (ny, nx), "mode": occ.mode, "result": occ}

    def _map_clicked(self, occ, i: int, j: int) -> None:
        ny, nx = occ.shape
        if 0 <= i < ny and 0 <= j < nx:
            self.set_box(tuple(int(v) for v in occ.boxes[i, j]))

    # ----- state, closing -------------------------------------------------------------------------
    def _state(self) -> dict:
        maps = None if self.maps is None else {k: v for k, v in self.maps.items() if k != "result"}
        return {"box": tuple(self.box), "center": tuple(self.center), "size": self.size, "layer": self.layer,
                "top5": list(self._top5), "top1": self._top1, "target": self._target_p,
                "dragging": self.dragging, "renders": self.renders, "pending": self._moves.has_pending,
                "forward": self.engine.last_mode, "shown": self.shown,
                "maps": maps}

    def _close_extra(self) -> None:
        if hasattr(self, "_moves"):
            self._moves.cancel()
        for pc in getattr(self, "_map_canvases", []):
            pc.close()
        self._map_canvases = []
        if hasattr(self, "occluder"):
            self.occluder.close()
