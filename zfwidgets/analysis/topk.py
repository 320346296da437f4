"""Top-k activations per feature map over a data set (ZF §4, Fig. 2; METHODS.md §3).

For each feature map ``c`` of a layer, the strongest activation of an image in ``c`` is its maximum over
positions; :func:`top_activations` finds the ``k`` images whose strongest activation is largest, in one
streaming pass (memory independent of the data set's size: per map it keeps the ``k`` best
``(value, image index, position)`` and only the winners' images), then for every hit computes the
activation's receptive-field box, the image patch inside it and the deconvnet projection of that
activation cropped to it.

Ties are broken by the image index (the earlier image wins) and, within a map, by the first position in
row-major order.

Example:
    >>> top = top_activations(lens, zfwidgets.samples(), "conv2", channels=[0, 5], k=9)
    >>> top.values.shape, top.indices[0]           # (2, 9) activations, the winners' image indices
    (torch.Size([2, 9]), tensor([31, 37, 24, 38,  8, 27, 22, 30, 39]))
    >>> h = top.hits[0][0]; h.box, h.patch.shape, h.projection.shape
    (Box(y0=9, x0=7, y1=20, x1=18, unclipped=(9, 7, 20, 18)), (11, 11, 3), torch.Size([1, 11, 11]))
    >>> top.plot()                                 # Fig. 2: projections beside patches
    <Figure size 840x290 with 4 Axes>
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch

from .._progress import progress as _progress
from ..core.inputs import DEFAULT_BATCH_SIZE, gather
from ..core.project import METHODS, project
from ._common import check_flag, check_int, check_lens
from .receptive import Box, FieldMap

__all__ = ["Hit", "TopActivations", "top_activations"]


@dataclass
class Hit:
    """One of the top images of a feature map.

    ``index``: the image's position in the data set; ``position``: ``(y, x)`` of its strongest activation
    in the map (``None`` for a fully connected unit); ``activation``: its value; ``box``: the receptive
    field; ``patch``: the displayed image inside the box (h x w x 3 uint8); ``projection``: the
    projection of that activation cropped to the box (C x h x w, signed). In a rectified layer (see
    :meth:`zfwidgets.Lens.rectified`) the activation is read after the ReLU; a hit at 0 is not ``active``
    (a map that never fires on the data set) and its projection is zeros.
    """
    index: int
    position: tuple | None
    activation: float
    box: Box
    patch: np.ndarray
    projection: torch.Tensor
    active: bool = True


@dataclass
class TopActivations:
    """The top-k images of each chosen feature map of ``layer``.

    ``values``, ``indices``: ``len(channels) x k`` (best first; ``-inf`` / ``-1`` where the data set held
    fewer than ``k`` images); ``positions``: ``len(channels) x k x 2`` (``-1`` for fully connected layers);
    ``hits[i]``: the :class:`Hit` list of ``channels[i]``; ``count``: images seen; ``method``: the
    projection rule.
    """
    layer: str
    channels: list
    k: int
    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    hits: list
    count: int
    method: str = "deconvnet"
    lens_name: str = field(default="", repr=False)

    def hits_of(self, channel: int) -> list:
        """The hits of feature map ``channel`` (a channel number of the layer, not a row of ``values``)."""
        if channel not in self.channels:
            raise ValueError(f"channel {channel} was not mined; mined channels: {self.channels}")
        return self.hits[self.channels.index(channel)]

    def plot(self, channels=None, *, mode: str = "signed", cols: int | None = None, figsize=None):
        """Fig. 2: per map, the k projections beside the k image patches (one shared scale per map)."""
        from ..plot.topk import plot_top_activations
        return plot_top_activations(self, channels, mode=mode, cols=cols, figsize=figsize)


def _channel_list(channels, n: int, layer: str) -> list:
    if channels is None:
        return list(range(n))
    if isinstance(channels, Integral) and not isinstance(channels, bool):
        channels = [channels]
    if isinstance(channels, (torch.Tensor, np.ndarray)):
        channels = channels.tolist()
    if not isinstance(channels, (list, tuple, range)) or not channels:
        raise TypeError(f"channels must be None, an int or a non-empty sequence of ints, got {channels!r}")
    out = []
    for c in channels:
        if isinstance(c, bool) or not isinstance(c, Integral):
            raise TypeError(f"channels must be ints, got {c!r} ({type(c).__name__})")
        if not 0 <= int(c) < n:
            raise ValueError(f"channel {c} is out of range: layer {layer!r} has {n} channels (0..{n - 1})")
        out.append(int(c))
    if len(set(out)) != len(out):
        raise ValueError(f"channels contains duplicates: {out}")
    return out


def top_activations(lens, images, layer, channels=None, k: int = 9, batch_size: int = DEFAULT_BATCH_SIZE,
                    progress=True, *,
                    method: str = "deconvnet") -> TopActivations:
    """The ``k`` images with the strongest activation in each feature map of ``layer`` (ZF Fig. 2).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: any iterable of images (PIL images, uint8 arrays, float tensors C x H x W taken as model
            input, ``zfwidgets.samples()`` items, ``(image, label)`` pairs), a torch ``Dataset``, a
            ``DataLoader`` (its own batches are used), or an N x C x H x W float tensor of model input.
        layer: friendly name, dotted path or module; a conv-like layer (N x C x H x W) or a fully connected one.
        channels: the feature maps to mine (an int or a list); ``None`` = all.
        k: images kept per map (ZF: 9).
        batch_size: images per forward (not used for a ``DataLoader``).
        progress: show a progress bar (``True``/``False``, or a callable ``f(done, total)``).
        method: the projection rule of the hits (``"deconvnet"``, ``"guided"`` or ``"gradient"``).

    Returns a :class:`TopActivations`; one pass over ``images``, holding at most ``k`` images per map.

    Example:
        >>> top = top_activations(lens, zfwidgets.samples(), "conv5", channels=range(8))
        >>> top.plot(channels=[0, 1, 2, 3])
        <Figure size 1680x290 with 8 Axes>
    """
    check_lens(lens)
    k = check_int("k", k, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_flag("progress", progress)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    name, path, _ = lens.resolve(layer)

    data = gather(lens, images)
    rectified = lens.rectified(name)

    best_v = best_i = best_p = None
    chosen = None
    spatial_w = None
    store: dict = {}   # image index -> the winners' model input (C x H x W, on the CPU)
    count = 0
    bar = data.batches(batch_size, progress=progress, desc=f"top-{k} {name}")
    try:
        for start, x in bar:
            _, acts = lens.run(x, [name], logits=False)
            a = acts.get(name)
            if a is None:
                raise ValueError(f"layer {name!r} did not run during the forward; choose another layer")
            if a.dim() not in (2, 4):
                raise ValueError(f"layer {name!r} has output shape {tuple(a.shape)}; expected N x C x H x W "
                                 "or N x K")
            if chosen is None:
                chosen = _channel_list(channels, a.shape[1], name)
                C = len(chosen)
                best_v = torch.full((C, k), float("-inf"))
                best_i = torch.full((C, k), -1, dtype=torch.long)
                best_p = torch.full((C, k), -1, dtype=torch.long)
                spatial_w = a.shape[3] if a.dim() == 4 else None
            a = a[:, chosen].float().cpu()
            if rectified:     # ZF's unit: the map after the layer's ReLU (ties: the first position, then image)
                a = a.clamp(min=0)
            B = a.shape[0]
            if a.dim() == 4:
                flat = a.flatten(2)
                pos = flat.argmax(2)                      # first maximum in row-major order
                val = flat.gather(2, pos.unsqueeze(2)).squeeze(2)
            else:
                val, pos = a, torch.full_like(a, -1, dtype=torch.long)
            idx = torch.arange(start, start + B).expand(len(chosen), B)
            cand_v = torch.cat([best_v, val.T], 1)
            cand_i = torch.cat([best_i, idx], 1)
            cand_p = torch.cat([best_p, pos.T], 1)
            # stable sort: equal values keep (earlier image first) order, kept entries precede new ones
            order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, :k]
            best_v, best_i, best_p = cand_v.gather(1, order), cand_i.gather(1, order), cand_p.gather(1, order)
            keep = set(best_i[best_i >= 0].tolist())
            for j in keep.difference(store):
                store[j] = x[j - start].detach().cpu().clone()
            for j in set(store).difference(keep):
                del store[j]
            count += B
    finally:
        if hasattr(bar, "close"):
            bar.close()
    if chosen is None:
        raise ValueError("no images given: images is empty")

    positions = torch.full((len(chosen), k, 2), -1, dtype=torch.long)
    if spatial_w is not None:
        ok = best_p >= 0
        positions[..., 0] = torch.where(ok, best_p // spatial_w, -1)
        positions[..., 1] = torch.where(ok, best_p % spatial_w, -1)

    fields = FieldMap(lens, name)
    hits = [[None] * k for _ in chosen]
    jobs = sorted((int(best_i[r, j]), r, j) for r in range(len(chosen)) for j in range(k) if best_i[r, j] >= 0)
    shown: dict = {}
    for index, r, j in _progress(jobs, total=len(jobs), desc="projections", enabled=progress):
        x = store[index].to(lens.device)
        if index not in shown:
            shown = {index: lens.to_display(x)}  # jobs come sorted by image: one display image at a time
        pos = None if spatial_w is None else (int(positions[r, j, 0]), int(positions[r, j, 1]))
        box = fields.box(pos)
        proj = project(lens, x, name, chosen[r], position="max" if pos is None else pos, method=method)
        hits[r][j] = Hit(index, pos, float(best_v[r, j]), box, box.crop(shown[index]).copy(),
                         box.crop(proj.pixels).cpu().clone(), proj.active)
    hits = [[h for h in row if h is not None] for row in hits]
    return TopActivations(name, chosen, k, best_v, best_i, positions, hits, count, method, lens.name)
