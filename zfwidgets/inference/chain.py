"""Incremental occlusion inference on chains: recompute only what an occluder can change (Krypton, Nakandala et al. 2019).

An occluder changes only a rectangle of the input. Through each convolution or pooling the changed
rectangle grows by the layer's kernel (its halo) and shrinks by its stride; pointwise layers (ReLU, batch
norm in eval mode, local response normalisation, dropout in eval mode) keep it. For a sequential conv net
(its graph a chain: ``nn.Sequential``, torchvision AlexNet / VGG, the bundled models) the engine keeps every layer's
output for the unoccluded image and, for a batch of occluder boxes, computes per layer only the changed
rectangle: it takes the input patch it needs (the changed rectangle plus the halo, from the cached
activations overlaid with the previous layer's recomputed patch), runs the layer on that patch without
padding (the cached input is pre-padded with the layer's padding value) and carries the result on as a
patch of the cached output. Patches of all boxes in a batch are padded to one common size per layer so
the batch runs as one tensor. Once the changed rectangle covers more than ``threshold`` of a layer's map
(or a layer is not spatially local: flatten, fully connected...), the batch is materialised (cached
output with each box's patch pasted in) and the remaining layers run in full.

The results equal full recomputation up to float rounding (the same arithmetic on differently shaped
tensors). Models whose forward is not a chain of their modules (ResNet, DenseNet...) automatically get
batched full forwards of the occluded images (:meth:`Lens.run`).

Boxes are ``(y0, x0, y1, x1)`` in input pixels, half-open; they are clipped to the image.

Example:
    >>> engine = IncrementalOcclusion(lens, image)
    >>> logits, acts = engine.run(torch.tensor([[0, 0, 32, 32], [8, 0, 40, 32]]), ["conv5"])
    >>> logits.shape, acts["conv5"].shape          # same as lens.run on the two occluded images
    (torch.Size([2, 10]), torch.Size([2, 64, 7, 7]))
    >>> out = engine.evaluate_box((10, 10, 18, 18), ["conv5"])   # the live occluder: one position
    >>> out.probs.argmax(), out.activations["conv5"].shape
    (tensor(9), torch.Size([64, 7, 7]))
    >>> boxes = torch.tensor([[0, 0, 8, 8], [10, 10, 18, 18]])
    >>> engine.mac_fraction(boxes)                 # share of conv multiply-adds recomputed
    {'tight': 0.698, 'batched': 0.808, 'with_fc': 0.813, 'groups': 1}

    The lens's engine for the occlusion function and the panel is :func:`zfwidgets.inference.occlusion_engine`
    (the graph engine, :mod:`zfwidgets.inference.graph`, which also runs chains).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.capture import ModelGuard
from ..core.graph import Trace, kind_of_module, macs, macs_per_position
from ..core.layers import sequential_modules, window_params
from ..analysis._common import fill_tensor
from ..analysis._inputs import as_input

__all__ = ["IncrementalOcclusion", "OccludedOutputs", "occluded_batch", "DEFAULT_THRESHOLD"]

# A layer whose common (batched) changed window covers more than this share of its output map is run in
# full, and so is everything after it. The patch path costs a gather of the input window on top of the
# multiply-adds, which are the same per output position: on AlexNet (32 px grid) 0.5 measured slower than
# 0.7 and 1.0, which were equal.
DEFAULT_THRESHOLD = 0.9

# Boxes whose windows differ in size run as separate groups unless padding them to one size costs fewer
# multiply-adds than this. A group is ~30 small tensor operations (about a millisecond, ~2e7 multiply-adds on
# two cores); on a machine shared with other jobs every parallel operation can also wait for a descheduled
# thread, so the penalty is set well above that: on AlexNet (grid of 64 boxes) it leaves ~4 groups instead
# of ~13 for 10% more multiply-adds, and measured faster under load.
DEFAULT_GROUP_OVERHEAD = 4e8
# the fixed cost of one group, in multiply-adds, for the auto mode's estimate
GROUP_COST = 2e7
# with mode="auto", batches whose full forwards cost fewer multiply-adds than this run in full without planning
SMALL_BATCH_MACS = 1e8

# A batch runs incrementally only if the estimated cost (multiply-adds, plus the groups' overhead) is at
# most 1 - this of full forwards; small nets (the bundled 28x28 ones) save too little and run in full.
DEFAULT_MIN_SAVING = 0.2

@dataclass(frozen=True)
class _Geometry:
    """A spatial layer (conv / pool) along both axes, run on a pre-padded input with padding 0."""
    kernel: tuple      # (kh, kw) effective extent is dilation * (k - 1) + 1
    stride: tuple
    dilation: tuple
    pad: tuple         # (top, left): where the unpadded input starts inside the padded one
    padded: tuple      # (Hp, Wp) of the padded input
    in_size: tuple     # (H, W)
    out_size: tuple    # (Ho, Wo)
    value: float       # the padding value (0 for conv / avg pool, -inf for max pool)

    def extent(self, d: int) -> int:
        return self.dilation[d] * (self.kernel[d] - 1) + 1


def _geometry(m: nn.Module, in_shape, out_shape):
    """The :class:`_Geometry` of ``m`` if the engine can run it on patches, else ``None``."""
    if len(in_shape) != 4 or len(out_shape) != 4:
        return None
    H, W = in_shape[2:]
    Ho, Wo = out_shape[2:]
    if kind_of_module(m) != "window":
        return None
    # 'valid' / 'same' padding: torch puts the odd extra pixel of 'same' at the end
    k, s, lo, d, mode = window_params(m)
    if isinstance(m, nn.Conv2d):
        if mode != "zeros":
            return None
        value = 0.0
    elif isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            return None
        value = float("-inf")
    else:
        # a pre-padded zero border reproduces count_include_pad=True; ceil mode's clipped windows do not
        if m.ceil_mode or m.divisor_override is not None or (any(lo) and not m.count_include_pad):
            return None
        value = 0.0
    padded = []
    for i, (n, no) in enumerate(((H, Ho), (W, Wo))):
        need = (no - 1) * s[i] + d[i] * (k[i] - 1) + 1   # the input extent the outputs read
        padded.append(max(n + 2 * lo[i], need, lo[i] + n))
    return _Geometry(k, s, d, lo, tuple(padded), (H, W), (Ho, Wo), value)


def _run_on_patch(m: nn.Module, patch: torch.Tensor) -> torch.Tensor:
    """Layer ``m`` on a pre-padded patch (padding 0): every window inside the patch."""
    if isinstance(m, nn.Conv2d):
        return F.conv2d(patch, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    if isinstance(m, nn.MaxPool2d):
        return F.max_pool2d(patch, m.kernel_size, m.stride if m.stride is not None else m.kernel_size, 0,
                            m.dilation)
    return F.avg_pool2d(patch, m.kernel_size, m.stride if m.stride is not None else m.kernel_size, 0)


# A fully connected layer on a few rows is a matrix-vector product, bound by reading the weights from
# memory. oneDNN's product reads them faster than torch's default path on the reference machine (AlexNet's
# fc6 at batch 1: ~6.4 against ~8.6 ms alone; the live occluder's move ~4 ms faster), from the same dense
# weights (no copy). Used for batches up to this size where torch has it (a private op: checked at import).
_ONEDNN_ROWS = 16
_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None) \
    if torch.backends.mkldnn.is_available() else None


def _linear(m: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """``m(h)``, through oneDNN for a few float32 rows on the CPU (same numbers to float rounding)."""
    if (_ONEDNN_LINEAR is None or h.shape[0] > _ONEDNN_ROWS or h.dim() != 2 or h.device.type != "cpu"
            or h.dtype != torch.float32 or m.weight.dtype != torch.float32
            or type(m).forward is not nn.Linear.forward):
        return m(h)
    try:
        return _ONEDNN_LINEAR(h.contiguous(), m.weight, m.bias, "none", [], "")
    except (RuntimeError, TypeError):   # an op whose signature changed: the plain product
        return m(h)


def _is_pointwise(m: nn.Module, in_shape, out_shape) -> bool:
    if isinstance(m, nn.BatchNorm2d):   # eval mode with running statistics: a per-channel affine map
        return m.track_running_stats and m.running_mean is not None
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return tuple(in_shape) == tuple(out_shape)   # AlexNet's 6x6 -> 6x6 at 224 input: the identity
    return kind_of_module(m) == "pointwise" and tuple(in_shape) == tuple(out_shape)


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _clip_boxes(boxes, H: int, W: int) -> torch.Tensor:
    """B x 4 long tensor of ``(y0, x0, y1, x1)`` clipped to the image; each must keep some area."""
    if isinstance(boxes, (tuple, list)) and len(boxes) == 4 and all(not isinstance(v, (tuple, list))
                                                                    for v in boxes):
        boxes = [boxes]
    b = torch.as_tensor(boxes)
    if b.dim() == 1 and b.numel() == 4:
        b = b.view(1, 4)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be B x 4 (y0, x0, y1, x1), got shape {tuple(b.shape)}")
    if torch.is_floating_point(b) or b.dtype == torch.bool:
        raise TypeError(f"boxes must hold integer pixel coordinates, got dtype {b.dtype}")
    b = b.to(torch.long).cpu()
    out = torch.stack([b[:, 0].clamp(0, H), b[:, 1].clamp(0, W), b[:, 2].clamp(0, H), b[:, 3].clamp(0, W)], 1)
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    if bool(empty.any()):
        i = int(empty.nonzero()[0])
        raise ValueError(f"box {tuple(b[i].tolist())} is empty or lies outside the {H}x{W} image "
                         "(boxes are half-open (y0, x0, y1, x1))")
    return out


def _grow(g: _Geometry, reg: torch.Tensor) -> torch.Tensor:
    """The region (B x 4, output coordinates) of a spatial layer's outputs that read the changed input region
    ``reg`` (B x 4, input coordinates); never empty (an unchanged box recomputes one position)."""
    lo, hi = [], []
    for d, (a_col, b_col) in enumerate(((0, 2), (1, 3))):
        n_out = g.out_size[d]
        a = _ceil_div(reg[:, a_col] + g.pad[d] - (g.extent(d) - 1), g.stride[d]).clamp(0, n_out - 1)
        e = (torch.div(reg[:, b_col] - 1 + g.pad[d], g.stride[d], rounding_mode="floor") + 1).clamp(max=n_out)
        lo.append(a)
        hi.append(torch.maximum(e, a + 1))
    return torch.stack([lo[0], lo[1], hi[0], hi[1]], 1)


def _corners(reg: torch.Tensor, size: tuple, bounds: tuple) -> torch.Tensor:
    """Top-left corners (B x 2) of windows of ``size`` covering each region, shifted to lie inside ``bounds``."""
    return torch.stack([torch.minimum(reg[:, 0], torch.tensor(bounds[0] - size[0])),
                        torch.minimum(reg[:, 1], torch.tensor(bounds[1] - size[1]))], 1)


def _box_tuple(box) -> tuple:
    """``(y0, x0, y1, x1)`` of a tuple, a tensor or a :class:`~zfwidgets.analysis.receptive.Box`."""
    if hasattr(box, "as_tuple"):
        return tuple(box.as_tuple())
    return tuple(box.tolist() if hasattr(box, "tolist") else box)


def occluded_batch(x: torch.Tensor, boxes: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x`` (1 x C x H x W) repeated once per box (B x 4, clipped), each copy filled with ``fill`` inside its box."""
    H, W = x.shape[-2:]
    boxes = boxes.to(x.device)
    ys = torch.arange(H, device=x.device).view(1, H, 1)
    xs = torch.arange(W, device=x.device).view(1, 1, W)
    inside = ((ys >= boxes[:, 0, None, None]) & (ys < boxes[:, 2, None, None])
              & (xs >= boxes[:, 1, None, None]) & (xs < boxes[:, 3, None, None]))
    return torch.where(inside[:, None], fill.to(x.dtype).to(x.device).view(1, -1, 1, 1), x)


