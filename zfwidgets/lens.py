"""The Lens: one object that owns a model and what belongs to it.

A :class:`Lens` holds the model, its preprocessing, class names, input size, the layer table, and the
cached forward of the current image (activations with their autograd graph, and max-pool switches), so
that repeated projections of the same image run backward passes only. Every analysis and every panel
takes a lens.

Example:
    >>> model = zfwidgets.load("zfnet-fashion").model                 # any nn.Module classifier
    >>> lens = zfwidgets.Lens(model, input_size=(1, 28, 28), class_names=[f"c{k}" for k in range(10)])
    >>> lens.layers[:3]
    ['conv1', 'conv2', 'conv3']
    >>> probs = lens.predict(zfwidgets.samples()[36].image)   # class probabilities, shape (num_classes,)
    >>> probs.shape, lens.class_name(int(probs.argmax()))
    (torch.Size([10]), 'c9')
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from .core.capture import Capture, ModelGuard, SilencedHooks, unwrap
from .core.graph import OTHER_ACTIVATION_MODULES, Trace
from .core.inputs import to_batch, to_input
from .core.layers import LayerInfo, conv_fc_table, layer_table, resolve_layer
from .core.outputs import SegmentationScores, describe_output, output_selector, suggest_output
from .core.rules import RectifierSwap, RuleState

__all__ = ["Lens", "Forward", "DefaultTransform"]

@dataclass
class Forward:
    """The recorded forward of one image: input (a leaf that requires grad), outputs and activations.

    ``activations`` map a layer's *path* to its output with the autograd graph back to ``input``;
    ``switches`` map a max-pooling path to its argmax indices. ``state`` selects the ReLU backward rule.

    Example:
        >>> fwd = lens.forward(zfwidgets.samples()[36].image)
        >>> fwd.probs.argmax(), fwd.input.shape, sorted(fwd.switches)[:2]
        (tensor(9), torch.Size([1, 1, 28, 28]), ['pool1', 'pool2'])
    """
    input: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    activations: dict
    switches: dict
    pool_inputs: dict
    state: RuleState
    key: tuple = field(default=(), repr=False)


def _to_tensor(img: Image.Image, dtype=np.float32) -> torch.Tensor:
    arr = np.asarray(img, dtype=dtype) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _read_through(model: nn.Module, trace) -> tuple[list[LayerInfo], str]:
    """``(layer table, prefix)``, the table read through a user's wrapper module: where the whole table is one
    module holding the model (``self.m`` of a ``forward`` returning ``self.m(x)["logits"]``), the table is the
    inner model's, its layers named as without the wrapper, their paths from ``model`` (``m.layer1.0``, prefix
    ``"m."``)."""
    table, prefix = layer_table(model, trace), ""
    while len(table) == 1 and not isinstance(table[0].module, (nn.Conv2d, nn.Linear)):
        prefix += table[0].path + "."
        inner = table[0].module
        table = layer_table(inner, Trace.of(inner))
    if not prefix:
        return table, prefix
    table = [LayerInfo(i.name, prefix + i.path, i.module, i.kind) for i in table]
    # the module the layers all lie in (``m.r`` of a wrapper over a module calling ``self.r``): its own
    # dotted paths are accepted without the prefix
    parts = [i.path.split(".")[:-1] for i in table]
    common = [p[0] for p in itertools.takewhile(lambda p: len(set(p)) == 1, zip(*parts))]
    return table, ".".join(common) + "." if common else prefix


class DefaultTransform:
    """PIL image → float tensor in [0, 1], optionally resized and normalised; computed in float64 when ``dtype``
    is float64 (the lens gives its model's dtype: a float64 model's input is exact to float64), else float32."""

    def __init__(self, size=None, mean=None, std=None, dtype=torch.float32):
        self.size, self.mean, self.std, self.dtype = size, mean, std, dtype

    def __call__(self, img):
        if self.size is not None and (img.height, img.width) != tuple(self.size):
            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
        wide = getattr(self, "dtype", None) == torch.float64   # transforms pickled before dtype existed
        x = _to_tensor(img, np.float64 if wide else np.float32)
        if self.mean is not None:
            x = (x - torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)) / \
                torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return x


class Lens:
    """A model with its preprocessing, class names, layer table and cached forward.

    Args:
        model: any ``torch.nn.Module`` taking a batch N x C x H x W (class scores N x K out, or see ``output``).
            ``DataParallel``, ``DistributedDataParallel`` and ``torch.compile`` are unwrapped (the lens runs
            the module they hold, never compiled, with a warning); a wrapper module of the user's holding the
            model is read through (the inner model's layer names, paths ``m.layer1.0``). The user's own hooks
            are silenced while the model is traced and given back; the lens's forwards run them.
        transform: PIL image → float tensor C x H x W (default: pixels scaled to [0, 1], resized to
            ``input_size`` when given, normalised by ``mean``/``std`` when given).
        class_names: K names (default ``"class 0"``...).
        input_size: ``(C, H, W)`` the model takes; inferred from the first conv layer's channels when omitted.
        mean, std: per-channel normalisation of the transform, used to display inputs as images and as the
            grey occluder fill (the data set's mean pixel in model-input space).
        output: where the class scores are in what the model returns, when it is not N x K scores itself: a
            key (``"logits"``, a dict output), an index (``0``, a tuple output),
            :class:`~zfwidgets.core.outputs.SegmentationScores` (an N x K x H x W map pooled over the image or a
            region) or a callable from the output to N x K scores. Every analysis reads the scores through it.
            With ``input_size`` the output is checked when the lens is built (a forward on the meta device), with
            an error that says which ``output=`` to pass.

    The model's parameter dtype is honoured: images, fills and references are made in it (float64, bfloat16).

    Example:
        >>> lens = Lens(torchvision.models.alexnet(), input_size=(3, 224, 224))
        >>> p = zfwidgets.project(lens, torch.randn(3, 224, 224), "conv5")
        >>> seg = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3)
        >>> lens = Lens(seg, input_size=(3, 64, 64), output=SegmentationScores(key="out", box=(8, 8, 40, 40)))
        >>> lens.predict(torch.randn(3, 64, 64)).shape       # each class's mean score in the box, softmaxed
        torch.Size([3])
    """

    def __init__(self, model: nn.Module, *, transform=None, class_names=None, input_size=None,
                 mean=None, std=None, name: str | None = None, output=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        # the lens runs the original module (same parameters): names are the same with and without the
        # wrapper, and a compiled model is never compiled (torch.compile compiles at the wrapper's first call)
        model, wrappers = unwrap(model)
        if wrappers:
            warnings.warn(f"Lens: {type(model).__name__} unwrapped from {' in '.join(reversed(wrappers))}: the "
                          "lens runs the module it holds (the same parameters"
                          f"{', never compiled' if 'torch.compile' in wrappers else ''})", stacklevel=2)
        self.model = model
        self.output = output_selector(output)
        attention = [p for p, m in model.named_modules()
                     if isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__]
        if attention:
            raise ValueError(f"{type(model).__name__} is a vision transformer (attention in {attention[:3]}"
                             f"{' ...' if len(attention) > 3 else ''}): zfwidgets visualises convolutional networks, "
                             "whose units have a place in the image; a transformer's convolution is only its patch "
                             "embedding")
        convs = [i for i in conv_fc_table(model) if i.kind == "conv"]
        if not convs:
            raise ValueError(f"{type(model).__name__} has no Conv2d layer: zfwidgets visualises convolutional "
                             "networks")
        # Everything computed once from the model and kept for the next call lives here, owned by the lens:
        # "trace" (torch.fx's, or why it failed), "graphs" (per input size), "occlusion engine" (the last
        # image's). Structure only; what depends on the weights checks :attr:`weights_key` itself.
        self.caches: dict = {}
        with SilencedHooks(model):   # the user's own hooks never change the names
            trace = Trace.of(model, self.caches.setdefault("trace", {}))
            self.table, self._inner_prefix = _read_through(model, trace)
        # a model with blocks keeps answering to the convK / fcK numbering of its convolutions
        numbered = conv_fc_table(model)
        self._aliases = {i.name: i for i in numbered if i.name not in {t.name for t in self.table}} \
            if [i.path for i in numbered] != [i.path for i in self.table] else {}
        if input_size is not None:
            input_size = tuple(int(s) for s in input_size)
            if len(input_size) != 3:
                raise ValueError(f"input_size must be (C, H, W), got {input_size}")
        self.input_size = input_size
        self.channels = input_size[0] if input_size else convs[0].module.in_channels
        if mean is None and transform is not None and hasattr(transform, "mean"):
            mean, std = transform.mean, transform.std
        self.mean = None if mean is None else [float(m) for m in np.broadcast_to(mean, (self.channels,))]
        self.std = None if std is None else [float(s) for s in np.broadcast_to(std, (self.channels,))]
        self.transform = transform if transform is not None else DefaultTransform(
            None if input_size is None else input_size[1:], self.mean, self.std, self.dtype)
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name or type(model).__name__
        self._cache: Forward | None = None
        self._extra_paths: set = set()
        self._warned: set = set()
        # activation modules the ReLU rules do not cover: named in the warning projections give
        self.unruled_modules = [p for p, m in model.named_modules() if isinstance(m, OTHER_ACTIVATION_MODULES)]
        self._other_activations: list = []
        self._check_output()

    def _probe(self):
        """One forward of a zero image of ``input_size`` (on the meta device: no compute; on the model's device
        where the model cannot run there): ``(raw output, paths of the table's layers whose output is not one
        tensor)``, or ``None`` when neither runs or the size is unknown. The model is left as it was."""
        if self.input_size is None:
            return None
        not_tensors: set = set()

        def hook(path):
            def record(module, args, out):
                if not isinstance(out, torch.Tensor):
                    not_tensors.add(path)
            return record

        def meta(x):
            state = {k: v.to("meta") for k, v in [*self.model.named_parameters(), *self.model.named_buffers()]}
            return torch.func.functional_call(self.model, state, (x.to("meta"),))

        x = torch.zeros(1, *self.input_size, dtype=self.dtype)
        silenced = SilencedHooks(self.model)   # the probe is no forward of the user's: their hooks stay out
        handles = [i.module.register_forward_hook(hook(i.path)) for i in self.table]
        try:
            for run in (meta, lambda x: self.model(x.to(self.device))):
                not_tensors.clear()
                try:
                    with torch.no_grad(), ModelGuard(self.model), silenced:
                        return run(x), set(not_tensors)
                except Exception:  # noqa: BLE001 - a model meta tensors cannot run: try real zeros, then give up
                    continue
        finally:
            for h in handles:
                h.remove()
        return None

    def _check_output(self) -> None:
        """Check the output's structure now rather than at the first call, and leave layers whose output is not
        one tensor (HRNet's stages return lists) out of the table: nothing records them unless asked. A dict or
        tuple output, or an ``output=`` that does not give N x K scores, is refused; a single map (a backbone, a
        segmentation net without ``output=``) gets a warning that names the ``output=`` to pass."""
        probe = self._probe()
        if probe is None:
            return
        out, not_tensors = probe
        if not_tensors:
            self.table = [i for i in self.table if i.path not in not_tensors]
        try:
            scores = self.class_scores(out)
        except ValueError as e:
            if self.output is not None or not isinstance(out, torch.Tensor):
                raise
            # one map (a backbone, a fully convolutional net): layers, projections and receptive fields work
            # without class scores; the calls that need them raise this message then
            warnings.warn(f"{e}; until then the lens has no class scores (predict, occlusion, lesions refuse)",
                          stacklevel=3)
            return
        except Exception:  # noqa: BLE001 - a selector that meta tensors cannot run: the first call checks it
            return
        if scores.shape[0] != 1:
            raise ValueError(f"the class scores must be N x K with one row per image; one image gave "
                             f"{tuple(scores.shape)}")

    # ----- layers -------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layer names in forward order (friendly names where the model allows)."""
        return [i.name for i in self.table]

    def resolve(self, layer) -> tuple[str, str, nn.Module]:
        """``(name, path, module)`` of a layer given by friendly name, dotted path or module."""
        try:
            return resolve_layer(self.model, layer, self.table, self._aliases)
        except ValueError as unknown:
            # a user's wrapper module: the inner model's own dotted paths (``layer1.0.conv1`` under ``m.``) too
            prefix = getattr(self, "_inner_prefix", "")
            if not (prefix and isinstance(layer, str)) or layer.startswith(prefix):
                raise
            try:
                return resolve_layer(self.model, prefix + layer, self.table, self._aliases)
            except ValueError:
                raise unknown from None

    def layer_info(self, layer) -> LayerInfo:
        name, path, module = self.resolve(layer)
        for info in self.table:
            if info.path == path:
                return info
        for info in self._aliases.values():   # a convolution inside a block (ResNet's conv5, layer1.1.conv2)
            if info.path == path:
                return LayerInfo(name, path, module, info.kind)
        return LayerInfo(name, path, module, "other")

    def rectified(self, layer) -> bool:
        """Whether a unit of ``layer`` is read in a rectified map (ZF's definition of a unit): the layer is
        followed by its ReLU (``conv1`` of a chain: the map after ``relu1``) or ends with one (a ResNet block).
        Such a unit's activation is its value after the ReLU: a unit at or below zero is not active and
        projects to nothing. Other layers (the class scores, a convolution followed by batch norm) are read as
        they are, and a projection of one of their units starts from 1. See :meth:`summary`.

        Example:
            >>> lens = zfwidgets.load("zfnet-fashion")
            >>> lens.rectified("conv1"), lens.rectified("fc8")
            (True, False)
        """
        from .core.graph import Graph, GraphError
        path = self.resolve(layer)[1]
        cache = self.__dict__.setdefault("_rectified", {})
        if path not in cache:
            try:
                graph = Graph.of(self)
                cache[path] = graph.rectified(graph.node_of(path))
            except (GraphError, RuntimeError, TypeError, ValueError):   # a model the graph cannot read
                cache[path] = False
        return cache[path]

    def summary(self) -> str:
        """The layer table as text: each name, its module path and kind, and which map a unit of it denotes
        (after its ReLU, or the layer's output as it is: see :meth:`rectified`).

        Example:
            >>> print(zfwidgets.load("zfnet-fashion").summary().splitlines()[1])
            conv1  conv1  conv  after its ReLU (rectified: a unit at or below 0 is not active)
        """
        rows = [("layer", "path", "kind", "a unit is read")]
        for i in self.table:
            what = ("after its ReLU (rectified: a unit at or below 0 is not active)" if self.rectified(i.path)
                    else "as the layer outputs it (not rectified: projections start from 1)")
            rows.append((i.name, i.path, i.kind, what))
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        return "\n".join("  ".join(r[k].ljust(widths[k]) for k in range(3)) + "  " + r[3] for r in rows)

    # ----- device, classes ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def class_name(self, k: int) -> str:
        if self.class_names is not None and 0 <= k < len(self.class_names):
            return self.class_names[k]
        return f"class {k}"

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point parameter dtype (float32 for a model without parameters): inputs,
        fills and references are made in it."""
        p = next((p for p in self.model.parameters() if torch.is_floating_point(p)), None)
        return p.dtype if p is not None else torch.float32

    @property
    def fill_value(self) -> torch.Tensor:
        """The data set's mean pixel in model-input space (C values, the model's dtype): the grey of ZF's
        occluder."""
        if self.mean is not None and self.std is not None:
            return torch.zeros(self.channels, dtype=self.dtype)  # normalised input: the mean maps to 0
        if self.mean is not None:
            return torch.tensor(self.mean, dtype=self.dtype)
        return torch.full((self.channels,), 0.5, dtype=self.dtype)

    # ----- images -------------------------------------------------------------------------------
    def to_input(self, image) -> torch.Tensor:
        """One image as model input, 1 x C x H x W on the model's device (validated)."""
        return to_input(self, image)

    def to_batch(self, images) -> torch.Tensor:
        """Several images (a list, or an N x C x H x W tensor of preprocessed input) as one batch."""
        return to_batch(self, images)

    def to_display(self, x: torch.Tensor) -> np.ndarray:
        """Model input (C x H x W or 1 x C x H x W) back to an H x W x 3 uint8 image for display."""
        x = x.detach().float().cpu()
        if x.dim() == 4:
            x = x[0]
        if self.mean is not None and self.std is not None:
            x = x * torch.tensor(self.std).view(-1, 1, 1) + torch.tensor(self.mean).view(-1, 1, 1)
        elif x.min() < 0 or x.max() > 1:
            x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
        x = x.clamp(0, 1)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif x.shape[0] != 3:
            x = x[:3] if x.shape[0] > 3 else x.mean(0, keepdim=True).expand(3, -1, -1)
        return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    # ----- running the model --------------------------------------------------------------------
    def class_scores(self, output) -> torch.Tensor:
        """The N x K class scores in the model's raw ``output``, read by the lens's ``output`` selector: every
        reader of logits (the lens's forwards, occlusion, lesions) goes through here."""
        scores = output if self.output is None else self.output(output)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
            if self.output is None:
                raise ValueError(f"the model's output must be class scores N x K; got {describe_output(output)}: "
                                 f"{suggest_output(output)}")
            raise ValueError(f"output={self.output!r} must give class scores N x K; it gave "
                             f"{describe_output(scores)}")
        return scores


    def run(self, x: torch.Tensor, layers=(), *, logits: bool = True, inference: bool = True):
        """Run a preprocessed batch (N x C x H x W) without gradients.

        ``inference=False`` runs under ``torch.no_grad`` instead of ``inference_mode`` (whose tensors trip
        the capture's version check on some models).

        Returns ``(logits or None, {layer name: activation})``. With ``logits=False`` the forward stops
        as soon as the asked layers are computed (cheaper for lower layers). An activation is the
        module's output (for a conv layer: *before* its ReLU); rectify it where ZF's rectified
        activations are meant (sums of a map, feature vectors).
        """
        resolved = {self.resolve(l)[0]: self.resolve(l)[2] for l in layers}
        with (torch.inference_mode() if inference else torch.no_grad()), ModelGuard(self.model), \
                Capture(self.model, resolved, stop=not logits and bool(resolved), detach=True) as cap:
            out = self.model(x)
            if logits:
                out = self.class_scores(out)
        self._check_channels_first(cap.outputs, resolved)
        return (out if logits else None), dict(cap.outputs)

    def predict(self, images) -> torch.Tensor:
        """Class probabilities: shape (K,) for one image, (N, K) for a list/batch."""
        if isinstance(images, (list, tuple)) or (isinstance(images, torch.Tensor) and images.dim() == 4
                                                 and images.shape[0] != 1):
            logits, _ = self.run(self.to_batch(images))
            return logits.softmax(1)
        return self.forward(images).probs

    @property
    def weights_key(self) -> tuple:
        """Changes whenever the model's parameters or buffers change, in place (an optimiser step, a lesion,
        batch norm's running statistics) or replaced: what every cache of a result computed from the weights
        (the recorded forward, the occlusion engine's cached maps, a lazily made projection) is checked against.

        >>> k = lens.weights_key
        >>> with torch.no_grad():
        ...     _ = next(lens.model.parameters()).mul_(1.0)     # the same values, written in place
        >>> lens.weights_key == k
        False
        """
        params, version = [], 0
        for mod in self.model.modules():        # one walk of the modules (the live occluder asks every move)
            for t in mod._parameters.values():
                if t is not None:
                    params.append(t.data_ptr())
                    version += t._version
            for t in mod._buffers.values():
                if t is not None:
                    version += t._version
        return version, tuple(params)

    def _key(self) -> tuple:
        return self.weights_key, tuple(sorted(self._extra_paths))

    def forward(self, image, *, extra_layers=()) -> Forward:
        """The recorded forward of ``image`` (cached: the same image again costs no forward).

        Records every layer of the table (plus ``extra_layers`` by path) with the autograd graph
        back to the input, the max-pool switches, logits and probabilities. The model is run in eval
        mode with rectifiers swapped for rule-switchable ones; its state is restored afterwards.
        """
        x = self.to_input(image)
        for l in extra_layers:
            path = self.resolve(l)[1]
            if path not in {i.path for i in self.table}:
                self._extra_paths.add(path)
        c = self._cache
        if c is not None and c.key == self._key() and c.input.shape == x.shape and torch.equal(c.input, x):
            return c
        self._cache = None  # free the old graph before building the new one
        modules = {i.path: i.module for i in self.table}
        named = dict(self.model.named_modules())
        modules.update({p: named[p] for p in self._extra_paths})
        state = RuleState("gradient")
        leaf = x.detach().clone().requires_grad_(True)
        asked = {self.resolve(l)[1] for l in extra_layers}
        optional = [p for p in modules if p not in asked]   # recorded when they give one tensor, else left out
        with torch.enable_grad(), ModelGuard(self.model), RectifierSwap(state), \
                Capture(self.model, modules, switches=True, optional=optional) as cap:
            logits = self.class_scores(self.model(leaf))
        self._check_channels_first(cap.outputs, modules, only=[self.resolve(l)[1] for l in extra_layers])
        changed = cap.modified_in_place()
        if changed:
            raise RuntimeError(f"the model overwrote the outputs of {changed} in place after they were "
                               "recorded; projections from those layers would be wrong")
        fwd = Forward(leaf, logits.detach(), logits.detach().softmax(1)[0], cap.outputs, cap.switches,
                      cap.pool_inputs, state, self._key())
        self._cache = fwd
        if state.others:
            self._other_activations = sorted(state.others)
        return fwd

    def _check_channels_first(self, outputs: dict, modules: dict, only=None) -> None:
        """Refuse a linear layer applied along the last axis of a map (N x H x W x C: ConvNeXt's, Swin's):
        features that read channels would read its height as channels."""
        for key, t in outputs.items():
            m = modules.get(key)
            if isinstance(m, nn.Linear) and isinstance(t, torch.Tensor) and t.dim() > 2 \
                    and (only is None or key in only):
                raise ValueError(f"layer {key!r} is a linear layer applied to a channels-last map (output "
                                 f"{tuple(t.shape)}, N x H x W x C); channel-based features would read its height "
                                 "as channels: choose the block it belongs to or a convolution")

    def clear_cache(self) -> None:
        """Forget the cached forward (frees its graph)."""
        self._cache = None

    def warn_once(self, key, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def __repr__(self):
        size = "x".join(map(str, self.input_size)) if self.input_size else "?"
        return f"Lens({self.name}, input {size}, {len(self.table)} layers: {', '.join(self.layers[:8])}" + \
            (" ...)" if len(self.table) > 8 else ")")

    # ----- timm -----------------------------------------------------------------------------------
    @classmethod
    def from_timm(cls, name: str, weights=None, **kwargs) -> "Lens":
        """A lens on a timm CNN (``"resnet18"``, ``"resnet10t"``, ``"efficientnet_b0"``...; ``pip install
        "zfwidgets[timm]"``).

        ``weights``: ``None`` (random initialisation, offline), the path of a checkpoint file
        (``.safetensors``, ``.pth``), a state dict, or ``"DEFAULT"`` (timm's pretrained weights: from the
        Hugging Face cache, else downloaded; without a connection the error says to pass a file). Preprocessing
        (resize, centre crop, mean, std, interpolation) is timm's evaluation transform for the model's data
        config, at ``input_size`` when given; class names are those of the ImageNet subset timm infers from the
        classifier. Keyword arguments of :class:`Lens` (``transform``, ``class_names``, ``input_size``, ``mean``,
        ``std``, ``name``) go to the lens, any other to ``timm.create_model`` (``num_classes=10``...).

        The model's graph is traced by torch.fx like any other; activations other than ReLU (EfficientNet's
        SiLU and squeeze-excitation gates) are backpropagated as plain gradients by the deconvnet and guided
        rules, with a warning naming them.

        Example:
            >>> lens = Lens.from_timm("resnet10t", input_size=(3, 64, 64))   # random weights, offline
            >>> lens.layers[:3], lens.input_size, lens.class_names[0]
            (['conv1.0', 'conv1.3', 'conv1.6'], (3, 64, 64), 'tench')
            >>> lens = Lens.from_timm("resnet50", weights="resnet50.safetensors")  # a checkpoint on disk  # doctest: +SKIP
        """
        from .core.timm_models import build_timm
        own = {"transform", "class_names", "input_size", "mean", "std", "name", "output"}
        create_kwargs = {k: v for k, v in kwargs.items() if k not in own}
        kwargs = {k: v for k, v in kwargs.items() if k in own}
        model, transform, classes, size, mean, std = build_timm(name, weights, kwargs.get("input_size"),
                                                                **create_kwargs)
        return cls(model, **{"transform": transform, "class_names": classes, "input_size": size, "mean": mean,
                             "std": std, "name": name, **kwargs})

    # ----- torchvision --------------------------------------------------------------------------
    @classmethod
    def from_torchvision(cls, arch: str, weights=None, **kwargs) -> "Lens":
        """A lens on a torchvision CNN: a classifier (``"alexnet"``, ``"vgg16"``, ``"resnet18"``...) or a
        segmentation model (``"fcn_resnet50"``, ``"deeplabv3_mobilenet_v3_large"``...).

        ``weights`` as in torchvision: ``None`` (random initialisation), ``"DEFAULT"``, a weights name
        (``"IMAGENET1K_V1"``) or an enum. Preprocessing and the ImageNet class names come from the
        weights' metadata, which torchvision has offline (without weights: those of the default weights, so
        ``"inception_v3"`` takes 299 x 299); ``input_size=(3, H, W)`` crops to ``H x W`` after a resize in the
        weights' proportion (256 → 224 becomes 146 → 128), as :meth:`from_timm` does. Keyword arguments of
        :class:`Lens` (``transform``,
        ``class_names``, ``input_size``, ``mean``, ``std``, ``name``) go to the lens, any other to torchvision's
        builder (``aux_logits=False``). If the weights file is not in ``TORCH_HOME`` and cannot be downloaded,
        the error says where to put it.

        A segmentation model is built with ``weights_backbone=None`` (offline) unless given, its class names are
        its weights' (Pascal VOC's 21 categories), its input a square of the weights' resize (520 x 520, or
        ``input_size``), and its ``output`` defaults to ``SegmentationScores(key="out")``: each class's mean
        score over the image (pass ``output=SegmentationScores(key="out", box=...)`` for a region).

        Example:
            >>> lens = Lens.from_torchvision("alexnet")            # random weights, offline
            >>> lens.layers[:2], lens.input_size
            (['conv1', 'conv2'], (3, 224, 224))
            >>> seg = Lens.from_torchvision("deeplabv3_mobilenet_v3_large", input_size=(3, 64, 64))
            >>> seg.class_names[:3], seg.output
            (['__background__', 'aeroplane', 'bicycle'], SegmentationScores(key='out'))
            >>> from torchvision.models import VGG16_Weights
            >>> lens = Lens.from_torchvision("vgg16", VGG16_Weights.IMAGENET1K_V1)  # offline only with the file in TORCH_HOME  # doctest: +SKIP
        """
        from .core.torchvision_models import build_torchvision, segmentation_models
        own = {"transform", "class_names", "input_size", "mean", "std", "name", "output"}
        builder_kwargs = {k: v for k, v in kwargs.items() if k not in own}
        kwargs = {k: v for k, v in kwargs.items() if k in own}
        model, transform, classes, size, w = build_torchvision(arch, weights, kwargs.get("input_size"),
                                                             **builder_kwargs)
        if arch in segmentation_models():
            kwargs.setdefault("output", SegmentationScores(key="out"))
        lens = cls(model, **{"transform": transform, "class_names": classes, "input_size": size, "name": arch,
                             **kwargs})
        lens.weights = w
        return lens
