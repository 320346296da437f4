"""The correspondence panel (ZF §4.3, Fig. 8, Table 1): mark a part on each image with a box, and see per layer
whether masking it changes the images' representations more consistently than random masks of its size.
"""
from __future__ import annotations

import html
import math

import ipywidgets as W

from ..core.inputs import as_input, image_of
from ..plot.colours import PART_COLOURS, RANDOM_COLOUR
from ._common import Panel, display_factor, png_bytes, upscale
from ._events import Coalescer

__all__ = ["CorrespondencePanel"]


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _correspondence(lens, images, boxes, layers, random_controls, seed):
    from ..analysis.correspondence import correspondence
    return correspondence(lens, images, boxes, layers=layers, random_controls=random_controls, seed=seed,
                          progress=False)


class CorrespondencePanel(Panel):
    """ZF's Δ for parts you mark, against random masks of the same size, per layer (Table 1), live.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: n >= 2 images of one kind of object (ZF: 5); samples and ``(image, label)`` pairs are fine.
        boxes: ``{part name: [(y0, x0, y1, x1) per image]}`` (half-open, model-input pixels), or one list of
            boxes for a single part; default one part, a ``size`` x ``size`` box in the middle of each image.
        layers: the layers measured (default :func:`zfwidgets.correspondence`'s: the top conv layer and the
            last hidden layer, ZF's 5 and 7).
        random_controls, seed: the random masks (as in :func:`zfwidgets.correspondence`).
        size: the default box's side.

    Drag on an image to draw the chosen part's box there; press inside the box to move it instead. Moves are
    coalesced (:class:`~zfwidgets.widgets._events.Coalescer`); every update runs
    :func:`zfwidgets.correspondence` on all parts and shows its result: Δ / (n(n-1)D) per part and layer,
    the random masks' mean ± std, and the raw ordered-pair Hamming sums of ``sign(ε)`` ("raw" toggle).

    CSS classes: ``zf-correspondence``, ``zf-part`` (dropdown), ``zf-normalised`` (toggle),
    ``zf-corr-image-<i>`` (the clickable canvases), ``zf-corr-table`` (``td.zf-delta[data-mask][data-layer]
    [data-value][data-std]``), ``zf-error``.

    ``state``: ``parts``, ``part`` (edited), ``boxes`` ``{part: [box per image]}``, ``layers``, ``delta``
    ``{part: [normalised Δ per layer]}``, ``control`` ``{name: [(mean, std) per layer]}``, ``raw``
    ``{part: [Δ per layer]}``, ``renders``, ``dragging``, ``error``.

    Example:
        >>> boots = zfwidgets.samples(label=9)[:4]
        >>> panel = zfwidgets.CorrespondencePanel(lens, boots, {"toe": [(14, 0, 22, 8)] * 4})
        >>> panel.set_box(0, (15, 1, 23, 9)); [round(v, 3) for v in panel.state["delta"]["toe"]]
        [0.247, 0.211]
    """

    def __init__(self, lens, images, boxes=None, *, layers=None, random_controls: int = 10, seed: int = 0,
                 size: int = 8, display_size: int = 112):
        super().__init__(lens)
        self.add_class("zf-correspondence")
        try:
            self._build(images, boxes, layers, random_controls, seed, size, display_size)
        except BaseException:
            self.close()
            raise

    def _build(self, images, boxes, layers, random_controls, seed, size, display_size):
        lens = self.lens
        self.images = [image_of(item) for item in images]
        if len(self.images) < 2:
            raise ValueError(f"the correspondence panel needs at least 2 images, got {len(self.images)}")
        xs = [as_input(lens, im).detach() for im in self.images]
        self.H, self.W = (int(v) for v in xs[0].shape[-2:])
        n = len(self.images)
        if boxes is None:
            s = int(size)
            if not 1 <= s <= min(self.H, self.W):
                raise ValueError(f"size must be in 1..{min(self.H, self.W)}, got {size!r}")
            y0, x0 = (self.H - s) // 2, (self.W - s) // 2
            boxes = {"part": [(y0, x0, y0 + s, x0 + s)] * n}
        elif not isinstance(boxes, dict):
            boxes = {"part": boxes}
        self.boxes = {str(p): [tuple(int(v) for v in b) for b in bs] for p, bs in boxes.items()}
        self.layers_asked, self.random_controls, self.seed = layers, random_controls, seed
        self.part = next(iter(self.boxes))
        self.result = None
        self.renders = 0
        self.dragging = None           # (image index, "draw" | "move", anchor) while the button is down
        self.scale = display_factor(self.H, self.W, display_size)

        self.part_dropdown = self._own(W.Dropdown(options=list(self.boxes), value=self.part, description="part"))
        self.part_dropdown.add_class("zf-part")
        self.normalised = self._own(W.ToggleButtons(options=[("Δ / n(n-1)D", True), ("raw Δ", False)], value=True))
        self.normalised.add_class("zf-normalised")
        self.table = self._own(W.HTML())
        self.table.add_class("zf-corr-table")
        self.canvases = []
        for i, x in enumerate(xs):
            pc = self._picture_canvas(self.W * self.scale, self.H * self.scale, css_class=f"zf-corr-image-{i}",
                                      overlay=lambda layer, i=i: self._draw_boxes(layer, i))
            self._own(pc.canvas)
            pc.set_picture(png_bytes(upscale(lens.to_display(x), self.scale)))
            self.canvases.append(pc)
        self._moves = Coalescer(self._guard(self._process, "box update"),
                                on_error=lambda e: self.show_error("box update", e))
        for i, pc in enumerate(self.canvases):
            for event in ("mouse_down", "mouse_move", "mouse_up", "mouse_out"):
                self._on_canvas(pc.canvas, event, lambda x, y, i=i, event=event: self._mouse(i, event, x, y),
                                event.replace("_", " "), clears=False)
        self._observe(self.part_dropdown, self._set_part, "part")
        self._observe(self.normalised, lambda _v: self._show(), "normalisation")
        legend = " ".join(f'<span style="color:{PART_COLOURS[k % len(PART_COLOURS)]}">■</span> {html.escape(p)}'
                          for k, p in enumerate(self.boxes))
        self.children = [self._own(W.HBox([self.part_dropdown, self.normalised])),
                         self._own(W.HTML(f"drag on an image to draw the part's box, or move it; {legend}; "
                                          f'<span style="color:{RANDOM_COLOUR}">▭</span> a random mask')),
                         self._own(W.HBox([pc.canvas for pc in self.canvases],
                                          layout=W.Layout(flex_flow="row wrap", grid_gap="6px"))),
                         self.table, self.error_area]
        self._update()

    # ----- mouse ----------------------------------------------------------------------------------
    def _mouse(self, i: int, event: str, x: float, y: float) -> None:
        cy, cx = y / self.scale, x / self.scale
        if event == "mouse_down":
            y0, x0, y1, x1 = self.boxes[self.part][i]
            inside = y0 <= cy < y1 and x0 <= cx < x1
            self.dragging = (i, "move", (cy - y0, cx - x0)) if inside else (i, "draw", (cy, cx))
            self._moves.push((i, cy, cx))
            self._moves.flush()
        elif self.dragging is not None and self.dragging[0] == i:
            self._moves.push((i, cy, cx))
            if event != "mouse_move":
                self._moves.flush()
                self.dragging = None

    def _process(self, request) -> None:
        i, cy, cx = request
        if self.dragging is None or self.dragging[0] != i:
            return
        _, how, anchor = self.dragging
        y0, x0, y1, x1 = self.boxes[self.part][i]
        if how == "move":
            h, w = y1 - y0, x1 - x0
            ny = min(max(int(math.floor(cy - anchor[0] + 0.5)), 0), self.H - h)
            nx = min(max(int(math.floor(cx - anchor[1] + 0.5)), 0), self.W - w)
            box = (ny, nx, ny + h, nx + w)
        else:
            ay, ax = anchor
            clamp = lambda v, hi: min(max(int(math.floor(v)), 0), hi - 1)  # noqa: E731
            ya, yb = sorted((clamp(ay, self.H), clamp(cy, self.H)))
            xa, xb = sorted((clamp(ax, self.W), clamp(cx, self.W)))
            box = (ya, xa, yb + 1, xb + 1)
        if box != (y0, x0, y1, x1):
            self.set_box(i, box)

    # ----- public ---------------------------------------------------------------------------------
    def set_box(self, i: int, box, part: str | None = None) -> None:
        """Put ``part``'s (default the edited part's) box on image ``i`` at ``(y0, x0, y1, x1)`` and update."""
        part = self.part if part is None else part
        if part not in self.boxes:
            raise ValueError(f"unknown part {part!r}; parts: {list(self.boxes)}")
        old = self.boxes[part][int(i)]
        self.boxes[part][int(i)] = tuple(int(v) for v in box)
        try:
            self._update()
        except BaseException:
            self.boxes[part][int(i)] = old         # the view keeps showing a state it computed
            raise
        finally:
            self.canvases[int(i)].redraw_overlay()

    def _set_part(self, part) -> None:
        self.part = part
        for pc in self.canvases:
            pc.redraw_overlay()

    # ----- the update: one correspondence call, drawn -----------------------------------------------
    def _update(self) -> None:
        self.result = _correspondence(self.lens, self.images, self.boxes, self.layers_asked, self.random_controls,
                                      self.seed)
        self._show()
        self.renders += 1

    def _show(self) -> None:
        r = self.result
        norm = bool(self.normalised.value)
        rows = r.rows(normalised=norm)
        fmt = (lambda v: f"{v:.4f}") if norm else (lambda v: f"{v:.0f}")
        biggest = max([abs(row[l][0]) + row[l][1] for row in rows for l in r.layers] + [1e-12])
        head = "".join(f"<th>Δ {html.escape(l)}</th>" for l in r.layers)
        body = []
        for k, row in enumerate(rows):
            is_part = k < len(r.parts)
            colour = PART_COLOURS[k % len(PART_COLOURS)] if is_part else "#999999"
            cells = []
            for l in r.layers:
                m, s = row[l]
                bar = f'<span style="display:inline-block;height:0.7em;width:{80 * m / biggest:.0f}px;' \
                      f'background:{colour}"></span>'
                cells.append(f'<td class="zf-delta" data-mask="{html.escape(row["mask"])}" data-layer="{html.escape(l)}" '
                             f'data-value="{m:.9g}" data-std="{s:.9g}">{bar} {fmt(m)}'
                             + (f" ± {fmt(s)}" if not is_part else "") + "</td>")
            body.append(f'<tr><td style="color:{colour}">{html.escape(row["mask"])}</td>{"".join(cells)}</tr>')
        what = "Δ / (n(n-1)D): the mean share of feature entries whose sign of change differs between two images" \
            if norm else "Δ: ordered-pair Hamming sum of sign(ε)"
        self.table.value = (f'<table style="border-collapse:collapse"><tr><th>mask</th>{head}</tr>{"".join(body)}'
                            f'</table><div>{what}; lower = more consistent; {r.n_images} images; random: mean ± std '
                            f'over {r.control_delta.shape[1]} draws</div>')

    def _draw_boxes(self, layer, i: int) -> None:
        s = self.scale
        r = self.result
        if r is not None:
            y0, x0, y1, x1 = (int(v) for v in r.control_boxes[0, 0, i])
            layer.stroke_style = RANDOM_COLOUR
            layer.line_width = 1
            layer.set_line_dash([4, 3])
            layer.stroke_rect(x0 * s + 0.5, y0 * s + 0.5, (x1 - x0) * s - 1, (y1 - y0) * s - 1)
            layer.set_line_dash([])
        for k, (part, bs) in enumerate(self.boxes.items()):
            y0, x0, y1, x1 = bs[i]
            layer.stroke_style = PART_COLOURS[k % len(PART_COLOURS)]
            layer.line_width = 3 if part == self.part else 1.5
            layer.stroke_rect(x0 * s + 1, y0 * s + 1, (x1 - x0) * s - 2, (y1 - y0) * s - 2)

    # ----- state, closing -------------------------------------------------------------------------
    def _state(self) -> dict:
        r = self.result
        out = {"parts": list(self.boxes), "part": self.part, "boxes": {p: list(b) for p, b in self.boxes.items()},
               "renders": self.renders, "dragging": self.dragging is not None}
        if r is not None:
            out.update(layers=list(r.layers),
                       delta={p: r.delta_normalised[k].tolist() for k, p in enumerate(r.parts)},
                       raw={p: r.delta[k].tolist() for k, p in enumerate(r.parts)},
                       control={c: list(zip(r.control_mean[g].tolist(), r.control_std[g].tolist()))
                                for g, c in enumerate(r.controls)})
        return out

    def _close_extra(self) -> None:
        if hasattr(self, "_moves"):
            self._moves.cancel()
        for pc in getattr(self, "canvases", []):
            pc.close()