def _windows(base_p: torch.Tensor, off: torch.Tensor, size: tuple) -> torch.Tensor:
    """B windows of ``size`` from one map ``base_p`` (1 x C x Hp x Wp) at top-left corners ``off`` (B x 2):
    a contiguous B x C x P x Q tensor."""
    P, Q = size
    return torch.stack([base_p[0, :, r:r + P, c:c + Q] for r, c in off.tolist()])


def _overlay(g: torch.Tensor, off: list, patch: torch.Tensor, poff: list) -> torch.Tensor:
    """Write ``patch`` (B x C x h x w, box b's at corner ``poff[b]``) over the windows ``g`` (B x C x P x Q, at
    ``off[b]``), in place, where they overlap. Corners are ``(row, col)`` in one coordinate frame."""
    P, Q = g.shape[2:]
    h, w = patch.shape[2:]
    for b, ((r, c), (pr, pc)) in enumerate(zip(off, poff)):
        r0, r1, c0, c1 = max(r, pr), min(r + P, pr + h), max(c, pc), min(c + Q, pc + w)
        if r1 > r0 and c1 > c0:
            g[b, :, r0 - r:r1 - r, c0 - c:c1 - c] = patch[b, :, r0 - pr:r1 - pr, c0 - pc:c1 - pc]
    return g


