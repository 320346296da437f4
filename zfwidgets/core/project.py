"""Projections of one activation back to pixel space: deconvnet (ZF §2.1), guided backprop, gradient.

:func:`project` is the one entry point. It uses the lens's recorded forward (so a second projection of
the same image is a backward pass only, started at the chosen layer) and the ReLU rule of ``method``.
That backward runs on the unit's receptive field only, node by node along the model's graph
(:func:`_cropped_backward`, :mod:`zfwidgets.core.backward`: convolutions, poolings, ReLUs, batch norm, adds
and concatenations: ResNets, DenseNets, GoogLeNet, MobileNetV2, the chains); other models backpropagate
through the whole recorded graph.
:func:`deconvnet_steps` is the explicit paper form, on the model's graph (any network torch.fx traces):
unpool with the recorded switches (accumulating where overlapping windows share a switch), rectify, filter
with the transposed weights, keeping the reconstruction after every node on the way down.

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")
    >>> p = zfwidgets.project(lens, zfwidgets.samples()[0].image, "conv5")
    >>> p.channel, p.position, p.pixels.shape
    (27, (4, 3), torch.Size([1, 28, 28]))
    >>> img = p.to_image()        # H x W x 3 uint8, zero at mid grey
    >>> img.shape, img.dtype, img[0, 0]
    ((28, 28, 3), dtype('uint8'), array([128, 128, 128], dtype=uint8))
"""
from __future__ import annotations

import copy
import io
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from . import backward as crop
from .capture import ModelGuard, pool_switches
from .geometry import batchnorm_scale, grow
from .graph import OTHER_ACTIVATION_MODULES, Graph, GraphError, is_relu
from .rules import OTHER_ACTIVATIONS, RULES

__all__ = ["Projection", "project", "deconvnet_steps", "render", "select_activation", "unit_seed",
           "not_active_image"]

METHODS = tuple(RULES)  # ("gradient", "deconvnet", "guided")


