"""The model's graph (core.graph): kinds, windows, shapes, names users see, the fx fallback, the lens fixes."""
import warnings

import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets.analysis.receptive import FieldMap, receptive_field
from zfwidgets.core.graph import Graph, macs
from zfwidgets.core.layers import sequential_modules


def lens_of(arch, side=64, **kw):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = zf.Lens.from_torchvision(arch, **kw)
    lens.input_size = (3, side, side)
    return lens


def test_chain_graph_kinds_windows_shapes(alexnet):
    g = Graph.of(alexnet)
    assert g.traced and g.is_chain and Graph.of(alexnet) is g          # cached on the lens
    conv1 = g.node_of(alexnet.resolve("conv1")[1])
    assert conv1.kind == "window" and conv1.window.kernel == (11, 11) and conv1.window.stride == (4, 4)
    assert conv1.window.padding == (2, 2) and conv1.out_shape == (1, 64, 55, 55)
    assert conv1.in_shapes == ((1, 3, 224, 224),)
    kinds = {n.name: n.kind for n in g.nodes}
    assert kinds["features.1"] == "pointwise" and kinds["avgpool"] == "global" and kinds["flatten"] == "global"
    assert kinds["classifier.1"] == "global" and g.nodes[0].kind == "input" and g.nodes[-1].kind == "output"
    # the one multiply-add count: 11*11*3 per output position of each of 64 maps, 55 x 55 positions
    assert macs(conv1.module, conv1.in_shapes[0], conv1.out_shape) == 64 * 3 * 11 * 11 * 55 * 55
    assert [p for p, _ in sequential_modules(alexnet.model)][13:15] == ["avgpool", "<flatten>"]


def test_resnet_graph_merges_and_names():
    lens = lens_of("resnet18")
    g = Graph.of(lens)
    assert g.traced and not g.is_chain
    add = g.node_of("layer1.0")          # the block's output: its last ReLU, after the add
    merge = g.nodes[add.inputs[0]]
    assert merge.kind == "merge" and len(merge.inputs) == 2
    assert lens.layers == ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                           "layer4.0", "layer4.1", "fc"]
    # dotted paths and the conv numbering of before keep working
    assert lens.resolve("layer1.0.conv2")[1] == "layer1.0.conv2"
    assert lens.resolve("conv5")[1] == "layer1.1.conv2" and lens.resolve("fc21")[1] == "fc"
    assert lens.resolve("layer1")[1] == "layer1"
    assert lens.layer_info("conv5").kind == lens.layer_info("layer1.1.conv2").kind == "conv"
    assert lens.layer_info("layer2.0").kind == "conv" and lens.layer_info("fc").kind == "fc"
    assert sequential_modules(lens.model) is None
    with pytest.raises(ValueError, match="valid layer names"):
        lens.resolve("layer9")


def test_dag_names_densenet_inception_googlenet():
    assert lens_of("densenet121").layers == ["conv0", "denseblock1", "transition1", "denseblock2", "transition2",
                                             "denseblock3", "transition3", "denseblock4", "classifier"]
    inc = lens_of("inception_v3", 96, init_weights=False, aux_logits=False)
    assert inc.model.AuxLogits is None                       # builder argument reached torchvision
    assert [n for n in inc.layers if n.startswith("Mixed")] == ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                                                               "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                                                               "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    goog = lens_of("googlenet", init_weights=False)
    assert goog.layers == ["conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
                           "inception4c", "inception4d", "inception4e", "inception5a", "inception5b", "fc"]
    assert not any(n.startswith("aux") for n in goog.layers)   # the auxiliary heads never run in eval mode


def test_inception_takes_299_without_weights():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = zf.Lens.from_torchvision("inception_v3", weights=None, aux_logits=False, init_weights=False,
                                        class_names=["a"] * 1000)
    assert lens.input_size == (3, 299, 299) and lens.transform.crop == 299 and lens.transform.resize == 342
    assert lens.class_names[0] == "a"