def _paste(base: torch.Tensor, patch: torch.Tensor, off: list) -> torch.Tensor:
    """A B x C x H x W copy of ``base`` (1 x C x H x W) with box b's ``patch`` written at corner ``off[b]``."""
    B = patch.shape[0]
    out = base.expand(B, *base.shape[1:]).clone()
    h, w = patch.shape[2:]
    for b, (r, c) in enumerate(off):
        out[b, :, r:r + h, c:c + w] = patch[b]
    return out


@dataclass
class OccludedOutputs:
    """What a batch of occluders does to the model: ``logits`` and ``probs`` (B x K; K for one box),
    ``activations`` ({layer name: the layer's output per box}, as :meth:`Lens.run` returns them), ``boxes``
    (the clipped boxes, B x 4; 4 for one box)."""
    logits: torch.Tensor
    probs: torch.Tensor
    activations: dict
    boxes: torch.Tensor


@dataclass
class _Group:
    """Boxes run together: ``windows[step index] = (corners B_g x 2, common size (h, w))`` of the step's
    recomputed output window (``-1``: the input patch); steps from ``first_full`` on run in full."""
    members: torch.Tensor
    boxes: torch.Tensor
    windows: dict
    first_full: int


@dataclass
class _Step:
    index: int
    path: str
    module: nn.Module
    kind: str            # "pointwise", "spatial" or "full"
    geometry: _Geometry | None = None


