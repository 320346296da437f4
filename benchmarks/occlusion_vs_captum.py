"""Full occlusion map: zfwidgets (incremental inference) against captum's ``Occlusion``, same process, same input.

For each model: the occluder grid (32 px square, stride 8 on 224x224 input; 6 px, stride 2 on the bundled
28x28 model) over one seeded input, filled with the lens's mean pixel (0 in normalised space).

Models: AlexNet, VGG16 (chains), ResNet-18, ResNet-50 (basic and bottleneck blocks), DenseNet-121,
GoogLeNet, MobileNetV2 (random weights), the bundled model.

- **zfwidgets**: ``zfwidgets.occlusion(lens, x, size=..., stride=..., target=t)``, whose per-position
  evaluation runs on the lens's engine (:func:`zfwidgets.inference.occlusion_engine`: incremental where the
  engine's estimate says it pays and its timing of both ways confirms it, batched full forwards otherwise);
  when it is not wired, the engine directly
  (``GraphOcclusion(lens, x)`` built inside the timed call, every grid position in chunks of 64).
- **captum**: ``Occlusion(forward_func).attribute(x, sliding_window_shapes=(C, s, s), strides=(C, st, st),
  baselines=fill, target=t, perturbations_per_eval=n)`` with ``n`` the fastest of a pilot over a few values.

**What is checked equal.** Captum's attribution is a difference of outputs spread over the windows, not a
map over positions. Its ``forward_func`` (softmax of the model) is wrapped to record p(target) of every
occluded input it evaluates, in the order captum evaluates them (captum steps the window down the rows
first); those per-position probabilities are compared with zfwidgets' probability map (max abs diff,
target 1e-4). As a second check, captum's attribution is rebuilt from zfwidgets' map with captum's formula
(per pixel, the mean over the windows covering it of p(unoccluded) - p(occluded)) and compared too.

**The geometric bound** printed beside each ratio: full forwards' multiply-adds over those of each box's own
changed region (grown at every window node, united at merges, the whole map after a global node; fc layers
reading a changed window count its changed columns), from the engine's :meth:`~GraphOcclusion.estimate`
over the batches ``zfwidgets.occlusion`` runs. Captum runs the model's batched forwards, so the ratio can
only approach the bound.

Also **one occluder move** (kernel side, every model): what the occluder panel computes per mouse event
through the lens's engine (``occlusion_engine(lens, x).evaluate_box(box, [layer])``: occluded logits,
probabilities and the layer's activations), against the model's batch-1 forward of the occluded image,
with the bound of the move's box.

Run: ``.venv/bin/python benchmarks/occlusion_vs_captum.py [--models alexnet resnet50 ...] [--runs 5]``
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import zfwidgets as zf  # noqa: E402
from zfwidgets.analysis import occlusion as occ_mod  # noqa: E402
from zfwidgets.inference import GraphOcclusion, occlusion_engine  # noqa: E402

GRAPHS = ("resnet18", "resnet50", "densenet121", "googlenet", "mobilenet_v2")
MODELS = ("alexnet", "vgg16", "bundled") + GRAPHS
GEOMETRY = {"alexnet": (32, 8), "vgg16": (32, 8), "bundled": (6, 2), **{m: (32, 8) for m in GRAPHS}}
PPE = {"alexnet": (1, 16, 64), "vgg16": (1, 16, 32), "bundled": (1, 16, 64, 144), "resnet18": (1, 16, 64),
       "resnet50": (1, 16, 32), "densenet121": (1, 16, 32), "googlenet": (1, 16, 64), "mobilenet_v2": (1, 16, 64)}


def occlusion_is_incremental() -> bool:
    """Whether ``zfwidgets.occlusion`` evaluates positions with the incremental engine."""
    src = inspect.getsource(occ_mod)
    return any(k in src for k in ("occluded_run", "occlusion_engine"))


def lens_for(name: str):
    if name == "bundled":
        return C.bundled()
    return C.seeded_torchvision(name), "random weights"


def zf_contender(lens, x, size, stride, target, layer, wired: bool):
    """A callable computing the occlusion map with zfwidgets; returns the probability map (ny x nx)."""
    if wired:
        def run():
            return zf.occlusion(lens, x, size=size, stride=stride, fill="mean", target=target, layer=layer,
                                progress=False).probability
        return run
    H, W = x.shape[-2:]
    _, _, boxes = occ_mod.occluder_grid(H, W, size, stride)
    flat = boxes.view(-1, 4)

    def run():
        engine = GraphOcclusion(lens, x)               # the unoccluded forward of a new image, cached
        _, acts = lens.run(x, [layer])
        channel = int(acts[layer][0].flatten(1).amax(1).argmax())
        probs, totals = [], []
        for i in range(0, flat.shape[0], 64):
            logits, a = engine.run(flat[i:i + 64], [layer], fill="mean")
            probs.append(logits.float().softmax(1)[:, target])
            totals.append(a[layer][:, channel].clamp(min=0).flatten(1).sum(1))
        return torch.cat(probs).view(boxes.shape[:2])
    return run


def captum_contender(lens, x, size, stride, target, ppe, record=None):
    from captum.attr import Occlusion
    model = lens.model
    fill = float(lens.fill_value[0]) if bool((lens.fill_value == lens.fill_value[0]).all()) \
        else lens.fill_value.view(1, -1, 1, 1)
    Cc = x.shape[1]

    def forward(inp):
        p = model(inp).softmax(1)
        if record is not None:
            record.append(p[:, target].detach().clone())
        return p

    occ = Occlusion(forward)

    def run():
        with torch.no_grad():
            return occ.attribute(x, sliding_window_shapes=(Cc, size, size), strides=(Cc, stride, stride),
                                 baselines=fill, target=target, perturbations_per_eval=ppe)
    return run


def captum_order_to_map(values: torch.Tensor, ny: int, nx: int) -> torch.Tensor:
    """Captum evaluates window f at row shift ``f % ny`` and column shift ``f // ny`` (rows first)."""
    return values.view(nx, ny).T


