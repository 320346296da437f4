"""The gallery file: every mined map's top-k with projections and image patches, in a safe format.

One ``safetensors`` file (tensors only, no code can be in it) with the metadata as JSON in its header:
model, weights, layers, data set, the winners' image ids, ``k``, the projection rule, the zfwidgets version
and commit. Per layer ``L`` it holds ``L/values`` (C x k, float32), ``L/indices`` (C x k, int64 global
image indices, -1 = empty), ``L/positions`` (C x k x 2), ``L/boxes`` (C x k x 8: the receptive field
clipped to the image, then unclipped), ``L/scale`` (C x k, each projection's max |x|), ``L/projections``
(every hit's projection over its clipped box, divided by its scale, float16, concatenated) and
``L/patches`` (every hit's displayed image patch, uint8 h x w x 3, concatenated).

:meth:`Gallery.load` reads the small tensors and checks every shape against the metadata; projections and
patches are read from the file when a map is shown. A file that is not a gallery (a pickle, a damaged
header, wrong shapes, bad JSON) is refused with a ``ValueError`` that says why.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write

__all__ = ["Gallery", "GALLERY_FORMAT"]

GALLERY_FORMAT = "zfwidgets-gallery"
GALLERY_VERSION = 1
HEADER_KEY = "zfwidgets"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")   # layer names become file names in to_html

_SMALL = {"values": ("F32", torch.float32, lambda C, k, L: (C, k)),
          "indices": ("I64", torch.int64, lambda C, k, L: (C, k)),
          "positions": ("I64", torch.int64, lambda C, k, L: (C, k, 2)),
          "boxes": ("I64", torch.int64, lambda C, k, L: (C, k, 8)),
          "scale": ("F32", torch.float32, lambda C, k, L: (C, k))}
_BIG = {"projections": ("F16", torch.float16), "patches": ("U8", torch.uint8)}


def _refuse(path, why):
    raise ValueError(f"refused to load {path}: {why}")


@dataclass
class _LayerData:
    info: dict
    small: dict            # name -> tensor
    big: dict              # name -> tensor (in memory) or None (read from the file on demand)
    offsets: tuple = None  # (projection offsets, patch offsets) per hit, C*k+1 each

    def sizes(self):
        b = self.small["boxes"]
        h = (b[..., 2] - b[..., 0]).flatten()
        w = (b[..., 3] - b[..., 1]).flatten()
        cin = int(self.info["in_channels"])
        proj = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(cin * h * w, 0)])
        patch = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(3 * h * w, 0)])
        return proj, patch


class Gallery:
    """Mined top-k of several layers (see the module docstring); made by :func:`zfwidgets.mine`, read with
    :meth:`load`. ``layers``: the layer names; ``meta``: the metadata; ``top(layer)``: a
    :class:`~zfwidgets.analysis.topk.TopActivations` that plots and browses like one mined in memory.

    Example:
        >>> import tempfile, os; d = tempfile.mkdtemp(); path = os.path.join(d, "top9.safetensors")
        >>> _ = zfwidgets.mine("zfnet-fashion", "fashion-mnist:test", limit=200, progress=False, out=path)
        >>> g = zfwidgets.Gallery.load(path); g.layers, g.k, g.rule
        (['conv1', 'conv2', 'conv3', 'conv4', 'conv5'], 9, 'deconvnet')
        >>> fig = g.plot("conv5", channels=[0, 1, 2, 3])                # Fig. 2
        >>> g.to_html(os.path.join(d, "site"), layers=["conv5"]).name   # a static site, one page per layer
        'index.html'
    """

    def __init__(self, meta: dict, layers: dict, path=None):
        self.meta = meta
        self._layers = layers
        self.path = None if path is None else Path(path)

    # ----- what is in it -------------------------------------------------------------------------
    @property
    def layers(self) -> list:
        return [l["name"] for l in self.meta["layers"]]

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def rule(self) -> str:
        return self.meta["rule"]

    @property
    def count(self) -> int:
        """Images mined (decoded)."""
        return int(self.meta["count"])

    @property
    def skipped(self) -> list:
        """Images that could not be decoded: ``[{"index", "id", "error"}]``."""
        return list(self.meta.get("skipped", []))

    def image_id(self, index: int) -> str:
        """The id (file path relative to the folder, ``fashion-mnist:test/17``...) of a winner's image."""
        try:
            return self.meta["ids"][str(int(index))]
        except KeyError:
            raise ValueError(f"image {index} is not among the gallery's winners") from None

    def _layer(self, layer) -> _LayerData:
        if layer not in self._layers:   # a module path names the layer too
            layer = next((l["name"] for l in self.meta["layers"] if l.get("path") == layer), layer)
        if layer not in self._layers:
            raise ValueError(f"layer {layer!r} is not in the gallery; its layers are {self.layers}")
        return self._layers[layer]

    def channels(self, layer) -> int:
        return int(self._layer(layer).info["channels"])

    def tensors(self, layer) -> dict:
        """The small tensors of ``layer`` (values, indices, positions, boxes, scale)."""
        return dict(self._layer(layer).small)

    def __repr__(self):
        ls = ", ".join(f"{l['name']} ({l['channels']} maps)" for l in self.meta["layers"])
        return (f"Gallery({self.meta['model']}, top-{self.k} {self.rule} over {self.count} images of "
                f"{self.meta['data'].get('spec')}: {ls})")

    # ----- hits ------------------------------------------------------------------------------------
    def _big_slice(self, L: _LayerData, name: str, a: int, b: int) -> torch.Tensor:
        if L.big.get(name) is not None:
            return L.big[name][a:b]
        from safetensors import safe_open
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_slice(f"{L.info['name']}/{name}")[a:b]

    def hits(self, layer, channel: int) -> list:
        """The :class:`~zfwidgets.analysis.topk.Hit` list of map ``channel`` (best first)."""
        from ..analysis.receptive import Box
        from ..analysis.topk import Hit
        L = self._layer(layer)
        C, k = int(L.info["channels"]), self.k
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= int(channel) < C:
            raise ValueError(f"channel must be an int in 0..{C - 1} for layer {layer!r}, got {channel!r}")
        c = int(channel)
        if L.offsets is None:
            L.offsets = L.sizes()
        po, qo = L.offsets
        s = L.small
        valid = [j for j in range(k) if int(s["indices"][c, j]) >= 0]
        if not valid:
            return []
        first, last = c * k + valid[0], c * k + valid[-1]
        proj = self._big_slice(L, "projections", int(po[first]), int(po[last + 1]))
        patch = self._big_slice(L, "patches", int(qo[first]), int(qo[last + 1]))
        cin = int(L.info["in_channels"])
        out = []
        for j in valid:
            n = c * k + j
            y0, x0, y1, x1, uy0, ux0, uy1, ux1 = (int(v) for v in s["boxes"][c, j])
            h, w = y1 - y0, x1 - x0
            p = proj[int(po[n] - po[first]): int(po[n + 1] - po[first])].float().view(cin, h, w) * s["scale"][c, j]
            im = patch[int(qo[n] - qo[first]): int(qo[n + 1] - qo[first])].numpy().reshape(h, w, 3).copy()
            pos = s["positions"][c, j]
            position = None if int(pos[0]) < 0 else (int(pos[0]), int(pos[1]))
            value = float(s["values"][c, j])
            out.append(Hit(int(s["indices"][c, j]), position, value, Box(y0, x0, y1, x1, (uy0, ux0, uy1, ux1)),
                           im, p, not (L.info.get("rectified", False) and value <= 0)))
        return out

    def top(self, layer, channels=None):
        """The mined maps of ``layer`` (default all; the hits' tensors are read for these only) as a
        :class:`~zfwidgets.analysis.topk.TopActivations`."""
        from ..analysis.topk import TopActivations
        L = self._layer(layer)
        layer = L.info["name"]
        C = int(L.info["channels"])
        if channels is None:
            channels = list(range(C))
        elif isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
            channels = [int(channels)]
        channels = [int(c) for c in channels]
        for c in channels:
            if not 0 <= c < C:
                raise ValueError(f"channel {c} is out of range: layer {layer!r} has {C} maps (0..{C - 1})")
        rows = torch.tensor(channels, dtype=torch.long)
        s = L.small
        return TopActivations(layer, channels, self.k, s["values"][rows], s["indices"][rows], s["positions"][rows],
                              [self.hits(layer, c) for c in channels], self.count, self.rule, self.meta["model"])

    def _need_projections(self):
        if not self.meta.get("projections", True):
            raise ValueError("this gallery was mined without projections (projections=False / --no-projections): "
                             "it holds values, images and positions only")

    def plot(self, layer, channels=None, **kwargs):
        """ZF Fig. 2 for ``channels`` of ``layer`` (default the first 16 maps): projections beside patches."""
        self._need_projections()
        if channels is None:
            channels = list(range(min(16, self.channels(layer))))
        top = self.top(layer, channels)
        return top.plot(top.channels, **kwargs)

    def to_html(self, folder, *, layers=None, zoom: int | None = None) -> Path:
        """A static site in ``folder``: ``index.html`` and one page per layer with every map's top-k projections
        beside their patches (PNG files); opens in a browser without a kernel. Returns the index's path."""
        from .site import write_site
        self._need_projections()
        return write_site(self, folder, layers=layers, zoom=zoom)

    # ----- file --------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the gallery to ``path`` (atomically: a reader never sees half a file)."""
        from safetensors.torch import save_file
        tensors = {}
        for name in self.layers:
            L = self._layers[name]
            for key in _SMALL:
                tensors[f"{name}/{key}"] = L.small[key].contiguous()
            if L.offsets is None:
                L.offsets = L.sizes()
            for key in _BIG:
                t = L.big.get(key)
                if t is None:
                    t = self._big_slice(L, key, 0, int(L.offsets[0 if key == "projections" else 1][-1]))
                tensors[f"{name}/{key}"] = t.contiguous()
        # one header entry: safetensors writes its metadata map in no fixed order, and equal galleries must
        # give equal files
        header = {HEADER_KEY: json.dumps({"format": GALLERY_FORMAT, "version": GALLERY_VERSION, "meta": self.meta},
                                         sort_keys=True)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
        return Path(path)

    @classmethod
    def load(cls, path) -> "Gallery":
        """Open a gallery file: metadata and small tensors now (shapes checked), projections and patches on use."""
        from safetensors import safe_open
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no gallery file at {path}")
        try:
            f = safe_open(str(path), framework="pt")
        except Exception as e:  # noqa: BLE001 - pickles, truncated or damaged headers
            _refuse(path, f"not a safetensors gallery file ({type(e).__name__}: {e}); galleries hold tensors and "
                          "JSON only, never pickled objects")
        with f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
            if raw is None:
                _refuse(path, f"its header has no {HEADER_KEY!r} entry (a safetensors file, but not a gallery)")
            try:
                header = json.loads(raw)
            except json.JSONDecodeError as e:
                _refuse(path, f"its metadata is not valid JSON ({e})")
            if not isinstance(header, dict) or header.get("format") != GALLERY_FORMAT:
                _refuse(path, f"its header does not say format={GALLERY_FORMAT!r}")
            if header.get("version") != GALLERY_VERSION:
                _refuse(path, f"gallery format version {header.get('version')!r}; this zfwidgets reads version "
                              f"{GALLERY_VERSION}")
            meta = _check_meta(path, header.get("meta"))
            keys = set(f.keys())
            expected = {f"{l['name']}/{key}" for l in meta["layers"] for key in (*_SMALL, *_BIG)}
            if keys != expected:
                extra, missing = sorted(keys - expected), sorted(expected - keys)
                _refuse(path, f"unexpected tensors {extra[:5]}" if extra else f"missing tensors {missing[:5]}")
            layers = {}
            k = int(meta["k"])
            for info in meta["layers"]:
                name, C = info["name"], int(info["channels"])
                small = {}
                for key, (code, dtype, shape) in _SMALL.items():
                    sl = f.get_slice(f"{name}/{key}")
                    want = shape(C, k, info)
                    if sl.get_dtype() != code or tuple(sl.get_shape()) != want:
                        _refuse(path, f"{name}/{key} is {sl.get_dtype()} {tuple(sl.get_shape())}, expected {code} {want}")
                    small[key] = f.get_tensor(f"{name}/{key}")
                L = _LayerData(info, small, {})
                _check_layer(path, meta, L)
                po, qo = L.sizes()
                for key, (code, dtype) in _BIG.items():
                    sl = f.get_slice(f"{name}/{key}")
                    want = (int((po if key == "projections" else qo)[-1]),)
                    if sl.get_dtype() != code or tuple(sl.get_shape()) != want:
                        _refuse(path, f"{name}/{key} is {sl.get_dtype()} {tuple(sl.get_shape())}, expected {code} "
                                      f"{want} (the sizes of its boxes)")
                L.offsets = (po, qo)
                layers[name] = L
        return cls(meta, layers, path)


def _check_meta(path, meta) -> dict:
    if not isinstance(meta, dict):
        _refuse(path, "its metadata is not a JSON object")
    for key, typ in (("model", str), ("layers", list), ("k", int), ("rule", str), ("data", dict), ("ids", dict),
                     ("count", int), ("input_size", list)):
        if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
            _refuse(path, f"metadata {key!r} is missing or not a {typ.__name__}")
    if meta["k"] < 1 or not meta["layers"]:
        _refuse(path, "metadata k < 1 or no layers")
    if len(meta["input_size"]) != 3 or not all(isinstance(v, int) and v > 0 for v in meta["input_size"]):
        _refuse(path, f"metadata input_size {meta['input_size']!r} is not (C, H, W)")
    names = set()
    for l in meta["layers"]:
        if not (isinstance(l, dict) and isinstance(l.get("name"), str) and l["name"]
                and isinstance(l.get("channels"), int) and l["channels"] > 0
                and isinstance(l.get("in_channels"), int) and l["in_channels"] > 0):
            _refuse(path, f"metadata layer entry {l!r} needs name, channels and in_channels")
        if l["name"] in names or not _SAFE_NAME.fullmatch(l["name"]):
            _refuse(path, f"layer name {l['name']!r} repeats or is not a plain name (letters, digits, '_', '.', '-')")
        names.add(l["name"])
    return meta


def _check_layer(path, meta, L: _LayerData) -> None:
    s, name = L.small, L.info["name"]
    _, H, W = meta["input_size"]
    idx, b = s["indices"], s["boxes"]
    valid = idx >= 0
    if bool(((idx < -1)).any()):
        _refuse(path, f"{name}/indices holds values below -1")
    ids = meta["ids"]
    for i in set(idx[valid].tolist()):
        if str(i) not in ids:
            _refuse(path, f"{name}/indices names image {i}, which has no id in the metadata")
    y0, x0, y1, x1 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    ok = (y0 >= 0) & (x0 >= 0) & (y1 <= H) & (x1 <= W) & (y1 >= y0) & (x1 >= x0)
    if not bool(ok.all()):
        _refuse(path, f"{name}/boxes holds boxes outside the {H}x{W} input")
    if bool(((y1 - y0) * (x1 - x0))[~valid].any()):
        _refuse(path, f"{name}/boxes gives pixels to empty slots")
    if not bool(torch.isfinite(s["scale"]).all()) or bool((s["scale"] < 0).any()):
        _refuse(path, f"{name}/scale holds negative or non-finite values")
