"""The occlusion engine on chains equals full recomputation.

The reference is independent of the engine: each occluded image is built by slicing the fill into a copy of
the input, and the batch runs through the model's own forward (:meth:`Lens.run`). Boxes are random (seeded,
and hypothesis for the small net), at the border and past it, larger than the grid stride, on the bundled
architectures (max pooling and strided convolutions), torchvision AlexNet's and VGG11's conv stacks (at 224 and
smaller inputs, where the adaptive pooling is and is not the identity), a forward with a skip its modules'
order does not show, and a model fx cannot trace (which must fall back to full forwards). No timings here:
those live in ``benchmarks/`` (the auto mode's clock is a fake one).
"""
import warnings

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import zfwidgets as zf
from zfwidgets.analysis.occlusion import occluder_grid
from zfwidgets.core.graph import macs_per_position
from zfwidgets.inference import GraphOcclusion, occluded_run, occlusion_engine
from zfwidgets.inference import graph as graph_mod
from zfwidgets.zoo.models import build

from .reference import naive_occluded, random_boxes

RTOL = 1e-5


def assert_close(a, b, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    assert err <= RTOL * scale + 1e-7, f"{what}: max abs diff {err:.3g} against scale {scale:.3g}"


def check(engine, boxes, layers, fill):
    lens, x = engine.lens, engine.image
    logits, acts = engine.run(torch.tensor(boxes), layers, fill=fill)
    ref_logits, ref_acts = lens.run(naive_occluded(x, boxes, fill), layers)
    assert_close(logits, ref_logits, "logits")
    for name in ref_acts:
        assert_close(acts[name], ref_acts[name], name)


@pytest.fixture(scope="module")
def zfnet():
    torch.manual_seed(0)
    return zf.Lens(build("zfnet-fashion"), input_size=(1, 28, 28), mean=[0.286], std=[0.353])


@pytest.fixture(scope="module")
def allconv():
    torch.manual_seed(1)
    return zf.Lens(build("allconv-fashion"), input_size=(1, 28, 28))


class TorchvisionPattern(nn.Module):
    """torchvision's AlexNet/VGG layout (``features`` -> ``avgpool`` -> flatten -> ``classifier``) with the real
    torchvision conv stack and a small classifier: the incremental path only touches the conv stack, and
    initialising the 100M-weight classifiers would dominate the test's time."""

    def __init__(self, arch, pooled, seed):
        super().__init__()
        torch.manual_seed(seed)
        with torch.device("meta"):
            tv = getattr(torchvision.models, arch)()
        self.features = tv.features.to_empty(device="cpu")
        for m in self.features.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        c = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(c * pooled[0] * pooled[1], 64), nn.ReLU(inplace=True),
                                        nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.fixture(scope="module")
def alexnet():
    return zf.Lens(TorchvisionPattern("alexnet", (6, 6), 2).eval(), input_size=(3, 224, 224))


def image(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1,) + tuple(lens.input_size), generator=g)


# ----- the bundled architectures --------------------------------------------------------------------
CONFIGS = [dict(threshold=1.0),     # windows to the end of the maps, never whole maps
           dict(threshold=0.5),     # whole maps from the first node whose window covers half its map
           dict(threshold=0.9),     # the default
           dict(threshold=0.0)]     # whole maps from the first window node on


@pytest.mark.parametrize("config", CONFIGS, ids=["never-full", "half", "default", "all-full"])
def test_zfnet_random_boxes(zfnet, config):
    engine = GraphOcclusion(zfnet, image(zfnet), mode="incremental", **config)
    assert engine.incremental
    gen = torch.Generator().manual_seed(3)
    check(engine, random_boxes(24, 28, 28, gen), ["conv1", "pool2", "conv5", "fc6"], 0.0)
    assert engine.last_mode == "incremental"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boxes=st.lists(st.tuples(st.integers(-6, 27), st.integers(-6, 27), st.integers(1, 30), st.integers(1, 30)),
                      min_size=1, max_size=6),
       fill=st.floats(-2, 2, allow_nan=False, width=32))
def test_zfnet_hypothesis(zfnet, boxes, fill):
    boxes = [(y, x, y + h, x + w) for y, x, h, w in boxes if y + h > 0 and x + w > 0]
    if not boxes:
        return
    engine = occlusion_engine(zfnet, image(zfnet, 7))
    engine.mode = "incremental"
    check(engine, boxes, ["conv3", "conv5"], fill)