def render(pixels: torch.Tensor, mode: str = "signed", scale: float | None = None) -> np.ndarray:
    """A signed projection C x H x W as an H x W x 3 uint8 image.

    ``"signed"``: ``0.5 + x / (2 max|x|)`` (zero is mid grey), per image unless ``scale`` (a shared
    max|x|) is given; ``"abs"``: ``|x|`` summed over channels, scaled to [0, 1] (a heat map in grey).

    Example:
        >>> img = render(torch.tensor([[[-1.0, 0.0, 2.0]]]))
        >>> img[0, :, 0]                  # -1 -> dark, 0 -> mid grey, the maximum -> white
        array([ 64, 128, 255], dtype=uint8)
    """
    x = pixels.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    if mode == "signed":
        m = float(x.abs().max()) if scale is None else float(scale)
        y = 0.5 + x / (2 * m) if m > 0 else torch.full_like(x, 0.5)
    elif mode == "abs":
        a = x.abs().sum(0, keepdim=True)
        m = float(a.max()) if scale is None else float(scale)
        y = a / m if m > 0 else torch.zeros_like(a)
    else:
        raise ValueError(f"mode must be 'signed' or 'abs', got {mode!r}")
    y = y.clamp(0, 1)
    if y.shape[0] == 1:
        y = y.expand(3, -1, -1)
    elif y.shape[0] != 3:
        y = y.mean(0, keepdim=True).expand(3, -1, -1)
    return (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def not_active_image(h: int, w: int) -> np.ndarray:
    """What a panel or figure shows in place of the projection of a unit that is not active (its activation after the
    ReLU is 0, so it projects to nothing): an h x w x 3 light grey tile crossed by its two diagonals.

    >>> t = not_active_image(4, 4); t.shape, t[0, 0].tolist(), t[0, 1].tolist()
    ((4, 4, 3), [120, 120, 120], [225, 225, 225])
    """
    tile = np.full((h, w, 3), 225, np.uint8)
    for y in range(h):
        for x in {round(y * (w - 1) / max(h - 1, 1)), round((h - 1 - y) * (w - 1) / max(h - 1, 1))}:
            tile[y, x] = 120
    return tile


@dataclass
class Projection:
    """One activation projected to input space.

    ``pixels`` is shaped like one model input (C x H x W); ``position`` is ``(y, x)`` in the layer's map
    (``None`` for a fully connected unit or for ``position="map"``); ``activation`` the unit's value (in a
    rectified layer, after its ReLU: see :meth:`zfwidgets.Lens.rectified`; for ``"map"``, the sum of the
    rectified map). The top signal is the activation itself at the unit (ZF §2.1; the rectified map itself
    for ``"map"``; 1 for a layer nothing rectifies, such as the class scores), so ``pixels`` is the
    projection of that activation. ``active`` is False for a unit at or below 0 in a rectified layer: it
    projects to nothing (``pixels`` all zeros) and the panels say "not active on this image".

    Example:
        >>> p = zfwidgets.project(lens, zfwidgets.samples()[36].image, "conv3", 5)
        >>> p.layer, p.channel, p.pixels.shape, p.method
        ('conv3', 5, torch.Size([1, 28, 28]), 'deconvnet')
    """
    pixels: torch.Tensor
    layer: str
    channel: int
    position: tuple | None
    activation: float
    method: str
    active: bool = True

    def to_image(self, mode: str = "signed", scale: float | None = None) -> np.ndarray:
        """H x W x 3 uint8: signed (zero at mid grey) or ``"abs"`` heat map; see :func:`render`."""
        return render(self.pixels, mode, scale)

    def _repr_png_(self):
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(self.to_image()).save(buf, format="PNG")
        return buf.getvalue()


def unit_seed(value: float, rectified: bool) -> float:
    """The top signal of a unit whose activation is ``value``: the activation after the ReLU in a rectified
    layer (0 for a unit that is not active), 1 in a layer nothing rectifies (see :func:`select_activation`).

    >>> unit_seed(2.5, True), unit_seed(-1.0, True), unit_seed(-1.0, False)
    (2.5, 0.0, 1.0)
    """
    return max(float(value), 0.0) if rectified else 1.0


def select_activation(act: torch.Tensor, layer: str, channel=None, position="max", *, rectified: bool = False):
    """Choose the unit to project in ``act`` (1 x C x H x W or 1 x K) and its top signal.

    Returns ``(seed, channel, position, value, active)``: ``seed`` the top signal shaped like ``act``.
    A unit is ZF's (§2.1: the deconvnet projects the activation itself): in a ``rectified`` layer (see
    :meth:`zfwidgets.Lens.rectified`) its ``value`` is read after the ReLU and the seed is that value, so a
    unit at or below 0 is not ``active`` and its seed is all zeros; in any other layer (class scores) the
    seed is 1 and ``value`` the raw output. ``position="map"`` seeds the whole rectified map. ``"max"``
    takes the first maximum in row-major order (ties: the smallest y, then x).

    Example:
        >>> a = torch.tensor([[[[-2.0, 3.0], [3.0, 0.5]]]])
        >>> seed, c, pos, value, active = select_activation(a, "conv1", rectified=True)
        >>> pos, value, active, seed[0, 0].tolist()
        ((0, 1), 3.0, True, [[0.0, 3.0], [0.0, 0.0]])
        >>> select_activation(a, "conv1", position=(0, 0), rectified=True)[3:]
        (0.0, False)
    """
    a = act.detach()
    if a.dim() not in (2, 4) or a.shape[0] != 1:
        raise ValueError(f"layer {layer!r} has output shape {tuple(a.shape)}; projections need a conv layer "
                         "(1 x C x H x W) or a fully connected one (1 x K)")
    n = a.shape[1]
    if channel is not None:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
            raise TypeError(f"channel must be an int or None, got {type(channel).__name__}")
        if not 0 <= int(channel) < n:
            raise ValueError(f"channel {channel} is out of range: layer {layer!r} has {n} channels (0..{n - 1})")
        channel = int(channel)
    seed = torch.zeros_like(a)

    def unit(index, raw):
        """The seed's value at one unit and ``(value, active)``."""
        seed[index] = unit_seed(raw, rectified)
        return (max(raw, 0.0), raw > 0) if rectified else (raw, True)

    if rectified:     # units are chosen in the rectified map (ties, all-zero maps: the first in row-major order)
        a = a.clamp(min=0)

    if a.dim() == 2:
        if position not in ("max", None):
            raise ValueError(f"layer {layer!r} is fully connected: it has no spatial positions; "
                             f"use position='max', got {position!r}")
        c = int(a[0].argmax()) if channel is None else channel
        value, active = unit((0, c), float(a[0, c]))
        return seed, c, None, value, active
    H, W = a.shape[2:]
    if channel is None:
        flat = int(a[0].argmax())
        channel = flat // (H * W)
    amap = a[0, channel]
    if position == "map":
        seed[0, channel] = amap.clamp(min=0)
        total = float(amap.clamp(min=0).sum())
        return seed, channel, None, total, total > 0
    if position == "max" or position is None:
        flat = int(amap.argmax())
        y, x = divmod(flat, W)
    else:
        if not (isinstance(position, (tuple, list)) and len(position) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in position)):
            raise TypeError(f"position must be 'max', 'map' or a (y, x) tuple of ints, got {position!r}")
        y, x = int(position[0]), int(position[1])
        if not (0 <= y < H and 0 <= x < W):
            raise ValueError(f"position {(y, x)} is outside layer {layer!r}'s {H}x{W} feature map")
    value, active = unit((0, channel, y, x), float(amap[y, x]))
    return seed, channel, (y, x), value, active


