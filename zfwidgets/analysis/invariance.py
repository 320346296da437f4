"""Feature invariance to translation, scaling and rotation (ZF §4, Fig. 5; METHODS.md §5).

Each image's model input is transformed over a range of parameters (areas uncovered are padded with the
occluder's grey, the data set's mean pixel), and at every chosen layer the Euclidean distance between the
flattened feature vectors of the original and the transformed image is measured, with the probability of
the true class. ZF compare layer 1 and layer 7 (the last hidden layer): small transforms move layer 1 a
lot and the top layer little. Because layers differ in size and scale, the distance relative to the norm of
the original's feature vector (``relative``) is what compares across layers.

Transforms (applied to the model input, bilinear resampling, ``torchvision.transforms.functional``):

- ``"translate"``: vertical shift by ``v`` pixels (positive: down); default ``-r..r``, ``r`` = 30% of the height;
- ``"scale"``: zoom about the centre by the factor ``v`` (``v > 1`` enlarges); default 0.6, 0.7, ..., 1.8;
- ``"rotate"``: rotation about the centre by ``v`` degrees, counter-clockwise; default 0, 15, ..., 360.

Feature vectors are the layer's output rectified (``rectify=True``, ZF's "layer l" is after its ReLU); for
the bundled model the default layers are ``conv1`` and ``fc7``.

Example:
    >>> inv = invariance(lens, zfwidgets.samples()[:5], transform="translate")
    >>> inv.relative["conv1"].shape               # images x values
    torch.Size([5, 17])
    >>> inv.probability[:, 8]                      # p(true class) per image and value; here unshifted
    tensor([0.999, 0.315, 1.000, 0.999, 1.000], dtype=torch.float64)
    >>> inv.plot()                                 # one row of Fig. 5
    <Figure size 1320x280 with 4 Axes>
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch

from .._progress import progress as _progress
from ..core.inputs import fill_tensor, gather, is_single_image
from ._common import check_flag, check_int, check_lens, first_conv_layer, last_hidden_layer, layer_names

__all__ = ["Invariance", "invariance", "transform_input", "TRANSFORMS"]

TRANSFORMS = ("translate", "scale", "rotate")


@dataclass
class Invariance:
    """Distances and probabilities over a transform's parameter ``values`` (``images x values`` tensors).

    ``distance[layer]``: ‖f(T_v x) − f(x)‖₂; ``relative[layer]``: that divided by ‖f(x)‖₂ (NaN where the
    original's feature vector is zero); ``probability``: p(label) of the transformed image; ``predicted``:
    its most probable class; ``labels``: the true (given) or, where none was given, the original's
    predicted class; ``thumbnails``: a few ``(value, H x W x 3 uint8)`` of the first image transformed.
    """
    transform: str
    values: np.ndarray
    layers: list
    distance: dict
    relative: dict
    probability: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor
    label_names: list = field(default_factory=list)
    labels_given: bool = True
    thumbnails: list = field(default_factory=list, repr=False)

    def mean_relative(self, layer=None, *, exclude_identity: bool = True) -> float | dict:
        """Mean relative distance over images and values (the identity value left out by default).

        Example:
            >>> inv = invariance(lens, zfwidgets.samples()[::8], transform="translate", progress=False)
            >>> sorted(inv.mean_relative())
            ['conv1', 'fc7']
        """
        keep = np.ones(len(self.values), dtype=bool)
        if exclude_identity:
            v = np.mod(self.values, 360.0) if self.transform == "rotate" else self.values
            keep = ~(np.isclose(v, _IDENTITY[self.transform]) | (self.transform == "rotate") & np.isclose(v, 360.0))
        out = {l: float(np.nanmean(self.relative[l].numpy()[:, keep])) for l in self.layers}
        return out if layer is None else out[layer]

    def plot(self, *, relative: bool = False, figsize=None):
        """One row of ZF Fig. 5: examples, distance at the low and top layer, p(true class)."""
        from ..plot.invariance import plot_invariance
        return plot_invariance(self, relative=relative, figsize=figsize)


_IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}


def default_values(transform: str, height: int) -> np.ndarray:
    """The default parameter sweep of ``transform`` for images ``height`` pixels tall.

    Example:
        >>> default_values("translate", 28)       # -8, -7, ..., 8 pixels
        array([-8., -7., -6., -5., -4., -3., -2., -1.,  0.,  1.,  2.,  3.,  4.,
                5.,  6.,  7.,  8.])
    """
    if transform == "translate":
        r = max(1, round(0.3 * height))
        step = max(1, r // 8)
        return np.arange(-r, r + 1, step, dtype=np.float64)
    if transform == "scale":
        return np.round(np.arange(0.6, 1.81, 0.1), 2)
    if transform == "rotate":
        return np.arange(0.0, 361.0, 15.0)
    raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}")


def transform_input(x: torch.Tensor, transform: str, value: float, fill: torch.Tensor) -> torch.Tensor:
    """``x`` (N x C x H x W model input) translated vertically / scaled / rotated by ``value``, padded with ``fill``.

    Example:
        >>> y = transform_input(x, "rotate", 90.0, lens.fill_value)
        >>> y.shape, torch.allclose(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
        (torch.Size([1, 1, 28, 28]), True)
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    fill = [float(v) for v in fill.flatten().tolist()]
    bilinear = InterpolationMode.BILINEAR
    if transform == "translate":
        return TF.affine(x, angle=0.0, translate=[0, float(value)], scale=1.0, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=fill)
    if transform == "scale":
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=float(value), shear=[0.0, 0.0],
                         interpolation=bilinear, fill=fill)
    if transform == "rotate":
        return TF.rotate(x, float(value), interpolation=bilinear, fill=fill)
    raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}")


