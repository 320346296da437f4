"""The cropped backward on the model's graph: a unit's projection computed on its support only, node by node.

A unit's top-down signal reaches only its receptive field. Going down the graph (:class:`~zfwidgets.core.graph.Graph`)
from the unit, the signal of every node lives in a *window* of that node's map that grows at each spatial node
(a transposed convolution of the window, the max-pool switches' scatter-add inside the window's span, the
transposed average), is passed on unchanged or scaled at pointwise nodes (the ReLU rule with the recorded
outputs cropped to the window, batch norm in eval mode as its per-channel scale, ReLU6 / hardtanh as its plain
gradient), goes down both branches of an add, is split by channels at a concatenation, and where branches meet
again (a block's input read by its convolutions and by the shortcut) the windows are united and the signals
summed. The sums are those of the full backward (equal to rounding); no parameter gradient is computed.

Several seeds go down together (the miner's winners): their windows have one size and their own offsets
(positions outside the map carry no signal); where all seeds share one window it is clipped to the map, and
once a window is as large as the map the seeds' windows become whole maps.

:func:`plan` says whether the walk applies (every node below the unit one of those kinds); :func:`walk` runs it
on the values of a recorded forward (:func:`values_of_forward`, the lens's, or :func:`record`, a batch).

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")
    >>> fwd = lens.forward(zfwidgets.samples()[0].image)
    >>> p = plan(lens, fwd.input.shape[1:], lens.resolve("conv3")[1])
    >>> C = p.shapes[p.target][1]
    >>> seed = torch.zeros(1, C, 1, 1); seed[0, 5] = 1.0        # conv3's unit (5, 3, 4)
    >>> sig = walk(p, values_of_forward(p, fwd, "deconvnet"), seed, [3], [4], "deconvnet")
    >>> tuple(sig.g.shape), sig.oy, sig.ox     # its projection: the patch of the image it reads
    ((1, 1, 23, 23), [1], [5])
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import batchnorm_scale, grow_hw, window_params
from .graph import Graph, GraphError, is_relu
from .rules import RULES

__all__ = ["Plan", "plan", "walk", "values_of_forward", "record", "Signal", "window_of"]

_ADD = {operator.add, operator.iadd, torch.add}
_CAT = {torch.cat, torch.concat}
_PASS_METHODS = {"contiguous", "clone"}
_PASS_MODULES = (nn.modules.dropout._DropoutNd, nn.Identity)


@dataclass
class Step:
    """One node of the walk: ``op`` (conv, maxpool, avgpool, relu, clip, scale, pass, add, cat, input)."""
    index: int
    op: str
    inputs: tuple
    map_in: tuple            # H x W of the node's (first) input
    module: nn.Module | None = None
    param: object = None     # clip: (lo, hi); scale: the per-channel factor; cat: channel counts; avgpool: weight


@dataclass
class Plan:
    """The walk from ``target`` down to the input: steps in reverse order, the nodes whose recorded values it
    reads per rule, and the graph."""
    graph: Graph
    target: int
    steps: list
    shapes: dict             # node index -> output shape (N=1)

    def needs(self, method: str) -> list:
        """Node indices whose recorded values the walk reads: max poolings (switches), the rectifiers where the
        rule reads the forward's mask (not the deconvnet rule), hardtanh / ReLU6 always (their plain gradient)."""
        masks = RULES[method].reads_forward_mask
        return [s.index for s in self.steps if s.op in ("maxpool", "clip") or (s.op == "relu" and masks)]


def _exact(m, cls) -> bool:
    return isinstance(m, cls) and type(m).forward is cls.forward


class _BatchNormScale:
    """Batch norm in eval mode as its per-channel factor ``weight / sqrt(running_var + eps)`` (read afresh once
    the module's weight or statistics change)."""

    def __init__(self, bn: nn.BatchNorm2d):
        self.bn, self._key, self._factor = bn, None, None

    def version(self):
        bn = self.bn
        return (bn.running_var._version, bn.running_var.data_ptr(),
                None if bn.weight is None else (bn.weight._version, bn.weight.data_ptr()))

    def factor(self) -> torch.Tensor:
        key = self.version()
        if key != self._key:
            self._factor, self._key = batchnorm_scale(self.bn), key
        return self._factor


