"""Shared pieces of the benchmarks: the models, interleaved timing, ratios of medians, the machine's load.

Every benchmark measures zfwidgets and its peer in one process, on the same inputs, run by run in
alternating order (so a burst of load from another process hits both), and reports the ratio of the
medians. Outputs are checked equal before anything is timed.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

import zfwidgets as zf

def machine() -> str:
    """CPU count, torch threads and the load average (``uptime``) now."""
    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "?"
    return (f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {load}")


def seeded_torchvision(arch: str, seed: int = 0, input_size=None) -> "zf.Lens":
    """A lens on a torchvision model with seeded random weights (no download)."""
    torch.manual_seed(seed)
    lens = zf.Lens.from_torchvision(arch)
    if input_size is not None:
        lens.input_size = tuple(input_size)
    return lens


def bundled(name: str = "zfnet-fashion") -> tuple:
    """``(lens, what)``: the trained bundled model if its weights ship, else the same net with seeded
    random weights (and a note saying so)."""
    try:
        return zf.load(name), "trained weights"
    except FileNotFoundError:
        from zfwidgets.zoo.data import FASHION_CLASSES, FASHION_MEAN, FASHION_STD
        from zfwidgets.zoo.models import build
        torch.manual_seed(0)
        model = build(name).eval()
        lens = zf.Lens(model, class_names=FASHION_CLASSES, input_size=(1, 28, 28), mean=[FASHION_MEAN],
                       std=[FASHION_STD], name=name)
        return lens, "random weights (trained weights not in zfwidgets/zoo/weights yet)"


def seeded_image(lens, seed: int = 0) -> torch.Tensor:
    """A reproducible model input 1 x C x H x W for ``lens`` (a bundled sample for 28x28 models)."""
    C, H, W = lens.input_size
    if (C, H, W) == (1, 28, 28):
        return lens.to_input(zf.samples()[seed % 40].image)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, C, H, W, generator=g)


def smooth_image(lens, seed: int = 0) -> torch.Tensor:
    """A smooth random model input 1 x C x H x W: 14 x 14 seeded noise scaled up bilinearly (random weights
    give flat occlusion maps on white noise)."""
    C, H, W = lens.input_size
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(1, C, 14, 14, generator=g), size=(H, W), mode="bilinear",
                                           align_corners=False)


def interleaved(fns: dict, runs: int = 5, warmup: int = 1) -> dict:
    """Time each callable ``runs`` times, alternating between them run by run (the order rotates every
    run); ``{name: [seconds, ...]}``. ``warmup`` untimed rounds first."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def median(ts) -> float:
    return statistics.median(ts)


def fmt_s(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def summary(times: dict, ours: str, peer: str) -> tuple:
    """``(ratio peer/ours of the medians, line)``."""
    a, b = median(times[ours]), median(times[peer])
    spread = lambda ts: f"[{fmt_s(min(ts))}..{fmt_s(max(ts))}]"  # noqa: E731
    return b / a, (f"{ours}: {fmt_s(a)} {spread(times[ours])}  {peer}: {fmt_s(b)} {spread(times[peer])}  "
                   f"ratio {b / a:.2f}x  ({len(times[ours])} runs each)")


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


def parse_args(description: str, default_models):
    import argparse
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", nargs="+", default=list(default_models), help="which models to run")
    p.add_argument("--runs", type=int, default=5, help="timed runs per contender (median reported)")
    p.add_argument("--quick", action="store_true", help="fewer positions / images: a smoke run, not figures")
    return p.parse_args()
