"""Fig. 5 of ZF: feature invariance. One row per transform (one :class:`Invariance` each); columns: the
first image transformed at a few values, the distance between original and transformed features at each
measured layer (absolute, or relative to the original's feature norm), and p(true class). One line per image.

Example:
    >>> imgs = images[::10]
    >>> rows = [zfwidgets.invariance(lens, imgs, transform=t, progress=False) for t in ("translate", "scale", "rotate")]
    >>> fig = plot_invariance(rows, relative=True)
"""
from __future__ import annotations

import numpy as np

__all__ = ["plot_invariance"]

_XLABEL = {"translate": "vertical shift (pixels)", "scale": "scale factor", "rotate": "rotation (degrees)"}


def _new_figure(figsize):
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout="constrained")


def plot_invariance(results, *, relative: bool = False, figsize=None):
    """Draw one or several :class:`~zfwidgets.analysis.invariance.Invariance` results like ZF Fig. 5.

    Args:
        results: one result or a list (one row each, e.g. translate / scale / rotate).
        relative: plot the distance divided by the norm of the original's feature vector.

    Example:
        >>> fig = zfwidgets.invariance(lens, images[::10], transform="rotate", progress=False).plot(relative=True)
    """
    rows = list(results) if isinstance(results, (list, tuple)) else [results]
    if not rows:
        raise ValueError("no invariance results to plot")
    n_layers = max(len(r.layers) for r in rows)
    cols = n_layers + 2
    fig = _new_figure(figsize or (3.3 * cols, 2.8 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, res in enumerate(rows):
        ax = axes[r, 0]
        ax.set_axis_off()
        if res.thumbnails:
            gap = np.full((res.thumbnails[0][1].shape[0], 2, 3), 255, dtype=np.uint8)
            strip = np.concatenate(sum(([im, gap] for _, im in res.thumbnails), [])[:-1], axis=1)
            ax.imshow(strip, interpolation="nearest")
            ax.set_title(f"{res.transform}: " + ", ".join(f"{v:g}" for v, _ in res.thumbnails), fontsize=8)
        series = [(f"{'relative ' if relative else ''}distance, {l}",
                   (res.relative if relative else res.distance)[l]) for l in res.layers]
        prob_name = "p(true class)" if res.labels_given else "p(predicted class of the original)"
        series.append((prob_name, res.probability))
        for c in range(1, cols):
            axes[r, c].set_visible(c - 1 < len(series) - 1 or c == cols - 1)
        targets = [axes[r, 1 + k] for k in range(len(res.layers))] + [axes[r, cols - 1]]
        for ax, (title, data) in zip(targets, series):
            data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
            for i in range(data.shape[0]):
                name = res.label_names[i] if i < len(res.label_names) else f"image {i}"
                ax.plot(res.values, data[i], marker=".", linewidth=1, label=name)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(_XLABEL.get(res.transform, "value"), fontsize=8)
            ax.tick_params(labelsize=7)
            if title.startswith("p("):
                ax.set_ylim(-0.02, 1.02)
        if data.shape[0] <= 10:
            targets[-1].legend(fontsize=6, loc="best")
    return fig
