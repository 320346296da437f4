"""Projections against independent references.

- the paper-form deconvnet (explicit unpool/rectify/filter, float64) and captum's NeuronDeconvolution;
- captum's NeuronGuidedBackprop; plain autograd for the gradient;
- a slow float64 re-implementation of the three ReLU rules that walks a sequential net layer by layer,
  written here without using the library's rule code;
- ResNet18 (inplace ReLU module called twice per block) and DenseNet121 (functional F.relu) against
  references built from per-call forward hooks and a patched functional, in float64.
"""
import copy
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import zfwidgets as zf
from zfwidgets.core import backward as crop
from zfwidgets.core.project import deconvnet_steps

from .conftest import non_inplace_copy, relu_follows, small_sequential, unit_value

captum_attr = pytest.importorskip("captum.attr")


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def captum_reference(lens, x, layer_module_path, method, channel, position):
    cls = {"deconvnet": captum_attr.NeuronDeconvolution, "guided": captum_attr.NeuronGuidedBackprop}[method]
    m = non_inplace_copy(lens.model)
    layer = dict(m.named_modules())[layer_module_path]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(m, layer).attribute(x[None], neuron_selector=(channel, *position))[0]


def float64_activation(model, x, path):
    """A float64 copy of ``model`` on ``x`` (C x H x W): the input batch (requires grad) and ``path``'s output.

    The copy takes the float32 model's branches: each ``nn.ReLU`` passes where the float32 one passed and each
    ``nn.MaxPool2d`` picks the float32 winner. Elsewhere it is float64. A random VGG16 has pre-activations so
    close to zero that float32 and float64 rounding put some on different sides (and which ones depends on the
    CPU's kernels: AVX2 or AVX-512); the gradient through a flipped ReLU is legitimately different, 6e-3
    relative on an AVX2 machine. Following the float32 branches keeps the reference independent of the
    library's code (plain autograd through the model's own modules) and exact up to float64 rounding.
    """
    gates, handles = {}, []

    def record(name):
        def hook(mod, inp, out):
            if isinstance(mod, nn.ReLU):
                gate = out > 0
            else:
                _, gate = F.max_pool2d(inp[0], mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                       ceil_mode=mod.ceil_mode, return_indices=True)
            gates.setdefault(name, []).append(gate)      # a module called twice (ResNet's ReLU): one per call
        return hook

    def follow(name):
        def hook(mod, inp, out):
            if not gates.get(name):
                return None
            gate = gates[name].pop(0)
            if isinstance(mod, nn.ReLU):
                return inp[0] * gate.to(inp[0].dtype)
            return inp[0].flatten(2).gather(2, gate.flatten(2)).view_as(out)
        return hook

    f32 = non_inplace_copy(model).eval()
    m = copy.deepcopy(f32).double().eval()
    kinds = (nn.ReLU, nn.MaxPool2d)
    try:
        for name, mod in f32.named_modules():
            if isinstance(mod, kinds) and not (isinstance(mod, nn.MaxPool2d) and mod.return_indices):
                handles.append(mod.register_forward_hook(record(name)))
        with torch.no_grad():
            f32(x[None])
    finally:
        while handles:
            handles.pop().remove()
    xd = x.double()[None].requires_grad_(True)
    out = {}
    handles.append(dict(m.named_modules())[path].register_forward_hook(lambda mod, i, o: out.setdefault("a", o)))
    try:
        for name, mod in m.named_modules():
            if isinstance(mod, kinds):
                handles.insert(0, mod.register_forward_hook(follow(name)))
        m(xd)
    finally:
        while handles:
            handles.pop().remove()
    return xd, out["a"]


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_deconvnet_equals_paper_form_and_captum(arch, request):
    lens = request.getfixturevalue(arch)
    torch.manual_seed(3)
    x = torch.randn(lens.input_size)
    last_conv = [i for i in lens.table if i.kind == "conv"][-1]
    p = zf.project(lens, x, last_conv.name, method="deconvnet")
    assert p.position is not None and p.activation > 0
    steps = deconvnet_steps(lens, x, last_conv.name, p.channel, position=p.position, dtype=torch.float64)
    assert rel_err(p.pixels, steps[-1][1][0]) < 1e-5
    # captum seeds the unit with 1; ZF's unit (after the conv's ReLU) with its activation
    ref = captum_reference(lens, x, last_conv.path, "deconvnet", p.channel, p.position)
    ref = ref * unit_value(lens.model, x, last_conv.path, p.channel, p.position)
    assert rel_err(p.pixels, ref) < 1e-5
    # a middle layer and an explicit channel/position too
    mid = [i for i in lens.table if i.kind == "conv"][2]
    q = zf.project(lens, x, mid.name, 5, position=(3, 4), method="deconvnet")
    steps = deconvnet_steps(lens, x, mid.name, 5, position=(3, 4), dtype=torch.float64)
    # each seeds the unit with its own activation (float32 here, float64 there): a small activation's rounding
    # shows in the scale, so the pictures are compared up to scale, then the scales
    ref = steps[-1][1][0]
    assert q.active
    assert rel_err(q.pixels / q.pixels.abs().max(), ref / ref.abs().max()) < 1e-5
    assert rel_err(q.pixels, ref) < 1e-4


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_guided_equals_captum_and_gradient_equals_autograd(arch, request):
    lens = request.getfixturevalue(arch)
    torch.manual_seed(4)
    x = torch.randn(lens.input_size)
    last_conv = [i for i in lens.table if i.kind == "conv"][-1]
    g = zf.project(lens, x, last_conv.name, method="guided")
    value = unit_value(lens.model, x, last_conv.path, g.channel, g.position)   # ZF's seed (captum's is 1)
    assert value > 0
    ref = captum_reference(lens, x, last_conv.path, "guided", g.channel, g.position) * value
    assert rel_err(g.pixels, ref) < 1e-5
    s = zf.project(lens, x, last_conv.name, g.channel, position=g.position, method="gradient")
    xd, a = float64_activation(lens.model, x, last_conv.path)
    (grad,) = torch.autograd.grad(a[0, g.channel, g.position[0], g.position[1]], xd)
    assert rel_err(s.pixels, grad[0] * value) < 1e-5
    # the three rules give different answers on a real net (the test would notice a rule mix-up)
    d = zf.project(lens, x, last_conv.name, g.channel, position=g.position, method="deconvnet")
    assert rel_err(d.pixels, g.pixels) > 1e-3 and rel_err(s.pixels, g.pixels) > 1e-3


