"""Occluder boxes: ``(y0, x0, y1, x1)`` in input pixels, half-open, clipped to the image; and the occluded images.

Example:
    >>> boxes = clip_boxes([(-4, 20, 8, 40)], 28, 28)
    >>> boxes.tolist()
    [[0, 20, 8, 28]]
    >>> occluded_batch(torch.ones(1, 1, 28, 28), boxes, torch.zeros(1))[0, 0, :8, 20:].sum()
    tensor(0.)
"""
from __future__ import annotations

import torch

__all__ = ["clip_boxes", "occluded_batch"]


def clip_boxes(boxes, H: int, W: int) -> torch.Tensor:
    """B x 4 long tensor of ``(y0, x0, y1, x1)`` clipped to the ``H x W`` image; each must keep some area.

    ``boxes``: one box (4 ints), a list of them, or a B x 4 integer tensor."""
    if isinstance(boxes, (tuple, list)) and len(boxes) == 4 and all(not isinstance(v, (tuple, list))
                                                                    for v in boxes):
        boxes = [boxes]
    b = torch.as_tensor(boxes)
    if b.dim() == 1 and b.numel() == 4:
        b = b.view(1, 4)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be B x 4 (y0, x0, y1, x1), got shape {tuple(b.shape)}")
    if torch.is_floating_point(b) or b.dtype == torch.bool:
        raise TypeError(f"boxes must hold integer pixel coordinates, got dtype {b.dtype}")
    b = b.to(torch.long).cpu()
    out = torch.stack([b[:, 0].clamp(0, H), b[:, 1].clamp(0, W), b[:, 2].clamp(0, H), b[:, 3].clamp(0, W)], 1)
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    if bool(empty.any()):
        i = int(empty.nonzero()[0])
        raise ValueError(f"box {tuple(b[i].tolist())} is empty or lies outside the {H}x{W} image "
                         "(boxes are half-open (y0, x0, y1, x1))")
    return out


def occluded_batch(x: torch.Tensor, boxes: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x`` (1 x C x H x W) repeated once per box (B x 4, clipped), each copy filled with ``fill`` (C values)
    inside its box."""
    H, W = x.shape[-2:]
    boxes = boxes.to(x.device)
    ys = torch.arange(H, device=x.device).view(1, H, 1)
    xs = torch.arange(W, device=x.device).view(1, 1, W)
    inside = ((ys >= boxes[:, 0, None, None]) & (ys < boxes[:, 2, None, None])
              & (xs >= boxes[:, 1, None, None]) & (xs < boxes[:, 3, None, None]))
    return torch.where(inside[:, None], fill.to(x.dtype).to(x.device).view(1, -1, 1, 1), x)
