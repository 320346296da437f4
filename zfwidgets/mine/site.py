"""A static site from a gallery: ``index.html`` and one page per layer, every map's top-k projections beside
their image patches, like OpenAI Microscope. Plain HTML and PNG files: it opens from the disk in any
browser, without a kernel or a server.

Each projection is drawn signed (zero = mid grey) with one scale shared by the map's k projections; crops
cut by the image border sit where they lie in the unclipped receptive field (the rest blank).

Example:
    >>> import tempfile, os; d = tempfile.mkdtemp()
    >>> gallery = zfwidgets.mine("zfnet-fashion", "fashion-mnist:test", layers="conv1", limit=200, progress=False)
    >>> gallery.to_html(os.path.join(d, "site")).name        # then open site/index.html
    'index.html'
"""
from __future__ import annotations

import html
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.project import not_active_image, render

__all__ = ["write_site"]

_CSS = """body{font-family:sans-serif;margin:1em;background:#fafafa}
.maps{display:flex;flex-wrap:wrap;gap:14px}
.map{background:#fff;border:1px solid #ddd;padding:6px}
.map h3{font-size:12px;margin:0 0 4px 0;font-weight:normal}
.pair{display:flex;gap:8px}
.grid{display:grid;gap:2px}
.grid img{image-rendering:pixelated;display:block}
.note{color:#666;font-size:12px}"""


def _tile(hit, img: np.ndarray, blank: int) -> np.ndarray:
    uy0, ux0, uy1, ux1 = hit.box.unclipped
    th, tw = max(uy1 - uy0, hit.box.height, 1), max(ux1 - ux0, hit.box.width, 1)
    tile = np.full((th, tw, 3), blank, np.uint8)
    oy = min(max(hit.box.y0 - uy0, 0), th - img.shape[0])
    ox = min(max(hit.box.x0 - ux0, 0), tw - img.shape[1])
    tile[oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
    return tile


def _png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def write_site(gallery, folder, *, layers=None, zoom=None) -> Path:
    folder = Path(folder)
    layers = gallery.layers if layers is None else [layers] if isinstance(layers, str) else list(layers)
    for l in layers:
        gallery.channels(l)  # unknown layer: ValueError before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    meta = gallery.meta
    rows = []
    for layer in layers:
        img_dir = folder / "img" / layer
        if img_dir.exists():
            shutil.rmtree(img_dir)
        img_dir.mkdir(parents=True)
        C, k = gallery.channels(layer), gallery.k
        grid = max(1, math.ceil(math.sqrt(k)))
        blocks, n_img = [], 0
        for c in range(C):
            hits = gallery.hits(layer, c)
            if not hits:
                blocks.append(f"<div class='map' id='map{c}'><h3>map {c}: no images</h3></div>")
                continue
            scale = max(float(h.projection.abs().max()) for h in hits)
            th = max(max(h.box.unclipped[2] - h.box.unclipped[0], h.box.height) for h in hits)
            z = zoom or max(1, min(4, 96 // max(th, 1)))
            proj_imgs, patch_imgs = [], []
            for j, h in enumerate(hits):
                p = _tile(h, render(h.projection, "signed", scale if scale > 0 else None) if h.active
                          else not_active_image(*h.projection.shape[-2:]), 128)
                q = _tile(h, h.patch if h.patch.ndim == 3 else np.repeat(h.patch[..., None], 3, 2), 255)
                for kind, arr, out in (("p", p, proj_imgs), ("i", q, patch_imgs)):
                    name = f"img/{layer}/c{c}_{j}_{kind}.png"
                    _png(arr, folder / name)
                    iid = html.escape(gallery.image_id(h.index))
                    what = "projection" if kind == "p" else "patch"
                    out.append(f"<img src='{html.escape(name)}' width='{arr.shape[1] * z}' height='{arr.shape[0] * z}'"
                               f" alt='{what} {j + 1}' title='{iid}: {h.activation:.4g} at {h.position}"
                               f"{'' if h.active else ', not active on this image'}'>")
                    n_img += 1
            g = f"<div class='grid' style='grid-template-columns:repeat({grid},auto)'>"
            blocks.append(f"<div class='map' id='map{c}'><h3>{html.escape(layer)} map {c} "
                          f"(max {hits[0].activation:.3g})</h3><div class='pair'>{g}{''.join(proj_imgs)}</div>"
                          f"{g}{''.join(patch_imgs)}</div></div></div>")
        head = (f"<p><a href='index.html'>all layers</a></p><h1>{html.escape(layer)}: top-{k} of {C} maps</h1>"
                f"<p class='note'>{html.escape(meta['model'])}, {html.escape(gallery.rule)} projections (signed, zero = "
                f"mid grey, one scale per map) beside the image patches of the receptive fields; "
                f"{gallery.count} images of {html.escape(str(meta['data'].get('spec')))}.</p>")
        (folder / f"{layer}.html").write_text(_page(f"{layer} top-{k}", head + "<div class='maps'>"
                                                    + "".join(blocks) + "</div>"), encoding="utf-8")
        rows.append(f"<li><a href='{html.escape(layer)}.html'>{html.escape(layer)}</a>: {C} maps, {n_img} images</li>")
    skipped = gallery.skipped
    note = f"<p class='note'>{len(skipped)} images could not be decoded and were skipped.</p>" if skipped else ""
    body = (f"<h1>Top-{gallery.k} activations: {html.escape(meta['model'])}</h1>"
            f"<p class='note'>weights {html.escape(str(meta.get('weights')))}; {gallery.count} images of "
            f"{html.escape(str(meta['data'].get('spec')))}; {html.escape(gallery.rule)} projections; zfwidgets "
            f"{html.escape(str(meta.get('zfwidgets')))} {html.escape(str(meta.get('commit') or ''))}</p>"
            f"<ul>{''.join(rows)}</ul>{note}")
    index = folder / "index.html"
    index.write_text(_page("top-k gallery", body), encoding="utf-8")
    return index