def _step(graph: Graph, node) -> Step | str:
    """The step of one node, or why the walk does not apply (a string)."""
    ins = tuple(i for i in node.inputs if graph.nodes[i].kind != "meta")
    shape = node.out_shape
    if node.op == "placeholder":
        return Step(node.index, "input", (), tuple(shape[2:]))
    if not isinstance(shape, tuple) or len(shape) != 4 or node.axes != (2, 3):
        return f"{node.name} has output {shape}, not N x C x H x W"
    in_shapes = [graph.nodes[i].out_shape for i in ins]
    if not ins or any(not isinstance(s, tuple) or len(s) != 4 for s in in_shapes):
        return f"{node.name} reads inputs {in_shapes}, not N x C x H x W maps"
    hw = tuple(in_shapes[0][2:])
    m = node.module
    fxn = node.fx_node
    if node.op == "call_module":
        if len(ins) != 1:
            return f"{node.name} is a module called with {len(ins)} tensors"
        if _exact(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            return Step(node.index, "conv", ins, hw, m)
        if _exact(m, nn.MaxPool2d) and not m.return_indices:
            return Step(node.index, "maxpool", ins, hw, m)
        if _exact(m, nn.AvgPool2d) and m.divisor_override is None and window_params(m)[2] == (0, 0):
            k, s, _, _, _ = window_params(m)
            full = tuple((hw[a] - k[a]) // s[a] + 1 for a in range(2))
            if full == tuple(shape[2:]):   # every window inside the map: one divisor
                w = torch.full((shape[1], 1, *k), 1.0 / (k[0] * k[1]))
                return Step(node.index, "avgpool", ins, hw, m, w)
        if is_relu(node) and _exact(m, nn.ReLU):
            return Step(node.index, "relu", ins, hw, m)
        if _exact(m, nn.Hardtanh) or (isinstance(m, nn.ReLU6) and type(m).forward is nn.Hardtanh.forward):
            return Step(node.index, "clip", ins, hw, m, (float(m.min_val), float(m.max_val)))
        if _exact(m, nn.BatchNorm2d) and m.running_var is not None and m.running_mean is not None:
            return Step(node.index, "scale", ins, hw, m, _BatchNormScale(m))
        if isinstance(m, _PASS_MODULES):
            return Step(node.index, "pass", ins, hw, m)
        return f"{node.name} is a {type(m).__name__}"
    t = node.target
    if is_relu(node) and len(ins) == 1:
        return Step(node.index, "relu", ins, hw)
    if node.op == "call_method" and t in _PASS_METHODS and len(ins) == 1 and len(fxn.args) == 1:
        return Step(node.index, "pass", ins, hw)
    if (t in _ADD or (node.op == "call_method" and t in ("add", "add_"))) and len(fxn.args) == 2 \
            and not fxn.kwargs and len(ins) == 2 and all(tuple(s) == tuple(shape) for s in in_shapes):
        return Step(node.index, "add", ins, hw)
    if t in _CAT:
        dim = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim", 0)
        seq = fxn.args[0]
        if int(dim) % 4 == 1 and isinstance(seq, (list, tuple)) and all(
                getattr(a, "op", None) is not None for a in seq):
            by = {graph.nodes[i].fx_node: i for i in ins}
            order = tuple(by[a] for a in seq)
            return Step(node.index, "cat", order, hw, None, tuple(graph.nodes[i].out_shape[1] for i in order))
    return f"{node.name} ({node.op} {getattr(t, '__name__', t)}) has no cropped backward"


def plan(lens, input_size, path) -> Plan | None:
    """The walk from the output of module ``path`` to the input on inputs of ``input_size`` (C x H x W), or None
    where the graph has a node below it the walk does not know (then the full backward is the way). Cached."""
    graph = Graph.of(lens, tuple(input_size))
    cache = graph.crop_plans
    if path not in cache:
        cache[path] = _build(graph, path)
    result = cache[path]
    return result if isinstance(result, Plan) else None


def why_not(lens, input_size, path) -> str | None:
    """Why :func:`plan` gives None (for messages and tests); None when the walk applies."""
    plan(lens, input_size, path)
    r = Graph.of(lens, tuple(input_size)).crop_plans[path]
    return None if isinstance(r, Plan) else r


def _build(graph: Graph, path) -> Plan | str:
    if not graph.traced and not graph.is_chain:
        return "the model is neither traced nor a chain"
    try:
        target = graph.node_of(path)
    except GraphError as e:
        return str(e)
    steps = []
    nodes = [n for n in graph.ancestors(target) if n.kind != "meta"]
    if not nodes or nodes[0].op != "placeholder":
        return "the layer does not depend on the input"
    for node in reversed(nodes):
        s = _step(graph, node)
        if isinstance(s, str):
            return s
        steps.append(s)
    # a batch norm read only from a convolution is folded into the walk's weights of that convolution
    by_index = {st.index: st for st in steps}
    for st in steps:
        if st.op == "scale":
            conv = by_index.get(st.inputs[0])
            users = [u for u in graph.nodes[st.inputs[0]].users if graph.nodes[u].kind != "meta"]
            if conv is not None and conv.op == "conv" and users == [st.index]:
                conv.param, st.op = st.param, "pass"
    # a max pooling's switches come from its module's one call (the recorded forward keeps one per module)
    pools = [graph.nodes[s.index].target for s in steps if s.op == "maxpool"]
    calls = [n.target for n in graph.nodes if n.op == "call_module" and isinstance(n.module, nn.MaxPool2d)]
    if any(calls.count(p) > 1 for p in pools):
        return "a max pooling module runs more than once"
    return Plan(graph, target.index, steps, {n.index: n.out_shape for n in nodes})


# ----- recorded values -------------------------------------------------------------------------------
def _rectifier_nodes(graph: Graph) -> list:
    """The graph's rectifiers and hardtanh / ReLU6 nodes in order (matched to a forward's recorded trail)."""
    out = []
    for n in graph.nodes:
        if is_relu(n):
            out.append((n.index, "relu"))
        elif n.op == "call_module" and isinstance(n.module, nn.Hardtanh):
            out.append((n.index, "hardtanh"))
        elif n.op == "call_function" and n.target in (F.hardtanh, F.relu6):
            out.append((n.index, "hardtanh"))
    return out


def values_of_forward(p: Plan, fwd, method: str = "guided") -> dict | None:
    """``{node index: value}`` for :meth:`Plan.needs` from a lens's recorded forward: switches by module,
    rectifier outputs from the forward's trail (matched to the graph's rectifiers in order, shapes checked).
    None where the forward does not hold them."""
    need = p.needs(method)
    out = {}
    graph = p.graph
    trail = getattr(fwd.state, "trail", None)
    mapped = None
    for i in need:
        node = graph.nodes[i]
        if isinstance(node.module, nn.MaxPool2d):
            sw = fwd.switches.get(node.target)
            if sw is None:
                return None
            out[i] = sw
            continue
        if mapped is None:
            nodes = _rectifier_nodes(graph)
            if trail is None or len(trail) != len(nodes):
                return None
            mapped = {}
            for (j, kind), (k2, t, version) in zip(nodes, trail):
                if kind != k2 or tuple(t.shape[1:]) != tuple(graph.nodes[j].out_shape[1:]) \
                        or t._version != version:
                    return None
                mapped[j] = t
        out[i] = mapped[i]
    return out


def record(plans, x: torch.Tensor, method: str) -> dict:
    """One forward of the batch ``x`` through the graph, as far as the plans (of one graph) read (under the
    caller's ``inference_mode``): the switches of the max poolings and the masks (``bool``) of the rectifiers
    and hardtanhs that :meth:`Plan.needs` asks for, every other value freed once read. For the deconvnet rule
    the forward stops at the last max pooling."""
    plans = [plans] if isinstance(plans, Plan) else list(plans)
    need = {i for p in plans for i in p.needs(method)}
    if not need:
        return {}
    graph = plans[0].graph
    stop = max(need)
    kinds = {s.index: s for p in plans for s in p.steps}
    out = {}

    def module_fn(node, m, args, kwargs):
        s = kinds.get(node.index)
        if s is not None and s.op == "maxpool" and node.index in need:
            v, out[node.index] = F.max_pool2d(args[0], m.kernel_size, m.stride, m.padding, m.dilation,
                                              ceil_mode=m.ceil_mode, return_indices=True)
            return v
        return m(*args, **kwargs)

    def keep(node, v):
        i = node.index
        if i in need and i not in out:
            s = kinds[i]
            out[i] = (v > 0) if s.op == "relu" else (v > s.param[0]) & (v < s.param[1]) if s.op == "clip" \
                else None
        return None

    graph.run(x, keep=keep, module_fn=module_fn, stop=stop)
    return out


# ----- the walk ---------------------------------------------------------------------------------------
@dataclass
class Signal:
    """Seeds' signals on windows of one map: ``g`` n x C x h x w; seed j's window starts at ``(oy[j], ox[j])``
    (it may reach outside the map, where the signal is zero)."""
    g: torch.Tensor | None
    oy: list
    ox: list
    h: int
    w: int

    @property
    def uniform(self) -> bool:
        return len(set(self.oy)) == 1 and len(set(self.ox)) == 1


def window_of(t: torch.Tensor, rows, y0, x0, h: int, w: int):
    """``t[rows[j], :, y0[j]:y0[j]+h, x0[j]:x0[j]+w]`` for every j (indices clamped to the map: the caller zeroes
    what lies outside), and the in-bounds mask ``n x 1 x h x w``."""
    dev = t.device
    rows, y0, x0 = (torch.as_tensor(v, device=dev) for v in (rows, y0, x0))
    H, W = t.shape[2:]
    iy = y0[:, None] + torch.arange(h, device=dev)[None]
    ix = x0[:, None] + torch.arange(w, device=dev)[None]
    vy, vx = (iy >= 0) & (iy < H), (ix >= 0) & (ix < W)
    c = torch.arange(t.shape[1], device=dev)
    out = t[rows[:, None, None, None], c[None, :, None, None], iy.clamp(0, H - 1)[:, None, :, None],
            ix.clamp(0, W - 1)[:, None, None, :]]
    return out, (vy[:, None, :, None] & vx[:, None, None, :])


def _crop(t: torch.Tensor, rows, sig: Signal):
    """The recorded map ``t`` (N x C x H x W) over each seed's window (n x C x h x w)."""
    if sig.uniform and 0 <= sig.oy[0] and sig.oy[0] + sig.h <= t.shape[2] and 0 <= sig.ox[0] \
            and sig.ox[0] + sig.w <= t.shape[3]:
        y, x = sig.oy[0], sig.ox[0]
        part = t[:, :, y:y + sig.h, x:x + sig.w]
        if len(set(rows)) == 1:
            return part[rows[0]:rows[0] + 1].expand(len(rows), -1, -1, -1)
        return part[torch.as_tensor(rows, device=t.device)]
    return window_of(t, rows, sig.oy, sig.ox, sig.h, sig.w)[0]


def _fit(sig: Signal, H: int, W: int) -> Signal | None:
    """The signal made ready for a map H x W: one window clipped to it; the seeds' own windows zeroed outside
    it, or whole maps once a window is as large as the map."""
    if sig.uniform:
        y0, x0 = max(sig.oy[0], 0), max(sig.ox[0], 0)
        y1, x1 = min(sig.oy[0] + sig.h, H), min(sig.ox[0] + sig.w, W)
        if y1 <= y0 or x1 <= x0:
            return None
        if (y0, x0, y1, x1) == (sig.oy[0], sig.ox[0], sig.oy[0] + sig.h, sig.ox[0] + sig.w):
            return sig
        g = sig.g[:, :, y0 - sig.oy[0]:y1 - sig.oy[0], x0 - sig.ox[0]:x1 - sig.ox[0]]
        n = len(sig.oy)
        return Signal(g, [y0] * n, [x0] * n, y1 - y0, x1 - x0)
    n = len(sig.oy)
    if sig.h * sig.w >= H * W:
        return _reframe(sig, [0] * n, [0] * n, H, W)
    inside = all(0 <= y and y + sig.h <= H for y in sig.oy) and all(0 <= x and x + sig.w <= W for x in sig.ox)
    if inside:
        return sig
    dev = sig.g.device
    oy, ox = torch.tensor(sig.oy, device=dev), torch.tensor(sig.ox, device=dev)
    iy = oy[:, None] + torch.arange(sig.h, device=dev)[None]
    ix = ox[:, None] + torch.arange(sig.w, device=dev)[None]
    keep = ((iy >= 0) & (iy < H))[:, None, :, None] & ((ix >= 0) & (ix < W))[:, None, None, :]
    return Signal(sig.g * keep.to(sig.g.dtype), sig.oy, sig.ox, sig.h, sig.w)


def _reframe(sig: Signal, oy, ox, h, w) -> Signal:
    """The signal on new windows (seed j's at ``(oy[j], ox[j])``, h x w); zero where the old window did not reach."""
    n = len(sig.oy)
    dy = {a - b for a, b in zip(oy, sig.oy)}
    dx = {a - b for a, b in zip(ox, sig.ox)}
    if len(dy) == 1 and len(dx) == 1:   # one shift for all seeds: a pad / crop
        sy, sx = -dy.pop(), -dx.pop()   # where the old window starts inside the new one
        g = F.pad(sig.g, (sx, w - sx - sig.w, sy, h - sy - sig.h))
        return Signal(g, list(oy), list(ox), h, w)
    rel_y = [a - b for a, b in zip(oy, sig.oy)]
    rel_x = [a - b for a, b in zip(ox, sig.ox)]
    g, inside = window_of(sig.g, list(range(n)), rel_y, rel_x, h, w)
    return Signal(g * inside.to(g.dtype), list(oy), list(ox), h, w)


def _unite(a: Signal, b: Signal, H, W) -> Signal:
    """The sum of two signals on one map (the windows' union, or whole maps where the seeds' windows do not
    keep one offset to each other)."""
    n = len(a.oy)
    dy = {p - q for p, q in zip(a.oy, b.oy)}
    dx = {p - q for p, q in zip(a.ox, b.ox)}
    if len(dy) == 1 and len(dx) == 1:
        oy = [min(p, q) for p, q in zip(a.oy, b.oy)]
        ox = [min(p, q) for p, q in zip(a.ox, b.ox)]
        h = max(a.oy[0] + a.h, b.oy[0] + b.h) - oy[0]
        w = max(a.ox[0] + a.w, b.ox[0] + b.w) - ox[0]
    else:
        oy, ox, h, w = [0] * n, [0] * n, H, W
    ra, rb = _reframe(a, oy, ox, h, w), _reframe(b, oy, ox, h, w)
    return Signal(ra.g + rb.g, oy, ox, h, w)


def _weight(st: Step, dtype) -> torch.Tensor:
    """The convolution's weight for the walk, cached while the weights (and the folded batch norm) are unchanged:
    scaled per output channel by the batch norm folded into it."""
    m, bn = st.module, st.param
    key = (m.weight._version, m.weight.data_ptr(), dtype) + (() if bn is None else (bn.version(),))
    cached = getattr(st, "_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    w = m.weight.detach().to(dtype)
    if bn is not None:
        w = w * bn.factor().to(dtype).view(-1, 1, 1, 1)
    st._cache = (key, w)
    return w


def _crop_both(sig: Signal, ay: int, ax: int, ny: int, nx: int, map_in) -> tuple:
    """Rows and columns a transposed convolution may leave out on both sides of its span ``ny x nx`` (at
    ``(ay, ax)``) because they lie outside its input map ``map_in``: where the seeds share one window (on whole
    maps: the convolution's padding)."""
    if not sig.uniform:
        return 0, 0
    H, W = map_in
    return (max(min(-ay, ay + ny - H), 0), max(min(-ax, ax + nx - W), 0))


def _transposed(st: Step, g, k, s, d, ny, nx, crop=(0, 0)):
    """The transposed convolution of the window ``g`` (its full span ``ny x nx``, less ``crop`` rows and columns
    on both sides: a padding, for k > 1).

    The transposed kernel itself: rewriting it as a plain convolution (flipped weight, full padding, or one
    convolution per phase of a stride) was slower on every shape of AlexNet's and ResNet's walks measured on the
    AVX2 machine (``benchmarks/results/session12.md``). A 1 x 1 kernel is a product over channels either way."""
    w = _weight(st, g.dtype)
    gr = st.module.groups
    if k != (1, 1):
        return F.conv_transpose2d(g, w, None, s, crop, 0, gr, d)
    out = F.conv_transpose2d(g, w, None, 1, 0, 0, gr)
    if s == (1, 1):
        return out
    full = g.new_zeros(g.shape[0], out.shape[1], ny, nx)   # a strided 1 x 1: placed on the stride's grid
    full[:, :, ::s[0], ::s[1]] = out
    return full


def walk(p: Plan, values: dict, seed: torch.Tensor, oy, ox, method: str, *, rows=None) -> Signal:
    """The seeds' projections: ``seed`` (n x C x h x w, the signals at the target's output, seed j's window at
    ``(oy[j], ox[j])``) walked down to the input. ``values`` from :func:`values_of_forward` or :func:`record`
    (image ``rows[j]`` of the recorded batch for seed j; default all 0). Returns the input's :class:`Signal`
    (zero windows where no signal reached it: ``g`` is None)."""
    n = len(oy)
    rows = [0] * n if rows is None else list(rows)
    rule = RULES[method]
    shape = p.shapes[p.target]
    first = Signal(seed, list(oy), list(ox), seed.shape[2], seed.shape[3])
    signals = {p.target: _fit(first, shape[2], shape[3])}
    result = None

    def send(i, s, fitted=False):
        H, W = p.shapes[i][2:]
        if not fitted:      # (a pointwise node's input has its map: the signal already fits it)
            s = _fit(s, H, W)
        if s is None:
            return
        signals[i] = s if i not in signals else _unite(signals[i], s, H, W)

    for st in p.steps:
        sig = signals.pop(st.index, None)
        if sig is None:
            continue
        op, g = st.op, sig.g
        if op == "input":
            result = sig
            continue
        if op in ("conv", "maxpool", "avgpool"):
            m = st.module
            k, s, pad, d, _ = window_params(m)
            ny, nx = grow_hw((sig.h, sig.w), k, s, d)
            ay = [y * s[0] - pad[0] for y in sig.oy]
            ax = [x * s[1] - pad[1] for x in sig.ox]
            if op == "conv":
                crop = _crop_both(sig, ay[0], ax[0], ny, nx, st.map_in) if k != (1, 1) else (0, 0)
                g2 = _transposed(st, g, k, s, d, ny, nx, crop)
                ny, nx = ny - 2 * crop[0], nx - 2 * crop[1]
                ay = [y + crop[0] for y in ay]
                ax = [x + crop[1] for x in ax]
            elif op == "avgpool":
                g2 = F.conv_transpose2d(g, st.param.to(g), None, s, 0, 0, g.shape[1], d)
            else:
                Wi = st.map_in[1]
                idx = _crop(values[st.index], rows, sig)
                lay = torch.tensor(ay, device=g.device).view(-1, 1, 1, 1)
                lax = torch.tensor(ax, device=g.device).view(-1, 1, 1, 1)
                local = (idx // Wi - lay) * nx + (idx % Wi - lax)
                local = local.clamp(0, ny * nx - 1)   # (outside the map the signal is zero)
                g2 = g.new_zeros(n, g.shape[1], ny * nx)
                g2.scatter_add_(2, local.flatten(2), g.flatten(2))
                g2 = g2.view(n, g.shape[1], ny, nx)
            send(st.inputs[0], Signal(g2, ay, ax, ny, nx))
            continue
        if op == "relu":
            if not rule.reads_forward_mask:
                g = rule.backward(g, None)
            else:
                v = _crop(values[st.index], rows, sig)
                g = rule.backward(g, (v if v.dtype == torch.bool else v > 0).to(g.dtype))
        elif op == "clip":
            v = _crop(values[st.index], rows, sig)
            lo, hi = st.param
            g = g * (v if v.dtype == torch.bool else (v > lo) & (v < hi)).to(g.dtype)
        elif op == "scale":
            g = g * st.param.factor().to(g.dtype).view(1, -1, 1, 1)
        if op == "cat":
            a = 0
            for i, c in zip(st.inputs, st.param):
                send(i, Signal(g[:, a:a + c], sig.oy, sig.ox, sig.h, sig.w), fitted=True)
                a += c
            continue
        for i in st.inputs:      # pointwise: one input; add: both (the same map)
            send(i, Signal(g, sig.oy, sig.ox, sig.h, sig.w), fitted=True)
    if result is None:
        return Signal(None, [0] * n, [0] * n, 0, 0)
    return result