def _check_method(method):
    if method not in RULES:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def project(lens, image, layer, channel=None, *, position="max", method: str = "deconvnet") -> Projection:
    """Project one activation of ``layer`` back to input space.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        image: PIL image, uint8 array, or preprocessed float tensor (C x H x W or 1 x C x H x W).
        layer: friendly name (``"conv5"``), dotted path (``"features.10"``) or the module.
        channel: feature map (unit for fc layers); ``None`` = the one holding the layer's strongest activation.
        position: ``"max"`` (the channel's strongest activation), ``(y, x)``, or ``"map"`` (the whole map).
        method: ``"deconvnet"`` (ZF), ``"guided"`` (guided backprop) or ``"gradient"`` (saliency).

    Example:
        >>> p = project(lens, img, "conv3", 5, method="guided")
        >>> p.activation, p.position
        (1.680, (3, 1))
    """
    _check_method(method)
    name, path, _ = lens.resolve(layer)
    fwd = lens.forward(image, extra_layers=(layer,))
    act = fwd.activations.get(path)
    if act is None:  # the forward ended before this module ran (not part of the path to the output)
        raise ValueError(f"layer {name!r} did not run during the forward; choose another layer")
    seed, channel, pos, value, active = select_activation(act, name, channel, position,
                                                          rectified=lens.rectified(path))
    if RULES[method].rectifies_signal and (lens.unruled_modules or lens._other_activations):
        others = other_activations_below(lens, path)
        if others:
            kinds = ", ".join(f"{k} {what}" for what, k in sorted(others.items(), key=lambda kv: (-kv[1], kv[0])))
            lens.warn_once(("others", method, tuple(sorted(others.items()))),
                           f"the {method} rule applies to ReLUs only; below {name!r} the model has other "
                           f"activations ({kinds}): their signal is backpropagated as the plain gradient")
    fwd.state.rule = method
    if not act.requires_grad or not active:
        pixels = torch.zeros_like(fwd.input[0])
    elif (pixels := _cropped_backward(lens, fwd, path, seed, method)) is not None:
        pass
    else:
        (grad,) = torch.autograd.grad(act, fwd.input, seed, retain_graph=True, allow_unused=True)
        pixels = torch.zeros_like(fwd.input[0]) if grad is None else grad[0].detach()
    return Projection(pixels, name, channel, pos, value, method, active)


