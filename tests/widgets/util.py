"""Helpers for the panel tests: fire canvas events the way the kernel delivers them, read the numbers the
panels display (PNG pixels, the probabilities HTML), and check that nothing is left behind."""
import asyncio
import io
import re

import numpy as np
from ipywidgets.widgets import widget as _widget_module
from PIL import Image



def fire(canvas, event: str, x: float, y: float) -> None:
    """Deliver a canvas event as the frontend's comm message would (``mouse_down``, ``mouse_move``, ...).

    For a ``MultiCanvas`` the message goes to the MultiCanvas model, which routes it to its top layer's
    callbacks: the same path as in a browser.
    """
    canvas._handle_custom_msg({"event": event, "x": float(x), "y": float(y)}, [])


def png_pixels(data: bytes) -> np.ndarray:
    """Decode PNG bytes to an array (palette images to their indices)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return np.asarray(Image.open(io.BytesIO(data)))


def png_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def read_top1(html: str) -> tuple:
    """``(name, index, p)`` from the ``span.zf-top1`` of a probabilities HTML."""
    m = re.search(r'<span class="zf-top1" data-class="([^"]*)" data-index="(\d+)" data-p="([0-9.]+)">', html)
    assert m, html
    return m.group(1), int(m.group(2)), float(m.group(3))


def read_box(html: str) -> tuple:
    m = re.search(r'<span class="zf-box" data-box="(\d+),(\d+),(\d+),(\d+)">', html)
    assert m, html
    return tuple(int(v) for v in m.groups())


def expected_box(x: float, y: float, scale: int, size: int, H: int, W: int) -> tuple:
    """The occluder box for a mouse at canvas pixel (x, y), written out independently of the panel."""
    cy, cx = y / scale, x / scale
    y0 = int(np.clip(np.floor(cy - size / 2 + 0.5), 0, H - size))
    x0 = int(np.clip(np.floor(cx - size / 2 + 0.5), 0, W - size))
    return (y0, x0, y0 + size, x0 + size)


def open_widget_ids() -> set:
    """Model ids of every open widget (ipywidgets' registry)."""
    return set(_widget_module._instances)


async def idle(seconds: float = 0.05):
    """Let the loop go quiet (no pushes) long enough for a drain to run: iterations, then real time."""
    for _ in range(10):
        await asyncio.sleep(0)
    await asyncio.sleep(seconds)
    for _ in range(10):
        await asyncio.sleep(0)
