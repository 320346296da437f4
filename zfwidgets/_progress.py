"""Progress bars for long loops: a widget bar in notebooks, a text bar on a terminal, nothing in scripts."""
from __future__ import annotations

import sys

__all__ = ["progress"]


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
        ip = get_ipython()
        return ip is not None and "IPKernelApp" in ip.config
    except Exception:  # noqa: BLE001
        return False


def progress(iterable=None, *, total=None, desc=None, enabled=True):
    """Wrap ``iterable`` in a progress bar when someone can see it.

    ``enabled`` may be ``True`` (show when interactive), ``False`` (never), or a callable
    ``f(done, total)`` that receives updates (panels pass their own bar's setter).

    Example:
        >>> batches = [list(range(8))] * 3
        >>> for batch in progress(batches, total=len(batches), desc="mining", enabled=False):
        ...     pass
    """
    if callable(enabled):
        return _Callback(iterable, total, enabled)
    if not enabled:
        return iterable if iterable is not None else _Null()
    if in_notebook():
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, leave=False)
    if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable if iterable is not None else _Null()


class _Null:
    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Callback:
    def __init__(self, iterable, total, fn):
        self.iterable, self.total, self.fn, self.done = iterable, total, fn, 0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n=1):
        self.done += n
        self.fn(self.done, self.total)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
