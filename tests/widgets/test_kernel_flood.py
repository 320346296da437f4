"""The occluder's mouse-move coalescing in a real ipykernel: 1000 ``mouse_move`` comm messages sent as fast as a
client can, while every update is made slow (20 ms, like a big model), then ``mouse_up``. The kernel must
render far fewer than 1000 times and end on the last event; nothing may stay queued.

This drives the kernel's own message loop (ZMQ shell socket → dispatch → comm → ipycanvas → panel), so it
checks the mechanism the unit tests simulate. About 5 s (a kernel start and one model)."""
import json
import os
import sys

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


def test_1000_moves_to_a_busy_kernel_are_coalesced(tmp_path):
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="python3")          # ipykernel's native spec: this interpreter
    km.start_kernel(cwd=str(tmp_path), env={**os.environ, "OMP_NUM_THREADS": "1"})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        setup = json.loads(_run(kc, SETUP).strip().splitlines()[-1])
        assert os.path.realpath(setup["python"]) == os.path.realpath(sys.executable)
        comm_id = setup["model_id"]
        _send_event(kc, comm_id, "mouse_down", 10, 10)
        xs = [(7 * i) % 224 for i in range(1000)]
        ys = [(13 * i + 5) % 224 for i in range(1000)]
        for x, y in zip(xs, ys):
            _send_event(kc, comm_id, "mouse_move", x, y)
        _send_event(kc, comm_id, "mouse_up", xs[-1], ys[-1])
        report = json.loads(_run(kc, REPORT).strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    y0 = min(max(int((ys[-1] / 8 - 4 + 0.5) // 1), 0), 20)
    x0 = min(max(int((xs[-1] / 8 - 4 + 0.5) // 1), 0), 20)
    print(f"renders for 1002 events: {report['renders']}")
    assert report["error"] is None
    assert report["pushed"] == 1 + 1002                     # the first view, then down + 1000 moves + up
    assert report["renders"] <= 50, report["renders"]       # far fewer than 1000
    assert tuple(report["box"]) == (y0, x0, y0 + 8, x0 + 8)  # the view of the last event
    assert not report["pending"] and not report["scheduled"]
    assert abs(report["top1_p"] - report["api_p"]) < 1e-6
    assert f'data-box="{y0},{x0},{y0 + 8},{x0 + 8}"' in report["probs_html"]
