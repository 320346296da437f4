"""Feature evolution during training (ZF §4, Fig. 4), and a callback that saves training snapshots.

For every snapshot of a model and every chosen feature map, :func:`feature_evolution` finds the strongest
activation of the map over a fixed set of images and projects it to pixel space with the deconvnet. The
figure has one column per snapshot. To make ZF's finding ("lower layers converge within a few epochs,
upper layers only after many") measurable, each projection is compared with the last snapshot's
projection of the same map: ``similarity[layer][c, s]`` is their **shift-invariant cosine**, the
largest normalised cross-correlation over all relative translations,
``max_t <p_s, shift_t(p_final)> / (||p_s|| ||p_final||)`` (zero-padded shifts). The strongest activation
of a map may sit in another image or at another place at each snapshot; a feature that keeps its form
there counts as stable (the plain cosine, ``cosine[layer][c, s]``, is kept too: it drops to about 0
whenever the position moves, whatever the feature looks like). :meth:`FeatureEvolution.stability`
averages the similarity over the maps of a layer; ``baseline[layer]`` is the mean similarity between
*different* maps of the layer at the last snapshot, the level that unrelated features reach.

Snapshots come from the bundled models (``feature_evolution("zfnet-fashion", ...)`` loads
``zfwidgets.load(name, epoch=k)`` for every ``k`` in ``zfwidgets.snapshot_epochs(name)``), from a list of
lenses, or from a folder written by :class:`SnapshotSaver` during your own training.

Example:
    >>> ev = zfwidgets.feature_evolution("zfnet-fashion", [s.image for s in zfwidgets.samples()][::4],
    ...                                  ["conv1", "conv5"], channels=2, progress=False)
    >>> ev.epochs, sorted(ev.stability())   # per layer: mean similarity to the final projection, per epoch
    ([1, 2, 4, 8, 17], ['conv1', 'conv5'])
    >>> fig = ev.plot()                     # one column per snapshot, like Fig. 4
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._progress import progress as _progress
from ..core.inputs import DEFAULT_BATCH_SIZE, gather
from ._common import check_lens, progress_flag, run_layers

__all__ = ["FeatureEvolution", "feature_evolution", "SnapshotSaver", "load_snapshots", "shift_cosine"]

INDEX_FILE = "snapshots.json"
FORMAT = "zfwidgets-snapshots/1"
ZF_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)


# ----- saving snapshots during training ---------------------------------------------------------
def _check_epoch(epoch, what="epoch") -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, Integral):
        raise TypeError(f"{what} must be an int, got {type(epoch).__name__} ({epoch!r})")
    if epoch < 0:
        raise ValueError(f"{what} must be >= 0, got {epoch}")
    return int(epoch)


class SnapshotSaver:
    """A training callback that saves snapshots like the bundled ones: call ``saver(epoch)`` after each epoch.

    Files in ``folder``: ``<name>.epoch<k>.pt`` (the state dict, floating-point tensors stored as float16,
    readable with ``torch.load(weights_only=True)``) and ``snapshots.json``, an index with the epochs, the
    files, and what a :class:`~zfwidgets.Lens` needs (``arch`` if it is a bundled architecture,
    ``input_size``, ``mean``, ``std``, ``class_names``). The model is only read, never changed.

    Args:
        model: the ``nn.Module`` being trained.
        folder: where to write (created if missing).
        epochs: the epochs to keep (default ZF's 1, 2, 5, 10, 20, 30, 40, 64); ``None``: every call.
        name: file name prefix.
        arch: a bundled architecture name (``"zfnet-fashion"``) so that :func:`load_snapshots` can rebuild
            the model without being given one.
        input_size, mean, std, class_names: stored for the lenses :func:`load_snapshots` makes.

    Example:
        >>> import tempfile; folder = tempfile.mkdtemp()
        >>> model = zfwidgets.zoo.models.build("zfnet-fashion")     # your model, being trained
        >>> saver = SnapshotSaver(model, folder, epochs=(1, 2), arch="zfnet-fashion", input_size=(1, 28, 28))
        >>> for epoch in range(1, 4):
        ...     # train_one_epoch(model)
        ...     path = saver(epoch)                       # the file written, or None
        >>> lenses = SnapshotSaver.load(folder)          # or model=a module / a function building one
        >>> [lens.epoch for lens in lenses]
        [1, 2]
        >>> ev = zfwidgets.feature_evolution(lenses, images[:4], ["conv1", "conv5"], channels=1, progress=False)
    """

    def __init__(self, model: nn.Module, folder, epochs=ZF_EPOCHS, *, name: str = "model", arch: str | None = None,
                 input_size=None, mean=None, std=None, class_names=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"folder must be a path, got {type(folder).__name__}")
        if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
            raise ValueError(f"name must be a plain file name prefix, got {name!r}")
        if epochs is not None:
            if isinstance(epochs, (str, bytes)) or not hasattr(epochs, "__iter__"):
                raise TypeError(f"epochs must be a sequence of ints or None, got {type(epochs).__name__}")
            epochs = tuple(sorted({_check_epoch(e, "each epoch") for e in epochs}))
        if arch is not None:
            from ..zoo.models import ARCHITECTURES
            if arch not in ARCHITECTURES:
                raise ValueError(f"arch must be a bundled architecture {list(ARCHITECTURES)} or None, got {arch!r}")
        self.model, self.folder, self.epochs, self.name, self.arch = model, Path(folder), epochs, name, arch
        self.meta = {"input_size": None if input_size is None else [int(s) for s in input_size],
                     "mean": None if mean is None else [float(m) for m in np.atleast_1d(mean)],
                     "std": None if std is None else [float(s) for s in np.atleast_1d(std)],
                     "class_names": None if class_names is None else [str(c) for c in class_names]}

    def __call__(self, epoch: int):
        """Save a snapshot if ``epoch`` is one of the chosen epochs; returns its path, else ``None``."""
        epoch = _check_epoch(epoch)
        if self.epochs is not None and epoch not in self.epochs:
            return None
        return self.save(epoch)

    def _index_path(self) -> Path:
        return self.folder / INDEX_FILE

    def _read_index(self) -> dict:
        p = self._index_path()
        if p.exists():
            index = json.loads(p.read_text())
            if index.get("format") != FORMAT:
                raise ValueError(f"{p} is not a zfwidgets snapshot index")
            if index.get("name") != self.name:
                raise ValueError(f"{self.folder} already holds snapshots named {index.get('name')!r}; "
                                 f"use another folder for {self.name!r}")
            return index
        return {"format": FORMAT, "name": self.name, "snapshots": []}

    def save(self, epoch: int) -> Path:
        """Save the model's current weights as the snapshot of ``epoch`` (any epoch), and update the index."""
        epoch = _check_epoch(epoch)
        self.folder.mkdir(parents=True, exist_ok=True)
        index = self._read_index()
        state = {k: (v.detach().to("cpu", torch.float16) if torch.is_floating_point(v) else v.detach().cpu()).clone()
                 for k, v in self.model.state_dict().items()}
        path = self.folder / f"{self.name}.epoch{epoch}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        snaps = [s for s in index["snapshots"] if s["epoch"] != epoch] + [{"epoch": epoch, "file": path.name}]
        index.update(self.meta, arch=self.arch, weights_dtype="float16",
                     snapshots=sorted(snaps, key=lambda s: s["epoch"]))
        tmp = self._index_path().with_suffix(".json.tmp")
        tmp.write_text(json.dumps(index, indent=1) + "\n")
        os.replace(tmp, self._index_path())
        return path

    @staticmethod
    def load(folder, model=None, **lens_kwargs) -> list:
        """The folder's snapshots as lenses, by epoch; see :func:`load_snapshots`."""
        return load_snapshots(folder, model, **lens_kwargs)


def load_snapshots(folder, model=None, **lens_kwargs) -> list:
    """Lenses on the snapshots a :class:`SnapshotSaver` wrote to ``folder``, sorted by epoch.

    ``model``: a module of the right architecture (copied for each snapshot, never changed) or a callable
    returning a fresh one; ``None`` when the index names a bundled ``arch``. ``lens_kwargs`` override
    the stored ``input_size``, ``mean``, ``std``, ``class_names``. Each lens has ``.epoch``. Weights are read
    with ``torch.load(weights_only=True)``.

    Example:
        >>> import tempfile; folder = tempfile.mkdtemp()
        >>> saver = SnapshotSaver(lens.model, folder, epochs=None, name="mine", input_size=(1, 28, 28))
        >>> [p.name for p in (saver(1), saver(2))]
        ['mine.epoch1.pt', 'mine.epoch2.pt']
        >>> lenses = load_snapshots(folder, model=lambda: zfwidgets.zoo.models.build("zfnet-fashion"))
        >>> [l.epoch for l in lenses], lenses[0].name
        ([1, 2], 'mine@1')
    """
    from ..lens import Lens
    from ..zoo import load_weights
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path, got {type(folder).__name__}")
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path} not found: not a folder written by SnapshotSaver")
    index = json.loads(index_path.read_text())
    if index.get("format") != FORMAT or not index.get("snapshots"):
        raise ValueError(f"{index_path} is not a zfwidgets snapshot index, or lists no snapshots")
    if model is None:
        if not index.get("arch"):
            raise ValueError("the snapshots do not name a bundled architecture: pass model= (a module of the "
                             "trained architecture, or a callable that builds one)")
        from ..zoo.models import build
        make = lambda: build(index["arch"])  # noqa: E731
    elif isinstance(model, nn.Module):
        make = lambda: copy.deepcopy(model)  # noqa: E731
    elif callable(model):
        make = model
    else:
        raise TypeError(f"model must be an nn.Module, a callable building one, or None; got {type(model).__name__}")
    kwargs = {k: index.get(k) for k in ("input_size", "mean", "std", "class_names") if index.get(k) is not None}
    kwargs.update(lens_kwargs)
    lenses = []
    for snap in sorted(index["snapshots"], key=lambda s: s["epoch"]):
        net = make()
        if not isinstance(net, nn.Module):
            raise TypeError(f"model() returned {type(net).__name__}, expected an nn.Module")
        file = folder / Path(snap["file"]).name  # never outside the folder
        net.load_state_dict(load_weights(file))
        net.eval()
        lens = Lens(net, name=f"{index['name']}@{snap['epoch']}", **kwargs)
        lens.epoch = int(snap["epoch"])
        lenses.append(lens)
    return lenses


