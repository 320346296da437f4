"""A reduced memory soak (the full one: `python benchmarks/soak.py`, 10,000 moves and 1,000 projections)."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("psutil")

spec = importlib.util.spec_from_file_location("soak", Path(__file__).parents[2] / "benchmarks" / "soak.py")
soak_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak_module)


def test_moves_and_projections_do_not_accumulate_memory():
    r = soak_module.soak(moves=1500, projections=300, log=lambda s: None)
    assert r["renders"] >= 1500          # every move rendered (no event loop: each push is processed)
    assert r["hooks_left"] == 0
    from ..figures import report
    report("memory soak (reduced)", f"RSS growth {r['growth_mb']:.1f} MB over 1,500 moves and 300 projections")
    assert r["growth_mb"] < 50, r
