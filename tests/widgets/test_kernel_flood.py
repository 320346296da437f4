"""The occluder's mouse-move coalescing in a real ipykernel, with every update made slow (20 ms, like a big
model): 1000 ``mouse_move`` comm messages arriving while a cell keeps the kernel busy (a backlog: the newest
only is rendered), then 1000 more streamed as fast as a client can send them (at most one render per 20 ms).
Each time the view must end on the last event with nothing left queued.

This drives the kernel's own message loop (ZMQ shell socket → dispatch → comm → ipycanvas → panel), so it
checks the mechanism the unit tests simulate. About 5 s (a kernel start and one model)."""
import json
import os
import sys
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

SETUP = r"""
import json, time, torch, numpy as np
torch.set_num_threads(1)
import zfwidgets
from zfwidgets import Lens
from zfwidgets.zoo.models import build
torch.manual_seed(0)
lens = Lens(build("zfnet-fashion").eval(), input_size=(1, 28, 28), mean=[0.286], std=[0.353])
panel = zfwidgets.OcclusionPanel(lens, zfwidgets.samples()[9], size=8)
renders = []
_render = panel._render
def slow_render(box, center):
    time.sleep(0.02)                       # the kernel is busy while moves keep arriving
    renders.append(box)
    _render(box, center)
panel._render = slow_render
import sys
print(json.dumps({"model_id": panel.occluder.canvas.model_id, "python": sys.executable}))
"""

REPORT = r"""
from zfwidgets.analysis.occlusion import occlude
s = panel.state
p = lens.predict(occlude(lens, zfwidgets.samples()[9].image, s["box"]))
print(json.dumps({"box": s["box"], "renders": len(renders), "pushed": panel._moves.pushed,
                  "pending": s["pending"], "scheduled": panel._moves._scheduled is not None,
                  "top1_p": s["top1"][2], "api_p": float(p.max()), "error": s["error"],
                  "probs_html": panel.probs.value}))
"""


def _run(kc, code, timeout=120):
    """Execute ``code``; return its stdout (raises with the traceback on error)."""
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        t = msg["msg_type"]
        if t == "stream":
            out.append(msg["content"]["text"])
        elif t == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        elif t == "status" and msg["content"]["execution_state"] == "idle":
            break
    return "".join(out)


def _send_event(kc, comm_id, event, x, y):
    content = {"comm_id": comm_id,
               "data": {"method": "custom", "content": {"event": event, "x": float(x), "y": float(y)}}}
    kc.session.send(kc.shell_channel.socket, "comm_msg", content)


def _box(x, y):
    y0 = min(max(int((y / 8 - 4 + 0.5) // 1), 0), 20)
    x0 = min(max(int((x / 8 - 4 + 0.5) // 1), 0), 20)
    return (y0, x0, y0 + 8, x0 + 8)


def test_1000_moves_to_a_busy_kernel_are_coalesced(tmp_path):
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="python3")          # ipykernel's native spec: this interpreter
    km.start_kernel(cwd=str(tmp_path), env={**os.environ, "OMP_NUM_THREADS": "1"})
    kc = km.client()
    kc.start_channels()
    xs = [(7 * i) % 224 for i in range(1000)]
    ys = [(13 * i + 5) % 224 for i in range(1000)]
    try:
        kc.wait_for_ready(timeout=60)
        setup = json.loads(_run(kc, SETUP).strip().splitlines()[-1])
        assert os.path.realpath(setup["python"]) == os.path.realpath(sys.executable)
        comm_id = setup["model_id"]

        # 1. The kernel is busy (a cell runs for 3 s) while the whole drag arrives: 1000 moves pile up in its
        #    socket. Once free it reads them all and renders the newest only.
        kc.execute("import time; time.sleep(3)")
        t0 = time.monotonic()
        _send_event(kc, comm_id, "mouse_down", 10, 10)
        for x, y in zip(xs, ys):
            _send_event(kc, comm_id, "mouse_move", x, y)
        sent_while_busy = time.monotonic() - t0 < 2.5
        _run(kc, "import asyncio\nawait asyncio.sleep(0.5)")   # the kernel is free: the drain runs
        backlog = json.loads(_run(kc, REPORT).strip().splitlines()[-1])

        # 2. The moves stream in while every render takes 20 ms: the kernel renders whenever it is free, on the
        #    newest move, so at most one render per 20 ms of streaming.
        t0 = time.monotonic()
        for x, y in zip(xs[::-1], ys[::-1]):
            _send_event(kc, comm_id, "mouse_move", x, y)
        _send_event(kc, comm_id, "mouse_up", xs[0], ys[0])
        send_s = time.monotonic() - t0
        stream = json.loads(_run(kc, REPORT).strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    from ..figures import report
    report("kernel flood", f"{backlog['renders'] - 1} renders for a backlog of 1001 events, "
                           f"{stream['renders'] - backlog['renders']} for 1001 events streamed over {send_s:.2f} s")
    assert backlog["error"] is None and stream["error"] is None
    assert backlog["pushed"] == 1 + 1001                    # the first view, then down + 1000 moves
    assert backlog["box"] == list(_box(xs[-1], ys[-1]))      # the view of the newest event
    if sent_while_busy:
        # mouse down, then the newest move: about 2 renders on an idle machine. Under CPU contention the
        # kernel's shell thread hands the backlog over with gaps longer than quiet_s, and the drain may fire
        # inside it (31 renders measured with two training processes on both cores): still a small fraction.
        assert backlog["renders"] - 1 <= 50, backlog["renders"]
    assert not backlog["pending"] and not backlog["scheduled"]
    assert abs(backlog["top1_p"] - backlog["api_p"]) < 1e-6

    assert stream["pushed"] == backlog["pushed"] + 1001
    renders = stream["renders"] - backlog["renders"]
    # Far fewer renders than events. (On an idle machine about one per 20 ms of sending; under CPU contention the
    # kernel reads the queue after the sending ends, in bursts, so the count is bounded by events, not send time:
    # 29 renders for 1001 events measured with both cores busy.)
    assert renders < 100, (renders, send_s)
    assert tuple(stream["box"]) == _box(xs[0], ys[0])        # the view of the last event
    assert not stream["pending"] and not stream["scheduled"]
    assert abs(stream["top1_p"] - stream["api_p"]) < 1e-6
    assert 'data-box="{},{},{},{}"'.format(*_box(xs[0], ys[0])) in stream["probs_html"]