def other_activations_below(lens, path: str) -> dict:
    """``{kind: count}`` of the activations other than ReLU that a projection from ``path`` goes back through:
    modules (``"SiLU"``) and functional calls (``"F.silu"``) on the model's graph between the input and the
    layer (the layer included). Where the model has no graph (neither traced nor a chain) every such module of
    the model, and every such call its forward made, is counted.

    >>> other_activations_below(zfwidgets.Lens.from_torchvision("efficientnet_b0"), "features.1")
    {'SiLU': 3, 'Sigmoid': 1}
    """
    counts: dict = {}

    def add(kind):
        counts[kind] = counts.get(kind, 0) + 1
    try:
        g = Graph.of(lens)
        nodes = g.ancestors(g.node_of(path)) if (g.traced or g.is_chain) else None
    except (GraphError, TypeError, ValueError, RuntimeError):
        nodes = None
    if nodes is None:
        for m in lens.model.modules():
            if isinstance(m, OTHER_ACTIVATION_MODULES):
                add(type(m).__name__)
        for f in lens._other_activations:
            add(f"F.{f}")
        return counts
    for n in nodes:
        if n.module is not None and isinstance(n.module, OTHER_ACTIVATION_MODULES):
            add(type(n.module).__name__)
        elif n.op == "call_function" and n.target in OTHER_ACTIVATIONS:
            add(f"F.{OTHER_ACTIVATIONS[n.target]}")
        elif n.op == "call_method" and n.target in ("sigmoid", "tanh", "sigmoid_", "tanh_"):
            add(f"F.{n.target.rstrip('_')}")
    return counts


# ----- the cropped backward (on the model's graph: zfwidgets.core.backward) ------------------------------
def _cropped_backward(lens, fwd, path, seed, method):
    """The projection of ``seed`` computed on its support only, node by node along the graph; None if not
    applicable (a node below the layer the walk does not know, a forward without the values it reads).

    A unit's signal reaches only its receptive field: at every node on the way down the nonzero signal lies
    in a window that grows at each convolution and pooling (AlexNet conv5: 3x3 of 13x13 at conv5's input,
    163x163 of 224x224 pixels), goes down both branches of an add, is split at a concatenation and united where
    branches meet (:mod:`zfwidgets.core.backward`). Same sums as the full backward (equal to rounding), and no
    parameter gradient computed.
    """
    if seed.dim() != 4:
        return None
    p = crop.plan(lens, tuple(fwd.input.shape[1:]), path)
    if p is None or tuple(seed.shape) != tuple(p.shapes[p.target]):
        return None
    nz = seed[0].abs().sum(0).nonzero()
    if nz.numel() == 0:
        return torch.zeros_like(fwd.input[0])
    y0, x0 = (int(v) for v in nz.min(0).values)
    y1, x1 = (int(v) + 1 for v in nz.max(0).values)
    g = seed[:, :, y0:y1, x0:x1]
    values = crop.values_of_forward(p, fwd, method)
    if values is None:
        return None
    with torch.no_grad():
        sig = crop.walk(p, values, g, [y0], [x0], method)
    pixels = torch.zeros_like(fwd.input[0])
    if sig.g is not None:
        y, x = sig.oy[0], sig.ox[0]
        pixels[:, y:y + sig.h, x:x + sig.w] = sig.g[0]
    return pixels


# ----- the paper form --------------------------------------------------------------------------
def _unpool(signal: torch.Tensor, switches: torch.Tensor, in_shape) -> torch.Tensor:
    """Place each value at its switch; values whose windows share a switch are added (scatter-add)."""
    n, c, h, w = in_shape
    out = torch.zeros(n, c, h * w, dtype=signal.dtype, device=signal.device)
    out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
    return out.view(n, c, h, w)


