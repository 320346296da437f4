"""The sanity panel: Adebayo et al.'s cascading model randomisation on one image (*Sanity Checks for Saliency
Maps*, NeurIPS 2018; METHODS.md §13), with a slider "randomise from the top down to layer ...".

A view of :func:`zfwidgets.sanity_check`: it computes nothing itself. Each slider position is one call of
``sanity_check(lens, [image], layer, methods, steps=[step])``, made the first time the slider reaches it and
cached; the panel shows that result's projections and similarity figures.

Example:
    >>> panel = zfwidgets.SanityPanel(lens, zfwidgets.samples()[36], methods=("guided", "gradient"))
    >>> panel.state["step"], panel.state["randomised_from"]
    ('cascade:fc8', 'fc8')
    >>> panel.slider.value = "cascade:conv1"          # randomise every layer, from fc8 down to conv1
    >>> panel.state["randomised_from"], sorted(panel.state["figures"]["gradient"])
    ('conv1', ['hog', 'spearman', 'spearman_abs', 'ssim'])
"""
from __future__ import annotations

import html
import math

import ipywidgets as W

from ..core.inputs import as_input, image_of
from ..core.project import render
from ._common import Panel, display_factor, fit, image_widget, png_bytes, upscale
from ._events import Coalescer

__all__ = ["SanityPanel"]

DEFAULT_METHODS = ("deconvnet", "guided", "gradient")
_METRIC_LABELS = {"spearman_abs": "Spearman |·|", "spearman": "Spearman", "ssim": "SSIM", "hog": "HOG"}


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _sanity_check(lens, image, layer, methods, step, seed):
    from ..analysis.sanity import sanity_check
    return sanity_check(lens, [image], layer, methods, steps=[step], seed=seed, keep=1, progress=False)


def _cascade_steps(lens, layer) -> tuple[list, list]:
    """``(steps, left_out)``: ``"none"`` and the cascade steps that can change a unit of ``layer`` (top down),
    and the cascade steps :func:`~zfwidgets.sanity_check` would leave out for it."""
    from ..analysis.sanity import all_steps
    every = [s for s in all_steps(lens) if s.startswith("cascade:")]
    steps = [s for s in all_steps(lens, layer) if s == "none" or s.startswith("cascade:")]
    return steps, [s for s in every if s not in steps]


def _layer_of(step: str) -> str | None:
    return None if step == "none" else step.split(":", 1)[1]


