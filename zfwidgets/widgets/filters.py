"""The filter panel (ZF §4.1, Fig. 6): two models' first-layer filters side by side, each marked dead or
healthy with its spectral band shares; click a filter for its spectrum and its top-9; below, the second
layer's projections of both models (where aliasing shows).
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from ..plot.colours import BAND_COLOURS, SELECTION_COLOUR, SPECTRUM_CMAP, colourise
from ._common import Panel, figure_png, image_widget, png_bytes, show_png, upscale

__all__ = ["FilterPanel"]


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _health(lens, images, layer, other, other_layer):
    from ..analysis.filters import filter_health
    return filter_health(lens, images, layer, other=other, other_layer=other_layer, progress=False)


def _spectrum(weights):
    from ..analysis.filters import filter_spectrum
    return filter_spectrum(weights)


def _grid(weights, dead):
    from ..plot.filters import filter_grid
    return filter_grid(weights, dead)


def _top(lens, images, layer, channels, k):
    from ..analysis.topk import top_activations
    return top_activations(lens, images, layer, channels=channels, k=k, progress=False)


def layer_aliasing(lens, images, layer, period, channels=None, progress=False):
    from ..analysis.filters import layer_aliasing as aliasing
    return aliasing(lens, images, layer, period, channels=channels, progress=progress)


def _width(lens, name: str) -> int:
    """How many maps layer ``name`` puts out (a block, such as a ResNet's, from the model's graph)."""
    module = lens.resolve(name)[2]
    for attr in ("out_channels", "out_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    from ..core.graph import Graph
    return int(Graph.of(lens).node_of(module).out_shape[1])


def _second_conv(lens, first: str):
    convs = [i.name for i in lens.table if i.kind == "conv"]
    k = convs.index(first) if first in convs else 0
    return convs[k + 1] if k + 1 < len(convs) else None


class FilterPanel(Panel):
    """First-layer filter diagnosis of one or two models (ZF Fig. 6), live.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        other: a second lens shown beside it (ZF: AlexNet's 11x11/4 first layer against their 7x7/2 fix).
        images: images over which dead filters are counted and the top-9 and second-layer projections are
            mined (anything :func:`zfwidgets.filter_health` takes); ``None``: weights only.
        layer, other_layer: the layers diagnosed (default each model's first conv layer).
        channels: how many second-layer maps each model shows (their strongest image's projection).
        k: images per clicked filter (ZF: 9).
        alias_period: the stride whose alias frequencies the second layer's projections are scored at
            (:func:`zfwidgets.analysis.filters.layer_aliasing`, the first 64 maps, both models); default the larger
            first-layer stride of the two models, no score when that is 1.

    Everything shown is one :func:`zfwidgets.filter_health` result (both models), drawn with
    :func:`zfwidgets.plot.filters.filter_grid` (red frame: dead); the strip under each filter shows its
    energy shares low / mid / high (the figure's band colours). A click on a filter shows its power spectrum
    (:func:`zfwidgets.analysis.filters.filter_spectrum`, zero frequency centred, log scale, the band edges
    as circles) and its top-``k`` (:func:`zfwidgets.top_activations`, drawn by its ``plot``).

    CSS classes: ``zf-filters``, ``zf-filter-grid-0`` / ``zf-filter-grid-1`` (clickable canvases),
    ``zf-filter-summary``, ``zf-filter-info`` (``span[data-model][data-filter][data-dead][data-low][data-mid]
    [data-high]``), ``zf-spectrum``, ``zf-filter-top``, ``zf-second-layer``, ``zf-error``.

    ``state``: ``models``, ``layers``, ``filters`` (counts), ``dead`` (indices per model), ``shares`` (layer
    totals per model), ``selected`` ``(model, filter)`` or ``None``, ``top`` (the selected filter's
    ``[(image index, activation)]``), ``second_layers``, ``aliasing`` (per model with a second layer:
    ``(mean share near the alias frequencies, median relative power)``, empty without a score), ``error``.

    Example:
        >>> panel = zfwidgets.FilterPanel(zfwidgets.load("zfnet-fashion"), zfwidgets.load("allconv-fashion"),
        ...                               images=zfwidgets.samples(), channels=4)
        >>> panel.select(0, 5); panel.state["selected"]
        (0, 5)
    """

    def __init__(self, lens, other=None, *, images=None, layer=None, other_layer=None, channels: int = 16,
                 k: int = 9, alias_period: int | None = None):
        super().__init__(lens)
        self.add_class("zf-filters")
        try:
            self._build(other, images, layer, other_layer, channels, k, alias_period)
        except BaseException:
            self.close()
            raise

    def _build(self, other, images, layer, other_layer, channels, k, alias_period):
        self.images, self.k = images, int(k)
        self.health = _health(self.lens, images, layer, other, other_layer)
        self.models = [(self.lens, self.health)] + ([(other, self.health.other)] if other is not None else [])
        self.selected = None
        self.top = None
        self._canvases, self._geom = [], []
        columns = []
        for m, (lens, h) in enumerate(self.models):
            img, cols = _grid(h.weights, h.dead if h.n_images else None)
            kh, kw = h.weights.shape[2:]
            f = max(3, min(8, 320 // img.shape[1]))
            pixels = upscale(np.round(img * 255).astype(np.uint8), f)
            pc = self._picture_canvas(pixels.shape[1], pixels.shape[0], css_class=f"zf-filter-grid-{m}",
                                      overlay=lambda layer, m=m: self._draw_marks(layer, m))
            self._own(pc.canvas)
            self._geom.append((f, cols, kh + 2, kw + 2, len(h.weight_norm)))
            pc.set_picture(png_bytes(pixels))
            self._on_canvas(pc.canvas, "mouse_down", lambda x, y, m=m: self._clicked(m, x, y), "filter click")
            self._canvases.append(pc)
            lo, mid, hi = h.mean_band_fraction
            dead = "not measured (no images)" if h.n_images == 0 else \
                f"{int(h.dead.sum())} of {len(h.dead)} dead (red frame) on {h.n_images} images"
            title = self._own(W.HTML(f"<b>{html.escape(h.model)}</b>: {html.escape(h.layer)}, "
                                     f"{len(h.weight_norm)} filters {kh}x{kw}; {dead}; layer energy "
                                     f"low {lo:.0%} mid {mid:.0%} high {hi:.0%}"))
            title.add_class("zf-filter-summary")
            columns.append(self._own(W.VBox([title, pc.canvas], layout=W.Layout(margin="0 16px 6px 0",
                                                                              max_width="420px"))))
        legend = " ".join(f'<span style="display:inline-block;width:10px;height:8px;background:{c}"></span> {n}'
                          for c, n in zip(BAND_COLOURS, ("low", "mid", "high")))
        self.info = self._own(W.HTML(f"strip under each filter: its energy share {legend}; click a filter"))
        self.info.add_class("zf-filter-info")
        self.spectrum = self._own(image_widget("zf-spectrum"))
        self.top_view = self._own(image_widget("zf-filter-top"))
        self.second = self._own(W.HBox())
        self.second.add_class("zf-second-layer")
        self.second_layers = []
        self.aliasing = []
        row2 = []
        if alias_period is None:
            alias_period = max(int(lens.resolve(h.layer)[2].stride[0]) for lens, h in self.models)
        elif isinstance(alias_period, bool) or not isinstance(alias_period, int) or alias_period < 1:
            raise ValueError(f"alias_period must be an int >= 1 (1: no score), got {alias_period!r}")
        if images is not None and channels:
            for lens, h in self.models:
                name = _second_conv(lens, h.layer)
                self.second_layers.append(name)
                if name is None:
                    continue
                n = min(int(channels), _width(lens, name))
                top = _top(lens, images, name, list(range(n)), 1)
                view = self._own(image_widget())
                view.value = figure_png(top.plot(cols=4), dpi=60)
                score = ""
                if alias_period > 1:
                    # every map of a small layer, the first 64 of a wide one (a projection per map)
                    a = layer_aliasing(lens, images, name, int(alias_period), channels=64, progress=False)
                    self.aliasing.append((a.mean, float(np.nanmedian(a.relative))))
                    score = (f"<br>energy near the stride-{a.period} alias frequencies {a.mean:.3f} (white "
                             f"{a.white:.3f}); {self.aliasing[-1][1]:.2f}x the same radii elsewhere (1: no grid)")
                row2.append(self._own(W.VBox([self._own(W.HTML(f"<b>{html.escape(h.model)}</b> {html.escape(name)}: "
                                                               f"projections of the strongest image of maps 0-{n - 1}"
                                                               + score)),
                                              view])))
        self.second.children = row2
        detail = self._own(W.HBox([self._own(W.VBox([self._own(W.HTML("<b>spectrum</b>")), self.spectrum])),
                                   self.top_view]))
        self.children = [self._own(W.HBox(columns, layout=W.Layout(flex_flow="row wrap"))), self.info, detail,
                         self._own(W.HTML("<b>second layer</b>" if row2 else "")), self.second, self.error_area]

    # ----- clicks --------------------------------------------------------------------------------
    def _clicked(self, m: int, x: float, y: float) -> None:
        f, cols, th, tw, count = self._geom[m]
        col, row = int(x) // f // tw, int(y) // f // th
        i = row * cols + col
        if 0 <= col < cols and 0 <= i < count:
            self.select(m, i)

    def select(self, model: int, index: int) -> None:
        """Show filter ``index`` of model ``model`` (0 or 1): its spectrum, band shares and top-k."""
        lens, h = self.models[model]
        index = int(index)
        if not 0 <= index < len(h.weight_norm):
            raise ValueError(f"filter {index} is out of range: {h.layer} has {len(h.weight_norm)} filters")
        power = np.fft.fftshift(_spectrum(h.weights[index:index + 1])[0])
        n = power.shape[0]
        f = max(1, 192 // n)
        show_png(self.spectrum, upscale(colourise(np.log10(power + 1e-12 * max(power.max(), 1e-30)),
                                                  SPECTRUM_CMAP), f))
        lo, mid, hi = (float(v) for v in h.band_fraction[index])
        status = "not measured" if h.n_images == 0 else (
            f"dead (never active on {h.dead_fraction[index]:.0%} of the images)" if h.dead[index] else
            f"healthy (never active on {h.dead_fraction[index]:.0%})")
        self.info.value = (f'<span data-model="{html.escape(h.model)}" data-filter="{index}" '
                           f'data-dead="{int(bool(h.dead[index]))}" data-low="{lo:.6f}" data-mid="{mid:.6f}" '
                           f'data-high="{hi:.6f}"><b>{html.escape(h.model)}</b> filter {index}: {status}; '
                           f'norm {h.weight_norm[index]:.3g}; energy low {lo:.0%} mid {mid:.0%} high {hi:.0%}; '
                           f'spectrum log scale, centre = zero frequency, edge = 0.5 cycles/pixel</span>')
        self.selected = (int(model), index)
        self.top = None
        if self.images is not None:
            top = _top(lens, self.images, h.layer, [index], self.k)
            self.top = top
            self.top_view.value = figure_png(top.plot([index], cols=1), dpi=60)
        for pc in self._canvases:
            pc.redraw_overlay()

    # ----- drawing -------------------------------------------------------------------------------
    def _draw_marks(self, layer, m: int) -> None:
        f, cols, th, tw, count = self._geom[m]
        h = self.models[m][1]
        frac = np.nan_to_num(h.band_fraction)
        for i in range(count):
            r, q = divmod(i, cols)
            x0, y0 = q * tw * f + f, (r * th + th - 1) * f      # the bottom pad row of the tile
            width = (tw - 2) * f
            x = x0
            for b in range(3):
                w = frac[i, b] * width
                if w > 0:
                    layer.fill_style = BAND_COLOURS[b]
                    layer.fill_rect(x, y0, w, f)
                x += w
        if self.selected is not None and self.selected[0] == m:
            r, q = divmod(self.selected[1], cols)
            layer.stroke_style = SELECTION_COLOUR
            layer.line_width = 2
            layer.stroke_rect(q * tw * f + 1, r * th * f + 1, tw * f - 2, th * f - 2)

    # ----- state, closing -------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"models": [h.model for _, h in self.models], "layers": [h.layer for _, h in self.models],
                "filters": [len(h.weight_norm) for _, h in self.models],
                "dead": [np.flatnonzero(h.dead).tolist() for _, h in self.models],
                "shares": [h.mean_band_fraction.tolist() for _, h in self.models],
                "selected": self.selected,
                "top": None if self.top is None else [(hit.index, hit.activation) for hit in self.top.hits[0]],
                "second_layers": list(self.second_layers), "aliasing": list(self.aliasing)}

    def _close_extra(self) -> None:
        for pc in getattr(self, "_canvases", []):
            pc.close()
