"""ipycanvas helpers: a layered canvas whose bottom layer shows a PNG picture, redrawn for every new client.

ipycanvas renders a ``MultiCanvas`` as one ``<canvas>`` element (the layers are composited into it), and
that element receives the mouse events, which Python routes to the *top* layer's callbacks. A CSS class
added to the ``MultiCanvas`` itself therefore lands on the element that gets the events (``canvas.<class>``).

Canvases are nearly stateless in the browser: a client that connects later (Voilà renders after the notebook
ran; a reloaded page) starts blank. :class:`PictureCanvas` redraws everything on ``client_ready``.
Pictures are drawn with ``draw_image`` of an ``ipywidgets.Image`` holding PNG bytes (compressed, and at 1:1,
so the browser never smooths them); never ``put_image_data`` of raw pixels.
"""
from __future__ import annotations

from contextlib import contextmanager

import ipywidgets as W
from ipycanvas import MultiCanvas

__all__ = ["PictureCanvas", "held", "fit"]


def fit(widget, width: int, height: int) -> None:
    """Give ``widget`` a CSS size of exactly ``width`` x ``height`` pixels (a flex box would stretch an image,
    and a browser smooths what it stretches). Sends nothing when the size did not change."""
    w, h = f"{int(width)}px", f"{int(height)}px"
    if widget.layout.width != w:
        widget.layout.width = w
    if widget.layout.height != h:
        widget.layout.height = h


@contextmanager
def held(canvas):
    """Batch the draw commands of the block into one message (like ``ipycanvas.hold_canvas``), and restore
    the manager's state even when the block raises (``hold_canvas`` would leave every canvas caching)."""
    manager = canvas._canvas_manager
    before = manager._caching
    manager._caching = True
    try:
        yield
    finally:
        try:
            manager.flush()
        finally:
            manager._caching = before
            if not before:
                manager._commands_cache, manager._buffers_cache = [], []


class PictureCanvas:
    """A ``MultiCanvas`` (``layers`` layers): the bottom one shows a PNG, the top one an overlay drawn by
    ``overlay(top_layer)``; both redrawn when a client connects.

    ``canvas`` is the widget to display; ``picture`` the (not displayed) ``ipywidgets.Image`` it draws.
    """

    def __init__(self, width: int, height: int, *, layers: int = 2, css_class: str | None = None, overlay=None,
                 guard=None):
        self.canvas = MultiCanvas(layers, width=int(width), height=int(height))
        self._fit()
        if css_class:
            self.canvas.add_class(css_class)           # the rendered <canvas> element
            self.canvas[-1].add_class(css_class)       # and the layer that owns the mouse callbacks
        self.picture = W.Image(format="png")
        self.overlay = overlay
        # ``guard(fn)`` wraps the redraw callback (panels pass theirs, so an error shows in the panel)
        self._ready = guard(self.redraw) if guard is not None else (lambda: self.redraw())
        self.canvas.on_client_ready(self._ready)
        self.draws = 0

    def _fit(self) -> None:
        """CSS size = pixel size: a stretched canvas would be smoothed, and clicks scaled."""
        fit(self.canvas, self.canvas.width, self.canvas.height)

    @property
    def top(self):
        return self.canvas[-1]

    @property
    def width(self) -> int:
        return self.canvas.width

    @property
    def height(self) -> int:
        return self.canvas.height

    def set_picture(self, png: bytes, width: int | None = None, height: int | None = None) -> None:
        """Show new PNG bytes (resizing the canvas when its size changes) and redraw the overlay."""
        if width is not None and (width != self.canvas.width or height != self.canvas.height):
            self.canvas.width, self.canvas.height = int(width), int(height)
            self._fit()
        self.picture.value = png
        self.redraw()

    def redraw(self) -> None:
        """Draw the picture on the bottom layer and the overlay on top, in one message."""
        bottom = self.canvas[0]
        with held(self.canvas):
            bottom.clear()
            if self.picture.value:
                bottom.draw_image(self.picture, 0, 0)
            self.redraw_overlay(hold=False)
        self.draws += 1

    def redraw_overlay(self, hold: bool = True) -> None:
        if self.overlay is None:
            return
        top = self.top
        if hold:
            with held(self.canvas):
                top.clear()
                self.overlay(top)
        else:
            top.clear()
            self.overlay(top)

    def close(self) -> None:
        self.canvas.on_client_ready(self._ready, remove=True)
        for w in [*self.canvas._canvases, self.canvas, self.picture]:
            layout = w.layout
            w.close()
            layout.close()
