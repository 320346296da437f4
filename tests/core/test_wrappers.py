"""Layer names that do not depend on wrapping (issue 28, items 2 and 5): DataParallel, DistributedDataParallel,
torch.compile and a user's own wrapper module are read through to the model they hold; a user's forward hooks
are silenced while the lens traces and given back. Results against the plain model's own calls and autograd."""
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.nn.modules.module as torch_module
import torchvision
from torch import nn

import zfwidgets as zf

from .conftest import assert_same_state, model_state


class SmallRes(nn.Module):
    """A small net with a skip connection (so its table is a block table) and a dict output."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.as_dict = as_dict
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.aux = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = F.relu(self.head(self.pool(x))).mean((2, 3))
        return {"logits": self.fc(x), "aux": self.aux(x)} if self.as_dict else self.fc(x)


class Logits(nn.Module):
    """A user's wrapper: the inner model's "logits"."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["logits"]


def small(as_dict=False):
    torch.manual_seed(0)
    return SmallRes(as_dict).eval()


def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


# the layers of these tests whose map a ReLU rectifies (a ResNet block ends with one; SmallRes's head is read
# by F.relu): ZF's unit there is the activation after it, and the projection starts from its value; the
# others (ResNet's conv5 before batch norm, SmallRes's block.2 before the add) start from 1
RECTIFIED = {"layer1.0", "layer2.0", "head"}


def autograd_projection(model, module, x, channel, position, rectified):
    """d activation[channel][position] / d input by autograd on the plain model (the gradient projection),
    times the activation where the map is ``rectified`` (ZF's seed)."""
    leaf, out = x[None].clone().requires_grad_(True), {}
    h = module.register_forward_hook(lambda m, a, o: out.setdefault("y", o))
    try:
        model(leaf)
    finally:
        h.remove()
    unit = out["y"][0, channel][position]
    grad, = torch.autograd.grad(unit, leaf)
    return grad[0] * (float(unit.clamp(min=0)) if rectified else 1.0)


def check_against_plain(lens, model, x, layers):
    """Predictions equal the plain model's own call, gradient projections equal autograd."""
    with torch.no_grad():
        out = model(x[None])
    logits = out["logits"] if isinstance(out, dict) else out
    torch.testing.assert_close(lens.predict(x), logits.softmax(1)[0])
    for layer in layers:
        p = zf.project(lens, x, layer, 1, method="gradient")
        _, _, module = lens.resolve(layer)
        ref = autograd_projection(model, module, x, 1, p.position, layer in RECTIFIED)
        assert float(ref.abs().max()) > 0
        torch.testing.assert_close(p.pixels, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_data_parallel_is_unwrapped_with_one_note():
    model = resnet()
    plain = zf.Lens(model, input_size=(3, 64, 64))
    before = model_state(model)
    wrapped = nn.DataParallel(model)      # on a machine without GPUs it only wraps
    with pytest.warns(UserWarning, match="ResNet unwrapped from DataParallel") as record:
        lens = zf.Lens(wrapped, input_size=(3, 64, 64))
    assert len([w for w in record if "unwrapped" in str(w.message)]) == 1
    assert lens.model is model                        # the same module, no copy
    assert lens.layers == plain.layers and lens.layers[:3] == ["conv1", "layer1.0", "layer1.1"]
    torch.manual_seed(1)
    x = torch.randn(3, 64, 64)
    check_against_plain(lens, model, x, ["layer1.0", "conv5"])
    assert_same_state(before, model_state(model))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_data_parallel_is_unwrapped():
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already in use")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = small()
        plain = zf.Lens(model, input_size=(3, 16, 16))
        with pytest.warns(UserWarning, match="unwrapped from DistributedDataParallel"):
            lens = zf.Lens(nn.parallel.DistributedDataParallel(model), input_size=(3, 16, 16))
        assert lens.model is model and lens.layers == plain.layers
        check_against_plain(lens, model, torch.randn(3, 16, 16), ["block.2", "head"])
    finally:
        dist.destroy_process_group()


def test_compiled_model_is_not_compiled():
    model = small()
    plain = zf.Lens(model, input_size=(3, 16, 16))
    compiled = torch.compile(model)           # lazy: compiles at its first call, which the lens never makes
    from torch._dynamo.utils import counters
    graphs = dict(counters["stats"])
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="SmallRes unwrapped from torch.compile"):
        lens = zf.Lens(compiled, input_size=(3, 16, 16))
    x = torch.randn(3, 16, 16)
    check_against_plain(lens, model, x, ["block.2", "head"])
    assert time.perf_counter() - start < 10
    assert dict(counters["stats"]) == graphs          # dynamo never ran
    assert lens.model is model and lens.layers == plain.layers


