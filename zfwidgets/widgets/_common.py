"""What every panel shares: the :class:`Panel` base (error area, guarded callbacks, ``close()``, ``state``),
PNG encoding, nearest-neighbour upscaling, feature-map mosaics and the probabilities HTML.

Panels are thin views: nothing here computes anything about the model; it only encodes arrays the plain API
returned for display. Images go to the browser as PNG (``ipywidgets.Image(format="png")``), never as raw
pixel arrays.
"""
from __future__ import annotations

import html
import io
import math
import traceback
from collections import deque
from dataclasses import dataclass

import ipywidgets as W
import numpy as np
import torch
from PIL import Image

from ._canvas import PictureCanvas, fit

__all__ = ["Panel", "png_bytes", "show_png", "fit", "upscale", "display_factor", "Mosaic", "mosaic", "probs_html", "top_k",
           "image_widget", "figure_png", "to_uint8_map", "SEPARATOR", "EMPTY", "TOP", "conv_layers"]

# palette images: maps use indices 0..253 (black..white), 254 marks an empty cell, 255 the lines between tiles
TOP = 253
EMPTY = 254
SEPARATOR = 255
_PALETTE = ([v for i in range(TOP + 1) for v in (round(i * 255 / TOP),) * 3]
            + [255, 255, 255] + [31, 119, 180])