def test_inplace_activation_after_a_recorded_layer_is_handled():
    """MobileNetV3's in-place Hardswish right after classifier.0: run out of place during the recorded
    forward, flags given back."""
    lens = lens_of("mobilenet_v3_small")
    x = torch.randn(3, 64, 64)
    flags = [(p, m.inplace) for p, m in lens.model.named_modules() if hasattr(m, "inplace")]
    assert any(f for _, f in flags)
    p = zf.project(lens, x, "classifier.0", method="gradient")
    acts = lens.forward(x).activations["classifier.0"]
    with torch.no_grad():
        ref = lens.model.classifier[0](torch.flatten(lens.model.avgpool(lens.model.features(x[None])), 1))
    torch.testing.assert_close(acts.detach(), ref)
    assert p.channel == int(ref[0].argmax())
    assert [(q, m.inplace) for q, m in lens.model.named_modules() if hasattr(m, "inplace")] == flags


def test_channels_last_linear_is_refused_for_channel_features():
    lens = lens_of("convnext_tiny")
    x = torch.randn(3, 64, 64)
    with pytest.raises(ValueError, match="channels-last"):
        zf.project(lens, x, "features.1.0.block.3")
    with pytest.raises(ValueError, match="channels-last"):
        lens.run(x[None], ["features.1.0.block.3"])
    g = Graph.of(lens)
    node = g.node_of("features.1.0.block.3")
    assert node.kind == "pointwise" and node.channels_last and node.axes == (1, 2)
    # its block is an ordinary N x C x H x W layer
    assert zf.project(lens, x, "features.1.0", method="gradient").position is not None
    # stem 4x4 / 4, then the block's 7x7 depthwise conv (padding 3): map rows 2..8, pixels 8..36
    assert receptive_field(lens, "features.1.0", (5, 5)).as_tuple() == (8, 8, 36, 36)


class DataDependent(nn.Module):
    """fx cannot trace it (a branch on a tensor's value); its modules still run as a chain."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 2 * 2, 2)

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return self.fc(self.conv2(self.pool(self.relu(self.conv1(x)))).flatten(1))


class DataDependentSkip(DataDependent):
    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        h = self.relu(self.conv1(x))
        return self.fc(torch.flatten(self.conv2(self.pool(h + x)), 1))


def test_untraceable_model_falls_back_to_the_recorded_order(support_box):
    lens = zf.Lens(DataDependent(), input_size=(1, 8, 8))
    g = Graph.of(lens)
    assert not g.traced and "Error" in g.error and g.is_chain
    assert [n.name for n in g.nodes[1:-1]] == ["conv1", "relu", "pool", "conv2", "<flatten>", "fc"]
    assert lens.layers == ["conv1", "conv2", "fc3"]
    box = receptive_field(lens, "conv2", (1, 1))
    assert box.as_tuple() == support_box(lens.model, "conv2", [(1, 1)], (1, 8, 8))[0]
    x = torch.randn(1, 8, 8)
    p = zf.project(lens, x, "fc3", method="deconvnet")
    torch.testing.assert_close(zf.deconvnet_steps(lens, x, "fc3", p.channel)[-1][1][0], p.pixels)
    # a branching one: the geometry refuses clearly, everything else keeps working
    skip = zf.Lens(DataDependentSkip(), input_size=(1, 8, 8))
    assert not Graph.of(skip).is_chain
    with pytest.raises(ValueError, match="traced"):
        FieldMap(skip, "conv2", method="geometry")
    assert FieldMap(skip, "conv2").method == "gradient"
    assert zf.project(skip, torch.randn(1, 8, 8), "conv2").pixels.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="traced"):
        zf.deconvnet_steps(skip, torch.randn(1, 8, 8), "conv2")


def test_explorer_takes_one_image_tensor(small_lens):
    x = torch.rand(3, 16, 16)
    for images in (x, x[None]):
        ex = zf.Explorer(small_lens, images)
        try:
            assert len(ex.entries) == 1
        finally:
            ex.close()
    ex = zf.Explorer(small_lens, torch.rand(2, 3, 16, 16))
    try:
        assert len(ex.entries) == 2
    finally:
        ex.close()
