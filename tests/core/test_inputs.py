"""The one input pipeline: every public analysis that takes a collection of images gives the same result for
every accepted form of the same images, takes the labels from the data where the data has them, and refuses
bad forms with a clear TypeError/ValueError.

The reference is the list form: the bundled samples as PIL images with explicit labels. The float-tensor forms
are those images preprocessed by the lens's own transform (model input), so every form feeds the model the
same numbers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import zfwidgets as zf
from zfwidgets.core.inputs import gather

N = 12


class PILDataset(Dataset):
    """A Dataset of bare PIL images (no labels)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.fixture(scope="module")
def lens():
    return zf.load("zfnet-fashion")


@pytest.fixture(scope="module")
def base(lens):
    samples = zf.samples()[::3][:N]
    pil = [s.image for s in samples]
    labels = [s.label for s in samples]
    pixels = np.stack([np.asarray(im) for im in pil])                     # N x 28 x 28 uint8
    x = torch.cat([lens.transform(im).unsqueeze(0) for im in pil])       # model input, by the lens's transform
    return pil, labels, pixels, x


FORMS = ["list_pil", "uint8_array", "float_tensor", "tensor_dataset", "pil_dataset", "dataloader"]


def form(name, base):
    """(images, labels to pass): labels are passed only where the form does not carry them."""
    pil, labels, pixels, x = base
    y = torch.tensor(labels)
    if name == "list_pil":
        return list(pil), list(labels)
    if name == "uint8_array":
        return pixels.copy(), np.array(labels)
    if name == "float_tensor":
        return x.clone(), y.clone()
    if name == "tensor_dataset":
        return TensorDataset(x.clone(), y.clone()), None
    if name == "pil_dataset":
        return PILDataset(list(pil)), list(labels)
    if name == "dataloader":
        return DataLoader(TensorDataset(x.clone(), y.clone()), batch_size=5, shuffle=False), None
    raise AssertionError(name)


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.allclose(a, b, rtol=tol, atol=tol, equal_nan=True), np.abs(a - b).max()


# ----- the pipeline itself -------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMS)
def test_every_form_gives_the_same_batches_and_labels(lens, base, name):
    images, labels = form(name, base)
    data = gather(lens, images, labels)
    assert len(data) == N
    assert data.labels.tolist() == base[1]                 # given, or taken from the data
    x = torch.cat([b for _, b in data.batches(4)])
    assert torch.equal(x, base[3])
    starts = [s for s, _ in data.batches(4)]
    assert starts[0] == 0 and starts == sorted(starts)


def test_labels_come_from_the_data_and_explicit_labels_win(lens, base):
    pil, labels, _, x = base
    pairs = [(im, lab) for im, lab in zip(pil, labels)]
    assert gather(lens, pairs).labels.tolist() == labels
    assert gather(lens, zf.samples()[:5]).labels.tolist() == [s.label for s in zf.samples()[:5]]
    assert gather(lens, [{"image": im, "label": lab} for im, lab in zip(pil, labels)]).labels.tolist() == labels
    other = [(lab + 1) % 10 for lab in labels]
    assert gather(lens, pairs, other).labels.tolist() == other
    assert gather(lens, TensorDataset(x, torch.tensor(labels)), other).labels.tolist() == other
    assert gather(lens, list(pil)).labels is None          # bare images carry none


def test_bad_forms_are_refused_clearly(lens, base):
    pil, labels, pixels, x = base
    bad_types = [None, 5, "image.png", {"a": 1}, pil[0], pixels[0], x[0], pixels.astype(np.float32),
                 torch.zeros(3, 1, 28, 28, dtype=torch.int64)]
    for bad in bad_types:
        with pytest.raises(TypeError):
            gather(lens, bad)
    with pytest.raises(ValueError, match="no images"):
        gather(lens, [])
    with pytest.raises(ValueError, match="N x C x H x W"):
        gather(lens, torch.zeros(28, 28, 2, 1, 1))
    with pytest.raises(ValueError, match=f"got {N} images but {N - 1} labels"):
        gather(lens, list(pil), labels[:-1])
    with pytest.raises(TypeError, match="integers"):
        gather(lens, list(pil), [0.5] * N)
    with pytest.raises(ValueError, match="shuffle"):
        gather(lens, DataLoader(TensorDataset(x, torch.tensor(labels)), batch_size=4, shuffle=True))
    with pytest.raises(ValueError, match="channel"):
        list(gather(lens, torch.zeros(2, 3, 28, 28)).batches())
    with pytest.raises(ValueError, match="needs labels"):
        zf.lesion(lens, list(pil), layer="conv5")
    with pytest.raises(ValueError, match=f"got {N} images but 3 labels"):
        zf.layer_probes(lens, list(pil), labels[:3], list(pil), labels, layers=["conv1"], progress=False)


