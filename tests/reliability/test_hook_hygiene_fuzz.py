"""Hook hygiene under fuzzing: 1,000 mixed public calls, about a third failing on purpose.

After every call the model has exactly the forward/backward hooks, training flags, requires_grad,
parameters (bit for bit) and .grad it had before, whether the call succeeded or raised.
"""
import random
import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod

import zfwidgets as zf
from zfwidgets.core.project import deconvnet_steps

from ..core.conftest import assert_same_state, model_state


class UserError(RuntimeError):
    pass


class Flaky(nn.Module):
    """Wraps a model; raises inside its forward when asked (an exception in a user's forward)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.explode = False

    def forward(self, x):
        if self.explode:
            raise UserError("raised inside the user's forward")
        return self.inner(x)


def random_convnet(rng: random.Random):
    c1, c2 = rng.choice([2, 3, 4]), rng.choice([3, 5])
    pool = rng.choice([nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2), nn.Conv2d(c1, c1, 3, 2, 1)])
    return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(inplace=rng.random() < 0.5), pool,
                         nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(c2 * 4, 4))


def global_hooks():
    return (len(module_mod._global_forward_hooks), len(module_mod._global_forward_pre_hooks),
            len(module_mod._global_backward_hooks))


def make_lenses():
    rng = random.Random(0)
    torch.manual_seed(0)
    out = []
    for _ in range(3):
        m = Flaky(random_convnet(rng))
        m.train()  # a model left in training mode by its user must stay so
        m.inner[0].weight.grad = torch.randn_like(m.inner[0].weight)
        out.append((zf.Lens(m, input_size=(1, 12, 12)), (1, 12, 12)))
    for arch, size in [("alexnet", 64), ("resnet18", 32)]:
        lens = zf.Lens.from_torchvision(arch)
        flaky = Flaky(lens.model)
        flaky.train()
        out.append((zf.Lens(flaky, input_size=(3, size, size)), (3, size, size)))
    return out


def one_call(rng, lens, shape):
    """A random public call; returns True when it was built to fail."""
    c, h, w = shape
    layers = lens.layers
    op = rng.random()
    uses_channel = op < 0.55 or op >= 0.85
    uses_layer = not (0.55 <= op < 0.7)
    kind = rng.random()
    image = torch.randn(c, h, w)
    expect_fail = False
    layer = rng.choice(layers)
    channel = None
    if kind < 0.08 and uses_layer:
        layer, expect_fail = rng.choice(["conv99", "nope", 3.5]), True
    elif kind < 0.16 and uses_channel:
        channel, expect_fail = 10_000, True
    elif kind < 0.24:
        bad = [torch.randn(c + 1, h, w), torch.full((c, h, w), float("nan")), torch.randn(c, h + 3, w)]
        if uses_layer:  # predict() takes a 4-D tensor as a batch; everything else wants one image
            bad.append(torch.randn(2, c, h, w))
        image, expect_fail = rng.choice(bad), True
    elif kind < 0.33:
        lens.model.explode, expect_fail = True, True
    try:
        if op < 0.55:
            method = rng.choice(["deconvnet", "guided", "gradient"])
            conv = lens.layer_info(layer).kind == "conv" if layer in layers else True
            position = rng.choice(["max", "max", "map"]) if conv else "max"
            zf.project(lens, image, layer, channel, position=position, method=method)
        elif op < 0.7:
            lens.predict(image if expect_fail else [image, image])
        elif op < 0.85:
            lens.run(lens.to_batch([image]), [layer], logits=rng.random() < 0.5)
        else:
            inner = zf.Lens(lens.model.inner, input_size=lens.input_size)
            # the paper form walks the model's graph: ResNets included
            if lens.model.explode:
                first = [m for m in lens.model.inner.modules() if not list(m.children())][0]
                first.register_forward_pre_hook(_explode_once)
            deconvnet_steps(inner, image, layer if layer in inner.layers else "nope", channel)
    except (ValueError, TypeError, UserError):
        return expect_fail, True
    finally:
        lens.model.explode = False
    return expect_fail, False


def _explode_once(module, args):
    raise UserError("raised inside the user's forward")


@pytest.mark.parametrize("n_calls", [1000])
def test_fuzz_public_calls_leave_models_untouched(n_calls):
    rng = random.Random(1)
    lenses = make_lenses()
    states = [model_state(l.model) for l, _ in lenses]
    g0 = global_hooks()
    failed = planned = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n_calls):
            # mostly the small nets (cheap), the torchvision models one call in seven
            k = rng.randrange(3) if rng.random() < 6 / 7 else rng.randrange(3, len(lenses))
            lens, shape = lenses[k]
            # the paper-form step registers one user hook to explode: that one is the test's, remove it
            expect_fail, did_fail = one_call(rng, lens, shape)
            for m in lens.model.inner.modules():
                for hid, hook in list(m._forward_pre_hooks.items()):
                    if hook is _explode_once:
                        del m._forward_pre_hooks[hid]
            planned += expect_fail
            failed += did_fail
            if expect_fail:
                assert did_fail, f"call {i} should have failed"
            assert_same_state(states[k], model_state(lens.model))
            assert global_hooks() == g0
    from ..figures import report
    report("hook-hygiene fuzz", f"{n_calls} calls, {planned} planned failures, {failed} failed; state unchanged")
    assert 250 <= planned <= 420 and failed == planned
