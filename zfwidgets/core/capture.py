"""Forward capture: activations and max-pool switches, with hooks that never outlive the call.

:class:`Capture` is a context manager over forward hooks: every handle goes in one list, ``remove()``
clears it and is safe to call twice, and leaving the block removes them in ``finally`` (also when the
body raises). :class:`ModelGuard` puts a model in eval mode for the call and gives every module back the
``training`` flag it had.

Example:
    >>> model = zfwidgets.load("zfnet-fashion").model
    >>> with ModelGuard(model), Capture(model, {"conv1": model.conv1}) as cap:
    ...     logits = model(torch.zeros(1, 1, 28, 28))
    >>> cap.outputs["conv1"].shape
    torch.Size([1, 32, 28, 28])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Capture", "ModelGuard", "StopForward", "pool_switches"]


class StopForward(Exception):
    """Raised inside a hook to end a forward early once everything asked for is captured."""


def pool_switches(module: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """The switches of a max pooling: for every output, the flat index (in H*W of its channel) of the argmax."""
    _, idx = F.max_pool2d(x, module.kernel_size, module.stride, module.padding, module.dilation,
                          ceil_mode=module.ceil_mode, return_indices=True)
    return idx


class Capture:
    """Record the outputs of ``modules`` (a ``{key: module}`` dict) during forwards of ``model``.

    ``switches=True`` also records, for every ``nn.MaxPool2d`` in the model, its switches and input
    shape (``cap.switches[path]``, ``cap.pool_inputs[path]``). ``stop=True`` ends the forward with
    :class:`StopForward` as soon as every requested output is in (swallowed by ``__exit__``).
    ``detach=True`` stores detached copies (no graph; safe from later in-place operations). Without it,
    the model's in-place modules (``ReLU(inplace=True)``, MobileNetV3's ``Hardswish``, EfficientNet's
    ``SiLU``) run out of place for the duration of the capture, so that they cannot overwrite a recorded
    output; their ``inplace`` flags are given back on leaving.
    An activation is the module's output as the module returned it (for a conv layer: before its ReLU).
    A module whose output is not one tensor (a list, tuple or dict: HRNet's stages) is a ``TypeError``, except
    for the keys in ``optional`` (the layers recorded without being asked for), which are then left out.
    """

    def __init__(self, model: nn.Module, modules: dict, *, switches: bool = False, stop: bool = False,
                 detach: bool = False, optional=()):
        self.model = model
        self.modules = dict(modules)
        self.want_switches = switches
        self.stop = stop
        self.detach = detach
        self.optional = frozenset(optional)
        self.skipped: list = []   # optional keys whose output was not one tensor
        self.outputs: dict = {}
        self.versions: dict = {}
        self.switches: dict = {}
        self.pool_inputs: dict = {}
        self.handles: list = []
        self.inplace: list = []

    def _hook_for(self, key):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                if key in self.optional:
                    self.skipped.append(key)
                    return
                raise TypeError(f"layer {key!r} returns {type(output).__name__}, not a tensor; "
                                "choose a layer whose output is one tensor")
            if self.detach:
                # a copy: an in-place op later in the model (ReLU(inplace=True)) must not rewrite it
                self.outputs[key] = output.detach().clone()
            else:
                self.outputs[key] = output
                self.versions[key] = output._version
            if self.stop and len(self.outputs) == len(self.modules):
                raise StopForward
        return hook

    def _switch_hook_for(self, path):
        def hook(module, args, output):
            x = args[0]
            with torch.no_grad():
                self.switches[path] = pool_switches(module, x)
            self.pool_inputs[path] = tuple(x.shape)
        return hook

    def __enter__(self):
        try:
            if not self.detach:
                for m in self.model.modules():
                    if getattr(m, "inplace", None) is True:
                        self.inplace.append(m)
                        m.inplace = False
            for key, module in self.modules.items():
                self.handles.append(module.register_forward_hook(self._hook_for(key)))
            if self.want_switches:
                for path, m in self.model.named_modules():
                    if isinstance(m, nn.MaxPool2d):
                        self.handles.append(m.register_forward_hook(self._switch_hook_for(path)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()
        while self.inplace:
            self.inplace.pop().inplace = True

    def __exit__(self, exc_type, exc, tb):
        self.remove()
        return exc_type is StopForward

    def modified_in_place(self) -> list:
        """Keys whose recorded tensor was later overwritten by an in-place operation of the model."""
        return [k for k, t in self.outputs.items() if k in self.versions and t._version != self.versions[k]]


class ModelGuard:
    """Eval mode for the duration of a call; every module's ``training`` flag restored afterwards."""

    def __init__(self, model: nn.Module, eval_mode: bool = True):
        self.model = model
        self.eval_mode = eval_mode
        self.flags = None

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        if self.eval_mode:
            self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False