def attribution_from_map(prob_map: torch.Tensor, p0: float, shape, size, stride) -> torch.Tensor:
    """Captum's occlusion attribution rebuilt from a probability map: per pixel, the mean over the windows
    covering it of ``p0 - p(window)`` (every channel gets the same value)."""
    H, W = shape
    total = torch.zeros(H, W, dtype=torch.float64)
    count = torch.zeros(H, W, dtype=torch.float64)
    for i in range(prob_map.shape[0]):
        for j in range(prob_map.shape[1]):
            y, x = i * stride, j * stride
            total[y:y + size, x:x + size] += p0 - float(prob_map[i, j])
            count[y:y + size, x:x + size] += 1
    return total / count


def bench(name: str, runs: int, quick: bool = False) -> dict:
    lens, what = lens_for(name)
    size, stride = GEOMETRY[name]
    if quick and name != "bundled":
        stride = 32
    x = C.seeded_image(lens)
    layer = [i.name for i in lens.table if i.kind == "conv"][-1]
    logits, _ = lens.run(x)
    p_all = logits.softmax(1)[0]
    target = int(p_all.argmax())
    wired = occlusion_is_incremental()
    ours = zf_contender(lens, x, size, stride, target, layer, wired)
    H, W = x.shape[-2:]
    ys, xs, boxes = occ_mod.occluder_grid(H, W, size, stride)
    ny, nx = len(ys), len(xs)
    print(f"\n== occlusion map: {name} ({what}), input {tuple(x.shape[1:])}, occluder {size}px stride {stride}: "
          f"{ny}x{nx} = {ny * nx} positions, target class {target}, layer {layer}")
    print(f"   zfwidgets path: {'zfwidgets.occlusion (the lens engine wired in)' if wired else 'GraphOcclusion directly (zfwidgets.occlusion does not call it yet)'}")

    # equality first
    record = []
    attr = captum_contender(lens, x, size, stride, target, PPE[name][1], record)()
    rec = torch.cat(record)
    p0, captum_probs = float(rec[0]), captum_order_to_map(rec[1:], ny, nx)
    our_map = ours().float().cpu()
    d_map = C.abs_diff(our_map, captum_probs)
    rebuilt = attribution_from_map(our_map, float(p_all[target]), (H, W), size, stride)
    d_attr = C.abs_diff(rebuilt, attr[0, 0])
    print(f"   check: p(target) per position, zfwidgets vs captum's own forwards: max abs diff {d_map:.2e}; "
          f"captum attribution vs rebuilt from zfwidgets' map: max abs diff {d_attr:.2e}; "
          f"p(unoccluded) {p0:.4f} vs {float(p_all[target]):.4f}")
    engine = occlusion_engine(lens, x)
    flat = boxes.view(-1, 4)
    bs = occ_mod._auto_batch_size(lens, x, boxes, layer) if wired else 64     # the batches zfwidgets.occlusion runs
    ests = [engine.estimate(flat[i:i + bs]) for i in range(0, flat.shape[0], bs)]
    full = sum(e.full for e in ests)
    bound = full / sum(e.full / e.bound for e in ests)
    planned = sum(e.incremental for e in ests) / full
    pays = sum(e.pays for e in ests)
    mean = {"tight": 1 / bound, "batched": planned}
    print(f"   multiply-adds recomputed per position: {1 / bound:.1%} (each box's own region: geometric bound "
          f"{bound:.2f}x), {planned:.1%} as planned (batches of {bs}, fixed costs included); "
          f"{pays}/{len(ests)} batches pay by the engine's estimate (then timed by the engine)")

    # captum's best perturbations_per_eval: one pilot run each, interleaved
    pilots = C.interleaved({f"ppe={n}": captum_contender(lens, x, size, stride, target, n) for n in PPE[name]},
                           runs=1, warmup=0)
    best = min(PPE[name], key=lambda n: pilots[f"ppe={n}"][0])
    print("   captum pilot: " + ", ".join(f"ppe={n} {C.fmt_s(pilots[f'ppe={n}'][0])}" for n in PPE[name])
          + f" -> perturbations_per_eval={best}")
    times = C.interleaved({"zfwidgets": ours, "captum": captum_contender(lens, x, size, stride, target, best)},
                          runs=runs, warmup=0)
    ratio, line = C.summary(times, "zfwidgets", "captum")
    print("   " + line + f"  (geometric bound {bound:.2f}x)")
    print(f"   machine: {C.machine()}")
    return {"model": name, "ratio": ratio, "ours_s": C.median(times["zfwidgets"]),
            "peer_s": C.median(times["captum"]), "diff": max(d_map, d_attr), "positions": ny * nx,
            "ppe": best, "wired": wired, "mac": mean, "bound": bound, "weights": what}


