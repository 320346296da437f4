"""The Coalescer on its own: newest value only, processed when the loop is quiet, flushed on demand."""
import asyncio
import time

import pytest

from zfwidgets.widgets._events import Coalescer

from .util import idle


def test_without_a_loop_every_push_is_processed_at_once():
    seen = []
    c = Coalescer(seen.append)
    for v in range(5):
        c.push(v)
    assert seen == [0, 1, 2, 3, 4] and not c.has_pending


def test_quiet_time_waits_out_short_gaps_between_queued_messages():
    """Messages of a backlog can come a few ms apart (ipykernel's shell thread hands them over): a gap
    shorter than quiet_s does not trigger a run, a longer one does."""
    seen = []
    c = Coalescer(seen.append, quiet_s=0.02, max_wait=60)

    async def main():
        for v in range(5):
            c.push(v)
            await asyncio.sleep(0.004)          # quiet iterations, but only 4 ms
        assert seen == []
        await asyncio.sleep(0.06)
        assert seen == [4]

    asyncio.run(main())


def test_a_burst_inside_a_loop_is_processed_once_with_the_newest_value():
    seen = []
    c = Coalescer(seen.append, max_wait=60)

    async def burst():
        for v in range(1000):
            c.push(v)
            await asyncio.sleep(0)
        assert seen == []                       # nothing while messages keep coming
        await idle()

    asyncio.run(burst())
    assert seen == [999] and c.pushed == 1000 and c.processed == 1
    assert not c.has_pending and c._scheduled is None


def test_pushes_in_one_iteration_and_flush():
    seen = []
    c = Coalescer(seen.append)

    async def main():
        for v in range(10):
            c.push(v)                           # all in one iteration
        c.flush()                               # mouse up: now
        assert seen == [9]
        await idle()              # the scheduled drain finds nothing to do

    asyncio.run(main())
    assert seen == [9] and c._scheduled is None


def test_max_wait_processes_during_an_endless_stream():
    seen = []
    c = Coalescer(seen.append, max_wait=0.005)

    async def stream():
        t0 = time.monotonic()
        v = 0
        while time.monotonic() - t0 < 0.1:
            c.push(v)
            v += 1
            await asyncio.sleep(0)
        return v

    last = asyncio.run(stream())
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] < last


def test_errors_go_to_on_error_and_the_coalescer_keeps_working():
    errors, seen = [], []

    def process(v):
        if v == "bad":
            raise ValueError("boom")
        seen.append(v)
    c = Coalescer(process, on_error=errors.append)

    async def main():
        c.push("bad")
        await idle()
        c.push("good")
        await idle()

    asyncio.run(main())
    assert [str(e) for e in errors] == ["boom"] and seen == ["good"] and not c.busy


def test_cancel_drops_the_pending_value_and_ignores_later_pushes():
    seen = []
    c = Coalescer(seen.append)

    async def main():
        c.push(1)
        c.cancel()
        c.push(2)
        await idle()

    asyncio.run(main())
    assert seen == [] and not c.has_pending


def test_a_push_during_processing_is_processed_after_it():
    seen = []

    def process(v):
        seen.append(v)
        if v == 1:
            c.push(2)                           # e.g. a nested event loop delivered a message
    c = Coalescer(process)

    async def main():
        c.push(1)
        await idle()

    asyncio.run(main())
    assert seen == [1, 2]


@pytest.mark.parametrize("quiet", [1, 3])
def test_quiet_ticks(quiet):
    seen = []
    c = Coalescer(seen.append, quiet_ticks=quiet, quiet_s=0, max_wait=60)

    async def main():
        c.push("x")
        for _ in range(quiet - 1):              # quiet - 1 iterations after the push: not yet
            await asyncio.sleep(0)
        before = list(seen)
        for _ in range(3):
            await asyncio.sleep(0)
        return before

    before = asyncio.run(main())
    assert before == [] and seen == ["x"]
