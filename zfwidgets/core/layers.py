"""Layer naming: the friendly names users think in (``conv1`` ... ``fc8``) and dotted module paths.

Every model gets a *layer table*: its ``Conv2d`` and ``Linear`` modules in definition order, each with a
friendly name (``convK`` for the K-th convolution, ``fcK`` continuing the count, as ZF numbers AlexNet's
layers: conv1..conv5, fc6..fc8) and its dotted path (``features.10``). Any other module can still be
named by its dotted path. One function, :func:`resolve_layer`, turns a name or a module into both.

Example:
    >>> table = layer_table(torchvision.models.alexnet())
    >>> [l.name for l in table][:2], table[0].path
    (['conv1', 'conv2'], 'features.0')
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .geometry import pair, window_params
from .graph import Trace, runs_as_chain

__all__ = ["LayerInfo", "layer_table", "block_table", "conv_fc_table", "resolve_layer", "sequential_modules",
           "pair", "window_params"]

_FRIENDLY = re.compile(r"^(conv|fc)\d+$")


@dataclass(frozen=True)
class LayerInfo:
    name: str        # friendly name (conv3, fc6) or the path when the model names modules otherwise
    path: str        # dotted module path
    module: nn.Module
    kind: str        # "conv" or "fc"


def layer_table(model: nn.Module, trace=None) -> list[LayerInfo]:
    """The model's layers with friendly names and paths.

    A chain (and a model torch.fx cannot trace): its Conv2d and Linear modules in definition order, named
    ``convK`` / ``fcK`` (or their own names where the model already uses these). A model with branches
    (``trace``, a :class:`~zfwidgets.core.graph.Trace`, shows it): its blocks in the order they run, named by
    their paths (see :func:`block_table`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if trace is not None and not isinstance(trace, str):
        if not trace.is_chain:
            table = block_table(model, trace)
            if table:
                return table
    return conv_fc_table(model)


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def block_table(model: nn.Module, trace) -> list[LayerInfo]:
    """The layers users think in for a model with branches, in the order they run.

    Walks the module tree from the model down: a Conv2d or Linear module is a layer; a plain container
    (``nn.Sequential``, ``ModuleList``, ``ModuleDict``) and a module whose children run one after the other
    with at least two of them holding convolutions (a ResNet, a stage of blocks) are walked into; any other
    module holding a convolution or a linear layer is one layer, a *block* (a ResNet block, a dense block, a
    transition, an Inception module, a conv-BN-activation unit). Modules that never run (GoogLeNet's
    auxiliary heads in eval mode) are left out. Names are the shortest tail of the path that is unique and
    does not start with a digit (``layer1.0``, ``denseblock1``, ``Mixed_5b``, ``features.3``).

    >>> m = torchvision.models.resnet18()
    >>> [i.name for i in block_table(m, Trace.of(m))][:3]
    ['conv1', 'layer1.0', 'layer1.1']
    """
    first: dict = {}
    for i, n in enumerate(trace.fx_nodes):
        if n.op in ("placeholder", "output"):
            continue
        parts = (n.target if n.op == "call_module" else trace.path_of(n)).split(".")
        for k in range(len(parts) + 1):
            first.setdefault(".".join(parts[:k]), i)
    holds = {}

    def holds_layer(path, m):
        if path not in holds:
            holds[path] = any(isinstance(c, (nn.Conv2d, nn.Linear)) and (path + "." + p if path else p) in first
                              for p, c in m.named_modules() if p) or isinstance(m, (nn.Conv2d, nn.Linear))
        return holds[path]

    found = []

    def walk(path, module):
        kids = [(f"{path}.{name}" if path else name, c) for name, c in module.named_children()]
        kids = sorted([(p, c) for p, c in kids if p in first], key=lambda pc: first[pc[0]])
        for p, c in kids:
            if isinstance(c, (nn.Conv2d, nn.Linear)):
                found.append((p, c, "conv" if isinstance(c, nn.Conv2d) else "fc"))
            elif not holds_layer(p, c):
                continue
            elif type(c) in _CONTAINERS or (sum(holds_layer(q, d) for q, d in
                                                ((f"{p}.{n}", d) for n, d in c.named_children())) >= 2
                                            and runs_as_chain(trace, p)):
                walk(p, c)
            else:
                convs = any(isinstance(d, nn.Conv2d) for d in c.modules())
                found.append((p, c, "conv" if convs else "fc"))

    walk("", model)
    paths = {p for p, _ in model.named_modules()}
    names = []
    for p, _, _ in found:
        parts = p.split(".")
        for k in range(len(parts) - 1, -1, -1):
            cand = ".".join(parts[k:])
            if cand[0].isdigit() or (cand != p and cand in paths):
                continue
            if sum(1 for q, _, _ in found if q == cand or q.endswith("." + cand)) == 1:
                break
        else:
            cand = p
        names.append(cand)
    return [LayerInfo(name, p, m, kind) for name, (p, m, kind) in zip(names, found)]


def conv_fc_table(model: nn.Module) -> list[LayerInfo]:
    """The model's Conv2d and Linear modules in definition order, named ``convK`` / ``fcK`` (or their own names
    where the model already uses these): the table of a chain, and the numbering a model with blocks also
    answers to.

    >>> [i.name for i in conv_fc_table(torchvision.models.resnet18())][:2]
    ['conv1', 'conv2']
    """
    found = [(path, m) for path, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # a model that already names its layers conv1..fc8 (the bundled ones) keeps its own names
    own = all(_FRIENDLY.match(path.rsplit(".", 1)[-1]) for path, _ in found)
    own = own and len({p.rsplit(".", 1)[-1] for p, _ in found}) == len(found)
    table = []
    for k, (path, m) in enumerate(found, start=1):
        kind = "conv" if isinstance(m, nn.Conv2d) else "fc"
        name = path.rsplit(".", 1)[-1] if own else f"{kind}{k}"
        table.append(LayerInfo(name, path, m, kind))
    return table


def resolve_layer(model: nn.Module, layer, table: list[LayerInfo] | None = None,
                  aliases: dict | None = None) -> tuple[str, str, nn.Module]:
    """Resolve ``layer`` (friendly name, dotted path, or the module itself) to ``(name, path, module)``.

    ``aliases`` (``{name: LayerInfo}``) are further names accepted (a model with blocks keeps answering to
    the ``convK`` / ``fcK`` numbering of its convolutions). Raises ``TypeError`` for anything but a string or a
    module and ``ValueError`` (listing the valid names) for a name or module the model does not have.
    """
    table = layer_table(model) if table is None else table
    if isinstance(layer, nn.Module):
        for info in table:
            if info.module is layer:
                return info.name, info.path, info.module
        for path, m in model.named_modules():
            if m is layer:
                return (path or "<model>"), path, m
        raise ValueError(f"the module {type(layer).__name__} given as layer is not part of this model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str) or a torch.nn.Module, got {type(layer).__name__}")
    for info in table:
        if layer in (info.name, info.path):
            return info.name, info.path, info.module
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer, layer, modules[layer]
    if aliases and layer in aliases:
        info = aliases[layer]
        return layer, info.path, info.module
    names = [i.name for i in table]
    paths = [i.path for i in table if i.path != i.name]
    hint = f"; or any dotted module path such as {paths[:3]}" if paths else ""
    raise ValueError(f"unknown layer {layer!r}; valid layer names are {names}{hint}")


def sequential_modules(model: nn.Module, trace=None) -> list[tuple[str, nn.Module]] | None:
    """The model as a flat list of ``(path, module)`` in execution order, if its forward is a plain chain.

    Read from the model's graph (:class:`~zfwidgets.core.graph.Trace`): every operation reads the one
    before and nothing else (``nn.Sequential`` models, torchvision AlexNet / VGG, the bundled ones). A
    functional step of the forward appears as a module doing it (``torch.flatten(x, 1)``: ``("<flatten>",
    nn.Flatten(1))``). Returns ``None`` for anything else (ResNet, DenseNet...), whose forward branches.

    >>> [p for p, _ in sequential_modules(torchvision.models.alexnet())][12:15]
    ['features.12', 'avgpool', '<flatten>']
    """
    trace = Trace.of(model) if trace is None else trace
    if isinstance(trace, str):   # fx cannot trace it: only a plain nn.Sequential is known to be a chain
        if not isinstance(model, nn.Sequential):
            return None

        def flat(prefix, m):
            if isinstance(m, nn.Sequential):
                return [x for name, c in m.named_children() for x in flat(f"{prefix}.{name}" if prefix else name, c)]
            return [(prefix, m)]
        return flat("", model)
    return trace.chain_modules()