# ----- the analysis -----------------------------------------------------------------------------
@dataclass
class FeatureEvolution:
    """Projections of the strongest activation of chosen maps at every snapshot (see :func:`feature_evolution`).

    Per layer (dicts keyed by layer name), with ``c`` the map's position in ``channels[layer]`` and ``s``
    the snapshot: ``projections[layer][c, s]`` (C x H x W, float32), ``image_index[layer][c, s]`` (which image
    held the strongest activation), ``activation[layer][c, s]`` (its value) and ``similarity[layer][c, s]``
    (shift-invariant cosine between the projection and the last snapshot's, see the module docstring; NaN
    when either is all zero), ``cosine[layer][c, s]`` (the plain cosine), ``baseline[layer]`` (the mean
    similarity between different chosen maps at the last snapshot), ``active[layer][c, s]`` (False where the
    map never fires on the images at that snapshot: its activation after the ReLU is 0 and its projection
    zeros; see :meth:`zfwidgets.Lens.rectified`).
    """
    epochs: list
    layers: list
    channels: dict
    projections: dict
    image_index: dict
    activation: dict
    similarity: dict
    method: str
    cosine: dict = field(default_factory=dict, repr=False)
    baseline: dict = field(default_factory=dict)
    images: np.ndarray = field(default=None, repr=False)  # n x H x W x 3 uint8
    active: dict = field(default_factory=dict, repr=False)

    def stability(self) -> dict:
        """``{layer: mean similarity to the final projection, per snapshot}`` (NaNs skipped)."""
        out = {}
        for l in self.layers:
            s = self.similarity[l]
            with np.errstate(all="ignore"):
                out[l] = np.array([np.nanmean(s[:, k]) if np.isfinite(s[:, k]).any() else np.nan
                                   for k in range(s.shape[1])])
        return out

    def converged_epoch(self, threshold: float = 0.8) -> dict:
        """``{layer: the first epoch from which the layer's mean similarity stays >= threshold}``."""
        out = {}
        for l, s in self.stability().items():
            ok = np.nan_to_num(s, nan=-1.0) >= threshold
            k = len(ok)
            while k > 0 and ok[k - 1]:
                k -= 1
            out[l] = self.epochs[k] if k < len(ok) else None
        return out

    def plot(self, *, mode: str = "signed"):
        """One column per snapshot, one row per feature map (Fig. 4), with the similarity to the final one."""
        from ..plot.evolution import plot_feature_evolution
        return plot_feature_evolution(self, mode=mode)

    def plot_stability(self):
        """Mean similarity to the final projection against the epoch, one line per layer."""
        from ..plot.evolution import plot_stability
        return plot_stability(self)


