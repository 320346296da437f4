"""The graph engine's occluded forwards equal full recomputation, on every architecture family.

The reference is independent of the engine: each occluded image is built by slicing the fill into a copy of
the input, and the batch runs through the model's own forward (:meth:`Lens.run`). Boxes are random (seeded):
positions and sizes, at the borders and past them, larger than a map-grid stride, one pixel; on ResNet
(basic and bottleneck blocks), DenseNet, GoogLeNet (Inception), MobileNetV2 (depthwise, inverted residuals),
MobileNetV3 (squeeze-and-excitation gates) and the chains (AlexNet's and VGG's conv stacks, the bundled
model), with torchvision's random weights at small inputs. No timings here (``benchmarks/``).
"""
import dataclasses
import weakref

import pytest
import torch
import torchvision
from torch import nn

import zfwidgets as zf
from zfwidgets.analysis.occlusion import occluder_grid
from zfwidgets.inference import GraphOcclusion, occluded_run, occlusion_engine
from zfwidgets.inference import graph as graph_mod
from zfwidgets.zoo.models import build

from .reference import naive_occluded, random_boxes

TOL = 1e-4


def assert_close(a, b, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = float(b.abs().max())
    err = float((a.double() - b.double()).abs().max())
    assert err <= TOL * scale + 1e-6, f"{what}: max abs diff {err:.3g} against scale {scale:.3g}"


def check(engine, boxes, layers, fill=0.0):
    lens, x = engine.lens, engine.image
    logits, acts = engine.run(torch.tensor(boxes), layers, fill=fill)
    assert engine.last_mode == "incremental"
    ref_logits, ref_acts = lens.run(naive_occluded(x, boxes, fill), layers)
    assert_close(logits, ref_logits, "logits")
    for name in ref_acts:
        assert_close(acts[name], ref_acts[name], name)


def image(shape, seed=0):
    return torch.randn((1,) + tuple(shape), generator=torch.Generator().manual_seed(seed))


def tv_lens(arch, side, seed=0, **kw):
    torch.manual_seed(seed)
    lens = zf.Lens(getattr(torchvision.models, arch)(**kw).eval(), input_size=(3, side, side))
    return lens


def some_layers(lens, k=3):
    """A few of the lens's layers spread over the depth (the last conv layer among them)."""
    names = [i.name for i in lens.table if i.kind == "conv"]
    pick = [names[len(names) // 4], names[len(names) // 2], names[-1]]
    return list(dict.fromkeys(pick))[:k]


FAMILIES = [("resnet18", {}), ("resnet50", {}), ("densenet121", {}), ("googlenet", dict(init_weights=False)),
            ("mobilenet_v2", {}), ("mobilenet_v3_small", {})]


@pytest.fixture(scope="module", params=FAMILIES, ids=[a for a, _ in FAMILIES])
def family(request):
    arch, kw = request.param
    side = 96 if arch in ("googlenet",) else 64
    return tv_lens(arch, side, **kw)


@pytest.mark.parametrize("threshold", [1.0, 0.9, 0.3])
def test_random_boxes_on_each_family(family, threshold):
    side = family.input_size[-1]
    engine = GraphOcclusion(family, image(family.input_size, 1), mode="incremental", threshold=threshold)
    assert engine.incremental
    gen = torch.Generator().manual_seed(int(threshold * 10))
    boxes = random_boxes(6, side, side, gen) + [(0, 0, 1, 1), (side - 5, side - 9, side + 4, side + 4)]
    check(engine, boxes, some_layers(family), fill=0.3)


def test_the_occlusion_grid_and_the_live_box(family):
    """The map's geometry (occluder larger than the stride, first and last rows on the borders) and one box
    at a time (the live occluder), random ones included."""
    side = family.input_size[-1]
    engine = GraphOcclusion(family, image(family.input_size, 2), mode="incremental")
    _, _, grid = occluder_grid(side, side, side // 4, side // 16)
    flat = grid.view(-1, 4)
    check(engine, flat[:9].tolist() + flat[-7:].tolist(), some_layers(family, 1))
    gen = torch.Generator().manual_seed(5)
    for box in random_boxes(3, side, side, gen) + [(side // 2, 0, side // 2 + 3, side)]:
        check(engine, [box], some_layers(family, 2), fill=-0.5)


def test_the_base_cache_is_never_written():
    """In-place operations (ResNet's ``out += identity``, ReLU(inplace=True)) run on copies."""
    lens = tv_lens("resnet18", 64, seed=3)
    engine = GraphOcclusion(lens, image(lens.input_size, 3), mode="incremental")
    before = {k: v.clone() for k, v in engine._base.items() if isinstance(v, torch.Tensor)}
    boxes = [(4, 4, 20, 20), (30, 40, 64, 64)]
    check(engine, boxes, ["layer1.0.conv1", "layer2"])
    check(engine, boxes, [])
    assert all(torch.equal(before[k], engine._base[k]) for k in before)


# ----- the chains -------------------------------------------------------------------------------------
class TorchvisionPattern(nn.Module):
    """torchvision's AlexNet / VGG layout with the real conv stack and a small classifier (dropout between the
    flatten and the first linear layer, as torchvision has it)."""

    def __init__(self, arch, pooled, seed, hidden=64):
        super().__init__()
        torch.manual_seed(seed)
        self.features = getattr(torchvision.models, arch)().features
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        c = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(c * pooled[0] * pooled[1], hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.fixture(scope="module")
def alexnet():
    return zf.Lens(TorchvisionPattern("alexnet", (6, 6), 2).eval(), input_size=(3, 224, 224))


def test_alexnet_fc6_reads_only_the_changed_columns(alexnet, monkeypatch):
    """At 224 px pool5 is 6x6 and the adaptive pooling the identity: fc6 is computed from pool5's changed
    window only (W·x + W[:, changed]·(x_occ − x)[changed]); equal to the full product."""
    engine = GraphOcclusion(alexnet, image(alexnet.input_size, 4), mode="incremental")
    assert list(engine._delta_fc) == [engine.graph.node_of("classifier.1").index]
    calls = []
    real = GraphOcclusion._delta_linear
    monkeypatch.setattr(GraphOcclusion, "_delta_linear", lambda self, n, f: calls.append(f.patch.size) or real(self, n, f))
    gen = torch.Generator().manual_seed(6)
    boxes = random_boxes(5, 224, 224, gen, max_side=48) + [(0, 0, 32, 224), (200, 200, 240, 240)]
    check(engine, boxes, ["conv2", "fc6", "fc7"])
    for box in boxes[:3]:
        check(engine, [box], ["fc6"])
    _, _, grid = occluder_grid(224, 224, 32, 8)
    check(engine, grid.view(-1, 4)[[0, 1, 24, 300, 312, 600, 624]].tolist(), ["fc6"])
    assert calls and all(h * w < 36 for h, w in calls)


def test_alexnet_small_input_and_vgg():
    """At 128 px AlexNet's adaptive pooling is not the identity (a global node); VGG11 at 64 px."""
    lens = zf.Lens(TorchvisionPattern("alexnet", (6, 6), 5).eval(), input_size=(3, 128, 128))
    engine = GraphOcclusion(lens, image(lens.input_size, 5), mode="incremental")
    plan = engine._plan(torch.tensor([[0, 0, 8, 8]]))
    assert plan.windows[engine.graph.node_of("avgpool").index] == "full"
    gen = torch.Generator().manual_seed(7)
    check(engine, random_boxes(5, 128, 128, gen, margin=16), ["conv1", "conv5"], fill=[0.1, -0.2, 0.3])
    vgg = zf.Lens(TorchvisionPattern("vgg11", (2, 2), 6).eval(), input_size=(3, 64, 64))
    engine = GraphOcclusion(vgg, image(vgg.input_size, 6), mode="incremental")
    check(engine, random_boxes(5, 64, 64, gen, max_side=24), ["conv3", "conv8", "fc9"])


def test_bundled_model_with_a_linear_layer_after_the_maps():
    torch.manual_seed(0)
    lens = zf.Lens(build("zfnet-fashion"), input_size=(1, 28, 28), mean=[0.286], std=[0.353])
    engine = GraphOcclusion(lens, image(lens.input_size, 7), mode="incremental", threshold=1.0)
    gen = torch.Generator().manual_seed(8)
    check(engine, random_boxes(12, 28, 28, gen), ["conv1", "pool2", "conv5", "fc6"])
    check(engine, [(3, 3, 9, 9)], ["conv5"])


# ----- the estimate and the choice --------------------------------------------------------------------
def test_estimate_and_auto_mode():
    torch.manual_seed(0)
    small = zf.Lens(build("zfnet-fashion"), input_size=(1, 28, 28))
    e = occlusion_engine(small, image(small.input_size))
    assert e.runs_plain_forwards and not e.pays_for(6)
    assert "must save at least 20%" in e.estimate([(0, 0, 6, 6)]).reason
    e.run([(0, 0, 6, 6)])
    assert e.last_mode == "full"                  # the 28x28 net: plain forwards are cheaper
    lens = tv_lens("resnet18", 224, seed=1)
    e = GraphOcclusion(lens, image(lens.input_size, 1))
    _, _, grid = occluder_grid(224, 224, 32, 8)
    est = e.estimate(grid.view(-1, 4)[:64])
    assert est.pays and est.incremental < est.full and est.bound >= 1 / est.fraction > 1 and est.reason == ""
    assert e.pays_for(32) and not e.runs_plain_forwards
    assert e.layer_shapes()["layer4"] == (512, 7, 7)
    forced = GraphOcclusion(lens, image(lens.input_size, 1), mode="full")
    forced.run([(0, 0, 32, 32)])
    assert forced.last_mode == "full" and not forced.pays_for(32)



def test_a_live_box_known_not_to_pay_makes_no_plan(monkeypatch):
    # the live occluder on a net whose forward is cheaper than any plan: once the engine knows it for a size,
    # a move of that size runs the forward without making the plan (which cost more than the forward itself)
    torch.manual_seed(0)
    lens = zf.Lens(build("zfnet-fashion"), input_size=(1, 28, 28))
    x = image(lens.input_size, 3)
    engine = occlusion_engine(lens, x)
    engine.evaluate_box((4, 4, 11, 11), ["conv5"], fill=0.0)
    assert engine.last_mode == "full"
    made = []
    monkeypatch.setattr(engine, "_plan", lambda *a, **k: made.append(1))
    out = engine.evaluate_box((10, 12, 17, 19), ["conv5"], fill=0.0)  # the same size elsewhere
    assert not made and engine.last_mode == "full"
    ref_logits, ref_acts = lens.run(naive_occluded(x, [(10, 12, 17, 19)], 0.0), ["conv5"])
    assert_close(out.logits, ref_logits[0], "logits")
    assert_close(out.activations["conv5"], ref_acts["conv5"][0], "conv5")
    engine.evaluate_box((0, 0, 5, 5), ["conv5"], fill=0.0)             # a new size: the estimate is asked
    assert made

def test_measured_choice_follows_the_clock(monkeypatch):
    """The panel's choice: the estimate first, then one move timed each way; the engine's mode is restored and
    the answer is remembered per size. A fake clock makes the incremental path the slower one, then the faster."""
    lens = tv_lens("resnet18", 96, seed=3)
    e = GraphOcclusion(lens, image(lens.input_size, 3))
    assert e.pays_for(16)
    calls = []
    real_run = GraphOcclusion.run

    def run(self, boxes, layers=(), **kw):
        calls.append(self.mode)
        return real_run(self, boxes, layers, **kw)
    monkeypatch.setattr(GraphOcclusion, "run", run)
    clock = iter([])

    def fake_perf_counter():
        return next(clock)
    # each timed call reads the clock twice; incremental runs take 3 s, full forwards 2 s
    clock = iter([v for _ in range(3) for v in (0.0, 3.0, 0.0, 2.0)])
    monkeypatch.setattr(GraphOcclusion, "_clock", staticmethod(fake_perf_counter))
    assert not e.measured_pays_for(16, ["layer3"])
    assert calls == ["incremental", "full"] * 4 and e.mode == "auto"
    assert not e.measured_pays_for(16, ["layer3"]) and len(calls) == 8        # remembered: nothing re-run
    clock = iter([v for _ in range(3) for v in (0.0, 1.0, 0.0, 2.0)])
    assert e.measured_pays_for(12, ["layer3"]) and e.mode == "auto"
    with pytest.raises(ValueError, match="runs"):
        e.measured_pays_for(20, runs=0)
    small = zf.Lens(build("zfnet-fashion"), input_size=(1, 28, 28))
    n = len(calls)
    assert not GraphOcclusion(small, image(small.input_size)).measured_pays_for(8) and len(calls) == n


def recorded_runs(monkeypatch) -> list:
    """``(engine mode, boxes)`` of every GraphOcclusion.run call from now on."""
    calls = []
    real_run = GraphOcclusion.run

    def run(self, boxes, layers=(), **kw):
        calls.append((self.mode, len(boxes)))
        return real_run(self, boxes, layers, **kw)
    monkeypatch.setattr(GraphOcclusion, "run", run)
    return calls


def test_auto_mode_times_a_batch_and_the_lens_keeps_the_answer(monkeypatch):
    """``mode="auto"`` (what ``zf.occlusion`` runs): the first batch the estimate says pays runs its first boxes
    through the plan and as many as plain forwards, both timed, and the rest the faster way (nothing computed
    twice); the answer is kept per size and layers, also by the lens's engine for another image of that size.
    A fake clock says which way is faster; the maps equal the model's forward either way. (Jobs of fewer
    batches than WHOLE_BATCH_PROBE: a longer one times each way on a whole batch, the next test.)"""
    monkeypatch.setattr(graph_mod, "WHOLE_BATCH_PROBE", 10 ** 6)
    lens = tv_lens("resnet18", 96, seed=7)
    x, y = image(lens.input_size, 1), image(lens.input_size, 2)
    calls = recorded_runs(monkeypatch)

    def clock(incremental_s, full_s):
        ticks = iter([0.0, 0.0, 0.0, incremental_s, 0.0, full_s])     # the set-up, the plan, plain forwards
        monkeypatch.setattr(GraphOcclusion, "_clock", staticmethod(lambda: next(ticks)))
    boxes = [(0, 0, 16, 16), (20, 20, 36, 36), (40, 40, 56, 56), (60, 60, 76, 76), (80, 80, 96, 96)]
    e = occlusion_engine(lens, x)
    assert e.estimate(boxes).pays
    clock(1.0, 2.0)                                 # the plan is the faster
    logits, acts = occluded_run(lens, x, boxes, 0.0, ["layer2"], total=200)     # 5 boxes of a long job
    assert calls == [("auto", 5), ("incremental", 2), ("full", 2), ("incremental", 1)]
    assert e.last_mode == "incremental" and e.mode == "auto"
    ref, ref_acts = lens.run(naive_occluded(x, boxes, 0.0), ["layer2"])
    assert_close(logits, ref, "logits")
    assert_close(acts["layer2"], ref_acts["layer2"], "layer2")
    logits, _ = occluded_run(lens, y, boxes[:3], 0.0, ["layer2"], total=200)    # another image: remembered
    other = occlusion_engine(lens, y)
    assert other is not e and other.last_mode == "incremental" and calls[4:] == [("auto", 3)]
    assert_close(logits, lens.run(naive_occluded(y, boxes[:3], 0.0))[0], "logits")
    clock(2.0, 1.0)                                 # other layers, a clock on which the plan is the slower
    del calls[:]
    logits, acts = occluded_run(lens, y, boxes, 0.0, ["layer3"], total=200)
    assert calls == [("auto", 5), ("incremental", 2), ("full", 2), ("full", 1)] and other.last_mode == "full"
    ref, ref_acts = lens.run(naive_occluded(y, boxes, 0.0), ["layer3"])
    assert_close(logits, ref, "logits")
    assert_close(acts["layer3"], ref_acts["layer3"], "layer3")


def test_a_long_job_times_each_way_on_a_whole_batch(monkeypatch):
    """A job of WHOLE_BATCH_PROBE batches or more: its first batch runs through the plan, the next as plain
    forwards, each timed whole (a few boxes misjudge the plan's fixed cost per call); the rest the faster way.
    A fake clock says which; every batch equals the model's forward."""
    lens = tv_lens("resnet18", 96, seed=7)
    x = image(lens.input_size, 1)
    calls = recorded_runs(monkeypatch)
    ticks = iter([0.0, 0.0, 0.0, 5.0, 0.0, 10.0])   # the set-up, the plan (1 s a box), plain forwards (2 s a box)
    monkeypatch.setattr(GraphOcclusion, "_clock", staticmethod(lambda: next(ticks)))
    batches = [[(r, c, r + 16, c + 16) for c in (0, 20, 40, 60, 80)] for r in (0, 40, 80)]
    assert occlusion_engine(lens, x).estimate(batches[0]).pays
    for i, boxes in enumerate(batches):
        logits, acts = occluded_run(lens, x, boxes, 0.0, ["layer2"], total=200 - 5 * i)
        ref, ref_acts = lens.run(naive_occluded(x, boxes, 0.0), ["layer2"])
        assert_close(logits, ref, f"logits of batch {i}")
        assert_close(acts["layer2"], ref_acts["layer2"], f"layer2 of batch {i}")
    assert calls == [("auto", 5), ("incremental", 5), ("auto", 5), ("full", 5), ("auto", 5)]
    assert occlusion_engine(lens, x).last_mode == "incremental"


def test_a_job_pays_for_the_plans_set_up_or_runs_plain_forwards(monkeypatch):
    """Issue 29 item 2: the plan's first use (the cached forward, the self-check) is weighed against the job.
    A job of a few boxes cannot pay it back: plain forwards, the plan never built, nothing timed. A long job is
    timed (set-up, then per box each way); the next image's jobs weigh that measured set-up against their own
    boxes. A fake clock: set-up 3 s, 0.5 s a box through the plan, 1 s a box as forwards. (The probe within a
    batch, as for jobs of fewer than WHOLE_BATCH_PROBE batches.)"""
    monkeypatch.setattr(graph_mod, "WHOLE_BATCH_PROBE", 10 ** 6)
    lens = tv_lens("resnet18", 96, seed=7)
    x, y = image(lens.input_size, 1), image(lens.input_size, 2)
    boxes = [(0, 0, 16, 16), (20, 20, 36, 36), (40, 40, 56, 56), (60, 60, 76, 76), (80, 80, 96, 96)]
    e = occlusion_engine(lens, x)
    assert e.estimate(boxes).pays and e.setup_due
    logits, _ = occluded_run(lens, x, boxes, 0.0, ["layer2"])               # the job is these 5 boxes
    assert e.last_mode == "full" and e._values is None and not e._measured
    assert_close(logits, lens.run(naive_occluded(x, boxes, 0.0))[0], "logits")
    ticks = iter([0.0, 3.0, 0.0, 1.0, 0.0, 2.0])
    monkeypatch.setattr(GraphOcclusion, "_clock", staticmethod(lambda: next(ticks)))
    logits, _ = occluded_run(lens, x, boxes, 0.0, ["layer2"], total=200)    # 5 boxes of a job of 200
    assert e.last_mode == "incremental" and not e.setup_due
    assert_close(logits, lens.run(naive_occluded(x, boxes, 0.0))[0], "logits")
    logits, _ = occluded_run(lens, y, boxes, 0.0, ["layer2"], total=5)      # 3 + 5 x 0.5 > 0.9 x 5 x 1
    other = occlusion_engine(lens, y)
    assert other is not e and other.last_mode == "full" and other.setup_due
    logits, _ = occluded_run(lens, y, boxes, 0.0, ["layer2"], total=50)     # 3 + 50 x 0.5 <= 0.9 x 50 x 1
    assert other.last_mode == "incremental" and not other.setup_due
    assert_close(logits, lens.run(naive_occluded(y, boxes, 0.0))[0], "logits")


def test_the_plan_holds_only_the_values_still_to_be_read(monkeypatch):
    """A batch through the plan keeps a node's window only until its last reader has run (the layers asked for
    and the logits' inputs to the end): at most a few windows are alive at once on ResNet-18, not one per node;
    the results stay those of the model's forward."""
    lens = tv_lens("resnet18", 64, seed=8)
    engine = GraphOcclusion(lens, image(lens.input_size, 8), mode="incremental", threshold=1.0)
    alive, made = [], []

    @dataclasses.dataclass
    class Counted(graph_mod._Patch):
        def __post_init__(self):
            made.append(weakref.ref(self))
            alive.append(sum(r() is not None for r in made))
    monkeypatch.setattr(graph_mod, "_Patch", Counted)
    check(engine, [(4, 4, 12, 12), (40, 30, 52, 44)], ["layer2"])
    assert len(made) > 40 and max(alive) <= 12, (len(made), max(alive))


def test_a_plan_that_does_not_reproduce_the_model_falls_back(monkeypatch):
    lens = tv_lens("resnet18", 64, seed=2)
    engine = GraphOcclusion(lens, image(lens.input_size, 2), mode="incremental")
    real = GraphOcclusion._run

    def wrong(self, *a, **k):
        out, acts = real(self, *a, **k)
        return out + 1.0, acts
    monkeypatch.setattr(GraphOcclusion, "_run", wrong)
    with pytest.warns(UserWarning, match="does not reproduce"):
        logits, _ = engine.run([(0, 0, 8, 8)], fill=0.0)
    assert engine.last_mode == "full" and not engine.incremental
    ref, _ = lens.run(naive_occluded(engine.image, [(0, 0, 8, 8)], 0.0))
    assert_close(logits, ref, "logits")


# ----- cache, weights, state, errors --------------------------------------------------------------------
def test_engine_cache_follows_images_and_weights():
    lens = tv_lens("mobilenet_v2", 64, seed=4)
    x, y = image(lens.input_size, 1), image(lens.input_size, 2)
    e1 = occlusion_engine(lens, x)
    assert occlusion_engine(lens, x.clone()) is e1 and occlusion_engine(lens, y) is not e1
    e2 = occlusion_engine(lens, y)
    e2.mode = "incremental"
    boxes = [(3, 4, 19, 20), (40, 0, 64, 16)]
    logits, _ = occluded_run(lens, y, boxes, 0.0)
    assert_close(logits, lens.run(naive_occluded(y, boxes, 0.0))[0], "logits")
    with torch.no_grad():
        lens.model.features[3].conv[1][0].weight.mul_(-0.5)   # the cache is stale now
    check(e2, boxes, ["features.3"])


def test_model_state_is_left_as_it_was():
    lens = tv_lens("resnet18", 64, seed=5)
    model = lens.model
    model.train()
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    try:
        engine = GraphOcclusion(lens, image(lens.input_size), mode="incremental")
        check(engine, [(2, 2, 9, 9)], ["layer2"])      # batch norm in eval mode, as Lens.run
        assert all(m.training for m in model.modules())
        assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    finally:
        model.eval()


def test_bad_input():
    lens = tv_lens("resnet18", 64, seed=6)
    engine = GraphOcclusion(lens, image(lens.input_size))
    with pytest.raises(ValueError, match="empty or lies outside"):
        engine.run([(5, 5, 5, 9)])
    with pytest.raises(TypeError, match="integer"):
        engine.run(torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    with pytest.raises(ValueError, match="B x 4"):
        engine.estimate(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        GraphOcclusion(lens, image(lens.input_size), threshold=1.5)
    with pytest.raises(ValueError, match="mode"):
        GraphOcclusion(lens, image(lens.input_size), mode="fast")
    with pytest.raises(ValueError, match="unknown layer"):
        engine.run([(0, 0, 4, 4)], ["conv99"])
    logits, acts = engine.run([(0, 0, 4, 4)], ["layer1"], logits=False)
    assert logits is None and set(acts) == {"layer1"}


def test_one_forward_serves_the_graph_and_the_unoccluded_response():
    """Issue 29 item 2, first calls: on a lens whose graph is not built yet, ``zf.occlusion`` runs the
    unoccluded image through the model once (the graph's shape pass is that image's forward and gives the
    unoccluded response), not once for the response and once more for the shapes (a zero image). The response
    equals the model's own forward; the outputs are handed over once; a second image runs its own forward."""
    from zfwidgets.core.graph import Graph
    lens = tv_lens("resnet18", 64, seed=3)
    x, y = image(lens.input_size, 4), image(lens.input_size, 5)
    seen = []
    h = lens.model.conv1.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().clone()))
    try:
        occ = zf.occlusion(lens, x, size=16, stride=16, progress=False, layer="layer3")
        whole = [t for t in seen if t.shape[0] == 1 and (torch.equal(t, x) or not t.any())]
        assert len(whole) == 1 and torch.equal(whole[0], x)
        assert Graph.of(lens, tuple(x.shape[1:])).take_outputs(x) is None
        with torch.no_grad():
            ref = lens.model(x).softmax(1)[0]
            ref3 = lens.model.layer3(lens.model.layer2(lens.model.layer1(lens.model.maxpool(lens.model.relu(
                lens.model.bn1(lens.model.conv1(x)))))))[0]
        assert occ.base_class == int(ref.argmax())
        assert abs(occ.base_probability - float(ref[occ.target])) <= 1e-6
        assert occ.channel == int(ref3.flatten(1).amax(1).argmax())
        assert abs(occ.base_feature_map - float(ref3[occ.channel].clamp(min=0).sum())) <= 1e-4 * occ.base_feature_map
        from zfwidgets.analysis.occlusion import unoccluded
        u = unoccluded(lens, y, layer="layer3")
        with torch.no_grad():
            py = lens.model(y).softmax(1)[0]
        assert u.base_class == int(py.argmax()) and abs(u.base_probability - float(py.max())) <= 1e-6
    finally:
        h.remove()
