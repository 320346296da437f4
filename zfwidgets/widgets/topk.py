"""The top-k gallery: mine a data set for each feature map's strongest activations (ZF Fig. 2) and browse
them, projections beside image patches; click a tile to open that image, layer, channel and position in an
:class:`~zfwidgets.widgets.explorer.Explorer`.

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")
    >>> gallery = zfwidgets.TopGallery(lens, zfwidgets.samples(), "conv3", channels=range(4), autostart=False)
    >>> tops = gallery.mine()       # a displayed gallery starts mining by itself (autostart)
    >>> sorted(gallery.state)
    ['channel', 'channels', 'error', 'hits', 'layer', 'mined', 'opened']
"""
from __future__ import annotations

import html
import math

import ipywidgets as W
import numpy as np

from ..core.project import not_active_image
from ._common import Panel, display_factor, png_bytes, upscale

__all__ = ["TopGallery"]


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _mine(lens, images, layer, channels, k, batch_size, progress, method):
    from ..analysis.topk import top_activations
    return top_activations(lens, images, layer, channels=channels, k=k, batch_size=batch_size,
                           progress=progress, method=method)


def _render(pixels, scale):
    from ..core.project import render
    return render(pixels, "signed", scale if scale > 0 else None)


def _image_at(images, index: int):
    """Image ``index`` of the mined collection (a list, a Dataset or a tensor), for the explorer."""
    try:
        item = images[index]
    except (TypeError, KeyError, IndexError):
        raise TypeError(f"cannot open image {index}: the mined images ({type(images).__name__}) have no random "
                        "access; pass a list or a Dataset to open tiles in the explorer") from None
    return item


