"""The data-set miner: ZF's Fig. 2 over a whole data set, resumable and distributed, saved as a gallery.

``zfwidgets.mine(...)`` / ``python -m zfwidgets.mine`` (console script ``zfwidgets-mine``) mine the top-k
images of every map of several layers in one pass; ``zfwidgets.Gallery.load(path)`` opens the result.

Example:
    >>> import zfwidgets as zf
    >>> g = zf.mine("zfnet-fashion", "fashion-mnist:test", limit=200, progress=False)
    >>> g.count, g.layers, g.k
    (200, ['conv1', 'conv2', 'conv3', 'conv4', 'conv5'], 9)
    >>> len(g.plot("conv5", channels=range(4)).axes)    # Fig. 2: 4 maps, projections beside patches
    8
"""
from __future__ import annotations

from .gallery import Gallery
from .miner import mine

__all__ = ["mine", "Gallery"]


class _CallableModule(type(__import__("sys"))):
    """``import zfwidgets.mine`` makes ``zfwidgets.mine`` this package; calling it still mines."""

    def __call__(self, *args, **kwargs):
        return mine(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
