"""Sphinx configuration for the zfwidgets documentation (`bash scripts/docs` builds it into docs/_build/html).

Before the build, the tutorials are copied from ../notebooks into tutorials/ (rendered from their stored
outputs, not executed) and each method page's figure is taken from its tutorial's stored output into
_generated/figures/; both folders are build products (git-ignored).
"""
import base64
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import zfwidgets  # noqa: E402

project = "zfwidgets"
author = "the zfwidgets authors"
copyright = "2026, the zfwidgets authors"
release = version = zfwidgets.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_nb"]
html_theme = "furo"
html_title = f"zfwidgets {release}"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorials/README.md"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = "off"          # the tutorials are shown with their stored outputs
nb_merge_streams = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
suppress_warnings = ["mystnb.unknown_mime_type"]


def _copy_tutorials():
    out = HERE / "tutorials"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(nb, out / nb.name)


def _extract_figures():
    out = HERE / "_generated" / "figures"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for page, notebook, nth in json.loads((HERE / "methods" / "figures.json").read_text()):
        nb = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
        pngs = [o["data"]["image/png"] for c in nb["cells"] if c["cell_type"] == "code"
                for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        if len(pngs) <= nth:
            raise RuntimeError(f"docs: {notebook}.ipynb has {len(pngs)} stored figures, the page {page} wants "
                               f"figure {nth}; re-execute the notebook (bash scripts/execute_notebooks)")
        png = pngs[nth]
        (out / f"{page}.png").write_bytes(base64.b64decode("".join(png) if isinstance(png, list) else png))


_copy_tutorials()
_extract_figures()
