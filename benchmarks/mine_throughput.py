"""The data-set miner (``zfwidgets.mine``) against a plain batched forward over the same images.

Four figures, each a ratio of the plain forward's time to the miner's (>= 1 would be as fast as the forward):

- **maps only**: the pass alone (every conv layer's top-9 values, images, positions; no projections) over a
  folder of PNG files, listed and decoded (in one DataLoader worker) on both sides (the plain side: a PIL
  dataset with the lens's transform and ``model(x)`` under ``inference_mode``). Goal 0.95.
- **Fig. 2, bundled**: the whole job (all conv layers, top-9, deconvnet projections and patches, the gallery
  file written) over the 10,000 Fashion-MNIST test images, against the plain forward of those images.
  Goal 0.5.
- **Fig. 2, AlexNet conv5**: the same over 2,048 seeded random 224x224 inputs (random weights). Goal 0.4.
- **torchrun**: the bundled Fig. 2 job by the CLI, ``torchrun --nproc_per_node=2`` (one thread each) against
  one process with one thread (the job's own time as the CLI reports it, and the wall time of the commands).
  Goal 1.8. Beside it the machine's own bound: two plain-forward processes side by side against one.

With each Fig. 2 figure the job's multiply-add bound: every convolution the job runs (the pass, the winners'
re-forward, the walks' transposed convolutions; counted here by a ``TorchFunctionMode`` around the job) against
the plain forward's multiply-adds: the ratio the job would reach if every multiply-add ran at the forward's rate.

``--only resnet18`` adds a branching model (ResNet-18, layer2.1 and layer4.1, 64 images at 224): its bulk
projections walk the model's graph (no goal; before they were one ``zfwidgets.project`` per winner).

Run: ``nice .venv/bin/python benchmarks/mine_throughput.py [--quick] [--only maps bundled alexnet torchrun resnet18]``
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import zfwidgets as zf  # noqa: E402
from zfwidgets.zoo.data import load_fashion_mnist  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class Pngs(Dataset):
    """The plain side's folder reader: sorted PNG paths, PIL decode, the lens's transform."""

    def __init__(self, root, transform):
        self.files = sorted(Path(root).rglob("*.png"))
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("L"))


class Arrays(Dataset):
    def __init__(self, x, transform):
        self.x, self.transform = x, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i]))


class Noise(Dataset):
    """Seeded random model input (image i from generator seed i), made on both sides alike."""

    def __init__(self, n, shape):
        self.n, self.shape = n, shape

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(i))


def plain(model, ds, workers=1, batch=64):
    t = time.perf_counter()
    with torch.inference_mode():
        for x in DataLoader(ds, batch_size=batch, num_workers=workers):
            model(x)
    return time.perf_counter() - t


def forward_macs(lens, upto=None) -> int:
    """Multiply-adds of one image's forward (conv and linear layers; up to the module ``upto`` if given)."""
    total, stop = [0], {}
    hs = []
    for name, m in lens.model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            def hook(mod, a, out, name=name):
                if "done" in stop:
                    return
                pos = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
                total[0] += mod.weight.numel() * pos
                if name == upto:
                    stop["done"] = True
            hs.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            lens.model.eval()(torch.zeros(1, *lens.input_size))
    finally:
        for h in hs:
            h.remove()
    return total[0]


class ConvCount(torch.overrides.TorchFunctionMode):
    """Multiply-adds of the convolutions (``conv``) and transposed convolutions (``transposed``) run inside."""

    def __init__(self):
        super().__init__()
        self.conv = self.transposed = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.conv2d, torch.nn.functional.conv2d):
            self.conv += args[1].numel() * out.shape[0] * out.shape[2] * out.shape[3]
        elif func in (torch.conv_transpose2d, torch.nn.functional.conv_transpose2d):
            self.transposed += args[1].numel() * args[0].shape[0] * args[0].shape[2] * args[0].shape[3]
        return out


