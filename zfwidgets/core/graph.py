"""One graph of the model: every operation of its forward, in order, with its kind, window and shapes.

:meth:`Graph.of` traces a lens's model once with ``torch.fx`` (torchvision's :class:`NodePathTracer`, which
names every operation by the module path it came from) and records the input and output shape of every node
with one forward of a zero image. Each node has a *kind*, from the one table of module and function kinds in
this file:

- ``window``: a spatial window (convolution, max / average pooling) with its :class:`Window` (kernel,
  stride, padding, dilation per axis);
- ``pointwise``: the same positions in and out (activations, batch norm and dropout in eval mode, channel
  slicing, permutes, a fully connected layer applied to channels-last maps);
- ``merge``: several tensors combined position by position (add, concatenation over channels, a multiply by
  a broadcast gate);
- ``global``: every position read (adaptive pooling, flatten, a fully connected layer, a mean over the map);
- ``input``, ``output``, ``meta`` (sizes and other non-tensor values) and ``other`` (anything the table does
  not know; the features that need geometry refuse it with a clear message).

Each node also knows the axes of its output that hold the image's height and width (``axes``: ``(2, 3)`` for
N x C x H x W, ``(1, 2)`` for the channels-last maps of ConvNeXt's linear layers, ``None`` once the map is
flattened). A model that fx cannot trace is described by the recorded order of its modules instead
(``traced`` is False); where that order is not a chain, :attr:`Graph.is_chain` is False and the features that
need geometry say so.

:func:`macs` is the one multiply-add count (convolutions, linear layers; pooling counts its window's reads).

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")
    >>> g = Graph.of(lens)
    >>> g.is_chain, [n.kind for n in g.nodes][:4]
    (True, ['input', 'window', 'pointwise', 'window'])
    >>> g.node_of("conv1").window.kernel
    (5, 5)
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .capture import ModelGuard
from .geometry import extent, pair, window_params

__all__ = ["Graph", "Trace", "runs_as_chain", "reads_in_line", "Node", "Window", "GraphError", "macs",
           "macs_per_position", "kind_of_module", "is_relu", "in_place", "POINTWISE_MODULES", "ACTIVATIONS"]


class GraphError(ValueError):
    """A feature that needs the model's geometry met a node it cannot describe."""


@dataclass(frozen=True)
class Window:
    """A spatial window per axis ``(height, width)``: kernel, stride, padding before, dilation; padding mode."""
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    mode: str = "zeros"
    ceil_mode: bool = False

    def extent(self, axis: int) -> int:
        return extent(self.kernel[axis], self.dilation[axis])


@dataclass(eq=False)
class Node:
    """One operation of the forward (see the module docstring for ``kind`` and ``axes``).

    ``name`` is the operation's path (``layer1.0.conv1``, ``layer1.0.add``); ``module`` the module a
    ``call_module`` node runs; ``inputs`` the indices of the nodes whose tensors it reads.
    """
    index: int
    name: str
    op: str
    target: object
    module: nn.Module | None
    inputs: tuple
    kind: str = "other"
    window: Window | None = None
    in_shapes: tuple = ()
    out_shape: tuple | None = None
    axes: tuple | None = None
    adaptive: bool = False       # an adaptive pooling (its windows follow from the two sizes)
    channels_last: bool = False  # a linear layer applied along the last axis of a spatial map
    fx_node: object = field(default=None, repr=False)

    @property
    def users(self) -> tuple:
        return self._users

    @property
    def path(self) -> str:
        """The module path of a module call; the operation's path otherwise (``layer1.0.add``)."""
        return self.target if self.op == "call_module" and isinstance(self.target, str) else self.name

    def __repr__(self):
        return f"Node({self.index}, {self.name!r}, {self.kind}, {self.out_shape})"


# ----- the one table of kinds ------------------------------------------------------------------------
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
                nn.Tanhshrink)
ACTIVATIONS = _ACTIVATIONS
# activation modules the ReLU rules do not cover (the table's others, and GLU)
OTHER_ACTIVATION_MODULES = tuple(a for a in _ACTIVATIONS if a is not nn.ReLU) + (nn.GLU,)
_WINDOW_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
# spatially pointwise in eval mode (channel-wise normalisations and LRN read one position's channels)
_POINTWISE_MODULES = _ACTIVATIONS + (nn.BatchNorm2d, nn.modules.dropout._DropoutNd, nn.Identity,
                                     nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Softmax2d)
POINTWISE_MODULES = _POINTWISE_MODULES
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_GLOBAL_MODULES = _ADAPTIVE_MODULES + (nn.Flatten, nn.Linear)

_POINTWISE_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
                    F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid,
                    F.sigmoid, torch.tanh, F.tanh, F.dropout, F.dropout2d, F.batch_norm, F.local_response_norm,
                    torch.clamp, torch.neg, torch.exp, torch.abs, torch.square}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "contiguous",
                      "clone", "float", "double", "to", "type_as", "neg", "exp", "abs", "square"}
_BINARY_FUNCS = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub,
                 operator.truediv, operator.itruediv, torch.add, torch.mul, torch.sub, torch.div}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"}
