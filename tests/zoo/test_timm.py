"""Lens.from_timm on random weights (a ResNet and an EfficientNet, 64 x 64 input): layer names against timm's
metadata and the forward order, projections against plain autograd (float64) and captum, occlusion against
one naive forward per position, weights from a checkpoint file, and the errors."""
import sys
import warnings

import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets.core.project import deconvnet_steps

timm = pytest.importorskip("timm")

from ..analysis.test_occlusion import naive  # noqa: E402
from ..core.test_projection_references import captum_reference, float64_activation, rel_err  # noqa: E402

SIZE = (3, 64, 64)


@pytest.fixture(scope="module", params=["resnet10t", "efficientnet_b0"])
def timm_lens(request):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zf.Lens.from_timm(request.param, input_size=SIZE)


def forward_order(model, x):
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def test_layer_names(timm_lens):
    model, cfg = timm_lens.model, timm_lens.model.pretrained_cfg
    names = timm_lens.layers
    modules = dict(model.named_modules())
    assert all(n in modules for n in names)
    assert names[0] == cfg["first_conv"] and names[-1] == cfg["classifier"]   # timm's own metadata
    order = forward_order(model, torch.zeros(1, *SIZE))
    assert sorted(names, key=order.index) == names                          # in forward order
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    # every convolution is a layer or inside one (a block)
    assert all(any(c == n or c.startswith(n + ".") for n in names) for c in convs)
    assert timm_lens.input_size == SIZE and len(timm_lens.class_names) == 1000
    assert timm_lens.class_names[:2] == ["tench", "goldfish"]


def test_preprocessing_is_timms(timm_lens):
    from PIL import Image
    img = Image.fromarray((torch.rand(90, 120, 3) * 255).byte().numpy())
    cfg = timm.data.resolve_model_data_config(timm_lens.model)
    cfg["input_size"] = SIZE
    ref = timm.data.create_transform(**cfg, is_training=False)(img)
    assert torch.equal(timm_lens.to_input(img)[0], ref)
    assert timm_lens.mean == pytest.approx(list(cfg["mean"])) and timm_lens.std == pytest.approx(list(cfg["std"]))


def test_gradient_equals_autograd(timm_lens):
    torch.manual_seed(1)
    x = torch.randn(SIZE)
    for info in [timm_lens.table[1], timm_lens.table[len(timm_lens.table) // 2]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = zf.project(timm_lens, x, info.name, method="gradient")
        xd, out = float64_activation(timm_lens.model, x, info.path)
        a = out[0, p.channel]
        top = a.detach()
        assert float(top[p.position]) == pytest.approx(p.activation, rel=1e-4, abs=1e-5)
        assert float(top.max()) == pytest.approx(p.activation, rel=1e-4, abs=1e-5)   # the strongest position
        (grad,) = torch.autograd.grad(a[p.position], xd)
        # ZF's seed: the unit's activation where the layer is rectified (tests/core/test_units.py), else 1
        seed = max(float(top[p.position]), 0.0) if timm_lens.rectified(info.name) else 1.0
        assert rel_err(p.pixels, grad[0] * seed) < 1e-4


def test_resnet_rules_equal_captum_and_the_paper_form():
    lens = zf.Lens.from_timm("resnet10t", input_size=SIZE)
    torch.manual_seed(2)
    x = torch.randn(SIZE)
    info = next(i for i in lens.table if i.name == "layer3.0")
    for method in ("deconvnet", "guided"):
        p = zf.project(lens, x, info.name, method=method)
        # captum seeds with 1; ZF with the unit's activation (a ResNet block ends with its ReLU)
        _, out = float64_activation(lens.model, x, info.path)
        value = max(float(out[0, p.channel, p.position[0], p.position[1]].detach()), 0.0)
        ref = captum_reference(lens, x, info.path, method, p.channel, p.position) * value
        assert rel_err(p.pixels, ref) < 1e-4
    d = zf.project(lens, x, info.name, method="deconvnet")
    steps = deconvnet_steps(lens, x, info.name, d.channel, position=d.position, dtype=torch.float64)
    assert rel_err(d.pixels, steps[-1][1][0]) < 1e-5


def test_efficientnet_paper_form_and_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = zf.Lens.from_timm("efficientnet_b0", input_size=SIZE)
    torch.manual_seed(3)
    x = torch.randn(SIZE)
    with pytest.warns(UserWarning, match=r"\d+ SiLU"):  # SiLU is not a ReLU: said (counted), not silently wrong
        d = zf.project(lens, x, "blocks.2.0", method="deconvnet")
    # the graph walk (F.batch_norm of timm's BatchNormAct2d, squeeze-excitation gates) gives the same
    steps = deconvnet_steps(lens, x, "blocks.2.0", d.channel, position=d.position, dtype=torch.float64)
    assert rel_err(d.pixels, steps[-1][1][0]) < 1e-5


def test_occlusion_equals_one_forward_per_position(timm_lens):
    torch.manual_seed(4)
    img = (torch.rand(64, 64, 3) * 255).byte().numpy()
    x = timm_lens.to_input(img)
    layer = [i.name for i in timm_lens.table if i.kind != "fc"][-1]
    occ = zf.occlusion(timm_lens, img, size=24, stride=20, target=7, layer=layer, progress=False)
    channel, target, rows = naive(timm_lens, x, layer, 24, 20, timm_lens.fill_value, 7)
    assert occ.channel == channel and occ.target == target == 7
    assert torch.allclose(occ.probability, torch.tensor([[r[1] for r in row] for row in rows]), atol=1e-5)
    ref = torch.tensor([[r[0] for r in row] for row in rows])
    assert torch.allclose(occ.feature_map, ref, rtol=1e-4, atol=1e-4)


def test_weights_from_a_file_and_a_state_dict(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(5)
    state = timm.create_model("resnet10t").state_dict()
    path = tmp_path / "resnet10t.safetensors"
    save_file(state, str(path))
    for weights in (path, str(path), state):
        lens = zf.Lens.from_timm("resnet10t", weights=weights, input_size=SIZE)
        assert all(torch.equal(v, state[k]) for k, v in lens.model.state_dict().items())
        assert not lens.model.training


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'.*resnet10t"):
        zf.Lens.from_timm("resnet10x")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        zf.Lens.from_timm("resnet10t", weights=tmp_path / "nothing.pth")
    with pytest.raises(TypeError, match="weights must be"):
        zf.Lens.from_timm("resnet10t", weights=3)
    with pytest.raises(TypeError, match="name must be"):
        zf.Lens.from_timm(None)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"zfwidgets\[timm\]"):
        zf.Lens.from_timm("resnet10t")
