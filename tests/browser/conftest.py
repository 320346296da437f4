"""Browser tests: every test here is marked `browser`; without Chromium or Playwright they are skipped
locally with the reason, and fail in CI (CI set), so CI can never pass by skipping them."""

import os
from pathlib import Path

import pytest

from .jupyter import CHROMIUM

HERE = Path(__file__).resolve().parent

# The notebooks here are inputs for the browser tests, not tutorials: nbval must not run them on its own.
collect_ignore_glob = ["*.ipynb"]


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (scripts/setup installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not importable ({exc}); scripts/setup installs the test extra"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    in_ci = bool(os.environ.get("CI"))
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.browser)
        if reason and not in_ci:
            item.add_marker(pytest.mark.skip(reason=f"browser test skipped: {reason}"))


@pytest.fixture(autouse=True)
def _browser_prerequisites():
    reason = _missing()
    if reason:
        pytest.fail(f"CI is set, so the browser test fails instead of skipping: {reason}", pytrace=False)
