"""Correspondence analysis (ZF §4.3, Fig. 8, Table 1): does masking the same part change every image's
representation the same way?

For n images of one kind of object, mask the same part in each (a box filled with the data set's mean
pixel). At layer l let ``eps_i = x_i - x~_i`` be the difference between the layer's feature vectors of the
original and the masked image i (the rectified output of the layer, flattened). ZF's consistency score is

    Delta_l = sum over ordered pairs i != j of  H(sign(eps_i), sign(eps_j)),

``H`` the Hamming distance (the number of entries in which the two sign vectors differ). Conventions
here: ``sign(0) = 0`` (an entry the mask did not change is 0, and two zeros agree; an entry that changed in
one image and not in the other counts as a difference); entries with ``|eps| <= tol * max|x|`` (``max|x|``
over the original images' features at that layer, default ``tol = 1e-4``) count as 0, so that floating-point
rounding is not read as a change (``tol=0`` for the bare definition). float32 features computed by another
CPU's kernels (AVX2 against AVX-512, another thread count) differ by about 1e-6 of their range; a smaller tol
lets those rounding differences flip signs, and Δ with them in its fourth decimal. The sum runs
over *ordered* pairs, as ZF write it, so each unordered pair counts twice. ``delta_normalised`` divides
by ``n (n - 1) D`` (D the feature length): the mean fraction of entries whose signs differ between two
images, comparable across layers.

The control masks random boxes of the same size as each image's part box, at uniformly random positions
inside the image, ``random_controls`` times (seeded); the table reports their mean +- standard deviation
(over the draws, ``ddof=0``). Lower Delta than the random control means the model changes its
representation of that part consistently across images: it implicitly establishes correspondence.

Example:
    >>> boots = [s.image for s in zfwidgets.samples(label=9)]   # ZF: dog faces, masking eyes and nose
    >>> c = zfwidgets.correspondence(lens, boots, {"toe": [(14, 0, 22, 8)] * 4, "heel": [(14, 20, 22, 28)] * 4},
    ...                              progress=False)
    >>> c.parts, c.layers
    (['toe', 'heel'], ['conv5', 'fc7'])
    >>> fig = c.plot()
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch

from .._progress import progress as _progress
from ..core.inputs import DEFAULT_BATCH_SIZE, as_box, fill_tensor, gather
from ._common import check_lens, progress_flag, run_layers

__all__ = ["Correspondence", "correspondence", "hamming_consistency"]


def hamming_consistency(signs: np.ndarray) -> int:
    """``sum_{i != j} H(s_i, s_j)`` over ordered pairs of the rows of ``signs`` (n x D, values -1/0/1).

    Counted per entry: with ``c_v`` images showing value v there, ``n^2 - sum_v c_v^2`` ordered pairs differ.

    Example:
        >>> hamming_consistency(np.array([[1, 0, -1], [1, 1, -1]]))   # one entry differs, two orders
        2
    """
    s = np.asarray(signs)
    if s.ndim != 2:
        raise ValueError(f"signs must be n x D, got shape {s.shape}")
    n = s.shape[0]
    counts = np.stack([(s == v).sum(0) for v in (-1, 0, 1)]).astype(np.int64)
    if int(counts.sum()) != s.size:
        raise ValueError("signs must hold only -1, 0 and 1")
    return int((n * n - (counts ** 2).sum(0)).sum())


@dataclass
class Correspondence:
    """The result of :func:`correspondence`.

    ``delta[p, l]``: Delta of part ``parts[p]`` at ``layers[l]`` (ordered-pair Hamming sum);
    ``control_delta[g, r, l]``: the same for random draw r of control group g (``controls[g]``; one group
    per distinct set of box sizes, ``control_of[part]`` says which); ``*_normalised`` divide by
    ``n (n - 1) D``. ``boxes[part]`` and ``control_boxes[g]`` (R x n x 4) hold the masks as
    ``(y0, x0, y1, x1)``, half-open, in model-input pixels.
    """
    layers: list
    parts: list
    delta: np.ndarray
    delta_normalised: np.ndarray
    controls: list
    control_of: dict
    control_delta: np.ndarray
    control_delta_normalised: np.ndarray
    feature_size: dict
    boxes: dict
    control_boxes: np.ndarray
    n_images: int
    tol: float
    rectify: bool
    images: np.ndarray = field(default=None, repr=False)  # n x H x W x 3 uint8, for the figure

    @property
    def control_mean(self) -> np.ndarray:
        """groups x layers: mean normalised Delta of the random controls."""
        return self.control_delta_normalised.mean(1)

    @property
    def control_std(self) -> np.ndarray:
        """groups x layers: standard deviation (ddof=0) of the random controls' normalised Delta."""
        return self.control_delta_normalised.std(1)

    def rows(self, normalised: bool = True) -> list:
        """The table as dicts: ``{"mask": name, layer: (mean, std)}`` (std 0 for a part: one measurement)."""
        d = self.delta_normalised if normalised else self.delta
        cd = self.control_delta_normalised if normalised else self.control_delta
        out = [{"mask": p, **{l: (float(d[i, k]), 0.0) for k, l in enumerate(self.layers)}}
               for i, p in enumerate(self.parts)]
        for g, name in enumerate(self.controls):
            out.append({"mask": name, **{l: (float(cd[g, :, k].mean()), float(cd[g, :, k].std()))
                                         for k, l in enumerate(self.layers)}})
        return out

    def table(self, normalised: bool = True) -> str:
        """Text table like ZF Table 1 (normalised Delta by default; ``normalised=False``: the raw sums)."""
        fmt = (lambda m, s: f"{m:.4f}" + (f" ± {s:.4f}" if s else "")) if normalised else \
            (lambda m, s: f"{m:.0f}" + (f" ± {s:.0f}" if s else ""))
        rows = self.rows(normalised)
        cells = [[r["mask"]] + [fmt(*r[l]) for l in self.layers] for r in rows]
        head = ["mask"] + [f"Δ {l}" for l in self.layers]
        width = [max(len(c[k]) for c in cells + [head]) for k in range(len(head))]
        line = lambda c: "  ".join(s.ljust(w) for s, w in zip(c, width))  # noqa: E731
        what = "Δ / (n(n-1)D)" if normalised else "Δ (ordered-pair Hamming sum)"
        random_note = f"random: mean ± std over {self.control_delta.shape[1]} draws"
        return "\n".join([line(head)] + [line(c) for c in cells]) + \
            f"\n({what}; {self.n_images} images; {random_note})"

    def __str__(self):
        return self.table()

    def plot(self):
        """The images with their part boxes, and Delta per layer against the random control (Fig. 8, Table 1)."""
        from ..plot.correspondence import plot_correspondence
        return plot_correspondence(self)


