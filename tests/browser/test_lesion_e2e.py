"""The lesion panel in JupyterLab, driven with real mouse clicks: two maps of the mosaic switched off, and the
displayed class probabilities and held-out accuracy checked against zf.lesion recomputed in this process.

Outputs: artifacts/browser/lesion_panel.png and artifacts/browser/lesion_e2e.json.
"""

from __future__ import annotations

import json
import time

from .jupyter import ARTIFACTS, canvas_point, lab_page, run_all

TIME_LIMIT = 240.0
PANEL = ".zf-lesion"
CANVAS = f"{PANEL} canvas.zf-lesion-mosaic"
GEOMETRY = f"{PANEL} span.zf-mosaic-geometry"
# data-before/data-after have 6 decimals (half a unit of rounding) plus float32 slack between two processes
P_TOL = 0.5e-6 + 1.5e-6
SAMPLE, LAYER, HELD_OUT = 9, "conv5", "samples[::2]"
CLICKS = (3, 10)

CELLS = [
    "import zfwidgets as zf\n"
    "lens = zf.load('zfnet-fashion')\n"
    "samples = zf.samples()\n",
    f"panel = zf.LesionPanel(lens, samples[{SAMPLE}], {HELD_OUT}, layer='{LAYER}')\n"
    "panel\n",
]

READ_JS = """(sel) => {
  const root = document.querySelector(sel);
  const err = root.querySelector('.zf-error .zf-error-body');
  const rows = [...root.querySelectorAll('.zf-lesion-probs tr.zf-class')].map(
      r => ({index: +r.dataset.index, before: r.dataset.before, after: r.dataset.after}));
  const acc = root.querySelector('.zf-lesion-accuracy span.zf-accuracy');
  return {error: err ? err.innerText : '', rows,
          accuracy: acc && {before: acc.dataset.before, after: acc.dataset.after, n: +acc.dataset.n}};
}"""


def notebook(tmp_path):
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{k}", "metadata": {}, "outputs": [],
                     "source": src} for k, src in enumerate(CELLS)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb" / "lesion_panel.ipynb"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(nb))
    return path


def test_lesion_panel_clicks_in_jupyterlab(tmp_path):
    import zfwidgets as zf
    lens = zf.load("zfnet-fashion")
    samples = zf.samples()
    held = samples[::2]
    report = {"clicks": []}
    t0 = time.monotonic()
    with lab_page(tmp_path, [notebook(tmp_path)], time_limit=TIME_LIMIT) as (server, page):
        run_all(page, timeout=120)
        page.locator(CANVAS).first.wait_for(state="visible", timeout=60_000)
        page.locator(f"{PANEL} .zf-lesion-accuracy span.zf-accuracy").first.wait_for(state="attached",
                                                                                     timeout=60_000)
        geo = page.locator(GEOMETRY).first.evaluate("el => ({...el.dataset})")
        assert geo["layer"] == LAYER, geo
        cols, tw, th, gap = (int(geo[k]) for k in ("cols", "tileW", "tileH", "gap"))
        page.locator(CANVAS).first.scroll_into_view_if_needed()
        off = []
        for k in CLICKS:
            before = page.evaluate(READ_JS, PANEL)
            assert not before["error"], before["error"]
            x = gap + (k % cols) * (tw + gap) + tw // 2
            y = gap + (k // cols) * (th + gap) + th // 2
            cx, cy = canvas_point(page, CANVAS, x, y)
            page.mouse.click(cx, cy)
            off.append(k)
            page.wait_for_function(
                "([sel, old]) => { const s = document.querySelector(sel + ' .zf-lesion-accuracy');"
                " const e = document.querySelector(sel + ' .zf-error .zf-error-body');"
                " return !!e || (s && s.innerHTML !== old); }",
                arg=[PANEL, page.locator(f"{PANEL} .zf-lesion-accuracy").first.inner_html()], timeout=30_000)
            shown = page.evaluate(READ_JS, PANEL)
            assert not shown["error"], shown["error"]
            # the plain API, here: zf.lesion on the image and on the held-out set with the same maps off
            cur = zf.lesion(lens, [samples[SAMPLE].image], [samples[SAMPLE].label], LAYER, channels=sorted(off),
                            progress=False)
            ref = zf.lesion(lens, [s.image for s in held], [s.label for s in held], LAYER, channels=sorted(off),
                            progress=False)
            assert shown["rows"], shown
            for row in shown["rows"]:
                i = row["index"]
                assert abs(float(row["before"]) - float(cur.probabilities_before[0, i])) <= P_TOL, (row, i)
                assert abs(float(row["after"]) - float(cur.probabilities_after[0, i])) <= P_TOL, (row, i)
            acc = shown["accuracy"]
            assert acc["n"] == len(held)
            assert abs(float(acc["before"]) - ref.accuracy_before) <= 1e-6, (acc, ref.accuracy_before)
            assert abs(float(acc["after"]) - ref.accuracy_after) <= 1e-6, (acc, ref.accuracy_after)
            report["clicks"].append({"off": sorted(off), "shown": shown,
                                     "api_after": cur.probabilities_after[0].tolist(),
                                     "api_accuracy": [ref.accuracy_before, ref.accuracy_after]})
        changed = [r for r in report["clicks"][-1]["shown"]["rows"] if r["before"] != r["after"]]
        assert changed, "switching two maps off changed no displayed probability"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator(PANEL).first.screenshot(path=str(ARTIFACTS / "lesion_panel.png"))
    report["total_s"] = round(time.monotonic() - t0, 1)
    (ARTIFACTS / "lesion_e2e.json").write_text(json.dumps(report, indent=1))
    print(f"\nlesion panel e2e: maps {list(CLICKS)} off; shown = zf.lesion for every class; {report['total_s']} s")
