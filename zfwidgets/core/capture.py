"""Forward capture: activations and max-pool switches, with hooks that never outlive the call.

:class:`Capture` is a context manager over forward hooks: every handle goes in one list, ``remove()``
clears it and is safe to call twice, and leaving the block removes them in ``finally`` (also when the
body raises). :class:`ModelGuard` puts a model in eval mode for the call and gives every module back the
``training`` flag it had. :class:`SilencedHooks` takes the user's own hooks out for a trace and puts the same
ones back; :func:`unwrap` finds the module under ``DataParallel`` / DDP / ``torch.compile``.

Example:
    >>> model = zfwidgets.load("zfnet-fashion").model
    >>> with ModelGuard(model), Capture(model, {"conv1": model.conv1}) as cap:
    ...     logits = model(torch.zeros(1, 1, 28, 28))
    >>> cap.outputs["conv1"].shape
    torch.Size([1, 32, 28, 28])
"""
from __future__ import annotations

import torch
import torch.nn.modules.module as _torch_module
import torch.nn.functional as F
from torch import nn

__all__ = ["Capture", "ModelGuard", "SilencedHooks", "StopForward", "pool_switches", "unwrap"]


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
        if self.eval_mode and any(flag for _, flag in self.flags):    # (eval() walks the modules again)
            self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False


class SilencedHooks:
    """Take every forward (pre-)hook and backward hook out of ``model``'s modules, and torch's global forward
    hooks, for the block; put the same ones back in ``finally``, in the same order (their handles still remove
    them: each hook dict is emptied and refilled in place, never replaced).

    The lens traces and probes the model with them silenced: a user's hook computing with its output
    (``if out.mean() > 0``) cannot run on fx proxies or meta tensors, and would turn the trace into the
    flat ``convK`` names. Hooks registered inside the block are kept after the ones given back.

    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3))
    >>> h = model[0].register_forward_hook(lambda m, a, out: print("hook"))
    >>> with SilencedHooks(model):
    ...     _ = model(torch.zeros(1, 1, 5, 5))
    >>> _ = model(torch.zeros(1, 1, 5, 5))
    hook
    """

    def __init__(self, model: nn.Module):
        dicts = [d for m in model.modules()
                 for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)]
        dicts += [_torch_module._global_forward_hooks, _torch_module._global_forward_pre_hooks]
        self._saved = [(d, list(d.items())) for d in dicts if d]

    def __enter__(self):
        for d, _ in self._saved:
            d.clear()
        return self

    def __exit__(self, *exc):
        for d, items in self._saved:
            added = list(d.items())
            d.clear()
            d.update(items)
            d.update(added)
        return False


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``(module, wrappers)``: the module under ``nn.DataParallel``, ``DistributedDataParallel`` (their
    ``.module``) and ``torch.compile``'s ``OptimizedModule`` (its ``_orig_mod``), the same object with the same
    parameters, and the wrappers' names outermost first (empty for a plain module). Nothing is compiled: torch
    compiles an OptimizedModule at its first call, and the original module's calls never reach it.

    >>> inner = nn.Conv2d(1, 2, 3)
    >>> m, wrappers = unwrap(nn.DataParallel(inner))
    >>> m is inner, wrappers
    (True, ['DataParallel'])
    """
    wrappers = []
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            wrappers.append(type(model).__name__)
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            wrappers.append("torch.compile")
            model = model._orig_mod
        else:
            return model, wrappers
