"""The static site of a mined gallery, opened from the disk in headless Chromium (no kernel, no server):
every layer page shows every map's projections and patches, and no image is broken."""
from pathlib import Path

import torch

import zfwidgets as zf

from .jupyter import _watched, browser_page


def test_static_site_shows_every_image(tmp_path):
    torch.set_num_threads(1)
    g = zf.mine("zfnet-fashion", "fashion-mnist:test", ["conv1", "conv5"], k=4, limit=200, progress=False)
    index = g.to_html(tmp_path / "site")
    expected = {l: 2 * int((g.tensors(l)["indices"] >= 0).sum()) for l in g.layers}
    assert expected == {"conv1": 2 * 32 * 4, "conv5": 2 * 64 * 4}
    with _watched(180, "gallery site") as dog:
        with browser_page(tmp_path / "profile", watchdog=dog) as page:
            page.goto(Path(index).as_uri())
            links = page.eval_on_selector_all("a[href$='.html']", "els => els.map(e => e.getAttribute('href'))")
            assert sorted(links) == ["conv1.html", "conv5.html"]
            for layer in g.layers:
                page.goto((tmp_path / "site" / f"{layer}.html").as_uri())
                page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=60_000)
                stats = page.evaluate("""() => {
                    const imgs = Array.from(document.images);
                    return {n: imgs.length, broken: imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.src),
                            maps: document.querySelectorAll('.map').length,
                            perMap: Array.from(document.querySelectorAll('.map')).map(m => m.querySelectorAll('img').length)};
                }""")
                assert stats["broken"] == [], stats["broken"][:5]
                assert stats["n"] == expected[layer]
                assert stats["maps"] == g.channels(layer) and set(stats["perMap"]) == {2 * g.k}