def png_bytes(arr: np.ndarray, *, palette: bool = False, level: int = 1) -> bytes:
    """An ``H x W`` (grey, or palette indices with ``palette=True``) or ``H x W x 3`` uint8 array as PNG bytes.

    ``level=1``: zlib's fastest setting; feature maps compress well anyway and the encoding is on the hot path.
    """
    arr = np.ascontiguousarray(arr)
    if arr.dtype != np.uint8:
        raise TypeError(f"png_bytes expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr, "P" if palette else None)
    if palette:
        img.putpalette(_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def upscale(arr: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (each pixel becomes a factor x factor block)."""
    if factor == 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def display_factor(height: int, width: int, target: int = 224) -> int:
    """The integer zoom that brings the longer side near ``target`` pixels (28 → 8, 224 → 1)."""
    return max(1, int(round(target / max(height, width))))


def to_uint8_map(a: torch.Tensor | np.ndarray, scale: float | None = None, top: int = TOP) -> np.ndarray:
    """Activations (rectified) as palette indices ``0..top`` (black..white); ``scale`` is the value shown white
    (default: the maximum)."""
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float32)
    a = np.maximum(a, 0)
    m = float(a.max()) if scale is None else float(scale)
    if not m > 0:
        return np.zeros(a.shape, np.uint8)
    return np.minimum(a * (top / m) + 0.5, top).astype(np.uint8)


@dataclass
class Mosaic:
    """A grid of tiles: ``pixels`` (palette indices, separators = :data:`SEPARATOR`) and its geometry."""
    pixels: np.ndarray
    count: int
    cols: int
    rows: int
    tile_h: int
    tile_w: int
    gap: int

    def tile_at(self, x: float, y: float) -> int | None:
        """The index of the tile under pixel ``(x, y)`` of the mosaic, or ``None`` (a gap or outside)."""
        col, cx = divmod(int(x) - self.gap, self.tile_w + self.gap)
        row, cy = divmod(int(y) - self.gap, self.tile_h + self.gap)
        if not (0 <= col < self.cols and 0 <= row < self.rows) or cx >= self.tile_w or cy >= self.tile_h:
            return None
        k = row * self.cols + col
        return k if k < self.count else None

    def origin(self, k: int) -> tuple:
        """``(x, y)`` of tile ``k``'s top-left pixel."""
        row, col = divmod(k, self.cols)
        return self.gap + col * (self.tile_w + self.gap), self.gap + row * (self.tile_h + self.gap)

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]


def mosaic(maps: np.ndarray, *, factor: int = 1, cols: int | None = None, gap: int = 1) -> Mosaic:
    """Tile ``N x h x w`` uint8 maps (palette indices 0..253) into one image, each enlarged ``factor`` times;
    cells past the last map are :data:`EMPTY` (white), the lines between tiles :data:`SEPARATOR` (blue).

    One reshape, no Python loop over the maps: this runs on every occluder move.
    """
    n, h, w = maps.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    th, tw = h * factor, w * factor
    cells = np.full((rows * cols, th + gap, tw + gap), SEPARATOR, np.uint8)
    cells[n:, :th, :tw] = EMPTY
    cells[:n, :th, :tw] = upscale(maps.transpose(1, 2, 0), factor).transpose(2, 0, 1) if factor > 1 else maps
    grid = cells.reshape(rows, cols, th + gap, tw + gap).transpose(0, 2, 1, 3).reshape(rows * (th + gap),
                                                                                      cols * (tw + gap))
    out = np.full((grid.shape[0] + gap, grid.shape[1] + gap), SEPARATOR, np.uint8)
    out[gap:, gap:] = grid
    return Mosaic(out, n, cols, rows, th, tw, gap)


def top_k(probs: torch.Tensor, k: int = 5) -> list:
    """``[(class index, probability)]`` of the ``k`` most probable classes, best first."""
    p = probs.detach().float().cpu()
    vals, idx = p.topk(min(k, p.numel()))
    return [(int(i), float(v)) for v, i in zip(vals, idx)]


def probs_html(lens, probs: torch.Tensor, *, k: int = 5, box=None, note: str = "") -> tuple:
    """The probabilities panel: ``(html, [(class name, p)])``.

    The top class is a ``<span class="zf-top1" data-class data-index data-p>`` (``data-p`` with 6 decimals),
    the occluder box (when given) a ``<span class="zf-box" data-box="y0,x0,y1,x1">``, so that a browser test
    can read the exact numbers and recompute them with the plain API.
    """
    best = top_k(probs, k)
    rows = []
    for rank, (i, p) in enumerate(best):
        name = html.escape(lens.class_name(i))
        bar = f'<span class="zf-bar" style="display:inline-block;width:{p * 100:.1f}px;height:0.8em;' \
              f'background:#1f77b4;vertical-align:middle"></span>'
        label = (f'<span class="zf-top1" data-class="{name}" data-index="{i}" data-p="{p:.6f}">{name} '
                 f'{p * 100:.1f}%</span>') if rank == 0 else f'<span class="zf-prob">{name} {p * 100:.1f}%</span>'
        rows.append(f'<tr><td style="width:104px;text-align:left;padding:0">{bar}</td>'
                    f'<td style="text-align:left;padding:0 4px">{label}</td></tr>')
    parts = ['<div class="zf-probs-body"><table style="border-collapse:collapse">', *rows, "</table>"]
    if box is not None:
        y0, x0, y1, x1 = (int(v) for v in box)
        parts.append(f'<span class="zf-box" data-box="{y0},{x0},{y1},{x1}">occluder rows {y0}–{y1 - 1}, '
                     f'columns {x0}–{x1 - 1}</span>')
    if note:
        parts.append(f'<div class="zf-note">{note}</div>')
    parts.append("</div>")
    return "".join(parts), [(lens.class_name(i), p) for i, p in best]


def show_png(widget, pixels: np.ndarray, *, palette: bool = False) -> None:
    """Encode ``pixels`` as PNG into an ``ipywidgets.Image`` shown at 1:1."""
    widget.value = png_bytes(pixels, palette=palette)
    fit(widget, pixels.shape[1], pixels.shape[0])


def figure_png(fig, dpi: int = 80) -> bytes:
    """A matplotlib figure (the ``plot`` module's) as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def image_widget(css_class: str | None = None, **layout) -> W.Image:
    img = W.Image(format="png", **({"layout": W.Layout(**layout)} if layout else {}))
    if css_class:
        img.add_class(css_class)
    return img


def conv_layers(lens) -> list:
    """The lens's conv layers (friendly names), in forward order."""
    return [i.name for i in lens.table if i.kind == "conv"]


class Panel(W.VBox):
    """Base of every panel: an error area, guarded callbacks, ``close()`` that undoes all wiring, ``state``.

    Every callback a panel registers goes through :meth:`_guard`: an exception is caught and shown inside the
    panel (an ``HTML`` with class ``zf-error``: the message and a collapsible traceback) and the panel keeps
    working; the next successful view update clears it. ``errors`` keeps every one caught, for tests.
    """

    def __init__(self, lens, **kwargs):
        super().__init__(**kwargs)
        self.add_class("zf-panel")
        self.lens = lens
        self.errors = deque(maxlen=20)  # the latest (where, exception) caught by guarded callbacks
        self._owned: list = []          # every widget this panel created (closed with it)
        self._observed: list = []       # (widget, handler, names) to unobserve on close
        self._unregister: list = []     # callables removing canvas callbacks
        self._closed = False
        self.error_area = self._own(W.HTML(value="", layout=W.Layout(display="none")))
        self.error_area.add_class("zf-error")

    # ----- wiring ---------------------------------------------------------------------------------
    def _own(self, widget):
        self._owned.append(widget)
        return widget

    def _guard(self, fn, where: str, *, clears: bool = True):
        """``fn`` wrapped so that an exception shows in the panel instead of killing the callback silently."""
        def guarded(*args, **kwargs):
            if self._closed:
                return None
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user, never swallowed silently
                self.show_error(where, exc)
                return None
            if clears and self.errors and self.error_area.value:
                self.clear_error()
            return result
        guarded.__wrapped__ = fn
        return guarded

    def _observe(self, widget, fn, where: str, names="value"):
        handler = self._guard(lambda change: fn(change["new"]), where)
        widget.observe(handler, names=names)
        self._observed.append((widget, handler, names))
        return handler

    def _on_click(self, button, fn, where: str):
        handler = self._guard(lambda _b: fn(), where)
        button.on_click(handler)
        self._unregister.append(lambda: button.on_click(handler, remove=True))
        return handler

    def _on_canvas(self, canvas, event: str, fn, where: str, *, clears: bool = True):
        """Register ``fn(x, y)`` for ``canvas.on_<event>`` (mouse_down, mouse_move, ...), guarded."""
        handler = self._guard(fn, where, clears=clears)
        register = getattr(canvas, f"on_{event}")
        register(handler)
        self._unregister.append(lambda: register(handler, remove=True))
        return handler

    def _picture_canvas(self, width: int, height: int, **kwargs):
        """A :class:`~zfwidgets.widgets._canvas.PictureCanvas` whose client-ready redraw is guarded."""
        return PictureCanvas(width, height, guard=lambda fn: self._guard(fn, "canvas redraw", clears=False),
                             **kwargs)

    # ----- errors ---------------------------------------------------------------------------------
    def show_error(self, where: str, exc: BaseException) -> None:
        self.errors.append((where, exc))
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        msg = html.escape(f"{type(exc).__name__}: {exc}")
        self.error_area.value = (f'<div class="zf-error-body" style="color:#b00020;border:1px solid #b00020;'
                                 f'padding:4px"><b>Error in {html.escape(where)}:</b> {msg}'
                                 f'<details><summary>traceback</summary><pre style="font-size:80%">'
                                 f'{html.escape(tb)}</pre></details></div>')
        self.error_area.layout.display = None

    def clear_error(self) -> None:
        self.error_area.value = ""
        self.error_area.layout.display = "none"

    @property
    def error(self) -> str | None:
        """The message of the error on display (``None`` when none is)."""
        if not self.error_area.value or not self.errors:
            return None
        where, exc = self.errors[-1]
        return f"{where}: {type(exc).__name__}: {exc}"

    # ----- work that starts once the panel is on screen -------------------------------------------
    def _start_after_display(self, fn, where: str) -> None:
        """Run ``fn`` right after the panel is first displayed in a kernel (so its progress bar is seen).

        Displaying calls ``_repr_mimebundle_`` inside the cell; ``fn`` is then scheduled on the kernel's event
        loop and runs once the display message has gone out. Outside a kernel nothing is scheduled: call the
        panel's method yourself (``gallery.mine()``).
        """
        self._after_display = self._guard(fn, where)

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        start, self._after_display = getattr(self, "_after_display", None), None
        if start is not None:
            import asyncio
            try:
                asyncio.get_running_loop().call_soon(start)
            except RuntimeError:
                self._after_display = start          # no kernel loop: leave it to an explicit call
        return bundle

    # ----- state and life cycle -------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """A snapshot of what the panel shows (plain Python values), for tests and notebooks."""
        s = self._state()
        s["error"] = self.error
        return s

    def _state(self) -> dict:
        return {}

    def close(self) -> None:
        """Close the panel and every widget it made, and remove every callback it registered."""
        if getattr(self, "_closed", None) is not False:   # closed already, or failed before Panel.__init__
            super().close()
            return
        self._closed = True
        for widget, handler, names in self._observed:
            try:
                widget.unobserve(handler, names=names)
            except ValueError:
                pass
        self._observed.clear()
        for undo in self._unregister:
            undo()
        self._unregister.clear()
        try:
            self._close_extra()
        finally:
            seen: set = set()
            for w in reversed(self._owned):
                self._close_tree(w, seen)
            self._owned.clear()
            for child in self.children:
                self._close_tree(child, seen)
            layout = self.layout
            super().close()
            layout.close()

    def _close_tree(self, widget, seen: set) -> None:
        """Close ``widget``, its children, and their ``layout``/``style`` widgets (ipywidgets leaves those open).

        Another panel inside this one is closed through its own ``close()``, and only if this panel made it.
        """
        if id(widget) in seen:
            return
        seen.add(id(widget))
        if isinstance(widget, Panel) and widget is not self:
            if any(widget is w for w in self._owned):
                widget.close()
            return
        for child in getattr(widget, "children", ()) or ():
            self._close_tree(child, seen)
        for attr in ("layout", "style"):
            sub = getattr(widget, attr, None)
            if isinstance(sub, W.Widget):
                sub.close()
        widget.close()

    def _close_extra(self) -> None:
        """Subclasses release what they hold beyond widgets and callbacks."""