def _number(v: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


class SanityPanel(Panel):
    """The three projections of one unit by the trained model and by the model randomised from the top down to
    the slider's layer, with the similarity figures of :func:`zfwidgets.sanity_check` under each.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: a PIL image, uint8 array, float tensor or ``zfwidgets.samples()`` item.
        layer: the unit's layer, as :func:`zfwidgets.sanity_check` takes it: ``None`` (Adebayo's choice) projects
            the score of the trained model's top class; a layer, its strongest unit on the image. The slider
            offers only the steps that can change that unit (re-initialising layers above it cannot).
        methods: among ``"deconvnet"``, ``"guided"``, ``"gradient"``, shown side by side.
        seed: the seed of :func:`zfwidgets.randomize`.
        display_size: about how many pixels the longer side of each picture is shown at (integer zoom).

    The slider starts at the top layer (only it re-initialised); its leftmost position ``"none"`` is the trained
    model against itself. Each position is computed the first time the slider reaches it and kept
    (``results``: step -> :class:`~zfwidgets.analysis.sanity.SanityCheck`), so moving back only swaps PNGs.
    Pictures are heat maps ``sum_c |x_c|``, each scaled to its own maximum, as in ``SanityCheck.plot()``.
    Similarity figures are NaN (shown "–") where a projection is all zeros.

    CSS classes: ``zf-sanity``, ``zf-sanity-step`` (the slider), ``zf-sanity-status``
    (``span.zf-sanity-now[data-step][data-from]`` once a step is shown), ``zf-sanity-unit``
    (``span[data-layer][data-channel][data-position]``), ``zf-sanity-image``,
    ``zf-sanity-trained-<method>``, ``zf-sanity-randomised-<method>`` (images), ``zf-sanity-figures``
    (``div.zf-sanity-figures-body[data-method][data-step]`` holding ``span.zf-sanity-figure[data-metric][data-value]``, ``data-value``
    the float's ``repr``), ``zf-error``.

    ``state``: ``step``, ``randomised_from`` (the slider's layer, ``None`` at ``"none"``), ``steps`` (the
    slider's), ``left_out``, ``layer``, ``unit`` (channel or class, position), ``methods``, ``figures``
    (method -> metric -> value at this step), ``computed`` (the cached steps), ``error``.

    Example:
        >>> panel = zfwidgets.SanityPanel(lens, zfwidgets.samples()[36], "conv2", methods=("gradient",))
        >>> panel.state["steps"][:3], panel.state["left_out"][:2]
        (['none', 'cascade:conv2', 'cascade:conv1'], ['cascade:fc8', 'cascade:fc7'])
    """

    def __init__(self, lens, image, layer=None, *, methods=DEFAULT_METHODS, seed: int = 0, display_size: int = 112):
        super().__init__(lens)
        self.add_class("zf-sanity")
        try:
            self._build(image, layer, methods, seed, display_size)
        except BaseException:
            self.close()
            raise

    def _build(self, image, layer, methods, seed, display_size):
        steps, left_out = _cascade_steps(self.lens, layer)      # TypeError for a non-Lens, ValueError for a layer
        x = as_input(self.lens, image_of(image))                # a clear error for what is not one image
        self.image, self.layer_asked, self.seed = image, layer, seed
        self.methods = [methods] if isinstance(methods, str) else list(methods)
        self.steps, self.left_out = steps, left_out
        self.factor = display_factor(*x.shape[-2:], display_size)
        self.results: dict = {}          # step -> SanityCheck
        self._shown: dict = {}           # step -> {"png": {method: bytes}, "figures": {method: {metric: value}}}
        self.step = None
        self._size = (x.shape[-1] * self.factor, x.shape[-2] * self.factor)

        labels = [("none (trained)" if s == "none" else _layer_of(s), s) for s in steps]
        start = steps[1] if len(steps) > 1 else steps[0]
        self.slider = self._own(W.SelectionSlider(options=labels, value=start, continuous_update=False,
                                                  description="randomise from the top down to layer",
                                                  style={"description_width": "initial"},
                                                  layout=W.Layout(width="560px")))
        self.slider.add_class("zf-sanity-step")
        self.status = self._own(W.HTML())
        self.status.add_class("zf-sanity-status")
        self.unit_info = self._own(W.HTML())
        self.unit_info.add_class("zf-sanity-unit")
        self.picture = self._own(image_widget("zf-sanity-image"))
        self.trained_images, self.randomised_images, self.captions, self.figures = {}, {}, {}, {}
        columns = [self._own(W.VBox([self._own(W.HTML("<b>image</b>")), self.picture, self.unit_info],
                                    layout=W.Layout(width=f"{max(self._size[0], 160) + 8}px")))]
        for m in self.methods:
            self.trained_images[m] = self._own(image_widget(f"zf-sanity-trained-{m}"))
            self.randomised_images[m] = self._own(image_widget(f"zf-sanity-randomised-{m}"))
            self.captions[m] = self._own(W.HTML())
            self.figures[m] = self._own(W.HTML())
            self.figures[m].add_class("zf-sanity-figures")
            columns.append(self._own(W.VBox([self._own(W.HTML(f"<b>{html.escape(m)}</b>, trained")),
                                             self.trained_images[m], self.captions[m], self.randomised_images[m],
                                             self.figures[m]],
                                            layout=W.Layout(width=f"{max(self._size[0], 150) + 8}px"))))
        note = ""
        if left_out:
            name = self.lens.resolve(layer)[0]
            note = (f"<br><i>randomising only layers above {html.escape(name)} cannot change a unit of "
                    f"{html.escape(name)}: the slider starts at {html.escape(_layer_of(start))}</i>")
        legend = self._own(W.HTML(
            "similarity to the trained model's projection (zfwidgets.sanity_check): Spearman rank correlation of "
            "|projection| and of the signed projection, SSIM and HOG of |projection|; – where a projection is all "
            "zeros" + note))
        self._moves = Coalescer(self._guard(self._show, "randomisation step"),
                               on_error=lambda e: self.show_error("randomisation step", e))
        # the step's own guard shows its error or clears the last one; this one must not clear it after
        push = self._guard(lambda change: self._moves.push(change["new"]), "randomisation step", clears=False)
        self.slider.observe(push, names="value")
        self._observed.append((self.slider, push, "value"))
        self.children = [self._own(W.HBox([self.slider, self.status])), legend,
                         self._own(W.HBox(columns, layout=W.Layout(flex_flow="row wrap"))), self.error_area]
        self._show(start)            # the first step raises here: a bad method or unit fails the constructor

    # ----- one step -----------------------------------------------------------------------------------
    def _compute(self, step: str) -> dict:
        """:func:`zfwidgets.sanity_check` for ``step`` (once; cached), encoded for display."""
        if step in self._shown:
            return self._shown[step]
        self.status.value = f'<span class="zf-sanity-busy">computing {html.escape(step)}…</span>'
        try:
            sc = _sanity_check(self.lens, self.image, self.layer_asked, self.methods, step, self.seed)
        except Exception:
            self.status.value = f'<span class="zf-sanity-failed">{html.escape(step)} failed</span>'
            raise
        self.results[step] = sc
        if not self.trained_images[self.methods[0]].value:
            self._show_trained(sc)
        entry = {"png": {}, "figures": {}}
        for m in self.methods:
            entry["png"][m] = self._png(sc.projections[m][step][0])
            entry["figures"][m] = {mt: sc.similarity(m, step, mt) for mt in _METRIC_LABELS}
        self._shown[step] = entry
        return entry

    def _png(self, pixels) -> bytes:
        return png_bytes(upscale(render(pixels, "abs"), self.factor))

    def _show_trained(self, sc) -> None:
        w, h = self._size
        self.picture.value = png_bytes(upscale(sc.images[0], self.factor))
        fit(self.picture, w, h)
        for m in self.methods:
            self.trained_images[m].value = self._png(sc.projections[m]["none"][0])
            fit(self.trained_images[m], w, h)
        channel, position = sc.units[0]
        if sc.unit.startswith("class score"):
            what = (f"score of <b>{html.escape(self.lens.class_name(channel))}</b>, the trained model's top class")
        else:
            what = f"strongest unit of <b>{html.escape(sc.layer)}</b>: channel {channel} at {position}"
        pos = "" if position is None else ",".join(str(int(v)) for v in position)
        self.unit_info.value = (f'<span class="zf-sanity-unit-now" data-layer="{html.escape(sc.layer)}" '
                                f'data-channel="{channel}" data-position="{pos}">unit: {what}</span>')

    def _show(self, step) -> None:
        entry = self._compute(step)
        self.step = step
        frm = _layer_of(step)
        w, h = self._size
        for m in self.methods:
            img = self.randomised_images[m]
            img.value = entry["png"][m]
            fit(img, w, h)
            self.captions[m].value = ("nothing randomised" if frm is None else
                                      f"randomised from {html.escape(self.lens.layers[-1])} down to "
                                      f"<b>{html.escape(frm)}</b>")
            spans = "<br>".join(
                f'<span class="zf-sanity-figure" data-metric="{mt}" data-value="{v!r}">{label} '
                f'{_number(v)}</span>' for mt, label in _METRIC_LABELS.items()
                for v in (entry["figures"][m][mt],))
            self.figures[m].value = (f'<div class="zf-sanity-figures-body" data-method="{html.escape(m)}" '
                                     f'data-step="{html.escape(step)}">{spans}</div>')
        self.status.value = (f'<span class="zf-sanity-now" data-step="{html.escape(step)}" '
                             f'data-from="{html.escape(frm or "")}">'
                             f'{"trained model" if frm is None else "randomised down to " + html.escape(frm)} '
                             f'({len(self._shown)} of {len(self.steps)} steps computed)</span>')

    # ----- state and life cycle -----------------------------------------------------------------------
    def _state(self) -> dict:
        sc = self.results.get(self.step) if self.step is not None else None
        figures = None if self.step is None else {m: dict(v) for m, v in self._shown[self.step]["figures"].items()}
        return {"step": self.step, "randomised_from": None if self.step is None else _layer_of(self.step),
                "steps": list(self.steps), "left_out": list(self.left_out), "methods": list(self.methods),
                "layer": None if sc is None else sc.layer, "unit": None if sc is None else sc.units[0],
                "figures": figures, "computed": [s for s in self.steps if s in self._shown]}

    def _close_extra(self) -> None:
        if hasattr(self, "_moves"):
            self._moves.cancel()
        self.results, self._shown = {}, {}
