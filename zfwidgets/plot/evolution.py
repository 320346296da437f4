"""Figures for feature evolution (ZF Fig. 4): one column per training snapshot, and the stabilisation curves.

Example:
    >>> ev = zfwidgets.feature_evolution("zfnet-fashion", images[::8], ["conv1", "conv5"], channels=2,
    ...                                  progress=False)
    >>> fig = plot_feature_evolution(ev); fig2 = plot_stability(ev)
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from ..core.project import render

__all__ = ["plot_feature_evolution", "plot_stability"]


def plot_feature_evolution(ev, *, mode: str = "signed") -> Figure:
    """Rows: (layer, feature map); columns: snapshots. Each cell is the projection of the map's strongest
    activation over the image set at that snapshot; one scale per row (``signed``: zero is mid grey,
    ``abs``: |x| as a heat map). The number under a cell is its shift-invariant cosine to the last column."""
    rows = [(l, c_pos, c) for l in ev.layers for c_pos, c in enumerate(ev.channels[l])]
    S = len(ev.epochs)
    fig = Figure(figsize=(max(4.8, 1.25 * S + 1.4), 1.3 * len(rows) + 1.0), layout="constrained")
    axes = fig.subplots(len(rows), S, squeeze=False)
    for r, (l, c_pos, c) in enumerate(rows):
        p = ev.projections[l][c_pos]
        scale = float(np.abs(p).max()) if mode == "signed" else float(np.abs(p).sum(1).max())
        for s in range(S):
            ax = axes[r, s]
            ax.imshow(render(torch.from_numpy(p[s]), mode, scale or None), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            sim = ev.similarity[l][c_pos, s]
            ax.set_xlabel("—" if not np.isfinite(sim) else f"sim {sim:.2f}", fontsize=7, labelpad=1)
            if r == 0:
                ax.set_title(f"epoch {ev.epochs[s]}", fontsize=9)
            if s == 0:
                ax.set_ylabel(f"{l}\nmap {c}", fontsize=8)
    what = "signed, zero = grey" if mode == "signed" else "|x|"
    fig.suptitle(f"feature evolution (ZF Fig. 4): {ev.method} projection of each map's\n"
                 f"strongest activation; {what}; one scale per row", fontsize=9)
    return fig


def plot_stability(ev) -> Figure:
    """Mean shift-invariant cosine of each layer's projections to the final snapshot's, against the epoch;
    dotted lines: the similarity between different maps of a layer (the level of unrelated features)."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for l, s in ev.stability().items():
        ax.plot(ev.epochs, s, "o-", label=l)
    ax.set_xlabel("epoch")
    for l, b in ev.baseline.items():
        if np.isfinite(b):
            ax.axhline(b, ls=":", lw=0.8, color=ax.lines[ev.layers.index(l)].get_color())
    ax.set_ylabel("shift-invariant cosine to the final projection")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.set_title("stabilisation by layer (ZF: lower layers converge earlier)\n"
                 "dotted: similarity between different maps of the layer", fontsize=9)
    ax.legend(fontsize=8)
    return fig