def _check_values(transform, values, height):
    if values is None:
        return default_values(transform, height)
    if isinstance(values, (Real, np.number)) and not isinstance(values, bool):
        values = [values]
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"values must be a sequence of numbers, got {values!r}") from None
    if arr.size == 0:
        raise ValueError("values is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"values must be finite, got {arr.tolist()}")
    if transform == "scale" and (arr <= 0).any():
        raise ValueError(f"scale factors must be > 0, got {arr.tolist()}")
    return arr


def invariance(lens, images, *, transform: str, values=None, layers=None, labels=None, rectify: bool = True,
               batch_size: int = 64, progress=True) -> Invariance:
    """Distances between the features of original and transformed images, and p(true class) (ZF Fig. 5).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: one image or a list of them (PIL, uint8 arrays, float tensors, ``zfwidgets.samples()`` items,
            ``(image, label)`` pairs) or an N x C x H x W float tensor of model input.
        transform: ``"translate"`` (vertical, pixels), ``"scale"`` (factor) or ``"rotate"`` (degrees).
        values: the parameters to sweep; default per transform (see the module docstring).
        layers: layer names to measure; default the lowest conv layer and the last hidden layer (the
            layer before the last fully connected one).
        labels: the true classes (an int or one per image); default the labels samples/pairs carry, else
            each original's predicted class.
        rectify: measure the layers' outputs after a ReLU (ZF's "layer l").
        batch_size: transformed images per forward.
        progress: show a progress bar (``True``/``False`` or a callable ``f(done, total)``).

    Example:
        >>> inv = invariance(lens, zfwidgets.samples()[::8], transform="scale")
        >>> inv.mean_relative()                   # {'conv1': ..., 'fc7': ...}
        {'conv1': 1.021, 'fc7': 0.679}
    """
    check_lens(lens)
    if not isinstance(transform, str):
        raise TypeError(f"transform must be a string, one of {list(TRANSFORMS)}; got {type(transform).__name__}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_flag("progress", progress)
    one_label = isinstance(labels, Integral) and not isinstance(labels, bool)   # the same class for every image
    data = gather(lens, [images] if is_single_image(images) else images, None if one_label else labels)
    x = data.tensor()
    N, H = x.shape[0], x.shape[-2]
    vals = _check_values(transform, values, H)
    names = layer_names(lens, layers if layers is not None else [first_conv_layer(lens), last_hidden_layer(lens)])
    names = list(dict.fromkeys(names))
    fill = fill_tensor(lens, "mean")

    def features(batch):
        logits, acts = lens.run(batch, names)
        out = {}
        for n in names:
            if n not in acts:
                raise ValueError(f"layer {n!r} did not run during the forward; choose another layer")
            f = acts[n].flatten(1).double()
            out[n] = f.clamp(min=0) if rectify else f
        return logits.double().softmax(1), out

    probs0, feats0 = zip(*(features(x[i:i + batch_size]) for i in range(0, N, batch_size)))
    probs0 = torch.cat(probs0)
    feats0 = {n: torch.cat([f[n] for f in feats0]) for n in names}
    K = probs0.shape[1]

    labels_given = one_label or data.labels is not None
    if one_label:
        lab = [int(labels)] * N
    else:
        lab = data.labels.tolist() if labels_given else [int(p.argmax()) for p in probs0]
    for v in lab:
        if not 0 <= v < K:
            raise ValueError(f"label {v} is out of range: the model has {K} classes (0..{K - 1})")
    lab_t = torch.tensor(lab, dtype=torch.long)

    V = len(vals)
    dist = {n: torch.zeros(N, V, dtype=torch.float64) for n in names}
    prob = torch.zeros(N, V, dtype=torch.float64)
    pred = torch.zeros(N, V, dtype=torch.long)
    jobs = [(j, i) for j in range(V) for i in range(0, N, batch_size)]
    thumbs = []
    show = set(np.unique(np.linspace(0, V - 1, min(V, 5)).round().astype(int)).tolist())
    for j, i in _progress(jobs, total=len(jobs), desc=f"invariance ({transform})", enabled=progress):
        xt = transform_input(x[i:i + batch_size], transform, vals[j], fill)
        if i == 0 and j in show:
            thumbs.append((float(vals[j]), lens.to_display(xt[:1])))
        p, f = features(xt)
        stop = i + xt.shape[0]
        for n in names:
            dist[n][i:stop, j] = (f[n] - feats0[n][i:stop]).norm(dim=1).cpu()
        prob[i:stop, j] = p[torch.arange(xt.shape[0]), lab_t[i:stop].to(p.device)].cpu()
        pred[i:stop, j] = p.argmax(1).cpu()
    norms = {n: feats0[n].norm(dim=1).cpu() for n in names}
    rel = {n: torch.where(norms[n][:, None] > 0, dist[n] / norms[n][:, None].clamp(min=1e-300),
                          torch.full_like(dist[n], float("nan"))) for n in names}
    return Invariance(transform, vals, names, dist, rel, prob, pred, lab_t,
                      [lens.class_name(v) for v in lab], labels_given, thumbs)