def _filter(signal: torch.Tensor, conv: nn.Conv2d, in_shape) -> torch.Tensor:
    """Convolve with the transposed filters (flipped in both axes), no bias."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    k = conv.weight.shape[-2:]
    out_pad = []
    for d in range(2):
        natural = grow(signal.shape[2 + d], k[d], conv.stride[d], conv.dilation[d]) - 2 * conv.padding[d]
        out_pad.append(in_shape[2 + d] - natural)
    return F.conv_transpose2d(signal, conv.weight.to(signal.dtype), None, conv.stride, conv.padding,
                              tuple(out_pad), conv.groups, conv.dilation)


_LINEAR_PASS = (nn.modules.dropout._DropoutNd, nn.Identity, nn.LocalResponseNorm, nn.CrossMapLRN2d)


def deconvnet_steps(lens, image, layer, channel=None, *, position="max", dtype=torch.float32):
    """The paper's deconvnet, step by step, on any network torch.fx traces (ZF §2.1, Fig. 1).

    Runs its own forward through the model's graph (:class:`~zfwidgets.core.graph.Graph`), keeping every
    node's output, then goes down from ``layer`` node by node: unpool (scatter-add at the switches), rectify
    (``relu``), filter (transposed convolution, no bias); contrast normalisation and dropout are skipped, a
    fully connected layer is inverted by its transposed weight, batch norm in eval mode by its per-channel
    scale, every other node (average and adaptive pooling, flatten, channel slicing) by its exact adjoint.
    At an add the signal goes down both branches; at a concatenation it is split by channels; where
    branches meet again their signals are summed. The result equals ``project(..., method="deconvnet")``.

    The top signal is the unit's activation (in a rectified layer, after its ReLU; a unit at or below 0
    projects to zeros; see :func:`select_activation`), as in :func:`project`. Max-pool switches are torch's:
    in a window with tied maxima the first in row-major order wins.

    Returns a list of ``(path, reconstruction)`` (tensors detached from autograd): the signal *below* each
    node on the way down (for a node with several inputs one entry per input, ``"path:input"``), the last
    entry being the projection in pixel space (1 x C x H x W). ``dtype=torch.float64`` computes in double
    precision on a copy of the weights.

    Example:
        >>> lens = zfwidgets.load("zfnet-fashion")
        >>> steps = deconvnet_steps(lens, zfwidgets.samples()[0].image, "conv3")
        >>> [p for p, _ in steps][:3]
        ['conv3', 'pool2', 'relu2']
    """
    name, path, module = lens.resolve(layer)
    x = lens.to_input(image).detach().to(dtype)
    graph = Graph.of(lens, tuple(x.shape[1:]))
    if not graph.traced and not graph.is_chain:
        raise ValueError(f"{type(lens.model).__name__} cannot be traced by torch.fx ({graph.error}) and its modules "
                         "do not run as a chain; the paper-form deconvnet needs the model's graph (use "
                         "project(..., method='deconvnet') for any model)")
    try:
        target = graph.node_of(path)
    except ValueError:
        raise ValueError(f"layer {name!r} did not run during the forward; choose another layer") from None
    nodes = graph.ancestors(target)
    if dtype == torch.float32 or not graph.traced:
        gm = graph.gm
    else:   # the graph's targets are module paths of the model: a copy of it serves them in double precision
        gm = copy.deepcopy(lens.model).to(dtype)

    def module_of(node):
        if node.module is None:
            return None
        if graph.traced:
            return gm.get_submodule(node.target)
        return node.module if dtype == torch.float32 else copy.deepcopy(node.module).to(dtype)

    values = _forward_values(graph, gm, module_of, x, target)
    seed, channel, pos, value, active = select_activation(values[target.index].float(), name, channel, position,
                                                          rectified=graph.rectified(target))
    signals = {target.index: seed.to(dtype)}
    fx_index = {n.fx_node: n.index for n in graph.nodes} if graph.traced else {}
    steps = []

    def send(i, g, part=None):
        if part is not None:      # one part of a chunk / split
            d = signals.setdefault(i, {})
            d[part] = g if part not in d else d[part] + g
        else:
            signals[i] = g if i not in signals else signals[i] + g

    for node in reversed(nodes):
        if node.index not in signals or node.op == "placeholder":
            continue
        sig = signals.pop(node.index)
        srcs = [i for i in node.inputs if graph.nodes[i].kind != "meta"]
        m = module_of(node)
        ins = [values[i] for i in srcs]
        if node.target is operator.getitem and isinstance(ins[0], (tuple, list)):
            send(srcs[0], sig, node.fx_node.args[1])
            steps.append((node.name, sig))
            continue
        if is_relu(node):
            below = [sig.clamp(min=0)]
        elif isinstance(m, nn.MaxPool2d) and type(m).forward is nn.MaxPool2d.forward:
            below = [_unpool(sig, pool_switches(m, ins[0]), ins[0].shape)]
        elif isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward \
                and _filter(sig, m, ins[0].shape) is not None:
            below = [_filter(sig, m, ins[0].shape)]
        elif isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
            below = [sig @ m.weight.to(dtype)]
        elif isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
            below = [sig * batchnorm_scale(m).to(dtype).view(1, -1, 1, 1)]
        elif isinstance(m, _LINEAR_PASS):
            below = [sig]
        else:
            below = _node_adjoint(graph, gm, node, m, values, fx_index, sig)
        for k, (i, g) in enumerate(zip(srcs, below)):
            if g is None:
                continue
            send(i, g)
            label = node.name if len(srcs) == 1 else f"{node.name}:{graph.nodes[i].name}"
            steps.append((label, g))
    first = graph.nodes[0]
    pixels = signals.get(first.index)
    if pixels is None:
        pixels = torch.zeros_like(x)
    if not steps or steps[-1][1] is not pixels:
        steps.append(("input", pixels))
    return [(label, g.detach()) for label, g in steps]


def _forward_values(graph, gm, module_of, x, target):
    """Every node's output up to ``target`` (in-place modules on copies, so every value stays as computed)."""
    if graph.traced:
        return graph.run(x, keep="values", gm=gm, stop=target.index)
    values = {0: x}
    with torch.no_grad(), ModelGuard(graph.model):
        h = x
        for node in graph.nodes[1: target.index + 1]:
            m = module_of(node)
            if m is None:     # a flatten the recorded order infers
                h = torch.flatten(h, 1)
            else:
                h = m(h.clone() if getattr(m, "inplace", False) else h)
            values[node.index] = h
    return values