def test_allconv_strided_convs(allconv):
    engine = GraphOcclusion(allconv, image(allconv, 1), mode="incremental", threshold=1.0)
    gen = torch.Generator().manual_seed(4)
    check(engine, random_boxes(20, 28, 28, gen), ["pool1", "conv5", "pool5"], 0.5)
    # the grid the occlusion map uses: 6 px occluder, stride 2 (size > stride), first and last rows on the border
    _, _, grid = occluder_grid(28, 28, 6, 2)
    check(engine, grid.view(-1, 4)[:40].tolist() + grid.view(-1, 4)[-30:].tolist(), ["conv5"], 0.0)


def test_zfnet_occlusion_grid_and_single_box(zfnet):
    x = image(zfnet, 2)
    engine = GraphOcclusion(zfnet, x, mode="incremental")
    _, _, grid = occluder_grid(28, 28, 8, 3)
    check(engine, grid.view(-1, 4).tolist(), ["conv5"], zfnet.fill_value.tolist())
    out = engine.evaluate_box((20, 22, 28, 28), ["conv5"])
    ref, acts = zfnet.run(naive_occluded(x, [(20, 22, 28, 28)], zfnet.fill_value), ["conv5"])
    assert_close(out.logits, ref[0], "logits")
    assert_close(out.probs, ref[0].softmax(0), "probs")
    assert_close(out.activations["conv5"], acts["conv5"][0], "conv5")
    assert out.boxes.tolist() == [20, 22, 28, 28]
    assert_close(engine.logits_for_box((20, 22, 28, 28)), ref[0], "logits_for_box")


