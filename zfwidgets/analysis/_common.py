"""Helpers the analysis functions share: argument checks, default layers and a layer-capturing forward.
Images, labels, boxes and fills come in through the core's input layer, :mod:`zfwidgets.core.inputs`.

Everything here is private to ``zfwidgets.analysis``; other analysis modules may import it.

Example:
    >>> default_conv_layer(lens), last_hidden_layer(lens)
    ('conv5', 'fc7')
"""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch

__all__ = ["check_lens", "check_int", "check_flag", "progress_flag", "run_layers", "default_conv_layer",
           "first_conv_layer", "last_hidden_layer", "layer_names"]


def check_lens(lens):
    """``lens`` itself; ``TypeError`` unless it is a :class:`zfwidgets.Lens`."""
    from ..lens import Lens
    if not isinstance(lens, Lens):
        raise TypeError(f"expected a zfwidgets.Lens as the first argument, got {type(lens).__name__}; "
                        "wrap a model with zfwidgets.Lens(model, input_size=...) or use zfwidgets.load(name)")
    return lens


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int; ``TypeError`` for a non-integer (bools too), ``ValueError`` below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_flag(name: str, value) -> None:
    if not (isinstance(value, bool) or callable(value)):
        raise TypeError(f"{name} must be True, False or a callable f(done, total), got {type(value).__name__}")


def progress_flag(progress, show_progress=None):
    """The progress setting: ``progress``, or its older alias ``show_progress`` when given."""
    flag = progress if show_progress is None else show_progress
    check_flag("progress", flag)
    return flag


def run_layers(lens, x: torch.Tensor, layers, *, logits: bool = False):
    """``lens.run`` under ``torch.no_grad`` (inference_mode trips the capture's version check on some models).

    Returns ``(logits or None, {friendly name: detached output})``; with ``logits=False`` the forward stops
    once the asked layers are computed. The model's hooks and ``training`` flags are restored on exit; a
    layer that did not run is a ``ValueError``.
    """
    out, acts = lens.run(x, layers, logits=logits, inference=False)
    missing = [n for n in (lens.resolve(l)[0] for l in layers) if n not in acts]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run during the forward; choose other layers")
    return out, acts


def default_conv_layer(lens) -> str:
    """The name of the lens's last convolution (ZF's 'top conv layer')."""
    return [i.name for i in lens.table if i.kind == "conv"][-1]


def first_conv_layer(lens) -> str:
    """The name of the lens's lowest convolution (ZF's layer 1)."""
    return [i.name for i in lens.table if i.kind == "conv"][0]


def last_hidden_layer(lens) -> str:
    """The layer before the last fully connected one (ZF's layer 7); the last conv layer if there is no fc."""
    names = lens.layers
    fcs = [k for k, i in enumerate(lens.table) if i.kind == "fc"]
    if fcs and fcs[-1] > 0:
        return names[fcs[-1] - 1]
    return default_conv_layer(lens)


def layer_names(lens, layers) -> list:
    """Resolved friendly names of ``layers`` (one layer or a sequence of them)."""
    if isinstance(layers, (str, torch.nn.Module)):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"layers must be a layer name, a module, or a non-empty list of them; got {layers!r}")
    return [lens.resolve(l)[0] for l in layers]
