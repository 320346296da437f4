"""One data-set item is one image to every reader: ``zf.top_activations``, ``zf.mine`` and the panels take the
same images from pairs, triples, ``(image, target)`` records, dicts, samples, tensors, a ``Dataset`` and a
``DataLoader``.

The reference is built here by hand: the samples' pixels scaled to [0, 1] and normalised by the model's mean and
std, and the top-k of each map from plain forwards of those inputs with a forward hook.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import zfwidgets as zf
from zfwidgets.core.inputs import as_input

LAYER, CHANNELS, K = "conv2", list(range(6)), 3


@pytest.fixture(scope="module")
def lens():
    return zf.load("zfnet-fashion")


@pytest.fixture(scope="module")
def data(lens):
    samples = zf.samples()[::7][:6]                               # six images of six classes
    pixels = np.stack([np.asarray(s.image) for s in samples])     # N x 28 x 28 uint8
    labels = [s.label for s in samples]
    mean, std = lens.mean[0], lens.std[0]
    x = ((torch.from_numpy(pixels).float() / 255 - mean) / std).unsqueeze(1)   # N x 1 x 28 x 28 model input
    return samples, pixels, labels, x


class Items(Dataset):
    """A map-style Dataset over a list of items, returned as they are."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def forms(data):
    """``{name: (what the readers are given, the items one by one)}``: every form holds the same six images."""
    samples, pixels, labels, x = data
    pil = [s.image for s in samples]
    lists = {
        "pairs": [(im, y) for im, y in zip(pil, labels)],
        "triples": [(im, y, f"note {i}") for i, (im, y) in enumerate(zip(pil, labels))],
        "image and target dict": [(a, {"boxes": [[0, 0, 4, 4]]}) for a in pixels],
        "dicts": [{"image": im, "label": y} for im, y in zip(pil, labels)],
        "img dicts": [{"img": a} for a in pixels],
        "samples": list(samples),
        "uint8 tensors": [torch.from_numpy(a) for a in pixels],
        "float tensors": [xi.clone() for xi in x],
        "float pairs": [(xi.clone(), y) for xi, y in zip(x, labels)],
    }
    out = {name: (items, items) for name, items in lists.items()}
    triples = Items([(torch.from_numpy(a)[None], y, i) for i, (a, y) in enumerate(zip(pixels, labels))])
    out["Dataset of triples"] = (triples, [triples[i] for i in range(len(triples))])
    tensors = TensorDataset(torch.from_numpy(pixels), torch.tensor(labels))
    out["TensorDataset"] = (tensors, [tensors[i] for i in range(len(tensors))])
    pairs = Items([(xi.clone(), y) for xi, y in zip(x, labels)])
    out["DataLoader"] = (DataLoader(pairs, batch_size=4, shuffle=False), [pairs[i] for i in range(len(pairs))])
    return out


FORMS = ["pairs", "triples", "image and target dict", "dicts", "img dicts", "samples", "uint8 tensors",
         "float tensors", "float pairs", "Dataset of triples", "TensorDataset", "DataLoader"]


@pytest.fixture(scope="module")
def reference(lens, data):
    """Per map of ``LAYER``: the ``K`` best ``(value, image, (y, x))``, by value descending then image index."""
    x = data[3]
    got = {}
    module = lens.resolve(LAYER)[2]
    hook = module.register_forward_hook(lambda m, a, out: got.__setitem__("a", out.detach().clone()))
    try:
        with torch.no_grad():
            lens.model.eval()(x)
    finally:
        hook.remove()
    a = got["a"]
    width = a.shape[-1]
    rows = []
    for c in CHANNELS:
        flat = a[:, c].flatten(1)
        best = flat.max(1).values
        pos = [int(np.flatnonzero(flat[i].numpy() == best[i].item())[0]) for i in range(len(x))]
        order = sorted(range(len(x)), key=lambda i: (-float(best[i]), i))[:K]
        rows.append([(float(best[i]), i, (pos[i] // width, pos[i] % width)) for i in order])
    return rows


def check(rows, values, indices, positions, what):
    for r, (c, ref) in enumerate(zip(CHANNELS, rows)):
        assert indices[r].tolist() == [i for _, i, _ in ref], (what, c)
        assert [tuple(p) for p in positions[r].tolist()] == [p for _, _, p in ref], (what, c)
        torch.testing.assert_close(values[r].float(), torch.tensor([v for v, _, _ in ref]), rtol=1e-5, atol=1e-5,
                                   msg=f"{what}, map {c}")


@pytest.mark.parametrize("name", FORMS)
def test_every_reader_sees_the_same_images(lens, data, reference, name):
    given, items = forms(data)[name]
    x = data[3]

    # the panels: the one conversion they call, on each item
    panel_x = torch.cat([as_input(lens, item) for item in items])
    torch.testing.assert_close(panel_x, x, rtol=0, atol=1e-6)

    top = zf.top_activations(lens, given, LAYER, channels=CHANNELS, k=K, batch_size=len(x), progress=False)
    check(reference, top.values, top.indices, top.positions, f"top_activations, {name}")

    g = zf.mine(lens, given, [LAYER], k=K, batch_size=len(x), progress=False, projections=False)
    t = g.tensors(LAYER)
    check(reference, t["values"][CHANNELS], t["indices"][CHANNELS], t["positions"][CHANNELS], f"mine, {name}")


def test_a_panel_shows_the_image_of_its_item(lens, data):
    """A panel given a data-set item converts the item's image (here: a triple, and a dict with "img")."""
    samples, pixels, labels, x = data
    for item, i in [((samples[2].image, labels[2], "note"), 2), ({"img": pixels[4], "label": labels[4]}, 4)]:
        panel = zf.LesionPanel(lens, item, [s.image for s in samples], labels)
        try:
            torch.testing.assert_close(panel.x, x[i:i + 1], rtol=0, atol=1e-6)
        finally:
            panel.close()