_CAT_FUNCS = {torch.cat, torch.concat}
_ADAPTIVE_FUNCS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_WINDOW_FUNCS = {F.max_pool2d, F.avg_pool2d, F.conv2d, torch.max_pool2d, torch.conv2d}
_FLATTEN = {torch.flatten, "flatten"}
_RESHAPE = {torch.reshape, "view", "reshape"}
_REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
_PERMUTE = {torch.permute, "permute"}
_TRANSPOSE = {torch.transpose, "transpose"}
_SPLIT = {torch.chunk, torch.split, "chunk", "split"}
_RELU = {F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_"}


def kind_of_module(m: nn.Module) -> str:
    """``window``, ``pointwise``, ``global`` or ``other`` for a module applied to an N x C x H x W map.

    >>> kind_of_module(nn.Conv2d(3, 8, 3)), kind_of_module(nn.BatchNorm2d(8)), kind_of_module(nn.Linear(4, 2))
    ('window', 'pointwise', 'global')
    """
    if isinstance(m, _WINDOW_MODULES):
        return "window"
    if isinstance(m, _POINTWISE_MODULES):
        return "pointwise"
    if isinstance(m, _GLOBAL_MODULES):
        return "global"
    return "other"


def is_relu(node: Node) -> bool:
    """A rectifier: an ``nn.ReLU`` module or ``F.relu`` / ``torch.relu`` / ``Tensor.relu``."""
    if node.op == "call_module":
        return isinstance(node.module, nn.ReLU)
    return node.op in ("call_function", "call_method") and node.target in _RELU


def _passes(node: Node) -> bool:
    """A dropout or identity: in eval mode its output is its input."""
    if node.op == "call_module":
        return isinstance(node.module, (nn.Identity, nn.modules.dropout._DropoutNd))
    return node.op == "call_function" and node.target in (F.dropout, F.dropout2d)


def _keeps_rectified(node: Node) -> bool:
    """A max pooling, or a node that passes its input on: zero stays zero and a positive value positive."""
    if _passes(node):
        return True
    if node.op == "call_module":
        return isinstance(node.module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d))
    return node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d)


