"""What the lens reads from a model's output: N x K class scores.

Every analysis asks "what does this do to the score of class k"; the lens's *output selector* says where that
score is in what the model returns. ``Lens(model, output=...)`` takes

- ``None``: the model returns the N x K scores itself (a classifier);
- a key (``"logits"``, ``"out"``) or an index (``0``): the entry of a dict, tuple or list output;
- :class:`SegmentationScores`: an N x K x H x W map (a segmentation model) pooled to each class's score over
  the image, or over a region (a box or a mask), optionally after picking an entry (``key="out"``);
- any callable from the model's output to N x K scores.

Example:
    >>> pick = output_selector("logits")
    >>> pick({"logits": torch.ones(2, 3), "aux": torch.zeros(2, 3)}).shape
    torch.Size([2, 3])
    >>> seg = SegmentationScores(box=(0, 0, 2, 2))              # mean over the top-left 2 x 2 pixels
    >>> seg(torch.arange(16.).view(1, 1, 4, 4)).tolist()
    [[2.5]]
"""
from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral

import numpy as np
import torch

from .inputs import as_box

__all__ = ["OutputSelector", "Pick", "SegmentationScores", "output_selector", "describe_output", "suggest_output"]


class OutputSelector:
    """A callable from a model's output to its N x K class scores (subclasses: :class:`Pick`,
    :class:`SegmentationScores`)."""

    def __call__(self, output) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _pick(output, key):
    if isinstance(output, Mapping):
        if key not in output:
            raise ValueError(f"output={key!r}: the model returns a dict with keys {list(output)}; pick one of them")
        return output[key]
    if isinstance(output, (tuple, list)):
        if not isinstance(key, Integral) or isinstance(key, bool) or not -len(output) <= key < len(output):
            raise ValueError(f"output={key!r}: the model returns a {type(output).__name__} of {len(output)} "
                             f"entries; pick one by index (0 to {len(output) - 1})")
        return output[key]
    raise ValueError(f"output={key!r} picks an entry, but the model returns a {describe_output(output)}")


class Pick(OutputSelector):
    """The entry ``key`` of a dict output, or the entry at index ``key`` of a tuple or list output."""

    def __init__(self, key):
        if not isinstance(key, (str, Integral)) or isinstance(key, bool):
            raise TypeError(f"a key must be a str (dict output) or an int (tuple output), got {key!r}")
        self.key = key

    def __call__(self, output):
        return _pick(output, self.key)

    def __repr__(self):
        return f"Pick({self.key!r})"


