"""The explorer: pick an image, a layer and a feature map; see all maps of the layer, the chosen one enlarged,
and the projection of its strongest activation (or of a clicked position) back to pixels.

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")
    >>> ex = zfwidgets.Explorer(lens)                   # the bundled samples
    >>> ex.show(image=3, layer="conv3", channel=12, method="guided")
    >>> ex.state["top5"][0], ex.projection.activation
    (('T-shirt/top', 0.999), 2.127)
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from ..core.inputs import image_of, label_of
from ..core.project import METHODS as PROJECTION_METHODS
from ..core.project import not_active_image
from ._common import (Panel, display_factor, image_widget, mosaic, png_bytes, probs_html,
                      show_png, to_uint8_map, upscale)

__all__ = ["Explorer"]

# the projection rules of zfwidgets.project, in the order the toggle shows them (ZF's deconvnet first)
METHODS = tuple(sorted(PROJECTION_METHODS, key=lambda m: (m != "deconvnet", m != "guided", m)))


# ----- the plain API this panel calls (one place) ------------------------------------------------------
def _forward(lens, image, layer=None):
    extra = () if layer is None or layer in lens.layers else (layer,)   # a layer beyond the table: by its path
    return lens.forward(image, extra_layers=extra)


def _project(lens, image, layer, channel, position, method):
    from ..core.project import project
    return project(lens, image, layer, channel, position=position, method=method)


def _load_upload(data: bytes, name: str):
    from ..core.images import load_image_bytes
    return load_image_bytes(data, name)


def _one_or_many(images):
    """``images`` as a sequence: one image (a C x H x W or 1 x C x H x W tensor, an H x W [x C] array, a PIL
    image) becomes a list of one; a batch tensor N x C x H x W, a list of images."""
    import torch
    from PIL import Image
    if isinstance(images, torch.Tensor) and (images.dim() == 3 or (images.dim() == 4 and images.shape[0] == 1)):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        return [images]
    if isinstance(images, Image.Image):
        return [images]
    return images


def _default_images():
    from ..zoo import samples
    return samples()


def _entry(item, k: int) -> tuple:
    """``(name, image, label)`` for one item: a sample, an ``(image, label)`` pair or a bare image."""
    image, label = image_of(item), label_of(item)
    if image is not item and hasattr(item, "class_name"):
        name = f"{k}: {item.class_name}"
        if hasattr(item, "index"):
            name += f" (test #{item.index})"
        return name, image, label
    if label is not None:
        return f"image {k} (label {label})", image, label
    return f"image {k}", image, None



def _layer_name(lens, layer) -> str:
    """The name the explorer shows and records ``layer`` under: its table name, else its dotted path (an alias
    such as a branching model's ``conv2`` is recorded by the lens under the module's path)."""
    name, path, _ = lens.resolve(layer)
    return name if name in lens.layers else path

class Explorer(Panel):
    """Layer / channel explorer with projections (deconvnet, guided backprop, gradient).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: images to pick from (PIL, uint8 arrays, float tensors, ``zfwidgets.samples()`` items,
            ``(image, label)`` pairs); default the bundled samples. More come from the upload button or
            :meth:`add_image`.
        layer, channel, method: the initial choice (default: the first conv layer, channel 0, deconvnet).
        display_size: the longer side of enlarged images in screen pixels (nearest-neighbour).

    Click a map in the mosaic to select its channel; click a position of the enlarged map to project that
    activation instead of the strongest one. All changes go through guarded callbacks: an error is shown in
    the panel and the panel keeps working.

    CSS classes: ``zf-explorer``, ``zf-image`` (image picker), ``zf-upload``, ``zf-layer`` (dropdown),
    ``zf-channel`` (slider), ``zf-method`` (toggle), ``zf-side-by-side`` (checkbox), ``zf-input`` (the image),
    ``zf-probs`` (predicted classes; ``span.zf-top1[data-class][data-index][data-p]``), ``zf-mosaic`` (all maps,
    a canvas), ``zf-map`` (the enlarged map, a canvas), ``zf-projection`` (the projection image),
    ``zf-projection-info`` (``span[data-layer][data-channel][data-position][data-activation][data-method]``),
    ``zf-projections`` / ``zf-projection-<method>`` (side by side), ``zf-error``.

    ``state``: ``image`` (index), ``image_name``, ``layer``, ``channel``, ``channels`` (of the layer),
    ``position`` (``"max"`` or ``(y, x)`` asked for), ``projected`` (``(y, x)`` projected), ``activation``,
    ``method``, ``side_by_side``, ``top5`` ``[(class, p)]``, ``top1``, ``images`` (count), ``renders``, ``error``.

    Example:
        >>> ex = zfwidgets.Explorer(lens, zfwidgets.samples()[:4], layer="conv2", channel=3)
        >>> ex.state["layer"], ex.state["channel"]
        ('conv2', 3)
    """

    def __init__(self, lens, images=None, *, layer=None, channel: int = 0, method: str = "deconvnet",
                 display_size: int = 224):
        super().__init__(lens)
        self.add_class("zf-explorer")
        try:
            self._build(images, layer, channel, method, display_size)
        except BaseException:
            self.close()
            raise

    def _build(self, images, layer, channel, method, display_size):
        lens = self.lens
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.display_size = display_size
        self.entries: list = []            # (name, image, label)
        self.layer = _layer_name(lens, layer) if layer is not None else lens.layers[0]
        self.channel = int(channel)
        self.method = method
        self.position = "max"
        self.side_by_side = False
        self.image_index = None
        self.projection = None             # the Projection on display
        self.projections: dict = {}        # method -> Projection, when side by side
        self.renders = 0
        self._acts = None
        self._spatial = False
        self._top5, self._top1 = [], None
        self._suspended = 0
        self._dirty = None

        # controls
        self.image_picker = self._own(W.Dropdown(options=[], description="image", layout=W.Layout(width="300px")))
        self.image_picker.add_class("zf-image")
        self.upload = self._own(W.FileUpload(accept="image/*", multiple=False, description="upload"))
        self.upload.add_class("zf-upload")
        layers = lens.layers if self.layer in lens.layers else [*lens.layers, self.layer]  # an alias: offered too
        self.layer_dropdown = self._own(W.Dropdown(options=layers, value=self.layer, description="layer"))
        self.layer_dropdown.add_class("zf-layer")
        self.channel_slider = self._own(W.IntSlider(value=0, min=0, max=0, description="channel",
                                                    continuous_update=False))
        self.channel_slider.add_class("zf-channel")
        self.method_toggle = self._own(W.ToggleButtons(options=list(METHODS), value=method,
                                                       style={"button_width": "90px"}))
        self.method_toggle.add_class("zf-method")
        self.side_checkbox = self._own(W.Checkbox(value=False, description="side by side", indent=False))
        self.side_checkbox.add_class("zf-side-by-side")

        # views
        self.input_image = self._own(image_widget("zf-input"))
        self.probs = self._own(W.HTML())
        self.probs.add_class("zf-probs")
        self.mosaic_canvas = self._picture_canvas(1, 1, css_class="zf-mosaic", overlay=self._draw_selection)
        self._own(self.mosaic_canvas.canvas)
        self.map_canvas = self._picture_canvas(1, 1, css_class="zf-map", overlay=self._draw_position)
        self._own(self.map_canvas.canvas)
        self.map_caption = self._own(W.HTML())
        self.projection_image = self._own(image_widget("zf-projection"))
        self.projection_info = self._own(W.HTML())
        self.projection_info.add_class("zf-projection-info")
        self.side_images = {m: self._own(image_widget(f"zf-projection-{m}")) for m in METHODS}
        self.side_box = self._own(W.HBox([self._own(W.VBox([self._own(W.HTML(f"<b>{m}</b>")), self.side_images[m]]))
                                          for m in METHODS], layout=W.Layout(display="none")))
        self.side_box.add_class("zf-projections")
        self.mosaic_caption = self._own(W.HTML())
        self._mosaic = None

        # wiring
        self._observe(self.image_picker, self._set_image, "image picker")
        self._observe(self.upload, self._uploaded, "upload")
        self._observe(self.layer_dropdown, self._set_layer, "layer")
        self._observe(self.channel_slider, self._set_channel, "channel")
        self._observe(self.method_toggle, self._set_method, "method")
        self._observe(self.side_checkbox, self._set_side_by_side, "side by side")
        self._on_canvas(self.mosaic_canvas.canvas, "mouse_down", self._mosaic_clicked, "mosaic click")
        self._on_canvas(self.map_canvas.canvas, "mouse_down", self._map_clicked, "map click")

        controls = self._own(W.HBox([self.image_picker, self.upload]))
        controls2 = self._own(W.HBox([self.layer_dropdown, self.channel_slider]))
        controls3 = self._own(W.HBox([self.method_toggle, self.side_checkbox]))
        def column(*children, width=None):
            box = W.VBox(list(children), layout=W.Layout(align_items="flex-start", margin="0 12px 6px 0",
                                                         **({"max_width": width} if width else {})))
            return self._own(box)

        row1 = self._own(W.HBox([column(self._own(W.HTML("<b>image</b>")), self.input_image),
                                 column(self._own(W.HTML("<b>predicted</b>")), self.probs, width="260px"),
                                 column(self.mosaic_caption, self.mosaic_canvas.canvas, width="480px")],
                                layout=W.Layout(flex_flow="row wrap")))
        row2 = self._own(W.HBox([column(self.map_caption, self.map_canvas.canvas, width="300px"),
                                 column(self.projection_info, self.projection_image, width="300px")],
                                layout=W.Layout(flex_flow="row wrap")))
        self.children = [controls, controls2, controls3, row1, row2,
                         self.side_box, self.error_area]

        items = _default_images() if images is None else list(_one_or_many(images))
        with self.hold():
            for item in items:
                self.add_image(item=item, select=False)
            if self.entries:
                self.image_picker.value = 0

    # ----- images --------------------------------------------------------------------------------
    def add_image(self, image=None, *, name: str | None = None, label: int | None = None, select: bool = True,
                  item=None) -> int:
        """Add an image to the picker (validated by the lens); returns its index. ``select`` shows it."""
        if item is not None:
            default_name, image, label = _entry(item, len(self.entries))
            name = name or default_name
        self.lens.to_input(image)            # a clear error now, not when it is picked
        k = len(self.entries)
        self.entries.append((name or f"image {k}", image, label))
        self.image_picker.options = [(n, i) for i, (n, _, _) in enumerate(self.entries)]
        if select:
            self.image_picker.value = k
        return k

    def _uploaded(self, value) -> None:
        if not value:
            return
        files = value if isinstance(value, (list, tuple)) else list(value.values())
        for f in files:
            name = f.get("name", "upload")
            image = _load_upload(bytes(f["content"]), name)
            self.add_image(image, name=f"upload: {name}")

    # ----- control handlers ----------------------------------------------------------------------
    def _set_image(self, index) -> None:
        if index is None:
            return
        self.image_index = int(index)
        self.position = "max"
        self._refresh("image")

    def _set_layer(self, layer) -> None:
        self.layer = _layer_name(self.lens, layer)
        self.position = "max"
        self._refresh("layer")

    def _set_channel(self, channel) -> None:
        if int(channel) == self.channel:     # the panel syncing its own slider
            return
        self.channel = int(channel)
        self.position = "max"
        self._refresh("channel")

    def _set_method(self, method) -> None:
        self.method = method
        self._refresh("projection")

    def _set_side_by_side(self, on) -> None:
        self.side_by_side = bool(on)
        self.side_box.layout.display = None if on else "none"
        self._refresh("projection")

    def _mosaic_clicked(self, x, y) -> None:
        if self._mosaic is None:
            return
        k = self._mosaic.tile_at(x, y)
        if k is not None:
            self.channel_slider.value = k

    def _map_clicked(self, x, y) -> None:
        if self._acts is None or not self._spatial:
            return
        f = self._map_factor
        h, w = self._acts.shape[-2:]
        yy, xx = int(y // f), int(x // f)
        if 0 <= yy < h and 0 <= xx < w:
            self.set_position((yy, xx))

    # ----- public --------------------------------------------------------------------------------
    def set_position(self, position) -> None:
        """Project the activation at ``(y, x)`` of the selected map (``"max"``: its strongest activation)."""
        self.position = position if position == "max" else (int(position[0]), int(position[1]))
        self._refresh("projection")

    def show(self, image=None, layer=None, channel=None, position=None, method=None) -> None:
        """Set several choices at once (one update).

        ``image``: an index into the picker or an image to add; ``layer``; ``channel``; ``position``
        (``"max"`` or ``(y, x)`` in the map); ``method``. Everything is checked before anything changes.
        """
        if image is not None and isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            if not 0 <= int(image) < len(self.entries):
                raise ValueError(f"image index {image} out of range: the explorer holds {len(self.entries)} images")
        elif image is not None:
            self.lens.to_input(image)
        if layer is not None:
            layer = _layer_name(self.lens, layer)
        if channel is not None and (isinstance(channel, bool) or not isinstance(channel, (int, np.integer))):
            raise TypeError(f"channel must be an int, got {type(channel).__name__}")
        if method is not None and method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        if channel is not None:     # the layer's width from its module: no forward of its own
            module = self.lens.resolve(layer or self.layer)[2]
            C = getattr(module, "out_channels", getattr(module, "out_features", None))
            if C is not None and not 0 <= int(channel) < C:
                raise ValueError(f"channel {channel} is out of range: layer {layer or self.layer!r} has {C} "
                                 f"channels (0..{C - 1})")
        if position is not None and position != "max":
            position = (int(position[0]), int(position[1]))
        with self.hold():
            if image is not None:
                if isinstance(image, (int, np.integer)):
                    self.image_picker.value = int(image)
                else:
                    self.add_image(image)
            if layer is not None:
                if layer not in self.layer_dropdown.options:   # an alias or a dotted path beyond the table
                    self.layer_dropdown.options = [*self.layer_dropdown.options, layer]
                self.layer_dropdown.value = layer
            if method is not None:
                self.method_toggle.value = method
            if channel is not None:
                self.channel = int(channel)
                self.position = "max"
                self._refresh("channel")
            if position is not None:
                self.position = position
                self._refresh("projection")

    # ----- rendering -----------------------------------------------------------------------------
    _LEVELS = {"image": 0, "layer": 1, "channel": 2, "projection": 3}

    class _Hold:
        def __init__(self, panel):
            self.panel = panel

        def __enter__(self):
            self.panel._suspended += 1

        def __exit__(self, *exc):
            panel = self.panel
            panel._suspended -= 1
            if panel._suspended == 0 and panel._dirty is not None:
                level, panel._dirty = panel._dirty, None
                if exc[0] is None:
                    panel._render(level)
                else:
                    try:                     # keep the view in step with the state; the first error wins
                        panel._render(level)
                    except Exception:  # noqa: BLE001
                        pass
            return False

    def hold(self):
        """Batch several changes into one update: ``with explorer.hold(): ...``."""
        return Explorer._Hold(self)

    def _refresh(self, level: str) -> None:
        if self._suspended:
            if self._dirty is None or self._LEVELS[level] < self._LEVELS[self._dirty]:
                self._dirty = level
            return
        self._render(level)

    def _render(self, level: str) -> None:
        if self.image_index is None:
            return
        n = self._LEVELS[level]
        _, image, label = self.entries[self.image_index]
        if n <= 0:
            self._render_image(image, label)
        if n <= 1:
            self._render_layer(image)
        if n <= 2:
            self._render_channel()
        self._render_projection(image)
        self.renders += 1

    def _render_image(self, image, label) -> None:
        fwd = _forward(self.lens, image)
        x = fwd.input.detach()
        show_png(self.input_image, upscale(self.lens.to_display(x), self._factor(*x.shape[-2:])))
        note = "" if label is None else f"true class: <b>{html.escape(self.lens.class_name(label))}</b>"
        self.probs.value, self._top5 = probs_html(self.lens, fwd.probs, note=note)
        k = int(fwd.probs.argmax())
        self._top1 = (k, self.lens.class_name(k), float(fwd.probs[k]))

    def _factor(self, h, w) -> int:
        return display_factor(int(h), int(w), self.display_size)

    def _render_layer(self, image) -> None:
        fwd = _forward(self.lens, image, self.layer)
        path = self.lens.resolve(self.layer)[1]
        act = fwd.activations.get(path)
        if act is None:
            raise ValueError(f"layer {self.layer!r} did not run during the forward; choose another layer")
        act = act.detach()[0]
        self._spatial = act.dim() == 3
        self._acts = act if self._spatial else act.view(-1, 1, 1)
        maps = self._acts
        C, h, w = maps.shape
        factor = max(1, int(round(28 / max(h, w)))) if h > 1 else 8
        self._mosaic = mosaic(to_uint8_map(maps), factor=factor, cols=None if h > 1 else 32)
        self.mosaic_canvas.set_picture(png_bytes(self._mosaic.pixels, palette=True), self._mosaic.width,
                                       self._mosaic.height)
        kind = f"{C} feature maps {h}x{w}" if act.dim() == 3 else f"{C} units"
        self.mosaic_caption.value = (f"<b>{html.escape(self.layer)}</b>: {kind}, one scale (its strongest "
                                     f"activation {float(maps.max()):.3g}); click one to select it")
        self.channel = min(max(self.channel, 0), C - 1)

    def _render_channel(self) -> None:
        C = self._acts.shape[0]
        if not 0 <= self.channel < C:
            raise ValueError(f"channel {self.channel} is out of range: layer {self.layer!r} has {C} channels "
                             f"(0..{C - 1})")
        with self.hold():                    # the slider's own observer must not render a second time
            self.channel_slider.max = C - 1
            self.channel_slider.value = self.channel
            self._dirty = None
        amap = self._acts[self.channel]
        h, w = amap.shape
        self._map_factor = self._factor(h, w) if h > 1 else 64
        pixels = upscale(to_uint8_map(amap), self._map_factor)
        self.map_canvas.set_picture(png_bytes(pixels, palette=True), pixels.shape[1], pixels.shape[0])
        self.mosaic_canvas.redraw_overlay()
        self.map_caption.value = (f"map {self.channel} of <b>{html.escape(self.layer)}</b> (max "
                                  f"{float(amap.max()):.3g}); click a position to project it")

    def _render_projection(self, image) -> None:
        methods = METHODS if self.side_by_side else (self.method,)
        projections = {m: _project(self.lens, image, self.layer, self.channel, self.position, m) for m in methods}
        p = projections[self.method]
        self.projection, self.projections = p, (projections if self.side_by_side else {})
        factor = self._factor(*p.pixels.shape[-2:])

        def picture(q):      # a unit at 0 after its ReLU projects to nothing: say so rather than show grey
            return q.to_image() if q.active else not_active_image(*q.pixels.shape[-2:])
        show_png(self.projection_image, upscale(picture(p), factor))
        if self.side_by_side:
            for m, q in projections.items():
                show_png(self.side_images[m], upscale(picture(q), factor))
        pos = "" if p.position is None else ",".join(str(v) for v in p.position)
        where = "strongest activation" if self.position == "max" else f"position {p.position}"
        what = (f"{p.method} projection of {html.escape(p.layer)} map {p.channel}, {where} ({p.activation:.3g})"
                if p.active else f"{html.escape(p.layer)} map {p.channel}, {where}: <b>not active on this image</b> "
                "(0 after its ReLU: it projects to nothing)")
        self.projection_info.value = (
            f'<span data-layer="{html.escape(p.layer)}" data-channel="{p.channel}" data-position="{pos}" '
            f'data-activation="{p.activation:.6g}" data-method="{p.method}" '
            f'data-active="{str(p.active).lower()}">{what}</span>')
        self.map_canvas.redraw_overlay()

    # ----- overlays ------------------------------------------------------------------------------
    def _draw_selection(self, layer) -> None:
        if self._mosaic is None or not 0 <= self.channel < self._mosaic.count:
            return
        x, y = self._mosaic.origin(self.channel)
        layer.stroke_style = "#ff3b30"
        layer.line_width = 2
        layer.stroke_rect(x - 1, y - 1, self._mosaic.tile_w + 2, self._mosaic.tile_h + 2)

    def _draw_position(self, layer) -> None:
        p = self.projection
        if p is None or p.position is None or getattr(self, "_map_factor", None) is None:
            return
        f = self._map_factor
        y, x = p.position
        layer.stroke_style = "#ff3b30"
        layer.line_width = 2
        layer.stroke_rect(x * f + 1, y * f + 1, f - 2, f - 2)

    # ----- state, closing ------------------------------------------------------------------------
    def _state(self) -> dict:
        p = self.projection
        return {"image": self.image_index,
                "image_name": None if self.image_index is None else self.entries[self.image_index][0],
                "layer": self.layer, "channel": self.channel,
                "channels": None if self._acts is None else int(self._acts.shape[0]),
                "position": self.position, "projected": None if p is None else p.position,
                "activation": None if p is None else p.activation, "method": self.method,
                "active": None if p is None else p.active,
                "side_by_side": self.side_by_side, "top5": list(self._top5), "top1": self._top1,
                "images": len(self.entries), "renders": self.renders}

    def _close_extra(self) -> None:
        for name in ("mosaic_canvas", "map_canvas"):
            pc = getattr(self, name, None)
            if pc is not None:
                pc.close()
        self.entries = []
        self._acts = None
