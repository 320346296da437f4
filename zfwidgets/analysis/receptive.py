"""Receptive fields: which input pixels one activation can see (ZF §4: the patches of Fig. 2).

:func:`receptive_field` gives the box of input pixels on which the activation at ``position`` of ``layer``
depends, for any model, computed rather than hard-coded per architecture:

- **chain** (models that :func:`~zfwidgets.core.layers.sequential_modules` can flatten: ``nn.Sequential``,
  torchvision AlexNet/VGG): walk down the chain from the layer to the input. Per spatial axis, each
  convolution or pooling maps a set of output indices to the input indices its windows read (kernel, stride,
  padding, dilation; reflect/replicate/circular padding map to the pixels they copy; adaptive pooling uses
  its own windows); element-wise modules (activations, batch norm, LRN, dropout) keep the set. The box is
  the bounding box of the final set: exactly the support of the gradient, border effects included.
- **gradient** (any other model): the support of the gradient of the unit with respect to the input,
  computed on a float64 copy of the model in which every convolution and linear layer has positive
  weights (``1 / fan_in``) and zero bias, max pooling sums its window, and activations and normalisation
  layers are the identity. With every weight and signal positive nothing can cancel, so the support is
  the structural one (functional ``F.max_pool2d`` calls inside ``forward`` are not replaced).

Normalisation layers are treated as acting per position (their statistics are not followed), as
receptive-field calculators do. A fully connected layer sees the whole image.

Example:
    >>> box = receptive_field(lens, "conv3", (3, 4))
    >>> box.y0, box.x0, box.y1, box.x1      # half-open, clipped to the input
    (1, 5, 24, 28)
    >>> box.unclipped                       # the same box before clipping (may extend past the borders)
    (1, 5, 24, 28)
    >>> patch = box.crop(lens.to_display(x))
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.capture import ModelGuard, StopForward
from ..core.layers import pair as _pair, sequential_modules, window_params as _window_params
from ._common import check_lens

__all__ = ["Box", "receptive_field"]


@dataclass(frozen=True)
class Box:
    """A half-open pixel box ``[y0, y1) x [x0, x1)`` clipped to the input, and the box before clipping.

    ``unclipped`` is ``(y0, x0, y1, x1)`` of the window the unit would see on an unbounded input (it
    extends past the borders where padding is read); for boxes found from the gradient support it equals
    the clipped box.
    """
    y0: int
    x0: int
    y1: int
    x1: int
    unclipped: tuple = None

    def __post_init__(self):
        if self.unclipped is None:
            object.__setattr__(self, "unclipped", (self.y0, self.x0, self.y1, self.x1))

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def clipped(self) -> bool:
        """Whether the border cut the window."""
        return tuple(self.unclipped) != (self.y0, self.x0, self.y1, self.x1)

    @property
    def slices(self) -> tuple:
        """``(slice(y0, y1), slice(x0, x1))``."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def as_tuple(self) -> tuple:
        return self.y0, self.x0, self.y1, self.x1

    def crop(self, image):
        """The box's pixels: a torch tensor is cut in its last two axes (``... x H x W``), a numpy array in its
        first two (``H x W [x C]``, a displayed image)."""
        ys, xs = self.slices
        if isinstance(image, torch.Tensor):
            return image[..., ys, xs]
        return np.asarray(image)[ys, xs]


