"""How far drill-down can go on random-weight maps (issue 29 part 2): SSIM against the share of positions computed.

Drill-down (``zf.occlusion(mode="drilldown")``) computes a share of the occluder positions exactly and
interpolates the rest, so its time is about that share of the exact map's; the question is what SSIM a share
can reach at all. Per model (random weights, smooth random images, 224 px, 32 px occluder, stride 8: 625
positions, the target the unoccluded top class), the exact maps of ``--images`` images are computed once; then:

- **check**: ``zf.occlusion(mode="drilldown")`` on image 0 against the same selection and interpolation fed
  the exact maps' values (the library's ``_drilldown`` with an ``evaluate`` that reads the exact maps): max abs
  diff, so the rows below are what the mode returns;
- **library**: the drill-down's own choice (coarse stride 16, the fine positions around the coarse positions
  with the largest drops of p(target)) at several ``refine`` shares;
- **oracle**: a choice no method can make, an upper bound for this kind of approximation: the coarse grid,
  then the fine positions around those where linear interpolation from the coarse grid is *known* (from the
  exact map) to err most, in both maps;
- each with the share of positions computed, SSIM (scikit-image, 7 x 7 windows, each map scaled to its own
  range; min and median over the images) of the p(target) map and the feature-map map (ZF Fig. 7 (b)), and
  how many images keep the position of the largest drop of p(target).

What a speed goal allows: the drill-down's time is about ``share`` times the exact map's (plus the coarse and
fine jobs' own set-ups), so ``goal`` x captum needs ``share <= (exact map's speed-up over captum) / goal``; the
exact map's speed-ups are measured by ``occlusion_first_call.py --only map`` (pass them with ``--exact``).

Run: ``.venv/bin/python benchmarks/drilldown_bound.py [--models resnet18] [--images 10] [--cache DIR]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from occlusion_modes import ssim  # noqa: E402

import zfwidgets as zf  # noqa: E402
from zfwidgets.analysis.occlusion import _coarse_indices, _drilldown, _linear_fill  # noqa: E402

MODELS = ("alexnet", "resnet18", "resnet50", "densenet121")
SIZE, STRIDE, N = 32, 8, 25
REFINES = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35)
# the exact map's speed-up over captum's best ppe, fresh process each (benchmarks/results/session12.md)
EXACT = {"alexnet": 2.20, "resnet18": 1.94, "resnet50": 2.27, "densenet121": 1.94}
GOAL = {"alexnet": 5.0, "resnet18": 5.0, "resnet50": 6.0, "densenet121": 6.0}


def exact_maps(name: str, images: int, cache: Path) -> list:
    path = cache / f"{name}-{images}.pt"
    if path.exists():
        return torch.load(path)
    lens = C.seeded_torchvision(name)
    layer = [i.name for i in lens.table if i.kind == "conv"][-1]
    out = []
    for seed in range(images):
        x = C.smooth_image(lens, seed)
        with torch.no_grad():
            target = int(lens.model(x).argmax())
        o = zf.occlusion(lens, x, size=SIZE, stride=STRIDE, target=target, layer=layer, progress=False)
        out.append({"seed": seed, "target": target, "layer": layer, "base_p": o.base_probability,
                    "maps": [o.feature_map, o.probability, o.top_class, o.top_probability]})
        print(f"   exact map of image {seed} done", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def reader(maps: list):
    """``_drilldown``'s ``evaluate``, reading the exact maps' values at the positions asked for."""
    flat = [m.flatten() for m in maps]

    def evaluate(index, total):
        return [m[index] for m in flat] + [torch.ones(index.shape[0], dtype=torch.bool)]
    return evaluate


def library(rec: dict, refine: float):
    fm, p, _, _, computed = _drilldown(reader(rec["maps"]), N, N, (STRIDE, STRIDE), None, refine, rec["base_p"])
    return fm, p, computed


def oracle(rec: dict, refine: float, k: int = 2):
    """Coarse grid, then the fine positions around the worst-interpolated ones (known from the exact maps)."""
    fm, p = rec["maps"][0].double(), rec["maps"][1].double()
    m = torch.zeros(N, N, dtype=torch.bool)
    c = torch.tensor(_coarse_indices(N, k))
    m[c[:, None], c[None, :]] = True
    coarse = int(m.sum())
    err = sum((_linear_fill(torch.where(m, v, 0 * v), m) - v).abs() / (v.max() - v.min()) for v in (fm, p))
    for j in err.flatten().argsort(descending=True).tolist():
        if int(m.sum()) - coarse >= refine * N * N:
            break
        y, x = divmod(j, N)
        m[max(y - k // 2, 0):y + k // 2 + 1, max(x - k // 2, 0):x + k // 2 + 1] = True
    return _linear_fill(torch.where(m, fm, 0 * fm), m), _linear_fill(torch.where(m, p, 0 * p), m), m


def scores(recs: list, choose, refine: float) -> dict:
    sp, sf, kept, share = [], [], 0, []
    for rec in recs:
        fm, p, computed = choose(rec, refine)
        sp.append(ssim(p, rec["maps"][1]))
        sf.append(ssim(fm, rec["maps"][0]))
        kept += int(p.argmin()) == int(rec["maps"][1].argmin())
        share.append(float(computed.float().mean()))
    return {"share": float(np.mean(share)), "p": (min(sp), float(np.median(sp))),
            "fm": (min(sf), float(np.median(sf))), "kept": kept}


def bench(name: str, images: int, cache: Path, exact: float, goal: float) -> None:
    print(f"\n== {name} (random weights), 224 px, {SIZE} px occluder, stride {STRIDE} (625 positions), {images} images")
    recs = exact_maps(name, images, cache)
    lens = C.seeded_torchvision(name)
    rec = recs[0]
    o = zf.occlusion(lens, C.smooth_image(lens, rec["seed"]), size=SIZE, stride=STRIDE, target=rec["target"],
                     layer=rec["layer"], progress=False, mode="drilldown")
    fm, p, computed = library(rec, 0.25)
    print(f"   check: mode='drilldown' on image 0 against the selection fed the exact values: positions equal "
          f"{bool(torch.equal(o.exact, computed))}, p max abs diff {C.abs_diff(o.probability, p):.1e}, "
          f"feature map max rel diff {C.rel_diff(o.feature_map, fm):.1e}")
    print("   | choice | refine | positions computed | SSIM p min / median | SSIM feature map min / median | "
          "largest drop kept |")
    for who, choose in (("library", library), ("oracle", oracle)):
        for r in REFINES:
            s = scores(recs, choose, r)
            print(f"   | {who} | {r:.2f} | {s['share']:.0%} | {s['p'][0]:.3f} / {s['p'][1]:.3f} | "
                  f"{s['fm'][0]:.3f} / {s['fm'][1]:.3f} | {s['kept']}/{len(recs)} |", flush=True)
    print(f"   speed: the exact map at {exact:.2f}x captum; {goal:.0f}x needs at most {exact / goal:.0%} of the "
          f"positions computed (before the drill-down's two set-ups)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "zfwidgets-bench" / "exact-maps")
    ap.add_argument("--exact", nargs="*", default=[], help="MODEL=SPEEDUP: the exact map's speed-up over captum")
    a = ap.parse_args()
    speed = dict(EXACT, **{k: float(v) for k, v in (s.split("=") for s in a.exact)})
    print(f"drill-down's reach on random-weight maps ({C.machine()})")
    for m in a.models:
        bench(m, a.images, a.cache, speed[m], GOAL[m])
    print(f"\nmachine at the end: {C.machine()}")


if __name__ == "__main__":
    main()
