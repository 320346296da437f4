"""``Lens.from_torchvision(..., input_size=)``: the preprocessing follows the size asked for (issue 28, item 6)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import zfwidgets as zf


def _photo(h=200, w=300, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_input_size_resizes_the_transform_in_the_weights_proportion():
    lens = zf.Lens.from_torchvision("alexnet", input_size=(3, 128, 128))
    image = _photo()
    x = lens.to_input(image)
    assert lens.input_size == (3, 128, 128) and tuple(x.shape) == (1, 3, 128, 128)
    # torchvision's own pipeline, written out: 256 -> 224 at the weights' size, so 146 -> 128 here
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    reference = T.Compose([T.Resize(146, antialias=True), T.CenterCrop(128), T.ToTensor(), T.Normalize(mean, std)])
    torch.testing.assert_close(x[0], reference(image), rtol=0, atol=1e-6)
    assert lens.predict(image).shape == (1000,)


def test_without_input_size_the_weights_size_stays():
    lens = zf.Lens.from_torchvision("alexnet")
    assert lens.input_size == (3, 224, 224) and tuple(lens.to_input(_photo()).shape) == (1, 3, 224, 224)


def test_a_non_square_input_size_crops_to_it():
    lens = zf.Lens.from_torchvision("resnet18", input_size=(3, 96, 128))
    assert tuple(lens.to_input(_photo(300, 200)).shape) == (1, 3, 96, 128)


@pytest.mark.parametrize("bad", [(128, 128), (3, 0, 128), (3, 128.0, 128)])
def test_a_bad_input_size_says_what_it_takes(bad):
    with pytest.raises(ValueError, match="input_size"):
        zf.Lens.from_torchvision("alexnet", input_size=bad)
