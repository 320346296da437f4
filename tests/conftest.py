"""Shared fixtures: tiny deterministic models, a few seeded images, the bundled model, and a slow
independent reference for gradient supports.

- ``hand_lens``: 1x8x8 input; conv 3x3 (all weights 1, no bias) → ReLU → max pool 2x2 → flatten →
  linear 9→2 (row 0 all +1, row 1 all -1, no bias). Every value can be computed by hand.
- ``small_lens``: seeded random conv(3→4, 3x3, pad 1) → ReLU → max pool 3x3/2 pad 1 (overlapping) →
  conv(4→6, 3x3, pad 1) → ReLU → flatten → fc(384→5); 3x16x16 input, mean/std normalisation, 5 class names.
- ``small_images``: 37 seeded uint8 16x16x3 images for ``small_lens``.
- ``zf_random``: the bundled zfnet-fashion architecture with seeded random weights (1x28x28).
- ``bundled``: ``zfwidgets.load("zfnet-fashion")`` (skips the test while the trained weights are missing).
- ``support_box``: the bounding box of the gradient support of one unit, computed slowly and independently.

Tests share two CPU cores with other jobs: one intra-op thread avoids oversubscription stalls.
"""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import zfwidgets
from zfwidgets import Lens

torch.set_num_threads(1)

# a Jupyter server config read by traitlets (it calls get_config()), not a module to import: --doctest-modules
# would otherwise collect it
collect_ignore = ["browser/jupyter_server_config.py"]


def hand_model() -> nn.Sequential:
    conv = nn.Conv2d(1, 1, 3, bias=False)
    fc = nn.Linear(9, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        fc.weight[0].fill_(1.0)
        fc.weight[1].fill_(-1.0)
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), fc).eval()


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()


@pytest.fixture
def hand_lens():
    return Lens(hand_model(), input_size=(1, 8, 8))


@pytest.fixture
def small_lens():
    return Lens(small_model(), input_size=(3, 16, 16), mean=[0.5, 0.45, 0.4], std=[0.25, 0.25, 0.25],
                class_names=["ant", "bee", "cat", "dog", "eel"])


@pytest.fixture
def small_images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(37)]


@pytest.fixture
def zf_random():
    from zfwidgets.zoo.models import build
    torch.manual_seed(0)
    return Lens(build("zfnet-fashion").eval(), input_size=(1, 28, 28), mean=[0.286], std=[0.353])


@pytest.fixture(scope="session")
def bundled():
    try:
        return zfwidgets.load("zfnet-fashion")
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"bundled weights not available yet: {e}")


def _reference_support(model, module_path, positions, input_size):
    """Bounding boxes (y0, x0, y1, x1) of the input-gradient support of the units at ``positions`` of a module.

    Independent of the library: a float64 copy with weights |w| + 0.01 and no bias, ReLUs removed and max
    pooling replaced by average pooling, so every path contributes positively and nothing cancels.
    One backward for all positions (one batch element each).
    """
    m = copy.deepcopy(model).double().eval()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.copy_(mod.weight.abs() + 0.01)
                if mod.bias is not None:
                    mod.bias.zero_()
    target = dict(m.named_modules())[module_path]
    out = {}

    class Done(Exception):
        pass

    def keep(mod, a, o):
        out["o"] = o
        raise Done

    handle = target.register_forward_hook(keep)
    x = torch.rand(len(positions), *input_size, dtype=torch.float64).add_(0.5).requires_grad_(True)
    try:
        m(x)
    except Done:
        pass
    finally:
        handle.remove()
    o = out["o"]
    seed = torch.zeros_like(o)
    for b, pos in enumerate(positions):
        if pos is None:
            seed[b] = 1.0
        else:
            seed[b, :, pos[0], pos[1]] = 1.0
    (g,) = torch.autograd.grad(o, x, seed)
    boxes = []
    for b in range(len(positions)):
        support = (g[b] != 0).any(0)
        rows = torch.nonzero(support.any(1)).flatten().tolist()
        cols = torch.nonzero(support.any(0)).flatten().tolist()
        boxes.append((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) if rows else (0, 0, 0, 0))
    return boxes


@pytest.fixture
def support_box():
    """``support_box(model, module_path, positions, input_size) -> [(y0, x0, y1, x1), ...]``."""
    return _reference_support


def hooks_of(model):
    return [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()]


@pytest.fixture
def model_hooks():
    """``model_hooks(model)``: the hook counts of every module (compare before/after a call)."""
    return hooks_of


def pytest_terminal_summary(terminalreporter):
    from .figures import FIGURES
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