class SegmentationScores(OutputSelector):
    """A segmentation model's N x K x H x W class map as N x K class scores: each class's score pooled over the
    image, or over a region of it, so that occlusion, invariance and lesions answer "what does this do to the
    score of class k *there*".

    Args:
        box: ``(y0, x0, y1, x1)`` (half-open, in the pixels of the output map: the input's, for models that
            upsample to it, as torchvision's do); ``None`` for the whole image.
        mask: an H x W array or tensor, bool or non-negative weights (a weighted mean); instead of ``box``.
        key: the entry holding the map when the model returns a dict or tuple (torchvision's ``"out"``).
        reduce: ``"mean"`` (the default) or ``"max"`` over the region.

    Example:
        >>> seg = SegmentationScores(key="out", mask=torch.eye(4, dtype=torch.bool))
        >>> seg({"out": torch.arange(16.).view(1, 1, 4, 4)}).tolist()   # the diagonal's mean
        [[7.5]]
    """

    def __init__(self, box=None, mask=None, *, key=None, reduce: str = "mean"):
        if box is not None and mask is not None:
            raise ValueError("give a box or a mask, not both")
        if reduce not in ("mean", "max"):
            raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask.detach())
            if m.dim() != 2:
                raise ValueError(f"mask must be H x W, got shape {tuple(m.shape)}")
            m = m.to(torch.float64) if m.dtype == torch.bool or not torch.is_floating_point(m) else m.double()
            if not torch.isfinite(m).all() or bool((m < 0).any()) or not bool((m > 0).any()):
                raise ValueError("mask must be finite, non-negative and not empty")
            mask = m
        self.box, self.mask, self.key, self.reduce = box, mask, key, reduce

    def __call__(self, output) -> torch.Tensor:
        if self.key is not None:
            output = _pick(output, self.key)
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            hint = "" if self.key is not None or isinstance(output, torch.Tensor) else \
                f" (pass key=: {suggest_output(output)})"
            raise ValueError(f"SegmentationScores needs an N x K x H x W class map; the model returns a "
                             f"{describe_output(output)}{hint}")
        H, W = output.shape[-2:]
        if self.mask is not None:
            if tuple(self.mask.shape) != (H, W):
                raise ValueError(f"the mask is {tuple(self.mask.shape)} but the class map is {H} x {W}")
            m = self.mask.to(output.device, output.dtype)
            if self.reduce == "max":
                return output.masked_fill(m == 0, float("-inf")).amax((-2, -1))
            return (output * m).sum((-2, -1)) / m.sum()
        if self.box is not None:
            y0, x0, y1, x1 = as_box(self.box, H, W, where="SegmentationScores")
            output = output[..., y0:y1, x0:x1]
        return output.amax((-2, -1)) if self.reduce == "max" else output.mean((-2, -1))

    def __repr__(self):
        where = f"box={self.box!r}" if self.box is not None else "mask=..." if self.mask is not None else ""
        parts = [p for p in (where, f"key={self.key!r}" if self.key is not None else "",
                             f"reduce={self.reduce!r}" if self.reduce != "mean" else "") if p]
        return f"SegmentationScores({', '.join(parts)})"


def output_selector(output):
    """``output=`` as a callable from the model's output to N x K scores, or ``None`` (the output itself):
    a str or int becomes :class:`Pick`, a callable is kept."""
    if output is None or isinstance(output, OutputSelector):
        return output
    if isinstance(output, (str, Integral)) and not isinstance(output, bool):
        return Pick(output)
    if callable(output):
        return output
    raise TypeError(f"output= takes a key (dict output), an index (tuple output), SegmentationScores(...) or a "
                    f"callable from the model's output to N x K scores; got {type(output).__name__}")


def describe_output(out) -> str:
    """A short description of a model output's structure: ``"dict with keys ['out', 'aux']"``."""
    if isinstance(out, torch.Tensor):
        return f"tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"dict with keys {list(out)}"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(tuple(o.shape).__repr__() if isinstance(o, torch.Tensor) else type(o).__name__
                          for o in out[:4])
        return f"{type(out).__name__} of {len(out)} ({inner}{', ...' if len(out) > 4 else ''})"
    return type(out).__name__


def suggest_output(out, *, prefix: str = "zf.") -> str:
    """Which ``output=`` reads class scores from ``out``, in words (for the lens's error messages)."""
    seg = (f"output={prefix}SegmentationScores({{}}) (each class's mean score over the image; box=(y0, x0, y1, x1) "
           "or mask= for a region)")
    if isinstance(out, torch.Tensor):
        if out.dim() == 4:
            return "pass " + seg.format("")
        return f"pass output= a callable from the output to N x K scores (the output is {tuple(out.shape)})"
    if isinstance(out, Mapping):
        keys = list(out)
        two = [k for k in keys if isinstance(out[k], torch.Tensor) and out[k].dim() == 2]
        four = [k for k in keys if isinstance(out[k], torch.Tensor) and out[k].dim() == 4]
        if two:
            return f"pass Lens(model, output={two[0]!r})"
        if four:
            return "pass " + seg.format(f"key={four[0]!r}")
        return f"pass Lens(model, output=<one of {keys}>) or a callable"
    if isinstance(out, (tuple, list)):
        two = [i for i, o in enumerate(out) if isinstance(o, torch.Tensor) and o.dim() == 2]
        four = [i for i, o in enumerate(out) if isinstance(o, torch.Tensor) and o.dim() == 4]
        if two:
            return f"pass Lens(model, output={two[0]})"
        if four:
            return "pass " + seg.format(f"key={four[0]}")
    return "pass output= a callable from the model's output to N x K scores"
