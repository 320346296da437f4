"""Models whose output is not N x K class scores, layers whose output is not one tensor, models that are not
float32 (issue 28, items 1, 3, 4): each failure reproduced, and the results against plain model calls."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zfwidgets as zf
from zfwidgets.core.outputs import Pick, SegmentationScores, output_selector
from zfwidgets.inference import occluded_run

from .conftest import assert_same_state, model_state


class TwoHeads(nn.Module):
    """A classifier with an auxiliary head, returning a dict (or a tuple)."""

    def __init__(self, as_tuple=False):
        super().__init__()
        self.as_tuple = as_tuple
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.logits = nn.Linear(8, 5)
        self.aux = nn.Linear(8, 2)

    def forward(self, x):
        f = self.pool(F.relu(self.conv2(F.relu(self.conv1(x))))).flatten(1)
        return (self.logits(f), self.aux(f)) if self.as_tuple else {"logits": self.logits(f), "aux": self.aux(f)}


class TinySeg(nn.Module):
    """A small encoder-decoder: N x 4 x H x W class maps at the input's size."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.head(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Split(nn.Module):
    """A block returning a list of two maps (as HRNet's stages do)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(6, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 1)

    def forward(self, x):
        return [self.a(x), self.b(x)]


class ListNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.split = Split()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a, b = self.split(F.relu(self.conv1(x)))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv2(a + b)), 1).flatten(1))


def occluded(x, box, fill):
    xo = x.clone()
    y0, x0, y1, x1 = (int(v) for v in box)
    xo[:, y0:y1, x0:x1] = fill.view(-1, 1, 1)
    return xo


def naive_occlusion(score, x, boxes, fill, target):
    """p(target) of every occluded image, one plain model call each."""
    with torch.no_grad():
        return torch.stack([score(occluded(x, b, fill)[None]).softmax(1)[0, target] for b in boxes.view(-1, 4)])


# ----- item 1: the output selector ------------------------------------------------------------------
def test_dict_output_refused_when_built_saying_which_output_to_pass():
    with pytest.raises(ValueError, match=r"dict with keys \['logits', 'aux'\]: pass Lens\(model, output='logits'\)"):
        zf.Lens(TwoHeads(), input_size=(3, 16, 16))
    with pytest.raises(ValueError, match=r"output=0\)"):
        zf.Lens(TwoHeads(as_tuple=True), input_size=(3, 16, 16))
    with pytest.raises(ValueError, match=r"dict with keys \['logits', 'aux'\]; pick one"):
        zf.Lens(TwoHeads(), input_size=(3, 16, 16), output="scores")
    with pytest.raises(ValueError, match=r"0 to 1"):
        zf.Lens(TwoHeads(as_tuple=True), input_size=(3, 16, 16), output=2)
    with pytest.raises(TypeError, match="output= takes"):
        zf.Lens(TwoHeads(), input_size=(3, 16, 16), output=1.5)


@pytest.mark.parametrize("as_tuple, output", [(False, "logits"), (True, 0), (False, lambda out: out["logits"])])
def test_head_selected_everywhere(as_tuple, output):
    torch.manual_seed(0)
    model = TwoHeads(as_tuple)
    before = model_state(model)
    lens = zf.Lens(model, input_size=(3, 16, 16), output=output)
    score = (lambda x: model(x)[0]) if as_tuple else (lambda x: model(x)["logits"])
    x = torch.rand(3, 16, 16)
    with torch.no_grad():
        ref = score(x[None])
    torch.testing.assert_close(lens.predict(x), ref.softmax(1)[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lens.forward(x).logits, ref, rtol=1e-6, atol=1e-7)
    batch = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lens.run(batch)[0], score(batch), rtol=1e-6, atol=1e-6)
    occ = zf.occlusion(lens, x, size=6, stride=5, target=3, progress=False)
    want = naive_occlusion(score, x, occ.boxes, lens.fill_value, 3)
    torch.testing.assert_close(occ.probability.flatten(), want, rtol=1e-5, atol=1e-6)
    assert_same_state(before, model_state(model))


def test_segmentation_scores_pool_the_class_map():
    torch.manual_seed(0)
    model = TinySeg()
    with pytest.warns(UserWarning, match=r"tensor of shape \(1, 4, 12, 12\): pass output=zf.SegmentationScores\(\)"):
        plain = zf.Lens(model, input_size=(3, 12, 12))
    with pytest.raises(ValueError, match=r"pass output=zf.SegmentationScores\(\)"):
        plain.predict(torch.rand(3, 12, 12))
    x = torch.rand(3, 12, 12)
    with torch.no_grad():
        full = model(x[None])
    mask = np.zeros((12, 12), bool)
    mask[2:5, 7:11] = True
    mask[9, 1] = True
    for sel, ref in [(SegmentationScores(), full.mean((-2, -1))),
                     (SegmentationScores(box=(3, 1, 9, 6)), full[..., 3:9, 1:6].mean((-2, -1))),
                     (SegmentationScores(box=(3, 1, 9, 6), reduce="max"), full[..., 3:9, 1:6].amax((-2, -1))),
                     (SegmentationScores(mask=mask), full[..., torch.from_numpy(mask)].mean(-1))]:
        lens = zf.Lens(model, input_size=(3, 12, 12), output=sel)
        torch.testing.assert_close(lens.forward(x).logits, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="outside the 12x12"):
        zf.Lens(model, input_size=(3, 12, 12), output=SegmentationScores(box=(0, 0, 20, 4)))
    with pytest.raises(ValueError, match=r"mask is \(4, 4\) but the class map is 12 x 12"):
        zf.Lens(model, input_size=(3, 12, 12), output=SegmentationScores(mask=np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="box or a mask"):
        SegmentationScores(box=(0, 0, 2, 2), mask=mask)


def test_region_score_under_occlusion_equals_plain_calls():
    """Occlusion answers "what does this region do to the score of class k in the box"."""
    torch.manual_seed(1)
    model = TinySeg()
    before = model_state(model)
    box = (2, 2, 8, 9)
    lens = zf.Lens(model, input_size=(3, 12, 12), output=SegmentationScores(box=box))
    x = torch.rand(3, 12, 12)
    occ = zf.occlusion(lens, x, size=4, stride=4, target=2, progress=False)
    want = naive_occlusion(lambda b: model(b)[..., 2:8, 2:9].mean((-2, -1)), x, occ.boxes, lens.fill_value, 2)
    torch.testing.assert_close(occ.probability.flatten(), want, rtol=1e-5, atol=1e-6)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("kind", ["dict", "segmentation"])
def test_lesion_reads_the_selected_scores(kind):
    """Lesions (and every analysis) read the scores through the selector: against a plain call with the
    channels zeroed by a hook."""
    torch.manual_seed(2)
    if kind == "dict":
        model, output, score = TwoHeads(), "logits", (lambda b: model(b)["logits"])
    else:
        model, output = TinySeg(), SegmentationScores(box=(0, 4, 6, 12))
        score = (lambda b: model(b)[..., 0:6, 4:12].mean((-2, -1)))
    before = model_state(model)
    lens = zf.Lens(model, input_size=(3, 12, 12), output=output)
    x, y = torch.rand(6, 3, 12, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    r = zf.lesion(lens, x, y, "conv1", channels=[1, 4], progress=False)

    def zero(m, a, o):
        o = o.clone()
        o[:, [1, 4]] = 0
        return o
    with torch.no_grad():
        plain = score(x)
        h = model.conv1.register_forward_hook(zero)
        lesioned = score(x)
        h.remove()
    np.testing.assert_array_equal(r.predictions_before, plain.argmax(1).numpy())
    np.testing.assert_array_equal(r.predictions_after, lesioned.argmax(1).numpy())
    np.testing.assert_allclose(r.probabilities_after, lesioned.softmax(1).numpy(), rtol=1e-5, atol=1e-6)
    assert_same_state(before, model_state(model))


def test_torchvision_segmentation_model():
    torch.manual_seed(0)
    lens = zf.Lens.from_torchvision("deeplabv3_mobilenet_v3_large", input_size=(3, 64, 64))
    assert lens.class_names[:2] == ["__background__", "aeroplane"] and len(lens.class_names) == 21
    assert isinstance(lens.output, SegmentationScores) and lens.output.key == "out"
    assert lens.transform.crop == [64, 64] and lens.transform.resize == 64
    model = lens.model
    before = model_state(model)
    img = (np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)
    x = lens.to_input(img)
    assert x.shape == (1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["out"]
    torch.testing.assert_close(lens.predict(img), ref.mean((-2, -1)).softmax(1)[0], rtol=1e-5, atol=1e-6)
    boxes = torch.tensor([[0, 0, 16, 16], [24, 30, 40, 50]])
    logits, _ = occluded_run(lens, x, boxes, lens.fill_value)
    with torch.no_grad():
        want = torch.cat([model(occluded(x[0], b, lens.fill_value)[None])["out"].mean((-2, -1)) for b in boxes])
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)
    assert_same_state(before, model_state(model))


def test_selectors():
    assert output_selector(None) is None and isinstance(output_selector("a"), Pick)
    f = lambda o: o  # noqa: E731
    assert output_selector(f) is f
    seg = SegmentationScores(key="out", mask=torch.eye(4, dtype=torch.bool))
    assert seg({"out": torch.arange(16.).view(1, 1, 4, 4)}).tolist() == [[7.5]]
    with pytest.raises(ValueError, match="pass key="):
        SegmentationScores()({"out": torch.zeros(1, 2, 4, 4)})
    with pytest.raises(ValueError, match="non-negative"):
        SegmentationScores(mask=-torch.ones(4, 4))


# ----- item 3: layers whose output is not one tensor -----------------------------------------------
def test_layer_returning_a_list_is_left_out_unless_asked():
    torch.manual_seed(0)
    model = ListNet()
    before = model_state(model)
    x = torch.rand(3, 10, 10)
    for lens in (zf.Lens(model, input_size=(3, 10, 10)), zf.Lens(model)):   # probed when built, or not
        with torch.no_grad():
            torch.testing.assert_close(lens.predict(x), model(x[None]).softmax(1)[0], rtol=1e-6, atol=1e-7)
        p = zf.project(lens, x, "conv2", 1, position=(4, 5), method="gradient")
        leaf = x[None].clone().requires_grad_(True)
        out = {}
        h = model.conv2.register_forward_hook(lambda m, a, o: out.setdefault("y", o))
        model(leaf)
        h.remove()
        grad, = torch.autograd.grad(out["y"][0, 1, 4, 5], leaf)
        value = float(out["y"][0, 1, 4, 5].clamp(min=0))     # ZF's seed: conv2's activation after F.relu
        assert value > 0
        torch.testing.assert_close(p.pixels, grad[0] * value, rtol=1e-5, atol=1e-7)
        with pytest.raises(TypeError, match="layer 'split' returns list, not a tensor"):
            lens.run(x[None], ["split"])
        with pytest.raises(TypeError, match="returns list"):
            lens.forward(torch.rand(3, 10, 10), extra_layers=["split"])
        lens.predict(torch.rand(3, 10, 10))      # a layer asked once is not asked again
    assert "split" not in zf.Lens(model, input_size=(3, 10, 10)).layers
    assert_same_state(before, model_state(model))


def test_hrnet_single_image():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("hrnet_w18_small").eval()
    lens = zf.Lens(model, input_size=(3, 64, 64))
    x = torch.rand(3, 64, 64)
    with torch.no_grad():
        ref = model(x[None]).softmax(1)[0]
    torch.testing.assert_close(lens.predict(x), ref, rtol=1e-5, atol=1e-7)
    assert zf.project(lens, x, "conv1", 0).pixels.shape == (3, 64, 64)


# ----- item 4: the model's dtype ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_model_dtype_is_honoured(dtype, tol):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).to(dtype)
    before = model_state(model)
    lens = zf.Lens(model, input_size=(3, 32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    x = lens.to_input(img)
    assert x.dtype == dtype and lens.fill_value.dtype == dtype and lens.dtype == dtype
    assert lens.to_batch([img, img]).dtype == dtype and lens.to_input(torch.rand(3, 32, 32)).dtype == dtype
    mean, std = torch.tensor([.5, .4, .3], dtype=torch.float64), torch.tensor([.2, .25, .3], dtype=torch.float64)
    ref_x = ((torch.from_numpy(img).double().permute(2, 0, 1) / 255 - mean.view(3, 1, 1))
             / std.view(3, 1, 1)).to(dtype)[None]
    torch.testing.assert_close(x, ref_x, rtol=tol, atol=tol)
    with torch.no_grad():
        ref = model.eval()(x).softmax(1)[0]
    model.train()
    torch.testing.assert_close(lens.predict(img), ref, rtol=tol, atol=tol)
    occ = zf.occlusion(lens, img, size=12, stride=10, target=2, progress=False)
    assert occ.probability.shape == (3, 3)
    logits, _ = occluded_run(lens, x, occ.boxes.view(-1, 4), lens.fill_value)
    assert logits.dtype == dtype
    with torch.no_grad():
        model.eval()
        want = naive_occlusion(model, x[0], occ.boxes, lens.fill_value, 2)
        model.train()
    torch.testing.assert_close(logits.softmax(1)[:, 2], want, rtol=tol, atol=tol)
    p = zf.project(lens, img, "layer2.0", 3, method="gradient")       # against autograd in the model's dtype
    leaf, out = x.clone().requires_grad_(True), {}
    h = model.layer2[0].register_forward_hook(lambda m, a, o: out.setdefault("y", o))
    model.eval()
    model(leaf)
    model.train()
    h.remove()
    grad, = torch.autograd.grad(out["y"][0, 3][p.position], leaf)
    grad = grad * out["y"][0, 3][p.position].detach()      # ZF's seed: the block's activation (it ends in a ReLU)
    assert p.pixels.dtype == dtype and float(grad.abs().max()) > 0
    torch.testing.assert_close(p.pixels, grad[0], rtol=tol, atol=tol * float(grad.abs().max()))
    # the analysis reports its probabilities in float32
    torch.testing.assert_close(occ.probability.flatten(), want.float(), rtol=max(tol, 1e-6), atol=max(tol, 1e-6))
    assert_same_state(before, model_state(model))