# ----- the chain walk --------------------------------------------------------------------------
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
                nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity, nn.BatchNorm2d, nn.LocalResponseNorm,
                nn.CrossMapLRN2d)
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _pad_index(idx: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Input index read at (possibly padded) index ``idx``; -1 where zero padding is read."""
    if mode == "zeros":
        return np.where((idx >= 0) & (idx < n), idx, -1)
    if mode == "replicate":
        return np.clip(idx, 0, n - 1)
    if mode == "circular":
        return np.mod(idx, n)
    if mode == "reflect":
        period = max(2 * (n - 1), 1)
        r = np.mod(idx, period)
        return np.where(r < n, r, period - r)
    raise ValueError(f"unknown padding mode {mode!r}")


def _windowed_reads(n_out: int, n_in: int, k: int, s: int, p: int, d: int, mode: str) -> np.ndarray:
    """Boolean n_out x n_in: which input indices each output index reads along one axis."""
    o = np.arange(n_out)[:, None]
    idx = _pad_index(o * s - p + d * np.arange(k)[None, :], n_in, mode)
    reads = np.zeros((n_out, n_in), dtype=bool)
    rows = np.broadcast_to(o, idx.shape)
    ok = idx >= 0
    reads[rows[ok], idx[ok]] = True
    return reads


def _adaptive_reads(n_out: int, n_in: int) -> np.ndarray:
    reads = np.zeros((n_out, n_in), dtype=bool)
    for o in range(n_out):
        reads[o, (o * n_in) // n_out: -(-((o + 1) * n_in) // n_out)] = True
    return reads


class _ChainFields:
    """Receptive fields of one layer of a sequential chain, per axis, for every position of its map."""

    def __init__(self, steps, shapes, out_shape, input_hw):
        self.out_shape = out_shape
        self.input_hw = input_hw
        self.reads = []       # per axis: out_len x input_len boolean
        self.affine = []      # per axis: list of (kind, params) to map unclipped intervals
        for axis in range(2):
            n_top = out_shape[2 + axis]
            reach = np.eye(n_top, dtype=bool)
            maps = []
            for m, (in_shape, o_shape) in zip(reversed(steps), reversed(shapes)):
                n_in, n_out = in_shape[2 + axis], o_shape[2 + axis]
                if isinstance(m, _WINDOWED):
                    k, s, p, d, mode = _window_params(m)
                    r = _windowed_reads(n_out, n_in, k[axis], s[axis], p[axis], d[axis], mode)
                    maps.append(("window", (k[axis], s[axis], p[axis], d[axis])))
                elif isinstance(m, _ADAPTIVE):
                    r = _adaptive_reads(n_out, n_in)
                    maps.append(("adaptive", (n_out, n_in)))
                else:  # element-wise
                    continue
                reach = (reach.astype(np.int64) @ r.astype(np.int64)) > 0
            self.reads.append(reach)
            self.affine.append(maps)

    def box(self, position) -> Box:
        clipped, unclipped = [], []
        for axis in range(2):
            o = position[axis]
            hit = np.flatnonzero(self.reads[axis][o])
            clipped.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0))
            lo = hi = o
            for kind, prm in self.affine[axis]:
                if kind == "window":
                    k, s, p, d = prm
                    lo, hi = lo * s - p, hi * s - p + d * (k - 1)
                else:
                    n_out, n_in = prm
                    lo, hi = min(max(lo, 0), n_out - 1), min(max(hi, 0), n_out - 1)
                    lo, hi = (lo * n_in) // n_out, -(-((hi + 1) * n_in) // n_out) - 1
            unclipped.append((lo, hi + 1))
        (y0, y1), (x0, x1) = clipped
        (uy0, uy1), (ux0, ux1) = unclipped
        return Box(y0, x0, y1, x1, (uy0, ux0, uy1, ux1))


def _chain_fields(lens, module, input_size):
    """A :class:`_ChainFields` for ``module``, or ``None`` if the model is not a chain this walk understands."""
    chain = sequential_modules(lens.model)
    if chain is None:
        return None
    idx = next((i for i, (_, m) in enumerate(chain) if m is module), None)
    if idx is None:
        return None
    steps = [m for _, m in chain[: idx + 1]]
    x = torch.zeros(1, *input_size, device=lens.device)
    shapes = []
    with torch.no_grad(), ModelGuard(lens.model):
        h = x
        for m in steps:
            before = tuple(h.shape)
            h = m(h)
            shapes.append((before, tuple(h.shape)))
    if h.dim() == 2:
        return _FullImage(tuple(h.shape), input_size[1:])
    for m, (before, after) in zip(steps, shapes):
        if isinstance(m, _WINDOWED + _ADAPTIVE + _ELEMENTWISE) and len(before) == 4 and len(after) == 4:
            continue
        return None  # something the walk does not model (flatten, custom modules...): use the gradient
    return _ChainFields(steps, shapes, tuple(h.shape), input_size[1:])


class _FullImage:
    """A fully connected unit: it sees the whole input."""

    def __init__(self, out_shape, input_hw):
        self.out_shape, self.input_hw = out_shape, input_hw

    def box(self, position) -> Box:
        H, W = self.input_hw
        return Box(0, 0, H, W)


# ----- the gradient support --------------------------------------------------------------------
class _WindowSum(nn.Module):
    """Max pooling replaced by the sum over its window (same output shape): every input of the window
    receives gradient, not only the argmax."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.k, self.s, self.p, self.d, _ = _window_params(pool)
        self.ceil_mode = pool.ceil_mode
        self.pool = pool

    def forward(self, x):
        with torch.no_grad():
            out_hw = self.pool(x.detach()).shape[-2:]
        C = x.shape[1]
        pads = []
        for a in (1, 0):  # F.pad wants the last axis first
            need = (out_hw[a] - 1) * self.s[a] + self.d[a] * (self.k[a] - 1) + 1
            pads += [self.p[a], max(0, need - self.p[a] - x.shape[2 + a])]
        xp = F.pad(x, pads)
        ones = torch.ones(C, 1, *self.k, dtype=x.dtype, device=x.device)
        y = F.conv2d(xp, ones, stride=self.s, dilation=self.d, groups=C)
        return y[..., : out_hw[0], : out_hw[1]]


_IDENTITY_IN_COPY = _ELEMENTWISE + (nn.BatchNorm1d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
                                    nn.InstanceNorm2d, nn.Softmax2d)


def _positive_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` with positive weights, summing pools and identity activations/norms."""
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, _WindowSum(child))
            elif isinstance(child, nn.AdaptiveMaxPool2d):
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
            elif isinstance(child, _IDENTITY_IN_COPY):
                setattr(parent, name, nn.Identity())
    m = m.double().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
                mod.weight.fill_(1.0 / max(1, mod.weight[0].numel()))
                if mod.bias is not None:
                    mod.bias.zero_()
        for p in m.parameters():
            p.requires_grad_(False)
    return m


class _GradientFields:
    """Receptive fields from the gradient support of a positive copy of the model."""

    def __init__(self, lens, path, input_size):
        self.input_hw = tuple(input_size[1:])
        self.model = _positive_copy(lens.model)
        target = dict(self.model.named_modules())[path]
        self.input = torch.ones(1, *input_size, dtype=torch.float64, device=lens.device, requires_grad=True)
        captured = {}

        def hook(module, args, output):
            captured["out"] = output
            raise StopForward

        handle = target.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                self.model(self.input)
        except StopForward:
            pass
        finally:
            handle.remove()
        if "out" not in captured or not isinstance(captured["out"], torch.Tensor):
            raise ValueError(f"layer {path!r} did not produce one tensor in the forward")
        self.output = captured["out"]
        self.out_shape = tuple(self.output.shape)

    def box(self, position) -> Box:
        unit = self.output[0] if position is None else self.output[0, :, position[0], position[1]]
        (g,) = torch.autograd.grad(unit.sum(), self.input, retain_graph=True, allow_unused=True)
        if g is None:
            return Box(0, 0, 0, 0)
        support = (g[0] != 0).any(0)
        rows = torch.nonzero(support.any(1)).flatten()
        cols = torch.nonzero(support.any(0)).flatten()
        if rows.numel() == 0:
            return Box(0, 0, 0, 0)
        return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


# ----- public -----------------------------------------------------------------------------------
class FieldMap:
    """Receptive fields of every position of one layer, computed once (used by the analyses that need
    many boxes of one layer). ``FieldMap(lens, layer).box((y, x))``."""

    def __init__(self, lens, layer, *, method: str = "auto", input_size=None):
        if method not in ("auto", "chain", "gradient"):
            raise ValueError(f"method must be 'auto', 'chain' or 'gradient', got {method!r}")
        check_lens(lens)
        name, path, module = lens.resolve(layer)
        size = input_size if input_size is not None else lens.input_size
        if size is None:
            raise ValueError("the lens has no input_size; pass input_size=(C, H, W) to compute receptive fields")
        size = tuple(int(s) for s in size)
        if len(size) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {size}")
        self.layer, self.method = name, method
        impl = None
        if method in ("auto", "chain"):
            impl = _chain_fields(lens, module, size)
            if impl is None and method == "chain":
                raise ValueError(f"layer {name!r} of {type(lens.model).__name__} is not in a sequential chain of "
                                 "convolutions, poolings and element-wise modules; use method='gradient'")
            self.method = "chain" if impl is not None else "gradient"
        if impl is None:
            impl = _GradientFields(lens, path, size)
        self._impl = impl
        self.out_shape = impl.out_shape
        self._cache: dict = {}

    def box(self, position=None) -> Box:
        position = self._check(position)
        if position not in self._cache:
            self._cache[position] = self._impl.box(position)
        return self._cache[position]

    def _check(self, position):
        if len(self.out_shape) == 2:
            if position is not None:
                raise ValueError(f"layer {self.layer!r} is fully connected (output {self.out_shape[1:]}); it has "
                                 f"no positions: pass position=None, got {position!r}")
            return None
        if len(self.out_shape) != 4:
            raise ValueError(f"layer {self.layer!r} has output shape {self.out_shape}; receptive fields need a "
                             "N x C x H x W or N x K layer")
        H, W = self.out_shape[2:]
        if not (isinstance(position, (tuple, list)) and len(position) == 2
                and all(isinstance(v, Integral) and not isinstance(v, bool) for v in position)):
            raise TypeError(f"position must be a (y, x) pair of ints in layer {self.layer!r}'s {H}x{W} map, "
                            f"got {position!r}")
        y, x = int(position[0]), int(position[1])
        if not (0 <= y < H and 0 <= x < W):
            raise ValueError(f"position {(y, x)} is outside layer {self.layer!r}'s {H}x{W} feature map")
        return y, x


def receptive_field(lens, layer, position=None, *, method: str = "auto", input_size=None) -> Box:
    """The box of input pixels the activation at ``position`` of ``layer`` depends on.

    Args:
        lens: a :class:`zfwidgets.Lens` (its ``input_size`` gives the input; else pass ``input_size``).
        layer: friendly name (``"conv3"``), dotted path or module.
        position: ``(y, x)`` in the layer's feature map; ``None`` for a fully connected layer.
        method: ``"auto"`` (compose the chain where the model is one, else the gradient support),
            ``"chain"`` or ``"gradient"`` (see the module docstring).

    Returns a frozen :class:`Box` (``y0, x0, y1, x1`` half-open, clipped to the input, and ``unclipped``).

    Example:
        >>> receptive_field(lens, "conv1", (0, 0))
        Box(y0=0, x0=0, y1=3, x1=3, unclipped=(-2, -2, 3, 3))
    """
    return FieldMap(lens, layer, method=method, input_size=input_size).box(position)
