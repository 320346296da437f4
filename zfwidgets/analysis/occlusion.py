"""Occlusion sensitivity (ZF §4.2, Fig. 7; METHODS.md §7).

A grey square (the data set's mean pixel) slides over the image; at every occluder position the model is
run on the occluded image and four maps over the positions are recorded:

- (b) ``feature_map``: the total activation (sum of the rectified map) of the feature map of ``layer`` that
  holds the layer's strongest activation in the unoccluded image;
- (c) ``projection``: the deconvnet projection of that map's strongest activation in the unoccluded image;
- (d) ``probability``: the probability of ``target`` (default: the predicted class of the unoccluded image);
- (e) ``top_class``: the most probable class.

**The grid.** Along each axis of length ``L`` the occluder's top-left corners are ``0, stride, 2*stride, ...``
up to the first corner whose occluder reaches the far edge (``corner + size >= L``), and never at or past
``L``: ``n = min(ceil((L - size) / stride) + 1, ceil(L / stride))`` positions. The last occluder of a row
may stick out past the border; it is clipped (``boxes`` holds the clipped ``(y0, x0, y1, x1)``, half-open).

Example:
    >>> occ = occlusion(lens, image, size=8, stride=2)
    >>> occ.probability.shape, occ.channel, occ.target
    (torch.Size([11, 11]), 36, 9)
    >>> occ.plot()                          # Fig. 7's panels
    <Figure size 1500x340 with 7 Axes>
    >>> x = occlude(lens, image, (4, 4, 12, 12))   # one occluded input, 1 x C x H x W
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .._progress import progress as _progress
from ..core.project import Projection, project
from ..core.graph import Graph
from ..core.inputs import as_box, as_input, fill_tensor
from ..inference import check_tau, occluded_batch, occluded_run, occlusion_engine
from ._common import check_flag, check_int, check_lens, default_conv_layer
from .receptive import Box

__all__ = ["OcclusionMaps", "Unoccluded", "occlusion", "occlude", "occluder_grid", "unoccluded"]


@dataclass
class OcclusionMaps:
    """Maps over occluder positions (``ny x nx``), ZF Fig. 7 (b)–(e), and what they were measured against.

    ``ys``/``xs``: the occluders' top-left corners; ``boxes``: ``ny x nx x 4`` clipped ``(y0, x0, y1, x1)``;
    ``feature_map``: total rectified activation of map ``channel`` of ``layer``; ``probability``: p(``target``);
    ``top_class``/``top_probability``: the most probable class and its probability; ``base_*``: the same
    for the unoccluded image; ``projection``: the deconvnet projection of map ``channel``'s strongest
    activation in the unoccluded image (made on first use: a map that is never plotted costs no backward;
    refused if the model's weights changed since the maps were computed); ``image``: the model input;
    ``display``: it as H x W x 3 uint8;
    ``mode``: what made the maps (``"exact"``: every position computed exactly; ``"threshold"``,
    ``"drilldown"``, ``"fast"``: Krypton's approximations, see :func:`occlusion`); ``exact``: ``ny x nx``
    bools, the positions computed exactly (the others were approximated: their changed regions cut by the
    projective-field threshold, or not computed and interpolated, see :func:`occlusion`).
    """
    feature_map: torch.Tensor
    probability: torch.Tensor
    top_class: torch.Tensor
    top_probability: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    boxes: torch.Tensor
    size: tuple
    stride: tuple
    layer: str
    channel: int
    target: int
    base_feature_map: float
    base_probability: float
    base_class: int
    fill: torch.Tensor
    image: torch.Tensor = field(repr=False)
    display: np.ndarray = field(repr=False)
    class_names: list = field(default_factory=list, repr=False)
    mode: str = "exact"
    exact: torch.Tensor = field(default=None, repr=False)
    _project: object = field(default=None, repr=False, compare=False)   # () -> Projection, made on first use
    _projection: object = field(default=None, repr=False, compare=False)

    @property
    def projection(self) -> Projection:
        if self._projection is None:
            if self._project is None:
                raise ValueError("these occlusion maps were made without a projection")
            self._projection = self._project()
        return self._projection

    @property
    def shape(self) -> tuple:
        return tuple(self.probability.shape)

    def box(self, i: int, j: int) -> Box:
        """The clipped occluder box at grid position ``(i, j)``."""
        return Box(*(int(v) for v in self.boxes[i, j]))

    def class_name(self, k: int) -> str:
        return self.class_names[k] if 0 <= k < len(self.class_names) else f"class {k}"

    def plot(self, *, figsize=None):
        """ZF Fig. 7: (a) input, (b) feature-map activity, (c) its projection, (d) p(target), (e) top class."""
        from ..plot.occlusion import plot_occlusion
        return plot_occlusion(self, figsize=figsize)


@dataclass
class Unoccluded:
    """What the occlusion maps are measured against: the unoccluded image's response (see :func:`unoccluded`).

    ``probabilities``: K; ``base_class``: the predicted class; ``target``: the followed class (default the
    prediction) and ``base_probability`` its probability; ``channel``: the map of ``layer`` holding the layer's
    strongest activation, ``base_feature_map`` that map's total rectified activation, ``activation_max`` the
    strongest activation itself (the scale feature maps are shown on); ``shape``: the layer's C x h x w.
    """
    probabilities: torch.Tensor
    base_class: int
    target: int
    base_probability: float
    layer: str
    channel: int
    base_feature_map: float
    activation_max: float
    shape: tuple


def unoccluded(lens, image, *, layer=None, target=None) -> Unoccluded:
    """The unoccluded image's probabilities, predicted class, p(target) and strongest map of ``layer``: the
    reference of :func:`occlusion` (which calls it) and of the occlusion panel.

    Example:
        >>> u = unoccluded(lens, zfwidgets.samples()[0], layer="conv5")
        >>> u.base_class, u.channel, round(u.activation_max, 2)
        (0, 27, 3.02)
    """
    check_lens(lens)
    x = as_input(lens, image).detach()
    name, path, _ = lens.resolve(layer if layer is not None else default_conv_layer(lens))
    # where the model's graph is built now (the occlusion engine reads it next), its shape pass is this image's
    # forward and gives the response: a first call runs one forward of the unoccluded image, not two
    got = Graph.of(lens, tuple(x.shape[1:]), example=x, keep=[path]).take_outputs(x)
    if got is not None and path in got[1]:
        logits, acts = lens.class_scores(got[0]), {name: got[1][path]}
    else:
        logits, acts = lens.run(x, [name])
    act = acts.get(name)
    if act is None or act.dim() != 4:
        shape = None if act is None else tuple(act.shape)
        raise ValueError(f"layer {name!r} must be a convolutional layer with N x C x H x W output, got {shape}")
    probs = logits.float().softmax(1)[0]
    K = probs.shape[0]
    if target is None:
        target = int(probs.argmax())
    else:
        target = check_int("target", target)
        if not 0 <= target < K:
            raise ValueError(f"target {target} is out of range: the model has {K} classes (0..{K - 1})")
    channel = int(act[0].flatten(1).amax(1).argmax())  # the map holding the layer's strongest activation
    return Unoccluded(probs, int(probs.argmax()), target, float(probs[target]), name, channel,
                      float(act[0, channel].clamp(min=0).sum()), float(act[0].max()), tuple(act.shape[1:]))


def _pair(name: str, value) -> tuple:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
        return check_int(name, value[0], minimum=1), check_int(name, value[1], minimum=1)
    v = check_int(name, value, minimum=1)
    return v, v


def occlude(lens, image, box, fill="mean") -> torch.Tensor:
    """The model input of ``image`` with ``box`` filled: a 1 x C x H x W tensor.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: PIL image, uint8 array, float tensor (model input) or a ``zfwidgets.samples()`` item.
        box: a :class:`~zfwidgets.analysis.receptive.Box` or ``(y0, x0, y1, x1)``, half-open, clipped to the image.
        fill: ``"mean"`` (the data set's mean pixel, :attr:`Lens.fill_value`), a number, or one number per
            channel, in model-input (normalised) space.

    Example:
        >>> x = occlude(lens, zfwidgets.samples()[0], (10, 10, 18, 18))
        >>> int(lens.predict(x[0]).argmax()), lens.class_name(0)
        (0, 'T-shirt/top')
    """
    check_lens(lens)
    x = as_input(lens, image)
    value = fill_tensor(lens, fill)
    b = torch.tensor([as_box(box, *x.shape[-2:], clip=True)])
    return occluded_batch(x.detach(), b, value)


def _axis_corners(L: int, size: int, stride: int) -> list:
    n = min(math.ceil(max(L - size, 0) / stride) + 1, math.ceil(L / stride))
    return [m * stride for m in range(n)]


def occluder_grid(height: int, width: int, size, stride) -> tuple:
    """``(ys, xs, boxes)``: the occluders' top-left corners per axis and the clipped boxes ``ny x nx x 4``
    (see the module docstring for the grid).

    Example:
        >>> ys, xs, boxes = occluder_grid(10, 10, 3, 4)
        >>> ys.tolist(), boxes[2, 2].tolist()
        ([0, 4, 8], [8, 8, 10, 10])
    """
    (sh, sw), (th, tw) = _pair("size", size), _pair("stride", stride)
    if sh > height or sw > width:
        raise ValueError(f"the occluder ({sh}x{sw}) is larger than the {height}x{width} image")
    ys, xs = _axis_corners(height, sh, th), _axis_corners(width, sw, tw)
    boxes = torch.tensor([[(y, x, min(y + sh, height), min(x + sw, width)) for x in xs] for y in ys],
                         dtype=torch.long)
    return torch.tensor(ys), torch.tensor(xs), boxes


def _evaluate_boxes(lens, x, boxes, fill, layer, channel, target, total=None, tau=None):
    """One batch of occluder positions: ``(feature-map totals, p(target), top class, top probability, exact)``
    (``exact``: B bools, the boxes computed exactly; all of them unless ``tau``, the projective-field
    threshold, cut a box's changed region).

    ``x``: the unoccluded input (1 x C x H x W); ``boxes``: B x 4 clipped ``(y0, x0, y1, x1)``; ``fill``: C
    values; ``layer``: a resolved layer name; ``channel``/``target``: ints; ``total``: the positions left in
    the map from this batch on (the engine builds its plan only where the job pays for its set-up). Runs on the lens's incremental
    occlusion engine (:func:`zfwidgets.inference.occluded_run`), which decides by itself whether its plan (only
    the part of each node of the model's graph that the occluder changes recomputed, exact) or batched full
    forwards run the batch: counted, then timed (small models, models fx cannot trace: full forwards).
    """
    logits, acts = occluded_run(lens, x, boxes, fill, [layer], total=total, tau=tau)
    exact = occlusion_engine(lens, x).last_exact if tau is not None else torch.ones(boxes.shape[0], dtype=torch.bool)
    amap = acts[layer][:, channel]
    total = amap.clamp(min=0).flatten(1).sum(1)
    probs = logits.float().softmax(1)
    top_p, top = probs.max(1)
    return total.float().cpu(), probs[:, target].cpu(), top.cpu(), top_p.cpu(), exact.cpu()


# occluder positions per batch (batch_size=None): as many as the engine says a batch holds in this many bytes
# at its peak (GraphOcclusion.batch_bytes: the plan's live windows and maps, or a plain forward's), up to 1024.
# Larger batches run the fully connected layers as more efficient matrix products; the memory a batch holds
# is what bounds them. The count is of tensors; the kernels' own copies (oneDNN's reordered inputs, scratch)
# come on top, a few times it on DenseNet: measured peaks are in benchmarks/results/ (occlusion_first_call).
_BATCH_BYTES = 128 * 2 ** 20
# boxes of the grid the batch's bytes are estimated on (spread over it: the border boxes are clipped smaller)
_PROBE = 16


def _auto_batch_size(lens, x, boxes, layer) -> int:
    """Positions per batch: what fits :data:`_BATCH_BYTES` by the engine's count of a batch's peak bytes."""
    flat = boxes.view(-1, 4)
    probe = flat[torch.linspace(0, flat.shape[0] - 1, min(_PROBE, flat.shape[0])).long()]
    per_box = occlusion_engine(lens, x).batch_bytes(probe, [layer]) / probe.shape[0]
    return int(min(1024, max(1, _BATCH_BYTES // max(per_box, 1))))


MODES = ("exact", "threshold", "drilldown", "fast")
# the defaults of drilldown: the coarse map stride in fine strides, and the share of the fine positions refined
DRILLDOWN_FACTOR = 2
DRILLDOWN_REFINE = 0.25
# the default projective-field threshold of threshold and fast (the share of a map's side a changed region keeps)
DEFAULT_TAU = 0.7


def _coarse_indices(n: int, k: int) -> list:
    """Every ``k``-th of ``n`` grid indices, the last one always among them (the coarse map reaches the edge)."""
    idx = list(range(0, n, k))
    return idx if idx[-1] == n - 1 else idx + [n - 1]


def _drilldown_positions(ny: int, nx: int, k: int, drop: torch.Tensor, refine: float) -> torch.Tensor:
    """The fine positions (flat indices) to refine: around the coarse positions in order of their ``drop``
    (cy x cx, largest first), every fine position nearer that coarse one than ``k``, until ``refine`` of all
    positions are covered."""
    cy, cx = _coarse_indices(ny, k), _coarse_indices(nx, k)
    budget = refine * ny * nx
    chosen = torch.zeros(ny, nx, dtype=torch.bool)
    for flat in drop.flatten().argsort(descending=True).tolist():
        if int(chosen.sum()) >= budget:
            break
        y, x = cy[flat // len(cx)], cx[flat % len(cx)]
        chosen[max(y - k + 1, 0):y + k, max(x - k + 1, 0):x + k] = True
    return chosen.flatten().nonzero().flatten()


def _linear_fill(values: torch.Tensor, computed: torch.Tensor) -> torch.Tensor:
    """``values`` (ny x nx) with every position not ``computed`` interpolated linearly from the computed ones
    (on their Delaunay triangulation, scipy's ``griddata``); the nearest computed value outside their hull."""
    from scipy.interpolate import griddata
    pos = computed.nonzero().numpy()
    if pos.shape[0] < 3 or computed.all():
        return _nearest_fill(values, computed)
    gy, gx = np.mgrid[0:values.shape[0], 0:values.shape[1]]
    src = values[computed].double().numpy()
    try:
        filled = griddata(pos, src, (gy, gx), method="linear")
    except (ValueError, RuntimeError):       # a degenerate set (one row or column): no triangulation
        return _nearest_fill(values, computed)
    out = torch.from_numpy(filled).to(values.dtype)
    near = _nearest_fill(values, computed)
    out = torch.where(torch.from_numpy(np.isnan(filled)), near, out)
    return torch.where(computed, values, out)


def _nearest_fill(values: torch.Tensor, computed: torch.Tensor) -> torch.Tensor:
    """``values`` (ny x nx) with every position not ``computed`` given the value of the nearest computed one
    (in grid steps; ties to the first)."""
    pos = computed.nonzero().float()                                  # M x 2
    grid = torch.stack(torch.meshgrid(torch.arange(values.shape[0]), torch.arange(values.shape[1]),
                                      indexing="ij"), -1).view(-1, 2).float()
    nearest = torch.cdist(grid, pos).argmin(1)
    src = pos[nearest].long()
    filled = values[src[:, 0], src[:, 1]].view(values.shape)
    return torch.where(computed, values, filled)


def occlusion(lens, image, *, size, stride, fill="mean", target=None, layer=None, batch_size: int | None = None,
              progress=True, mode: str = "exact", tau: float = DEFAULT_TAU, coarse_stride=None,
              refine: float = DRILLDOWN_REFINE) -> OcclusionMaps:
    """Slide an occluder over ``image`` and map the model's response (ZF Fig. 7).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: PIL image, uint8 array, float tensor (model input) or a ``zfwidgets.samples()`` item.
        size: the occluder's side in pixels (an int, or ``(height, width)``).
        stride: the step between occluder positions (an int, or ``(dy, dx)``).
        fill: ``"mean"`` (the data set's mean pixel), a number or one number per channel (model-input space).
        target: the class whose probability is mapped (an int); default the predicted class.
        layer: the layer whose strongest feature map is followed; default the last conv layer.
        batch_size: occluder positions evaluated together; default: as many as keep what a batch holds at
            its peak (:meth:`~zfwidgets.inference.GraphOcclusion.batch_bytes`) under 128 MB, up to 1024.
        progress: show a progress bar (``True``/``False`` or a callable ``f(done, total)``).
        mode: Krypton's (Nakandala et al. 2019) two approximations, or neither:

            - ``"exact"`` (default): every position computed, equal to full recomputation;
            - ``"threshold"``: projective-field thresholding: every position computed, but a deep layer
              recomputes only the central ``tau`` of each side of an occluder's changed region and keeps the
              unoccluded values elsewhere (:meth:`~zfwidgets.inference.GraphOcclusion.run`: the engine's plan
              runs wherever the model's graph allows, the same on every machine); a model the engine cannot
              follow comes out exact;
            - ``"drilldown"``: adaptive drill-down: a coarse map first, at ``coarse_stride``, then the fine
              ``stride`` only around the coarse positions with the largest drops of p(target), ``refine`` of
              all positions; every computed position is exact; at the others the feature-map and probability
              maps are interpolated linearly from the computed positions, the top class and its probability
              taken from the nearest one;
            - ``"fast"``: both.

            The result's ``mode`` says which made it and ``exact`` which positions were computed exactly.
        tau: the projective-field threshold of threshold and fast, in (0, 1].
        coarse_stride: the coarse stride of drilldown and fast, a multiple of ``stride`` (default twice it).
        refine: the share of the fine positions drilldown and fast refine (0 to 1).

    Example:
        >>> s = zfwidgets.samples()[0]
        >>> occ = occlusion(lens, s.image, size=8, stride=2, target=s.label)
        >>> occ.probability.min(), occ.base_probability
        (tensor(0.860), 0.999)
    """
    check_lens(lens)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    check_flag("progress", progress)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if tau is None:
        raise ValueError("tau must be a number in (0, 1], got None")
    tau = check_tau(tau)
    if not 0.0 <= float(refine) <= 1.0:
        raise ValueError(f"refine must be between 0 and 1, got {refine!r}")
    cut = float(tau) if mode in ("threshold", "fast") else None
    x = as_input(lens, image).detach()
    H, W = x.shape[-2:]
    ys, xs, boxes = occluder_grid(H, W, size, stride)
    value = fill_tensor(lens, fill)
    base = unoccluded(lens, x, layer=layer, target=target)
    name, target, channel, base_total = base.layer, base.target, base.channel, base.base_feature_map
    probs, K = base.probabilities, base.probabilities.shape[0]

    if batch_size is None:
        batch_size = _auto_batch_size(lens, x, boxes, name)

    def evaluate(index, total):
        """The four maps, values at the flat grid positions ``index``, in batches (a job of ``total``)."""
        chunks = [index[i:i + batch_size] for i in range(0, index.shape[0], batch_size)]
        parts = [_evaluate_boxes(lens, x, boxes.view(-1, 4)[b], value, name, channel, target,
                                 total=total - k * batch_size, tau=cut)
                 for k, b in enumerate(_progress(chunks, total=len(chunks), desc="occlusion", enabled=progress))]
        return [torch.cat(t) for t in zip(*parts)]

    ny, nx = boxes.shape[:2]
    if mode in ("exact", "threshold"):
        maps = [m.view(ny, nx) for m in evaluate(torch.arange(ny * nx), ny * nx)]
    else:
        maps = _drilldown(evaluate, ny, nx, _pair("stride", stride), coarse_stride, refine, float(probs[target]))
    total, p, top, top_p, computed = maps
    return OcclusionMaps(total, p, top, top_p, ys, xs, boxes, _pair("size", size), _pair("stride", stride),
                         name, channel, target, base_total, float(probs[target]), int(probs.argmax()),
                         value.cpu(), x.cpu(), lens.to_display(x), [lens.class_name(k) for k in range(K)],
                         mode, computed, _lazy_projection(lens, x, name, channel))


def _lazy_projection(lens, x, layer: str, channel: int):
    """The maps' projection, made on first use from the weights the maps were computed with."""
    key = lens.weights_key

    def make() -> Projection:
        if lens.weights_key != key:
            raise RuntimeError(f"the model's weights changed after these occlusion maps were computed: the "
                               f"projection of {layer} map {channel} would not be the one the maps followed; "
                               "compute the maps again (zf.occlusion)")
        return project(lens, x, layer, channel, method="deconvnet")
    return make


def _drilldown(evaluate, ny: int, nx: int, stride: tuple, coarse_stride, refine: float, base_p: float):
    """The drilldown: the four maps and the positions computed exactly: the coarse grid (every k-th fine
    position, the last row and column included), then the fine positions around its largest drops of
    p(target)."""
    coarse = _pair("coarse_stride", coarse_stride) if coarse_stride is not None else \
        (DRILLDOWN_FACTOR * stride[0], DRILLDOWN_FACTOR * stride[1])
    if coarse[0] != coarse[1] or stride[0] != stride[1] or coarse[0] % stride[0]:
        raise ValueError(f"coarse_stride must be a multiple of a square stride, got {coarse_stride!r} for "
                         f"stride {stride}")
    k = coarse[0] // stride[0]
    cy, cx = _coarse_indices(ny, k), _coarse_indices(nx, k)
    computed = torch.zeros(ny, nx, dtype=torch.bool)
    computed[torch.tensor(cy)[:, None], torch.tensor(cx)[None, :]] = True
    first = computed.flatten().nonzero().flatten()
    got = evaluate(first, first.shape[0] + int(refine * ny * nx))
    maps = [torch.zeros(ny * nx, dtype=t.dtype) for t in got]     # the last: exact (False where not computed)
    for m, v in zip(maps, got):
        m[first] = v
    drop = base_p - maps[1].view(ny, nx)[torch.tensor(cy)[:, None], torch.tensor(cx)[None, :]]
    more = _drilldown_positions(ny, nx, k, drop, refine)
    more = more[~computed.flatten()[more]]
    if more.numel():
        for m, v in zip(maps, evaluate(more, more.shape[0])):
            m[more] = v
        computed.view(-1)[more] = True
    total, p, top, top_p = (m.view(ny, nx) for m in maps[:-1])
    return [_linear_fill(total, computed), _linear_fill(p, computed), _nearest_fill(top, computed),
            _nearest_fill(top_p, computed), maps[-1].view(ny, nx)]

