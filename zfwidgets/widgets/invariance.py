"""The invariance panel: slide a translation / scaling / rotation over one image and see the transformed
image, the feature distances at the chosen layers and p(true class) (ZF §4, Fig. 5), with the current value
marked on the curves.

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")
    >>> panel = zfwidgets.InvariancePanel(lens, zfwidgets.samples()[7], transform="rotate")
    >>> panel.state["value"], sorted(panel.state["distance"]), panel.state["p_true"]
    (0.0, ['conv1', 'fc7'], 1.000)
"""
from __future__ import annotations

import html
import io

import ipywidgets as W
import numpy as np

from ..core.inputs import as_input, image_of, label_of
from ._common import Panel, display_factor, image_widget, show_png, upscale

__all__ = ["InvariancePanel"]

TRANSFORMS = ("translate", "scale", "rotate")
_XLABEL = {"translate": "vertical shift (pixels)", "scale": "scale factor", "rotate": "rotation (degrees)"}


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _invariance(lens, image, transform, values, layers, label, progress):
    from ..analysis.invariance import invariance
    return invariance(lens, [image], transform=transform, values=values, layers=layers,
                      labels=None if label is None else [label], progress=progress)


def _transformed(lens, x, transform, value):
    from ..analysis.invariance import transform_input
    return transform_input(x, transform, float(value), lens.fill_value.to(lens.device))


