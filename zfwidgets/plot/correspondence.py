"""Figure for correspondence analysis (ZF Fig. 8 and Table 1): the masked parts, and Delta per layer.

Example:
    >>> boots = [s.image for s in zfwidgets.samples(label=9)]
    >>> boxes = {"toe": [(14, 0, 22, 8)] * 4, "heel": [(14, 20, 22, 28)] * 4}   # per part, one box per image
    >>> fig = plot_correspondence(zfwidgets.correspondence(lens, boots, boxes, progress=False))
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .colours import PART_COLOURS as COLOURS
from .colours import RANDOM_COLOUR

__all__ = ["plot_correspondence"]


def plot_correspondence(result, *, max_images: int = 8) -> Figure:
    """Top: the images with each part's box (colour per part; the first random control dashed white).
    Bottom: normalised Delta per layer for each part, and the random control's mean +- std (lower =
    more consistent change = correspondence)."""
    n = min(result.n_images, max_images)
    fig = Figure(figsize=(max(6.0, 1.5 * n), 6.0), layout="constrained")
    gs = fig.add_gridspec(2, n, height_ratios=(1, 1.6))
    for i in range(n):
        ax = fig.add_subplot(gs[0, i])
        if result.images is not None:
            ax.imshow(result.images[i], interpolation="nearest")
        for p, part in enumerate(result.parts):
            y0, x0, y1, x1 = result.boxes[part][i]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.8,
                                   edgecolor=COLOURS[p % len(COLOURS)], label=part if i == 0 else None))
        y0, x0, y1, x1 = result.control_boxes[0, 0, i]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.2, ls="--",
                               edgecolor=RANDOM_COLOUR, label="a random mask" if i == 0 else None))
        ax.set_axis_off()
        ax.set_title(f"image {i}", fontsize=8)
    if n:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside upper center",
                   ncols=len(result.parts) + 1, fontsize=8)
    ax = fig.add_subplot(gs[1, :])
    L = len(result.layers)
    rows = len(result.parts) + len(result.controls)
    width = 0.8 / rows
    xs = np.arange(L)
    for p, part in enumerate(result.parts):
        ax.bar(xs + (p - rows / 2 + 0.5) * width, result.delta_normalised[p], width,
               color=COLOURS[p % len(COLOURS)], label=part)
    for g, name in enumerate(result.controls):
        k = len(result.parts) + g
        ax.bar(xs + (k - rows / 2 + 0.5) * width, result.control_mean[g], width, yerr=result.control_std[g],
               color="#bbbbbb", hatch="//" if g else None, edgecolor="#555555", capsize=3,
               label=f"{name} (mean ± std, {result.control_delta.shape[1]} draws)")
    ax.set_xticks(xs, result.layers)
    ax.set_ylabel("Δ / (n(n-1)D)   (lower = more consistent)")
    ax.set_title(f"correspondence (ZF Table 1): sign(ε) Hamming, {result.n_images} images", fontsize=10)
    ax.legend(fontsize=8)
    return fig