class TopGallery(Panel):
    """Top-``k`` activations of the feature maps of ``layer`` over ``images``, browsed one map at a time.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: the images to mine (anything :func:`zfwidgets.top_activations` takes; a list or a Dataset
            lets tiles open in the explorer).
        layer: the layer (friendly name, path or module).
        channels: the maps to mine (default all).
        k: hits per map (ZF: 9).
        method: the projection rule of the tiles.
        explorer: an :class:`Explorer` to open tiles in (default: one made on the first click, shown below).
        autostart: mine as soon as the panel is displayed in a kernel (else press "mine" or call :meth:`mine`).

    ``TopGallery(gallery, layer)`` browses a gallery mined by :func:`zfwidgets.mine` (``zfwidgets.Gallery.load``)
    without the model or the data set; "mine" then reads the layer's maps from the file.

    CSS classes: ``zf-topk``, ``zf-mine`` (button), ``zf-progress``, ``zf-channel`` (slider over the mined maps),
    ``zf-top-projections`` / ``zf-top-patches`` (clickable canvases, k tiles each), ``zf-top-info``, ``zf-error``.

    ``state``: ``layer``, ``channel``, ``channels`` (mined), ``mined`` (bool), ``hits`` (the channel's
    ``[(image index, position, activation)]``), ``opened`` (the last tile opened), ``error``.

    Example:
        >>> gallery = zfwidgets.TopGallery(lens, zfwidgets.samples(), "conv2", channels=[0, 1], autostart=False)
        >>> tops = gallery.mine()
        >>> gallery.state["channels"], gallery.state["mined"]
        ([0, 1], True)
    """

    def __init__(self, lens, images=None, layer=None, *, channels=None, k: int = 9, method: str = "deconvnet",
                 batch_size: int = 64, explorer=None, autostart: bool = True, tile_size: int = 72):
        # a mined gallery file (zfwidgets.Gallery) in place of the lens: browse it without the data set
        self.gallery = lens if type(lens).__name__ == "Gallery" and hasattr(lens, "top") else None
        if self.gallery is not None:
            layer = self.gallery.layers[-1] if layer is None else layer
            method, k, lens = self.gallery.rule, self.gallery.k, None
        elif images is None or layer is None:
            raise TypeError("TopGallery needs (lens, images, layer), or a zfwidgets.Gallery")
        super().__init__(lens)
        self.add_class("zf-topk")
        try:
            self._build(images, layer, channels, k, method, batch_size, explorer, autostart, tile_size)
        except BaseException:
            self.close()
            raise

    def _build(self, images, layer, channels, k, method, batch_size, explorer, autostart, tile_size):
        self.images = images
        self.layer = self.lens.resolve(layer)[0] if self.gallery is None else self.gallery.top(layer, []).layer
        self.channels_asked = channels
        self.k, self.method, self.batch_size = k, method, batch_size
        self.tile_size = tile_size
        self.explorer = explorer
        self._own_explorer = False
        self.result = None
        self.channel = None
        self.opened = None
        self._geometry = None

        self.mine_button = self._own(W.Button(description="mine", icon="search"))
        self.mine_button.add_class("zf-mine")
        self.progress = self._own(W.FloatProgress(value=0.0, min=0.0, max=1.0, description="mining"))
        self.progress.add_class("zf-progress")
        self.status = self._own(W.HTML(f"top-{k} of <b>{html.escape(self.layer)}</b>: not mined yet"))
        self.channel_slider = self._own(W.SelectionSlider(options=[0], value=0, description="channel",
                                                          continuous_update=False, disabled=True))
        self.channel_slider.add_class("zf-channel")
        self.proj_canvas = self._picture_canvas(1, 1, css_class="zf-top-projections")
        self.patch_canvas = self._picture_canvas(1, 1, css_class="zf-top-patches")
        self._own(self.proj_canvas.canvas), self._own(self.patch_canvas.canvas)
        self.info = self._own(W.HTML())
        self.info.add_class("zf-top-info")
        self.explorer_box = self._own(W.VBox())

        self._on_click(self.mine_button, self.mine, "mining")
        self._observe(self.channel_slider, self._set_channel, "channel")
        self._on_canvas(self.proj_canvas.canvas, "mouse_down", self._tile_clicked, "tile click")
        self._on_canvas(self.patch_canvas.canvas, "mouse_down", self._tile_clicked, "tile click")

        grids = self._own(W.HBox([
            self._own(W.VBox([self._own(W.HTML("<b>projections</b>")), self.proj_canvas.canvas])),
            self._own(W.VBox([self._own(W.HTML("<b>image patches</b>")), self.patch_canvas.canvas]))]))
        self.children = [self._own(W.HBox([self.mine_button, self.progress])), self.status, self.channel_slider,
                         grids, self.info, self.explorer_box, self.error_area]
        if autostart:
            self._start_after_display(self.mine, "mining")

    # ----- mining --------------------------------------------------------------------------------
    def mine(self):
        """Mine the top-k of every chosen map (progress bar), then show the first map."""
        self._after_display = None
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.mine_button.disabled = True
        stage = {"n": 0, "last": None}

        def step(done, total):
            # two passes report progress (images, then projections): each fills half the bar
            if stage["last"] is not None and done <= stage["last"]:   # counting restarted: the second pass
                stage["n"] = 1
            stage["last"] = done
            frac = done / total if total else 0.0
            self.progress.value = min(1.0, 0.5 * stage["n"] + 0.5 * frac)

        try:
            if self.gallery is not None:
                result = self.gallery.top(self.layer, self.channels_asked)
            else:
                result = _mine(self.lens, self.images, self.layer, self.channels_asked, self.k, self.batch_size,
                               step, self.method)
        except Exception:
            self.progress.bar_style = "danger"
            raise
        finally:
            self.mine_button.disabled = False
        self.progress.value, self.progress.bar_style = 1.0, "success"
        self.result = result
        self.status.value = (f"top-{result.k} of <b>{html.escape(result.layer)}</b> over {result.count} images, "
                             f"{len(result.channels)} maps ({result.method} projections, one scale per map); "
                             "click a tile to open it in the explorer")
        first = result.channels[0]
        self.channel = None
        self.channel_slider.disabled = False
        self.channel_slider.options = list(result.channels)
        if self.channel_slider.value != first:
            self.channel_slider.value = first
        else:
            self._set_channel(first)
        return result

    # ----- display -------------------------------------------------------------------------------
    def _set_channel(self, channel) -> None:
        if self.result is None:
            return
        self.channel = int(channel)
        hits = self.result.hits_of(self.channel)
        if not hits:
            self.proj_canvas.set_picture(b"", 1, 1)
            self.patch_canvas.set_picture(b"", 1, 1)
            self.info.value = f"map {self.channel}: no images"
            return
        th = max(max(h.box.unclipped[2] - h.box.unclipped[0], h.box.height) for h in hits)
        tw = max(max(h.box.unclipped[3] - h.box.unclipped[1], h.box.width) for h in hits)
        scale = max(float(h.projection.abs().max()) for h in hits)
        factor = display_factor(th, tw, self.tile_size)
        proj_tiles = [self._place(h, _render(h.projection, scale) if h.active else
                                  not_active_image(*h.projection.shape[-2:]), th, tw, 128) for h in hits]
        patch_tiles = [self._place(h, self._rgb(h.patch), th, tw, 255) for h in hits]
        grid = max(1, math.ceil(math.sqrt(self.result.k)))
        proj = self._grid(proj_tiles, grid, factor)
        patches = self._grid(patch_tiles, grid, factor)
        self._geometry = (grid, th * factor, tw * factor, 2, len(hits))
        self.proj_canvas.set_picture(png_bytes(proj), proj.shape[1], proj.shape[0])
        self.patch_canvas.set_picture(png_bytes(patches), patches.shape[1], patches.shape[0])
        vals = ", ".join(f"{h.activation:.3g}" for h in hits)
        off = sum(not h.active for h in hits)
        note = (f'; <span class="zf-not-active">{off} of {len(hits)} not active on their image (0 after the '
                'ReLU: crossed out)</span>') if off else ""
        self.info.value = f"map {self.channel}: activations {vals}{note}"

    @staticmethod
    def _rgb(patch) -> np.ndarray:
        patch = np.asarray(patch)
        if patch.ndim == 2:
            patch = np.repeat(patch[:, :, None], 3, axis=2)
        return patch.astype(np.uint8)

    @staticmethod
    def _place(hit, img: np.ndarray, th: int, tw: int, blank: int) -> np.ndarray:
        """A crop inside a tile of the receptive field's size, where it lies in the unclipped field."""
        tile = np.full((th, tw, 3), blank, np.uint8)
        oy = min(max(hit.box.y0 - hit.box.unclipped[0], 0), th - img.shape[0])
        ox = min(max(hit.box.x0 - hit.box.unclipped[1], 0), tw - img.shape[1])
        tile[oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
        return tile

    @staticmethod
    def _grid(tiles, grid: int, factor: int, gap: int = 2) -> np.ndarray:
        th, tw = tiles[0].shape[0] * factor, tiles[0].shape[1] * factor
        rows = math.ceil(len(tiles) / grid)
        out = np.full((rows * (th + gap) + gap, grid * (tw + gap) + gap, 3), 255, np.uint8)
        for n, t in enumerate(tiles):
            r, c = divmod(n, grid)
            y, x = gap + r * (th + gap), gap + c * (tw + gap)
            out[y:y + th, x:x + tw] = upscale(t, factor)
        return out

    def _tile_at(self, x: float, y: float):
        if self._geometry is None:
            return None
        grid, th, tw, gap, n = self._geometry
        c, cx = divmod(int(x) - gap, tw + gap)
        r, cy = divmod(int(y) - gap, th + gap)
        if not (0 <= c < grid and r >= 0) or cx >= tw or cy >= th:
            return None
        k = r * grid + c
        return k if k < n else None

    # ----- opening a tile in the explorer --------------------------------------------------------
    def _tile_clicked(self, x, y) -> None:
        k = self._tile_at(x, y)
        if k is not None:
            self.open_tile(self.channel, k)

    def open_tile(self, channel: int, rank: int):
        """Open hit ``rank`` (0 = strongest) of map ``channel`` in the explorer; returns the explorer."""
        if self.result is None:
            raise RuntimeError("nothing mined yet: press 'mine' (or call gallery.mine()) first")
        hits = self.result.hits_of(int(channel))
        if not 0 <= rank < len(hits):
            raise ValueError(f"map {channel} has {len(hits)} hits; rank {rank} is out of range")
        hit = hits[rank]
        if self.lens is None or self.images is None:
            raise RuntimeError("this gallery was opened from a file without the data set: tiles open in the explorer "
                               "only in a TopGallery(lens, images, layer)")
        item = _image_at(self.images, hit.index)
        if self.explorer is None:
            from .explorer import Explorer
            self.explorer = Explorer(self.lens, [])
            self._own_explorer = True
            self.explorer_box.children = [self._own(W.HTML("<b>explorer</b>")), self.explorer]
        name = f"mined image #{hit.index}"
        names = [e[0] for e in self.explorer.entries]
        if name in names:
            index = names.index(name)
        else:
            index = self.explorer.add_image(item=item, name=name, select=False)
        self.explorer.show(image=index, layer=self.layer, channel=int(channel),
                           position="max" if hit.position is None else hit.position, method=self.method)
        self.opened = {"channel": int(channel), "rank": rank, "index": hit.index, "position": hit.position}
        return self.explorer

    # ----- state, closing ------------------------------------------------------------------------
    def _state(self) -> dict:
        hits = [] if self.result is None or self.channel is None else [
            (h.index, h.position, h.activation) for h in self.result.hits_of(self.channel)]
        return {"layer": self.layer, "channel": self.channel,
                "channels": None if self.result is None else list(self.result.channels),
                "mined": self.result is not None, "hits": hits, "opened": self.opened}

    def _close_extra(self) -> None:
        for name in ("proj_canvas", "patch_canvas"):
            pc = getattr(self, name, None)
            if pc is not None:
                pc.close()
        if getattr(self, "_own_explorer", False) and self.explorer is not None:
            self.explorer.close()
