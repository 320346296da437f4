"""Top-9 mining throughput: ``zfwidgets.top_activations`` against a plain batched ``inference_mode`` forward.

Same images (a seeded N x C x H x W tensor of model input), same batch size (64), one process, runs
interleaved. Two zfwidgets figures:

- **mining** ``top_activations(lens, images, "conv5", channels=[0])``: the streaming pass over all images
  (every map's top 9 is tracked the same way whatever the channels; one channel keeps the after-pass small:
  9 projections);
- **all maps** ``top_activations(lens, images, "conv5")``: the default, every map of the layer, including the
  9 deconvnet projections (and patches) per map after the pass, a cost that does not grow with N.

The plain forward runs the whole model (``model(batch)`` under ``torch.inference_mode()``); the mining
pass stops at the layer. The check: the top-9 values of map 0 equal those found from the plain forward's
captured activations (max abs diff).

Run: ``.venv/bin/python benchmarks/topk_throughput.py [--models alexnet bundled] [--runs 5]``
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import zfwidgets as zf  # noqa: E402

N_IMAGES = {"alexnet": 512, "vgg16": 128, "bundled": 4096}
ALL_MAPS_RUNS = {"alexnet": 1, "vgg16": 1, "bundled": 5}   # AlexNet's conv5: 256 maps x 9 projections


def top_all_channels(lens, layer) -> list:
    m = lens.resolve(layer)[2]
    return list(range(m.out_channels))


def lens_for(name: str):
    if name == "bundled":
        return C.bundled()
    return C.seeded_torchvision(name), "random weights"


def bench(name: str, runs: int, quick: bool = False) -> dict:
    if not hasattr(zf, "top_activations"):
        print("\n== top-9 mining: skipped (zfwidgets.top_activations does not exist yet)")
        return {}
    lens, what = lens_for(name)
    n = N_IMAGES.get(name, 256) // (4 if quick else 1)
    g = torch.Generator().manual_seed(0)
    images = torch.randn((n,) + tuple(lens.input_size), generator=g)
    layer = [i.name for i in lens.table if i.kind == "conv"][-1]
    model = lens.model
    print(f"\n== top-9 mining of {layer}: {name} ({what}), {n} images {tuple(lens.input_size)}, batches of 64")

    def plain():
        with torch.inference_mode():
            for i in range(0, n, 64):
                model(images[i:i + 64])

    def mining():
        return zf.top_activations(lens, images, layer, channels=[0], k=9, batch_size=64, progress=False)

    def all_maps():
        return zf.top_activations(lens, images, layer, k=9, batch_size=64, progress=False)

    # check: map 0's top-9 values against the activations of plain forwards
    top = mining()
    vals = []
    for i in range(0, n, 64):
        _, acts = lens.run(images[i:i + 64], [layer], logits=False)
        vals.append(acts[layer][:, 0].flatten(1).amax(1))
    ref = torch.cat(vals).sort(descending=True).values[:9]
    d = C.abs_diff(top.values[0], ref)
    print(f"   check: top-9 strongest activations of map 0 vs plain forwards: max abs diff {d:.2e}")
    fns = {"mining": mining, "plain forward": plain}
    if ALL_MAPS_RUNS.get(name, 1) >= runs:
        fns["all maps"] = all_maps
    times = C.interleaved(fns, runs=runs, warmup=0)
    if "all maps" not in times:   # hundreds of projections after the pass: fewer runs, still interleaved
        extra = C.interleaved({"all maps": all_maps, "plain forward": plain}, runs=ALL_MAPS_RUNS[name], warmup=0)
        times["all maps"] = extra["all maps"]
        times["plain forward"] += extra["plain forward"]
    res = {"model": name, "images": n, "diff": d, "weights": what}
    n_maps = len(top_all_channels(lens, layer))
    for who in ("mining", "all maps"):
        ratio, line = C.summary(times, who, "plain forward")
        tput = n / C.median(times[who])
        note = f" ({n_maps} maps, {9 * n_maps} projections after the pass)" if who == "all maps" else ""
        print(f"   {line}; throughput {tput:.0f} images/s vs {n / C.median(times['plain forward']):.0f}{note}")
        res[who] = ratio
    res["plain_s"] = C.median(times["plain forward"])
    res["mining_s"] = C.median(times["mining"])
    res["all_s"] = C.median(times["all maps"])
    print(f"   machine: {C.machine()}")
    return res


def main():
    args = C.parse_args(__doc__.splitlines()[0], ["alexnet", "bundled"])
    print(f"top-9 mining throughput ({C.machine()})")
    return [bench(m, args.runs, args.quick) for m in args.models]


if __name__ == "__main__":
    main()