def macs_per_position(m: nn.Module, in_channels: int | None = None) -> float:
    """Multiply-adds of one output position of a convolution (a pooling: its window's reads over
    ``in_channels``; a linear layer: one output row)."""
    if isinstance(m, nn.Conv2d):
        kh, kw = pair(m.kernel_size)
        return float(m.out_channels * (m.in_channels // m.groups) * kh * kw)
    if isinstance(m, nn.Linear):
        return float(m.in_features * m.out_features)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and in_channels is not None:
        kh, kw = pair(m.kernel_size)
        return float(in_channels * kh * kw)
    return 0.0


def macs(m: nn.Module, in_shape, out_shape) -> float:
    """The one multiply-add count: one image through ``m`` (convolution, linear layer; pooling: its reads).

    >>> macs(nn.Conv2d(3, 8, 3), (1, 3, 10, 10), (1, 8, 8, 8))     # 8 x 3 x 3 x 3 per position, 64 positions
    13824.0
    """
    if isinstance(m, nn.Conv2d) and len(out_shape) == 4:
        return macs_per_position(m) * out_shape[2] * out_shape[3]
    if isinstance(m, nn.Linear):
        rows = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
        return macs_per_position(m) * rows
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and len(out_shape) == 4:
        return macs_per_position(m, out_shape[1]) * out_shape[2] * out_shape[3]
    return 0.0


# ----- tracing ---------------------------------------------------------------------------------------
def _tracer_class():
    try:
        from torchvision.models.feature_extraction import NodePathTracer
    except ImportError:  # pragma: no cover - torchvision is a dependency
        NodePathTracer = None

    base = NodePathTracer if NodePathTracer is not None else fx.Tracer

    class _Tracer(base):
        """NodePathTracer that also records, for every module called, the node its call returned."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.module_outputs: dict = {}
            if not hasattr(self, "node_to_qualname"):
                self.node_to_qualname = {}

        def call_module(self, m, forward, args, kwargs):
            out = super().call_module(m, forward, args, kwargs)
            if isinstance(out, fx.Proxy):
                self.module_outputs[self.path_of_module(m)] = out.node
            return out

    return _Tracer


def _tensor_shapes(v):
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v):
        return [tuple(t.shape) for t in v]
    return None


class Trace:
    """The fx trace of a model in eval mode: the graph module, each node's path, each module's output node."""

    def __init__(self, model: nn.Module):
        Tracer = _tracer_class()
        tracer = Tracer()
        with ModelGuard(model):
            graph = tracer.trace(model)
            self.gm = fx.GraphModule(tracer.root, graph)
        self.model = model
        self.fx_nodes = list(graph.nodes)
        self.qualname = {n: tracer.node_to_qualname.get(n, n.name) for n in self.fx_nodes}
        self.module_outputs = dict(tracer.module_outputs)

    @staticmethod
    def of(model: nn.Module, cache: dict | None = None):
        """The model's :class:`Trace`, or the error text where fx cannot trace it (cached in ``cache``)."""
        if cache is not None and cache.get("model") is model:
            return cache["trace"]
        try:
            t = Trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure: reported, the recorded order instead
            t = f"{type(e).__name__}: {e}"
        if cache is not None:
            cache.update(model=model, trace=t)
        return t

    @staticmethod
    def of_lens(lens):
        """:meth:`of` the lens's model, cached on the lens."""
        return Trace.of(lens.model, lens.caches.setdefault("trace", {}))

    def path_of(self, n) -> str:
        """The module path a node belongs to (a module call: its module; a function: the module calling it)."""
        if n.op == "call_module":
            return n.target
        q = self.qualname[n]
        return q.rsplit(".", 1)[0] if "." in q else ""

    @property
    def is_chain(self) -> bool:
        """Every operation reads the one before (no branch, no merge): :func:`reads_in_line` on the fx nodes."""
        nodes = [n for n in self.fx_nodes if not _is_meta_fx(n)]
        return reads_in_line(nodes, lambda n: [a for a in n.all_input_nodes if not _is_meta_fx(a)],
                             lambda n: [u for u in n.users if not _is_meta_fx(u)])

    def chain_modules(self) -> list | None:
        """``[(path, module)]`` of a traced forward that is a chain (:attr:`is_chain`) of one-input steps, or None.

        Functional operations become :class:`FunctionStep` modules (``torch.flatten``: ``("<flatten>",
        nn.Flatten(start, end))``, as the chain of torchvision's AlexNet / VGG has always been described). A step
        that reads a size or its input a second time (``x * x``, ``x.view(x.size(0), -1)``) is not one of a chain
        of modules: None.
        """
        if not self.is_chain:
            return None
        steps = []
        for n in self.fx_nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                break
            ins = n.all_input_nodes
            if _is_meta_fx(n) or len(ins) != 1 or n.args[:1] != (ins[0],):
                return None
            rest = n.args[1:]
            found = []
            fx.node.map_arg((rest, n.kwargs), found.append)
            if found:   # the input read a second time (x * x): not a step of one input
                return None
            if n.op == "call_module":
                steps.append((n.target, self.model.get_submodule(n.target)))
            elif n.target is torch.flatten or (n.op == "call_method" and n.target == "flatten"):
                steps.append(("<flatten>", nn.Flatten(*(rest or (0,)), **n.kwargs)))
            else:
                steps.append((self.qualname[n], FunctionStep(n.target, rest, n.kwargs)))
        return steps or None


def _is_meta_fx(n) -> bool:
    return (n.op == "call_method" and n.target in ("size", "dim")) or n.op == "get_attr" or \
        (n.op == "call_function" and n.target is getattr)


def reads_in_line(nodes, inputs, users) -> bool:
    """The one test of "is this forward a chain?": every node but the first of ``nodes`` (the input) reads
    exactly one node and every node is read by at most one (``inputs(n)`` / ``users(n)``: a node's tensor
    inputs and readers, sizes and other meta values left out). :attr:`Graph.is_chain` and
    :attr:`Trace.is_chain` both ask it.

    >>> reads_in_line([0, 1, 2], lambda n: [n - 1] if n else [], lambda n: [n + 1] if n < 2 else [])
    True
    """
    return all((k == 0 or len(inputs(n)) == 1) and len(users(n)) <= 1 for k, n in enumerate(nodes))


class FunctionStep(nn.Module):
    """One functional operation of a chain's forward as a module: ``fn(x, *args, **kwargs)``."""

    def __init__(self, fn, args=(), kwargs=None, name=None):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, tuple(args), dict(kwargs or {})
        self.name = name or (fn if isinstance(fn, str) else getattr(fn, "__name__", "function"))

    def forward(self, x):
        if isinstance(self.fn, str):
            return getattr(x, self.fn)(*self.args, **self.kwargs)
        return self.fn(x, *self.args, **self.kwargs)

    def extra_repr(self):
        return f"{self.name}, args={self.args}"


def runs_as_chain(trace: Trace, path: str) -> bool:
    """Whether module ``path`` (``""``: the model) runs its children one after the other (each reading the one
    before), judged from the trace with each child's operations taken as one."""
    prefix = path + "." if path else ""
    inside = [n for n in trace.fx_nodes if n.op not in ("placeholder", "output") and not _is_meta_fx(n)
              and (trace.qualname[n] + ".").startswith(prefix)]
    if not inside:
        return True
    own = set(inside)

    def group(n):
        if n not in own:
            return "<in>"
        rest = trace.qualname[n][len(prefix):]
        return rest.split(".", 1)[0]

    preds, succs = {}, {}
    for n in inside:
        g = group(n)
        for a in n.all_input_nodes:
            if _is_meta_fx(a):
                continue
            ga = group(a)
            if ga != g:
                preds.setdefault(g, set()).add(ga)
                succs.setdefault(ga, set()).add(g)
    return all(len(v) <= 1 for v in preds.values()) and all(len(v) <= 1 for v in succs.values())


# Inputs of at most this many pixels get their shapes from a real forward (of the caller's image, or of a zero
# image): meta tensors run many operations (batch norm, hardtanh) through Python reference kernels, and on a CPU
# such a pass cost more than the model's forward at these sizes (benchmarks/results/session12.md); past it the
# forward's arithmetic grows.
REAL_SHAPE_PASS = 224 * 224


class Graph:
    """The model's forward as a list of :class:`Node` in execution (topological) order.

    Build it with :meth:`Graph.of` (cached on the lens). ``nodes[0]`` is the input; ``module_nodes[path]``
    is the node whose output a module returns (its last call where a module runs several times).
    """

    def __init__(self, model: nn.Module, input_size: tuple, *, device=None, dtype=None, trace=None, example=None,
                 keep=()):
        self.model = model
        self.input_size = tuple(int(s) for s in input_size)
        self.gm = None
        self.crop_plans: dict = {}    # the cropped backward's walks from each layer (core.backward.plan)
        self._example = None          # (image, its outputs): the shape pass's forward, until taken
        trace = Trace.of(model) if trace is None else trace
        self.traced = isinstance(trace, Trace)
        self.error: str | None = None if self.traced else trace
        if self.traced:
            self._from_trace(trace, example, keep)
        else:
            self._record_order(device, dtype)
        self._finish()

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def of(cls, lens, input_size=None, example=None, keep=()) -> "Graph":
        """The graph of ``lens``'s model for inputs of ``input_size`` (default the lens's; cached on the lens).

        ``example``: an image (1 x ``input_size``) whose forward the caller needs anyway: where the graph is
        built now and its shape pass is a real forward (:data:`REAL_SHAPE_PASS`), that forward is of this
        image, and the model's output and the outputs of the modules at the paths in ``keep`` are kept for the
        caller to :meth:`take_outputs` (occlusion's unoccluded response: one forward serves it and the shapes).

        >>> g = Graph.of(zfwidgets.load("zfnet-fashion"))
        >>> g.traced, g.is_chain
        (True, True)
        """
        size = input_size if input_size is not None else lens.input_size
        if size is None:
            size = (lens.channels, 224, 224)
        size = tuple(int(s) for s in size)
        cache = lens.caches.setdefault("graphs", {})
        key = (size, id(lens.model))
        g = cache.get(key)
        if g is None:
            p = next(lens.model.parameters(), None)
            trace = Trace.of_lens(lens)
            g = cls(lens.model, size, device=None if p is None else p.device, dtype=None if p is None else p.dtype,
                    trace=trace, example=example, keep=keep)
            cache[key] = g
        return g

    def _from_trace(self, trace: Trace, example=None, keep=()):
        self.gm = trace.gm
        qual = trace.qualname
        fx_nodes = trace.fx_nodes
        index = {n: i for i, n in enumerate(fx_nodes)}
        modules = dict(self.model.named_modules())
        self.nodes = []
        for i, n in enumerate(fx_nodes):
            module = modules.get(n.target) if n.op == "call_module" else None
            name = qual.get(n, n.name) if n.op not in ("placeholder", "output") else n.op
            inputs = tuple(index[a] for a in n.all_input_nodes)
            self.nodes.append(Node(i, name, n.op, n.target, module, inputs, fx_node=n))
        self.module_nodes = {p: index[n] for p, n in trace.module_outputs.items()}
        values = self._shapes(example, keep)
        for node in self.nodes:
            node.out_shape = values[node.index]

    def take_outputs(self, x: torch.Tensor):
        """``(the model's output, {path: that module's output})`` for ``x`` where the shape pass was the forward
        of ``x`` (see :meth:`of`), else ``None``; handed over once (the graph does not keep them)."""
        ex, self._example = self._example, None
        return ex[1] if ex is not None and ex[0] is x else None

    def _shapes(self, example=None, keep=()) -> dict:
        """Every node's output shape: a real forward where the input is small (:data:`REAL_SHAPE_PASS`
        pixels, or the model is on an accelerator), of ``example`` (its outputs at ``keep`` kept for
        :meth:`take_outputs`) or of a zero image; else a forward on the meta device (no arithmetic: the model's
        parameters and buffers stand in as meta tensors for the call), or the zero image's where an operation
        has no meta kernel."""
        p = next(self.model.parameters(), None)
        dtype = None if p is None else p.dtype
        graph = self
        if self.input_size[-2] * self.input_size[-1] <= REAL_SHAPE_PASS or (p is not None and p.device.type != "cpu"):
            device = None if p is None else p.device
            if isinstance(example, torch.Tensor) and tuple(example.shape) == (1, *self.input_size) \
                    and (p is None or (example.device == p.device and example.dtype == p.dtype)):
                wanted = {self.module_nodes[path]: path for path in keep if path in self.module_nodes}
                shapes, kept, out = {}, {}, []

                def record(node, v):
                    shapes[node.index] = _tensor_shapes(v)
                    if node.op == "output":
                        out.append(v)
                    elif node.index in wanted and isinstance(v, torch.Tensor):
                        kept[wanted[node.index]] = v.clone()     # a later in-place module would change it
                try:
                    self.run(example, keep=record)
                    if out and len(kept) == len(wanted):
                        self._example = (example, (out[0], kept))
                    return shapes
                except Exception:  # noqa: BLE001 - a model that refuses the image: as below
                    pass
            try:
                return self.run(torch.zeros(1, *self.input_size, device=device, dtype=dtype), keep="shapes")
            except Exception:  # noqa: BLE001 - a model that refuses a zero image: the meta pass below
                pass

        class _Run(nn.Module):
            def __init__(self, gm):
                super().__init__()
                self.gm = gm

            def forward(self, x):
                return graph.run(x, keep="shapes")

        runner = _Run(self.gm)
        try:
            from torch.func import functional_call
            state = {k: torch.empty_like(v, device="meta")
                     for k, v in list(runner.named_parameters()) + list(runner.named_buffers())}
            return functional_call(runner, state, (torch.zeros(1, *self.input_size, device="meta", dtype=dtype),))
        except Exception:  # noqa: BLE001 - an op without a meta kernel: the real forward of a zero image
            x = torch.zeros(1, *self.input_size, device=None if p is None else p.device, dtype=dtype)
            return self.run(x, keep="shapes")

    def run(self, x: torch.Tensor, keep="shapes", module_fn=None, gm=None, stop: int | None = None):
        """Run the traced graph on ``x`` (eval mode, no gradients). ``keep="shapes"``: every node's output
        shape(s); ``keep="values"``: every node's output (in-place modules run on a copy of their input, so
        every kept value stays as computed); a callable ``keep(node, value)`` sees every output, which is freed
        once no later node reads it. ``module_fn(node, module, args, kwargs)`` may replace a module call;
        ``stop``: the index of the last node to run."""
        gm = self.gm if gm is None else gm
        nodes = self.nodes
        env: dict = {}
        out: dict = {}

        def load(a):
            return fx.node.map_arg(a, lambda n: env[n])

        last = {}
        if keep == "shapes" or callable(keep):
            for node in nodes:
                for i in node.fx_node.all_input_nodes:
                    last[i] = node.index
        with torch.no_grad(), ModelGuard(gm):
            for node in nodes:
                n = node.fx_node
                if n.op == "placeholder":
                    v = x
                elif n.op == "output":
                    v = load(n.args[0])
                else:
                    args, kwargs = load(n.args), load(n.kwargs)
                    if keep == "values" and in_place(node, kwargs):
                        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
                    if n.op == "call_module":
                        m = gm.get_submodule(n.target)
                        v = module_fn(node, m, args, kwargs) if module_fn is not None else m(*args, **kwargs)
                    elif n.op == "call_function":
                        v = n.target(*args, **kwargs)
                    elif n.op == "call_method":
                        v = getattr(args[0], n.target)(*args[1:], **kwargs)
                    else:  # get_attr
                        v = _fetch_attr(gm, n.target)
                env[n] = v
                if callable(keep):
                    keep(node, v)
                else:
                    out[node.index] = _tensor_shapes(v) if keep == "shapes" else v
                if stop is not None and node.index >= stop:
                    break
                if keep == "shapes" or callable(keep):   # free what no later node reads
                    for i in n.all_input_nodes:
                        if last.get(i) == node.index:
                            env.pop(i, None)
        return out

    def _record_order(self, device, dtype):
        """The recorded order of the model's leaf modules (a model fx cannot trace)."""
        leaves = [(p, m) for p, m in self.model.named_modules() if not list(m.children()) and p]
        calls, outputs, produced = [], {}, {}
        handles, alive = [], []   # outputs kept alive: their ids must not be reused within the forward

        def hook_for(path, leaf):
            def hook(m, args, out):
                if leaf:
                    ins = [a for a in args if isinstance(a, torch.Tensor)]
                    calls.append((path, m, [produced.get(id(a)) for a in ins], [tuple(a.shape) for a in ins],
                                  _tensor_shapes(out)))
                    if isinstance(out, torch.Tensor):
                        produced[id(out)] = len(calls)
                        alive.append(out)
                elif isinstance(out, torch.Tensor) and id(out) in produced:
                    outputs[path] = produced[id(out)]
            return hook

        leaf_paths = {p for p, _ in leaves}
        try:
            for p, m in self.model.named_modules():
                handles.append(m.register_forward_hook(hook_for(p, p in leaf_paths)))
            x = torch.zeros(1, *self.input_size, device=device, dtype=dtype)
            produced[id(x)] = 0
            with torch.no_grad(), ModelGuard(self.model):
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        self.nodes = [Node(0, "input", "placeholder", None, None, (), out_shape=tuple(x.shape))]
        chain = True
        where = {0: 0}       # call number -> node index
        for i, (path, m, srcs, in_shapes, out_shape) in enumerate(calls, start=1):
            prev = self.nodes[-1]
            if srcs == [None] and len(in_shapes[0]) == 2 and isinstance(prev.out_shape, tuple) \
                    and math.prod(prev.out_shape) == math.prod(in_shapes[0]):
                # the previous output flattened in the forward (torch.flatten): a node of its own
                self.nodes.append(Node(len(self.nodes), "<flatten>", "call_function", torch.flatten, None,
                                       (prev.index,), out_shape=in_shapes[0]))
                srcs = [len(self.nodes) - 1]
            else:
                srcs = [where.get(s) for s in srcs]
            if srcs != [len(self.nodes) - 1]:
                chain = False
            srcs = [s for s in srcs if s is not None]
            self.nodes.append(Node(len(self.nodes), path, "call_module", path, m, tuple(srcs) or
                                   (len(self.nodes) - 1,), out_shape=out_shape))
            where[i] = len(self.nodes) - 1
        self.nodes.append(Node(len(self.nodes), "output", "output", None, None, (len(self.nodes) - 1,)))
        self.module_nodes = {}
        for i, (path, *_rest) in enumerate(calls, start=1):
            self.module_nodes[path] = where[i]
        self.module_nodes.update({p: where[i] for p, i in outputs.items()})
        self._recorded_chain = chain

    def _finish(self):
        users = {n.index: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n.index)
        for n in self.nodes:
            n._users = tuple(users[n.index])
            n.in_shapes = tuple(self.nodes[i].out_shape for i in n.inputs)
            _classify(n, self.nodes)
        tensors = [n for n in self.nodes if n.kind != "meta"]
        chain = reads_in_line(tensors, lambda n: [i for i in n.inputs if self.nodes[i].kind != "meta"],
                              lambda n: [u for u in n.users if self.nodes[u].kind != "meta"])
        if not self.traced:
            chain = chain and self._recorded_chain
        self.is_chain = chain

    # ----- queries --------------------------------------------------------------------------------
    def node_of(self, module_or_path) -> Node:
        """The node whose output the module (a path or the module itself) returns."""
        path = module_or_path
        if isinstance(module_or_path, nn.Module):
            path = next((p for p, m in self.model.named_modules() if m is module_or_path), None)
        i = self.module_nodes.get(path)
        if i is None:
            for n in self.nodes:
                if n.name == path:
                    return n
            raise GraphError(f"{path!r} does not run in {type(self.model).__name__}'s forward")
        return self.nodes[i]

    def rectified(self, node: Node) -> bool:
        """Whether ``node``'s map is rectified: the node is a ReLU (a block ending in one), a max pooling (or
        dropout, identity) of a rectified map, or every operation reading it is a ReLU (a convolution followed
        by its ReLU, through dropout or identity: ZF's "layer"). A unit of such a map is
        read after the ReLU (ZF §2: the rectified map); any other node (class scores, a convolution followed by
        batch norm) is read as it is.

        >>> g = Graph.of(zfwidgets.load("zfnet-fashion"))
        >>> g.rectified(g.node_of("conv1")), g.rectified(g.node_of("fc8"))
        (True, False)
        """
        if is_relu(node):
            return True
        if _keeps_rectified(node):     # ZF's pooled layer: the max of a rectified map is rectified
            srcs = [self.nodes[i] for i in node.inputs if self.nodes[i].kind != "meta"]
            if len(srcs) == 1 and self.rectified(srcs[0]):
                return True
        if not self.traced and not self.is_chain:    # a recorded order of modules: who reads what is unknown
            return False

        def read_by_relus(n):       # through dropouts and identities (eval mode: the same map)
            users = [self.nodes[u] for u in n.users if self.nodes[u].kind != "meta"]
            return bool(users) and all(is_relu(u) or (_passes(u) and read_by_relus(u)) for u in users)
        return read_by_relus(node)

    def ancestors(self, node: Node) -> list:
        """The nodes ``node`` depends on (itself included), in order."""
        seen = {node.index}
        stack = [node.index]
        while stack:
            for i in self.nodes[stack.pop()].inputs:
                if i not in seen:
                    seen.add(i)
                    stack.append(i)
        return [self.nodes[i] for i in sorted(seen)]

    def chain(self, upto: Node | None = None) -> list | None:
        """The nodes from the first operation up to ``upto`` (default: the last), if the graph is a chain."""
        if not self.is_chain:
            return None
        nodes = [n for n in self.nodes if n.op not in ("placeholder", "output") and n.kind != "meta"]
        if upto is not None:
            nodes = nodes[: next(k for k, n in enumerate(nodes) if n is upto) + 1]
        return nodes

    def check_geometry(self, nodes, what: str) -> None:
        """Raise :class:`GraphError` naming the first node of ``nodes`` whose geometry is unknown."""
        if not self.traced and not self.is_chain:
            raise GraphError(f"{type(self.model).__name__} could not be traced with torch.fx ({self.error}) and "
                             f"its modules do not run as a chain; {what} needs the model's geometry")
        for n in nodes:
            if n.kind == "other":
                raise GraphError(f"{what}: the operation {n.name!r} ({_describe(n)}) has no known geometry")

    def __repr__(self):
        return (f"Graph({type(self.model).__name__}, {len(self.nodes)} nodes, "
                f"{'traced' if self.traced else 'recorded order'}, {'chain' if self.is_chain else 'DAG'})")


def _fetch_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def in_place(node: Node, kwargs) -> bool:
    """Whether the node writes into its input (an ``inplace`` module or keyword, ``+=``, a ``relu_``-like method):
    a run that keeps values must run it on a copy."""
    if node.op == "call_module":
        return bool(getattr(node.module, "inplace", False))
    t = node.target
    if kwargs.get("inplace"):
        return True
    if t in (operator.iadd, operator.imul, operator.isub, operator.itruediv):
        return True
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    return name.endswith("_") and not name.startswith("_")


def _describe(n: Node) -> str:
    if n.module is not None:
        return type(n.module).__name__
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def _arg(n: Node, pos: int, name: str, default=None):
    fxn = n.fx_node
    if fxn is None:
        return default
    a = fxn.args[pos] if len(fxn.args) > pos else fxn.kwargs.get(name, default)
    return a


def _norm_dims(d, rank):
    if isinstance(d, int):
        d = [d]
    return [int(v) % rank for v in d]


@dataclass(frozen=True)
class _Read:
    """What a node reads, for its classification: its tensor inputs ``tin`` (classified already), the first
    one's spatial ``ax``, ``in_shape`` and ``rank_in``, the node's own ``shape`` and ``rank``, and ``nchw``
    (the first input is N x C x H x W with its spatial axes last)."""
    tin: list
    ax: tuple | None
    in_shape: tuple
    rank_in: int
    shape: tuple
    rank: int

    @property
    def nchw(self) -> bool:
        return self.ax == (2, 3) and self.rank_in == 4


def _classify(n: Node, nodes) -> None:
    """Set ``kind``, ``axes``, ``window`` of ``n`` from the one table (its inputs are classified already):
    the node's own cases first (input, output, no tensor, a tuple of tensors), then the rule of its module or
    of its function (:data:`_FUNCTION_RULES`); anything without a rule is ``"other"`` (no spatial axes known)."""
    shape = n.out_shape
    if n.op == "placeholder":
        n.kind, n.axes = "input", (2, 3) if shape is not None and len(shape) == 4 else None
        return
    if n.op == "output":
        n.kind = "output"
        return
    if shape is None:
        n.kind = "meta"
        return
    tin = [nodes[i] for i in n.inputs if nodes[i].kind != "meta" and nodes[i].out_shape is not None]
    if not tin:
        n.kind = "meta" if n.op == "get_attr" else "other"
        return
    ax, in_shape = tin[0].axes, tin[0].out_shape
    if isinstance(in_shape, list):   # a tuple of tensors (chunk / split) read by getitem
        n.kind, n.axes = ("pointwise", ax) if n.target is operator.getitem else ("other", None)
        return
    if isinstance(shape, list):      # chunk / split along a non-spatial axis
        dim = _arg(n, 2, "dim", 0) if n.target in _SPLIT else None
        n.kind, n.axes = ("pointwise", ax) if dim is not None and ax is not None and \
            int(dim) % len(in_shape) not in ax else ("other", None)
        return
    r = _Read(tin, ax, in_shape, len(in_shape), shape, len(shape))
    if n.op == "call_module":
        _module_rule(n, n.module, r)
        return
    for targets, rule in _FUNCTION_RULES:
        if _matches(n, targets):
            rule(n, r, nodes)
            return


def _matches(n: Node, targets) -> bool:
    t = n.target
    if targets == "pointwise":
        return t in _POINTWISE_FUNCS or (n.op == "call_method" and t in _POINTWISE_METHODS) or t is _stochastic_depth()
    if targets == "binary":
        return t in _BINARY_FUNCS or (n.op == "call_method" and t in _BINARY_METHODS)
    return t in targets


def _module_rule(n: Node, m: nn.Module, r: _Read) -> None:
    ax = r.ax
    if isinstance(m, _WINDOW_MODULES) and r.nchw:
        k, s, p, d, mode = window_params(m)
        n.kind, n.axes, n.window = "window", ax, Window(k, s, p, d, mode, bool(getattr(m, "ceil_mode", False)))
    elif isinstance(m, _ADAPTIVE_MODULES) and r.nchw:
        n.kind, n.axes, n.adaptive = "global", ax, True
    elif isinstance(m, (nn.BatchNorm2d, nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Softmax2d)):
        n.kind, n.axes = ("pointwise", ax) if r.nchw else ("other", None)
    elif isinstance(m, _POINTWISE_MODULES):
        n.kind, n.axes = "pointwise", ax
    elif isinstance(m, nn.Linear):
        if ax is None:
            n.kind = "global"
        elif r.rank_in - 1 not in ax:
            n.kind, n.axes, n.channels_last = "pointwise", ax, True
    elif isinstance(m, nn.LayerNorm):
        _normalised(n, r, len(m.normalized_shape))
    elif isinstance(m, nn.Flatten):
        _flatten(n, ax, r.rank_in, m.start_dim, m.end_dim)


def _normalised(n: Node, r: _Read, k: int) -> None:
    """A layer norm over the last ``k`` axes: pointwise where none of them is spatial."""
    if r.ax is None:
        n.kind = "global"
    elif not set(range(r.rank_in - k, r.rank_in)) & set(r.ax):
        n.kind, n.axes = "pointwise", r.ax


def _layer_norm_rule(n: Node, r: _Read, nodes) -> None:
    normed = _arg(n, 1, "normalized_shape")
    _normalised(n, r, len(normed) if isinstance(normed, (tuple, list)) else 1)


def _pointwise_rule(n: Node, r: _Read, nodes) -> None:
    n.kind, n.axes = "pointwise", r.ax


def _binary_rule(n: Node, r: _Read, nodes) -> None:
    """An elementwise operation of tensors: a merge where they share the spatial axes (a broadcast gate of
    1 x 1 maps included), global where none has any."""
    tin = r.tin
    if len(tin) == 1:
        n.kind, n.axes = "pointwise", r.ax
        return
    full = [x for x in tin if x.axes is not None and len(x.out_shape) == r.rank]
    big = max(full, key=lambda x: math.prod(x.out_shape), default=None)
    if big is not None and all(x.axes == big.axes or x.axes is None or math.prod(
            x.out_shape[i] for i in x.axes) == 1 for x in tin):
        n.kind, n.axes = "merge", big.axes
    elif all(x.axes is None for x in tin):
        n.kind = "global"


def _cat_rule(n: Node, r: _Read, nodes) -> None:
    dim = _arg(n, 1, "dim", 0)
    if r.ax is not None and all(x.axes == r.ax for x in r.tin) and int(dim) % r.rank not in r.ax:
        n.kind, n.axes = "merge", r.ax
    elif r.ax is None:
        n.kind = "global"


def _window_function_rule(n: Node, r: _Read, nodes) -> None:
    if not r.nchw:
        return
    t = n.target
    if t in (F.conv2d, torch.conv2d):
        w = nodes[n.inputs[1]].out_shape if len(n.inputs) > 1 else None
        if w is None:
            return
        s, p, d = (pair(_arg(n, i, nm, 1 if nm != "padding" else 0)) for i, nm in
                   ((3, "stride"), (4, "padding"), (5, "dilation")))
        n.kind, n.axes, n.window = "window", r.ax, Window(tuple(w[2:]), s, p, d)
        return
    k = pair(_arg(n, 1, "kernel_size"))
    st = _arg(n, 2, "stride", None)
    s = pair(st) if st not in (None, [], ()) else k
    p = pair(_arg(n, 3, "padding", 0))
    ceil_pos = 4 if t is F.avg_pool2d else 5
    d = (1, 1) if t is F.avg_pool2d else pair(_arg(n, 4, "dilation", 1))
    ceil = bool(_arg(n, ceil_pos, "ceil_mode", False))
    n.kind, n.axes, n.window = "window", r.ax, Window(k, s, p, d, "zeros", ceil)


def _adaptive_rule(n: Node, r: _Read, nodes) -> None:
    if r.nchw:
        n.kind, n.axes, n.adaptive = "global", r.ax, True


def _flatten_rule(n: Node, r: _Read, nodes) -> None:
    _flatten(n, r.ax, r.rank_in, _arg(n, 1, "start_dim", 0), _arg(n, 2, "end_dim", -1))


def _reshape_rule(n: Node, r: _Read, nodes) -> None:
    ax, rank_in, rank = r.ax, r.rank_in, r.rank
    if ax is None:
        n.kind = "global"
    elif tuple(ax) == (rank_in - 2, rank_in - 1) and rank >= 3 and tuple(r.shape[-2:]) == tuple(r.in_shape[-2:]):
        n.kind, n.axes = "pointwise", (rank - 2, rank - 1)
    elif rank == 2 or all(r.in_shape[i] == 1 for i in ax):
        n.kind = "global"


def _reduce_rule(n: Node, r: _Read, nodes) -> None:
    dims = _arg(n, 1, "dim", None)
    keep = bool(_arg(n, 2, "keepdim", False))
    if r.ax is None:
        n.kind = "global"
        return
    dims = list(range(r.rank_in)) if dims is None else _norm_dims(dims, r.rank_in)
    if set(r.ax) & set(dims):
        n.kind, n.axes = "global", (r.ax if keep else None)
    else:
        left = [i for i in range(r.rank_in) if keep or i not in dims]
        n.kind, n.axes = "pointwise", tuple(left.index(i) for i in r.ax)


def _permute_rule(n: Node, r: _Read, nodes) -> None:
    fxn = n.fx_node
    dims = fxn.args[1:] if n.op == "call_method" else (fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs["dims"])
    if n.op == "call_method" and len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    dims = _norm_dims(list(dims), r.rank_in)
    if r.ax is not None:
        n.kind, n.axes = "pointwise", tuple(dims.index(i) for i in r.ax)


def _transpose_rule(n: Node, r: _Read, nodes) -> None:
    d0, d1 = (int(v) % r.rank_in for v in (_arg(n, 1, "dim0"), _arg(n, 2, "dim1")))
    if r.ax is not None:
        swap = {d0: d1, d1: d0}
        n.kind, n.axes = "pointwise", tuple(swap.get(i, i) for i in r.ax)


def _getitem_rule(n: Node, r: _Read, nodes) -> None:
    if r.ax is None or r.rank != r.rank_in:
        return
    idx = _arg(n, 1, "idx")
    idx = idx if isinstance(idx, tuple) else (idx,)
    if all(i >= len(idx) or idx[i] == slice(None) for i in r.ax) and Ellipsis not in idx:
        n.kind, n.axes = "pointwise", r.ax


# a function's or method's rule, the first whose targets match (the order of the former if chain)
_FUNCTION_RULES = (({F.layer_norm}, _layer_norm_rule), ("pointwise", _pointwise_rule), ("binary", _binary_rule),
                   (_CAT_FUNCS, _cat_rule), (_WINDOW_FUNCS, _window_function_rule), (_ADAPTIVE_FUNCS, _adaptive_rule),
                   (_FLATTEN, _flatten_rule), (_RESHAPE, _reshape_rule), (_REDUCE, _reduce_rule),
                   (_PERMUTE, _permute_rule), (_TRANSPOSE, _transpose_rule), ({operator.getitem}, _getitem_rule))


def _stochastic_depth():
    """torchvision's ``stochastic_depth`` (wrapped as one fx call): the identity in eval mode."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover
        return None
    return stochastic_depth


def _flatten(n: Node, ax, rank_in, start, end):
    start, end = int(start) % rank_in, int(end) % rank_in
    if ax is None:
        n.kind = "global"
    elif any(start <= i <= end for i in ax):   # a spatial axis flattened (with others, or alone: the same)
        n.kind = "global"
    else:
        shift = end - start
        n.kind, n.axes = "pointwise", tuple(i - shift if i > end else i for i in ax)
