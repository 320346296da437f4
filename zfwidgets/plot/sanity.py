"""Adebayo et al.'s model randomisation figure (*Sanity Checks for Saliency Maps*, Fig. 2 and 4): one row per
method, one column per randomisation step (the trained model first, then the layers re-initialised from the top
down), each cell the projection of the same unit on one image; under them the similarity to the trained
model's projection against the step, one panel per metric, one line per method (the mean over the images).

Projections are drawn as heat maps ``sum_c |x_c|``, each scaled to its own maximum (:func:`zfwidgets.render`
``mode="abs"``).

Example:
    >>> from zfwidgets.analysis.sanity import sanity_check
    >>> sc = sanity_check(lens, images[:1], methods=("guided", "gradient"),
    ...                   steps=["cascade:fc8", "cascade:conv5", "cascade:conv1"], progress=False)
    >>> fig = plot_sanity_check(sc)
    >>> len(fig.axes)           # 2 methods x (the image, trained, 3 steps), and 4 curves
    14
"""
from __future__ import annotations

import numpy as np

from ..core.project import render

__all__ = ["plot_sanity_check"]

_METRIC_TITLES = {"spearman_abs": "Spearman, |map|", "spearman": "Spearman, signed", "ssim": "SSIM",
                  "hog": "HOG (Pearson)"}


def plot_sanity_check(result, *, kind: str | None = None, image: int = 0, figsize=None):
    """Draw a :class:`~zfwidgets.analysis.sanity.SanityCheck` (``kind``: ``"cascade"``, ``"independent"`` or
    ``"labels"`` steps, default the result's own: see its ``kind_steps``; ``image``: which of the kept images'
    projections to show).

    Example:
        >>> from zfwidgets.analysis.sanity import sanity_check
        >>> sc = sanity_check(lens, images[:1], methods=("gradient",), steps=["independent:fc8"], progress=False)
        >>> fig = sc.plot(kind="independent")
    """
    from matplotlib.figure import Figure

    kind, steps = result.kind_steps(kind)
    kept = len(result.images)
    if not 0 <= image < kept:
        raise ValueError(f"image {image} has no kept projections: {kept} image(s) kept (sanity_check(keep=...))")
    methods = result.methods
    cols = len(steps) + 1
    fig = Figure(figsize=figsize or (max(6.0, 1.3 * cols), 1.4 * len(methods) + 2.6), layout="constrained")
    grid = fig.add_gridspec(len(methods) + 1, 1, height_ratios=[1] * len(methods) + [1.8])
    for r, m in enumerate(methods):
        axes = grid[r].subgridspec(1, cols).subplots()
        axes = np.atleast_1d(axes)
        axes[0].imshow(result.images[image], interpolation="nearest")
        axes[0].set_ylabel(m, fontsize=9)
        for c, s in enumerate(steps, start=1):
            axes[c].imshow(render(result.projections[m][s][image], "abs"), interpolation="nearest")
            if r == 0:
                axes[c].set_title("trained" if s == "none" else s.split(":", 1)[-1], fontsize=8)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        if r == 0:
            axes[0].set_title("image", fontsize=8)
    metrics = list(result.values[methods[0]][steps[0]])      # the result's metrics, in its order
    curves = np.atleast_1d(grid[-1].subgridspec(1, len(metrics)).subplots())
    labels = ["trained" if s == "none" else s.split(":", 1)[-1] for s in steps]
    for ax, metric in zip(curves, metrics):
        for m in methods:
            _, ys = result.curve(m, metric, kind)
            ax.plot(range(len(steps)), ys, marker=".", linewidth=1, label=m)
        ax.set_xticks(range(len(steps)), labels, rotation=90, fontsize=6)
        ax.set_title(_METRIC_TITLES.get(metric, metric), fontsize=9)
        ax.set_ylim(-1.05 if metric == "spearman" else -0.05, 1.05)
        ax.tick_params(labelsize=7)
    curves[0].legend(fontsize=6, loc="lower left")
    what = "top class score" if result.unit.startswith("class score") else f"strongest unit of {result.layer}"
    fig.suptitle(f"{'data (label)' if kind == 'labels' else kind} randomisation, {what}: |projection| (each scaled to its max); similarity to the trained "
                 "model's, mean over images", fontsize=9)
    return fig
