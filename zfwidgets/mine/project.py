"""The projection phase of the miner: each winner's projection and image patch, in bulk.

The winners' images are numbered in order and cut into fixed chunks; the chunks are dealt to the ranks by
their estimated cost (:func:`_deal`: the costliest first, each to the least loaded rank), the cost counted
in multiply-adds from the layers' shapes (:func:`_plan_costs`: one image's recorded forward up to the
layer, one seed's walk down its window, and a fixed share per hit). A chunk's contents do not depend on the
number of ranks, so neither does any number computed from it. A chunk's images are decoded once and recorded
in one forward; the seeds of each layer walk down their receptive fields together, on chains and branching
models alike (the cropped backward on the model's graph, :func:`zfwidgets.core.backward.walk`, batched).
Layers it does not handle use :func:`zfwidgets.project`.

Example (internal: needs the miner's layer specs, top-k states and map widths from its mining pass; not run,
:func:`zfwidgets.mine` calls it and its gallery holds the result):
    >>> res = project_winners(lens, source, specs, states, widths, "deconvnet", 32, 0, 1, False)  # doctest: +SKIP
    >>> box, projection, patch = res[("conv5", 0, 0)]                                         # doctest: +SKIP
"""
from __future__ import annotations

import torch

from ..core.backward import plan, record, walk
from ..core.geometry import grow_hw, window_params
from ..core.graph import macs, macs_per_position
from ..core.project import project, unit_seed

__all__ = ["project_winners", "SEEDS_PER_WALK"]

SEEDS_PER_WALK = 128

# The seeds of one walk go down in batches padded to a multiple of this (copies of the first seed, their results
# dropped): the transposed convolutions then see few distinct shapes. Each new shape costs oneDNN a set-up once
# per process, a cost that does not shrink with more ranks; a small multiple keeps the padded work small
# (benchmarks/results/ holds the measurements).
SEED_BUCKET = 8


