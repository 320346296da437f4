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
    """Model ids of every open widget (ipywidgets' registry), but ipycanvas's process-wide canvas manager
    (made with the process's first canvas, never closed: not a panel's leak)."""
    return {k for k, w in _widget_module._instances.items() if type(w).__name__ != "_CanvasManager"}


async def idle(seconds: float = 0.05):
    """Let the loop go quiet (no pushes) long enough for a drain to run: iterations, then real time."""
    for _ in range(10):
        await asyncio.sleep(0)
    await asyncio.sleep(seconds)
    for _ in range(10):
        await asyncio.sleep(0)


def model_state(model):
    """Everything a panel must leave as it found it: hooks of every module, ``training`` flags,
    ``requires_grad`` flags and the weights (bit for bit)."""
    import torch
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(getattr(m, "_backward_pre_hooks", {})), m.training) for n, m in model.named_modules()]
    params = {k: (v.detach().clone(), v.requires_grad) for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return hooks, params, buffers


def assert_same_model_state(model, before):
    import torch
    hooks, params, buffers = model_state(model)
    assert hooks == before[0], "hooks or training flags changed"
    assert params.keys() == before[1].keys() and buffers.keys() == before[2].keys()
    for k, (v, rg) in params.items():
        assert rg == before[1][k][1] and torch.equal(v, before[1][k][0]), k
    for k, v in buffers.items():
        assert torch.equal(v, before[2][k]), k


def small_torchvision(arch: str, side: int, classes: int = 5):
    """A torchvision architecture with seeded random weights on small inputs (AlexNet 64 px, ResNet-18 32 px)."""
    import torch
    import torchvision
    import zfwidgets
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=classes).eval()
    return zfwidgets.Lens(model, input_size=(3, side, side), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                          class_names=[f"c{k}" for k in range(classes)], name=arch)


def rgb_images(n: int, side: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]
