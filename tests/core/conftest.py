"""Fixtures for the core tests: seeded torchvision models (random weights) and small sequential nets."""
import pytest
import torch
from torch import nn

import zfwidgets as zf


def model_state(model: nn.Module):
    """Everything a public call must leave as it was: hooks, training flags, requires_grad, .grad, weights."""
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(getattr(m, "_backward_pre_hooks", {}))) for n, m in model.named_modules()]
    flags = [(n, m.training) for n, m in model.named_modules()]
    params = [(n, p.requires_grad, None if p.grad is None else p.grad.clone(), p.detach().clone())
              for n, p in model.named_parameters()]
    return hooks, flags, params


def assert_same_state(before, after):
    hb, fb, pb = before
    ha, fa, pa = after
    assert hb == ha, "hooks changed"
    assert fb == fa, "training flags changed"
    for (n, rg, g, w), (n2, rg2, g2, w2) in zip(pb, pa):
        assert n == n2 and rg == rg2, f"requires_grad of {n} changed"
        assert (g is None) == (g2 is None) and (g is None or torch.equal(g, g2)), f".grad of {n} changed"
        assert torch.equal(w, w2), f"parameter {n} changed"


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return zf.Lens.from_torchvision("alexnet")


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(1)
    lens = zf.Lens.from_torchvision("vgg16")
    lens.input_size = (3, 96, 96)  # smaller input keeps the float64 references quick
    return lens


def non_inplace_copy(model):
    """A copy of the model with every ReLU out of place (captum's module hooks need it)."""
    import copy
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    return m


def small_sequential(pool="max", seed=0):
    """conv-relu-maxpool(3x3/2, overlapping)-conv-relu-maxpool-flatten-fc-relu-fc, 1x16x16 input."""
    torch.manual_seed(seed)
    down = (nn.MaxPool2d(3, 2, 1) if pool == "max" else nn.Conv2d(4, 4, 3, 2, 1))
    down2 = (nn.MaxPool2d(3, 2, 1) if pool == "max" else nn.Conv2d(6, 6, 3, 2, 1))
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), down,
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True), down2,
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 5))


def unit_value(model, x, path, channel, position=None, rectified=True):
    """ZF's top signal for one unit (issue 27: a projection starts from the activation), read independently of
    the library: the module's output at the unit by a forward hook on a copy of the model, after the ReLU that
    the test knows follows the layer (``rectified``): ``max(value, 0)``; 1 for a layer nothing rectifies."""
    if not rectified:
        return 1.0
    m = non_inplace_copy(model).eval()
    out = {}
    h = dict(m.named_modules())[path].register_forward_hook(lambda mod, i, o: out.setdefault("a", o))
    try:
        with torch.no_grad():
            m(x[None] if x.dim() == 3 else x)
    finally:
        h.remove()
    a = out["a"][0, channel]
    if position is not None:
        a = a[position[0], position[1]]
    return max(float(a), 0.0)


def relu_follows(model, module) -> bool:
    """In a sequential ``model``: whether the first module after ``module`` that is not a dropout is a ReLU."""
    mods = list(model)
    i = next(k for k, m in enumerate(mods) if m is module)
    rest = [m for m in mods[i + 1:] if not isinstance(m, nn.Dropout)]
    return bool(rest) and isinstance(rest[0], nn.ReLU)