# ----- every public analysis, every form ------------------------------------------------------------
def _top(lens, images, labels):
    r = zf.top_activations(lens, images, "conv2", channels=range(4), k=3, progress=False)
    return [r.values.numpy(), r.indices.numpy(), r.positions.numpy()]


def _filters(lens, images, labels):
    r = zf.filter_health(lens, images, progress=False)
    return [r.dead_fraction, r.weight_norm]


def _invariance(lens, images, labels):
    r = zf.invariance(lens, images, transform="rotate", values=[0, 30], labels=labels, progress=False)
    return [r.distance["conv1"].numpy(), r.probability.numpy(), r.labels.numpy()]


def _correspondence(lens, images, labels):
    boxes = {"top": [(2, 8, 10, 20)] * N}
    r = zf.correspondence(lens, images, boxes, layers=["conv5", "fc7"], random_controls=2, progress=False)
    return [r.delta]


def _evolution(lens, images, labels):
    r = zf.feature_evolution("zfnet-fashion", images, ["conv1"], channels={"conv1": [0, 1]}, epochs=[1, 2],
                             progress=False)
    return [r.image_index["conv1"], r.activation["conv1"]]


def _lesion(lens, images, labels):
    r = zf.lesion(lens, images, labels, "conv5", channels=range(8), progress=False)
    return [r.accuracy_before, r.accuracy_after, r.predictions_after]


def _lesion_sweep(lens, images, labels):
    r = zf.lesion_sweep(lens, images, labels, layers=["conv1", "fc6"], progress=False)
    return [r.accuracy_before, [l.accuracy_after for l in r.lesions]]


def _features(lens, images, labels):
    from zfwidgets.analysis.probes import layer_features
    r = layer_features(lens, images, ["conv3", "fc7"], progress=False)
    return [r["conv3"].numpy(), r["fc7"].numpy()]


def _probes(lens, images, labels):
    r = zf.layer_probes(lens, images, labels, images, labels, layers=["conv2", "fc7"], progress=False)
    return [r.test_accuracy, r.train_accuracy]


def _generalisation(lens, images, labels):
    data = (images, labels, images, labels) if labels is not None else (images, images)
    r = zf.feature_generalisation(lens, n_per_class=1, data=data, scratch=False, progress=False)
    return [r.frozen_accuracy]


ANALYSES = {"top_activations": _top, "filter_health": _filters, "invariance": _invariance,
            "correspondence": _correspondence, "feature_evolution": _evolution, "lesion": _lesion,
            "lesion_sweep": _lesion_sweep, "layer_features": _features, "layer_probes": _probes,
            "feature_generalisation": _generalisation}


@pytest.fixture(scope="module")
def reference(lens, base):
    images, labels = form("list_pil", base)
    return {name: fn(lens, images, labels) for name, fn in ANALYSES.items()}


@pytest.mark.parametrize("name", [f for f in FORMS if f != "list_pil"])
@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_analysis_gives_the_list_result_for_every_form(lens, base, reference, analysis, name):
    images, labels = form(name, base)
    got = ANALYSES[analysis](lens, images, labels)
    for a, b in zip(got, reference[analysis]):
        close(a, b)


def test_boxes_are_read_one_way():
    from zfwidgets.analysis.receptive import Box
    from zfwidgets.core.inputs import as_box
    for given in [(1, 2, 5, 6), [1, 2, 5, 6], np.array([1, 2, 5, 6]), torch.tensor([1, 2, 5, 6]), Box(1, 2, 5, 6)]:
        assert as_box(given, 8, 8) == (1, 2, 5, 6), given
    assert as_box((-3, 2, 5, 12), 8, 8, clip=True) == (0, 2, 5, 8)
    with pytest.raises(ValueError, match="outside the 8x8"):
        as_box((-3, 2, 5, 12), 8, 8)
    with pytest.raises(ValueError, match="lies outside"):
        as_box((9, 9, 12, 12), 8, 8, clip=True)
    with pytest.raises(ValueError, match="empty"):
        as_box((4, 2, 4, 6), 8, 8, clip=True)
    with pytest.raises(TypeError, match="part 'eye': box coordinates must be ints"):
        as_box((1.5, 2, 5, 6), 8, 8, where="part 'eye'")
    with pytest.raises(TypeError, match="a box must be"):
        as_box((1, 2, 5), 8, 8)


def test_fills_are_read_one_way(lens):
    from zfwidgets.core.inputs import fill_tensor
    assert fill_tensor(lens, "mean").tolist() == [0.0]
    assert fill_tensor(lens, 0.5).tolist() == fill_tensor(lens, [0.5]).tolist() == [0.5]
    for bad, error in [("grey", ValueError), (True, TypeError), ([1, 2], ValueError), (float("nan"), ValueError)]:
        with pytest.raises(error, match="fill"):
            fill_tensor(lens, bad)
