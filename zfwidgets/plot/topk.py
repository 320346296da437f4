"""Fig. 2 of ZF: for each feature map, its top-k projections beside the matching image patches.

Projections are drawn signed (``0.5 + x / (2 max|x|)``, zero = mid grey) or as ``|x|`` heat maps, with one
scale shared by all k projections of a map. Crops cut by the image border are placed where they lie in
the unclipped receptive field; the part outside the image is left blank (white).

Example:
    >>> top = zfwidgets.top_activations(lens, images, "conv2", channels=range(4), progress=False)
    >>> fig = plot_top_activations(top, channels=[0, 3])
    >>> import io; fig.savefig(io.BytesIO(), format="png")   # or fig.savefig("top9.png")
"""
from __future__ import annotations

import math

import numpy as np

from ..core.project import not_active_image, render

__all__ = ["plot_top_activations"]

_BLANK = 255


def new_figure(figsize):
    """A matplotlib Figure outside pyplot's registry (nothing global leaks; works with any backend)."""
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout="constrained")


def _tile_shape(hits):
    h = max(max(hit.box.unclipped[2] - hit.box.unclipped[0], hit.box.height) for hit in hits)
    w = max(max(hit.box.unclipped[3] - hit.box.unclipped[1], hit.box.width) for hit in hits)
    return max(h, 1), max(w, 1)


def _place(tile_hw, hit, img: np.ndarray, blank) -> np.ndarray:
    """``img`` (a crop h x w x 3) inside a tile of the unclipped box's size, at its place in that box."""
    th, tw = tile_hw
    tile = np.full((th, tw, 3), blank, dtype=np.uint8)
    oy = min(max(hit.box.y0 - hit.box.unclipped[0], 0), th - img.shape[0])
    ox = min(max(hit.box.x0 - hit.box.unclipped[1], 0), tw - img.shape[1])
    tile[oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
    return tile


def _mosaic(tiles, grid: int, tile_hw, gap: int = 1) -> np.ndarray:
    th, tw = tile_hw
    rows = math.ceil(len(tiles) / grid)
    out = np.full((rows * th + (rows - 1) * gap, grid * tw + (grid - 1) * gap, 3), _BLANK, dtype=np.uint8)
    for n, t in enumerate(tiles):
        r, c = divmod(n, grid)
        out[r * (th + gap): r * (th + gap) + th, c * (tw + gap): c * (tw + gap) + tw] = t
    return out


def plot_top_activations(top, channels=None, *, mode: str = "signed", cols: int | None = None, figsize=None):
    """Draw a :class:`~zfwidgets.analysis.topk.TopActivations` like ZF Fig. 2; returns the Figure.

    Args:
        top: the result of :func:`zfwidgets.top_activations`.
        channels: which mined maps to draw (default: all mined, at most 16).
        mode: ``"signed"`` (zero = mid grey) or ``"abs"`` (``|x|`` heat map) for the projections.
        cols: maps per figure row (default up to 4).

    Example:
        >>> fig = zfwidgets.top_activations(lens, images, "conv2", channels=range(4), progress=False).plot()
    """
    if mode not in ("signed", "abs"):
        raise ValueError(f"mode must be 'signed' or 'abs', got {mode!r}")
    if channels is None:
        channels = list(top.channels[:16])
    elif isinstance(channels, int):
        channels = [channels]
    channels = list(channels)
    for c in channels:
        if c not in top.channels:
            raise ValueError(f"channel {c} was not mined; mined channels: {top.channels}")
    if not channels:
        raise ValueError("no channels to plot")
    cols = min(4, len(channels)) if cols is None else int(cols)
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    rows = math.ceil(len(channels) / cols)
    grid = max(1, math.ceil(math.sqrt(top.k)))
    fig = new_figure(figsize or (cols * 4.2, rows * 2.3 + 0.6))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for n, c in enumerate(channels):
        r, col = divmod(n, cols)
        ax_p, ax_i = axes[r, 2 * col], axes[r, 2 * col + 1]
        hits = top.hits_of(c)
        if not hits:
            ax_p.set_title(f"{top.layer} #{c}: no images", fontsize=8)
            continue
        tile_hw = _tile_shape(hits)
        if mode == "signed":
            scale = max(float(h.projection.abs().max()) for h in hits)
            blank = 128
        else:
            scale = max(float(h.projection.abs().sum(0).max()) for h in hits)
            blank = 0
        proj_tiles = [_place(tile_hw, h, render(h.projection, mode, scale if scale > 0 else None) if h.active
                             else not_active_image(*h.projection.shape[-2:]), blank) for h in hits]
        patch_tiles = [_place(tile_hw, h, _rgb(h.patch), _BLANK) for h in hits]
        ax_p.imshow(_mosaic(proj_tiles, grid, tile_hw), interpolation="nearest")
        ax_i.imshow(_mosaic(patch_tiles, grid, tile_hw), interpolation="nearest")
        off = sum(not h.active for h in hits)
        ax_p.set_title(f"{top.layer} #{c}: projections" + (f" ({off} not active: crossed)" if off else ""),
                       fontsize=8)
        ax_i.set_title(f"patches (max {hits[0].activation:.3g})", fontsize=8)
    how = "signed, zero = mid grey" if mode == "signed" else "|x| heat map"
    fig.suptitle(f"Top-{top.k} activations of {top.layer} ({top.method} projections, {how}, one scale per map; "
                 "image patches of the receptive fields)", fontsize=9)
    return fig


def _rgb(patch: np.ndarray) -> np.ndarray:
    patch = np.asarray(patch)
    if patch.ndim == 2:
        patch = np.repeat(patch[:, :, None], 3, axis=2)
    return patch.astype(np.uint8)
