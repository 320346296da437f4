"""Mine a whole data set for ZF's Fig. 2: every chosen map's top-k images, with projections and patches.

One pass over the data in fixed batches (image ``i`` is in batch ``i // batch_size`` whatever the number of
processes), decoding in ``DataLoader`` workers, forwards in ``inference_mode`` that stop at the deepest
mined layer; per map a :class:`~zfwidgets.mine.state.TopK` (ties broken by the global image index).
Every ``checkpoint_every`` images the state goes to a checkpoint (atomic write); ``resume=True`` goes on
from it. Under ``torchrun`` each rank mines a shard (a range of whole batches), the states are gathered
and merged (the same selection over the union), the winners' projections are shared out by fixed chunks
of images, and rank 0 writes the gallery: the same file, bit for bit, for any number of ranks.

After the pass the projections are computed in bulk (:mod:`zfwidgets.mine.project`): the winners of a chunk
of images share one recorded forward, and the seeds of a layer walk down their receptive fields together.

Example:
    >>> import tempfile, os; path = os.path.join(tempfile.mkdtemp(), "top9.safetensors")
    >>> g = zfwidgets.mine("zfnet-fashion", "fashion-mnist:test", k=9, out=path, limit=200, progress=False)
    >>> zfwidgets.Gallery.load(path).top("conv5").indices.shape     # 64 maps x their top-9 images
    torch.Size([64, 9])
    >>> len(g.plot("conv5", channels=range(4)).axes)
    8
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader

from .data import open_data
from .gallery import GALLERY_FORMAT, Gallery, _LayerData
from .state import TopK

__all__ = ["mine", "make_lens"]

RULES = ("deconvnet", "guided", "gradient")


# ----- inputs ---------------------------------------------------------------------------------------
def make_lens(model, weights=None):
    """A lens from a bundled model name, a torchvision model name (with ``weights``) or a lens."""
    from ..lens import Lens
    from ..zoo import available, load
    if isinstance(model, Lens):
        if weights is not None:
            raise ValueError("weights= applies to a model given by name, not to a lens")
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be a bundled model name, a torchvision model name or a zfwidgets.Lens; got "
                        f"{type(model).__name__}")
    if model in available():
        if weights is not None:
            raise ValueError(f"{model} is a bundled model with its own weights; weights= is for torchvision models")
        return load(model)
    return Lens.from_torchvision(model, weights)


class LayerSpec(NamedTuple):
    """A mined layer: its ``name`` and module ``path``, ``kind`` (``"conv"``: maps; ``"fc"``: units), its
    ``channels`` (maps or units) and ``in_channels`` (``None`` where the graph does not say)."""
    name: str
    path: str
    kind: str
    channels: int
    in_channels: int | None


@dataclass(frozen=True)
class _Job:
    """What one call of :func:`mine` asks, past the model, the layers and the data (see its arguments)."""
    k: int
    rule: str
    weights: object
    out: object
    batch_size: int
    workers: int
    checkpoint: object
    every: int
    resume: bool
    strict: bool
    progress: object
    projections: bool
    chunk: int


def _layer_list(lens, layers) -> list:
    if layers is None:
        names = [i.name for i in lens.table if i.kind == "conv"]
    else:
        if isinstance(layers, str):
            layers = [s for s in layers.split(",") if s]
        if not layers:
            raise ValueError("layers must name at least one layer")
        names = [lens.resolve(l)[0] for l in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"layers contains duplicates: {names}")
    out = []
    for n in names:
        info = lens.layer_info(n)
        m = info.module
        if isinstance(m, torch.nn.Conv2d):
            out.append(LayerSpec(n, info.path, "conv", m.out_channels, m.in_channels))
        elif isinstance(m, torch.nn.Linear):
            out.append(LayerSpec(n, info.path, "fc", m.out_features, m.in_features))
        else:  # a block of a branching model (ResNet's layer1.0): its maps, from the model's graph
            from ..core.graph import Graph, GraphError
            try:
                node = Graph.of(lens).node_of(m)
            except GraphError:
                node = None
            shape = None if node is None else node.out_shape
            if shape is None or len(shape) != 4:
                raise ValueError(f"layer {n!r} is a {type(m).__name__} without N x C x H x W maps; the miner takes "
                                 "conv layers, blocks that put out maps, and fully connected (Linear) layers")
            c_in = node.in_shapes[0][1] if node.in_shapes and node.in_shapes[0] and len(node.in_shapes[0]) == 4 \
                else None
            out.append(LayerSpec(n, info.path, "conv", int(shape[1]), None if c_in is None else int(c_in)))
    return out


def _commit():
    try:
        root = Path(__file__).resolve().parents[2]
        if not (root / ".git").exists():
            return None
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git: no commit in the metadata
        return None


# ----- torch.distributed ----------------------------------------------------------------------------
class _Dist:
    """Rank and world size; joins the process group torchrun describes (gloo on CPU, nccl on GPUs)."""

    def __init__(self, device):
        import torch.distributed as dist
        self.dist, self.own = dist, False
        if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(device)
            dist.init_process_group(backend)
            self.own = True
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def all_gather(self, obj):
        if not self.on:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def gather(self, obj):
        if not self.on:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self):
        if self.on:
            self.dist.barrier()

    def close(self):
        if self.own:
            self.dist.destroy_process_group()


# ----- the pass ---------------------------------------------------------------------------------------
def _reduce(a: torch.Tensor, name: str, threshold: torch.Tensor, k: int, rectified: bool = False):
    """The entries of one batch that can enter the maps' top-k states: ``(value, flat position of the maximum,
    image row, map)`` for each image's maximum per map that beats ``threshold`` (``C``: the state's k-th value,
    ``-inf`` while not full), the position the first maximum in row-major order (``-1`` for a fully connected
    layer). A maximum that is NaN is an entry too (it is never below the bar), so that the miner can name its
    image without a second pass over the maxima. The maxima are one vectorised pass (``amax``), ten times
    quicker than ``max`` with its indices; after the first batches few maps of few images are candidates, and
    only theirs are searched for the position. While a state is not full (the first batch) only the batch's
    own ``k`` best per map (ties included) can enter, and only they are searched. In a ``rectified`` layer a
    unit is read after the ReLU (ZF's unit, as :func:`zfwidgets.core.select_activation` reads it): the maxima
    are clamped at 0 and a map at or below 0 everywhere has its first position."""
    if a.dim() == 4:
        flat = a.flatten(2)
        val = flat.amax(2)
    elif a.dim() == 2:
        flat, val = None, a
    else:
        raise ValueError(f"layer {name!r} has output shape {tuple(a.shape)}; expected N x C x H x W or N x K")
    if rectified:
        val = val.clamp(min=0)
    threshold = threshold.to(val.device, val.dtype)
    cand = val.le(threshold).logical_not_()
    if val.shape[0] > k and bool(torch.isneginf(threshold).any()):
        cand &= val.lt(val.topk(k, dim=0).values[-1]).logical_not_()   # the k-th best of the batch (NaN stays in)
    b, c = cand.nonzero(as_tuple=True)
    if flat is None:
        pos = torch.full_like(b, -1)
    else:
        pos = (flat[b, c].clamp(min=0) if rectified else flat[b, c]).argmax(1) if b.numel() else b
    return val[b, c].float().cpu(), pos.cpu(), b.cpu(), c.cpu()


class _MaxHooks:
    """Forward hooks that reduce each mined layer's output to its per-map maximum and position as it is made
    (no copy of the maps is kept), the forward stopped once every layer is in. Removed on leaving."""

    def __init__(self, lens, names, states):
        from ..core.capture import StopForward
        self.lens, self.names, self.stop = lens, list(names), StopForward
        self.states = states    # {name: TopK}: positions are found only for the maxima that can enter
        self.rectified = {n: lens.rectified(n) for n in self.names}
        self.out, self.handles = {}, []

    def _hook(self, name):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            st = self.states[name]
            self.out[name] = _reduce(output, name, st.threshold(), st.k, self.rectified[name])
            if len(self.out) == len(self.names):
                raise self.stop
        return hook

    def __enter__(self):
        try:
            for n in self.names:
                self.handles.append(self.lens.resolve(n)[2].register_forward_hook(self._hook(n)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        while self.handles:
            self.handles.pop().remove()
        return False

    def run(self, x):
        """One batch's entries per layer (in ``inference_mode``); the model must be in eval mode (the pass
        puts it there once, not per batch)."""
        self.out = {}
        with torch.inference_mode():
            try:
                self.lens.model(x)
            except self.stop:
                pass
        missing = [n for n in self.names if n not in self.out]
        if missing:
            raise ValueError(f"layer {missing[0]!r} did not run during the forward; choose another layer")
        return self.out


def _collate(items):
    """A batch of ``(input, ok)`` items: the inputs stacked and the flags as a list. From a worker the stack
    comes as one shared tensor; the flags as a second tensor would cost a second file descriptor passed per
    batch, so they travel in the pickle."""
    return torch.stack([x for x, _ in items]), [bool(ok) for _, ok in items]


def _progress_bar(total, desc, enabled, rank):
    if not enabled or rank != 0:
        return None
    from .._progress import in_notebook
    if in_notebook():
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=True, smoothing=0.1)


def mine(model, data, layers=None, *, k: int = 9, rule: str = "deconvnet", weights=None, out=None,
         batch_size: int = 64, workers: int = 0, limit: int | None = None, checkpoint=None,
         checkpoint_every: int = 4096, resume: bool = False, strict: bool = False, progress=True,
         projections: bool = True, chunk: int = 32, threads: int | None = None, device=None):
    """Mine ``data`` for the top-``k`` images of every map of ``layers`` (ZF Fig. 2 at data-set scale).

    Args:
        model: a bundled model name (``"zfnet-fashion"``), a torchvision model name (``"alexnet"``, with
            ``weights``), or a :class:`zfwidgets.Lens`.
        data: a folder of images (a torchvision ``ImageFolder`` or flat, read recursively), ``"fashion-mnist:train"``
            / ``"fashion-mnist:test"`` (the bundled splits), a map-style ``Dataset`` or a ``DataLoader`` over one.
        layers: layer names (a list or ``"conv1,conv5"``); default every conv layer.
        k: images per map. rule: the projection rule (``"deconvnet"``, ``"guided"``, ``"gradient"``).
        weights: torchvision weights for a model given by name (``None``: random initialisation).
        out: write the gallery file here (atomically).
        batch_size, workers: images per forward and ``DataLoader`` decoding workers.
        limit: mine only the first ``limit`` images.
        checkpoint: a folder for checkpoints (one file per rank); ``checkpoint_every``: images between them;
            ``resume``: go on from the checkpoint there (its job must match).
        strict: stop at the first image that cannot be decoded, naming its file (default: skip, count and list it).
        progress: a progress bar with images/s. projections: compute projections and patches (else values only).
        chunk: images per recorded forward in the projection phase. threads: ``torch.set_num_threads`` for
            the call. device: for a model given by name, where to run it (``"cuda"``: under torchrun each rank
            takes the GPU of its ``LOCAL_RANK``); a lens runs where its model is.

    Returns a :class:`~zfwidgets.mine.gallery.Gallery` (on rank 0 under ``torchrun``; ``None`` on the others).

    Example:
        >>> g = zfwidgets.mine("zfnet-fashion", "fashion-mnist:test", layers="conv5", limit=200, progress=False)
        >>> top = g.top("conv5"); top.indices.shape, bool(((top.indices >= 0) & (top.indices < 200)).all())
        (torch.Size([64, 9]), True)
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    for name, v in (("batch_size", batch_size), ("chunk", chunk), ("checkpoint_every", checkpoint_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the folder the interrupted run wrote to)")
    lens = make_lens(model, weights)
    if device is not None:
        if lens is model:
            raise ValueError("device= applies to a model given by name; move the lens's model yourself")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        lens.model.to(device)
    specs = _layer_list(lens, layers)
    source, opts = open_data(data, lens, limit=limit)
    if batch_size == 64 and "batch_size" in opts:
        batch_size = opts["batch_size"]
    if workers == 0 and opts.get("workers"):
        workers = opts["workers"]
    dist = _Dist(lens.device)
    n_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        job = _Job(k, rule, weights, out, batch_size, workers, checkpoint, checkpoint_every, resume, strict,
                   progress, projections, chunk)
        with _old_objects_frozen():
            return _run(lens, specs, source, dist, job)
    finally:
        torch.set_num_threads(n_threads)
        dist.close()


@contextlib.contextmanager
def _old_objects_frozen():
    """The objects that exist before the job kept out of the cyclic garbage collector's passes during it
    (``gc.freeze``), given back to it after (``gc.unfreeze``). The job's hits and boxes set off a full
    collection, which would walk every object of the process (torch's modules and functions) once in every
    rank. Left alone where the process had frozen objects itself."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class _Pass:
    """Where this rank's pass over its shard stands: the top-k ``states`` per layer, the images ``count``-ed,
    the ``skipped`` ones, the next batch ``b_next``; ``seconds`` once it is over."""
    states: dict
    count: int
    skipped: list
    b_next: int
    seconds: float = 0.0


def _run(lens, specs, source, dist, job: _Job):
    """The job: this rank's pass (with checkpoints), the ranks' states merged, the winners projected in bulk,
    the gallery built and written on rank 0; ``None`` on the other ranks."""
    t_job = time.perf_counter()
    weights_name = None if job.weights is None else str(getattr(job.weights, "name", job.weights))
    widths = _map_widths(lens, source, [s.name for s in specs])
    done = _pass(lens, specs, source, dist, job, weights_name)
    timings = {"pass": done.seconds}
    t = time.perf_counter()
    parts = dist.all_gather(({n: (s.values, s.indices, s.positions) for n, s in done.states.items()}, done.count,
                             done.skipped))
    merged = {s.name: TopK.merge(TopK(s.channels, job.k, *p[0][s.name]) for p in parts) for s in specs}
    total = sum(p[1] for p in parts)
    skipped_all = sorted((e for p in parts for e in p[2]), key=lambda e: e["index"])
    timings["merge"], t = time.perf_counter() - t, time.perf_counter()
    results = {}
    if job.projections:
        from .project import project_winners
        mine_part = project_winners(lens, source, specs, merged, widths, job.rule, job.chunk, dist.rank, dist.world,
                                    job.progress and dist.rank == 0)
        timings["projections"], t = time.perf_counter() - t, time.perf_counter()
        for part in dist.gather(_pack(_finish(mine_part))) or []:
            results.update(_unpack(part))
        timings["gather"], t = time.perf_counter() - t, time.perf_counter()
    if dist.rank != 0:
        dist.barrier()
        return None
    gallery = _build(lens, specs, source, merged, results, widths, job.k, job.rule, weights_name, total,
                     skipped_all, job.projections)
    timings["build"], t = time.perf_counter() - t, time.perf_counter()
    if job.out is not None:
        gallery.save(job.out)
        gallery.path = Path(job.out)
        timings["save"] = time.perf_counter() - t
    gallery.pass_seconds = done.seconds   # not in the file: equal jobs give equal files
    gallery.job_seconds = time.perf_counter() - t_job   # the job without start-up (imports, process group)
    gallery.timings = timings        # rank 0's seconds per phase of the job
    dist.barrier()
    return gallery


def _pass(lens, specs, source, dist, job: _Job, weights_name) -> _Pass:
    """This rank's pass over its shard of whole batches: each layer's maxima offered to its top-k state, a
    checkpoint every ``job.every`` images (resumed from where ``job.resume`` finds one); images that cannot be
    decoded skipped and listed, or the first one an error with ``job.strict``."""
    N, B = len(source), job.batch_size
    nb = -(-N // B)
    first, end = dist.rank * nb // dist.world, (dist.rank + 1) * nb // dist.world
    fingerprint = {"model": lens.name, "weights": weights_name, "layers": [s.name for s in specs], "k": job.k,
                   "data": source.describe(), "batch_size": B, "world": dist.world, "rank": dist.rank}
    st = _Pass({s.name: TopK(s.channels, job.k) for s in specs}, 0, [], first)
    ck = None if job.checkpoint is None else Path(job.checkpoint) / f"rank{dist.rank}-of-{dist.world}.safetensors"
    if ck is not None and job.resume and ck.exists():
        from .checkpoint import load_checkpoint
        tensors, info = load_checkpoint(ck, fingerprint)
        st = _Pass({s.name: TopK.from_tensors(tensors, s.name, s.channels, job.k) for s in specs},
                   int(info["count"]), list(info["skipped"]), int(info["next_batch"]))

    def save():
        if ck is None:
            return
        from .checkpoint import save_checkpoint
        tensors = {}
        for name, top in st.states.items():
            tensors.update(top.tensors(name))
        save_checkpoint(ck, tensors, {"next_batch": st.b_next, "count": st.count, "skipped": st.skipped},
                        fingerprint)

    names = [s.name for s in specs]
    todo = [list(range(b * B, min(N, (b + 1) * B))) for b in range(st.b_next, end)]
    bar = _progress_bar(sum(len(t) for t in todo), f"mining {len(names)} layers", job.progress, dist.rank)
    loader = DataLoader(source, batch_sampler=todo, num_workers=job.workers, collate_fn=_collate) if todo else []
    since = 0
    t0 = time.perf_counter()
    hooks, stack = _MaxHooks(lens, names, st.states), contextlib.ExitStack()
    from ..core.capture import ModelGuard
    try:
        stack.enter_context(hooks)
        stack.enter_context(ModelGuard(lens.model))   # eval mode for the pass, each module's flag restored after
        for (x, ok), ids in zip(loader, todo):
            x, idx = _decoded(source, x, ok, ids, st.skipped, job.strict)
            if x.shape[0]:
                _offer(hooks.run(x.to(lens.device)), st.states, idx, source)
            st.count += int(x.shape[0])
            st.b_next += 1
            since += len(ids)
            if bar is not None:
                bar.update(len(ids))
            if since >= job.every:
                save()
                since = 0
    finally:
        stack.close()
        if bar is not None:
            bar.close()
    st.b_next = end
    for top in st.states.values():
        top.settle()
    if todo or (ck is not None and not ck.exists()):
        save()
    st.seconds = time.perf_counter() - t0
    return st


def _decoded(source, x, ok, ids, skipped: list, strict: bool):
    """The batch's decoded images and their indices; the others listed in ``skipped`` (or, ``strict``, an
    error naming the first)."""
    idx = torch.tensor(ids, dtype=torch.long)
    if all(ok):
        return x, idx
    bad = [ids[j] for j in range(len(ids)) if not ok[j]]
    if strict:
        err = source.error_of(bad[0]) if hasattr(source, "error_of") else "cannot be decoded"
        raise ValueError(f"cannot decode image {source.name_of(bad[0])} ({err}); without strict it "
                         "would be skipped and listed in the report")
    skipped.extend({"index": i, "id": source.ids(i),
                    "error": source.error_of(i) if hasattr(source, "error_of") else "cannot be decoded"}
                   for i in bad)
    keep = torch.tensor(ok)
    return x[keep], idx[keep]


def _offer(got: dict, states: dict, idx, source) -> None:
    """One batch's maxima per layer offered to the layers' top-k states (a NaN is an error naming the image)."""
    for name, top in states.items():
        v, pos, rows, maps = got[name]
        nan = torch.isnan(v)
        if bool(nan.any()):
            row = int(rows[nan.nonzero()[0, 0]])
            raise ValueError(f"layer {name!r} gives NaN for image {source.name_of(int(idx[row]))}")
        top.offer(v, pos, idx[rows], maps)
        if top.pending >= top.channels * top.k:   # select now and then: the bar rises with the state
            top.settle()


def _finish(part: dict) -> dict:
    """Each winner's stored form, computed on the rank that projected it: ``(box, the projection divided by its
    largest magnitude as float16, flattened; that magnitude; the patch, flattened)``."""
    out = {}
    for q, (box, proj, patch) in part.items():
        m = float(proj.abs().max()) if proj.numel() else 0.0
        out[q] = (box, (proj / m if m > 0 else proj).to(torch.float16).flatten(), m,
                  torch.from_numpy(patch).flatten())
    return out


def _pack(part: dict) -> tuple:
    """One rank's finished winners as a few large buffers (pickling thousands of small tensors is what made the
    gather slow): keys, boxes, scales and lengths, every projection in one float16 tensor and
    every patch in one uint8 tensor. :func:`_unpack` gives back views of them, value for value."""
    keys = list(part)
    lengths = [(part[q][1].numel(), part[q][3].numel()) for q in keys]
    projs = torch.cat([part[q][1] for q in keys]) if keys else torch.zeros(0, dtype=torch.float16)
    patches = torch.cat([part[q][3] for q in keys]) if keys else torch.zeros(0, dtype=torch.uint8)
    return keys, [part[q][0] for q in keys], [part[q][2] for q in keys], lengths, projs, patches


def _unpack(packed: tuple) -> dict:
    keys, boxes, scales, lengths, projs, patches = packed
    out, a, b = {}, 0, 0
    for q, box, m, (n, k) in zip(keys, boxes, scales, lengths):
        out[q] = (box, projs[a:a + n], m, patches[b:b + k])
        a, b = a + n, b + k
    return out


def _build(lens, specs, source, merged, results, widths, k, rule, weights_name, total, skipped, projections):
    from importlib.metadata import version
    ids = {}
    layers, infos = {}, []
    for name, path, kind, C, cin in specs:
        st = merged[name]
        info = {"name": name, "path": path, "kind": kind, "channels": C, "in_channels": lens.channels,
                "rectified": lens.rectified(name)}
        infos.append(info)
        flat, w = st.positions, widths[name]
        positions = torch.full((C, k, 2), -1, dtype=torch.long)
        if w is not None:
            positions[..., 0] = torch.where(flat >= 0, flat // w, -1)
            positions[..., 1] = torch.where(flat >= 0, flat % w, -1)
        boxes = [[[0] * 8 for _ in range(k)] for _ in range(C)]
        scale = [[0.0] * k for _ in range(C)]
        projs, patches = [], []
        indices = st.indices.tolist()
        for c in range(C):
            for j in range(k):
                i = indices[c][j]
                if i < 0:
                    continue
                ids[str(i)] = source.ids(i)
                r = results.get((name, c, j))
                if r is None:
                    continue
                box, proj, m, patch = r
                boxes[c][j] = list(box)
                scale[c][j] = m
                projs.append(proj)
                patches.append(patch)
        boxes = torch.tensor(boxes, dtype=torch.long).reshape(C, k, 8)
        scale = torch.tensor(scale, dtype=torch.float32).reshape(C, k)
        small = {"values": st.values.clone(), "indices": st.indices.clone(), "positions": positions,
                 "boxes": boxes, "scale": scale}
        big = {"projections": torch.cat(projs) if projs else torch.zeros(0, dtype=torch.float16),
               "patches": torch.cat(patches) if patches else torch.zeros(0, dtype=torch.uint8)}
        layers[name] = _LayerData(info, small, big)
    meta = {"format": GALLERY_FORMAT, "model": lens.name, "weights": weights_name,
            "layers": infos, "k": k, "rule": rule, "data": source.describe(), "ids": ids, "count": total,
            "skipped": skipped, "input_size": list(_input_size(lens, source)), "projections": bool(projections),
            "zfwidgets": version("zfwidgets"), "commit": _commit()}
    return Gallery(json.loads(json.dumps(meta)), layers)


def _input_size(lens, source):
    if lens.input_size:
        return tuple(lens.input_size)
    for i in range(len(source)):
        x, ok = source[i]
        if ok:
            return tuple(x.shape)
    raise ValueError("no image of the data set could be decoded")


def _map_widths(lens, source, names) -> dict:
    """Each layer's map width (``None`` for a fully connected layer), from one forward of a zero image."""
    x = torch.zeros(1, *_input_size(lens, source))
    _, acts = lens.run(x.to(lens.device), names, logits=False)
    return {n: (int(acts[n].shape[-1]) if n in acts and acts[n].dim() == 4 else None) for n in names}
