"""Occlusion maps in each mode (issue 29 part 2): exact, threshold, drilldown and fast against captum's
``Occlusion``, same process, same inputs; the approximations' error measured against the exact map.

Per model (random weights, smooth random images: 14 x 14 seeded noise scaled up to 224 x 224; 32 px occluder,
stride 8: 625 positions; the target is the unoccluded image's top class):

- **check first**: the exact map's p(target) per position against the probabilities captum's own forwards
  computed (captum's ``forward_func`` records them; max abs diff, target 1e-4);
- **time** on image 0: captum at its best ``perturbations_per_eval`` (a pilot on a 7 x 7 grid picks it among
  the model's candidates), then ``zf.occlusion`` in each mode, once each after a warm-up call on a coarse grid
  (the trace, the plan's first use for the input size); speed-up = captum's time / the mode's time;
- **quality** on ``--images`` images (default 10): each mode's map against the exact map of the same image:
  SSIM (scikit-image, 7 x 7 windows, each map scaled to its own range) of the p(target) map and of the
  feature-map map (the last conv layer's strongest map's total activation, ZF Fig. 7 (b)); max |dp| (the
  probability); how many images keep the position of the largest drop of p(target).

Peak memory is not measured here (``occlusion_first_call.py`` measures it per process): the approximations run
the exact mode's batches, the threshold's plan holds smaller windows than the exact one.

Run: ``.venv/bin/python benchmarks/occlusion_modes.py [--models resnet50 densenet121] [--images 10]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from occlusion_vs_captum import PPE, captum_contender, captum_order_to_map  # noqa: E402

import zfwidgets as zf  # noqa: E402

MODELS = ("alexnet", "resnet18", "resnet50", "densenet121", "mobilenet_v2")
MODES = ("exact", "threshold", "drilldown", "fast")
SIZE, STRIDE = 32, 8


def ssim(a, b) -> float:
    from skimage.metrics import structural_similarity
    a, b = np.asarray(a, float), np.asarray(b, float)
    a = (a - a.min()) / (np.ptp(a) or 1.0)
    b = (b - b.min()) / (np.ptp(b) or 1.0)
    return float(structural_similarity(a, b, data_range=1.0))


def zf_map(lens, x, target, layer, mode, **kw):
    return zf.occlusion(lens, x, size=SIZE, stride=STRIDE, target=target, layer=layer, progress=False,
                        mode=mode, **kw)


def bench(name: str, images: int, params: dict) -> list:
    lens = C.seeded_torchvision(name)
    layer = [i.name for i in lens.table if i.kind == "conv"][-1]
    xs = [C.smooth_image(lens, seed) for seed in range(images)]
    with torch.no_grad():
        targets = [int(lens.model(x).argmax()) for x in xs]
    x, target = xs[0], targets[0]
    zf.occlusion(lens, x, size=SIZE, stride=4 * STRIDE, target=target, layer=layer, progress=False)   # warm-up
    print(f"\n== {name} (random weights), 224 px, {SIZE} px occluder, stride {STRIDE} (625 positions), layer {layer}")

    record = []
    captum_contender(lens, x, SIZE, STRIDE, target, PPE[name][1], record)()
    rec = torch.cat(record)
    ny = nx = 25
    ref = captum_order_to_map(rec[1:], ny, nx)
    t0 = time.perf_counter()
    exact = zf_map(lens, x, target, layer, "exact")
    t_exact = time.perf_counter() - t0
    print(f"   check: exact map vs captum's own forwards, p(target) max abs diff {C.abs_diff(exact.probability, ref):.2e}")

    pilot = {n: captum_contender(lens, x, SIZE, 4 * STRIDE, target, n) for n in PPE[name]}
    pt = C.interleaved(pilot, runs=1, warmup=0)
    best = min(PPE[name], key=lambda n: pt[n][0])
    t0 = time.perf_counter()
    captum_contender(lens, x, SIZE, STRIDE, target, best)()
    t_captum = time.perf_counter() - t0
    print(f"   captum ppe={best}: {C.fmt_s(t_captum)}")

    times = {"exact": t_exact}
    for mode in MODES[1:]:
        t0 = time.perf_counter()
        zf_map(lens, x, target, layer, mode, **params.get(mode, {}))
        times[mode] = time.perf_counter() - t0

    quality = {m: {"ssim_p": [], "ssim_fm": [], "dp": [], "argmax": 0, "exact_share": []} for m in MODES[1:]}
    for x_i, t_i in zip(xs, targets):
        ex = exact if x_i is x else zf_map(lens, x_i, t_i, layer, "exact")
        for mode in MODES[1:]:
            o = zf_map(lens, x_i, t_i, layer, mode, **params.get(mode, {}))
            q = quality[mode]
            q["ssim_p"].append(ssim(o.probability, ex.probability))
            q["ssim_fm"].append(ssim(o.feature_map, ex.feature_map))
            q["dp"].append(float((o.probability - ex.probability).abs().max()))
            q["argmax"] += int(o.probability.argmin()) == int(ex.probability.argmin())
            q["exact_share"].append(float(o.exact.float().mean()))
    rows = []
    print("   | mode | time | x captum | x exact | SSIM p (min / median) | SSIM feature map (min / median) | "
          "max abs dp | largest drop kept | computed exactly |")
    for mode in MODES:
        t = times[mode]
        if mode == "exact":
            line = f"   | exact | {C.fmt_s(t)} | {t_captum / t:.2f}x | 1.00x | 1 | 1 | 0 | {images}/{images} | 100% |"
            rows.append({"model": name, "mode": mode, "s": t, "captum_s": t_captum, "ratio": t_captum / t})
        else:
            q = quality[mode]
            line = (f"   | {mode} {params.get(mode, {})} | {C.fmt_s(t)} | {t_captum / t:.2f}x | {t_exact / t:.2f}x | "
                    f"{min(q['ssim_p']):.3f} / {np.median(q['ssim_p']):.3f} | "
                    f"{min(q['ssim_fm']):.3f} / {np.median(q['ssim_fm']):.3f} | {max(q['dp']):.4f} | "
                    f"{q['argmax']}/{images} | {np.mean(q['exact_share']):.0%} |")
            rows.append({"model": name, "mode": mode, "s": t, "captum_s": t_captum, "ratio": t_captum / t,
                         "ssim_p": min(q["ssim_p"]), "ssim_fm": min(q["ssim_fm"]), "dp": max(q["dp"]),
                         "kept": q["argmax"]})
        print(line, flush=True)
    print(f"   machine: {C.machine()}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--tau", type=float, default=None, help="threshold and fast's tau (default: the library's)")
    ap.add_argument("--coarse-stride", type=int, default=None)
    ap.add_argument("--refine", type=float, default=None)
    a = ap.parse_args()
    kw = {k: v for k, v in (("tau", a.tau), ("coarse_stride", a.coarse_stride), ("refine", a.refine)) if v is not None}
    params = {"threshold": {k: v for k, v in kw.items() if k == "tau"},
              "drilldown": {k: v for k, v in kw.items() if k != "tau"}, "fast": kw}
    print(f"occlusion modes vs captum ({C.machine()})")
    return [r for m in a.models for r in bench(m, a.images, params)]


if __name__ == "__main__":
    main()
