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
from numbers import Integral

from torch import nn

__all__ = ["LayerInfo", "layer_table", "resolve_layer", "sequential_modules", "pair", "window_params"]

_FRIENDLY = re.compile(r"^(conv|fc)\d+$")


@dataclass(frozen=True)
class LayerInfo:
    name: str        # friendly name (conv3, fc6) or the path when the model names modules otherwise
    path: str        # dotted module path
    module: nn.Module
    kind: str        # "conv" or "fc"


def layer_table(model: nn.Module) -> list[LayerInfo]:
    """The model's Conv2d and Linear modules in definition order, with friendly names and paths."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
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


def resolve_layer(model: nn.Module, layer, table: list[LayerInfo] | None = None) -> tuple[str, str, nn.Module]:
    """Resolve ``layer`` (friendly name, dotted path, or the module itself) to ``(name, path, module)``.

    Raises ``TypeError`` for anything but a string or a module and ``ValueError`` (listing the valid
    names) for a name or module the model does not have.
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
    names = [i.name for i in table]
    paths = [i.path for i in table if i.path != i.name]
    hint = f"; or any dotted module path such as {paths[:3]}" if paths else ""
    raise ValueError(f"unknown layer {layer!r}; valid layer names are {names}{hint}")


def sequential_modules(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The model as a flat list of ``(path, module)`` in execution order, if it is a plain chain.

    Works for ``nn.Sequential`` models (nested too) and the torchvision AlexNet/VGG pattern
    (``features`` → ``avgpool`` → flatten → ``classifier``). Returns ``None`` for anything else
    (ResNet, DenseNet...), whose forward is not a chain of its modules.
    """
    def flat(prefix, m):
        if isinstance(m, nn.Sequential):
            out = []
            for name, child in m.named_children():
                out.extend(flat(f"{prefix}.{name}" if prefix else name, child))
            return out
        return [(prefix, m)]

    if isinstance(model, nn.Sequential):
        return flat("", model)
    names = [n for n, _ in model.named_children()]
    if names == ["features", "avgpool", "classifier"]:
        return (flat("features", model.features) + [("avgpool", model.avgpool), ("<flatten>", nn.Flatten())]
                + flat("classifier", model.classifier))
    return None


def pair(v) -> tuple:
    """An int or a pair of ints (a module's ``kernel_size``, ``stride``...) as ``(height, width)``."""
    return (int(v), int(v)) if isinstance(v, Integral) else (int(v[0]), int(v[1]))


def window_params(m: nn.Module):
    """Per axis ``(kernel, stride, padding_before, dilation)`` and the padding mode of a conv or pooling."""
    k = pair(m.kernel_size)
    s = pair(m.stride if m.stride is not None else m.kernel_size)
    d = pair(getattr(m, "dilation", 1))
    mode = getattr(m, "padding_mode", "zeros")
    if isinstance(m.padding, str):
        p = (0, 0) if m.padding == "valid" else tuple(d[a] * (k[a] - 1) // 2 for a in range(2))
    else:
        p = pair(m.padding)
    return k, s, p, d, mode
