"""The one place for colours: class colours, colour scales and the fixed colours of bands, parts and marks.

Both the figures (``zfwidgets.plot``) and the panels (``zfwidgets.widgets``) take their colours from here,
so a panel and the figure of the same result agree pixel for pixel: a class has one colour wherever it is
drawn (by class index, not by its rank among the classes a map happens to show), and a map of values goes
through the same matplotlib colour map and the same value range.

Importing this module does not import matplotlib; :func:`colourise` and :func:`class_cmap` do.

Example:
    >>> class_colours(3).tolist()
    [[31, 119, 180], [255, 127, 14], [44, 160, 44]]
    >>> colourise(np.array([[0.0, 1.0]]), PROBABILITY_CMAP, 0.0, 1.0).shape
    (1, 2, 3)
"""
from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["class_colours", "class_colour_image", "class_cmap", "colourise", "rgb", "hex_colour",
           "FEATURE_CMAP", "PROBABILITY_CMAP", "CONFUSION_CMAP", "SPECTRUM_CMAP", "BAR_COLOUR", "BAND_COLOURS", "PART_COLOURS", "RANDOM_COLOUR", "DEAD_COLOUR",
           "LESION_COLOUR", "SELECTION_COLOUR"]

#: total activation of a feature map over occluder positions (ZF Fig. 7 b)
FEATURE_CMAP = "viridis"
#: probabilities, always on the range 0..1 (ZF Fig. 7 d)
PROBABILITY_CMAP = "magma"
#: a confusion matrix's counts (ZF Table 7's probes)
CONFUSION_CMAP = "Blues"
#: a filter's power spectrum, log scale (ZF Fig. 6)
SPECTRUM_CMAP = "viridis"
#: bars of a per-layer measurement, and the selected one
BAR_COLOUR = "#4c72b0"
#: spectral bands of a filter: low, mid, high (ZF Fig. 6)
BAND_COLOURS = ("#4c72b0", "#55a868", "#c44e52")
#: marked parts (ZF Fig. 8), one per part in order
PART_COLOURS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")
#: a random control mask
RANDOM_COLOUR = "#f0c000"
#: a dead filter's frame
DEAD_COLOUR = "#d91a1a"
#: a knocked-out feature map
LESION_COLOUR = "#d62728"
#: the selected tile or filter
SELECTION_COLOUR = "#ff3b30"

# matplotlib's tab10 and tab20 (the "Tableau" category palettes), as 8-bit RGB
_TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
_TAB20 = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
          "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d",
          "#17becf", "#9edae5")


def rgb(colour: str) -> tuple:
    """``"#rrggbb"`` as an ``(r, g, b)`` tuple of ints."""
    c = colour.lstrip("#")
    return tuple(int(c[i:i + 2], 16) for i in (0, 2, 4))


def hex_colour(r, g, b) -> str:
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def class_colours(n: int) -> np.ndarray:
    """``n x 3`` uint8: the colour of each class index ``0..n-1``.

    Up to 10 classes matplotlib's tab10, up to 20 tab20; beyond that tab10 followed by golden-angle hues
    (ImageNet's 1000 classes get 1000 distinct-looking colours).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    base = _TAB10 if n <= 10 or n > 20 else _TAB20
    out = [rgb(c) for c in base[:n]]
    k = 0
    while len(out) < n:
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.65, 0.9)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
        k += 1
    return np.array(out, np.uint8).reshape(n, 3)


def class_colour_image(classes, n: int) -> np.ndarray:
    """An ``H x W`` array of class indices (``0..n-1``) as ``H x W x 3`` uint8 colours."""
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() >= n):
        raise ValueError(f"class indices must lie in 0..{n - 1}")
    return class_colours(n)[classes.astype(np.int64)]


def class_cmap(n: int):
    """A matplotlib ``ListedColormap`` giving class ``k`` its colour (show class indices with
    ``vmin=-0.5, vmax=n-0.5``)."""
    from matplotlib.colors import ListedColormap
    return ListedColormap(class_colours(max(n, 1)) / 255.0)


def colourise(values, cmap: str, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Values through a matplotlib colour map as ``H x W x 3`` uint8, exactly as ``imshow(values, cmap=cmap,
    vmin=vmin, vmax=vmax)`` colours them (``None``: the data's minimum / maximum, like matplotlib)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    v = np.asarray(values, dtype=np.float64)
    norm = Normalize(vmin, vmax)
    norm.autoscale_None(v)
    return colormaps[cmap](norm(v), bytes=True)[..., :3]