def slow_rule_reference(model, x, stop_index, seed_fn, rule):
    """Float64, layer by layer: record each module's input, then go down applying the rule by hand."""
    mods = list(model)
    xs = [x.double()]
    with torch.no_grad():
        for m in mods[: stop_index + 1]:
            xs.append(copy.deepcopy(m).double()(xs[-1]))
    signal = seed_fn(xs[-1])
    for i in range(stop_index, -1, -1):
        m, f = mods[i], xs[i]
        if isinstance(m, nn.ReLU):
            if rule == "gradient":
                signal = signal * (f > 0)
            elif rule == "deconvnet":
                signal = signal * (signal > 0)
            else:
                signal = signal * (f > 0) * (signal > 0)
        elif isinstance(m, nn.Conv2d):
            w = m.weight.double()
            signal = torch.nn.grad.conv2d_input(f.shape, w, signal, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.MaxPool2d):
            # route each value to the argmax of its window, adding where windows share it
            _, idx = F.max_pool2d(f, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
                                  return_indices=True)
            out = torch.zeros_like(f).flatten(2)
            out.scatter_add_(2, idx.flatten(2), signal.flatten(2))
            signal = out.view_as(f)
        elif isinstance(m, nn.Linear):
            signal = signal @ m.weight.double()
        elif isinstance(m, nn.Flatten):
            signal = signal.view_as(f)
    return signal


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
@pytest.mark.parametrize("pool", ["max", "conv"])
def test_rules_against_slow_float64_reference(rule, pool):
    model = small_sequential(pool)
    lens = zf.Lens(model, input_size=(1, 16, 16))
    torch.manual_seed(5)
    x = torch.randn(1, 16, 16)
    for info in [lens.table[1], lens.table[-1], lens.table[-2]]:
        layer = info.name
        stop = next(i for i, m in enumerate(model) if m is info.module)
        p = zf.project(lens, x, layer, method=rule)

        def seed_fn(a, p=p, rect=relu_follows(model, info.module)):
            s = torch.zeros_like(a)       # ZF's seed: the activation after the ReLU (1 for the class scores)
            unit = (0, p.channel, *p.position) if a.dim() == 4 else (0, p.channel)
            s[unit] = a[unit].clamp(min=0) if rect else 1
            return s

        ref = slow_rule_reference(model, x[None], stop, seed_fn, rule)
        assert rel_err(p.pixels, ref[0]) < 1e-5, (layer, rule)


