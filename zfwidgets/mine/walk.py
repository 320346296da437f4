"""Projections in bulk: every winner of a chunk of images from one recorded forward, the seeds walked
down their receptive fields together.

On a sequential chain of convolutions, max poolings, ReLUs and dropouts (the bundled models, AlexNet,
VGG) a unit's top-down signal lives in a window that grows by each layer's kernel on the way down. All
seeds of one layer have windows of the same size (only their offsets differ), so they go down as one
batch: a transposed convolution of the windows, the unpooling through the recorded switches gathered in
each window, the ReLU rule with the recorded masks gathered in each window, and positions outside the
input (padding) zeroed at every step. The result of each seed is its projection over its receptive field,
the box the window ends as, clipped to the input.

Branching models (ResNets, DenseNets, GoogLeNet, MobileNetV2) take the cropped backward on the model's graph,
batched the same way (:mod:`zfwidgets.core.backward`); the rest :func:`zfwidgets.project` per hit (hits of one
image share the lens's cached forward). :func:`zfwidgets.receptive_field` gives the boxes.

Example:
    >>> plan = chain_plan(lens, ["conv5"])
    >>> rec = record(plan, x, "deconvnet")                 # one forward of the chunk (here one image)
    >>> proj, origin, (h, w), full = walk(plan, rec, "conv5", [0, 0], [3, 7], [1, 2], [1, 0], "deconvnet")
    >>> proj.shape, full           # two seeds; conv5's fields cover the 28 x 28 input: whole-input projections
    (torch.Size([2, 1, 28, 28]), True)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.backward import window_of
from ..core.capture import ModelGuard
from ..core.geometry import grow, grow_hw, window_params
from ..core.layers import sequential_modules
from ..core.rules import RULES

__all__ = ["chain_plan", "record", "walk"]

_PASS = (nn.Dropout, nn.Dropout2d, nn.Identity)

# multiply-adds so far of the walks' transposed convolutions and of the recorded forwards' convolutions
# (benchmarks read them: the projection work's bound)
MACS = [0, 0]


def chain_plan(lens, paths):
    """``(modules up to the deepest of paths, {path: index})`` when the walk applies to every layer, else None."""
    chain = sequential_modules(lens.model)
    if chain is None:
        return None
    where = {p: i for i, (p, _) in enumerate(chain)}
    if any(p not in where for p in paths):
        return None
    last = max(where[p] for p in paths)
    mods = [m for _, m in chain[: last + 1]]
    for p in paths:
        if not isinstance(chain[where[p]][1], nn.Conv2d):
            return None
    for m in mods:
        if any(isinstance(m, t) and type(m).forward is not t.forward for t in (nn.Conv2d, nn.MaxPool2d, nn.ReLU)):
            return None  # a subclass with its own forward: only autograd knows its backward
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                return None
        elif not isinstance(m, (nn.MaxPool2d, nn.ReLU) + _PASS):
            return None
    return mods, {p: where[p] for p in paths}


def record(plan, x: torch.Tensor, method: str, upto: int | None = None, shapes_of=None) -> dict:
    """One forward of the batch ``x`` through the chain (modules ``0..upto``): input shapes, max-pool switches,
    ReLU masks.

    A rule that reads no ReLU mask (the deconvnet rule) needs the forward only up to the last max pooling at or
    below ``upto``; the input shapes of the modules above come from ``shapes_of`` (the chain's shapes for one
    image, which do not depend on the image).
    """
    mods, _ = plan
    upto = len(mods) - 1 if upto is None else upto
    stop = upto
    masks_read = RULES[method].reads_forward_mask
    if not masks_read and shapes_of is not None:
        stop = max((i for i in range(upto + 1) if isinstance(mods[i], nn.MaxPool2d)), default=-1)
    shapes, switches, masks = [], {}, {}
    model_like = nn.ModuleList(mods)
    with torch.inference_mode(), ModelGuard(model_like):
        h = x
        for i, m in enumerate(mods[: stop + 1]):
            shapes.append(tuple(h.shape))
            if isinstance(m, nn.MaxPool2d):
                h, switches[i] = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation,
                                              ceil_mode=m.ceil_mode, return_indices=True)
            elif isinstance(m, nn.ReLU):
                if masks_read:
                    masks[i] = h > 0
                h = F.relu(h)
            else:
                h = m(h)
                if isinstance(m, nn.Conv2d):
                    MACS[1] += m.weight.numel() * h.shape[0] * h.shape[2] * h.shape[3]
            if h.dim() != 4:
                raise ValueError(f"module {i} of the chain returned shape {tuple(h.shape)}; expected N x C x H x W")
    for i in range(stop + 1, upto + 1):
        shapes.append((x.shape[0], *shapes_of[i][1:]))
    return {"shapes": shapes, "switches": switches, "masks": masks}


def walk(plan, rec: dict, path: str, rows, channels, ys, xs, method: str):
    """Projections of unit seeds at ``(channels[j], ys[j], xs[j])`` of layer ``path`` for images ``rows[j]``.

    Returns ``(signal, unclipped (y0, x0) per seed n x 2, (h, w), full)``: with ``full`` False, ``signal`` is
    each seed's projection over its unclipped receptive field ``n x C_in x h x w`` (zero outside the input);
    with ``full`` True it is the whole input ``n x C_in x H x W`` (the walk went over to whole maps once its
    windows were as large as the maps: then it is a plain batched backward).
    """
    mods, where = plan
    top = where[path]
    n = len(rows)
    dev = mods[top].weight.device
    rows, channels = torch.as_tensor(rows, device=dev), torch.as_tensor(channels, device=dev)
    y0, x0 = torch.as_tensor(ys, device=dev).clone(), torch.as_tensor(xs, device=dev).clone()
    seeds = torch.arange(n, device=dev)
    C = mods[top].out_channels
    g = torch.zeros(n, C, 1, 1, device=dev, dtype=mods[top].weight.dtype)
    g[seeds, channels, 0, 0] = 1.0
    h = w = 1
    full = False   # whole maps (n x C x H x W) instead of windows
    rule = RULES[method]
    with torch.inference_mode():
        for i in range(top, -1, -1):
            m = mods[i]
            H, W = rec["shapes"][i][2:]
            if isinstance(m, nn.ReLU):
                positive = None
                if rule.reads_forward_mask:
                    if full:
                        positive = rec["masks"][i][rows]
                    else:
                        positive, _ = window_of(rec["masks"][i], rows, y0, x0, h, w)
                    positive = positive.to(g.dtype)
                g = rule.backward(g, positive)
            elif isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                k, s, p, d, _ = window_params(m)
                ny, nx = grow_hw((h, w), k, s, d)
                ay, ax = y0 * s[0] - p[0], x0 * s[1] - p[1]
                if full:
                    if isinstance(m, nn.Conv2d):
                        oh, ow = g.shape[2:]
                        op = (H - (grow(oh, k[0], s[0], d[0]) - 2 * p[0]),
                              W - (grow(ow, k[1], s[1], d[1]) - 2 * p[1]))
                        MACS[0] += m.weight.numel() * g.shape[0] * g.shape[2] * g.shape[3]
                        g = F.conv_transpose2d(g, m.weight, None, s, p, op, m.groups, d)
                    else:
                        out = g.new_zeros(n, g.shape[1], H * W)
                        out.scatter_add_(2, rec["switches"][i][rows].flatten(2), g.flatten(2))
                        g = out.view(n, g.shape[1], H, W)
                elif isinstance(m, nn.Conv2d):
                    MACS[0] += m.weight.numel() * g.shape[0] * g.shape[2] * g.shape[3]
                    g = F.conv_transpose2d(g, m.weight, None, s, 0, 0, m.groups, d)
                else:
                    idx, inside = window_of(rec["switches"][i], rows, y0, x0, h, w)
                    local = (idx // W - ay[:, None, None, None]) * nx + (idx % W - ax[:, None, None, None])
                    local = torch.where(inside, local, torch.zeros_like(local))
                    gz = torch.where(inside, g, torch.zeros_like(g))
                    out = g.new_zeros(n, g.shape[1], ny * nx)
                    out.scatter_add_(2, local.flatten(2), gz.flatten(2))
                    g = out.view(n, g.shape[1], ny, nx)
                y0, x0, h, w = ay, ax, ny, nx
                if not full and h >= H and w >= W:
                    # as large as the map: the in-bounds part of each window placed in a whole map
                    g, inside = window_of(g, seeds, -y0, -x0, H, W)
                    g = g * inside.to(g.dtype)
                    full = True
                elif not full:
                    iy = y0[:, None] + torch.arange(h, device=dev)[None]
                    ix = x0[:, None] + torch.arange(w, device=dev)[None]
                    keep = (((iy >= 0) & (iy < H))[:, None, :, None] & ((ix >= 0) & (ix < W))[:, None, None, :])
                    g = g * keep.to(g.dtype)     # the part of the window in the padding carries no signal
            # dropout (eval) and identity pass the signal on unchanged
    return g, torch.stack([y0, x0], 1), (h, w), full
