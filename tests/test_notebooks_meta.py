"""Structure of the tutorial notebooks (issue 6); nbval runs them (``pytest --nbval-lax notebooks``).

These checks read the committed files only (no kernel): every notebook has a parameter cell, cells whose
printed results nbval compares, outputs from one fresh top-to-bottom run without errors, and a size that
a static viewer handles.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
NUMBERED = [p for p in ALL if re.match(r"\d\d_", p.name)]
CHECK = "# NBVAL_CHECK_OUTPUT"
MAX_BYTES = 1_500_000


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _text(output):
    if output.get("output_type") == "stream":
        return "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
    data = output.get("data", {})
    text = data.get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def test_the_tour_and_one_notebook_per_method_section_exist():
    names = [p.name for p in ALL]
    assert "00_tour.ipynb" in names
    prefixes = {p.name[:2] for p in NUMBERED}
    assert {f"{k:02d}" for k in range(11)} <= prefixes, sorted(prefixes)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_notebook_structure(path):
    nb = _load(path)
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and _src(cells[0]).startswith("# "), "starts with a title"

    code = [c for c in cells if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert code[0] is params[0], "the parameter cell is the first code cell"
    p = _src(params[0])
    assert re.search(r'^MODEL = "[a-z-]+fashion"', p, re.M), "the default model is a bundled one (offline)"
    assert "WEIGHTS" in p, "the parameter cell says how to switch to torchvision weights"

    checked = [c for c in code if _src(c).splitlines()[0:1] == [CHECK]]
    assert checked, "at least one cell whose printed results nbval compares"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_committed_outputs_are_one_fresh_run(path):
    nb = _load(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not one top-to-bottom run: execution counts {counts}"
    for c in code:
        for o in c.get("outputs", []):
            assert o["output_type"] != "error", f"error output in: {_src(c)[:80]!r}"
            assert not (o["output_type"] == "stream" and o.get("name") == "stderr"
                        and "Traceback" in _text(o)), f"traceback on stderr in: {_src(c)[:80]!r}"
    for c in code:
        if _src(c).splitlines()[0:1] == [CHECK]:
            outs = c.get("outputs", [])
            assert outs, f"checked cell without stored output: {_src(c)[:80]!r}"
            for o in outs:
                assert o["output_type"] == "stream" and o.get("name") == "stdout", \
                    f"checked cells print text only: {_src(c)[:80]!r}"
                assert not re.search(r"0x[0-9a-f]{6,}", _text(o)), "a memory address in a checked output"
    figures = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert figures >= 1, "at least one static figure for readers without a kernel"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_size_and_no_stored_widget_state(path):
    assert path.stat().st_size < MAX_BYTES
    assert "widgets" not in _load(path)["metadata"], "widget state is not stored (scripts/execute_notebooks)"
