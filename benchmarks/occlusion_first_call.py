"""Occlusion in a fresh process: time of the first call and peak memory, zfwidgets against captum and a plain loop.

Issue 29's part 1 asks two things no warm, in-process benchmark can show: the peak memory of a whole map
(``zf.occlusion`` against captum's ``Occlusion`` at its best ``perturbations_per_eval``), and what a
researcher's *first* call costs (trace, plan, timing probes, the projection included) against a plain loop
of batched forwards of the occluded images. Each contender runs alone in a fresh Python process (the model
built there from the same seed, the same input), which reports its own wall time around the call and its
peak resident memory (``ru_maxrss``: the process's whole footprint, torch and the model included, the same
for every contender).

Rows per model (random weights, smooth random image):
- **map**: 224 x 224, 32 px occluder, stride 8 (625 positions): ``zf.occlusion`` once, captum once per
  ``perturbations_per_eval`` in ``PPE`` (the fastest is the peer; its memory is reported beside ours).
- **first call, small grid**: 128 x 128, 32 px occluder, stride 24 (5 x 5 = 25 positions): ``zf.occlusion``
  against a plain loop (the 25 occluded images built with :func:`zfwidgets.occlude`, one batched forward,
  softmax); ``--repeat`` pairs of fresh processes, interleaved, the ratio of the medians (one pair's times
  vary by +-20% from process to process). The bound beside it: the same loop preceded by one batch-1 forward
  of the unoccluded image (its first calls at batch 1 included), what any method pays that needs the
  unoccluded response (the default target, the followed map) and the model's shapes before the job.

**Equal first**: every contender writes its p(target) map; the parent compares zfwidgets' with captum's
recorded probabilities (captum order converted) and with the plain loop's (max abs diff) before printing
any time.

Run: ``.venv/bin/python benchmarks/occlusion_first_call.py [--models densenet121 ...]``
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("alexnet", "resnet18", "resnet50", "densenet121", "mobilenet_v2")
PPE = (16, 32, 64)
MAP = dict(side=224, size=32, stride=8)
SMALL = dict(side=128, size=32, stride=24)


def child(spec: dict) -> None:
    """Run one contender; print one JSON line: seconds, peak RSS in MB, and the saved map's path."""
    import resource
    import time

    import torch
    sys.path.insert(0, str(HERE))
    import _common as C
    import zfwidgets as zf
    from zfwidgets.analysis.occlusion import occluder_grid

    lens = C.seeded_torchvision(spec["model"], input_size=(3, spec["side"], spec["side"]))
    g = torch.Generator().manual_seed(0)
    # smooth random image: low-resolution noise scaled up (random weights make flat maps on white noise)
    x = torch.nn.functional.interpolate(torch.randn(1, 3, 14, 14, generator=g), size=spec["side"],
                                        mode="bilinear", align_corners=False)
    with torch.no_grad():
        target = int(lens.model(x).argmax())
    size, stride = spec["size"], spec["stride"]
    who = spec["who"]
    t0 = time.perf_counter()
    if who == "zfwidgets":
        pmap = zf.occlusion(lens, x, size=size, stride=stride, target=target, progress=False).probability
    elif who == "captum":
        from captum.attr import Occlusion
        record = []

        def forward(inp):
            p = lens.model(inp).softmax(1)
            record.append(p[:, target].detach().clone())
            return p
        with torch.no_grad():
            Occlusion(forward).attribute(x, sliding_window_shapes=(3, size, size), strides=(3, stride, stride),
                                         baselines=0.0, target=target, perturbations_per_eval=spec["ppe"])
        ys, xs, _ = occluder_grid(spec["side"], spec["side"], size, stride)
        pmap = torch.cat(record)[1:].view(len(xs), len(ys)).T          # captum steps down the rows first
    else:                                                               # the plain loop of batched forwards
        _, _, boxes = occluder_grid(spec["side"], spec["side"], size, stride)
        flat = boxes.view(-1, 4)
        with torch.no_grad():
            if who == "loop+1":           # first the unoccluded image alone, as anything that needs its response
                lens.model(x).softmax(1)
            probs = []
            for i in range(0, flat.shape[0], spec["ppe"]):
                batch = torch.cat([zf.occlude(lens, x, tuple(int(v) for v in b)) for b in flat[i:i + spec["ppe"]]])
                probs.append(lens.model(batch).softmax(1)[:, target])
        pmap = torch.cat(probs).view(boxes.shape[:2])
    seconds = time.perf_counter() - t0
    out = Path(spec["out"])
    torch.save(pmap.detach().float().cpu(), out)
    print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "map": str(out)}))


