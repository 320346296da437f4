"""The evolution timeline: the same feature maps' strongest-activation projections, snapshot by snapshot
(ZF §4, Fig. 4), with a slider (and a play button) over the training epochs.

Example:
    >>> panel = zfwidgets.EvolutionPanel("zfnet-fashion", zfwidgets.samples()[::8], ["conv1", "conv5"],
    ...                                  channels=2, autostart=False)
    >>> ev = panel.compute()         # a displayed panel computes by itself (autostart)
    >>> panel.state["epoch"]
    17
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import torch

from ..core.project import not_active_image
from ._common import Panel, display_factor, fit, image_widget, png_bytes, upscale

__all__ = ["EvolutionPanel"]


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _evolution(source, images, layers, channels, epochs, method, progress):
    from ..analysis.evolution import feature_evolution
    return feature_evolution(source, images, layers, channels, epochs=epochs, method=method,
                             show_progress=progress)


def _render(pixels: np.ndarray) -> np.ndarray:
    from ..core.project import render
    return render(torch.from_numpy(np.ascontiguousarray(pixels)), "signed")


class EvolutionPanel(Panel):
    """Projections of chosen maps at every training snapshot; a slider picks the snapshot.

    Args:
        name_or_lenses: a bundled model name (its shipped snapshots), a list of lenses (one per snapshot) or a
            snapshot folder, as :func:`zfwidgets.feature_evolution` takes.
        images: the fixed image set searched for each map's strongest activation.
        layers: a layer or a list of layers.
        channels: which maps (``None``: the 4 strongest in the last snapshot; an int k; a list; a dict per layer).
        epochs: keep only these snapshots.
        method: the projection rule.
        autostart: compute as soon as the panel is displayed in a kernel (else call :meth:`compute`).

    One row per layer: the maps' projections at the chosen snapshot (each on its own scale, zero = mid grey)
    above the image that held the strongest activation, with the cosine similarity to the last snapshot's
    projection. All snapshots are encoded once, so moving the slider only swaps PNGs.

    CSS classes: ``zf-evolution``, ``zf-epoch`` (slider), ``zf-play``, ``zf-progress``,
    ``zf-evolution-<layer>`` (one image per layer), ``zf-evolution-info``, ``zf-error``.

    ``state``: ``epoch``, ``snapshot`` (index), ``epochs``, ``layers``, ``channels``, ``similarity``
    (per layer, at this snapshot), ``computed``, ``error``.

    Example:
        >>> panel = zfwidgets.EvolutionPanel("zfnet-fashion", zfwidgets.samples()[::10], ["conv1"], channels=1,
        ...                                  autostart=False)
        >>> ev = panel.compute()
        >>> panel.state["epoch"]
        17
    """

    def __init__(self, name_or_lenses, images, layers, channels=None, *, epochs=None, method: str = "deconvnet",
                 autostart: bool = True, tile_size: int = 84):
        lens = name_or_lenses[-1] if isinstance(name_or_lenses, (list, tuple)) and name_or_lenses else None
        super().__init__(lens)
        self.add_class("zf-evolution")
        try:
            self._build(name_or_lenses, images, layers, channels, epochs, method, autostart, tile_size)
        except BaseException:
            self.close()
            raise

    def _build(self, source, images, layers, channels, epochs, method, autostart, tile_size):
        self.source, self.images, self.layers_asked = source, images, layers
        self.channels_asked, self.epochs_asked, self.method = channels, epochs, method
        self.tile_size = tile_size
        self.result = None
        self.snapshot = None
        self._pngs: list = []          # per snapshot: {layer: png}
        self.progress = self._own(W.FloatProgress(value=0.0, min=0.0, max=1.0, description="snapshots"))
        self.progress.add_class("zf-progress")
        self.epoch_slider = self._own(W.SelectionSlider(options=[("-", 0)], value=0, description="epoch",
                                                        continuous_update=True, disabled=True))
        self.epoch_slider.add_class("zf-epoch")
        self.play = self._own(W.Play(value=0, min=0, max=0, interval=900, disabled=True))
        self.play.add_class("zf-play")
        self._link = self._own(W.jslink((self.play, "value"), (self.epoch_slider, "index")))
        self.info = self._own(W.HTML("not computed yet"))
        self.info.add_class("zf-evolution-info")
        self.rows = self._own(W.VBox())
        self.layer_images: dict = {}
        self._observe(self.epoch_slider, self._set_snapshot, "snapshot")
        self.children = [self._own(W.HBox([self.play, self.epoch_slider, self.progress])), self.info, self.rows,
                         self.error_area]
        if autostart:
            self._start_after_display(self.compute, "feature evolution")

    def compute(self):
        """Run :func:`zfwidgets.feature_evolution` (progress bar), encode every snapshot, show the last one."""
        self._after_display = None
        self.progress.value, self.progress.bar_style = 0.0, ""

        def step(done, total):
            self.progress.value = done / total if total else 1.0

        try:
            ev = _evolution(self.source, self.images, self.layers_asked, self.channels_asked, self.epochs_asked,
                            self.method, step)
        except Exception:
            self.progress.bar_style = "danger"
            raise
        self.progress.value, self.progress.bar_style = 1.0, "success"
        self.result = ev
        self._encode(ev)
        rows = []
        self.layer_images = {}
        for l in ev.layers:
            img = self._own(image_widget(f"zf-evolution-{l}"))
            fit(img, self._sizes[l][1], self._sizes[l][0])
            self.layer_images[l] = img
            caption = self._own(W.HTML(f"<b>{html.escape(l)}</b> maps {ev.channels[l]}: projection (top), "
                                       "image with the strongest activation (bottom)"))
            rows.append(self._own(W.VBox([caption, img])))
        self.rows.children = rows
        S = len(ev.epochs)
        options = [(str(e), s) for s, e in enumerate(ev.epochs)]
        self.epoch_slider.options = options
        self.epoch_slider.disabled = False
        self.play.max, self.play.disabled = S - 1, False
        if self.epoch_slider.value == S - 1:
            self._set_snapshot(S - 1)
        else:
            self.epoch_slider.value = S - 1
        return ev

    def _encode(self, ev) -> None:
        self._pngs, self._sizes = [], {}
        for s in range(len(ev.epochs)):
            per_layer = {}
            for l in ev.layers:
                projs = ev.projections[l][:, s]                          # c x C x H x W
                h, w = projs.shape[-2:]
                f = display_factor(h, w, self.tile_size)
                live = ev.active[l][:, s] if l in ev.active else np.ones(len(projs), bool)
                tiles = [upscale(_render(p) if on else not_active_image(*p.shape[-2:]), f) for p, on in zip(projs, live)]
                if ev.images is not None:
                    pics = [upscale(ev.images[int(ev.image_index[l][c, s])], f) for c in range(len(projs))]
                else:
                    pics = [np.full_like(t, 255) for t in tiles]
                sheet = self._sheet([tiles, pics])
                self._sizes[l] = sheet.shape[:2]
                per_layer[l] = png_bytes(sheet)
            self._pngs.append(per_layer)

    @staticmethod
    def _sheet(rows, gap: int = 3) -> np.ndarray:
        th, tw = rows[0][0].shape[:2]
        n = max(len(r) for r in rows)
        out = np.full((len(rows) * (th + gap) + gap, n * (tw + gap) + gap, 3), 255, np.uint8)
        for i, row in enumerate(rows):
            for j, t in enumerate(row):
                y, x = gap + i * (th + gap), gap + j * (tw + gap)
                out[y:y + th, x:x + tw] = t if t.ndim == 3 else t[:, :, None]
        return out

    def _set_snapshot(self, s) -> None:
        if self.result is None:
            return
        ev = self.result
        self.snapshot = int(s)
        for l, img in self.layer_images.items():
            img.value = self._pngs[self.snapshot][l]
        parts = []
        for l in ev.layers:
            sims = ev.similarity[l][:, self.snapshot]
            txt = ", ".join("–" if not np.isfinite(v) else f"{v:.2f}" for v in sims)
            parts.append(f'<span class="zf-similarity" data-layer="{html.escape(l)}">{html.escape(l)}: '
                         f'{txt}</span>')
        off = [f"{l} map {c}" for l in ev.layers if l in ev.active
               for c, on in zip(ev.channels[l], ev.active[l][:, self.snapshot]) if not on]
        note = (f'; <span class="zf-not-active">not active on these images (crossed out): {html.escape(", ".join(off))}'
                '</span>') if off else ""
        self.info.value = (f'<span class="zf-epoch-now" data-epoch="{ev.epochs[self.snapshot]}">epoch '
                           f'{ev.epochs[self.snapshot]}</span> ({self.snapshot + 1} of {len(ev.epochs)}); cosine '
                           f'similarity to the last snapshot: ' + "; ".join(parts) + note)

    def _state(self) -> dict:
        ev = self.result
        if ev is None:
            return {"computed": False, "epoch": None, "snapshot": None, "epochs": None, "layers": None,
                    "channels": None, "similarity": None}
        s = self.snapshot
        return {"computed": True, "epoch": None if s is None else ev.epochs[s], "snapshot": s,
                "epochs": list(ev.epochs), "layers": list(ev.layers), "channels": dict(ev.channels),
                "similarity": None if s is None else {l: ev.similarity[l][:, s].tolist() for l in ev.layers}}