def fig2(lens, data, plain_ds, layers, n, what, goal, workers=1):
    full = forward_macs(lens)
    t_plain = plain(lens.model, plain_ds, workers)
    count = ConvCount()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with count:
            g = zf.mine(lens, data, layers, k=9, workers=workers, progress=False, out=Path(d) / "g.safetensors")
        t_job = time.perf_counter() - t
        size = (Path(d) / "g.safetensors").stat().st_size
    hits = sum(int((g.tensors(l)["indices"] >= 0).sum()) for l in g.layers)
    # check: a few hits of the deepest layer against zfwidgets.project (per hit, the graph's backward)
    diff = 0.0
    for c in (0, 1):
        for h in g.hits(g.layers[-1], c)[:2]:
            x = plain_ds[h.index]
            ref = h.box.crop(zf.project(lens, x, g.layers[-1], c, position=h.position).pixels)
            diff = max(diff, C.rel_diff(h.projection, ref))
    unique = len(g.meta["ids"])
    bound = n * full / (count.conv + count.transposed)
    ratio = t_plain / t_job
    print(f"== Fig. 2, {what}: {n} images, layers {', '.join(g.layers)}, {hits} hits of {unique} images")
    print(f"   plain forward {C.fmt_s(t_plain)} ({n / t_plain:.0f} img/s); whole job {C.fmt_s(t_job)} "
          f"(pass {C.fmt_s(g.pass_seconds)}, projections+file {C.fmt_s(t_job - g.pass_seconds)}; file {size / 1e6:.1f} MB)")
    print(f"   check: 4 projections vs zfwidgets.project: max relative diff {diff:.1e} (float16 storage)")
    print(f"   ratio {ratio:.2f}x (goal {goal}x) {'met' if ratio >= goal else 'NOT met'}; multiply-add bound "
          f"{bound:.2f}x (forward {n * full / 1e9:.2f} G; the job's convolutions {count.conv / 1e9:.2f} G, "
          f"the walks' transposed ones {count.transposed / 1e9:.2f} G)")
    return ratio


def maps_only(n, runs=7):
    lens = zf.load("zfnet-fashion")
    x, _ = load_fashion_mnist("test")
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            sub = Path(d) / f"{i // 1000:02d}"
            sub.mkdir(exist_ok=True)
            Image.fromarray(x[i]).save(sub / f"{i:05d}.png")
        # both sides read the folder from scratch: its listing, the decoding and the forwards
        times = C.interleaved({"plain": lambda: plain(lens.model, Pngs(d, lens.transform)),
                               "mine": lambda: zf.mine(lens, d, workers=1, progress=False, projections=False)},
                              runs=runs, warmup=1)
    r = C.median(times["plain"]) / C.median(times["mine"])
    print(f"== maps only, bundled, {n} PNG files, every conv layer, 1 decoding worker each, medians of {runs} "
          f"interleaved runs: plain {C.fmt_s(C.median(times['plain']))}, miner {C.fmt_s(C.median(times['mine']))}: "
          f"ratio {r:.2f}x (goal 0.95x) {'met' if r >= 0.95 else 'NOT met'}")
    print(f"   seconds, plain: {', '.join(f'{v:.2f}' for v in times['plain'])}; miner: "
          f"{', '.join(f'{v:.2f}' for v in times['mine'])}")
    return r


_PLAIN_SHARD = """
import sys, time, torch
from PIL import Image
import zfwidgets as zf
from zfwidgets.zoo.data import load_fashion_mnist
torch.set_num_threads(1)
a, b = int(sys.argv[1]), int(sys.argv[2])
lens = zf.load("zfnet-fashion")
x, _ = load_fashion_mnist("test")
t = time.perf_counter()
with torch.inference_mode():
    for i in range(a, b, 64):
        lens.model(torch.stack([lens.transform(Image.fromarray(v)) for v in x[i:min(b, i + 64)]]))
print(time.perf_counter() - t)
"""


