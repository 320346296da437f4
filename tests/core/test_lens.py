"""The Lens: layer naming, image handling, the cached forward, and model hygiene."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import zfwidgets as zf
from zfwidgets.core.project import deconvnet_steps

from .conftest import assert_same_state, model_state, small_sequential


@pytest.fixture
def lens():
    return zf.Lens(small_sequential(), input_size=(1, 16, 16), class_names=list("abcde"))


def test_friendly_names_and_paths(alexnet):
    assert alexnet.layers == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert alexnet.resolve("conv5")[1] == "features.10"
    assert alexnet.resolve("features.10")[0] == "conv5"
    assert alexnet.resolve(alexnet.model.classifier[6])[0] == "fc8"
    assert alexnet.resolve("features.12")[1] == "features.12"  # any module by path


def test_unknown_layer_lists_valid_names(alexnet):
    with pytest.raises(ValueError, match=r"conv1.*fc8"):
        alexnet.resolve("conv9")
    with pytest.raises(TypeError, match="layer must be"):
        alexnet.resolve(3)
    with pytest.raises(ValueError, match="not part of this model"):
        alexnet.resolve(nn.Conv2d(1, 1, 1))


def test_model_without_conv_layers_is_refused():
    with pytest.raises(ValueError, match="no Conv2d"):
        zf.Lens(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        zf.Lens("alexnet")


def test_images_in_all_forms(lens):
    arr = (np.arange(256, dtype=np.uint8).reshape(16, 16))
    x_arr = lens.to_input(arr)
    x_pil = lens.to_input(Image.fromarray(arr))
    assert x_arr.shape == (1, 1, 16, 16) and torch.equal(x_arr, x_pil)
    assert torch.allclose(x_arr[0, 0], torch.from_numpy(arr).float() / 255)
    with pytest.warns(UserWarning, match="converted a RGB image to L"):
        x_rgb = lens.to_input(np.stack([arr] * 3, -1))
    assert torch.allclose(x_rgb, x_arr, atol=1 / 255)
    t = torch.rand(1, 16, 16)
    assert torch.equal(lens.to_input(t)[0], t) and torch.equal(lens.to_input(t[None]), t[None])


@pytest.mark.parametrize("bad, err, match", [
    (torch.rand(2, 1, 16, 16), ValueError, "batch of 2"),
    (torch.rand(3, 16, 16), ValueError, "1-channel"),
    (torch.rand(1, 8, 8), ValueError, "16x16"),
    (torch.full((1, 16, 16), float("nan")), ValueError, "NaN"),
    (torch.zeros(1, 16, 16, dtype=torch.uint8), TypeError, "must be float"),
    (np.zeros((0, 5), np.uint8), ValueError, "empty"),
    (np.zeros((16, 16), np.float32), TypeError, "uint8"),
    ("not/a/file.png", FileNotFoundError, "file.png"),
    (42, TypeError, "expected a PIL image"),
])
def test_bad_images(lens, bad, err, match):
    before = model_state(lens.model)
    with pytest.raises(err, match=match):
        zf.project(lens, bad, "conv1")
    assert_same_state(before, model_state(lens.model))


def test_bad_channel_position_method(lens):
    x = torch.rand(1, 16, 16)
    with pytest.raises(ValueError, match=r"channel 4 is out of range.*4 channels"):
        zf.project(lens, x, "conv1", 4)
    with pytest.raises(ValueError, match="outside"):
        zf.project(lens, x, "conv1", 0, position=(16, 0))
    with pytest.raises(TypeError, match="position"):
        zf.project(lens, x, "conv1", 0, position=(1.5, 0))
    with pytest.raises(ValueError, match="fully connected"):
        zf.project(lens, x, "fc4", 0, position=(0, 0))
    with pytest.raises(ValueError, match="method must be one of"):
        zf.project(lens, x, "conv1", method="lrp")


def test_second_projection_runs_no_forward(lens):
    calls = []
    h = lens.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        x = torch.rand(1, 16, 16)
        p1 = zf.project(lens, x, "conv2")
        p2 = zf.project(lens, x.clone(), "conv2", method="guided")
        p3 = zf.project(lens, x, "conv1", 1, position=(3, 3), method="gradient")
        assert len(calls) == 1
        assert p1.channel == p2.channel and not torch.equal(p1.pixels, p3.pixels)
        zf.project(lens, x + 0.1, "conv2")  # another image: one more forward
        assert len(calls) == 2
        with torch.no_grad():  # changed weights invalidate the cache
            lens.model[0].weight.mul_(1.01)
        zf.project(lens, x + 0.1, "conv2")
        assert len(calls) == 3
    finally:
        h.remove()


def test_repeated_projection_is_identical_to_fresh_lens(lens):
    x = torch.rand(1, 16, 16)
    for m in ["guided", "deconvnet", "gradient", "deconvnet"]:
        a = zf.project(lens, x, "conv2", method=m).pixels
        b = zf.project(zf.Lens(lens.model, input_size=(1, 16, 16)), x, "conv2", method=m).pixels
        assert torch.equal(a, b)


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_sequential()
        self.fail = False

    def forward(self, x):
        y = self.net[:3](x)
        if self.fail:
            raise RuntimeError("boom inside the user's forward")
        return self.net[3:](y)


def test_no_hook_or_state_survives_normal_and_failing_calls():
    model = Exploding()
    model.train()
    model.net[1].eval()           # mixed flags must come back exactly
    model.net[0].weight.requires_grad_(False)
    model.net[3].weight.grad = torch.ones_like(model.net[3].weight)
    lens = zf.Lens(model, input_size=(1, 16, 16))
    before = model_state(model)
    x = torch.rand(1, 16, 16)
    for method in ["deconvnet", "guided", "gradient"]:
        zf.project(lens, x, "net.3", method=method)
    lens.predict(x)
    lens.run(lens.to_batch([x, x]), ["net.0"], logits=False)
    deconvnet_steps(zf.Lens(model.net, input_size=(1, 16, 16)), x, "conv2")
    assert_same_state(before, model_state(model))
    model.fail = True
    for call in [lambda: zf.project(lens, x + 1, "net.3"), lambda: lens.predict(x + 2),
                 lambda: lens.run(lens.to_batch([x]), ["net.7"])]:
        with pytest.raises(RuntimeError, match="boom"):
            call()
        assert_same_state(before, model_state(model))


def test_capture_remove_is_safe_twice():
    from zfwidgets.core.capture import Capture
    m = small_sequential()
    cap = Capture(m, {"a": m[0]}, switches=True)
    with cap:
        m(torch.rand(1, 1, 16, 16))
        assert len(cap.switches) == 2
    cap.remove()
    cap.remove()
    assert all(not mod._forward_hooks for mod in m.modules())


def test_non_classification_output_is_refused():
    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    with pytest.warns(UserWarning, match="class scores N x K"):      # checked when the lens is built
        built = zf.Lens(Seg(), input_size=(1, 8, 8))
    assert built.layers == ["conv1"]                                # a backbone keeps its layers
    with pytest.raises(ValueError, match="class scores N x K"):
        built.predict(torch.rand(1, 8, 8))
    lens = zf.Lens(Seg())                                           # no size to check with: the first call says
    with pytest.raises(ValueError, match="class scores N x K"):
        lens.predict(torch.rand(1, 8, 8))


def test_switches_recorded_and_projection_image(lens):
    x = torch.rand(1, 16, 16)
    fwd = lens.forward(x)
    assert set(fwd.switches) == {"2", "5"} and fwd.switches["2"].shape == (1, 4, 8, 8)
    p = zf.project(lens, x, "conv2")
    img = p.to_image()
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    # zero maps to mid grey, the extreme to 0 or 255
    assert {int(img.min()), int(img.max())} & {0, 255}
    z = p.pixels == 0
    assert (img[..., 0][z[0].numpy()] == 128).all()


def test_from_torchvision_errors():
    with pytest.raises(ValueError, match="unknown torchvision classification model"):
        zf.Lens.from_torchvision("notanet")
    with pytest.raises(ValueError, match="unknown weights"):
        zf.Lens.from_torchvision("alexnet", "NOPE")
    with pytest.raises(TypeError, match="weights must be"):
        zf.Lens.from_torchvision("alexnet", 3)


def test_run_and_forward_record_the_same_activation_despite_inplace_relu(alexnet):
    torch.manual_seed(0)
    x = torch.randn(3, 224, 224)
    _, acts = alexnet.run(alexnet.to_input(x), ["conv1", "conv5"])
    fwd = alexnet.forward(x)
    assert (acts["conv5"] < 0).any()  # pre-ReLU output, not overwritten by AlexNet's inplace ReLU
    for name, path in [("conv1", "features.0"), ("conv5", "features.10")]:
        assert torch.allclose(acts[name], fwd.activations[path].detach(), atol=1e-5)


def test_batch_tensor_is_validated_as_a_whole(lens):
    """A batch tensor is checked in one pass: the bad image is named, a good batch comes back as a copy."""
    x = torch.randn((6,) + tuple(lens.input_size))
    out = lens.to_batch(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    x[3, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="image 3 of the batch contains NaN"):
        lens.to_batch(x)
    with pytest.raises(ValueError, match="channel"):
        lens.to_batch(torch.randn(4, lens.input_size[0] + 1, *lens.input_size[1:]))
    with pytest.raises(TypeError, match="float"):
        lens.to_batch(torch.zeros((2,) + tuple(lens.input_size), dtype=torch.uint8))