class OccluderQueries:
    """What both engines answer from their ``run(boxes, layers, fill=...)`` (the outputs per box, one box) and
    the key of the model's weights their cached forward was computed with."""

    def _model_key(self):
        """Changes when the weights or buffers change (in place or replaced): the cached forward is stale."""
        m = self.lens.model
        return (sum(t._version for t in m.parameters()) + sum(t._version for t in m.buffers()),
                tuple(p.data_ptr() for p in m.parameters()))

    def evaluate(self, boxes, layers=(), *, fill="mean") -> OccludedOutputs:
        """Logits, probabilities and the ``layers``' activations for every box (see :class:`OccludedOutputs`)."""
        x = self.image
        clipped = _clip_boxes(boxes, *x.shape[-2:])
        logits, acts = self.run(clipped, layers, fill=fill)
        return OccludedOutputs(logits, logits.float().softmax(1), acts, clipped)

    def evaluate_box(self, box, layers=(), *, fill="mean") -> OccludedOutputs:
        """One occluder position (the live occluder): logits and probabilities (K), activations (C x h x w)."""
        out = self.evaluate([_box_tuple(box)], layers, fill=fill)
        return OccludedOutputs(out.logits[0], out.probs[0], {k: v[0] for k, v in out.activations.items()},
                               out.boxes[0])

    def logits_for_box(self, box, *, fill="mean") -> torch.Tensor:
        """The K logits of the image occluded by one box."""
        return self.run([_box_tuple(box)], (), fill=fill)[0][0]


