"""The tour as a standalone Voilà app, driven in headless Chromium: the same flow as test_tour_e2e.py.

Voilà runs the notebook when the page loads (no Run All); then the same drag of the occluder, the same checks
against the plain API, the same latency measurement and the Explorer's controls. Outputs:
artifacts/browser/voila_*.png and artifacts/browser/voila_e2e.json.
"""

from __future__ import annotations

import json
import time

from .jupyter import ARTIFACTS, voila_page
from .test_tour_e2e import Reference, exercise_tour, prepare_tour, print_report, tour_parameters

TIME_LIMIT = 240.0


def test_tour_in_voila(tmp_path):
    t0 = time.monotonic()
    params = tour_parameters()
    notebook = prepare_tour(tmp_path / "notebook", broken=False)
    ref = Reference(params)
    report: dict = {"app": "voila", "broken": False, "params": params}
    with voila_page(tmp_path, notebook, time_limit=TIME_LIMIT) as (server, page):
        t_loaded = time.monotonic()
        # Voilà executes every cell for this page, then the widgets render: allow for the whole notebook.
        times = exercise_tour(page, ref, report, prefix="voila", ready_timeout_ms=150_000)
    t_end = time.monotonic()
    report["timing_s"] = {"server_browser_page": round(t_loaded - t0, 1),
                          "notebook_ran_and_panels_ready": round(times["ready"] - t_loaded, 1),
                          "drag": round(times["dragged"] - times["drag"], 1),
                          "explorer_and_screens": round(times["done"] - times["dragged"], 1),
                          "shutdown": round(t_end - times["done"], 1), "total": round(t_end - t0, 1)}
    print_report(report, "tour e2e (Voilà)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "voila_e2e.json").write_text(json.dumps(report, indent=1))