def _snapshot_lenses(source, epochs):
    """(lenses, epochs) from a bundled name, a folder, a bundled lens, or a list of lenses."""
    from ..lens import Lens
    from ..zoo import available, load, snapshot_epochs
    if isinstance(source, Lens):
        base = source.name.split("@")[0]
        if base not in available():
            raise TypeError(f"a single lens ({source.name}) has no snapshots; pass a list of lenses, a bundled "
                            f"model name {available()}, or a folder written by SnapshotSaver")
        source = base
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and source in available():
            have = snapshot_epochs(source)
            want = have if epochs is None else list(epochs)
            bad = [e for e in want if e not in have]
            if bad:
                raise ValueError(f"no snapshot of {source} at epochs {bad}; available: {have}")
            return [load(source, epoch=int(e)) for e in want], [int(e) for e in want]
        path = Path(source)
        if path.is_dir():
            lenses = load_snapshots(path)
        else:
            raise ValueError(f"{str(source)!r} is neither a bundled model {available()} nor a snapshot folder")
    elif isinstance(source, (list, tuple)):
        lenses = list(source)
        if not lenses:
            raise ValueError("the list of snapshot lenses is empty")
        for l in lenses:
            check_lens(l)
    else:
        raise TypeError(f"expected a bundled model name, a snapshot folder or a list of lenses; got "
                        f"{type(source).__name__}")
    have = [int(getattr(l, "epoch", k + 1)) for k, l in enumerate(lenses)]
    if epochs is None:
        return lenses, have
    epochs = [_check_epoch(e) for e in epochs]
    if isinstance(source, (list, tuple)) and not any(hasattr(l, "epoch") for l in lenses):
        if len(epochs) != len(lenses):
            raise ValueError(f"epochs labels {len(epochs)} snapshots but {len(lenses)} lenses were given")
        return lenses, epochs
    bad = [e for e in epochs if e not in have]
    if bad:
        raise ValueError(f"no snapshot at epochs {bad}; available: {have}")
    return [lenses[have.index(e)] for e in epochs], epochs