def _node_adjoint(graph, gm, node, m, values, fx_index, sig):
    """The vector-Jacobian product of one node with its recorded inputs: a list, one entry per tensor input."""
    if not graph.traced:   # a recorded chain: one module, one input
        if m is None:      # an inferred flatten
            return [sig.reshape(values[node.inputs[0]].shape)]
        xi = values[node.inputs[0]].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = m(xi.clone())
        (g,) = torch.autograd.grad(out, xi, sig, allow_unused=True)
        return [g]
    n = node.fx_node
    leaves = {}

    def sub(a):
        v = values[fx_index[a]]
        # a parameter or buffer the forward fetches (timm's BatchNormAct2d: F.batch_norm(x, running_mean, ...))
        # is a constant of the adjoint, not a signal path
        if isinstance(v, torch.Tensor) and v.is_floating_point() and a.op != "get_attr":
            if a not in leaves:
                leaves[a] = v.detach().clone().requires_grad_(True)
            return leaves[a].clone()
        return v

    with torch.enable_grad():
        args, kwargs = fx.node.map_arg(n.args, sub), fx.node.map_arg(n.kwargs, sub)
        if n.op == "call_module":
            out = m(*args, **kwargs)
        elif n.op == "call_function":
            out = n.target(*args, **kwargs)
        else:
            out = getattr(args[0], n.target)(*args[1:], **kwargs)
    if isinstance(out, (tuple, list)):
        parts = sig if isinstance(sig, dict) else {0: sig}
        outs = [out[k] for k in parts]
        grads = list(parts.values())
    else:
        outs, grads = [out], [sig]
    if not leaves:
        return [None for _ in node.inputs]
    got = torch.autograd.grad(outs, list(leaves.values()), grads, allow_unused=True)
    by_node = dict(zip(leaves, got))
    srcs = [i for i in node.inputs if graph.nodes[i].kind != "meta"]
    return [by_node.get(graph.nodes[i].fx_node) for i in srcs]