def odd_geometry_net(seed):
    """Strides, dilation, groups, asymmetric kernels and padding, ceil-mode and dilated pooling, dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, (5, 3), stride=(2, 1), padding=(2, 0)), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.Dropout(0.5), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2, dilation=(1, 2), ceil_mode=True),
        nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(6, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
def test_cropped_backward_odd_geometry_and_borders(rule):
    """project() on a sequential net backpropagates on the seed's support only (the cropped backward);
    whatever the geometry and wherever the unit (corners, edges, centre), it equals the full float64 walk."""
    for seed in range(3):
        model = odd_geometry_net(seed)
        lens = zf.Lens(model, input_size=(3, 37, 30))
        x = torch.randn(3, 37, 30)
        fwd = lens.forward(x)
        convs = [i for i in lens.table if i.kind == "conv"]
        for k, info in enumerate(convs):
            assert crop.plan(lens, (3, 37, 30), info.path) is not None, "the cropped path was not taken"
            stop = next(i for i, m in enumerate(model) if m is info.module)
            H, W = fwd.activations[info.path].shape[2:]
            for pos in [(0, 0), (H - 1, W - 1), (0, W - 1), (H // 2, W // 3)]:
                p = zf.project(lens, x, info.name, k % 3, position=pos, method=rule)

                def seed_fn(a, p=p, rect=relu_follows(model, info.module)):
                    s = torch.zeros_like(a)   # ZF's seed: the activation after the ReLU (1 if none follows)
                    unit = (0, p.channel, *p.position)
                    s[unit] = a[unit].clamp(min=0) if rect else 1
                    return s

                ref = slow_rule_reference(model, x[None], stop, seed_fn, rule)
                assert rel_err(p.pixels, ref[0]) < 1e-5, (seed, info.name, pos, rule)
        # a whole map as the seed (its support is the whole map)
        p = zf.project(lens, x, convs[-1].name, 1, position="map", method=rule)
        ref = slow_rule_reference(model, x[None], len(model) - 4,
                                  lambda a: torch.zeros_like(a).index_copy_(1, torch.tensor([1]),
                                                                           a[:, 1:2].clamp(min=0)), rule)
        assert rel_err(p.pixels, ref[0]) < 1e-5


class StandardisedConv(nn.Conv2d):
    """A conv with its own forward (weight standardisation): the cropped backward must not assume conv2d."""

    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std((1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_module_subclass_with_own_forward_is_backpropagated_by_autograd(rule):
    project_mod = __import__("importlib").import_module("zfwidgets.core.project")
    torch.manual_seed(9)
    model = nn.Sequential(StandardisedConv(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 5, 3), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.randn(3, 14, 14)
    model(x[None])
    lens = zf.Lens(model, input_size=(3, 14, 14))
    fwd = lens.forward(x)
    assert crop.plan(lens, (3, 14, 14), lens.table[1].path) is None
    p = zf.project(lens, x, lens.table[1].name, 2, position=(1, 1), method=rule)
    ref = reference_with_module_hooks(model, x, lens.table[1].path, 2, (1, 1), rule)
    assert rel_err(p.pixels, ref) < 1e-5


def test_overlapping_pool_needs_scatter_add():
    """max_unpool2d (which writes instead of adding) disagrees with the exact projection; ours agrees."""
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision("alexnet")
    x = torch.randn(3, 224, 224)
    p = zf.project(lens, x, "conv2", position="map")
    steps = dict(deconvnet_steps(lens, x, "conv2", p.channel, position="map", dtype=torch.float64))
    assert rel_err(p.pixels, steps["features.0"][0]) < 1e-5
    # the same walk with max_unpool2d at the pool gives a visibly different reconstruction
    chain = [m for m in lens.model.features[:4]]
    with torch.no_grad():
        a = chain[1](chain[0](x[None]))
        _, idx = F.max_pool2d(a, 3, 2, return_indices=True)
        b = chain[3](F.max_pool2d(a, 3, 2))
    sig = torch.zeros_like(b)
    sig[0, p.channel] = b[0, p.channel].clamp(min=0)
    down = torch.nn.grad.conv2d_input(a.shape[:1] + (64, 27, 27), lens.model.features[3].weight, sig, 1, 2)
    unpooled = F.max_unpool2d(down.clamp(min=0), idx, 3, 2, output_size=a.shape[-2:])
    wrong = torch.nn.grad.conv2d_input(x[None].shape, lens.model.features[0].weight, unpooled.clamp(min=0), 4, 2)
    cos = F.cosine_similarity(wrong.flatten(), p.pixels.flatten(), dim=0)
    assert cos < 0.99


class RefRule(torch.autograd.Function):
    """Reference rectifier for the hook-based references below (independent of zfwidgets.core.rules)."""

    @staticmethod
    def forward(ctx, x, rule):
        ctx.rule = rule
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (f,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return g.clamp(min=0), None
        if ctx.rule == "guided":
            return g.clamp(min=0) * (f > 0), None
        return g * (f > 0), None


def reference_with_module_hooks(model, x, layer_path, channel, position, rule, patch_functional=None):
    """float64 copy; every nn.ReLU call's output replaced (per call) by RefRule of its input."""
    m = copy.deepcopy(model).double().eval()
    handles = []
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
            handles.append(mod.register_forward_hook(lambda mod, inp, out: RefRule.apply(inp[0], rule)))
    acts = {}
    target = dict(m.named_modules())[layer_path]
    handles.append(target.register_forward_hook(lambda mod, inp, out: acts.setdefault("a", out)))
    xd = x.double()[None].requires_grad_(True)
    m(xd)
    for h in handles:
        h.remove()
    a = acts["a"]
    sel = a[0, channel] if position is None else a[0, channel, position[0], position[1]]
    (g,) = torch.autograd.grad(sel, xd)
    return g[0]


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_resnet18_inplace_reused_relu(rule):
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision("resnet18")
    lens.input_size = (3, 64, 64)
    torch.manual_seed(1)
    x = torch.randn(3, 64, 64)
    # a conv deep in layer3: its input went through block ReLUs that are one module called twice
    info = lens.layer_info("layer3.1.conv2")
    p = zf.project(lens, x, info.path, method=rule)
    ref = reference_with_module_hooks(lens.model, x, info.path, p.channel, p.position, rule)
    assert rel_err(p.pixels, ref) < 1e-5
    assert lens.model.relu.inplace is True  # the user's model is untouched


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_densenet121_functional_relu(rule, monkeypatch):
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision("densenet121")
    lens.input_size = (3, 64, 64)
    torch.manual_seed(2)
    x = torch.randn(3, 64, 64)
    # the classifier sits behind DenseNet.forward's functional F.relu(features, inplace=True)
    p = zf.project(lens, x, "classifier", method=rule)
    import torchvision.models.densenet as dn
    shim = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    shim.relu = lambda t, inplace=False: RefRule.apply(t, rule)
    monkeypatch.setattr(dn, "F", shim)
    ref = reference_with_module_hooks(lens.model, x, "classifier", p.channel, None, rule)
    assert rel_err(p.pixels, ref) < 1e-5
    monkeypatch.undo()
    # without the functional rule applied the answer would differ: check the test can tell
    ref_plain = reference_with_module_hooks(lens.model, x, "classifier", p.channel, None, "gradient")
    assert rel_err(p.pixels, ref_plain) > 1e-3


