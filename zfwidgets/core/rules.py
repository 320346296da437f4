"""Backward rules for ReLU: what a signal passing *down* through a rectifier becomes.

For a ReLU with forward input ``f`` and incoming backward signal ``R`` (METHODS.md §2; AllConv Fig. 1):

=============  ===========================  ============================================
rule           signal passed down           paper
=============  ===========================  ============================================
Gradient       ``R * (f > 0)``              Simonyan et al. 2014 (saliency)
Deconvnet      ``R * (R > 0)``              Zeiler & Fergus 2014, §2.1
GuidedBackprop ``R * (f > 0) * (R > 0)``    Springenberg et al. 2015, §3.4
=============  ===========================  ============================================

The rules act through a small autograd Function, :class:`RuleReLU`, that computes an ordinary
rectification forward and asks a :class:`RuleState` which rule to apply backward. :class:`RectifierSwap`
is a ``TorchFunctionMode`` that, while active, turns every rectification the model performs into a
``RuleReLU``: ``nn.ReLU`` modules (``inplace=True`` included), one ReLU module called several times
(torchvision ResNet) and functional ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (DenseNet) alike.
It never touches module hooks, so nothing can be left behind on the model. Because the rule is read at
backward time, one recorded forward serves all three rules.

Example:
    >>> model = zfwidgets.load("zfnet-fashion").model
    >>> x = torch.rand(1, 1, 28, 28, requires_grad=True)
    >>> state = RuleState("deconvnet")
    >>> with RectifierSwap(state):
    ...     y = model(x)
    >>> state.rule = "guided"   # the same graph now backpropagates with guided backprop
    >>> y[0, 3].backward(); x.grad.shape
    torch.Size([1, 1, 28, 28])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["RULES", "RuleState", "RuleReLU", "RectifierSwap", "Gradient", "Deconvnet", "GuidedBackprop",
           "OTHER_ACTIVATIONS"]


class Gradient:
    """Plain gradient: ``R * (f > 0)`` (Simonyan et al., 2014).

    Every rule says what its backward reads and does, so that a walk asks the rule, never its name:
    ``reads_forward_mask`` (the backward looks at the sign of the forward's ReLU input: a walk must record it)
    and ``rectifies_signal`` (the backward clamps the top-down signal at zero).
    """
    name = "gradient"
    reads_forward_mask = True
    rectifies_signal = False

    @staticmethod
    def backward(grad: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        return grad * positive


class Deconvnet:
    """Zeiler & Fergus's rectification of the top-down signal, ignoring the forward mask: ``relu(R)``."""
    name = "deconvnet"
    reads_forward_mask = False
    rectifies_signal = True

    @staticmethod
    def backward(grad: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


class GuidedBackprop:
    """Springenberg et al.'s guided backpropagation: ``relu(R) * (f > 0)``."""
    name = "guided"
    reads_forward_mask = True
    rectifies_signal = True

    @staticmethod
    def backward(grad: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0) * positive


RULES = {r.name: r for r in (Gradient, Deconvnet, GuidedBackprop)}


class RuleState:
    """The rule a recorded graph's rectifiers apply on their next backward; switchable between backwards."""

    def __init__(self, rule: str = "gradient"):
        self.rule = rule
        self.others: set[str] = set()  # non-ReLU activation functions seen during the forward
        # every rectification's and hardtanh's (ReLU6's) output in order, with its version: ``(kind, tensor,
        # version)``; the cropped backward reads its masks from them (the graph's rectifiers, matched in order)
        self.trail: list = []

    @property
    def rule(self) -> str:
        return self._rule

    @rule.setter
    def rule(self, value: str) -> None:
        if value not in RULES:
            raise ValueError(f"method must be one of {sorted(RULES)}, got {value!r}")
        self._rule = value


class RuleReLU(torch.autograd.Function):
    """``relu`` forward; backward by the rule ``state.rule`` names at the time of the backward."""

    @staticmethod
    def forward(ctx, x, state):
        out = x.clamp(min=0)
        ctx.state = state
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        # out > 0 exactly where f > 0
        return RULES[ctx.state.rule].backward(grad, (out > 0).to(grad.dtype)), None


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_}
# activation functions the rules do not cover; seen during a swap they are reported, not silently wrong
OTHER_ACTIVATIONS = {F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.gelu: "gelu", F.silu: "silu",
                     F.elu: "elu", F.selu: "selu", F.celu: "celu", F.hardswish: "hardswish",
                     F.mish: "mish", F.softplus: "softplus", F.hardtanh: "hardtanh", F.prelu: "prelu",
                     torch.sigmoid: "sigmoid", torch.tanh: "tanh", torch.Tensor.sigmoid: "sigmoid",
                     torch.Tensor.tanh: "tanh", F.rrelu: "rrelu", F.glu: "glu"}


class RectifierSwap(TorchFunctionMode):
    """While active, every rectification becomes :class:`RuleReLU` bound to ``state`` (out of place).

    Out of place on purpose: an in-place ReLU would overwrite the activations a lens records.
    """

    def __init__(self, state: RuleState):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS:
            x = args[0] if args else kwargs["input"]
            if isinstance(x, torch.Tensor) and (x.requires_grad or x.grad_fn is not None):
                out = RuleReLU.apply(x, self.state)
                self.state.trail.append(("relu", out, out._version))
                return out
        elif func in OTHER_ACTIVATIONS:
            name = OTHER_ACTIVATIONS[func]
            self.state.others.add(name)
            if name in ("hardtanh", "relu6"):
                out = func(*args, **kwargs)
                if isinstance(out, torch.Tensor):
                    self.state.trail.append(("hardtanh", out, out._version))
                return out
        return func(*args, **kwargs)