def _default_layers(lens) -> list:
    """ZF's layers 5 and 7: the last conv layer and the last hidden (fc) layer, when there is one."""
    convs = [i.name for i in lens.table if i.kind == "conv"]
    out = [convs[-1]]
    fcs = [k for k, i in enumerate(lens.table) if i.kind == "fc"]
    if len(fcs) >= 2 and lens.table[fcs[-1] - 1].kind == "fc":
        out.append(lens.table[fcs[-1] - 1].name)
    return out


def correspondence(lens, images, boxes, *, layers=None, fill="mean", random_controls: int = 10, seed: int = 0,
                   rectify: bool = True, tol: float = 1e-4, batch_size: int = DEFAULT_BATCH_SIZE,
                   progress=True, show_progress=None) -> Correspondence:
    """ZF's correspondence measure Delta_l for masked parts, against random masks of equal size (Table 1).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: n >= 2 images of one kind of object (a list of images/samples, a uint8 array N x H x W [x C],
            or a float tensor N x C x H x W of model input).
        boxes: one ``(y0, x0, y1, x1)`` box per image (half-open, model-input pixels) for one part, or a dict
            ``{part name: [box per image]}`` for several.
        layers: layers to measure (default: the last conv layer and the last hidden fc layer, ZF's 5 and 7).
        fill: the mask's value: ``"mean"`` (the data set's mean pixel, :attr:`Lens.fill_value`), a number, or
            one number per channel, in model-input space.
        random_controls: number of random-mask draws (>= 1).
        seed: seeds the random boxes.
        rectify: take the layer's output through ``relu`` (the post-ReLU features of a conv or fc module
            followed by a ReLU, as in ZF); ``False`` uses the module's output as is.
        tol: feature differences with ``|eps| <= tol * max|x|`` count as zero (see the module docstring).
        batch_size: images per forward.

    Example:
        >>> imgs = [s.image for s in zfwidgets.samples(label=9)]          # 4 ankle boots
        >>> c = correspondence(lens, imgs, {"toe": [(14, 0, 22, 8)] * 4, "heel": [(14, 20, 22, 28)] * 4})
        >>> print(c.table())
        mask    Δ conv5          Δ fc7
        toe     0.2415           0.2122
        heel    0.2152           0.2493
        random  0.2909 ± 0.0115  0.2523 ± 0.0219
        (Δ / (n(n-1)D); 4 images; random: mean ± std over 10 draws)
    """
    show_progress = progress_flag(progress, show_progress)
    check_lens(lens)
    if isinstance(random_controls, bool) or not isinstance(random_controls, Integral) or random_controls < 1:
        raise ValueError(f"random_controls must be an int >= 1, got {random_controls!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(tol, bool) or not isinstance(tol, Real) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    x = gather(lens, images, min_images=2).tensor()
    n = x.shape[0]
    H, W = x.shape[2:]
    if isinstance(boxes, dict):
        if not boxes:
            raise ValueError("boxes is an empty dict; give {part name: [one box per image]}")
        parts = dict(boxes)
    elif isinstance(boxes, (list, tuple, np.ndarray, torch.Tensor)):
        parts = {"part": boxes}
    else:
        raise TypeError(f"boxes must be a list of (y0, x0, y1, x1) boxes, one per image, or a dict "
                        f"{{part name: boxes}}; got {type(boxes).__name__}")
    checked = {}
    for name, bs in parts.items():
        if not isinstance(name, str):
            raise TypeError(f"part names must be strings, got {name!r}")
        if isinstance(bs, torch.Tensor):
            bs = bs.tolist()
        if not isinstance(bs, (list, tuple, np.ndarray)) or (len(bs) == 4 and all(
                isinstance(v, (Integral, np.integer)) for v in bs) and n != 4):
            raise TypeError(f"part {name!r}: expected one (y0, x0, y1, x1) box per image ({n} boxes), got {bs!r}")
        if len(bs) != n:
            raise ValueError(f"part {name!r}: {len(bs)} boxes for {n} images; give one box per image")
        checked[name] = [as_box(b, H, W, where=f"part {name!r}, image {i}") for i, b in enumerate(bs)]
    layer_list = _default_layers(lens) if layers is None else (
        [layers] if isinstance(layers, (str, torch.nn.Module)) else list(layers))
    if not layer_list:
        raise ValueError("layers is empty")
    names = [lens.resolve(l)[0] for l in layer_list]
    value = fill_tensor(lens, fill).to(x.device).view(-1, 1, 1)

    # control groups: one per distinct set of box sizes
    sizes = {p: tuple((b[2] - b[0], b[3] - b[1]) for b in bs) for p, bs in checked.items()}
    groups: list = []
    for p in checked:
        if sizes[p] not in groups:
            groups.append(sizes[p])
    control_names = ["random"] if len(groups) == 1 else [f"random ({[p for p in checked if sizes[p] == g][0]} size)"
                                                         for g in groups]
    control_of = {p: control_names[groups.index(sizes[p])] for p in checked}
    rng = np.random.default_rng(seed)
    control_boxes = np.zeros((len(groups), random_controls, n, 4), dtype=np.int64)
    for g, group in enumerate(groups):
        for r in range(random_controls):
            for i, (h, w) in enumerate(group):
                y0 = int(rng.integers(0, H - h + 1))
                x0 = int(rng.integers(0, W - w + 1))
                control_boxes[g, r, i] = (y0, x0, y0 + h, x0 + w)

    # every masked variant, in order: originals, parts, then controls
    masks = [None] * n
    for p in checked:
        masks += checked[p]
    masks += [tuple(b) for b in control_boxes.reshape(-1, 4).tolist()]
    total = len(masks)

    def variant(k):
        img = x[k % n].clone()
        if masks[k] is not None:
            y0, x0, y1, x1 = masks[k]
            img[:, y0:y1, x0:x1] = value
        return img

    feats = {l: [] for l in names}
    starts = range(0, total, batch_size)
    for s in _progress(starts, total=len(starts), desc="correspondence", enabled=show_progress):
        batch = torch.stack([variant(k) for k in range(s, min(s + batch_size, total))])
        _, acts = run_layers(lens, batch, names)
        for l in names:
            a = acts[l].flatten(1).double()
            feats[l].append((a.clamp(min=0) if rectify else a).cpu())
    feats = {l: torch.cat(v).numpy() for l, v in feats.items()}

    P, G = len(checked), len(groups)
    delta = np.zeros((P, len(names)))
    cdelta = np.zeros((G, random_controls, len(names)))
    dims = {}
    for k, l in enumerate(names):
        f = feats[l]
        orig = f[:n]
        D = f.shape[1]
        dims[l] = D
        thresh = float(tol) * float(np.abs(orig).max()) if tol else 0.0

        def delta_of(masked):
            eps = orig - masked
            s = np.where(np.abs(eps) <= thresh, 0, np.sign(eps)).astype(np.int8)
            return hamming_consistency(s)

        for p in range(P):
            delta[p, k] = delta_of(f[n * (1 + p): n * (2 + p)])
        for g in range(G):
            for r in range(random_controls):
                start = n * (1 + P) + n * (g * random_controls + r)
                cdelta[g, r, k] = delta_of(f[start:start + n])
    norm = np.array([n * (n - 1) * dims[l] for l in names], float)
    display = np.stack([lens.to_display(x[i]) for i in range(n)])
    return Correspondence(names, list(checked), delta, delta / norm, control_names, control_of, cdelta,
                          cdelta / norm, dims, checked, control_boxes, n, float(tol), bool(rectify), display)
