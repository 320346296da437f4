"""Invariance sweeps: transforms against exact pixel operations, distances against a direct computation,
labels, bad input, and ZF's finding on the bundled model."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import zfwidgets
from zfwidgets.analysis.invariance import Invariance, default_values, invariance, transform_input
from zfwidgets.plot.invariance import plot_invariance


def shift_down(x, v, fill):
    """Vertical shift by an integer number of pixels, uncovered rows filled: plain slicing."""
    out = torch.empty_like(x)
    out[:] = fill.view(1, -1, 1, 1)
    if v >= 0:
        out[..., v:, :] = x[..., : x.shape[-2] - v, :]
    else:
        out[..., : v, :] = x[..., -v:, :]
    return out


def test_transforms_match_exact_pixel_operations():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    fill = torch.tensor([0.5, -1.0, 2.0])
    for v in (-4, -1, 0, 3):
        assert torch.allclose(transform_input(x, "translate", v, fill), shift_down(x, v, fill), atol=1e-4)
    assert torch.allclose(transform_input(x, "rotate", 90, fill), torch.rot90(x, 1, (2, 3)), atol=1e-4)
    assert torch.allclose(transform_input(x, "rotate", 180, fill), torch.rot90(x, 2, (2, 3)), atol=1e-4)
    assert torch.allclose(transform_input(x, "rotate", 360, fill), x, atol=1e-4)
    assert torch.allclose(transform_input(x, "scale", 1.0, fill), x, atol=1e-4)
    # shrinking by half leaves a border of fill; a constant image stays constant when enlarged
    small = transform_input(x, "scale", 0.5, fill)
    assert torch.allclose(small[:, :, 0, :], fill.view(1, 3, 1).expand(2, 3, 12), atol=1e-4)
    const = torch.full((1, 3, 12, 12), 0.3)
    assert torch.allclose(transform_input(const, "scale", 1.7, fill), const, atol=1e-4)


def test_distances_and_probabilities_equal_a_direct_computation(small_lens, small_images):
    images = small_images[:3]
    values = [-3, 0, 2, 5]
    inv = invariance(small_lens, images, transform="translate", values=values, layers=["conv1", "fc3"],
                     labels=[0, 2, 4], progress=False)
    x = small_lens.to_batch(images)
    fill = small_lens.fill_value
    feats = {}
    hooks = [small_lens.resolve(l)[2].register_forward_hook(
        lambda m, a, o, l=l: feats.__setitem__(l, o.detach().flatten(1).clamp(min=0).double()))
        for l in ("conv1", "fc3")]
    try:
        with torch.no_grad():
            small_lens.model(x)
            f0 = dict(feats)
            for j, v in enumerate(values):
                p = small_lens.model(shift_down(x, v, fill)).softmax(1)
                for l in ("conv1", "fc3"):
                    d = (feats[l] - f0[l]).norm(dim=1)
                    assert torch.allclose(inv.distance[l][:, j], d, rtol=1e-3, atol=1e-3)
                    assert torch.allclose(inv.relative[l][:, j], d / f0[l].norm(dim=1), rtol=1e-3, atol=1e-4)
                assert torch.allclose(inv.probability[:, j], p[[0, 1, 2], [0, 2, 4]].double(), atol=1e-4)
                assert inv.predicted[:, j].tolist() == p.argmax(1).tolist()
    finally:
        for h in hooks:
            h.remove()
    assert inv.distance["conv1"][:, 1].abs().max() < 1e-3       # value 0 = the original
    assert inv.labels.tolist() == [0, 2, 4] and inv.labels_given
    assert list(inv.values) == values and inv.layers == ["conv1", "fc3"]


def test_defaults_labels_and_plot(zf_random, small_lens, small_images):
    samples = zfwidgets.samples()[::10]
    inv = invariance(zf_random, samples, transform="rotate", values=[0, 45], progress=False)
    assert inv.layers == ["conv1", "fc7"]                           # lowest conv, last hidden layer
    assert inv.labels.tolist() == [s.label for s in samples] and inv.labels_given
    inv = invariance(small_lens, small_images[:2], transform="scale", values=[1.0, 1.3], progress=False)
    assert inv.layers == ["conv1", "conv2"]                         # no hidden fc: the layer before the fc
    logits, _ = small_lens.run(small_lens.to_batch(small_images[:2]))
    assert inv.labels.tolist() == logits.argmax(1).tolist() and not inv.labels_given
    one = invariance(small_lens, small_images[0], transform="translate", values=[1], labels=3, progress=False)
    assert one.probability.shape == (1, 1) and one.labels.tolist() == [3]
    assert list(default_values("translate", 28)) == list(range(-8, 9))
    assert default_values("rotate", 28)[[0, -1]].tolist() == [0, 360]
    rows = [invariance(small_lens, small_images[:2], transform=t, progress=False)
            for t in ("translate", "scale", "rotate")]
    assert isinstance(rows[0].plot(), Figure)
    fig = plot_invariance(rows, relative=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 4
    m = rows[0].mean_relative()
    assert set(m) == {"conv1", "conv2"} and all(v > 0 for v in m.values())


def test_bad_input(small_lens, small_images, model_hooks):
    imgs = small_images[:2]
    before = model_hooks(small_lens.model)
    with pytest.raises(TypeError, match="Lens"):
        invariance(small_lens.model, imgs, transform="rotate")
    with pytest.raises(ValueError, match="transform must be one of"):
        invariance(small_lens, imgs, transform="shear")
    with pytest.raises(TypeError, match="transform must be a string"):
        invariance(small_lens, imgs, transform=3)
    with pytest.raises(ValueError, match="empty"):
        invariance(small_lens, imgs, transform="rotate", values=[])
    with pytest.raises(ValueError, match="> 0"):
        invariance(small_lens, imgs, transform="scale", values=[1.0, 0.0])
    with pytest.raises(TypeError, match="values"):
        invariance(small_lens, imgs, transform="scale", values=["big"])
    with pytest.raises(ValueError, match="2 images"):
        invariance(small_lens, imgs, transform="rotate", labels=[1, 2, 3])
    with pytest.raises(ValueError, match="out of range"):
        invariance(small_lens, imgs, transform="rotate", labels=[1, 9])
    with pytest.raises(ValueError, match="unknown layer"):
        invariance(small_lens, imgs, transform="rotate", layers=["conv9"])
    with pytest.raises(ValueError, match="no images"):
        invariance(small_lens, [], transform="rotate")
    assert model_hooks(small_lens.model) == before


def test_public_name():
    assert zfwidgets.invariance is invariance and Invariance.__dataclass_fields__


# ----- ZF §4 (Fig. 5) on the trained bundled model -------------------------------------------------
@pytest.mark.parametrize("transform", ["translate", "scale"])
def test_bundled_low_layer_moves_more_than_the_top_layer(bundled, transform):
    samples = [zfwidgets.samples(label)[0] for label in range(10)]
    inv = invariance(bundled, samples, transform=transform, progress=False)
    low, top = inv.layers
    m = inv.mean_relative()
    keep = ~np.isclose(inv.values, 0.0 if transform == "translate" else 1.0)
    per_value_low = inv.relative[low].numpy()[:, keep].mean(0)
    per_value_top = inv.relative[top].numpy()[:, keep].mean(0)
    print(f"\n{transform}: mean relative distance {low} {m[low]:.3f}, {top} {m[top]:.3f}")
    print("  values      ", np.round(inv.values[keep], 2).tolist())
    print(f"  {low:<12}", np.round(per_value_low, 3).tolist())
    print(f"  {top:<12}", np.round(per_value_top, 3).tolist())
    assert m[low] > m[top]
    assert (per_value_low > per_value_top).mean() >= 0.75
