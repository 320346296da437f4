"""The version is written once (zfwidgets.__version__) and the installed metadata carries that one."""
import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import zfwidgets

ROOT = Path(__file__).resolve().parents[2]


def test_version_matches_metadata():
    assert zfwidgets.__version__ == md.version("zfwidgets")
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*(\.dev\d+)?", zfwidgets.__version__)


def test_version_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "zfwidgets.__version__"}
