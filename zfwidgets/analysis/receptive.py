"""Receptive fields: which input pixels one activation can see (ZF §4: the patches of Fig. 2).

:func:`receptive_field` gives the box of input pixels on which the activation at ``position`` of ``layer``
depends, for any model, computed rather than hard-coded per architecture:

- **geometry** (every model torch.fx traces, :class:`~zfwidgets.core.graph.Graph`; reported as ``"chain"``
  where the graph is a chain): walk down the graph from the layer to the input. Per spatial axis, each
  convolution or pooling maps a set of output indices to the input indices its windows read (kernel, stride,
  padding, dilation; reflect/replicate/circular padding map to the pixels they copy; adaptive pooling uses
  its own windows); pointwise nodes (activations, batch norm, LRN, dropout) keep the set; at an add or a
  concatenation the sets of the branches are united; a broadcast gate (squeeze-and-excitation) reads its
  whole map. The box is the bounding box of the final set: exactly the support of the gradient, border
  effects included.
- **gradient** (any other model, or ``method="gradient"``): the support of the gradient of the unit with respect to
  the input, computed on a float64 copy of the model in which every convolution and linear layer has positive
  weights (``1 / fan_in``) and zero bias, max pooling sums its window, and activations and normalisation
  layers are the identity. With every weight and signal positive nothing can cancel, so the support is
  the structural one. Max pooling called as a function inside ``forward`` (``F.max_pool2d``,
  ``torch.max_pool2d``, ``F.adaptive_max_pool2d``) is summed too, while the copy runs.

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
from torch.overrides import TorchFunctionMode

from ..core.capture import StopForward
from ..core.graph import POINTWISE_MODULES, Graph, GraphError
from ..core.geometry import span, window_params
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


# ----- the geometry of the graph ---------------------------------------------------------------
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


def _first(shape):
    """A node's output shape; the first part's for a chunk / split (its parts share the spatial size)."""
    return shape[0] if isinstance(shape, list) else shape


def _reads(node, src, axis):
    """``(reads n_out x n_in, interval map)`` of ``node`` on its input ``src`` along one spatial axis."""
    n_out = _first(node.out_shape)[node.axes[axis]]
    n_in = _first(src.out_shape)[src.axes[axis]] if src.axes is not None else 1
    if node.kind == "window":
        w = node.window
        k, s, p, d = w.kernel[axis], w.stride[axis], w.padding[axis], w.dilation[axis]
        return _windowed_reads(n_out, n_in, k, s, p, d, w.mode), ("window", (k, s, p, d))
    if node.adaptive:
        return _adaptive_reads(n_out, n_in), ("adaptive", (n_out, n_in))
    if node.kind == "global" or (n_in == 1 and n_out != 1):   # a mean kept as 1 x 1, a broadcast gate
        return np.ones((n_out, n_in), dtype=bool), ("all", (n_in,))
    if n_in != n_out:
        raise GraphError(f"{node.name!r} changes the map's size from {n_in} to {n_out} without a known window")
    return None, ("same", ())


def _map_interval(kind, prm, lo, hi):
    if kind == "window":
        first, count = span(lo, hi - lo + 1, *prm)
        return first, first + count - 1
    if kind == "adaptive":
        n_out, n_in = prm
        lo, hi = np.clip(lo, 0, n_out - 1), np.clip(hi, 0, n_out - 1)
        return (lo * n_in) // n_out, -(-((hi + 1) * n_in) // n_out) - 1
    if kind == "all":
        return np.zeros_like(lo), np.full_like(hi, prm[0] - 1)
    return lo, hi


class _GraphFields:
    """Receptive fields of every position of one node's map, walking the graph down to the input.

    Per spatial axis, each node's reads (a window's kernel, stride, padding and dilation; an adaptive
    pooling's windows; everything for a global node; the same index for pointwise nodes and merges) are
    composed from the node down to the input as boolean matrices, united where branches meet.
    """

    def __init__(self, graph, target, input_hw):
        self.input_hw = tuple(input_hw)
        self.out_shape = tuple(target.out_shape)
        nodes = [n for n in graph.ancestors(target) if n.kind != "meta"]
        graph.check_geometry(nodes, "the receptive field")
        self.reads, self.unclipped = [], []
        for axis in range(2):
            n_top = self.out_shape[target.axes[axis]]
            reach = {target.index: np.eye(n_top, dtype=np.float32)}
            lo = {target.index: np.arange(n_top)}
            hi = {target.index: np.arange(n_top)}
            for node in reversed(nodes):
                if node.index not in reach or node.op == "placeholder":
                    continue
                r, l, h = reach.pop(node.index), lo.pop(node.index), hi.pop(node.index)
                for i in node.inputs:
                    src = graph.nodes[i]
                    if src.kind == "meta":
                        continue
                    if src.axes is None:
                        raise GraphError(f"the receptive field: {node.name!r} reads {src.name!r}, which has no "
                                         "spatial axes")
                    m, (kind, prm) = _reads(node, src, axis)
                    ri = r if m is None else ((r @ m.astype(np.float32)) > 0).astype(np.float32)
                    li, hi_ = _map_interval(kind, prm, l, h)
                    if i in reach:
                        reach[i] = np.maximum(reach[i], ri)
                        lo[i], hi[i] = np.minimum(lo[i], li), np.maximum(hi[i], hi_)
                    else:
                        reach[i], lo[i], hi[i] = ri, li, hi_
            first = graph.nodes[0].index
            if first in reach:
                self.reads.append(reach[first] > 0)
                self.unclipped.append((lo[first], hi[first]))
            else:   # the unit does not depend on the input
                self.reads.append(np.zeros((n_top, self.input_hw[axis]), dtype=bool))
                self.unclipped.append((np.zeros(n_top, dtype=int), np.full(n_top, -1)))

    def box(self, position) -> Box:
        clipped, unclipped = [], []
        for axis in range(2):
            o = position[axis]
            hit = np.flatnonzero(self.reads[axis][o])
            clipped.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0))
            lo, hi = self.unclipped[axis]
            unclipped.append((int(lo[o]), int(hi[o]) + 1))
        (y0, y1), (x0, x1) = clipped
        if y1 == y0 or x1 == x0:
            return Box(0, 0, 0, 0)
        (uy0, uy1), (ux0, ux1) = unclipped
        return Box(y0, x0, y1, x1, (uy0, ux0, uy1, ux1))


def _graph_fields(lens, path, input_size):
    """A :class:`_GraphFields` (or :class:`_FullImage`) for the module at ``path``; raises :class:`GraphError`
    where the graph's geometry is unknown."""
    graph = Graph.of(lens, input_size)
    target = graph.node_of(path)
    if not isinstance(target.out_shape, tuple):
        raise GraphError(f"layer {path!r} does not produce one tensor")
    if target.axes is None:
        if len(target.out_shape) == 2:
            return graph, _FullImage(tuple(target.out_shape), input_size[1:])
        raise GraphError(f"layer {path!r}'s output {target.out_shape} has no spatial axes")
    if target.axes != (2, 3):
        raise GraphError(f"layer {path!r} works on channels-last maps {target.out_shape}")
    return graph, _GraphFields(graph, target, input_size[1:])


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
        self.k, self.s, self.p, self.d, _ = window_params(pool)
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


