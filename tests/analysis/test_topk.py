"""Top-k mining: the streaming pass against a brute-force sort over all activations, the hits' boxes against
the gradient support, every accepted kind of image collection, and bad input."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import zfwidgets
from zfwidgets import project
from zfwidgets.analysis.receptive import receptive_field
from zfwidgets.analysis.topk import TopActivations, top_activations


def brute_force(lens, x, layer, k):
    """Every image's activation map by a plain forward hook, one image at a time; sort per channel by
    (-strongest activation, image index)."""
    module = lens.resolve(layer)[2]
    maps = []
    h = module.register_forward_hook(lambda m, a, o: maps.append(o.detach().clone()))
    try:
        with torch.no_grad():
            for i in range(x.shape[0]):
                lens.model(x[i:i + 1])
    finally:
        h.remove()
    a = torch.cat(maps)                        # N x C x H x W
    N, C, H, W = a.shape
    flat = a.flatten(2)
    strongest, where = flat.max(2)             # N x C
    out = []
    for c in range(C):
        order = sorted(range(N), key=lambda i: (-float(strongest[i, c]), i))[:k]
        out.append([(i, float(strongest[i, c]), divmod(int(flat[i, c].argmax()), W)) for i in order])
    return out


@pytest.mark.parametrize("layer,batch_size", [("conv1", 5), ("conv2", 8), ("2", 64)])
def test_streaming_equals_brute_force(small_lens, small_images, layer, batch_size):
    x = small_lens.to_batch(small_images)
    top = top_activations(small_lens, small_images, layer, k=4, batch_size=batch_size, progress=False)
    ref = brute_force(small_lens, x, layer, 4)
    assert top.count == len(small_images)
    assert top.channels == list(range(len(ref)))
    for c, hits in enumerate(ref):
        assert top.indices[c].tolist() == [i for i, _, _ in hits]
        assert torch.allclose(top.values[c], torch.tensor([v for _, v, _ in hits]), atol=1e-5)
        assert [tuple(p) for p in top.positions[c].tolist()] == [p for _, _, p in hits]


def test_hits_boxes_patches_projections(small_lens, small_images, support_box):
    top = top_activations(small_lens, small_images, "conv2", channels=[1, 4], k=3, progress=False)
    x = small_lens.to_batch(small_images)
    for row, c in enumerate(top.channels):
        assert len(top.hits[row]) == 3
        for hit in top.hits[row]:
            box = hit.box
            assert box == receptive_field(small_lens, "conv2", hit.position)
            assert box.as_tuple() == tuple(support_box(small_lens.model, "3", [hit.position], (3, 16, 16))[0])
            display = small_lens.to_display(x[hit.index])
            assert np.array_equal(hit.patch, display[box.y0:box.y1, box.x0:box.x1])
            p = project(small_lens, x[hit.index], "conv2", c, position=hit.position)
            assert abs(p.activation - hit.activation) < 1e-4
            assert torch.allclose(hit.projection, p.pixels[:, box.y0:box.y1, box.x0:box.x1])
            assert hit.projection.shape == (3, box.height, box.width)
    assert top.hits_of(4) is top.hits[1]


def test_every_kind_of_image_collection(small_lens, small_images):
    x = small_lens.to_batch(small_images)
    want = top_activations(small_lens, small_images, "conv1", k=3, batch_size=7, progress=False).indices

    class Pairs(Dataset):
        def __len__(self):
            return len(small_images)

        def __getitem__(self, i):
            return Image.fromarray(small_images[i]), i % 5

    kinds = {
        "PIL": [Image.fromarray(a) for a in small_images],
        "pairs": [(a, 1) for a in small_images],
        "generator": (a for a in small_images),
        "float tensors": list(x),
        "tensor": x,
        "Dataset": Pairs(),
        "DataLoader": DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=10),
    }
    for kind, images in kinds.items():
        got = top_activations(small_lens, images, "conv1", k=3, batch_size=4, progress=False)
        assert torch.equal(got.indices, want), kind
        assert got.count == len(small_images), kind


def test_samples_items_and_fully_connected_layer(zf_random):
    samples = zfwidgets.samples()[:12]
    top = top_activations(zf_random, samples, "fc8", channels=3, k=2, progress=False)
    probs = torch.stack([zf_random.run(zf_random.to_input(s.image))[0][0] for s in samples])
    assert top.indices[0].tolist() == probs[:, 3].argsort(descending=True)[:2].tolist()
    assert (top.positions == -1).all()
    assert top.hits[0][0].box.as_tuple() == (0, 0, 28, 28) and top.hits[0][0].position is None


def test_fewer_images_than_k(small_lens, small_images):
    top = top_activations(small_lens, small_images[:3], "conv1", channels=[0], k=5, progress=False)
    assert top.indices[0, 3:].tolist() == [-1, -1] and torch.isinf(top.values[0, 3:]).all()
    assert len(top.hits[0]) == 3


def test_memory_does_not_grow_with_the_data_set(small_lens):
    """Images that are no longer among the winners are dropped: the pass keeps at most C*k images."""
    import weakref
    alive = []

    def stream(n):
        g = torch.Generator().manual_seed(1)
        for _ in range(n):
            t = torch.randn(3, 16, 16, generator=g)
            alive.append(weakref.ref(t))
            yield t

    top = top_activations(small_lens, stream(300), "conv1", channels=[0], k=2, batch_size=16, progress=False)
    assert top.count == 300
    assert sum(r() is not None for r in alive) <= 16 + 2


def test_plot(small_lens, small_images):
    top = top_activations(small_lens, small_images, "conv2", channels=[0, 1, 2], k=9, progress=False)
    fig = top.plot(cols=2)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 2 * 2
    assert isinstance(top.plot(channels=[1], mode="abs"), Figure)
    with pytest.raises(ValueError, match="not mined"):
        top.plot(channels=[5])


def test_bad_input_and_model_untouched(small_lens, small_images, model_hooks):
    before = model_hooks(small_lens.model)
    with pytest.raises(TypeError, match="Lens"):
        top_activations(small_lens.model, small_images, "conv1")
    with pytest.raises(ValueError, match="k must be"):
        top_activations(small_lens, small_images, "conv1", k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        top_activations(small_lens, small_images, "conv1", k=2.5)
    with pytest.raises(ValueError, match="out of range"):
        top_activations(small_lens, small_images, "conv1", channels=[7])
    with pytest.raises(TypeError, match="channels"):
        top_activations(small_lens, small_images, "conv1", channels="all")
    with pytest.raises(ValueError, match="empty"):
        top_activations(small_lens, [], "conv1")
    with pytest.raises(TypeError, match="single image"):
        top_activations(small_lens, small_images[0], "conv1")
    with pytest.raises(TypeError, match="iterable"):
        top_activations(small_lens, 5, "conv1")
    with pytest.raises(ValueError, match="unknown layer"):
        top_activations(small_lens, small_images, "conv7")
    with pytest.raises(ValueError, match="method"):
        top_activations(small_lens, small_images, "conv1", method="lrp")
    top_activations(small_lens, small_images[:4], "conv2", k=1, progress=False)
    assert model_hooks(small_lens.model) == before
    assert all(p.grad is None for p in small_lens.model.parameters())


def test_public_name():
    assert zfwidgets.top_activations is top_activations
    assert TopActivations.__dataclass_fields__


def test_bundled_top9_consistent_projections(bundled):
    """Sanity on the trained model: for conv2 maps, the hits' projections are non-zero inside the box."""
    top = top_activations(bundled, zfwidgets.samples(), "conv2", channels=range(4), k=9, progress=False)
    for row in top.hits:
        assert len(row) == 9
        assert all(float(h.projection.abs().sum()) > 0 for h in row)