class IncrementalOcclusion(OccluderQueries):
    """Occluded forwards of one image, recomputing only what each occluder changes.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: the unoccluded image (anything :func:`zfwidgets.occlusion` accepts); its forward through
            every layer is computed once here and cached.
        threshold: a layer whose batched changed window covers more than this share of its map, and every
            layer after it, runs in full.
        group_overhead: boxes whose windows differ in size are run as separate groups unless padding them
            to one size costs fewer multiply-adds than this.
        min_saving: with ``mode="auto"``, a batch runs incrementally only if that is estimated to save at
            least this share of the multiply-adds of full forwards.
        mode: ``"auto"`` (incremental where it pays, see ``min_saving``), ``"incremental"`` (always, where
            the model allows) or ``"full"`` (batched full forwards of the occluded images).

    ``incremental`` says whether the model is a chain the engine can patch; if not, every call runs batched
    full forwards of the occluded images through :meth:`Lens.run` (same results, no saving).

    Example:
        >>> engine = IncrementalOcclusion(lens, image)
        >>> out = engine.evaluate([(0, 0, 32, 32), (0, 8, 32, 40)], ["conv5"])
        >>> out.probs.shape, out.activations["conv5"].shape
        (torch.Size([2, 10]), torch.Size([2, 64, 7, 7]))
        >>> engine.logits_for_box((10, 10, 18, 18)).shape    # the live occluder, K logits
        torch.Size([10])
    """

    def __init__(self, lens, image, *, threshold: float = DEFAULT_THRESHOLD,
                 group_overhead: float = DEFAULT_GROUP_OVERHEAD, min_saving: float = DEFAULT_MIN_SAVING,
                 mode: str = "auto"):
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
        if mode not in ("auto", "incremental", "full"):
            raise ValueError(f"mode must be 'auto', 'incremental' or 'full', got {mode!r}")
        self.mode = mode
        self.lens = lens
        self.threshold = float(threshold)
        self.group_overhead = float(group_overhead)
        self.min_saving = float(min_saving)
        self.last_mode = None   # "incremental" or "full": how the last call ran
        self.image = as_input(lens, image).detach()
        self.chain = sequential_modules(lens.model, Trace.of_lens(lens))
        self.incremental = self.chain is not None
        self._key = None
        self._prepare()

    # ----- the cached unoccluded forward ----------------------------------------------------------
    def _prepare(self) -> None:
        """Run the chain on the unoccluded image once: keep every layer's output and the padded inputs."""
        self._key = self._model_key()
        self.base_logits = None
        self._steps, self._base, self._padded, self._shapes, self._full_cost = [], [], {}, [], []
        if not self.incremental:
            m = self.lens.model
            if isinstance(m, nn.Sequential) or [n for n, _ in m.named_children()] == ["features", "avgpool",
                                                                                       "classifier"]:
                # built like a chain, but its graph branches (a skip in the forward)
                self.lens.warn_once(("incremental", "chain"),
                                    f"{type(m).__name__}'s forward is not the chain of its modules; occlusion falls "
                                    "back to full forwards")
            return
        x = self.image
        try:
            ok = self._record_chain(x)
        except (RuntimeError, ValueError, TypeError, IndexError):   # the chain is not how the model runs
            ok = False
        if not ok:
            self.lens.warn_once(("incremental", "chain"),
                                f"{type(self.lens.model).__name__}'s forward is not the chain of its modules; "
                                "occlusion falls back to full forwards")
            self.incremental = False
            self._steps, self._base, self._padded, self._shapes, self._full_cost = [], [], {}, [], []

    def _record_chain(self, x) -> bool:
        """The chain's forward of ``x``, layer by layer, kept; ``False`` if it is not the model's forward."""
        with torch.inference_mode(), ModelGuard(self.lens.model):
            h, full = x, False
            for i, (path, m) in enumerate(self.chain):
                out = m(h.clone() if getattr(m, "inplace", False) else h)  # keep h intact for the cache
                shape_in, shape_out = tuple(h.shape), tuple(out.shape)
                geom = None if full else _geometry(m, shape_in, shape_out)
                if full:
                    kind = "full"
                elif geom is not None:
                    kind = "spatial"
                elif _is_pointwise(m, shape_in, shape_out):
                    kind = "pointwise"
                else:
                    kind, full = "full", True
                if kind == "spatial":
                    (H, W), (Hp, Wp), (t, l) = geom.in_size, geom.padded, geom.pad
                    self._padded[i] = F.pad(h, (l, Wp - W - l, t, Hp - H - t), value=geom.value)
                self._steps.append(_Step(i, path, m, kind, geom))
                self._base.append(out if kind != "full" else None)
                self._shapes.append(shape_out)
                self._full_cost.append(macs(m, shape_in, shape_out))
                h = out
            if not isinstance(h, torch.Tensor) or h.dim() != 2:
                return False
            self.base_logits = h
            # the chain must be the model: check once against the model's own forward
            ref, _ = self.lens.run(x)
        return ref.shape == h.shape and bool(torch.allclose(ref, h, rtol=1e-4,
                                                            atol=1e-5 * float(ref.abs().max()) + 1e-6))

    @property
    def runs_plain_forwards(self) -> bool:
        """True where every call is the model's own batched forward: a model that is not a chain, or one whose
        single forward costs fewer multiply-adds than planning patches does (the bundled 28x28 models)."""
        self._refresh()
        return not self.incremental or sum(self._full_cost) < SMALL_BATCH_MACS

    def _refresh(self) -> None:
        if self._key != self._model_key():   # weights changed since the cache was built
            self.chain = sequential_modules(self.lens.model, Trace.of_lens(self.lens))
            self.incremental = self.chain is not None
            self._prepare()

    def same_image(self, x: torch.Tensor) -> bool:
        return x.shape == self.image.shape and x.device == self.image.device and torch.equal(x, self.image)

    # ----- layers ---------------------------------------------------------------------------------
    def _targets(self, layers) -> dict | None:
        """``{chain index: name}`` for the asked layers, or ``None`` if one is not a step of the chain."""
        want = {}
        for layer in layers:
            name, path, module = self.lens.resolve(layer)
            idx = next((s.index for s in self._steps if s.module is module), None)
            if idx is None:
                return None
            want[idx] = name
        return want

    # ----- the plan: changed regions, groups of boxes, windows per layer --------------------------
    def _regions(self, boxes: torch.Tensor) -> dict:
        """Each box's own changed region (B x 4, in the step's output map) after every spatial step that
        precedes the first step that can only run in full."""
        regions, reg = {}, boxes
        for s in self._steps:
            if s.kind == "full":
                break
            if s.kind == "spatial":
                reg = regions[s.index] = _grow(s.geometry, reg)
        return regions

    def _step_weight(self, s: _Step) -> float:
        """Cost of one output position of a spatial step, in multiply-adds (pooling: one per window element)."""
        c_in = self._shapes[s.index - 1][1] if s.index else self.image.shape[1]
        return macs_per_position(s.module, c_in)

    def _groups(self, boxes: torch.Tensor) -> list:
        """Split the boxes into groups that share window sizes (see :class:`_Group`).

        Boxes whose changed regions have the same size at every layer form one group; groups are then
        merged greedily (padding the windows to the larger size) while a merge costs fewer multiply-adds
        than ``group_overhead`` (the fixed cost of running a group)."""
        if boxes.shape[0] == 1:
            return [self._single_group(boxes)]
        regions = self._regions(boxes)
        order = list(regions)
        B = boxes.shape[0]
        if order:
            sig = torch.cat([torch.stack([r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]], 1) for r in regions.values()], 1)
        else:
            sig = torch.zeros(B, 0, dtype=torch.long)
        uniq, inverse, counts = torch.unique(sig, dim=0, return_inverse=True, return_counts=True)
        members = [[] for _ in range(len(uniq))]
        for b, gi in enumerate(inverse.tolist()):
            members[gi].append(b)
        if len(uniq) > 1 and order:
            w = torch.tensor([self._step_weight(self._steps[i]) for i in order], dtype=torch.float64)
            hs, ws, cnt = uniq[:, 0::2].double(), uniq[:, 1::2].double(), counts.double()
            cost = cnt * (w * hs * ws).sum(1)
            while hs.shape[0] > 1:
                mh = torch.maximum(hs[:, None], hs[None])
                mw = torch.maximum(ws[:, None], ws[None])
                merged = (cnt[:, None] + cnt[None]) * (w * mh * mw).sum(-1)
                extra = merged - cost[:, None] - cost[None]
                extra.fill_diagonal_(float("inf"))
                k = int(extra.argmin())
                i, j = divmod(k, hs.shape[0])
                if float(extra[i, j]) > self.group_overhead:
                    break
                hs[i], ws[i], cnt[i], cost[i] = mh[i, j], mw[i, j], cnt[i] + cnt[j], merged[i, j]
                members[i] = members[i] + members[j]
                keep = [t for t in range(hs.shape[0]) if t != j]
                hs, ws, cnt, cost = hs[keep], ws[keep], cnt[keep], cost[keep]
                del members[j]
        return [self._group(boxes, torch.tensor(sorted(m)), regions) for m in members]

    def _plan(self, first: tuple, window_of) -> tuple:
        """``(windows, first_full)`` of a group: ``first`` is the input window, ``window_of(step)`` gives a
        spatial step's ``(corners, size)``; from the first step that is full, or whose window covers more than
        ``threshold`` of its map, everything runs in full."""
        windows = {-1: first}
        for s in self._steps:
            if s.kind == "full":
                return windows, s.index
            if s.kind != "spatial":
                continue
            corners, size = window_of(s)
            Ho, Wo = s.geometry.out_size
            if size[0] * size[1] > self.threshold * Ho * Wo:
                return windows, s.index
            windows[s.index] = (corners, size)
        return windows, len(self._steps)

    def _group(self, boxes, members, regions) -> "_Group":
        """Common window sizes and per-box window corners of one group, and where it switches to full."""
        H, W = self.image.shape[-2:]
        b = boxes[members]
        size = (int((b[:, 2] - b[:, 0]).max()), int((b[:, 3] - b[:, 1]).max()))

        def window_of(s):
            r = regions[s.index][members]
            size = (int((r[:, 2] - r[:, 0]).max()), int((r[:, 3] - r[:, 1]).max()))
            return _corners(r, size, s.geometry.out_size), size

        windows, first_full = self._plan((_corners(b, size, (H, W)), size), window_of)
        return _Group(members, b, windows, first_full)

    def _single_group(self, boxes) -> "_Group":
        """:meth:`_group` for one box (the live occluder), in plain integers: the same windows, without the
        per-step tensor operations that cost more than the arithmetic (~1 ms a move on AlexNet)."""
        H, W = self.image.shape[-2:]
        y0, x0, y1, x1 = boxes[0].tolist()
        size = (y1 - y0, x1 - x0)
        reg = [y0, x0, y1, x1]

        def window_of(s):   # _grow for one box
            g = s.geometry
            lo, hi = [], []
            for d, (a_i, b_i) in enumerate(((0, 2), (1, 3))):
                n_out = g.out_size[d]
                a = min(max(-((g.extent(d) - 1 - reg[a_i] - g.pad[d]) // g.stride[d]), 0), n_out - 1)
                e = min((reg[b_i] - 1 + g.pad[d]) // g.stride[d] + 1, n_out)
                lo.append(a)
                hi.append(max(e, a + 1))
            reg[:] = [lo[0], lo[1], hi[0], hi[1]]
            size = (hi[0] - lo[0], hi[1] - lo[1])
            Ho, Wo = g.out_size
            return torch.tensor([[min(lo[0], Ho - size[0]), min(lo[1], Wo - size[1])]]), size

        first = (torch.tensor([[min(y0, H - size[0]), min(x0, W - size[1])]]), size)
        windows, first_full = self._plan(first, window_of)
        return _Group(torch.tensor([0]), boxes, windows, first_full)

    def mac_fraction(self, boxes) -> dict:
        """Share of the convolutions' multiply-adds recomputed per box, against full forwards.

        ``tight``: each box's own changed region (the geometric bound); ``batched``: as executed (groups'
        windows padded to a common size, full layers after the threshold); ``with_fc``: as executed,
        counting the fully connected layers (always recomputed) on both sides.
        """
        self._refresh()
        if not self.incremental:
            return {"tight": 1.0, "batched": 1.0, "with_fc": 1.0, "groups": 1}
        boxes = _clip_boxes(boxes, *self.image.shape[-2:])
        B = boxes.shape[0]
        regions = self._regions(boxes)
        groups = self._groups(boxes)
        full = tight = batched = fc = 0.0
        for s in self._steps:
            m = s.module
            if isinstance(m, nn.Linear):
                fc += macs_per_position(m)
            if not isinstance(m, nn.Conv2d):
                continue
            per = macs_per_position(m)
            area = self._shapes[s.index][2] * self._shapes[s.index][3]
            full += per * area
            if s.index in regions:
                r = regions[s.index]
                tight += per * float(((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])).double().mean())
            else:
                tight += per * area
            for grp in groups:
                n = len(grp.members) / B
                if s.index in grp.windows:
                    size = grp.windows[s.index][1]
                    batched += n * per * size[0] * size[1]
                else:
                    batched += n * per * area
        if full == 0:
            return {"tight": 1.0, "batched": 1.0, "with_fc": 1.0, "groups": len(groups)}
        return {"tight": tight / full, "batched": batched / full, "with_fc": (batched + fc) / (full + fc),
                "groups": len(groups)}

    # ----- running occluders ----------------------------------------------------------------------
    def run(self, boxes, layers=(), *, fill="mean", logits: bool = True):
        """The model on the image occluded by each box: ``(logits B x K or None, {layer name: B x ...})``.

        The same contract as :meth:`Lens.run` on the batch of occluded images (activations are the
        layers' outputs; a conv layer's before its ReLU); ``fill`` as in :func:`zfwidgets.occlusion`
        (``"mean"``, a number, or C numbers, model-input space).
        """
        self._refresh()
        fill = fill_tensor(self.lens, fill)
        x = self.image
        boxes = _clip_boxes(boxes, *x.shape[-2:])
        want = self._targets(layers) if self.incremental and self.mode != "full" else None
        if want is not None and self.mode == "auto" and sum(self._full_cost) * boxes.shape[0] < SMALL_BATCH_MACS:
            want = None        # a forward this small is cheaper than planning the patches
        groups = None if want is None else self._groups(boxes)
        if want is None or (self.mode == "auto" and not self._worth_it(groups, boxes.shape[0])):
            self.last_mode = "full"
            if want is None or boxes.shape[0] > _ONEDNN_ROWS:
                return self.lens.run(occluded_batch(x, boxes, fill), layers, logits=logits)
            # a few positions (the live occluder): the chain in full, its fc layers through :func:`_linear`
            groups = [_Group(torch.arange(boxes.shape[0]), boxes, {}, 0)]
        else:
            self.last_mode = "incremental"
        if not logits and not want:
            return None, {}
        with torch.inference_mode(), ModelGuard(self.lens.model):
            return self._run(boxes, groups, fill.to(x.device, x.dtype), want, logits)

    def estimated_cost(self, boxes) -> tuple:
        """``(incremental, full)``: estimated multiply-adds of a batch run incrementally (with the groups'
        overhead) and as full forwards."""
        self._refresh()
        if not self.incremental:
            return float("inf"), 1.0
        boxes = _clip_boxes(boxes, *self.image.shape[-2:])
        return self._costs(self._groups(boxes), boxes.shape[0])

    def _costs(self, groups, B: int) -> tuple:
        full_one = sum(self._full_cost)
        inc = 0.0
        for grp in groups:
            per = sum(self._full_cost[grp.first_full:])
            for i, (_, size) in grp.windows.items():
                if i >= 0:
                    per += self._step_weight(self._steps[i]) * size[0] * size[1]
            inc += len(grp.members) * per + GROUP_COST
        return inc, B * full_one

    def _worth_it(self, groups, B: int) -> bool:
        inc, full = self._costs(groups, B)
        return inc <= (1.0 - self.min_saving) * full

    def _run(self, boxes, groups, fill, want: dict, logits: bool):
        x = self.image
        dev = x.device
        B = boxes.shape[0]
        stop = None if logits else max(want)
        results: dict = {}          # key (chain index or "logits") -> B x ... tensor, filled group by group

        def put(key, members, value):
            if key not in results:
                results[key] = torch.empty((B,) + tuple(value.shape[1:]), dtype=value.dtype, device=dev)
            results[key][members.to(dev)] = value

        pending: dict = {}          # first full step -> [(members, materialised input of that step)]
        for grp in groups:
            if grp.first_full == 0:      # no patches: the occluded images, every step in full
                pending.setdefault(0, []).append((grp.members, occluded_batch(x, grp.boxes, fill)))
                continue
            corner_t, size = grp.windows[-1]
            corner = corner_t.tolist()
            patch = _windows(x, corner_t, size)
            for k, ((r, c), (y0, x0, y1, x1)) in enumerate(zip(corner, grp.boxes.tolist())):
                patch[k, :, y0 - r:y1 - r, x0 - c:x1 - c] = fill.view(-1, 1, 1)
            base, done = x, False
            for s in self._steps[:grp.first_full]:
                if s.kind == "spatial":
                    out_corner, out_size = grp.windows[s.index]
                    g = s.geometry
                    need = tuple((out_size[d] - 1) * g.stride[d] + g.extent(d) for d in range(2))
                    in_corner = out_corner * torch.tensor(g.stride)    # in padded input coordinates
                    win = _windows(self._padded[s.index], in_corner, need)
                    _overlay(win, in_corner.tolist(), patch, [(r + g.pad[0], c + g.pad[1]) for r, c in corner])
                    patch, corner = _run_on_patch(s.module, win), out_corner.tolist()
                elif not isinstance(s.module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                    patch = s.module(patch)   # (an adaptive pool kept as pointwise is the identity)
                base = self._base[s.index]
                if s.index in want:
                    put(s.index, grp.members, _paste(base, patch, corner))
                if s.index == stop:
                    done = True
                    break
            if not done:
                pending.setdefault(grp.first_full, []).append((grp.members, _paste(base, patch, corner)))
        for first, items in pending.items():
            members = torch.cat([m for m, _ in items])
            h = torch.cat([t for _, t in items]) if len(items) > 1 else items[0][1]
            for s in self._steps[first:]:
                h = _linear(s.module, h) if isinstance(s.module, nn.Linear) else s.module(h)
                if s.index in want:
                    put(s.index, members, h)   # a copy: a later in-place module must not rewrite it
                if s.index == stop:
                    break
            if logits:
                put("logits", members, h)
        acts = {name: results[i] for i, name in want.items()}
        return (results["logits"] if logits else None), acts