@pytest.mark.parametrize("config", CONFIGS, ids=["never-full", "half", "default", "all-full"])
def test_one_box_at_a_time(zfnet, alexnet, config):
    """The live occluder's path (one box at a time) against naive recomputation, on random boxes at the
    borders, larger than the image's half, and one pixel wide."""
    gen = torch.Generator().manual_seed(6)
    for lens, side, layers in ((zfnet, 28, ["conv2", "fc7"]), (alexnet, 224, ["conv3", "fc6"])):
        engine = GraphOcclusion(lens, image(lens, 8), mode="incremental", **config)
        boxes = random_boxes(6, side, side, gen) + [(0, 0, 1, side), (side - 3, side // 2, side + 5, side + 5),
                                                    (side // 4, side // 4, side, side)]
        for box in boxes:
            check(engine, [box], layers, 0.0)
        assert engine.last_mode == "incremental"


# ----- torchvision AlexNet and VGG --------------------------------------------------------------------
def test_alexnet_224_grid_chunk(alexnet):
    """The benchmark's geometry (32 px, stride 8): first row (top border) and last positions (bottom/right)."""
    x = image(alexnet, 3)
    engine = GraphOcclusion(alexnet, x, mode="incremental")
    _, _, grid = occluder_grid(224, 224, 32, 8)
    flat = grid.view(-1, 4)
    boxes = flat[[0, 1, 2, 13, 24, 25, 312, 599, 612, 624]].tolist()
    check(engine, boxes, ["conv2", "conv5", "fc6"], 0.0)


def test_alexnet_small_input_random_boxes(alexnet):
    """At 128 px AlexNet's adaptive pooling is not the identity: the engine must go full from there."""
    lens = zf.Lens(alexnet.model, input_size=(3, 128, 128))
    engine = GraphOcclusion(lens, image(lens, 4), mode="incremental", threshold=1.0)
    gen = torch.Generator().manual_seed(5)
    check(engine, random_boxes(8, 128, 128, gen, max_side=48, margin=16), ["conv1", "conv5"], [0.1, -0.2, 0.3])


def test_vgg11_small_input():
    lens = zf.Lens(TorchvisionPattern("vgg11", (2, 2), 6).eval(), input_size=(3, 64, 64))
    engine = GraphOcclusion(lens, image(lens, 5), mode="incremental", threshold=0.8)
    gen = torch.Generator().manual_seed(7)
    check(engine, random_boxes(6, 64, 64, gen, max_side=24), ["conv3", "conv8"], 0.0)


def test_alexnet_plan_matches_the_geometry(alexnet):
    """Issue 8's measured geometry: 32 px occluder, stride 8 at 224: ~29% of the conv multiply-adds per position
    (each box's own changed region), the plan's common windows no less and less than full forwards; the whole
    plan (linear layers and fixed costs counted) between its geometric bound and full forwards."""
    engine = GraphOcclusion(alexnet, image(alexnet), threshold=1.0)     # every conv's region followed
    _, _, grid = occluder_grid(224, 224, 32, 8)
    boxes = grid.view(-1, 4)
    plan = engine._plan(boxes)
    full = tight = batched = 0.0
    for n in engine.graph.nodes:
        if not isinstance(n.module, nn.Conv2d):
            continue
        per = macs_per_position(n.module)
        area = n.out_shape[2] * n.out_shape[3]
        full += per * area
        r = plan.regions.get(n.index)
        tight += per * (float(((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])).double().mean()) if r is not None else area)
        w = plan.windows[n.index]
        batched += per * (w.size[0] * w.size[1] if w != "full" else area)
    assert 0.27 < tight / full < 0.31
    assert tight <= batched < full
    e = GraphOcclusion(alexnet, image(alexnet)).estimate(boxes)
    assert 1 / e.bound <= e.fraction < 1


# ----- fallbacks ----------------------------------------------------------------------------------
class Untraceable(nn.Module):
    """Data-dependent control flow: ``torch.fx`` cannot trace the forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 0:
            h = h.relu()
        return self.fc(h.flatten(1))


def test_a_model_fx_cannot_trace_falls_back_to_full_forwards():
    torch.manual_seed(8)
    lens = zf.Lens(Untraceable().eval(), input_size=(3, 16, 16))
    engine = GraphOcclusion(lens, image(lens, 6))
    assert not engine.incremental and engine.runs_plain_forwards
    assert "cannot be followed" in engine.estimate([(0, 0, 6, 6)]).reason
    check(engine, [(0, 0, 6, 6), (10, 12, 20, 20)], ["conv"], 0.0)
    assert engine.last_mode == "full"


class NotAChain(nn.Module):
    """Has the AlexNet children names, but its forward is not their chain: a skip."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(nn.Linear(64, 3))

    def forward(self, x):
        h = self.features(x) + x          # a skip the chain does not know
        return self.classifier(torch.flatten(self.avgpool(h), 1))


def test_a_forward_that_is_not_the_chain_is_followed_on_its_graph():
    """The skip the module order does not show is a merge of the traced graph: the engine follows it (no
    fallback, no warning) and equals the model's own forward."""
    torch.manual_seed(9)
    lens = zf.Lens(NotAChain(), input_size=(1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = GraphOcclusion(lens, image(lens), mode="incremental")
        assert engine.incremental
        check(engine, [(0, 0, 3, 3), (5, 5, 8, 8)], [], 0.0)
    assert engine.last_mode == "incremental"


def timed(monkeypatch, incremental_s, full_s):
    """A fake clock for the auto mode's timing: each timed run of the plan takes ``incremental_s``, each plain
    forward ``full_s`` (one box is timed 3 times each way)."""
    ticks = iter([v for _ in range(3) for v in (0.0, incremental_s, 0.0, full_s)])
    monkeypatch.setattr(GraphOcclusion, "_clock", staticmethod(lambda: next(ticks)))


def test_modes_and_cost_model(zfnet, alexnet, monkeypatch):
    # the bundled 28x28 net saves too little: auto runs it in full; AlexNet at 224 saves most of a forward, and
    # auto runs it incrementally where the clock confirms the plan is the faster
    box = [(10, 10, 16, 16)]
    small = GraphOcclusion(zfnet, image(zfnet))
    small.run(box)
    assert small.last_mode == "full"
    big = GraphOcclusion(alexnet, image(alexnet))
    e = big.estimate([(96, 96, 128, 128)])
    assert e.pays and e.incremental < 0.8 * e.full
    timed(monkeypatch, 1.0, 2.0)
    check(big, [(96, 96, 128, 128)], ["conv3"], 0.0)
    assert big.last_mode == "incremental"
    timed(monkeypatch, 2.0, 1.0)                    # another size, on which the clock finds the plan slower
    check(big, [(96, 96, 120, 120)], ["conv3"], 0.0)
    assert big.last_mode == "full"
    check(big, [(0, 0, 32, 32)], ["conv3"], 0.0)    # the first size again: remembered, not timed again
    assert big.last_mode == "incremental"
    forced = GraphOcclusion(zfnet, image(zfnet), mode="full")
    check(forced, box, ["conv5"], 0.0)
    assert forced.last_mode == "full"


# ----- engine cache, weights, model state, errors ----------------------------------------------------
def test_occluded_run_reuses_the_engine_and_follows_weight_changes():
    torch.manual_seed(10)
    lens = zf.Lens(build("zfnet-fashion"), input_size=(1, 28, 28))
    x, y = image(lens, 1), image(lens, 2)
    boxes = torch.tensor([(3, 4, 9, 10), (20, 0, 28, 6)])
    e1 = occlusion_engine(lens, x)
    assert occlusion_engine(lens, x.clone()) is e1
    e1.mode = "incremental"
    logits, acts = occluded_run(lens, x, boxes, torch.zeros(1), ["conv5"])
    ref, ref_acts = lens.run(naive_occluded(x, boxes.tolist(), 0.0), ["conv5"])
    assert_close(logits, ref, "logits")
    assert_close(acts["conv5"], ref_acts["conv5"], "conv5")
    assert occlusion_engine(lens, y) is not e1          # a new image: a new cached forward
    e2 = occlusion_engine(lens, y)
    e2.mode = "incremental"
    with torch.no_grad():
        lens.model.conv3.weight.mul_(-0.5)              # training moved the weights: the cache is stale
    check(e2, boxes.tolist(), ["conv5"], 0.0)


def test_model_state_is_left_as_it_was(zfnet):
    model = zfnet.model
    model.train()
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    try:
        engine = GraphOcclusion(zfnet, image(zfnet), mode="incremental")
        # dropout is active in training mode: the engine (like Lens.run) must evaluate in eval mode
        check(engine, [(2, 2, 9, 9)], ["fc6"], 0.0)
        assert all(m.training for m in model.modules())
        assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    finally:
        model.eval()


def test_bad_input(zfnet):
    engine = GraphOcclusion(zfnet, image(zfnet))
    with pytest.raises(ValueError, match="empty or lies outside"):
        engine.run([(5, 5, 5, 9)])
    with pytest.raises(ValueError, match="empty or lies outside"):
        engine.run([(30, 30, 40, 40)])
    with pytest.raises(TypeError, match="integer"):
        engine.run(torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    with pytest.raises(ValueError, match="B x 4"):
        engine.run(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        GraphOcclusion(zfnet, image(zfnet), threshold=1.5)
    with pytest.raises(ValueError, match="mode"):
        GraphOcclusion(zfnet, image(zfnet), mode="fast")
    with pytest.raises(ValueError, match="unknown layer"):
        engine.run([(0, 0, 4, 4)], ["conv9"])
    logits, acts = engine.run([(0, 0, 4, 4)], ["conv2"], logits=False)
    assert logits is None and set(acts) == {"conv2"}


def test_fc_layers_of_a_few_rows_equal_the_module():
    """The engine's fc products of a few rows (oneDNN where torch has it) against the module in float64."""
    torch.manual_seed(11)
    fc = nn.Linear(300, 70)
    for rows in (1, 2, graph_mod._ONEDNN_ROWS, graph_mod._ONEDNN_ROWS + 1):
        h = torch.randn(rows, 300)
        with torch.inference_mode():
            out = graph_mod._linear(fc, h)
        ref = torch.nn.functional.linear(h.double(), fc.weight.double(), fc.bias.double()).detach()
        assert out.shape == (rows, 70) and out.dtype == torch.float32
        assert float((out.double() - ref).abs().max()) < 1e-5


def test_a_few_boxes_in_full_mode_run_one_batched_forward(zfnet, alexnet, monkeypatch):
    """Where the incremental plan would not pay, the boxes run as one batched forward of the occluded images."""
    for lens in (zfnet, alexnet):
        x = image(lens, 9)
        engine = GraphOcclusion(lens, x, min_saving=1.0)     # never worth it: always full
        side = lens.input_size[-1]
        boxes = [(0, 0, side // 3, side // 3), (side // 2, side // 4, side, side // 2)]
        runs = []
        real = type(lens).run
        monkeypatch.setattr(lens, "run", lambda xs, *a, **k: runs.append(xs.shape[0]) or real(lens, xs, *a, **k))
        check(engine, boxes, ["conv5" if lens is zfnet else "conv3", "fc6"], 0.0)
        monkeypatch.undo()
        assert engine.last_mode == "full"
        assert runs == [2, 2]             # the engine's one batched forward, then check's reference
