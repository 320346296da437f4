"""Figures for filter diagnosis (ZF Fig. 6): a filter grid and per-filter health, two models side by side.

Example:
    >>> fig = plot_filter_health(zfwidgets.filter_health(lens, images, other=zfwidgets.load("allconv-fashion")))
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .colours import BAND_COLOURS, DEAD_COLOUR, rgb

__all__ = ["plot_filter_health", "filter_grid"]


def filter_grid(weights: np.ndarray, dead=None, *, pad: int = 1, max_filters: int | None = None):
    """Tile F x C x kh x kw filters into one H x W x 3 float image in [0, 1].

    Each filter is shown signed and on its own scale (``0.5 + w / (2 max|w|)``: zero is mid grey);
    1 channel as grey, 3 as RGB, any other number as the mean over channels. Dead filters (``dead`` True)
    get a red frame. Returns ``(image, columns)``.
    """
    w = np.asarray(weights, float)
    if max_filters is not None:
        w = w[:max_filters]
        dead = None if dead is None else np.asarray(dead)[:max_filters]
    f, c, kh, kw = w.shape
    if c == 3:
        tiles = w.transpose(0, 2, 3, 1)
    else:
        tiles = np.repeat(w.mean(1)[..., None], 3, axis=3)
    m = np.abs(tiles).reshape(f, -1).max(1)
    m[m == 0] = 1
    tiles = 0.5 + tiles / (2 * m[:, None, None, None])
    cols = int(np.ceil(np.sqrt(f)))
    rows = int(np.ceil(f / cols))
    th, tw = kh + 2 * pad, kw + 2 * pad
    img = np.ones((rows * th, cols * tw, 3))
    for i in range(f):
        r, q = divmod(i, cols)
        y, x = r * th, q * tw
        if dead is not None and dead[i]:
            img[y:y + th, x:x + tw] = np.array(rgb(DEAD_COLOUR)) / 255.0
        img[y + pad:y + pad + kh, x + pad:x + pad + kw] = tiles[i]
    return np.clip(img, 0, 1), cols


def plot_filter_health(health, *, max_filters: int = 96) -> Figure:
    """One column per model: the filter grid (dead filters framed red), the per-filter energy share by
    frequency band (stacked: low, mid, high), and the weight norms with each filter's dead fraction."""
    results = [health] + ([health.other] if getattr(health, "other", None) is not None else [])
    fig = Figure(figsize=(5.2 * len(results), 9), layout="constrained")
    gs = fig.add_gridspec(3, len(results), height_ratios=(2.4, 1, 1))
    for col, h in enumerate(results):
        n = min(len(h.weight_norm), max_filters)
        img, _ = filter_grid(h.weights, h.dead if h.n_images else None, max_filters=n)
        ax = fig.add_subplot(gs[0, col])
        ax.imshow(img, interpolation="nearest")
        ax.set_axis_off()
        shown = "" if n == len(h.weight_norm) else f" (first {n} of {len(h.weight_norm)})"
        ax.set_title(f"{h.model}: {h.layer} filters {h.weights.shape[2]}x{h.weights.shape[3]}{shown}\n"
                     "signed, each on its own scale (grey = 0); red frame = dead", fontsize=9)
        idx = np.arange(n)
        ax = fig.add_subplot(gs[1, col])
        bottom = np.zeros(n)
        frac = np.nan_to_num(h.band_fraction[:n])
        lo, hi = h.band_edges
        labels = (f"low (r < {lo:.3g})", "mid", f"high (r >= {hi:.3g} cyc/px)")
        for b in range(3):
            ax.bar(idx, frac[:, b], bottom=bottom, color=BAND_COLOURS[b], width=0.9, label=labels[b])
            bottom += frac[:, b]
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel("energy share")
        share = h.mean_band_fraction
        ax.set_title(f"spectral energy by band; layer total low {share[0]:.0%} mid {share[1]:.0%} "
                     f"high {share[2]:.0%}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right", ncols=3)
        ax = fig.add_subplot(gs[2, col])
        colours = np.where(h.dead[:n], "#c44e52", "#777777")
        ax.bar(idx, h.weight_norm[:n], color=colours, width=0.9)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel("weight norm")
        ax.set_xlabel("filter")
        if h.n_images:
            ax2 = ax.twinx()
            ax2.plot(idx, h.dead_fraction[:n], "k.", markersize=4)
            ax2.set_ylim(-0.02, 1.02)
            ax2.set_ylabel("dead fraction (dots)")
            ax.set_title(f"{int(h.dead.sum())} dead (never active on >= {h.dead_threshold:.0%} of "
                         f"{h.n_images} images; red)", fontsize=9)
        else:
            ax.set_title("weight norm (no images given: dead filters not measured)", fontsize=9)
    return fig
