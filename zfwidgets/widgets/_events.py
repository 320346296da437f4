"""Coalescing a flood of mouse events: only the newest pending event is ever processed.

Why: in a kernel every mouse move reaches Python as its own comm message. While the panel updates its view
for one move (a forward pass, encoding a PNG), the browser keeps sending moves; they queue in the kernel's
shell socket and are then dispatched one by one, each after the previous one. Processing each in turn makes
the view lag further and further behind the mouse.

How (:class:`Coalescer`): a handler only calls :meth:`Coalescer.push`, which overwrites one *pending slot*
with the newest value (O(1), microseconds) and, if no drain is scheduled yet, schedules :meth:`_drain` on
the kernel's asyncio loop. The drain runs ``process`` once, on the newest value, with a *busy* flag set, when
the kernel is free, which it judges by two signs together: ``quiet_ticks`` consecutive loop iterations
brought no new push (every message already read and queued has been dispatched), and no push came for
``quiet_s`` seconds (ipykernel reads messages on a separate shell-channel thread and hands them over to the
main thread one by one, so within a backlog there can be short gaps, up to the interpreter's 5 ms thread
switch interval; real mouse moves arrive one per frame, 16 ms or more apart). Until then the drain polls,
once per iteration while pushes keep coming and with ``call_later`` while it waits out ``quiet_s``. A push
that arrives while busy (for instance through a nested event loop) just fills the slot again and a new drain
is scheduled after the current run ends. If pushes never stop (a continuous drag the loop never gets quiet
in), ``max_wait`` seconds after the oldest unprocessed push the newest one is processed anyway, so the view
keeps moving. :meth:`flush` processes the pending value now (used on mouse-down and mouse-up: by the time
the mouse-up message is dispatched every earlier move has been pushed, so the final view is that of the
last event).

Without a running asyncio loop (a script, or a test calling handlers directly) each push is processed at
once: there is no queue to coalesce. Tests simulate the kernel by running pushes inside an asyncio loop, one
per iteration, exactly as queued comm messages arrive.

Example:
    >>> seen = []
    >>> moves = Coalescer(seen.append)               # e.g. lambda xy: panel.move_to(*xy)
    >>> for xy in [(1, 1), (2, 2), (3, 3)]:           # e.g. canvas.on_mouse_move(lambda x, y: moves.push((x, y)))
    ...     moves.push(xy)
    >>> seen
    [(1, 1), (2, 2), (3, 3)]
"""
from __future__ import annotations

import asyncio
import time

__all__ = ["Coalescer"]

_EMPTY = object()


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Coalescer:
    """Process only the newest of a burst of values, when the kernel is free (see the module docstring).

    Args:
        process: called with the newest value; its exceptions go to ``on_error`` (default: re-raised).
        quiet_ticks: event-loop iterations without a new push before processing.
        quiet_s: seconds without a new push before processing.
        max_wait: seconds after which a pending value is processed even if pushes keep coming.
        on_error: ``f(exception)`` for exceptions raised by ``process`` when run from the loop.

    Counters for tests and benchmarks: ``pushed`` (values received), ``processed`` (runs of ``process``).
    """

    def __init__(self, process, *, quiet_ticks: int = 3, quiet_s: float = 0.008, max_wait: float = 0.1,
                 on_error=None):
        self.process = process
        self.quiet_ticks = quiet_ticks
        self.quiet_s = quiet_s
        self.max_wait = max_wait
        self.on_error = on_error
        self.pending = _EMPTY
        self.busy = False
        self.pushed = 0
        self.processed = 0
        self._seq = 0               # number of pushes, to notice new ones between loop iterations
        self._scheduled = None      # the loop handle of the scheduled drain
        self._since = None          # time of the oldest unprocessed push
        self._last = 0.0            # time of the newest push
        self._closed = False

    @property
    def has_pending(self) -> bool:
        return self.pending is not _EMPTY

    def push(self, value) -> None:
        """Record ``value`` as the newest pending one (cheap); it is processed when the kernel is free."""
        if self._closed:
            return
        self.pending = value
        self.pushed += 1
        self._seq += 1
        self._last = time.monotonic()
        if self._since is None:
            self._since = self._last
        loop = _running_loop()
        if loop is None:
            self.flush()
        elif self._scheduled is None and not self.busy:
            self._schedule(loop, self._seq, 0)

    def flush(self) -> None:
        """Process the pending value now (if any and not already busy)."""
        if self.busy or self.pending is _EMPTY or self._closed:
            return
        value, self.pending, self._since = self.pending, _EMPTY, None
        self.busy = True
        try:
            self.processed += 1
            self.process(value)
        finally:
            self.busy = False
        if self.pending is not _EMPTY:          # pushed during process (nested loop): go again later
            loop = _running_loop()
            if loop is not None and self._scheduled is None:
                self._schedule(loop, self._seq, 0)

    def cancel(self) -> None:
        """Forget the pending value and any scheduled drain; later pushes are ignored."""
        self._closed = True
        self.pending = _EMPTY
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None

    # ----- the drain, one step per loop iteration ---------------------------------------------------
    def _schedule(self, loop, seen: int, quiet: int, delay: float = 0.0) -> None:
        if delay > 0:
            self._scheduled = loop.call_later(delay, self._drain, seen, quiet)
        else:
            self._scheduled = loop.call_soon(self._drain, seen, quiet)

    def _drain(self, seen: int, quiet: int) -> None:
        self._scheduled = None
        if self._closed or self.pending is _EMPTY:
            return
        if self.busy:                            # flush runs further up the stack; it reschedules itself
            return
        quiet = quiet + 1 if self._seq == seen else 0
        now = time.monotonic()
        overdue = self._since is not None and now - self._since >= self.max_wait
        if not overdue:
            loop = _running_loop() or asyncio.get_event_loop()
            if quiet < self.quiet_ticks:         # messages are still being dispatched: look again next turn
                self._schedule(loop, self._seq, quiet)
                return
            wait = self.quiet_s - (now - self._last)
            if wait > 0:                         # the loop is idle, but a push came very recently: wait it out
                self._schedule(loop, self._seq, quiet, min(wait, self.max_wait - (now - self._since)))
                return
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - handed to the panel's error area
            if self.on_error is None:
                raise
            self.on_error(exc)
