"""Occlusion maps against one naive forward per occluder position, the grid by hand, bad input, and ZF's
finding on the bundled model."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import zfwidgets
from zfwidgets import project
from zfwidgets.analysis.occlusion import OcclusionMaps, occlude, occluder_grid, occlusion
from zfwidgets.analysis.receptive import Box


def naive(lens, x, layer, size, stride, fill, target):
    """Loop over corners 0, stride, ... (until an occluder reaches the far edge); occlude by slicing;
    one plain forward per position with a hook on the layer."""
    module = lens.resolve(layer)[2]
    H, W = x.shape[-2:]

    def corners(L):
        out, c = [], 0
        while c < L:
            out.append(c)
            if c + size >= L:
                break
            c += stride
        return out

    seen = {}
    h = module.register_forward_hook(lambda m, a, o: seen.__setitem__("a", o.detach().clone()))
    try:
        with torch.no_grad():
            base_logits = lens.model(x)
            base_act = seen["a"]
            channel = int(base_act[0].flatten(1).max(1).values.argmax())
            if target is None:
                target = int(base_logits.argmax())
            rows = []
            for y in corners(H):
                row = []
                for xx in corners(W):
                    xo = x.clone()
                    xo[0, :, y:y + size, xx:xx + size] = fill.view(-1, 1, 1)
                    p = lens.model(xo).softmax(1)[0]
                    total = float(seen["a"][0, channel].clamp(min=0).sum())
                    row.append((total, float(p[target]), int(p.argmax())))
                rows.append(row)
    finally:
        h.remove()
    return channel, target, rows


@pytest.mark.parametrize("size,stride,fill,target,layer", [
    (5, 3, "mean", None, None),
    (4, 4, 0.7, 2, "conv1"),
    (6, 5, [0.1, -1.0, 2.0], 4, "2"),
    (16, 1, "mean", 0, None),
])
def test_equals_one_naive_forward_per_position(small_lens, small_images, size, stride, fill, target, layer):
    img = small_images[3]
    x = small_lens.to_input(img)
    occ = occlusion(small_lens, img, size=size, stride=stride, fill=fill, target=target, layer=layer,
                    batch_size=7, progress=False)
    fill_t = small_lens.fill_value if fill == "mean" else torch.as_tensor(
        np.broadcast_to(np.asarray(fill, dtype=np.float32), (3,)).copy())
    channel, tgt, rows = naive(small_lens, x, layer or "conv2", size, stride, fill_t, target)
    assert occ.channel == channel and occ.target == tgt
    assert occ.shape == (len(rows), len(rows[0]))
    ref = torch.tensor([[r[0] for r in row] for row in rows])
    assert torch.allclose(occ.feature_map, ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(occ.probability, torch.tensor([[r[1] for r in row] for row in rows]), atol=1e-5)
    assert occ.top_class.tolist() == [[r[2] for r in row] for row in rows]
    assert occ.layer == (layer or "conv2")


def test_drilldown_is_exact_where_it_computes(small_lens, small_images):
    """Issue 29 item 4, drilldown: the coarse grid (every k-th position, the last row and column) and the fine
    positions around its largest drops are computed, each equal to one naive forward; at the others the maps
    are interpolated linearly (the top class: the nearest computed position's); refine=1 computes every
    position (the exact map), refine=0 the coarse
    grid alone. The exact mode marks every position computed."""
    img = small_images[3]
    x = small_lens.to_input(img)
    exact = occlusion(small_lens, img, size=4, stride=1, progress=False)
    assert exact.mode == "exact" and exact.exact.shape == exact.shape and bool(exact.exact.all())
    channel, tgt, rows = naive(small_lens, x, "conv2", 4, 1, small_lens.fill_value, None)
    ref_total = torch.tensor([[r[0] for r in row] for row in rows])
    ref_p = torch.tensor([[r[1] for r in row] for row in rows])
    ref_top = torch.tensor([[r[2] for r in row] for row in rows])
    dd = occlusion(small_lens, img, size=4, stride=1, mode="drilldown", coarse_stride=3, refine=0.3,
                   batch_size=5, progress=False)
    m = dd.exact
    assert dd.mode == "drilldown" and dd.shape == exact.shape == (13, 13)
    coarse = torch.zeros(13, 13, dtype=torch.bool)
    coarse[torch.tensor([0, 3, 6, 9, 12])[:, None], torch.tensor([0, 3, 6, 9, 12])[None, :]] = True
    assert bool(m[coarse].all()) and 0.3 * 169 <= int(m.sum()) < 169
    assert torch.allclose(dd.feature_map[m], ref_total[m], rtol=1e-4, atol=1e-4)
    assert torch.allclose(dd.probability[m], ref_p[m], atol=1e-5)
    assert torch.equal(dd.top_class[m], ref_top[m])
    drop = dd.base_probability - dd.probability[coarse]
    worst = coarse.nonzero()[drop.argmax()]                      # the largest coarse drop was refined around
    y, xx = worst.tolist()
    assert bool(m[max(y - 2, 0):y + 3, max(xx - 2, 0):xx + 3].all())
    for i, j in (~m).nonzero().tolist():                        # the top class: the nearest computed one's
        d = ((m.nonzero() - torch.tensor([i, j])) ** 2).sum(1)
        assert int(dd.top_class[i, j]) in dd.top_class[m][d == d.min()].tolist()
    row = m[0].nonzero().flatten().tolist()                      # the first row: on the computed positions'
    for j in (~m[0]).nonzero().flatten().tolist():               # hull, linear between its two neighbours
        a, b = max(c for c in row if c < j), min(c for c in row if c > j)
        pa, pb = float(dd.probability[0, a]), float(dd.probability[0, b])
        assert float(dd.probability[0, j]) == pytest.approx(pa + (j - a) / (b - a) * (pb - pa), abs=1e-6)
    full = occlusion(small_lens, img, size=4, stride=1, mode="drilldown", coarse_stride=3, refine=1.0,
                     progress=False)
    assert bool(full.exact.all()) and torch.allclose(full.probability, ref_p, atol=1e-5)
    only = occlusion(small_lens, img, size=4, stride=1, mode="drilldown", coarse_stride=3, refine=0.0,
                     progress=False)
    assert torch.equal(only.exact, coarse)
    for kw, match in (({"mode": "fastest"}, "mode"), ({"mode": "drilldown", "refine": 1.5}, "refine"),
                      ({"mode": "drilldown", "coarse_stride": 4, "stride": 3}, "coarse_stride")):
        with pytest.raises(ValueError, match=match):
            occlusion(small_lens, img, **{"size": 4, "stride": 1, "progress": False, **kw})


def test_drilldown_on_the_plan_equals_plain_forwards():
    """Drilldown on a model the engine follows incrementally (ResNet-18 at 64 px, the plan forced): every
    computed position equals the exact map computed by plain forwards within 1e-4."""
    import torchvision
    from zfwidgets.inference import occlusion_engine
    torch.manual_seed(0)
    lens = zfwidgets.Lens(torchvision.models.resnet18().eval(), input_size=(3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    occlusion_engine(lens, x).mode = "full"
    ref = occlusion(lens, x, size=16, stride=4, layer="layer2", progress=False)
    occlusion_engine(lens, x).mode = "incremental"
    dd = occlusion(lens, x, size=16, stride=4, layer="layer2", mode="drilldown", progress=False)
    assert occlusion_engine(lens, x).last_mode == "incremental"
    m = dd.exact
    assert 0 < int(m.sum()) < m.numel()
    assert torch.allclose(dd.probability[m], ref.probability[m], atol=1e-4)
    assert torch.allclose(dd.feature_map[m], ref.feature_map[m], rtol=1e-4, atol=1e-4)


def test_threshold_and_fast_on_the_plan():
    """Issue 29 item 4, threshold and fast on ResNet-18 at 64 px (the plan forced): the positions marked exact
    equal the exact map computed by plain forwards within 1e-4, the others are approximations that do differ
    from it; tau=1 cuts nothing (the exact map, every position marked exact); fast computes exactly a subset
    of what drilldown computes, and marks it."""
    import torchvision
    from zfwidgets.inference import occlusion_engine
    torch.manual_seed(0)
    lens = zfwidgets.Lens(torchvision.models.resnet18().eval(), input_size=(3, 64, 64))
    x = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8), size=64, mode="bilinear")
    kw = {"size": 16, "stride": 4, "layer": "layer3", "progress": False}
    occlusion_engine(lens, x).mode = "full"
    ref = occlusion(lens, x, **kw)
    occlusion_engine(lens, x).mode = "incremental"
    thr = occlusion(lens, x, mode="threshold", tau=0.8, **kw)
    assert thr.mode == "threshold" and occlusion_engine(lens, x).last_mode == "incremental"
    m = thr.exact
    assert 0 < int(m.sum()) < m.numel()
    assert torch.allclose(thr.probability[m], ref.probability[m], atol=1e-4)
    assert torch.allclose(thr.feature_map[m], ref.feature_map[m], rtol=1e-4, atol=1e-4)
    assert float((thr.feature_map[~m] - ref.feature_map[~m]).abs().max()) > 1e-3
    whole = occlusion(lens, x, mode="threshold", tau=1.0, **kw)
    assert bool(whole.exact.all()) and torch.allclose(whole.probability, ref.probability, atol=1e-4)
    fast = occlusion(lens, x, mode="fast", tau=0.8, **kw)
    assert fast.mode == "fast" and 0 < int(fast.exact.sum()) < int(m.sum())
    f = fast.exact
    assert torch.allclose(fast.probability[f], ref.probability[f], atol=1e-4)
    with pytest.raises(ValueError, match="tau"):
        occlusion(lens, x, mode="threshold", tau=0.0, **kw)


def test_grid_by_hand():
    ys, xs, boxes = occluder_grid(10, 10, 3, 4)
    assert ys.tolist() == [0, 4, 8] and boxes[2, 2].tolist() == [8, 8, 10, 10]  # last one clipped
    ys, xs, _ = occluder_grid(28, 28, 8, 4)
    assert ys.tolist() == [0, 4, 8, 12, 16, 20]                                  # 20 + 8 = 28: exact fit
    ys, xs, _ = occluder_grid(10, 12, (2, 3), (20, 5))
    assert ys.tolist() == [0] and xs.tolist() == [0, 5, 10]
    ys, xs, boxes = occluder_grid(8, 8, 8, 3)
    assert boxes.shape == (1, 1, 4) and boxes[0, 0].tolist() == [0, 0, 8, 8]


def test_unoccluded_values_and_projection(small_lens, small_images):
    img = small_images[5]
    occ = occlusion(small_lens, img, size=4, stride=4, progress=False)
    logits, acts = small_lens.run(small_lens.to_input(img), ["conv2"])
    p = logits.softmax(1)[0]
    assert occ.base_class == int(p.argmax()) == occ.target
    assert abs(occ.base_probability - float(p.max())) < 1e-6
    assert abs(occ.base_feature_map - float(acts["conv2"][0, occ.channel].clamp(min=0).sum())) < 1e-4
    ref = project(small_lens, img, "conv2", occ.channel)
    assert torch.allclose(occ.projection.pixels, ref.pixels) and occ.projection.method == "deconvnet"
    assert occ.box(1, 2) == Box(4, 8, 8, 12)
    assert isinstance(occ.plot(), Figure)


def test_batch_size_does_not_matter(small_lens, small_images):
    a = occlusion(small_lens, small_images[0], size=3, stride=2, batch_size=1, progress=False)
    b = occlusion(small_lens, small_images[0], size=3, stride=2, batch_size=100, progress=False)
    assert torch.allclose(a.probability, b.probability, atol=1e-6) and torch.equal(a.top_class, b.top_class)


def test_the_default_batch_is_sized_by_what_it_holds(monkeypatch):
    """Without ``batch_size`` a batch holds at most the byte budget by the engine's count of its peak (the plan's
    live windows and maps, or a plain forward's), on ResNet-18 through the plan; the maps equal one batch's."""
    import torchvision

    from zfwidgets.analysis import occlusion as occ_mod
    from zfwidgets.inference import occlusion_engine
    torch.manual_seed(0)
    lens = zfwidgets.Lens(torchvision.models.resnet18().eval(), input_size=(3, 64, 64))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _, _, boxes = occluder_grid(64, 64, 16, 8)
    engine = occlusion_engine(lens, x)
    engine.mode = "incremental"
    per_box = engine.batch_bytes(boxes.view(-1, 4)[:1], ["layer3"])
    monkeypatch.setattr(occ_mod, "_BATCH_BYTES", 10 * per_box)
    bs = occ_mod._auto_batch_size(lens, x, boxes, "layer3")
    assert 5 <= bs <= 12 and engine.batch_bytes(boxes.view(-1, 4)[:bs], ["layer3"]) <= 1.2 * occ_mod._BATCH_BYTES
    chunks = []
    a = occlusion(lens, x, size=16, stride=8, layer="layer3", progress=lambda done, total: chunks.append(total))
    b = occlusion(lens, x, size=16, stride=8, layer="layer3", batch_size=1000, progress=False)
    assert chunks[-1] == -(-boxes.shape[0] * boxes.shape[1] // bs) > 1
    assert torch.allclose(a.probability, b.probability, atol=1e-6) and torch.equal(a.top_class, b.top_class)
    assert torch.allclose(a.feature_map, b.feature_map, rtol=1e-5)


def test_occlude(small_lens, small_images, hand_lens):
    x = small_lens.to_input(small_images[0])
    out = occlude(small_lens, small_images[0], (2, 3, 6, 20))
    ref = x.clone()
    ref[..., 2:6, 3:16] = 0.0           # normalised input: the mean pixel is 0
    assert out.shape == (1, 3, 16, 16) and torch.equal(out, ref)
    out = occlude(small_lens, x[0], Box(0, 0, 2, 2), fill=[1.0, 2.0, 3.0])
    assert out[0, :, 0, 0].tolist() == [1.0, 2.0, 3.0] and torch.equal(out[..., 2:, :], x[..., 2:, :])
    # no normalisation: the grey is 0.5
    assert occlude(hand_lens, torch.zeros(1, 8, 8), (0, 0, 1, 1))[0, 0, 0, 0] == 0.5


def test_hand_model_by_hand(hand_lens):
    """Ones everywhere; conv 3x3 of ones → 9 everywhere; pooled 3x3 map of 9s; fc row 0 = +81, row 1 = -81."""
    img = torch.ones(1, 8, 8)
    occ = occlusion(hand_lens, img, size=8, stride=1, fill=0.0, layer="conv1", progress=False)
    assert occ.base_feature_map == 9.0 * 36 and occ.shape == (1, 1)
    assert occ.feature_map[0, 0] == 0.0                       # everything occluded with zeros
    assert occ.top_probability[0, 0] == 0.5                   # both logits 0
    occ = occlusion(hand_lens, img, size=2, stride=6, fill=0.0, layer="conv1", progress=False)
    # a 2x2 hole at the corner (0, 0) removes 1+2+2+4 = 9 ... from the conv sums: 324 - (1+2+2+4)
    assert occ.feature_map[0, 0] == 324 - 9


def test_bad_input(small_lens, small_images, model_hooks):
    img = small_images[0]
    before = model_hooks(small_lens.model)
    with pytest.raises(TypeError, match="Lens"):
        occlusion(small_lens.model, img, size=3, stride=2)
    with pytest.raises(TypeError, match="Lens"):
        occlude(None, img, (0, 0, 2, 2))
    with pytest.raises(ValueError, match="larger than"):
        occlusion(small_lens, img, size=17, stride=2)
    with pytest.raises(ValueError, match="size must be >= 1"):
        occlusion(small_lens, img, size=0, stride=2)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        occlusion(small_lens, img, size=3, stride=-1)
    with pytest.raises(TypeError, match="size must be an int"):
        occlusion(small_lens, img, size=2.5, stride=1)
    with pytest.raises(TypeError, match="stride must be an int"):
        occlusion(small_lens, img, size=2, stride="2")
    with pytest.raises(TypeError, match="size must be an int"):
        occlusion(small_lens, img, size=True, stride=1)
    with pytest.raises(ValueError, match="out of range"):
        occlusion(small_lens, img, size=4, stride=4, target=5)
    with pytest.raises(TypeError, match="target"):
        occlusion(small_lens, img, size=4, stride=4, target=1.0)
    with pytest.raises(ValueError, match="fill"):
        occlusion(small_lens, img, size=4, stride=4, fill="black")
    with pytest.raises(ValueError, match="3-channel"):
        occlusion(small_lens, img, size=4, stride=4, fill=[0, 1])
    with pytest.raises(ValueError, match="convolutional"):
        occlusion(small_lens, img, size=4, stride=4, layer="fc3")
    with pytest.raises(ValueError, match="empty"):
        occlude(small_lens, img, (3, 3, 3, 5))
    with pytest.raises(ValueError, match="outside"):
        occlude(small_lens, img, (20, 0, 22, 4))
    with pytest.raises(TypeError, match="box"):
        occlude(small_lens, img, (0, 0, 2.0, 2))
    assert model_hooks(small_lens.model) == before


def test_public_names():
    assert zfwidgets.occlusion is occlusion and zfwidgets.occlude is occlude
    assert OcclusionMaps.__dataclass_fields__


# ----- ZF §4.2 on the trained bundled model --------------------------------------------------------
def object_vs_border(lens, sample, size=8, stride=2):
    """Mean p(true) with the occluder on the object (>= 90% of the box object pixels) and on the border
    (<= 10% object pixels); object pixels: raw intensity above 10% of the maximum."""
    occ = occlusion(lens, sample.image, size=size, stride=stride, target=sample.label, progress=False)
    pixels = np.asarray(sample.image, dtype=np.float64)
    obj = pixels > 0.1 * pixels.max()
    frac = np.array([[obj[y0:y1, x0:x1].mean() for y0, x0, y1, x1 in row] for row in occ.boxes.tolist()])
    p = occ.probability.numpy()
    on, off = p[frac >= 0.9], p[frac <= 0.1]
    return (float(on.mean()) if on.size else None, float(off.mean()) if off.size else None, occ.base_probability)


def test_bundled_occluding_the_object_lowers_p_true_more_than_the_border(bundled):
    """ZF Fig. 7 (d): p(true class) drops when the object is covered. Protocol (fixed before measuring): every
    bundled sample that has both object positions (>= 90% object pixels under an 8x8 occluder, stride 2)
    and border positions (<= 10%); per image the mean p(true) over each kind of position; asserted on the
    mean over images. The per-image counts are printed, not asserted."""
    results = []
    for s in zfwidgets.samples():
        on, off, base = object_vs_border(bundled, s)
        if on is not None and off is not None:
            results.append((s.class_name, on, off, base))
    on = np.array([r[1] for r in results])
    off = np.array([r[2] for r in results])
    print(f"\n{len(results)} images; mean p(true): object occluded {on.mean():.3f}, border occluded "
          f"{off.mean():.3f}, unoccluded {np.mean([r[3] for r in results]):.3f}; object < border on "
          f"{int((on < off).sum())}, object > border on {int((on > off).sum())}")
    from ..figures import report
    report("occlusion finding", f"{len(results)} images, mean p(true) object covered {on.mean():.3f}, border covered "
                                f"{off.mean():.3f}; object lower on {int((on < off).sum())} images")
    assert len(results) >= 10
    assert on.mean() < off.mean()


def test_the_projection_is_made_on_first_use_and_refused_after_the_weights_change(small_lens, small_images,
                                                                                  monkeypatch):
    """Issue 29 item 2: the maps cost no backward until the projection is asked for (a first call that is
    never plotted pays only its forwards); asked for, it is the deconvnet projection of the followed map's
    strongest unit, made once; after the weights change it is refused with a message saying to recompute the
    maps."""
    import zfwidgets.analysis.occlusion as occ_mod
    calls = []
    real = occ_mod.project
    monkeypatch.setattr(occ_mod, "project", lambda *a, **k: calls.append(a[2:4]) or real(*a, **k))
    img = small_images[3]
    occ = occlusion(small_lens, img, size=4, stride=4, progress=False)
    assert calls == []
    p = occ.projection
    assert calls == [(occ.layer, occ.channel)] and p.channel == occ.channel and p.method == "deconvnet"
    assert occ.projection is p and len(calls) == 1             # made once
    again = occlusion(small_lens, img, size=4, stride=4, progress=False)
    with torch.no_grad():
        next(small_lens.model.parameters()).mul_(1.0)          # the same values, written in place
    with pytest.raises(RuntimeError, match="weights changed"):
        again.projection