def _max_pool_args(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return input, nn.MaxPool2d(kernel_size, stride or None, padding, dilation, ceil_mode=ceil_mode), return_indices


class _SummedPools(TorchFunctionMode):
    """While active, functional max pooling sums its windows (adaptive: averages), as :class:`_WindowSum` does
    for the modules: a ``forward`` that calls ``F.max_pool2d`` has the same gradient support as one with
    ``nn.MaxPool2d``. Indices asked for are the real pooling's."""

    _POOLS = {F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices}
    _ADAPTIVE = {F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._POOLS:
            x, pool, indices = _max_pool_args(*args, **kwargs)
            out = _WindowSum(pool)(x)
            if indices or func is F.max_pool2d_with_indices:
                return out, F.max_pool2d_with_indices(x.detach(), pool.kernel_size, pool.stride, pool.padding,
                                                      pool.dilation, pool.ceil_mode)[1]
            return out
        if func in self._ADAPTIVE:
            x, size = args[0], args[1] if len(args) > 1 else kwargs["output_size"]
            out = F.adaptive_avg_pool2d(x, size)
            if func is F.adaptive_max_pool2d_with_indices or (len(args) > 2 and args[2]) \
                    or kwargs.get("return_indices"):
                return out, F.adaptive_max_pool2d_with_indices(x.detach(), size)[1]
            return out
        return func(*args, **kwargs)


_IDENTITY_IN_COPY = POINTWISE_MODULES + (nn.BatchNorm1d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
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
            with torch.enable_grad(), _SummedPools():
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
        if method not in ("auto", "chain", "geometry", "gradient"):
            raise ValueError(f"method must be 'auto', 'geometry', 'chain' or 'gradient', got {method!r}")
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
        if method != "gradient":
            try:
                graph, impl = _graph_fields(lens, path, size)
            except GraphError as e:
                if method != "auto":
                    raise ValueError(f"layer {name!r} of {type(lens.model).__name__}: {e}; use method='gradient'") \
                        from None
                impl = None
            else:
                if method == "chain" and not graph.is_chain:
                    raise ValueError(f"{type(lens.model).__name__} is not a sequential chain of modules; use "
                                     "method='geometry' (its graph) or 'gradient'")
                self.method = "chain" if graph.is_chain else "geometry"
        if impl is None:
            self.method = "gradient"
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
        method: ``"auto"`` (the geometry of the model's graph where it is known, else the gradient
            support), ``"geometry"``, ``"chain"`` (the geometry, for chains only) or ``"gradient"`` (see the
            module docstring).

    Returns a frozen :class:`Box` (``y0, x0, y1, x1`` half-open, clipped to the input, and ``unclipped``).

    Example:
        >>> receptive_field(lens, "conv1", (0, 0))
        Box(y0=0, x0=0, y1=3, x1=3, unclipped=(-2, -2, 3, 3))
    """
    return FieldMap(lens, layer, method=method, input_size=input_size).box(position)
