"""Proves the browser harness on this machine: JupyterLab + headless Chromium + a real mouse drag on an
ipycanvas Canvas whose CSS size differs from its pixel size, checked against what the kernel received."""

import json
import statistics
import sys
import time
from pathlib import Path

from .jupyter import ARTIFACTS, canvas_point, drag, lab_page, run_all, screenshot

SMOKE = Path(__file__).with_name("smoke.ipynb")
CANVAS = "canvas.smoke-canvas"
LABEL = ".smoke-label .smoke-xy"

# Record, in the page, when each mousemove reaches the canvas and when the label's DOM changes, both on
# the browser's own clock (performance.now()), so that the latency excludes Playwright's round trips.
INSTRUMENT_JS = """([canvasSel, labelSel]) => {
  const canvas = document.querySelector(canvasSel);
  const label = document.querySelector(labelSel);
  window.__smoke = {moves: [], updates: []};
  canvas.addEventListener('mousemove', e => window.__smoke.moves.push(
      {t: performance.now(), clientX: e.clientX, clientY: e.clientY}), {capture: true});
  new MutationObserver(() => {
    const span = label.querySelector('.smoke-xy');
    if (span && span.dataset.x !== undefined)
      window.__smoke.updates.push({t: performance.now(), x: +span.dataset.x, y: +span.dataset.y});
  }).observe(label, {childList: true, subtree: true, characterData: true, attributes: true});
}"""


def label_xy(page):
    span = page.locator(LABEL)
    return int(span.get_attribute("data-x")), int(span.get_attribute("data-y"))


def test_drag_reaches_kernel_with_scaled_coordinates(tmp_path):
    t0 = time.monotonic()
    with lab_page(tmp_path, [SMOKE], time_limit=300) as (server, page):
        t_open = time.monotonic()
        run_all(page)
        page.locator(CANVAS).wait_for(state="visible")
        page.locator(".smoke-label").wait_for(state="visible")
        t_ran = time.monotonic()

        # The kernel is this venv's Python (so it imports the editable-installed package).
        prefix = page.locator(".smoke-python").get_attribute("data-prefix")
        assert prefix == sys.prefix, f"kernel runs {prefix}, tests run {sys.prefix}"

        # The canvas is 200 px wide but drawn 300x250 CSS px: the harness must convert coordinates.
        size = page.locator(CANVAS).evaluate(
            "el => { const r = el.getBoundingClientRect(); return [el.width, el.height, r.width, r.height]; }")
        assert size == [200, 200, 300, 250], size

        page.locator(".smoke-label").evaluate("el => el.scrollIntoView({block: 'center'})")
        page.evaluate(INSTRUMENT_JS, [CANVAS, ".smoke-label"])

        # 24 moves from (20, 30) to the target pixel, each to a different pixel; after each move wait
        # until the kernel's answer is in the DOM, so that every latency is one unqueued round trip.
        target = (157, 121)
        n = 24
        path = [(20 + (target[0] - 20) * i // n, 30 + (target[1] - 30) * i // n) for i in range(n + 1)]
        assert len(set(path)) == len(path)

        def wait_for_label(i, point):
            page.wait_for_function(
                """([x, y]) => { const s = document.querySelector('.smoke-label .smoke-xy');
                                 return s && Math.abs(s.dataset.x - x) <= 1 && Math.abs(s.dataset.y - y) <= 1; }""",
                arg=list(point), timeout=10_000)

        drag(page, CANVAS, path, after_move=wait_for_label)
        t_dragged = time.monotonic()

        x, y = label_xy(page)
        assert abs(x - target[0]) <= 1 and abs(y - target[1]) <= 1, f"label shows {(x, y)}, expected {target}"
        # and a point computed by the harness maps back exactly, by ipycanvas's own formula
        cx, cy = canvas_point(page, CANVAS, *target)
        assert page.locator(CANVAS).evaluate(
            "(el, [cx, cy]) => { const r = el.getBoundingClientRect();"
            " return [Math.floor(el.width * (cx - r.left) / r.width), Math.floor(el.height * (cy - r.top) / r.height)]; }",
            [cx, cy]) == list(target)

        shot = screenshot(page, "harness_smoke")
        assert shot.stat().st_size > 0

        # Latency: each mousemove on the canvas → the first label update that shows that move's pixel.
        rec = page.evaluate("window.__smoke")
        latencies = []
        for move, point in zip(rec["moves"][1:], path[1:]):  # moves[0] is the move to the press point
            update = next((u for u in rec["updates"]
                           if u["t"] >= move["t"] and abs(u["x"] - point[0]) <= 1 and abs(u["y"] - point[1]) <= 1), None)
            if update is not None:
                latencies.append(update["t"] - move["t"])
        assert len(rec["moves"]) == len(path), rec["moves"]
        assert len(latencies) >= 20, (len(latencies), rec)
        median = statistics.median(latencies)
        print(f"\nharness smoke: mouse move -> label update median {median:.1f} ms over {len(latencies)} moves "
              f"(min {min(latencies):.1f}, max {max(latencies):.1f}; nodelay={server.nodelay}); "
              f"server+browser+kernel ready {t_open - t0:.1f} s, run all {t_ran - t_open:.1f} s, "
              f"drag {t_dragged - t_ran:.1f} s; screenshot {shot}")
    total = time.monotonic() - t0
    print(f"harness smoke: whole test {total:.1f} s")
    (ARTIFACTS / "harness_smoke.json").write_text(json.dumps({
        "median_latency_ms": round(median, 1), "latencies_ms": [round(v, 1) for v in latencies],
        "nodelay": server.nodelay, "ready_s": round(t_open - t0, 1), "run_all_s": round(t_ran - t_open, 1),
        "drag_s": round(t_dragged - t_ran, 1), "total_s": round(total, 1)}, indent=1))
