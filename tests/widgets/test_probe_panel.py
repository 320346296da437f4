"""ProbePanel: the bars show zf.layer_probes' accuracies; a click shows the layer's confusion matrix (checked
against sklearn's confusion_matrix of the probe's predictions and their accuracy) and switches the explorer."""
import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

import zfwidgets
from zfwidgets.plot.colours import CONFUSION_CMAP

from .util import assert_same_model_state, fire, model_state, open_widget_ids, png_rgb, rgb_images, small_torchvision


def click_bar(panel, k):
    fire(panel.bars.canvas, "mouse_down", panel.GAP + k * (panel.BAR_W + panel.GAP) + 5, 100)


def check_layer(panel, lens, ref, k):
    layer = ref.layers[k]
    click_bar(panel, k)
    assert panel.error is None and panel.state["selected"] == layer
    pred = np.asarray(ref.test_predictions[k])
    y = ref.test_labels
    assert (pred == y).mean() == pytest.approx(ref.test_accuracy[k], abs=1e-12)
    K = len(panel.state["confusion"])
    want = confusion_matrix(y, pred, labels=list(range(K)))
    assert np.array_equal(np.array(panel.state["confusion"]), want)
    # the image: one cell per count, the colour scale 0..max
    from matplotlib import colormaps
    shown = png_rgb(panel.confusion_image.value)
    f = shown.shape[0] // K
    cell = shown[::f, ::f][:K, :K]
    expect = colormaps[CONFUSION_CMAP](want / max(want.max(), 1), bytes=True)[..., :3]
    assert np.abs(cell.astype(int) - expect.astype(int)).max() <= 1
    assert lens.resolve(panel.state["explorer_layer"])[2] is lens.resolve(layer)[2]   # the same module


def test_zfnet_random_bars_confusion_and_explorer(zf_random):
    s = zfwidgets.samples()
    xtr, ytr = [x.image for x in s[::2]], [x.label for x in s[::2]]
    xte, yte = [x.image for x in s[1::2]], [x.label for x in s[1::2]]
    state = model_state(zf_random.model)
    before = open_widget_ids()
    panel = zfwidgets.ProbePanel(zf_random, xtr, ytr, xte, yte, layers=["conv1", "conv3", "fc6"], max_iter=50)
    try:
        ref = zfwidgets.layer_probes(zf_random, xtr, ytr, xte, yte, ["conv1", "conv3", "fc6"], max_iter=50,
                                     progress=False)
        assert panel.state["layers"] == ref.layers
        assert np.allclose(panel.state["test_accuracy"], ref.test_accuracy)
        assert f'data-test="{ref.test_accuracy[1]:.6f}"' in panel.values.value
        check_layer(panel, zf_random, ref, 1)
        check_layer(panel, zf_random, ref, 2)
        fire(panel.bars.canvas, "mouse_down", 2, 2)               # a gap: nothing changes
        assert panel.state["selected"] == "fc6"
        assert_same_model_state(zf_random.model, state)
    finally:
        panel.close()
    assert open_widget_ids() <= before
    assert_same_model_state(zf_random.model, state)


@pytest.mark.parametrize("arch, side", [("alexnet", 64), ("resnet18", 32)])
def test_torchvision_random_weights(arch, side):
    lens = small_torchvision(arch, side)
    imgs = rgb_images(20, side)
    labels = [k % 5 for k in range(20)]
    layers = ["conv2", "conv5"]
    state = model_state(lens.model)
    ref = zfwidgets.layer_probes(lens, imgs[:12], labels[:12], imgs[12:], labels[12:], layers, max_iter=30,
                                 progress=False)
    panel = zfwidgets.ProbePanel(lens, probes=ref, images=imgs[:3])
    try:
        check_layer(panel, lens, ref, 0)
        check_layer(panel, lens, ref, 1)
        assert_same_model_state(lens.model, state)
    finally:
        panel.close()
    assert_same_model_state(lens.model, state)


def test_bad_arguments(zf_random):
    before = open_widget_ids()
    with pytest.raises(TypeError, match="probes="):
        zfwidgets.ProbePanel(zf_random)
    assert open_widget_ids() <= before
    s = zfwidgets.samples()
    ref = zfwidgets.layer_probes(zf_random, [x.image for x in s[::2]], [x.label for x in s[::2]],
                                 [x.image for x in s[1::2]], [x.label for x in s[1::2]], ["conv2"], max_iter=20,
                                 progress=False)
    panel = zfwidgets.ProbePanel(zf_random, probes=ref, explorer=False)
    try:
        with pytest.raises(ValueError, match="not probed"):
            panel.select("conv4")
        panel.select("conv2")
        assert panel.state["explorer_layer"] is None and panel.state["selected"] == "conv2"
    finally:
        panel.close()