def test_user_wrapper_is_read_through():
    inner = small(as_dict=True)
    plain = zf.Lens(inner, input_size=(3, 16, 16), output="logits")
    model = Logits(inner)
    lens = zf.Lens(model, input_size=(3, 16, 16))
    # names as without the wrapper (not ['m']); paths from the wrapper
    assert lens.layers == plain.layers == ["stem.0", "block.0", "block.2", "head", "fc", "aux"]
    assert [i.path for i in lens.table] == ["m." + i.path for i in plain.table]
    convs = [(p, m) for p, m in inner.named_modules() if isinstance(m, nn.Conv2d)]
    for path, conv in convs:
        assert lens.resolve(path)[1:] == ("m." + path, conv)  # the inner model's own names and paths
        assert lens.resolve("m." + path)[2] is conv
    with pytest.raises(ValueError):
        lens.resolve("nonesuch")
    x = torch.randn(3, 16, 16)
    check_against_plain(lens, model, x, ["block.2", "head"])


class DictOut(nn.Module):
    def __init__(self, r):
        super().__init__()
        self.r = r

    def forward(self, x):
        return {"logits": self.r(x)}


def test_user_wrapper_of_resnet():
    """Two wrappers deep (Logits over a dict-returning module over ResNet-18): ResNet's own names."""
    inner = resnet()
    model = Logits(DictOut(inner))
    lens = zf.Lens(model, input_size=(3, 64, 64))
    assert lens.layers == zf.Lens(resnet(), input_size=(3, 64, 64)).layers
    assert lens.table[1].path == "m.r.layer1.0"
    convs = [(p, m) for p, m in inner.named_modules() if isinstance(m, nn.Conv2d)]
    for k, (path, conv) in enumerate(convs, start=1):
        assert lens.resolve(f"conv{k}")[2] is conv            # ResNet's numbering, as without the wrappers
        assert lens.resolve(path)[1:] == ("m.r." + path, conv)
    torch.manual_seed(3)
    check_against_plain(lens, model, torch.randn(3, 64, 64), ["layer1.0", "conv5"])


def hook_dicts(model):
    return ({p: (list(m._forward_hooks.items()), list(m._forward_pre_hooks.items()))
             for p, m in model.named_modules()},
            list(torch_module._global_forward_hooks.items()), list(torch_module._global_forward_pre_hooks.items()))


def test_user_hooks_never_change_the_names():
    model = resnet()
    plain = zf.Lens(model, input_size=(3, 64, 64))
    fired = []

    def computes(module, args, out):          # control flow on the output: cannot run on fx proxies
        fired.append(module)
        return out * 1.0 if out.mean() > -1e9 else out

    def pre(module, args):
        if args[0].shape[-1] > 0:
            fired.append("pre")

    def global_hook(module, args, out):
        if isinstance(out, torch.Tensor) and out.sum() > -1e30:
            fired.append("global")

    handles = [model.layer1.register_forward_hook(computes), model.layer1.register_forward_hook(computes),
               model.layer2[0].conv1.register_forward_pre_hook(pre),
               torch_module.register_module_forward_hook(global_hook)]
    try:
        before = hook_dicts(model)
        lens = zf.Lens(model, input_size=(3, 64, 64))
        assert hook_dicts(model) == before                    # the same hooks, the same order, the same ids
        assert not fired                                      # the trace and the probe ran without them
        assert lens.layers == plain.layers
        torch.manual_seed(2)
        x = torch.randn(3, 64, 64)
        lens.predict(x)
        assert fired.count(model.layer1) == 2 and "pre" in fired and "global" in fired   # the lens's forwards
        check_against_plain(lens, model, x, ["layer2.0"])
    finally:
        for h in handles:
            h.remove()
    assert not model.layer1._forward_hooks and not torch_module._global_forward_hooks   # the handles still work
