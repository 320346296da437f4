"""Fig. 7 of ZF: occlusion sensitivity as maps over the occluder's position.

Panels: (a) the input with the occluder drawn at its first position; (b) the total activation of the
strongest feature map of the chosen layer; (c) the deconvnet projection of that map's strongest activation
(signed, zero = mid grey); (d) the probability of the target class; (e) the most probable class. The maps
(b), (d), (e) are drawn with every value at its occluder's centre, in image coordinates.

Example:
    >>> fig = plot_occlusion(zfwidgets.occlusion(lens, img, size=8, stride=2))
"""
from __future__ import annotations


from .colours import FEATURE_CMAP, PROBABILITY_CMAP, class_cmap, class_colours

__all__ = ["plot_occlusion"]


def _new_figure(figsize):
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout="constrained")


def _extent(occ):
    sh, sw = occ.size
    H, W = occ.display.shape[:2]
    cy = [min(y + sh, H) / 2 + y / 2 for y in occ.ys.tolist()]
    cx = [min(x + sw, W) / 2 + x / 2 for x in occ.xs.tolist()]
    dy = (cy[1] - cy[0]) / 2 if len(cy) > 1 else sh / 2
    dx = (cx[1] - cx[0]) / 2 if len(cx) > 1 else sw / 2
    return (cx[0] - dx - 0.5, cx[-1] + dx - 0.5, cy[-1] + dy - 0.5, cy[0] - dy - 0.5)


def plot_occlusion(occ, *, figsize=None):
    """Draw an :class:`~zfwidgets.analysis.occlusion.OcclusionMaps` like ZF Fig. 7; returns the Figure.

    Example:
        >>> fig = zfwidgets.occlusion(lens, img, size=8, stride=2, progress=False).plot()
    """
    from matplotlib.patches import Patch, Rectangle

    fig = _new_figure(figsize or (15, 3.4))
    axes = fig.subplots(1, 5)
    H, W = occ.display.shape[:2]
    ext = _extent(occ)

    ax = axes[0]
    ax.imshow(occ.display, interpolation="nearest")
    y0, x0, y1, x1 = (int(v) for v in occ.boxes[0, 0])
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_title(f"(a) input; occluder {occ.size[0]}x{occ.size[1]}, stride {occ.stride[0]}", fontsize=9)

    ax = axes[1]
    im = ax.imshow(occ.feature_map.numpy(), extent=ext, cmap=FEATURE_CMAP, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(f"(b) total activation, {occ.layer} map {occ.channel}\n(unoccluded {occ.base_feature_map:.3g})",
                 fontsize=9)

    ax = axes[2]
    ax.imshow(occ.projection.to_image("signed"), interpolation="nearest")
    ax.set_title(f"(c) {occ.projection.method} projection of map {occ.channel}\n(signed, zero = grey)", fontsize=9)

    ax = axes[3]
    im = ax.imshow(occ.probability.numpy(), extent=ext, cmap=PROBABILITY_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(f"(d) p({occ.class_name(occ.target)})\n(unoccluded {occ.base_probability:.3f})", fontsize=9)

    ax = axes[4]
    classes = sorted(set(occ.top_class.flatten().tolist()))
    K = len(occ.class_names) or (max(classes) + 1 if classes else 1)
    colours = class_colours(K) / 255.0          # a class's colour by its index, as in the panel
    ax.imshow(occ.top_class.numpy(), extent=ext, cmap=class_cmap(K), vmin=-0.5, vmax=K - 0.5,
              interpolation="nearest")
    ax.legend(handles=[Patch(color=colours[c], label=occ.class_name(c)) for c in classes],
              fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, frameon=False)
    ax.set_title(f"(e) most probable class\n(unoccluded: {occ.class_name(occ.base_class)})", fontsize=9)
    for ax in axes:
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