def bench_move(name: str, moves: int = 60) -> dict:
    """One occluder move, kernel side: what the occluder panel computes per rendered mouse event (occluded
    logits and probabilities and the layer's activations) through the lens's engine, against the model's
    batch-1 forward of the occluded image (``lens.run(occlude(...), [layer])``), alternating move by move."""
    import time
    lens, what = lens_for(name)
    x = C.seeded_image(lens)
    H, W = x.shape[-2:]
    size = GEOMETRY[name][0]
    layer = [i.name for i in lens.table if i.kind == "conv"][-1]
    g = torch.Generator().manual_seed(1)
    centres = torch.randint(0, H, (moves, 2), generator=g).tolist()
    boxes = [(cy - size // 2, cx - size // 2, cy - size // 2 + size, cx - size // 2 + size) for cy, cx in centres]
    boxes = [(max(a, 0), max(b, 0), min(c, H), min(d, W)) for a, b, c, d in boxes]

    def ours(box):
        out = occlusion_engine(lens, x).evaluate_box(box, [layer], fill="mean")
        return out.probs, out.activations[layer]

    def full(box):
        logits, acts = lens.run(occ_mod.occlude(lens, x, box), [layer])
        return logits.softmax(1)[0], acts[layer][0]

    ours(boxes[0]), full(boxes[0])                # warm: the engine's cached forward of this image
    engine = occlusion_engine(lens, x)
    ests = [engine.estimate([b]) for b in boxes]
    bound = sum(e.full for e in ests) / sum(e.full / e.bound for e in ests)
    t_ours, t_full, diff = [], [], 0.0
    for k, box in enumerate(boxes):
        order = (ours, full) if k % 2 == 0 else (full, ours)
        res = {}
        for f in order:
            t0 = time.perf_counter()
            res[f] = f(box)
            (t_ours if f is ours else t_full).append(time.perf_counter() - t0)
        diff = max(diff, C.abs_diff(res[ours][0], res[full][0]), C.rel_diff(res[ours][1], res[full][1]))
    mode = engine.last_mode
    ratio = C.median(t_full) / C.median(t_ours)
    print(f"\n== one occluder move, kernel side: {name} ({what}), {size}px occluder, layer {layer}, {moves} moves")
    print(f"   engine path ({mode}): median {C.fmt_s(C.median(t_ours))} [p90 {C.fmt_s(sorted(t_ours)[int(0.9 * moves)])}]"
          f"  full forward: median {C.fmt_s(C.median(t_full))}  ratio {ratio:.2f}x (geometric bound {bound:.2f}x); "
          f"max diff (probabilities abs, activations rel) {diff:.2e}")
    print(f"   machine: {C.machine()}")
    return {"model": name, "ours_s": C.median(t_ours), "peer_s": C.median(t_full), "ratio": ratio, "diff": diff,
            "mode": mode, "weights": what, "bound": bound}


def main():
    args = C.parse_args(__doc__.splitlines()[0], MODELS)
    print(f"occlusion map vs captum ({C.machine()})")
    res = [bench(m, args.runs, args.quick) for m in args.models]
    for m in args.models:
        res.append(bench_move(m))
    return res


if __name__ == "__main__":
    main()