class InvariancePanel(Panel):
    """A transform slider over one image: the transformed image, distances and p(true) curves updating.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: a PIL image, uint8 array, float tensor or ``zfwidgets.samples()`` item (its label is the true class).
        transform: ``"translate"``, ``"scale"`` or ``"rotate"`` (a dropdown switches later).
        values: the parameter sweep (default :func:`zfwidgets.invariance`'s for the transform).
        layers: the layers measured (default the lowest conv layer and the last hidden layer, as ZF).
        label: the true class (default the sample's label, else the original's prediction).

    CSS classes: ``zf-invariance``, ``zf-transform`` (dropdown), ``zf-transform-value`` (slider),
    ``zf-progress``, ``zf-transformed`` (image), ``zf-curves`` (the matplotlib figure, PNG),
    ``zf-invariance-values`` (``span[data-value][data-p]`` and ``span.zf-distance[data-layer][data-distance]
    [data-relative]``), ``zf-error``.

    ``state``: ``transform``, ``value``, ``values``, ``layers``, ``distance`` / ``relative`` (per layer, at the
    value), ``p_true``, ``label``, ``predicted``, ``error``.

    Example:
        >>> panel = zfwidgets.InvariancePanel(lens, zfwidgets.samples()[36], "rotate")
        >>> panel.state["transform"], panel.state["value"]
        ('rotate', 0.0)
    """

    def __init__(self, lens, image, transform: str = "translate", *, values=None, layers=None, label=None,
                 display_size: int = 168):
        super().__init__(lens)
        self.add_class("zf-invariance")
        try:
            self._build(image, transform, values, layers, label, display_size)
        except BaseException:
            self.close()
            raise

    def _build(self, image, transform, values, layers, label, display_size):
        image, sample_label = image_of(image), label_of(image)
        label = sample_label if label is None else label
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}")
        self.image, self.label = image, label
        self.values_asked, self.layers_asked = values, layers
        self.x = as_input(self.lens, image).detach()
        self.factor = display_factor(*self.x.shape[-2:], display_size)
        self.transform = self._first_transform = transform
        self.result = None
        self.index = None
        self._figure_cache: dict = {}
        self._fig = None

        self.transform_dropdown = self._own(W.Dropdown(options=list(TRANSFORMS), value=transform,
                                                       description="transform"))
        self.transform_dropdown.add_class("zf-transform")
        self.value_slider = self._own(W.SelectionSlider(options=[("-", 0)], value=0, description="value",
                                                        continuous_update=True))
        self.value_slider.add_class("zf-transform-value")
        self.progress = self._own(W.FloatProgress(value=0.0, min=0.0, max=1.0, description="sweep"))
        self.progress.add_class("zf-progress")
        self.picture = self._own(image_widget("zf-transformed"))
        self.curves = self._own(image_widget("zf-curves"))
        self.readout = self._own(W.HTML())
        self.readout.add_class("zf-invariance-values")
        self._observe(self.transform_dropdown, self._set_transform, "transform")
        self._observe(self.value_slider, self._set_index, "transform value")
        self.children = [self._own(W.HBox([self.transform_dropdown, self.value_slider, self.progress])),
                         self._own(W.HBox([self._own(W.VBox([self.picture, self.readout])), self.curves])),
                         self.error_area]
        self._set_transform(transform)

    # ----- handlers ------------------------------------------------------------------------------
    def _set_transform(self, transform) -> None:
        """Sweep the transform with :func:`zfwidgets.invariance` (progress bar), then show its identity value."""
        self.progress.value = 0.0

        def step(done, total):
            self.progress.value = done / total if total else 1.0

        values = self.values_asked if transform == self._first_transform else None
        self.transform = transform
        inv = _invariance(self.lens, self.x, transform, values, self.layers_asked, self.label, step)
        self.progress.value = 1.0
        self.result = inv
        self._figure_cache = {}
        self._fig = None
        identity = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}[transform]
        start = int(np.argmin(np.abs(np.asarray(inv.values) - identity)))
        options = [(f"{v:g}", k) for k, v in enumerate(inv.values)]
        self.index = None
        self.value_slider.options = options
        if self.value_slider.value == start:
            self._set_index(start)
        else:
            self.value_slider.value = start

    def _set_index(self, k) -> None:
        if self.result is None or k is None:
            return
        inv = self.result
        self.index = int(k)
        value = float(inv.values[self.index])
        xt = _transformed(self.lens, self.x, inv.transform, value)
        show_png(self.picture, upscale(self.lens.to_display(xt), self.factor))
        p = float(inv.probability[0, self.index])
        cls = html.escape(inv.label_names[0]) if inv.label_names else str(int(inv.labels[0]))
        dists = "".join(f'<br><span class="zf-distance" data-layer="{html.escape(l)}" '
                        f'data-distance="{float(inv.distance[l][0, self.index]):.6g}" '
                        f'data-relative="{float(inv.relative[l][0, self.index]):.6g}">{html.escape(l)}: distance '
                        f'{float(inv.distance[l][0, self.index]):.3g} (relative '
                        f'{float(inv.relative[l][0, self.index]):.3f})</span>' for l in inv.layers)
        pred = self.lens.class_name(int(inv.predicted[0, self.index]))
        self.readout.value = (f'<span class="zf-invariance-now" data-value="{value:g}" data-p="{p:.6f}">'
                              f'{inv.transform} {value:g}: p({cls}) = {p * 100:.1f}%</span>, predicted '
                              f'{html.escape(pred)}{dists}')
        self.curves.value = self._figure_png(self.index)

    # ----- the curves (matplotlib, PNG; one render per value, cached) ---------------------------------
    def _figure_png(self, k: int) -> bytes:
        if k in self._figure_cache:
            return self._figure_cache[k]
        inv = self.result
        if self._fig is None:
            from matplotlib.figure import Figure
            fig = Figure(figsize=(7.0, 2.6), dpi=80, layout="constrained")
            ax_d, ax_p = fig.subplots(1, 2)
            for l in inv.layers:
                ax_d.plot(inv.values, inv.relative[l][0].numpy(), marker=".", linewidth=1, label=l)
            ax_d.set_title("feature distance / original's norm", fontsize=9)
            ax_d.legend(fontsize=7)
            name = inv.label_names[0] if inv.label_names else "true class"
            ax_p.plot(inv.values, inv.probability[0].numpy(), marker=".", linewidth=1, color="C3")
            ax_p.set_ylim(-0.02, 1.02)
            ax_p.set_title(f"p({name})", fontsize=9)
            lines = []
            for ax in (ax_d, ax_p):
                ax.set_xlabel(_XLABEL[inv.transform], fontsize=8)
                ax.tick_params(labelsize=7)
                lines.append(ax.axvline(inv.values[k], color="k", linestyle="--", linewidth=1))
            self._fig = (fig, lines)
        fig, lines = self._fig
        for line in lines:
            line.set_xdata([inv.values[k], inv.values[k]])
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self._figure_cache[k] = buf.getvalue()
        return self._figure_cache[k]

    def _state(self) -> dict:
        inv, k = self.result, self.index
        if inv is None or k is None:
            return {"transform": self.transform, "value": None}
        return {"transform": inv.transform, "value": float(inv.values[k]), "values": [float(v) for v in inv.values],
                "layers": list(inv.layers),
                "distance": {l: float(inv.distance[l][0, k]) for l in inv.layers},
                "relative": {l: float(inv.relative[l][0, k]) for l in inv.layers},
                "p_true": float(inv.probability[0, k]), "label": int(inv.labels[0]),
                "predicted": int(inv.predicted[0, k])}

    def _close_extra(self) -> None:
        self._figure_cache = {}
        self._fig = None
