"""The sanity panel in JupyterLab: the slider moved with the keyboard from the top layer (fc8 re-initialised) to
the bottom (every layer re-initialised); the randomised pictures change, the trained ones stay, and the
similarity figures the page shows equal zf.sanity_check recomputed in this process.

Outputs: artifacts/browser/sanity_panel.png and artifacts/browser/sanity_e2e.json.
"""

from __future__ import annotations

import json
import math
import time

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from .jupyter import ARTIFACTS, lab_page, run_all

TIME_LIMIT = 180.0
PANEL = ".zf-sanity"
SAMPLE = 36
START, END = "cascade:fc8", "cascade:conv1"
METHODS = ("deconvnet", "guided", "gradient")
# data-value is the float's repr; the slack covers float32 differences between two processes
TOL = 1e-6

CELLS = [
    "import zfwidgets as zf\n"
    "lens = zf.load('zfnet-fashion')\n",
    f"panel = zf.SanityPanel(lens, zf.samples()[{SAMPLE}].image)\n"
    "panel\n",
]

READ_JS = """(sel) => {
  const root = document.querySelector(sel);
  const err = root.querySelector('.zf-error .zf-error-body');
  const now = root.querySelector('.zf-sanity-status .zf-sanity-now');
  const figures = {};
  for (const body of root.querySelectorAll('.zf-sanity-figures-body')) {
    const values = {};
    for (const s of body.querySelectorAll('.zf-sanity-figure')) values[s.dataset.metric] = s.dataset.value;
    figures[body.dataset.method] = {step: body.dataset.step, values};
  }
  const src = (cls) => { const e = root.querySelector('img.' + cls); return e ? e.getAttribute('src') : null; };
  const images = {};
  for (const m of ['deconvnet', 'guided', 'gradient'])
    images[m] = {trained: src('zf-sanity-trained-' + m), randomised: src('zf-sanity-randomised-' + m)};
  return {error: err ? err.innerText : '', step: now ? now.dataset.step : null, figures, images};
}"""

STEP_IS = """([sel, step]) => {
  const root = document.querySelector(sel);
  if (!root) return false;
  if (root.querySelector('.zf-error .zf-error-body')) return true;
  const now = root.querySelector('.zf-sanity-status .zf-sanity-now');
  const bodies = [...root.querySelectorAll('.zf-sanity-figures-body')];
  return !!now && now.dataset.step === step && bodies.length === 3 && bodies.every(b => b.dataset.step === step);
}"""


def notebook(tmp_path):
    path = tmp_path / "nb" / "sanity_panel.ipynb"
    path.parent.mkdir(parents=True)
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(new_notebook(cells=[new_code_cell(src) for src in CELLS], metadata={"kernelspec": kernel}), path)
    return path


def test_sanity_panel_slider_in_jupyterlab(tmp_path):
    t0 = time.monotonic()
    shown = {}
    with lab_page(tmp_path, [notebook(tmp_path)], time_limit=TIME_LIMIT) as (server, page):
        run_all(page, timeout=120)
        page.wait_for_function(STEP_IS, arg=[PANEL, START], timeout=60_000)
        shown[START] = page.evaluate(READ_JS, PANEL)
        assert not shown[START]["error"], shown[START]["error"]
        handle = page.locator(f"{PANEL} .zf-sanity-step .noUi-handle").first
        handle.scroll_into_view_if_needed()
        handle.focus()
        page.keyboard.press("End")                       # to the slider's last position: every layer randomised
        page.wait_for_function(STEP_IS, arg=[PANEL, END], timeout=60_000)
        shown[END] = page.evaluate(READ_JS, PANEL)
        assert not shown[END]["error"], shown[END]["error"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator(PANEL).first.screenshot(path=str(ARTIFACTS / "sanity_panel.png"))
    browser_s = time.monotonic() - t0

    for m in METHODS:
        before, after = shown[START]["images"][m], shown[END]["images"][m]
        assert before["randomised"] and before["trained"], before
        assert after["randomised"] != before["randomised"], (m, "the randomised picture did not change")
        assert after["trained"] == before["trained"], (m, "the trained picture changed")

    # the plain API, here: one sanity_check over both steps (each step is computed on its own, the same as the
    # panel's one-step calls)
    import zfwidgets as zf
    from zfwidgets.analysis.sanity import METRICS, sanity_check
    lens = zf.load("zfnet-fashion")
    ref = sanity_check(lens, [zf.samples()[SAMPLE].image], steps=[START, END], progress=False)
    report = {"steps": {}, "browser_s": round(browser_s, 1)}
    for step in (START, END):
        report["steps"][step] = {}
        for m in METHODS:
            fig = shown[step]["figures"][m]
            assert fig["step"] == step and sorted(fig["values"]) == sorted(METRICS), fig
            for mt in METRICS:
                got, want = float(fig["values"][mt]), ref.similarity(m, step, mt)
                assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= TOL, (step, m, mt, got, want)
            report["steps"][step][m] = {mt: [fig["values"][mt], ref.similarity(m, step, mt)] for mt in METRICS}
    assert any(shown[START]["figures"][m]["values"] != shown[END]["figures"][m]["values"] for m in METHODS)
    report["total_s"] = round(time.monotonic() - t0, 1)
    (ARTIFACTS / "sanity_e2e.json").write_text(json.dumps(report, indent=1))
    print(f"\nsanity panel e2e: {START} -> {END} by keyboard; shown = zf.sanity_check; {report['total_s']} s")
