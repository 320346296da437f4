"""lesion / lesion_sweep against a numpy re-implementation of a tiny net; the model must come back unchanged."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import zfwidgets
from zfwidgets import Lens
from zfwidgets.analysis.lesion import ablation_table, lesion, lesion_sweep

HW = 3


class Tripwire(nn.Module):
    """Passes its input through; raises on the ``at``-th call (to test clean-up after a failure)."""

    def __init__(self):
        super().__init__()
        self.calls, self.at = 0, None

    def forward(self, x):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise RuntimeError("tripwire")
        return x


def _model():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), Tripwire(), nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Flatten(),
                      nn.Dropout(0.5), nn.Linear(3 * HW * HW, 4))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def _ref_predict(m, x, where=None, channels=None, mode="zero"):
    """The net written out in numpy (1x1 convs are per-pixel matrix products), with the lesion applied."""
    w1, b1 = m[0].weight.detach().double().numpy()[:, :, 0, 0], m[0].bias.detach().double().numpy()
    w2, b2 = m[3].weight.detach().double().numpy()[:, :, 0, 0], m[3].bias.detach().double().numpy()
    wf, bf = m[7].weight.detach().double().numpy(), m[7].bias.detach().double().numpy()
    xs = x.double().numpy()  # N x 1 x H x W

    def conv(w, b, h):
        return np.einsum("oc,nchw->nohw", w, h) + b[None, :, None, None]

    def knock(h, all_h):
        if where is None:
            return h
        h = h.copy()
        sel = slice(None) if channels is None else list(channels)
        if mode == "zero":
            h[:, sel] = 0
        elif mode == "mean":
            h[:, sel] = all_h.mean(0)[sel]
        return h

    h1 = conv(w1, b1, xs)
    if where == "conv1":
        h1 = knock(h1, h1)
    r1 = np.maximum(h1, 0)
    if where == "conv2" and mode == "skip":
        h2 = r1
    else:
        h2 = conv(w2, b2, r1)
        if where == "conv2":
            h2 = knock(h2, h2)
    out = np.maximum(h2, 0).reshape(len(xs), -1) @ wf.T + bf
    return out.argmax(1)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    model = _model()
    x = torch.randn(37, 1, HW, HW, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    y[::4] = (y[::4] + 1) % 4  # the intact model is wrong on a quarter of them
    model.train()
    return Lens(model, input_size=(1, HW, HW)), x, y


@pytest.mark.parametrize("layer,channels,mode", [
    ("conv1", [1], "zero"), ("conv1", None, "zero"), ("conv2", [0, 2], "zero"), ("conv1", [0, 2], "mean"),
    ("conv2", None, "skip"), ("fc3", [0], "zero")])
def test_lesion_matches_numpy_reference(data, layer, channels, mode):
    lens, x, y = data
    r = lesion(lens, x, y, layer, channels, mode=mode, batch_size=10, show_progress=False)
    if layer == "fc3":  # zeroing a logit: class 0 scores 0 instead
        with torch.no_grad():
            logits = lens.model.eval()(x)
        lens.model.train()
        logits[:, 0] = 0
        ref = logits.argmax(1).numpy()
    else:
        ref = _ref_predict(lens.model, x, layer, channels, mode)
    before = _ref_predict(lens.model, x)
    np.testing.assert_array_equal(r.predictions_after, ref)
    np.testing.assert_array_equal(r.predictions_before, before)
    assert r.accuracy_before == pytest.approx((before == y.numpy()).mean())
    assert r.accuracy_before == pytest.approx(27 / 37)  # the 10 relabelled images (0, 4, ..., 36) are wrong
    assert r.accuracy_after == pytest.approx((ref == y.numpy()).mean())
    assert r.drop == pytest.approx(r.accuracy_before - r.accuracy_after)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def _assert_same(model, snap):
    state, flags, hooks, grads = snap
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()] == hooks
    assert [p.requires_grad for p in model.parameters()] == grads


def test_model_unchanged_after_success_and_failure(data):
    lens, x, y = data
    model = lens.model
    model[0].eval()  # mixed flags must come back as they were
    snap = _snapshot(model)
    lesion(lens, x, y, "conv2", [1], mode="mean", batch_size=8, show_progress=False)
    _assert_same(model, snap)
    trip = model[2]
    trip.calls, trip.at = 0, 8  # 5 batches before, then the lesioned pass fails on its 3rd batch
    with pytest.raises(RuntimeError, match="tripwire"):
        lesion(lens, x, y, "conv1", [0], batch_size=8, show_progress=False)
    trip.at = None
    _assert_same(model, snap)


def test_sweep(data):
    lens, x, y = data
    sweep = lesion_sweep(lens, x, y, fraction=0.5, seed=3, show_progress=False)
    assert sweep.layers == ["conv1", "conv2"]  # every layer but the output one
    for les in sweep.lesions:
        assert len(les.channels) == 2  # round(0.5 * 3)
        ref = _ref_predict(lens.model, x, les.layer, les.channels)
        assert les.accuracy_after == pytest.approx((ref == y.numpy()).mean())
        assert les.accuracy_before == sweep.accuracy_before
    skip = lesion_sweep(lens, x, y, ["conv1", "conv2"], mode="skip", show_progress=False)
    assert np.isnan(skip.lesions[0].accuracy_after)  # 1 -> 3 channels: cannot be skipped
    ref = _ref_predict(lens.model, x, "conv2", None, "skip")
    assert skip.lesions[1].accuracy_after == pytest.approx((ref == y.numpy()).mean())
    assert "not applicable" in skip.table()
    assert len(sweep.plot(ablation=None).axes) == 1


def _write_table(path):
    rows = [{"variant": "base", "description": "the full model", "parameters": 1000, "train_error": 0.1,
             "test_error": 0.12},
            {"variant": "no-fc6-fc7", "description": "fc 6, 7 removed", "parameters": 600, "train_error": 0.15,
             "test_error": 0.16}]
    path.write_text(json.dumps({"name": "zfnet-fashion", "seed": 0, "epochs": 3, "rows": rows, "command": "x"}))


def test_ablation_table_reads_the_training_scripts_format(tmp_path, data):
    p = tmp_path / "t.ablation.json"
    _write_table(p)
    t = ablation_table(path=p)
    assert t.variants == ["base", "no-fc6-fc7"] and t.test_error.tolist() == [0.12, 0.16]
    assert "12.00%" in t.table() and "fc 6, 7 removed" in t.table()
    lens, x, y = data
    sweep = lesion_sweep(lens, x, y, show_progress=False)
    assert len(sweep.plot(ablation=t).axes) == 2
    assert len(t.plot().axes) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"variant": "a"}]}))
    with pytest.raises(ValueError, match="not an ablation table"):
        ablation_table(path=bad)
    with pytest.raises(FileNotFoundError, match="--ablation"):
        ablation_table(path=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown bundled model"):
        ablation_table("resnet")


def test_bad_input(data):
    lens, x, y = data
    with pytest.raises(ValueError, match="out of range"):
        lesion(lens, x, y, "conv1", [3])
    with pytest.raises(TypeError):
        lesion(lens, x, y, "conv1", [1.0])
    with pytest.raises(ValueError, match="mode"):
        lesion(lens, x, y, "conv1", mode="drop")
    with pytest.raises(ValueError, match="cannot skip"):
        lesion(lens, x, y, "conv1", mode="skip")
    with pytest.raises(ValueError, match="labels"):
        lesion(lens, x, y[:-1], "conv1")
    with pytest.raises(TypeError, match="integers"):
        lesion(lens, x, y.float(), "conv1")
    with pytest.raises(ValueError, match="unknown layer"):
        lesion(lens, x, y, "conv4")
    with pytest.raises(ValueError, match="fraction"):
        lesion_sweep(lens, x, y, fraction=0)
    with pytest.raises(TypeError):
        lesion(lens.model, x, y, "conv1")


@pytest.mark.skipif(not (zfwidgets.zoo.WEIGHTS_DIR / "zfnet-fashion.ablation.json").exists(),
                    reason="the bundled ablation table is not installed")
def test_bundled_ablation_table():
    t = ablation_table("zfnet-fashion")
    assert t.variants[0] == "base" and len(t.variants) == 6
    assert ((0 <= t.test_error) & (t.test_error < 1)).all()
