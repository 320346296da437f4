"""The lesion panel (ZF §5.1, Table 3, live): switch feature maps of a layer off and watch the current image's
class probabilities and the accuracy on held-out images change, class by class.
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from ..core.inputs import as_input, image_of, label_of
from ..plot.colours import LESION_COLOUR
from ._common import Panel, display_factor, image_widget, mosaic, png_bytes, show_png, to_uint8_map, upscale

__all__ = ["LesionPanel"]


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _lesion(lens, images, labels, layer, channels, mode):
    from ..analysis.lesion import lesion
    return lesion(lens, images, labels, layer, channels=channels, mode=mode, progress=False)


def _class_means(lens, images, layer):
    """N x C: each image's mean rectified activation per map of ``layer`` (the probes' features, 1x1 grid)."""
    from ..analysis.probes import layer_features
    return layer_features(lens, images, [layer], grid=1, progress=False)[layer].numpy()


class LesionPanel(Panel):
    """Knock out maps of one layer (ZF Table 3 without retraining) and see what the model loses.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: the current image (PIL, uint8 array, float tensor or a ``zfwidgets.samples()`` item, whose label
            is its true class).
        images, labels: the held-out set whose accuracy is measured (a list of images or samples, a uint8 array
            N x H x W [x C] or a float tensor N x C x H x W); ``labels`` may be left out when ``images`` are
            samples. Default: the bundled samples.
        layer: the layer whose maps are knocked out (default the last conv layer).
        label: the current image's class (default the sample's label, else the intact model's prediction).
        mode: ``"zero"`` (ZF's knock-out: the maps' output set to zero).

    Click a map in the mosaic to switch it off (again to switch it back on); the slider "n strongest for this
    class" switches off the ``n`` maps with the largest mean activation over the held-out images of the
    current image's class (over the current image when the held-out set has none). Every change runs
    :func:`zfwidgets.lesion` twice, on the current image and on the held-out set, under the same lesion, and
    shows what they return: the current image's probabilities before and after with their change, the
    held-out accuracy before and after, and each class's accuracy change. The model is only ever changed by
    ``zfwidgets.lesion``'s hook, removed when it returns or raises.

    CSS classes: ``zf-lesion`` (the panel), ``zf-layer``, ``zf-strongest`` (slider), ``zf-reset``,
    ``zf-lesion-mosaic`` (the clickable ``<canvas>``; its geometry in ``span.zf-mosaic-geometry[data-layer]
    [data-count][data-cols][data-tile-w][data-tile-h][data-gap]``: tile k's top-left pixel is
    ``gap + (k % cols) (tile_w + gap), gap + (k // cols) (tile_h + gap)``), ``zf-lesion-probs`` (``tr.zf-class[data-index]
    [data-before][data-after]``), ``zf-lesion-accuracy`` (``span[data-before][data-after][data-n]``),
    ``zf-lesion-classes`` (``tr.zf-class-accuracy[data-index][data-before][data-after]``), ``zf-error``.

    ``state``: ``layer``, ``channels`` (knocked out, sorted), ``n_maps``, ``label``, ``probabilities``
    ``{"before": [...], "after": [...]}``, ``accuracy`` ``(before, after)``, ``class_accuracy``
    ``{"before": [...], "after": [...]}``, ``renders``, ``error``.

    Example:
        >>> lens = zfwidgets.load("zfnet-fashion")
        >>> panel = zfwidgets.LesionPanel(lens, zfwidgets.samples()[9], zfwidgets.samples())
        >>> panel.toggle(3); panel.set_strongest(8)     # or click maps in the mosaic, or use the slider
        >>> [round(a, 3) for a in panel.state["accuracy"]]     # held-out accuracy before and after
        [0.9, 0.875]
        >>> p = panel.state["probabilities"]; int(np.argmax(p["before"])), int(np.argmax(p["after"]))
        (2, 6)
    """

    def __init__(self, lens, image, images=None, labels=None, *, layer=None, label: int | None = None,
                 mode: str = "zero", display_size: int = 112):
        super().__init__(lens)
        self.add_class("zf-lesion")
        try:
            self._build(image, images, labels, layer, label, mode, display_size)
        except BaseException:
            self.close()
            raise

    def _build(self, image, images, labels, layer, label, mode, display_size):
        lens = self.lens
        if mode != "zero":
            raise ValueError(f"the lesion panel knocks maps out with mode='zero', got {mode!r}")
        self.mode = mode
        image, sample_label = image_of(image), label_of(image)
        self.image = image
        self.x = as_input(lens, image).detach()
        if images is None:
            from ..zoo import samples
            images = samples()
        if labels is None:
            pairs = [(image_of(item), label_of(item)) for item in images]
            if any(l is None for _, l in pairs):
                raise TypeError("labels must be given unless images are labelled samples")
            images, labels = [im for im, _ in pairs], [l for _, l in pairs]
        self.images, self.labels = images, labels
        self.layers = [i.name for i in lens.table if i.kind in ("conv", "fc")][:-1] or lens.layers[:-1]
        if not self.layers:
            raise ValueError(f"{lens.name} has no layer to lesion")
        default = [i.name for i in lens.table if i.kind == "conv"][-1]
        self.layer = lens.resolve(layer)[0] if layer is not None else default
        if self.layer not in self.layers:
            raise ValueError(f"layer {self.layer!r} cannot be lesioned here; choose one of {self.layers}")
        self.label_asked = label if label is not None else sample_label
        self.display_size = display_size
        self.channels: set = set()
        self.renders = 0
        self.current = None          # the Lesion on the current image
        self.held_out = None         # the Lesion on the held-out set
        self._means: dict = {}
        self._intact = True
        self._mosaic = None

        self.layer_dropdown = self._own(W.Dropdown(options=self.layers, value=self.layer, description="layer"))
        self.layer_dropdown.add_class("zf-layer")
        self.strongest = self._own(W.IntSlider(value=0, min=0, max=1, description="n strongest",
                                               continuous_update=False,
                                               style={"description_width": "initial"}))
        self.strongest.add_class("zf-strongest")
        self.reset_button = self._own(W.Button(description="all maps on", icon="undo"))
        self.reset_button.add_class("zf-reset")
        self.input_image = self._own(image_widget("zf-input"))
        self.mosaic_canvas = self._picture_canvas(1, 1, css_class="zf-lesion-mosaic", overlay=self._draw_lesions)
        self._own(self.mosaic_canvas.canvas)
        self.mosaic_caption = self._own(W.HTML())
        self.probs = self._own(W.HTML())
        self.probs.add_class("zf-lesion-probs")
        self.accuracy = self._own(W.HTML())
        self.accuracy.add_class("zf-lesion-accuracy")
        self.class_table = self._own(W.HTML())
        self.class_table.add_class("zf-lesion-classes")

        self._observe(self.layer_dropdown, self._set_layer, "layer")
        self._observe(self.strongest, self.set_strongest, "n strongest")
        self._on_click(self.reset_button, self.reset, "all maps on")
        self._on_canvas(self.mosaic_canvas.canvas, "mouse_down", self._mosaic_clicked, "mosaic click")

        rgb = lens.to_display(self.x)
        show_png(self.input_image, upscale(rgb, display_factor(*rgb.shape[:2], display_size)))

        def column(*children, width=None):
            return self._own(W.VBox(list(children), layout=W.Layout(margin="0 12px 6px 0",
                                                                    **({"max_width": width} if width else {}))))
        controls = self._own(W.HBox([self.layer_dropdown, self.strongest, self.reset_button]))
        row = self._own(W.HBox([column(self._own(W.HTML("<b>image</b>")), self.input_image),
                                column(self.mosaic_caption, self.mosaic_canvas.canvas, width="520px"),
                                column(self._own(W.HTML("<b>this image</b>")), self.probs, width="330px")],
                               layout=W.Layout(flex_flow="row wrap")))
        row2 = self._own(W.HBox([column(self.accuracy, self.class_table, width="520px")]))
        self.children = [controls, row, row2, self.error_area]
        self._set_layer(self.layer)

    # ----- controls --------------------------------------------------------------------------------
    def _set_layer(self, layer) -> None:
        name = self.lens.resolve(layer)[0]
        _, acts = self.lens.run(self.x, [name])
        a = acts[name][0]
        maps = a.reshape(a.shape[0], *(a.shape[1:] if a.dim() == 3 else (1, 1)))
        h, w = maps.shape[1:]
        self.layer, self.channels = name, set()
        cols = int(np.ceil(np.sqrt(maps.shape[0])))
        factor = max(1, min(int(round(24 / max(h, w))), (512 // cols - 1) // w))
        self._mosaic = mosaic(to_uint8_map(maps), factor=factor)
        self.mosaic_canvas.set_picture(png_bytes(self._mosaic.pixels, palette=True), self._mosaic.width,
                                       self._mosaic.height)
        m = self._mosaic
        self.mosaic_caption.value = (f"<b>{html.escape(name)}</b>: {maps.shape[0]} maps of this image; click a "
                                     f"map to switch it off (red: off)"
                                     f'<span class="zf-mosaic-geometry" data-layer="{html.escape(name)}" '
                                     f'data-count="{m.count}" data-cols="{m.cols}" data-tile-w="{m.tile_w}" '
                                     f'data-tile-h="{m.tile_h}" data-gap="{m.gap}"></span>')
        with self.strongest.hold_trait_notifications():
            self.strongest.max = maps.shape[0]
        self._quiet_strongest(0)
        self._update()

    def _quiet_strongest(self, n: int) -> None:
        handlers = [h for w, h, _ in self._observed if w is self.strongest]
        for h in handlers:
            self.strongest.unobserve(h, names="value")
        try:
            self.strongest.value = n
        finally:
            for h in handlers:
                self.strongest.observe(h, names="value")

    @property
    def label(self) -> int:
        if self.label_asked is not None:
            return int(self.label_asked)
        return self._label_for_call()

    def strongest_maps(self, n: int) -> list:
        """The ``n`` maps of the layer with the largest mean activation over the held-out images of the current
        image's class (over the current image if the held-out set has none of that class), strongest first."""
        means = self._means.get(self.layer)
        if means is None:
            means = self._means[self.layer] = _class_means(self.lens, self.images, self.layer)
        rows = np.asarray(self.labels) == self.label
        score = means[rows].mean(0) if rows.any() else _class_means(self.lens, self.x, self.layer)[0]
        order = np.argsort(-score, kind="stable")
        return [int(c) for c in order[:int(n)]]

    def set_strongest(self, n: int) -> None:
        """Switch off exactly the ``n`` strongest maps for this class (see :meth:`strongest_maps`)."""
        self.channels = set(self.strongest_maps(n))
        if self.strongest.value != n:
            self._quiet_strongest(int(n))
        self._update()

    def toggle(self, channel: int) -> None:
        """Switch map ``channel`` off, or back on."""
        c = int(channel)
        if not 0 <= c < self._mosaic.count:
            raise ValueError(f"channel {c} is out of range: {self.layer} has {self._mosaic.count} maps")
        self.channels ^= {c}
        self._update()

    def reset(self) -> None:
        """All maps on again."""
        self.channels = set()
        self._quiet_strongest(0)
        self._update()

    def _mosaic_clicked(self, x: float, y: float) -> None:
        k = self._mosaic.tile_at(x, y)
        if k is not None:
            self.toggle(k)

    # ----- the update: two lesion calls, drawn --------------------------------------------------------
    def _update(self) -> None:
        """Both measurements under the current lesion. With every map on, the intact model is shown: the
        "before" of a lesion call (one map off), which is a forward of the untouched model."""
        chans = sorted(self.channels)
        self._intact = not chans
        chans = chans or [0]
        label = self._label_for_call()
        self.current = _lesion(self.lens, self.x, [label], self.layer, chans, self.mode)
        self.held_out = _lesion(self.lens, self.images, self.labels, self.layer, chans, self.mode)
        self._show()
        self.mosaic_canvas.redraw_overlay()
        self.renders += 1

    def _after(self, r):
        """``(probabilities, predictions, accuracy, class accuracy)`` after the lesion on display."""
        after = not self._intact
        return ((r.probabilities_after if after else r.probabilities_before),
                (r.predictions_after if after else r.predictions_before),
                (r.accuracy_after if after else r.accuracy_before), r.class_accuracy(after=after))

    def _label_for_call(self) -> int:
        return int(self.label_asked) if self.label_asked is not None else int(self.lens.predict(self.x).argmax())

    def _show(self) -> None:
        lens, cur, held = self.lens, self.current, self.held_out
        pb = cur.probabilities_before[0]
        pa, pred_after, _, _ = self._after(cur)
        pa = pa[0]
        _, _, acc_after, ca = self._after(held)
        order = np.argsort(-pb, kind="stable")[:10]
        rows = []
        for k in order:
            d = pa[k] - pb[k]
            colour = "#b00020" if d < -5e-4 else "#1a7f37" if d > 5e-4 else "#555"
            rows.append(f'<tr class="zf-class" data-index="{int(k)}" data-before="{pb[k]:.6f}" '
                        f'data-after="{pa[k]:.6f}"><td style="padding:0 6px 0 0">{html.escape(lens.class_name(int(k)))}'
                        f'</td><td>{pb[k] * 100:.1f}%</td><td>→ {pa[k] * 100:.1f}%</td>'
                        f'<td style="color:{colour}">{d * 100:+.1f}</td></tr>')
        label = self.label
        self.probs.value = (f'<div>true class: {html.escape(lens.class_name(label))}; predicted '
                            f'{html.escape(lens.class_name(int(pred_after[0])))} after the lesion</div>'
                            '<table style="border-collapse:collapse"><tr><th></th><th>intact</th><th>lesioned</th>'
                            f'<th>Δ (points)</th></tr>{"".join(rows)}</table>')
        off = sorted(self.channels)
        self.accuracy.value = (f'<b>held-out accuracy</b> ({held.n_images} images, {len(off)} of '
                               f'{self._mosaic.count} maps of {html.escape(self.layer)} off): '
                               f'<span class="zf-accuracy" data-before="{held.accuracy_before:.6f}" '
                               f'data-after="{acc_after:.6f}" data-n="{held.n_images}">'
                               f'{held.accuracy_before:.2%} → {acc_after:.2%} '
                               f'({acc_after - held.accuracy_before:+.2%})</span>')
        cb = held.class_accuracy(after=False)
        crow = []
        for k in range(len(cb)):
            if np.isnan(cb[k]):
                continue
            d = ca[k] - cb[k]
            bar = min(100.0, abs(d) * 200)
            colour = "#b00020" if d < 0 else "#1a7f37"
            crow.append(f'<tr class="zf-class-accuracy" data-index="{k}" data-before="{cb[k]:.6f}" '
                        f'data-after="{ca[k]:.6f}"><td style="padding:0 6px 0 0">{html.escape(lens.class_name(k))}'
                        f'</td><td>{cb[k]:.0%} → {ca[k]:.0%}</td><td style="width:110px">'
                        f'<span style="display:inline-block;height:0.7em;width:{bar:.0f}px;background:{colour}">'
                        f'</span> {d * 100:+.1f}</td></tr>')
            if len(crow) >= 20:
                break
        self.class_table.value = ('<table style="border-collapse:collapse"><tr><th>class</th><th>accuracy</th>'
                                  f'<th>change (points)</th></tr>{"".join(crow)}</table>')

    def _draw_lesions(self, layer) -> None:
        if self._mosaic is None:
            return
        m = self._mosaic
        layer.fill_style = LESION_COLOUR
        layer.global_alpha = 0.45
        for c in sorted(self.channels):
            x, y = m.origin(c)
            layer.fill_rect(x, y, m.tile_w, m.tile_h)
        layer.global_alpha = 1.0
        layer.stroke_style = LESION_COLOUR
        layer.line_width = 2
        for c in sorted(self.channels):
            x, y = m.origin(c)
            layer.stroke_line(x, y, x + m.tile_w, y + m.tile_h)
            layer.stroke_line(x + m.tile_w, y, x, y + m.tile_h)

    # ----- state, closing -------------------------------------------------------------------------
    def _state(self) -> dict:
        cur, held = self.current, self.held_out
        if cur is None or held is None:
            return {"layer": self.layer, "channels": sorted(self.channels), "renders": self.renders}
        pa, _, _, _ = self._after(cur)
        _, _, acc, ca = self._after(held)
        return {"layer": self.layer, "channels": sorted(self.channels), "n_maps": self._mosaic.count,
                "label": self.label,
                "probabilities": {"before": cur.probabilities_before[0].tolist(), "after": pa[0].tolist()},
                "accuracy": (held.accuracy_before, acc),
                "class_accuracy": {"before": held.class_accuracy(False).tolist(), "after": ca.tolist()},
                "renders": self.renders}

    def _close_extra(self) -> None:
        if hasattr(self, "mosaic_canvas"):
            self.mosaic_canvas.close()
