"""Memory soak: occluder moves and projections on the bundled model must not accumulate memory.

    python benchmarks/soak.py                      # the full soak: 10,000 moves, 1,000 projections
    python benchmarks/soak.py --moves 1000 --projections 200

Prints the resident-set growth (MB) after a warm-up; the test suite runs a reduced soak
(tests/reliability/test_memory_soak.py) and asserts growth < 50 MB.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time

import psutil
import torch


def rss_mb() -> float:
    gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss / 2 ** 20


def soak(moves: int = 10_000, projections: int = 1_000, seed: int = 0, log=print) -> dict:
    import zfwidgets as zf
    lens = zf.load("zfnet-fashion")
    samples = zf.samples()
    panel = zf.OcclusionPanel(lens, samples[0].image)
    rng = random.Random(seed)
    methods = ["deconvnet", "guided", "gradient"]
    # warm-up: allocator pools, caches, first PNG encodes
    for _ in range(200):
        panel.move_to(rng.uniform(0, 28), rng.uniform(0, 28))
    for i in range(30):
        zf.project(lens, samples[i % len(samples)].image, rng.choice(lens.layers[:5]), method=methods[i % 3])
    start = rss_mb()
    t0 = time.perf_counter()
    for i in range(moves):
        panel.move_to(rng.uniform(0, 28), rng.uniform(0, 28))
        if i % 2000 == 0:
            log(f"  moves {i:>6}: rss {rss_mb():.1f} MB")
    t_moves = time.perf_counter() - t0
    mid = rss_mb()
    for i in range(projections):
        s = samples[rng.randrange(len(samples))]
        zf.project(lens, s.image, rng.choice(lens.layers[:5]), method=rng.choice(methods))
    end = rss_mb()
    panel.close()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lens.model.modules())
    return {"moves": moves, "projections": projections, "rss_start_mb": start, "rss_after_moves_mb": mid,
            "rss_end_mb": end, "growth_mb": end - start, "ms_per_move": 1000 * t_moves / max(moves, 1),
            "renders": panel.renders, "hooks_left": hooks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moves", type=int, default=10_000)
    p.add_argument("--projections", type=int, default=1_000)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    r = soak(a.moves, a.projections)
    print(f"{r['moves']} occluder moves + {r['projections']} projections: RSS {r['rss_start_mb']:.1f} → "
          f"{r['rss_after_moves_mb']:.1f} → {r['rss_end_mb']:.1f} MB, growth {r['growth_mb']:+.1f} MB "
          f"(limit 50), {r['ms_per_move']:.2f} ms per move, hooks left {r['hooks_left']}")
    return 0 if r["growth_mb"] < 50 and r["hooks_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