def _bucket(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`SEED_BUCKET`, at most :data:`SEEDS_PER_WALK`.

    >>> [_bucket(n) for n in (1, 8, 9, 125, 128)]
    [8, 8, 16, 128, 128]
    """
    return min(SEEDS_PER_WALK, -(-n // SEED_BUCKET) * SEED_BUCKET)


# A hit's fixed work (its share of a walk call, its box, crop and patch, the Python around them) counted as
# multiply-adds, for the deal only: fitted to the bundled model's chunk times (small maps, where this fixed work
# is a large share). On larger inputs the counted work dominates.
HIT_MACS = 2_000_000


def _deal(costs, world: int) -> list:
    """The rank that projects each chunk: the costliest chunk first, each to the rank with the least cost so
    far (ties: the chunk with the lower number, the lower rank). Every rank computes the same deal.

    >>> _deal([5, 1, 4, 2, 3], 2), _deal([1, 1, 1, 1], 3), _deal([3, 2], 1)
    ([0, 0, 1, 0, 1], [0, 1, 2, 0], [0, 0])
    """
    load, owner = [0] * world, [0] * len(costs)
    for q in sorted(range(len(costs)), key=lambda q: (-costs[q], q)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[q], load[r] = r, load[r] + costs[q]
    return owner


def _plan_costs(p) -> tuple:
    """``(multiply-adds of one image's forward up to the plan's layer, of one seed's walk from it down to the
    input)``, from the plan's shapes: the windows grow as in :func:`zfwidgets.core.backward.walk`
    (:func:`~zfwidgets.core.geometry.grow_hw`), clipped to each map, the larger where branches meet."""
    forward = sum(macs(st.module, None, p.shapes[st.index]) for st in p.steps if st.op == "conv")
    sizes, work = {p.target: (1, 1)}, 0.0
    for st in p.steps:
        hw = sizes.pop(st.index, None)
        if hw is None:
            continue
        if st.op in ("conv", "maxpool", "avgpool"):
            if st.op == "conv":
                work += macs_per_position(st.module) * hw[0] * hw[1]
            k, s, _, d, _ = window_params(st.module)
            hw = grow_hw(hw, k, s, d)
        for i in st.inputs:
            H, W = p.shapes[i][2:]
            old = sizes.get(i, (0, 0))
            sizes[i] = (max(old[0], min(hw[0], H)), max(old[1], min(hw[1], W)))
    return forward, work


def _scale(lens, hit) -> float:
    """A projection walked from a seed of 1 times the unit's top signal (its activation: ZF's unit)."""
    return unit_seed(hit[6], lens.rectified(hit[1]))


def _hits(specs, states, widths):
    out = []
    for name, path, kind, C, cin in specs:
        st, w = states[name], widths[name]
        indices, positions = st.indices.tolist(), st.positions.tolist()   # python ints: no tensor indexing
        values = st.values.tolist()
        for c in range(C):
            for j in range(st.k):
                i = indices[c][j]
                if i >= 0:
                    f = positions[c][j]
                    pos = None if w is None else (f // w, f % w)
                    out.append((i, name, path, c, j, pos, values[c][j]))
    return out


class _Fields:
    """Receptive-field boxes of one layer, one computation per position (the public FieldMap where it exists)."""

    def __init__(self, lens, layer):
        from ..analysis import receptive
        self.lens, self.layer, self.cache = lens, layer, {}
        fm = getattr(receptive, "FieldMap", None)
        self.map = fm(lens, layer) if fm is not None else None

    def box(self, pos):
        if pos not in self.cache:
            if self.map is not None:
                self.cache[pos] = self.map.box(pos)
            else:
                from ..analysis.receptive import receptive_field
                self.cache[pos] = receptive_field(self.lens, self.layer, pos)
        return self.cache[pos]


def _plan(lens, input_size, path, plans):
    """The cropped backward's plan on the model's graph for layer ``path`` (cached in ``plans``), or None."""
    if path not in plans:
        plans[path] = plan(lens, tuple(input_size), path)
    return plans[path]


# bytes the signals of one graph walk may take (seeds x the largest map): the seeds go down in groups that fit
WALK_BYTES = 1 << 28


def _walk(lens, xs, hits, plans, rule, row_of, displays, fields, out, bar):
    """The winners of a chunk: one recorded forward of the chunk (the switches and masks the walks read), then
    each layer's seeds walked down the graph together (:func:`zfwidgets.core.backward.walk`), each projection
    cut to its receptive field."""
    layers = {}
    for h in hits:
        layers.setdefault(h[1], []).append(h)
    with torch.inference_mode():
        rec = record([plans[v[0][2]] for v in layers.values()], xs, rule)
        for name, seeds in layers.items():
            p = plans[seeds[0][2]]
            biggest = max(s[1] * s[2] * s[3] for s in p.shapes.values())
            per = min(SEEDS_PER_WALK, WALK_BYTES // (4 * biggest * 3))
            per = max(1, per - per % SEED_BUCKET if per > SEED_BUCKET else per)   # groups padded to no waste
            C = p.shapes[p.target][1]
            if name not in fields:
                fields[name] = _Fields(lens, name)
            for a in range(0, len(seeds), per):
                part = seeds[a:a + per]
                run = part + part[:1] * (_bucket(len(part)) - len(part))   # padded: few distinct shapes
                g = xs.new_zeros(len(run), C, 1, 1)
                g[torch.arange(len(run), device=g.device), torch.tensor([s[3] for s in run], device=g.device)] = 1.0
                sig = walk(p, rec, g, [s[5][0] for s in run], [s[5][1] for s in run], rule,
                           rows=[row_of[s[0]] for s in run])
                for n, s in enumerate(part):
                    box = fields[name].box(s[5])   # the pixels the unit reads (inside the window)
                    y0, x0, y1, x1 = box.y0, box.x0, box.y1, box.x1
                    proj = xs.new_zeros(xs.shape[1], y1 - y0, x1 - x0)
                    if sig.g is not None:      # the walk's window over the box (it holds the whole field)
                        wy, wx = sig.oy[n], sig.ox[n]
                        a0, b0 = max(y0, wy), max(x0, wx)
                        a1, b1 = min(y1, wy + sig.h), min(x1, wx + sig.w)
                        if a1 > a0 and b1 > b0:
                            proj[:, a0 - y0:a1 - y0, b0 - x0:b1 - x0] = sig.g[n, :, a0 - wy:a1 - wy, b0 - wx:b1 - wx]
                    patch = displays[row_of[s[0]]][y0:y1, x0:x1].copy()
                    out[(name, s[3], s[4])] = ((y0, x0, y1, x1, *box.unclipped),
                                               proj.cpu() * _scale(lens, s), patch)
                if bar is not None:
                    bar.update(len(part))


def project_winners(lens, source, specs, states, widths, rule, chunk, rank, world, progress) -> dict:
    """``{(layer, channel, rank in the map): (box (y0, x0, y1, x1, uy0, ux0, uy1, ux1), projection over the
    clipped box C x h x w, patch h x w x 3 uint8)}`` for this rank's chunks."""
    hits = _hits(specs, states, widths)
    # images ordered by the deepest layer they won in, then by index: a chunk's forward stops at its deepest layer
    order = {s.name: n for n, s in enumerate(specs)}
    depth = {}
    for h in hits:
        depth[h[0]] = max(depth.get(h[0], -1), order[h[1]])
    images = sorted(depth, key=lambda i: (depth[i], i))
    chunks = [images[a:a + chunk] for a in range(0, len(images), chunk)]
    by_image = {}
    for h in hits:
        by_image.setdefault(h[0], []).append(h)
    dev = lens.device
    plans = {}
    size = tuple(source[chunks[0][0]][0].shape) if chunks else None
    costs = {path: _plan_costs(p) for path in {h[2] for h in hits if h[5] is not None}
             if (p := _plan(lens, size, path, plans)) is not None}

    def cost(ims):
        hs = [h for i in ims for h in by_image[i]]
        walks = [costs[h[2]] for h in hs if h[5] is not None and h[2] in costs]
        return (HIT_MACS * len(hs) + sum(c[1] for c in walks)
                + (len(ims) * max(c[0] for c in walks) if walks else 0))

    owner = _deal([cost(c) for c in chunks], world) if world > 1 else [0] * len(chunks)
    mine = [q for q in range(len(chunks)) if owner[q] == rank]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(len(by_image[i]) for q in mine for i in chunks[q]), desc="projections", unit="hit",
                   dynamic_ncols=True, leave=True)
    out, fields = {}, {}

    try:
        for q in mine:
            ims = chunks[q]
            xs = torch.stack([source[i][0] for i in ims]).to(dev)
            displays = [lens.to_display(x) for x in xs]
            row_of = {i: r for r, i in enumerate(ims)}
            chunk_hits = [h for i in ims for h in by_image[i]]
            walked = [h for h in chunk_hits if h[5] is not None and _plan(lens, xs.shape[1:], h[2], plans)]
            if walked:
                _walk(lens, xs, walked, plans, rule, row_of, displays, fields, out, bar)
            rest = [h for h in chunk_hits if h[5] is None or not _plan(lens, xs.shape[1:], h[2], plans)]
            if rest:
                for i, name, path, c, j, pos, _ in rest:
                    x = xs[row_of[i]:row_of[i] + 1]
                    p = project(lens, x, name, c, position="max" if pos is None else pos, method=rule)
                    if name not in fields:
                        fields[name] = _Fields(lens, name)
                    box = fields[name].box(pos)
                    proj = box.crop(p.pixels).detach().cpu().clone()
                    patch = displays[row_of[i]][box.y0:box.y1, box.x0:box.x1].copy()
                    out[(name, c, j)] = ((box.y0, box.x0, box.y1, box.x1, *box.unclipped), proj, patch)
                    if bar is not None:
                        bar.update(1)
                lens.clear_cache()
    finally:
        if bar is not None:
            bar.close()
    return out