def plain_scaling(n, runs=3):
    """The machine's own bound for two processes: the plain forward of n images (decoding included) in one
    1-thread process, against two 1-thread processes running at once on the two halves (time of the slower;
    start-up excluded on both sides). Medians of ``runs`` interleaved runs."""
    import statistics
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    one, two = [], []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", _PLAIN_SHARD, "0", str(n)], env=env, check=True,
                           capture_output=True, text=True)
        one.append(float(r.stdout.split()[-1]))
        ps = [subprocess.Popen([sys.executable, "-c", _PLAIN_SHARD, str(a), str(b)], env=env, text=True,
                               stdout=subprocess.PIPE) for a, b in ((0, n // 2), (n // 2, n))]
        two.append(max(float(p.communicate()[0].split()[-1]) for p in ps))
    r = statistics.median(one) / statistics.median(two)
    print(f"== the machine's bound: plain forward of {n} images, 1 process x 1 thread {C.fmt_s(statistics.median(one))}"
          f" against 2 processes x 1 thread side by side {C.fmt_s(statistics.median(two))}: {r:.2f}x")
    return r


def torchrun(n, runs=5):
    """One process against two, ``runs`` times each, interleaved; medians (on a shared 2-core machine a job of
    a few seconds varies by 5-10% from run to run)."""
    import re
    import statistics
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    job = ["zfnet-fashion", "fashion-mnist:test", "--limit", str(n), "--threads", "1", "--no-progress"]

    def job_s(out):   # the job's own time as the CLI reports it (rank 0: pass, merge, projections, file)
        m = re.search(r" in ([0-9.]+) s \(pass", out.stderr)
        return float(m.group(1)) if m else float("nan")

    walls, jobs, phases, same = {1: [], 2: []}, {1: [], 2: []}, {}, True
    with tempfile.TemporaryDirectory() as d:
        for _ in range(runs):
            for world in (1, 2):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                s.close()
                launch = ([sys.executable, "-m", "zfwidgets.mine"] if world == 1 else
                          [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={world}",
                           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "zfwidgets.mine"])
                t = time.perf_counter()
                r = subprocess.run([*launch, *job, "-o", f"{d}/{world}.safetensors"], env=env, check=True,
                                   capture_output=True, text=True)
                walls[world].append(time.perf_counter() - t)
                jobs[world].append(job_s(r))
                phases[world] = r.stderr.strip().splitlines()[-1]
            same = same and Path(f"{d}/1.safetensors").read_bytes() == Path(f"{d}/2.safetensors").read_bytes()
    j1, j2 = statistics.median(jobs[1]), statistics.median(jobs[2])
    t1, t2 = statistics.median(walls[1]), statistics.median(walls[2])
    rj, r = j1 / j2, t1 / t2
    print(f"== torchrun, bundled Fig. 2 job over {n} images, 1 process x 1 thread against 2 processes x 1 thread, "
          f"medians of {runs} interleaved runs: the job {C.fmt_s(j1)} / {C.fmt_s(j2)}: {rj:.2f}x (goal 1.8x) "
          f"{'met' if rj >= 1.8 else 'NOT met'}; CLI wall time with start-up (imports, launcher, process group) "
          f"{C.fmt_s(t1)} / {C.fmt_s(t2)}: {r:.2f}x; same file: {same}")
    print(f"   job seconds, 1 process: {', '.join(f'{v:.2f}' for v in jobs[1])}; 2 processes: "
          f"{', '.join(f'{v:.2f}' for v in jobs[2])}")
    for world in (1, 2):
        print(f"   last run, {world} process(es): {phases[world].split(' in ', 1)[-1]}")
    return rj


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a quarter of the images")
    p.add_argument("--only", nargs="*", default=["maps", "bundled", "alexnet", "torchrun"])
    p.add_argument("--maps-images", type=int, default=None, help="maps-only PNG files (default 4096, --quick 1024)")
    p.add_argument("--maps-runs", type=int, default=7, help="interleaved maps-only runs of each side, after one "
                   "untimed round (default 7)")
    p.add_argument("--alexnet-images", type=int, default=None, help="AlexNet images (default 2048, --quick 512)")
    p.add_argument("--torchrun-images", type=int, default=None, help="torchrun job images (default 10000)")
    p.add_argument("--torchrun-runs", type=int, default=5, help="interleaved runs of each side (default 5)")
    p.add_argument("--resnet-images", type=int, default=64, help="ResNet-18 images (--only resnet18; default 64)")
    a = p.parse_args()
    q = 4 if a.quick else 1
    print(C.machine())
    if "maps" in a.only:
        maps_only(a.maps_images or 4096 // q, a.maps_runs)
    if "bundled" in a.only:
        lens = zf.load("zfnet-fashion")
        x, _ = load_fashion_mnist("test")
        n = 10000 // q
        fig2(lens, "fashion-mnist:test" if q == 1 else _Limited(lens, n), Arrays(x[:n], lens.transform),
             None, n, "bundled zfnet-fashion (trained)", 0.5)
    if "alexnet" in a.only:
        lens = C.seeded_torchvision("alexnet")
        n = a.alexnet_images or 2048 // q
        fig2(lens, Noise(n, (3, 224, 224)), Noise(n, (3, 224, 224)), ["conv5"], n, "AlexNet conv5 (random weights, 224)",
             0.4)
    if "resnet18" in a.only:   # a branching model: the bulk projections walk the graph (not in the default run)
        lens = C.seeded_torchvision("resnet18", input_size=(3, 224, 224))
        n = a.resnet_images
        fig2(lens, Noise(n, (3, 224, 224)), Noise(n, (3, 224, 224)), ["layer2.1", "layer4.1"], n,
             "ResNet-18 layer2.1 + layer4.1 (random weights, 224; graph walks, no goal)", 0.0)
    if "torchrun" in a.only:
        torchrun(a.torchrun_images or 10000 // q, a.torchrun_runs)
        plain_scaling(a.torchrun_images or 10000 // q)


def _Limited(lens, n):
    x, _ = load_fashion_mnist("test")
    return [Image.fromarray(x[i]) for i in range(n)]


if __name__ == "__main__":
    main()