def shift_cosine(a, b) -> float:
    """The largest cosine between ``a`` and ``b`` (C x H x W) over all relative translations (zero-padded).

    Equal to the plain cosine's maximum over shifts; 1 for a feature that reappears unchanged elsewhere.
    NaN when either is all zero.

    Example:
        >>> a = np.zeros((1, 5, 5)); a[0, 1, 1] = 1; b = np.roll(a, 2, axis=2)
        >>> shift_cosine(a, b)       # 1.0
        1.0
    """
    ta = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    tb = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if ta.dim() != 3 or ta.shape != tb.shape:
        raise ValueError(f"expected two arrays C x H x W of one shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    na, nb = float(ta.norm()), float(tb.norm())
    if na == 0 or nb == 0:
        return float("nan")
    H, W = ta.shape[1:]
    # every translation's dot product at once, by FFT (size 2H-1 x 2W-1: no wrap-around), summed over channels;
    # memory O(C H W) (a convolution with the whole map as its kernel unfolds C H W x 4 H W values: 240 GB for
    # 3 x 224 x 224). The best few shifts are then evaluated exactly, so the value does not carry FFT rounding.
    size = (2 * H - 1, 2 * W - 1)
    spectrum = (torch.fft.rfft2(ta, s=size) * torch.fft.rfft2(tb, s=size).conj()).sum(0)
    corr = torch.fft.irfft2(spectrum, s=size).flatten()
    best = -float("inf")
    for k in corr.topk(min(8, corr.numel())).indices.tolist():
        dy, dx = divmod(k, size[1])                     # a's offset over b: (dy, dx) mod (2H-1, 2W-1)
        dy, dx = (dy - size[0] if dy >= H else dy), (dx - size[1] if dx >= W else dx)
        a_part = ta[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)]
        b_part = tb[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
        best = max(best, float((a_part * b_part).sum()))
    return best / (na * nb)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def _strongest(acts: torch.Tensor):
    """Per channel: (value, image index) of the strongest activation; acts N x C [x H x W]."""
    a = acts.flatten(2).amax(2) if acts.dim() == 4 else acts
    vals, idx = a.max(0)
    return vals.double().cpu().numpy(), idx.cpu().numpy()


def feature_evolution(lens_or_name, images, layers, channels=None, *, epochs=None, method: str = "deconvnet",
                      batch_size: int = DEFAULT_BATCH_SIZE, progress=True, show_progress=None) -> FeatureEvolution:
    """Projections of the strongest activation of chosen feature maps at each training snapshot (Fig. 4).

    Args:
        lens_or_name: a bundled model name (its shipped snapshots), a bundled model's lens, a list of lenses
            (one per snapshot, in training order; ``lens.epoch`` labels them when set), or a folder written by
            :class:`SnapshotSaver`.
        images: the fixed image set (a list of images/samples, a uint8 array N x H x W [x C], or a float tensor
            N x C x H x W of model input).
        layers: a layer or a list of layers.
        channels: which feature maps: ``None`` (the 4 maps with the strongest activation over the images in the
            last snapshot), an int k (the k strongest), a list of channels for every layer, or a dict
            ``{layer: channels}``.
        epochs: keep only these snapshots (default: all). Similarities are to the last one kept.
        method: projection rule: ``"deconvnet"`` (ZF), ``"guided"`` or ``"gradient"``.
        batch_size: images per forward when searching for the strongest activations.

    Example:
        >>> ev = feature_evolution("zfnet-fashion", [s.image for s in zfwidgets.samples()][::4], ["conv1", "conv5"],
        ...                        channels=2, progress=False)
        >>> bool(ev.stability()["conv1"][0] > ev.stability()["conv5"][0])     # ZF: lower layers settle earlier
        True
    """
    show_progress = progress_flag(progress, show_progress)
    from ..core.project import METHODS, project
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    lenses, epoch_list = _snapshot_lenses(lens_or_name, epochs)
    final = lenses[-1]
    x = gather(final, images).tensor()
    n = x.shape[0]
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError(f"layers must be a layer or a non-empty list of layers, got {layers!r}")
    names = [final.resolve(l)[0] for l in layers]
    for lens in lenses[:-1]:
        if [lens.resolve(l)[0] for l in names] != names:
            raise ValueError("the snapshots do not share the layers asked for")

    rectified = {l: final.rectified(l) for l in names}

    def strongest(lens):
        vals = {l: [] for l in names}
        xs = x.to(lens.device)
        for s in range(0, n, batch_size):
            _, acts = run_layers(lens, xs[s:s + batch_size], names)
            for l in names:
                a = acts[l].clamp(min=0) if rectified[l] else acts[l]    # ZF's unit: after the layer's ReLU
                vals[l].append(a.flatten(2).amax(2) if a.dim() == 4 else a)
        return {l: _strongest(torch.cat(v)) for l, v in vals.items()}

    final_strongest = strongest(final)
    chosen = {}
    for l in names:
        n_maps = len(final_strongest[l][0])
        spec = channels.get(l, channels.get(final.resolve(l)[1])) if isinstance(channels, dict) else channels
        if isinstance(channels, dict) and spec is None:
            raise ValueError(f"channels has no entry for layer {l!r}")
        if spec is None or (isinstance(spec, Integral) and not isinstance(spec, bool)):
            k = 4 if spec is None else int(spec)
            if k < 1:
                raise ValueError(f"channels must be >= 1, got {k}")
            order = np.argsort(-final_strongest[l][0], kind="stable")
            chosen[l] = [int(c) for c in order[:k]]
        elif isinstance(spec, (list, tuple, np.ndarray, range)):
            cs = []
            for c in spec:
                if isinstance(c, bool) or not isinstance(c, Integral):
                    raise TypeError(f"channels must be ints, got {c!r}")
                if not 0 <= int(c) < n_maps:
                    raise ValueError(f"channel {c} is out of range: layer {l!r} has {n_maps} maps (0..{n_maps - 1})")
                cs.append(int(c))
            if not cs:
                raise ValueError(f"no channels given for layer {l!r}")
            chosen[l] = cs
        else:
            raise TypeError(f"channels must be None, an int, a list of ints or a dict; got {type(spec).__name__}")

    S = len(lenses)
    shape = tuple(x.shape[1:])
    proj = {l: np.zeros((len(chosen[l]), S) + shape, np.float32) for l in names}
    where = {l: np.zeros((len(chosen[l]), S), np.int64) for l in names}
    value = {l: np.zeros((len(chosen[l]), S)) for l in names}
    active = {l: np.ones((len(chosen[l]), S), bool) for l in names}
    for s, lens in enumerate(_progress(lenses, total=S, desc="snapshots", enabled=show_progress)):
        best = final_strongest if lens is final else strongest(lens)
        for l in names:
            vals, idx = best[l]
            for c_pos, c in enumerate(chosen[l]):
                i = int(idx[c])
                p = project(lens, x[i].to(lens.device), l, c, position="max", method=method)
                proj[l][c_pos, s] = p.pixels.detach().float().cpu().numpy()
                where[l][c_pos, s] = i
                value[l][c_pos, s] = vals[c]
                active[l][c_pos, s] = p.active
        lens.clear_cache()
    sim = {l: np.array([[shift_cosine(proj[l][c, s], proj[l][c, -1]) for s in range(S)]
                        for c in range(len(chosen[l]))]) for l in names}
    cos = {l: np.array([[_cosine(proj[l][c, s], proj[l][c, -1]) for s in range(S)]
                        for c in range(len(chosen[l]))]) for l in names}
    base = {}
    for l in names:
        pairs = [shift_cosine(proj[l][c, -1], proj[l][d, -1]) for c in range(len(chosen[l]))
                 for d in range(len(chosen[l])) if c != d]
        pairs = [v for v in pairs if np.isfinite(v)]
        base[l] = float(np.mean(pairs)) if pairs else float("nan")
    display = np.stack([final.to_display(x[i]) for i in range(n)]) if n <= 512 else None
    return FeatureEvolution(epoch_list, names, chosen, proj, where, value, sim, method, cos, base, display, active)
