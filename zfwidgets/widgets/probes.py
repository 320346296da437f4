"""The probe panel (ZF §5.3, Table 7): a linear probe's test accuracy per layer as a bar chart; click a layer
for its confusion matrix and the explorer on that layer.
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from ..plot.colours import BAR_COLOUR, CONFUSION_CMAP, SELECTION_COLOUR, colourise
from ._common import Panel, show_png, upscale

__all__ = ["ProbePanel"]


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _probes(lens, xtr, ytr, xte, yte, layers, grid, l2, max_iter):
    from ..analysis.probes import layer_probes
    return layer_probes(lens, xtr, ytr, xte, yte, layers, grid=grid, l2=l2, max_iter=max_iter, progress=False)


def _explorer(lens, images, layer):
    from .explorer import Explorer
    return Explorer(lens, images, layer=layer)


class ProbePanel(Panel):
    """Linear-probe accuracy per layer (ZF Table 7), browsable.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        train_images, train_labels, test_images, test_labels: as in :func:`zfwidgets.layer_probes`, which the
            panel calls once; or give ``probes=`` (a :class:`~zfwidgets.analysis.probes.LayerProbes` already
            computed, with its test predictions) and leave them out.
        layers, grid, l2, max_iter: as in :func:`zfwidgets.layer_probes`.
        images: the images the explorer offers (default the bundled samples).
        explorer: show the :class:`Explorer` on the chosen layer (default ``True``).

    Click a bar (or call :meth:`select`) to see that layer's confusion matrix over the test images (row =
    true class, column = the probe's class; counts, darker = more) and the explorer switched to that layer.

    CSS classes: ``zf-probes``, ``zf-probe-bars`` (the clickable canvas), ``zf-probe-values``
    (``span.zf-probe[data-layer][data-test][data-train]``), ``zf-confusion`` (image), ``zf-confusion-info``,
    ``zf-error``.

    ``state``: ``layers``, ``test_accuracy``, ``train_accuracy``, ``selected`` (layer or ``None``),
    ``confusion`` (K x K list of counts of the selected layer), ``explorer_layer``, ``error``.

    Example:
        >>> from zfwidgets.zoo.data import load_fashion_mnist
        >>> xtr, ytr = load_fashion_mnist("train"); xte, yte = load_fashion_mnist("test")
        >>> panel = zfwidgets.ProbePanel(lens, xtr[:300], ytr[:300], xte[:100], yte[:100], layers=["conv3"], max_iter=50)
        >>> panel.select("conv3"); c = np.array(panel.state["confusion"]); c.shape, int(c.sum())   # 100 test images
        ((10, 10), 100)
    """

    BAR_W, GAP, HEIGHT, BASE = 44, 10, 160, 34

    def __init__(self, lens, train_images=None, train_labels=None, test_images=None, test_labels=None, *,
                 probes=None, layers=None, grid: int | None = 4, l2: float = 1e-2, max_iter: int = 300,
                 images=None, explorer: bool = True):
        super().__init__(lens)
        self.add_class("zf-probes")
        try:
            self._build(train_images, train_labels, test_images, test_labels, probes, layers, grid, l2, max_iter,
                        images, explorer)
        except BaseException:
            self.close()
            raise

    def _build(self, xtr, ytr, xte, yte, probes, layers, grid, l2, max_iter, images, explorer):
        if probes is None:
            if any(v is None for v in (xtr, ytr, xte, yte)):
                raise TypeError("give train_images, train_labels, test_images and test_labels, or probes=")
            probes = _probes(self.lens, xtr, ytr, xte, yte, layers, grid, l2, max_iter)
        elif getattr(probes, "test_predictions", None) is None:
            raise TypeError("probes must be a LayerProbes result with its test predictions (zfwidgets.layer_probes)")
        self.probes = probes
        self.selected = None
        self.explorer = None
        self._images = images
        n = len(probes.layers)
        width = self.GAP + n * (self.BAR_W + self.GAP)
        self.bars = self._picture_canvas(max(width, 200), self.HEIGHT + self.BASE, css_class="zf-probe-bars",
                                         overlay=self._draw_bars)
        self._own(self.bars.canvas)
        self._on_canvas(self.bars.canvas, "mouse_down", self._clicked, "bar click")
        self.values = self._own(W.HTML(" ".join(
            f'<span class="zf-probe" data-layer="{html.escape(l)}" data-test="{te:.6f}" data-train="{tr:.6f}">'
            f'{html.escape(l)} {te:.1%}</span>'
            for l, te, tr in zip(probes.layers, probes.test_accuracy, probes.train_accuracy))))
        self.values.add_class("zf-probe-values")
        self.confusion_image = self._own(W.Image(format="png"))
        self.confusion_image.add_class("zf-confusion")
        self.confusion_info = self._own(W.HTML("click a layer's bar for its confusion matrix"))
        self.confusion_info.add_class("zf-confusion-info")
        self.explorer_box = self._own(W.VBox())
        pool = f"maps pooled to {probes.grid}x{probes.grid}" if probes.grid else "full maps"
        title = self._own(W.HTML(f"<b>linear probes per layer</b> ({html.escape(probes.model)}; softmax on frozen "
                                 f"features, {pool}; {probes.n_train} train / {probes.n_test} test images): "
                                 "test accuracy; click a bar"))
        self._want_explorer = bool(explorer)
        self.children = [title, self.bars.canvas, self.values,
                         self._own(W.HBox([self.confusion_image, self.confusion_info])), self.explorer_box,
                         self.error_area]
        self.bars.redraw()

    # ----- the chart -----------------------------------------------------------------------------
    def _draw_bars(self, layer) -> None:
        p = self.probes
        layer.font = "10px sans-serif"
        layer.text_align = "center"
        for k, (name, acc) in enumerate(zip(p.layers, p.test_accuracy)):
            x = self.GAP + k * (self.BAR_W + self.GAP)
            h = float(acc) * self.HEIGHT
            layer.fill_style = SELECTION_COLOUR if name == self.selected else BAR_COLOUR
            layer.fill_rect(x, self.HEIGHT - h + 12, self.BAR_W, h)
            layer.fill_style = "#000000"
            layer.fill_text(f"{acc:.1%}", x + self.BAR_W / 2, self.HEIGHT - h + 10)
            layer.fill_text(name, x + self.BAR_W / 2, self.HEIGHT + 26)

    def _clicked(self, x: float, y: float) -> None:
        k, r = divmod(int(x) - self.GAP, self.BAR_W + self.GAP)
        if 0 <= k < len(self.probes.layers) and r < self.BAR_W:
            self.select(self.probes.layers[k])

    # ----- a layer -------------------------------------------------------------------------------
    def select(self, layer) -> None:
        """Show ``layer``'s confusion matrix and the explorer on it."""
        name = self.lens.resolve(layer)[0]
        if name not in self.probes.layers:
            raise ValueError(f"layer {name!r} was not probed; probed: {self.probes.layers}")
        counts = self.probes.confusion(name)
        K = counts.shape[0]
        f = max(1, 240 // K)
        show_png(self.confusion_image, upscale(colourise(counts, CONFUSION_CMAP, 0, max(int(counts.max()), 1)), f))
        k = self.probes.layers.index(name)
        recall = np.diag(counts) / np.maximum(counts.sum(1), 1)
        worst = np.argsort(recall, kind="stable")[:3]
        self.confusion_info.value = (
            f"<b>{html.escape(name)}</b>: test accuracy {self.probes.test_accuracy[k]:.2%}; rows: true class, "
            f"columns: the probe's class (0..{K - 1}); hardest classes: "
            + ", ".join(f"{html.escape(self.lens.class_name(int(c)))} {recall[c]:.0%}" for c in worst))
        self.selected = name
        self.bars.redraw_overlay()
        if self._want_explorer:
            if self.explorer is None:
                images = self._images
                if images is None:
                    from ..zoo import samples
                    images = samples()
                self.explorer = self._own(_explorer(self.lens, images, name))
                self.explorer_box.children = [self.explorer]
            elif self.explorer.layer != name:
                self.explorer.show(layer=name)

    # ----- state ---------------------------------------------------------------------------------
    def _state(self) -> dict:
        p = self.probes
        return {"layers": list(p.layers), "test_accuracy": p.test_accuracy.tolist(),
                "train_accuracy": p.train_accuracy.tolist(), "selected": self.selected,
                "confusion": None if self.selected is None else p.confusion(self.selected).tolist(),
                "explorer_layer": None if self.explorer is None else self.explorer.layer}

    def _close_extra(self) -> None:
        if hasattr(self, "bars"):
            self.bars.close()