def run_child(spec: dict, tmp: Path) -> dict:
    spec = dict(spec, out=str(tmp / f"{spec['model']}-{spec['who']}-{spec.get('ppe', 0)}-{spec['side']}.pt"))
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if res.returncode != 0:
        raise RuntimeError(f"{spec}: {res.stderr[-2000:]}")
    return dict(spec, **json.loads(res.stdout.strip().splitlines()[-1]))


def main():
    import argparse

    import torch
    sys.path.insert(0, str(HERE))
    import _common as C
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--only", choices=("map", "small"), default=None, help="one kind of row only")
    p.add_argument("--repeat", type=int, default=5, help="first calls: interleaved fresh-process pairs (median)")
    args = p.parse_args()
    print(f"occlusion in a fresh process ({C.machine()})")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for m in args.models:
            if args.only in (None, "map"):
                ours = run_child(dict(model=m, who="zfwidgets", **MAP), tmp)
                peers = [run_child(dict(model=m, who="captum", ppe=n, **MAP), tmp) for n in PPE]
                best = min(peers, key=lambda r: r["seconds"])
                diff = float((torch.load(ours["map"]) - torch.load(best["map"])).abs().max())
                print(f"\n== {m}: map, 224 px, 32 px occluder, stride 8 (625 positions), fresh process each")
                print(f"   check: p(target) zfwidgets vs captum's own forwards, max abs diff {diff:.2e}")
                print("   captum: " + ", ".join(f"ppe={r['ppe']} {r['seconds']:.2f} s / {r['peak_mb']:.0f} MB"
                                                 for r in peers))
                print(f"   zfwidgets {ours['seconds']:.2f} s, peak {ours['peak_mb']:.0f} MB; captum (ppe={best['ppe']}) "
                      f"{best['seconds']:.2f} s, peak {best['peak_mb']:.0f} MB; speed ratio "
                      f"{best['seconds'] / ours['seconds']:.2f}x (goal >= 1.0), memory ratio "
                      f"{ours['peak_mb'] / best['peak_mb']:.2f}x (goal <= 1.5)")
            if args.only in (None, "small"):
                runs = [(run_child(dict(model=m, who="zfwidgets", **SMALL), tmp),
                         run_child(dict(model=m, who="loop", ppe=25, **SMALL), tmp),
                         run_child(dict(model=m, who="loop+1", ppe=25, **SMALL), tmp)) for _ in range(args.repeat)]
                ours, loop, _ = runs[0]
                diff = float((torch.load(ours["map"]) - torch.load(loop["map"])).abs().max())
                zs = sorted(r[0]["seconds"] for r in runs)
                ls = sorted(r[1]["seconds"] for r in runs)
                ones = sorted(r[2]["seconds"] for r in runs)
                zt, lt, ot = zs[len(zs) // 2], ls[len(ls) // 2], ones[len(ones) // 2]
                print(f"\n== {m}: first call, 128 px, 32 px occluder, stride 24 (25 positions), fresh process each, "
                      f"{args.repeat} interleaved pairs")
                print(f"   check: p(target) zfwidgets vs the plain loop, max abs diff {diff:.2e}")
                print(f"   zfwidgets {' '.join(f'{t:.2f}' for t in zs)} s, peak {ours['peak_mb']:.0f} MB; plain loop "
                      f"(one batch of 25) {' '.join(f'{t:.2f}' for t in ls)} s, peak {loop['peak_mb']:.0f} MB; "
                      f"ratio of medians {lt / zt:.2f}x (goal >= 0.95)")
                print(f"   bound: the loop after one batch-1 forward of the unoccluded image {' '.join(f'{t:.2f}' for t in ones)}"
                      f" s: anything that reads the unoccluded response before the job reaches at most {lt / ot:.2f}x")
            sys.stdout.flush()
    print(f"\nmachine at the end: {C.machine()}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