def test_other_activations_warn_with_kinds_and_counts_on_the_path():
    """Issue 28 item 8: the warning names the kinds and counts of the activations other than ReLU that the
    projection goes back through, and only those: the GELU after conv2 is not below conv2; nothing is below
    conv1; the exact gradient never warns."""
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.LeakyReLU(0.1), nn.Conv2d(3, 2, 3), nn.GELU(),
                          nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    lens = zf.Lens(model, input_size=(1, 8, 8))
    x = torch.randn(1, 8, 8)
    with pytest.warns(UserWarning, match=r"below 'conv2'.*\(1 LeakyReLU\)") as rec:
        zf.project(lens, x, "conv2", method="guided")
    assert not any("GELU" in str(w.message) for w in rec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zf.project(lens, x, "conv1", method="guided")        # no other activation below conv1
        zf.project(lens, x, "conv2", method="gradient")      # exact: no warning
    with pytest.warns(UserWarning, match=r"\(1 GELU, 1 LeakyReLU\)"):
        zf.project(lens, x, "fc3", method="deconvnet")


def test_other_activations_warning_is_short_on_efficientnet():
    """EfficientNet-B0's 49 SiLUs and 16 sigmoid gates: a count per kind (the warning listed every module,
    2,037 characters)."""
    from zfwidgets.core.project import other_activations_below
    torch.manual_seed(0)
    lens = zf.Lens(torchvision.models.efficientnet_b0().eval(), input_size=(3, 64, 64))
    counts = other_activations_below(lens, lens.resolve("features.8")[1])
    assert counts == {"SiLU": 49, "Sigmoid": 16}
    with pytest.warns(UserWarning) as rec:
        zf.project(lens, torch.randn(3, 64, 64), "features.2", method="guided")
    msg = [str(w.message) for w in rec if "ReLUs only" in str(w.message)]
    assert len(msg) == 1 and len(msg[0]) < 300 and "SiLU" in msg[0]


@pytest.mark.parametrize("arch,layers", [("resnet18", ["layer3.1", "fc"]),
                                         ("densenet121", ["transition2", "classifier"])])
def test_paper_form_walks_the_graph_of_resnet_and_densenet(arch, layers):
    """deconvnet_steps on a DAG: both branches at an add, channels split at a concatenation, batch norm as its
    per-channel scale; the pixels equal project(method="deconvnet") (itself checked against captum above)."""
    from zfwidgets.core.graph import Graph
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision(arch)
    lens.input_size = (3, 64, 64)
    torch.manual_seed(1)
    x = torch.randn(3, 64, 64)
    graph = Graph.of(lens)
    for layer in layers:
        p = zf.project(lens, x, layer, method="deconvnet")
        steps = deconvnet_steps(lens, x, layer, p.channel, position=p.position or "max", dtype=torch.float64)
        assert rel_err(p.pixels, steps[-1][1][0]) < 1e-5
        names = [n for n, _ in steps]
        below = dict(steps)
        target = graph.node_of(lens.resolve(layer)[1])
        for node in graph.ancestors(target):
            if node.kind == "merge":
                srcs = [graph.nodes[i] for i in node.inputs]
                label = {s.name: (node.name if len(srcs) == 1 else f"{node.name}:{s.name}") for s in srcs}
                assert all(label[s.name] in below for s in srcs), node.name   # every branch
                if "cat" in node.name:
                    chans = [below[label[s.name]].shape[1] for s in srcs]
                    assert chans == [s.out_shape[1] for s in srcs]
            elif node.kind == "window" and node.module is not None:
                assert node.name in names
    # batch norm in eval mode is its per-channel scale
    bn = lens.model.get_submodule("layer1.0.bn1" if arch == "resnet18" else "features.norm0")
    steps = dict(deconvnet_steps(lens, x, layers[0], 0, position=(0, 0), dtype=torch.float64))
    name = "layer1.0.bn1" if arch == "resnet18" else "features.norm0"
    after = next(v for k, v in steps.items() if k == graph.nodes[graph.node_of(name).users[0]].name)
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).double().view(1, -1, 1, 1)
    torch.testing.assert_close(steps[name], after * scale)
